//! `dfdet preprocess`: raw videos to DeepfakeBench-style aligned face crops.
//!
//! For each video: sample frames, find faces, keep one (largest by default), align it onto the
//! template, re-detect on the crop (DeepfakeBench drops crops that show no face), write
//! `<out>/<dataset>/<source>/<video>/<frame:03>.png`. Videos run in parallel. A video is
//! finished when its folder holds `.dfdet-done.json` (written last, atomically; it lists the
//! crops and every skipped frame with its reason); a later run skips finished videos and redoes
//! half-written ones. At the end, list files `<out>/<dataset>/<source>.txt` (paths relative to
//! the list's folder) and `<out>/<dataset>/skipped.csv` are rebuilt from all finished videos.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::align::{TemplateKind, align};
use super::faces::{Face, FaceChooser, FaceDetector};
use super::video::{Sampling, VideoInfo, decode_sampled};
use crate::{Error, Result};

/// The marker that makes a video folder finished.
pub const DONE_FILE: &str = ".dfdet-done.json";

/// Smallest frame side a face is looked for in.
pub const MIN_FRAME_SIDE: u32 = 32;

pub use crate::data::{VIDEO_EXTENSIONS, is_video};

/// How frames become crops.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CropConfig {
    pub template: TemplateKind,
    /// Crop side in pixels (256).
    pub size: u32,
    /// Drop crops in which the detector finds no face again (DeepfakeBench does).
    pub redetect: bool,
}

impl Default for CropConfig {
    fn default() -> Self {
        Self { template: TemplateKind::Deepfakebench, size: 256, redetect: true }
    }
}

/// One frame's outcome.
pub type FrameResult = std::result::Result<RgbImage, String>;

/// Detect, choose, align and re-check one frame.
pub fn crop_frame(
    frame: &RgbImage,
    index: usize,
    detector: &dyn FaceDetector,
    chooser: &dyn FaceChooser,
    config: &CropConfig,
) -> FrameResult {
    let (w, h) = frame.dimensions();
    if w.min(h) < MIN_FRAME_SIDE {
        return Err(format!("frame too small to hold a face ({w}x{h})"));
    }
    let faces = detector.detect(frame).map_err(|e| format!("face detection failed: {e}"))?;
    if faces.is_empty() {
        return Err("no face found".into());
    }
    let chosen = chooser.choose(&faces, index).ok_or("no suitable face among those found")?;
    let (_, crop) = align(frame, &faces[chosen].landmarks, config.template, config.size)
        .ok_or("degenerate landmarks (all at one point)")?;
    if config.redetect {
        let again = detector.detect(&crop).map_err(|e| format!("face detection on the crop failed: {e}"))?;
        if again.is_empty() {
            return Err("no face in the aligned crop".into());
        }
    }
    Ok(crop)
}

/// A video's record: what was written and what was skipped, with reasons.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VideoRecord {
    pub video: PathBuf,
    pub dataset: String,
    pub source: String,
    pub name: String,
    pub detector: String,
    pub frame_count: usize,
    /// File names of the crops written (`000.png`, ...).
    pub crops: Vec<String>,
    /// Frame index (none: the whole video) and reason.
    pub skipped: Vec<(Option<usize>, String)>,
}

/// What [`Job::run`] reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// A sampled frame of `video` has been through the face detector.
    Frame { video: &'a Path },
    /// A video is finished (now, or by an earlier run).
    Video(&'a VideoRecord),
}

/// Everything `dfdet preprocess` needs.
pub struct Job<'a> {
    pub out: PathBuf,
    pub dataset: String,
    /// Source folder name for every video; `None`: from each video's path ([`source_of`]).
    pub source: Option<String>,
    pub sampling: Sampling,
    pub crop: CropConfig,
    pub detector: &'a dyn FaceDetector,
    pub chooser: &'a dyn FaceChooser,
}

/// What a run did.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub videos: usize,
    /// Finished by an earlier run and left alone.
    pub resumed: usize,
    /// Crops in the list files (this run's and earlier runs').
    pub crops: usize,
    /// Crops this run wrote.
    pub crops_written: usize,
    pub skipped_frames: usize,
    pub failed_videos: usize,
    pub lists: Vec<PathBuf>,
    pub report: PathBuf,
}

/// The source name of a video: its folder's name, looking past FaceForensics++-style
/// `videos` / `c23` / `c40` / `raw` folders.
pub fn source_of(video: &Path) -> String {
    let generic = ["videos", "c0", "c23", "c40", "raw"];
    // A video in the working folder takes that folder's name.
    let absolute = std::path::absolute(video).unwrap_or_else(|_| video.to_path_buf());
    absolute
        .ancestors()
        .skip(1)
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()))
        .find(|n| !generic.contains(n))
        .unwrap_or("videos")
        .to_string()
}

impl Job<'_> {
    fn video_dir(&self, video: &Path) -> (String, String, PathBuf) {
        let source = self.source.clone().unwrap_or_else(|| source_of(video));
        let name = video.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "video".into());
        let dir = self.out.join(&self.dataset).join(&source).join(&name);
        (source, name, dir)
    }

    /// Processes every video (in parallel), then rebuilds the list files and the report.
    /// `progress` hears of every sampled frame and every finished video.
    pub fn run(&self, videos: &[PathBuf], progress: impl Fn(Progress) + Sync) -> Result<Summary> {
        let mut seen = std::collections::HashMap::new();
        for v in videos {
            let (_, _, dir) = self.video_dir(v);
            if let Some(other) = seen.insert(dir.clone(), v) {
                return Err(Error::Invalid(format!(
                    "{} and {} would both be written to {}; give them different --source or --dataset",
                    other.display(),
                    v.display(),
                    dir.display()
                )));
            }
        }
        let resumed = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<Result<usize>> = videos
            .par_iter()
            .map(|v| {
                let (_, _, dir) = self.video_dir(v);
                if let Some(rec) = read_record(&dir) {
                    resumed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    progress(Progress::Video(&rec));
                    return Ok(0);
                }
                let rec = self.process(v, &|| progress(Progress::Frame { video: v }))?;
                progress(Progress::Video(&rec));
                Ok(rec.crops.len())
            })
            .collect();
        let mut written = 0;
        for r in results {
            written += r?;
        }
        let mut summary = self.write_lists()?;
        summary.videos = videos.len();
        summary.resumed = resumed.into_inner();
        summary.crops_written = written;
        Ok(summary)
    }

    /// One video, start to finish: clears a half-written folder, writes crops, then the marker.
    /// `on_frame` is called after each sampled frame.
    pub fn process(&self, video: &Path, on_frame: &dyn Fn()) -> Result<VideoRecord> {
        let (source, name, dir) = self.video_dir(video);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut rec = VideoRecord {
            video: video.to_path_buf(),
            dataset: self.dataset.clone(),
            source,
            name,
            detector: self.detector.name().into(),
            ..Default::default()
        };
        let mut write_error = None;
        let decoded = decode_sampled(video, self.sampling, |index, frame| {
            if write_error.is_some() {
                return;
            }
            match crop_frame(&frame, index, self.detector, self.chooser, &self.crop) {
                Ok(crop) => {
                    let file = format!("{index:03}.png");
                    let path = dir.join(&file);
                    match crop.save(&path) {
                        Ok(()) => rec.crops.push(file),
                        Err(e) => write_error = Some(Error::Image { path, reason: e.to_string() }),
                    }
                }
                Err(reason) => rec.skipped.push((Some(index), reason)),
            }
            on_frame();
        });
        if let Some(e) = write_error {
            return Err(e); // the output is unwritable: stop the run, leave the video unfinished
        }
        match decoded {
            Ok((info, summary)) => {
                rec.frame_count = info.frame_count;
                if info.frame_count == 0 {
                    rec.skipped.push((None, "no frames: the video stream is empty".into()));
                } else if summary.decoded == 0 {
                    rec.skipped.push((
                        None,
                        format!("no decodable frames{}", summary.error.map(|e| format!(" ({e})")).unwrap_or_default()),
                    ));
                } else {
                    let why = match &summary.error {
                        Some(e) => format!("not decoded: {e}"),
                        None => format!("not decoded: the video ended after {} frames", summary.decoded),
                    };
                    for i in summary.missing {
                        rec.skipped.push((Some(i), why.clone()));
                    }
                }
            }
            Err(e) => rec.skipped.push((None, e.reason())),
        }
        if rec.crops.is_empty() && !rec.skipped.iter().any(|(f, _)| f.is_none()) && rec.frame_count > 0 {
            rec.skipped.push((None, "no crop written: no face in any sampled frame".into()));
        }
        write_record(&dir, &rec)?;
        Ok(rec)
    }

    /// Rebuilds `<out>/<dataset>/<source>.txt` and `skipped.csv` from every finished video.
    fn write_lists(&self) -> Result<Summary> {
        let root = self.out.join(&self.dataset);
        let mut by_source: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut report = String::from("video,frame,reason\n");
        let mut summary = Summary::default();
        let mut records = Vec::new();
        if let Ok(sources) = std::fs::read_dir(&root) {
            for s in sources.flatten().filter(|e| e.path().is_dir()) {
                for v in std::fs::read_dir(s.path()).map_err(|e| Error::io(s.path(), e))?.flatten() {
                    if let Some(rec) = read_record(&v.path()) {
                        records.push(rec);
                    }
                }
            }
        }
        records.sort_by(|a, b| (&a.source, &a.name).cmp(&(&b.source, &b.name)));
        for rec in &records {
            let lines = by_source.entry(rec.source.clone()).or_default();
            for c in &rec.crops {
                lines.push(format!("{}/{}/{}", rec.source, rec.name, c));
            }
            summary.crops += rec.crops.len();
            for (frame, reason) in &rec.skipped {
                match frame {
                    Some(_) => summary.skipped_frames += 1,
                    None => summary.failed_videos += 1,
                }
                let frame = frame.map(|f| f.to_string()).unwrap_or_default();
                report += &format!("{},{},{}\n", csv(&rec.video.display().to_string()), frame, csv(reason));
            }
        }
        for (source, lines) in &by_source {
            let list = root.join(format!("{source}.txt"));
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            std::fs::write(&list, text).map_err(|e| Error::io(&list, e))?;
            summary.lists.push(list);
        }
        std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        summary.report = root.join("skipped.csv");
        std::fs::write(&summary.report, report).map_err(|e| Error::io(&summary.report, e))?;
        Ok(summary)
    }
}

fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

fn read_record(dir: &Path) -> Option<VideoRecord> {
    let text = std::fs::read_to_string(dir.join(DONE_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_record(dir: &Path, rec: &VideoRecord) -> Result<()> {
    let tmp = dir.join(format!("{DONE_FILE}.part"));
    let json = serde_json::to_string_pretty(rec).expect("serialisable");
    std::fs::write(&tmp, json).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, dir.join(DONE_FILE)).map_err(|e| Error::io(dir, e))
}

/// Frames skipped, with reasons (frame `None`: the whole video).
pub type Skipped = Vec<(Option<usize>, String)>;

/// Up to `max_faces` faces of one frame, largest box first (the first on ties, as
/// [`Largest`](super::faces::Largest)),
/// each aligned and re-checked as [`crop_frame`] does its one face. With `max_faces = 1` this is
/// exactly `crop_frame` with `Largest`. A face whose crop fails the re-check is dropped; a
/// frame with no face left is an error with the reason.
pub fn crop_faces(
    frame: &RgbImage,
    detector: &dyn FaceDetector,
    max_faces: usize,
    config: &CropConfig,
) -> std::result::Result<Vec<(Face, RgbImage)>, String> {
    let (w, h) = frame.dimensions();
    if w.min(h) < MIN_FRAME_SIDE {
        return Err(format!("frame too small to hold a face ({w}x{h})"));
    }
    let mut faces = detector.detect(frame).map_err(|e| format!("face detection failed: {e}"))?;
    if faces.is_empty() {
        return Err("no face found".into());
    }
    // Stable: equal areas keep the detector's order.
    faces.sort_by(|a, b| b.area().total_cmp(&a.area()));
    faces.truncate(max_faces.max(1));
    let mut kept = Vec::with_capacity(faces.len());
    let mut last_reason = String::new();
    for face in faces {
        let Some((_, crop)) = align(frame, &face.landmarks, config.template, config.size) else {
            last_reason = "degenerate landmarks (all at one point)".into();
            continue;
        };
        if config.redetect {
            let again = detector.detect(&crop).map_err(|e| format!("face detection on the crop failed: {e}"))?;
            if again.is_empty() {
                last_reason = "no face in the aligned crop".into();
                continue;
            }
        }
        kept.push((face, crop));
    }
    if kept.is_empty() { Err(last_reason) } else { Ok(kept) }
}

/// The faces of one sampled video frame (or of a still image, frame 0).
pub struct FrameFaces {
    pub index: usize,
    /// Each face with its aligned crop, largest first.
    pub faces: Vec<(Face, RgbImage)>,
}

/// What [`faces_in_memory`] found in one video.
pub struct VideoFaces {
    /// The sampled frames with at least one face.
    pub frames: Vec<FrameFaces>,
    /// Frames skipped, with reasons (frame `None`: the whole video).
    pub skipped: Skipped,
    /// What the container says about the video; none when it could not be opened.
    pub info: Option<VideoInfo>,
}

/// Faces of one video in memory (for `dfdet predict VIDEO`): up to `max_faces` per sampled frame
/// ([`crop_faces`]), and the skipped frames with reasons.
pub fn faces_in_memory(
    video: &Path,
    sampling: Sampling,
    detector: &dyn FaceDetector,
    max_faces: usize,
    config: &CropConfig,
) -> VideoFaces {
    let mut frames = Vec::new();
    let mut skipped = Vec::new();
    let decoded =
        decode_sampled(video, sampling, |index, frame| match crop_faces(&frame, detector, max_faces, config) {
            Ok(faces) => frames.push(FrameFaces { index, faces }),
            Err(r) => skipped.push((Some(index), r)),
        });
    let info = match decoded {
        Ok((info, summary)) => {
            if info.frame_count == 0 || summary.decoded == 0 {
                skipped.push((None, "no decodable frames".into()));
            }
            for i in summary.missing.iter().filter(|_| summary.decoded > 0) {
                skipped.push((Some(*i), "not decoded".into()));
            }
            Some(info)
        }
        Err(e) => {
            skipped.push((None, e.reason()));
            None
        }
    };
    VideoFaces { frames, skipped, info }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_look_past_generic_folders() {
        assert_eq!(source_of(Path::new("FF/manipulated_sequences/Deepfakes/c23/videos/000_003.mp4")), "Deepfakes");
        assert_eq!(source_of(Path::new("Celeb-DF-v2/Celeb-real/id0_0000.mp4")), "Celeb-real");
        let here = std::env::current_dir().unwrap();
        let folder = here.file_name().map(|n| n.to_string_lossy().into_owned());
        let expected = folder.filter(|n| !["videos", "c0", "c23", "c40", "raw"].contains(&n.as_str()));
        assert_eq!(source_of(Path::new("clip.mp4")), expected.unwrap_or_else(|| "videos".into()), "the working folder");
        assert!(is_video(Path::new("a/B.MP4")) && !is_video(Path::new("a/b.png")));
    }
}
