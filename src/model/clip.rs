//! The CLIP vision transformer (HF `CLIPVisionModel`), as METHOD.md §1 specifies it.
//!
//! Module paths mirror Hugging Face's weight names (`vision_model.encoder.layers.{i}.self_attn.q_proj`,
//! the `pre_layrnorm` typo included) so that a checkpoint maps onto it one to one.

use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::prelude::*;
use burn::tensor::activation::gelu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::FloatDType;

use super::config::EncoderConfig;
use super::fused::softmax_last;
use super::checkpoint::{HostTensor, TensorMap};
use crate::Result;

/// Builds burn tensors from checkpoint tensors, on one device and in one float dtype.
#[derive(Debug, Clone)]
pub struct Loader {
    pub device: Device,
    pub dtype: FloatDType,
}

impl Loader {
    /// A tensor of rank `D` from host data, cast to the loader's dtype.
    pub fn tensor<const D: usize>(&self, t: HostTensor) -> Tensor<D> {
        let data = TensorData::new(t.data, t.shape);
        let x = Tensor::<D>::from_data(data, &self.device);
        if self.dtype == FloatDType::F32 { x } else { x.cast(self.dtype) }
    }

    /// `key` from `map`, with its shape checked.
    pub fn take<const D: usize>(&self, map: &mut TensorMap, key: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        Ok(self.tensor(map.take(key, &shape)?))
    }

    /// An `nn.Linear` (PyTorch weight `[out, in]`) as burn's `Linear` (weight `[in, out]`).
    pub fn linear(&self, map: &mut TensorMap, prefix: &str, d_in: usize, d_out: usize) -> Result<Linear> {
        let w = map.take(&format!("{prefix}.weight"), &[d_out, d_in])?;
        // Transposed once here, on the host, so that every forward multiplies contiguous memory.
        let w = HostTensor { shape: vec![d_in, d_out], data: transpose(&w.data, d_out, d_in) };
        let b = map.take(&format!("{prefix}.bias"), &[d_out])?;
        Ok(Linear { weight: Param::from_tensor(self.tensor(w)), bias: Some(Param::from_tensor(self.tensor(b))) })
    }

    /// An `nn.LayerNorm` with weight and bias.
    pub fn layer_norm(&self, map: &mut TensorMap, prefix: &str, d: usize, eps: f64) -> Result<LayerNorm> {
        let mut ln = LayerNormConfig::new(d).with_epsilon(eps).init(&self.device);
        ln.gamma = Param::from_tensor(self.take(map, &format!("{prefix}.weight"), [d])?);
        ln.beta = Some(Param::from_tensor(self.take(map, &format!("{prefix}.bias"), [d])?));
        Ok(ln)
    }
}

/// Row-major `[rows, cols]` -> `[cols, rows]`, in 32 x 32 tiles (a plain double loop strides
/// through memory on every write; this runs at load time over every weight).
pub(crate) fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0.0; data.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = data[r * cols + c];
                }
            }
        }
    }
    out
}

/// `CLIPVisionEmbeddings`: patch embedding, class token, position embedding.
#[derive(Module, Debug)]
pub struct Embeddings {
    /// The patch convolution (kernel = stride = patch, no bias) as a matrix `[3·p·p, d]`.
    pub patch_embedding: Param<Tensor<2>>,
    /// `[d]`
    pub class_embedding: Param<Tensor<1>>,
    /// `[n + 1, d]`
    pub position_embedding: Param<Tensor<2>>,
    patch_size: usize,
}

impl Embeddings {
    fn load(ld: &Loader, map: &mut TensorMap, prefix: &str, cfg: &EncoderConfig) -> Result<Self> {
        let (d, p, c) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels);
        let w = map.take(&format!("{prefix}.patch_embedding.weight"), &[d, c, p, p])?;
        let w = HostTensor { shape: vec![c * p * p, d], data: transpose(&w.data, d, c * p * p) };
        Ok(Self {
            patch_embedding: Param::from_tensor(ld.tensor(w)),
            class_embedding: Param::from_tensor(ld.take(map, &format!("{prefix}.class_embedding"), [d])?),
            position_embedding: Param::from_tensor(ld.take(
                map,
                &format!("{prefix}.position_embedding.weight"),
                [cfg.num_positions(), d],
            )?),
            patch_size: p,
        })
    }

    /// `[b, c, s, s]` -> `[b, n + 1, d]`
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        let [b, c, h, w] = pixels.dims();
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        // A stride-p convolution with a p×p kernel is a matmul over non-overlapping patches.
        let patches = pixels
            .reshape([b, c, gh, p, gw, p]) // [b, c, gh, p, gw, p]
            .permute([0, 2, 4, 1, 3, 5]) // [b, gh, gw, c, p, p]
            .reshape([b, gh * gw, c * p * p]); // [b, n, c·p·p]
        let patches = patches.matmul(self.patch_embedding.val().unsqueeze::<3>()); // [b, n, d]
        let d = patches.dims()[2];
        let class = self.class_embedding.val().reshape([1, 1, d]).expand([b as i64, 1, d as i64]); // [b, 1, d]
        let tokens = Tensor::cat(vec![class, patches], 1); // [b, n + 1, d]
        tokens + self.position_embedding.val().unsqueeze::<3>() // [b, n + 1, d]
    }
}

/// `CLIPAttention`: multi-head self-attention, all projections with bias.
#[derive(Module, Debug)]
pub struct SelfAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    /// LoRA adapters on the projections while training with LoRA; none otherwise (a trained
    /// checkpoint holds them merged into the projection weights).
    pub lora: AttentionLora,
    /// Training only: the weights of q, k, v and out as contiguous `[out, in]` copies, which
    /// make the backward pass's products as fast as the forward's (empty otherwise).
    pub weights_t: Vec<Tensor<2>>,
    num_heads: usize,
}

/// The LoRA adapter of each attention projection, if any.
#[derive(Module, Debug, Default)]
pub struct AttentionLora {
    pub q_proj: Option<Lora>,
    pub k_proj: Option<Lora>,
    pub v_proj: Option<Lora>,
    pub out_proj: Option<Lora>,
}

/// A low-rank adapter with peft's semantics: `y = base(x) + B(A(dropout(x))) · scaling`.
#[derive(Module, Debug)]
pub struct Lora {
    /// `lora_A` as `[in, r]` (burn layout; peft's weight is `[r, in]`).
    pub lora_a: Param<Tensor<2>>,
    /// `lora_B` as `[r, out]`.
    pub lora_b: Param<Tensor<2>>,
    /// `alpha / r`.
    pub scaling: f64,
    /// Dropout for the next forward, as a mask already divided by the keep probability:
    /// `[b, t, in]`. `None` (evaluation, or dropout 0) leaves `x` as it is.
    pub dropout_mask: Option<Tensor<3>>,
}

impl Lora {
    /// `[b, t, in]` -> the adapter's addition `[b, t, out]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = match &self.dropout_mask {
            // The last layer computes the class token only: its rows of the mask.
            Some(mask) => {
                let [b, t, d] = x.dims();
                x * mask.clone().slice([0..b, 0..t, 0..d])
            }
            None => x,
        };
        let down = x.matmul(self.lora_a.val().unsqueeze::<3>()); // [b, t, r]
        down.matmul(self.lora_b.val().unsqueeze::<3>()) * self.scaling // [b, t, out]
    }
}

/// A projection plus its adapter, if it has one. `weight_t`: the weight as `[out, in]`, if kept.
fn project(linear: &Linear, weight_t: Option<&Tensor<2>>, lora: &Option<Lora>, x: Tensor<3>) -> Tensor<3> {
    match lora {
        Some(adapter) => apply(linear, weight_t, x.clone()) + adapter.forward(x),
        None => apply(linear, weight_t, x),
    }
}

/// `linear(x)`: one fused matrix product with bias in f32 (its backward pass computes only the
/// input's gradient when the weight is frozen), burn's module otherwise.
fn apply<const D: usize>(linear: &Linear, weight_t: Option<&Tensor<2>>, x: Tensor<D>) -> Tensor<D> {
    match &linear.bias {
        Some(bias) if x.dtype() == burn::tensor::DType::F32 => {
            let w = linear.weight.val();
            let wt = weight_t.cloned().unwrap_or_else(|| w.clone().transpose());
            super::fused::linear(x, w, wt, bias.val())
        }
        _ => linear.forward(x),
    }
}

/// `weight` `[in, out]` as a contiguous `[out, in]` tensor.
fn transposed_copy(weight: Tensor<2>) -> Tensor<2> {
    let device = weight.device();
    let [rows, cols] = weight.dims();
    let values = weight.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 values");
    Tensor::from_data(TensorData::new(transpose(&values, rows, cols), [cols, rows]), &device)
}

impl SelfAttention {
    fn load(ld: &Loader, map: &mut TensorMap, prefix: &str, cfg: &EncoderConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            q_proj: ld.linear(map, &format!("{prefix}.q_proj"), d, d)?,
            k_proj: ld.linear(map, &format!("{prefix}.k_proj"), d, d)?,
            v_proj: ld.linear(map, &format!("{prefix}.v_proj"), d, d)?,
            out_proj: ld.linear(map, &format!("{prefix}.out_proj"), d, d)?,
            lora: AttentionLora::default(),
            weights_t: Vec::new(),
            num_heads: cfg.num_attention_heads,
        })
    }

    /// `[b, t, d]` -> `[b, t, d]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_queries(x.clone(), x)
    }

    /// Attention of the queries from `xq` (`[b, tq, d]`) over the keys and values from `x`
    /// (`[b, t, d]`): `[b, tq, d]`.
    pub fn forward_queries(&self, xq: Tensor<3>, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let tq = xq.dims()[1];
        let (h, hd) = (self.num_heads, d / self.num_heads);
        let heads = |y: Tensor<3>, n: usize| y.reshape([b, n, h, hd]).swap_dims(1, 2); // [b, h, n, hd]
        let wt = |i: usize| self.weights_t.get(i);
        let q = heads(project(&self.q_proj, wt(0), &self.lora.q_proj, xq), tq);
        let k = heads(project(&self.k_proj, wt(1), &self.lora.k_proj, x.clone()), t);
        let v = heads(project(&self.v_proj, wt(2), &self.lora.v_proj, x), t);
        // softmax(q kᵀ · hd^-0.5) v, the scale HF applies to q.
        let scale = (hd as f64).powf(-0.5);
        let ctx = if q.is_tracked() {
            // Training: burn's autodiff differentiates attention through its generic fallback
            // (scores scaled after the product, softmax as five operations); here q is scaled
            // (smaller than the scores) and softmax is one fused operation with its backward.
            let scores = (q * scale).matmul(k.swap_dims(2, 3)); // [b, h, tq, t]
            softmax_last(scores).matmul(v) // [b, h, tq, hd]
        } else {
            let opts = AttentionModuleOptions { scale: Some(scale), softcap: None, is_causal: false };
            attention(q, k, v, None, None, opts) // [b, h, tq, hd]
        };
        project(&self.out_proj, wt(3), &self.lora.out_proj, ctx.swap_dims(1, 2).reshape([b, tq, d])) // [b, tq, d]
    }
}

/// `CLIPMLP`: `fc1 -> quick_gelu -> fc2`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
    /// Training only: fc1's and fc2's weights as `[out, in]` (see [`SelfAttention::weights_t`]).
    pub weights_t: Vec<Tensor<2>>,
    quick: bool,
}

impl Mlp {
    fn load(ld: &Loader, map: &mut TensorMap, prefix: &str, cfg: &EncoderConfig) -> Result<Self> {
        let (d, m) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            fc1: ld.linear(map, &format!("{prefix}.fc1"), d, m)?,
            fc2: ld.linear(map, &format!("{prefix}.fc2"), m, d)?,
            weights_t: Vec::new(),
            quick: cfg.hidden_act == "quick_gelu",
        })
    }

    /// `[b, t, d]` -> `[b, t, d]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = apply(&self.fc1, self.weights_t.first(), x); // [b, t, m]
        let x = if self.quick { quick_gelu(x) } else { gelu(x) };
        apply(&self.fc2, self.weights_t.get(1), x) // [b, t, d]
    }
}

/// `x · sigmoid(1.702 x)`, the activation of the OpenAI CLIP checkpoints (one fused pass).
pub fn quick_gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    super::fused::quick_gelu(x)
}

/// `CLIPEncoderLayer`: pre-norm attention and MLP blocks with residuals.
#[derive(Module, Debug)]
pub struct EncoderLayer {
    pub self_attn: SelfAttention,
    pub layer_norm1: LayerNorm,
    pub mlp: Mlp,
    pub layer_norm2: LayerNorm,
    eps: f64,
}

impl EncoderLayer {
    fn load(ld: &Loader, map: &mut TensorMap, prefix: &str, cfg: &EncoderConfig) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            self_attn: SelfAttention::load(ld, map, &format!("{prefix}.self_attn"), cfg)?,
            layer_norm1: ld.layer_norm(map, &format!("{prefix}.layer_norm1"), d, eps)?,
            mlp: Mlp::load(ld, map, &format!("{prefix}.mlp"), cfg)?,
            layer_norm2: ld.layer_norm(map, &format!("{prefix}.layer_norm2"), d, eps)?,
            eps,
        })
    }

    /// `[b, t, d]` -> `[b, t, d]`
    pub fn forward(&self, h: Tensor<3>) -> Tensor<3> {
        let h = h.clone() + self.self_attn.forward(norm(&self.layer_norm1, self.eps, h));
        h.clone() + self.mlp.forward(norm(&self.layer_norm2, self.eps, h))
    }

    /// The layer's output at the class token only, `[b, t, d]` -> `[b, 1, d]`: what the last
    /// layer must compute for `pooler_output` (keys and values still come from every token).
    pub fn forward_class_token(&self, h: Tensor<3>) -> Tensor<3> {
        let [b, _, d] = h.dims();
        let x = norm(&self.layer_norm1, self.eps, h.clone()); // [b, t, d]
        let xq = x.clone().slice([0..b, 0..1, 0..d]); // [b, 1, d]
        let h = h.slice([0..b, 0..1, 0..d]) + self.self_attn.forward_queries(xq, x); // [b, 1, d]
        h.clone() + self.mlp.forward(norm(&self.layer_norm2, self.eps, h))
    }
}

/// A LayerNorm as one fused operation in f32 (burn's module otherwise, e.g. in bf16).
fn norm<const D: usize>(ln: &LayerNorm, eps: f64, x: Tensor<D>) -> Tensor<D> {
    match &ln.beta {
        Some(beta) if x.dtype() == burn::tensor::DType::F32 => super::fused::layer_norm(x, ln.gamma.val(), beta.val(), eps),
        _ => ln.forward(x),
    }
}

/// `CLIPEncoder`: the stack of layers.
#[derive(Module, Debug)]
pub struct Encoder {
    pub layers: Vec<EncoderLayer>,
}

/// `CLIPVisionTransformer`: the feature extractor. Its output is `pooler_output`.
#[derive(Module, Debug)]
pub struct VisionTransformer {
    pub embeddings: Embeddings,
    pub pre_layrnorm: LayerNorm,
    pub encoder: Encoder,
    pub post_layernorm: LayerNorm,
    eps: f64,
}

impl VisionTransformer {
    /// Takes the `vision_model.*` tensors out of `map` (HF names), checking every shape.
    pub fn load(ld: &Loader, map: &mut TensorMap, cfg: &EncoderConfig) -> Result<Self> {
        cfg.validate()?;
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let embeddings = Embeddings::load(ld, map, "vision_model.embeddings", cfg)?;
        let pre_layrnorm = ld.layer_norm(map, "vision_model.pre_layrnorm", d, eps)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::load(ld, map, &format!("vision_model.encoder.layers.{i}"), cfg))
            .collect::<Result<Vec<_>>>()?;
        let post_layernorm = ld.layer_norm(map, "vision_model.post_layernorm", d, eps)?;
        Ok(Self { embeddings, pre_layrnorm, encoder: Encoder { layers }, post_layernorm, eps })
    }

    /// Keeps `[out, in]` copies of the encoder's projection weights for the backward pass, or
    /// drops them. For training with frozen projections (LN-tuning, LoRA): each backward
    /// product then reads its weight in the order the matrix kernel wants instead of
    /// re-packing it, for one more copy of the weights in memory (1.2 GB for ViT-L/14 in f32).
    /// Only frozen weights may be kept: a trained weight would leave its copy stale.
    pub fn keep_transposed_weights(&mut self, keep: bool) {
        for layer in &mut self.encoder.layers {
            let (attn, mlp) = (&mut layer.self_attn, &mut layer.mlp);
            attn.weights_t.clear();
            mlp.weights_t.clear();
            if keep {
                for linear in [&attn.q_proj, &attn.k_proj, &attn.v_proj, &attn.out_proj] {
                    attn.weights_t.push(transposed_copy(linear.weight.val()));
                }
                for linear in [&mlp.fc1, &mlp.fc2] {
                    mlp.weights_t.push(transposed_copy(linear.weight.val()));
                }
            }
        }
    }

    /// The hidden states after the last layer: `[b, c, s, s]` -> `[b, n + 1, d]`.
    pub fn last_hidden_state(&self, pixels: Tensor<4>) -> Tensor<3> {
        let mut h = norm(&self.pre_layrnorm, self.eps, self.embeddings.forward(pixels)); // [b, n + 1, d]
        for layer in &self.encoder.layers {
            h = layer.forward(h);
        }
        h
    }

    /// `pooler_output = post_layernorm(h[:, 0])`: `[b, c, s, s]` -> `[b, d]`. Only the class
    /// token of the last layer is computed (the other tokens' outputs are never used).
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<2> {
        let mut h = norm(&self.pre_layrnorm, self.eps, self.embeddings.forward(pixels)); // [b, n + 1, d]
        let Some((last, layers)) = self.encoder.layers.split_last() else {
            let [b, _, d] = h.dims();
            return norm(&self.post_layernorm, self.eps, h.slice([0..b, 0..1, 0..d]).reshape([b, d]));
        };
        for layer in layers {
            h = layer.forward(h);
        }
        let cls = last.forward_class_token(h); // [b, 1, d]
        let [b, _, d] = cls.dims();
        norm(&self.post_layernorm, self.eps, cls.reshape([b, d])) // [b, d]
    }
}

/// Every `vision_model.*` tensor the encoder loads, with its PyTorch shape.
pub fn tensor_shapes(cfg: &EncoderConfig) -> Vec<(String, Vec<usize>)> {
    let (d, m, p, c) = (cfg.hidden_size, cfg.intermediate_size, cfg.patch_size, cfg.num_channels);
    let mut out = vec![
        ("vision_model.embeddings.patch_embedding.weight".to_string(), vec![d, c, p, p]),
        ("vision_model.embeddings.class_embedding".to_string(), vec![d]),
        ("vision_model.embeddings.position_embedding.weight".to_string(), vec![cfg.num_positions(), d]),
    ];
    let ln = |out: &mut Vec<(String, Vec<usize>)>, name: String| {
        out.push((format!("{name}.weight"), vec![d]));
        out.push((format!("{name}.bias"), vec![d]));
    };
    ln(&mut out, "vision_model.pre_layrnorm".into());
    for i in 0..cfg.num_hidden_layers {
        let l = format!("vision_model.encoder.layers.{i}");
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            out.push((format!("{l}.self_attn.{proj}.weight"), vec![d, d]));
            out.push((format!("{l}.self_attn.{proj}.bias"), vec![d]));
        }
        ln(&mut out, format!("{l}.layer_norm1"));
        out.push((format!("{l}.mlp.fc1.weight"), vec![m, d]));
        out.push((format!("{l}.mlp.fc1.bias"), vec![m]));
        out.push((format!("{l}.mlp.fc2.weight"), vec![d, m]));
        out.push((format!("{l}.mlp.fc2.bias"), vec![d]));
        ln(&mut out, format!("{l}.layer_norm2"));
    }
    ln(&mut out, "vision_model.post_layernorm".into());
    out
}
