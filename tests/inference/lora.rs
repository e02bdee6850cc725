//! LoRA on GenD's DINOv3 and Perception Encoder against peft 0.15.2 itself: the tiny reference
//! models with peft's adapters (A and B random, so that neither hides behind a zero), made by
//! scripts/fixtures/make_lora_fixtures.py; dfdet puts adapters on the modules the same targets
//! match, loads peft's A and B into them by name and shape, and must give peft's outputs
//! (eval mode, no dropout).

use burn::prelude::*;
use dfdet::model::lora::{Lora, add_adapters};
use dfdet::model::params::{Entry, Loader, is_adapter};
use dfdet::model::pe::{Pe, PeConfig};
use dfdet::model::tensors::TensorMap;

use crate::common::{fixtures, read_json};
use crate::dinov3::{pixels, read, tiny_dinov3};

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn max_diff(got: &[f32], want: &serde_json::Value) -> f32 {
    let want: Vec<f32> = want
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(got.len(), want.len());
    got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

/// Zero adapters of `rank` and peft's scaling, to be filled from the fixture.
fn zeros(rank: usize, alpha: f64, device: &Device) -> impl FnMut(usize, usize) -> Lora + '_ {
    move |d_in, d_out| Lora {
        lora_a: burn::module::Param::from_tensor(Tensor::zeros([d_in, rank], device)),
        lora_b: burn::module::Param::from_tensor(Tensor::zeros([rank, d_out], device)),
        scaling: alpha / rank as f64,
        dropout_mask: None,
    }
}

/// The adapters' tensors of a walk filled from `adapters` (every other tensor left as loaded).
fn fill_adapters<'a>(
    loader: &'a Loader,
    adapters: &'a mut TensorMap,
) -> impl FnMut(Entry<'_>) -> dfdet::Result<()> + 'a {
    move |entry| if is_adapter(entry.name) { loader.fill(adapters, entry) } else { Ok(()) }
}

#[test]
fn dinov3_lora_matches_peft() {
    let want = read_json("lora_outputs.json");
    let fx = &want["dinov3"];
    let device = Device::flex();
    let (dir, cfg, mut model) = tiny_dinov3(&device);
    let plain: Vec<f32> = model.forward(pixels(&dir, &device)).into_data().try_to_vec::<f32>().unwrap();
    let effect = max_diff(&plain, &fx["pooler_output"]);
    assert!(effect > 1e-2, "the adapters change the output ({effect})");

    let (rank, alpha) = (fx["rank"].as_u64().unwrap() as usize, fx["alpha"].as_f64().unwrap());
    let mut adapted = add_adapters(model.sites(&cfg, ""), &strings(&fx["targets"]), &mut zeros(rank, alpha, &device));
    adapted.sort();
    assert_eq!(adapted, strings(&fx["modules"]), "the modules peft adapted");
    let mut adapters = read(&fixtures().join("lora/dinov3.safetensors"));
    model.visit_params(&cfg, "", &mut fill_adapters(&Loader { device: device.clone() }, &mut adapters)).unwrap();
    adapters.finish().expect("every adapter of the fixture is used");

    let pooled: Vec<f32> = model.forward(pixels(&dir, &device)).into_data().try_to_vec::<f32>().unwrap();
    let diff = max_diff(&pooled, &fx["pooler_output"]);
    eprintln!(
        "DINOv3 + LoRA ({} modules) vs peft: pooler_output max |diff| {diff:e} (LoRA's effect {effect})",
        adapted.len()
    );
    assert!(diff <= 1e-4, "pooler_output: max |diff| {diff}");
}

#[test]
fn pe_lora_matches_peft() {
    let want = read_json("lora_outputs.json");
    let fx = &want["pe"];
    let dir = fixtures().join("tiny-pe");
    let cfg = PeConfig::from_json(&dir.join("config.json")).unwrap();
    let device = Device::flex();
    let loader = Loader { device: device.clone() };
    let mut weights = read(&dir.join("model.safetensors"));
    let mut model = Pe::load(&loader, &mut weights, &cfg, "").unwrap();
    let plain: Vec<f32> = model.forward(pixels(&dir, &device)).into_data().try_to_vec::<f32>().unwrap();
    let effect = max_diff(&plain, &fx["features"]);
    assert!(effect > 1e-2, "the adapters change the output ({effect})");

    let (rank, alpha) = (fx["rank"].as_u64().unwrap() as usize, fx["alpha"].as_f64().unwrap());
    let mut adapted = add_adapters(model.sites(""), &strings(&fx["targets"]), &mut zeros(rank, alpha, &device));
    adapted.sort();
    // peft's choice, the patch convolution (`lora.Conv2d`) included.
    assert_eq!(adapted, strings(&fx["modules"]), "the modules peft adapted");
    assert!(adapted.contains(&"patch_embed.proj".to_string()));
    let mut adapters = read(&fixtures().join("lora/pe.safetensors"));
    model.visit_params(&cfg, "", &mut fill_adapters(&loader, &mut adapters)).unwrap();
    adapters.finish().expect("every adapter of the fixture is used");

    let features: Vec<f32> = model.forward(pixels(&dir, &device)).into_data().try_to_vec::<f32>().unwrap();
    let diff = max_diff(&features, &fx["features"]);
    eprintln!("PE + LoRA ({} modules) vs peft: feature max |diff| {diff:e} (LoRA's effect {effect})", adapted.len());
    assert!(diff <= 1e-4, "features: max |diff| {diff}");
}
