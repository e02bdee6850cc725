//! `dfdet bench --products`: the f32 matrix products of a ViT encoder, one by one, with every
//! kernel library this machine has ([`Kernels`]), in GFLOP/s and as a fraction of the CPU's
//! measured peak (an FMA loop on every thread: what the cores can do, not a datasheet number).

use std::time::Instant;

use serde::Serialize;

use crate::Result;
use crate::cpu::CpuInfo;
use crate::model::config::Backbone;
use crate::model::fused::onednn::{bf16_products, onednn, to_bf16_bits};
use crate::model::fused::products::{Kernels, product};
use crate::progress::Observer;
use crate::rng::Rng;

/// One product measured with one library.
#[derive(Debug, Clone, Serialize)]
pub struct ProductRow {
    pub cpu: String,
    pub isa: String,
    pub kernels: String,
    /// What the product is in the encoder.
    pub op: String,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// The right operand read as a transposed view (strides `(1, k)`) instead of row-major.
    pub transposed: bool,
    pub threads: usize,
    /// Median over the timed runs.
    pub gflops: f64,
    /// `gflops` over the measured peak of the CPU's FMA units.
    pub of_peak: f64,
}

/// The products of one encoder layer at `batch` images: `(op, m, n, k, transposed)`.
fn shapes(backbone: &Backbone, batch: usize) -> Vec<(String, usize, usize, usize, bool)> {
    let e = &backbone.encoder;
    let (d, mlp) = (e.hidden_size(), e.intermediate_size());
    let tokens = e.num_tokens(backbone.pixels.size()[0]);
    let t = tokens * batch;
    let head = d / e.num_heads();
    let patch = 3 * e.patch_size() * e.patch_size();
    let prefix = tokens - (backbone.pixels.size()[0] / e.patch_size()).pow(2);
    vec![
        ("patch embedding".into(), t - prefix * batch, d, patch, false),
        ("q/k/v/out projection; its input gradient".into(), t, d, d, false),
        ("mlp up (fc1); fc2's input gradient".into(), t, mlp, d, false),
        ("mlp down (fc2); fc1's input gradient".into(), t, d, mlp, false),
        ("fc1's input gradient through a transposed view".into(), t, d, mlp, true),
        ("attention scores q·kᵀ (one head)".into(), tokens, tokens, head, true),
        ("attention output p·v (one head)".into(), tokens, head, tokens, false),
    ]
}

/// Measures every product of `backbone` at `batch` images with every available library.
pub fn products(backbone: &str, batch: usize, iters: usize, obs: &mut dyn Observer) -> Result<Vec<ProductRow>> {
    let backbone = Backbone::resolve(backbone)?;
    let cpu = CpuInfo::detect();
    let threads = rayon::current_num_threads();
    obs.message("measuring the peak of the FMA units on every thread");
    let peak = peak_gflops();
    obs.message(&format!("peak {peak:.1} GFLOP/s ({threads} threads)"));
    let native_bf16 = onednn().filter(|d| d.bf16);
    let bf16_peak = native_bf16.and_then(|_| bf16_peak_gflops());
    if let Some(p) = bf16_peak {
        obs.message(&format!("bfloat16 dot-product peak {p:.1} GFLOP/s ({threads} threads)"));
    }
    let mut rng = Rng::new(7);
    let mut rows = Vec::new();
    for (op, m, n, k, transposed) in shapes(&backbone, batch) {
        let lhs: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
        let rhs: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
        let (rs, cs) = if transposed { (1, k as isize) } else { (n as isize, 1) };
        let mut out = vec![0f32; m * n];
        let mut reference: Option<Vec<f32>> = None;
        for kernels in Kernels::available() {
            obs.status(&format!("{} {op}", kernels.name()));
            // SAFETY: the buffers have the sizes the shapes say; `out` is zeroed.
            let mut run = || unsafe {
                product(kernels, m, n, k, lhs.as_ptr(), rhs.as_ptr(), rs, cs, out.as_mut_ptr(), false);
            };
            run(); // warm-up
            let seconds = super::median_seconds(iters, &mut run);
            // Every library must compute the same product (within f32 rounding of k terms).
            match &reference {
                None => reference = Some(out.clone()),
                Some(r) => {
                    let worst = r.iter().zip(&out).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    let bound = 1e-5 * (k as f32) * r.iter().fold(1f32, |a, v| a.max(v.abs())).sqrt();
                    if worst > bound {
                        return Err(crate::Error::Invalid(format!(
                            "{} gives another product than gemm for {op} ({m}x{n}x{k}): max |Δ| {worst}",
                            kernels.name()
                        )));
                    }
                }
            }
            let gflops = 2.0 * (m * n * k) as f64 / seconds / 1e9;
            rows.push(ProductRow {
                cpu: cpu.model.clone(),
                isa: cpu.isa.join(" "),
                kernels: kernels.name().into(),
                op: op.clone(),
                m,
                n,
                k,
                transposed,
                threads,
                gflops,
                of_peak: gflops / peak,
            });
        }
        // oneDNN's bfloat16 product where the CPU has one: the same operands rounded to bfloat16
        // beforehand (the weights are stored so; the activations' conversion is a separate pass
        // in the encoder), f32 accumulation and output, against the bfloat16 dot-product peak.
        if let (Some(dnnl), Some(bf16_peak)) = (native_bf16, bf16_peak) {
            obs.status(&format!("onednn-bf16 {op}"));
            let (l, r) = (to_bf16_bits(&lhs), to_bf16_bits(&rhs));
            let mut ran = true;
            // SAFETY: the buffers have the sizes the shapes say.
            let mut run = || unsafe {
                ran &= dnnl.gemm_bf16(m, n, k, l.as_ptr(), r.as_ptr(), rs, cs, out.as_mut_ptr(), false);
            };
            run(); // warm-up
            let seconds = super::median_seconds(iters, &mut run);
            if !ran {
                return Err(crate::Error::Invalid(format!("oneDNN's bfloat16 product failed on {op} ({m}x{n}x{k})")));
            }
            // The same product within bfloat16's rounding of the operands (8 bits of mantissa,
            // errors of random sign over k terms).
            if let Some(r) = &reference {
                let worst = r.iter().zip(&out).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                let bound = 4.0 / 256.0 * (k as f32).sqrt() * r.iter().fold(1f32, |a, v| a.max(v.abs())).sqrt();
                if worst > bound {
                    return Err(crate::Error::Invalid(format!(
                        "onednn-bf16 gives another product than gemm for {op} ({m}x{n}x{k}): max |Δ| {worst}"
                    )));
                }
            }
            let gflops = 2.0 * (m * n * k) as f64 / seconds / 1e9;
            rows.push(ProductRow {
                cpu: cpu.model.clone(),
                isa: cpu.isa.join(" "),
                kernels: "onednn-bf16".into(),
                op: op.clone(),
                m,
                n,
                k,
                transposed,
                threads,
                gflops,
                of_peak: gflops / bf16_peak,
            });
        }
    }
    Ok(rows)
}

/// A table of the rows under a line naming the CPU and the libraries.
pub fn render_table(rows: &[ProductRow]) -> String {
    let mut s = match rows.first() {
        Some(r) => format!("CPU: {} ({}), {} threads\n", r.cpu, r.isa, r.threads),
        None => String::new(),
    };
    for k in Kernels::available() {
        s += &format!("{}: {}\n", k.name(), k.describe());
    }
    if rows.iter().any(|r| r.kernels == "onednn-bf16") {
        s += &format!("onednn-bf16: {} (of the bfloat16 dot-product peak)\n", bf16_products());
    }
    s += "kernels      m      n      k      GFLOP/s  of peak  product\n";
    for r in rows {
        s += &format!(
            "{:<11}  {:<5}  {:<5}  {:<5}  {:>7.1}  {:>6.0}%  {}\n",
            r.kernels,
            r.m,
            r.n,
            r.k,
            r.gflops,
            100.0 * r.of_peak,
            r.op
        );
    }
    s
}

/// The rows as CSV, the CPU beside each.
pub fn render_csv(rows: &[ProductRow]) -> String {
    let mut s = String::from("cpu,isa,kernels,op,m,n,k,transposed,threads,gflops,of_peak\n");
    for r in rows {
        s += &format!(
            "\"{}\",{},{},\"{}\",{},{},{},{},{},{:.2},{:.4}\n",
            r.cpu.replace('"', "\"\""),
            r.isa,
            r.kernels,
            r.op,
            r.m,
            r.n,
            r.k,
            r.transposed,
            r.threads,
            r.gflops,
            r.of_peak
        );
    }
    s
}

/// The f32 FLOP/s all threads reach in a loop of independent fused multiply-adds, the widest
/// the CPU has (AVX-512, else AVX2), in GFLOP/s.
pub fn peak_gflops() -> f64 {
    const ROUNDS: u64 = 20_000_000;
    let per_thread = rayon::broadcast(|_| {
        let start = Instant::now();
        let flops = fma_loop(ROUNDS);
        flops / start.elapsed().as_secs_f64()
    });
    per_thread.iter().sum::<f64>() / 1e9
}

/// Runs `rounds` rounds of 12 independent vector FMAs; returns the FLOPs done.
fn fma_loop(rounds: u64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { fma_avx512(rounds / 2) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { fma_avx2(rounds) };
        }
    }
    // Scalar fallback: what the compiler makes of it.
    let mut acc = [1.0f32; 8];
    for _ in 0..rounds {
        for a in &mut acc {
            *a = a.mul_add(0.999_999, 1e-7);
        }
    }
    std::hint::black_box(acc);
    rounds as f64 * 16.0
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_avx2(rounds: u64) -> f64 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut acc = [_mm256_set1_ps(1.0); 12];
    for _ in 0..rounds {
        for x in &mut acc {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    std::hint::black_box(acc);
    rounds as f64 * 12.0 * 8.0 * 2.0
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_avx512(rounds: u64) -> f64 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let mut acc = [_mm512_set1_ps(1.0); 12];
    for _ in 0..rounds {
        for x in &mut acc {
            *x = _mm512_fmadd_ps(*x, a, b);
        }
    }
    std::hint::black_box(acc);
    rounds as f64 * 12.0 * 16.0 * 2.0
}

/// The FLOP/s all threads reach in a loop of independent bfloat16 dot products
/// (`vdpbf16ps`, AVX512-BF16: two products and two additions per f32 lane), in GFLOP/s; `None`
/// on a CPU without them.
pub fn bf16_peak_gflops() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512bf16") {
            const ROUNDS: u64 = 10_000_000;
            let per_thread = rayon::broadcast(|_| {
                let start = Instant::now();
                // SAFETY: the CPU has AVX512-BF16 (and with it AVX-512F).
                let flops = unsafe { dot_bf16_avx512(ROUNDS) };
                flops / start.elapsed().as_secs_f64()
            });
            return Some(per_thread.iter().sum::<f64>() / 1e9);
        }
    }
    None
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dot_bf16_avx512(rounds: u64) -> f64 {
    use std::arch::x86_64::*;
    // 0.5 and 1e-3 as bfloat16 in both halves of every lane.
    let a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.5), _mm512_set1_ps(0.5));
    let b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3), _mm512_set1_ps(1e-3));
    let mut acc = [_mm512_set1_ps(1.0); 12];
    for _ in 0..rounds {
        for x in &mut acc {
            *x = _mm512_dpbf16_ps(*x, a, b);
        }
    }
    std::hint::black_box(acc);
    rounds as f64 * 12.0 * 16.0 * 4.0
}
