//! Encoder and pixel configurations: named presets for the CLIP checkpoints the reference
//! supports, and readers for a Hugging Face model folder (`config.json`,
//! `preprocessor_config.json`; the pixel settings themselves are
//! [`crate::preprocess::pixels::PixelConfig`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use crate::preprocess::pixels::{CLIP_MEAN, CLIP_STD, PixelConfig};
use crate::{Error, Result};

/// The CLIP vision transformer's shape (HF `CLIPVisionConfig` field names and defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EncoderConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: HiddenAct,
    pub layer_norm_eps: f64,
}

/// The MLP's activation (HF `hidden_act`; CLIP uses these two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenAct {
    /// `x · sigmoid(1.702 x)`, the OpenAI checkpoints' activation.
    QuickGelu,
    Gelu,
}

impl Default for EncoderConfig {
    /// `CLIPVisionConfig()`'s defaults, used for fields a `config.json` leaves out.
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: HiddenAct::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

impl EncoderConfig {
    /// `openai/clip-vit-base-patch32`.
    pub fn clip_vit_base_patch32() -> Self {
        Self::default()
    }
    /// `openai/clip-vit-base-patch16`.
    pub fn clip_vit_base_patch16() -> Self {
        Self { patch_size: 16, ..Self::default() }
    }
    /// `openai/clip-vit-large-patch14`: the paper's backbone.
    pub fn clip_vit_large_patch14() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            patch_size: 14,
            ..Self::default()
        }
    }
    /// `openai/clip-vit-large-patch14-336`.
    pub fn clip_vit_large_patch14_336() -> Self {
        Self { image_size: 336, ..Self::clip_vit_large_patch14() }
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Tokens per image: patches plus the class token.
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks what the encoder relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::Invalid(format!("invalid encoder config: {what} ({self:?})")));
        if self.hidden_size == 0
            || self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return bad("hidden_size must be a positive multiple of num_attention_heads");
        }
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return bad("image_size must be a multiple of patch_size");
        }
        Ok(())
    }

    /// Reads a HF `config.json`: a `CLIPConfig` (its `vision_config`) or a `CLIPVisionConfig`.
    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not JSON: {e}")))?;
        let vision = value.get("vision_config").unwrap_or(&value);
        let config: Self = serde_json::from_value(vision.clone())
            .map_err(|e| Error::format(path, format!("not a CLIP vision config: {e}")))?;
        config.validate().map_err(|e| Error::format(path, e.to_string()))?;
        Ok(config)
    }
}

/// The encoder and pixel settings of a backbone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backbone {
    /// The name it was given by (preset, folder or hub id).
    pub name: String,
    pub encoder: EncoderConfig,
    pub pixels: PixelConfig,
}

/// The presets dfdet knows by name.
pub const PRESETS: [&str; 4] = [
    "openai/clip-vit-base-patch16",
    "openai/clip-vit-base-patch32",
    "openai/clip-vit-large-patch14",
    "openai/clip-vit-large-patch14-336",
];

impl Backbone {
    /// A named preset, matched case-insensitively as the reference does (`backbone.lower()`).
    pub fn preset(name: &str) -> Option<Self> {
        let encoder = match name.to_ascii_lowercase().as_str() {
            "openai/clip-vit-base-patch16" => EncoderConfig::clip_vit_base_patch16(),
            "openai/clip-vit-base-patch32" => EncoderConfig::clip_vit_base_patch32(),
            "openai/clip-vit-large-patch14" => EncoderConfig::clip_vit_large_patch14(),
            "openai/clip-vit-large-patch14-336" => EncoderConfig::clip_vit_large_patch14_336(),
            _ => return None,
        };
        let pixels = PixelConfig::clip(encoder.image_size);
        Some(Self { name: name.to_string(), encoder, pixels })
    }

    /// A local HF folder with `config.json` and, optionally, `preprocessor_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let encoder = EncoderConfig::from_hf_config(&dir.join("config.json"))?;
        let pre = dir.join("preprocessor_config.json");
        let pixels =
            if pre.is_file() { PixelConfig::from_hf_config(&pre)? } else { PixelConfig::clip(encoder.image_size) };
        Ok(Self { name: dir.display().to_string(), encoder, pixels })
    }

    /// A preset name or a local folder.
    pub fn resolve(name: &str) -> Result<Self> {
        if let Some(b) = Self::preset(name) {
            return Ok(b);
        }
        if let Some(family) = non_clip_family(name) {
            return Err(Error::Invalid(not_yet(name, family)));
        }
        let dir = Path::new(name);
        if dir.is_dir() {
            return Self::from_dir(dir);
        }
        Err(Error::UnknownBackbone { name: name.to_string(), known: PRESETS.join(", ") })
    }
}

/// The family of GenD's backbones that are not CLIP (GenD `src/config.py`): DINOv3 through
/// transformers, the Perception Encoder through timm.
pub fn non_clip_family(name: &str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    if name.starts_with("facebook/dinov3-") {
        Some("DINOv3")
    } else if name.starts_with("vit_pe_core_") {
        Some("Perception Encoder")
    } else {
        None
    }
}

/// Why a GenD detector on `family` cannot be loaded yet.
pub fn not_yet(name: &str, family: &str) -> String {
    format!(
        "`{name}` is GenD's {family} backbone, and dfdet cannot build a detector on it yet (GenD's CLIP \
         detectors, e.g. yermandy/GenD_CLIP_L_14, and yermandy/deepfake-detection work)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_patch14_shapes() {
        let c = EncoderConfig::clip_vit_large_patch14();
        assert_eq!(c.num_positions(), 257);
        assert_eq!(c.head_dim(), 64);
        assert_eq!(EncoderConfig::clip_vit_large_patch14_336().num_positions(), 577);
    }

    #[test]
    fn gend_s_other_backbones_are_named() {
        for (name, family) in [
            ("facebook/dinov3-vitl16-pretrain-lvd1689m", "DINOv3"),
            ("vit_pe_core_large_patch14_336", "Perception Encoder"),
        ] {
            let err = Backbone::resolve(name).unwrap_err().to_string();
            assert!(err.contains(family) && err.contains("GenD_CLIP_L_14"), "{err}");
        }
        assert_eq!(non_clip_family("openai/clip-vit-large-patch14"), None);
    }

    #[test]
    fn unknown_backbone_lists_presets() {
        let err = Backbone::resolve("openai/clip-vit-huge").unwrap_err().to_string();
        assert!(err.contains("openai/clip-vit-large-patch14"), "{err}");
    }

    #[test]
    fn hidden_act_reads_hf_names() {
        let read = |act: &str| serde_json::from_value::<EncoderConfig>(serde_json::json!({ "hidden_act": act }));
        assert_eq!(read("gelu").unwrap().hidden_act, HiddenAct::Gelu);
        assert_eq!(read("quick_gelu").unwrap().hidden_act, HiddenAct::QuickGelu);
        assert!(read("relu").unwrap_err().to_string().contains("quick_gelu"));
        assert_eq!(serde_json::to_value(HiddenAct::QuickGelu).unwrap(), "quick_gelu");
    }
}
