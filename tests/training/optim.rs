//! AdamW, the learning-rate schedules and slerp against PyTorch and the reference's functions.
//! Expected numbers: `scripts/fixtures/make_train_fixtures.py`.

use std::collections::BTreeMap;

use burn::prelude::*;
use dfdet::rng::Rng;
use dfdet::train::optim::{AdamW, AdamWConfig};
use dfdet::train::params::{Layout, TrainParam, Trainable, host};
use dfdet::train::schedule::{Schedule, Scheduler};
use dfdet::train::slerp::{SlerpPlan, slerp};
use serde_json::Value;

use crate::common::read_json;

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    floats(v).into_iter().map(|x| x as f32).collect()
}

fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    diff / scale.max(1e-30)
}

#[test]
fn adamw_matches_torch_with_two_groups() {
    let fx = read_json("train/adamw.json");
    let shapes: BTreeMap<String, Vec<usize>> = serde_json::from_value(fx["shapes"].clone()).unwrap();
    let names: Vec<&String> = shapes.keys().collect();
    let mut params = Trainable {
        params: names
            .iter()
            .map(|&n| TrainParam {
                name: n.clone(),
                shape: shapes[n].clone(),
                data: f32s(&fx["init"][n]),
                decay: dfdet::train::params::decays(n),
                layout: Layout::Same,
            })
            .collect(),
    };
    assert_eq!(params.params.iter().filter(|p| p.decay).count(), 2);
    let config = AdamWConfig { betas: [0.9, 0.999], eps: 1e-8, weight_decay: fx["weight_decay"].as_f64().unwrap() };
    let mut opt = AdamW::new(config, &params);
    let lrs = floats(&fx["lrs"]);
    let schedule =
        Schedule { lr: 3e-3, min_lr: 1e-4, scheduler: Some(Scheduler::Cosine), total: 10, warmup: 0, cycle: 0 };
    for (step, grads) in fx["grads"].as_array().unwrap().iter().enumerate() {
        let lr = schedule.lr_at(step);
        assert!((lr - lrs[step]).abs() <= 1e-12 * lrs[step], "lr at {step}: {lr} vs {}", lrs[step]);
        let g: Vec<Option<Vec<f32>>> = names.iter().map(|&n| Some(f32s(&grads[n]))).collect();
        opt.step(&mut params, &g, lr);
        if let Some(after) = fx["after"].get((step + 1).to_string()) {
            for p in &params.params {
                let err = rel_err(&p.data, &floats(&after[&p.name]));
                assert!(err < 1e-6, "step {}: {} rel err {err:e}", step + 1, p.name);
            }
        }
    }
    for (p, st) in params.params.iter().zip(&opt.state) {
        let m = &fx["moments"][&p.name];
        assert!(rel_err(&st.exp_avg, &floats(&m["exp_avg"])) < 1e-6, "{} exp_avg", p.name);
        assert!(rel_err(&st.exp_avg_sq, &floats(&m["exp_avg_sq"])) < 1e-6, "{} exp_avg_sq", p.name);
        assert_eq!(st.step, 10);
    }
}

#[test]
fn adamw_leaves_tensors_without_gradient_alone() {
    let mut params = Trainable {
        params: vec![TrainParam {
            name: "w".into(),
            shape: vec![2],
            data: vec![1.0, 2.0],
            decay: true,
            layout: Layout::Same,
        }],
    };
    let mut opt = AdamW::new(AdamWConfig { betas: [0.9, 0.999], eps: 1e-8, weight_decay: 0.1 }, &params);
    opt.step(&mut params, &[None], 1e-2);
    assert_eq!(params.params[0].data, [1.0, 2.0]);
    assert_eq!(opt.state[0].step, 0);
}

#[test]
fn schedules_match_torch_step_by_step() {
    let fx = read_json("train/schedule.json");
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let schedule = Schedule {
            lr: case["lr"].as_f64().unwrap(),
            min_lr: case["min_lr"].as_f64().unwrap(),
            scheduler: Some(if case["cycle"].is_null() { Scheduler::Cosine } else { Scheduler::Cyclic }),
            total: case["total"].as_u64().unwrap() as usize,
            warmup: case["warmup"].as_u64().unwrap() as usize,
            cycle: case["cycle"].as_u64().unwrap_or(0) as usize,
        };
        for (step, want) in floats(&case["lrs"]).into_iter().enumerate() {
            let got = schedule.lr_at(step);
            assert!((got - want).abs() <= 1e-9 * want, "{name} step {step}: {got} vs {want}");
        }
    }
}

#[test]
fn slerp_matches_the_reference_function() {
    let fx = read_json("train/slerp.json");
    let device = Device::flex();
    for case in fx["cases"].as_array().unwrap() {
        let (n, d) = (case["n"].as_u64().unwrap() as usize, case["d"].as_u64().unwrap() as usize);
        let t = |k: &str, shape: [usize; 2]| Tensor::<2>::from_data(TensorData::new(f32s(&case[k]), shape), &device);
        let out = slerp(t("a", [n, d]), t("b", [n, d]), t("t", [n, 1]));
        let err = rel_err(&host(out).1, &floats(&case["out"]));
        assert!(err < 1e-4, "slerp {n}x{d}: rel err {err:e}");
    }
}

#[test]
fn slerp_augmentation_pairs_within_classes() {
    let labels = [0, 1, 0, 0, 1, 2];
    let plan = SlerpPlan::draw(&labels, [0.2, 0.4], &mut Rng::new(9));
    // Class 2 has a single sample: left alone.
    assert_eq!(plan.rows.len(), 5);
    assert!(!plan.rows.contains(&5));
    for ((&r, &p), &t) in plan.rows.iter().zip(&plan.partners).zip(&plan.t) {
        assert_eq!(labels[r], labels[p]);
        assert!((0.2..0.4).contains(&t));
    }
    // Untouched rows pass through exactly; t = 0 gives back the normalised row.
    let device = Device::flex();
    let x: Vec<f32> = (0..12).map(|i| (i as f32 * 0.7).sin() * 3.0).collect();
    let feats = Tensor::<2>::from_data(TensorData::new(x.clone(), [6, 2]), &device);
    let out = host(plan.apply(feats.clone())).1;
    assert_eq!(&out[10..12], &x[10..12]);
    let zero = SlerpPlan { rows: vec![1, 4], partners: vec![4, 1], t: vec![0.0, 0.0] };
    let out = host(zero.apply(feats)).1;
    let norm = (x[2] * x[2] + x[3] * x[3]).sqrt();
    assert!((out[2] - x[2] / norm).abs() < 1e-5 && (out[3] - x[3] / norm).abs() < 1e-5);
    assert_eq!(&out[0..2], &x[0..2]);
}
