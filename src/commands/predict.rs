//! `dfdet predict`: p(fake) of face crops (image files, folders, list files) and of videos
//! (frames sampled, faces found and aligned in memory), per frame and per video, rendered as a
//! table, CSV or JSON.

use std::collections::HashMap;
use std::path::PathBuf;

use burn::prelude::*;
use serde::Serialize;

use super::FaceSettings;
use crate::Result;
use crate::data::{InputError, expand_inputs, video_of};
use crate::model::Detector;
use crate::preprocess::run::crops_in_memory;
use crate::preprocess::video::Sampling;
use crate::progress::Observer;
use crate::score::{FrameScore, Scored, VideoScore, score_frames, score_images, video_scores};

/// What `predict` scored and what it could not.
#[derive(Debug, Default, Serialize)]
pub struct Predictions {
    pub frames: Vec<FrameScore>,
    pub videos: Vec<VideoScore>,
    pub errors: Vec<InputError>,
    /// Frames scored from a truncated or partly corrupt file.
    pub warnings: Vec<InputError>,
    /// What produced these numbers.
    pub about: About,
}

/// The program, model and settings behind a set of predictions (JSON `about`).
#[derive(Debug, Default, Clone, Serialize)]
pub struct About {
    /// dfdet's version.
    pub dfdet: String,
    /// The weights as given (path or hub id).
    pub weights: String,
    /// The encoder's name (preset, folder or hub id).
    pub backbone: String,
    pub head: String,
    pub dtype: String,
    pub batch_size: usize,
    /// How video frames are sampled: `linspace:N` or `stride:K`.
    pub video_frames: String,
    /// The face detector for videos.
    pub face_detector: String,
}

impl About {
    /// The settings of a `predict` run with `detector` loaded from `weights`.
    pub fn new(weights: &str, detector: &Detector, dtype: &str, batch_size: usize, faces: &FaceSettings) -> Self {
        Self {
            dfdet: env!("CARGO_PKG_VERSION").into(),
            weights: weights.into(),
            backbone: detector.backbone.name.clone(),
            head: format!("{:?}", detector.spec.head),
            dtype: dtype.into(),
            batch_size,
            video_frames: match faces.sampling {
                Sampling::Linspace(n) => format!("linspace:{n}"),
                Sampling::Stride(k) => format!("stride:{k}"),
            },
            face_detector: serde_json::to_value(faces.backend)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("{:?}", faces.backend)),
        }
    }
}

/// Scores `inputs`: images, folders and list files as face crops; video files through `faces`.
/// Unreadable inputs are reported in the errors and every other input is still scored.
pub fn predict(
    detector: &Detector,
    device: &Device,
    inputs: &[PathBuf],
    batch_size: usize,
    faces: &FaceSettings,
    obs: &mut dyn Observer,
) -> Result<Predictions> {
    let inputs = expand_inputs(inputs);
    let videos = &inputs.videos;
    // The face detector is loaded first, so that a missing model stops the run before any work.
    let face_detector = if videos.is_empty() { None } else { Some(faces.detector()?) };
    obs.phase("frames", inputs.frames.len(), 0);
    let Scored { scores: mut frames, mut errors, warnings } =
        score_frames(detector, device, &inputs.frames, batch_size, obs);
    errors.splice(0..0, inputs.errors.iter().cloned());
    if let Some(face_detector) = face_detector {
        obs.phase("videos", videos.len(), 0);
        for video in videos {
            // Each crop is named `<video>/<frame:03>`, so that the video is the crops' "folder".
            let name = video.display().to_string();
            obs.status(&name);
            let (crops, skipped) = crops_in_memory(video, faces.sampling, face_detector.as_ref(), &faces.crop);
            // A video that could not be read at all is one error, not two.
            let unreadable = skipped.iter().any(|(frame, _)| frame.is_none());
            for (frame, reason) in skipped {
                let path = frame.map(|f| format!("{name}/{f:03}")).unwrap_or_else(|| name.clone());
                errors.push(InputError { path, reason });
            }
            let named: Vec<_> = crops.into_iter().map(|(i, c)| (format!("{name}/{i:03}"), c)).collect();
            if named.is_empty() && !unreadable {
                errors.push(InputError { path: name, reason: "no face crop to score".into() });
            }
            frames.extend(score_images(detector, device, &named, batch_size));
            obs.advance(1);
        }
    }
    let videos = video_scores(&frames);
    Ok(Predictions { frames, videos, errors, warnings, about: About::default() })
}

/// Output formats of `predict` (and `bench`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Table,
    Csv,
    Json,
}

impl Format {
    /// The serde names of the variants.
    pub const NAMES: [&'static str; 3] = ["table", "csv", "json"];
}

impl Predictions {
    /// The predictions as `format`: JSON `{"frames","videos","errors","warnings","about"}`; CSV
    /// `path,video,p_fake,video_p_fake`; or a table of frames, then of videos.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Json => format!("{}\n", serde_json::to_string_pretty(self).expect("serialisable")),
            Format::Csv => {
                let video_score: HashMap<&str, f32> =
                    self.videos.iter().map(|v| (v.video.as_str(), v.p_fake)).collect();
                let mut s = String::from("path,video,p_fake,video_p_fake\n");
                for f in &self.frames {
                    let v = video_of(&f.path);
                    s += &format!("{},{},{:.6},{:.6}\n", csv_field(&f.path), csv_field(v), f.p_fake, video_score[v]);
                }
                s
            }
            Format::Table => {
                let width = self.frames.iter().map(|f| f.path.len()).max().unwrap_or(4).max(5);
                let mut s = format!("{:<width$}  p_fake\n", "frame");
                for f in &self.frames {
                    s += &format!("{:<width$}  {:.4}\n", f.path, f.p_fake);
                }
                let width = self.videos.iter().map(|v| v.video.len()).max().unwrap_or(5).max(5);
                s += &format!("\n{:<width$}  frames  p_fake\n", "video");
                for v in &self.videos {
                    s += &format!("{:<width$}  {:>6}  {:.4}\n", v.video, v.frames, v.p_fake);
                }
                s
            }
        }
    }
}

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}
