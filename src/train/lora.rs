//! LoRA adapters with peft's semantics (docs/method.md §4): rank `r` on the modules the targets
//! match (CLIP's attention projections; DINOv3's and the Perception Encoder's linears, and the
//! latter's patch convolution), `scaling = alpha / r`, dropout on the adapter's input, `A` drawn
//! as PyTorch's `kaiming_uniform_(a = √5)` (uniform in `±1/√in`) and `B` zero, so training
//! starts from the frozen model exactly.

use burn::module::Param;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::model::Detector;
use crate::model::lora::{Lora, module_matches};
use crate::rng::{Rng, Stream};
use crate::{Error, Result};

/// The reference's `LoRA` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    pub enabled: bool,
    /// Modules to adapt, matched as peft matches them (see [`MODULE_NAMES`]): CLIP's
    /// `q_proj`, `k_proj`, `v_proj`, `out_proj`; DINOv3's linears; the Perception Encoder's.
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

/// The modules LoRA can adapt, by their name's last component: CLIP's attention projections,
/// DINOv3's `nn.Linear`s and the Perception Encoder's (`patch_embed.proj` is its patch
/// convolution). A target is one of these or a dotted path ending in one.
pub const MODULE_NAMES: [(&str, &[&str]); 3] = [
    ("CLIP", &LORA_TARGETS),
    ("DINOv3", &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    ("Perception Encoder", &["qkv", "proj", "fc1", "fc2", "q", "kv"]),
];

impl LoraConfig {
    /// Checks the targets (each a module name of one of the families) and rank; whether a
    /// target names a module of the backbone is checked when the adapters are attached.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::config("peft.lora.rank", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::config("peft.lora.dropout", format!("{} is not in [0, 1)", self.dropout)));
        }
        for t in &self.target_modules {
            let last = t.rsplit('.').next().unwrap_or_default();
            let known = MODULE_NAMES.iter().any(|(_, names)| names.contains(&last));
            if !known || t.split('.').any(str::is_empty) {
                let families: Vec<String> =
                    MODULE_NAMES.iter().map(|(f, names)| format!("{f}: {}", names.join(", "))).collect();
                return Err(Error::config(
                    "peft.lora.target_modules",
                    format!("`{t}` names no projection LoRA can adapt ({})", families.join("; ")),
                ));
            }
        }
        if self.target_modules.is_empty() {
            return Err(Error::config("peft.lora.target_modules", "is empty"));
        }
        Ok(())
    }
}

/// Adds fresh adapters to the modules the targets match (peft's matching: a module whose
/// checkpoint name is a target or ends with `.` and a target), `A` `[r, in]` seeded from
/// `seed` module by module, `B` zero. A target that matches no module of the backbone is
/// refused, naming the family's modules.
pub fn attach(detector: &mut Detector, config: &LoraConfig, seed: u64) -> Result<()> {
    config.validate()?;
    let device = detector.head.linear.weight.val().device();
    let arch = &detector.backbone.encoder;
    let r = config.rank;
    let mut rng = Rng::derive(seed, Stream::Init, &[1]);
    let adapted = detector.encoder.add_adapters(arch, &config.target_modules, |d_in, d_out| {
        // peft's A weight is [r, in], kaiming_uniform_(a = √5): uniform in ±1/√in; drawn
        // row-major there, stored transposed here.
        let bound = 1.0 / (d_in as f64).sqrt();
        let a_rows: Vec<f32> = (0..r * d_in).map(|_| rng.range(-bound, bound) as f32).collect();
        let a = crate::model::tensors::transpose(&a_rows, r, d_in); // [in, r]
        Lora {
            lora_a: Param::from_tensor(Tensor::from_data(TensorData::new(a, [d_in, r]), &device)),
            lora_b: Param::from_tensor(Tensor::zeros([r, d_out], &device)),
            scaling: config.alpha / r as f64,
            dropout_mask: None,
        }
    });
    for t in &config.target_modules {
        if !adapted.iter().any(|name| module_matches(name, t)) {
            let mut names: Vec<String> = Vec::new();
            for site in detector.encoder.lora_sites(arch) {
                let short = site.name.rsplit('.').next().unwrap_or_default().to_string();
                let short = if site.name.ends_with("patch_embed.proj") { "patch_embed.proj".into() } else { short };
                if !names.contains(&short) {
                    names.push(short);
                }
            }
            return Err(Error::config(
                "peft.lora.target_modules",
                format!("`{t}` matches no module of this {} backbone; LoRA adapts {}", arch.family(), names.join(", ")),
            ));
        }
    }
    Ok(())
}

/// Sets each adapter's dropout mask for the next forward of `batch` images (the shape of the
/// adapter's input, of kept / (1 - p), drawn adapter by adapter), or clears them (`p = 0`, or
/// `rng = None` for evaluation). CLIP's masks are `[b, positions, d]`; DINOv3's and the
/// Perception Encoder's have the tokens of the backbone's input size.
pub fn set_dropout(detector: &mut Detector, p: f64, batch: usize, rng: Option<&mut Rng>, device: &Device) {
    let mut rng = rng;
    let arch = &detector.backbone.encoder;
    let (tokens, prefix) = match arch.as_clip() {
        Some(cfg) => (cfg.num_positions(), 1),
        None => {
            let [h, w] = detector.backbone.pixels.size();
            let patch = arch.patch_size();
            // Tokens before the patches: those of an image without patches.
            let prefix = arch.num_tokens(0);
            (prefix + (h / patch) * (w / patch), prefix)
        }
    };
    for (rows, adapter) in detector.encoder.adapters_mut(arch) {
        adapter.dropout_mask = match rng.as_deref_mut() {
            Some(rng) if p > 0.0 => {
                let shape = rows.shape(batch, tokens, prefix, adapter.d_in());
                let n = shape.iter().product();
                let keep = (1.0 / (1.0 - p)) as f32;
                let mask: Vec<f32> = (0..n).map(|_| if rng.uniform() < p { 0.0 } else { keep }).collect();
                Some(Tensor::from_data(TensorData::new(mask, shape), device))
            }
            _ => None,
        };
    }
}
