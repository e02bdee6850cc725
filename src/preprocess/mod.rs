//! Turning images into encoder input: the CLIP pixel pipeline (and, later, face crops).

pub mod pixels;
