//! The classification heads of docs/method.md §3: `Linear` and the paper's `LinearNorm`.

use burn::nn::Linear;
use burn::prelude::*;

use super::params::{Loader, Visit, Walker, empty};
use super::spec::HeadKind;
use super::tensors::TensorMap;
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
        let mut head = Self::skeleton(kind, &ld.device);
        head.visit_params(d, classes, &mut |entry| ld.fill(map, entry))?;
        Ok(head)
    }

    /// The head, its parameters empty until a walk fills them.
    pub(crate) fn skeleton(kind: HeadKind, device: &Device) -> Self {
        let linear = Linear { weight: empty(device), bias: Some(empty(device)) };
        Self { linear, normalize: kind == HeadKind::LinearNorm }
    }

    /// Calls `visit` on the head's parameters (`model.linear.{weight,bias}`, for a `d`-wide
    /// feature and `classes` classes), as [`super::clip::VisionTransformer::visit_params`].
    pub fn visit_params(&mut self, d: usize, classes: usize, visit: &mut Visit<'_>) -> Result<()> {
        let linear = &mut self.linear;
        Walker::new(visit).pp("model.linear").linear(&mut linear.weight, linear.bias.as_mut(), [d, classes], None)
    }

    /// `[b, d]` -> logits `[b, classes]` and normalised features `[b, d]`.
    pub fn forward(&self, features: Tensor<2>) -> HeadOutput {
        let normalized = l2_normalize(features.clone());
        let input = if self.normalize { normalized.clone() } else { features };
        let logits = if super::fused::bf16::autocast_bf16() {
            // bf16-mixed: autocast's `linear`, bfloat16 operands and logits (the losses cast
            // them back to f32); the parameters and their gradients stay f32.
            use super::fused::bf16::round_bf16;
            let bias = self.linear.bias.as_ref().map(|b| round_bf16(b.val()));
            round_bf16(burn::tensor::module::linear(round_bf16(input), round_bf16(self.linear.weight.val()), bias))
        } else {
            self.linear.forward(input)
        };
        HeadOutput { logits, features: normalized }
    }
}

/// `x / max(‖x‖₂, 1e-12)` along the last axis: PyTorch's `F.normalize(x, p=2, dim=1)`.
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12); // [b, 1]
    x / norm
}
