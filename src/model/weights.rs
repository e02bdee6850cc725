//! Checkpoint formats, read natively: the original's Lightning `.ckpt` (zip + pickle, with
//! peft LN-tuning or LoRA wrapping), GenD's Hugging Face folder (`config.json` +
//! `model.safetensors`), dfdet's own folder (`dfdet.json` + `model.safetensors`), and any of
//! them by Hugging Face repo id.
//!
//! Whatever the format, the tensors come out under one set of names, the ones the encoder and
//! head load: HF's CLIP names (`vision_model.encoder.layers.7.self_attn.q_proj.weight`, ...)
//! and `model.linear.{weight,bias}`. peft's LN-tuning copies (`<ln>.ln_tuning_layers.default.*`,
//! the values the original's forward uses) replace their frozen `base_layer`, and LoRA adapters
//! are merged into their base weight, so the encoder never needs to know about peft.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use pytorch_reader::{PickleValue, PytorchReader};
use serde::{Deserialize, Serialize};

use super::config::{Backbone, PRESETS};
use super::hub::{self, Hub, Lookup};
use crate::{Error, Result};

/// A tensor in host memory: f32, row-major, PyTorch layout (nn.Linear weight is [out, in]).
#[derive(Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor of `shape` holding `data`; panics if their sizes differ.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "HostTensor: shape {shape:?} vs {} values",
            data.len()
        );
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

/// The classification head (the original's `Head` enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeadKind {
    /// `logits = W f + b`; the original's "linear".
    #[serde(rename = "linear", alias = "Linear")]
    Linear,
    /// `logits = W (f / |f|) + b`, the paper's choice; the original's "LinearNorm".
    #[serde(rename = "LinearNorm")]
    LinearNorm,
}

impl HeadKind {
    /// The original's name: "linear" or "LinearNorm".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Linear => "linear",
            Self::LinearNorm => "LinearNorm",
        }
    }
    /// Parses the original's names (case-insensitively).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "linear" => Some(Self::Linear),
            "linearnorm" => Some(Self::LinearNorm),
            _ => None,
        }
    }
}

impl fmt::Display for HeadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What trains in the encoder (METHOD.md section 4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Tuning {
    /// Frozen encoder, only the head trains.
    LinearProbe,
    /// Every LayerNorm's weight and bias, plus the head (the paper's choice).
    LnTuning,
    /// LoRA adapters (peft semantics: scaling alpha / rank) on `target_modules`.
    Lora {
        rank: usize,
        alpha: f64,
        dropout: f64,
        target_modules: Vec<String>,
    },
    /// Everything trains.
    Full,
}

/// What a checkpoint says about the model, beyond its tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelSpec {
    /// The backbone name as given (preset, folder, hub id).
    pub backbone: String,
    pub head: HeadKind,
    pub num_classes: usize,
    pub tuning: Tuning,
    /// The training precision, e.g. "bf16-mixed" (informational).
    pub precision: Option<String>,
    pub run_name: Option<String>,
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
        Self {
            path,
            tensors: BTreeMap::new(),
        }
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
            .ok_or_else(|| Error::MissingTensor {
                path: self.path.clone(),
                key: key.to_string(),
            })?;
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
            Err(Error::UnexpectedTensors {
                path: self.path,
                keys: self.tensors.into_keys().collect(),
            })
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
pub fn load_checkpoint_with(
    source: &str,
    backbone_override: Option<&str>,
    hub: &Hub,
) -> Result<Checkpoint> {
    let path = Path::new(source);
    if path.exists() {
        return load_local(path, backbone_override, hub);
    }
    if hub::looks_like_repo_id(source) {
        return load_from_hub(source, backbone_override, hub);
    }
    Err(Error::Invalid(format!(
        "checkpoint `{source}`: no such file or folder, and not a Hugging Face repo id (owner/name)"
    )))
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
    load_local(
        path.parent().unwrap_or(Path::new(".")),
        backbone_override,
        hub,
    )
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
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if name == DFDET_JSON || (name.ends_with(".safetensors") && dir.join(DFDET_JSON).is_file()) {
        return load_dfdet(dir, backbone_override, hub);
    }
    if name == "config.json" || name.ends_with(".safetensors") {
        return load_gend(dir, backbone_override, hub);
    }
    load_lightning(path, backbone_override, hub)
}

// ---------------------------------------------------------------------------------------------
// Backbone resolution

/// Resolves a backbone name: a preset, an existing folder, a folder relative to one of
/// `bases` (where the checkpoint is), or a Hugging Face repo id whose config files are fetched.
pub fn resolve_backbone(name: &str, bases: &[&Path], hub: &Hub) -> Result<Backbone> {
    if let Some(b) = Backbone::preset(name) {
        return Ok(b);
    }
    let as_given = Path::new(name);
    if as_given.is_dir() {
        return Backbone::from_dir(as_given);
    }
    if let Some(dir) = bases.iter().map(|b| b.join(name)).find(|d| d.is_dir()) {
        return Backbone::from_dir(&dir);
    }
    if hub::looks_like_repo_id(name) {
        let config = match hub.lookup(name, "config.json") {
            Lookup::Found(p) => p,
            Lookup::Absent => {
                return Err(Error::Hub(format!(
                    "backbone `{name}`: the Hugging Face repo has no config.json (known presets: {})",
                    PRESETS.join(", ")
                )));
            }
            Lookup::Unavailable(reason) => {
                let reason = format!(
                    "{reason}; it is not a preset ({}) nor a local folder",
                    PRESETS.join(", ")
                );
                return Err(hub.missing(name, &["config.json"], &reason));
            }
        };
        let dir = config.parent().unwrap_or(Path::new(".")).to_path_buf();
        // Optional: without it the default CLIP processor applies.
        let _ = hub.lookup(name, "preprocessor_config.json");
        let mut b = Backbone::from_dir(&dir)?;
        b.name = name.to_string();
        return Ok(b);
    }
    Err(Error::UnknownBackbone {
        name: name.to_string(),
        known: PRESETS.join(", "),
    })
}

/// Checks the encoder tensors against the backbone's shape, so that a wrong `--backbone`
/// is reported as such rather than as a missing tensor deep inside the encoder.
fn check_backbone(tensors: &TensorMap, backbone: &Backbone) -> Result<()> {
    let cfg = &backbone.encoder;
    let (d, p) = (cfg.hidden_size, cfg.patch_size);
    let expect = [
        (
            "vision_model.embeddings.patch_embedding.weight",
            vec![d, cfg.num_channels, p, p],
        ),
        (
            "vision_model.embeddings.position_embedding.weight",
            vec![cfg.num_positions(), d],
        ),
    ];
    for (key, shape) in expect {
        if let Some(t) = tensors.get(key)
            && t.shape != shape
        {
            return Err(Error::format(
                tensors.path(),
                format!(
                    "tensor `{key}` has shape {:?} but backbone `{}` (hidden {d}, patch {p}, image {}) \
                     expects {shape:?}; pass the matching --backbone",
                    t.shape, backbone.name, cfg.image_size
                ),
            ));
        }
    }
    let layers = tensors
        .keys()
        .filter_map(|k| {
            k.strip_prefix("vision_model.encoder.layers.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |i| i + 1);
    if layers != 0 && layers != cfg.num_hidden_layers {
        return Err(Error::format(
            tensors.path(),
            format!(
                "the checkpoint has {layers} encoder layers but backbone `{}` has {}; pass the matching --backbone",
                backbone.name, cfg.num_hidden_layers
            ),
        ));
    }
    Ok(())
}

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
            format!(
                "head `model.linear.weight` has shape {:?} but num_classes is {}",
                w.shape, spec.num_classes
            ),
        ));
    }
    Ok(Checkpoint {
        path,
        spec,
        backbone,
        tensors,
    })
}

// ---------------------------------------------------------------------------------------------
// Lightning .ckpt

/// What a file that is not a PyTorch checkpoint looks like, for the error message.
fn sniff(path: &Path) -> Result<Option<&'static str>> {
    let mut head = [0u8; 16];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| Error::io(path, e))?;
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
    Error::format(
        path,
        format!("not a PyTorch checkpoint (zip/pickle): {what}"),
    )
}

fn load_lightning(path: &Path, backbone_override: Option<&str>, hub: &Hub) -> Result<Checkpoint> {
    if let Some(what) = sniff(path)? {
        return Err(not_a_checkpoint(path, &format!("it looks like {what}")));
    }
    let root = PytorchReader::read_pickle_data(path, None)
        .map_err(|e| not_a_checkpoint(path, &e.to_string()))?;
    let PickleValue::Dict(root) = root else {
        return Err(not_a_checkpoint(
            path,
            "its root object is not a dictionary",
        ));
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
        let read: ReadFn<'static> = Box::new(move || {
            let bytes = read()?;
            torch_bytes_to_f32(dtype, &bytes).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("dtype {dtype:?} is not a float type"),
                )
            })
        });
        raw.insert(
            key,
            RawTensor {
                shape,
                dtype: format!("{dtype:?}"),
                read,
            },
        );
    }
    let tensors = normalise(path, raw, &spec.tuning)?;
    let base = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    finish_checkpoint(
        path.to_path_buf(),
        spec,
        &[base],
        None,
        backbone_override,
        tensors,
        hub,
    )
}

fn torch_bytes_to_f32(dtype: pytorch_reader::DType, bytes: &[u8]) -> Option<Vec<f32>> {
    use pytorch_reader::DType as D;
    Some(match dtype {
        D::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_ne_bytes(b.try_into().unwrap()))
            .collect(),
        D::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_ne_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        D::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_ne_bytes([b[0], b[1]]).to_f32())
            .collect(),
        D::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_ne_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// Python-side description of a value the pickle reader could not interpret.
fn describe(v: &PickleValue) -> String {
    match v {
        PickleValue::Unsupported(ty) => format!("a pickled `{ty}` object"),
        other => format!("{other:?}"),
    }
}

fn spec_from_hparams(
    path: &Path,
    hp: &PickleValue,
    backbone_override: Option<&str>,
) -> Result<ModelSpec> {
    let PickleValue::Dict(hp) = hp else {
        return Err(Error::format(
            path,
            format!("`hyper_parameters` is {}, not a dictionary", describe(hp)),
        ));
    };
    let bad = |field: &str, v: &PickleValue, hint: &str| {
        Error::format(
            path,
            format!(
                "hyper_parameters.{field} is {}, which dfdet cannot read{hint}",
                describe(v)
            ),
        )
    };
    let backbone = match (hp.get("backbone"), backbone_override) {
        (_, Some(name)) => name.to_string(),
        (Some(PickleValue::String(s)), None) => s.clone(),
        (Some(v), None) => {
            return Err(bad(
                "backbone",
                v,
                "; name the backbone with --backbone NAME|DIR",
            ));
        }
        (None, None) => {
            return Err(Error::format(
                path,
                "hyper_parameters has no `backbone`; name it with --backbone NAME|DIR",
            ));
        }
    };
    let head = match hp.get("head") {
        Some(PickleValue::String(s)) => HeadKind::from_name(s).ok_or_else(|| {
            Error::format(
                path,
                format!("head `{s}` is not supported (dfdet implements linear and LinearNorm)"),
            )
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
    Ok(ModelSpec {
        backbone,
        head,
        num_classes,
        tuning,
        precision,
        run_name,
    })
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
    let frozen = !matches!(
        hp.get("freeze_feature_extractor"),
        Some(PickleValue::Bool(false))
    );
    let section = |d: &Dict, key: &str| match d.get(key) {
        Some(PickleValue::Dict(s)) => Some(s.clone()),
        _ => None,
    };
    let Some(peft) = section(hp, "peft").filter(|p| get_bool(p, "enabled")) else {
        return Ok(if frozen {
            Tuning::LinearProbe
        } else {
            Tuning::Full
        });
    };
    if let Some(lora) = section(&peft, "lora").filter(|l| get_bool(l, "enabled")) {
        if get_bool(&lora, "use_dora") {
            return Err(Error::format(
                path,
                "peft DoRA (lora.use_dora) is not supported",
            ));
        }
        let rank = get_f64(&lora, "rank").unwrap_or(1.0) as usize;
        let alpha = get_f64(&lora, "alpha").unwrap_or(32.0);
        // peft: scaling = alpha / sqrt(r) with rsLoRA; folded into alpha here so that
        // alpha / rank stays the scaling.
        let alpha = if get_bool(&lora, "use_rslora") {
            alpha * (rank as f64).sqrt()
        } else {
            alpha
        };
        let dropout = get_f64(&lora, "dropout").unwrap_or(0.1);
        let target_modules = match lora.get("target_modules") {
            Some(PickleValue::String(s)) => vec![s.clone()],
            Some(PickleValue::List(l)) => l
                .iter()
                .filter_map(|v| {
                    if let PickleValue::String(s) = v {
                        Some(s.clone())
                    } else {
                        None
                    }
                })
                .collect(),
            _ => vec!["out_proj".to_string()],
        };
        return Ok(Tuning::Lora {
            rank,
            alpha,
            dropout,
            target_modules,
        });
    }
    if section(&peft, "ln_tuning").is_some_and(|l| get_bool(&l, "enabled")) {
        return Ok(Tuning::LnTuning);
    }
    Err(Error::format(
        path,
        "hyper_parameters.peft is enabled but neither lora nor ln_tuning is",
    ))
}

// ---------------------------------------------------------------------------------------------
// Key normalisation (shared by all formats)

type ReadFn<'a> = Box<dyn FnOnce() -> std::io::Result<Vec<f32>> + 'a>;

/// A tensor as stored, its bytes not yet read.
struct RawTensor<'a> {
    shape: Vec<usize>,
    dtype: String,
    read: ReadFn<'a>,
}

impl RawTensor<'_> {
    fn load(self, path: &Path, key: &str) -> Result<HostTensor> {
        let data = (self.read)()
            .map_err(|e| Error::format(path, format!("tensor `{key}` ({}): {e}", self.dtype)))?;
        if data.len() != self.shape.iter().product::<usize>() {
            return Err(Error::format(
                path,
                format!(
                    "tensor `{key}`: {} values for shape {:?}",
                    data.len(),
                    self.shape
                ),
            ));
        }
        Ok(HostTensor {
            shape: self.shape,
            data,
        })
    }
}

/// The name a stored key has in dfdet, or `None` for tensors dfdet does not use.
fn normalise_key(key: &str) -> Option<String> {
    let k = key.strip_prefix("feature_extractor.").unwrap_or(key);
    let k = k.strip_prefix("base_model.model.").unwrap_or(k);
    let unused = k.starts_with("visual_projection.")
        || k.starts_with("text_model.")
        || k.starts_with("text_projection.")
        || k == "logit_scale"
        || k == "vision_model.embeddings.position_ids";
    (!unused).then(|| k.to_string())
}

/// Renames, drops, and resolves peft wrapping (see the module docs).
fn normalise(
    path: &Path,
    raw: BTreeMap<String, RawTensor<'_>>,
    tuning: &Tuning,
) -> Result<TensorMap> {
    let mut renamed: BTreeMap<String, RawTensor<'_>> = BTreeMap::new();
    for (key, t) in raw {
        let Some(name) = normalise_key(&key) else {
            continue;
        };
        if renamed.contains_key(&name) {
            return Err(Error::format(
                path,
                format!("two tensors map to `{name}` (one is `{key}`)"),
            ));
        }
        renamed.insert(name, t);
    }

    // Modules peft wrapped: `<m>.base_layer.<param>`.
    let wrapped: Vec<String> = renamed
        .keys()
        .filter_map(|k| k.find(".base_layer.").map(|i| k[..i].to_string()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();

    let mut out = TensorMap::new(path.to_path_buf());
    for m in wrapped {
        let base = format!("{m}.base_layer.");
        let ln = format!("{m}.ln_tuning_layers.");
        let lora_a = format!("{m}.lora_A.");
        let lora_b = format!("{m}.lora_B.");
        let params: Vec<String> = renamed
            .keys()
            .filter_map(|k| k.strip_prefix(&base))
            .map(str::to_string)
            .collect();
        let adapters = |prefix: &str| -> Vec<String> {
            let mut names: Vec<String> = renamed
                .keys()
                .filter_map(|k| {
                    k.strip_prefix(prefix)?
                        .split('.')
                        .next()
                        .map(str::to_string)
                })
                .collect();
            names.dedup();
            names
        };
        let ln_adapters = adapters(&ln);
        let lora_adapters = adapters(&lora_a);
        if ln_adapters.len() + lora_adapters.len() > 1 {
            return Err(Error::format(
                path,
                format!(
                    "`{m}` carries several peft adapters ({ln_adapters:?} {lora_adapters:?}); dfdet reads one"
                ),
            ));
        }
        if let Some(adapter) = ln_adapters.first() {
            // LN-tuning: the tuned copy is what forward uses; the base layer is dead weight.
            for p in &params {
                renamed.remove(&format!("{base}{p}"));
                let tuned_key = format!("{ln}{adapter}.{p}");
                let tuned = renamed
                    .remove(&tuned_key)
                    .ok_or_else(|| Error::MissingTensor {
                        path: path.to_path_buf(),
                        key: tuned_key.clone(),
                    })?;
                out.insert(format!("{m}.{p}"), tuned.load(path, &tuned_key)?);
            }
        } else if let Some(adapter) = lora_adapters.first() {
            let Tuning::Lora { rank, alpha, .. } = tuning else {
                return Err(Error::format(
                    path,
                    format!(
                        "`{m}` has LoRA adapters but the checkpoint's settings do not enable LoRA"
                    ),
                ));
            };
            let a_key = format!("{lora_a}{adapter}.weight");
            let b_key = format!("{lora_b}{adapter}.weight");
            let take_raw = |renamed: &mut BTreeMap<String, RawTensor<'_>>, key: &str| {
                renamed
                    .remove(key)
                    .ok_or_else(|| Error::MissingTensor {
                        path: path.to_path_buf(),
                        key: key.to_string(),
                    })?
                    .load(path, key)
            };
            let a = take_raw(&mut renamed, &a_key)?;
            let b = take_raw(&mut renamed, &b_key)?;
            for p in &params {
                let key = format!("{base}{p}");
                let t = take_raw(&mut renamed, &key)?;
                let t = if p == "weight" {
                    merge_lora(path, &m, t, &a, &b, *rank, *alpha)?
                } else {
                    t
                };
                out.insert(format!("{m}.{p}"), t);
            }
        } else {
            for p in &params {
                let key = format!("{base}{p}");
                let t = renamed.remove(&key).expect("listed above");
                out.insert(format!("{m}.{p}"), t.load(path, &key)?);
            }
        }
    }
    // Whatever is left keeps its name; leftovers of peft (or anything else unknown) surface
    // at `TensorMap::finish`.
    for (key, t) in renamed {
        let t = t.load(path, &key)?;
        out.insert(key, t);
    }
    Ok(out)
}

/// peft's merge: `W + (B @ A) * alpha / r`.
fn merge_lora(
    path: &Path,
    module: &str,
    w: HostTensor,
    a: &HostTensor,
    b: &HostTensor,
    rank: usize,
    alpha: f64,
) -> Result<HostTensor> {
    let (out_dim, in_dim) = match w.shape[..] {
        [o, i] => (o, i),
        _ => {
            return Err(Error::format(
                path,
                format!(
                    "LoRA on `{module}`: base weight {:?} is not a matrix",
                    w.shape
                ),
            ));
        }
    };
    let r = a.shape.first().copied().unwrap_or(0);
    if a.shape != [r, in_dim] || b.shape != [out_dim, r] {
        return Err(Error::format(
            path,
            format!(
                "LoRA on `{module}`: A {:?} and B {:?} do not fit weight {:?}",
                a.shape, b.shape, w.shape
            ),
        ));
    }
    if r != rank {
        return Err(Error::format(
            path,
            format!("LoRA on `{module}` has rank {r} but hyper_parameters say {rank}"),
        ));
    }
    let scale = (alpha / rank as f64) as f32;
    let mut data = w.data;
    for o in 0..out_dim {
        for k in 0..r {
            let bk = b.data[o * r + k] * scale;
            let row = &a.data[k * in_dim..(k + 1) * in_dim];
            for (x, &av) in data[o * in_dim..(o + 1) * in_dim].iter_mut().zip(row) {
                *x += bk * av;
            }
        }
    }
    Ok(HostTensor {
        shape: w.shape,
        data,
    })
}

// ---------------------------------------------------------------------------------------------
// safetensors folders: GenD and dfdet

const SAFETENSORS: &str = "model.safetensors";
const DFDET_JSON: &str = "dfdet.json";
const DFDET_FORMAT: &str = "dfdet";
const DFDET_VERSION: u32 = 1;

fn read_safetensors(path: &Path, tuning: &Tuning) -> Result<TensorMap> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the file is only read; a concurrent writer would be a user error that at worst
    // garbles values, which the shape and count checks downstream do not hide.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&mmap)
        .map_err(|e| Error::format(path, format!("not a safetensors file: {e}")))?;
    let mut raw = BTreeMap::new();
    for (name, view) in st.iter() {
        let dtype = view.dtype();
        let bytes = view.data();
        let read: ReadFn<'_> = Box::new(move || {
            st_bytes_to_f32(dtype, bytes).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("dtype {dtype:?} is not a float type"),
                )
            })
        });
        raw.insert(
            name.to_string(),
            RawTensor {
                shape: view.shape().to_vec(),
                dtype: format!("{dtype:?}"),
                read,
            },
        );
    }
    normalise(path, raw, tuning)
}

fn st_bytes_to_f32(dtype: safetensors::Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    use safetensors::Dtype as D;
    Some(match dtype {
        D::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        D::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        D::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        D::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not JSON: {e}")))
}

/// GenD's `GenD.save_pretrained` folder: `config.json` {"backbone", "head", "model_type": "GenD"}.
fn load_gend(dir: &Path, backbone_override: Option<&str>, hub: &Hub) -> Result<Checkpoint> {
    let config_path = dir.join("config.json");
    let config = read_json(&config_path)?;
    let field = |key: &str| config.get(key).and_then(|v| v.as_str());
    if field("backbone").is_none()
        && (config.get("vision_config").is_some() || field("model_type") == Some("clip"))
    {
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
            Error::format(
                &config_path,
                format!("head `{h}` is not supported (dfdet implements linear and LinearNorm)"),
            )
        })?,
        None => HeadKind::Linear, // GenDConfig's default
    };
    // GenD keeps no training settings; it was trained with LN-tuning, which is what fine-tuning
    // it further would use.
    let tuning = Tuning::LnTuning;
    let weights = dir.join(SAFETENSORS);
    let tensors = read_safetensors(&weights, &tuning)?;
    let num_classes = tensors
        .get("model.linear.weight")
        .and_then(|w| w.shape.first().copied())
        .unwrap_or(2);
    let spec = ModelSpec {
        backbone,
        head,
        num_classes,
        tuning,
        precision: None,
        run_name: None,
    };
    // Relative to the folder itself, or to the folder holding it (a backbone beside it).
    let bases: Vec<&Path> = std::iter::once(dir).chain(dir.parent()).collect();
    finish_checkpoint(weights, spec, &bases, None, backbone_override, tensors, hub)
}

#[derive(Serialize, Deserialize)]
struct DfdetJson {
    format: String,
    version: u32,
    spec: ModelSpec,
    backbone: Backbone,
}

fn load_dfdet(dir: &Path, backbone_override: Option<&str>, hub: &Hub) -> Result<Checkpoint> {
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
    finish_checkpoint(
        weights,
        meta.spec,
        &[dir],
        Some(meta.backbone),
        backbone_override,
        tensors,
        hub,
    )
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
            return Err(Error::Invalid(format!(
                "tensor `{key}`: {} values for shape {:?}",
                t.data.len(),
                t.shape
            )));
        }
    }
    let views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(k, t)| {
            let bytes: &[u8] = f32_bytes(&t.data);
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.shape.clone(), bytes)
                .map(|v| (k.as_str(), v))
                .map_err(|e| Error::Invalid(format!("tensor `{k}`: {e}")))
        })
        .collect::<Result<_>>()?;
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::format(dir.join(SAFETENSORS), e.to_string()))?;
    write_atomic(&dir.join(SAFETENSORS), &bytes)?;

    let meta = DfdetJson {
        format: DFDET_FORMAT.into(),
        version: DFDET_VERSION,
        spec: spec.clone(),
        backbone: backbone.clone(),
    };
    let json =
        serde_json::to_vec_pretty(&meta).map_err(|e| Error::Invalid(format!("dfdet.json: {e}")))?;
    write_atomic(&dir.join(DFDET_JSON), &json)
}

/// The little-endian bytes of `data` (a view on little-endian targets, which is all dfdet runs on).
fn f32_bytes(data: &[f32]) -> &[u8] {
    #[cfg(target_endian = "big")]
    compile_error!("dfdet writes safetensors (little-endian) by viewing f32 memory");
    // SAFETY: f32 has no padding and u8 has alignment 1; the length is the byte size.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data)) }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(shape: Vec<usize>, data: Vec<f32>) -> RawTensor<'static> {
        RawTensor {
            shape,
            dtype: "F32".into(),
            read: Box::new(move || Ok(data)),
        }
    }

    #[test]
    fn keys_are_normalised() {
        assert_eq!(
            normalise_key("feature_extractor.base_model.model.vision_model.pre_layrnorm.weight")
                .as_deref(),
            Some("vision_model.pre_layrnorm.weight")
        );
        assert_eq!(
            normalise_key("model.linear.bias").as_deref(),
            Some("model.linear.bias")
        );
        assert_eq!(
            normalise_key("feature_extractor.visual_projection.weight"),
            None
        );
        assert_eq!(normalise_key("vision_model.embeddings.position_ids"), None);
        assert_eq!(
            normalise_key("text_model.embeddings.token_embedding.weight"),
            None
        );
    }

    #[test]
    fn ln_tuning_takes_the_tuned_copy() {
        let p = "feature_extractor.base_model.model.vision_model.post_layernorm";
        let mut m = BTreeMap::new();
        m.insert(
            format!("{p}.base_layer.weight"),
            raw(vec![2], vec![1.0, 1.0]),
        );
        m.insert(format!("{p}.base_layer.bias"), raw(vec![2], vec![0.0, 0.0]));
        m.insert(
            format!("{p}.ln_tuning_layers.default.weight"),
            raw(vec![2], vec![2.0, 3.0]),
        );
        m.insert(
            format!("{p}.ln_tuning_layers.default.bias"),
            raw(vec![2], vec![4.0, 5.0]),
        );
        let mut t = normalise(Path::new("x"), m, &Tuning::LnTuning).unwrap();
        assert_eq!(
            t.take("vision_model.post_layernorm.weight", &[2])
                .unwrap()
                .data,
            [2.0, 3.0]
        );
        assert_eq!(
            t.take("vision_model.post_layernorm.bias", &[2])
                .unwrap()
                .data,
            [4.0, 5.0]
        );
        t.finish().unwrap();
    }

    #[test]
    fn lora_is_merged() {
        let p = "vision_model.encoder.layers.0.self_attn.out_proj";
        let mut m = BTreeMap::new();
        m.insert(
            format!("{p}.base_layer.weight"),
            raw(vec![2, 2], vec![1.0, 0.0, 0.0, 1.0]),
        );
        m.insert(format!("{p}.base_layer.bias"), raw(vec![2], vec![0.5, 0.5]));
        m.insert(
            format!("{p}.lora_A.default.weight"),
            raw(vec![1, 2], vec![1.0, 2.0]),
        );
        m.insert(
            format!("{p}.lora_B.default.weight"),
            raw(vec![2, 1], vec![3.0, 4.0]),
        );
        let tuning = Tuning::Lora {
            rank: 1,
            alpha: 2.0,
            dropout: 0.0,
            target_modules: vec!["out_proj".into()],
        };
        let mut t = normalise(Path::new("x"), m, &tuning).unwrap();
        // W + 2 * B A = I + 2 [[3, 6], [4, 8]]
        assert_eq!(
            t.take(&format!("{p}.weight"), &[2, 2]).unwrap().data,
            [7.0, 12.0, 8.0, 17.0]
        );
        assert_eq!(t.take(&format!("{p}.bias"), &[2]).unwrap().data, [0.5, 0.5]);
        t.finish().unwrap();
    }

    #[test]
    fn take_checks_shape_and_finish_reports_leftovers() {
        let mut t = TensorMap::new("ckpt".into());
        t.insert("a".into(), HostTensor::new(vec![2], vec![0.0; 2]));
        t.insert("b".into(), HostTensor::new(vec![1], vec![0.0]));
        let err = t.take("a", &[3]).unwrap_err().to_string();
        assert!(
            err.contains("`a`") && err.contains("[2]") && err.contains("[3]"),
            "{err}"
        );
        assert!(t.take("zz", &[1]).unwrap_err().to_string().contains("`zz`"));
        let err = t.finish().unwrap_err().to_string();
        assert!(err.contains("\"b\""), "{err}");
    }

    #[test]
    fn head_kind_names() {
        assert_eq!(
            HeadKind::from_name("LinearNorm"),
            Some(HeadKind::LinearNorm)
        );
        assert_eq!(HeadKind::from_name("linear"), Some(HeadKind::Linear));
        assert_eq!(
            serde_json::to_string(&HeadKind::LinearNorm).unwrap(),
            "\"LinearNorm\""
        );
        assert_eq!(
            serde_json::from_str::<HeadKind>("\"linear\"").unwrap(),
            HeadKind::Linear
        );
    }
}
