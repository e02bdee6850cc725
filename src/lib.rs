//! dfdet: deepfake detection with a LayerNorm-tuned CLIP vision transformer.
//!
//! A Rust port of "Unlocking the Hidden Potential of CLIP in Generalizable Deepfake
//! Detection" (Yermakov, Cech, Matas; arXiv 2503.19683). Data flows one way, and each layer
//! imports only the ones before it:
//!
//! 1. [`error`], [`files`], [`memory`], [`cpu`], [`rng`], [`progress`]: the library's error type,
//!    atomic file writes, process memory, the CPU's model and instruction sets, seeded randomness, progress reporting;
//! 2. [`data`]: input files, list files and the reference's dataset layout;
//! 3. [`eval`]: metrics and plots on plain slices of scores and labels;
//! 4. [`preprocess`]: videos -> frames -> faces -> aligned crops -> pixels;
//! 5. [`model`]: checkpoints, the CLIP encoder and the head;
//! 6. [`score`]: frames through a detector, a test split to a run's outputs;
//! 7. [`train`]: LN-tuning, linear probing and LoRA;
//! 8. [`study`]: the four-method x data-size study, a grid of training runs and its report;
//! 9. [`commands`]: one function per `dfdet` command;
//! 10. [`serve`]: the detector behind an HTTP API and a web page.
//!
//! The `dfdet` binary (`src/main.rs`, `src/cli/`) only parses arguments, calls [`commands`] and
//! prints.

pub mod cpu;
pub mod error;
pub mod files;
pub mod memory;
pub mod progress;
pub mod rng;

pub mod data;
pub mod eval;
pub mod preprocess;

pub mod model;
pub mod score;
pub mod study;
pub mod train;

pub mod commands;
pub mod serve;

pub use error::{Error, Result};

pub mod layers;
