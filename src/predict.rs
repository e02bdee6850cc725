//! Scoring frames with a detector, and the per-video aggregation of the reference.

use std::path::PathBuf;

use burn::prelude::*;
use rayon::prelude::*;
use serde::Serialize;

use crate::data::{video_of, InputError};
use crate::model::Detector;
use crate::preprocess::pixels::{load_rgb, pixel_values};

/// One frame's class probabilities (class 0 real; 1.. fake).
#[derive(Debug, Clone, Serialize)]
pub struct FrameScore {
    pub path: String,
    pub p_fake: f32,
    #[serde(skip)]
    pub probs: Vec<f32>,
}

/// p(fake) of a probability row: column 1, or the largest fake column with per-source classes.
pub fn p_fake(probs: &[f32]) -> f32 {
    probs[1..].iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// A video's score: the mean p(fake) of its frames.
#[derive(Debug, Clone, Serialize)]
pub struct VideoScore {
    pub video: String,
    pub p_fake: f32,
    pub frames: usize,
}

/// Groups frames by video (their parent folder) in order of first appearance and averages.
pub fn aggregate_videos(frames: &[FrameScore]) -> Vec<VideoScore> {
    let mut order: Vec<&str> = Vec::new();
    let mut sums: std::collections::HashMap<&str, (f64, usize)> = Default::default();
    for f in frames {
        let v = video_of(&f.path);
        let e = sums.entry(v).or_insert_with(|| {
            order.push(v);
            (0.0, 0)
        });
        e.0 += f.p_fake as f64;
        e.1 += 1;
    }
    order
        .into_iter()
        .map(|v| {
            let (sum, n) = sums[v];
            VideoScore { video: v.to_string(), p_fake: (sum / n as f64) as f32, frames: n }
        })
        .collect()
}

/// Scores `frames` in batches. A frame that cannot be read is reported in the errors and the
/// rest are still scored; `progress` is called with the number of frames done after each batch.
pub fn score_frames(
    detector: &Detector,
    device: &Device,
    frames: &[PathBuf],
    batch_size: usize,
    mut progress: impl FnMut(usize),
) -> (Vec<FrameScore>, Vec<InputError>) {
    let cfg = &detector.backbone.pixels;
    let [h, w] = cfg.crop_size;
    let mut scores = Vec::with_capacity(frames.len());
    let mut errors = Vec::new();
    for chunk in frames.chunks(batch_size.max(1)) {
        let decoded: Vec<_> = chunk
            .par_iter()
            .map(|p| load_rgb(p).map(|img| pixel_values(&img, cfg)))
            .collect();
        let mut ok_paths = Vec::new();
        let mut pixels = Vec::with_capacity(chunk.len() * 3 * h * w);
        for (path, result) in chunk.iter().zip(decoded) {
            match result {
                Ok(px) => {
                    pixels.extend_from_slice(&px);
                    ok_paths.push(path);
                }
                Err(e) => errors.push(InputError { path: path.display().to_string(), reason: e.to_string() }),
            }
        }
        if !ok_paths.is_empty() {
            let b = ok_paths.len();
            let x = Tensor::<4>::from_data(TensorData::new(pixels, [b, 3, h, w]), device);
            for (path, probs) in ok_paths.into_iter().zip(detector.probabilities(x)) {
                scores.push(FrameScore { path: path.display().to_string(), p_fake: p_fake(&probs), probs });
            }
        }
        progress(chunk.len());
    }
    (scores, errors)
}

/// Scores images already in memory (e.g. face crops of a video), named by `names`, in batches.
pub fn score_images(
    detector: &Detector,
    device: &Device,
    images: &[(String, image::RgbImage)],
    batch_size: usize,
) -> Vec<FrameScore> {
    let cfg = &detector.backbone.pixels;
    let [h, w] = cfg.crop_size;
    let mut scores = Vec::with_capacity(images.len());
    for chunk in images.chunks(batch_size.max(1)) {
        let pixels: Vec<f32> = chunk.par_iter().flat_map_iter(|(_, img)| pixel_values(img, cfg)).collect();
        let x = Tensor::<4>::from_data(TensorData::new(pixels, [chunk.len(), 3, h, w]), device);
        for ((name, _), probs) in chunk.iter().zip(detector.probabilities(x)) {
            scores.push(FrameScore { path: name.clone(), p_fake: p_fake(&probs), probs });
        }
    }
    scores
}
