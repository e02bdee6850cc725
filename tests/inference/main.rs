//! Inference: numeric parity of the encoder and detector with the reference, checkpoint
//! formats, pixel parity with Pillow, and `dfdet predict`/`info`/`convert` as a user runs them.

#[path = "../common/mod.rs"]
mod common;

mod checkpoints;
mod cli;
mod hostile;
mod parity;
mod parsers;
mod pixels;
