//! The library side of each `dfdet` command: one function per command that takes resolved
//! settings, does the work, reports through an [`crate::progress::Observer`] and returns what a
//! front end prints. Nothing here parses arguments or prints.

pub mod bench;
pub mod info;
pub mod predict;
pub mod preprocess;
pub mod test;

use std::path::PathBuf;

use crate::Result;
use crate::preprocess::backend::{Backend, load_backend};
use crate::preprocess::faces::FaceDetector;
use crate::preprocess::run::CropConfig;
use crate::preprocess::video::Sampling;

/// How video frames become face crops (`predict VIDEO`, `preprocess`).
#[derive(Debug, Clone)]
pub struct FaceSettings {
    pub backend: Backend,
    /// Folder with the detector's model files (`None`: where their packages install them).
    pub models: Option<PathBuf>,
    pub sampling: Sampling,
    pub crop: CropConfig,
}

impl FaceSettings {
    /// The face detector's name as the options spell it (`retinaface`, `dlib`).
    pub fn detector_name(&self) -> String {
        serde_json::to_value(self.backend)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{:?}", self.backend))
    }

    /// Loads the face detector.
    pub fn detector(&self) -> Result<Box<dyn FaceDetector>> {
        load_backend(self.backend, self.models.as_deref())
    }
}

/// The published detector, fetched from the Hugging Face Hub when not in the local cache.
pub const DEFAULT_WEIGHTS: &str = "yermandy/deepfake-detection";
