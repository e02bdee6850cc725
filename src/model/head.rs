//! The classification heads of METHOD.md §3: `Linear` and the paper's `LinearNorm`.

use burn::nn::Linear;
use burn::prelude::*;

use super::clip::Loader;
use super::checkpoint::TensorMap;
use super::spec::HeadKind;
use crate::Result;

/// What the head returns.
#[derive(Debug, Clone)]
pub struct HeadOutput {
    /// `[b, classes]`
    pub logits: Tensor<2>,
    /// The L2-normalised feature, whichever head: `[b, d]`. Losses on features use it.
    pub features: Tensor<2>,
}

/// A linear classifier over the encoder's feature, L2-normalising it first for `LinearNorm`.
#[derive(Module, Debug)]
pub struct Head {
    /// Weight `[d, classes]` (burn layout), bias `[classes]`; checkpoint name `model.linear`.
    pub linear: Linear,
    normalize: bool,
}

impl Head {
    /// Takes `model.linear.{weight,bias}` out of `map`.
    pub fn load(ld: &Loader, map: &mut TensorMap, kind: HeadKind, d: usize, classes: usize) -> Result<Self> {
        Ok(Self { linear: ld.linear(map, "model.linear", d, classes)?, normalize: kind == HeadKind::LinearNorm })
    }

    /// `[b, d]` -> logits `[b, classes]` and normalised features `[b, d]`.
    pub fn forward(&self, features: Tensor<2>) -> HeadOutput {
        let normalized = l2_normalize(features.clone());
        let logits = if self.normalize {
            self.linear.forward(normalized.clone())
        } else {
            self.linear.forward(features)
        };
        HeadOutput { logits, features: normalized }
    }
}

/// `x / max(‖x‖₂, 1e-12)` along the last axis: PyTorch's `F.normalize(x, p=2, dim=1)`.
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12); // [b, 1]
    x / norm
}
