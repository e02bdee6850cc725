//! The training run's three splits, loaded and checked before any model is built.

use super::config::{Files, TrainConfig};
use crate::data::sets::Split;
use crate::progress::Observer;
use crate::{Error, Result};

/// The training, validation and (optional) test splits of `config`.
pub struct Splits {
    pub trn: Split,
    pub val: Split,
    pub tst: Option<Split>,
}

impl Splits {
    /// Loads every split; a split with no frames, or without every class, is an error naming
    /// its key and lists.
    pub fn load(config: &TrainConfig, obs: &mut dyn Observer) -> Result<Self> {
        let trn = load_split("trn_files", config, &config.trn_files, config.limit_trn_files, obs)?;
        let val = load_split("val_files", config, &config.val_files, config.limit_val_files, obs)?;
        let tst = if config.tst_files.is_empty() {
            None
        } else {
            Some(load_split("tst_files", config, &config.tst_files, config.limit_tst_files, obs)?)
        };
        Ok(Self { trn, val, tst })
    }
}

/// Loads a split and checks that it holds every class.
fn load_split(
    key: &str,
    config: &TrainConfig,
    files: &Files,
    limit: Option<usize>,
    obs: &mut dyn Observer,
) -> Result<Split> {
    let specs = files.set_specs();
    if specs.is_empty() {
        return Err(Error::config(key, "is empty: give its list files"));
    }
    let split = Split::load(&specs, limit, config.data_root.as_deref())?;
    for e in &split.errors {
        obs.message(&format!("warning: {key}: {}: {}", e.path, e.reason));
    }
    let lists: Vec<String> = specs.iter().flat_map(|s| s.lists.iter().map(|l| l.display().to_string())).collect();
    if split.files.is_empty() {
        let first = split.errors.first().map_or(String::new(), |e| format!("; first: {}: {}", e.path, e.reason));
        return Err(Error::config(key, format!("the lists name no existing frame ({}){first}", lists.join(", "))));
    }
    for class in 0..config.num_classes {
        if !split.labels.contains(&class) {
            let what = if class == 0 {
                "real (class 0: a source folder whose name contains \"real\")"
            } else {
                "fake (class 1)"
            };
            return Err(Error::config(
                key,
                format!(
                    "no {what} frames among {} frames of {}; every class must be present",
                    split.files.len(),
                    lists.join(", ")
                ),
            ));
        }
    }
    Ok(split)
}
