//! LoRA adapters with peft's semantics (docs/method.md §4): rank `r` on the chosen attention
//! projections, `scaling = alpha / r`, dropout on the adapter's input, `A` drawn as PyTorch's
//! `kaiming_uniform_(a = √5)` (uniform in `±1/√in`) and `B` zero, so training starts from the
//! frozen model exactly.

use burn::module::Param;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::model::Detector;
use crate::model::lora::Lora;
use crate::rng::{Rng, Stream};
use crate::{Error, Result};

/// The reference's `LoRA` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    pub enabled: bool,
    /// Projections to adapt: any of `q_proj`, `k_proj`, `v_proj`, `out_proj`.
    pub target_modules: Vec<String>,
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self { enabled: false, target_modules: vec!["out_proj".into()], rank: 1, alpha: 32.0, dropout: 0.1 }
    }
}

/// The projections LoRA can adapt in CLIP's attention.
pub const LORA_TARGETS: [&str; 4] = crate::model::clip::ATTENTION_PROJECTIONS;

impl LoraConfig {
    /// Checks the targets and rank.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::config("peft.lora.rank", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::config("peft.lora.dropout", format!("{} is not in [0, 1)", self.dropout)));
        }
        for t in &self.target_modules {
            if !LORA_TARGETS.contains(&t.as_str()) {
                return Err(Error::config(
                    "peft.lora.target_modules",
                    format!("`{t}` is not one of {}", LORA_TARGETS.join(", ")),
                ));
            }
        }
        if self.target_modules.is_empty() {
            return Err(Error::config("peft.lora.target_modules", "is empty"));
        }
        Ok(())
    }
}

/// Adds fresh adapters to the targeted projections of every layer (`A` seeded from `seed`).
pub fn attach(detector: &mut Detector, config: &LoraConfig, seed: u64) -> Result<()> {
    config.validate()?;
    let device = detector.head.linear.weight.val().device();
    let d = detector.backbone.encoder.hidden_size();
    let family = detector.backbone.encoder.family();
    let Some(encoder) = detector.encoder.as_clip_mut() else {
        return Err(Error::config(
            "peft.lora",
            format!("LoRA is implemented for CLIP encoders; this backbone is {family} (use LN-tuning)"),
        ));
    };
    let r = config.rank;
    let mut rng = Rng::derive(seed, Stream::Init, &[1]);
    let bound = 1.0 / (d as f64).sqrt();
    encoder.add_adapters(&config.target_modules, || {
        // peft's A weight is [r, in]; drawn row-major there, stored transposed here.
        let a_rows: Vec<f32> = (0..r * d).map(|_| rng.range(-bound, bound) as f32).collect();
        let a = crate::model::tensors::transpose(&a_rows, r, d); // [in, r]
        Lora {
            lora_a: Param::from_tensor(Tensor::from_data(TensorData::new(a, [d, r]), &device)),
            lora_b: Param::from_tensor(Tensor::zeros([r, d], &device)),
            scaling: config.alpha / r as f64,
            dropout_mask: None,
        }
    });
    Ok(())
}

/// Sets each adapter's dropout mask for the next forward (`[b, t, d]` of kept / (1 - p)), or
/// clears them (`p = 0`, or `rng = None` for evaluation).
pub fn set_dropout(detector: &mut Detector, p: f64, shape: [usize; 3], rng: Option<&mut Rng>, device: &Device) {
    let mut rng = rng;
    let Some(encoder) = detector.encoder.as_clip_mut() else { return };
    for adapter in encoder.adapters_mut() {
        adapter.dropout_mask = match rng.as_deref_mut() {
            Some(rng) if p > 0.0 => {
                let n = shape.iter().product();
                let keep = (1.0 / (1.0 - p)) as f32;
                let mask: Vec<f32> = (0..n).map(|_| if rng.uniform() < p { 0.0 } else { keep }).collect();
                Some(Tensor::from_data(TensorData::new(mask, shape), device))
            }
            _ => None,
        };
    }
}
