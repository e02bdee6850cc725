//! Small products of bfloat16 values with the CPU's bfloat16 dot products (`vdpbf16ps`,
//! AVX512-BF16): each pair of bfloat16 products is exact in f32 and added to an f32 sum, as
//! oneDNN's bfloat16 products compute. For the attention's per-head products under bf16-mixed
//! precision ([`super::attention`]), whose operands are bfloat16 values in f32 storage.
//!
//! Written here because neither library at hand serves these products: oneDNN's bfloat16 gemm
//! runs on its own OpenMP threads and so cannot be called from the rayon workers that run the
//! heads (each call would start a team of its own), and the gemm crate multiplies f32 only. At
//! the attention's sizes (a block of 64 queries against 257 keys of 64 values) the operands fit
//! in the first-level cache, so one register-blocked loop is all a fast kernel needs.

use super::kernels;

/// Whether the CPU has bfloat16 dot products ([`mm_packed`] runs on them).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `src` as bfloat16 pairs of consecutive values in `dst` (`⌈len/2⌉` of them; an odd length's
/// last pair has a zero upper half), through the vectorised conversion.
fn to_pairs(src: &[f32], dst: &mut [u32]) {
    let halves: &mut [u16] = bytemuck::cast_slice_mut(&mut dst[..src.len().div_ceil(2)]);
    kernels::to_bf16_bits(src, &mut halves[..src.len()]);
    if !src.len().is_multiple_of(2) {
        halves[src.len()] = 0;
    }
}

/// Pairs of two rows: `dst[i] = (even[i], odd[i])` as bfloat16, `odd` zeros where absent; its
/// two buffers of converted rows made once for all the rows of an operand.
struct Interleave {
    lo: Vec<u16>,
    hi: Vec<u16>,
}

impl Interleave {
    fn new(len: usize) -> Self {
        Self { lo: vec![0; len], hi: vec![0; len] }
    }

    fn pairs(&mut self, even: &[f32], odd: Option<&[f32]>, dst: &mut [u32]) {
        let len = even.len();
        kernels::to_bf16_bits(even, &mut self.lo[..len]);
        match odd {
            Some(odd) => kernels::to_bf16_bits(odd, &mut self.hi[..len]),
            None => self.hi[..len].fill(0),
        }
        for ((x, l), h) in dst.iter_mut().zip(&self.lo[..len]).zip(&self.hi[..len]) {
            *x = u32::from(*l) | u32::from(*h) << 16;
        }
    }
}

/// Rows of the left operand per register tile.
const MR: usize = 4;
/// Columns of the right operand per 512-bit vector.
const LANES: usize = 16;

/// `(even, odd)` bfloat16 bits in one 32-bit lane, as `vdpbf16ps` reads a pair.
#[inline(always)]
fn pair(even: f32, odd: f32) -> u32 {
    u32::from(kernels::bf16_bits(even)) | u32::from(kernels::bf16_bits(odd)) << 16
}

/// A right operand `[k, n]` as the kernel reads it: `⌈k/2⌉` rows of `n` (padded to 16) lanes of
/// bfloat16 pairs of consecutive rows, zeros past `k` and `n`. Packed once, multiplied by many
/// left operands ([`mm_packed`]).
pub struct Packed {
    data: Vec<u32>,
    k: usize,
    n: usize,
    stride: usize,
}

impl Packed {
    /// `rhs` `[k, n]` read through its (row, column) strides, rounded to bfloat16.
    pub fn new(k: usize, n: usize, (s, rs, cs): (&[f32], usize, usize)) -> Self {
        assert!(k == 0 || n == 0 || (k - 1) * rs + (n - 1) * cs < s.len());
        let (kp, stride) = (k.div_ceil(2), n.next_multiple_of(LANES));
        let mut data = vec![0u32; kp * stride];
        if cs == 1 {
            // Rows contiguous: two rows make one row of pairs.
            let mut rows = Interleave::new(n);
            for (p, row) in data.chunks_exact_mut(stride).enumerate() {
                rows.pairs(&s[2 * p * rs..][..n], (2 * p + 1 < k).then(|| &s[(2 * p + 1) * rs..][..n]), &mut row[..n]);
            }
        } else if rs == 1 {
            // Columns contiguous (a transposed view): each column is a run of pairs, which
            // lands in a column of the packed rows.
            let mut column = vec![0u32; kp];
            for j in 0..n {
                to_pairs(&s[j * cs..][..k], &mut column);
                for (p, x) in column.iter().enumerate() {
                    data[p * stride + j] = *x;
                }
            }
        } else {
            let at = |kk: usize, j: usize| if kk < k { s[kk * rs + j * cs] } else { 0.0 };
            for j in 0..n {
                for p in 0..kp {
                    data[p * stride + j] = pair(at(2 * p, j), at(2 * p + 1, j));
                }
            }
        }
        Self { data, k, n, stride }
    }

    /// Rows `k0..k0 + k` and columns `j0..j0 + n` of the operand: `k0` even, `k` even unless
    /// the block ends where the operand does, `j0` a multiple of 16.
    pub fn block(&self, k0: usize, k: usize, j0: usize, n: usize) -> Block<'_> {
        assert!(k0.is_multiple_of(2) && (k.is_multiple_of(2) || k0 + k == self.k) && k0 + k <= self.k);
        assert!(j0.is_multiple_of(LANES) && j0 + n <= self.n && n > 0);
        Block { data: &self.data[k0 / 2 * self.stride + j0..], k, n, stride: self.stride }
    }
}

/// A block of a [`Packed`] operand ([`Packed::block`]).
pub struct Block<'a> {
    data: &'a [u32],
    k: usize,
    n: usize,
    stride: usize,
}

/// `dst[m, n] = scale · lhs[m, k] · rhs[k, n]` (`dst` row-major, `m·n` values), `k` and `n` the
/// block's, with both operands rounded to bfloat16 (to nearest even; they are meant to hold
/// bfloat16 values already) and f32 sums, `lhs` read through its (row, column) strides; one
/// thread. Returns `false`, and writes nothing, on a CPU without bfloat16 dot products
/// ([`available`]).
pub fn mm_packed(m: usize, (s, rs, cs): (&[f32], usize, usize), rhs: &Block<'_>, scale: f32, dst: &mut [f32]) -> bool {
    if !available() {
        return false;
    }
    let (k, n) = (rhs.k, rhs.n);
    let kp = k.div_ceil(2);
    assert!(dst.len() >= m * n && m > 0 && k > 0);
    assert!((m - 1) * rs + (k - 1) * cs < s.len());
    // lhs in blocks of MR rows (zeros past m and k), each `kp` pairs of MR rows: row by row
    // (`[MR][kp]`) where its rows are contiguous, pair by pair (`[kp][MR]`) where its columns
    // are (fewer scattered writes either way).
    let mut a = vec![0u32; m.div_ceil(MR) * kp * MR];
    let by_pairs = cs != 1 && rs == 1;
    let (row_step, pair_step) = if by_pairs { (1, MR) } else { (kp, 1) };
    let at = |i: usize, p: usize| (i / MR) * kp * MR + (i % MR) * row_step + p * pair_step;
    if cs == 1 {
        for i in 0..m {
            to_pairs(&s[i * rs..][..k], &mut a[at(i, 0)..][..kp]);
        }
    } else if by_pairs {
        // Columns contiguous (a transposed view): two columns make one pair in every row.
        let (mut column, mut columns) = (vec![0u32; m], Interleave::new(m));
        for p in 0..kp {
            columns.pairs(&s[2 * p * cs..][..m], (2 * p + 1 < k).then(|| &s[(2 * p + 1) * cs..][..m]), &mut column);
            for (i, x) in column.iter().enumerate() {
                a[at(i, p)] = *x;
            }
        }
    } else {
        for i in 0..m {
            for p in 0..kp {
                let value = |kk: usize| if kk < k { s[i * rs + kk * cs] } else { 0.0 };
                a[at(i, p)] = pair(value(2 * p), value(2 * p + 1));
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    for (panel, i0) in (0..m).step_by(MR).enumerate() {
        let ap = &a[panel * kp * MR..(panel + 1) * kp * MR];
        for j0 in (0..n).step_by(4 * LANES) {
            let out = Out { rows: MR.min(m - i0), cols: (n - j0).min(4 * LANES), stride: n, scale };
            let ap = (ap, row_step, pair_step);
            let (bp, dp) = (&rhs.data[j0..], &mut dst[i0 * n + j0..]);
            // SAFETY: the CPU has AVX512-BF16 (`available`); the tile checks its slices' lengths.
            unsafe {
                match out.cols.div_ceil(LANES) {
                    4 => tile_avx512::<4>(kp, ap, bp, rhs.stride, out, dp),
                    3 => tile_avx512::<3>(kp, ap, bp, rhs.stride, out, dp),
                    2 => tile_avx512::<2>(kp, ap, bp, rhs.stride, out, dp),
                    _ => tile_avx512::<1>(kp, ap, bp, rhs.stride, out, dp),
                }
            }
        }
    }
    true
}

/// Where a tile's sums go: `rows x cols` of a row-major destination `stride` apart, scaled.
#[derive(Clone, Copy)]
struct Out {
    rows: usize,
    cols: usize,
    stride: usize,
    scale: f32,
}

/// One `MR x 16·V` tile: `a` MR rows of `kp` pairs (row `r`'s pair `p` at `r · row_step + p ·
/// pair_step`), `b` `kp` rows of `stride` pairs; `out.rows x out.cols` of the sums, scaled,
/// into `dst` (the rest of the tile is padding, not stored).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile_avx512<const V: usize>(
    kp: usize,
    (a, row_step, pair_step): (&[u32], usize, usize),
    b: &[u32],
    stride: usize,
    out: Out,
    dst: &mut [f32],
) {
    use std::arch::x86_64::*;
    assert!(kp > 0 && a.len() > (MR - 1) * row_step + (kp - 1) * pair_step);
    assert!(b.len() >= (kp - 1) * stride + V * LANES);
    assert!(
        out.rows <= MR && out.cols <= V * LANES && out.rows > 0 && dst.len() >= (out.rows - 1) * out.stride + out.cols
    );
    let mut acc = [[_mm512_setzero_ps(); V]; MR];
    for p in 0..kp {
        // 16 lanes of bfloat16 pairs are the bits of a __m512bh.
        // SAFETY: in bounds by the assert above; any bits are a valid __m512bh.
        let bv: [__m512bh; V] = std::array::from_fn(|v| unsafe {
            std::mem::transmute(_mm512_loadu_si512(b.as_ptr().add(p * stride + v * LANES).cast()))
        });
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            let pair: __m512bh =
                unsafe { std::mem::transmute(_mm512_set1_epi32(a[r * row_step + p * pair_step] as i32)) };
            for (x, bv) in row.iter_mut().zip(&bv) {
                *x = _mm512_dpbf16_ps(*x, pair, *bv);
            }
        }
    }
    let scale = _mm512_set1_ps(out.scale);
    for (r, row) in acc.iter().enumerate().take(out.rows) {
        for (v, x) in row.iter().enumerate() {
            let first = v * LANES;
            if first >= out.cols {
                break;
            }
            let mask = (u32::MAX >> (32 - (out.cols - first).min(LANES))) as u16;
            // SAFETY: the masked lanes lie within the row's `cols` values (assert above).
            unsafe {
                _mm512_mask_storeu_ps(dst.as_mut_ptr().add(r * out.stride + first), mask, _mm512_mul_ps(*x, scale))
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic bfloat16 values in [-2, 2).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let x = ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0;
                f32::from_bits(x.to_bits() & 0xffff_0000)
            })
            .collect()
    }

    /// Against sums in f64 of the same (bfloat16) values, for the attention's shapes and odd
    /// ones (k odd, n not a multiple of 16, m not a multiple of 4), through plain and transposed
    /// strides: within f32 rounding of the sum of magnitudes. Skips where the CPU lacks
    /// bfloat16 dot products (the attention then multiplies in f32).
    #[test]
    fn bfloat16_dot_products_are_sums_of_bfloat16_products() {
        if !available() {
            eprintln!("skipped: no AVX512-BF16 on this CPU");
            return;
        }
        for (m, n, k) in [(64, 257, 64), (64, 64, 257), (257, 64, 64), (1, 1, 1), (5, 17, 3), (3, 70, 131)] {
            let (x, y) = (values(m * k, 1 + m as u64), values(k * n, 7 + n as u64));
            // Each operand row-major and transposed ([n][k] storage read as [k][n]).
            for (lhs_t, rhs_t) in [(false, false), (false, true), (true, false), (true, true)] {
                let lhs = if lhs_t { (&x[..], 1, m) } else { (&x[..], k, 1) };
                let rhs = if rhs_t { (&y[..], 1, k) } else { (&y[..], n, 1) };
                let mut got = vec![f32::NAN; m * n];
                assert!(mm_packed(m, lhs, &Packed::new(k, n, rhs).block(0, k, 0, n), 0.5, &mut got));
                for i in 0..m {
                    for j in 0..n {
                        let term =
                            |kk: usize| lhs.0[i * lhs.1 + kk * lhs.2] as f64 * rhs.0[kk * rhs.1 + j * rhs.2] as f64;
                        let exact: f64 = (0..k).map(term).sum::<f64>() * 0.5;
                        let size: f64 = (0..k).map(|kk| term(kk).abs()).sum::<f64>() * 0.5;
                        let err = (got[i * n + j] as f64 - exact).abs();
                        assert!(
                            err <= size * k as f64 * f32::EPSILON as f64 + 1e-30,
                            "{m}x{n}x{k} {lhs_t} {rhs_t} [{i},{j}]: {err:e}"
                        );
                    }
                }
            }
        }
    }
}
