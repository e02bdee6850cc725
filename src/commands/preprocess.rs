//! `dfdet preprocess`: videos (files, or folders searched recursively) to aligned face crops in
//! DeepfakeBench's layout, with list files and a report of what was skipped
//! ([`crate::preprocess::run`]).

use std::collections::HashMap;
use std::path::PathBuf;

use super::FaceSettings;
use crate::data::{InputError, walk_files};
use crate::preprocess::faces::Largest;
use crate::preprocess::run::{Job, Progress, Summary, is_video};
use crate::preprocess::video::Sampling;
use crate::progress::Observer;
use crate::{Error, Result};

/// Where the crops go.
#[derive(Debug, Clone)]
pub struct Output {
    /// Root: crops go to `OUT/DATASET/SOURCE/VIDEO/FRAME.png`, lists to `OUT/DATASET/SOURCE.txt`.
    pub out: PathBuf,
    pub dataset: String,
    /// Source folder name for every video (`None`: from each video's path).
    pub source: Option<String>,
}

/// The videos among `inputs`: files as given (a file that is not a video is reported per
/// video, not here), folders searched recursively and sorted; folders that cannot be read, and
/// the other files found in folders, are returned as errors (warnings: the videos still run).
pub fn collect_videos(inputs: &[PathBuf]) -> (Vec<PathBuf>, Vec<InputError>) {
    let (mut videos, mut errors) = (Vec::new(), Vec::new());
    for input in inputs {
        if input.is_dir() {
            let mut found = Vec::new();
            walk_files(input, &|_| true, &mut found, &mut errors);
            found.sort();
            let (found, others): (Vec<PathBuf>, Vec<PathBuf>) = found.into_iter().partition(|p| is_video(p));
            if let Some(first) = others.first() {
                errors.push(InputError {
                    path: input.display().to_string(),
                    reason: format!(
                        "{} files without a video extension passed over (e.g. {}); videos are {}",
                        others.len(),
                        first.display(),
                        crate::data::VIDEO_EXTENSIONS.join(", ")
                    ),
                });
            }
            videos.extend(found);
        } else {
            videos.push(input.clone());
        }
    }
    (videos, errors)
}

/// Processes every video of `inputs`; `obs` advances once per sampled frame (per video with a
/// stride).
pub fn preprocess(
    inputs: &[PathBuf],
    output: &Output,
    faces: &FaceSettings,
    obs: &mut (dyn Observer + Send),
) -> Result<Summary> {
    let (videos, errors) = collect_videos(inputs);
    for e in &errors {
        obs.message(&format!("warning: {}: {}", e.path, e.reason));
    }
    if videos.is_empty() {
        return Err(Error::Invalid(format!("no video files in {inputs:?}")));
    }
    let detector = faces.detector()?;
    let job = Job {
        out: output.out.clone(),
        dataset: output.dataset.clone(),
        source: output.source.clone(),
        sampling: faces.sampling,
        crop: faces.crop,
        detector: detector.as_ref(),
        chooser: &Largest,
    };
    // With a fixed number of frames per video the bar counts frames, so that a long video is
    // not silent; with a stride the number is known only once a video is open: videos.
    let per_video = match faces.sampling {
        Sampling::Linspace(n) => Some(n),
        Sampling::Stride(_) => None,
    };
    match per_video {
        Some(n) => obs.phase("frames", videos.len() * n, 0),
        None => obs.phase("videos", videos.len(), 0),
    }
    let state = std::sync::Mutex::new((obs, HashMap::<PathBuf, usize>::new()));
    job.run(&videos, |p| {
        let mut guard = state.lock().expect("progress lock");
        let (obs, frames) = &mut *guard;
        match (p, per_video) {
            (Progress::Frame { video }, Some(_)) => {
                *frames.entry(video.to_path_buf()).or_default() += 1;
                obs.advance(1);
            }
            (Progress::Frame { .. }, None) => {}
            (Progress::Video(rec), per_video) => {
                obs.status(&rec.name);
                // The frames a video did not report: sampled past its end, or done before.
                let reported = frames.remove(&rec.video).unwrap_or(0);
                obs.advance(per_video.map_or(1, |n| n.saturating_sub(reported)));
            }
        }
    })
}
