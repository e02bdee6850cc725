//! Annotated output of `predict`: each input drawn with a box per face in the colour of its
//! p(fake) (green to red), the number beside it, and the video's running score; videos through
//! FFmpeg's encoders ([`VideoWriter`]), images as image files. Faces' aligned crops can be kept
//! beside them (the server's page shows them).
//!
//! A video's annotated copy holds its sampled frames at their own time stamps (so it lasts as
//! long as the source), or with `all_frames` every frame, each showing the faces of the nearest
//! sampled frame (the earlier one on ties). The running score of a frame is the mean of the frame
//! scores sampled up to it, so the last frame shows the video's score.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use serde::Serialize;

use super::Predictions;
use crate::data::InputError;
use crate::preprocess::draw;
use crate::preprocess::encode::VideoWriter;
use crate::preprocess::pixels::load_rgb;
use crate::preprocess::run::FrameFaces;
use crate::preprocess::video::{Sampling, decode_sampled};
use crate::score::FrameScore;

/// Where annotated media go and what they show.
#[derive(Debug, Clone)]
pub struct Annotate {
    pub out: Target,
    /// Every frame of a video (scores carried from the nearest sampled frame), not only the
    /// sampled ones.
    pub all_frames: bool,
    /// Also write each face's aligned crop into this folder, named in its `crop` field.
    pub crops: Option<PathBuf>,
}

/// The file for the one input, or a folder for several.
#[derive(Debug, Clone)]
pub enum Target {
    /// One input: its annotated copy is this file (format by extension).
    File(PathBuf),
    /// Each input's copy goes here as `<name>.mp4` (videos) or `<name>.png` (images).
    Folder(PathBuf),
}

/// One annotated file written.
#[derive(Debug, Clone, Serialize)]
pub struct Media {
    /// The input as named in the predictions.
    pub input: String,
    /// The annotated file.
    pub path: String,
    /// How it was encoded: the video encoder (e.g. `libx264`) or the image format.
    pub codec: String,
    /// Frames written.
    pub frames: usize,
}

/// How an error about an annotated copy begins (the input itself was scored).
pub const ANNOTATION_FAILED: &str = "annotated output: ";

/// Annotation in progress: the settings and the names handed out so far.
pub(super) struct Annotator<'a> {
    settings: &'a Annotate,
    used: HashSet<PathBuf>,
}

impl Annotate {
    pub(super) fn start(&self) -> Annotator<'_> {
        Annotator { settings: self, used: HashSet::new() }
    }
}

/// Text for a frame's banner: the running video score.
fn banner(image: &mut RgbImage, running: Option<f32>) {
    match running {
        Some(p) => draw::banner(image, &format!("p(fake) video {p:.2}"), draw::score_colour(p)),
        None => draw::banner(image, "p(fake) video -", Rgb([255, 255, 255])),
    }
}

/// A file name from `input`'s file stem, safe on every file system.
fn stem_of(input: &Path) -> String {
    let stem = input.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let clean: String =
        stem.chars().map(|c| if c.is_alphanumeric() || "-_.".contains(c) { c } else { '_' }).take(100).collect();
    if clean.is_empty() { "input".into() } else { clean }
}

impl Annotator<'_> {
    /// The output path for `input` with extension `ext` (folder target: unique within the run).
    fn target(&mut self, input: &Path, ext: &str) -> PathBuf {
        match &self.settings.out {
            Target::File(path) => path.clone(),
            Target::Folder(dir) => {
                let stem = stem_of(input);
                let mut path = dir.join(format!("{stem}.{ext}"));
                let mut k = 2;
                while !self.used.insert(path.clone()) {
                    path = dir.join(format!("{stem}-{k}.{ext}"));
                    k += 1;
                }
                path
            }
        }
    }

    fn failed(out: &mut Predictions, input: &Path, what: impl std::fmt::Display) {
        out.errors.push(InputError { path: input.display().to_string(), reason: format!("{ANNOTATION_FAILED}{what}") });
    }

    fn save_image(&mut self, input: &Path, image: &RgbImage, out: &mut Predictions) {
        let path = self.target(input, "png");
        let format = image::ImageFormat::from_path(&path).map(|f| format!("{f:?}").to_lowercase());
        match image.save(&path) {
            Ok(()) => out.media.push(Media {
                input: input.display().to_string(),
                path: path.display().to_string(),
                codec: format.unwrap_or_else(|_| "png".into()),
                frames: 1,
            }),
            Err(e) => Self::failed(out, input, format!("{}: {e}", path.display())),
        }
    }

    /// A photo whose faces were found: a box per face.
    pub(super) fn photo(&mut self, input: &Path, mut image: RgbImage, frames: &[FrameScore], out: &mut Predictions) {
        for face in frames.iter().flat_map(|f| &f.faces) {
            draw::face(&mut image, face.bbox, face.p_fake);
        }
        self.save_image(input, &image, out);
    }

    /// An image scored as a crop: its outline in the colour of its score, and the number.
    pub(super) fn crop(&mut self, input: &Path, p_fake: f32, out: &mut Predictions) {
        match load_rgb(input) {
            Ok(mut image) => {
                let (w, h) = image.dimensions();
                draw::face(&mut image, [0.0, 0.0, w as f32, h as f32], p_fake);
                self.save_image(input, &image, out);
            }
            Err(e) => Self::failed(out, input, e.reason()),
        }
    }

    /// Writes each face's crop to the crops folder and names it in the face's `crop` field.
    pub(super) fn keep_crops(
        &mut self,
        input: &Path,
        still: bool,
        found: &[FrameFaces],
        frames: &mut [FrameScore],
        out: &mut Predictions,
    ) {
        let Some(dir) = &self.settings.crops else { return };
        let stem = stem_of(input);
        for (frame, scored) in found.iter().zip(frames.iter_mut()) {
            for (k, ((_, crop), face)) in frame.faces.iter().zip(scored.faces.iter_mut()).enumerate() {
                let name = if still { format!("{stem}_{k}.png") } else { format!("{stem}_{:03}_{k}.png", frame.index) };
                match crop.save(dir.join(&name)) {
                    Ok(()) => face.crop = Some(name),
                    Err(e) => Self::failed(out, input, format!("{name}: {e}")),
                }
            }
        }
    }

    /// A video shown at `fps`: its sampled frames (or all frames) with the faces of the
    /// `sampled` frames (index, and its scores where a face was found, in any order) and the
    /// running score.
    pub(super) fn video(
        &mut self,
        input: &Path,
        fps: f64,
        sampling: Sampling,
        mut sampled: Vec<(usize, Option<&FrameScore>)>,
        out: &mut Predictions,
    ) {
        let path = self.target(input, "mp4");
        sampled.sort_by_key(|(i, _)| *i);
        let mut writer: Option<VideoWriter> = None;
        let mut error: Option<String> = None;
        let (mut sum, mut count, mut next) = (0.0f64, 0usize, 0usize);
        let every = if self.settings.all_frames { Sampling::Stride(1) } else { sampling };
        let decoded = decode_sampled(input, every, |index, mut image| {
            if error.is_some() {
                return;
            }
            // Frames sampled up to here count towards the running score.
            while next < sampled.len() && sampled[next].0 <= index {
                if let Some(f) = sampled[next].1 {
                    sum += f64::from(f.p_fake);
                    count += 1;
                }
                next += 1;
            }
            // The nearest sampled frame: the last one passed, or the next one if it is closer.
            let before = next.checked_sub(1).map(|k| sampled[k]);
            let after = sampled.get(next).copied();
            let nearest = match (before, after) {
                (Some(b), Some(a)) if a.0 - index < index - b.0 => Some(a),
                (Some(b), _) => Some(b),
                (None, a) => a,
            };
            for face in nearest.and_then(|(_, f)| f).into_iter().flat_map(|f| &f.faces) {
                draw::face(&mut image, face.bbox, face.p_fake);
            }
            banner(&mut image, (count > 0).then(|| (sum / count as f64) as f32));
            if writer.is_none() {
                match VideoWriter::create(&path, image.width(), image.height(), fps) {
                    Ok(w) => writer = Some(w),
                    Err(e) => {
                        error = Some(format!("{}: {}", path.display(), e.reason()));
                        return;
                    }
                }
            }
            if let Err(e) = writer.as_mut().expect("created above").write(index, &image) {
                error = Some(format!("{}: {}", path.display(), e.reason()));
            }
        });
        if let Err(e) = decoded {
            error.get_or_insert(e.reason());
        }
        match (writer, error) {
            (_, Some(e)) => Self::failed(out, input, e),
            (None, None) => Self::failed(out, input, "no frame decoded"),
            (Some(w), None) => {
                let codec = w.codec().to_string();
                match w.finish() {
                    Ok(n) => out.media.push(Media {
                        input: input.display().to_string(),
                        path: path.display().to_string(),
                        codec,
                        frames: n,
                    }),
                    Err(e) => Self::failed(out, input, format!("{}: {}", path.display(), e.reason())),
                }
            }
        }
    }
}
