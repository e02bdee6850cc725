//! `dfdet bench --train`: the time and peak memory of one LN-tuning optimizer step of a
//! full-size encoder (random weights, f32): forward, slerp, LinearNorm head, cross-entropy,
//! backward through the frozen encoder to every LayerNorm, AdamW. Compared with the same step
//! in PyTorch by `scripts/bench/train_torch.py`.

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::FloatDType;
use serde::Serialize;

use super::loss::{compute, LossConfig};
use super::optim::{AdamW, AdamWConfig};
use super::params::{Selection, Trainable, LN_TARGETS};
use super::rng::Rng;
use super::slerp::SlerpPlan;
use crate::bench::{peak_rss_mib, random_checkpoint};
use crate::model::config::Backbone;
use crate::model::Detector;
use crate::Result;

/// One measured setting.
#[derive(Debug, Clone, Serialize)]
pub struct TrainBenchRow {
    pub backbone: String,
    pub batch: usize,
    pub threads: usize,
    pub trainable: usize,
    /// Median seconds per optimizer step over the timed steps (after one warm-up step).
    pub s_per_step: f64,
    pub s_per_img: f64,
    /// Peak resident memory of the process, in MiB.
    pub peak_rss_mib: f64,
}

/// Times `iters` LN-tuning steps at mini-batch `batch`.
pub fn run(backbone: &str, batch: usize, iters: usize) -> Result<TrainBenchRow> {
    let backbone = Backbone::resolve(backbone)?;
    let device = Device::flex();
    let autodiff = super::autodiff_device(&device);
    let mut detector = Detector::from_checkpoint(random_checkpoint(&backbone, 0), &device, FloatDType::F32)?;
    let selection = Selection { ln_targets: LN_TARGETS.iter().map(|s| s.to_string()).collect(), ..Default::default() };
    let mut trainable = Trainable::select(&mut detector, &selection)?;
    detector.encoder.keep_transposed_weights(trainable.backward_through_frozen_projections());
    let mut adam = AdamW::new(AdamWConfig { betas: [0.9, 0.999], eps: 1e-8, weight_decay: 0.0 }, &trainable);
    let [h, w] = backbone.pixels.crop_size;
    let mut rng = Rng::new(1);
    let pixels: Vec<f32> = (0..batch * 3 * h * w).map(|_| rng.normal() as f32).collect();
    let x = Tensor::<4>::from_data(TensorData::new(pixels, [batch, 3, h, w]), &device);
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
    step();
    let mut times = Vec::new();
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        step();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let s_per_step = times[times.len() / 2];
    Ok(TrainBenchRow {
        backbone: backbone.name.clone(),
        batch,
        threads: rayon::current_num_threads(),
        trainable: trainable.numel(),
        s_per_step,
        s_per_img: s_per_step / batch as f64,
        peak_rss_mib: peak_rss_mib(),
    })
}
