//! Nested subsets of the training videos, one per fraction.
//!
//! Whole videos, never some frames of one: the videos of each class are put in one random order
//! (the study's seed, one stream per class), and the subset of fraction `f` takes the first
//! `round(f * n)` of each class. The classes keep their proportions, every subset is inside the
//! next larger one, and every method trains on the same subset. A fraction that keeps no video
//! of some class is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::data::sets::Split;
use crate::data::video_of;
use crate::rng::{Rng, Stream};
use crate::{Error, Result};

const CLASS_NAMES: [&str; 2] = ["real", "fake"];

/// The training videos by class, each class's videos in the study's random order.
#[derive(Debug, Clone)]
pub struct Videos {
    /// `class -> [(video, its frames)]`, in draw order.
    by_class: BTreeMap<usize, Vec<(String, Vec<String>)>>,
}

impl Videos {
    /// Groups `split`'s frames into videos and shuffles each class with `seed`.
    pub fn new(split: &Split, seed: u64) -> Self {
        let mut grouped: BTreeMap<usize, BTreeMap<String, Vec<String>>> = BTreeMap::new();
        for (file, &label) in split.files.iter().zip(&split.labels) {
            grouped.entry(label).or_default().entry(video_of(file).to_string()).or_default().push(file.clone());
        }
        let by_class = grouped
            .into_iter()
            .map(|(class, videos)| {
                let videos: Vec<(String, Vec<String>)> = videos.into_iter().collect();
                let order = Rng::derive(seed, Stream::Subset, &[class as u64]).permutation(videos.len());
                let drawn = order.into_iter().map(|i| videos[i].clone()).collect();
                (class, drawn)
            })
            .collect();
        Self { by_class }
    }

    /// How many videos of a class of `n` the fraction keeps.
    fn kept(fraction: f64, n: usize) -> usize {
        ((fraction * n as f64).round() as usize).min(n)
    }

    /// Checks that `fraction` keeps at least one video of every class.
    pub fn check(&self, fraction: f64) -> Result<()> {
        for (&class, videos) in &self.by_class {
            if Self::kept(fraction, videos.len()) == 0 {
                let name = CLASS_NAMES.get(class).copied().unwrap_or("class");
                return Err(Error::config(
                    "study.fractions",
                    format!(
                        "{fraction} keeps none of the {} {name} training videos (round({fraction} x {}) = 0): \
                         use a larger fraction or more training videos",
                        videos.len(),
                        videos.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The frames of the subset of `fraction`, sorted, and a one-line description.
    pub fn subset(&self, fraction: f64) -> (Vec<String>, String) {
        let mut frames = Vec::new();
        let mut parts = Vec::new();
        let (mut kept_total, mut total) = (0, 0);
        for (&class, videos) in &self.by_class {
            let k = Self::kept(fraction, videos.len());
            frames.extend(videos[..k].iter().flat_map(|(_, f)| f.iter().cloned()));
            let name = CLASS_NAMES.get(class).map_or_else(|| format!("class {class}"), |s| s.to_string());
            parts.push(format!("{name} {k} of {}", videos.len()));
            kept_total += k;
            total += videos.len();
        }
        frames.sort();
        let about = format!("{kept_total} of {total} training videos ({}), {} frames", parts.join(", "), frames.len());
        (frames, about)
    }
}

/// Writes the subset's list file (absolute paths, so the study folder's configs work from any
/// working directory) unless an identical one is there. Written atomically: two shards may
/// write it at once.
pub fn write_list(path: &Path, frames: &[String], about: &str, seed: u64) -> Result<()> {
    let mut text = format!("# dfdet study subset, seed {seed}: {about}\n");
    for f in frames {
        let abs = std::path::absolute(f).unwrap_or_else(|_| PathBuf::from(f));
        text += &format!("{}\n", abs.display());
    }
    crate::files::write_if_changed(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(videos: &[(&str, usize)]) -> Split {
        let mut files = Vec::new();
        let mut labels = Vec::new();
        for (v, n) in videos {
            for k in 0..*n {
                files.push(format!("D/{v}/{k:03}.png"));
                labels.push(usize::from(!v.starts_with("real")));
            }
        }
        Split { files, labels, ..Split::default() }
    }

    #[test]
    fn subsets_are_nested_whole_videos_in_class_proportion() {
        let videos: Vec<(String, usize)> = (0..6)
            .map(|i| (format!("real/r{i}"), 3))
            .chain((0..10).map(|i| (format!("fake/f{i}"), 2 + i % 3)))
            .collect();
        let refs: Vec<(&str, usize)> = videos.iter().map(|(v, n)| (v.as_str(), *n)).collect();
        let v = Videos::new(&split(&refs), 7);
        let mut previous: Vec<String> = Vec::new();
        for f in [0.25, 0.5, 0.75, 1.0] {
            v.check(f).unwrap();
            let (frames, about) = v.subset(f);
            assert!(previous.iter().all(|p| frames.contains(p)), "{f}: not nested");
            // Whole videos: every video present has all its frames.
            for (name, n) in &videos {
                let have = frames.iter().filter(|x| video_of(x) == format!("D/{name}")).count();
                assert!(have == 0 || have == *n, "{name}: {have} of {n} frames at {f}");
            }
            let real = frames
                .iter()
                .map(|x| video_of(x))
                .filter(|x| x.contains("real"))
                .collect::<std::collections::BTreeSet<_>>();
            assert_eq!(real.len(), Videos::kept(f, 6), "{about}");
            previous = frames;
        }
        assert_eq!(previous.len(), 6 * 3 + (0..10).map(|i| 2 + i % 3).sum::<usize>());
        // Another seed draws other videos.
        assert_ne!(Videos::new(&split(&refs), 8).subset(0.5).0, v.subset(0.5).0);
    }

    #[test]
    fn a_fraction_that_leaves_a_class_empty_is_refused() {
        let v = Videos::new(&split(&[("real/a", 2), ("real/b", 2), ("fake/c", 1), ("fake/d", 1), ("fake/e", 1)]), 1);
        let e = v.check(0.1).unwrap_err().to_string();
        assert!(e.contains("study.fractions") && e.contains("real training videos"), "{e}");
        assert!(v.check(0.25).is_ok());
    }
}
