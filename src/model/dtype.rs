//! The float type the encoder computes in.

use std::fmt;
use std::str::FromStr;

use burn::tensor::FloatDType;
use serde::{Deserialize, Serialize};

/// Float type of the encoder's weights and activations (the head and the softmax stay f32).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    Bf16,
    /// The faster of the two on this CPU ([`Dtype::resolve`]).
    #[default]
    Auto,
}

/// Whether dfdet multiplies bf16 matrices natively (bf16 products with f32 accumulation, e.g.
/// AVX512-BF16). Not yet: its bf16 path converts to f32 around every product, so bf16 is slower
/// than f32 on every CPU measured (BENCHMARKS.md), and `auto` is f32.
pub const NATIVE_BF16_PRODUCTS: bool = false;

impl Dtype {
    /// The names accepted by [`FromStr`] and written by [`fmt::Display`].
    pub const NAMES: [&'static str; 3] = ["f32", "bf16", "auto"];

    /// The float type computed in: `auto` is bf16 only where the CPU multiplies bf16 natively
    /// and dfdet has products that use it, else f32.
    pub fn resolve(self) -> Self {
        match self {
            Self::Auto if NATIVE_BF16_PRODUCTS && crate::cpu::CpuInfo::detect().isa.contains(&"avx512bf16") => {
                Self::Bf16
            }
            Self::Auto => Self::F32,
            other => other,
        }
    }

    /// What to tell a user who asked for this type, once: bf16 is slower than f32 here.
    pub fn slower_here(self) -> Option<String> {
        (self == Self::Bf16 && !NATIVE_BF16_PRODUCTS).then(|| {
            "bf16 is slower than f32 here: dfdet converts bf16 to f32 around its matrix products \
             (native bf16 products are not implemented yet); --dtype f32 or auto is faster"
                .to_string()
        })
    }

    /// burn's float type (of [`Self::resolve`]).
    pub fn float(self) -> FloatDType {
        match self.resolve() {
            Self::Bf16 => FloatDType::BF16,
            _ => FloatDType::F32,
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
