//! peft's wrapping of the original's encoder, undone: stored keys normalised to HF's CLIP names
//! (`feature_extractor.base_model.model.` prefixes stripped, text tower and projections
//! dropped), LN-tuning's tuned copies (`<ln>.ln_tuning_layers.<adapter>.*`) taking the place of
//! their `base_layer`, and LoRA adapters (`lora_A`, `lora_B`) merged into their base weight as
//! peft's `merge_and_unload` does.

use std::collections::BTreeMap;
use std::path::Path;

use super::{HostTensor, RawTensor, TensorMap};
use crate::model::spec::Tuning;
use crate::{Error, Result};

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
pub(super) fn normalise(path: &Path, raw: BTreeMap<String, RawTensor<'_>>, tuning: &Tuning) -> Result<TensorMap> {
    let mut renamed: BTreeMap<String, RawTensor<'_>> = BTreeMap::new();
    for (key, t) in raw {
        let Some(name) = normalise_key(&key) else {
            continue;
        };
        if renamed.contains_key(&name) {
            return Err(Error::format(path, format!("two tensors map to `{name}` (one is `{key}`)")));
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
        let params: Vec<String> = renamed.keys().filter_map(|k| k.strip_prefix(&base)).map(str::to_string).collect();
        let adapters = |prefix: &str| -> Vec<String> {
            let mut names: Vec<String> =
                renamed.keys().filter_map(|k| k.strip_prefix(prefix)?.split('.').next().map(str::to_string)).collect();
            names.dedup();
            names
        };
        let ln_adapters = adapters(&ln);
        let lora_adapters = adapters(&lora_a);
        if ln_adapters.len() + lora_adapters.len() > 1 {
            return Err(Error::format(
                path,
                format!("`{m}` carries several peft adapters ({ln_adapters:?} {lora_adapters:?}); dfdet reads one"),
            ));
        }
        if let Some(adapter) = ln_adapters.first() {
            // LN-tuning: the tuned copy is what forward uses; the base layer is dead weight.
            for p in &params {
                renamed.remove(&format!("{base}{p}"));
                let tuned_key = format!("{ln}{adapter}.{p}");
                let tuned = renamed
                    .remove(&tuned_key)
                    .ok_or_else(|| Error::MissingTensor { path: path.to_path_buf(), key: tuned_key.clone() })?;
                out.insert(format!("{m}.{p}"), tuned.load(path, &tuned_key)?);
            }
        } else if let Some(adapter) = lora_adapters.first() {
            let Tuning::Lora { rank, alpha, .. } = tuning else {
                return Err(Error::format(
                    path,
                    format!("`{m}` has LoRA adapters but the checkpoint's settings do not enable LoRA"),
                ));
            };
            let a_key = format!("{lora_a}{adapter}.weight");
            let b_key = format!("{lora_b}{adapter}.weight");
            let take_raw = |renamed: &mut BTreeMap<String, RawTensor<'_>>, key: &str| {
                renamed
                    .remove(key)
                    .ok_or_else(|| Error::MissingTensor { path: path.to_path_buf(), key: key.to_string() })?
                    .load(path, key)
            };
            let a = take_raw(&mut renamed, &a_key)?;
            let b = take_raw(&mut renamed, &b_key)?;
            for p in &params {
                let key = format!("{base}{p}");
                let t = take_raw(&mut renamed, &key)?;
                let t = if p == "weight" { merge_lora(path, &m, t, &a, &b, *rank, *alpha)? } else { t };
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
    // A linear's weight `[out, in]` with A `[r, in]` and B `[out, r]`; or a convolution's
    // `[out, c, k, k]` with A a convolution `[r, c, k, k]` and B a 1x1 one `[out, r, 1, 1]`
    // (peft's `lora.Conv2d`), merged as the matrices `[out, c·k·k]`, `[r, c·k·k]`, `[out, r]`.
    let (out_dim, in_dim) = match w.shape[..] {
        [o, ..] if w.shape.len() == 2 || w.shape.len() == 4 => (o, w.shape[1..].iter().product::<usize>()),
        _ => {
            return Err(Error::format(
                path,
                format!("LoRA on `{module}`: base weight {:?} is neither a matrix nor a convolution", w.shape),
            ));
        }
    };
    let r = a.shape.first().copied().unwrap_or(0);
    let a_fits = a.shape[1..] == w.shape[1..];
    let b_fits = b.shape[..2.min(b.shape.len())] == [out_dim, r]
        && b.shape.len() == w.shape.len()
        && b.shape[2..].iter().all(|&k| k == 1);
    if a.shape.len() != w.shape.len() || !a_fits || !b_fits {
        return Err(Error::format(
            path,
            format!("LoRA on `{module}`: A {:?} and B {:?} do not fit weight {:?}", a.shape, b.shape, w.shape),
        ));
    }
    if r != rank {
        return Err(Error::format(path, format!("LoRA on `{module}` has rank {r} but hyper_parameters say {rank}")));
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
    Ok(HostTensor { shape: w.shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(shape: Vec<usize>, data: Vec<f32>) -> RawTensor<'static> {
        RawTensor { shape, dtype: "F32".into(), read: Box::new(move || Ok(data)) }
    }

    #[test]
    fn keys_are_normalised() {
        assert_eq!(
            normalise_key("feature_extractor.base_model.model.vision_model.pre_layrnorm.weight").as_deref(),
            Some("vision_model.pre_layrnorm.weight")
        );
        assert_eq!(normalise_key("model.linear.bias").as_deref(), Some("model.linear.bias"));
        assert_eq!(normalise_key("feature_extractor.visual_projection.weight"), None);
        assert_eq!(normalise_key("vision_model.embeddings.position_ids"), None);
        assert_eq!(normalise_key("text_model.embeddings.token_embedding.weight"), None);
    }

    #[test]
    fn ln_tuning_takes_the_tuned_copy() {
        let p = "feature_extractor.base_model.model.vision_model.post_layernorm";
        let mut m = BTreeMap::new();
        m.insert(format!("{p}.base_layer.weight"), raw(vec![2], vec![1.0, 1.0]));
        m.insert(format!("{p}.base_layer.bias"), raw(vec![2], vec![0.0, 0.0]));
        m.insert(format!("{p}.ln_tuning_layers.default.weight"), raw(vec![2], vec![2.0, 3.0]));
        m.insert(format!("{p}.ln_tuning_layers.default.bias"), raw(vec![2], vec![4.0, 5.0]));
        let mut t = normalise(Path::new("x"), m, &Tuning::LnTuning).unwrap();
        assert_eq!(t.take("vision_model.post_layernorm.weight", &[2]).unwrap().data, [2.0, 3.0]);
        assert_eq!(t.take("vision_model.post_layernorm.bias", &[2]).unwrap().data, [4.0, 5.0]);
        t.finish().unwrap();
    }

    #[test]
    fn conv_lora_is_merged() {
        // A patch convolution [out 2, c 1, 2, 2] with A [1, 1, 2, 2] and B [2, 1, 1, 1].
        let w = HostTensor::new(vec![2, 1, 2, 2], vec![0.0; 8]);
        let a = HostTensor::new(vec![1, 1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let b = HostTensor::new(vec![2, 1, 1, 1], vec![1.0, -1.0]);
        let merged = merge_lora(Path::new("x"), "patch_embed.proj", w, &a, &b, 1, 2.0).unwrap();
        assert_eq!(merged.shape, [2, 1, 2, 2]);
        assert_eq!(merged.data, [2.0, 4.0, 6.0, 8.0, -2.0, -4.0, -6.0, -8.0]);
        let w = HostTensor::new(vec![2, 1, 2, 2], vec![0.0; 8]);
        let bad = HostTensor::new(vec![2, 1], vec![1.0, -1.0]);
        assert!(merge_lora(Path::new("x"), "patch_embed.proj", w, &a, &bad, 1, 2.0).is_err());
    }

    #[test]
    fn lora_is_merged() {
        let p = "vision_model.encoder.layers.0.self_attn.out_proj";
        let mut m = BTreeMap::new();
        m.insert(format!("{p}.base_layer.weight"), raw(vec![2, 2], vec![1.0, 0.0, 0.0, 1.0]));
        m.insert(format!("{p}.base_layer.bias"), raw(vec![2], vec![0.5, 0.5]));
        m.insert(format!("{p}.lora_A.default.weight"), raw(vec![1, 2], vec![1.0, 2.0]));
        m.insert(format!("{p}.lora_B.default.weight"), raw(vec![2, 1], vec![3.0, 4.0]));
        let tuning = Tuning::Lora { rank: 1, alpha: 2.0, dropout: 0.0, target_modules: vec!["out_proj".into()] };
        let mut t = normalise(Path::new("x"), m, &tuning).unwrap();
        // W + 2 * B A = I + 2 [[3, 6], [4, 8]]
        assert_eq!(t.take(&format!("{p}.weight"), &[2, 2]).unwrap().data, [7.0, 12.0, 8.0, 17.0]);
        assert_eq!(t.take(&format!("{p}.bias"), &[2]).unwrap().data, [0.5, 0.5]);
        t.finish().unwrap();
    }
}
