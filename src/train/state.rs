//! The run folder and what makes a run resumable.
//!
//! ```text
//! <run>/config.toml                the resolved config, written before anything else
//! <run>/metrics.csv                epoch,step,name,value: per step losses and lr, per epoch metrics
//! <run>/checkpoints/last/          dfdet checkpoint + train_state.{json,safetensors}
//! <run>/checkpoints/best/          dfdet checkpoint with the best validation video mAP
//! <run>/test/                      the final test pass with `best` (as `dfdet test` writes it)
//! <run>/training_curves.{png,svg}  loss, validation AUROC and balanced accuracy per epoch
//! ```
//!
//! A checkpoint folder is written beside its final place and swapped in by renames, so that a
//! run killed at any moment leaves the previous `last` (or the new one) intact.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::optim::{AdamW, Moments};
use super::params::Trainable;
use crate::model::checkpoint::{HostTensor, save_dfdet};
use crate::model::config::Backbone;
use crate::model::spec::ModelSpec;
use crate::{Error, Result};

pub const STATE_JSON: &str = "train_state.json";
pub const STATE_TENSORS: &str = "train_state.safetensors";

/// Paths of a run folder.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub dir: PathBuf,
}

impl RunDir {
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.csv")
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }
    pub fn last(&self) -> PathBuf {
        self.checkpoints().join("last")
    }
    pub fn best(&self) -> PathBuf {
        self.checkpoints().join("best")
    }
    pub fn test(&self) -> PathBuf {
        self.dir.join("test")
    }

    /// `last`, or the copy a swap left behind when it was killed between its two renames.
    pub fn last_for_resume(&self) -> Option<PathBuf> {
        let last = self.last();
        if last.join(STATE_JSON).is_file() {
            return Some(last);
        }
        let old = self.checkpoints().join(".last.old");
        old.join(STATE_JSON).is_file().then_some(old)
    }
}

/// The best validation score so far.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub epoch: usize,
    /// Validation video-level mAP.
    pub value: f64,
}

/// What was seen so far in the current epoch (for its training metrics).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochSoFar {
    /// Split indices of the frames trained on, in order.
    pub seen: Vec<usize>,
    /// Their class probabilities, row-major.
    pub probs: Vec<f32>,
    /// Sums of the per-mini-batch loss terms and feature statistics, and their count.
    pub sums: std::collections::BTreeMap<String, f64>,
    pub counts: std::collections::BTreeMap<String, usize>,
}

impl EpochSoFar {
    pub fn add(&mut self, name: &str, value: f64) {
        *self.sums.entry(name.to_string()).or_default() += value;
        *self.counts.entry(name.to_string()).or_default() += 1;
    }
    pub fn means(&self) -> Vec<(String, f64)> {
        self.sums.iter().map(|(k, v)| (k.clone(), v / self.counts[k] as f64)).collect()
    }
}

/// Progress of a run, saved with `last`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub global_step: usize,
    /// The epoch in progress, and the next optimizer step in it.
    pub epoch: usize,
    pub step_in_epoch: usize,
    /// Training is over (only the test pass may remain).
    pub done: bool,
    pub best: Option<Best>,
    /// Length of `metrics.csv` when this state was saved; later rows are redone on resume.
    pub metrics_bytes: u64,
    pub epoch_so_far: EpochSoFar,
    /// AdamW step count of each trainable tensor, in order.
    pub adam_steps: Vec<u64>,
    /// Names of the trainable tensors, in order (checked on resume).
    pub trainable: Vec<String>,
}

fn f32_le(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| Error::io(path, e))
}

/// Writes a dfdet checkpoint of `tensors` (and, for `last`, the training state) into `dest`
/// atomically: into a sibling temporary folder first, then swapped in by renames.
pub fn save_checkpoint(
    dest: &Path,
    spec: &ModelSpec,
    backbone: &Backbone,
    tensors: &std::collections::BTreeMap<String, HostTensor>,
    state: Option<(&TrainState, &Trainable, &AdamW)>,
) -> Result<()> {
    let parent = dest.parent().expect("checkpoint folders have a parent");
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("ckpt");
    let tmp = parent.join(format!(".{name}.tmp"));
    let old = parent.join(format!(".{name}.old"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    save_dfdet(&tmp, spec, backbone, tensors)?;
    if let Some((state, trainable, adam)) = state {
        let mut views = Vec::new();
        let mut blobs = Vec::new();
        for (p, m) in trainable.params.iter().zip(&adam.state) {
            for (kind, data) in [("param", &p.data), ("exp_avg", &m.exp_avg), ("exp_avg_sq", &m.exp_avg_sq)] {
                blobs.push((format!("{kind}/{}", p.name), p.shape.clone(), f32_le(data)));
            }
        }
        for (key, shape, bytes) in &blobs {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map_err(|e| Error::output(tmp.join(STATE_TENSORS), format!("state tensor `{key}`: {e}")))?;
            views.push((key.as_str(), view));
        }
        let bytes =
            safetensors::serialize(views, None).map_err(|e| Error::output(tmp.join(STATE_TENSORS), e.to_string()))?;
        write_file(&tmp.join(STATE_TENSORS), &bytes)?;
        let json = serde_json::to_vec(state).map_err(|e| Error::output(tmp.join(STATE_JSON), e.to_string()))?;
        write_file(&tmp.join(STATE_JSON), &json)?;
    }
    if dest.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        std::fs::rename(dest, &old).map_err(|e| Error::io(dest, e))?;
    }
    std::fs::rename(&tmp, dest).map_err(|e| Error::io(dest, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// Reads the training state of a `last` folder into `trainable` and `adam` (same tensors, in
/// the same order, as the run's config selects).
pub fn load_state(dir: &Path, trainable: &mut Trainable, adam: &mut AdamW) -> Result<TrainState> {
    let json_path = dir.join(STATE_JSON);
    let text = std::fs::read(&json_path).map_err(|e| Error::io(&json_path, e))?;
    let state: TrainState =
        serde_json::from_slice(&text).map_err(|e| Error::format(&json_path, format!("not a training state: {e}")))?;
    let names: Vec<&str> = trainable.params.iter().map(|p| p.name.as_str()).collect();
    if state.trainable != names {
        return Err(Error::format(
            &json_path,
            "the saved trainable tensors differ from those the run's config selects (was config.toml edited?)",
        ));
    }
    let path = dir.join(STATE_TENSORS);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::format(&path, e.to_string()))?;
    let read = |key: &str, n: usize| -> Result<Vec<f32>> {
        let view = st.tensor(key).map_err(|_| Error::MissingTensor { path: path.clone(), key: key.to_string() })?;
        let v: Vec<f32> =
            view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
        if v.len() != n {
            return Err(Error::format(&path, format!("`{key}` has {} values, expected {n}", v.len())));
        }
        Ok(v)
    };
    for ((p, m), &step) in trainable.params.iter_mut().zip(&mut adam.state).zip(&state.adam_steps) {
        let n = p.data.len();
        p.data = read(&format!("param/{}", p.name), n)?;
        *m = Moments {
            step,
            exp_avg: read(&format!("exp_avg/{}", p.name), n)?,
            exp_avg_sq: read(&format!("exp_avg_sq/{}", p.name), n)?,
        };
    }
    Ok(state)
}

/// `metrics.csv`: one `epoch,step,name,value` row per logged value.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens the log, cut at `bytes` (0 = a new file with its header).
    pub fn open(path: &Path, bytes: u64) -> Result<Self> {
        let io = |e| Error::io(path, e);
        if bytes == 0 {
            let mut file = File::create(path).map_err(io)?;
            file.write_all(b"epoch,step,name,value\n").map_err(io)?;
            return Ok(Self { path: path.to_path_buf(), file });
        }
        let file = OpenOptions::new().write(true).open(path).map_err(io)?;
        file.set_len(bytes).map_err(io)?;
        let mut file = OpenOptions::new().append(true).open(path).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(Self { path: path.to_path_buf(), file })
    }

    /// Appends rows and flushes them.
    pub fn rows(&mut self, epoch: usize, step: usize, values: &[(String, f64)]) -> Result<()> {
        let mut s = String::new();
        for (name, v) in values {
            s += &format!("{epoch},{step},{name},{v}\n");
        }
        self.file.write_all(s.as_bytes()).and_then(|_| self.file.flush()).map_err(|e| Error::io(&self.path, e))
    }

    /// Current length in bytes.
    pub fn bytes(&self) -> Result<u64> {
        self.file.metadata().map(|m| m.len()).map_err(|e| Error::io(&self.path, e))
    }
}
