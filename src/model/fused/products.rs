//! The f32 matrix products of the frozen projections, by one of three libraries chosen at run
//! time: the `gemm` crate (pure Rust, always there), the system's OpenBLAS ([`super::blas`]) or
//! oneDNN ([`super::onednn`]), where they load and `DFDET_KERNELS` (or [`set_kernels`]) asks for
//! them. `dfdet bench --products` measures each on the shapes of the encoder; `dfdet info
//! --system` says which is in use.

use std::sync::atomic::{AtomicU8, Ordering};

use super::blas::openblas;
use super::onednn::onednn;

/// A library for the f32 products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// The `gemm` crate (what burn uses), with its AVX2/AVX-512 micro-kernels.
    Gemm,
    /// The system's OpenBLAS (`cblas_sgemm`), loaded at run time.
    OpenBlas,
    /// The system's oneDNN (`dnnl_sgemm`), loaded at run time.
    OneDnn,
}

impl Kernels {
    pub const NAMES: [&'static str; 3] = ["gemm", "openblas", "onednn"];

    pub fn name(self) -> &'static str {
        match self {
            Self::Gemm => "gemm",
            Self::OpenBlas => "openblas",
            Self::OneDnn => "onednn",
        }
    }

    /// The kernels whose library is present on this machine.
    pub fn available() -> Vec<Self> {
        let mut all = vec![Self::Gemm];
        if openblas().is_some() {
            all.push(Self::OpenBlas);
        }
        if onednn().is_some() {
            all.push(Self::OneDnn);
        }
        all
    }

    /// What the kernels are, for `info` and benchmark rows.
    pub fn describe(self) -> String {
        match self {
            Self::Gemm => "gemm 0.19 (pure Rust)".into(),
            Self::OpenBlas => openblas().map_or_else(|| "OpenBLAS (not loadable)".into(), |b| b.description.clone()),
            Self::OneDnn => onednn().map_or_else(|| "oneDNN (not loadable)".into(), |d| d.description.clone()),
        }
    }
}

impl std::str::FromStr for Kernels {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gemm" => Ok(Self::Gemm),
            "openblas" => Ok(Self::OpenBlas),
            "onednn" => Ok(Self::OneDnn),
            other => Err(format!("unknown kernels `{other}`: one of {}", Self::NAMES.join(", "))),
        }
    }
}

/// 0: not chosen yet; else `Kernels as u8 + 1`.
static CHOSEN: AtomicU8 = AtomicU8::new(0);

/// Uses `kernels` for every later product (`OpenBlas` only if it loads; returns what is used).
pub fn set_kernels(kernels: Kernels) -> Kernels {
    let used = if Kernels::available().contains(&kernels) { kernels } else { Kernels::Gemm };
    CHOSEN.store(used as u8 + 1, Ordering::Relaxed);
    used
}

/// The kernels in use: `DFDET_KERNELS` (`gemm`, `openblas` or `onednn`) when set, else
/// [`default_kernels`]. An unknown name is said once on stderr, and the default used.
pub fn kernels() -> Kernels {
    match CHOSEN.load(Ordering::Relaxed) {
        1 => Kernels::Gemm,
        2 => Kernels::OpenBlas,
        3 => Kernels::OneDnn,
        _ => {
            let wanted = match requested_kernels() {
                Some(Ok(kernels)) => kernels,
                Some(Err(why)) => {
                    eprintln!("warning: DFDET_KERNELS: {why}; using {}", default_kernels().name());
                    default_kernels()
                }
                None => default_kernels(),
            };
            set_kernels(wanted)
        }
    }
}

/// What `DFDET_KERNELS` asks for: none where it is unset, empty or `auto`, else the library or
/// why the name is not one.
pub fn requested_kernels() -> Option<Result<Kernels, String>> {
    let value = std::env::var("DFDET_KERNELS").ok().filter(|v| !v.is_empty() && v != "auto")?;
    Some(value.parse())
}

/// The library this CPU multiplies f32 matrices fastest with, by what is present and the
/// instruction sets: oneDNN where the CPU has AVX-512 (F, BW, VL) and oneDNN loads, else
/// OpenBLAS where it loads, else gemm.
///
/// Presence and instruction sets decide rather than a timing at start-up: a timed choice would
/// flip between libraries from run to run on a busy machine, and with it the last bits of every
/// score. Measured (BENCHMARKS.md): on an AVX2 Zen 3 OpenBLAS beat oneDNN and gemm on every
/// product (1.1-1.5x over gemm; the issue that asked for it measured 1.7x on an AVX-512 Zen 5);
/// on an AVX-512 Zen 4, with the libraries' threads sleeping between products, oneDNN was
/// 1.07-1.09x OpenBLAS on the f32 forward pass and won 4 of 5 alternating f32 training steps
/// (0.94-1.13x).
pub fn default_kernels() -> Kernels {
    let available = Kernels::available();
    if available.contains(&Kernels::OneDnn) && avx512() {
        Kernels::OneDnn
    } else if available.contains(&Kernels::OpenBlas) {
        Kernels::OpenBlas
    } else {
        Kernels::Gemm
    }
}

#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512() -> bool {
    false
}

/// Each library's GFLOP/s on a product of the encoder's kind (`[514, 1024] · [1024, 1024]`, two
/// ViT-L/14 images through one projection; best of 4, about 0.1 s in all), for `info --system`.
pub fn speeds() -> Vec<(Kernels, f64)> {
    const M: usize = 514;
    const N: usize = 1024;
    const K: usize = 1024;
    let lhs: Vec<f32> = (0..M * K).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let rhs: Vec<f32> = (0..K * N).map(|i| ((i * 104_729) % 1000) as f32 / 1000.0 - 0.5).collect();
    let mut out = vec![0f32; M * N];
    let mut timed = Vec::new();
    for kernels in Kernels::available() {
        let mut best = f64::INFINITY;
        for _ in 0..4 {
            let start = std::time::Instant::now();
            // SAFETY: the buffers hold the shapes' sizes.
            unsafe { product(kernels, M, N, K, lhs.as_ptr(), rhs.as_ptr(), N as isize, 1, out.as_mut_ptr(), false) };
            best = best.min(start.elapsed().as_secs_f64());
        }
        timed.push((kernels, 2.0 * (M * N * K) as f64 / best / 1e9));
    }
    timed
}

/// `out[m, n] = lhs[m, k] · rhs (+ out when `accumulate`)`, `lhs` row-major, `rhs` `[k, n]` with
/// strides `(rs, cs)`, by `kernels`. OpenBLAS takes layouts with a unit stride, from outside
/// rayon's workers (its own pool would run beside rayon's); anything else goes to `gemm`.
///
/// # Safety
/// `lhs` holds `m·k` values, `rhs` spans its strides, `out` has room for `m·n` values, written
/// before read unless `accumulate` (gemm's small-matrix paths read `out`: with `m` or `n` ≤ 16
/// and no accumulation it must be zeroed).
#[allow(clippy::too_many_arguments)]
pub unsafe fn product(
    kernels: Kernels,
    m: usize,
    n: usize,
    k: usize,
    lhs: *const f32,
    rhs: *const f32,
    rs: isize,
    cs: isize,
    out: *mut f32,
    accumulate: bool,
) {
    let outside_rayon = rayon::current_thread_index().is_none();
    if kernels == Kernels::OpenBlas
        && outside_rayon
        && let Some(blas) = openblas()
        // SAFETY: the caller's contract.
        && unsafe { blas.sgemm(m, n, k, lhs, rhs, rs, cs, out, accumulate) }
    {
        return;
    }
    if kernels == Kernels::OneDnn
        && outside_rayon
        && let Some(dnnl) = onednn()
        // SAFETY: the caller's contract.
        && unsafe { dnnl.sgemm(m, n, k, lhs, rhs, rs, cs, out, accumulate) }
    {
        return;
    }
    let parallelism = if m * n * k >= 192 * 192 * 192 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            n as isize,
            accumulate,
            lhs,
            1,
            k as isize,
            rhs,
            cs,
            rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `lhs · rhs` in f64, `rhs` read through its strides.
    fn naive(m: usize, n: usize, k: usize, lhs: &[f32], rhs: &[f32], rs: usize, cs: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| lhs[i * k + p] as f64 * rhs[p * rs + j * cs] as f64).sum();
            }
        }
        out
    }

    /// Every library present computes the same products as a plain f64 loop: row-major and
    /// transposed right operands, accumulation into `out` (how the bias is added), small
    /// matrices (gemm's other paths) and the blocked sizes.
    #[test]
    fn every_library_multiplies_like_the_definition() {
        let available = Kernels::available();
        // Under CI (`CI` set true-ish, as the tests' `in_ci`) the library must be there.
        if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false") {
            assert!(available.contains(&Kernels::OpenBlas), "CI installs OpenBLAS (libopenblas0-pthread)");
        }
        let mut seed = 1u32;
        let mut value = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for (m, n, k) in [(1, 1, 1), (3, 16, 5), (17, 33, 64), (257, 64, 257), (300, 200, 700)] {
            for transposed in [false, true] {
                for accumulate in [false, true] {
                    let lhs: Vec<f32> = (0..m * k).map(|_| value()).collect();
                    let rhs: Vec<f32> = (0..k * n).map(|_| value()).collect();
                    let start: Vec<f32> = (0..m * n).map(|_| value()).collect();
                    let (rs, cs) = if transposed { (1, k) } else { (n, 1) };
                    let mut want = naive(m, n, k, &lhs, &rhs, rs, cs);
                    if accumulate {
                        want.iter_mut().zip(&start).for_each(|(w, s)| *w += *s as f64);
                    }
                    for &kernels in &available {
                        let mut out = if accumulate { start.clone() } else { vec![0.0; m * n] };
                        // SAFETY: the buffers hold the shapes' sizes.
                        unsafe {
                            product(
                                kernels,
                                m,
                                n,
                                k,
                                lhs.as_ptr(),
                                rhs.as_ptr(),
                                rs as isize,
                                cs as isize,
                                out.as_mut_ptr(),
                                accumulate,
                            )
                        };
                        let worst = out.iter().zip(&want).map(|(o, w)| (*o as f64 - w).abs()).fold(0.0, f64::max);
                        // k products of values below 0.5 in magnitude, summed in f32.
                        assert!(
                            worst <= 1e-6 * k as f64 + 1e-6,
                            "{kernels:?} {m}x{n}x{k} t={transposed} acc={accumulate}: {worst:e}"
                        );
                    }
                }
            }
        }
    }
}
