//! The DINOv3 vision transformer (HF `DINOv3ViTModel`, transformers 4.56; docs/method.md §12), GenD's third encoder:
//! a class token and register tokens before the patches, rotary position embeddings on the
//! patches' queries and keys (none on the class and register tokens), layer scale on both
//! residual branches, and one LayerNorm after the last layer. GenD's feature is the class token
//! of the normed last hidden state (`pooler_output`).
//!
//! Module paths mirror Hugging Face's weight names (`layer.{i}.attention.q_proj`, ...), walked
//! once per module as in [`super::clip`], so loading and naming share one description.

use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::prelude::*;
use burn::tensor::activation::silu;
use serde::{Deserialize, Serialize};

use super::fused::attention::attention_bf16;
use super::fused::bf16::{
    activation_bits, autocast_bf16, bits_between_products, frozen, frozen_bf16, product_input, round_bf16,
    rounded_under_autocast,
};
use super::fused::rotary::{Pairs, rotary};
use super::fused::{self, norm, norm_for_products};
use super::lora::{Lora, Rows, Site};
use super::params::{Layout, Loader, Visit, Walker, empty};
use super::tensors::TensorMap;
use crate::{Error, Result};

/// The DINOv3 transformer's shape (HF `DINOv3ViTConfig` field names and defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dinov3Config {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub rope_theta: f64,
    pub query_bias: bool,
    pub key_bias: bool,
    pub value_bias: bool,
    pub proj_bias: bool,
    pub mlp_bias: bool,
    pub use_gated_mlp: bool,
    pub num_register_tokens: usize,
    /// Training only: the patch coordinates are shifted by `U(-shift, shift)` per axis...
    pub pos_embed_shift: Option<f64>,
    /// ... multiplied by a log-uniform factor in `[1/jitter, jitter]` per axis ...
    pub pos_embed_jitter: Option<f64>,
    /// ... and by one log-uniform factor in `[1/rescale, rescale]`, drawn anew each forward.
    pub pos_embed_rescale: Option<f64>,
}

/// Where a detector's DINOv3 (and Perception Encoder) tensors sit in GenD's checkpoints
/// (`feature_extractor.backbone.*`, `feature_extractor.` dropped as for CLIP).
pub const ROOT: &str = "backbone";

/// The MLP's activation (HF `hidden_act`; DINOv3 uses these two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// The exact (erf) GELU.
    Gelu,
    /// `x · sigmoid(x)` (the gated MLP of the 7B model).
    Silu,
}

impl Default for Dinov3Config {
    /// `DINOv3ViTConfig()`'s defaults, used for fields a `config.json` leaves out.
    fn default() -> Self {
        Self {
            hidden_size: 384,
            intermediate_size: 1536,
            num_hidden_layers: 12,
            num_attention_heads: 6,
            num_channels: 3,
            image_size: 224,
            patch_size: 16,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-5,
            rope_theta: 100.0,
            query_bias: true,
            key_bias: false,
            value_bias: true,
            proj_bias: true,
            mlp_bias: true,
            use_gated_mlp: false,
            num_register_tokens: 0,
            pos_embed_shift: None,
            pos_embed_jitter: None,
            pos_embed_rescale: Some(2.0),
        }
    }
}

impl Dinov3Config {
    /// `facebook/dinov3-vitl16-pretrain-lvd1689m`, GenD's `GenD_DINOv3_L` backbone.
    pub fn vitl16() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            num_register_tokens: 4,
            ..Self::default()
        }
    }

    /// `facebook/dinov3-vitb16-pretrain-lvd1689m`.
    pub fn vitb16() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_register_tokens: 4,
            ..Self::default()
        }
    }

    /// The released checkpoints GenD uses, by hub id.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "facebook/dinov3-vitl16-pretrain-lvd1689m" => Some(Self::vitl16()),
            "facebook/dinov3-vitb16-pretrain-lvd1689m" => Some(Self::vitb16()),
            _ => None,
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Tokens before the patches: the class token and the registers.
    pub fn prefix_tokens(&self) -> usize {
        1 + self.num_register_tokens
    }

    /// Checks what the encoder relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::Invalid(format!("invalid DINOv3 config: {what} ({self:?})")));
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad("hidden_size must be a positive multiple of num_attention_heads");
        }
        // The rotary embedding splits a head into (y, x) halves of `head_dim / 4` frequencies.
        if self.head_dim() == 0 || !self.head_dim().is_multiple_of(4) {
            return bad("the head width must be a positive multiple of 4");
        }
        if self.patch_size == 0 || self.num_channels == 0 {
            return bad("patch_size and num_channels must be positive");
        }
        Ok(())
    }

    /// Reads a HF `config.json` of `model_type` `dinov3_vit`.
    pub fn from_hf_config(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not JSON: {e}")))?;
        if let Some(kind) = value.get("model_type").and_then(|v| v.as_str()).filter(|k| *k != "dinov3_vit") {
            return Err(Error::format(path, format!("model_type is `{kind}`, not `dinov3_vit`")));
        }
        let config: Self =
            serde_json::from_value(value).map_err(|e| Error::format(path, format!("not a DINOv3 config: {e}")))?;
        config.validate().map_err(|e| Error::format(path, e.to_string()))?;
        Ok(config)
    }
}

/// The rotary embedding's `(cos, sin)`, each `[gh·gw, head_dim]`, for a grid of `gh` x `gw`
/// patches: patch centres in [-1, 1] (row-major, `y` then `x`), angles `2π · coord · f` for
/// the `head_dim / 4` frequencies `f_k = θ^(-4k / head_dim)`, laid out `[y·f, x·f, y·f, x·f]`.
/// Computed in f32 as the reference computes them (it turns autocast off for this).
pub fn rope_tables(gh: usize, gw: usize, head_dim: usize, theta: f64, coords: &Coords) -> (Vec<f32>, Vec<f32>) {
    let quarter = head_dim / 4;
    // torch: 1 / base ** arange(0, 1, 4 / head_dim), all in f32.
    let step = 4.0f32 / head_dim as f32;
    let freqs: Vec<f32> = (0..quarter).map(|k| 1.0 / (theta as f32).powf(k as f32 * step)).collect();
    let centre = |i: usize, n: usize| 2.0 * ((i as f32 + 0.5) / n as f32) - 1.0;
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    let (mut cos, mut sin) = (Vec::with_capacity(gh * gw * head_dim), Vec::with_capacity(gh * gw * head_dim));
    for i in 0..gh {
        for j in 0..gw {
            let (y, x) = coords.apply(centre(i, gh), centre(j, gw));
            let half: Vec<f32> = [y, x].iter().flat_map(|&c| freqs.iter().map(move |&f| two_pi * c * f)).collect();
            for _ in 0..2 {
                cos.extend(half.iter().map(|a| a.cos()));
                sin.extend(half.iter().map(|a| a.sin()));
            }
        }
    }
    (cos, sin)
}

/// How the patch coordinates are moved before the rotary angles are taken: the identity in
/// eval mode; in training mode, drawn per forward pass from the config's
/// `pos_embed_{shift,jitter,rescale}` (`augment_patches_coords` in transformers):
/// `(c + shift) · jitter · rescale`, per axis `(y, x)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coords {
    pub shift: [f32; 2],
    pub jitter: [f32; 2],
    pub rescale: f32,
}

impl Coords {
    /// Eval mode: the coordinates as they are.
    pub const IDENTITY: Self = Self { shift: [0.0; 2], jitter: [1.0; 2], rescale: 1.0 };

    /// A training forward pass's draw, `uniform` giving numbers in `[0, 1)`.
    pub fn draw(cfg: &Dinov3Config, mut uniform: impl FnMut() -> f64) -> Self {
        let mut c = Self::IDENTITY;
        let mut between = |lo: f64, hi: f64| lo + (hi - lo) * uniform();
        if let Some(shift) = cfg.pos_embed_shift {
            c.shift = [between(-shift, shift) as f32, between(-shift, shift) as f32];
        }
        if let Some(jitter) = cfg.pos_embed_jitter {
            let r = jitter.ln();
            c.jitter = [between(-r, r).exp() as f32, between(-r, r).exp() as f32];
        }
        if let Some(rescale) = cfg.pos_embed_rescale {
            let r = rescale.ln();
            c.rescale = between(-r, r).exp() as f32;
        }
        c
    }

    fn apply(&self, y: f32, x: f32) -> (f32, f32) {
        let f = |v: f32, k: usize| (v + self.shift[k]) * self.jitter[k] * self.rescale;
        (f(y, 0), f(x, 1))
    }
}

/// `DINOv3ViTEmbeddings`: patch convolution (with bias), class token, register tokens.
#[derive(Module, Debug)]
pub struct Embeddings {
    /// `[1, d]` (checkpoint `[1, 1, d]`).
    pub cls_token: Param<Tensor<2>>,
    /// `[1, d]`: used only in pre-training (masked patches); loaded so that checkpoints match.
    pub mask_token: Param<Tensor<2>>,
    /// `[r, d]` (checkpoint `[1, r, d]`).
    pub register_tokens: Param<Tensor<2>>,
    /// The patch convolution (kernel = stride = patch) as a matrix `[c·p·p, d]`.
    pub patch_weight: Param<Tensor<2>>,
    /// `[d]`
    pub patch_bias: Param<Tensor<1>>,
    patch_size: usize,
}

impl Embeddings {
    fn skeleton(cfg: &Dinov3Config, device: &Device) -> Self {
        Self {
            cls_token: empty(device),
            mask_token: empty(device),
            register_tokens: empty(device),
            patch_weight: empty(device),
            patch_bias: empty(device),
            patch_size: cfg.patch_size,
        }
    }

    fn walk(&mut self, w: &mut Walker<'_, '_>, cfg: &Dinov3Config) -> Result<()> {
        let (d, p, c, r) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels, cfg.num_register_tokens);
        w.matrix("cls_token", &mut self.cls_token, &[1, 1, d], Layout::LeadingOne)?;
        w.matrix("mask_token", &mut self.mask_token, &[1, 1, d], Layout::LeadingOne)?;
        w.matrix("register_tokens", &mut self.register_tokens, &[1, r, d], Layout::LeadingOne)?;
        let mut conv = w.pp("patch_embeddings");
        conv.matrix("weight", &mut self.patch_weight, &[d, c, p, p], Layout::PatchEmbedding { channels: c, patch: p })?;
        conv.vector("bias", &mut self.patch_bias, d)
    }

    /// `[b, c, h, w]` -> `[b, 1 + r + n, d]`
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        let [b, c, h, w] = pixels.dims();
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        // A stride-p convolution with a p×p kernel is a matmul over non-overlapping patches
        // (pixels beyond the last whole patch are ignored, as the convolution ignores them).
        let pixels = pixels.slice([0..b, 0..c, 0..gh * p, 0..gw * p]);
        let patches = pixels
            .reshape([b, c, gh, p, gw, p]) // [b, c, gh, p, gw, p]
            .permute([0, 2, 4, 1, 3, 5]) // [b, gh, gw, c, p, p]
            .reshape([b, gh * gw, c * p * p]); // [b, n, c·p·p]
        let d = self.patch_bias.dims()[0];
        let patches = if autocast_bf16() {
            // bf16-mixed: the convolution on bfloat16 pixels, weight and bias, its output
            // bfloat16; the concatenation with the f32 class and register tokens promotes to f32.
            let weight = round_bf16(self.patch_weight.val()).unsqueeze::<3>();
            let bias = round_bf16(self.patch_bias.val()).reshape([1, 1, d]);
            round_bf16(round_bf16(patches).matmul(weight) + bias)
        } else {
            patches.matmul(self.patch_weight.val().unsqueeze::<3>()) + self.patch_bias.val().reshape([1, 1, d])
        }; // [b, n, d]
        let r = self.register_tokens.dims()[0];
        let cls = self.cls_token.val().unsqueeze::<3>().expand([b as i64, 1, d as i64]); // [b, 1, d]
        let registers = self.register_tokens.val().unsqueeze::<3>().expand([b as i64, r as i64, d as i64]); // [b, r, d]
        Tensor::cat(vec![cls, registers, patches], 1) // [b, 1 + r + n, d]
    }
}

/// An `nn.Linear`, with or without a bias, and its LoRA adapter while training with LoRA.
#[derive(Module, Debug)]
pub struct Linear {
    /// `[in, out]` (PyTorch's weight is `[out, in]`).
    pub weight: Param<Tensor<2>>,
    /// `[out]`; none where the config leaves the bias out (DINOv3's `k_proj`).
    pub bias: Option<Param<Tensor<1>>>,
    /// bf16-mixed training only: the frozen weight as a contiguous `[out, in]` bfloat16 copy
    /// ([`Linear::keep_bf16_copy`]).
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

impl Linear {
    pub(crate) fn skeleton(bias: bool, device: &Device) -> Self {
        Self {
            weight: empty(device),
            bias: bias.then(|| empty(device)),
            weight_t: None,
            lora: None,
            bf16_values: false,
        }
    }

    /// Makes the weight bfloat16 once ([`frozen_bf16`]), for inference in bf16 under autocast.
    pub fn round_weight(&mut self) {
        self.weight = Param::from_tensor(frozen_bf16(self.weight.val()));
        self.weight_t = None;
        self.bf16_values = true;
    }

    /// For bf16-mixed training: with the weight `frozen`, a bfloat16 copy of it as `[out, in]`
    /// made once ([`frozen_bf16`] of [`fused::transposed_copy`]), which the products read forward
    /// and backward while the weight itself stays as loaded (a checkpoint saves it); otherwise
    /// none, and the weight is rounded on every pass.
    pub fn keep_bf16_copy(&mut self, frozen: bool) {
        self.weight_t = frozen.then(|| frozen_bf16(fused::transposed_copy(self.weight.val())));
        self.bf16_values = frozen;
    }

    /// The weight and bias, then the adapter, if any, as peft names it under the module
    /// (`lora_A.weight` `[r, in]`, `lora_B.weight` `[out, r]`).
    pub(crate) fn walk(&mut self, w: &mut Walker<'_, '_>, d_in: usize, d_out: usize) -> Result<()> {
        w.linear(&mut self.weight, self.bias.as_mut(), [d_in, d_out], self.lora.as_ref())?;
        match &mut self.lora {
            Some(lora) => w.lora(lora),
            None => Ok(()),
        }
    }

    /// `x W (+ b)`, plus the adapter's `dropout(x) A B · scaling` if there is one (peft's
    /// `lora.Linear.forward`): `[b, t, in]` -> `[b, t, out]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        if autocast_bf16() {
            // bf16-mixed: the adapter's output and the sum are bfloat16 too.
            return match &self.lora {
                Some(adapter) => round_bf16(self.base_bf16(x.clone()) + adapter.forward_bf16(x)),
                None => self.base_bf16(x),
            };
        }
        match &self.lora {
            Some(adapter) => self.base(x.clone()) + adapter.forward(x),
            None => self.base(x),
        }
    }

    /// `x W (+ b)` under bf16-mixed precision (autocast's `linear`): bfloat16 input, weight and
    /// bias, f32 accumulation, a bfloat16 output.
    fn base_bf16(&self, x: Tensor<3>) -> Tensor<3> {
        round_bf16(self.product_bf16(x))
    }

    /// [`Self::base_bf16`] before its output is rounded.
    fn product_bf16(&self, x: Tensor<3>) -> Tensor<3> {
        let bias = round_bf16(self.bias_or_zeros());
        let (w, wt) = match (&self.weight_t, self.bf16_values) {
            (Some(wt), true) => (wt.clone().transpose(), wt.clone()),
            (None, true) => (self.weight.val(), self.weight.val().transpose()),
            _ => {
                let w = round_bf16(self.weight.val());
                (w.clone(), w.transpose())
            }
        };
        fused::linear(product_input(x), w, wt, bias)
    }

    /// `next(gelu(x W + b))` under bf16-mixed precision, where the activation may pass to
    /// `next` in bfloat16 storage ([`bits_between_products`]): this product's rounding, the
    /// exact GELU and `next`'s conversion of its input in one pass ([`activation_bits`]), and
    /// in training their backward passes in one too. None where it may not (f32, no native
    /// bfloat16 products, an adapter or a trained weight or bias in either).
    pub fn gelu_into(&self, next: &Linear, x: &Tensor<3>) -> Option<Tensor<3>> {
        let fused = bits_between_products() && self.frozen() && next.frozen();
        fused.then(|| next.forward(activation_bits(self.product_bf16(x.clone()), false)))
    }

    /// Whether the layer is frozen: no adapter, no gradient asked of its weight or bias.
    fn frozen(&self) -> bool {
        self.lora.is_none() && frozen(&self.weight.val(), self.bias.as_ref().map(Param::val).as_ref())
    }

    /// `x W (+ b)`.
    fn base(&self, x: Tensor<3>) -> Tensor<3> {
        let w = self.weight.val();
        let wt = self.weight_t.clone().unwrap_or_else(|| w.clone().transpose());
        fused::linear(x, w, wt, self.bias_or_zeros())
    }

    /// The bias, or zeros where the config leaves it out.
    fn bias_or_zeros(&self) -> Tensor<1> {
        match &self.bias {
            Some(b) => b.val(),
            None => Tensor::zeros([self.weight.dims()[1]], &self.weight.device()),
        }
    }

    /// The linear as a place for an adapter, named `name`, from `d_in` to `d_out`.
    pub(crate) fn site(&mut self, name: String, [d_in, d_out]: [usize; 2], rows: Rows) -> Site<'_> {
        Site { name, dims: [d_in, d_out], rows, slot: &mut self.lora }
    }
}

/// `DINOv3ViTAttention`: multi-head self-attention with rotary embeddings on the patches.
#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    num_heads: usize,
}

impl Attention {
    fn skeleton(cfg: &Dinov3Config, device: &Device) -> Self {
        Self {
            q_proj: Linear::skeleton(cfg.query_bias, device),
            k_proj: Linear::skeleton(cfg.key_bias, device),
            v_proj: Linear::skeleton(cfg.value_bias, device),
            o_proj: Linear::skeleton(cfg.proj_bias, device),
            num_heads: cfg.num_attention_heads,
        }
    }

    fn walk(&mut self, w: &mut Walker<'_, '_>, d: usize) -> Result<()> {
        // The order of `DINOv3ViTAttention.__init__`, which is the checkpoint's.
        self.k_proj.walk(&mut w.pp("k_proj"), d, d)?;
        self.v_proj.walk(&mut w.pp("v_proj"), d, d)?;
        self.q_proj.walk(&mut w.pp("q_proj"), d, d)?;
        self.o_proj.walk(&mut w.pp("o_proj"), d, d)
    }

    /// `[b, t, d]` -> `[b, t, d]`, with the rotary tables `[1, 1, n, hd]` of the `n` patches.
    pub fn forward(&self, x: Tensor<3>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<3> {
        self.forward_queries(x.clone(), x, cos, sin)
    }

    /// Attention of the queries from `xq` (`[b, tq, d]`: every token, or only the leading
    /// class token, which the rotary embedding leaves unchanged) over the keys and values
    /// from `x` (`[b, t, d]`): `[b, tq, d]`.
    fn forward_queries(&self, xq: Tensor<3>, x: Tensor<3>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let tq = xq.dims()[1];
        let (h, hd) = (self.num_heads, d / self.num_heads);
        let heads = |y: Tensor<3>, n: usize| y.reshape([b, n, h, hd]).swap_dims(1, 2); // [b, h, n, hd]
        let q = heads(self.q_proj.forward(xq), tq);
        // Only patches rotate: a query block of the prefix tokens alone passes unchanged.
        let q = if tq == t { rotary(q, cos, sin, Pairs::Halves) } else { q };
        let k = rotary(heads(self.k_proj.forward(x.clone()), t), cos, sin, Pairs::Halves);
        let v = heads(self.v_proj.forward(x), t);
        let scale = (hd as f64).powf(-0.5);
        let ctx = if autocast_bf16() {
            // bf16-mixed: the rotation promoted the queries and keys to f32; autocast casts
            // them back to bfloat16 for SDPA, PyTorch's CPU flash attention.
            attention_bf16(round_bf16(q), round_bf16(k), v, scale)
        } else {
            // Two batched products around the fused softmax, in training and inference alike:
            // faster than burn's attention kernel here (see the Perception Encoder's `sdpa`).
            let scores = (q * scale).matmul(k.swap_dims(2, 3)); // [b, h, tq, t]
            fused::softmax_last(scores).matmul(v) // [b, h, tq, hd]
        };
        self.o_proj.forward(ctx.swap_dims(1, 2).reshape([b, tq, d])) // [b, tq, d]
    }
}

/// `DINOv3ViTMLP` (`up -> act -> down`) or `DINOv3ViTGatedMLP` (`down(act(gate) · up)`).
#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Option<Linear>,
    pub up_proj: Linear,
    pub down_proj: Linear,
    #[module(skip)]
    act: Activation,
}

impl Mlp {
    fn skeleton(cfg: &Dinov3Config, device: &Device) -> Self {
        Self {
            gate_proj: cfg.use_gated_mlp.then(|| Linear::skeleton(cfg.mlp_bias, device)),
            up_proj: Linear::skeleton(cfg.mlp_bias, device),
            down_proj: Linear::skeleton(cfg.mlp_bias, device),
            act: cfg.hidden_act,
        }
    }

    fn walk(&mut self, w: &mut Walker<'_, '_>, d: usize, m: usize) -> Result<()> {
        if let Some(gate) = &mut self.gate_proj {
            gate.walk(&mut w.pp("gate_proj"), d, m)?;
        }
        self.up_proj.walk(&mut w.pp("up_proj"), d, m)?;
        self.down_proj.walk(&mut w.pp("down_proj"), m, d)
    }

    /// The activation; on a bfloat16 tensor under bf16-mixed precision, computed in f32 and
    /// rounded once, as ATen's bfloat16 kernels do.
    fn act(&self, x: Tensor<3>) -> Tensor<3> {
        rounded_under_autocast(match self.act {
            Activation::Gelu => fused::gelu(x),
            Activation::Silu => silu(x),
        })
    }

    /// `[b, t, d]` -> `[b, t, d]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        if self.gate_proj.is_none()
            && self.act == Activation::Gelu
            && let Some(out) = self.up_proj.gelu_into(&self.down_proj, &x)
        {
            return out;
        }
        let hidden = match &self.gate_proj {
            Some(gate) => rounded_under_autocast(self.act(gate.forward(x.clone())) * self.up_proj.forward(x)),
            None => self.act(self.up_proj.forward(x)),
        };
        self.down_proj.forward(hidden)
    }

    fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.gate_proj.iter_mut().chain([&mut self.up_proj, &mut self.down_proj])
    }
}

/// `DINOv3ViTLayer`: pre-norm attention and MLP, each scaled per channel before its residual.
#[derive(Module, Debug)]
pub struct Layer {
    pub norm1: LayerNorm,
    pub attention: Attention,
    /// `layer_scale1.lambda1`, `[d]`.
    pub layer_scale1: Param<Tensor<1>>,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
    /// `layer_scale2.lambda1`, `[d]`.
    pub layer_scale2: Param<Tensor<1>>,
    eps: f64,
}

fn layer_norm_skeleton(cfg: &Dinov3Config, device: &Device) -> LayerNorm {
    LayerNormConfig::new(cfg.hidden_size).with_epsilon(cfg.layer_norm_eps).init(device)
}

impl Layer {
    fn skeleton(cfg: &Dinov3Config, device: &Device) -> Self {
        Self {
            norm1: layer_norm_skeleton(cfg, device),
            attention: Attention::skeleton(cfg, device),
            layer_scale1: empty(device),
            norm2: layer_norm_skeleton(cfg, device),
            mlp: Mlp::skeleton(cfg, device),
            layer_scale2: empty(device),
            eps: cfg.layer_norm_eps,
        }
    }

    fn walk(&mut self, w: &mut Walker<'_, '_>, cfg: &Dinov3Config) -> Result<()> {
        let d = cfg.hidden_size;
        w.pp("norm1").layer_norm(&mut self.norm1, d)?;
        self.attention.walk(&mut w.pp("attention"), d)?;
        w.pp("layer_scale1").vector("lambda1", &mut self.layer_scale1, d)?;
        w.pp("norm2").layer_norm(&mut self.norm2, d)?;
        self.mlp.walk(&mut w.pp("mlp"), d, cfg.intermediate_size)?;
        w.pp("layer_scale2").vector("lambda1", &mut self.layer_scale2, d)
    }

    /// `[b, t, d]` -> `[b, t, d]`
    pub fn forward(&self, h: Tensor<3>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<3> {
        let d = self.layer_scale1.dims()[0];
        let scale1 = self.layer_scale1.val().reshape([1, 1, d]);
        let scale2 = self.layer_scale2.val().reshape([1, 1, d]);
        let h = h.clone() + self.attention.forward(self.norm1(h), cos, sin) * scale1;
        h.clone() + self.mlp.forward(self.norm2(h)) * scale2
    }

    /// `norm1` of `h`, the input of the attention's projections ([`norm_for_products`]).
    fn norm1(&self, h: Tensor<3>) -> Tensor<3> {
        let a = &self.attention;
        let adapters = [&a.q_proj, &a.k_proj, &a.v_proj].iter().any(|p| p.lora.is_some());
        norm_for_products(&self.norm1, self.eps, h, adapters)
    }

    /// `norm2` of `h`, the input of the MLP's first products ([`norm_for_products`]).
    fn norm2(&self, h: Tensor<3>) -> Tensor<3> {
        let m = &self.mlp;
        let adapters = m.up_proj.lora.is_some() || m.gate_proj.as_ref().is_some_and(|g| g.lora.is_some());
        norm_for_products(&self.norm2, self.eps, h, adapters)
    }

    /// The layer's output at the class token only, `[b, t, d]` -> `[b, 1, d]`: what the last
    /// layer must compute for `pooler_output` (keys and values still come from every token).
    pub fn forward_class_token(&self, h: Tensor<3>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<3> {
        let [b, _, d] = h.dims();
        let scale1 = self.layer_scale1.val().reshape([1, 1, d]);
        let scale2 = self.layer_scale2.val().reshape([1, 1, d]);
        let x = self.norm1(h.clone()); // [b, t, d]
        let xq = x.clone().slice([0..b, 0..1, 0..d]); // [b, 1, d]
        let h = h.slice([0..b, 0..1, 0..d]) + self.attention.forward_queries(xq, x, cos, sin) * scale1;
        h.clone() + self.mlp.forward(self.norm2(h)) * scale2
    }
}

/// `DINOv3ViTModel`: embeddings, layers, final norm.
#[derive(Module, Debug)]
pub struct Dinov3 {
    pub embeddings: Embeddings,
    pub layer: Vec<Layer>,
    pub norm: LayerNorm,
    #[module(skip)]
    head_dim: usize,
    #[module(skip)]
    rope_theta: f64,
    #[module(skip)]
    patch_size: usize,
    /// The rotary coordinates' transform for the next forward pass ([`Coords::IDENTITY`]
    /// except while training).
    #[module(skip)]
    pub coords: Coords,
    eps: f64,
}

impl Dinov3 {
    /// Every projection of the layers.
    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.layer.iter_mut().flat_map(|layer| {
            let Attention { q_proj, k_proj, v_proj, o_proj, .. } = &mut layer.attention;
            [q_proj, k_proj, v_proj, o_proj].into_iter().chain(layer.mlp.linears_mut())
        })
    }

    /// Takes the model's tensors out of `map` (HF `DINOv3ViTModel` names under `prefix`: `""`
    /// for a hub folder, [`ROOT`] in a detector), checking every shape.
    pub fn load(ld: &Loader, map: &mut TensorMap, cfg: &Dinov3Config, prefix: &str) -> Result<Self> {
        cfg.validate()?;
        let mut model = Self::skeleton(cfg, &ld.device);
        model.visit_params(cfg, prefix, &mut |entry| ld.fill(map, entry))?;
        Ok(model)
    }

    pub(crate) fn skeleton(cfg: &Dinov3Config, device: &Device) -> Self {
        Self {
            embeddings: Embeddings::skeleton(cfg, device),
            layer: (0..cfg.num_hidden_layers).map(|_| Layer::skeleton(cfg, device)).collect(),
            norm: layer_norm_skeleton(cfg, device),
            head_dim: cfg.head_dim(),
            rope_theta: cfg.rope_theta,
            patch_size: cfg.patch_size,
            coords: Coords::IDENTITY,
            eps: cfg.layer_norm_eps,
        }
    }

    /// Calls `visit` on every parameter, in checkpoint order, named under `prefix`.
    pub fn visit_params(&mut self, cfg: &Dinov3Config, prefix: &str, visit: &mut Visit<'_>) -> Result<()> {
        let mut root = Walker::new(visit);
        let mut w = if prefix.is_empty() { root } else { root.pp(prefix.trim_end_matches('.')) };
        self.embeddings.walk(&mut w.pp("embeddings"), cfg)?;
        for (i, layer) in self.layer.iter_mut().enumerate() {
            layer.walk(&mut w.pp("layer").pp(i), cfg)?;
        }
        w.pp("norm").layer_norm(&mut self.norm, cfg.hidden_size)
    }

    /// Every `nn.Linear` as a place for a LoRA adapter (what peft's LoRA can wrap but the patch
    /// convolution), named under `prefix` as in checkpoints (`backbone.layer.0.attention.q_proj`),
    /// layer by layer in checkpoint order.
    pub fn sites(&mut self, cfg: &Dinov3Config, prefix: &str) -> Vec<Site<'_>> {
        let (d, m) = (cfg.hidden_size, cfg.intermediate_size);
        let root = if prefix.is_empty() { String::new() } else { format!("{}.", prefix.trim_end_matches('.')) };
        let mut sites = Vec::new();
        for (i, layer) in self.layer.iter_mut().enumerate() {
            let at = |module: &str| format!("{root}layer.{i}.{module}");
            let Attention { q_proj, k_proj, v_proj, o_proj, .. } = &mut layer.attention;
            sites.push(k_proj.site(at("attention.k_proj"), [d, d], Rows::Tokens));
            sites.push(v_proj.site(at("attention.v_proj"), [d, d], Rows::Tokens));
            sites.push(q_proj.site(at("attention.q_proj"), [d, d], Rows::Tokens));
            sites.push(o_proj.site(at("attention.o_proj"), [d, d], Rows::Tokens));
            let Mlp { gate_proj, up_proj, down_proj, .. } = &mut layer.mlp;
            if let Some(gate) = gate_proj {
                sites.push(gate.site(at("mlp.gate_proj"), [d, m], Rows::Tokens));
            }
            sites.push(up_proj.site(at("mlp.up_proj"), [d, m], Rows::Tokens));
            sites.push(down_proj.site(at("mlp.down_proj"), [m, d], Rows::Tokens));
        }
        sites
    }

    /// The rotary tables for `pixels`' patch grid, `[1, 1, n, hd]` each, on its device.
    pub fn rope(&self, pixels: &Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let [_, _, h, w] = pixels.dims();
        let (gh, gw) = (h / self.patch_size, w / self.patch_size);
        let (cos, sin) = rope_tables(gh, gw, self.head_dim, self.rope_theta, &self.coords);
        let device = pixels.device();
        let table = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [1, 1, gh * gw, self.head_dim]), &device);
        (table(cos), table(sin))
    }

    /// The normed last hidden state: `[b, c, h, w]` -> `[b, 1 + r + n, d]`.
    pub fn last_hidden_state(&self, pixels: Tensor<4>) -> Tensor<3> {
        let (cos, sin) = self.rope(&pixels);
        let mut h = self.embeddings.forward(pixels);
        for layer in &self.layer {
            h = layer.forward(h, &cos, &sin);
        }
        norm(&self.norm, self.eps, h)
    }

    /// `pooler_output`, the class token of the normed last hidden state: `[b, c, h, w]` -> `[b, d]`.
    /// Only the class token of the last layer is computed (the other tokens' outputs are never used).
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<2> {
        let (cos, sin) = self.rope(&pixels);
        let mut h = self.embeddings.forward(pixels);
        let Some((last, layers)) = self.layer.split_last() else {
            let [b, _, d] = h.dims();
            return norm(&self.norm, self.eps, h.slice([0..b, 0..1, 0..d]).reshape([b, d]));
        };
        for layer in layers {
            h = layer.forward(h, &cos, &sin);
        }
        let cls = last.forward_class_token(h, &cos, &sin); // [b, 1, d]
        let [b, _, d] = cls.dims();
        norm(&self.norm, self.eps, cls.reshape([b, d])) // [b, d]
    }
}

/// Every tensor the model loads, named under `prefix`, with its PyTorch shape, in checkpoint
/// order.
pub fn tensor_shapes(cfg: &Dinov3Config, prefix: &str) -> Vec<(String, Vec<usize>)> {
    let mut model = Dinov3::skeleton(cfg, &Device::flex());
    let mut out = Vec::new();
    model
        .visit_params(cfg, prefix, &mut |entry| {
            out.push((entry.name.to_string(), entry.shape.to_vec()));
            Ok(())
        })
        .expect("recording names cannot fail");
    out
}

/// The layer a detector's tensor name belongs to (`backbone.layer.{i}.*`).
pub fn layer_index(name: &str) -> Option<usize> {
    let rest = name.strip_prefix(ROOT)?.strip_prefix(".layer.")?;
    rest.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_tables_follow_the_reference_layout() {
        // One patch: its centre is (0, 0), so every angle is 0.
        let (cos, sin) = rope_tables(1, 1, 8, 100.0, &Coords::IDENTITY);
        assert!(cos.iter().all(|&c| c == 1.0) && sin.iter().all(|&s| s == 0.0));
        // 2 x 2 patches, head width 8: frequencies 1 and 100^-0.5 = 0.1; the first patch is at
        // (y, x) = (-0.5, -0.5), laid out [y f0, y f1, x f0, x f1] twice.
        let (cos, sin) = rope_tables(2, 2, 8, 100.0, &Coords::IDENTITY);
        let a = |c: f32, f: f32| 2.0 * std::f32::consts::PI * c * f;
        let want = [a(-0.5, 1.0), a(-0.5, 0.1), a(-0.5, 1.0), a(-0.5, 0.1)];
        for (k, angle) in want.iter().chain(&want).enumerate() {
            assert!((sin[k] - angle.sin()).abs() < 1e-6 && (cos[k] - angle.cos()).abs() < 1e-6, "{k}");
        }
        // The second patch (row 0, column 1) has x = +0.5.
        assert!((sin[8 + 2] - a(0.5, 1.0).sin()).abs() < 1e-6);
        assert_eq!(cos.len(), 4 * 8);
    }

    #[test]
    fn tensor_shapes_follow_the_reference_names() {
        let cfg = Dinov3Config { num_hidden_layers: 1, ..Dinov3Config::vitl16() };
        let shapes = tensor_shapes(&cfg, "");
        assert_eq!(shapes[0], ("embeddings.cls_token".into(), vec![1, 1, 1024]));
        assert_eq!(shapes[2], ("embeddings.register_tokens".into(), vec![1, 4, 1024]));
        assert_eq!(shapes[3], ("embeddings.patch_embeddings.weight".into(), vec![1024, 3, 16, 16]));
        assert!(shapes.iter().any(|(n, s)| n == "layer.0.attention.k_proj.weight" && s == &[1024, 1024]));
        assert!(!shapes.iter().any(|(n, _)| n == "layer.0.attention.k_proj.bias"), "k_proj has no bias");
        assert_eq!(shapes.last().unwrap().0, "norm.bias");
        // 5 embedding tensors, 17 per layer (2 norms x 2, q/v/o with bias, k without, 2 scales,
        // up/down with bias), 2 for the final norm.
        assert_eq!(shapes.len(), 5 + 17 + 2);
        let named = tensor_shapes(&cfg, ROOT);
        assert_eq!(named[3].0, "backbone.embeddings.patch_embeddings.weight");
        assert_eq!(layer_index("backbone.layer.0.mlp.up_proj.bias"), Some(0));
        assert_eq!(layer_index("backbone.norm.weight"), None);
    }

    #[test]
    fn training_coordinates_follow_the_reference_transform() {
        // The default config rescales only: one factor for both axes, in [1/2, 2].
        let cfg = Dinov3Config::default();
        let mut draws = [0.0, 1.0].into_iter();
        let low = Coords::draw(&cfg, || draws.next().unwrap());
        assert_eq!((low.shift, low.jitter), ([0.0; 2], [1.0; 2]));
        assert!((low.rescale - 0.5).abs() < 1e-6, "{low:?}");
        assert!((Coords::draw(&cfg, || 1.0).rescale - 2.0).abs() < 1e-6);
        // Shift, then jitter, then rescale.
        let all = Dinov3Config { pos_embed_shift: Some(0.5), pos_embed_jitter: Some(2.0), ..cfg };
        let c = Coords::draw(&all, || 1.0);
        let (y, x) = c.apply(0.25, -0.25);
        assert!((y - (0.25 + 0.5) * 2.0 * 2.0).abs() < 1e-5 && (x - (-0.25 + 0.5) * 4.0).abs() < 1e-5);
        // The tables move with the coordinates: one patch at the centre, rescaled, stays at 0.
        let (_, sin) = rope_tables(1, 1, 8, 100.0, &low);
        assert!(sin.iter().all(|&s| s == 0.0));
        let (_, sin) = rope_tables(2, 2, 8, 100.0, &c);
        let (_, plain) = rope_tables(2, 2, 8, 100.0, &Coords::IDENTITY);
        assert_ne!(sin, plain);
    }

    #[test]
    fn linear_with_a_non_square_adapter_adds_x_a_b_scaling() {
        // in 3, out 5, rank 2: y = x W + b + (x A) B · s, by hand in f64.
        let device = Device::flex();
        let (d_in, d_out, r, s) = (3, 5, 2, 0.75);
        let vals = |n: usize, k: f64| (0..n).map(|i| ((i as f64 * k).sin() * 0.9) as f32).collect::<Vec<f32>>();
        let (w, b, a, bb, x) = (
            vals(d_in * d_out, 1.3),
            vals(d_out, 0.7),
            vals(d_in * r, 2.1),
            vals(r * d_out, 0.4),
            vals(2 * 4 * d_in, 0.55),
        );
        let m2 = |v: &Vec<f32>, shape: [usize; 2]| {
            Param::from_tensor(Tensor::<2>::from_data(TensorData::new(v.clone(), shape), &device))
        };
        let linear = Linear {
            bf16_values: false,
            weight_t: None,
            weight: m2(&w, [d_in, d_out]),
            bias: Some(Param::from_tensor(Tensor::<1>::from_data(TensorData::new(b.clone(), [d_out]), &device))),
            lora: Some(Lora { lora_a: m2(&a, [d_in, r]), lora_b: m2(&bb, [r, d_out]), scaling: s, dropout_mask: None }),
        };
        let input = Tensor::<3>::from_data(TensorData::new(x.clone(), [2, 4, d_in]), &device);
        let got: Vec<f32> = linear.forward(input.clone()).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(got.len(), 2 * 4 * d_out);
        let mut worst = 0f64;
        for row in 0..8 {
            let xr = &x[row * d_in..(row + 1) * d_in];
            let down: Vec<f64> = (0..r).map(|k| (0..d_in).map(|i| xr[i] as f64 * a[i * r + k] as f64).sum()).collect();
            for j in 0..d_out {
                let base: f64 = (0..d_in).map(|i| xr[i] as f64 * w[i * d_out + j] as f64).sum::<f64>() + b[j] as f64;
                let delta: f64 = (0..r).map(|k| down[k] * bb[k * d_out + j] as f64).sum::<f64>() * s;
                worst = worst.max((got[row * d_out + j] as f64 - (base + delta)).abs());
            }
        }
        assert!(worst < 1e-5, "max |diff| {worst}");
        // A dropout mask multiplies the adapter's input only: all-zero leaves the base.
        let mut dropped = linear;
        let base: Vec<f32> = dropped.base(input.clone()).into_data().try_to_vec::<f32>().unwrap();
        dropped.lora.as_mut().unwrap().dropout_mask = Some(Tensor::zeros([2, 4, d_in], &device));
        let got: Vec<f32> = dropped.forward(input).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(got, base);
    }

    #[test]
    fn sites_follow_the_checkpoint_names() {
        let cfg = Dinov3Config { num_hidden_layers: 2, use_gated_mlp: true, ..Dinov3Config::vitb16() };
        let mut model = Dinov3::skeleton(&cfg, &Device::flex());
        let sites = model.sites(&cfg, ROOT);
        assert_eq!(sites.len(), 2 * 7);
        assert_eq!(sites[0].name, "backbone.layer.0.attention.k_proj");
        let gate = sites.iter().find(|s| s.name == "backbone.layer.1.mlp.gate_proj").unwrap();
        assert_eq!(gate.dims, [768, 3072]);
        let down = sites.iter().find(|s| s.name == "backbone.layer.1.mlp.down_proj").unwrap();
        assert_eq!(down.dims, [3072, 768]);
        let names: Vec<String> = tensor_shapes(&cfg, ROOT).into_iter().map(|(n, _)| n).collect();
        assert!(sites.iter().all(|s| names.contains(&format!("{}.weight", s.name))));
    }

    #[test]
    fn configs_validate() {
        assert!(Dinov3Config::vitl16().validate().is_ok());
        assert!(Dinov3Config::vitb16().validate().is_ok());
        let odd = Dinov3Config { hidden_size: 36, num_attention_heads: 6, ..Dinov3Config::default() };
        assert!(odd.validate().is_err(), "head width 6 is not a multiple of 4");
    }
}
