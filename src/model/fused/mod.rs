//! Fused kernels for the element-wise hot spots of the encoders, with their backward passes:
//! `quick_gelu` (`x · sigmoid(1.702 x)`, CLIP's), the exact GELU (DINOv3's and the Perception
//! Encoder's) and softmax over the last axis (attention weights).
//!
//! burn's flex backend computes `exp`/`sigmoid` one scalar libm call at a time on one thread, and
//! its autodiff differentiates softmax through five separate operations; on ViT-L/14 these took
//! a third of an LN-tuning step. Here each is one parallel pass with a vectorisable `exp`
//! (Cephes' polynomial, within 2 ulp of libm's), and a backward pass of one more. They are
//! registered through burn's backend-extension mechanism for the flex backend and for autodiff
//! over it; any other dtype than f32 takes burn's own operations.

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::ops::{ActivationOps, FloatTensorOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::prelude::*;
use burn::tensor::{Bytes, DType, Shape};
use rayon::prelude::*;

/// The operations, for the flex backend and autodiff over it.
#[backend_extension(Flex, Autodiff)]
pub trait FusedOps: Backend {
    /// `x · sigmoid(1.702 x)`.
    fn quick_gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// The exact (erf) GELU.
    fn erf_gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// Softmax over the last axis.
    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// LayerNorm over the last axis (biased variance, as PyTorch).
    fn layer_norm_last(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self>;
    /// `x · weight + bias` over the last axis of `x` with a frozen `weight` `[in, out]`;
    /// `weight_t` is the same matrix as `[out, in]` (a contiguous copy makes the backward pass
    /// faster, a transposed view of `weight` also works).
    fn frozen_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        weight_t: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
    /// Every value rounded to bfloat16 (a cast to bfloat16 in f32 storage; [`bf16`]).
    fn round_bf16(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `x · sigmoid(1.702 x)` on a bfloat16 tensor, as PyTorch computes it.
    fn quick_gelu_bf16(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// A bf16-mixed MLP's activation on `x`, its first product's output before rounding:
    /// rounded to bfloat16, then the quick GELU as [`FusedOps::quick_gelu_bf16`] where `quick`,
    /// else the exact GELU rounded once; into bfloat16 storage, which the next product reads
    /// as it is. Under autodiff its gradient is bfloat16 storage too
    /// ([`bf16::activation_bits`]).
    fn gelu_bf16_bits(x: FloatTensor<Self>, quick: bool) -> FloatTensor<Self>;
    /// Every value rounded to bfloat16, into bfloat16 storage (one pass), which a bf16-mixed
    /// product reads as it is; differentiable, its gradient rounded to bfloat16 in f32 storage.
    fn bf16_storage(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// [`Self::layer_norm_last`] into bfloat16 storage, as [`Self::bf16_storage`] of it: the
    /// input of bf16 products in one pass. Differentiable as that composition.
    fn layer_norm_bf16_bits(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self>;
    /// `softmax(q kᵀ · scale) v` over `[b, h, t, d]` queries, keys and values, blockwise as
    /// PyTorch's CPU flash attention; on bfloat16 values with its roundings when `bf16`.
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
        bf16: bool,
    ) -> FloatTensor<Self>;
    /// The rotary embedding on the last `n` tokens of `x` `[b, h, t, hd]` (tables `cos`, `sin`
    /// `[1, 1, n, hd]`; pairs interleaved or halves), under bf16-mixed precision when `bf16`.
    fn rotary(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        interleaved: bool,
        bf16: bool,
    ) -> FloatTensor<Self>;
}

/// The backward kernels the autodiff implementation calls on the backend beneath it.
pub trait FusedBackward: Backend {
    /// `grad · d quick_gelu / dx` at `x`.
    fn quick_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `grad · d gelu / dx` at `x`.
    fn erf_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `y · (grad - Σ grad · y)` per row, `y` the softmax output.
    fn softmax_last_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
    /// Gradients of LayerNorm: for `x` if `want_x`, for `gamma` and `beta` if `want_params`.
    #[allow(clippy::type_complexity)]
    fn layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
        want_x: bool,
        want_params: bool,
    ) -> (Option<FloatTensor<Self>>, Option<(FloatTensor<Self>, FloatTensor<Self>)>);
    /// `grad · weight_t`: the gradient of [`FusedOps::frozen_linear`] for `x`.
    fn frozen_linear_backward(grad: FloatTensor<Self>, weight_t: FloatTensor<Self>) -> FloatTensor<Self>;
    /// The gradient of [`FusedOps::quick_gelu_bf16`] at `x`, in bfloat16 as PyTorch's autograd.
    fn quick_gelu_bf16_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
    /// [`FusedOps::gelu_bf16_bits`] and its input rounded, both in bfloat16 storage: the
    /// activation, and what its backward pass reads.
    fn gelu_bf16_bits_forward(x: FloatTensor<Self>, quick: bool) -> (FloatTensor<Self>, FloatTensor<Self>);
    /// The gradient of [`FusedOps::gelu_bf16_bits`] for its input, in bfloat16 storage, from its
    /// kept rounded input and the activation's (unrounded) gradient.
    fn gelu_bf16_bits_backward(input: FloatTensor<Self>, grad: FloatTensor<Self>, quick: bool) -> FloatTensor<Self>;
    /// [`FusedOps::fused_attention`] and the log-sum-exp of each query's scores `[b, h, tq]`.
    fn fused_attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
        bf16: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
    /// The gradients of [`FusedOps::fused_attention`] for the queries, keys and values.
    #[allow(clippy::type_complexity)]
    fn fused_attention_backward(
        qkv: (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>),
        out_lse: (FloatTensor<Self>, FloatTensor<Self>),
        grad: FloatTensor<Self>,
        scale: f64,
        bf16: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
    /// The gradient of [`FusedOps::rotary`] for `x`.
    fn rotary_backward(
        grad: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        interleaved: bool,
        bf16: bool,
    ) -> FloatTensor<Self>;
}

/// `x · sigmoid(1.702 x)`, differentiable.
pub fn quick_gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::quick_gelu(x.into_dispatch()))
}

/// The exact (erf) GELU `x/2 · (1 + erf(x/√2))`, differentiable: DINOv3's and the Perception
/// Encoder's activation. burn's runs libm's scalar `erf` on one thread; this is one parallel,
/// vectorised pass (its `erf` within Abramowitz & Stegun's 1.5e-7; the unit test holds the
/// GELU and its gradient to burn's within 1e-6 and 1e-5).
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::erf_gelu(x.into_dispatch()))
}

/// Softmax over the last axis, differentiable.
pub fn softmax_last<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::softmax_last(x.into_dispatch()))
}

/// LayerNorm over the last axis, differentiable in `x`, `gamma` and `beta`.
pub fn layer_norm<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, beta: Tensor<1>, eps: f64) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::layer_norm_last(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        eps,
    ))
}

/// A burn `LayerNorm` module applied as [`layer_norm`], one fused operation, in f32 (the
/// module's own operations otherwise, e.g. in bf16); the encoders' LayerNorms all go through it.
pub fn norm<const D: usize>(ln: &burn::nn::LayerNorm, eps: f64, x: Tensor<D>) -> Tensor<D> {
    match &ln.beta {
        Some(beta) if x.dtype() == DType::F32 => layer_norm(x, ln.gamma.val(), beta.val(), eps),
        _ => ln.forward(x),
    }
}

/// [`norm`] into bfloat16 storage (its values rounded to bfloat16), in one pass where the
/// values are f32: the input of bf16 products that nothing else reads.
fn norm_bf16_bits<const D: usize>(ln: &burn::nn::LayerNorm, eps: f64, x: Tensor<D>) -> Tensor<D> {
    match &ln.beta {
        Some(beta) if x.dtype() == DType::F32 => Tensor::from_dispatch(<Dispatch as FusedOps>::layer_norm_bf16_bits(
            x.into_dispatch(),
            ln.gamma.val().into_dispatch(),
            beta.val().into_dispatch(),
            eps,
        )),
        _ => Tensor::from_dispatch(<Dispatch as FusedOps>::bf16_storage(norm(ln, eps, x).into_dispatch())),
    }
}

/// [`norm`] of `x` for the products that alone read it (`adapters`: whether an adapter reads it
/// too). In inference on native bfloat16 products, where nothing differentiates through it and
/// no adapter reads it, it goes straight into the bfloat16 storage the products read as it is
/// ([`norm_bf16_bits`]): the bits each product's own conversion would make, in one pass instead
/// of a LayerNorm and a conversion per product. f32 otherwise.
pub fn norm_for_products<const D: usize>(
    ln: &burn::nn::LayerNorm,
    eps: f64,
    x: Tensor<D>,
    adapters: bool,
) -> Tensor<D> {
    if !adapters && !x.is_autodiff() && bf16::bits_between_products() {
        norm_bf16_bits(ln, eps, x)
    } else {
        norm(ln, eps, x)
    }
}

/// `x · weight + bias` over the last axis of `x` (`weight` `[in, out]`, burn's `Linear` layout),
/// differentiable in `x` only: for frozen projections. `weight_t` is `weight` as `[out, in]`,
/// used by the backward pass; pass `weight.transpose()` when no contiguous copy is at hand.
pub fn linear<const D: usize>(x: Tensor<D>, weight: Tensor<2>, weight_t: Tensor<2>, bias: Tensor<1>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::frozen_linear(
        x.into_dispatch(),
        weight.into_dispatch(),
        weight_t.into_dispatch(),
        bias.into_dispatch(),
    ))
}

/// `weight` `[in, out]` as a contiguous `[out, in]` tensor: the `weight_t` of [`linear`] kept
/// for training with the weight frozen.
pub fn transposed_copy(weight: Tensor<2>) -> Tensor<2> {
    let device = weight.device();
    let [rows, cols] = weight.dims();
    let values = weight.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 values");
    Tensor::from_data(TensorData::new(super::tensors::transpose(&values, rows, cols), [cols, rows]), &device)
}

// ------------------------------------------------------------------------------------------------
// Flex: host kernels on f32 storage.
//
// Results are written into the input's own buffer when no one else holds it (a gradient, or an
// activation that autodiff does not keep), otherwise into a fresh buffer in one pass. Buffers are
// made with `Bytes::from_elems`, which keeps the vector's allocation; `TensorData` would copy it
// once more to raise its alignment.

/// `x` as a contiguous tensor whose buffer holds exactly its values.
fn contiguous(x: FlexTensor) -> FlexTensor {
    let exact = x.bytes().len() == x.layout().num_elements() * x.dtype().size();
    if x.is_contiguous() && x.layout().start_offset() == 0 && exact { x } else { x.to_contiguous() }
}

/// A new f32 tensor over `values`.
fn from_f32(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(Bytes::from_elems(values), Layout::contiguous(shape), DType::F32)
}

/// A new bfloat16 tensor over `bits`.
fn bf16_tensor(bits: Vec<u16>, shape: Shape) -> FlexTensor {
    FlexTensor::new(Bytes::from_elems(bits), Layout::contiguous(shape), DType::BF16)
}

fn all_f32(xs: &[&FlexTensor]) -> bool {
    xs.iter().all(|x| x.dtype() == DType::F32)
}

/// A frozen weight [`matmul_2d`] multiplies by: f32, or bfloat16 storage.
fn f32_or_bf16(w: &FlexTensor) -> bool {
    matches!(w.dtype(), DType::F32 | DType::BF16)
}

/// Runs `kernel` on every row (length `row`) of `x` in place: on `x`'s buffer if it is the only
/// owner, else on a copy made chunk by chunk just before the kernel reads it.
fn map_rows(x: FlexTensor, row: usize, kernel: impl Fn(&mut [f32]) + Sync) -> FlexTensor {
    let mut x = contiguous(x);
    let per_task = rows_per_task(row);
    if let Some(values) = x.try_storage_mut::<f32>() {
        values.par_chunks_mut(per_task).for_each(|c| c.chunks_mut(row).for_each(&kernel));
        return x;
    }
    let src: &[f32] = x.storage();
    let mut out = Vec::<f32>::with_capacity(src.len());
    out.spare_capacity_mut().par_chunks_mut(per_task).zip(src.par_chunks(per_task)).for_each(|(dst, src)| {
        for (d, s) in dst.iter_mut().zip(src) {
            d.write(*s);
        }
        // SAFETY: every element of `dst` was written just above.
        let dst = unsafe { &mut *(dst as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
        dst.chunks_mut(row).for_each(&kernel);
    });
    // SAFETY: the chunks cover the whole capacity `src.len()` and were all written.
    unsafe { out.set_len(src.len()) };
    from_f32(out, x.layout().shape().clone())
}

/// Runs `kernel(other_row, grad_row)` over the rows of a gradient (changed in place; copied
/// first if shared) and a tensor of the same shape.
fn zip_rows(grad: FlexTensor, other: FlexTensor, row: usize, kernel: impl Fn(&[f32], &mut [f32]) + Sync) -> FlexTensor {
    let other = contiguous(other);
    let mut grad = contiguous(grad);
    let per_task = rows_per_task(row);
    let o: &[f32] = other.storage();
    grad.storage_mut::<f32>().par_chunks_mut(per_task).zip(o.par_chunks(per_task)).for_each(|(g, o)| {
        g.chunks_mut(row).zip(o.chunks(row)).for_each(|(g, o)| kernel(o, g));
    });
    grad
}

/// [`FusedOps::gelu_bf16_bits`]'s values by the separate operations, in the backend's own storage.
fn rounded_activation<B: FusedOps>(x: FloatTensor<B>, quick: bool) -> FloatTensor<B> {
    let x = B::round_bf16(x);
    if quick { B::quick_gelu_bf16(x) } else { B::round_bf16(B::erf_gelu(x)) }
}

/// bfloat16 bits as their f32 values (exactly).
fn widen(bits: &[u16]) -> Vec<f32> {
    bits.par_iter().map(|b| f32::from_bits(u32::from(*b) << 16)).collect()
}

/// The left operand of [`matmul_2d`]: f32 values, or bfloat16 bits (an activation kept in
/// bfloat16 between two bf16-mixed products, [`FusedOps::gelu_bf16_bits`]).
#[derive(Clone, Copy)]
enum Lhs<'a> {
    Values(&'a [f32]),
    Bits(&'a [u16]),
}

/// `lhs · rhs (+ bias on every row)`, `lhs` contiguous `[m, k]`, `rhs` a 2-D tensor `[k, n]` of
/// any strides (a transposed view included), f32 or bfloat16 (a frozen weight kept in bfloat16,
/// [`bf16`]), into a new row-major `[m, n]` buffer.
fn matmul_2d(m: usize, k: usize, lhs: Lhs<'_>, rhs: &FlexTensor, bias: Option<&[f32]>) -> Vec<f32> {
    let n = rhs.layout().shape()[1];
    let strides = rhs.layout().strides();
    let (rhs_rs, rhs_cs) = (strides[0], strides[1]);
    let start = rhs.layout().start_offset();
    let len = m * n;
    let mut out = Vec::<f32>::with_capacity(len);
    let read_dst = match bias {
        Some(bias) => {
            out.spare_capacity_mut().par_chunks_mut(n * (CHUNK / n).max(1)).for_each(|rows| {
                for row in rows.chunks_mut(n) {
                    for (d, b) in row.iter_mut().zip(bias) {
                        d.write(*b);
                    }
                }
            });
            true
        }
        // gemm's blocked path (m, n > 16) writes every element before it reads any when
        // `read_dst` is false; its small-matrix paths may read, so they get zeros.
        None if m <= 16 || n <= 16 => {
            out.resize(len, 0.0);
            false
        }
        None => false,
    };
    let operand = match rhs.dtype() {
        DType::BF16 => Rhs::Bits(bytemuck::cast_slice(&rhs.storage::<half::bf16>()[start..])),
        _ => Rhs::Values(&rhs.storage::<f32>()[start..]),
    };
    if native_bf16_product(m, n, k, lhs, &operand, (rhs_rs, rhs_cs), &mut out, read_dst) {
        // SAFETY: oneDNN wrote all m·n values (read_dst: the bias was there before).
        unsafe { out.set_len(len) };
        return out;
    }
    // Under bf16-mixed precision on a CPU with native products, the input may not be rounded
    // yet ([`bf16::product_input`]): where this product could not take the native path, it is
    // rounded here, so that the f32 kernels multiply bfloat16 values all the same.
    // A bfloat16 input is widened (exactly).
    let rounded: Vec<f32>;
    let lhs = match lhs {
        Lhs::Values(lhs) if bf16::autocast_bf16() && onednn::native_bf16_products() => {
            let mut copy = lhs[..m * k].to_vec();
            copy.par_chunks_mut(CHUNK).for_each(kernels::round_bf16);
            rounded = copy;
            &rounded[..]
        }
        Lhs::Values(lhs) => lhs,
        Lhs::Bits(bits) => {
            rounded = widen(&bits[..m * k]);
            &rounded[..]
        }
    };
    // A bfloat16 operand without the native product: its values widened to f32 (exactly) for
    // the f32 kernels.
    let widened: Vec<f32>;
    let rhs_values: &[f32] = match operand {
        Rhs::Values(values) => values,
        Rhs::Bits(bits) => {
            let span = span(n, k, rhs_rs, rhs_cs).min(bits.len());
            widened = widen(&bits[..span]);
            &widened
        }
    };
    // SAFETY: `lhs` holds m·k values, `rhs_values` spans the layout from its first value, `out`
    // has room for m·n values (initialised where gemm reads them, see above).
    unsafe {
        products::product(
            products::kernels(),
            m,
            n,
            k,
            lhs.as_ptr(),
            rhs_values.as_ptr(),
            rhs_rs,
            rhs_cs,
            out.as_mut_ptr(),
            read_dst,
        );
        out.set_len(len);
    }
    out
}

/// How many values a `[k, n]` layout with non-negative strides `(rs, cs)` spans from its first.
fn span(n: usize, k: usize, rs: isize, cs: isize) -> usize {
    if n == 0 || k == 0 { 0 } else { (k - 1) * rs.max(0) as usize + (n - 1) * cs.max(0) as usize + 1 }
}

/// The right operand of [`native_bf16_product`]: f32 storage holding bfloat16 values, or
/// bfloat16 storage (its bits).
enum Rhs<'a> {
    Values(&'a [f32]),
    Bits(&'a [u16]),
}

/// Under bf16-mixed precision ([`bf16::Autocast`]) where oneDNN multiplies bfloat16 natively:
/// `out = lhs · rhs (+ out)` with the operands as bfloat16 (they hold bfloat16 values there) and
/// f32 accumulation; `false`, doing nothing, elsewhere. `out` has capacity for m·n values, the
/// first m·n initialised when `accumulate`.
#[allow(clippy::too_many_arguments)]
fn native_bf16_product(
    m: usize,
    n: usize,
    k: usize,
    lhs: Lhs<'_>,
    rhs: &Rhs<'_>,
    (rs, cs): (isize, isize),
    out: &mut Vec<f32>,
    accumulate: bool,
) -> bool {
    let Some(dnnl) = onednn::onednn().filter(|d| d.bf16) else { return false };
    if !bf16::autocast_bf16() || rayon::current_thread_index().is_some() || m * n * k == 0 || rs < 0 || cs < 0 {
        return false;
    }
    let span = span(n, k, rs, cs);
    let converted_lhs;
    let l = match lhs {
        Lhs::Values(values) => {
            converted_lhs = onednn::to_bf16_bits(&values[..m * k]);
            &converted_lhs[..]
        }
        Lhs::Bits(bits) => &bits[..m * k],
    };
    let converted;
    let r = match rhs {
        Rhs::Bits(bits) => &bits[..span],
        Rhs::Values(values) => {
            converted = onednn::to_bf16_bits(&values[..span]);
            &converted[..]
        }
    };
    // SAFETY: `l` holds m·k values, `r` spans the layout, `out` has room for m·n values.
    unsafe { dnnl.gemm_bf16(m, n, k, l.as_ptr(), r.as_ptr(), rs, cs, out.as_mut_ptr(), accumulate) }
}

/// `x · matrix (+ bias)` over the last axis of `x` (`[..., k]` -> `[..., n]`, `matrix` `[k, n]`).
fn last_axis_times(x: FlexTensor, matrix: &FlexTensor, bias: Option<&[f32]>) -> FlexTensor {
    let x = contiguous(x);
    let mut shape = x.shape();
    let last = shape.num_dims() - 1;
    let k = shape[last];
    let m = shape.num_elements() / k.max(1);
    let lhs = match x.dtype() {
        DType::BF16 => Lhs::Bits(bytemuck::cast_slice(x.storage::<half::bf16>())),
        _ => Lhs::Values(x.storage()),
    };
    let out = matmul_2d(m, k, lhs, matrix, bias);
    shape[last] = matrix.shape()[1];
    from_f32(out, shape)
}

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

impl FusedOps for Flex {
    fn quick_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if !all_f32(&[&x]) {
            let s = Flex::sigmoid(Flex::float_mul_scalar(x.clone(), 1.702f64.into()));
            return Flex::float_mul(x, s);
        }
        map_rows(x, CHUNK, kernels::quick_gelu)
    }

    fn erf_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if !all_f32(&[&x]) {
            return <Flex as ActivationOps<Flex>>::gelu(x);
        }
        map_rows(x, CHUNK, kernels::gelu)
    }

    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let last = x.shape().num_dims() - 1;
        if !all_f32(&[&x]) {
            return Flex::softmax(x, last);
        }
        let n = x.shape()[last];
        map_rows(x, n, kernels::softmax)
    }

    fn layer_norm_last(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        if !all_f32(&[&x, &gamma, &beta]) {
            return <Flex as burn::backend::ops::ModuleOps<Flex>>::layer_norm(x, gamma, Some(beta), eps);
        }
        let (g, b) = (contiguous(gamma), contiguous(beta));
        let (g, b): (&[f32], &[f32]) = (g.storage(), b.storage());
        let n = x.shape()[x.shape().num_dims() - 1];
        let eps = eps as f32;
        map_rows(x, n, |row| kernels::layer_norm(row, g, b, eps))
    }

    fn frozen_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        _weight_t: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        if !all_f32(&[&bias]) || !f32_or_bf16(&x) || !f32_or_bf16(&weight) {
            return <Flex as burn::backend::ops::ModuleOps<Flex>>::linear(x, weight, Some(bias));
        }
        let bias = contiguous(bias);
        last_axis_times(x, &weight, Some(bias.storage()))
    }

    fn round_bf16(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if !all_f32(&[&x]) {
            return x;
        }
        map_rows(x, CHUNK, kernels::round_bf16)
    }

    fn bf16_storage(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match x.dtype() {
            DType::BF16 => x,
            DType::F32 => {
                let x = contiguous(x);
                let src: &[f32] = x.storage();
                let mut bits = vec![0u16; src.len()];
                bits.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| kernels::to_bf16_bits(s, d));
                bf16_tensor(bits, x.shape())
            }
            _ => Flex::float_cast(x, burn::tensor::FloatDType::BF16),
        }
    }

    fn layer_norm_bf16_bits(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        if !all_f32(&[&x, &gamma, &beta]) {
            return Self::bf16_storage(Self::layer_norm_last(x, gamma, beta, eps));
        }
        let x = contiguous(x);
        let (g, b) = (contiguous(gamma), contiguous(beta));
        let (g, b): (&[f32], &[f32]) = (g.storage(), b.storage());
        let n = x.shape()[x.shape().num_dims() - 1];
        let (eps, per_task) = (eps as f32, rows_per_task(n));
        let src: &[f32] = x.storage();
        let mut bits = vec![0u16; src.len()];
        bits.par_chunks_mut(per_task).zip(src.par_chunks(per_task)).for_each(|(d, s)| {
            d.chunks_mut(n).zip(s.chunks(n)).for_each(|(d, s)| kernels::layer_norm_bf16_bits(s, g, b, eps, d));
        });
        bf16_tensor(bits, x.shape())
    }

    fn quick_gelu_bf16(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if !all_f32(&[&x]) {
            return Self::quick_gelu(x);
        }
        map_rows(x, CHUNK, kernels::quick_gelu_bf16)
    }

    fn gelu_bf16_bits(x: FloatTensor<Self>, quick: bool) -> FloatTensor<Self> {
        if !all_f32(&[&x]) {
            return rounded_activation::<Self>(x, quick);
        }
        let x = contiguous(x);
        let src: &[f32] = x.storage();
        let mut bits = vec![0u16; src.len()];
        let tables = kernels::ActivationTables::get(quick);
        bits.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| kernels::gelu_bf16_bits(s, d, tables));
        bf16_tensor(bits, x.shape())
    }

    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
        bf16: bool,
    ) -> FloatTensor<Self> {
        attention::attention_forward(q, k, v, scale, bf16).0
    }

    fn rotary(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        interleaved: bool,
        _bf16: bool,
    ) -> FloatTensor<Self> {
        rotary::rotary_forward(x, cos, sin, interleaved)
    }
}

impl FusedBackward for Flex {
    fn quick_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        zip_rows(grad, x, CHUNK, kernels::quick_gelu_grad)
    }

    fn erf_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        zip_rows(grad, x, CHUNK, kernels::gelu_grad)
    }

    fn softmax_last_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let n = y.shape()[y.shape().num_dims() - 1];
        zip_rows(grad, y, n, kernels::softmax_grad)
    }

    fn layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
        want_x: bool,
        want_params: bool,
    ) -> (Option<FloatTensor<Self>>, Option<(FloatTensor<Self>, FloatTensor<Self>)>) {
        let x = contiguous(x);
        let gamma = contiguous(gamma);
        let mut grad = contiguous(grad);
        let gshape = gamma.shape();
        let (x_values, gamma): (&[f32], &[f32]) = (x.storage(), gamma.storage());
        let n = gamma.len();
        let rows = rows_per_task(n);
        let eps = eps as f32;
        // Per task: partial sums of grad · x̂ (gamma) and grad (beta); the rows' dx in place.
        let partials: Vec<(Vec<f32>, Vec<f32>)> = grad
            .storage_mut::<f32>()
            .par_chunks_mut(rows)
            .zip(x_values.par_chunks(rows))
            .map(|(g, x)| {
                let mut dgamma = vec![0.0f32; n];
                let mut dbeta = vec![0.0f32; n];
                for (g, x) in g.chunks_mut(n).zip(x.chunks(n)) {
                    kernels::layer_norm_grad(x, gamma, g, eps, want_x, want_params, &mut dgamma, &mut dbeta);
                }
                (dgamma, dbeta)
            })
            .collect();
        let params = want_params.then(|| {
            let mut dgamma = vec![0.0f32; n];
            let mut dbeta = vec![0.0f32; n];
            for (pg, pb) in &partials {
                dgamma.iter_mut().zip(pg).for_each(|(a, b)| *a += b);
                dbeta.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
            }
            (from_f32(dgamma, gshape.clone()), from_f32(dbeta, gshape))
        });
        (want_x.then_some(grad), params)
    }

    fn frozen_linear_backward(grad: FloatTensor<Self>, weight_t: FloatTensor<Self>) -> FloatTensor<Self> {
        if !f32_or_bf16(&grad) || !f32_or_bf16(&weight_t) {
            return <Flex as burn::backend::ops::ModuleOps<Flex>>::linear(grad, weight_t, None);
        }
        last_axis_times(grad, &weight_t, None)
    }

    fn quick_gelu_bf16_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        zip_rows(grad, x, CHUNK, kernels::quick_gelu_bf16_grad)
    }

    fn gelu_bf16_bits_forward(x: FloatTensor<Self>, quick: bool) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let x = contiguous(x);
        let src: &[f32] = x.storage();
        let (mut input, mut out) = (vec![0u16; src.len()], vec![0u16; src.len()]);
        let tables = kernels::ActivationTables::get(quick);
        input.par_chunks_mut(CHUNK).zip(out.par_chunks_mut(CHUNK)).zip(src.par_chunks(CHUNK)).for_each(
            |((i, d), s)| {
                kernels::gelu_bf16_bits_keeping_input(s, i, d, tables);
            },
        );
        (bf16_tensor(out, x.shape()), bf16_tensor(input, x.shape()))
    }

    fn gelu_bf16_bits_backward(input: FloatTensor<Self>, grad: FloatTensor<Self>, quick: bool) -> FloatTensor<Self> {
        // The gradient comes from a product's backward pass, in f32; any other is widened.
        let grad =
            if grad.dtype() == DType::F32 { grad } else { Flex::float_cast(grad, burn::tensor::FloatDType::F32) };
        let (input, grad) = (contiguous(input), contiguous(grad));
        let (xs, gs): (&[half::bf16], &[f32]) = (input.storage(), grad.storage());
        let xs: &[u16] = bytemuck::cast_slice(xs);
        let mut bits = vec![0u16; gs.len()];
        let tables = kernels::ActivationTables::get(quick);
        bits.par_chunks_mut(CHUNK).zip(xs.par_chunks(CHUNK)).zip(gs.par_chunks(CHUNK)).for_each(|((d, x), g)| {
            kernels::gelu_bf16_grad_bits(x, g, d, tables, quick);
        });
        bf16_tensor(bits, grad.shape())
    }

    fn fused_attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
        bf16: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        attention::attention_forward(q, k, v, scale, bf16)
    }

    fn fused_attention_backward(
        qkv: (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>),
        out_lse: (FloatTensor<Self>, FloatTensor<Self>),
        grad: FloatTensor<Self>,
        scale: f64,
        bf16: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        attention::attention_backward(qkv, out_lse, grad, scale, bf16)
    }

    fn rotary_backward(
        grad: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        interleaved: bool,
        bf16: bool,
    ) -> FloatTensor<Self> {
        rotary::rotary_backward(grad, cos, sin, interleaved, bf16)
    }
}

/// Whole rows of length `n` per parallel task, about [`CHUNK`] elements.
fn rows_per_task(n: usize) -> usize {
    (CHUNK / n.max(1)).max(1) * n.max(1)
}

// ------------------------------------------------------------------------------------------------
// Autodiff: one backward step per operation.

/// An element-wise operation whose backward pass reads its input: `forward(x)`, and
/// `backward(x, grad)` when autodiff asks for the input's gradient.
fn elementwise<B: Backend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    forward: fn(FloatTensor<B>) -> FloatTensor<B>,
    backward: fn(FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>> {
    struct Elementwise<B: Backend> {
        backward: fn(FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>,
    }

    impl<B: Backend> std::fmt::Debug for Elementwise<B> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Elementwise")
        }
    }

    impl<B: Backend> Backward<B, 1> for Elementwise<B> {
        /// The input.
        type State = FloatTensor<B>;

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let x = ops.state;
            unary::<B, _>(ops.parents, ops.node, grads, |g| (self.backward)(x, g));
        }
    }

    match (Elementwise { backward }).prepare::<C>([x.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let input = x.into_primitive();
            prep.finish(input.clone(), forward(input))
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.into_primitive())),
    }
}

impl<B: Backend + FusedOps + FusedBackward, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn quick_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        elementwise::<B, C>(x, B::quick_gelu, B::quick_gelu_backward)
    }

    fn erf_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        elementwise::<B, C>(x, B::erf_gelu, B::erf_gelu_backward)
    }

    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Softmax;

        impl<B: Backend + FusedBackward> Backward<B, 1> for Softmax {
            /// The output.
            type State = B::FloatTensorPrimitive;

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let y = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |g| B::softmax_last_backward(y, g));
            }
        }

        match Softmax.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = B::softmax_last(x.into_primitive());
                prep.finish(y.clone(), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::softmax_last(x.into_primitive())),
        }
    }

    fn layer_norm_last(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LayerNorm;

        impl<B: Backend + FusedBackward> Backward<B, 3> for LayerNorm {
            /// Input, gamma, epsilon.
            type State = (B::FloatTensorPrimitive, B::FloatTensorPrimitive, f64);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_x, node_gamma, node_beta] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, gamma, eps) = ops.state;
                let want_params = node_gamma.is_some() || node_beta.is_some();
                let (dx, params) = B::layer_norm_backward(x, gamma, grad, eps, node_x.is_some(), want_params);
                if let (Some(node), Some(dx)) = (node_x, dx) {
                    grads.register::<B>(node.id, dx);
                }
                if let Some((dgamma, dbeta)) = params {
                    if let Some(node) = node_gamma {
                        grads.register::<B>(node.id, dgamma);
                    }
                    if let Some(node) = node_beta {
                        grads.register::<B>(node.id, dbeta);
                    }
                }
            }
        }

        match LayerNorm.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (x, gamma) = (x.into_primitive(), gamma.into_primitive());
                let state = (x.clone(), gamma.clone(), eps);
                prep.finish(state, B::layer_norm_last(x, gamma, beta.into_primitive(), eps))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::layer_norm_last(x.into_primitive(), gamma.into_primitive(), beta.into_primitive(), eps))
            }
        }
    }

    fn frozen_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        weight_t: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct FrozenLinear;

        impl<B: Backend + FusedBackward> Backward<B, 1> for FrozenLinear {
            /// The weight as `[out, in]`.
            type State = B::FloatTensorPrimitive;

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let weight_t = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |g| B::frozen_linear_backward(g, weight_t));
            }
        }

        if weight.is_tracked() || bias.is_tracked() {
            // Not frozen (full fine-tuning, unfrozen layers, a trained bias): burn's linear has
            // every gradient. It multiplies f32 only, so a bfloat16 weight (a frozen copy,
            // [`bf16::frozen_bf16`]) is widened first, exactly.
            let widened = |t: FloatTensor<Self>| {
                if t.dtype() == DType::BF16 {
                    <Self as FloatTensorOps<Self>>::float_cast(t, burn::tensor::FloatDType::F32)
                } else {
                    t
                }
            };
            return <Self as burn::backend::ops::ModuleOps<Self>>::linear(widened(x), widened(weight), Some(bias));
        }
        let (w, b) = (weight.into_primitive(), bias.into_primitive());
        match FrozenLinear.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let wt = weight_t.into_primitive();
                prep.finish(wt.clone(), B::frozen_linear(x.into_primitive(), w, wt, b))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::frozen_linear(x.into_primitive(), w, weight_t.into_primitive(), b))
            }
        }
    }

    fn round_bf16(x: FloatTensor<Self>) -> FloatTensor<Self> {
        bf16::autodiff_round::<B, C>(x)
    }

    fn quick_gelu_bf16(x: FloatTensor<Self>) -> FloatTensor<Self> {
        elementwise::<B, C>(x, B::quick_gelu_bf16, B::quick_gelu_bf16_backward)
    }

    fn bf16_storage(x: FloatTensor<Self>) -> FloatTensor<Self> {
        bf16::autodiff_bf16_storage::<B, C>(x)
    }

    fn gelu_bf16_bits(x: FloatTensor<Self>, quick: bool) -> FloatTensor<Self> {
        bf16::autodiff_activation_bits::<B, C>(x, quick)
    }

    fn layer_norm_bf16_bits(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        Self::bf16_storage(Self::layer_norm_last(x, gamma, beta, eps))
    }

    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
        bf16: bool,
    ) -> FloatTensor<Self> {
        attention::autodiff_attention::<B, C>(q, k, v, scale, bf16)
    }

    fn rotary(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        interleaved: bool,
        bf16: bool,
    ) -> FloatTensor<Self> {
        rotary::autodiff_rotary::<B, C>(x, cos, sin, interleaved, bf16)
    }
}

pub mod attention;
pub mod bf16;
pub mod blas;
mod dot_bf16;
mod kernels;
pub mod onednn;
pub mod products;
pub mod rotary;
pub mod threads;

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::{sigmoid, softmax};

    fn close(a: Tensor<2>, b: Tensor<2>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    #[test]
    fn match_burns_composed_operations_and_their_gradients() {
        let device = Device::flex().autodiff();
        let x = Tensor::<2>::random([7, 257], burn::tensor::Distribution::Normal(0.0, 3.0), &device);
        let w = Tensor::<2>::random([7, 257], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let a = x.clone().require_grad();
        let b = x.clone().require_grad();
        let fa = quick_gelu(a.clone());
        let fb = b.clone() * sigmoid(b.clone() * 1.702);
        assert!(close(fa.clone(), fb.clone()) < 1e-5);
        let ga = (fa * w.clone()).sum().backward();
        let gb = (fb * w.clone()).sum().backward();
        assert!(close(a.grad(&ga).unwrap(), b.grad(&gb).unwrap()) < 1e-5);

        // The exact GELU against burn's (libm's erf), values and gradients.
        let a = x.clone().require_grad();
        let b = x.clone().require_grad();
        let fa = gelu(a.clone());
        let fb = burn::tensor::activation::gelu(b.clone());
        assert!(close(fa.clone(), fb.clone()) < 1e-6, "{}", close(fa.clone(), fb.clone()));
        let ga = (fa * w.clone()).sum().backward();
        let gb = (fb * w.clone()).sum().backward();
        assert!(close(a.grad(&ga).unwrap(), b.grad(&gb).unwrap()) < 1e-5);

        let a = x.clone().require_grad();
        let b = x.require_grad();
        let sa = softmax_last(a.clone());
        let sb = softmax(b.clone(), 1);
        assert!(close(sa.clone(), sb.clone()) < 1e-6);
        let ga = (sa * w.clone()).sum().backward();
        let gb = (sb * w).sum().backward();
        assert!(close(a.grad(&ga).unwrap(), b.grad(&gb).unwrap()) < 1e-6);
    }

    #[test]
    fn layer_norm_matches_burns_and_its_gradients() {
        let device = Device::flex().autodiff();
        let x = Tensor::<2>::random([5, 1024], burn::tensor::Distribution::Normal(0.3, 2.0), &device);
        let w = Tensor::<2>::random([5, 1024], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let g = Tensor::<1>::random([1024], burn::tensor::Distribution::Normal(1.0, 0.2), &device);
        let b = Tensor::<1>::random([1024], burn::tensor::Distribution::Normal(0.0, 0.2), &device);
        let leaves = || (x.clone().require_grad(), g.clone().require_grad(), b.clone().require_grad());
        let (x1, g1, b1) = leaves();
        let (x2, g2, b2) = leaves();
        let y1 = layer_norm(x1.clone(), g1.clone(), b1.clone(), 1e-5);
        let y2 = burn::tensor::module::layer_norm(x2.clone(), g2.clone(), Some(b2.clone()), 1e-5);
        assert!(close(y1.clone(), y2.clone()) < 1e-5);
        let (gr1, gr2) = ((y1 * w.clone()).sum().backward(), (y2 * w).sum().backward());
        assert!(close(x1.grad(&gr1).unwrap(), x2.grad(&gr2).unwrap()) < 1e-4);
        let d = |a: Tensor<1>, b: Tensor<1>| (a - b).abs().max().into_scalar::<f32>();
        assert!(d(g1.grad(&gr1).unwrap(), g2.grad(&gr2).unwrap()) < 1e-4);
        assert!(d(b1.grad(&gr1).unwrap(), b2.grad(&gr2).unwrap()) < 1e-4);
        // A constant input with tracked parameters (pre_layrnorm under LN-tuning).
        let (_, g3, b3) = leaves();
        let y3 = layer_norm(x.clone().inner(), g3.clone(), b3.clone(), 1e-5);
        let gr3 = y3.sum().backward();
        assert!(g3.grad(&gr3).is_some() && b3.grad(&gr3).is_some());
    }

    /// [`norm_bf16_bits`] is the LayerNorm rounded to bfloat16, in bfloat16 storage: the same
    /// values bit for bit as the f32 LayerNorm rounded after it, for a contiguous input and for a
    /// view (the class token's rows), with and without autodiff.
    #[test]
    fn layer_norm_into_bfloat16_is_the_rounded_layer_norm() {
        use burn::module::Param;
        for device in [Device::flex(), Device::flex().autodiff()] {
            let normal = |mean, sd| burn::tensor::Distribution::Normal(mean, sd);
            let mut ln = burn::nn::LayerNormConfig::new(1024).init(&device);
            ln.gamma = Param::from_tensor(Tensor::<1>::random([1024], normal(1.0, 0.2), &device));
            ln.beta = Some(Param::from_tensor(Tensor::<1>::random([1024], normal(0.0, 0.2), &device)));
            let x = Tensor::<3>::random([2, 9, 1024], normal(0.3, 2.0), &device);
            for x in [x.clone(), x.slice([0..2, 0..1, 0..1024])] {
                let bits = norm_bf16_bits(&ln, 1e-5, x.clone());
                assert_eq!(bits.dtype(), DType::BF16);
                let want = bf16::round_bf16(norm(&ln, 1e-5, x)).into_data().try_to_vec::<f32>().unwrap();
                let got = bits.cast(burn::tensor::FloatDType::F32).into_data().try_to_vec::<f32>().unwrap();
                let differ = got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert_eq!(differ, 0, "{device:?}");
            }
        }
    }

    #[test]
    fn frozen_linear_matches_burns_and_keeps_trained_weights_trainable() {
        let device = Device::flex().autodiff();
        let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
        let x = Tensor::<3>::random([3, 37, 24], normal, &device);
        let w = Tensor::<2>::random([24, 40], normal, &device);
        let b = Tensor::<1>::random([40], normal, &device);
        let probe = Tensor::<3>::random([3, 37, 40], normal, &device);
        let d3 = |a: Tensor<3>, b: Tensor<3>| (a - b).abs().max().into_scalar::<f32>();
        // Reference: burn's linear, everything tracked.
        let (x0, w0, b0) = (x.clone().require_grad(), w.clone().require_grad(), b.clone().require_grad());
        let y0 = burn::tensor::module::linear(x0.clone(), w0.clone(), Some(b0.clone()));
        let g0 = (y0.clone() * probe.clone()).sum().backward();
        // Frozen weight, with a transposed view and with a contiguous transposed copy.
        let copy = Tensor::<2>::from_data(w.clone().transpose().into_data(), &device);
        for wt in [w.clone().transpose(), copy] {
            let x1 = x.clone().require_grad();
            let y1 = linear(x1.clone(), w.clone(), wt, b.clone());
            assert!(d3(y1.clone(), y0.clone()) < 1e-5);
            let g1 = (y1 * probe.clone()).sum().backward();
            assert!(d3(x1.grad(&g1).unwrap(), x0.grad(&g0).unwrap()) < 1e-5);
        }
        // A trained weight falls back to burn's linear: its gradients are all there.
        let (x2, w2, b2) = (x.clone().require_grad(), w.clone().require_grad(), b.clone().require_grad());
        let y2 = linear(x2.clone(), w2.clone(), w2.clone().transpose(), b2.clone());
        let g2 = (y2 * probe).sum().backward();
        let d2 = |a: Tensor<2>, b: Tensor<2>| (a - b).abs().max().into_scalar::<f32>();
        assert!(d2(w2.grad(&g2).unwrap(), w0.grad(&g0).unwrap()) < 1e-4);
        assert!(d3(x2.grad(&g2).unwrap(), x0.grad(&g0).unwrap()) < 1e-5);
        assert!(b2.grad(&g2).is_some());
    }

    /// `run` under bf16-mixed precision twice: where oneDNN's native product may run, and inside
    /// a rayon worker, where the products fall back to the f32 kernels.
    fn under_autocast_both_ways(run: impl Fn() -> Vec<f32> + Send + Sync) -> [Vec<f32>; 2] {
        let autocast = || {
            let _autocast = bf16::Autocast::bf16(true);
            run()
        };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        [autocast(), pool.install(autocast)]
    }

    fn worst_difference(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max)
    }

    /// In training, a product's input rounded into bfloat16 storage ([`bf16::product_input`]
    /// on native products) gives the values and the input's gradient of the rounding in f32
    /// storage it replaces, bit for bit, with the weight frozen and trained (burn's `linear`,
    /// which reads the input widened), through the native products and the f32 kernels.
    #[test]
    fn product_inputs_in_bfloat16_storage_train_as_rounded_ones() {
        let device = Device::flex();
        let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
        let x = Tensor::<3>::random([2, 37, 24], normal, &device);
        let w = bf16::round_bf16(Tensor::<2>::random([24, 40], normal, &device));
        let b = bf16::round_bf16(Tensor::<1>::random([40], normal, &device));
        let weights = Tensor::<3>::random([2, 37, 40], normal, &device);
        for trained in [false, true] {
            let run = |storage: bool| {
                let x = x.clone().autodiff().require_grad();
                let w = if trained { w.clone().autodiff().require_grad() } else { w.clone().autodiff() };
                let input = if storage { bf16::product_input(x.clone()) } else { bf16::round_bf16(x.clone()) };
                let y = linear(input, w.clone(), w.transpose(), b.clone().autodiff());
                let grads = (y.clone() * weights.clone().autodiff()).sum().backward();
                let grad = x.grad(&grads).unwrap();
                assert_eq!(grad.dtype(), burn::tensor::DType::F32);
                [y.inner().into_data().try_to_vec::<f32>().unwrap(), grad.into_data().try_to_vec::<f32>().unwrap()]
                    .concat()
            };
            for both in under_autocast_both_ways(|| [run(false), run(true)].concat()) {
                let (rounded, storage) = both.split_at(both.len() / 2);
                let same = rounded.iter().zip(storage).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "trained {trained}: worst {}", worst_difference(rounded, storage));
            }
        }
    }

    /// In training, the MLP's activation in bfloat16 storage ([`bf16::activation_bits`] under
    /// autodiff, its rounded input kept as bits, its backward pass one kernel) gives the input's
    /// gradient of the separate operations it replaces (the rounding of the first product's
    /// output, the activation, the second product's input rounding), bit for bit, for both
    /// activations, through oneDNN's native products and the f32 kernels.
    #[test]
    fn training_through_bfloat16_activations_gives_the_separate_operations_gradients() {
        use burn::tensor::DType;
        let device = Device::flex();
        let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
        let x = Tensor::<3>::random([2, 37, 24], normal, &device);
        let w1 = bf16::round_bf16(Tensor::<2>::random([24, 64], normal, &device));
        let b1 = bf16::round_bf16(Tensor::<1>::random([64], normal, &device));
        let w2 = bf16::round_bf16(Tensor::<2>::random([64, 16], normal, &device) * 0.3);
        let b2 = bf16::round_bf16(Tensor::<1>::random([16], normal, &device));
        // A loss whose gradient differs per output, so that every rounding on the way back shows.
        let weights = Tensor::<3>::random([2, 37, 16], normal, &device);
        for quick in [true, false] {
            let gradient = |fused: bool| {
                let x = x.clone().autodiff().require_grad();
                let h = linear(bf16::product_input(x.clone()), w1.clone(), w1.clone().transpose(), b1.clone());
                let a = match (fused, quick) {
                    (true, _) => {
                        let a = bf16::activation_bits(h, quick);
                        assert_eq!(a.dtype(), DType::BF16);
                        a
                    }
                    (false, true) => bf16::quick_gelu_bf16(bf16::round_bf16(h)),
                    (false, false) => bf16::round_bf16(super::gelu(bf16::round_bf16(h))),
                };
                let y =
                    bf16::round_bf16(linear(bf16::product_input(a), w2.clone(), w2.clone().transpose(), b2.clone()));
                let grads = (y * weights.clone().autodiff()).sum().backward();
                let grad = x.grad(&grads).unwrap();
                assert_eq!(grad.dtype(), DType::F32);
                grad.into_data().try_to_vec::<f32>().unwrap()
            };
            let [native, fallback] = under_autocast_both_ways(|| [gradient(false), gradient(true)].concat());
            for both in [native, fallback] {
                let (separate, fused) = both.split_at(both.len() / 2);
                assert!(separate.iter().any(|g| *g != 0.0));
                let same = separate.iter().zip(fused).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "quick {quick}: worst {}", worst_difference(separate, fused));
            }
        }
    }

    /// Under bf16-mixed precision an inference input left unrounded ([`bf16::product_input`])
    /// multiplies as its bfloat16 values: through oneDNN's native product (outside rayon), and
    /// through the f32 kernels where the native path is not taken (inside a rayon worker), which
    /// round it first.
    #[test]
    fn unrounded_product_inputs_multiply_as_their_bfloat16_values() {
        let device = Device::flex();
        let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
        let x = Tensor::<3>::random([2, 37, 24], normal, &device);
        let w = bf16::round_bf16(Tensor::<2>::random([24, 40], normal, &device));
        let b = bf16::round_bf16(Tensor::<1>::random([40], normal, &device));
        let values = |t: Tensor<3>| t.into_data().try_to_vec::<f32>().unwrap();
        let product = |x: Tensor<3>| linear(x, w.clone(), w.clone().transpose(), b.clone());
        // f32 products of the rounded input.
        let want = values(product(bf16::round_bf16(x.clone())));
        for got in under_autocast_both_ways(|| values(product(bf16::product_input(x.clone())))) {
            let worst = worst_difference(&got, &want);
            // Only the summation order may differ (24 terms of bfloat16 products, exact in f32).
            assert!(worst < 1e-4, "{worst}");
        }
    }

    /// The MLP's activation into bfloat16 storage ([`bf16::activation_bits`]): the values of
    /// the separate passes it replaces (rounding, the activation on bfloat16 values), bit for
    /// bit, for both activations; and the next product reads those bits as the f32 product of
    /// their values, natively and through the f32 kernels (inside a rayon worker), with the
    /// same result up to summation order. The autodiff backend gives the same values.
    #[test]
    fn activations_kept_in_bfloat16_are_the_rounded_activations() {
        use burn::tensor::DType;
        let device = Device::flex();
        let normal = burn::tensor::Distribution::Normal(0.0, 3.0);
        let x = Tensor::<3>::random([2, 37, 64], normal, &device);
        let w = bf16::round_bf16(Tensor::<2>::random([64, 40], normal, &device));
        let b = bf16::round_bf16(Tensor::<1>::random([40], normal, &device));
        let values = |t: Tensor<3>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        for quick in [true, false] {
            let rounded = bf16::round_bf16(x.clone());
            let separate = if quick { bf16::quick_gelu_bf16(rounded) } else { bf16::round_bf16(super::gelu(rounded)) };
            let fused = bf16::activation_bits(x.clone(), quick);
            assert_eq!(fused.dtype(), DType::BF16);
            let (want, got) = (values(separate.clone()), values(fused.clone()));
            assert!(want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "quick {quick}");
            let tracked = bf16::activation_bits(x.clone().autodiff(), quick).inner();
            assert_eq!(values(tracked), want, "autodiff, quick {quick}");
            // The next product.
            let product = |x: Tensor<3>| values(linear(x, w.clone(), w.clone().transpose(), b.clone()));
            let reference = product(separate);
            for got in under_autocast_both_ways(|| product(fused.clone())) {
                let worst = worst_difference(&got, &reference);
                assert!(worst < 1e-3, "quick {quick}: {worst}");
            }
        }
    }

    /// A bfloat16 weight copy with a trained (tracked) bias goes through burn's linear, which
    /// multiplies f32 only: it is widened there, and gives the f32 values' product and bias
    /// gradient (it used to stop on burn's dtype check).
    #[test]
    fn bfloat16_weights_with_a_trained_bias_multiply_as_their_f32_values() {
        use burn::tensor::FloatDType;
        let device = Device::flex().autodiff();
        let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
        let x = bf16::round_bf16(Tensor::<3>::random([2, 9, 24], normal, &device));
        let w = bf16::round_bf16(Tensor::<2>::random([24, 40], normal, &device)).inner();
        let w = Tensor::<2>::from_data(w.into_data(), &device);
        let b = Tensor::<1>::random([40], normal, &device);
        let run = |w: Tensor<2>| {
            let bias = b.clone().require_grad();
            let y = linear(x.clone(), w.clone(), w.transpose(), bias.clone());
            let g = y.clone().sum().backward();
            let gb = bias.grad(&g).expect("the bias is tracked");
            (y.into_data().try_to_vec::<f32>().unwrap(), gb.into_data().try_to_vec::<f32>().unwrap())
        };
        let want = run(w.clone());
        let got = run(w.cast(FloatDType::BF16));
        assert_eq!(got, want);
    }

    /// A frozen weight kept in bfloat16 storage multiplies as the same values in f32 storage in
    /// the same layout, bit for bit, forward and backward, as `[in, out]` and through a
    /// transposed `[out, in]` copy, with bf16-mixed on and off (on: oneDNN's native product
    /// where it has one, whose f32 accumulation may sum in another order, hence the tolerance
    /// there). The layouts are compared with each other's f32 values, not with one reference:
    /// a BLAS may sum a transposed operand in another order (OpenBLAS's small-matrix kernels for
    /// AVX-512 do).
    #[test]
    fn bfloat16_weights_multiply_as_their_f32_values() {
        use burn::tensor::FloatDType;
        let device = Device::flex().autodiff();
        let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
        let x = bf16::round_bf16(Tensor::<3>::random([2, 37, 24], normal, &device));
        let w = bf16::round_bf16(Tensor::<2>::random([24, 40], normal, &device));
        let b = Tensor::<1>::random([40], normal, &device);
        let probe = Tensor::<3>::random([2, 37, 40], normal, &device);
        let copy_t = Tensor::<2>::from_data(w.clone().transpose().into_data(), &device);
        let native = onednn::native_bf16_products();
        for autocast in [false, true] {
            let _autocast = bf16::Autocast::bf16(autocast);
            let run = |w: Tensor<2>, wt: Tensor<2>| {
                let xg = x.clone().require_grad();
                let y = linear(xg.clone(), w, wt, b.clone());
                let g = (y.clone() * probe.clone()).sum().backward();
                let gx = xg.grad(&g).unwrap();
                (y.into_data().try_to_vec::<f32>().unwrap(), gx.into_data().try_to_vec::<f32>().unwrap())
            };
            let (w16, t16) = (w.clone().cast(FloatDType::BF16), copy_t.clone().cast(FloatDType::BF16));
            for (got, want) in [
                (run(w16.clone(), w16.clone().transpose()), run(w.clone(), w.clone().transpose())),
                (run(t16.clone().transpose(), t16.clone()), run(copy_t.clone().transpose(), copy_t.clone())),
            ] {
                for (g, e) in [(&got.0, &want.0), (&got.1, &want.1)] {
                    let worst = g.iter().zip(e).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    if autocast && native {
                        assert!(worst < 1e-4, "autocast {autocast}: {worst}");
                    } else {
                        assert_eq!(g, e, "autocast {autocast}");
                    }
                }
            }
        }
    }
}
