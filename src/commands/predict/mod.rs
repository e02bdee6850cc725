//! `dfdet predict`: p(fake) of face crops (image files, folders, list files), of photos (faces
//! found and aligned, with `detect_stills`) and of videos (frames sampled, faces found and
//! aligned in memory), per face, per frame and per video, rendered as a table, CSV or JSON, and
//! optionally drawn onto the media ([`annotate`]).
//!
//! A frame's score is its crop's p(fake), or, where faces were found in it, the largest p(fake)
//! over its faces (one forged face makes a forged frame). A video's score stays the mean of its
//! frames' scores, the reference's rule.

pub mod annotate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use serde::Serialize;

use super::FaceSettings;
use crate::Result;
use crate::data::{InputError, expand_inputs, video_of};
use crate::model::Detector;
use crate::preprocess::faces::Face;
use crate::preprocess::pixels::load_rgb_lenient;
use crate::preprocess::run::{FrameFaces, VideoFaces, crop_faces, faces_in_memory};
use crate::preprocess::video::Sampling;
use crate::progress::Observer;
use crate::score::{
    FaceScore, FrameScore, Scored, VideoScore, p_fake_of, partly_decoded, score_frames, score_images, video_scores,
};
pub use annotate::{Annotate, Media};

/// What `predict` scored and what it could not.
#[derive(Debug, Default, Serialize)]
pub struct Predictions {
    pub frames: Vec<FrameScore>,
    pub videos: Vec<VideoScore>,
    pub errors: Vec<InputError>,
    /// Frames scored from a truncated or partly corrupt file, and images scored as crops that
    /// are not the crop size.
    pub warnings: Vec<InputError>,
    /// Annotated media written (with `annotate`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub media: Vec<Media>,
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
    /// The face detector for videos (and photos).
    pub face_detector: String,
    /// Faces kept per video frame or photo, largest first.
    pub max_faces: usize,
    /// Whether faces were looked for in still images (else they are scored as crops).
    pub detect_faces: bool,
}

impl About {
    /// The settings of a `predict` run with `detector` loaded from `weights`.
    pub fn new(weights: &str, detector: &Detector, settings: &PredictSettings) -> Self {
        let faces = &settings.faces;
        Self {
            dfdet: env!("CARGO_PKG_VERSION").into(),
            weights: weights.into(),
            backbone: detector.backbone.name.clone(),
            head: format!("{:?}", detector.spec.head),
            dtype: detector.dtype.to_string(),
            batch_size: settings.batch_size,
            video_frames: match faces.sampling {
                Sampling::Linspace(n) => format!("linspace:{n}"),
                Sampling::Stride(k) => format!("stride:{k}"),
            },
            face_detector: faces.detector_name(),
            max_faces: settings.max_faces,
            detect_faces: settings.detect_stills,
        }
    }
}

/// How `predict` scores its inputs.
#[derive(Debug, Clone)]
pub struct PredictSettings {
    /// Images per forward pass.
    pub batch_size: usize,
    /// How faces are found and aligned in video frames (and photos).
    pub faces: FaceSettings,
    /// Faces scored per video frame or photo, largest first (1: the largest only, as the
    /// reference).
    pub max_faces: usize,
    /// Find and align the faces of still images as of video frames, instead of scoring each
    /// image as a face crop.
    pub detect_stills: bool,
    /// Draw boxes and scores onto the inputs and write them.
    pub annotate: Option<Annotate>,
}

impl PredictSettings {
    /// Scoring as the reference does it: the largest face per frame, images as crops.
    pub fn new(batch_size: usize, faces: FaceSettings) -> Self {
        Self { batch_size, faces, max_faces: 1, detect_stills: false, annotate: None }
    }
}

/// Scores `inputs`: images, folders and list files as face crops (or, with `detect_stills`, as
/// photos whose faces are found); video files through their sampled frames' faces.
/// Unreadable inputs are reported in the errors and every other input is still scored.
pub fn predict(
    detector: &Detector,
    device: &Device,
    inputs: &[PathBuf],
    settings: &PredictSettings,
    obs: &mut dyn Observer,
) -> Result<Predictions> {
    let inputs = expand_inputs(inputs);
    let videos = &inputs.videos;
    let faces = &settings.faces;
    // The face detector is loaded first, so that a missing model stops the run before any work.
    let needs_detector = !videos.is_empty() || (settings.detect_stills && !inputs.frames.is_empty());
    let face_detector = if needs_detector { Some(faces.detector()?) } else { None };
    let mut out = Predictions { errors: inputs.errors.clone(), ..Predictions::default() };
    let mut annotator = settings.annotate.as_ref().map(Annotate::start);

    obs.phase("frames", inputs.frames.len(), 0);
    match (&face_detector, settings.detect_stills) {
        (Some(face_detector), true) => {
            for path in &inputs.frames {
                let name = path.display().to_string();
                obs.status(&name);
                match load_rgb_lenient(path) {
                    Err(e) => out.errors.push(InputError { path: name, reason: e.reason() }),
                    Ok((image, partly)) => {
                        if let Some(reason) = partly {
                            out.warnings.push(InputError { path: name.clone(), reason: partly_decoded(&reason) });
                        }
                        match crop_faces(&image, face_detector.as_ref(), settings.max_faces, &faces.crop) {
                            Err(reason) => out.errors.push(InputError { path: name.clone(), reason }),
                            Ok(found) => {
                                let found = [FrameFaces { index: 0, faces: found }];
                                let mut scored =
                                    score_faces(detector, device, &name, true, &found, settings.batch_size);
                                if let Some(a) = annotator.as_mut() {
                                    a.keep_crops(path, true, &found, &mut scored, &mut out);
                                    a.photo(path, image, &scored, &mut out);
                                }
                                out.frames.extend(scored);
                            }
                        }
                    }
                }
                obs.advance(1);
            }
        }
        _ => {
            let Scored { scores, errors, warnings } =
                score_frames(detector, device, &inputs.frames, settings.batch_size, obs);
            out.errors.extend(errors);
            out.warnings.extend(warnings);
            let side = faces.crop.size;
            for frame in &scores {
                match image::image_dimensions(&frame.path) {
                    Ok((w, h)) if (w, h) != (side, side) => out.warnings.push(InputError {
                        path: frame.path.clone(),
                        reason: format!(
                            "{w}x{h} is not a {side}x{side} face crop but was scored as one; for photos use \
                             --detect-faces (API: detect=true)"
                        ),
                    }),
                    _ => {}
                }
                if let Some(a) = annotator.as_mut() {
                    a.crop(Path::new(&frame.path), frame.p_fake, &mut out);
                }
            }
            out.frames.extend(scores);
        }
    }

    if let Some(face_detector) = face_detector.filter(|_| !videos.is_empty()) {
        obs.phase("videos", videos.len(), 0);
        for video in videos {
            let name = video.display().to_string();
            obs.status(&name);
            let VideoFaces { frames: found, skipped, info } =
                faces_in_memory(video, faces.sampling, face_detector.as_ref(), settings.max_faces, &faces.crop);
            // A video that could not be read at all is one error, not two.
            let unreadable = skipped.iter().any(|(frame, _)| frame.is_none());
            for (frame, reason) in &skipped {
                let path = frame.map(|f| format!("{name}/{f:03}")).unwrap_or_else(|| name.clone());
                out.errors.push(InputError { path, reason: reason.clone() });
            }
            if found.is_empty() && !unreadable {
                out.errors.push(InputError { path: name.clone(), reason: "no face crop to score".into() });
            }
            // Each frame is named `<video>/<frame:03>`, so that the video is the frames' "folder".
            let mut scored = score_faces(detector, device, &name, false, &found, settings.batch_size);
            // A video that could not be opened is named above once; there is nothing to draw on.
            if let (Some(a), Some(info)) = (annotator.as_mut(), info) {
                a.keep_crops(video, false, &found, &mut scored, &mut out);
                // Every sampled frame: those scored, and those without a face.
                let with_faces = found.iter().map(|f| f.index).zip(scored.iter().map(Some));
                let faceless = skipped.iter().filter_map(|(f, _)| f.map(|i| (i, None)));
                let sampled = with_faces.chain(faceless).collect();
                drop(found);
                a.video(video, info.fps, faces.sampling, sampled, &mut out);
            }
            out.frames.extend(scored);
            obs.advance(1);
        }
    }
    out.videos = video_scores(&out.frames);
    Ok(out)
}

/// Scores every face of `frames` in batches; a frame scores as its most likely forged face.
/// Frames are named `<name>/<index:03>`, or `<name>` alone for a still image.
fn score_faces(
    detector: &Detector,
    device: &Device,
    name: &str,
    still: bool,
    frames: &[FrameFaces],
    batch_size: usize,
) -> Vec<FrameScore> {
    let crops: Vec<&image::RgbImage> = frames.iter().flat_map(|f| f.faces.iter().map(|(_, crop)| crop)).collect();
    let mut probs = score_images(detector, device, &crops, batch_size).into_iter();
    frames
        .iter()
        .map(|frame| {
            let path = if still { name.to_string() } else { format!("{name}/{:03}", frame.index) };
            let scored: Vec<(&Face, Vec<f32>, f32)> = frame
                .faces
                .iter()
                .map(|(face, _)| {
                    let p = probs.next().expect("one row per crop");
                    let p_fake = p_fake_of(&p);
                    (face, p, p_fake)
                })
                .collect();
            // The first of the largest p(fake): with one face, that face.
            let best = (0..scored.len())
                .reduce(|a, b| if scored[b].2 > scored[a].2 { b } else { a })
                .expect("a frame holds at least one face");
            let faces = scored
                .iter()
                .map(|(face, _, p_fake)| FaceScore {
                    bbox: face.bbox,
                    score: face.score,
                    landmarks: face.landmarks,
                    p_fake: *p_fake,
                    crop: None,
                })
                .collect();
            FrameScore { path, p_fake: scored[best].2, probs: scored[best].1.clone(), faces }
        })
        .collect()
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
