//! The DINOv3 encoder (GenD's `GenD_DINOv3_L` backbone) against transformers 4.56.2's
//! `DINOv3ViTModel`: a tiny random model and its outputs on six sample crops, made by
//! scripts/fixtures/make_gend_encoder_fixtures.py with GenD's pinned stack. The pixels are the
//! reference processor's, so that this checks the encoder alone.

use burn::prelude::*;
use dfdet::model::dinov3::{Dinov3, Dinov3Config};
use dfdet::model::params::Loader;
use dfdet::model::tensors::{HostTensor, TensorMap};

use crate::common::{fixtures, read_json};

/// Every tensor of a safetensors fixture, as f32 (the other encoders' tests read theirs with
/// it too).
pub fn read(path: &std::path::Path) -> TensorMap {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut map = TensorMap::new(path.to_path_buf());
    for (name, view) in st.iter() {
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
        let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        map.insert(name.to_string(), HostTensor::new(view.shape().to_vec(), data));
    }
    map
}

/// The tiny DINOv3 fixture on `device`: its folder, config and model.
pub fn tiny_dinov3(device: &Device) -> (std::path::PathBuf, Dinov3Config, Dinov3) {
    let dir = fixtures().join("tiny-dinov3");
    let cfg = Dinov3Config::from_hf_config(&dir.join("config.json")).unwrap();
    let loader = Loader { device: device.clone() };
    let model = Dinov3::load(&loader, &mut read(&dir.join("model.safetensors")), &cfg, "").unwrap();
    (dir, cfg, model)
}

/// A fixture folder's `pixel_values` `[b, 3, h, w]` on `device`.
pub fn pixels(dir: &std::path::Path, device: &Device) -> Tensor<4> {
    let x = read(&dir.join("pixels.safetensors")).remove("pixel_values").unwrap();
    let shape = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    Tensor::<4>::from_data(TensorData::new(x.data, shape), device)
}

pub fn rows(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect()
}

/// Makes every vector parameter whose name `select` picks track its gradient, through one walk
/// over the model's parameters (`visit_params`): the tracked tensors, named, in walk order.
pub fn track_vectors(
    visit_params: impl FnOnce(&mut dfdet::model::params::Visit<'_>) -> dfdet::Result<()>,
    select: impl Fn(&str) -> bool,
) -> Vec<(String, Tensor<1>)> {
    use burn::module::Param;
    use dfdet::model::params::Slot;
    let mut tracked = Vec::new();
    visit_params(&mut |entry| {
        if select(entry.name) {
            let Slot::Vector(param) = entry.slot else { panic!("{} is not a vector", entry.name) };
            // Tracked on the autodiff device, whichever device the model was loaded on: as
            // training binds its parameters, the rest staying plain (frozen) tensors.
            let t = Tensor::<1>::from_data(param.val().into_data(), &Device::flex().autodiff()).require_grad();
            tracked.push((entry.name.to_string(), t.clone()));
            *param = Param::from_tensor(t);
        }
        Ok(())
    })
    .unwrap();
    tracked
}

pub fn max_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

/// bf16 on DINOv3 is PyTorch's autocast, as GenD trains and evaluates (bf16-mixed):
/// `make_gend_bf16_fixtures.py` records transformers 4.56's outputs under autocast with CPU
/// flash attention. Layer 0 of crop 0, step by step, is PyTorch's bit for bit but for a bfloat16
/// step here and there (f32 LayerNorm and the products' summation order move a rounding now and
/// then). The pooler output (the final LayerNorm's, f32) of most crops agrees to f32 precision;
/// one flipped rounding in a crop moves its output by a fraction of bf16's own distance from f32,
/// which bounds the rest. Both with the weights rounded on every pass (training's way) and made
/// bfloat16 once (inference's).
#[test]
fn dinov3_bf16_matches_pytorch_autocast() {
    use dfdet::model::fused::bf16::Autocast;
    let device = Device::flex();
    let (dir, cfg, mut model) = tiny_dinov3(&device);
    let x = pixels(&dir, &device);
    let [_, c, h, w] = x.dims();
    let want = read_json("dinov3_bf16.json");
    assert_eq!(want["dtypes"]["sdpa"][0], "torch.float32", "autocast casts the rotated queries itself");
    // Where oneDNN multiplies bfloat16 natively, its products sum in another order than the f32
    // kernels this agreement was measured with, so a few more roundings may move: there the
    // bounds are those of flipped roundings only.
    let native = dfdet::model::dtype::native_bf16_products();
    // How many bfloat16 steps (of the larger magnitude) apart two values are.
    let bf16_steps =
        |a: f32, b: f32| (a - b).abs() / (f32::from_bits(a.abs().max(b.abs()).to_bits() & 0x7f80_0000) / 128.0);

    let _autocast = Autocast::bf16(true);
    let x0 = x.clone().slice([0..1, 0..c, 0..h, 0..w]);
    let (cos, sin) = model.rope(&x0);
    let layer = &model.layer[0];
    let emb = model.embeddings.forward(x0);
    let normed = dfdet::model::fused::norm(&layer.norm1, cfg.layer_norm_eps, emb.clone());
    let steps = [
        ("embeddings", emb.clone()),
        ("layer.0.attention.q_proj", layer.attention.q_proj.forward(normed.clone())),
        ("layer.0.attention", layer.attention.forward(normed, &cos, &sin)),
        ("layer.0", layer.forward(emb, &cos, &sin)),
    ];
    for (name, got) in steps {
        let got: Vec<f32> = got.into_data().try_to_vec::<f32>().unwrap();
        let want = rows(&want["layer0_bf16_mixed"][name]).concat();
        assert_eq!(got.len(), want.len(), "{name}");
        let equal = got.iter().zip(&want).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
        let worst = got.iter().zip(&want).map(|(a, b)| bf16_steps(*a, *b)).fold(0.0, f32::max);
        eprintln!(
            "{name}: {equal} of {} values equal to PyTorch's, at most {worst:.2} bfloat16 steps apart",
            got.len()
        );
        assert!(
            equal * 20 >= got.len() * if native { 18 } else { 19 } && worst <= if native { 2.0 } else { 1.0 },
            "{name}: {equal} of {} equal, {worst} steps",
            got.len()
        );
    }

    let (bf16, f32s) = (rows(&want["pooler_bf16_mixed"]).concat(), rows(&want["pooler_f32"]).concat());
    let gap = max_diff(&bf16, &f32s);
    assert!(gap > 1e-3, "the fixture does not exercise bfloat16 ({gap})");
    let d = cfg.hidden_size;
    for rounded_once in [false, true] {
        if rounded_once {
            model.linears_mut().for_each(|l| l.round_weight());
        }
        let pooled: Vec<f32> = model.forward(x.clone()).into_data().try_to_vec::<f32>().unwrap();
        let per_crop: Vec<f32> = pooled.chunks(d).zip(bf16.chunks(d)).map(|(g, w)| max_diff(g, w)).collect();
        eprintln!(
            "weights rounded once {rounded_once}: |Δ| per crop to PyTorch's bf16 {per_crop:?}; bf16 to f32 {gap:.1e}"
        );
        let agreeing = per_crop.iter().filter(|&&e| e <= 1e-6).count();
        assert!(
            native || agreeing * 3 >= per_crop.len() * 2,
            "only {agreeing} of {} crops agree: {per_crop:?}",
            per_crop.len()
        );
        assert!(per_crop.iter().all(|&e| e <= 0.5 * gap), "{per_crop:?} against bf16's {gap}");
    }
}

#[test]
fn dinov3_matches_transformers() {
    let dir = fixtures().join("tiny-dinov3");
    let cfg = Dinov3Config::from_hf_config(&dir.join("config.json")).unwrap();
    assert_eq!((cfg.num_register_tokens, cfg.key_bias, cfg.use_gated_mlp), (4, false, false));
    let device = Device::flex();
    let loader = Loader { device: device.clone() };
    let mut weights = read(&dir.join("model.safetensors"));
    let model = Dinov3::load(&loader, &mut weights, &cfg, "").unwrap();
    weights.finish().expect("every tensor of the checkpoint is used");

    let mut pixels = read(&dir.join("pixels.safetensors"));
    let x = pixels.remove("pixel_values").unwrap();
    let [b, c, h, w] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    let x = Tensor::<4>::from_data(TensorData::new(x.data, [b, c, h, w]), &device);

    let want = read_json("dinov3_outputs.json");
    let hidden = model.last_hidden_state(x.clone());
    let [_, t, d] = hidden.dims();
    assert_eq!(t, 1 + 4 + (h / 16) * (w / 16));
    let first: Vec<f32> = hidden.clone().slice([0..1, 0..t, 0..d]).into_data().try_to_vec::<f32>().unwrap();
    let want_first: Vec<f32> = rows(&want["last_hidden_state_0"]).concat();
    let diff = max_diff(&first, &want_first);
    assert!(diff <= 1e-4, "last_hidden_state of crop 0: max |diff| {diff}");

    let pooled: Vec<f32> = model.forward(x).into_data().try_to_vec::<f32>().unwrap();
    let diff = max_diff(&pooled, &rows(&want["pooler_output"]).concat());
    assert!(diff <= 1e-4, "pooler_output: max |diff| {diff}");

    let patches: Vec<f32> = hidden.slice([0..b, 5..t, 0..d]).mean_dim(1).into_data().try_to_vec::<f32>().unwrap();
    let diff = max_diff(&patches, &rows(&want["patch_mean"]).concat());
    assert!(diff <= 1e-4, "mean of the patch tokens: max |diff| {diff}");
}

#[test]
fn dinov3_pixels_match_the_reference_processor() {
    use dfdet::preprocess::antialias::Dinov3Pixels;
    use dfdet::preprocess::pixels::load_rgb;
    let want = read_json("dinov3_outputs.json");
    let mut pixels = read(&fixtures().join("tiny-dinov3/pixels.safetensors"));
    let reference = pixels.remove("pixel_values").unwrap();
    let [h, w] = [reference.shape[2], reference.shape[3]];
    // The processor's own settings, as the fixture script wrote them.
    let processor = &want["processor"];
    assert_eq!(processor["resample"], 2, "bilinear");
    let ours = Dinov3Pixels::new(h);
    assert_eq!([w, h], ours.size);
    let mean: Vec<f32> =
        processor["image_mean"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    assert_eq!(mean, ours.image_mean);
    let images = want["images"].as_array().unwrap();
    let plane = 3 * h * w;
    let mut worst = 0f32;
    for (k, name) in images.iter().enumerate() {
        let img = load_rgb(&crate::common::samples().join(name.as_str().unwrap())).unwrap();
        let got = ours.pixel_values(&img);
        worst = worst.max(max_diff(&got, &reference.data[k * plane..(k + 1) * plane]));
    }
    // The released checkpoints' size: two crops, 600 values each and the channel sums.
    let big = Dinov3Pixels::new(224);
    let at224 = &want["pixels_224"];
    let indices: Vec<usize> =
        at224["indices"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    for (k, name) in images.iter().take(2).enumerate() {
        let img = load_rgb(&crate::common::samples().join(name.as_str().unwrap())).unwrap();
        let got = big.pixel_values(&img);
        let picked: Vec<f32> = indices.iter().map(|&i| got[i]).collect();
        worst = worst.max(max_diff(&picked, &rows(&at224["values"])[k]));
        for (c, want_sum) in at224["channel_sums"][k].as_array().unwrap().iter().enumerate() {
            let sum: f64 = got[c * 224 * 224..(c + 1) * 224 * 224].iter().map(|&v| f64::from(v)).sum();
            assert!((sum - want_sum.as_f64().unwrap()).abs() < 1e-2, "channel {c} of crop {k}: {sum} vs {want_sum}");
        }
    }
    // f32 throughout, as the reference: what is left is the order of float operations.
    assert!(worst <= 1e-5, "max |diff| {worst}");
    eprintln!("DINOv3 pixels: max |diff| {worst:e} over {} crops", images.len());
}

/// LN-tuning's gradients: the loss `sum(pooler_output * V)` differentiated to every LayerNorm
/// parameter (the `norm1`, `norm2` and final `norm` that LN-tuning trains), against PyTorch in
/// float64, eval mode (no random rescaling of the rotary coordinates).
#[test]
fn dinov3_layer_norm_gradients_match_pytorch() {
    let device = Device::flex().autodiff();
    let (dir, cfg, mut model) = tiny_dinov3(&device);
    let tracked = track_vectors(
        |visit| model.visit_params(&cfg, "", visit),
        |name| name.split('.').any(|part| ["norm1", "norm2", "norm"].contains(&part)),
    );
    let want = &read_json("dinov3_outputs.json")["ln_grad"];
    assert_eq!(tracked.len(), want["grads"].as_object().unwrap().len(), "the LayerNorm parameters");

    let x = read(&dir.join("pixels.safetensors")).remove("pixel_values").unwrap();
    let shape = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    let x = Tensor::<4>::from_data(TensorData::new(x.data, shape), &device);
    let v = rows(&want["v"]);
    let v = Tensor::<2>::from_data(TensorData::new(v.concat(), [v.len(), v[0].len()]), &device);
    let loss = (model.forward(x) * v).sum();
    let value = loss.clone().into_data().try_to_vec::<f32>().unwrap()[0];
    let want_loss = want["loss"].as_f64().unwrap() as f32;
    assert!((value - want_loss).abs() <= 1e-4 * want_loss.abs().max(1.0), "loss {value} vs {want_loss}");
    let grads = loss.backward();
    let mut worst = (0f64, String::new());
    for (name, t) in &tracked {
        let got = t.grad(&grads).unwrap_or_else(|| panic!("no gradient for {name}"));
        let got = got.into_data().try_to_vec::<f32>().unwrap();
        let reference: Vec<f64> = want["grads"][name].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let scale = reference.iter().fold(0f64, |m, r| m.max(r.abs()));
        let diff = got.iter().zip(&reference).fold(0f64, |m, (g, r)| m.max((f64::from(*g) - r).abs()));
        let rel = if scale == 0.0 { diff } else { diff / scale };
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
    }
    // f32 against float64 through two layers: a relative error of a few 1e-6 is expected.
    assert!(worst.0 <= 1e-4, "largest relative gradient error {:e} at {}", worst.0, worst.1);
    eprintln!("DINOv3 LayerNorm gradients: largest relative error {:e} ({})", worst.0, worst.1);
}

/// LN-tuning's gradients in bf16-mixed precision (GenD trains in it): the same loss under
/// autocast, against PyTorch's autocast gradients (`make_gend_bf16_fixtures.py`). On the first
/// five crops, whose forward passes agree with PyTorch's to f32 precision, the gradients agree to
/// f32 precision as well. With the sixth, whose forward pass has one bfloat16 rounding flipped
/// (an f32 LayerNorm's last bits moved it), they stay within a fraction of bf16's own distance
/// from the f32 gradients: the bound of the CLIP step's test, for the same reason.
#[test]
fn dinov3_bf16_mixed_layer_norm_gradients_match_pytorch_autocast() {
    use dfdet::model::fused::bf16::Autocast;
    let device = Device::flex().autodiff();
    let (dir, cfg, _) = tiny_dinov3(&device);
    let all_pixels = pixels(&dir, &device);
    let v_all = rows(&read_json("dinov3_outputs.json")["ln_grad"]["v"]);
    let fixture = read_json("dinov3_bf16.json");
    // Where oneDNN multiplies bfloat16 natively its products sum in another order than the f32
    // kernels the five crops' agreement was measured with: there both cases take the bound.
    let native = dfdet::model::dtype::native_bf16_products();
    // The weights rounded on every pass, and the bfloat16 copies bf16-mixed training makes once
    // (`Encoder::prepare_bf16_mixed`): the same numbers.
    let cases = [("ln_grad_first_5", 5, None), ("ln_grad", 6, Some(0.6))];
    for ((key, crops, bound), copies) in cases.into_iter().flat_map(|c| [(c, false), (c, true)]) {
        // Loaded on the plain device, as training loads the encoder: the frozen weights and
        // biases are untracked, so the products take the frozen (fused) path.
        let mut model = tiny_dinov3(&Device::flex()).2;
        if copies {
            model.linears_mut().for_each(|l| l.keep_bf16_copy(true));
        }
        let tracked = track_vectors(
            |visit| model.visit_params(&cfg, "", visit),
            |name| name.split('.').any(|part| ["norm1", "norm2", "norm"].contains(&part)),
        );
        let want = &fixture[key];
        let v = &v_all[..crops];
        let v = Tensor::<2>::from_data(TensorData::new(v.concat(), [crops, v[0].len()]), &device);
        let [_, c, h, w] = all_pixels.dims();
        let x = all_pixels.clone().slice([0..crops, 0..c, 0..h, 0..w]);
        let _autocast = Autocast::bf16(true);
        let loss = (model.forward(x) * v).sum();
        let value = f64::from(loss.clone().into_data().try_to_vec::<f32>().unwrap()[0]);
        let (bf16_loss, f32_loss) =
            (want["bf16_mixed"]["loss"].as_f64().unwrap(), want["f32"]["loss"].as_f64().unwrap());
        let grads = loss.backward();
        let (mut to_bf16, mut bf16_to_f32, mut scale) = (0f64, 0f64, 0f64);
        for (name, t) in &tracked {
            let got = t.grad(&grads).unwrap_or_else(|| panic!("no gradient for {name}")).into_data();
            let got = got.try_to_vec::<f32>().unwrap();
            let reference = |k: &str| -> Vec<f64> {
                want[k]["grads"][name].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
            };
            let (bf16, f32s) = (reference("bf16_mixed"), reference("f32"));
            for ((g, b), f) in got.iter().zip(&bf16).zip(&f32s) {
                to_bf16 = to_bf16.max((f64::from(*g) - b).abs());
                bf16_to_f32 = bf16_to_f32.max((b - f).abs());
                scale = scale.max(b.abs());
            }
        }
        let ratio = to_bf16 / bf16_to_f32;
        eprintln!(
            "{crops} crops, bfloat16 weight copies {copies}: loss {value} (PyTorch bf16 {bf16_loss}, f32 {f32_loss}); gradients {to_bf16:.2e} from PyTorch's bf16 ({ratio:.2}x of bf16's distance from f32, largest {scale:.2})"
        );
        match bound {
            None if !native => {
                assert!((value - bf16_loss).abs() <= 1e-5 * bf16_loss.abs(), "{crops} crops: loss {value}");
                assert!(to_bf16 <= 1e-5 * scale, "{crops} crops: gradients {to_bf16:e} from PyTorch's bf16");
            }
            _ => {
                let bound = bound.unwrap_or(0.6);
                assert!((value - bf16_loss).abs() <= bound * (bf16_loss - f32_loss).abs(), "loss {value}");
                assert!(ratio <= bound, "gradients {to_bf16:e} from PyTorch's bf16, bf16 to f32 {bf16_to_f32:e}");
            }
        }
    }
}

/// Scores the 32 sample crops with `dfdet predict --weights <weights>` and checks p(fake)
/// against the reference's `[p_real, p_fake]` per crop in `probs` (a fixture file); returns
/// the largest difference.
pub fn assert_predict_matches(weights: &std::path::Path, probs: &str) -> f64 {
    let datasets = crate::common::samples().join("datasets");
    let out = crate::common::dfdet()
        .args(["predict", "--weights", weights.to_str().unwrap(), "--format", "json", datasets.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = read_json(probs);
    let frames = json["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 32);
    let root = crate::common::samples().display().to_string();
    let mut worst = 0.0f64;
    for f in frames {
        let path = f["path"].as_str().unwrap();
        let key = path.strip_prefix(&root).unwrap().trim_start_matches('/');
        let p = want[key][1].as_f64().unwrap_or_else(|| panic!("{key} not in the reference"));
        worst = worst.max((f["p_fake"].as_f64().unwrap() - p).abs());
    }
    assert!(worst <= 1e-4, "{}: max |Δp(fake)| = {worst:e}", weights.display());
    eprintln!("{}: max |Δp(fake)| = {worst:.2e} on 32 crops", weights.display());
    worst
}

/// `dfdet info <weights>`, checked to name the encoder and count what LN-tuning trains.
pub fn assert_info(weights: &std::path::Path, encoder: &str, trainable: usize) {
    let out = crate::common::dfdet().args(["info", weights.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(encoder), "{text}");
    assert!(text.contains(&format!("trainable    {trainable} (")), "{text}");
}

/// A GenD detector on DINOv3, saved by GenD's own class as `yermandy/GenD_DINOv3_L` is
/// (`config.json` naming the backbone, `feature_extractor.backbone.*` tensors), scored by
/// `dfdet predict` on all 32 sample crops: GenD's probabilities, through its own pixels.
#[test]
fn gend_dinov3_folder_scores_like_gend() {
    let weights = fixtures().join("gend-dinov3-tiny");
    assert_predict_matches(&weights, "gend_dinov3_probs.json");
    // LN-tuning trains 2 norms a layer and the final one (GenD's `unfreeze_layers` norm1,
    // norm2, norm), plus the head.
    let (d, layers) = (32, 2);
    assert_info(&weights, "DINOv3, hidden 32, 2 layers", (2 * layers + 1) * 2 * d + 2 * d + 2);
}

/// A DINOv3 checkpoint given a CLIP backbone is refused, naming both.
#[test]
fn a_dinov3_checkpoint_on_a_clip_backbone_is_refused() {
    let weights = fixtures().join("gend-dinov3-tiny");
    let clip = fixtures().join("tiny-clip-p14");
    let err =
        dfdet::model::load_checkpoint(weights.to_str().unwrap(), Some(clip.to_str().unwrap())).unwrap_err().to_string();
    assert!(err.contains("CLIP") && err.contains("backbone.embeddings.cls_token"), "{err}");
}
