//! How much arithmetic an encoder's matrix products do, so that a measured time can be put
//! against the CPU's measured peak ([`super::products::peak_gflops`]): the products are most of
//! the work (BENCHMARKS.md has the profiles), so a time near the peak leaves a faster kernel little
//! to gain.

use crate::model::config::EncoderConfig;
use crate::model::dinov3::Dinov3Config;
use crate::model::pe::PeConfig;

/// Multiply-adds of one image through an encoder's matrix products, as dfdet computes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Work {
    /// The forward pass to the encoder's feature: the patch embedding, every layer's attention
    /// projections, two attention products and the MLP's products; where only the class token
    /// is used (CLIP, DINOv3), the last layer computes the class token's query, attention,
    /// output projection and MLP only (the keys and values of every token).
    pub forward: f64,
    /// The backward pass of LN-tuning or LoRA: the input gradient of every projection the
    /// forward pass multiplied (none for the frozen patch embedding, whose input is the pixels),
    /// and per attention head five products where the probabilities are recomputed (the fused
    /// attention: CLIP's, and bf16-mixed's) or four where they are kept (the gradients of the
    /// probabilities, values, queries and keys).
    pub backward: f64,
}

/// Pre-norm transformer layers of width `d` over `t` tokens: `count` layers, the last of them on
/// the class token only when `class_only_last`; `mlp` multiply-adds per token in the MLP;
/// `attention_backward` the backward pass's attention products over the forward's.
struct Layers {
    d: f64,
    mlp: f64,
    t: f64,
    count: f64,
    class_only_last: bool,
    attention_backward: f64,
}

impl Layers {
    /// (forward, backward) multiply-adds.
    fn work(&self) -> (f64, f64) {
        let Self { d, mlp, t, count, class_only_last, attention_backward } = *self;
        // On `rows` query tokens: q and out [d, d] and the MLP; the keys and values always on
        // all `t` tokens; attention q·kᵀ and p·v over `t` keys.
        let projections = |rows: f64| (2.0 * rows + 2.0 * t) * d * d + rows * mlp;
        let attention = |rows: f64| 2.0 * rows * t * d;
        let (full, last) = if class_only_last && count > 0.0 { (count - 1.0, 1.0) } else { (count, 0.0) };
        let forward = full * (projections(t) + attention(t)) + last * (projections(1.0) + attention(1.0));
        let backward = full * (projections(t) + attention_backward * attention(t))
            + last * (projections(1.0) + attention_backward * attention(1.0));
        (forward, backward)
    }
}

/// The attention products of the backward pass over the forward's: 5/2 where the probabilities
/// are recomputed, 2 where autodiff keeps them.
fn attention_backward(recomputed: bool) -> f64 {
    if recomputed { 2.5 } else { 2.0 }
}

impl Work {
    /// The work of a CLIP encoder per image (its attention always recomputes the probabilities).
    pub fn clip(cfg: &EncoderConfig) -> Self {
        let (d, f) = (cfg.hidden_size as f64, cfg.intermediate_size as f64);
        let n = ((cfg.image_size / cfg.patch_size) as f64).powi(2);
        let patch = n * (cfg.num_channels * cfg.patch_size * cfg.patch_size) as f64 * d;
        let layers = Layers {
            d,
            mlp: 2.0 * d * f,
            t: n + 1.0,
            count: cfg.num_hidden_layers as f64,
            class_only_last: true,
            attention_backward: attention_backward(true),
        };
        let (forward, backward) = layers.work();
        Self { forward: patch + forward, backward }
    }

    /// The work of DINOv3 per image of `size` pixels (`[h, w]`), in bf16-mixed precision (the
    /// fused attention) or f32 (the products around the softmax, whose output autodiff keeps).
    pub fn dinov3(cfg: &Dinov3Config, size: [usize; 2], bf16_mixed: bool) -> Self {
        let (d, f) = (cfg.hidden_size as f64, cfg.intermediate_size as f64);
        let p = cfg.patch_size;
        let n = ((size[0] / p) * (size[1] / p)) as f64;
        let patch = n * (cfg.num_channels * p * p) as f64 * d;
        let layers = Layers {
            d,
            // up and down, and the gate where the MLP is gated.
            mlp: if cfg.use_gated_mlp { 3.0 } else { 2.0 } * d * f,
            t: n + cfg.prefix_tokens() as f64,
            count: cfg.num_hidden_layers as f64,
            class_only_last: true,
            attention_backward: attention_backward(bf16_mixed),
        };
        let (forward, backward) = layers.work();
        Self { forward: patch + forward, backward }
    }

    /// The work of the Perception Encoder per image of `size` pixels: every layer on every token,
    /// then the attention pool (keys and values of every token, one query, the output projection
    /// and the pool's MLP on it). Left out: the latent query's projection, once per batch, and
    /// the position embedding's resampling (about 16 M multiply-adds per batch).
    pub fn pe(cfg: &PeConfig, size: [usize; 2], bf16_mixed: bool) -> Self {
        let (d, f) = (cfg.embed_dim as f64, cfg.mlp_dim as f64);
        let p = cfg.patch_size;
        let n = ((size[0] / p) * (size[1] / p)) as f64;
        let t = n + cfg.prefix_tokens() as f64;
        let patch = n * (3 * p * p) as f64 * d;
        let ab = attention_backward(bf16_mixed);
        let layers =
            Layers { d, mlp: 2.0 * d * f, t, count: cfg.depth as f64, class_only_last: false, attention_backward: ab };
        let (forward, backward) = layers.work();
        let pool_mlp = 2.0 * d * cfg.attn_pool_mlp_dim as f64;
        let pool = |attention: f64| 2.0 * t * d * d + attention * 2.0 * t * d + d * d + pool_mlp;
        Self { forward: patch + forward + pool(1.0), backward: backward + pool(ab) }
    }

    /// GFLOP (two per multiply-add) of `images` forward passes.
    pub fn forward_gflop(&self, images: usize) -> f64 {
        2.0 * self.forward * images as f64 / 1e9
    }

    /// GFLOP of one training step on `images` images (forward and backward).
    pub fn step_gflop(&self, images: usize) -> f64 {
        2.0 * (self.forward + self.backward) * images as f64 / 1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Backbone;

    /// ViT-L/14 at 224 pixels, counted by hand: 256 patches of 588 values onto 1024 (154.1 M),
    /// 23 full layers of 257 tokens (12.58 M multiply-adds a token in the projections and MLP,
    /// 135.3 M in attention), and a last layer whose keys and values cover 257 tokens (538.9 M)
    /// and whose class token adds 10.49 M + 0.53 M: 78.19 G multiply-adds, 156.4 GFLOP.
    #[test]
    fn vit_l14_forward_is_counted_by_hand() {
        let Backbone { encoder, .. } = Backbone::resolve("openai/clip-vit-large-patch14").unwrap();
        let crate::model::config::Architecture::Clip(cfg) = encoder else { panic!("a CLIP preset") };
        let w = Work::clip(&cfg);
        let by_hand = 256.0 * 588.0 * 1024.0
            + 23.0 * (257.0 * (4.0 * 1024.0 * 1024.0 + 2.0 * 1024.0 * 4096.0) + 2.0 * 257.0 * 257.0 * 1024.0)
            + 2.0 * 257.0 * 1024.0 * 1024.0
            + (2.0 * 1024.0 * 1024.0 + 2.0 * 1024.0 * 4096.0)
            + 2.0 * 257.0 * 1024.0;
        assert!((w.forward - by_hand).abs() < 1.0, "{} against {by_hand}", w.forward);
        assert!((w.forward_gflop(1) - 156.4).abs() < 0.05, "{}", w.forward_gflop(1));
        // The backward pass has no patch embedding and two and a half times the attention.
        let attention = 23.0 * 2.0 * 257.0 * 257.0 * 1024.0 + 2.0 * 257.0 * 1024.0;
        assert!((w.backward - (by_hand - 256.0 * 588.0 * 1024.0 + 1.5 * attention)).abs() < 1.0);
    }

    /// DINOv3 ViT-L/16 at GenD's 224 pixels, by hand: 196 patches of 768 values onto 1024, 23
    /// full layers of 201 tokens (class, 4 registers, patches), and a last layer on the class
    /// token: 121.3 GFLOP. In f32 the backward pass has twice the attention products (autodiff
    /// keeps the probabilities), in bf16-mixed two and a half (the fused attention recomputes them).
    #[test]
    fn dinov3_l16_is_counted_by_hand() {
        let Backbone { encoder, pixels, .. } = Backbone::resolve("facebook/dinov3-vitl16-pretrain-lvd1689m").unwrap();
        let crate::model::config::Architecture::Dinov3(cfg) = encoder else { panic!("a DINOv3 preset") };
        let (d, f, t) = (1024.0, 4096.0, 201.0);
        let layer = |rows: f64| (2.0 * rows + 2.0 * t) * d * d + 2.0 * rows * d * f;
        let attention = |rows: f64| 2.0 * rows * t * d;
        let by_hand = 196.0 * 768.0 * d + 23.0 * (layer(t) + attention(t)) + layer(1.0) + attention(1.0);
        for (bf16, factor) in [(false, 2.0), (true, 2.5)] {
            let w = Work::dinov3(&cfg, pixels.size(), bf16);
            assert!((w.forward - by_hand).abs() < 1.0, "{} against {by_hand}", w.forward);
            let backward = 23.0 * (layer(t) + factor * attention(t)) + layer(1.0) + factor * attention(1.0);
            assert!((w.backward - backward).abs() < 1.0, "bf16 {bf16}: {} against {backward}", w.backward);
        }
        assert!((Work::dinov3(&cfg, pixels.size(), false).forward_gflop(1) - 121.3).abs() < 0.05);
    }

    /// The Perception Encoder L/14 at GenD's 224 pixels, by hand: 256 patches of 588 values, 24
    /// layers of 257 tokens, then the attention pool (keys and values of 257 tokens, one query,
    /// its output projection and its MLP of 4096): 163.1 GFLOP.
    #[test]
    fn pe_l14_is_counted_by_hand() {
        let Backbone { encoder, pixels, .. } = Backbone::resolve("vit_pe_core_large_patch14_336").unwrap();
        let crate::model::config::Architecture::Pe(cfg) = encoder else { panic!("a PE preset") };
        assert_eq!(pixels.size(), [224, 224]);
        let (d, f, t) = (1024.0, 4096.0, 257.0);
        let layers = |factor: f64| 24.0 * (t * (4.0 * d * d + 2.0 * d * f) + factor * 2.0 * t * t * d);
        let pool = |factor: f64| 2.0 * t * d * d + factor * 2.0 * t * d + d * d + 2.0 * d * 4096.0;
        let w = Work::pe(&cfg, pixels.size(), false);
        let by_hand = 256.0 * 588.0 * d + layers(1.0) + pool(1.0);
        assert!((w.forward - by_hand).abs() < 1.0, "{} against {by_hand}", w.forward);
        assert!((w.backward - (layers(2.0) + pool(2.0))).abs() < 1.0);
        assert!((Work::pe(&cfg, pixels.size(), true).backward - (layers(2.5) + pool(2.5))).abs() < 1.0);
        assert!((w.forward_gflop(1) - 163.1).abs() < 0.05, "{}", w.forward_gflop(1));
    }
}
