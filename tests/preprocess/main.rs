//! Preprocessing: video decoding, RetinaFace, alignment and dlib against their Python
//! references, and `dfdet preprocess`/`predict VIDEO` as a user runs them.

#[path = "../common/mod.rs"]
mod common;
mod support;

mod cli;
mod dlib;
mod faces;
mod video;
