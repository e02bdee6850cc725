//! The low-rank adapter of LoRA fine-tuning, as peft defines it.

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
