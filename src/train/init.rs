//! Starting points: a base CLIP encoder (HF folder, preset or hub id) with a fresh head, or any
//! checkpoint `predict` reads (to fine-tune further or continue).

use std::path::{Path, PathBuf};

use crate::model::checkpoint::{Checkpoint, HostTensor, TensorMap, random_checkpoint};
use crate::model::config::{Architecture, Backbone, PRESETS};
use crate::model::dinov3;
use crate::model::hub::Hub;
use crate::model::spec::{HeadKind, ModelSpec, Tuning};
use crate::{Error, Result};

use crate::rng::{Rng, Stream};

/// Prefix of a backbone name that asks for random weights: `random:<preset>`.
pub const RANDOM_PREFIX: &str = "random:";

/// A base encoder (CLIP, DINOv3 or Perception Encoder): its tensors from `name` (a local folder
/// with `model.safetensors`, or a preset / hub id whose `model.safetensors` is fetched through
/// the HF cache, see [`weights_repo`]; `random:<preset>` draws random weights of that
/// architecture, for cost estimates), and a head drawn as PyTorch's `nn.Linear` default
/// (uniform in `±1/√d`, seeded).
pub fn base_encoder(name: &str, head: HeadKind, num_classes: usize, tuning: Tuning, seed: u64) -> Result<Checkpoint> {
    let dir = Path::new(name);
    let (backbone, weights) = if let Some(preset) = name.strip_prefix(RANDOM_PREFIX) {
        let backbone = Backbone::preset(preset).ok_or_else(|| {
            Error::config(
                "backbone",
                format!("`{name}`: random weights need a preset after `{RANDOM_PREFIX}`: {}", PRESETS.join(", ")),
            )
        })?;
        let mut random = random_checkpoint(&backbone, seed);
        random.tensors.remove("model.linear.weight");
        random.tensors.remove("model.linear.bias");
        let mut ckpt = head_on(backbone, random.tensors, head, num_classes, tuning, seed);
        ckpt.path = PathBuf::from(name);
        return Ok(ckpt);
    } else if dir.is_dir() {
        (Backbone::from_dir(dir)?, dir.join("model.safetensors"))
    } else {
        let backbone = match Backbone::preset(name) {
            Some(b) => b,
            None => {
                let hub = Hub::from_env();
                let config = hub.file(name, "config.json")?;
                let folder = config.parent().unwrap_or(Path::new("."));
                let mut b = Backbone::from_dir(folder)?;
                b.name = name.to_string();
                b
            }
        };
        let repo = weights_repo(name, &backbone);
        (backbone, Hub::from_env().file(&repo, "model.safetensors")?)
    };
    let tensors = encoder_tensors(&weights, &backbone.encoder)?;
    let mut ckpt = head_on(backbone, tensors, head, num_classes, tuning, seed);
    ckpt.path = weights;
    Ok(ckpt)
}

/// The Hugging Face repo holding a backbone's weights: the name itself, except the Perception
/// Encoders' timm names (`vit_pe_core_large_patch14_336`, GenD's), which timm publishes as
/// `timm/<name>.fb`.
pub fn weights_repo(name: &str, backbone: &Backbone) -> String {
    match backbone.encoder {
        Architecture::Pe(_) if !name.contains('/') => format!("timm/{}.fb", name.trim_end_matches(".fb")),
        _ => name.to_string(),
    }
}

/// `tensors` of an encoder with a fresh head.
fn head_on(
    backbone: Backbone,
    mut tensors: TensorMap,
    head: HeadKind,
    num_classes: usize,
    tuning: Tuning,
    seed: u64,
) -> Checkpoint {
    let d = backbone.encoder.hidden_size();
    let mut rng = Rng::derive(seed, Stream::Init, &[0]);
    let bound = 1.0 / (d as f64).sqrt();
    let mut draw = |n: usize| (0..n).map(|_| rng.range(-bound, bound) as f32).collect::<Vec<_>>();
    tensors.insert("model.linear.weight".into(), HostTensor::new(vec![num_classes, d], draw(num_classes * d)));
    tensors.insert("model.linear.bias".into(), HostTensor::new(vec![num_classes], draw(num_classes)));
    let spec = ModelSpec {
        backbone: backbone.name.clone(),
        head,
        num_classes,
        tuning,
        precision: Some("32-true".into()),
        run_name: None,
    };
    Checkpoint { path: PathBuf::new(), spec, backbone, tensors }
}

/// The encoder tensors of a backbone's `model.safetensors` (f32, f16 or bf16), as f32, under
/// the names a detector uses: a CLIP model's `vision_model.*` (the text tower left out), or a
/// DINOv3 or Perception Encoder model's tensors under `backbone.` (as GenD's checkpoints hold
/// them; timm's released projection `head.*`, which GenD replaces by the identity, left out).
pub fn encoder_tensors(path: &Path, arch: &Architecture) -> Result<TensorMap> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::format(path, format!("not a safetensors file: {e}")))?;
    let mut map = TensorMap::new(PathBuf::from(path));
    for (name, view) in st.tensors() {
        let name = name.strip_prefix("feature_extractor.").unwrap_or(&name).to_string();
        let name = match arch {
            Architecture::Clip(_) if name.starts_with("vision_model.") && !name.ends_with("position_ids") => name,
            Architecture::Clip(_) => continue,
            Architecture::Pe(_) if name.starts_with("head.") || name.starts_with("backbone.head.") => continue,
            Architecture::Dinov3(_) | Architecture::Pe(_) if name.starts_with("backbone.") => name,
            Architecture::Dinov3(_) | Architecture::Pe(_) => format!("{}.{name}", dinov3::ROOT),
        };
        let data: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => {
                view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect()
            }
            safetensors::Dtype::F16 => {
                view.data().chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            safetensors::Dtype::BF16 => {
                view.data().chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            other => return Err(Error::format(path, format!("tensor `{name}` has dtype {other:?}, not a float type"))),
        };
        map.insert(name, HostTensor::new(view.shape().to_vec(), data));
    }
    if map.is_empty() {
        return Err(Error::format(path, format!("no `{}.*` tensors: not a {} checkpoint", arch.root(), arch.family())));
    }
    Ok(map)
}
