//! The detector: CLIP vision encoder + linear head, and the checkpoint formats it loads from.

pub mod clip;
pub mod config;
pub mod head;
pub mod hub;
pub mod weights;
pub mod detector;
pub mod dtype;
pub mod fused;

pub use detector::Detector;
pub use dtype::Dtype;
pub use weights::{load_checkpoint, Checkpoint, HeadKind, ModelSpec, Tuning};
