//! `dfdet bench`: speed and peak memory of a full-size encoder with random weights: the
//! forward pass (inference), or one LN-tuning optimizer step (`--train`).
//!
//! Random weights are as fast as real ones. Inference: the forward pass of the encoder and
//! head on a batch of pixels, after one warm-up pass. Training: forward, slerp, LinearNorm head,
//! cross-entropy, backward through the frozen encoder to every LayerNorm, AdamW — the step that
//! `scripts/bench/train_torch.py` times in PyTorch.

use std::time::Instant;

use burn::prelude::*;

use serde::Serialize;

use crate::Result;
use crate::cpu::CpuInfo;
use crate::memory::{peak_rss_mib, reset_peak_rss};
pub use crate::model::checkpoint::random_checkpoint;
use crate::model::config::Backbone;
use crate::model::dtype::native_bf16_products;
use crate::model::fused::bf16::Autocast;
use crate::model::fused::products::{Kernels, kernels, set_kernels};
use crate::progress::Observer;

use crate::model::{Detector, Dtype};
use crate::rng::Rng;
use crate::train::loss::{LossConfig, compute};
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::params::{LN_TARGETS, Selection, Trainable};
use crate::train::slerp::SlerpPlan;

pub mod products;
pub mod work;

use work::Work;

/// One measured inference setting.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// The CPU's model name and its instruction sets (the machine changes between runs).
    pub cpu: String,
    pub isa: String,
    pub backbone: String,
    pub dtype: String,
    /// The library of the f32 matrix products.
    pub kernels: String,
    /// What multiplies bfloat16 values (bf16 on CLIP).
    pub bf16_products: String,
    pub batch: usize,
    pub threads: usize,
    /// Median seconds per image over the timed passes.
    pub s_per_img: f64,
    pub img_per_s: f64,
    /// The matrix products' arithmetic per second ([`Work`]).
    pub gflops: f64,
    /// `gflops` over the CPU's measured peak of the products that ran ([`measured_peaks`]): f32,
    /// or bfloat16 dot products for bf16 where oneDNN multiplies bfloat16 natively.
    pub of_peak: f64,
    /// Peak resident memory of the process during this setting, in MiB.
    pub peak_rss_mib: f64,
}

/// The encoder's products per image at the benchmark's pixel size, in bf16-mixed precision or
/// not (DINOv3's and the Perception Encoder's attention differ in their backward products).
fn work(backbone: &Backbone, bf16_mixed: bool) -> Work {
    use crate::model::config::Architecture;
    let size = backbone.pixels.size();
    match &backbone.encoder {
        Architecture::Clip(cfg) => Work::clip(cfg),
        Architecture::Dinov3(cfg) => Work::dinov3(cfg, size, bf16_mixed),
        Architecture::Pe(cfg) => Work::pe(cfg, size, bf16_mixed),
    }
}

fn check_batches(batches: &[usize]) -> Result<()> {
    match batches.iter().find(|&&b| b == 0 || b > 1024) {
        Some(b) => Err(crate::Error::config("--batch", format!("{b} is outside 1..=1024"))),
        None => Ok(()),
    }
}

/// Random pixels of a batch of `b` images.
fn random_pixels(backbone: &Backbone, b: usize, device: &Device) -> Tensor<4> {
    let [h, w] = backbone.pixels.size();
    let mut rng = Rng::new(1);
    let pixels: Vec<f32> = (0..b * 3 * h * w).map(|_| rng.normal() as f32).collect();
    Tensor::<4>::from_data(TensorData::new(pixels, [b, 3, h, w]), device)
}

/// The median of `iters` (at least one) timed runs of `f`, in seconds.
pub(crate) fn median_seconds(iters: usize, mut f: impl FnMut()) -> f64 {
    median(
        (0..iters.max(1))
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// The median of timings (the upper one of an even count); at least one.
fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Measures the forward pass for every combination of `dtypes` x `batches` x `libraries` (the
/// f32 products' kernels; empty: the one in use). With several libraries their timed passes
/// alternate one by one on the same weights and pixels, so that a machine's drift falls on all
/// of them alike.
pub fn inference(
    backbone: &str,
    batches: &[usize],
    dtypes: &[Dtype],
    libraries: &[Kernels],
    iters: usize,
    obs: &mut dyn Observer,
) -> Result<Vec<BenchRow>> {
    let libraries = if libraries.is_empty() { vec![kernels()] } else { libraries.to_vec() };
    check_batches(batches)?;
    let backbone = Backbone::resolve(backbone)?;
    let device = Device::flex();
    let threads = rayon::current_num_threads();
    let cpu = CpuInfo::detect();
    let peaks = measured_peaks(obs);
    let gflop_per_img = work(&backbone, false).forward_gflop(1);
    let mut rows = Vec::new();
    for dtype in dtypes.iter().map(|d| d.resolve()) {
        reset_peak_rss();
        obs.message(&format!("{}: drawing random {dtype} weights", backbone.name));
        let detector = Detector::from_checkpoint(random_checkpoint(&backbone, 0), &device, dtype)?;
        let peak = peaks.of(dtype == Dtype::Bf16);
        for &b in batches {
            obs.message(&format!("{dtype}, batch {b}: 1 warm-up + {iters} timed forward passes"));
            let x = random_pixels(&backbone, b, &device);
            let mut times = vec![Vec::new(); libraries.len()];
            for round in 0..=iters.max(1) {
                for (library, times) in libraries.iter().zip(&mut times) {
                    set_kernels(*library);
                    let start = Instant::now();
                    detector.probabilities(x.clone());
                    if round > 0 {
                        times.push(start.elapsed().as_secs_f64()); // round 0: warm-up
                    }
                }
            }
            for (library, times) in libraries.iter().zip(times) {
                let s_per_img = median(times) / b as f64;
                let gflops = gflop_per_img / s_per_img;
                rows.push(BenchRow {
                    cpu: cpu.model.clone(),
                    isa: cpu.isa.join(" "),
                    backbone: backbone.name.clone(),
                    dtype: detector.dtype.to_string(),
                    kernels: library.name().into(),
                    bf16_products: crate::model::fused::onednn::bf16_products(),
                    batch: b,
                    threads,
                    s_per_img,
                    img_per_s: 1.0 / s_per_img,
                    gflops,
                    of_peak: gflops / peak,
                    peak_rss_mib: peak_rss_mib(),
                });
            }
        }
    }
    Ok(rows)
}

/// The CPU's peaks the measured rates are put against.
struct Peaks {
    /// f32 FMAs ([`products::peak_gflops`]).
    f32: f64,
    /// bfloat16 dot products ([`products::bf16_peak_gflops`]), where oneDNN multiplies bfloat16
    /// natively.
    bf16: Option<f64>,
}

impl Peaks {
    /// The peak of the products that run: the bfloat16 one for bf16 where it is native.
    fn of(&self, bf16: bool) -> f64 {
        match self.bf16 {
            Some(p) if bf16 => p,
            _ => self.f32,
        }
    }
}

/// The CPU's peaks, the best of three each, measured before anything else runs: OpenBLAS's
/// threads keep spinning for a while after a product and would take cores from the measurement.
fn measured_peaks(obs: &mut dyn Observer) -> Peaks {
    obs.message("measuring the peak of the FMA units on every thread");
    let best = |peak: fn() -> Option<f64>| (0..3).filter_map(|_| peak()).reduce(f64::max);
    let f32 = best(|| Some(products::peak_gflops())).unwrap_or(0.0);
    let bf16 = if native_bf16_products() { best(products::bf16_peak_gflops) } else { None };
    Peaks { f32, bf16 }
}

/// The inference rows as CSV, one row per setting with the CPU beside it.
pub fn render_csv(rows: &[BenchRow]) -> String {
    let mut s = String::from(
        "cpu,isa,backbone,dtype,kernels,bf16_products,batch,threads,s_per_img,img_per_s,gflops,of_peak,peak_rss_mib\n",
    );
    for r in rows {
        s += &format!(
            "\"{}\",{},{},{},{},\"{}\",{},{},{:.6},{:.4},{:.2},{:.4},{:.0}\n",
            r.cpu.replace('"', "\"\""),
            r.isa,
            r.backbone,
            r.dtype,
            r.kernels,
            r.bf16_products.replace('"', "\"\""),
            r.batch,
            r.threads,
            r.s_per_img,
            r.img_per_s,
            r.gflops,
            r.of_peak,
            r.peak_rss_mib
        );
    }
    s
}

/// A plain table of the inference rows, under a line naming the CPU.
pub fn render_table(rows: &[BenchRow]) -> String {
    let mut s = match rows.first() {
        Some(r) => {
            format!("CPU: {} ({}); f32 products: {}; bf16 products: {}\n", r.cpu, r.isa, r.kernels, r.bf16_products)
        }
        None => String::new(),
    };
    s += "backbone                        dtype  kernels   batch  threads  s/img    img/s   GFLOP/s  of peak  peak RSS MiB\n";
    for r in rows {
        s += &format!(
            "{:<30}  {:<5}  {:<8}  {:>5}  {:>7}  {:>6.3}  {:>6.2}  {:>7.1}  {:>6.0}%  {:>12.0}\n",
            r.backbone,
            r.dtype,
            r.kernels,
            r.batch,
            r.threads,
            r.s_per_img,
            r.img_per_s,
            r.gflops,
            100.0 * r.of_peak,
            r.peak_rss_mib
        );
    }
    s
}

/// One measured training setting.
#[derive(Debug, Clone, Serialize)]
pub struct TrainBenchRow {
    pub cpu: String,
    pub isa: String,
    /// The library of the f32 matrix products.
    pub kernels: String,
    pub backbone: String,
    /// `32` or `bf16-mixed`.
    pub precision: String,
    /// What multiplies bfloat16 values under bf16-mixed precision.
    pub bf16_products: String,
    pub batch: usize,
    pub threads: usize,
    pub trainable: usize,
    /// Median seconds per optimizer step over the timed steps (after one warm-up step).
    pub s_per_step: f64,
    pub s_per_img: f64,
    /// The step's matrix products' arithmetic per second ([`Work`]).
    pub gflops: f64,
    /// `gflops` over the CPU's measured peak of the products that ran ([`measured_peaks`]): f32,
    /// or bfloat16 dot products for bf16 where oneDNN multiplies bfloat16 natively.
    pub of_peak: f64,
    /// Peak resident memory of the process, in MiB.
    pub peak_rss_mib: f64,
}

impl TrainBenchRow {
    /// One line for the terminal.
    pub fn render(&self) -> String {
        format!(
            "CPU: {} ({}); f32 products: {}; bf16 products: {}\nLN-tuning step  {}  precision {}  batch {}  threads {}: {:.3} s/step, {:.3} s/img, {:.1} GFLOP/s ({:.0}% of peak), peak RSS {:.0} MiB\n",
            self.cpu,
            self.isa,
            self.kernels,
            self.bf16_products,
            self.backbone,
            self.precision,
            self.batch,
            self.threads,
            self.s_per_step,
            self.s_per_img,
            self.gflops,
            100.0 * self.of_peak,
            self.peak_rss_mib
        )
    }

    /// CSV: a header and one row.
    pub fn render_csv(&self) -> String {
        format!(
            "cpu,isa,kernels,bf16_products,backbone,precision,batch,threads,trainable,s_per_step,s_per_img,gflops,of_peak,peak_rss_mib\n\"{}\",{},{},\"{}\",{},{},{},{},{},{:.6},{:.6},{:.2},{:.4},{:.0}\n",
            self.cpu.replace('"', "\"\""),
            self.isa,
            self.kernels,
            self.bf16_products.replace('"', "\"\""),
            self.backbone,
            self.precision,
            self.batch,
            self.threads,
            self.trainable,
            self.s_per_step,
            self.s_per_img,
            self.gflops,
            self.of_peak,
            self.peak_rss_mib
        )
    }
}

/// Times `iters` LN-tuning steps at mini-batch `batch`, in f32 or bf16-mixed precision.
pub fn train_step(
    backbone: &str,
    batch: usize,
    iters: usize,
    bf16_mixed: bool,
    obs: &mut dyn Observer,
) -> Result<TrainBenchRow> {
    check_batches(&[batch])?;
    let backbone = Backbone::resolve(backbone)?;
    let peaks = measured_peaks(obs);
    let device = Device::flex();
    let autodiff = crate::train::autodiff_device(&device);
    let mut detector = Detector::from_checkpoint(random_checkpoint(&backbone, 0), &device, Dtype::F32)?;
    let selection = Selection { ln_targets: LN_TARGETS.iter().map(|s| s.to_string()).collect(), ..Default::default() };
    let mut trainable = Trainable::select(&mut detector, &selection)?;
    detector.encoder.keep_transposed_weights(trainable.backward_through_frozen_projections());
    let _autocast = Autocast::bf16(bf16_mixed);
    if bf16_mixed {
        detector.encoder.prepare_bf16_mixed(trainable.backward_through_frozen_projections());
    }
    let mut adam = AdamW::new(AdamWConfig { betas: [0.9, 0.999], eps: 1e-8, weight_decay: 0.0 }, &trainable);
    let x = random_pixels(&backbone, batch, &device);
    let mut rng = Rng::new(1);
    let labels: Vec<usize> = (0..batch).map(|i| i % 2).collect();
    let loss = LossConfig::default();
    let mut step = || {
        let bound = trainable.bind(&mut detector, &autodiff);
        let pooled = detector.encoder.forward(x.clone());
        let pooled = SlerpPlan::draw(&labels, [0.0, 1.0], &mut rng).apply(pooled);
        let out = detector.head.forward(pooled);
        let l = compute(&loss, out.logits, out.features, &labels);
        let grads = trainable.gradients(&bound, &l.total.backward());
        adam.step(&mut trainable, &grads, 1e-4);
    };
    obs.message(&format!("LN-tuning step, mini-batch {batch}: 1 warm-up + {iters} timed steps"));
    step(); // warm-up
    let s_per_step = median_seconds(iters, &mut step);
    let gflops = work(&backbone, bf16_mixed).step_gflop(batch) / s_per_step;
    let of_peak = gflops / peaks.of(bf16_mixed);
    let cpu = CpuInfo::detect();
    Ok(TrainBenchRow {
        cpu: cpu.model.clone(),
        isa: cpu.isa.join(" "),
        kernels: kernels().name().into(),
        backbone: backbone.name.clone(),
        precision: if bf16_mixed { "bf16-mixed" } else { "32" }.into(),
        bf16_products: crate::model::fused::onednn::bf16_products(),
        batch,
        threads: rayon::current_num_threads(),
        trainable: trainable.numel(),
        s_per_step,
        s_per_img: s_per_step / batch as f64,
        gflops,
        of_peak,
        peak_rss_mib: peak_rss_mib(),
    })
}
