//! The original's Lightning checkpoints (`.ckpt`: a zip holding a pickle, or a bare pickle):
//! the `state_dict` tensors, and the model settings read from the `hyper_parameters` that
//! `LightningModule.save_hyperparameters` stored (`backbone`, `head`, `num_classes`,
//! `freeze_feature_extractor`, `peft`, `precision`, `run_name`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use pytorch_reader::{DType, PickleValue, PytorchReader};

use super::peft::normalise;
use super::{ByteOrder, Checkpoint, Float, RawTensor, finish_checkpoint};
use crate::model::hub::Hub;
use crate::model::spec::{HeadKind, ModelSpec, Tuning};
use crate::{Error, Result};

/// What a file that is not a PyTorch checkpoint looks like, for the error message.
fn sniff(path: &Path) -> Result<Option<&'static str>> {
    let mut head = [0u8; 16];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)).map_err(|e| Error::io(path, e))?;
    let head = &head[..n];
    let kind = if head.starts_with(b"\x89PNG") {
        Some("a PNG image")
    } else if head.starts_with(b"\xff\xd8\xff") {
        Some("a JPEG image")
    } else if head.len() >= 9 && head[8] == b'{' {
        Some("a safetensors file (pass its folder, with config.json or dfdet.json beside it)")
    } else if head.is_empty() {
        Some("an empty file")
    } else if head.starts_with(b"PK") || matches!(head[0], 0x80 | b'(' | b'}' | b']' | b'c') {
        None
    } else if std::str::from_utf8(head).is_ok() {
        Some("a text file")
    } else {
        Some("an unrecognised binary file")
    };
    Ok(kind)
}

fn not_a_checkpoint(path: &Path, what: &str) -> Error {
    Error::format(path, format!("not a PyTorch checkpoint (zip/pickle): {what}"))
}

pub(super) fn load_lightning(path: &Path, backbone_override: Option<&str>, hub: &Hub) -> Result<Checkpoint> {
    if let Some(what) = sniff(path)? {
        return Err(not_a_checkpoint(path, &format!("it looks like {what}")));
    }
    let root = PytorchReader::read_pickle_data(path, None).map_err(|e| not_a_checkpoint(path, &e.to_string()))?;
    let PickleValue::Dict(root) = root else {
        return Err(not_a_checkpoint(path, "its root object is not a dictionary"));
    };
    let reader = if root.contains_key("state_dict") {
        PytorchReader::with_top_level_key(path, "state_dict")
    } else {
        PytorchReader::new(path)
    }
    .map_err(|e| Error::format(path, format!("cannot read the state_dict: {e}")))?;

    let spec = match root.get("hyper_parameters") {
        Some(hp) => spec_from_hparams(path, hp, backbone_override)?,
        None => {
            return Err(Error::format(
                path,
                "the checkpoint has no `hyper_parameters`, so its head (linear or LinearNorm), backbone \
                 and PEFT settings are unknown; dfdet reads Lightning checkpoints of the original training \
                 (which always saves them), GenD folders and dfdet folders",
            ));
        }
    };

    let mut raw = BTreeMap::new();
    for (key, t) in reader.into_tensors() {
        let (_, dtype, shape, read) = t.into_parts();
        let float = match dtype {
            DType::F32 => Some(Float::F32),
            DType::F64 => Some(Float::F64),
            DType::F16 => Some(Float::F16),
            DType::BF16 => Some(Float::BF16),
            _ => None,
        };
        let raw_tensor = RawTensor::new(shape, float, format!("{dtype:?}"), ByteOrder::NATIVE, read);
        raw.insert(key, raw_tensor);
    }
    let tensors = normalise(path, raw, &spec.tuning)?;
    let base = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    finish_checkpoint(path.to_path_buf(), spec, &[base], None, backbone_override, tensors, hub)
}

/// Python-side description of a value the pickle reader could not interpret.
fn describe(v: &PickleValue) -> String {
    match v {
        PickleValue::Unsupported(ty) => format!("a pickled `{ty}` object"),
        other => format!("{other:?}"),
    }
}

fn spec_from_hparams(path: &Path, hp: &PickleValue, backbone_override: Option<&str>) -> Result<ModelSpec> {
    let PickleValue::Dict(hp) = hp else {
        return Err(Error::format(path, format!("`hyper_parameters` is {}, not a dictionary", describe(hp))));
    };
    let bad = |field: &str, v: &PickleValue, hint: &str| {
        Error::format(path, format!("hyper_parameters.{field} is {}, which dfdet cannot read{hint}", describe(v)))
    };
    let backbone = match (hp.get("backbone"), backbone_override) {
        (_, Some(name)) => name.to_string(),
        (Some(PickleValue::String(s)), None) => s.clone(),
        (Some(v), None) => {
            return Err(bad("backbone", v, "; name the backbone with --backbone NAME|DIR"));
        }
        (None, None) => {
            return Err(Error::format(path, "hyper_parameters has no `backbone`; name it with --backbone NAME|DIR"));
        }
    };
    let head = match hp.get("head") {
        Some(PickleValue::String(s)) => HeadKind::from_name(s).ok_or_else(|| {
            Error::format(path, format!("head `{s}` is not supported (dfdet implements linear and LinearNorm)"))
        })?,
        Some(v) => return Err(bad("head", v, " (expected \"linear\" or \"LinearNorm\")")),
        None => HeadKind::Linear, // the original's default
    };
    let num_classes = match hp.get("num_classes") {
        Some(PickleValue::Int(n)) if *n > 0 => *n as usize,
        Some(v) => return Err(bad("num_classes", v, "")),
        None => 2,
    };
    let tuning = tuning_from_hparams(path, hp)?;
    let precision = match hp.get("precision") {
        Some(PickleValue::String(s)) => Some(s.clone()),
        Some(PickleValue::Int(n)) => Some(n.to_string()),
        _ => None,
    };
    let run_name = match hp.get("run_name") {
        Some(PickleValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    Ok(ModelSpec { backbone, head, num_classes, tuning, precision, run_name })
}

type Dict = std::collections::HashMap<String, PickleValue>;

fn get_bool(d: &Dict, key: &str) -> bool {
    matches!(d.get(key), Some(PickleValue::Bool(true)))
}

fn get_f64(d: &Dict, key: &str) -> Option<f64> {
    match d.get(key)? {
        PickleValue::Int(i) => Some(*i as f64),
        PickleValue::Float(f) => Some(*f),
        _ => None,
    }
}

fn tuning_from_hparams(path: &Path, hp: &Dict) -> Result<Tuning> {
    let frozen = !matches!(hp.get("freeze_feature_extractor"), Some(PickleValue::Bool(false)));
    let section = |d: &Dict, key: &str| match d.get(key) {
        Some(PickleValue::Dict(s)) => Some(s.clone()),
        _ => None,
    };
    let Some(peft) = section(hp, "peft").filter(|p| get_bool(p, "enabled")) else {
        return Ok(if frozen { Tuning::LinearProbe } else { Tuning::Full });
    };
    if let Some(lora) = section(&peft, "lora").filter(|l| get_bool(l, "enabled")) {
        if get_bool(&lora, "use_dora") {
            return Err(Error::format(path, "peft DoRA (lora.use_dora) is not supported"));
        }
        let rank = get_f64(&lora, "rank").unwrap_or(1.0) as usize;
        let alpha = get_f64(&lora, "alpha").unwrap_or(32.0);
        // peft: scaling = alpha / sqrt(r) with rsLoRA; folded into alpha here so that
        // alpha / rank stays the scaling.
        let alpha = if get_bool(&lora, "use_rslora") { alpha * (rank as f64).sqrt() } else { alpha };
        let dropout = get_f64(&lora, "dropout").unwrap_or(0.1);
        let target_modules = match lora.get("target_modules") {
            Some(PickleValue::String(s)) => vec![s.clone()],
            Some(PickleValue::List(l)) => {
                l.iter().filter_map(|v| if let PickleValue::String(s) = v { Some(s.clone()) } else { None }).collect()
            }
            _ => vec!["out_proj".to_string()],
        };
        return Ok(Tuning::Lora { rank, alpha, dropout, target_modules });
    }
    if section(&peft, "ln_tuning").is_some_and(|l| get_bool(&l, "enabled")) {
        return Ok(Tuning::LnTuning);
    }
    Err(Error::format(path, "hyper_parameters.peft is enabled but neither lora nor ln_tuning is"))
}
