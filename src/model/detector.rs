//! The detector: encoder + head, built from a [`Checkpoint`].

use burn::prelude::*;
use burn::tensor::FloatDType;

use super::clip::{Loader, VisionTransformer};
use super::config::Backbone;
use super::head::{Head, HeadOutput};
use super::checkpoint::Checkpoint;
use super::spec::{ModelSpec, Tuning};
use crate::Result;

/// A CLIP vision encoder and a linear head, ready for inference.
#[derive(Debug)]
pub struct Detector {
    pub encoder: VisionTransformer,
    pub head: Head,
    pub spec: ModelSpec,
    pub backbone: Backbone,
    pub dtype: FloatDType,
}

impl Detector {
    /// Builds the model from every tensor of `ckpt`; a tensor left unused is an error, so a
    /// checkpoint that does not fit the backbone is never silently half-loaded.
    pub fn from_checkpoint(ckpt: Checkpoint, device: &Device, dtype: FloatDType) -> Result<Self> {
        let Checkpoint { spec, backbone, mut tensors, .. } = ckpt;
        let ld = Loader { device: device.clone(), dtype };
        let encoder = VisionTransformer::load(&ld, &mut tensors, &backbone.encoder)?;
        let head = Head::load(&ld, &mut tensors, spec.head, backbone.encoder.hidden_size, spec.num_classes)?;
        tensors.finish()?;
        Ok(Self { encoder, head, spec, backbone, dtype })
    }

    /// `[b, 3, s, s]` (f32 pixels, cast to the model's dtype here) -> logits and features.
    pub fn forward(&self, pixels: Tensor<4>) -> HeadOutput {
        let pixels = if self.dtype == FloatDType::F32 { pixels } else { pixels.cast(self.dtype) };
        self.head.forward(self.encoder.forward(pixels))
    }

    /// Class probabilities, one row per image: softmax of the logits, computed in f32.
    pub fn probabilities(&self, pixels: Tensor<4>) -> Vec<Vec<f32>> {
        let logits = self.forward(pixels).logits.cast(FloatDType::F32);
        let [b, c] = logits.dims();
        let probs = burn::tensor::activation::softmax(logits, 1);
        let data: Vec<f32> = probs.into_data().try_into_vec::<f32>().expect("f32 tensor");
        (0..b).map(|i| data[i * c..(i + 1) * c].to_vec()).collect()
    }

    /// All parameters of encoder and head.
    pub fn num_params(&self) -> usize {
        self.encoder.num_params() + self.head.num_params()
    }

    /// Parameters the checkpoint's training method trains (METHOD.md §4).
    pub fn num_trainable(&self) -> usize {
        let head = self.head.num_params();
        let cfg = &self.backbone.encoder;
        let d = cfg.hidden_size;
        match &self.spec.tuning {
            Tuning::LinearProbe => head,
            // pre_layrnorm, post_layernorm and two per layer, each weight + bias.
            Tuning::LnTuning => (2 * cfg.num_hidden_layers + 2) * 2 * d + head,
            // A and B per targeted projection (all d×d in CLIP's attention).
            Tuning::Lora { rank, target_modules, .. } => {
                let per_layer = target_modules
                    .iter()
                    .filter(|m| matches!(m.as_str(), "q_proj" | "k_proj" | "v_proj" | "out_proj"))
                    .count();
                cfg.num_hidden_layers * per_layer * 2 * rank * d + head
            }
            Tuning::Full => self.num_params(),
        }
    }
}
