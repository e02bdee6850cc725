//! The study file: a train config (every `dfdet train` key) plus a `[study]` table, resolved
//! into the grid of cells, each a complete train config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::train::TrainConfig;
use crate::train::config::{Files, Origins, apply_override};
use crate::{Error, Result};

/// The seed's four methods (docs/method.md §9), in its order, as overlays of train keys.
/// Method 4's loss weights are GenD's published ones (the reference code gives none).
pub const DEFAULT_METHODS: [(&str, &str); 4] = [
    (
        "linear-probe",
        r#"freeze_feature_extractor = true
unfreeze_layers = []
peft = { enabled = false }
head = "Linear"
slerp_feature_augmentation = false
loss = { ce_labels = 1.0, uniformity = 0.0, alignment_labels = 0.0 }"#,
    ),
    (
        "ln-tuning",
        r#"freeze_feature_extractor = true
unfreeze_layers = []
peft = { enabled = true, ln_tuning = { enabled = true }, lora = { enabled = false } }
head = "Linear"
slerp_feature_augmentation = false
loss = { ce_labels = 1.0, uniformity = 0.0, alignment_labels = 0.0 }"#,
    ),
    (
        "ln-tuning-norm",
        r#"freeze_feature_extractor = true
unfreeze_layers = []
peft = { enabled = true, ln_tuning = { enabled = true }, lora = { enabled = false } }
head = "LinearNorm"
slerp_feature_augmentation = false
loss = { ce_labels = 1.0, uniformity = 0.0, alignment_labels = 0.0 }"#,
    ),
    (
        "ln-tuning-norm-slerp",
        r#"freeze_feature_extractor = true
unfreeze_layers = []
peft = { enabled = true, ln_tuning = { enabled = true }, lora = { enabled = false } }
head = "LinearNorm"
slerp_feature_augmentation = true
loss = { ce_labels = 1.0, uniformity = 0.5, alignment_labels = 0.1 }"#,
    ),
];

/// The `[study]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StudyTable {
    /// Fractions of the training videos, each in (0, 1].
    pub fractions: Vec<f64>,
    /// Start from the seed's four methods (a table of `methods` with a default's name is merged
    /// onto it: `[study.methods.ln-tuning] lr = 1e-3` changes that method's learning rate).
    pub default_methods: bool,
    /// Method name -> overlay of train keys.
    pub methods: BTreeMap<String, toml::Table>,
    /// Linear-probing cells keep the encoder's features in `<study>/feature-cache/`, so that
    /// every fraction and the test passes reuse them (off: each cell encodes its own frames).
    pub share_features: bool,
}

impl Default for StudyTable {
    fn default() -> Self {
        Self {
            fractions: vec![0.25, 0.5, 0.75, 1.0],
            default_methods: true,
            methods: BTreeMap::new(),
            share_features: true,
        }
    }
}

/// One method: its name and overlay.
#[derive(Debug, Clone, PartialEq)]
pub struct Method {
    pub name: String,
    pub overlay: toml::Table,
}

/// A resolved study.
#[derive(Debug, Clone)]
pub struct StudyConfig {
    /// The train config every cell starts from (its `run_dir/run_name` is the study folder).
    pub base: TrainConfig,
    /// Ascending, distinct.
    pub fractions: Vec<f64>,
    /// In grid order: the default methods in the seed's order, then the file's in name order.
    pub methods: Vec<Method>,
    pub default_methods: bool,
    pub share_features: bool,
}

/// One cell of the grid.
#[derive(Debug, Clone)]
pub struct Cell {
    pub method: String,
    pub fraction: f64,
    /// `<method>-<percent>`: the run folder's name.
    pub name: String,
    pub config: TrainConfig,
}

impl StudyConfig {
    /// Reads the study file and applies `overrides` (`study.fractions=[0.5, 1.0]` reaches the
    /// study table, any other key the train config).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut doc = text.parse::<toml::Table>().map_err(|e| Error::format(path, e.to_string()))?;
        let origins = Origins::new(Some(path), &doc, overrides);
        for o in overrides {
            apply_override(&mut doc, o)?;
        }
        let source = if overrides.is_empty() {
            path.to_path_buf()
        } else {
            PathBuf::from(format!("{} with --set", path.display()))
        };
        let study: StudyTable = match doc.remove("study") {
            Some(toml::Value::Table(t)) => t
                .try_into()
                .map_err(|e: toml::de::Error| Error::format(&source, format!("[study]: {}", e.message().trim_end())))?,
            Some(_) => return Err(Error::config("study", "must be a table ([study])")),
            None => StudyTable::default(),
        };
        let base = TrainConfig::from_table(doc, &source, &origins)?;
        Self::new(base, study)
    }

    /// Checks the study table against `base`.
    pub fn new(base: TrainConfig, study: StudyTable) -> Result<Self> {
        let mut fractions = study.fractions.clone();
        if fractions.is_empty() {
            return Err(Error::config("study.fractions", "is empty: give at least one fraction in (0, 1]"));
        }
        if let Some(f) = fractions.iter().find(|f| !(**f > 0.0 && **f <= 1.0)) {
            return Err(Error::config(
                "study.fractions",
                format!("{f} is outside (0, 1]: a fraction of the training videos"),
            ));
        }
        fractions.sort_by(f64::total_cmp);
        fractions.dedup();
        let mut methods: Vec<Method> = Vec::new();
        if study.default_methods {
            for (name, overlay) in DEFAULT_METHODS {
                let mut overlay: toml::Table = overlay.parse().expect("valid TOML");
                if let Some(changes) = study.methods.get(name) {
                    merge(&mut overlay, changes);
                }
                methods.push(Method { name: name.into(), overlay });
            }
        }
        for (name, overlay) in &study.methods {
            if !methods.iter().any(|m| &m.name == name) {
                methods.push(Method { name: name.clone(), overlay: overlay.clone() });
            }
        }
        if methods.is_empty() {
            return Err(Error::config(
                "study.methods",
                "no method: keep default_methods = true or add [study.methods.NAME]",
            ));
        }
        for m in &methods {
            if !crate::data::is_plain_name(&m.name) || m.name.contains(char::is_whitespace) {
                return Err(Error::config(
                    format!("study.methods.{}", m.name),
                    "a method name is a run folder's prefix: letters, digits, `-`, `_`, no `/` or spaces",
                ));
            }
            for key in ["run_name", "run_dir", "trn_files", "feature_cache_dir"] {
                if m.overlay.contains_key(key) {
                    return Err(Error::config(
                        format!("study.methods.{}.{key}", m.name),
                        "is set by the study for every cell and cannot be changed per method",
                    ));
                }
            }
        }
        let config = Self {
            base,
            fractions,
            methods,
            default_methods: study.default_methods,
            share_features: study.share_features,
        };
        // Every cell's config must be valid before any compute.
        for m in &config.methods {
            config.cell_config(m, 1.0, Path::new("subset.txt"))?;
        }
        Ok(config)
    }

    /// The study folder.
    pub fn dir(&self) -> PathBuf {
        self.base.run_path()
    }

    /// The folder holding the cells' run folders.
    pub fn runs_dir(&self) -> PathBuf {
        self.dir().join("runs")
    }

    /// The on-disk feature cache shared by the linear-probing cells.
    pub fn cache_dir(&self) -> PathBuf {
        self.dir().join("feature-cache")
    }

    /// The cells in grid order (method-major), with `subset(fraction)` the training list file
    /// of each fraction.
    pub fn cells(&self, subset: &dyn Fn(f64) -> PathBuf) -> Result<Vec<Cell>> {
        let mut cells = Vec::new();
        for m in &self.methods {
            for &f in &self.fractions {
                let config = self.cell_config(m, f, &subset(f))?;
                cells.push(Cell { method: m.name.clone(), fraction: f, name: config.run_name.clone(), config });
            }
        }
        Ok(cells)
    }

    /// The train config of `method` at `fraction`, training on the list file `subset`.
    fn cell_config(&self, method: &Method, fraction: f64, subset: &Path) -> Result<TrainConfig> {
        let mut table = self.base.to_table();
        merge(&mut table, &method.overlay);
        let key = format!("study.methods.{}", method.name);
        let mut config = TrainConfig::from_table(table, Path::new(&key), &Origins::default())?;
        config.run_dir = self.runs_dir();
        config.run_name = format!("{}-{}", method.name, percent(fraction));
        config.trn_files = Files::Lists(vec![subset.to_path_buf()]);
        // Linear probing reads cached features, shared by every fraction through the disk.
        if config.is_linear_probe() {
            config.cache_features = true;
            config.feature_cache_dir = self.share_features.then(|| self.cache_dir());
        }
        config.validate().map_err(|e| Error::config(key, e.to_string()))?;
        Ok(config)
    }

    /// The resolved study as TOML: the base train config and the `[study]` table.
    pub fn to_toml(&self) -> String {
        let mut doc = self.base.to_table();
        let mut study = toml::Table::new();
        study.insert("fractions".into(), toml::Value::try_from(&self.fractions).expect("numbers"));
        study.insert("default_methods".into(), toml::Value::Boolean(self.default_methods));
        study.insert("share_features".into(), toml::Value::Boolean(self.share_features));
        let methods: toml::Table =
            self.methods.iter().map(|m| (m.name.clone(), toml::Value::Table(m.overlay.clone()))).collect();
        study.insert("methods".into(), toml::Value::Table(methods));
        doc.insert("study".into(), toml::Value::Table(study));
        toml::to_string_pretty(&doc).expect("the study serialises")
    }
}

/// `fraction` in percent, as short as exact: 25, 50, 12.5.
pub fn percent(fraction: f64) -> String {
    let p = (fraction * 100.0 * 1e6).round() / 1e6;
    format!("{p}")
}

/// Deep-merges `overlay` into `table` (tables merge key by key; other values replace).
fn merge(table: &mut toml::Table, overlay: &toml::Table) {
    for (k, v) in overlay {
        match (table.get_mut(k), v) {
            (Some(toml::Value::Table(t)), toml::Value::Table(o)) => merge(t, o),
            _ => {
                table.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percents_are_short_and_exact() {
        assert_eq!(percent(0.25), "25");
        assert_eq!(percent(1.0), "100");
        assert_eq!(percent(0.125), "12.5");
        assert_eq!(percent(0.1), "10");
        assert_eq!(percent(1.0 / 3.0), "33.333333");
    }

    #[test]
    fn overlays_merge_tables_key_by_key() {
        let mut base: toml::Table = "a = 1\n[peft]\nenabled = true\n[peft.lora]\nrank = 4\n".parse().unwrap();
        let overlay: toml::Table = "peft = { lora = { enabled = true } }\na = 2".parse().unwrap();
        merge(&mut base, &overlay);
        assert_eq!(base["a"].as_integer(), Some(2));
        assert_eq!(base["peft"]["enabled"].as_bool(), Some(true));
        assert_eq!(base["peft"]["lora"]["rank"].as_integer(), Some(4));
        assert_eq!(base["peft"]["lora"]["enabled"].as_bool(), Some(true));
    }
}
