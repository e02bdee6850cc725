//! Faces in a frame, the trait the face detectors implement, and the choice of one face per frame.

use image::{GrayImage, RgbImage};

use crate::Result;

/// One detected face: box, confidence and the five alignment points (left eye, right eye, nose,
/// left mouth corner, right mouth corner, in image coordinates).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Face {
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    pub score: f32,
    pub landmarks: [[f32; 2]; 5],
    /// Every landmark the detector gives (dlib: 68 points); empty for RetinaFace.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub all_landmarks: Vec<[f32; 2]>,
}

impl Face {
    pub fn width(&self) -> f32 {
        self.bbox[2] - self.bbox[0]
    }
    pub fn height(&self) -> f32 {
        self.bbox[3] - self.bbox[1]
    }
    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }
}

/// A face detector: every face in an RGB frame.
pub trait FaceDetector: Send + Sync {
    /// Short name for reports (`retinaface`, `dlib`).
    fn name(&self) -> &'static str;
    fn detect(&self, image: &RgbImage) -> Result<Vec<Face>>;
}

/// Picks the face to crop among those detected in a frame (`None`: none is suitable).
pub trait FaceChooser: Send + Sync {
    fn choose(&self, faces: &[Face], frame: usize) -> Option<usize>;
}

/// The largest box (DeepfakeBench: `max(faces, key=width*height)`; the first on ties).
#[derive(Debug, Default, Clone, Copy)]
pub struct Largest;

impl FaceChooser for Largest {
    fn choose(&self, faces: &[Face], _frame: usize) -> Option<usize> {
        let mut best: Option<(usize, f32)> = None;
        for (i, f) in faces.iter().enumerate() {
            if best.is_none_or(|(_, a)| f.area() > a) {
                best = Some((i, f.area()));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// The face whose box covers most of a manipulation mask's non-zero pixels (GenD's rule for
/// datasets where not every face is forged); none when no box touches the mask.
#[derive(Debug, Clone)]
pub struct MaskOverlap {
    /// One mask per sampled frame index.
    pub masks: std::collections::HashMap<usize, GrayImage>,
}

impl FaceChooser for MaskOverlap {
    fn choose(&self, faces: &[Face], frame: usize) -> Option<usize> {
        let mask = self.masks.get(&frame)?;
        let (w, h) = mask.dimensions();
        let mut best: Option<(usize, u64)> = None;
        for (i, f) in faces.iter().enumerate() {
            // GenD casts the box to int and slices [y1:y2, x1:x2].
            let clamp = |v: f32, hi: u32| (v as i64).clamp(0, hi as i64) as u32;
            let (x1, y1, x2, y2) = (clamp(f.bbox[0], w), clamp(f.bbox[1], h), clamp(f.bbox[2], w), clamp(f.bbox[3], h));
            let mut hits = 0u64;
            for y in y1..y2 {
                for x in x1..x2 {
                    hits += u64::from(mask.get_pixel(x, y)[0] > 1);
                }
            }
            if hits > 0 && best.is_none_or(|(_, b)| hits > b) {
                best = Some((i, hits));
            }
        }
        best.map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(x1: f32, y1: f32, x2: f32, y2: f32) -> Face {
        Face { bbox: [x1, y1, x2, y2], score: 1.0, landmarks: [[0.0; 2]; 5], all_landmarks: vec![] }
    }

    #[test]
    fn largest_first_on_ties() {
        let faces = [face(0., 0., 10., 10.), face(0., 0., 20., 20.), face(5., 5., 25., 25.)];
        assert_eq!(Largest.choose(&faces, 0), Some(1));
        assert_eq!(Largest.choose(&[], 0), None);
    }

    #[test]
    fn mask_picks_the_covered_face() {
        let mut mask = GrayImage::new(40, 40);
        for y in 30..40 {
            for x in 30..40 {
                mask.put_pixel(x, y, image::Luma([255]));
            }
        }
        let faces = [face(0., 0., 30., 30.), face(28., 28., 40., 40.)];
        let chooser = MaskOverlap { masks: [(3, mask)].into() };
        assert_eq!(chooser.choose(&faces, 3), Some(1));
        assert_eq!(chooser.choose(&faces[..1], 3), None);
        assert_eq!(chooser.choose(&faces, 4), None);
    }
}
