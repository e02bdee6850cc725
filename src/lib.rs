//! dfdet: deepfake detection with a LayerNorm-tuned CLIP vision transformer.
//!
//! A Rust port of "Unlocking the Hidden Potential of CLIP in Generalizable Deepfake
//! Detection" (Yermakov, Cech, Matas; arXiv 2503.19683). Data flows one way:
//! files -> [`data`] -> [`preprocess`] (pixels) -> [`model`] (encoder + head) -> scores ->
//! [`eval`] (metrics).

pub mod data;
pub mod error;
pub mod eval;
pub mod model;
pub mod preprocess;

pub use error::{Error, Result};
pub mod bench;
pub mod cli;
pub mod evaluate;
pub mod memory;
pub mod predict;
pub mod train;
