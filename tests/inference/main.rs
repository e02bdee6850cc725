//! Inference: numeric parity of the encoder and detector with the reference, checkpoint
//! formats, pixel parity with Pillow, and `dfdet predict`/`info`/`convert` as a user runs them.

#[path = "../common/mod.rs"]
mod common;

#[path = "../common/alloc.rs"]
mod alloc;

#[global_allocator]
static ALLOCATOR: alloc::Recording = alloc::Recording;

mod annotate;
mod checkpoints;
mod cli;
mod dinov3;
mod hostile;
mod lora;
mod parity;
mod parsers;
mod pe;
mod pixels;
mod serve;
