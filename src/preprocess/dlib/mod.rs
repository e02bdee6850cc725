//! dlib's face detection and landmarks, ported to Rust and read from dlib's own files (Debian
//! `libdlib-data` and `libdlib-dev`), as DeepfakeBench uses them: the HOG frontal face detector
//! ([`hog`], with [`fhog`], [`pyramid`] and the model decompressor [`ppm`]), the 68-point shape
//! predictor ([`shape_predictor`]), both read with dlib's serialisation format (`serialize`),
//! and the `dlib` face back-end that chains them.

pub mod fhog;
pub mod hog;
pub mod ppm;
pub mod pyramid;
mod serialize;
pub mod shape_predictor;

use std::path::{Path, PathBuf};

use image::RgbImage;

pub use hog::{Detection, HogDetector};
pub use shape_predictor::ShapePredictor;

use crate::preprocess::faces::{Face, FaceDetector};
use crate::{Error, Result};

/// dlib's 68-point landmark model, from Debian `libdlib-data`.
pub const SHAPE_PREDICTOR: &str = "shape_predictor_68_face_landmarks.dat";
/// dlib's HOG frontal face detector ships inside this header, from Debian `libdlib-dev`.
pub const FRONTAL_FACE_HEADER: &str = "frontal_face_detector.h";

/// DeepfakeBench's five alignment points among the 68 (`get_keypts`): 37, 44, 30, 49, 55.
pub const DEEPFAKEBENCH_POINTS: [usize; 5] = [37, 44, 30, 49, 55];

/// Installed locations: `/usr/share/dlib` (libdlib-data), `/usr/include/dlib/image_processing`
/// (libdlib-dev).
fn find(models: Option<&Path>, name: &str, system: &str, package: &str) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = match models {
        Some(dir) => vec![dir.join(name), dir.join("dlib").join(name)],
        None => vec![Path::new(system).join(name)],
    };
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        Error::Invalid(format!(
            "dlib model `{name}` not found (looked in {}); it is provided by the Debian package `{package}` \
             (apt-get install {package}), or give a folder holding it with --models",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ))
    })
}

/// DeepfakeBench's 81-point model (not packaged; its first 68 points are the usual set), used
/// instead of the 68-point one when `--models` holds it.
pub const SHAPE_PREDICTOR_81: &str = "shape_predictor_81_face_landmarks.dat";

/// The landmark model and the detector header.
pub fn model_files(models: Option<&Path>) -> Result<(PathBuf, PathBuf)> {
    let model81 = models.map(|d| d.join(SHAPE_PREDICTOR_81)).filter(|p| p.is_file());
    Ok((
        match model81 {
            Some(p) => p,
            None => find(models, SHAPE_PREDICTOR, "/usr/share/dlib", "libdlib-data")?,
        },
        find(models, FRONTAL_FACE_HEADER, "/usr/include/dlib/image_processing", "libdlib-dev")?,
    ))
}

/// The `dlib` back-end: HOG detector (image upsampled once, as DeepfakeBench calls it) and the
/// 68-point predictor on each box; the five alignment points are DeepfakeBench's
/// ([`DEEPFAKEBENCH_POINTS`]).
pub struct DlibFaces {
    pub hog: HogDetector,
    pub landmarks: ShapePredictor,
    /// Times the image is doubled before detection (DeepfakeBench: 1).
    pub upsample: u32,
}

pub fn load(models: Option<&Path>) -> Result<Box<dyn FaceDetector>> {
    let (landmarks, hog) = model_files(models)?;
    Ok(Box::new(DlibFaces {
        hog: HogDetector::from_header(&hog)?,
        landmarks: ShapePredictor::from_file(&landmarks)?,
        upsample: 1,
    }))
}

impl FaceDetector for DlibFaces {
    fn name(&self) -> &'static str {
        "dlib"
    }

    fn detect(&self, image: &RgbImage) -> Result<Vec<Face>> {
        let mut faces = Vec::new();
        for d in self.hog.detect(image, self.upsample) {
            let points = self.landmarks.predict(image, d.rect);
            let all: Vec<[f32; 2]> = points.iter().map(|p| [p[0] as f32, p[1] as f32]).collect();
            let landmarks = DEEPFAKEBENCH_POINTS.map(|i| all[i]);
            let [l, t, r, b] = d.rect.map(|v| v as f32);
            // dlib's boxes are inclusive: width = right - left + 1.
            faces.push(Face {
                bbox: [l, t, r + 1.0, b + 1.0],
                score: d.confidence as f32,
                landmarks,
                all_landmarks: all,
            });
        }
        Ok(faces)
    }
}
