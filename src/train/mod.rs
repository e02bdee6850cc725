//! `dfdet train`: parameter-efficient fine-tuning of the detector (docs/method.md §4-§7).
//!
//! LN-tuning, linear probing and LoRA on the encoder (CLIP, DINOv3, Perception Encoder); slerp
//! feature augmentation; the reference's losses; AdamW with its two parameter groups and a
//! per-step cosine schedule; gradient accumulation; a run folder with the resolved config,
//! metrics, checkpoints and a final test pass; resumable at any saved step.

pub mod augment;
pub mod config;
pub mod curves;
pub mod data;
pub mod forward;
pub mod init;
pub mod lora;
pub mod loss;
pub mod optim;
pub mod params;
pub mod run;
pub mod schedule;
pub mod slerp;
pub mod splits;
pub mod state;
pub mod store;
pub mod validate;

pub use config::TrainConfig;
pub use run::{Outcome, resume, train};

/// The device training computes gradients on: `device` with autodiff. (burn's balanced gradient
/// checkpointing was measured slower and, with the fused kernels of `model::fused`, no lighter on
/// ViT-L/14.)
pub fn autodiff_device(device: &burn::prelude::Device) -> burn::prelude::Device {
    device.clone().autodiff()
}
