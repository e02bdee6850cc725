//! Scoring with a detector: frames read from files or already in memory, batched through the
//! encoder and head, and a test split scored and written as a run's outputs.
//!
//! A frame's p(fake) and a video's score follow the reference's evaluation ([`eval::video`]):
//! per-source probability rows become `[p(real), max p(fake source)]` before videos are averaged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use rayon::prelude::*;
use serde::Serialize;

use crate::data::InputError;
use crate::data::sets::Split;
use crate::eval;
use crate::eval::report::{Predictions, Report, evaluate_sets, write_report};
use crate::model::Detector;
use crate::preprocess::pixels::load_rgb_lenient;
use crate::progress::Observer;
use crate::{Error, Result};

/// One frame's class probabilities (class 0 real; 1.. fake).
#[derive(Debug, Clone, Serialize)]
pub struct FrameScore {
    pub path: String,
    /// The crop's p(fake); for a frame whose faces were found, the largest over its faces.
    pub p_fake: f32,
    #[serde(skip)]
    pub probs: Vec<f32>,
    /// The faces found in the frame, largest first (none for an image scored as a crop).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub faces: Vec<FaceScore>,
}

/// One face of a frame: where the detector found it, and its p(fake).
#[derive(Debug, Clone, Serialize)]
pub struct FaceScore {
    /// `[x1, y1, x2, y2]` in the upright frame, in pixels.
    pub bbox: [f32; 4],
    /// The face detector's confidence.
    pub score: f32,
    /// Left eye, right eye, nose, left and right mouth corners.
    pub landmarks: [[f32; 2]; 5],
    pub p_fake: f32,
    /// The aligned crop's file name, where crops were kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crop: Option<String>,
}

/// The p(fake) of a row of class probabilities.
pub fn p_fake_of(probs: &[f32]) -> f32 {
    let binary = eval::video::sources_to_binary(&probs.iter().map(|&p| p as f64).collect::<Vec<_>>(), probs.len());
    binary[1] as f32
}

impl FrameScore {
    /// A frame's score from its class probabilities.
    pub fn new(path: String, probs: Vec<f32>) -> Self {
        Self { path, p_fake: p_fake_of(&probs), probs, faces: Vec::new() }
    }
}

/// A video's score: the mean p(fake) of its frames.
#[derive(Debug, Clone, Serialize)]
pub struct VideoScore {
    pub video: String,
    pub p_fake: f32,
    pub frames: usize,
}

/// Groups frames by video (their parent folder, [`crate::data::video_of`]) in order of first
/// appearance and averages their p(fake), as the reference's video-level evaluation does.
pub fn video_scores(frames: &[FrameScore]) -> Vec<VideoScore> {
    let files: Vec<&str> = frames.iter().map(|f| f.path.as_str()).collect();
    let probs: Vec<f64> = frames.iter().flat_map(|f| [1.0 - f.p_fake as f64, f.p_fake as f64]).collect();
    let labels = vec![0; frames.len()];
    let videos = eval::video::aggregate_videos(&files, &probs, &labels, 2).expect("one row per frame");
    videos
        .videos
        .into_iter()
        .zip(videos.probs.chunks_exact(2))
        .zip(videos.n_frames)
        .map(|((video, row), frames)| VideoScore { video, p_fake: row[1] as f32, frames })
        .collect()
}

/// What scoring frames gave.
#[derive(Debug, Default)]
pub struct Scored {
    pub scores: Vec<FrameScore>,
    /// Frames that could not be read.
    pub errors: Vec<InputError>,
    /// Frames scored from a truncated or partly corrupt file (decoded as far as possible, the
    /// rest black, as the reference's Pillow with `LOAD_TRUNCATED_IMAGES` does).
    pub warnings: Vec<InputError>,
}

/// The warning of a frame that decoded only in part.
pub fn partly_decoded(reason: &str) -> String {
    format!("truncated or corrupt, scored as far as it decodes (the rest black): {reason}")
}

/// Scores `frames` in batches. A frame that cannot be read is reported in the errors and the
/// rest are still scored; `obs` advances by the frames of each batch.
pub fn score_frames(
    detector: &Detector,
    device: &Device,
    frames: &[PathBuf],
    batch_size: usize,
    obs: &mut dyn Observer,
) -> Scored {
    let cfg = &detector.backbone.pixels;
    let [h, w] = cfg.size();
    let mut warnings = Vec::new();
    let mut scores = Vec::with_capacity(frames.len());
    let mut errors = Vec::new();
    for chunk in frames.chunks(batch_size.max(1)) {
        let decoded: Vec<_> =
            chunk.par_iter().map(|p| load_rgb_lenient(p).map(|(img, w)| (cfg.values(&img), w))).collect();
        let mut ok_paths = Vec::new();
        let mut pixels = Vec::with_capacity(chunk.len() * 3 * h * w);
        for (path, result) in chunk.iter().zip(decoded) {
            match result {
                Ok((px, warning)) => {
                    pixels.extend_from_slice(&px);
                    ok_paths.push(path);
                    if let Some(reason) = warning {
                        warnings.push(InputError { path: path.display().to_string(), reason: partly_decoded(&reason) });
                    }
                }
                Err(e) => errors.push(InputError { path: path.display().to_string(), reason: e.reason() }),
            }
        }
        if !ok_paths.is_empty() {
            let x = Tensor::<4>::from_data(TensorData::new(pixels, [ok_paths.len(), 3, h, w]), device);
            for (path, probs) in ok_paths.into_iter().zip(detector.probabilities(x)) {
                scores.push(FrameScore::new(path.display().to_string(), probs));
            }
        }
        obs.advance(chunk.len());
    }
    Scored { scores, errors, warnings }
}

/// Class probabilities of images already in memory (e.g. the face crops of a video), one row
/// per image, in batches.
pub fn score_images(
    detector: &Detector,
    device: &Device,
    images: &[&image::RgbImage],
    batch_size: usize,
) -> Vec<Vec<f32>> {
    let cfg = &detector.backbone.pixels;
    let [h, w] = cfg.size();
    let mut probs = Vec::with_capacity(images.len());
    for chunk in images.chunks(batch_size.max(1)) {
        let pixels: Vec<f32> = chunk.par_iter().flat_map_iter(|img| cfg.values(img)).collect();
        let x = Tensor::<4>::from_data(TensorData::new(pixels, [chunk.len(), 3, h, w]), device);
        probs.extend(detector.probabilities(x));
    }
    probs
}

/// What scoring a test split produced.
#[derive(Debug)]
pub struct TestOutcome {
    pub report: Report,
    /// Frames that could not be scored (missing list entries, unreadable images).
    pub errors: Vec<InputError>,
    /// Sets that could not be evaluated, undefined metrics.
    pub warnings: Vec<String>,
    pub predictions_csv: PathBuf,
    pub metrics_json: PathBuf,
}

/// Scores `split` with `detector` and writes `test_predictions.csv`, `metrics.json` and
/// `plots/` into `out`. Frames that fail are reported and left out; the rest are evaluated.
pub fn test_split(
    detector: &Detector,
    device: &Device,
    split: &Split,
    batch_size: usize,
    out: &Path,
    obs: &mut dyn Observer,
) -> Result<TestOutcome> {
    let paths: Vec<PathBuf> = split.files.iter().map(PathBuf::from).collect();
    let scored = score_frames(detector, device, &paths, batch_size, obs);
    let mut outcome = write_test_outputs(split, &scored.scores, scored.errors, detector.spec.num_classes, out)?;
    outcome.warnings.splice(0..0, scored.warnings.iter().map(|w| format!("{}: {}", w.path, w.reason)));
    Ok(outcome)
}

/// The outputs of a test pass from its frames' scores (any frames of `split`, in any order):
/// `test_predictions.csv`, `metrics.json` and `plots/` in `out`; `errors` are the frames that
/// could not be scored (the split's own missing entries are added).
pub fn write_test_outputs(
    split: &Split,
    scores: &[FrameScore],
    mut errors: Vec<InputError>,
    n_classes: usize,
    out: &Path,
) -> Result<TestOutcome> {
    errors.splice(0..0, split.errors.iter().cloned());

    // Frames scored, in split order, and where each split index went.
    let index: BTreeMap<&str, usize> = split.files.iter().enumerate().map(|(i, f)| (f.as_str(), i)).collect();
    let mut preds = Predictions { n_classes, ..Predictions::default() };
    let mut set_names: Vec<Vec<&str>> = vec![Vec::new(); split.files.len()];
    for (name, idx) in split.sets.iter().filter(|(name, _)| name.as_str() != crate::eval::report::ALL) {
        for &i in idx {
            set_names[i].push(name);
        }
    }
    let mut new_index = vec![None; split.files.len()];
    let mut scores: Vec<&FrameScore> = scores.iter().collect();
    scores.sort_by_key(|s| index[s.path.as_str()]);
    for s in scores {
        let i = index[s.path.as_str()];
        new_index[i] = Some(preds.files.len());
        preds.files.push(s.path.clone());
        preds.labels.push(split.labels[i]);
        preds.probs.extend(s.probs.iter().map(|&p| p as f64));
        preds.sets.push(set_names[i].join(";"));
    }
    if preds.files.is_empty() {
        return Err(Error::Invalid(format!("none of the {} test frames could be scored", split.files.len())));
    }
    let sets: BTreeMap<String, Vec<usize>> = split
        .sets
        .iter()
        .map(|(name, idx)| (name.clone(), idx.iter().filter_map(|&i| new_index[i]).collect()))
        .collect();

    let predictions_csv = out.join("test_predictions.csv");
    preds.write_csv(&predictions_csv)?;
    let (report, warnings) = evaluate_sets(&preds, &sets, Some(&out.join("plots")), "test")?;
    let metrics_json = out.join("metrics.json");
    write_report(&metrics_json, &report)?;
    Ok(TestOutcome { report, errors, warnings, predictions_csv, metrics_json })
}
