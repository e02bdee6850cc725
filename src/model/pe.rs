//! The Perception Encoder (timm 1.0's `Eva` built by `vit_pe_core_*`), GenD's `GenD_PE_L` backbone:
//! a bias-free patch embedding, a class token, a learned position embedding made for the preset's
//! image size, a LayerNorm before the blocks (`norm_pre`), pre-norm blocks whose attention applies
//! rotary embeddings to the patches' queries and keys, a final LayerNorm, and a latent attention
//! pool (`global_pool='map'`). GenD replaces the released projection (`head`, D -> 1024) by an
//! identity, so its feature is the pool's output, `[b, D]` (`num_features = embed_dim`).
//!
//! GenD runs the model with `dynamic_img_size=True` at 224 pixels, a grid other than the preset's
//! (16x16 for the L/14-336 preset made for 24x24). timm then, on every forward:
//! - resamples the position embedding's grid part to the input's grid with ATen's antialiased
//!   bicubic (`resample_abs_pos_embed`: `interpolate(mode="bicubic", antialias=True)` in f32, the
//!   class token's row kept), which is done here the same way: one axis' weights as a matrix
//!   ([`crate::preprocess::antialias::resize_matrix`], bit-identical to ATen's), width then
//!   height. The parameter keeps the checkpoint's shape, so that names, shapes and exports match
//!   timm's state dict, and a full fine-tuning would train the tensor timm trains;
//! - builds the rotary table for the input's grid from the cached frequencies (`rope.bands`, not
//!   in the state dict): see [`rope_tables`].
//!
//! Attention is `AttentionRope` (fused `qkv` with bias, no q/k norm, no inner norm, no layer
//! scale), MLPs `fc1 -> GELU (erf) -> fc2`; LayerNorms have eps 1e-5. Module paths mirror timm's
//! names (`blocks.{i}.attn.qkv`, `attn_pool.kv`, ...), walked once per module as in
//! [`super::clip`], so loading and naming share one description.
//!
//! GenD's LN-tuning for PE trains every parameter whose name contains `norm_pre`, `norm1`, `norm2`
//! or `norm` (a substring rule, so `norm` alone decides): `norm_pre.{weight,bias}`,
//! `blocks.{i}.norm1.*`, `blocks.{i}.norm2.*`, `norm.*` and `attn_pool.norm.*`. There is no
//! `fc_norm` (an identity with the attention pool), and the q/k norms and the attention's inner
//! norm are identities without parameters.

use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::dinov3::Linear;
use super::fused::attention::attention_bf16;
use super::fused::bf16::{autocast_bf16, for_two_uses, round_bf16, rounded_under_autocast};
use super::fused::rotary::{Pairs, rotary};
use super::fused::{self, norm, norm_for_products};
use super::lora::{Lora, Rows, Site};
use super::params::{Layout, Loader, Visit, Walker, empty};
use super::tensors::TensorMap;
use crate::preprocess::antialias::{Filter, resize_matrix};
use crate::{Error, Result};

/// Image channels (RGB).
const CHANNELS: usize = 3;

/// How the rotary table orders a patch's two coordinates (timm's `rope_grid_indexing`, the
/// `indexing` of `torch.meshgrid`): the PE presets use `xy` (the column's coordinate first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GridIndexing {
    /// `[x·f, y·f]`: the column's coordinate first.
    Xy,
    /// `[y·f, x·f]`: the row's coordinate first.
    Ij,
}

/// The Perception Encoder's shape: timm's `Eva` arguments for the `vit_pe_core_*` presets
/// (ratios resolved to widths as timm's modules hold them), and the image size GenD runs it at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeConfig {
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    /// The blocks' MLP width (`int(embed_dim * mlp_ratio)`).
    pub mlp_dim: usize,
    pub patch_size: usize,
    /// The preset's (native) image side: the position embedding holds a grid of
    /// `img_size / patch_size` patches per side.
    pub img_size: usize,
    /// The side of the images the model runs on (GenD: 224).
    pub image_size: usize,
    /// A class token before the patches (the gigantic preset has none).
    pub class_token: bool,
    /// The grid the rotary coordinates are scaled to (`[h, w]`; the native grid in the presets).
    pub ref_feat_shape: [usize; 2],
    /// Added to the patches' indices before scaling (1 for B and L, 0 for G).
    pub rope_grid_offset: f64,
    pub rope_grid_indexing: GridIndexing,
    pub rope_temperature: f64,
    pub attn_pool_num_heads: usize,
    /// The attention pool's MLP width (`int(embed_dim * attn_pool_mlp_ratio)`).
    pub attn_pool_mlp_dim: usize,
    pub layer_norm_eps: f64,
}

impl Default for PeConfig {
    /// GenD's `GenD_PE_L` backbone, for fields a config file leaves out.
    fn default() -> Self {
        Self::large()
    }
}

impl PeConfig {
    /// `vit_pe_core_large_patch14_336` at 224 pixels (GenD's `GenD_PE_L`).
    pub fn large() -> Self {
        Self {
            embed_dim: 1024,
            depth: 24,
            num_heads: 16,
            mlp_dim: 4096,
            patch_size: 14,
            img_size: 336,
            image_size: 224,
            class_token: true,
            ref_feat_shape: [24, 24],
            rope_grid_offset: 1.0,
            rope_grid_indexing: GridIndexing::Xy,
            rope_temperature: 10000.0,
            attn_pool_num_heads: 8,
            attn_pool_mlp_dim: 4096,
            layer_norm_eps: 1e-5,
        }
    }

    /// `vit_pe_core_base_patch16_224` at 224 pixels.
    pub fn base() -> Self {
        Self {
            embed_dim: 768,
            depth: 12,
            num_heads: 12,
            mlp_dim: 3072,
            patch_size: 16,
            img_size: 224,
            ref_feat_shape: [14, 14],
            attn_pool_mlp_dim: 3072,
            ..Self::large()
        }
    }

    /// `vit_pe_core_gigantic_patch14_448` at 224 pixels: no class token, no grid offset.
    pub fn gigantic() -> Self {
        Self {
            embed_dim: 1536,
            depth: 50,
            num_heads: 16,
            mlp_dim: 8960,
            img_size: 448,
            class_token: false,
            ref_feat_shape: [32, 32],
            rope_grid_offset: 0.0,
            attn_pool_mlp_dim: 6144,
            ..Self::large()
        }
    }

    /// The presets by timm model name (with or without `timm/` before it and `.fb` after it),
    /// at GenD's 224 pixels.
    pub fn preset(name: &str) -> Option<Self> {
        let name = name.strip_prefix("timm/").unwrap_or(name);
        match name.strip_suffix(".fb").unwrap_or(name) {
            "vit_pe_core_base_patch16_224" => Some(Self::base()),
            "vit_pe_core_large_patch14_336" => Some(Self::large()),
            "vit_pe_core_gigantic_patch14_448" => Some(Self::gigantic()),
            _ => None,
        }
    }

    /// Width of one attention head in the blocks.
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    /// Tokens before the patches: the class token, if any.
    pub fn prefix_tokens(&self) -> usize {
        usize::from(self.class_token)
    }

    /// The position embedding's grid side.
    pub fn native_grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// The grid side at [`Self::image_size`].
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// The feature's width (timm's `num_features`).
    pub fn num_features(&self) -> usize {
        self.embed_dim
    }

    /// Checks what the encoder relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::Invalid(format!("invalid Perception Encoder config: {what} ({self:?})")));
        if self.num_heads == 0 || !self.embed_dim.is_multiple_of(self.num_heads) {
            return bad("embed_dim must be a positive multiple of num_heads");
        }
        // The rotary table holds head_dim / 4 frequencies per coordinate, each twice.
        if self.head_dim() == 0 || !self.head_dim().is_multiple_of(4) {
            return bad("the head width must be a positive multiple of 4");
        }
        if self.attn_pool_num_heads == 0 || !self.embed_dim.is_multiple_of(self.attn_pool_num_heads) {
            return bad("embed_dim must be a positive multiple of attn_pool_num_heads");
        }
        if self.patch_size == 0 || self.native_grid() == 0 || self.grid() == 0 {
            return bad("img_size and image_size must hold at least one patch");
        }
        if self.ref_feat_shape.contains(&0) || self.mlp_dim == 0 || self.attn_pool_mlp_dim == 0 {
            return bad("ref_feat_shape and the MLP widths must be positive");
        }
        let temperature_ok = self.rope_temperature.is_finite() && self.rope_temperature > 0.0;
        if !temperature_ok || !self.rope_grid_offset.is_finite() {
            return bad("rope_temperature must be positive and rope_grid_offset finite");
        }
        Ok(())
    }

    /// Reads a config file: this struct as JSON (tests/fixtures/tiny-pe/config.json), absent
    /// fields taking the L/14 preset's values.
    pub fn from_json(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config: Self = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("not a Perception Encoder config: {e}")))?;
        config.validate().map_err(|e| Error::format(path, e.to_string()))?;
        Ok(config)
    }
}

/// The rotary embedding's `(sin, cos)`, each `[gh·gw, head_dim]` row-major over the patches, as
/// timm's `RotaryEmbeddingCat.get_embed(shape)` builds them for a `gh` x `gw` grid (`in_pixels`
/// off): per axis of `n` patches with reference size `r`, coordinates
/// `(index + grid_offset) / n · r`; frequencies `f_k = 1 / temperature^(k / q)` for
/// `k < q = head_dim / 4`; per patch the angles `[c0·f, c1·f]` (`c0` the column's coordinate
/// with `xy` indexing, the row's with `ij`), each angle repeated twice in a row (the
/// interleaved layout that [`rotate_pairs`] pairs with). All in f32, as timm computes them.
pub fn rope_tables(gh: usize, gw: usize, cfg: &PeConfig) -> (Vec<f32>, Vec<f32>) {
    let head_dim = cfg.head_dim();
    let q = head_dim / 4;
    let temperature = cfg.rope_temperature as f32;
    // torch: 1 / temperature ** (arange(q) / q), in f32.
    let bands: Vec<f32> = (0..q).map(|k| 1.0 / temperature.powf(k as f32 / q as f32)).collect();
    let offset = cfg.rope_grid_offset as f32;
    let coord = |i: usize, n: usize, r: usize| (i as f32 + offset) / n as f32 * r as f32;
    let [rh, rw] = cfg.ref_feat_shape;
    let (mut sin, mut cos) = (Vec::with_capacity(gh * gw * head_dim), Vec::with_capacity(gh * gw * head_dim));
    for i in 0..gh {
        for j in 0..gw {
            let (y, x) = (coord(i, gh, rh), coord(j, gw, rw));
            let first = match cfg.rope_grid_indexing {
                GridIndexing::Xy => [x, y],
                GridIndexing::Ij => [y, x],
            };
            for c in first {
                for &f in &bands {
                    let angle = c * f;
                    sin.extend([angle.sin(); 2]);
                    cos.extend([angle.cos(); 2]);
                }
            }
        }
    }
    (sin, cos)
}

/// Scaled dot-product attention of `q` `[b, h, tq, hd]` over `k`, `v` `[b, h, t, hd]`:
/// `[b, h, tq, hd]`, scale `hd^-0.5`. Written as two batched products around the fused softmax,
/// which measured 3 % faster than burn's attention kernel on the L/14 encoder at batch 8 (its
/// scalar `exp` runs per element; the products' temporary `[b, h, tq, t]` costs about 50 MB);
/// the same operations differentiate for training.
fn sdpa(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    let scale = (q.dims()[3] as f64).powf(-0.5);
    let scores = (q * scale).matmul(k.swap_dims(2, 3)); // [b, h, tq, t]
    fused::softmax_last(scores).matmul(v)
}

/// An `nn.Linear` with a bias, to fill from a checkpoint.
fn linear_skeleton(device: &Device) -> Linear {
    Linear::skeleton(true, device)
}

/// The linear and its adapter, if any (see [`Linear::walk`]).
fn walk_linear(linear: &mut Linear, w: &mut Walker<'_, '_>, d_in: usize, d_out: usize) -> Result<()> {
    linear.walk(w, d_in, d_out)
}

fn layer_norm_skeleton(cfg: &PeConfig, device: &Device) -> LayerNorm {
    LayerNormConfig::new(cfg.embed_dim).with_epsilon(cfg.layer_norm_eps).init(device)
}

/// timm's `Mlp`: `fc1 -> GELU (erf) -> fc2`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Mlp {
    fn skeleton(device: &Device) -> Self {
        Self { fc1: linear_skeleton(device), fc2: linear_skeleton(device) }
    }

    fn walk(&mut self, w: &mut Walker<'_, '_>, d: usize, m: usize) -> Result<()> {
        walk_linear(&mut self.fc1, &mut w.pp("fc1"), d, m)?;
        walk_linear(&mut self.fc2, &mut w.pp("fc2"), m, d)
    }

    /// `[b, t, d]` -> `[b, t, d]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        if let Some(out) = self.fc1.gelu_into(&self.fc2, &x) {
            return out;
        }
        self.fc2.forward(rounded_under_autocast(fused::gelu(self.fc1.forward(x))))
    }

    fn linears_mut(&mut self) -> [&mut Linear; 2] {
        [&mut self.fc1, &mut self.fc2]
    }
}

/// timm's `AttentionRope`: fused `qkv` (`[q | k | v]`, heads contiguous in each), rotary
/// embeddings on the patches' queries and keys, output projection.
#[derive(Module, Debug)]
pub struct Attention {
    /// `[d, 3d]`
    pub qkv: Linear,
    pub proj: Linear,
    num_heads: usize,
}

impl Attention {
    fn skeleton(cfg: &PeConfig, device: &Device) -> Self {
        Self { qkv: linear_skeleton(device), proj: linear_skeleton(device), num_heads: cfg.num_heads }
    }

    fn walk(&mut self, w: &mut Walker<'_, '_>, d: usize) -> Result<()> {
        walk_linear(&mut self.qkv, &mut w.pp("qkv"), d, 3 * d)?;
        walk_linear(&mut self.proj, &mut w.pp("proj"), d, d)
    }

    /// `[b, t, d]` -> `[b, t, d]`, with the rotary tables `[1, 1, n, hd]` of the `n` patches.
    pub fn forward(&self, x: Tensor<3>, sin: &Tensor<4>, cos: &Tensor<4>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let (h, hd) = (self.num_heads, d / self.num_heads);
        let qkv = self.qkv.forward(x); // [b, t, 3d]
        let part = |k: usize| {
            qkv.clone().slice([0..b, 0..t, k * d..(k + 1) * d]).reshape([b, t, h, hd]).swap_dims(1, 2) // [b, h, t, hd]
        };
        let q = rotary(part(0), cos, sin, Pairs::Interleaved);
        let k = rotary(part(1), cos, sin, Pairs::Interleaved);
        let ctx = if autocast_bf16() {
            // bf16-mixed: timm rotates in f32 and casts back (`type_as(v)`); SDPA on bfloat16
            // is PyTorch's CPU flash attention.
            attention_bf16(round_bf16(q), round_bf16(k), part(2), (hd as f64).powf(-0.5))
        } else {
            sdpa(q, k, part(2))
        }; // [b, h, t, hd]
        self.proj.forward(ctx.swap_dims(1, 2).reshape([b, t, d]))
    }
}

/// `EvaBlock` (no layer scale): `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
#[derive(Module, Debug)]
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
    eps: f64,
}

impl Block {
    fn skeleton(cfg: &PeConfig, device: &Device) -> Self {
        Self {
            norm1: layer_norm_skeleton(cfg, device),
            attn: Attention::skeleton(cfg, device),
            norm2: layer_norm_skeleton(cfg, device),
            mlp: Mlp::skeleton(device),
            eps: cfg.layer_norm_eps,
        }
    }

    fn walk(&mut self, w: &mut Walker<'_, '_>, cfg: &PeConfig) -> Result<()> {
        let d = cfg.embed_dim;
        w.pp("norm1").layer_norm(&mut self.norm1, d)?;
        self.attn.walk(&mut w.pp("attn"), d)?;
        w.pp("norm2").layer_norm(&mut self.norm2, d)?;
        self.mlp.walk(&mut w.pp("mlp"), d, cfg.mlp_dim)
    }

    /// `[b, t, d]` -> `[b, t, d]`
    pub fn forward(&self, x: Tensor<3>, sin: &Tensor<4>, cos: &Tensor<4>) -> Tensor<3> {
        // Each LayerNorm's output is read by one product alone ([`norm_for_products`]).
        let normed1 = norm_for_products(&self.norm1, self.eps, x.clone(), self.attn.qkv.lora.is_some());
        let x = x + self.attn.forward(normed1, sin, cos);
        let normed2 = norm_for_products(&self.norm2, self.eps, x.clone(), self.mlp.fc1.lora.is_some());
        x + self.mlp.forward(normed2)
    }
}

/// timm's `AttentionPoolLatent` as PE configures it: one learned latent query attends over
/// every token (no position embedding, no q/k norm), then `x + mlp(norm(x))`.
#[derive(Module, Debug)]
pub struct AttentionPool {
    /// `[1, d]` (checkpoint `[1, 1, d]`).
    pub latent: Param<Tensor<2>>,
    pub q: Linear,
    /// `[d, 2d]`: `[k | v]`.
    pub kv: Linear,
    pub proj: Linear,
    pub norm: LayerNorm,
    pub mlp: Mlp,
    num_heads: usize,
    eps: f64,
}

impl AttentionPool {
    fn skeleton(cfg: &PeConfig, device: &Device) -> Self {
        Self {
            latent: empty(device),
            q: linear_skeleton(device),
            kv: linear_skeleton(device),
            proj: linear_skeleton(device),
            norm: layer_norm_skeleton(cfg, device),
            mlp: Mlp::skeleton(device),
            num_heads: cfg.attn_pool_num_heads,
            eps: cfg.layer_norm_eps,
        }
    }

    fn walk(&mut self, w: &mut Walker<'_, '_>, cfg: &PeConfig) -> Result<()> {
        let d = cfg.embed_dim;
        w.matrix("latent", &mut self.latent, &[1, 1, d], Layout::LeadingOne)?;
        walk_linear(&mut self.q, &mut w.pp("q"), d, d)?;
        walk_linear(&mut self.kv, &mut w.pp("kv"), d, 2 * d)?;
        walk_linear(&mut self.proj, &mut w.pp("proj"), d, d)?;
        w.pp("norm").layer_norm(&mut self.norm, d)?;
        self.mlp.walk(&mut w.pp("mlp"), d, cfg.attn_pool_mlp_dim)
    }

    /// `[b, t, d]` -> `[b, d]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<2> {
        let [b, t, d] = x.dims();
        let (h, hd) = (self.num_heads, d / self.num_heads);
        let q = self.q.forward(self.latent.val().unsqueeze::<3>()); // [1, 1, d]
        let q = q.reshape([1, h, 1, hd]).expand([b as i64, h as i64, 1, hd as i64]); // [b, h, 1, hd]
        let kv = self.kv.forward(x); // [b, t, 2d]
        let heads = |y: Tensor<3>| y.reshape([b, t, h, hd]).swap_dims(1, 2); // [b, h, t, hd]
        let k = heads(kv.clone().slice([0..b, 0..t, 0..d]));
        let v = heads(kv.slice([0..b, 0..t, d..2 * d]));
        if autocast_bf16() {
            // bf16-mixed: the pool runs in bfloat16 throughout, its LayerNorm (on a bfloat16
            // input: f32 inside, a bfloat16 output) and residual sum included.
            let ctx = attention_bf16(q, k, v, (hd as f64).powf(-0.5));
            let pooled = self.proj.forward(ctx.swap_dims(1, 2).reshape([b, 1, d])); // [b, 1, d]
            let (residual, to_norm) = for_two_uses(pooled);
            let normed = round_bf16(norm(&self.norm, self.eps, to_norm));
            return round_bf16(residual + self.mlp.forward(normed)).reshape([b, d]);
        }
        let pooled = self.proj.forward(sdpa(q, k, v).swap_dims(1, 2).reshape([b, 1, d])); // [b, 1, d]
        let pooled = pooled.clone() + self.mlp.forward(norm(&self.norm, self.eps, pooled));
        pooled.reshape([b, d])
    }
}

/// timm's `Eva` as the `vit_pe_core_*` presets build it, with `head = Identity` (GenD).
#[derive(Module, Debug)]
pub struct Pe {
    /// `[1, d]` (checkpoint `[1, 1, d]`); none in the gigantic preset.
    pub cls_token: Option<Param<Tensor<2>>>,
    /// `[prefix + g·g, d]` for the native grid `g` (checkpoint `[1, prefix + g·g, d]`).
    pub pos_embed: Param<Tensor<2>>,
    /// The patch convolution (kernel = stride = patch, no bias) as a matrix `[3·p·p, d]`.
    pub patch_embed: Param<Tensor<2>>,
    /// The LoRA adapter on the patch convolution (peft's `lora.Conv2d`, which a target matching
    /// `patch_embed.proj`, e.g. `proj`, puts there) while training with LoRA.
    pub patch_embed_lora: Option<Lora>,
    pub norm_pre: LayerNorm,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
    pub attn_pool: AttentionPool,
    #[module(skip)]
    cfg: PeConfig,
}

impl Pe {
    /// Every projection of the blocks and the attention pool.
    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        let blocks = self.blocks.iter_mut().flat_map(|block| {
            let Block { attn, mlp, .. } = block;
            [&mut attn.qkv, &mut attn.proj].into_iter().chain(mlp.linears_mut())
        });
        let AttentionPool { q, kv, proj, mlp, .. } = &mut self.attn_pool;
        blocks.chain([q, kv, proj]).chain(mlp.linears_mut())
    }

    /// Takes the model's tensors out of `map` (timm state-dict names under `prefix`, e.g. `""`
    /// for timm's own file, `backbone.` inside GenD's), checking every shape.
    pub fn load(ld: &Loader, map: &mut TensorMap, cfg: &PeConfig, prefix: &str) -> Result<Self> {
        cfg.validate()?;
        let mut model = Self::skeleton(cfg, &ld.device);
        model.visit_params(cfg, prefix, &mut |entry| ld.fill(map, entry))?;
        Ok(model)
    }

    pub(crate) fn skeleton(cfg: &PeConfig, device: &Device) -> Self {
        Self {
            cls_token: cfg.class_token.then(|| empty(device)),
            pos_embed: empty(device),
            patch_embed: empty(device),
            patch_embed_lora: None,
            norm_pre: layer_norm_skeleton(cfg, device),
            blocks: (0..cfg.depth).map(|_| Block::skeleton(cfg, device)).collect(),
            norm: layer_norm_skeleton(cfg, device),
            attn_pool: AttentionPool::skeleton(cfg, device),
            cfg: cfg.clone(),
        }
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &PeConfig {
        &self.cfg
    }

    /// Calls `visit` on every parameter, in timm's state-dict order, named under `prefix`.
    pub fn visit_params(&mut self, cfg: &PeConfig, prefix: &str, visit: &mut Visit<'_>) -> Result<()> {
        let mut root = Walker::new(visit);
        let mut w = if prefix.is_empty() { root } else { root.pp(prefix.trim_end_matches('.')) };
        let (d, p) = (cfg.embed_dim, cfg.patch_size);
        if let Some(cls) = &mut self.cls_token {
            w.matrix("cls_token", cls, &[1, 1, d], Layout::LeadingOne)?;
        }
        let positions = cfg.prefix_tokens() + cfg.native_grid() * cfg.native_grid();
        w.matrix("pos_embed", &mut self.pos_embed, &[1, positions, d], Layout::LeadingOne)?;
        let conv = Layout::PatchEmbedding { channels: CHANNELS, patch: p };
        let mut proj = w.pp("patch_embed.proj");
        let adapter = self.patch_embed_lora.as_ref();
        proj.adapted_matrix("weight", &mut self.patch_embed, &[d, CHANNELS, p, p], conv, adapter)?;
        if let Some(lora) = &mut self.patch_embed_lora {
            proj.conv_lora(lora, CHANNELS, p)?;
        }
        w.pp("norm_pre").layer_norm(&mut self.norm_pre, d)?;
        for (i, block) in self.blocks.iter_mut().enumerate() {
            block.walk(&mut w.pp("blocks").pp(i), cfg)?;
        }
        w.pp("norm").layer_norm(&mut self.norm, d)?;
        self.attn_pool.walk(&mut w.pp("attn_pool"), cfg)
    }

    /// Every module peft's LoRA can wrap, as a place for an adapter, named under `prefix` as in
    /// checkpoints (`backbone.blocks.0.attn.qkv`), in state-dict order: the patch convolution
    /// (`patch_embed.proj`), each block's `attn.qkv`, `attn.proj`, `mlp.fc1`, `mlp.fc2`, and the
    /// attention pool's `q`, `kv`, `proj`, `mlp.fc1`, `mlp.fc2`.
    pub fn sites(&mut self, prefix: &str) -> Vec<Site<'_>> {
        let cfg = &self.cfg;
        let (d, m, pm, p) = (cfg.embed_dim, cfg.mlp_dim, cfg.attn_pool_mlp_dim, cfg.patch_size);
        let root = if prefix.is_empty() { String::new() } else { format!("{}.", prefix.trim_end_matches('.')) };
        let at = |module: &str| format!("{root}{module}");
        let conv = [CHANNELS * p * p, d];
        let mut sites = vec![Site {
            name: at("patch_embed.proj"),
            dims: conv,
            rows: Rows::Patches,
            slot: &mut self.patch_embed_lora,
        }];
        for (i, block) in self.blocks.iter_mut().enumerate() {
            let at = |module: &str| format!("{root}blocks.{i}.{module}");
            sites.push(block.attn.qkv.site(at("attn.qkv"), [d, 3 * d], Rows::Tokens));
            sites.push(block.attn.proj.site(at("attn.proj"), [d, d], Rows::Tokens));
            sites.push(block.mlp.fc1.site(at("mlp.fc1"), [d, m], Rows::Tokens));
            sites.push(block.mlp.fc2.site(at("mlp.fc2"), [m, d], Rows::Tokens));
        }
        let pool = &mut self.attn_pool;
        sites.push(pool.q.site(at("attn_pool.q"), [d, d], Rows::Latent));
        sites.push(pool.kv.site(at("attn_pool.kv"), [d, 2 * d], Rows::Tokens));
        sites.push(pool.proj.site(at("attn_pool.proj"), [d, d], Rows::Pooled));
        sites.push(pool.mlp.fc1.site(at("attn_pool.mlp.fc1"), [d, pm], Rows::Pooled));
        sites.push(pool.mlp.fc2.site(at("attn_pool.mlp.fc2"), [pm, d], Rows::Pooled));
        sites
    }

    /// The position embedding for a `gh` x `gw` grid, `[prefix + gh·gw, d]`: the parameter
    /// itself on the native grid, else its grid part resampled as timm's
    /// `resample_abs_pos_embed` does (antialiased bicubic, in f32, width then height; the
    /// prefix rows unchanged).
    pub fn pos_embed_for(&self, gh: usize, gw: usize) -> Tensor<2> {
        let pos = self.pos_embed.val();
        let g = self.cfg.native_grid();
        if (gh, gw) == (g, g) {
            return pos;
        }
        let [rows, d] = pos.dims();
        let prefix = rows - g * g;
        let device = pos.device();
        let grid = pos.clone().slice([prefix..rows, 0..d]);
        let matrix = |out: usize| {
            let m = resize_matrix(Filter::Bicubic, g, out);
            Tensor::<2>::from_data(TensorData::new(m, [out, g]), &device)
        };
        // Width: [g, gw, g] x [g, g, d] -> [g, gw, d]; height: [gh, g] x [g, gw·d] -> [gh, gw·d].
        let wide = matrix(gw).unsqueeze::<3>().expand([g as i64, gw as i64, g as i64]).matmul(grid.reshape([g, g, d]));
        let resampled = matrix(gh).matmul(wide.reshape([g, gw * d])).reshape([gh * gw, d]);
        if prefix == 0 { resampled } else { Tensor::cat(vec![pos.slice([0..prefix, 0..d]), resampled], 0) }
    }

    /// The rotary tables for a `gh` x `gw` grid, `[1, 1, gh·gw, hd]` each, on `like`'s device.
    fn rope(&self, gh: usize, gw: usize, like: &Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let (sin, cos) = rope_tables(gh, gw, &self.cfg);
        let hd = self.cfg.head_dim();
        let device = like.device();
        let table = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [1, 1, gh * gw, hd]), &device);
        (table(sin), table(cos))
    }

    /// The tokens after the final norm (timm's `forward_features`): `[b, 3, h, w]` ->
    /// `[b, prefix + n, d]`.
    pub fn forward_features(&self, pixels: Tensor<4>) -> Tensor<3> {
        let [b, c, h, w] = pixels.dims();
        let p = self.cfg.patch_size;
        let (gh, gw) = (h / p, w / p);
        let (sin, cos) = self.rope(gh, gw, &pixels);
        // A stride-p convolution with a p×p kernel is a matmul over non-overlapping patches
        // (pixels beyond the last whole patch are ignored, as the convolution ignores them).
        let patches = pixels
            .slice([0..b, 0..c, 0..gh * p, 0..gw * p])
            .reshape([b, c, gh, p, gw, p]) // [b, c, gh, p, gw, p]
            .permute([0, 2, 4, 1, 3, 5]) // [b, gh, gw, c, p, p]
            .reshape([b, gh * gw, c * p * p]); // [b, n, c·p·p]
        let x = if autocast_bf16() {
            // bf16-mixed: the convolution on bfloat16 pixels and weight, its output bfloat16
            // (the class token and the position embedding, f32, promote the sum to f32).
            let weight = round_bf16(self.patch_embed.val()).unsqueeze::<3>();
            round_bf16(round_bf16(patches.clone()).matmul(weight))
        } else {
            patches.clone().matmul(self.patch_embed.val().unsqueeze::<3>())
        }; // [b, n, d]
        // peft's `lora.Conv2d`: the same patches through A (a convolution) and B (1x1).
        let x = match &self.patch_embed_lora {
            // bf16-mixed: the adapter's output and the sum are bfloat16 too.
            Some(adapter) if autocast_bf16() => round_bf16(x + adapter.forward_bf16(patches)),
            Some(adapter) => x + adapter.forward(patches),
            None => x,
        };
        let d = self.cfg.embed_dim;
        let x = match &self.cls_token {
            Some(cls) => {
                let cls = cls.val().unsqueeze::<3>().expand([b as i64, 1, d as i64]); // [b, 1, d]
                Tensor::cat(vec![cls, x], 1) // [b, 1 + n, d]
            }
            None => x,
        };
        let x = x + self.pos_embed_for(gh, gw).unsqueeze::<3>();
        let eps = self.cfg.layer_norm_eps;
        let mut x = norm(&self.norm_pre, eps, x);
        for block in &self.blocks {
            x = block.forward(x, &sin, &cos);
        }
        norm(&self.norm, eps, x)
    }

    /// GenD's feature, `backbone(x)` with `head = Identity`: the attention pool over the normed
    /// tokens, `[b, 3, h, w]` -> `[b, d]`.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<2> {
        self.attn_pool.forward(self.forward_features(pixels))
    }
}

/// Every tensor the model loads (timm names under `prefix`), with its PyTorch shape, in
/// state-dict order.
pub fn tensor_shapes(cfg: &PeConfig, prefix: &str) -> Vec<(String, Vec<usize>)> {
    let mut model = Pe::skeleton(cfg, &Device::flex());
    let mut out = Vec::new();
    model
        .visit_params(cfg, prefix, &mut |entry| {
            out.push((entry.name.to_string(), entry.shape.to_vec()));
            Ok(())
        })
        .expect("recording names cannot fail");
    out
}

/// The block a detector's tensor name belongs to (`backbone.blocks.{i}.*`).
pub fn layer_index(name: &str) -> Option<usize> {
    let rest = name.strip_prefix(super::dinov3::ROOT)?.strip_prefix(".blocks.")?;
    rest.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_tables_follow_timm_s_layout() {
        // Head width 8: q = 2 frequencies, 1 and 10000^-0.5 = 0.01. A 2 x 3 grid with reference
        // [4, 6] and offset 1: row i has y = (i + 1) / 2 · 4, column j has x = (j + 1) / 3 · 6.
        let cfg = PeConfig { embed_dim: 16, num_heads: 2, ref_feat_shape: [4, 6], ..PeConfig::large() };
        let (sin, cos) = rope_tables(2, 3, &cfg);
        assert_eq!((sin.len(), cos.len()), (6 * 8, 6 * 8));
        // Patch (row 1, column 2): y = 4, x = 6; 'xy' puts x first, each angle twice.
        let (y, x) = (4.0f32, 6.0f32);
        let want = [x, x, x * 0.01, x * 0.01, y, y, y * 0.01, y * 0.01];
        let row = 5 * 8;
        for (k, angle) in want.iter().enumerate() {
            assert!((sin[row + k] - angle.sin()).abs() < 1e-6 && (cos[row + k] - angle.cos()).abs() < 1e-6, "{k}");
        }
        // 'ij' puts the row's coordinate first.
        let (sin_ij, _) = rope_tables(2, 3, &PeConfig { rope_grid_indexing: GridIndexing::Ij, ..cfg });
        assert_eq!(sin_ij[row..row + 4], sin[row + 4..row + 8]);
    }

    #[test]
    fn tensor_shapes_follow_timm_s_names() {
        let cfg = PeConfig { depth: 1, ..PeConfig::large() };
        let shapes = tensor_shapes(&cfg, "");
        assert_eq!(shapes[0], ("cls_token".into(), vec![1, 1, 1024]));
        assert_eq!(shapes[1], ("pos_embed".into(), vec![1, 577, 1024]));
        assert_eq!(shapes[2], ("patch_embed.proj.weight".into(), vec![1024, 3, 14, 14]));
        assert!(shapes.iter().any(|(n, s)| n == "blocks.0.attn.qkv.weight" && s == &[3072, 1024]));
        assert!(shapes.iter().any(|(n, s)| n == "attn_pool.kv.weight" && s == &[2048, 1024]));
        assert_eq!(shapes.last().unwrap().0, "attn_pool.mlp.fc2.bias");
        // 3 embedding tensors, norm_pre, 12 per block, the final norm, 13 for the pool (the
        // latent and six weight-and-bias pairs): timm's state dict less the released `head`.
        assert_eq!(shapes.len(), 3 + 2 + 12 + 2 + 13);
        let g = tensor_shapes(&PeConfig { depth: 1, ..PeConfig::gigantic() }, "");
        assert_eq!(g[0], ("pos_embed".into(), vec![1, 1024, 1536]), "no class token");
    }

    #[test]
    fn sites_name_every_module_peft_wraps() {
        let cfg = PeConfig { depth: 2, ..PeConfig::base() };
        let mut model = Pe::skeleton(&cfg, &Device::flex());
        let sites = model.sites(super::super::dinov3::ROOT);
        let names: Vec<&str> = sites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names.len(), 1 + 2 * 4 + 5);
        assert_eq!(names[0], "backbone.patch_embed.proj");
        assert_eq!(sites[0].dims, [3 * 16 * 16, 768]);
        assert!(names.contains(&"backbone.blocks.1.attn.qkv") && names.contains(&"backbone.attn_pool.kv"));
        let kv = sites.iter().find(|s| s.name == "backbone.attn_pool.kv").unwrap();
        assert_eq!((kv.dims, kv.rows), ([768, 1536], Rows::Tokens));
        let q = sites.iter().find(|s| s.name == "backbone.attn_pool.q").unwrap();
        assert_eq!(q.rows, Rows::Latent);
        let shapes: Vec<String> = tensor_shapes(&cfg, "backbone").into_iter().map(|(n, _)| n).collect();
        assert!(names.iter().all(|n| shapes.contains(&format!("{n}.weight"))));
    }

    #[test]
    fn configs_validate() {
        for name in ["vit_pe_core_base_patch16_224", "timm/vit_pe_core_large_patch14_336.fb"] {
            assert!(PeConfig::preset(name).unwrap().validate().is_ok(), "{name}");
        }
        assert!(PeConfig::gigantic().validate().is_ok());
        assert!(PeConfig::preset("vit_pe_lang_large_patch14_448").is_none());
        let odd = PeConfig { embed_dim: 36, num_heads: 6, attn_pool_num_heads: 6, ..PeConfig::large() };
        assert!(odd.validate().is_err(), "head width 6 is not a multiple of 4");
    }
}
