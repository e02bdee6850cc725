//! The CLIP vision transformer (HF `CLIPVisionModel`), as docs/method.md §1 specifies it.
//!
//! Module paths mirror Hugging Face's weight names (`vision_model.encoder.layers.{i}.self_attn.q_proj`,
//! the `pre_layrnorm` typo included) so that a checkpoint maps onto it one to one. Each module
//! names its parameters once, in `walk` (see [`super::params`]); loading, [`tensor_shapes`]
//! and training's selection of parameters all walk those.

use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::prelude::*;
use burn::tensor::activation::gelu;

use super::config::{EncoderConfig, HiddenAct};
use super::fused::attention::{attention_bf16, attention_f32};
use super::fused::bf16::{
    activation_bits, autocast_bf16, bits_between_products, frozen, frozen_bf16, product_input, quick_gelu_bf16,
    round_bf16,
};
use super::fused::{norm, norm_for_products};
use super::lora::Lora;
use super::params::{Layout, Loader, Visit, Walker, empty};
use super::tensors::TensorMap;
use crate::Result;

/// Where the encoder's tensors live in a checkpoint: HF's `CLIPVisionModel.vision_model`.
pub const ROOT: &str = "vision_model";
/// The embeddings, under [`ROOT`].
const EMBEDDINGS: &str = "embeddings";
/// The encoder layers, under [`ROOT`].
const LAYERS: &str = "encoder.layers";
/// The attention projections, by name (LoRA's possible targets).
pub const ATTENTION_PROJECTIONS: [&str; 4] = ["q_proj", "k_proj", "v_proj", "out_proj"];
/// The MLP's projections, by name.
pub const MLP_PROJECTIONS: [&str; 2] = ["fc1", "fc2"];

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
    fn skeleton(cfg: &EncoderConfig, device: &Device) -> Self {
        Self {
            patch_embedding: empty(device),
            class_embedding: empty(device),
            position_embedding: empty(device),
            patch_size: cfg.patch_size,
        }
    }

    fn walk(&mut self, w: &mut Walker<'_, '_>, cfg: &EncoderConfig) -> Result<()> {
        let (d, p, c) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels);
        let patch = Layout::PatchEmbedding { channels: c, patch: p };
        w.matrix("patch_embedding.weight", &mut self.patch_embedding, &[d, c, p, p], patch)?;
        w.vector("class_embedding", &mut self.class_embedding, d)?;
        w.matrix("position_embedding.weight", &mut self.position_embedding, &[cfg.num_positions(), d], Layout::Same)
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
        let patches = if autocast_bf16() {
            // bf16-mixed: the convolution on bfloat16 pixels and weights, its output bfloat16.
            let weight = round_bf16(self.patch_embedding.val());
            round_bf16(round_bf16(patches).matmul(weight.unsqueeze::<3>()))
        } else {
            patches.matmul(self.patch_embedding.val().unsqueeze::<3>())
        }; // [b, n, d]
        let d = patches.dims()[2];
        let class = self.class_embedding.val().reshape([1, 1, d]).expand([b as i64, 1, d as i64]); // [b, 1, d]
        let tokens = Tensor::cat(vec![class, patches], 1); // [b, n + 1, d]
        tokens + self.position_embedding.val().unsqueeze::<3>() // [b, n + 1, d]
    }
}

/// An `nn.Linear` of the encoder (all have a bias), with what training adds to it.
#[derive(Module, Debug)]
pub struct Projection {
    /// `[in, out]` (burn layout; PyTorch's weight is `[out, in]`).
    pub weight: Param<Tensor<2>>,
    /// `[out]`
    pub bias: Param<Tensor<1>>,
    /// Training only: the weight as a contiguous `[out, in]` copy, which makes the backward
    /// pass's products as fast as the forward's (see
    /// [`VisionTransformer::keep_transposed_weights`]).
    pub weight_t: Option<Tensor<2>>,
    /// The LoRA adapter while training with LoRA; none otherwise (a trained checkpoint holds
    /// it merged into the weight).
    pub lora: Option<Lora>,
    /// Whether the products' operand (`weight_t` where kept, else `weight`) holds bfloat16
    /// values already ([`frozen_bf16`]), so that bf16-mixed products read it rather than round
    /// the weight on every pass.
    #[module(skip)]
    pub bf16_values: bool,
}

impl Projection {
    fn skeleton(device: &Device) -> Self {
        Self { weight: empty(device), bias: empty(device), weight_t: None, lora: None, bf16_values: false }
    }

    /// The weight and bias; the adapter's parameters are walked apart ([`Walker::lora`]).
    fn walk(&mut self, w: &mut Walker<'_, '_>, d_in: usize, d_out: usize) -> Result<()> {
        w.linear(&mut self.weight, Some(&mut self.bias), [d_in, d_out], self.lora.as_ref())
    }

    /// `[b, t, in]` -> `[b, t, out]`: the projection plus its adapter, if it has one.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        if autocast_bf16() {
            // bf16-mixed: the adapter's output and the sum are bfloat16 too.
            return match &self.lora {
                Some(adapter) => round_bf16(self.linear_bf16(x.clone()) + adapter.forward_bf16(x)),
                None => self.linear_bf16(x),
            };
        }
        match &self.lora {
            Some(adapter) => self.linear(x.clone()) + adapter.forward(x),
            None => self.linear(x),
        }
    }

    /// `x W + b` under bf16-mixed precision: bfloat16 input, weight and bias, f32 accumulation,
    /// a bfloat16 output (autocast's `linear`).
    fn linear_bf16<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        round_bf16(self.product_bf16(x))
    }

    /// [`Self::linear_bf16`] before its output is rounded.
    fn product_bf16<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let x = product_input(x);
        let bias = round_bf16(self.bias.val());
        match (&self.weight_t, self.bf16_values) {
            (Some(wt), true) => super::fused::linear(x, wt.clone().transpose(), wt.clone(), bias),
            (None, true) => {
                let w = self.weight.val();
                super::fused::linear(x, w.clone(), w.transpose(), bias)
            }
            _ => {
                let w = round_bf16(self.weight.val());
                super::fused::linear(x, w.clone(), w.transpose(), bias)
            }
        }
    }

    /// Whether the projection is frozen: no adapter, no gradient asked of its weight or bias.
    fn frozen(&self) -> bool {
        self.lora.is_none() && frozen(&self.weight.val(), Some(&self.bias.val()))
    }

    /// `x W + b`: one fused matrix product with bias in f32 (its backward pass computes only
    /// the input's gradient when the weight is frozen), burn's `linear` otherwise.
    fn linear<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let w = self.weight.val();
        let wt = self.weight_t.clone().unwrap_or_else(|| w.clone().transpose());
        super::fused::linear(x, w, wt, self.bias.val())
    }
}

/// `CLIPAttention`: multi-head self-attention, all projections with bias.
#[derive(Module, Debug)]
pub struct SelfAttention {
    pub q_proj: Projection,
    pub k_proj: Projection,
    pub v_proj: Projection,
    pub out_proj: Projection,
    num_heads: usize,
}

impl SelfAttention {
    fn skeleton(cfg: &EncoderConfig, device: &Device) -> Self {
        Self {
            q_proj: Projection::skeleton(device),
            k_proj: Projection::skeleton(device),
            v_proj: Projection::skeleton(device),
            out_proj: Projection::skeleton(device),
            num_heads: cfg.num_attention_heads,
        }
    }

    /// The projections under their names ([`ATTENTION_PROJECTIONS`]), in that order.
    pub fn projections_mut(&mut self) -> [(&'static str, &mut Projection); 4] {
        let [q, k, v, out] = ATTENTION_PROJECTIONS;
        [(q, &mut self.q_proj), (k, &mut self.k_proj), (v, &mut self.v_proj), (out, &mut self.out_proj)]
    }

    fn walk(&mut self, w: &mut Walker<'_, '_>, d: usize) -> Result<()> {
        for (name, proj) in self.projections_mut() {
            proj.walk(&mut w.pp(name), d, d)?;
        }
        // The adapters after the projections, the order training has always listed them in.
        for (name, proj) in self.projections_mut() {
            if let Some(lora) = &mut proj.lora {
                w.pp(name).lora(lora)?;
            }
        }
        Ok(())
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
        let q = heads(self.q_proj.forward(xq), tq);
        let k = heads(self.k_proj.forward(x.clone()), t);
        let v = heads(self.v_proj.forward(x), t);
        // softmax(q kᵀ · hd^-0.5) v, the scale HF applies to q.
        let scale = (hd as f64).powf(-0.5);
        let ctx = if autocast_bf16() {
            // bf16-mixed: PyTorch's CPU flash attention on bfloat16 (scores in f32).
            attention_bf16(q, k, v, scale)
        } else {
            // One pass per head over blocks of keys, in inference and training (its backward
            // recomputes the probabilities rather than keeping them).
            attention_f32(q, k, v, scale)
        }; // [b, h, tq, hd]
        self.out_proj.forward(ctx.swap_dims(1, 2).reshape([b, tq, d])) // [b, tq, d]
    }
}

/// `CLIPMLP`: `fc1 -> activation -> fc2`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Projection,
    pub fc2: Projection,
    #[module(skip)]
    act: HiddenAct,
}

impl Mlp {
    fn skeleton(cfg: &EncoderConfig, device: &Device) -> Self {
        Self { fc1: Projection::skeleton(device), fc2: Projection::skeleton(device), act: cfg.hidden_act }
    }

    /// The projections under their names ([`MLP_PROJECTIONS`]), in that order.
    pub fn projections_mut(&mut self) -> [(&'static str, &mut Projection); 2] {
        let [fc1, fc2] = MLP_PROJECTIONS;
        [(fc1, &mut self.fc1), (fc2, &mut self.fc2)]
    }

    fn walk(&mut self, w: &mut Walker<'_, '_>, d: usize, m: usize) -> Result<()> {
        let [(fc1, p1), (fc2, p2)] = self.projections_mut();
        p1.walk(&mut w.pp(fc1), d, m)?;
        p2.walk(&mut w.pp(fc2), m, d)
    }

    /// `[b, t, d]` -> `[b, t, d]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        if bits_between_products() && self.fc1.frozen() && self.fc2.frozen() {
            // On native bfloat16 products: fc1's rounding, the activation and fc2's conversion
            // of its input in one pass, the activation kept in bfloat16 storage (and in
            // training, their backward passes in one too).
            let quick = self.act == HiddenAct::QuickGelu;
            return self.fc2.linear_bf16(activation_bits(self.fc1.product_bf16(x), quick));
        }
        let x = self.fc1.forward(x); // [b, t, m]
        let x = match (self.act, autocast_bf16()) {
            (HiddenAct::QuickGelu, false) => quick_gelu(x),
            (HiddenAct::Gelu, false) => gelu(x),
            (HiddenAct::QuickGelu, true) => quick_gelu_bf16(x),
            (HiddenAct::Gelu, true) => round_bf16(gelu(x)),
        };
        self.fc2.forward(x) // [b, t, d]
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

/// A LayerNorm of width `d` whose parameters a walk fills.
fn layer_norm_skeleton(cfg: &EncoderConfig, device: &Device) -> LayerNorm {
    LayerNormConfig::new(cfg.hidden_size).with_epsilon(cfg.layer_norm_eps).init(device)
}

impl EncoderLayer {
    fn skeleton(cfg: &EncoderConfig, device: &Device) -> Self {
        Self {
            self_attn: SelfAttention::skeleton(cfg, device),
            layer_norm1: layer_norm_skeleton(cfg, device),
            mlp: Mlp::skeleton(cfg, device),
            layer_norm2: layer_norm_skeleton(cfg, device),
            eps: cfg.layer_norm_eps,
        }
    }

    fn walk(&mut self, w: &mut Walker<'_, '_>, cfg: &EncoderConfig) -> Result<()> {
        let d = cfg.hidden_size;
        self.self_attn.walk(&mut w.pp("self_attn"), d)?;
        w.pp("layer_norm1").layer_norm(&mut self.layer_norm1, d)?;
        self.mlp.walk(&mut w.pp("mlp"), d, cfg.intermediate_size)?;
        w.pp("layer_norm2").layer_norm(&mut self.layer_norm2, d)
    }

    /// `[b, t, d]` -> `[b, t, d]`
    pub fn forward(&self, h: Tensor<3>) -> Tensor<3> {
        let h = h.clone() + self.self_attn.forward(self.norm1(h));
        h.clone() + self.mlp.forward(self.norm2(h))
    }

    /// `layer_norm1` of `h`, the input of the attention's projections.
    fn norm1(&self, h: Tensor<3>) -> Tensor<3> {
        let a = &self.self_attn;
        self.normed_for(&self.layer_norm1, h, &[&a.q_proj, &a.k_proj, &a.v_proj])
    }

    /// `layer_norm2` of `h`, the input of the MLP.
    fn norm2(&self, h: Tensor<3>) -> Tensor<3> {
        self.normed_for(&self.layer_norm2, h, &[&self.mlp.fc1])
    }

    /// LayerNorm `ln` of `h` for `projections`, the products that alone read it
    /// ([`norm_for_products`]).
    fn normed_for(&self, ln: &LayerNorm, h: Tensor<3>, projections: &[&Projection]) -> Tensor<3> {
        norm_for_products(ln, self.eps, h, projections.iter().any(|p| p.lora.is_some()))
    }

    /// The layer's output at the class token only, `[b, t, d]` -> `[b, 1, d]`: what the last
    /// layer must compute for `pooler_output` (keys and values still come from every token).
    pub fn forward_class_token(&self, h: Tensor<3>) -> Tensor<3> {
        let [b, _, d] = h.dims();
        let x = self.norm1(h.clone()); // [b, t, d]
        let xq = x.clone().slice([0..b, 0..1, 0..d]); // [b, 1, d]
        let h = h.slice([0..b, 0..1, 0..d]) + self.self_attn.forward_queries(xq, x); // [b, 1, d]
        h.clone() + self.mlp.forward(self.norm2(h))
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
        let mut encoder = Self::skeleton(cfg, &ld.device);
        encoder.visit_params(cfg, &mut |entry| ld.fill(map, entry))?;
        Ok(encoder)
    }

    /// The encoder's structure for `cfg`, its parameters empty until a walk fills them.
    pub(crate) fn skeleton(cfg: &EncoderConfig, device: &Device) -> Self {
        Self {
            embeddings: Embeddings::skeleton(cfg, device),
            pre_layrnorm: layer_norm_skeleton(cfg, device),
            encoder: Encoder {
                layers: (0..cfg.num_hidden_layers).map(|_| EncoderLayer::skeleton(cfg, device)).collect(),
            },
            post_layernorm: layer_norm_skeleton(cfg, device),
            eps: cfg.layer_norm_eps,
        }
    }

    /// Calls `visit` on every parameter, in checkpoint order: its HF name, PyTorch shape (for
    /// `cfg`, the config the encoder was built for) and slot. A projection's LoRA adapter, if
    /// any, comes as `<proj>.lora_A.weight` and `<proj>.lora_B.weight` after the layer's
    /// attention projections.
    pub fn visit_params(&mut self, cfg: &EncoderConfig, visit: &mut Visit<'_>) -> Result<()> {
        let mut root = Walker::new(visit);
        let mut w = root.pp(ROOT);
        let d = cfg.hidden_size;
        self.embeddings.walk(&mut w.pp(EMBEDDINGS), cfg)?;
        w.pp("pre_layrnorm").layer_norm(&mut self.pre_layrnorm, d)?;
        for (i, layer) in self.encoder.layers.iter_mut().enumerate() {
            layer.walk(&mut w.pp(LAYERS).pp(i), cfg)?;
        }
        w.pp("post_layernorm").layer_norm(&mut self.post_layernorm, d)
    }

    /// Every projection of every layer, attention's then the MLP's, under its name.
    pub fn projections_mut(&mut self) -> impl Iterator<Item = (&'static str, &mut Projection)> {
        self.encoder.layers.iter_mut().flat_map(|layer| {
            let attention = layer.self_attn.projections_mut();
            attention.into_iter().chain(layer.mlp.projections_mut())
        })
    }

    /// Puts an adapter made by `make` on each attention projection (all `[d, d]`) named in
    /// `targets`, layer by layer, in [`ATTENTION_PROJECTIONS`] order.
    pub fn add_adapters(&mut self, targets: &[String], mut make: impl FnMut() -> Lora) {
        for layer in &mut self.encoder.layers {
            for (name, proj) in layer.self_attn.projections_mut() {
                if targets.iter().any(|t| t == name) {
                    proj.lora = Some(make());
                }
            }
        }
    }

    /// The LoRA adapters, layer by layer.
    pub fn adapters_mut(&mut self) -> impl Iterator<Item = &mut Lora> {
        self.projections_mut().filter_map(|(_, proj)| proj.lora.as_mut())
    }

    /// Keeps `[out, in]` copies of the encoder's projection weights for the backward pass, or
    /// drops them. For training with frozen projections (LN-tuning, LoRA): each backward
    /// product then reads its weight in the order the matrix kernel wants instead of
    /// re-packing it, for one more copy of the weights in memory (1.2 GB for ViT-L/14 in f32).
    /// Only frozen weights may be kept: a trained weight would leave its copy stale.
    pub fn keep_transposed_weights(&mut self, keep: bool) {
        for (_, proj) in self.projections_mut() {
            proj.weight_t = keep.then(|| super::fused::transposed_copy(proj.weight.val()));
            proj.bf16_values = false;
        }
    }

    /// Makes the kept copies ([`Self::keep_transposed_weights`]) bfloat16 once ([`frozen_bf16`]),
    /// for bf16-mixed training: the frozen weights autocast would cast on every pass. The weights
    /// themselves stay as loaded (a checkpoint saves them).
    pub fn round_transposed_weights(&mut self) {
        for (_, proj) in self.projections_mut() {
            if let Some(wt) = proj.weight_t.take() {
                proj.weight_t = Some(frozen_bf16(wt));
                proj.bf16_values = true;
            }
        }
    }

    /// Makes the projection weights themselves bfloat16 once ([`frozen_bf16`]), for inference in
    /// bf16 under autocast, where nothing trains or saves them.
    pub fn round_weights(&mut self) {
        for (_, proj) in self.projections_mut() {
            proj.weight = Param::from_tensor(frozen_bf16(proj.weight.val()));
            proj.bf16_values = true;
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

/// Every `vision_model.*` tensor the encoder loads, with its PyTorch shape, in checkpoint order.
pub fn tensor_shapes(cfg: &EncoderConfig) -> Vec<(String, Vec<usize>)> {
    let mut encoder = VisionTransformer::skeleton(cfg, &Device::flex());
    record(|visit| encoder.visit_params(cfg, visit))
}

/// The `vision_model.embeddings.*` tensors, with their PyTorch shapes: the ones that tell
/// backbones apart (width, patch and image size) before any layer is loaded.
pub fn embedding_shapes(cfg: &EncoderConfig) -> Vec<(String, Vec<usize>)> {
    let mut embeddings = Embeddings::skeleton(cfg, &Device::flex());
    record(|visit| embeddings.walk(&mut Walker::new(visit).pp(ROOT).pp(EMBEDDINGS), cfg))
}

/// The names and shapes a walk visits.
fn record(walk: impl FnOnce(&mut Visit<'_>) -> Result<()>) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    walk(&mut |entry| {
        out.push((entry.name.to_string(), entry.shape.to_vec()));
        Ok(())
    })
    .expect("recording names cannot fail");
    out
}

/// The encoder layer a checkpoint name belongs to (`vision_model.encoder.layers.{i}.*`).
pub fn layer_index(name: &str) -> Option<usize> {
    let rest = name.strip_prefix(ROOT)?.strip_prefix('.')?.strip_prefix(LAYERS)?.strip_prefix('.')?;
    rest.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_shapes_name_every_parameter_once() {
        let cfg = EncoderConfig { num_hidden_layers: 2, ..EncoderConfig::clip_vit_base_patch16() };
        let shapes = tensor_shapes(&cfg);
        assert_eq!(shapes.len(), 3 + 2 + 2 * 16 + 2);
        assert_eq!(shapes[0], ("vision_model.embeddings.patch_embedding.weight".into(), vec![768, 3, 16, 16]));
        assert_eq!(shapes[3].0, "vision_model.pre_layrnorm.weight");
        assert_eq!(shapes[5], ("vision_model.encoder.layers.0.self_attn.q_proj.weight".into(), vec![768, 768]));
        assert_eq!(shapes[15], ("vision_model.encoder.layers.0.mlp.fc1.weight".into(), vec![3072, 768]));
        assert_eq!(shapes.last().unwrap().0, "vision_model.post_layernorm.bias");
        let names: std::collections::BTreeSet<&str> = shapes.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.len(), shapes.len());
        assert_eq!(embedding_shapes(&cfg), shapes[..3]);
        assert_eq!(layer_index("vision_model.encoder.layers.1.mlp.fc2.bias"), Some(1));
        assert_eq!(layer_index("vision_model.post_layernorm.bias"), None);
    }
}
