//! `dfdet test`: score every frame of the named test sets and write a run folder with the
//! reference's predictions CSV, `metrics.json` and plots.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::sets::{SetSpec, Split};
use crate::data::InputError;
use crate::eval::report::{evaluate_sets, write_report, Predictions, Report};
use crate::model::Detector;
use crate::predict::score_frames;
use crate::{Error, Result};

/// A test run's resolved settings, written to `<run>/config.toml` before anything else.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TestConfig {
    /// Checkpoint (path or hub id).
    pub weights: String,
    /// Backbone replacing the checkpoint's, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backbone: Option<String>,
    /// Named sets of list files.
    pub sets: BTreeMap<String, Vec<PathBuf>>,
    /// Limit the frames to this many, by whole videos (the reference's `limit_tst_files`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_files: Option<usize>,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// `f32` or `bf16`.
    #[serde(default = "default_dtype")]
    pub dtype: String,
}

fn default_batch_size() -> usize {
    8
}

fn default_dtype() -> String {
    "f32".into()
}

impl TestConfig {
    /// Reads a TOML config; an unknown key or a wrong type names the key.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut config: Self = toml::from_str(&text).map_err(|e| Error::format(path, e.to_string()))?;
        // Lists in a config file are relative to the config file.
        let base = path.parent().unwrap_or(Path::new(""));
        for lists in config.sets.values_mut() {
            for l in lists.iter_mut() {
                if !l.exists() && base.join(&*l).exists() {
                    *l = base.join(&*l);
                }
            }
        }
        Ok(config)
    }

    /// The sets as [`SetSpec`]s.
    pub fn set_specs(&self) -> Vec<SetSpec> {
        self.sets.iter().map(|(name, lists)| SetSpec { name: name.clone(), lists: lists.clone() }).collect()
    }

    /// Writes `config.toml` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join("config.toml");
        let text = toml::to_string_pretty(self).map_err(|e| Error::Invalid(format!("config: {e}")))?;
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
    }
}

/// What a test run produced.
#[derive(Debug)]
pub struct TestOutcome {
    pub report: Report,
    /// Frames that could not be scored (missing list entries, unreadable images).
    pub errors: Vec<InputError>,
    pub predictions_csv: PathBuf,
    pub metrics_json: PathBuf,
}

/// Scores `split` with `detector` and writes `test_predictions.csv`, `metrics.json` and
/// `plots/` into `out`. Frames that fail are reported and left out; the rest are evaluated.
pub fn run_test(
    detector: &Detector,
    device: &Device,
    split: &Split,
    batch_size: usize,
    out: &Path,
    progress: impl FnMut(usize),
) -> Result<TestOutcome> {
    let paths: Vec<PathBuf> = split.files.iter().map(PathBuf::from).collect();
    let (scores, mut errors) = score_frames(detector, device, &paths, batch_size, progress);
    errors.splice(0..0, split.errors.iter().cloned());

    // Frames scored, in split order, and where each split index went.
    let n_classes = detector.spec.num_classes;
    let index: BTreeMap<&str, usize> = split.files.iter().enumerate().map(|(i, f)| (f.as_str(), i)).collect();
    let mut preds = Predictions { n_classes, ..Predictions::default() };
    let mut new_index = vec![None; split.files.len()];
    for s in &scores {
        let i = index[s.path.as_str()];
        new_index[i] = Some(preds.files.len());
        preds.files.push(s.path.clone());
        preds.labels.push(split.labels[i]);
        preds.probs.extend(s.probs.iter().map(|&p| p as f64));
    }
    if preds.files.is_empty() {
        return Err(Error::Invalid("no frame could be scored".into()));
    }
    let sets: BTreeMap<String, Vec<usize>> = split
        .sets
        .iter()
        .map(|(name, idx)| (name.clone(), idx.iter().filter_map(|&i| new_index[i]).collect()))
        .collect();

    let predictions_csv = out.join("test_predictions.csv");
    preds.write_csv(&predictions_csv)?;
    let report = evaluate_sets(&preds, &sets, Some(&out.join("plots")), "test")?;
    let metrics_json = out.join("metrics.json");
    write_report(&metrics_json, &report)?;
    Ok(TestOutcome { report, errors, predictions_csv, metrics_json })
}

/// A new run folder: `base` itself if it does not exist yet, else `base-2`, `base-3`, ...
pub fn new_run_dir(base: &Path) -> Result<PathBuf> {
    let mut dir = base.to_path_buf();
    let mut k = 2;
    while dir.exists() {
        dir = PathBuf::from(format!("{}-{k}", base.display()));
        k += 1;
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}
