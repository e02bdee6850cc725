//! The float type the encoder computes in.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The float type the encoder computes in. bf16 is PyTorch's autocast to bfloat16, the precision
/// the reference and GenD train and test in (`bf16-mixed`, docs/method.md §14): bfloat16 products
/// with f32 accumulation, the residual stream and LayerNorm in f32, every value in f32 storage
/// (the frozen weights in bfloat16 storage where the CPU multiplies it natively). The softmax of
/// the logits is f32.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    Bf16,
    /// The faster of the two on this CPU ([`Dtype::resolve`]).
    #[default]
    Auto,
}

pub use super::fused::onednn::native_bf16_products;

impl Dtype {
    /// The names accepted by [`FromStr`] and written by [`fmt::Display`].
    pub const NAMES: [&'static str; 3] = ["f32", "bf16", "auto"];

    /// The float type computed in: `auto` is bf16 where the CPU multiplies bf16 natively
    /// ([`native_bf16_products`]), else f32.
    pub fn resolve(self) -> Self {
        match self {
            Self::Auto if native_bf16_products() => Self::Bf16,
            Self::Auto => Self::F32,
            other => other,
        }
    }

    /// What to tell a user who asked for bf16 where it is slower than f32, once.
    pub fn slower_here(self) -> Option<String> {
        (self == Self::Bf16 && !native_bf16_products()).then(|| {
            "bf16 is a little slower than f32 on this CPU: it has no native bfloat16 products, so dfdet \
             multiplies the bfloat16 values in f32; --dtype f32 or auto is faster"
                .to_string()
        })
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
