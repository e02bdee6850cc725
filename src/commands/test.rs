//! `dfdet test`: score every frame of named test sets and write a run folder with the
//! reference's predictions CSV, `metrics.json` and plots.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::DEFAULT_WEIGHTS;
use crate::data::sets::{SetSpec, Split};
use crate::data::{is_plain_name, resolve_in};
use crate::model::{Detector, Dtype};
use crate::progress::Observer;
use crate::score::{TestOutcome, test_split};
use crate::{Error, Result};

/// A test run's resolved settings, written to `<run>/config.toml` before anything else.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TestConfig {
    /// Checkpoint (path or hub id).
    #[serde(default = "default_weights")]
    pub weights: String,
    /// Backbone replacing the checkpoint's, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backbone: Option<String>,
    /// Named sets of list files.
    #[serde(default)]
    pub sets: BTreeMap<String, Vec<PathBuf>>,
    /// Keep the first this many frames of the videos in the reference's seeded order (the last
    /// video cut at the limit, as the reference's `limit_tst_files` does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_files: Option<usize>,
    /// Relative list entries are relative to this folder instead of their list's (the folder
    /// holding `datasets/`); in a config file, relative to the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_root: Option<PathBuf>,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default)]
    pub dtype: Dtype,
}

fn default_weights() -> String {
    DEFAULT_WEIGHTS.into()
}

fn default_batch_size() -> usize {
    8
}

impl Default for TestConfig {
    fn default() -> Self {
        Self {
            weights: default_weights(),
            backbone: None,
            sets: BTreeMap::new(),
            limit_files: None,
            data_root: None,
            batch_size: default_batch_size(),
            dtype: Dtype::default(),
        }
    }
}

/// Settings given on the command line, each replacing the config file's.
#[derive(Debug, Clone, Default)]
pub struct TestOverrides {
    pub weights: Option<String>,
    pub backbone: Option<String>,
    /// Sets added (or replaced, by name).
    pub sets: Vec<SetSpec>,
    pub limit_files: Option<usize>,
    pub data_root: Option<PathBuf>,
    pub batch_size: Option<usize>,
    pub dtype: Option<Dtype>,
}

impl TestConfig {
    /// The config of `file` (or the defaults) with `overrides` applied; at least one set.
    pub fn load(file: Option<&Path>, overrides: TestOverrides) -> Result<Self> {
        let mut config = match file {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        let o = overrides;
        let mut given = std::collections::HashSet::new();
        for spec in &o.sets {
            if !given.insert(spec.name.as_str()) {
                return Err(Error::config(format!("--set {}", spec.name), "given twice: one definition per set name"));
            }
        }
        config.weights = o.weights.unwrap_or(config.weights);
        config.backbone = o.backbone.or(config.backbone);
        for spec in o.sets {
            config.sets.insert(spec.name, spec.lists);
        }
        config.limit_files = o.limit_files.or(config.limit_files);
        config.data_root = o.data_root.or(config.data_root);
        config.batch_size = o.batch_size.unwrap_or(config.batch_size);
        config.dtype = o.dtype.unwrap_or(config.dtype);
        if let Some(name) = config.sets.keys().find(|n| !is_plain_name(n)) {
            return Err(Error::config(
                format!("sets.{name}"),
                "a set name becomes a folder of plots: one plain name, no `/`, `..` or `.`",
            ));
        }
        if config.limit_files == Some(0) {
            return Err(Error::config(
                "limit_files",
                "0 would keep no frame: give at least 1, or leave it unset for all",
            ));
        }
        if config.sets.is_empty() {
            return Err(Error::config(
                "sets",
                "no test sets: give --set NAME=LIST[,LIST...] or a config file with [sets]",
            ));
        }
        Ok(config)
    }

    /// Reads a TOML config; an unknown key or a wrong type names the key.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut config: Self = toml::from_str(&text).map_err(|e| Error::format(path, e.to_string()))?;
        // Paths in a config file are relative to the config file (`data::resolve_in`); a
        // `weights` or `backbone` that is no file or folder there is a preset or hub id.
        let base = path.parent().unwrap_or(Path::new(""));
        for l in config.sets.values_mut().flatten() {
            *l = resolve_in(base, l);
        }
        if let Some(root) = &mut config.data_root {
            *root = resolve_in(base, root);
        }
        let local = |name: &str| {
            let p = resolve_in(base, Path::new(name));
            p.exists().then(|| p.display().to_string())
        };
        if let Some(w) = local(&config.weights) {
            config.weights = w;
        }
        if let Some(b) = config.backbone.as_deref().and_then(local) {
            config.backbone = Some(b);
        }
        Ok(config)
    }

    /// The sets as [`SetSpec`]s.
    pub fn set_specs(&self) -> Vec<SetSpec> {
        self.sets.iter().map(|(name, lists)| SetSpec { name: name.clone(), lists: lists.clone() }).collect()
    }

    /// The frames of the sets (checked before any model is loaded).
    pub fn split(&self) -> Result<Split> {
        let split = Split::load(&self.set_specs(), self.limit_files, self.data_root.as_deref())?;
        if split.files.is_empty() {
            let first = split.errors.first().map_or(String::new(), |e| format!(" (first: {}: {})", e.path, e.reason));
            return Err(Error::config("sets", format!("the test sets name no existing frame{first}")));
        }
        Ok(split)
    }

    /// Writes `config.toml` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join("config.toml");
        let text = toml::to_string_pretty(self).map_err(|e| Error::format(&path, e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
    }
}

/// Writes `config.toml` into `out`, then scores `split` and writes the predictions, metrics and
/// plots there.
pub fn run(
    config: &TestConfig,
    split: &Split,
    detector: &Detector,
    device: &Device,
    out: &Path,
    obs: &mut dyn Observer,
) -> Result<TestOutcome> {
    config.write(out)?;
    obs.phase("frames", split.files.len(), 0);
    let outcome = test_split(detector, device, split, config.batch_size, out, obs)?;
    for w in &outcome.warnings {
        obs.message(&format!("warning: {w}"));
    }
    Ok(outcome)
}

/// The run folder: `out` when given (created if needed), else a new `runs/test`, `runs/test-2`, ...
pub fn run_dir(out: Option<&Path>) -> Result<PathBuf> {
    match out {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            Ok(dir.to_path_buf())
        }
        None => new_run_dir(Path::new("runs/test")),
    }
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
