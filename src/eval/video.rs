//! Video-level scores and the frame + video evaluation of one split.
//!
//! Ports `compute_across_videos`, `sources_probs_to_binary` and `log_all_metrics` of
//! yermandy/deepfake-detection `src/model/dfdet.py` (with `make_binary_before_video_aggregation
//! = True`, its default). Probabilities are flat row-major slices, as in [`super::metrics`].

use super::metrics::{Metrics, check_inputs, compute_metrics};
use crate::data::video_of;
use crate::{Error, Result};

/// `[p(real), p(fake)]` rows from per-source rows: column 0, and the max of the others.
///
/// # Panics
/// If `n_classes` is 0.
pub fn sources_to_binary(probs: &[f64], n_classes: usize) -> Vec<f64> {
    probs
        .chunks_exact(n_classes)
        .flat_map(|row| [row[0], row[1..].iter().copied().fold(f64::NEG_INFINITY, f64::max)])
        .collect()
}

/// Per-video scores, videos in order of first appearance.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoScores {
    /// Video keys ([`video_of`] the frames).
    pub videos: Vec<String>,
    /// Mean probability row of each video's frames, row-major.
    pub probs: Vec<f64>,
    /// Label of each video's first frame.
    pub labels: Vec<usize>,
    /// Number of frames of each video.
    pub n_frames: Vec<usize>,
}

/// Mean probability rows per video (the original's `compute_across_videos`): frames are
/// grouped by [`video_of`] their path, a video takes the label of its first frame, and videos
/// come in the order they first appear (Python's dict insertion order).
///
/// # Errors
/// [`Error::Invalid`] when `files`, `probs` and `labels` disagree in length.
pub fn aggregate_videos<S: AsRef<str>>(
    files: &[S],
    probs: &[f64],
    labels: &[usize],
    n_classes: usize,
) -> Result<VideoScores> {
    if n_classes == 0 || files.len() != labels.len() || probs.len() != labels.len() * n_classes {
        return Err(Error::Invalid(format!(
            "video aggregation: {} files, {} labels and {} probabilities with {n_classes} classes",
            files.len(),
            labels.len(),
            probs.len()
        )));
    }
    let mut index = std::collections::HashMap::new();
    let mut out = VideoScores { videos: Vec::new(), probs: Vec::new(), labels: Vec::new(), n_frames: Vec::new() };
    for ((file, row), &label) in files.iter().zip(probs.chunks_exact(n_classes)).zip(labels) {
        let video = video_of(file.as_ref());
        let v = *index.entry(video.to_string()).or_insert_with(|| {
            out.videos.push(video.to_string());
            out.probs.extend(std::iter::repeat_n(0.0, n_classes));
            out.labels.push(label);
            out.n_frames.push(0);
            out.videos.len() - 1
        });
        for (sum, p) in out.probs[v * n_classes..(v + 1) * n_classes].iter_mut().zip(row) {
            *sum += p;
        }
        out.n_frames[v] += 1;
    }
    for (row, &n) in out.probs.chunks_exact_mut(n_classes).zip(&out.n_frames) {
        row.iter_mut().for_each(|p| *p /= n as f64);
    }
    Ok(out)
}

/// Frame- and video-level metrics of one split, with the scores they were computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Probability columns evaluated (2 after binarisation).
    pub n_classes: usize,
    /// Frame probabilities as evaluated, row-major.
    pub frame_probs: Vec<f64>,
    /// Frame labels as evaluated.
    pub frame_labels: Vec<usize>,
    /// Video scores.
    pub videos: VideoScores,
    /// Frame-level metrics.
    pub frame: Metrics,
    /// Video-level metrics.
    pub video: Metrics,
}

/// Evaluates one split at frame and video level.
///
/// With `binary` and more than 2 columns (one per fake source), the rows become
/// `[p0, max(p1..)]` and the labels `label != 0` before video aggregation, as the original
/// does by default; without `binary`, every column is a class.
///
/// # Errors
/// [`Error::Invalid`] when the inputs disagree in length, a label is out of range or a
/// probability is not finite.
pub fn frame_and_video<S: AsRef<str>>(
    files: &[S],
    probs: &[f64],
    labels: &[usize],
    n_classes: usize,
    binary: bool,
) -> Result<Evaluation> {
    check_inputs(probs, labels, n_classes)?;
    let (frame_probs, frame_labels, n_classes) = if binary && n_classes > 2 {
        let labels = labels.iter().map(|&l| usize::from(l != 0)).collect();
        (sources_to_binary(probs, n_classes), labels, 2)
    } else {
        (probs.to_vec(), labels.to_vec(), n_classes)
    };
    let videos = aggregate_videos(files, &frame_probs, &frame_labels, n_classes)?;
    Ok(Evaluation {
        frame: compute_metrics(&frame_probs, &frame_labels, n_classes)?,
        video: compute_metrics(&videos.probs, &videos.labels, n_classes)?,
        n_classes,
        frame_probs,
        frame_labels,
        videos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn videos_in_order_of_first_appearance() {
        let files = ["d/b/1.png", "d/a/1.png", "d/b/2.png"];
        let probs = [0.2, 0.8, 0.9, 0.1, 0.4, 0.6];
        let v = aggregate_videos(&files, &probs, &[1, 0, 0], 2).unwrap();
        assert_eq!(v.videos, ["d/b", "d/a"]);
        assert_eq!(v.labels, [1, 0], "the first frame's label");
        assert_eq!(v.n_frames, [2, 1]);
        assert!((v.probs[0] - 0.3).abs() < 1e-15 && (v.probs[1] - 0.7).abs() < 1e-15);
        assert_eq!(&v.probs[2..], [0.9, 0.1]);
    }

    #[test]
    fn sources_become_real_vs_max_fake_before_aggregation() {
        assert_eq!(sources_to_binary(&[0.1, 0.6, 0.3, 0.5, 0.2, 0.3], 3), [0.1, 0.6, 0.5, 0.3]);
        // Two frames of one video: max-then-mean differs from mean-then-max.
        let probs = [0.2, 0.7, 0.1, 0.2, 0.1, 0.7];
        let e = frame_and_video(&["v/0", "v/1"], &probs, &[2, 2], 3, true).unwrap();
        assert_eq!(e.n_classes, 2);
        assert_eq!(e.frame_labels, [1, 1]);
        assert!((e.videos.probs[1] - 0.7).abs() < 1e-15);
    }
}
