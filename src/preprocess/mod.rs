//! Turning videos and images into encoder input: video decoding and frame sampling, face
//! detection and alignment (DeepfakeBench's 256x256 crops, docs/method.md §8), and the CLIP pixel
//! pipeline (§2); drawing on frames and writing videos for annotated output.

pub mod align;
pub mod antialias;
pub mod backend;
pub mod dlib;
pub mod draw;
pub mod encode;
pub mod faces;
pub mod pixels;
pub mod retinaface;
pub mod run;
pub mod video;
