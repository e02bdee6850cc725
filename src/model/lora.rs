//! The low-rank adapter of LoRA fine-tuning, as peft defines it, and peft's choice of the
//! modules it goes on.

use burn::module::Param;
use burn::prelude::*;

/// A low-rank adapter with peft's semantics: `y = base(x) + B(A(dropout(x))) · scaling`.
#[derive(Module, Debug)]
pub struct Lora {
    /// `lora_A` as `[in, r]` (burn layout; peft's weight is `[r, in]`).
    pub lora_a: Param<Tensor<2>>,
    /// `lora_B` as `[r, out]`.
    pub lora_b: Param<Tensor<2>>,
    /// `alpha / r`.
    pub scaling: f64,
    /// Dropout for the next forward, as a mask already divided by the keep probability, shaped
    /// as the adapter's input `[b, t, in]` (see [`Rows`]). `None` (evaluation, or dropout 0)
    /// leaves `x` as it is.
    pub dropout_mask: Option<Tensor<3>>,
}

impl Lora {
    /// `[b, t, in]` -> the adapter's addition `[b, t, out]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self.dropout(x);
        let down = x.matmul(self.lora_a.val().unsqueeze::<3>()); // [b, t, r]
        down.matmul(self.lora_b.val().unsqueeze::<3>()) * self.scaling // [b, t, out]
    }

    /// [`Self::forward`] under bf16-mixed precision, as autocast computes peft's adapter: both
    /// products on bfloat16 operands with bfloat16 outputs, the scaling a bfloat16 product.
    pub fn forward_bf16(&self, x: Tensor<3>) -> Tensor<3> {
        use super::fused::bf16::round_bf16;
        let x = self.dropout(x);
        let a = round_bf16(self.lora_a.val()).unsqueeze::<3>();
        let b = round_bf16(self.lora_b.val()).unsqueeze::<3>();
        let down = round_bf16(round_bf16(x).matmul(a)); // [b, t, r]
        round_bf16(round_bf16(down.matmul(b)) * self.scaling) // [b, t, out]
    }

    /// `x` through the dropout mask of this pass, if there is one.
    fn dropout(&self, x: Tensor<3>) -> Tensor<3> {
        match &self.dropout_mask {
            // The last layer computes the class token only: its rows of the mask.
            Some(mask) => {
                let [b, t, d] = x.dims();
                x * mask.clone().slice([0..b, 0..t, 0..d])
            }
            None => x,
        }
    }

    /// The width of the adapter's input.
    pub fn d_in(&self) -> usize {
        self.lora_a.dims()[0]
    }
}

/// peft's module matching (`target_modules` of LoRA and LN-tuning): the module's full name is
/// the target, or ends with `.` and the target (`"proj"` matches `blocks.0.attn.proj`, not
/// `blocks.0.attn.qkv` nor `layer.0.attention.q_proj`).
pub fn module_matches(module: &str, target: &str) -> bool {
    module == target || module.strip_suffix(target).is_some_and(|rest| rest.ends_with('.'))
}

/// The rows of an adapter's input, which its dropout mask has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Every token of every image: `[b, t, in]`.
    Tokens,
    /// The patches of every image (a patch embedding's input): `[b, t - prefix, in]`.
    Patches,
    /// One row per image (after an attention pool): `[b, 1, in]`.
    Pooled,
    /// One row for the whole batch (an attention pool's learned query): `[1, 1, in]`.
    Latent,
}

impl Rows {
    /// The input's shape for `batch` images of `tokens` tokens, `prefix` of them before the
    /// patches.
    pub fn shape(self, batch: usize, tokens: usize, prefix: usize, d_in: usize) -> [usize; 3] {
        match self {
            Rows::Tokens => [batch, tokens, d_in],
            Rows::Patches => [batch, tokens - prefix, d_in],
            Rows::Pooled => [batch, 1, d_in],
            Rows::Latent => [1, 1, d_in],
        }
    }
}

/// A module that can carry an adapter: its full name, `[in, out]`, its input's rows, and the
/// adapter's place.
pub struct Site<'a> {
    pub name: String,
    pub dims: [usize; 2],
    pub rows: Rows,
    pub slot: &'a mut Option<Lora>,
}

/// Puts an adapter made by `make(in, out)` on each site whose name matches one of `targets`
/// ([`module_matches`]), in the sites' order; returns the names of the sites adapted.
pub fn add_adapters(
    sites: Vec<Site<'_>>,
    targets: &[String],
    make: &mut dyn FnMut(usize, usize) -> Lora,
) -> Vec<String> {
    let mut adapted = Vec::new();
    for site in sites {
        if targets.iter().any(|t| module_matches(&site.name, t)) {
            let [d_in, d_out] = site.dims;
            *site.slot = Some(make(d_in, d_out));
            adapted.push(site.name);
        }
    }
    adapted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_match_as_in_peft() {
        // `name == target or name.endswith("." + target)`.
        assert!(module_matches("backbone.blocks.0.attn.proj", "proj"));
        assert!(module_matches("backbone.attn_pool.proj", "proj"));
        assert!(module_matches("backbone.blocks.0.attn.proj", "attn.proj"));
        assert!(module_matches("backbone.blocks.0.attn.proj", "backbone.blocks.0.attn.proj"));
        assert!(module_matches("proj", "proj"));
        assert!(!module_matches("backbone.blocks.0.attn.qkv", "proj"));
        assert!(!module_matches("backbone.layer.0.attention.q_proj", "proj"), "a whole component");
        assert!(!module_matches("backbone.blocks.0.attn.proj", "n.proj"));
        assert!(!module_matches("backbone.attn_pool.proj", "blocks.0.attn.proj"));
        assert!(!module_matches("backbone.attn_pool.kv", "attn_pool"), "a prefix is no match");
        assert!(module_matches("backbone.layer.1.mlp.up_proj", "mlp.up_proj"));
    }

    #[test]
    fn mask_shapes_follow_the_input() {
        assert_eq!(Rows::Tokens.shape(2, 10, 1, 16), [2, 10, 16]);
        assert_eq!(Rows::Patches.shape(2, 10, 1, 588), [2, 9, 588]);
        assert_eq!(Rows::Pooled.shape(2, 10, 1, 48), [2, 1, 48]);
        assert_eq!(Rows::Latent.shape(2, 10, 1, 16), [1, 1, 16]);
    }
}
