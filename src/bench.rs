//! `dfdet bench`: inference speed and peak memory of a full-size encoder with random weights.
//!
//! Random weights are as fast as real ones; what is measured is the forward pass of the
//! encoder and head on a batch of pixels, after one warm-up pass.

use std::path::PathBuf;
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::FloatDType;
use serde::Serialize;

use crate::model::config::Backbone;
use crate::model::checkpoint::{Checkpoint, HostTensor, TensorMap};
use crate::model::spec::{HeadKind, ModelSpec, Tuning};
use crate::model::{clip, Detector};
use crate::Result;

/// One measured setting.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub backbone: String,
    pub dtype: String,
    pub batch: usize,
    pub threads: usize,
    /// Median seconds per image over the timed passes.
    pub s_per_img: f64,
    pub img_per_s: f64,
    /// Peak resident memory of the process during this setting, in MiB.
    pub peak_rss_mib: f64,
}

/// A random checkpoint shaped for `backbone`, with a LinearNorm head.
pub fn random_checkpoint(backbone: &Backbone, seed: u64) -> Checkpoint {
    let mut rng = SplitMix64(seed);
    let mut tensors = TensorMap::new(PathBuf::from("<random>"));
    let mut shapes = clip::tensor_shapes(&backbone.encoder);
    let d = backbone.encoder.hidden_size;
    shapes.push(("model.linear.weight".into(), vec![2, d]));
    shapes.push(("model.linear.bias".into(), vec![2]));
    for (key, shape) in shapes {
        let n = shape.iter().product();
        let is_ln_weight = key.ends_with("norm.weight") || key.contains("layer_norm") && key.ends_with("weight");
        let data = (0..n).map(|_| if is_ln_weight { 1.0 } else { 0.02 * rng.normal() }).collect();
        tensors.insert(key, HostTensor { shape, data });
    }
    let spec = ModelSpec {
        backbone: backbone.name.clone(),
        head: HeadKind::LinearNorm,
        num_classes: 2,
        tuning: Tuning::LnTuning,
        precision: None,
        run_name: None,
    };
    Checkpoint { path: PathBuf::from("<random>"), spec, backbone: backbone.clone(), tensors }
}

/// A small deterministic generator for benchmark weights (no statistical claims needed).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f32 {
        ((self.next() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }
    /// Box-Muller.
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

/// Peak resident set size since the last reset, in MiB (Linux; 0 elsewhere).
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Resets the peak RSS counter (Linux: writing 5 to clear_refs), so each setting gets its own peak.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Measures every combination of `dtypes` x `batches`.
pub fn run(backbone: &str, batches: &[usize], dtypes: &[FloatDType], iters: usize) -> Result<Vec<BenchRow>> {
    let backbone = Backbone::resolve(backbone)?;
    let device = Device::flex();
    let threads = rayon::current_num_threads();
    let [h, w] = backbone.pixels.crop_size;
    let mut rows = Vec::new();
    for &dtype in dtypes {
        reset_peak_rss();
        let detector = Detector::from_checkpoint(random_checkpoint(&backbone, 0), &device, dtype)?;
        for &b in batches {
            let mut rng = SplitMix64(1);
            let pixels: Vec<f32> = (0..b * 3 * h * w).map(|_| rng.normal()).collect();
            let x = Tensor::<4>::from_data(TensorData::new(pixels, [b, 3, h, w]), &device);
            detector.probabilities(x.clone()); // warm-up
            let mut times = Vec::with_capacity(iters);
            for _ in 0..iters.max(1) {
                let t = Instant::now();
                detector.probabilities(x.clone());
                times.push(t.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            let s_per_img = times[times.len() / 2] / b as f64;
            rows.push(BenchRow {
                backbone: backbone.name.clone(),
                dtype: format!("{dtype:?}").to_lowercase(),
                batch: b,
                threads,
                s_per_img,
                img_per_s: 1.0 / s_per_img,
                peak_rss_mib: peak_rss_mib(),
            });
        }
    }
    Ok(rows)
}

/// A plain table of the rows.
pub fn render_table(rows: &[BenchRow]) -> String {
    let mut s = String::from("backbone                        dtype  batch  threads  s/img    img/s   peak RSS MiB\n");
    for r in rows {
        s += &format!(
            "{:<30}  {:<5}  {:>5}  {:>7}  {:>6.3}  {:>6.2}  {:>12.0}\n",
            r.backbone, r.dtype, r.batch, r.threads, r.s_per_img, r.img_per_s, r.peak_rss_mib
        );
    }
    s
}
