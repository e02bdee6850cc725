//! What a checkpoint says about the model beyond its tensors: the head, the number of classes,
//! what trains and the backbone's name. Ports the original's `Head` enum and the `peft` /
//! `freeze_feature_extractor` settings of its hyper-parameters (docs/method.md §3 and §4);
//! the training config and the head import these, whatever file format they came from.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The classification head (the original's `Head` enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeadKind {
    /// `logits = W f + b`; the original's "linear".
    #[serde(rename = "linear", alias = "Linear")]
    Linear,
    /// `logits = W (f / |f|) + b`, the paper's choice; the original's "LinearNorm".
    #[serde(rename = "LinearNorm")]
    LinearNorm,
}

impl HeadKind {
    /// The original's name: "linear" or "LinearNorm".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Linear => "linear",
            Self::LinearNorm => "LinearNorm",
        }
    }
    /// Parses the original's names (case-insensitively).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "linear" => Some(Self::Linear),
            "linearnorm" => Some(Self::LinearNorm),
            _ => None,
        }
    }
}

impl fmt::Display for HeadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What trains in the encoder (docs/method.md §4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Tuning {
    /// Frozen encoder, only the head trains.
    LinearProbe,
    /// Every LayerNorm's weight and bias, plus the head (the paper's choice).
    LnTuning,
    /// LoRA adapters (peft semantics: scaling alpha / rank) on `target_modules`.
    Lora { rank: usize, alpha: f64, dropout: f64, target_modules: Vec<String> },
    /// Everything trains.
    Full,
}

/// What a checkpoint says about the model, beyond its tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelSpec {
    /// The backbone name as given (preset, folder, hub id).
    pub backbone: String,
    pub head: HeadKind,
    pub num_classes: usize,
    pub tuning: Tuning,
    /// The training precision, e.g. "bf16-mixed" (informational).
    pub precision: Option<String>,
    pub run_name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_kind_names() {
        assert_eq!(HeadKind::from_name("LinearNorm"), Some(HeadKind::LinearNorm));
        assert_eq!(HeadKind::from_name("linear"), Some(HeadKind::Linear));
        assert_eq!(serde_json::to_string(&HeadKind::LinearNorm).unwrap(), "\"LinearNorm\"");
        assert_eq!(serde_json::from_str::<HeadKind>("\"linear\"").unwrap(), HeadKind::Linear);
    }
}
