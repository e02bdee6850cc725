//! oneDNN (`libdnnl.so.2`, Debian's `libdnnl2`; what PyTorch multiplies bfloat16 with on the
//! CPU), loaded at run time like OpenBLAS ([`super::blas`]), for two products:
//!
//! - `dnnl_sgemm`: a third library for the f32 products ([`super::products::Kernels::OneDnn`]);
//! - `dnnl_gemm_bf16bf16f32`: bfloat16 operands, f32 accumulation and output, the native
//!   bfloat16 product of bf16-mixed training ([`super::bf16`]). oneDNN has kernels for it from
//!   AVX-512 on (`avx512_core`; native bfloat16 dot products with AVX512-BF16 or AMX) and answers
//!   "unimplemented" below that (AVX2), where dfdet multiplies the bfloat16 values in f32
//!   instead: the same products, exact in f32, with f32 accumulation.
//!
//! Both are row-major BLAS-style calls. oneDNN runs them on its OpenMP threads (as many as the
//! cores by default); dfdet calls it only from outside rayon's workers, as OpenBLAS.

use std::ffi::{c_char, c_int};
use std::sync::OnceLock;

use libloading::Library;

/// `dnnl_dim_t` is `int64_t`.
type Dim = i64;
/// `dnnl_sgemm` (`T` = f32) and `dnnl_gemm_bf16bf16f32` (`T` = bfloat16 bits): row-major
/// `C = alpha · op(A) · op(B) + beta · C` with an f32 `C`.
type Gemm<T> =
    unsafe extern "C" fn(c_char, c_char, Dim, Dim, Dim, f32, *const T, Dim, *const T, Dim, f32, *mut f32, Dim) -> c_int;

#[repr(C)]
struct Version {
    major: c_int,
    minor: c_int,
    patch: c_int,
    hash: *const c_char,
    cpu_runtime: u32,
    gpu_runtime: u32,
}
type GetVersion = unsafe extern "C" fn() -> *const Version;

/// `dnnl_success`.
const SUCCESS: c_int = 0;

/// oneDNN's products and what it says of itself.
pub struct OneDnn {
    sgemm: Gemm<f32>,
    gemm_bf16: Option<Gemm<u16>>,
    /// Whether `dnnl_gemm_bf16bf16f32` runs on this CPU (oneDNN has a kernel for it).
    pub bf16: bool,
    /// `oneDNN <version>`.
    pub description: String,
    _library: Library,
}

/// The library names tried, in order.
const NAMES: [&str; 2] = ["libdnnl.so.2", "libdnnl.so"];

impl OneDnn {
    fn load() -> Option<Self> {
        // SAFETY: oneDNN's initialisers only set up its tables.
        let library = NAMES.iter().find_map(|n| unsafe { Library::new(n) }.ok())?;
        // SAFETY: the symbols are oneDNN's documented C functions, with these signatures.
        let mut dnnl = unsafe {
            let sgemm = *library.get::<Gemm<f32>>(b"dnnl_sgemm\0").ok()?;
            let gemm_bf16 = library.get::<Gemm<u16>>(b"dnnl_gemm_bf16bf16f32\0").ok().map(|f| *f);
            let version = library.get::<GetVersion>(b"dnnl_version\0").ok().map(|f| f()).filter(|v| !v.is_null());
            let description = match version {
                Some(v) => format!("oneDNN {}.{}.{}", (*v).major, (*v).minor, (*v).patch),
                None => "oneDNN".into(),
            };
            Self { sgemm, gemm_bf16, bf16: false, description, _library: library }
        };
        // A 2 x 2 product tells whether oneDNN has a bfloat16 kernel for this CPU.
        let one = half::bf16::ONE.to_bits();
        let mut out = [0f32; 4];
        // SAFETY: 2 x 2 operands and output.
        dnnl.bf16 =
            unsafe { dnnl.gemm_bf16(2, 2, 2, [one; 4].as_ptr(), [one; 4].as_ptr(), 2, 1, out.as_mut_ptr(), false) }
                && out == [2.0; 4];
        Some(dnnl)
    }

    /// `out[m, n] = lhs[m, k] · rhs (+ out when `accumulate`)`, f32, as
    /// [`super::blas::Blas::sgemm`]; `false`, doing nothing, for a layout it does not take or
    /// when oneDNN reports an error.
    ///
    /// # Safety
    /// `lhs` holds `m·k` values, `rhs` spans its strides, `out` has room for `m·n` values (read
    /// only when `accumulate`).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn sgemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        lhs: *const f32,
        rhs: *const f32,
        rs: isize,
        cs: isize,
        out: *mut f32,
        accumulate: bool,
    ) -> bool {
        // SAFETY: the caller's contract.
        unsafe { call(self.sgemm, m, n, k, lhs, rhs, (rs, cs), out, accumulate) }
    }

    /// As [`Self::sgemm`] with bfloat16 operands (their bits) and f32 accumulation and output.
    ///
    /// # Safety
    /// As [`Self::sgemm`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm_bf16(
        &self,
        m: usize,
        n: usize,
        k: usize,
        lhs: *const u16,
        rhs: *const u16,
        rs: isize,
        cs: isize,
        out: *mut f32,
        accumulate: bool,
    ) -> bool {
        let Some(gemm) = self.gemm_bf16 else { return false };
        // SAFETY: the caller's contract.
        unsafe { call(gemm, m, n, k, lhs, rhs, (rs, cs), out, accumulate) }
    }
}

/// One oneDNN product, `out[m, n] = lhs[m, k] · rhs (+ out when `accumulate`)`; `false` for a
/// right operand's layout it does not take or when oneDNN reports an error.
///
/// # Safety
/// As [`OneDnn::sgemm`].
#[allow(clippy::too_many_arguments)]
unsafe fn call<T>(
    gemm: Gemm<T>,
    m: usize,
    n: usize,
    k: usize,
    lhs: *const T,
    rhs: *const T,
    (rs, cs): (isize, isize),
    out: *mut f32,
    accumulate: bool,
) -> bool {
    let Some((transposed, ld)) = super::blas::rhs_layout(n, k, rs, cs) else { return false };
    let trans = if transposed { b'T' } else { b'N' } as c_char;
    let beta = if accumulate { 1.0 } else { 0.0 };
    let (m, n, k, ld) = (m as Dim, n as Dim, k as Dim, ld as Dim);
    // SAFETY: by the caller's contract; the leading dimensions are those of the layouts.
    let status = unsafe { gemm(b'N' as c_char, trans, m, n, k, 1.0, lhs, k.max(1), rhs, ld, beta, out, n.max(1)) };
    status == SUCCESS
}

/// oneDNN, if it can be loaded.
pub fn onednn() -> Option<&'static OneDnn> {
    static DNNL: OnceLock<Option<OneDnn>> = OnceLock::new();
    DNNL.get_or_init(OneDnn::load).as_ref()
}

/// What multiplies bfloat16 values in bf16-mixed precision here, for `info` and benchmarks.
pub fn bf16_products() -> String {
    match onednn() {
        Some(d) if d.bf16 => format!("{} (dnnl_gemm_bf16bf16f32, native)", d.description),
        Some(d) => format!("f32 products of bfloat16 values ({} has no bfloat16 kernel for this CPU)", d.description),
        None => "f32 products of bfloat16 values (oneDNN not installed)".into(),
    }
}

/// Whether this CPU multiplies bfloat16 matrices natively for dfdet: oneDNN's
/// `dnnl_gemm_bf16bf16f32` loads and has a kernel for it (AVX512-BF16, AMX). Elsewhere bf16
/// means f32 products of bfloat16 values, a little slower than f32 (BENCHMARKS.md).
pub fn native_bf16_products() -> bool {
    onednn().is_some_and(|d| d.bf16)
}

/// `values` (bfloat16 values, or rounded to them to nearest even) as bfloat16 bits.
pub fn to_bf16_bits(values: &[f32]) -> Vec<u16> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let mut bits = vec![0u16; values.len()];
    bits.par_chunks_mut(CHUNK).zip(values.par_chunks(CHUNK)).for_each(|(d, s)| super::kernels::to_bf16_bits(s, d));
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where oneDNN multiplies bfloat16 (AVX-512 CPUs), its products equal f32 products of the
    /// same bfloat16 values up to accumulation order, in both layouts and accumulating. Where it
    /// does not, the CPU must be one oneDNN has no kernel for (no AVX-512): a CPU with
    /// AVX512-BF16 and oneDNN installed that still emulates would be a dispatch bug.
    #[test]
    fn native_bfloat16_products_are_f32_products_of_bfloat16_values() {
        let Some(dnnl) = onednn() else { return };
        if !dnnl.bf16 {
            let isa = crate::cpu::CpuInfo::detect().isa;
            assert!(!isa.contains(&"avx512bf16"), "oneDNN has no bfloat16 product on a CPU with {isa:?}");
            return;
        }
        let mut seed = 3u32;
        let mut value = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            half::bf16::from_f32((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5).to_f32()
        };
        for (m, n, k) in [(1, 1, 1), (5, 17, 33), (257, 64, 300)] {
            for transposed in [false, true] {
                for accumulate in [false, true] {
                    let lhs: Vec<f32> = (0..m * k).map(|_| value()).collect();
                    let rhs: Vec<f32> = (0..k * n).map(|_| value()).collect();
                    let start: Vec<f32> = (0..m * n).map(|_| value()).collect();
                    let (rs, cs) = if transposed { (1, k) } else { (n, 1) };
                    let mut want = vec![0f64; m * n];
                    for i in 0..m {
                        for j in 0..n {
                            let acc = if accumulate { start[i * n + j] as f64 } else { 0.0 };
                            want[i * n + j] =
                                acc + (0..k).map(|p| lhs[i * k + p] as f64 * rhs[p * rs + j * cs] as f64).sum::<f64>();
                        }
                    }
                    let mut out = if accumulate { start.clone() } else { vec![0.0; m * n] };
                    let (l, r) = (to_bf16_bits(&lhs), to_bf16_bits(&rhs));
                    // SAFETY: the buffers hold the shapes' sizes.
                    let ran = unsafe {
                        dnnl.gemm_bf16(
                            m,
                            n,
                            k,
                            l.as_ptr(),
                            r.as_ptr(),
                            rs as isize,
                            cs as isize,
                            out.as_mut_ptr(),
                            accumulate,
                        )
                    };
                    assert!(ran, "{m}x{n}x{k}");
                    let worst = out.iter().zip(&want).map(|(o, w)| (*o as f64 - w).abs()).fold(0.0, f64::max);
                    assert!(worst <= 1e-6 * k as f64 + 1e-6, "{m}x{n}x{k} t={transposed} acc={accumulate}: {worst:e}");
                }
            }
        }
    }
}
