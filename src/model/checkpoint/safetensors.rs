//! The safetensors folders: GenD's (`GenD.save_pretrained`: `config.json` naming backbone and
//! head, `model.safetensors`) and dfdet's own (`dfdet.json` with the model spec and the
//! backbone's configs, `model.safetensors` under the normalised names), read and, for dfdet's,
//! written ([`save_dfdet`]).

use std::collections::BTreeMap;
use std::path::Path;

use ::safetensors::Dtype;
use serde::{Deserialize, Serialize};

use super::peft::normalise;
use super::{
    ByteOrder, Checkpoint, Float, HostTensor, RawTensor, TensorMap, finish_checkpoint, read_json, resolve_backbone,
};
use crate::files::write_atomic;
use crate::model::config::{Architecture, Backbone, Pixels, TimmPixels};
use crate::model::hub::Hub;
use crate::model::spec::{HeadKind, ModelSpec, Tuning};
use crate::{Error, Result};

pub(super) const SAFETENSORS: &str = "model.safetensors";
/// The image side GenD's released model class gives its Perception Encoder.
const GEND_PE_SIZE: usize = 224;
pub(super) const DFDET_JSON: &str = "dfdet.json";
const DFDET_FORMAT: &str = "dfdet";
const DFDET_VERSION: u32 = 1;

fn read_safetensors(path: &Path, tuning: &Tuning) -> Result<TensorMap> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the file is only read; a concurrent writer would be a user error that at worst
    // garbles values, which the shape and count checks downstream do not hide.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let st = ::safetensors::SafeTensors::deserialize(&mmap)
        .map_err(|e| Error::format(path, format!("not a safetensors file: {e}")))?;
    let mut raw = BTreeMap::new();
    for (name, view) in st.iter() {
        let dtype = view.dtype();
        let float = match dtype {
            Dtype::F32 => Some(Float::F32),
            Dtype::F64 => Some(Float::F64),
            Dtype::F16 => Some(Float::F16),
            Dtype::BF16 => Some(Float::BF16),
            _ => None,
        };
        let bytes = view.data();
        let shape = view.shape().to_vec();
        let read = move || std::io::Result::Ok(bytes);
        let raw_tensor = RawTensor::new(shape, float, format!("{dtype:?}"), ByteOrder::Little, read);
        raw.insert(name.to_string(), raw_tensor);
    }
    normalise(path, raw, tuning)
}

/// GenD's `GenD.save_pretrained` folder: `config.json` {"backbone", "head", "model_type": "GenD"}.
pub(super) fn load_gend(dir: &Path, backbone_override: Option<&str>, hub: &Hub) -> Result<Checkpoint> {
    let config_path = dir.join("config.json");
    let config = read_json(&config_path)?;
    let field = |key: &str| config.get(key).and_then(|v| v.as_str());
    if field("backbone").is_none() && (config.get("vision_config").is_some() || field("model_type") == Some("clip")) {
        return Err(Error::format(
            dir,
            "a CLIP backbone folder, not a detector checkpoint (pass it as --backbone, with a checkpoint)",
        ));
    }
    let backbone = match (field("backbone"), backbone_override) {
        (_, Some(name)) => name.to_string(),
        (Some(b), None) => b.to_string(),
        (None, None) => {
            return Err(Error::format(
                &config_path,
                "no `backbone` field (a GenD config.json has one); pass --backbone",
            ));
        }
    };
    let head = match field("head") {
        Some(h) => HeadKind::from_name(h).ok_or_else(|| {
            Error::format(&config_path, format!("head `{h}` is not supported (dfdet implements linear and LinearNorm)"))
        })?,
        None => HeadKind::Linear, // GenDConfig's default
    };
    // GenD keeps no training settings; it was trained with LN-tuning, which is what fine-tuning
    // it further would use.
    let tuning = Tuning::LnTuning;
    let weights = dir.join(SAFETENSORS);
    let tensors = read_safetensors(&weights, &tuning)?;
    let num_classes = tensors.get("model.linear.weight").and_then(|w| w.shape.first().copied()).unwrap_or(2);
    let spec = ModelSpec { backbone, head, num_classes, tuning, precision: None, run_name: None };
    // Relative to the folder itself, or to the folder holding it (a backbone beside it).
    let bases: Vec<&Path> = std::iter::once(dir).chain(dir.parent()).collect();
    let embedded = match backbone_override {
        Some(_) => None,
        None => {
            let mut b = resolve_backbone(&spec.backbone, &bases, hub)?;
            if let Architecture::Pe(cfg) = &mut b.encoder {
                // GenD's released class runs its Perception Encoder at 224 pixels, whatever the
                // preset's own size (`data_config["input_size"] = (3, 224, 224)`).
                cfg.image_size = GEND_PE_SIZE;
                b.pixels = Pixels::Timm(TimmPixels::pe(GEND_PE_SIZE));
            }
            Some(b)
        }
    };
    finish_checkpoint(weights, spec, &bases, embedded, backbone_override, tensors, hub)
}

#[derive(Serialize, Deserialize)]
struct DfdetJson {
    format: String,
    version: u32,
    spec: ModelSpec,
    backbone: Backbone,
}

pub(super) fn load_dfdet(dir: &Path, backbone_override: Option<&str>, hub: &Hub) -> Result<Checkpoint> {
    let json_path = dir.join(DFDET_JSON);
    let meta: DfdetJson = serde_json::from_value(read_json(&json_path)?)
        .map_err(|e| Error::format(&json_path, format!("not a dfdet.json: {e}")))?;
    if meta.format != DFDET_FORMAT || meta.version != DFDET_VERSION {
        return Err(Error::format(
            &json_path,
            format!(
                "format {:?} version {} (this dfdet reads {DFDET_FORMAT:?} version {DFDET_VERSION})",
                meta.format, meta.version
            ),
        ));
    }
    let weights = dir.join(SAFETENSORS);
    let tensors = read_safetensors(&weights, &meta.spec.tuning)?;
    finish_checkpoint(weights, meta.spec, &[dir], Some(meta.backbone), backbone_override, tensors, hub)
}

/// dfdet's own format: `<dir>/model.safetensors` (normalised keys) + `<dir>/dfdet.json`
/// ({"format": "dfdet", "version": 1, "spec": ModelSpec, "backbone": Backbone}), each written
/// atomically (temp file + rename). Self-contained: the backbone's configs are embedded.
pub fn save_dfdet(
    dir: &Path,
    spec: &ModelSpec,
    backbone: &Backbone,
    tensors: &BTreeMap<String, HostTensor>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for (key, t) in tensors {
        if t.shape.iter().product::<usize>() != t.data.len() {
            return Err(Error::output(
                dir.join(SAFETENSORS),
                format!("tensor `{key}`: {} values for shape {:?}", t.data.len(), t.shape),
            ));
        }
    }
    let views: Vec<(&str, ::safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(k, t)| {
            let bytes: &[u8] = f32_bytes(&t.data);
            ::safetensors::tensor::TensorView::new(Dtype::F32, t.shape.clone(), bytes)
                .map(|v| (k.as_str(), v))
                .map_err(|e| Error::output(dir.join(SAFETENSORS), format!("tensor `{k}`: {e}")))
        })
        .collect::<Result<_>>()?;
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = ::safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::format(dir.join(SAFETENSORS), e.to_string()))?;
    write_atomic(&dir.join(SAFETENSORS), &bytes)?;

    let meta = DfdetJson {
        format: DFDET_FORMAT.into(),
        version: DFDET_VERSION,
        spec: spec.clone(),
        backbone: backbone.clone(),
    };
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| Error::output(dir.join(DFDET_JSON), e.to_string()))?;
    write_atomic(&dir.join(DFDET_JSON), &json)
}

/// The little-endian bytes of `data` (a view on little-endian targets, which is all dfdet runs on).
fn f32_bytes(data: &[f32]) -> &[u8] {
    #[cfg(target_endian = "big")]
    compile_error!("dfdet writes safetensors (little-endian) by viewing f32 memory");
    // SAFETY: f32 has no padding and u8 has alignment 1; the length is the byte size.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data)) }
}
