//! Encoder and pixel configurations: named presets for the CLIP checkpoints the reference
//! supports, and readers for a Hugging Face model folder (`config.json`,
//! `preprocessor_config.json`; the pixel settings themselves are
//! [`crate::preprocess::pixels::PixelConfig`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::dinov3::Dinov3Config;
use super::pe::PeConfig;
pub use crate::preprocess::antialias::Dinov3Pixels;
pub use crate::preprocess::pixels::{CLIP_MEAN, CLIP_STD, PixelConfig, Pixels, TimmPixels};
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

/// The encoder of a backbone: its family and shape. Serialised with a `family` tag
/// (`"clip"`, `"dinov3"`); a dfdet.json written before there was more than one family has
/// none, and reads as CLIP.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum Architecture {
    Clip(EncoderConfig),
    Dinov3(Dinov3Config),
    /// The Perception Encoder (timm's `Eva`, `vit_pe_core_*`).
    Pe(PeConfig),
}

impl<'de> Deserialize<'de> for Architecture {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(tag = "family", rename_all = "snake_case")]
        enum Tagged {
            Clip(EncoderConfig),
            Dinov3(Dinov3Config),
            Pe(PeConfig),
        }
        let mut value = serde_json::Value::deserialize(d)?;
        if let Some(obj) = value.as_object_mut() {
            obj.entry("family").or_insert_with(|| "clip".into());
        }
        Ok(match serde_json::from_value(value).map_err(serde::de::Error::custom)? {
            Tagged::Clip(c) => Self::Clip(c),
            Tagged::Dinov3(c) => Self::Dinov3(c),
            Tagged::Pe(c) => Self::Pe(c),
        })
    }
}

impl Architecture {
    /// The family's name, as users know it.
    pub fn family(&self) -> &'static str {
        match self {
            Self::Clip(_) => "CLIP",
            Self::Dinov3(_) => "DINOv3",
            Self::Pe(_) => "Perception Encoder",
        }
    }
    /// Width of the feature the head reads.
    pub fn hidden_size(&self) -> usize {
        match self {
            Self::Clip(c) => c.hidden_size,
            Self::Dinov3(c) => c.hidden_size,
            Self::Pe(c) => c.embed_dim,
        }
    }
    pub fn num_layers(&self) -> usize {
        match self {
            Self::Clip(c) => c.num_hidden_layers,
            Self::Dinov3(c) => c.num_hidden_layers,
            Self::Pe(c) => c.depth,
        }
    }
    pub fn num_heads(&self) -> usize {
        match self {
            Self::Clip(c) => c.num_attention_heads,
            Self::Dinov3(c) => c.num_attention_heads,
            Self::Pe(c) => c.num_heads,
        }
    }
    pub fn intermediate_size(&self) -> usize {
        match self {
            Self::Clip(c) => c.intermediate_size,
            Self::Dinov3(c) => c.intermediate_size,
            Self::Pe(c) => c.mlp_dim,
        }
    }
    pub fn patch_size(&self) -> usize {
        match self {
            Self::Clip(c) => c.patch_size,
            Self::Dinov3(c) => c.patch_size,
            Self::Pe(c) => c.patch_size,
        }
    }
    /// Tokens per image of `side` x `side` pixels: the patches and the tokens before them
    /// (the class token, and DINOv3's registers).
    pub fn num_tokens(&self, side: usize) -> usize {
        let grid = side / self.patch_size();
        grid * grid
            + match self {
                Self::Clip(_) => 1,
                Self::Dinov3(c) => c.prefix_tokens(),
                Self::Pe(c) => c.prefix_tokens(),
            }
    }
    /// The CLIP config, for what only CLIP has (LoRA, the fused training kernels).
    pub fn as_clip(&self) -> Option<&EncoderConfig> {
        match self {
            Self::Clip(c) => Some(c),
            _ => None,
        }
    }
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Clip(c) => c.validate(),
            Self::Dinov3(c) => c.validate(),
            Self::Pe(c) => c.validate(),
        }
    }
}

/// The encoder and pixel settings of a backbone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backbone {
    /// The name it was given by (preset, folder or hub id).
    pub name: String,
    pub encoder: Architecture,
    pub pixels: Pixels,
}

/// The presets dfdet knows by name.
pub const PRESETS: [&str; 9] = [
    "openai/clip-vit-base-patch16",
    "openai/clip-vit-base-patch32",
    "openai/clip-vit-large-patch14",
    "openai/clip-vit-large-patch14-336",
    "facebook/dinov3-vitb16-pretrain-lvd1689m",
    "facebook/dinov3-vitl16-pretrain-lvd1689m",
    "vit_pe_core_base_patch16_224",
    "vit_pe_core_large_patch14_336",
    "vit_pe_core_gigantic_patch14_448",
];

impl Backbone {
    /// A named preset, matched case-insensitively as the reference does (`backbone.lower()`).
    pub fn preset(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        if let Some(cfg) = Dinov3Config::preset(&lower) {
            // GenD's processor: the image resized to 224 x 224.
            let pixels = Pixels::Dinov3(Dinov3Pixels::new(cfg.image_size));
            return Some(Self { name: name.to_string(), encoder: Architecture::Dinov3(cfg), pixels });
        }
        if let Some(cfg) = PeConfig::preset(&lower) {
            // GenD's: timm's data config with `input_size` (3, 224, 224).
            let pixels = Pixels::Timm(TimmPixels::pe(cfg.image_size));
            return Some(Self { name: name.to_string(), encoder: Architecture::Pe(cfg), pixels });
        }
        let encoder = match lower.as_str() {
            "openai/clip-vit-base-patch16" => EncoderConfig::clip_vit_base_patch16(),
            "openai/clip-vit-base-patch32" => EncoderConfig::clip_vit_base_patch32(),
            "openai/clip-vit-large-patch14" => EncoderConfig::clip_vit_large_patch14(),
            "openai/clip-vit-large-patch14-336" => EncoderConfig::clip_vit_large_patch14_336(),
            _ => return None,
        };
        let pixels = Pixels::Clip(PixelConfig::clip(encoder.image_size));
        Some(Self { name: name.to_string(), encoder: Architecture::Clip(encoder), pixels })
    }

    /// A local HF folder with `config.json` and, optionally, `preprocessor_config.json`: a
    /// CLIP model (or its vision tower), a DINOv3 model (`model_type` `dinov3_vit`), a timm
    /// Perception Encoder (`architecture` `vit_pe_core_*`, as timm's hub folders name it, run
    /// at GenD's 224 pixels), or dfdet's own Perception Encoder config (the fields of
    /// [`PeConfig`], `"family": "pe"`).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config = dir.join("config.json");
        let pre = dir.join("preprocessor_config.json");
        let name = dir.display().to_string();
        let value = read_config(&config)?;
        let field = |key: &str| value.get(key).and_then(|v| v.as_str());
        if let Some(arch) = field("architecture").filter(|a| a.starts_with("vit_pe_core_")) {
            let cfg = PeConfig::preset(arch).ok_or_else(|| {
                Error::format(&config, format!("timm architecture `{arch}` is not one of GenD's Perception Encoders"))
            })?;
            let pixels = Pixels::Timm(TimmPixels::pe(cfg.image_size));
            return Ok(Self { name, encoder: Architecture::Pe(cfg), pixels });
        }
        if field("family") == Some("pe") {
            let cfg = PeConfig::from_json(&config)?;
            let pixels = Pixels::Timm(TimmPixels::pe(cfg.image_size));
            return Ok(Self { name, encoder: Architecture::Pe(cfg), pixels });
        }
        if field("model_type") == Some("dinov3_vit") {
            let encoder = Dinov3Config::from_hf_config(&config)?;
            let pixels =
                if pre.is_file() { Dinov3Pixels::from_hf_config(&pre)? } else { Dinov3Pixels::new(encoder.image_size) };
            return Ok(Self { name, encoder: Architecture::Dinov3(encoder), pixels: Pixels::Dinov3(pixels) });
        }
        let encoder = EncoderConfig::from_hf_config(&config)?;
        let pixels =
            if pre.is_file() { PixelConfig::from_hf_config(&pre)? } else { PixelConfig::clip(encoder.image_size) };
        Ok(Self { name, encoder: Architecture::Clip(encoder), pixels: Pixels::Clip(pixels) })
    }

    /// A preset name or a local folder.
    pub fn resolve(name: &str) -> Result<Self> {
        if let Some(b) = Self::preset(name) {
            return Ok(b);
        }
        let dir = Path::new(name);
        if dir.is_dir() {
            return Self::from_dir(dir);
        }
        Err(Error::UnknownBackbone { name: name.to_string(), known: PRESETS.join(", ") })
    }
}

/// A `config.json`, as JSON.
fn read_config(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not JSON: {e}")))
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
    fn perception_encoder_presets_run_at_gend_s_224() {
        let b = Backbone::resolve("vit_pe_core_large_patch14_336").unwrap();
        assert_eq!(
            (b.encoder.family(), b.encoder.hidden_size(), b.encoder.num_layers()),
            ("Perception Encoder", 1024, 24)
        );
        assert_eq!(b.pixels.size(), [224, 224]);
        // 16 x 16 patches and the class token.
        assert_eq!(b.encoder.num_tokens(224), 257);
        assert_eq!(b.encoder.layer_index("backbone.blocks.3.attn.qkv.weight"), Some(3));
        let json = serde_json::to_value(&b).unwrap();
        assert_eq!(json["encoder"]["family"], "pe");
        assert_eq!(serde_json::from_value::<Backbone>(json).unwrap(), b);
    }

    #[test]
    fn dinov3_presets_resolve() {
        let b = Backbone::resolve("facebook/dinov3-vitl16-pretrain-lvd1689m").unwrap();
        assert_eq!((b.encoder.family(), b.encoder.hidden_size(), b.encoder.num_layers()), ("DINOv3", 1024, 24));
        assert_eq!(b.pixels.size(), [224, 224]);
        assert!(b.encoder.embedding_shapes().iter().all(|(n, _)| n.starts_with("backbone.embeddings.")));
        assert_eq!(b.encoder.layer_index("backbone.layer.23.norm1.weight"), Some(23));
    }

    #[test]
    fn architecture_round_trips_and_reads_untagged_clip() {
        for name in ["openai/clip-vit-base-patch16", "facebook/dinov3-vitb16-pretrain-lvd1689m"] {
            let b = Backbone::preset(name).unwrap();
            let json = serde_json::to_value(&b).unwrap();
            assert_eq!(serde_json::from_value::<Backbone>(json).unwrap(), b);
        }
        // A dfdet.json written when CLIP was the only family: no tag.
        let mut old = serde_json::to_value(Backbone::preset("openai/clip-vit-base-patch16").unwrap()).unwrap();
        old["encoder"].as_object_mut().unwrap().remove("family");
        let read: Backbone = serde_json::from_value(old).unwrap();
        assert_eq!(read.encoder.as_clip().unwrap().patch_size, 16);
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
