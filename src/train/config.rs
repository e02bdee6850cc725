//! The resolved training configuration, written first into the run folder as `config.toml`.
//!
//! Field names follow the reference's pydantic `Config` (src/config.py) and GenD's additions
//! (`warmup_epochs`, `num_epochs_in_cycle`, `lr_scheduler = "cyclic"`). Defaults are the
//! reference's example training run (run.py `get_train_config`): CLIP ViT-L/14, LN-tuning,
//! LinearNorm head, cross-entropy, slerp on, batch 128, lr 8e-5 -> 5e-5, no weight decay,
//! 10 epochs, seed 42; and f32 (`precision = "32"`), where the reference trains in bf16-mixed
//! (`precision = "bf16-mixed"` here too: docs/method.md §14).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::lora::LoraConfig;
use super::loss::LossConfig;
use super::params::{LN_TARGETS, Selection};
use super::schedule::Scheduler;
use crate::data::sets::SetSpec;
use crate::data::{resolve_in, without_parent_steps};
use crate::model::spec::{HeadKind, Tuning};
use crate::{Error, Result};

/// LN-tuning settings (peft's `LNTuningConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LnTuningConfig {
    pub enabled: bool,
    /// LayerNorm modules to tune, matched as peft does (name or `.name` suffix).
    pub target_modules: Vec<String>,
}

impl Default for LnTuningConfig {
    fn default() -> Self {
        Self { enabled: true, target_modules: LN_TARGETS.iter().map(|s| s.to_string()).collect() }
    }
}

/// Parameter-efficient fine-tuning: LN-tuning or LoRA (not both, as in the reference).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeftConfig {
    pub enabled: bool,
    pub lora: LoraConfig,
    pub ln_tuning: LnTuningConfig,
}

impl Default for PeftConfig {
    fn default() -> Self {
        Self { enabled: true, lora: LoraConfig::default(), ln_tuning: LnTuningConfig::default() }
    }
}

/// List files of a split: a list, or named groups of lists (metrics are then reported per name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Files {
    Lists(Vec<PathBuf>),
    Named(BTreeMap<String, Vec<PathBuf>>),
}

impl Default for Files {
    fn default() -> Self {
        Files::Lists(Vec::new())
    }
}

impl Files {
    /// As named sets; a plain list is one set, "all".
    pub fn set_specs(&self) -> Vec<SetSpec> {
        match self {
            Files::Lists(lists) if lists.is_empty() => Vec::new(),
            Files::Lists(lists) => vec![SetSpec { name: "all".into(), lists: lists.clone() }],
            Files::Named(sets) => {
                sets.iter().map(|(name, lists)| SetSpec { name: name.clone(), lists: lists.clone() }).collect()
            }
        }
    }

    fn lists_mut(&mut self) -> Box<dyn Iterator<Item = &mut PathBuf> + '_> {
        match self {
            Files::Lists(l) => Box::new(l.iter_mut()),
            Files::Named(m) => Box::new(m.values_mut().flatten()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.set_specs().is_empty()
    }
}

/// Everything a training run depends on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    // Run
    /// The run folder is `<run_dir>/<run_name>`.
    pub run_name: String,
    pub run_dir: PathBuf,
    pub seed: u64,

    // Model
    pub num_classes: usize,
    /// Start from this checkpoint (anything `predict` reads) instead of a base CLIP.
    pub checkpoint: Option<String>,
    /// The base CLIP: a preset / hub id or a local HF folder (ignored with `checkpoint`,
    /// unless it replaces the checkpoint's backbone).
    pub backbone: String,
    /// Freeze the encoder (what then trains: `peft`, `unfreeze_layers`, the head).
    pub freeze_feature_extractor: bool,
    /// Parameters whose name contains one of these train too.
    pub unfreeze_layers: Vec<String>,
    pub head: HeadKind,
    pub peft: PeftConfig,

    // Latent augmentation
    pub slerp_feature_augmentation: bool,
    pub slerp_feature_augmentation_range: [f64; 2],

    // Data
    /// Relative entries of the list files are relative to this folder instead of the list's
    /// (the folder holding the reference's `datasets/`).
    pub data_root: Option<PathBuf>,
    pub trn_files: Files,
    pub val_files: Files,
    pub tst_files: Files,
    pub limit_trn_files: Option<usize>,
    pub limit_val_files: Option<usize>,
    pub limit_tst_files: Option<usize>,
    /// Training image augmentations (flip, affine, blur, brightness/contrast, JPEG).
    pub augmentations: bool,

    // Optimisation
    pub lr: f64,
    pub min_lr: f64,
    /// `"cosine"`, `"cyclic"` or `"none"`.
    #[serde(with = "scheduler_name")]
    pub lr_scheduler: Option<Scheduler>,
    /// Linear warm-up from `min_lr`, in epochs (may be a fraction).
    pub warmup_epochs: f64,
    /// Restart period of `"cyclic"`, in epochs.
    pub num_epochs_in_cycle: f64,
    pub weight_decay: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub loss: LossConfig,

    // Loop
    pub max_epochs: usize,
    /// Images per optimizer step.
    pub batch_size: usize,
    /// Images per forward pass; gradients are accumulated over batch_size / mini_batch_size.
    pub mini_batch_size: usize,
    /// Also save `last` every this many optimizer steps (0: at epoch ends only).
    pub save_every_steps: usize,
    /// Linear probing only: encode every image once and train the head on the cached features.
    pub cache_features: bool,
    /// With `cache_features`: also keep the features on disk in this folder, keyed by encoder
    /// weights, pixel settings and frame file, so that later runs on the same frames skip the
    /// encoder (`dfdet study` shares one between its linear-probing cells).
    pub feature_cache_dir: Option<PathBuf>,
    /// `"32"` / `"32-true"`: f32 throughout; `"bf16-mixed"`: autocast to bfloat16 as the
    /// reference trains (parameters, gradients and optimizer state stay f32).
    pub precision: String,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            run_name: "example-run".into(),
            run_dir: "runs/train".into(),
            seed: 42,
            num_classes: 2,
            checkpoint: None,
            backbone: "openai/clip-vit-large-patch14".into(),
            freeze_feature_extractor: true,
            unfreeze_layers: Vec::new(),
            head: HeadKind::LinearNorm,
            peft: PeftConfig::default(),
            slerp_feature_augmentation: true,
            slerp_feature_augmentation_range: [0.0, 1.0],
            data_root: None,
            trn_files: Files::default(),
            val_files: Files::default(),
            tst_files: Files::default(),
            limit_trn_files: None,
            limit_val_files: None,
            limit_tst_files: None,
            augmentations: false,
            lr: 8e-5,
            min_lr: 5e-5,
            lr_scheduler: Some(Scheduler::Cosine),
            warmup_epochs: 0.0,
            num_epochs_in_cycle: 1.0,
            weight_decay: 0.0,
            betas: [0.9, 0.999],
            eps: 1e-8,
            loss: LossConfig::default(),
            max_epochs: 10,
            batch_size: 128,
            mini_batch_size: 128,
            save_every_steps: 0,
            cache_features: false,
            feature_cache_dir: None,
            precision: "32".into(),
        }
    }
}

mod scheduler_name {
    use super::Scheduler;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Scheduler>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match v {
            Some(Scheduler::Cosine) => "cosine",
            Some(Scheduler::Cyclic) => "cyclic",
            None => "none",
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Scheduler>, D::Error> {
        let name = String::deserialize(d)?;
        match name.as_str() {
            "cosine" => Ok(Some(Scheduler::Cosine)),
            "cyclic" => Ok(Some(Scheduler::Cyclic)),
            "none" => Ok(None),
            other => Err(serde::de::Error::custom(format!(
                "unknown lr_scheduler `{other}`, expected one of `cosine`, `cyclic`, `none`"
            ))),
        }
    }
}

/// Where each top-level key of a config came from, which decides where its relative paths
/// resolve: written in the config file, relative to the file's folder; given with `--set`,
/// relative to the working folder (as every command-line path); a default, left as it is.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    folder: Option<PathBuf>,
    in_file: HashSet<String>,
    on_command_line: HashSet<String>,
}

impl Origins {
    /// The origins of a config read from `file` (its top-level table `file_doc`) with `overrides`.
    pub fn new(file: Option<&Path>, file_doc: &toml::Table, overrides: &[String]) -> Self {
        let top =
            |o: &String| o.split_once('=').map_or(o.as_str(), |(k, _)| k).trim().split('.').next().map(str::to_string);
        Self {
            folder: file.map(|f| f.parent().unwrap_or(Path::new("")).to_path_buf()),
            in_file: file_doc.keys().cloned().collect(),
            on_command_line: overrides.iter().filter_map(top).collect(),
        }
    }

    /// The folder relative paths of `key` are relative to; `None` for a default.
    fn base(&self, key: &str) -> Option<&Path> {
        if self.on_command_line.contains(key) {
            Some(Path::new(""))
        } else if self.in_file.contains(key) {
            self.folder.as_deref()
        } else {
            None
        }
    }
}

impl TrainConfig {
    /// Reads a TOML file and applies `overrides` (`key.path=value`, the value in TOML syntax,
    /// or a bare string). An unknown key or a wrong type is an error naming the key and, for an
    /// unknown key, the valid ones. Relative paths resolve as [`Origins`] says.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let original = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?,
            None => String::new(),
        };
        // A document that does not parse fails below, with the parser's message.
        let file_doc = original.parse::<toml::Table>().unwrap_or_default();
        let origins = Origins::new(path, &file_doc, overrides);
        // Without overrides, errors point into the file as written; with them, into the
        // merged document (shown in the error).
        let (text, source) = if overrides.is_empty() {
            (original, path.map_or_else(PathBuf::new, Path::to_path_buf))
        } else {
            let mut doc = original
                .parse::<toml::Table>()
                .map_err(|e| Error::format(path.unwrap_or(Path::new("")), e.to_string()))?;
            for o in overrides {
                apply_override(&mut doc, o)?;
            }
            let text = toml::to_string(&doc).map_err(|e| Error::config("--set", e.to_string()))?;
            let name = path.map_or("config".to_string(), |p| p.display().to_string());
            (text, PathBuf::from(format!("{name} with --set")))
        };
        let config: Self = toml::from_str(&text).map_err(|e| Error::format(&source, explain(&e.to_string())))?;
        config.resolved(&origins)
    }

    /// A config from an already merged TOML table; `source` names it in errors, relative paths
    /// resolve as `origins` says (`Origins::default()`: left as they are).
    pub fn from_table(table: toml::Table, source: &Path, origins: &Origins) -> Result<Self> {
        let config: Self =
            table.try_into().map_err(|e: toml::de::Error| Error::format(source, explain(&e.to_string())))?;
        config.resolved(origins)
    }

    /// The config as a TOML table (every key, unset options left out).
    pub fn to_table(&self) -> toml::Table {
        toml::Table::try_from(self).expect("the config serialises")
    }

    fn resolved(mut self, origins: &Origins) -> Result<Self> {
        self.resolve_paths(origins);
        self.validate()?;
        Ok(self)
    }

    /// Makes the paths that were given (in the file or with `--set`) absolute by the rule of
    /// [`Origins`], so that the run folder's `config.toml` means the same from any folder.
    /// `checkpoint` and `backbone` name a file or folder only where one exists; otherwise they
    /// are a preset or hub id and stay as written.
    fn resolve_paths(&mut self, origins: &Origins) {
        let absolute = |p: PathBuf| without_parent_steps(&std::path::absolute(&p).unwrap_or(p));
        let path = |key: &str, p: &mut PathBuf| {
            if let Some(base) = origins.base(key) {
                *p = absolute(resolve_in(base, p));
            }
        };
        for (key, files) in
            [("trn_files", &mut self.trn_files), ("val_files", &mut self.val_files), ("tst_files", &mut self.tst_files)]
        {
            for list in files.lists_mut() {
                path(key, list);
            }
        }
        for (key, p) in [("data_root", &mut self.data_root), ("feature_cache_dir", &mut self.feature_cache_dir)] {
            if let Some(p) = p {
                path(key, p);
            }
        }
        path("run_dir", &mut self.run_dir);
        let local = |key: &str, name: &mut String| {
            if let Some(base) = origins.base(key) {
                let p = resolve_in(base, Path::new(name.as_str()));
                if p.exists() {
                    *name = absolute(p).display().to_string();
                }
            }
        };
        if let Some(c) = &mut self.checkpoint {
            local("checkpoint", c);
        }
        local("backbone", &mut self.backbone);
    }

    /// Checks values that the types alone do not.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, reason: String| Err(Error::config(key, reason));
        if self.num_classes < 2 {
            return bad("num_classes", format!("{}: at least 2 (real and fake)", self.num_classes));
        }
        if self.mini_batch_size == 0 || self.batch_size == 0 {
            return bad(if self.batch_size == 0 { "batch_size" } else { "mini_batch_size" }, "must be positive".into());
        }
        if !self.batch_size.is_multiple_of(self.mini_batch_size) {
            return bad(
                "batch_size",
                format!(
                    "{} is not a multiple of mini_batch_size {} (gradients are accumulated over whole mini-batches)",
                    self.batch_size, self.mini_batch_size
                ),
            );
        }
        if !crate::data::is_plain_name(&self.run_name) {
            return bad(
                "run_name",
                format!("`{}`: one plain folder name inside run_dir, no `/`, `..` or `.`", self.run_name),
            );
        }
        let l = &self.loss;
        if [l.ce_labels, l.bce_labels, l.uniformity, l.alignment_labels].iter().all(|&w| w == 0.0) {
            return bad("loss", "every loss weight is 0: nothing would train (set loss.ce_labels = 1.0)".into());
        }
        for (key, limit) in [
            ("limit_trn_files", self.limit_trn_files),
            ("limit_val_files", self.limit_val_files),
            ("limit_tst_files", self.limit_tst_files),
        ] {
            if limit == Some(0) {
                return bad(key, "0 would keep no frame: give at least 1, or leave it unset for all".into());
            }
        }
        if self.max_epochs == 0 {
            return bad("max_epochs", "must be at least 1".into());
        }
        let [t0, t1] = self.slerp_feature_augmentation_range;
        if !(0.0..=1.0).contains(&t0) || !(0.0..=1.0).contains(&t1) || t0 > t1 {
            return bad("slerp_feature_augmentation_range", format!("[{t0}, {t1}]: expected 0 <= t0 <= t1 <= 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", format!("{}: a finite number > 0", self.lr));
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0) {
            return bad("min_lr", format!("{}: a finite number >= 0", self.min_lr));
        }
        let [b1, b2] = self.betas;
        if !((0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2)) {
            return bad("betas", format!("[{b1}, {b2}]: each in [0, 1) (AdamW's moment decay rates)"));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad("eps", format!("{}: a finite number > 0", self.eps));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", format!("{}: a finite number >= 0", self.weight_decay));
        }
        if !(0.0..=1.0).contains(&self.loss.label_smoothing) {
            return bad("loss.label_smoothing", format!("{}: in [0, 1]", self.loss.label_smoothing));
        }
        for (key, w) in [
            ("loss.ce_labels", l.ce_labels),
            ("loss.bce_labels", l.bce_labels),
            ("loss.uniformity", l.uniformity),
            ("loss.alignment_labels", l.alignment_labels),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                return bad(key, format!("{w}: a loss weight is a finite number >= 0"));
            }
        }
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            return bad("warmup_epochs", format!("{}: a finite number of epochs >= 0", self.warmup_epochs));
        }
        if self.lr_scheduler == Some(Scheduler::Cyclic)
            && !(self.num_epochs_in_cycle.is_finite() && self.num_epochs_in_cycle > 0.0)
        {
            return bad("num_epochs_in_cycle", format!("{}: a finite number of epochs > 0", self.num_epochs_in_cycle));
        }
        if self.peft.enabled && self.peft.ln_tuning.enabled {
            for t in &self.peft.ln_tuning.target_modules {
                let last = t.rsplit('.').next().unwrap_or(t);
                if !LN_TARGETS.contains(&last) {
                    return bad(
                        "peft.ln_tuning.target_modules",
                        format!(
                            "`{t}` names no LayerNorm of the CLIP vision tower; they are {}",
                            LN_TARGETS.join(", ")
                        ),
                    );
                }
            }
            if self.peft.ln_tuning.target_modules.is_empty() {
                return bad("peft.ln_tuning.target_modules", "is empty: name the LayerNorms to tune".into());
            }
        }
        if !["32", "32-true", "bf16-mixed"].contains(&self.precision.as_str()) {
            return bad("precision", format!("`{}`: expected one of `32`, `32-true`, `bf16-mixed`", self.precision));
        }
        if self.peft.enabled && self.peft.lora.enabled && self.peft.ln_tuning.enabled {
            return bad("peft", "enable either lora or ln_tuning, not both (as the reference)".into());
        }
        if self.peft.enabled && self.peft.lora.enabled {
            self.peft.lora.validate()?;
        }
        if self.cache_features && !self.is_linear_probe() {
            return bad("cache_features", "needs linear probing: a frozen encoder (peft off or nothing enabled, no unfreeze_layers, freeze_feature_extractor) and augmentations off".into());
        }
        if self.feature_cache_dir.is_some() && !self.cache_features {
            return bad("feature_cache_dir", "is only used with cache_features = true (linear probing)".into());
        }
        Ok(())
    }

    /// What trains.
    pub fn selection(&self) -> Selection {
        let ln = self.peft.enabled && self.peft.ln_tuning.enabled;
        Selection {
            full: !self.freeze_feature_extractor,
            ln_targets: if ln { self.peft.ln_tuning.target_modules.clone() } else { Vec::new() },
            unfreeze: self.unfreeze_layers.clone(),
            lora: self.lora().is_some(),
        }
    }

    /// LoRA settings, when LoRA is on.
    pub fn lora(&self) -> Option<&LoraConfig> {
        (self.peft.enabled && self.peft.lora.enabled).then_some(&self.peft.lora)
    }

    /// Whether only the head trains on an encoder that never changes (features can be cached).
    pub fn is_linear_probe(&self) -> bool {
        let s = self.selection();
        !s.full && s.ln_targets.is_empty() && s.unfreeze.is_empty() && !s.lora && !self.augmentations
    }

    /// Whether the run computes in bf16-mixed precision (autocast to bfloat16).
    pub fn bf16_mixed(&self) -> bool {
        self.precision == "bf16-mixed"
    }

    /// The tuning method recorded in checkpoints.
    pub fn tuning(&self) -> Tuning {
        let s = self.selection();
        if s.full {
            Tuning::Full
        } else if let Some(l) = self.lora() {
            Tuning::Lora { rank: l.rank, alpha: l.alpha, dropout: l.dropout, target_modules: l.target_modules.clone() }
        } else if !s.ln_targets.is_empty() {
            Tuning::LnTuning
        } else {
            Tuning::LinearProbe
        }
    }

    /// Gradient-accumulation factor.
    pub fn accumulation(&self) -> usize {
        self.batch_size / self.mini_batch_size
    }

    /// The run folder.
    pub fn run_path(&self) -> PathBuf {
        self.run_dir.join(&self.run_name)
    }

    /// The config as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config serialises")
    }

    /// [`Self::to_toml`] after the options that are unset, commented out with an example value
    /// (what `dfdet train --print-config` shows).
    pub fn to_toml_with_unset(&self) -> String {
        let mut s = String::new();
        let unset: Vec<(&str, &str)> = [
            (
                self.checkpoint.is_none(),
                "checkpoint",
                "\"runs/train/exp/checkpoints/best\"   # start from any checkpoint `predict` reads",
            ),
            (
                self.data_root.is_none(),
                "data_root",
                "\"data\"   # the lists' relative entries are relative to this folder instead of the list's",
            ),
            (
                self.limit_trn_files.is_none(),
                "limit_trn_files",
                "10000   # frames, by whole videos in the reference's seeded order",
            ),
            (self.limit_val_files.is_none(), "limit_val_files", "2000"),
            (self.limit_tst_files.is_none(), "limit_tst_files", "2000"),
            (
                self.feature_cache_dir.is_none(),
                "feature_cache_dir",
                "\"runs/feature-cache\"   # with cache_features: keep features on disk",
            ),
        ]
        .into_iter()
        .filter_map(|(unset, key, example)| unset.then_some((key, example)))
        .collect();
        // At the top: a key uncommented there is a top-level key, not one of the last table's.
        if !unset.is_empty() {
            s += "# Unset options (uncomment to set):\n";
            for (key, example) in unset {
                s += &format!("# {key} = {example}\n");
            }
            s += "\n";
        }
        s + &self.to_toml()
    }
}

/// Sets `key.path` in `doc` to `value` (TOML syntax, else a bare string), as `--set` does.
pub fn apply_override(doc: &mut toml::Table, assignment: &str) -> Result<()> {
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| Error::config(format!("--set `{assignment}`"), "expected KEY=VALUE"))?;
    let key = key.trim();
    let value = match format!("v = {}", raw.trim()).parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").expect("parsed"),
        Err(_) => toml::Value::String(raw.trim().to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    let mut table = doc;
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            return Err(Error::config(format!("--set `{assignment}`"), "empty key component"));
        }
        if i + 1 == parts.len() {
            table.insert(part.to_string(), value);
            return Ok(());
        }
        let entry = table.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| {
            Error::config(format!("--set `{assignment}`"), format!("`{}` is not a table", parts[..=i].join(".")))
        })?;
    }
    Ok(())
}

/// serde's messages, made to read as dfdet's (untagged file lists say what they accept).
fn explain(msg: &str) -> String {
    msg.replace(
        "data did not match any variant of untagged enum Files",
        "expected a list of list files, or a table of named lists (NAME = [LIST, ...])",
    )
}
