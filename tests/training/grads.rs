//! Gradient parity of training with PyTorch: loss values and the gradient of every trainable
//! tensor of the tiny CLIP + head, per loss term and combined, Linear and LinearNorm heads,
//! LN-tuning and LoRA. Expected numbers: `scripts/fixtures/make_train_fixtures.py` (float64).

use std::path::Path;

use burn::prelude::*;
use burn::tensor::FloatDType;
use dfdet::model::Detector;
use dfdet::model::checkpoint::HostTensor;
use dfdet::model::spec::{HeadKind, Tuning};
use dfdet::preprocess::pixels::load_rgb;
use dfdet::train::init::base_encoder;
use dfdet::train::lora::{LoraConfig, attach};
use dfdet::train::loss::{LossConfig, compute};
use dfdet::train::params::{LN_TARGETS, Selection, Trainable};
use serde_json::Value;

use crate::common::{read_json, samples};
use crate::support::tiny_clip;

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// max |a - b| / max |b| over a tensor.
fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    if scale == 0.0 { diff } else { diff / scale }
}

struct Setup {
    detector: Detector,
    trainable: Trainable,
    pixels: Tensor<4>,
    labels: Vec<usize>,
}

fn setup(fx: &Value, tuning: &str, head: &str, transposed: bool) -> Setup {
    let tiny = tiny_clip();
    let head = HeadKind::from_name(head).unwrap();
    let mut ckpt = base_encoder(tiny.to_str().unwrap(), head, 2, Tuning::LnTuning, 0).unwrap();
    ckpt.tensors.insert("model.linear.weight".into(), HostTensor::new(vec![2, 32], f32s(&fx["head"]["weight"])));
    ckpt.tensors.insert("model.linear.bias".into(), HostTensor::new(vec![2], f32s(&fx["head"]["bias"])));
    if tuning == "ln" {
        for (name, values) in fx["ln_values"].as_object().unwrap() {
            ckpt.tensors.insert(name.clone(), HostTensor::new(vec![32], f32s(values)));
        }
    }
    let backbone = ckpt.backbone.clone();
    let device = Device::flex();
    let mut detector = Detector::from_checkpoint(ckpt, &device, FloatDType::F32).unwrap();
    let trainable = if tuning == "lora" {
        let lora = &fx["lora"];
        let config = LoraConfig {
            enabled: true,
            target_modules: vec!["q_proj".into(), "out_proj".into()],
            rank: lora["rank"].as_u64().unwrap() as usize,
            alpha: lora["alpha"].as_f64().unwrap(),
            dropout: 0.0,
        };
        attach(&mut detector, &config, 0).unwrap();
        let mut t = Trainable::select(&mut detector, &Selection { lora: true, ..Default::default() }).unwrap();
        for (name, v) in lora["values"].as_object().unwrap() {
            let shape: Vec<usize> =
                v["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            t.get_mut(name)
                .unwrap_or_else(|| panic!("{name}"))
                .set_from_checkpoint(&HostTensor::new(shape, f32s(&v["values"])))
                .unwrap();
        }
        t
    } else {
        let ln_targets = LN_TARGETS.iter().map(|s| s.to_string()).collect();
        Trainable::select(&mut detector, &Selection { ln_targets, ..Default::default() }).unwrap()
    };
    // Both backward paths of the frozen projections: a transposed view of the weight, and
    // the transposed copies kept for training.
    assert!(trainable.backward_through_frozen_projections());
    detector.encoder.keep_transposed_weights(transposed);
    let samples = samples();
    let [h, w] = backbone.pixels.size();
    let images: Vec<String> =
        fx["images"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let mut data = Vec::new();
    for p in &images {
        data.extend(backbone.pixels.values(&load_rgb(&samples.join(p)).unwrap()));
    }
    let pixels = Tensor::from_data(TensorData::new(data, [images.len(), 3, h, w]), &device);
    let labels = fx["labels"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    Setup { detector, trainable, pixels, labels }
}

fn f32s(v: &Value) -> Vec<f32> {
    floats(v).into_iter().map(|x| x as f32).collect()
}

fn loss_config(w: &Value) -> LossConfig {
    let get = |k: &str| w.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    LossConfig {
        ce_labels: get("ce_labels"),
        label_smoothing: get("label_smoothing"),
        bce_labels: get("bce_labels"),
        uniformity: get("uniformity"),
        alignment_labels: get("alignment_labels"),
    }
}

#[test]
fn gradients_match_pytorch() {
    let fx = read_json("train/grads.json");
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 16);
    let ad = dfdet::train::autodiff_device(&Device::flex());
    let mut worst = 0.0f64;
    for (case, transposed) in cases.iter().flat_map(|c| [(c, false), (c, true)]) {
        let (tuning, head, loss) =
            (case["tuning"].as_str().unwrap(), case["head"].as_str().unwrap(), case["loss"].as_str().unwrap());
        let what = format!("{tuning}/{head}/{loss}/transposed weights {transposed}");
        let mut s = setup(&fx, tuning, head, transposed);
        let bound = s.trainable.bind(&mut s.detector, &ad);
        let out = s.detector.forward(s.pixels.clone());
        let logits: Vec<f32> = dfdet::train::params::host(out.logits.clone()).1;
        let logit_err = rel_err(&logits, &floats(&case["logits"]));
        assert!(logit_err < 1e-5, "{what}: logits rel err {logit_err:e}");
        let loss_out = compute(&loss_config(&case["weights"]), out.logits, out.features, &s.labels);
        let want = case["loss_value"].as_f64().unwrap();
        let loss_err = (loss_out.values.total - want).abs() / want.abs().max(1e-12);
        assert!(loss_err < 1e-4, "{what}: loss {} vs {want}", loss_out.values.total);
        let grads = loss_out.total.backward();
        let got = s.trainable.gradients(&bound, &grads);
        let expected = case["grads"].as_object().unwrap();
        let names: Vec<&str> = s.trainable.params.iter().map(|p| p.name.as_str()).collect();
        let mut want_names: Vec<&str> = expected.keys().map(String::as_str).collect();
        let mut have = names.clone();
        want_names.sort_unstable();
        have.sort_unstable();
        assert_eq!(have, want_names, "{what}: trainable tensors");
        for (p, g) in s.trainable.params.iter().zip(&got) {
            let zeros = vec![0.0; p.data.len()];
            let g = p.to_checkpoint(g.as_ref().unwrap_or(&zeros));
            let e = &expected[&p.name];
            let shape: Vec<usize> =
                e["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            assert_eq!(g.shape, shape, "{what}: {}", p.name);
            let err = rel_err(&g.data, &floats(&e["grad"]));
            assert!(err <= 1e-4, "{what}: {} gradient rel err {err:e}", p.name);
            worst = worst.max(err);
        }
        eprintln!("{what}: loss {:.6} (ref {want:.6}), {} tensors", loss_out.values.total, got.len());
    }
    eprintln!("worst gradient rel err {worst:e}");
}

#[test]
fn ln_tuning_selects_every_layer_norm_and_the_head() {
    let fx = read_json("train/grads.json");
    let s = setup(&fx, "ln", "LinearNorm", false);
    // tiny CLIP: 2 layers -> 2 * 2 + 2 LayerNorms of 32, x2 (weight, bias), + head 2 * 32 + 2.
    assert_eq!(s.trainable.numel(), 6 * 2 * 32 + 66);
    assert!(s.trainable.get("vision_model.pre_layrnorm.weight").is_some());
    let decayed: Vec<&str> = s.trainable.params.iter().filter(|p| p.decay).map(|p| p.name.as_str()).collect();
    assert_eq!(decayed, ["model.linear.weight"]);
    let _ = Path::new("");
    // Transposed projection weights pay only when the backward pass goes through frozen
    // projections: not for linear probing (no encoder backward), not when they train.
    let mut detector = s.detector;
    for (selection, keep) in [
        (Selection::default(), false),
        (Selection { full: true, ..Default::default() }, false),
        (
            Selection { ln_targets: vec!["layer_norm1".into()], unfreeze: vec!["fc1".into()], ..Default::default() },
            false,
        ),
        (Selection { ln_targets: vec!["layer_norm1".into()], ..Default::default() }, true),
    ] {
        let t = Trainable::select(&mut detector, &selection).unwrap();
        assert_eq!(t.backward_through_frozen_projections(), keep, "{selection:?}");
    }
}
