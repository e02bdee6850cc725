//! How much arithmetic a CLIP encoder's matrix products do, so that a measured time can be put
//! against the CPU's measured peak ([`super::products::peak_gflops`]): the products are most of
//! the work (BENCHMARKS.md has the profiles), so a time near the peak leaves a faster kernel little
//! to gain.

use crate::model::config::EncoderConfig;

/// Multiply-adds of one image through a CLIP encoder's matrix products, as dfdet computes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Work {
    /// The forward pass to the pooled class token: the patch embedding, every layer's four
    /// attention projections, two attention products and two MLP products, and in the last
    /// layer the class token's query, attention, output projection and MLP only (the keys and
    /// values of every token).
    pub forward: f64,
    /// The backward pass of LN-tuning or LoRA: the input gradient of every projection the
    /// forward pass multiplied (none for the frozen patch embedding, whose input is the pixels),
    /// and five products per attention head (the scores recomputed, then the gradients of the
    /// probabilities, values, queries and keys).
    pub backward: f64,
}

impl Work {
    /// The work of `cfg` per image.
    pub fn clip(cfg: &EncoderConfig) -> Self {
        let (d, f) = (cfg.hidden_size as f64, cfg.intermediate_size as f64);
        let n = ((cfg.image_size / cfg.patch_size) as f64).powi(2);
        let t = n + 1.0; // with the class token
        let layers = cfg.num_hidden_layers as f64;
        let patch = n * (cfg.num_channels * cfg.patch_size * cfg.patch_size) as f64 * d;
        // Per layer: q, k, v, out [d, d] and MLP [d, f] + [f, d] on `rows` query tokens; the
        // keys and values always on all `t` tokens; attention q·kᵀ and p·v over `t` keys.
        let projections = |rows: f64| (2.0 * rows + 2.0 * t) * d * d + 2.0 * rows * d * f;
        let attention = |rows: f64| 2.0 * rows * t * d;
        let full = layers.max(1.0) - 1.0;
        let last = if layers > 0.0 { 1.0 } else { 0.0 };
        let forward = patch + full * (projections(t) + attention(t)) + last * (projections(1.0) + attention(1.0));
        let backward = full * (projections(t) + 2.5 * attention(t)) + last * (projections(1.0) + 2.5 * attention(1.0));
        Self { forward, backward }
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
}
