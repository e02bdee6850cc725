//! Training end to end on the tiny CLIP: it learns, it resumes exactly, cached linear probing
//! matches uncached (its speed-up: scripts/bench/cache_features.sh). Real sample crops vs the same crops with a visible manipulation.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use dfdet::progress::Silent;
use dfdet::train::{TrainConfig, train};

use crate::common::fixtures;
use crate::support::*;

fn config(dir: &std::path::Path, sets: &[&str]) -> TrainConfig {
    let path = dir.join("config.toml");
    std::fs::write(&path, tiny_config(dir, "")).unwrap();
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    TrainConfig::load(Some(&path), &sets).unwrap()
}

#[test]
fn ln_tuning_learns_the_manipulation() {
    let tmp = tempfile::tempdir().unwrap();
    derived_dataset(tmp.path(), None);
    let cfg = config(tmp.path(), &["max_epochs=5", "lr=1e-2"]);
    let t = Instant::now();
    let out = train(&cfg, &mut Silent, &AtomicBool::new(false)).unwrap();
    let run = out.run_dir;
    let first = metrics(&run).into_iter().find(|r| r.2 == "val/auroc_frame").unwrap().3;
    let auroc = last_metric(&run, "val/auroc_frame").unwrap();
    let train_auroc = last_metric(&run, "train/auroc_frame").unwrap();
    eprintln!(
        "frame AUROC on the training images: {first:.4} after epoch 1, {auroc:.4} at the end (train-mode {train_auroc:.4}); {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(auroc >= 0.95, "AUROC {auroc}");
    let test = out.test.unwrap();
    assert!(test.report["D"].frame.auroc.unwrap() >= 0.95);
}

/// `param/<name>` of a run's saved training state.
fn saved_param(run: &std::path::Path, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(run.join("checkpoints/last/train_state.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(&format!("param/{name}")).unwrap();
    view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

#[test]
fn cached_linear_probing_gives_the_same_head() {
    let tmp = tempfile::tempdir().unwrap();
    derived_dataset(tmp.path(), None);
    let probe = ["peft.enabled=false", "max_epochs=4", "lr=1e-2", "tst_files=[]"];
    let mut runs = Vec::new();
    for cached in [false, true] {
        let mut sets = probe.to_vec();
        let name = format!("run_name=\"cached-{cached}\"");
        let cache = format!("cache_features={cached}");
        sets.extend([name.as_str(), cache.as_str()]);
        let cfg = config(tmp.path(), &sets);
        runs.push(train(&cfg, &mut Silent, &AtomicBool::new(false)).unwrap().run_dir);
    }
    let (plain, cached) = (&runs[0], &runs[1]);
    for name in ["model.linear.weight", "model.linear.bias"] {
        let (a, b) = (saved_param(plain, name), saved_param(cached, name));
        let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        eprintln!("{name}: max |uncached - cached| = {diff:e}");
        assert!(diff <= 1e-5, "{name}: {diff}");
    }
    // The speed-up is a benchmark: scripts/bench/cache_features.sh (BENCHMARKS.md).
    // Only the head trained: the encoder of `best` is the base CLIP's.
    let lines = std::fs::read_to_string(plain.join("config.toml")).unwrap();
    assert!(lines.contains("cache_features = false"));
}

#[test]
fn lora_and_augmentations_train_and_export_merged_weights() {
    let tmp = tempfile::tempdir().unwrap();
    derived_dataset(tmp.path(), Some(8));
    let cfg = config(
        tmp.path(),
        &[
            "peft.ln_tuning.enabled=false",
            "peft.lora.enabled=true",
            "peft.lora.rank=2",
            "peft.lora.target_modules=[\"q_proj\", \"out_proj\"]",
            "augmentations=true",
            "max_epochs=2",
            "tst_files=[]",
        ],
    );
    let out = train(&cfg, &mut Silent, &AtomicBool::new(false)).unwrap();
    // B starts at zero: after training the merged projections differ from the base CLIP's,
    // the others do not, and the checkpoint loads as a plain detector.
    let ckpt = dfdet::model::load_checkpoint(out.run_dir.join("checkpoints/last").to_str().unwrap(), None).unwrap();
    assert!(matches!(ckpt.spec.tuning, dfdet::model::Tuning::Lora { rank: 2, .. }));
    let arch = dfdet::model::config::Backbone::from_dir(&tiny_clip()).unwrap().encoder;
    let base = dfdet::train::init::encoder_tensors(&tiny_clip().join("model.safetensors"), &arch).unwrap();
    let changed = |key: &str| ckpt.tensors.get(key).unwrap().data != base.get(key).unwrap().data;
    assert!(changed("vision_model.encoder.layers.0.self_attn.q_proj.weight"));
    assert!(changed("vision_model.encoder.layers.1.self_attn.out_proj.weight"));
    assert!(!changed("vision_model.encoder.layers.0.self_attn.k_proj.weight"));
    assert!(!changed("vision_model.encoder.layers.0.layer_norm1.weight"));
    assert!(!changed("vision_model.encoder.layers.0.self_attn.q_proj.bias"));
    let names = metrics(&out.run_dir);
    assert!(names.iter().any(|r| r.2 == "val/mAP_video"));
}

/// The encoder tensors of `base` whose values differ in `trained` (the head left out).
fn moved_from<'a>(
    base: &'a dfdet::model::tensors::TensorMap,
    trained: &dfdet::model::tensors::TensorMap,
) -> Vec<&'a String> {
    base.tensors()
        .iter()
        .filter(|(name, t)| !name.starts_with("model.") && trained.get(name).unwrap().data != t.data)
        .map(|(n, _)| n)
        .collect()
}

/// LN-tuning on one of GenD's other encoders, set up by `sets_given` (a tiny reference-made backbone
/// or GenD detector): it learns the manipulation, only tensors `trains` names move from `base`
/// (all of them), and the run's checkpoint reads back as a detector of that family.
fn ln_tuning_on(
    sets_given: &[&str],
    base: &dfdet::model::tensors::TensorMap,
    family: &str,
    trains: impl Fn(&str) -> bool,
    count: usize,
) {
    let tmp = tempfile::tempdir().unwrap();
    derived_dataset(tmp.path(), None);
    let mut sets = ["max_epochs=5", "lr=1e-2"].to_vec();
    sets.extend(sets_given);
    let cfg = config(tmp.path(), &sets);
    let out = train(&cfg, &mut Silent, &AtomicBool::new(false)).unwrap();
    let auroc = last_metric(&out.run_dir, "val/auroc_frame").unwrap();
    assert!(auroc >= 0.95, "{family}: AUROC {auroc}");

    let ckpt = dfdet::model::load_checkpoint(out.run_dir.join("checkpoints/last").to_str().unwrap(), None).unwrap();
    assert_eq!(ckpt.backbone.encoder.family(), family);
    let moved = moved_from(base, &ckpt.tensors);
    assert!(moved.iter().all(|n| trains(n)), "{family}: only LayerNorms train: {moved:?}");
    assert_eq!(moved.len(), count, "{family}: every norm's weight and bias moved: {moved:?}");
    let test = out.test.unwrap();
    assert!(test.report["D"].frame.auroc.unwrap() >= 0.95);
}

/// DINOv3 from its backbone folder: `norm1`, `norm2` and the final `norm` train (GenD's
/// `unfreeze_layers`); the rotary coordinates are rescaled at random in training mode only.
#[test]
fn dinov3_ln_tuning_trains_the_norms_and_learns() {
    let folder = fixtures().join("tiny-dinov3");
    let arch = dfdet::model::config::Backbone::from_dir(&folder).unwrap().encoder;
    let base = dfdet::train::init::encoder_tensors(&folder.join("model.safetensors"), &arch).unwrap();
    let backbone = format!("backbone=\"{}\"", folder.display());
    let norms = |n: &str| n.contains(".norm1.") || n.contains(".norm2.") || n.starts_with("backbone.norm.");
    ln_tuning_on(&[&backbone], &base, "DINOv3", norms, 2 * (2 * 2 + 1));
}

/// The tensors LN-tuning trains in a GenD PE detector: `norm_pre`, `norm1`, `norm2`, the final
/// `norm` and the attention pool's `norm`.
fn pe_norms(n: &str) -> bool {
    n.starts_with("backbone.norm_pre.")
        || n.contains(".norm1.")
        || n.contains(".norm2.")
        || n.starts_with("backbone.norm.")
        || n.starts_with("backbone.attn_pool.norm.")
}

/// The Perception Encoder, fine-tuning a GenD detector (at GenD's 224 pixels): `norm_pre`,
/// `norm1`, `norm2`, the final `norm` and the attention pool's `norm` train (GenD's
/// `unfreeze_layers`, substrings of timm's names).
#[test]
fn pe_ln_tuning_trains_the_norms_and_learns() {
    let gend = fixtures().join("gend-pe-tiny");
    let base = dfdet::model::load_checkpoint(gend.to_str().unwrap(), None).unwrap().tensors;
    let checkpoint = format!("checkpoint=\"{}\"", gend.display());
    ln_tuning_on(
        &[&checkpoint, "max_epochs=10", "lr=3e-2"],
        &base,
        "Perception Encoder",
        pe_norms,
        2 * (1 + 2 * 2 + 2),
    );
}

/// LoRA (peft's semantics) on one of GenD's other encoders, set up by `sets_given`, with
/// `targets`: after training, exactly the weights of the modules the targets match (`adapted`,
/// `count` of them) differ from `base` (merged adapters), nothing else of the encoder moves,
/// and the run's checkpoint reads back as a detector of that family and scores the test split.
fn lora_on(
    sets_given: &[&str],
    targets: &str,
    base: &dfdet::model::tensors::TensorMap,
    family: &str,
    adapted: impl Fn(&str) -> bool,
    count: usize,
) {
    let tmp = tempfile::tempdir().unwrap();
    derived_dataset(tmp.path(), Some(8));
    let targets = format!("peft.lora.target_modules={targets}");
    let mut sets = [
        "peft.ln_tuning.enabled=false",
        "peft.lora.enabled=true",
        "peft.lora.rank=2",
        targets.as_str(),
        "max_epochs=2",
        "lr=1e-3",
    ]
    .to_vec();
    sets.extend(sets_given);
    let cfg = config(tmp.path(), &sets);
    let out = train(&cfg, &mut Silent, &AtomicBool::new(false)).unwrap();

    let ckpt = dfdet::model::load_checkpoint(out.run_dir.join("checkpoints/last").to_str().unwrap(), None).unwrap();
    assert_eq!(ckpt.backbone.encoder.family(), family);
    assert!(matches!(ckpt.spec.tuning, dfdet::model::Tuning::Lora { rank: 2, .. }), "{:?}", ckpt.spec.tuning);
    assert!(!ckpt.tensors.keys().any(|k| k.contains("lora_")), "{family}: adapters are merged");
    let moved = moved_from(base, &ckpt.tensors);
    assert!(moved.iter().all(|n| adapted(n)), "{family}: only the adapted weights move: {moved:?}");
    assert_eq!(moved.len(), count, "{family}: every adapted weight moved: {moved:?}");
    // The checkpoint scores: the run's test pass read `best` back and scored every frame.
    let test = out.test.unwrap();
    let auroc = test.report["D"].frame.auroc.unwrap();
    assert!(auroc.is_finite(), "{family}: AUROC {auroc}");
}

/// DINOv3 from its backbone folder, LoRA on `q_proj`, `v_proj` and `up_proj` of each layer
/// (`k_proj`, `o_proj`, `down_proj`, the norms and layer scales stay).
#[test]
fn dinov3_lora_trains_the_targeted_projections() {
    let folder = fixtures().join("tiny-dinov3");
    let arch = dfdet::model::config::Backbone::from_dir(&folder).unwrap().encoder;
    let base = dfdet::train::init::encoder_tensors(&folder.join("model.safetensors"), &arch).unwrap();
    let backbone = format!("backbone=\"{}\"", folder.display());
    let adapted = |n: &str| {
        ["attention.q_proj.weight", "attention.v_proj.weight", "mlp.up_proj.weight"].iter().any(|m| n.ends_with(m))
    };
    lora_on(&[&backbone], "[\"q_proj\", \"v_proj\", \"up_proj\"]", &base, "DINOv3", adapted, 2 * 3);
}

/// The Perception Encoder of a GenD detector, LoRA on `qkv`, `proj` and `fc1` as peft matches
/// them: each block's `attn.qkv`, `attn.proj` and `mlp.fc1`, the attention pool's `proj` and
/// `mlp.fc1`, and the patch convolution `patch_embed.proj` (peft's `lora.Conv2d`).
#[test]
fn pe_lora_trains_the_targeted_projections() {
    let gend = fixtures().join("gend-pe-tiny");
    let base = dfdet::model::load_checkpoint(gend.to_str().unwrap(), None).unwrap().tensors;
    let checkpoint = format!("checkpoint=\"{}\"", gend.display());
    let adapted = |n: &str| {
        n == "backbone.patch_embed.proj.weight"
            || n == "backbone.attn_pool.proj.weight"
            || n == "backbone.attn_pool.mlp.fc1.weight"
            || ["attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight"]
                .iter()
                .any(|m| n.starts_with("backbone.blocks.") && n.ends_with(m))
    };
    lora_on(&[&checkpoint], "[\"qkv\", \"proj\", \"fc1\"]", &base, "Perception Encoder", adapted, 1 + 2 * 3 + 2);
}

/// A target that matches no module of the backbone is refused before training, naming the
/// key and the family's modules (peft's matching takes whole name components: DINOv3's
/// projections are `q_proj`, ..., so `proj` matches none).
#[test]
fn lora_targets_that_match_nothing_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    derived_dataset(tmp.path(), Some(8));
    let folder = fixtures().join("tiny-dinov3");
    let backbone = format!("backbone=\"{}\"", folder.display());
    let sets = ["peft.ln_tuning.enabled=false", "peft.lora.enabled=true", "peft.lora.target_modules=[\"proj\"]"];
    let mut sets = sets.to_vec();
    sets.push(&backbone);
    let cfg = config(tmp.path(), &sets);
    let err = train(&cfg, &mut Silent, &AtomicBool::new(false)).unwrap_err().to_string();
    assert!(err.contains("peft.lora.target_modules") && err.contains("`proj`"), "{err}");
    assert!(err.contains("q_proj") && err.contains("up_proj"), "{err}");
}

/// `precision = "bf16-mixed"` trains as f32 does, up to bfloat16's rounding: ten optimizer
/// steps of LN-tuning from the same start, compared with the f32 run. The per-step training
/// losses agree to 1e-3 (measured 3.5e-4); the test pass, itself computed in bf16-mixed as
/// Lightning's is, gives probabilities within 2e-3 (measured 9.3e-4); the LayerNorm
/// parameters differ by at most half of how far training moved them (measured a quarter: AdamW
/// steps every parameter by about lr whatever its gradient's size, so the small, noisy
/// gradients are where the precisions part). The checkpoint records the precision. Gradient
/// parity with PyTorch's autocast: tests/training/grads.rs.
#[test]
fn bf16_mixed_training_follows_f32() {
    let tmp = tempfile::tempdir().unwrap();
    // 10 real and 10 manipulated videos' frames: 40 frames, 5 steps of 8 per epoch.
    derived_dataset(tmp.path(), Some(20));
    let mut runs = Vec::new();
    for precision in ["32", "bf16-mixed"] {
        let name = format!("run_name=\"p{}\"", precision.replace('-', "_"));
        let p = format!("precision=\"{precision}\"");
        let cfg = config(tmp.path(), &["max_epochs=2", "lr=1e-3", "min_lr=1e-3", &name, &p]);
        let out = train(&cfg, &mut Silent, &AtomicBool::new(false)).unwrap();
        assert_eq!(out.global_step, 10);
        runs.push(out.run_dir);
    }
    let (f32_run, bf16_run) = (&runs[0], &runs[1]);
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bf16_run.join("checkpoints/best/dfdet.json")).unwrap()).unwrap();
    assert_eq!(spec["spec"]["precision"], "bf16-mixed", "{spec}");

    let losses = |run: &std::path::Path| -> Vec<f64> {
        metrics(run).into_iter().filter(|r| r.2 == "train/loss").map(|r| r.3).collect()
    };
    let (l32, l16) = (losses(f32_run), losses(bf16_run));
    assert!(!l32.is_empty() && l32.len() == l16.len());
    let loss_gap = l32.iter().zip(&l16).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let (p32, p16) = (test_probs(f32_run), test_probs(bf16_run));
    assert_eq!(p32.len(), 40);
    let prob_gap = p32.iter().zip(&p16).map(|((_, a), (_, b))| (a - b).abs()).fold(0.0, f64::max);

    let folder = crate::support::tiny_clip();
    let arch = dfdet::model::config::Backbone::from_dir(&folder).unwrap().encoder;
    let base = dfdet::train::init::encoder_tensors(&folder.join("model.safetensors"), &arch).unwrap();
    let (mut moved, mut param_gap) = (0.0f32, 0.0f32);
    for (name, start) in base.tensors().iter().filter(|(n, _)| n.contains("layrnorm") || n.contains("layer_norm")) {
        let (a, b) = (saved_param(f32_run, name), saved_param(bf16_run, name));
        param_gap = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(param_gap, f32::max);
        moved = a.iter().zip(&start.data).map(|(x, y)| (x - y).abs()).fold(moved, f32::max);
    }
    eprintln!(
        "bf16-mixed vs f32 after 10 steps: losses {loss_gap:.2e}, test probabilities {prob_gap:.2e}, \
         LayerNorm parameters {param_gap:.2e} (they moved up to {moved:.2e})"
    );
    assert!(loss_gap <= 1e-3, "training losses differ by {loss_gap:e}");
    assert!(prob_gap <= 2e-3, "test probabilities differ by {prob_gap:e}");
    assert!(param_gap <= 0.5 * moved, "parameters differ by {param_gap:e}, moved {moved:e}");
}

/// The Perception Encoder's LN-tuning in bf16-mixed precision, fine-tuning a GenD detector (its
/// gradients are checked against PyTorch's autocast in tests/inference/pe.rs): it learns the
/// manipulation, and only the norms move.
#[test]
fn pe_ln_tuning_trains_in_bf16_mixed() {
    let gend = fixtures().join("gend-pe-tiny");
    let base = dfdet::model::load_checkpoint(gend.to_str().unwrap(), None).unwrap().tensors;
    let checkpoint = format!("checkpoint=\"{}\"", gend.display());
    let sets = [checkpoint.as_str(), "max_epochs=10", "lr=3e-2", "precision=\"bf16-mixed\""];
    ln_tuning_on(&sets, &base, "Perception Encoder", pe_norms, 2 * (1 + 2 * 2 + 2));
}

/// DINOv3 LN-tuning in bf16-mixed precision, as GenD trains it (its gradients are checked
/// against PyTorch's autocast in tests/inference/dinov3.rs): it learns the manipulation, and only
/// the norms move.
#[test]
fn dinov3_ln_tuning_trains_in_bf16_mixed() {
    let folder = fixtures().join("tiny-dinov3");
    let arch = dfdet::model::config::Backbone::from_dir(&folder).unwrap().encoder;
    let base = dfdet::train::init::encoder_tensors(&folder.join("model.safetensors"), &arch).unwrap();
    let backbone = format!("backbone=\"{}\"", folder.display());
    let norms = |n: &str| n.contains(".norm1.") || n.contains(".norm2.") || n.starts_with("backbone.norm.");
    ln_tuning_on(&[&backbone, "precision=\"bf16-mixed\""], &base, "DINOv3", norms, 2 * (2 * 2 + 1));
}

/// bf16-mixed for the other ways of training: linear probing (features cached, in a feature
/// store whose entries are kept apart from f32 features) and full fine-tuning (the projection
/// weights train through their bfloat16 casts) run, and every value they log is finite.
#[test]
fn bf16_mixed_trains_linear_probes_and_full_fine_tuning() {
    let tmp = tempfile::tempdir().unwrap();
    derived_dataset(tmp.path(), Some(4));
    let store = tmp.path().join("store");
    let store_key = format!("feature_cache_dir=\"{}\"", store.display());
    for (name, sets) in [
        ("probe32", vec!["peft.enabled=false", "cache_features=true", "precision=\"32\"", store_key.as_str()]),
        ("probe16", vec!["peft.enabled=false", "cache_features=true", "precision=\"bf16-mixed\"", store_key.as_str()]),
        ("full16", vec!["freeze_feature_extractor=false", "peft.enabled=false", "precision=\"bf16-mixed\""]),
    ] {
        let run_name = format!("run_name=\"{name}\"");
        let mut sets = sets.clone();
        sets.extend(["max_epochs=1", "tst_files=[]", run_name.as_str()]);
        let out = train(&config(tmp.path(), &sets), &mut Silent, &AtomicBool::new(false)).unwrap();
        assert!(metrics(&out.run_dir).iter().all(|r| r.3.is_finite()), "{name}");
        assert!(last_metric(&out.run_dir, "val/loss").is_some(), "{name}");
    }
    // One store folder per precision.
    let folders = std::fs::read_dir(&store).unwrap().count();
    assert_eq!(folders, 2);
}
