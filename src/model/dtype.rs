//! The float type the encoder computes in.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::config::Architecture;

/// The float type the encoder computes in. For CLIP and DINOv3, bf16 is PyTorch's autocast to
/// bfloat16, the precision the reference and GenD train and test in (`bf16-mixed`,
/// docs/method.md §14): bfloat16 products with f32 accumulation, the residual stream and
/// LayerNorm in f32. For the Perception Encoder, bf16 is the encoder's weights and activations in
/// bfloat16. The softmax of the logits is f32 in both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    Bf16,
    /// The faster of the two on this CPU for the encoder at hand ([`Dtype::resolve`]).
    #[default]
    Auto,
}

pub use super::fused::onednn::native_bf16_products;

/// Whether bf16 on an encoder of `arch` is PyTorch's autocast (CLIP, DINOv3), rather than
/// bfloat16 tensors (the Perception Encoder).
pub fn autocasts(arch: &Architecture) -> bool {
    matches!(arch, Architecture::Clip(_) | Architecture::Dinov3(_))
}

impl Dtype {
    /// The names accepted by [`FromStr`] and written by [`fmt::Display`].
    pub const NAMES: [&'static str; 3] = ["f32", "bf16", "auto"];

    /// The float type an encoder of `arch` computes in: `auto` is bf16 only where bf16 is
    /// autocast ([`autocasts`]) and the CPU multiplies bf16 natively ([`native_bf16_products`]),
    /// else f32. The Perception Encoder computes bf16 in burn's bfloat16 tensors, slower than
    /// its f32 everywhere, so `auto` is f32 for it.
    pub fn resolve(self, arch: &Architecture) -> Self {
        match self {
            Self::Auto if autocasts(arch) && native_bf16_products() => Self::Bf16,
            Self::Auto => Self::F32,
            other => other,
        }
    }

    /// What to tell a user who asked for bf16 where it is slower than f32, once.
    pub fn slower_here(self, arch: &Architecture) -> Option<String> {
        match self {
            Self::Bf16 if !autocasts(arch) => Some(format!(
                "bf16 is slower than f32 for this {} encoder: dfdet converts its bfloat16 tensors \
                 to f32 around the matrix products; --dtype f32 or auto is faster",
                arch.family()
            )),
            Self::Bf16 if !native_bf16_products() => Some(
                "bf16 is a little slower than f32 on this CPU: it has no native bfloat16 products, so \
                 dfdet multiplies the bfloat16 values in f32; --dtype f32 or auto is faster"
                    .to_string(),
            ),
            _ => None,
        }
    }
}

impl FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            "auto" => Ok(Self::Auto),
            other => Err(format!("dtype `{other}` is not one of {}", Self::NAMES.join(", "))),
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::NAMES[*self as usize])
    }
}
