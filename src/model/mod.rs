//! The detector: a CLIP or DINOv3 vision encoder + linear head ([`spec`] describes it), and the checkpoint
//! formats it loads from ([`checkpoint`]).

pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod detector;
pub mod dinov3;
pub mod dtype;
pub mod encoder;
pub mod fused;
pub mod head;
pub mod hub;
pub mod lora;
pub mod params;
pub mod pe;
pub mod spec;
pub mod tensors;

pub use checkpoint::{Checkpoint, load_checkpoint};
pub use detector::Detector;
pub use dtype::Dtype;
pub use spec::{HeadKind, ModelSpec, Tuning};
