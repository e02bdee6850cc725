//! The training losses of docs/method.md §6 on burn tensors, differentiable.
//!
//! Ports yermandy/deepfake-detection `src/loss.py` (weights per term, a NaN total reported) and
//! `src/losses/unifalign.py` (alignment and uniformity of Wang & Isola 2020, arXiv 2005.10242).

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

/// Loss weights (0 = off), with the reference's `Loss` field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Cross-entropy on the logits.
    pub ce_labels: f64,
    /// Label smoothing of the cross-entropy (PyTorch's `label_smoothing`).
    pub label_smoothing: f64,
    /// Binary cross-entropy on the logits against one-hot labels (the multi-label variant; the
    /// reference declares this weight but never computes the term).
    pub bce_labels: f64,
    /// Uniformity of the normalised features.
    pub uniformity: f64,
    /// Label-aware alignment of the normalised features.
    pub alignment_labels: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self { ce_labels: 1.0, label_smoothing: 0.0, bce_labels: 0.0, uniformity: 0.0, alignment_labels: 0.0 }
    }
}

/// The weighted terms of one mini-batch's loss, as plain numbers for logging.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LossValues {
    pub ce_labels: Option<f64>,
    pub bce_labels: Option<f64>,
    pub uniformity: Option<f64>,
    pub alignment_labels: Option<f64>,
    pub total: f64,
}

/// The total loss (a one-element tensor to call `backward` on) and its terms.
#[derive(Debug)]
pub struct LossOutput {
    pub total: Tensor<1>,
    pub values: LossValues,
}

impl LossOutput {
    /// Whether the total is NaN: the step is then skipped (the reference zeroes it).
    pub fn is_nan(&self) -> bool {
        self.values.total.is_nan()
    }
}

/// The weighted sum of the enabled terms on `logits` `[b, c]` and L2-normalised `features`
/// `[b, d]`. With no term enabled the total is a zero that does not depend on the model.
pub fn compute(config: &LossConfig, logits: Tensor<2>, features: Tensor<2>, labels: &[usize]) -> LossOutput {
    let device = logits.device();
    let mut values = LossValues::default();
    let mut total: Option<Tensor<1>> = None;
    let mut add = |slot: &mut Option<f64>, weight: f64, term: Tensor<1>| {
        let term = term * weight;
        *slot = Some(scalar(&term));
        total = Some(match total.take() {
            Some(t) => t + term,
            None => term,
        });
    };
    if config.ce_labels != 0.0 {
        add(&mut values.ce_labels, config.ce_labels, cross_entropy(logits.clone(), labels, config.label_smoothing));
    }
    if config.bce_labels != 0.0 {
        add(&mut values.bce_labels, config.bce_labels, binary_cross_entropy(logits, labels));
    }
    if config.alignment_labels != 0.0 {
        add(&mut values.alignment_labels, config.alignment_labels, alignment(features.clone(), labels, 2.0));
    }
    if config.uniformity != 0.0 {
        add(&mut values.uniformity, config.uniformity, uniformity(features, 2.0));
    }
    let total = total.unwrap_or_else(|| Tensor::zeros([1], &device));
    values.total = scalar(&total);
    LossOutput { total, values }
}

/// The value of a one-element tensor.
pub fn scalar(t: &Tensor<1>) -> f64 {
    super::params::host(t.clone()).1[0] as f64
}

/// `[b]` labels -> one-hot `[b, c]` (a constant).
fn one_hot(labels: &[usize], classes: usize, device: &Device) -> Tensor<2> {
    let mut data = vec![0f32; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        data[i * classes + l] = 1.0;
    }
    Tensor::from_data(TensorData::new(data, [labels.len(), classes]), device)
}

/// PyTorch's `F.cross_entropy(logits, labels, label_smoothing=ε)`, mean over the batch: the
/// target is `(1 - ε) one_hot + ε / C`.
pub fn cross_entropy(logits: Tensor<2>, labels: &[usize], smoothing: f64) -> Tensor<1> {
    let [b, c] = logits.dims();
    let target = one_hot(labels, c, &logits.device()) * (1.0 - smoothing) + smoothing / c as f64;
    -(log_softmax(logits, 1) * target).sum() / b as f64
}

/// PyTorch's `F.binary_cross_entropy_with_logits(logits, one_hot)`, mean over all entries,
/// in its stable form `max(z, 0) - z y + log(1 + exp(-|z|))`.
pub fn binary_cross_entropy(logits: Tensor<2>, labels: &[usize]) -> Tensor<1> {
    let [b, c] = logits.dims();
    let y = one_hot(labels, c, &logits.device());
    let loss = logits.clone().clamp_min(0.0) - logits.clone() * y + logits.abs().neg().exp().log1p();
    loss.sum() / (b * c) as f64
}

/// `[n, d]` -> squared Euclidean distances `[n, n]`, from the differences (exact at 0).
fn squared_distances(x: Tensor<2>) -> Tensor<2> {
    let [n, d] = x.dims();
    let diff = x.clone().reshape([n, 1, d]) - x.reshape([1, n, d]); // [n, n, d]
    diff.powi_scalar(2).sum_dim(2).reshape([n, n])
}

/// Upper-triangle (`i < j`) pair mask over `[n, n]` as 0/1, selecting also `keep(i, j)`.
fn pair_mask(n: usize, device: &Device, keep: impl Fn(usize, usize) -> bool) -> (Tensor<2>, usize) {
    let mut data = vec![0f32; n * n];
    let mut count = 0;
    for i in 0..n {
        for j in i + 1..n {
            if keep(i, j) {
                data[i * n + j] = 1.0;
                count += 1;
            }
        }
    }
    (Tensor::from_data(TensorData::new(data, [n, n]), device), count)
}

/// Label-aware alignment: mean over pairs `i < j` with equal labels of `‖f_i - f_j‖^alpha`;
/// 0 (a constant) when there is no such pair.
pub fn alignment(features: Tensor<2>, labels: &[usize], alpha: f64) -> Tensor<1> {
    let [n, _] = features.dims();
    let device = features.device();
    let (mask, pairs) = pair_mask(n, &device, |i, j| labels[i] == labels[j]);
    if pairs == 0 {
        return Tensor::zeros([1], &device);
    }
    let sq = squared_distances(features);
    // ‖·‖^alpha = (‖·‖²)^(alpha/2); alpha = 2 stays a polynomial (no sqrt at 0).
    let powered = if alpha == 2.0 { sq } else { sq.clamp_min(0.0).powf_scalar(alpha / 2.0) };
    (powered * mask).sum() / pairs as f64
}

/// Uniformity: `log(max(mean_{i<j} exp(-t ‖f_i - f_j‖²), 1e-6))`. With fewer than two
/// features the reference's mean is NaN, and so is this.
pub fn uniformity(features: Tensor<2>, t: f64) -> Tensor<1> {
    let [n, _] = features.dims();
    let device = features.device();
    let (mask, pairs) = pair_mask(n, &device, |_, _| true);
    if pairs == 0 {
        return Tensor::full([1], f32::NAN, &device);
    }
    let kernel = (squared_distances(features) * (-t)).exp(); // [n, n]
    ((kernel * mask).sum() / pairs as f64).clamp_min(1e-6).log()
}
