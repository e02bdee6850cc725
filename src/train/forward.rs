//! The forward pass shared by training and validation: a split's frames (or their cached
//! features) through the encoder, then the head and the losses.

use burn::prelude::*;
use burn::tensor::activation::softmax;

use super::data::{FeatureCache, load_batch};
use super::loss::{self, LossConfig, LossOutput};
use super::params::host;
use crate::data::InputError;
use crate::data::sets::Split;
use crate::model::Detector;
use crate::model::head::HeadOutput;

/// What [`encode`] read.
pub struct Encoded {
    /// Split indices of the frames read, in batch order.
    pub index: Vec<usize>,
    /// Their features `[b, d]` (`None` when no frame could be read).
    pub pooled: Option<Tensor<2>>,
    /// Frames that could not be read.
    pub errors: Vec<InputError>,
    /// Frames read from a truncated or partly corrupt file.
    pub warnings: Vec<InputError>,
}

/// Encoder features (`pooler_output`, `[b, d]`) of the frames `index` of `split`, from `cache`
/// when given; `before_forward` runs on the detector with the batch size just before the
/// encoder (LoRA dropout masks).
#[allow(clippy::too_many_arguments)]
pub fn encode(
    detector: &mut Detector,
    split: &Split,
    index: &[usize],
    cache: Option<&FeatureCache>,
    augment: Option<(u64, usize)>,
    device: &Device,
    before_forward: impl FnOnce(&mut Detector, usize),
) -> Encoded {
    if let Some(cache) = cache {
        let (ok, pooled) = cache.batch(index, device);
        return Encoded { index: ok, pooled: Some(pooled), errors: Vec::new(), warnings: Vec::new() };
    }
    let batch = load_batch(split, index, &detector.backbone.pixels, augment, device);
    if batch.index.is_empty() {
        return Encoded { index: batch.index, pooled: None, errors: batch.errors, warnings: batch.warnings };
    }
    before_forward(detector, batch.index.len());
    let pooled = detector.encoder.forward(batch.pixels);
    Encoded { index: batch.index, pooled: Some(pooled), errors: batch.errors, warnings: batch.warnings }
}

/// What the head and the losses make of a batch of features.
pub struct HeadPass {
    /// Class probabilities, row-major `[b, c]`.
    pub probs: Vec<f32>,
    /// L2-normalised features, one row per frame.
    pub features: Vec<Vec<f32>>,
    pub loss: LossOutput,
}

/// The head on `pooled` and the configured losses against `labels`.
pub fn head_pass(detector: &Detector, pooled: Tensor<2>, labels: &[usize], config: &LossConfig) -> HeadPass {
    let HeadOutput { logits, features } = detector.head.forward(pooled);
    let probs = host(softmax(logits.clone(), 1)).1;
    let d = features.dims()[1];
    let rows = host(features.clone()).1.chunks(d).map(<[f32]>::to_vec).collect();
    let loss = loss::compute(config, logits, features, labels);
    HeadPass { probs, features: rows, loss }
}
