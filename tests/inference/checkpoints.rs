//! Checkpoint formats against the fixtures of scripts/fixtures/make_model_fixtures.py:
//! Lightning checkpoints shaped like the original's (peft LN-tuning, LoRA, none), a GenD
//! folder, dfdet's own folder, and the errors a user sees.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dfdet::model::checkpoint::{HostTensor, TensorMap, load_checkpoint, load_checkpoint_with, save_dfdet};
use dfdet::model::hub::Hub;
use dfdet::model::spec::{HeadKind, Tuning};
use serde_json::Value;

use crate::common::{fixtures, read_json, samples};

fn fixture(name: &str) -> String {
    fixtures().join(name).to_str().unwrap().to_string()
}

/// A Hub that never reaches the network, over an empty cache.
fn offline_hub(dir: &Path) -> Hub {
    Hub::new(dir.join("hub"), true)
}

fn values() -> Value {
    read_json("ckpt_values.json")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
    }
}

/// Every tensor the script recorded is present under its normalised name, with its shape,
/// sum and first values; nothing else is; the "full" tensors match value for value.
fn check_against_script(name: &str, map: &TensorMap, full_tol: f32) {
    let v = &values()[name];
    let tensors = v["tensors"].as_object().unwrap();
    let expected_keys: Vec<&String> = tensors.keys().collect();
    let keys: Vec<&String> = map.keys().collect();
    assert_eq!(keys, expected_keys, "{name}: key set");
    assert_eq!(map.len() as u64, v["num_tensors"].as_u64().unwrap());
    for (key, e) in tensors {
        let t = map.get(key).unwrap();
        let shape: Vec<usize> = e["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        assert_eq!(t.shape, shape, "{name}: {key} shape");
        let sum: f64 = t.data.iter().map(|&x| x as f64).sum();
        let want = e["sum"].as_f64().unwrap();
        assert!((sum - want).abs() <= 1e-4 * (1.0 + want.abs()), "{name}: {key} sum {sum} vs {want}");
        assert_close(&t.data[..t.data.len().min(4)], &floats(&e["first"]), 1e-6, key);
    }
    for (key, e) in v["full"].as_object().unwrap() {
        assert_close(&map.get(key).unwrap().data, &floats(e), full_tol, key);
    }
}

/// Takes every tensor with its own shape and checks nothing is left: the map is consumable.
fn consume(mut map: TensorMap) {
    let all: Vec<(String, Vec<usize>)> = map.keys().map(|k| (k.clone(), map.get(k).unwrap().shape.clone())).collect();
    for (k, shape) in all {
        map.take(&k, &shape).unwrap();
    }
    map.finish().unwrap();
}

#[test]
fn ln_tuning_linearnorm_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = load_checkpoint_with(&fixture("ckpt-ln-linearnorm.ckpt"), None, &offline_hub(tmp.path())).unwrap();
    assert_eq!(ckpt.spec.head, HeadKind::LinearNorm);
    assert_eq!(ckpt.spec.tuning, Tuning::LnTuning);
    assert_eq!(ckpt.spec.num_classes, 2);
    assert_eq!(ckpt.spec.backbone, "tiny-clip-p14");
    assert_eq!(ckpt.spec.precision.as_deref(), Some("bf16-mixed"));
    assert_eq!(ckpt.spec.run_name.as_deref(), Some("tiny-ln-linearnorm"));
    // Resolved relative to the checkpoint's folder.
    assert!(ckpt.backbone.name.ends_with("tiny-clip-p14"), "{}", ckpt.backbone.name);
    assert_eq!(ckpt.backbone.encoder.hidden_size(), 32);
    assert_eq!(ckpt.backbone.encoder.patch_size(), 14);
    assert_eq!(ckpt.backbone.encoder.as_clip().unwrap().num_positions(), 257);
    assert_eq!(ckpt.backbone.pixels.size()[0], 224);

    // 3 embeddings + pre LN + 2 layers x 12 + post LN + head; every LN once (tuned copy).
    assert_eq!(ckpt.tensors.len(), 3 + 2 + 2 * 16 + 2 + 2);
    assert_eq!(ckpt.tensors.get("model.linear.weight").unwrap().shape, [2, 32]);
    assert_eq!(ckpt.tensors.get("vision_model.embeddings.patch_embedding.weight").unwrap().shape, [32, 3, 14, 14]);
    assert_eq!(ckpt.tensors.get("vision_model.embeddings.position_embedding.weight").unwrap().shape, [257, 32]);

    let v = values();
    let raw = &v["ckpt-ln-linearnorm.ckpt"]["raw"];
    assert_eq!(raw["num_keys"].as_u64().unwrap(), 3 + 4 + 2 * 20 + 4 + 2);
    let tuned = floats(&raw["pre_layrnorm.ln_tuning_layers.default.weight"]);
    let base = floats(&raw["pre_layrnorm.base_layer.weight"]);
    let got = &ckpt.tensors.get("vision_model.pre_layrnorm.weight").unwrap().data;
    assert_eq!(got, &tuned, "the tuned copy, not base_layer");
    assert_ne!(got, &base);

    check_against_script("ckpt-ln-linearnorm.ckpt", &ckpt.tensors, 0.0);
    consume(ckpt.tensors);
}

#[test]
fn linear_checkpoint_without_peft() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = load_checkpoint_with(&fixture("ckpt-linear.ckpt"), None, &offline_hub(tmp.path())).unwrap();
    assert_eq!(ckpt.spec.head, HeadKind::Linear);
    assert_eq!(ckpt.spec.tuning, Tuning::LinearProbe);
    assert_eq!(ckpt.spec.backbone, "tiny-clip-p32");
    assert_eq!(ckpt.backbone.encoder.hidden_size(), 48);
    assert_eq!(ckpt.backbone.encoder.num_layers(), 3);
    assert_eq!(ckpt.backbone.encoder.as_clip().unwrap().num_positions(), 50);
    assert_eq!(ckpt.tensors.len(), 3 + 2 + 3 * 16 + 2 + 2);
    assert_eq!(ckpt.tensors.get("model.linear.weight").unwrap().shape, [2, 48]);

    // The checkpoint's encoder weights, not the backbone folder's.
    let folder = std::fs::read(fixtures().join("tiny-clip-p32/model.safetensors")).unwrap();
    let folder = safetensors::SafeTensors::deserialize(&folder).unwrap();
    let view = folder.tensor("vision_model.pre_layrnorm.weight").unwrap();
    let folder_ln: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_ne!(ckpt.tensors.get("vision_model.pre_layrnorm.weight").unwrap().data, folder_ln);

    check_against_script("ckpt-linear.ckpt", &ckpt.tensors, 0.0);
    consume(ckpt.tensors);
}

#[test]
fn lora_checkpoint_is_merged() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = load_checkpoint_with(&fixture("ckpt-lora.ckpt"), None, &offline_hub(tmp.path())).unwrap();
    assert_eq!(ckpt.spec.head, HeadKind::Linear);
    match &ckpt.spec.tuning {
        Tuning::Lora { rank, alpha, dropout, target_modules } => {
            assert_eq!(*rank, 2);
            assert_eq!(*alpha, 32.0);
            assert_eq!(*dropout, 0.1);
            assert_eq!(target_modules, &["out_proj".to_string()]);
        }
        other => panic!("tuning {other:?}"),
    }
    assert_eq!(ckpt.tensors.len(), 3 + 2 + 2 * 16 + 2 + 2);
    let key = "vision_model.encoder.layers.0.self_attn.out_proj.weight";
    let merged = &ckpt.tensors.get(key).unwrap().data;
    let v = values();
    let base = floats(&v["ckpt-lora.ckpt"]["raw"]["layers.0.out_proj.base_layer.weight"]);
    assert_ne!(merged, &base, "the adapter changes the weight");
    // peft's own merge_and_unload, recorded by the script.
    check_against_script("ckpt-lora.ckpt", &ckpt.tensors, 1e-6);
    consume(ckpt.tensors);
}

#[test]
fn gend_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = offline_hub(tmp.path());
    let ckpt = load_checkpoint_with(&fixture("gend-tiny"), None, &hub).unwrap();
    assert_eq!(ckpt.spec.head, HeadKind::LinearNorm);
    assert_eq!(ckpt.spec.backbone, "tiny-clip-p14");
    assert_eq!(ckpt.spec.num_classes, 2);
    assert_eq!(ckpt.backbone.encoder.hidden_size(), 32);
    // visual_projection is dropped.
    assert!(ckpt.tensors.keys().all(|k| !k.contains("visual_projection")));
    let raw_keys = values()["gend-tiny"]["raw"]["num_keys"].as_u64().unwrap() as usize;
    assert_eq!(ckpt.tensors.len(), raw_keys - 1);
    check_against_script("gend-tiny", &ckpt.tensors, 0.0);

    // Pointing at the weights file or config.json finds the same folder.
    for file in ["gend-tiny/model.safetensors", "gend-tiny/config.json"] {
        let again = load_checkpoint_with(&fixture(file), None, &hub).unwrap();
        assert_eq!(again.tensors.tensors(), ckpt.tensors.tensors());
    }
    consume(ckpt.tensors);
}

#[test]
fn dfdet_roundtrip_is_exact_and_self_contained() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = offline_hub(tmp.path());
    for name in ["ckpt-ln-linearnorm.ckpt", "ckpt-lora.ckpt", "gend-tiny"] {
        let ckpt = load_checkpoint_with(&fixture(name), None, &hub).unwrap();
        // A folder far from the fixtures: the backbone folder is not reachable from it.
        let dir = tmp.path().join("saved").join(name);
        save_dfdet(&dir, &ckpt.spec, &ckpt.backbone, ckpt.tensors.tensors()).unwrap();
        assert!(dir.join("dfdet.json").is_file() && dir.join("model.safetensors").is_file());
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 2, "no temp files left: {leftovers:?}");

        let back = load_checkpoint(dir.to_str().unwrap(), None).unwrap();
        assert_eq!(back.tensors.tensors(), ckpt.tensors.tensors(), "{name}");
        assert_eq!(back.backbone, ckpt.backbone);
        assert_eq!(back.spec.head, ckpt.spec.head);
        assert_eq!(back.spec.tuning, ckpt.spec.tuning);
        assert_eq!(back.spec.backbone, ckpt.spec.backbone);
        assert_eq!(back.spec.run_name, ckpt.spec.run_name);

        let json: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("dfdet.json")).unwrap()).unwrap();
        assert_eq!(json["format"], "dfdet");
        assert_eq!(json["version"], 1);
        assert_eq!(json["spec"]["head"], ckpt.spec.head.as_str());
        // Through dfdet.json itself as well.
        let again = load_checkpoint(dir.join("dfdet.json").to_str().unwrap(), None).unwrap();
        assert_eq!(again.tensors.len(), ckpt.tensors.len());
    }
}

#[test]
fn backbone_override() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = offline_hub(tmp.path());
    let p14 = fixture("tiny-clip-p14");
    let ckpt = load_checkpoint_with(&fixture("ckpt-ln-linearnorm.ckpt"), Some(&p14), &hub).unwrap();
    assert_eq!(ckpt.spec.backbone, p14);
    assert_eq!(ckpt.backbone.encoder.patch_size(), 14);

    // The wrong backbone is caught before the encoder is built, naming key and both shapes.
    let err = load_checkpoint_with(&fixture("ckpt-linear.ckpt"), Some(&p14), &hub).unwrap_err().to_string();
    assert!(err.contains("vision_model.embeddings.patch_embedding.weight"), "{err}");
    assert!(err.contains("[48, 3, 32, 32]") && err.contains("[32, 3, 14, 14]"), "{err}");
    assert!(err.contains("--backbone"), "{err}");
}

#[test]
fn unknown_backbone_lists_presets() {
    let tmp = tempfile::tempdir().unwrap();
    let err =
        load_checkpoint_with(&fixture("ckpt-ln-linearnorm.ckpt"), Some("no-such-backbone"), &offline_hub(tmp.path()))
            .unwrap_err()
            .to_string();
    assert!(err.contains("no-such-backbone"), "{err}");
    assert!(err.contains("openai/clip-vit-large-patch14"), "{err}");
}

#[test]
fn enum_hyper_parameters_ask_for_backbone() {
    // The original's str Enums pickle as objects (`src.config.Backbone(...)`), opaque here.
    let tmp = tempfile::tempdir().unwrap();
    let hub = offline_hub(tmp.path());
    let err = load_checkpoint_with(&fixture("ckpt-enum-hparams.ckpt"), None, &hub).unwrap_err().to_string();
    assert!(err.contains("src.config.Backbone") && err.contains("--backbone"), "{err}");
    let err = load_checkpoint_with(&fixture("ckpt-enum-hparams.ckpt"), Some("openai/clip-vit-base-patch32"), &hub)
        .unwrap_err()
        .to_string();
    assert!(err.contains("src.config.Head"), "{err}");
}

#[test]
fn not_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = offline_hub(tmp.path());
    let png = tmp.path().join("face.png");
    let samples = samples().join("datasets/FF/real/000/000.png");
    if samples.is_file() {
        std::fs::copy(&samples, &png).unwrap();
    } else {
        std::fs::write(&png, b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").unwrap();
    }
    let err = load_checkpoint_with(png.to_str().unwrap(), None, &hub).unwrap_err().to_string();
    assert!(err.contains("not a PyTorch checkpoint (zip/pickle)") && err.contains("PNG"), "{err}");

    let txt = tmp.path().join("notes.ckpt");
    std::fs::write(&txt, "hello, this is text\n").unwrap();
    let err = load_checkpoint_with(txt.to_str().unwrap(), None, &hub).unwrap_err().to_string();
    assert!(err.contains("not a PyTorch checkpoint (zip/pickle)") && err.contains("text"), "{err}");

    let err = load_checkpoint_with(&fixture("tiny-clip-p14"), None, &hub).unwrap_err().to_string();
    assert!(err.contains("backbone folder, not a detector checkpoint"), "{err}");

    let err = load_checkpoint_with("no/such/file.ckpt", None, &hub).unwrap_err().to_string();
    assert!(err.contains("no such file"), "{err}");
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ckpt = load_checkpoint_with(&fixture("ckpt-ln-linearnorm.ckpt"), None, &offline_hub(tmp.path())).unwrap();
    let key = "vision_model.encoder.layers.1.mlp.fc1.weight";
    ckpt.tensors.remove(key).unwrap();
    let err = ckpt.tensors.take(key, &[64, 32]).unwrap_err().to_string();
    assert!(err.contains(key) && err.contains("ckpt-ln-linearnorm.ckpt"), "{err}");

    let key = "vision_model.post_layernorm.bias";
    let err = ckpt.tensors.take(key, &[33]).unwrap_err().to_string();
    assert!(err.contains(key) && err.contains("[32]") && err.contains("[33]"), "{err}");

    ckpt.tensors.insert("model.extra.weight".into(), HostTensor::new(vec![1], vec![0.0]));
    let err = ckpt.tensors.finish().unwrap_err().to_string();
    assert!(err.contains("model.extra.weight"), "{err}");
}

#[test]
fn hub_offline_names_repo_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = offline_hub(tmp.path());
    let err = load_checkpoint_with("yermandy/deepfake-detection", None, &hub).unwrap_err();
    assert!(matches!(err, dfdet::Error::Hub(_)), "{err:?}");
    let err = err.to_string();
    assert!(err.contains("yermandy/deepfake-detection") && err.contains("model.ckpt"), "{err}");
    assert!(err.contains("HF_HOME"), "{err}");

    // A backbone by hub id that is neither a preset nor cached.
    let err = load_checkpoint_with(&fixture("ckpt-ln-linearnorm.ckpt"), Some("someone/clip-vit-tiny"), &hub)
        .unwrap_err()
        .to_string();
    assert!(err.contains("someone/clip-vit-tiny") && err.contains("config.json"), "{err}");
}

/// Lays out `files` as the HF cache does: `models--org--name/{refs/main, snapshots/<rev>/...}`.
fn cache_repo(hub_dir: &Path, repo: &str, files: &[(&str, PathBuf)]) {
    let rev = "0123456789abcdef0123456789abcdef01234567";
    let root = hub_dir.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs/main"), rev).unwrap();
    let snap = root.join("snapshots").join(rev);
    std::fs::create_dir_all(&snap).unwrap();
    for (name, src) in files {
        std::fs::copy(src, snap.join(name)).unwrap();
    }
}

#[test]
fn hub_ids_resolve_from_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let hub_dir = tmp.path().join("hub");
    let fx = fixtures();
    // A backbone repo and a GenD repo naming it by id, as the released GenD does.
    cache_repo(
        &hub_dir,
        "tiny-org/tiny-clip-p14",
        &[
            ("config.json", fx.join("tiny-clip-p14/config.json")),
            ("preprocessor_config.json", fx.join("tiny-clip-p14/preprocessor_config.json")),
        ],
    );
    let config = std::fs::read_to_string(fx.join("gend-tiny/config.json")).unwrap();
    let config = config.replace("\"tiny-clip-p14\"", "\"tiny-org/tiny-clip-p14\"");
    let edited = tmp.path().join("config.json");
    std::fs::write(&edited, config).unwrap();
    cache_repo(
        &hub_dir,
        "tiny-org/GenD_tiny",
        &[("config.json", edited), ("model.safetensors", fx.join("gend-tiny/model.safetensors"))],
    );
    // And a Lightning checkpoint repo.
    cache_repo(&hub_dir, "tiny-org/deepfake-detection", &[("model.ckpt", fx.join("ckpt-linear.ckpt"))]);

    let hub = Hub::new(&hub_dir, true);
    let ckpt = load_checkpoint_with("tiny-org/GenD_tiny", None, &hub).unwrap();
    assert_eq!(ckpt.spec.backbone, "tiny-org/tiny-clip-p14");
    assert_eq!(ckpt.backbone.name, "tiny-org/tiny-clip-p14");
    assert_eq!(ckpt.backbone.encoder.hidden_size(), 32);
    check_against_script("gend-tiny", &ckpt.tensors, 0.0);

    // The Lightning repo's backbone ("tiny-clip-p32", relative) is not in the snapshot: override it.
    let err = load_checkpoint_with("tiny-org/deepfake-detection", None, &hub).unwrap_err().to_string();
    assert!(err.contains("tiny-clip-p32"), "{err}");
    let ckpt = load_checkpoint_with("tiny-org/deepfake-detection", Some(&fixture("tiny-clip-p32")), &hub).unwrap();
    check_against_script("ckpt-linear.ckpt", &ckpt.tensors, 0.0);

    // Online mode uses the cached copy first: no network round trip is needed.
    let online = Hub::new(&hub_dir, false);
    let again = load_checkpoint_with("tiny-org/deepfake-detection", Some(&fixture("tiny-clip-p32")), &online).unwrap();
    assert_eq!(again.tensors.tensors(), ckpt.tensors.tensors());

    let tensors: BTreeMap<String, HostTensor> = ckpt.tensors.into_tensors();
    assert!(tensors.contains_key("model.linear.bias"));
}
