//! The validation pass of each epoch and the reference's names for what is logged:
//! `<stage>/loss*`, `<stage>/<metric>_<level>`.

use std::collections::BTreeMap;

use burn::prelude::*;

use super::config::TrainConfig;
use super::data::FeatureCache;
use super::forward::{Encoded, encode, head_pass};
use super::loss::LossValues;
use crate::data::sets::Split;
use crate::eval::metrics::Metrics;
use crate::eval::unifalign::{alignment, uniformity};
use crate::model::Detector;
use crate::progress::Observer;
use crate::{Error, Result};

/// The validation split scored: probabilities, mean losses and feature statistics.
#[derive(Debug, Default)]
pub struct ValScores {
    pub files: Vec<String>,
    pub labels: Vec<usize>,
    /// Row-major `[n, 2]`.
    pub probs: Vec<f64>,
    pub loss: LossValues,
    pub alignment: f64,
    pub uniformity: Option<f64>,
}

/// Scores every frame of `val` (from `cache` when given) in mini-batches: losses and feature
/// statistics are means over frames, weighted by mini-batch size. A frame that cannot be read,
/// or decodes only in part, is named once per run: `warned` holds those already named.
pub fn score_val(
    detector: &mut Detector,
    val: &Split,
    cache: Option<&FeatureCache>,
    config: &TrainConfig,
    device: &Device,
    warned: &mut std::collections::HashSet<String>,
    obs: &mut dyn Observer,
) -> Result<ValScores> {
    obs.phase("val", val.files.len(), 0);
    let mut out = ValScores::default();
    let mut loss_sum: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let (mut align, mut unif, mut weight, mut unif_weight) = (0.0, 0.0, 0usize, 0usize);
    let index: Vec<usize> = (0..val.files.len()).collect();
    for chunk in index.chunks(config.mini_batch_size) {
        let Encoded { index: ok, pooled, errors, warnings } =
            encode(detector, val, chunk, cache, None, device, |_, _| {});
        for e in errors.iter().chain(&warnings) {
            if warned.insert(e.path.clone()) {
                obs.message(&format!("warning: {}: {}", e.path, e.reason));
            }
        }
        let Some(pooled) = pooled.filter(|_| !ok.is_empty()) else {
            obs.advance(chunk.len());
            continue;
        };
        let labels: Vec<usize> = ok.iter().map(|&i| val.labels[i]).collect();
        let pass = head_pass(detector, pooled, &labels, &config.loss);
        for (k, v) in loss_rows("val", &pass.loss.values) {
            let e = loss_sum.entry(k).or_default();
            e.0 += v * ok.len() as f64;
            e.1 += ok.len();
        }
        align += alignment(&pass.features, &labels, 2.0) * ok.len() as f64;
        weight += ok.len();
        if let Some(u) = uniformity(&pass.features, 2.0) {
            unif += u * ok.len() as f64;
            unif_weight += ok.len();
        }
        for (k, &i) in ok.iter().enumerate() {
            out.files.push(val.files[i].clone());
            out.labels.push(labels[k]);
            out.probs.extend(pass.probs[k * 2..k * 2 + 2].iter().map(|&p| p as f64));
        }
        obs.advance(chunk.len());
    }
    if out.files.is_empty() {
        return Err(Error::config("val_files", "no frame could be read"));
    }
    let mean = |k: &str| loss_sum.get(k).map(|(s, n)| s / *n as f64);
    out.loss = LossValues {
        ce_labels: mean("val/loss_ce"),
        bce_labels: mean("val/loss_bce"),
        uniformity: mean("val/loss_uniformity"),
        alignment_labels: mean("val/loss_alignment"),
        total: mean("val/loss").unwrap_or(f64::NAN),
    };
    out.alignment = align / weight.max(1) as f64;
    out.uniformity = (unif_weight > 0).then(|| unif / unif_weight as f64);
    Ok(out)
}

/// The reference's loss log names: `<stage>/loss`, `<stage>/loss_ce`, ...
pub fn loss_rows(stage: &str, v: &LossValues) -> Vec<(String, f64)> {
    let mut out = vec![(format!("{stage}/loss"), v.total)];
    for (name, x) in
        [("ce", v.ce_labels), ("bce", v.bce_labels), ("uniformity", v.uniformity), ("alignment", v.alignment_labels)]
    {
        if let Some(x) = x {
            out.push((format!("{stage}/loss_{name}"), x));
        }
    }
    out
}

/// The reference's metric names: `<stage>/auroc_<level>`, `<stage>/mAP_<level>`, ...
pub fn metric_rows(rows: &mut Vec<(String, f64)>, stage: &str, level: &str, m: &Metrics) {
    for (name, v) in [
        ("auroc", m.auroc),
        ("mAP", m.map),
        ("eer", m.eer),
        ("acc", m.acc),
        ("balanced_acc", m.balanced_acc),
        ("f1_score", m.f1_score),
    ] {
        if let Some(v) = v {
            rows.push((format!("{stage}/{name}_{level}"), v));
        }
    }
}
