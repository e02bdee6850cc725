//! Attention as one pass per head: `softmax(q kᵀ · scale) v` over blocks of keys with a running
//! maximum (as PyTorch's CPU flash-attention kernel), the backward pass recomputing the
//! probabilities from the log-sum-exp rather than keeping them. In f32 it is CLIP's attention
//! (5 % faster than burn's attention kernel in inference, as fast as its matmul-softmax-matmul in
//! training with 8 % less memory: BENCHMARKS.md); with `bf16` it is ATen's kernel on bfloat16
//! inputs for bf16-mixed precision ([`super::bf16`]): the unnormalised probabilities rounded
//! before their product with the values, the output rounded, and in the backward pass the
//! probabilities and score gradients rounded for their products and each block of queries'
//! share added to the keys' and values' gradients in bfloat16.

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, TensorMetadata};
use burn::prelude::*;
use burn::tensor::{Bytes, DType, Shape};
use rayon::prelude::*;

use super::dot_bf16::{self, Packed};
use super::{FusedBackward, FusedOps, contiguous, from_f32, kernels};

/// What the bf16-mixed attention's per-head products run on here, for `dfdet info --system`.
pub fn bf16_products() -> &'static str {
    if dot_bf16::available() {
        "bfloat16 dot products (AVX512-BF16 vdpbf16ps)"
    } else {
        "f32 products of bfloat16 values (gemm crate; the CPU has no AVX512-BF16)"
    }
}

/// `softmax(q kᵀ · scale) v` over `[b, h, t, d]` bfloat16 queries, keys and values (any
/// layout), as PyTorch's CPU `scaled_dot_product_attention` computes it in bfloat16;
/// differentiable in all three.
pub fn attention_bf16(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        scale,
        true,
    ))
}

/// The same attention in f32 (no rounding), differentiable: one pass per head over blocks of
/// keys, the probabilities recomputed in the backward pass rather than kept.
pub fn attention_f32(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        scale,
        false,
    ))
}

// ------------------------------------------------------------------------------------------------
// The attention kernels, per (batch, head), on contiguous `[t, d]` slices.

/// Keys per block of ATen's kernel (`kv_split_size`).
const KV_SPLIT: usize = 512;

/// Queries per block of ATen's kernel for `tq` queries (`q_split_size`): the gradients of the
/// keys and values are rounded to bfloat16 after each block's contribution.
fn q_split(tq: usize) -> usize {
    if tq >= 768 {
        256
    } else if tq >= 192 {
        64
    } else {
        32
    }
}

/// `dst[m, n] = scale · lhs[m, k] · rhs[k, n]`, operands read through their (row, column)
/// strides; one thread (the caller runs heads in parallel). Where the right operand comes
/// `packed` too (bfloat16 values, [`Packed`]), the CPU's bfloat16 dot products multiply: the
/// same products, their f32 sums in another order.
#[allow(clippy::too_many_arguments)]
fn mm(
    m: usize,
    n: usize,
    k: usize,
    lhs: (&[f32], usize, usize),
    (rhs, packed): ((&[f32], usize, usize), Option<dot_bf16::Block<'_>>),
    scale: f32,
    dst: &mut [f32],
) {
    assert!(dst.len() >= m * n && m > 0 && n > 0);
    if let Some(block) = packed
        && k > 0
        && dot_bf16::mm_packed(m, lhs, &block, scale, dst)
    {
        return;
    }
    if k == 0 {
        dst[..m * n].fill(0.0);
        return;
    }
    let span = |(s, rs, cs): (&[f32], usize, usize), rows: usize, cols: usize| {
        assert!((rows - 1) * rs + (cols - 1) * cs < s.len());
    };
    span(lhs, m, k);
    span(rhs, k, n);
    // gemm's small-matrix paths read `dst` even when told not to: start from zeros.
    dst[..m * n].fill(0.0);
    // SAFETY: the asserts above keep every operand access inside its slice and `dst` holds m·n.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.0.as_ptr(),
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0.as_ptr(),
            rhs.2 as isize,
            rhs.1 as isize,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// One head's forward pass: `out` `[tq, d]` and the log-sum-exp of each query's scores; the
/// probabilities meet the values rounded to bfloat16 (unnormalised) and the output is rounded
/// when `round`. The element-wise passes are [`kernels`]' (vectorised, dispatched by CPU).
#[allow(clippy::too_many_arguments)]
fn head_forward(
    q: Rows<'_>,
    k: Rows<'_>,
    v: Rows<'_>,
    d: usize,
    scale: f32,
    round: bool,
    out: &mut [f32],
    lse: &mut [f32],
) {
    let (tq, t) = (q.n, k.n);
    let qs = q_split(tq);
    let mut scores = vec![0f32; qs * KV_SPLIT.min(t)];
    let mut probs = vec![0f32; qs * KV_SPLIT.min(t)];
    let mut pv = vec![0f32; qs * d];
    // kᵀ and v as the bfloat16 dot products read them, once per head.
    let packed = packed_operands(round, [(d, t, k.transposed()), (t, d, v.plain())]);
    let (kt, vp) = (packed.first(), packed.get(1));
    for m0 in (0..tq).step_by(qs) {
        let qb = qs.min(tq - m0);
        let mut max = vec![f32::NEG_INFINITY; qb];
        let mut sum = vec![0f32; qb];
        let dst = &mut out[m0 * d..(m0 + qb) * d];
        dst.fill(0.0);
        for n0 in (0..t).step_by(KV_SPLIT) {
            let kb = KV_SPLIT.min(t - n0);
            // Scores in f32, scaled after the product.
            let keys = kt.map(|p| p.block(0, d, n0, kb));
            mm(qb, kb, d, q.from(m0).plain(), (k.from(n0).transposed(), keys), 1.0, &mut scores);
            for r in 0..qb {
                let row = &mut scores[r * kb..(r + 1) * kb];
                let mut block_max = f32::NEG_INFINITY;
                kernels::scale_and_max(row, scale, &mut block_max);
                let new_max = max[r].max(block_max);
                let p = &mut probs[r * kb..(r + 1) * kb];
                if new_max == f32::NEG_INFINITY {
                    p.fill(0.0);
                    continue;
                }
                let mut block_sum = 0f32;
                kernels::exp_and_sum(row, new_max, p, &mut block_sum, round);
                let rescale = kernels::exp(max[r] - new_max);
                sum[r] = block_sum + rescale * sum[r];
                max[r] = new_max;
                if n0 > 0 {
                    kernels::scale_by(&mut dst[r * d..(r + 1) * d], rescale, false);
                }
            }
            let values = vp.map(|p| p.block(n0, kb, 0, d));
            mm(qb, d, kb, (&probs, kb, 1), (v.from(n0).plain(), values), 1.0, &mut pv);
            kernels::scale_add(dst, 1.0, &pv[..qb * d], false);
        }
        for r in 0..qb {
            kernels::scale_by(&mut dst[r * d..(r + 1) * d], 1.0 / sum[r], round);
            lse[m0 + r] = max[r] + sum[r].ln();
        }
    }
}

/// One head's backward pass into `gq` `[tq, d]`, `gk` and `gv` `[t, d]`, from the forward's
/// inputs, output and log-sum-exp and the output's gradient `g`; in bfloat16 as ATen when
/// `round` (the probabilities and score gradients rounded for their products, each block's
/// share added to a bfloat16 gradient).
#[allow(clippy::too_many_arguments)]
fn head_backward(
    (q, k, v): (Rows<'_>, Rows<'_>, Rows<'_>),
    (out, lse, g): (Rows<'_>, &[f32], Rows<'_>),
    d: usize,
    scale: f32,
    round: bool,
    gq: &mut [f32],
    gk: &mut [f32],
    gv: &mut [f32],
) {
    let (tq, t) = (q.n, k.n);
    let qs = q_split(tq);
    let block = qs * KV_SPLIT.min(t);
    let (mut a, mut a16, mut da) = (vec![0f32; block], vec![0f32; block], vec![0f32; block]);
    let mut part = vec![0f32; KV_SPLIT.max(qs) * d];
    gq.fill(0.0);
    gk.fill(0.0);
    gv.fill(0.0);
    // The right operands as the bfloat16 dot products read them, once per head: kᵀ, k, vᵀ, g, q.
    let packed = packed_operands(
        round,
        [(d, t, k.transposed()), (t, d, k.plain()), (d, t, v.transposed()), (tq, d, g.plain()), (tq, d, q.plain())],
    );
    let (kt, kp, vt, gp, qp) = (packed.first(), packed.get(1), packed.get(2), packed.get(3), packed.get(4));
    for m0 in (0..tq).step_by(qs) {
        let qb = qs.min(tq - m0);
        let rows = m0 * d..(m0 + qb) * d;
        let dsum: Vec<f32> = (0..qb)
            .map(|r| {
                let mut total = 0.0;
                kernels::dot_into(g.row(m0 + r, d), out.row(m0 + r, d), &mut total);
                total
            })
            .collect();
        for n0 in (0..t).step_by(KV_SPLIT) {
            let kb = KV_SPLIT.min(t - n0);
            let keys = n0 * d..(n0 + kb) * d;
            // The probabilities again, from the scores and the log-sum-exp.
            let kt_block = kt.map(|p| p.block(0, d, n0, kb));
            mm(qb, kb, d, q.from(m0).plain(), (k.from(n0).transposed(), kt_block), scale, &mut a);
            for r in 0..qb {
                let span = r * kb..(r + 1) * kb;
                kernels::exp_shifted(&mut a[span.clone()], lse[m0 + r], &mut a16[span], round);
            }
            // gv += aᵀ g, with the rounded probabilities in bfloat16
            let probs = if round { &a16 } else { &a };
            let grads = gp.map(|p| p.block(m0, qb, 0, d));
            mm(kb, d, qb, (probs, 1, kb), (g.from(m0).plain(), grads), 1.0, &mut part);
            kernels::scale_add(&mut gv[keys.clone()], 1.0, &part[..kb * d], round);
            // ds = a (g vᵀ - Σ g·out)
            let values = vt.map(|p| p.block(0, d, n0, kb));
            mm(qb, kb, d, g.from(m0).plain(), (v.from(n0).transposed(), values), 1.0, &mut da);
            for ((da, a), sum) in da.chunks_mut(kb).zip(a.chunks(kb)).zip(&dsum) {
                kernels::attention_ds(a, da, *sum, round);
            }
            // gq += scale · ds k ; gk += scale · dsᵀ q
            let k_block = kp.map(|p| p.block(n0, kb, 0, d));
            mm(qb, d, kb, (&da, kb, 1), (k.from(n0).plain(), k_block), scale, &mut part);
            kernels::scale_add(&mut gq[rows.clone()], 1.0, &part[..qb * d], round);
            let queries = qp.map(|p| p.block(m0, qb, 0, d));
            mm(kb, d, qb, (&da, 1, kb), (q.from(m0).plain(), queries), scale, &mut part);
            kernels::scale_add(&mut gk[keys], 1.0, &part[..kb * d], round);
        }
    }
}

/// Whether the products of a `bf16` attention run on the CPU's bfloat16 dot products.
fn dot_products(bf16: bool) -> bool {
    bf16 && dot_bf16::available()
}

/// A `[k, n]` operand: its values and (row, column) strides.
type Operand<'a> = (&'a [f32], usize, usize);

/// The operands `(k, n, (values, row stride, column stride))` packed for the bfloat16 dot
/// products ([`Packed`]) where `bf16` and the CPU has them; none otherwise (f32 products).
fn packed_operands<const N: usize>(bf16: bool, operands: [(usize, usize, Operand<'_>); N]) -> Vec<Packed> {
    if !dot_products(bf16) {
        return Vec::new();
    }
    operands.into_iter().map(|(k, n, rhs)| Packed::new(k, n, rhs)).collect()
}

/// One head's rows in place: row `r` is `values[r · stride..][..d]`, `n` rows.
#[derive(Clone, Copy)]
struct Rows<'a> {
    values: &'a [f32],
    stride: usize,
    n: usize,
}

impl<'a> Rows<'a> {
    /// The rows from `r` on.
    fn from(self, r: usize) -> Self {
        Self { values: &self.values[(r * self.stride).min(self.values.len())..], stride: self.stride, n: self.n - r }
    }

    fn row(self, r: usize, d: usize) -> &'a [f32] {
        &self.values[r * self.stride..][..d]
    }

    /// The rows as they are where `in_place` or they are contiguous, else copied into `buf`
    /// contiguous. The f32 products read the heads of a `[b, t, h·d]` projection copied: their
    /// rows lie a multiple of 4 KiB apart and so share a handful of first-level cache sets,
    /// which made the f32 forward pass 0-6 % slower read in place. The bfloat16 products read
    /// them in place, since they copy (pack) them anyway.
    fn compact<'b>(self, d: usize, in_place: bool, buf: &'b mut Vec<f32>) -> Rows<'b>
    where
        'a: 'b,
    {
        if in_place || self.stride == d {
            return self;
        }
        buf.clear();
        for r in 0..self.n {
            buf.extend_from_slice(self.row(r, d));
        }
        Rows { values: buf, stride: d, n: self.n }
    }

    /// As a `[rows, d]` operand of [`mm`] (`(values, row stride, column stride)`).
    fn plain(self) -> (&'a [f32], usize, usize) {
        (self.values, self.stride, 1)
    }

    /// As a `[d, rows]` operand (the transpose).
    fn transposed(self) -> (&'a [f32], usize, usize) {
        (self.values, 1, self.stride)
    }
}

/// A `[b, h, t, d]` f32 tensor read in place through its strides (the heads of a `[b, t, h·d]`
/// projection are a strided view of it: no copy), made contiguous first only where its last
/// stride is not 1 or a stride is negative.
struct Heads {
    x: FlexTensor,
    /// Batch and head strides.
    strides: [usize; 2],
    row: usize,
    start: usize,
    dims: [usize; 4],
}

impl Heads {
    fn new(x: FlexTensor) -> Self {
        assert_eq!(x.dtype(), DType::F32, "the fused attention computes on f32 storage");
        let usable = |x: &FlexTensor| {
            let st = x.layout().strides();
            st.len() == 4 && st[3] == 1 && st.iter().all(|s| *s >= 0)
        };
        let x = if usable(&x) { x } else { contiguous(x) };
        let (st, s) = (x.layout().strides().to_vec(), x.shape());
        let start = x.layout().start_offset();
        Self {
            strides: [st[0] as usize, st[1] as usize],
            row: st[2] as usize,
            start,
            dims: [s[0], s[1], s[2], s[3]],
            x,
        }
    }

    /// Head `i` of the `b·h` (batch-major).
    fn head(&self, i: usize) -> Rows<'_> {
        let [_, h, t, d] = self.dims;
        let first = self.start + (i / h) * self.strides[0] + (i % h) * self.strides[1];
        let values: &[f32] = self.x.storage();
        let len = if t == 0 { 0 } else { (t - 1) * self.row + d };
        Rows { values: &values[first..first + len], stride: self.row, n: t }
    }
}

/// A new `[b, h, t, d]` f32 tensor laid out as `[b, t, h, d]` (so that the heads' `[b, t, h·d]`
/// is contiguous, as the projection after attention reads it), written head by head from
/// parallel tasks.
struct HeadsOut {
    values: Vec<f32>,
    dims: [usize; 4],
}

/// The output's buffer, shared by the tasks that write disjoint heads of it.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: each task writes only its own head's values ([`HeadsOut::write`]).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl HeadsOut {
    fn new(dims: [usize; 4]) -> Self {
        Self { values: vec![0f32; dims.iter().product()], dims }
    }

    fn shared(&mut self) -> Shared {
        Shared(self.values.as_mut_ptr())
    }

    /// Head `i`'s values `[t, d]` (contiguous) into their places.
    ///
    /// # Safety
    /// `to` is this output's buffer, and no other task writes head `i`.
    unsafe fn write(&self, to: Shared, i: usize, head: &[f32]) {
        let [_, h, t, d] = self.dims;
        let (b, hi) = (i / h, i % h);
        assert_eq!(head.len(), t * d);
        for (r, row) in head.chunks_exact(d).enumerate() {
            let at = ((b * t + r) * h + hi) * d;
            assert!(at + d <= self.values.len());
            // SAFETY: in bounds (assert above); the caller keeps the heads' writes disjoint.
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), to.0.add(at), d) };
        }
    }

    fn tensor(self) -> FlexTensor {
        let [_, h, t, d] = self.dims;
        let strides = vec![(t * h * d) as isize, d as isize, (h * d) as isize, 1];
        FlexTensor::new(Bytes::from_elems(self.values), Layout::new(Shape::new(self.dims), strides, 0), DType::F32)
    }
}

/// The forward pass on host tensors: the output and the log-sum-exp `[b, h, tq]`.
pub(super) fn attention_forward(
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    scale: f64,
    bf16: bool,
) -> (FlexTensor, FlexTensor) {
    let (q, k, v) = (Heads::new(q), Heads::new(k), Heads::new(v));
    let [b, h, tq, d] = q.dims;
    let mut out = HeadsOut::new(q.dims);
    let to = out.shared();
    let mut lse = vec![0f32; b * h * tq];
    let in_place = dot_products(bf16);
    lse.par_chunks_mut(tq.max(1)).enumerate().for_each(|(i, l)| {
        let mut o = vec![0f32; tq * d];
        let mut bufs: [Vec<f32>; 3] = Default::default();
        let [qb, kb, vb] = &mut bufs;
        let (q, k, v) = (
            q.head(i).compact(d, in_place, qb),
            k.head(i).compact(d, in_place, kb),
            v.head(i).compact(d, in_place, vb),
        );
        head_forward(q, k, v, d, scale as f32, bf16, &mut o, l);
        // SAFETY: `to` is `out`'s buffer; task i alone writes head i.
        unsafe { out.write(to, i, &o) };
    });
    (out.tensor(), from_f32(lse, Shape::new([b, h, tq])))
}

/// The backward pass on host tensors: the gradients of `q`, `k` and `v`.
pub(super) fn attention_backward(
    (q, k, v): (FlexTensor, FlexTensor, FlexTensor),
    (out, lse): (FlexTensor, FlexTensor),
    grad: FlexTensor,
    scale: f64,
    bf16: bool,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (q, k, v) = (Heads::new(q), Heads::new(k), Heads::new(v));
    let (out, grad, lse) = (Heads::new(out), Heads::new(grad), contiguous(lse));
    let lv: &[f32] = lse.storage();
    let [b, h, tq, d] = q.dims;
    let t = k.dims[2];
    let (mut gq, mut gk, mut gv) = (HeadsOut::new(q.dims), HeadsOut::new(k.dims), HeadsOut::new(k.dims));
    let to = (gq.shared(), gk.shared(), gv.shared());
    let in_place = dot_products(bf16);
    (0..b * h).into_par_iter().for_each(|i| {
        let (mut hq, mut hk, mut hv) = (vec![0f32; tq * d], vec![0f32; t * d], vec![0f32; t * d]);
        let mut bufs: [Vec<f32>; 5] = Default::default();
        let [qb, kb, vb, ob, gb] = &mut bufs;
        let inputs = (
            q.head(i).compact(d, in_place, qb),
            k.head(i).compact(d, in_place, kb),
            v.head(i).compact(d, in_place, vb),
        );
        let outputs =
            (out.head(i).compact(d, in_place, ob), &lv[i * tq..(i + 1) * tq], grad.head(i).compact(d, in_place, gb));
        head_backward(inputs, outputs, d, scale as f32, bf16, &mut hq, &mut hk, &mut hv);
        // SAFETY: the three buffers are theirs; task i alone writes head i.
        unsafe {
            gq.write(to.0, i, &hq);
            gk.write(to.1, i, &hk);
            gv.write(to.2, i, &hv);
        }
    });
    (gq.tensor(), gk.tensor(), gv.tensor())
}

pub(super) fn autodiff_attention<B, C>(
    q: FloatTensor<Autodiff<B, C>>,
    k: FloatTensor<Autodiff<B, C>>,
    v: FloatTensor<Autodiff<B, C>>,
    scale: f64,
    bf16: bool,
) -> FloatTensor<Autodiff<B, C>>
where
    B: Backend + FusedOps + FusedBackward,
    C: CheckpointStrategy,
{
    #[derive(Debug)]
    struct Attention;

    /// q, k, v, the output, its log-sum-exp, the scale, bfloat16 or not.
    type Saved<B> = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, f64, bool);

    impl<B: Backend + FusedBackward> Backward<B, 3> for Attention {
        type State = Saved<B>;

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let grad = grads.consume::<B>(&ops.node);
            let (q, k, v, out, lse, scale, bf16) = ops.state;
            let (gq, gk, gv) = B::fused_attention_backward((q, k, v), (out, lse), grad, scale, bf16);
            for (node, g) in ops.parents.into_iter().zip([gq, gk, gv]) {
                if let Some(node) = node {
                    grads.register::<B>(node.id, g);
                }
            }
        }
    }

    match Attention.prepare::<C>([q.node(), k.node(), v.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let (q, k, v) = (q.into_primitive(), k.into_primitive(), v.into_primitive());
            let (out, lse) = B::fused_attention_forward(q.clone(), k.clone(), v.clone(), scale, bf16);
            prep.finish((q, k, v, out.clone(), lse, scale, bf16), out)
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(B::fused_attention(q.into_primitive(), k.into_primitive(), v.into_primitive(), scale, bf16))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fused::bf16::round_bf16;
    use burn::tensor::Distribution;

    /// The emulated bfloat16 attention against f32 attention (softmax of the scaled scores
    /// times the values), values and gradients: close (bfloat16's 2^-9 relative steps), but
    /// not equal, so rounding happens. Sizes cover several query blocks (200 queries: blocks
    /// of 64) and several key blocks (600 keys: 512 + 88).
    #[test]
    fn attention_is_f32_attention_within_bfloat16_steps() {
        let device = Device::flex().autodiff();
        for (tq, t) in [(17, 17), (200, 200), (600, 600), (1, 600)] {
            let shape = |n: usize| [2, 3, n, 16];
            let leaf = |n: usize| round_bf16(Tensor::<4>::random(shape(n), Distribution::Normal(0.0, 1.0), &device));
            let (q, k, v) = (leaf(tq), leaf(t), leaf(t));
            let probe = Tensor::<4>::random(shape(tq), Distribution::Normal(0.0, 1.0), &device);
            let scale = 0.25;
            let run = |bf16: bool| {
                let (q, k, v) = (q.clone().require_grad(), k.clone().require_grad(), v.clone().require_grad());
                let out = if bf16 {
                    attention_bf16(q.clone(), k.clone(), v.clone(), scale)
                } else {
                    super::super::softmax_last(q.clone().matmul(k.clone().swap_dims(2, 3)) * scale).matmul(v.clone())
                };
                let grads = (out.clone() * probe.clone()).sum().backward();
                let g = |x: &Tensor<4>| x.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
                (out.inner().into_data().try_to_vec::<f32>().unwrap(), [g(&q), g(&k), g(&v)])
            };
            let ((o16, g16), (o32, g32)) = (run(true), run(false));
            let rel = |a: &[f32], b: &[f32]| {
                let d: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
                let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
                (d / n).sqrt()
            };
            let out_err = rel(&o16, &o32);
            assert!(out_err > 1e-4 && out_err < 1e-2, "{tq}x{t}: output {out_err:e}");
            for (name, a, b) in [("q", &g16[0], &g32[0]), ("k", &g16[1], &g32[1]), ("v", &g16[2], &g32[2])] {
                let e = rel(a, b);
                assert!(e > 1e-4 && e < 2e-2, "{tq}x{t}: gradient of {name} {e:e}");
            }
            // The outputs and gradients are bfloat16 values.
            for x in o16.iter().chain(g16.iter().flatten()) {
                assert_eq!(x.to_bits() & 0xffff, 0, "{x:e}");
            }
        }
    }
}
