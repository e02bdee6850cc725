//! Training in `bf16-mixed` precision, as the reference trains (Lightning's `precision =
//! "bf16-mixed"`, that is PyTorch's autocast to bfloat16 on the CPU): the matrix products take
//! bfloat16 operands and accumulate in f32, their outputs and the element-wise operations on
//! them are bfloat16, while the residual stream, LayerNorm, the losses, the trained parameters,
//! their gradients and the optimizer state stay f32 (docs/method.md §14).
//!
//! dfdet keeps every value in f32 storage and rounds it to bfloat16 exactly where PyTorch holds
//! a bfloat16 tensor, forward and backward: [`round_bf16`] is a cast whose gradient is rounded
//! too (the gradient of a bfloat16 tensor is bfloat16), [`quick_gelu_bf16`] is CLIP's activation
//! as autocast computes it (three rounded operations), and [`super::attention::attention_bf16`]
//! is ATen's CPU flash-attention kernel on bfloat16 inputs (f32 scores and softmax,
//! probabilities rounded before the product with the values, gradients accumulated block by
//! block in bfloat16). The products of bfloat16 values are exact in f32, so an f32 product of
//! rounded operands is a bfloat16 product with f32 accumulation.
//!
//! [`Autocast`] switches the encoder and head onto these operations for the thread it is made
//! on, as `torch.autocast` does.

use std::cell::Cell;

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, TensorMetadata};
use burn::prelude::*;
use burn::tensor::DType;

use super::{FusedBackward, FusedOps};

thread_local! {
    static AUTOCAST: Cell<bool> = const { Cell::new(false) };
}

/// While alive, the encoder and head compute in bf16-mixed precision on this thread (unless made
/// with `false`); the previous setting comes back when it is dropped.
pub struct Autocast {
    before: bool,
}

impl Autocast {
    pub fn bf16(on: bool) -> Self {
        Self { before: AUTOCAST.with(|a| a.replace(on)) }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        AUTOCAST.with(|a| a.set(self.before));
    }
}

/// Whether the current thread computes in bf16-mixed precision ([`Autocast`]).
pub fn autocast_bf16() -> bool {
    AUTOCAST.with(Cell::get)
}

/// A frozen weight as the bfloat16 values its products read, made once: bfloat16 storage where
/// oneDNN multiplies bfloat16 natively (half the memory, and the product takes its bits as they
/// are), else f32 storage of the rounded values (the f32 kernels then read them as they are, instead of
/// widening the weight on every product).
pub fn frozen_bf16<const D: usize>(w: Tensor<D>) -> Tensor<D> {
    if super::onednn::native_bf16_products() { w.cast(burn::tensor::FloatDType::BF16) } else { round_bf16(w) }
}

/// `x`, a result of an element-wise operation, as that operation leaves it: rounded to bfloat16
/// under bf16-mixed precision (ATen's bfloat16 kernels compute in f32 and round once), unchanged
/// otherwise.
pub fn rounded_under_autocast<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if autocast_bf16() { round_bf16(x) } else { x }
}

/// `x` for two uses: under bf16-mixed precision a bfloat16 tensor used twice has the gradient
/// of each use rounded to bfloat16 by autograd before they are summed; rounding the (bfloat16)
/// values is the identity forward and does exactly that backward.
pub fn for_two_uses<const D: usize>(x: Tensor<D>) -> (Tensor<D>, Tensor<D>) {
    if autocast_bf16() { (round_bf16(x.clone()), round_bf16(x)) } else { (x.clone(), x) }
}

/// `x` as the input of a bf16-mixed product ([`super::linear`]): rounded to bfloat16, except
/// where nothing differentiates through it (inference: not an autodiff tensor) and oneDNN
/// multiplies bfloat16 natively, since the product then rounds it itself as it converts it to
/// bfloat16 (to nearest even, as [`round_bf16`]): the same values for one pass over the
/// activations fewer. Should the product not take the native path after all, it rounds its
/// input before the f32 kernels (`matmul_2d`).
///
/// In training on native products, `x` is rounded into bfloat16 storage, which the product
/// reads as it is: the rounding and the product's conversion in one pass, its gradient rounded
/// as [`round_bf16`]'s. A tensor in bfloat16 storage ([`activation_bits`]) passes as it is: its
/// values are bfloat16 already, and the operation that made it rounds its gradient itself.
pub fn product_input<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let native = super::onednn::native_bf16_products();
    if x.dtype() == DType::BF16 || (!x.is_autodiff() && native) {
        x
    } else if native {
        Tensor::from_dispatch(<Dispatch as FusedOps>::bf16_storage(x.into_dispatch()))
    } else {
        round_bf16(x)
    }
}

/// Every value rounded to bfloat16; differentiable, its gradient rounded to bfloat16 as well.
pub fn round_bf16<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::round_bf16(x.into_dispatch()))
}

/// CLIP's `x · sigmoid(1.702 x)` on a bfloat16 tensor, differentiable ([`kernels::quick_gelu_bf16`]).
pub fn quick_gelu_bf16<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::quick_gelu_bf16(x.into_dispatch()))
}

/// Whether a bf16-mixed MLP's activation may pass from its first product to the second in
/// bfloat16 storage ([`activation_bits`]): under bf16-mixed precision where oneDNN multiplies
/// bfloat16 natively and so reads those bits as they are, in inference and in training. The
/// caller checks that both products are frozen ([`frozen`]): a trained one is burn's f32
/// `linear`, which reads and gives f32 only.
pub fn bits_between_products() -> bool {
    autocast_bf16() && super::onednn::native_bf16_products()
}

/// Whether a projection's parameters are frozen: no gradient is asked of them.
pub fn frozen(weight: &Tensor<2>, bias: Option<&Tensor<1>>) -> bool {
    !weight.is_require_grad() && !bias.is_some_and(Tensor::is_require_grad)
}

/// A bf16-mixed MLP's activation on `x`, its first product's output before rounding: the
/// rounding, the activation (CLIP's quick GELU where `quick`, else the exact GELU) and the next
/// product's conversion to bfloat16 in one pass, into bfloat16 storage
/// ([`FusedOps::gelu_bf16_bits`]); the values of `activation(round_bf16(x))` rounded.
pub fn activation_bits<const D: usize>(x: Tensor<D>, quick: bool) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::gelu_bf16_bits(x.into_dispatch(), quick))
}

// ------------------------------------------------------------------------------------------------
// Autodiff: the backward steps.

pub(super) fn autodiff_round<B, C>(x: FloatTensor<Autodiff<B, C>>) -> FloatTensor<Autodiff<B, C>>
where
    B: Backend + FusedOps + FusedBackward,
    C: CheckpointStrategy,
{
    #[derive(Debug)]
    struct Round;

    impl<B: Backend + FusedOps> Backward<B, 1> for Round {
        type State = ();

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            unary::<B, _>(ops.parents, ops.node, grads, B::round_bf16);
        }
    }

    let prep = Round.prepare::<C>([x.node()]).compute_bound();
    prep.stateless(B::round_bf16(x.into_primitive()))
}

/// [`FusedOps::bf16_storage`] under autodiff: the gradient rounded to bfloat16, in f32 storage
/// (a bfloat16 one, which a cast back from this storage gives, widened).
pub(super) fn autodiff_bf16_storage<B, C>(x: FloatTensor<Autodiff<B, C>>) -> FloatTensor<Autodiff<B, C>>
where
    B: Backend + FusedOps + FusedBackward,
    C: CheckpointStrategy,
{
    #[derive(Debug)]
    struct Storage;

    impl<B: Backend + FusedOps> Backward<B, 1> for Storage {
        type State = ();

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            unary::<B, _>(ops.parents, ops.node, grads, |g| match g.dtype() {
                DType::F32 => B::round_bf16(g),
                _ => B::float_cast(g, burn::tensor::FloatDType::F32),
            });
        }
    }

    let prep = Storage.prepare::<C>([x.node()]).compute_bound();
    prep.stateless(B::bf16_storage(x.into_primitive()))
}

/// [`FusedOps::gelu_bf16_bits`] under autodiff: the activation in bfloat16 storage, its rounded
/// input kept as bits for the backward pass, which gives the input's gradient in bfloat16
/// storage too ([`FusedBackward::gelu_bf16_bits_backward`]). In training this replaces five
/// passes over the MLP's widest activations forward (the rounding of the first product's
/// output, the activation, the rounding and conversion of the second's input) and four backward
/// with one each, and keeps half the bytes for the backward pass.
///
/// Its output's gradient may arrive unrounded (the second product's backward pass); the input's
/// gradient is bfloat16 storage, which the first product's backward pass reads as it is.
pub(super) fn autodiff_activation_bits<B, C>(x: FloatTensor<Autodiff<B, C>>, quick: bool) -> FloatTensor<Autodiff<B, C>>
where
    B: Backend + FusedOps + FusedBackward,
    C: CheckpointStrategy,
{
    #[derive(Debug)]
    struct ActivationBits {
        quick: bool,
    }

    impl<B: Backend + FusedBackward> Backward<B, 1> for ActivationBits {
        /// The rounded input, in bfloat16 storage.
        type State = FloatTensor<B>;

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let input = ops.state;
            unary::<B, _>(ops.parents, ops.node, grads, |g| B::gelu_bf16_bits_backward(input, g, self.quick));
        }
    }

    if x.dtype() != DType::F32 {
        // Not a product's f32 output: the separate operations.
        return super::rounded_activation::<Autodiff<B, C>>(x, quick);
    }
    match (ActivationBits { quick }).prepare::<C>([x.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let (out, input) = B::gelu_bf16_bits_forward(x.into_primitive(), quick);
            prep.finish(input, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(B::gelu_bf16_bits(x.into_primitive(), quick)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::kernels;

    #[test]
    fn rounding_is_the_half_crates_round_to_nearest_even() {
        let mut seed = 7u64;
        let mut values: Vec<f32> = (0..100_000)
            .map(|_| {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                f32::from_bits((seed >> 32) as u32)
            })
            .collect();
        // Ties both ways, the largest values, infinities, subnormals, zeros.
        values.extend([1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, f32::MAX, f32::INFINITY, -f32::INFINITY, 1e-40, -0.0]);
        let mut rounded = values.clone();
        kernels::round_bf16(&mut rounded);
        for (x, r) in values.iter().zip(&rounded) {
            let want = half::bf16::from_f32(*x).to_f32();
            assert!(r.to_bits() == want.to_bits() || (r.is_nan() && want.is_nan()), "{x:e}: {r:e} vs {want:e}");
        }
    }
}
