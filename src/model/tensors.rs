//! Host-side tensors: named `f32` arrays as checkpoints hold them, before they become burn
//! tensors (and after, for export).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A tensor on the host: its shape and row-major values.
#[derive(Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor of `shape` holding `data`; panics if their sizes differ.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "HostTensor: shape {shape:?} vs {} values", data.len());
        Self { shape, data }
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

impl fmt::Debug for HostTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostTensor{:?}", self.shape)
    }
}
/// Named tensors under the normalised names, taken one by one as the model is built.
#[derive(Debug, Clone)]
pub struct TensorMap {
    path: PathBuf,
    tensors: BTreeMap<String, HostTensor>,
}

impl TensorMap {
    /// An empty map; `path` names the source in errors.
    pub fn new(path: PathBuf) -> Self {
        Self { path, tensors: BTreeMap::new() }
    }
    /// Adds (or replaces) `key`.
    pub fn insert(&mut self, key: String, t: HostTensor) {
        self.tensors.insert(key, t);
    }
    /// Removes and returns `key`, checking its shape.
    pub fn take(&mut self, key: &str, shape: &[usize]) -> Result<HostTensor> {
        let t = self
            .tensors
            .remove(key)
            .ok_or_else(|| Error::MissingTensor { path: self.path.clone(), key: key.to_string() })?;
        if t.shape != shape {
            return Err(Error::ShapeMismatch {
                path: self.path.clone(),
                key: key.to_string(),
                expected: shape.to_vec(),
                found: t.shape,
            });
        }
        Ok(t)
    }
    /// [`Error::UnexpectedTensors`] if anything is left.
    pub fn finish(self) -> Result<()> {
        if self.tensors.is_empty() {
            Ok(())
        } else {
            Err(Error::UnexpectedTensors { path: self.path, keys: self.tensors.into_keys().collect() })
        }
    }
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }
    pub fn len(&self) -> usize {
        self.tensors.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
    /// A tensor, without taking it.
    pub fn get(&self, key: &str) -> Option<&HostTensor> {
        self.tensors.get(key)
    }
    /// Removes `key` without a shape check.
    pub fn remove(&mut self, key: &str) -> Option<HostTensor> {
        self.tensors.remove(key)
    }
    /// The source the tensors came from.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// All tensors, by name.
    pub fn tensors(&self) -> &BTreeMap<String, HostTensor> {
        &self.tensors
    }
    /// All tensors, by name, owned.
    pub fn into_tensors(self) -> BTreeMap<String, HostTensor> {
        self.tensors
    }
}

/// Row-major `[rows, cols]` -> `[cols, rows]`, in 32 x 32 tiles (a plain double loop strides
/// through memory on every write; this runs at load time over every weight).
pub fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0.0; data.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = data[r * cols + c];
                }
            }
        }
    }
    out
}
