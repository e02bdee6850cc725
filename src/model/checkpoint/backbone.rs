//! The backbone a checkpoint needs: resolved from a preset name, a local Hugging Face folder
//! or a Hugging Face repo id (the original's `backbone` hyper-parameter, GenD's `backbone`
//! config field), and checked against the checkpoint's tensors.

use std::path::Path;

use super::TensorMap;
use crate::model::config::{Backbone, PRESETS};
use crate::model::hub::{self, Hub, Lookup};
use crate::{Error, Result};

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
                let reason = format!("{reason}; it is not a preset ({}) nor a local folder", PRESETS.join(", "));
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
    Err(Error::UnknownBackbone { name: name.to_string(), known: PRESETS.join(", ") })
}

/// Checks the encoder tensors against the backbone's shape, so that a wrong `--backbone`
/// is reported as such rather than as a missing tensor deep inside the encoder.
pub(super) fn check_backbone(tensors: &TensorMap, backbone: &Backbone) -> Result<()> {
    let arch = &backbone.encoder;
    let (d, p, family) = (arch.hidden_size(), arch.patch_size(), arch.family());
    let root = format!("{}.", arch.root());
    if !tensors.keys().any(|k| k.starts_with(&root)) {
        let found = tensors.keys().find(|k| !k.starts_with("model.")).map_or("none".to_string(), |k| format!("`{k}`"));
        return Err(Error::format(
            tensors.path(),
            format!(
                "backbone `{}` is {family}, whose tensors are named `{root}*`, but the checkpoint has none (the \
                 first encoder tensor is {found}); pass the matching --backbone",
                backbone.name
            ),
        ));
    }
    for (key, shape) in arch.embedding_shapes() {
        if let Some(t) = tensors.get(&key)
            && t.shape != shape
        {
            return Err(Error::format(
                tensors.path(),
                format!(
                    "tensor `{key}` has shape {:?} but backbone `{}` ({family}, hidden {d}, patch {p}) \
                     expects {shape:?}; pass the matching --backbone",
                    t.shape, backbone.name
                ),
            ));
        }
    }
    let layers = tensors.keys().filter_map(|k| arch.layer_index(k)).max().map_or(0, |i| i + 1);
    if layers != 0 && layers != arch.num_layers() {
        return Err(Error::format(
            tensors.path(),
            format!(
                "the checkpoint has {layers} encoder layers but backbone `{}` has {}; pass the matching --backbone",
                backbone.name,
                arch.num_layers()
            ),
        ));
    }
    Ok(())
}
