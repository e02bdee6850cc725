//! Linear probing's encoder features kept on disk between runs (`feature_cache_dir`).
//!
//! ```text
//! <feature_cache_dir>/<encoder key>/encoder.json      what the key stands for (backbone name, dims)
//! <feature_cache_dir>/<encoder key>/<ab>/<cd...>.f32   one frame's feature, `dim` little-endian f32
//! ```
//!
//! The encoder key hashes (BLAKE3) every encoder tensor and the backbone's architecture and pixel
//! settings, so another backbone, other weights or other pixels never read these features. A
//! frame's key hashes its absolute path, size and modification time, so an edited frame is
//! encoded again. Entries are written to a unique temporary file and renamed into place: two
//! processes (two `dfdet study --shard`s on one file system) may fill the same store at once, and
//! a reader sees a whole entry or none.

use std::path::{Path, PathBuf};

use crate::files::write_atomic_unsynced as write_atomic;
use crate::model::config::Backbone;
use crate::model::tensors::TensorMap;
use crate::{Error, Result};

/// Head tensors: they train, so they are not part of the encoder's identity.
const HEAD_PREFIX: &str = "model.linear.";

/// One encoder's features on disk.
#[derive(Debug, Clone)]
pub struct FeatureStore {
    dir: PathBuf,
    dim: usize,
}

impl FeatureStore {
    /// The store of the encoder in `tensors` + `backbone` under `root`, created if needed.
    pub fn open(root: &Path, backbone: &Backbone, tensors: &TensorMap, bf16_mixed: bool) -> Result<Self> {
        let mut h = blake3::Hasher::new();
        // Features computed in bf16-mixed precision are other features (f32 keys are unchanged).
        if bf16_mixed {
            h.update(b"precision bf16-mixed");
        }
        let settings = serde_json::to_vec(&(&backbone.encoder, &backbone.pixels)).expect("settings serialise");
        h.update(&(settings.len() as u64).to_le_bytes());
        h.update(&settings);
        for (name, t) in tensors.tensors().iter().filter(|(name, _)| !name.starts_with(HEAD_PREFIX)) {
            h.update(&(name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            for d in &t.shape {
                h.update(&(*d as u64).to_le_bytes());
            }
            h.update(bytemuck_f32(&t.data));
        }
        let key = h.finalize().to_hex();
        let dir = root.join(&key.as_str()[..32]);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let about = dir.join("encoder.json");
        if !about.exists() {
            let text = serde_json::json!({
                "backbone": backbone.name,
                "hidden_size": backbone.encoder.hidden_size(),
                "layers": backbone.encoder.num_layers(),
                "image_size": backbone.pixels.size()[0],
                "precision": if bf16_mixed { "bf16-mixed" } else { "32-true" },
            });
            write_atomic(&about, format!("{text:#}\n").as_bytes())?;
        }
        Ok(Self { dir, dim: backbone.encoder.hidden_size() })
    }

    /// The feature of `frame` if stored (and whole).
    pub fn get(&self, frame: &str) -> Option<Vec<f32>> {
        let bytes = std::fs::read(self.entry(frame)?).ok()?;
        (bytes.len() == self.dim * 4)
            .then(|| bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }

    /// Stores the feature of `frame`.
    pub fn put(&self, frame: &str, feature: &[f32]) -> Result<()> {
        assert_eq!(feature.len(), self.dim, "feature of {frame}");
        let Some(path) = self.entry(frame) else { return Ok(()) };
        let folder = path.parent().expect("entries live in a folder");
        std::fs::create_dir_all(folder).map_err(|e| Error::io(folder, e))?;
        write_atomic(&path, bytemuck_f32(feature))
    }

    /// The entry's path; `None` when the frame cannot be read (it is then never cached).
    fn entry(&self, frame: &str) -> Option<PathBuf> {
        let meta = std::fs::metadata(frame).ok()?;
        let absolute = std::path::absolute(frame).ok()?;
        let mtime = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
        let mut h = blake3::Hasher::new();
        h.update(absolute.as_os_str().as_encoded_bytes());
        h.update(&[0]);
        h.update(&meta.len().to_le_bytes());
        h.update(&mtime.to_le_bytes());
        let key = h.finalize().to_hex();
        Some(self.dir.join(&key.as_str()[..2]).join(format!("{}.f32", &key.as_str()[2..32])))
    }
}

/// The bytes of `data` in little-endian order (the only byte order dfdet targets).
fn bytemuck_f32(data: &[f32]) -> &[u8] {
    const { assert!(cfg!(target_endian = "little"), "the feature store writes little-endian f32") };
    // SAFETY: f32 has no padding and every byte pattern is a valid u8; the length is in bytes.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tensors::HostTensor;

    fn backbone() -> Backbone {
        crate::model::config::Backbone::preset("openai/clip-vit-base-patch32").expect("a preset")
    }

    fn tensors(value: f32) -> TensorMap {
        let mut m = TensorMap::new(PathBuf::from("t"));
        m.insert("vision_model.w".into(), HostTensor::new(vec![2], vec![value, 1.0]));
        m.insert("model.linear.weight".into(), HostTensor::new(vec![1], vec![value * 3.0 + 7.0]));
        m
    }

    #[test]
    fn features_round_trip_and_keys_follow_weights_and_frames() {
        let tmp = tempfile::tempdir().unwrap();
        let frame = tmp.path().join("f.png");
        std::fs::write(&frame, b"x").unwrap();
        let frame = frame.to_str().unwrap();
        let b = backbone();
        let store = FeatureStore::open(tmp.path(), &b, &tensors(0.5), false).unwrap();
        assert_eq!(store.get(frame), None);
        let feature: Vec<f32> = (0..b.encoder.hidden_size()).map(|i| i as f32 * 0.25 - 3.0).collect();
        store.put(frame, &feature).unwrap();
        assert_eq!(store.get(frame).as_deref(), Some(&feature[..]));

        // The head is not part of the key; the encoder weights are.
        let mut other_head = tensors(0.5);
        other_head.insert("model.linear.weight".into(), HostTensor::new(vec![1], vec![-1.0]));
        assert_eq!(
            FeatureStore::open(tmp.path(), &b, &other_head, false).unwrap().get(frame).as_deref(),
            Some(&feature[..])
        );
        assert_eq!(FeatureStore::open(tmp.path(), &b, &tensors(0.25), false).unwrap().get(frame), None);
        // Nor features computed in another precision.
        assert_eq!(FeatureStore::open(tmp.path(), &b, &tensors(0.5), true).unwrap().get(frame), None);

        // A frame that changes size is another entry; a missing frame is never cached.
        std::fs::write(frame, b"xy").unwrap();
        assert_eq!(store.get(frame), None);
        assert!(store.put("no/such/frame.png", &feature).is_ok());
        assert_eq!(store.get("no/such/frame.png"), None);
    }
}
