//! Rotary position embeddings as one pass: `x · cos + rotate(x) · sin` on the patch tokens of
//! queries or keys `[b, h, t, hd]`, the leading (class, register) tokens copied unchanged, for
//! DINOv3 (`rotate_half`: pairs `(i, i + hd/2)`) and the Perception Encoder (timm's interleaved
//! pairs `(2i, 2i + 1)`). Written as the reference writes it, these are a dozen passes per
//! query and key (slices, a negation, two concatenations, two products and a sum), each on one
//! thread; here one parallel pass reads the heads straight out of the projection's output
//! (any strides), forward and backward.
//!
//! The arithmetic is the reference's, operation for operation: two f32 products and a sum per
//! value (no fused multiply-add). Under bf16-mixed precision the input is a bfloat16 tensor used
//! twice, so the backward pass rounds each use's gradient to bfloat16 before adding them, as
//! autograd does.

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, TensorMetadata};
use burn::prelude::*;
use burn::tensor::DType;
use rayon::prelude::*;

use super::bf16::autocast_bf16;
use super::{FusedBackward, FusedOps, contiguous, from_f32, kernels, rows_per_task};

/// Which values of a head rotate together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pairs {
    /// `(i, i + hd/2)`: transformers' `rotate_half([x1, x2]) = [-x2, x1]` (DINOv3).
    Halves,
    /// `(2i, 2i + 1)`: timm's `rot([x0, x1, ...]) = [-x1, x0, ...]` (the Perception Encoder).
    Interleaved,
}

/// `x · cos + rotate(x) · sin` on the last `n` tokens of `x` `[b, h, t, hd]` (any layout), the
/// tables `cos`, `sin` `[1, 1, n, hd]`; the first `t - n` tokens pass unchanged. Differentiable in
/// `x`; a contiguous `[b, h, t, hd]` result.
pub fn rotary(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>, pairs: Pairs) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::rotary(
        x.into_dispatch(),
        cos.clone().into_dispatch(),
        sin.clone().into_dispatch(),
        pairs == Pairs::Interleaved,
        autocast_bf16(),
    ))
}

/// The index of the partner of value `i` and whether `i` is the first of its pair.
#[inline(always)]
fn partner(i: usize, hd: usize, interleaved: bool) -> (usize, bool) {
    if interleaved {
        (i ^ 1, i.is_multiple_of(2))
    } else if i < hd / 2 {
        (i + hd / 2, true)
    } else {
        (i - hd / 2, false)
    }
}

/// One token's forward rotation: for a pair `(a, b)`, `out_a = x_a cos_a - x_b sin_a` and
/// `out_b = x_b cos_b + x_a sin_b` (the reference's `x_a cos_a + (-x_b) sin_a`, equal bit for bit).
fn rotate_row(x: &[f32], cos: &[f32], sin: &[f32], interleaved: bool, out: &mut [f32]) {
    let hd = out.len();
    if !interleaved {
        let h = hd / 2;
        // Two contiguous halves: loops the compiler vectorises.
        for i in 0..h {
            out[i] = x[i] * cos[i] - x[i + h] * sin[i];
        }
        for i in h..hd {
            out[i] = x[i] * cos[i] + x[i - h] * sin[i];
        }
        return;
    }
    for i in (0..hd).step_by(2) {
        out[i] = x[i] * cos[i] - x[i + 1] * sin[i];
        out[i + 1] = x[i + 1] * cos[i + 1] + x[i] * sin[i + 1];
    }
}

/// One token's gradient, the transposed rotation: `dx_a = g_a cos_a + g_b sin_b` and
/// `dx_b = g_b cos_b - g_a sin_a`; with `bf16`, each of the two terms (the gradients of the two
/// uses of `x`) rounded to bfloat16 before the sum.
fn rotate_row_backward(g: &[f32], cos: &[f32], sin: &[f32], interleaved: bool, bf16: bool, out: &mut [f32]) {
    let hd = out.len();
    for i in 0..hd {
        let (j, first) = partner(i, hd, interleaved);
        let direct = g[i] * cos[i];
        let rotated = if first { g[j] * sin[j] } else { -(g[j] * sin[j]) };
        out[i] = if bf16 { kernels::bf16(direct) + kernels::bf16(rotated) } else { direct + rotated };
    }
}

/// Applies `kernel(src_row, cos_row, sin_row, dst_row)` to the last `n` tokens (`n` the tables'
/// rows) of each head of `x` `[b, h, t, hd]` (read through its strides) into a new contiguous
/// tensor; the first `t - n` tokens are copied.
fn rows_through(
    x: FlexTensor,
    cos: FlexTensor,
    sin: FlexTensor,
    kernel: impl Fn(&[f32], &[f32], &[f32], &mut [f32]) + Sync,
) -> FlexTensor {
    assert_eq!(x.dtype(), DType::F32, "the rotary embedding computes on f32 storage");
    let readable = x.layout().strides()[3] == 1 && x.layout().strides().iter().all(|&s| s >= 0);
    let x = if readable { x } else { contiguous(x) };
    let (cos, sin) = (contiguous(cos), contiguous(sin));
    let (c, s): (&[f32], &[f32]) = (cos.storage(), sin.storage());
    let shape = x.shape();
    let (h, t, hd) = (shape[1], shape[2], shape[3]);
    let n = c.len() / hd.max(1);
    assert!(n <= t, "a rotary table of {n} rows for {t} tokens");
    let (start, st) = (x.layout().start_offset() as isize, x.layout().strides());
    let src: &[f32] = x.storage();
    let mut out = vec![0f32; shape.num_elements()];
    let per_task = rows_per_task(hd);
    out.par_chunks_mut(per_task).enumerate().for_each(|(chunk, rows)| {
        let first = chunk * per_task / hd.max(1);
        for (r, dst) in rows.chunks_mut(hd).enumerate() {
            // Row `first + r`, row-major over `[b, h, t]`.
            let (ti, bh) = ((first + r) % t, (first + r) / t);
            let at = (start + (bh / h) as isize * st[0] + (bh % h) as isize * st[1] + ti as isize * st[2]) as usize;
            let x_row = &src[at..at + hd];
            match ti.checked_sub(t - n) {
                Some(p) => kernel(x_row, &c[p * hd..(p + 1) * hd], &s[p * hd..(p + 1) * hd], dst),
                None => dst.copy_from_slice(x_row),
            }
        }
    });
    from_f32(out, shape)
}

/// The rotation on host tensors.
pub(super) fn rotary_forward(x: FlexTensor, cos: FlexTensor, sin: FlexTensor, interleaved: bool) -> FlexTensor {
    rows_through(x, cos, sin, |x, c, s, out| rotate_row(x, c, s, interleaved, out))
}

/// The gradient of [`rotary_forward`] for its input.
pub(super) fn rotary_backward(
    grad: FlexTensor,
    cos: FlexTensor,
    sin: FlexTensor,
    interleaved: bool,
    bf16: bool,
) -> FlexTensor {
    rows_through(grad, cos, sin, |g, c, s, out| rotate_row_backward(g, c, s, interleaved, bf16, out))
}

pub(super) fn autodiff_rotary<B, C>(
    x: FloatTensor<Autodiff<B, C>>,
    cos: FloatTensor<Autodiff<B, C>>,
    sin: FloatTensor<Autodiff<B, C>>,
    interleaved: bool,
    bf16: bool,
) -> FloatTensor<Autodiff<B, C>>
where
    B: Backend + FusedOps + FusedBackward,
    C: CheckpointStrategy,
{
    #[derive(Debug)]
    struct Rotary;

    impl<B: Backend + FusedBackward> Backward<B, 1> for Rotary {
        /// The tables, the pairing, bfloat16 or not.
        type State = (FloatTensor<B>, FloatTensor<B>, bool, bool);

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (cos, sin, interleaved, bf16) = ops.state;
            unary::<B, _>(ops.parents, ops.node, grads, |g| B::rotary_backward(g, cos, sin, interleaved, bf16));
        }
    }

    // The tables are constants of the input's grid: never differentiated.
    let (cos, sin) = (cos.into_primitive(), sin.into_primitive());
    match Rotary.prepare::<C>([x.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let out = B::rotary(x.into_primitive(), cos.clone(), sin.clone(), interleaved, bf16);
            prep.finish((cos, sin, interleaved, bf16), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(B::rotary(x.into_primitive(), cos, sin, interleaved, bf16)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fused::bf16::{Autocast, for_two_uses, round_bf16};
    use burn::tensor::Distribution;

    /// The reference's composition: slices, negation, concatenations, two products and a sum
    /// (with [`for_two_uses`], as the encoders wrote it before this kernel).
    fn composed(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>, pairs: Pairs) -> Tensor<4> {
        let [b, h, t, hd] = x.dims();
        let n = cos.dims()[2];
        let prefix = x.clone().slice([0..b, 0..h, 0..t - n, 0..hd]);
        let (direct, other) = for_two_uses(x.slice([0..b, 0..h, t - n..t, 0..hd]));
        let rotated = match pairs {
            Pairs::Halves => {
                let x1 = other.clone().slice([0..b, 0..h, 0..n, 0..hd / 2]);
                let x2 = other.slice([0..b, 0..h, 0..n, hd / 2..hd]);
                Tensor::cat(vec![x2.neg(), x1], 3)
            }
            Pairs::Interleaved => {
                let pairs = other.reshape([b, h, n, hd / 2, 2]);
                let even = pairs.clone().slice([0..b, 0..h, 0..n, 0..hd / 2, 0..1]);
                let odd = pairs.slice([0..b, 0..h, 0..n, 0..hd / 2, 1..2]);
                Tensor::cat(vec![odd.neg(), even], 4).reshape([b, h, n, hd])
            }
        };
        Tensor::cat(vec![prefix, direct * cos.clone() + rotated * sin.clone()], 2)
    }

    fn values(x: Tensor<4>) -> Vec<f32> {
        x.into_data().try_to_vec::<f32>().unwrap()
    }

    /// The fused rotation equals the composed one bit for bit, values and gradients, for both
    /// pairings, with and without prefix tokens, on a strided input (heads read out of a fused
    /// `qkv` output, as the Perception Encoder does), in f32 and under bf16-mixed precision.
    #[test]
    fn rotary_is_the_composed_rotation_bit_for_bit() {
        let device = Device::flex().autodiff();
        let (b, h, hd) = (2, 3, 8);
        for (t, n) in [(7, 6), (6, 6), (5, 1)] {
            let table = |seed: f32| {
                let v: Vec<f32> = (0..n * hd).map(|i| ((i as f32 + seed) * 0.37).sin()).collect();
                Tensor::<4>::from_data(TensorData::new(v, [1, 1, n, hd]), &device)
            };
            let (cos, sin) = (table(0.5), table(1.5));
            let qkv = Tensor::<3>::random([b, t, 3 * h * hd], Distribution::Normal(0.0, 1.0), &device);
            let probe = Tensor::<4>::random([b, h, t, hd], Distribution::Normal(0.0, 1.0), &device);
            for pairs in [Pairs::Halves, Pairs::Interleaved] {
                for bf16 in [false, true] {
                    let run = |fused: bool| {
                        let _autocast = Autocast::bf16(bf16);
                        let leaf = qkv.clone().require_grad();
                        let input = if bf16 { round_bf16(leaf.clone()) } else { leaf.clone() };
                        // The keys' third of the projection, as heads: a strided view.
                        let k = input.slice([0..b, 0..t, h * hd..2 * h * hd]).reshape([b, t, h, hd]).swap_dims(1, 2);
                        let out = if fused { rotary(k, &cos, &sin, pairs) } else { composed(k, &cos, &sin, pairs) };
                        let grads = (out.clone() * probe.clone()).sum().backward();
                        (values(out.inner()), leaf.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap())
                    };
                    let ((out, grad), (want_out, want_grad)) = (run(true), run(false));
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    let case = format!("{pairs:?}, t {t}, n {n}, bf16 {bf16}");
                    assert_eq!(bits(&out), bits(&want_out), "{case}: values");
                    assert_eq!(bits(&grad), bits(&want_grad), "{case}: gradients");
                    assert!(grad.iter().any(|g| *g != 0.0), "{case}: the gradient reaches the input");
                }
            }
        }
    }
}
