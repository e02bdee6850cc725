//! Checkpoint formats, read natively: the original's Lightning `.ckpt` (zip + pickle, with
//! peft LN-tuning or LoRA wrapping; `lightning`), GenD's Hugging Face folder (`config.json` +
//! `model.safetensors`) and dfdet's own folder (`dfdet.json` + `model.safetensors`;
//! `safetensors`), and any of them by Hugging Face repo id. This module holds the types they
//! all produce and picks the format ([`load_checkpoint`]); `backbone` resolves the backbone a
//! checkpoint names.
//!
//! Whatever the format, the tensors come out under one set of names, the ones the encoder and
//! head load: HF's CLIP names (`vision_model.encoder.layers.7.self_attn.q_proj.weight`, ...)
//! and `model.linear.{weight,bias}`. peft's LN-tuning copies (`<ln>.ln_tuning_layers.default.*`,
//! the values the original's forward uses) replace their frozen `base_layer`, and LoRA adapters
//! are merged into their base weight (`peft`), so the encoder never needs to know about peft.

mod backbone;
mod lightning;
mod peft;
mod random;
mod safetensors;

use std::path::{Path, PathBuf};

use super::config::Backbone;
use super::hub::{self, Hub, Lookup};
use super::spec::ModelSpec;
use crate::{Error, Result};

pub use super::tensors::{HostTensor, TensorMap};

use self::backbone::check_backbone;
pub use self::backbone::resolve_backbone;
use self::lightning::load_lightning;
pub use self::random::random_checkpoint;
pub use self::safetensors::save_dfdet;
use self::safetensors::{DFDET_JSON, SAFETENSORS, load_dfdet, load_gend};

/// A loaded checkpoint: what it says, the backbone it needs, and its tensors (normalised names).
#[derive(Debug)]
pub struct Checkpoint {
    pub path: PathBuf,
    pub spec: ModelSpec,
    pub backbone: Backbone,
    pub tensors: TensorMap,
}

// ---------------------------------------------------------------------------------------------
// Entry point

/// `source`: a Lightning .ckpt file, a GenD-style folder, a dfdet folder, or a Hugging Face repo id.
/// `backbone_override`: `--backbone NAME|DIR` replacing the checkpoint's.
pub fn load_checkpoint(source: &str, backbone_override: Option<&str>) -> Result<Checkpoint> {
    load_checkpoint_with(source, backbone_override, &Hub::from_env())
}

/// [`load_checkpoint`] with an explicit Hugging Face cache / offline setting.
pub fn load_checkpoint_with(source: &str, backbone_override: Option<&str>, hub: &Hub) -> Result<Checkpoint> {
    let path = Path::new(source);
    let ckpt = if path.exists() {
        load_local(path, backbone_override, hub)?
    } else if hub::looks_like_repo_id(source) {
        load_from_hub(source, backbone_override, hub)?
    } else {
        return Err(Error::format(source, "no such file or folder, and not a Hugging Face repo id (owner/name)"));
    };
    check_finite(&ckpt)?;
    Ok(ckpt)
}

/// A NaN or infinite weight makes every score NaN or 0/1: refuse the checkpoint, naming the
/// first such tensor.
fn check_finite(ckpt: &Checkpoint) -> Result<()> {
    for (name, t) in ckpt.tensors.tensors() {
        let bad = t.data.iter().filter(|x| !x.is_finite()).count();
        if bad > 0 {
            return Err(Error::format(
                &ckpt.path,
                format!(
                    "tensor `{name}` holds {bad} NaN or infinite values of {}: the weights are damaged",
                    t.data.len()
                ),
            ));
        }
    }
    Ok(())
}

/// Files a checkpoint repo on the Hub may hold, in the order they are looked for.
const HUB_CHECKPOINT_FILES: [&str; 3] = [DFDET_JSON, "config.json", "model.ckpt"];

fn load_from_hub(repo_id: &str, backbone_override: Option<&str>, hub: &Hub) -> Result<Checkpoint> {
    // Whatever is cached wins, without a network round trip per candidate file.
    for file in HUB_CHECKPOINT_FILES {
        if let Lookup::Found(p) = hub.lookup_cached(repo_id, file) {
            return load_hub_file(repo_id, file, &p, backbone_override, hub);
        }
    }
    for file in HUB_CHECKPOINT_FILES {
        match hub.lookup(repo_id, file) {
            Lookup::Found(p) => return load_hub_file(repo_id, file, &p, backbone_override, hub),
            Lookup::Absent => {}
            // Offline or unreachable: the other files will not fare better.
            Lookup::Unavailable(reason) => {
                return Err(hub.missing(repo_id, &HUB_CHECKPOINT_FILES, &reason));
            }
        }
    }
    Err(Error::Hub(format!(
        "Hugging Face repo `{repo_id}` holds no checkpoint dfdet reads (looked for {})",
        HUB_CHECKPOINT_FILES.join(", ")
    )))
}

fn load_hub_file(
    repo_id: &str,
    file: &str,
    path: &Path,
    backbone_override: Option<&str>,
    hub: &Hub,
) -> Result<Checkpoint> {
    if file == "model.ckpt" {
        return load_local(path, backbone_override, hub);
    }
    if file == "config.json" && read_json(path)?.get("backbone").is_none() {
        return Err(Error::format(
            path,
            format!(
                "`{repo_id}` is not a detector checkpoint (its config.json names no backbone; \
                 a CLIP backbone goes to --backbone)"
            ),
        ));
    }
    // dfdet.json / GenD config.json: the weights sit beside them.
    hub.file(repo_id, SAFETENSORS)?;
    load_local(path.parent().unwrap_or(Path::new(".")), backbone_override, hub)
}

fn load_local(path: &Path, backbone_override: Option<&str>, hub: &Hub) -> Result<Checkpoint> {
    if path.is_dir() {
        if path.join(DFDET_JSON).is_file() {
            return load_dfdet(path, backbone_override, hub);
        }
        if path.join("config.json").is_file() && path.join(SAFETENSORS).is_file() {
            return load_gend(path, backbone_override, hub);
        }
        let ckpt = path.join("model.ckpt");
        if ckpt.is_file() {
            return load_lightning(&ckpt, backbone_override, hub);
        }
        return Err(Error::format(
            path,
            format!(
                "not a checkpoint folder: expected {DFDET_JSON} + {SAFETENSORS} (dfdet), config.json + \
                 {SAFETENSORS} (GenD) or model.ckpt (Lightning)"
            ),
        ));
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if name == DFDET_JSON || (name.ends_with(".safetensors") && dir.join(DFDET_JSON).is_file()) {
        return load_dfdet(dir, backbone_override, hub);
    }
    if name == "config.json" || name.ends_with(".safetensors") {
        return load_gend(dir, backbone_override, hub);
    }
    load_lightning(path, backbone_override, hub)
}

// ---------------------------------------------------------------------------------------------
// What the formats share

/// Builds the checkpoint once a format has read `tensors` and `spec`: resolves the backbone
/// (`backbone_override`, else the one `embedded` in the checkpoint, else `spec.backbone`
/// relative to `bases`) and checks the tensors against it.
fn finish_checkpoint(
    path: PathBuf,
    mut spec: ModelSpec,
    bases: &[&Path],
    embedded: Option<Backbone>,
    backbone_override: Option<&str>,
    tensors: TensorMap,
    hub: &Hub,
) -> Result<Checkpoint> {
    let backbone = match (backbone_override, embedded) {
        (Some(name), _) => {
            spec.backbone = name.to_string();
            resolve_backbone(name, &[], hub)?
        }
        (None, Some(b)) => b,
        (None, None) => resolve_backbone(&spec.backbone, bases, hub)?,
    };
    check_backbone(&tensors, &backbone)?;
    if let Some(w) = tensors.get("model.linear.weight")
        && w.shape.first() != Some(&spec.num_classes)
    {
        return Err(Error::format(
            &path,
            format!("head `model.linear.weight` has shape {:?} but num_classes is {}", w.shape, spec.num_classes),
        ));
    }
    Ok(Checkpoint { path, spec, backbone, tensors })
}

type ReadFn<'a> = Box<dyn FnOnce() -> std::io::Result<Vec<f32>> + 'a>;

/// A tensor as stored, its bytes not yet read.
struct RawTensor<'a> {
    shape: Vec<usize>,
    dtype: String,
    read: ReadFn<'a>,
}

impl<'a> RawTensor<'a> {
    /// A stored tensor whose bytes `read` returns, holding `dtype` values (`None`: not a float
    /// type, an error once read) in `order`; `dtype_name` names the stored type in errors.
    fn new<B: AsRef<[u8]>>(
        shape: Vec<usize>,
        dtype: Option<Float>,
        dtype_name: String,
        order: ByteOrder,
        read: impl FnOnce() -> std::io::Result<B> + 'a,
    ) -> Self {
        let name = dtype_name.clone();
        let read: ReadFn<'a> = Box::new(move || {
            let bytes = read()?;
            bytes_to_f32(dtype, order, bytes.as_ref()).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("dtype {name} is not a float type"))
            })
        });
        Self { shape, dtype: dtype_name, read }
    }

    fn load(self, path: &Path, key: &str) -> Result<HostTensor> {
        let data = (self.read)().map_err(|e| Error::format(path, format!("tensor `{key}` ({}): {e}", self.dtype)))?;
        if data.len() != self.shape.iter().product::<usize>() {
            return Err(Error::format(
                path,
                format!("tensor `{key}`: {} values for shape {:?}", data.len(), self.shape),
            ));
        }
        Ok(HostTensor { shape: self.shape, data })
    }
}

/// The float types checkpoints store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Float {
    F32,
    F64,
    F16,
    BF16,
}

/// The order of a stored value's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteOrder {
    /// safetensors' order.
    Little,
    Big,
}

impl ByteOrder {
    /// This machine's order, which PyTorch's pickled storages are read in.
    const NATIVE: Self = if cfg!(target_endian = "little") { Self::Little } else { Self::Big };
}

/// `bytes` holding `dtype` values in `order`, as f32; `None` if `dtype` is not a float type.
fn bytes_to_f32(dtype: Option<Float>, order: ByteOrder, bytes: &[u8]) -> Option<Vec<f32>> {
    /// Each `N`-byte value through `le` or `be` (the order chosen once, outside the loop).
    fn decode<const N: usize>(
        bytes: &[u8],
        order: ByteOrder,
        le: impl Fn([u8; N]) -> f32,
        be: impl Fn([u8; N]) -> f32,
    ) -> Vec<f32> {
        let values = bytes.chunks_exact(N).map(|b| <[u8; N]>::try_from(b).expect("N bytes"));
        match order {
            ByteOrder::Little => values.map(le).collect(),
            ByteOrder::Big => values.map(be).collect(),
        }
    }
    Some(match dtype? {
        Float::F32 => decode(bytes, order, f32::from_le_bytes, f32::from_be_bytes),
        Float::F64 => decode(bytes, order, |b| f64::from_le_bytes(b) as f32, |b| f64::from_be_bytes(b) as f32),
        Float::F16 => {
            decode(bytes, order, |b| half::f16::from_le_bytes(b).to_f32(), |b| half::f16::from_be_bytes(b).to_f32())
        }
        Float::BF16 => {
            decode(bytes, order, |b| half::bf16::from_le_bytes(b).to_f32(), |b| half::bf16::from_be_bytes(b).to_f32())
        }
    })
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_checks_shape_and_finish_reports_leftovers() {
        let mut t = TensorMap::new("ckpt".into());
        t.insert("a".into(), HostTensor::new(vec![2], vec![0.0; 2]));
        t.insert("b".into(), HostTensor::new(vec![1], vec![0.0]));
        let err = t.take("a", &[3]).unwrap_err().to_string();
        assert!(err.contains("`a`") && err.contains("[2]") && err.contains("[3]"), "{err}");
        assert!(t.take("zz", &[1]).unwrap_err().to_string().contains("`zz`"));
        let err = t.finish().unwrap_err().to_string();
        assert!(err.contains("\"b\""), "{err}");
    }

    #[test]
    fn both_byte_orders_read_the_same_values() {
        let values = [1.5f32, -2.25, 0.0, 65504.0];
        let le: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let be: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
        assert_eq!(bytes_to_f32(Some(Float::F32), ByteOrder::Little, &le).unwrap(), values);
        assert_eq!(bytes_to_f32(Some(Float::F32), ByteOrder::Big, &be).unwrap(), values);
        let half: Vec<u8> = values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
        assert_eq!(bytes_to_f32(Some(Float::F16), ByteOrder::Little, &half).unwrap(), values);
        assert_eq!(bytes_to_f32(None, ByteOrder::Little, &le), None);
    }
}
