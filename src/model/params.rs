//! The parameters of encoder and head under their checkpoint names, described once.
//!
//! Each module names its own parameters in one walk (`visit_params`) through a [`Walker`],
//! which carries the name prefix as candle's `VarBuilder::pp` does: the Hugging Face name
//! (`vision_model.encoder.layers.3.self_attn.q_proj.weight`, the `pre_layrnorm` typo
//! included), the PyTorch shape, and how the module's tensor is laid out relative to the
//! checkpoint's. Loading ([`Loader`]), `clip::tensor_shapes`, what trains ([`Selection`]),
//! its count (`Detector::num_trainable`) and training's bind and export all go through it.

use std::fmt::Display;

use burn::module::Param;
use burn::nn::LayerNorm;
use burn::prelude::*;

use super::lora::{Lora, module_matches};
use super::spec::Tuning;
use super::tensors::{HostTensor, TensorMap, transpose};
use crate::Result;

/// How a module tensor relates to its checkpoint tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Same shape and order.
    Same,
    /// burn's `Linear` weight `[in, out]` vs PyTorch's `[out, in]`.
    Transposed,
    /// The patch convolution as a matrix `[c·p·p, d]` vs PyTorch's `[d, c, p, p]`.
    PatchEmbedding { channels: usize, patch: usize },
    /// Same order, with one more leading axis of size 1 in the checkpoint (`[1, n, d]` tokens
    /// held as `[n, d]`).
    LeadingOne,
}

impl Layout {
    /// The checkpoint's shape of a module tensor of `shape`.
    pub fn checkpoint_shape(self, shape: &[usize]) -> Vec<usize> {
        match self {
            Layout::Same => shape.to_vec(),
            Layout::Transposed => vec![shape[1], shape[0]],
            Layout::PatchEmbedding { channels, patch } => vec![shape[1], channels, patch, patch],
            Layout::LeadingOne => [&[1], shape].concat(),
        }
    }

    /// A module tensor (`shape` and `values` in burn's layout) as the checkpoint's tensor.
    pub fn to_checkpoint(self, shape: &[usize], values: &[f32]) -> HostTensor {
        match self {
            Layout::Same => HostTensor::new(shape.to_vec(), values.to_vec()),
            Layout::LeadingOne => HostTensor::new(self.checkpoint_shape(shape), values.to_vec()),
            Layout::Transposed | Layout::PatchEmbedding { .. } => {
                let (rows, cols) = (shape[0], shape[1]);
                HostTensor::new(self.checkpoint_shape(shape), transpose(values, rows, cols))
            }
        }
    }

    /// A checkpoint tensor as the module's: `[out, in]` -> `[in, out]`, `[d, c, p, p]` ->
    /// `[c·p·p, d]` (transposed once here, on the host, so that every forward multiplies
    /// contiguous memory).
    pub fn to_module(self, t: HostTensor) -> HostTensor {
        match self {
            Layout::Same => t,
            Layout::LeadingOne => HostTensor { shape: t.shape[1..].to_vec(), data: t.data },
            Layout::Transposed | Layout::PatchEmbedding { .. } => {
                let rows = t.shape[0];
                let cols = t.shape[1..].iter().product();
                HostTensor { shape: vec![cols, rows], data: transpose(&t.data, rows, cols) }
            }
        }
    }
}

/// A tensor's shape and values on the host, as f32.
pub fn host<const D: usize>(t: Tensor<D>) -> (Vec<usize>, Vec<f32>) {
    let data = t.into_data();
    let shape = data.shape().to_vec();
    (shape, data.try_into_vec_as::<f32>().expect("float tensor"))
}

/// A module parameter, whichever its rank.
pub enum Slot<'a> {
    Vector(&'a mut Param<Tensor<1>>),
    Matrix(&'a mut Param<Tensor<2>>, Layout),
}

impl Slot<'_> {
    /// The parameter's current value on the host, in burn's layout, and its shape.
    pub fn read(&self) -> (Vec<usize>, Vec<f32>) {
        match self {
            Slot::Vector(p) => host(p.val()),
            Slot::Matrix(p, _) => host(p.val()),
        }
    }

    /// How the module's layout relates to the checkpoint's.
    pub fn layout(&self) -> Layout {
        match self {
            Slot::Vector(_) => Layout::Same,
            Slot::Matrix(_, l) => *l,
        }
    }
}

/// One parameter, as a walk presents it.
pub struct Entry<'a> {
    /// The checkpoint (Hugging Face) name.
    pub name: &'a str,
    /// The checkpoint (PyTorch) shape.
    pub shape: &'a [usize],
    pub slot: Slot<'a>,
    /// For a projection's weight: the LoRA adapter on that projection, if any, which an export
    /// merges into the weight.
    pub adapter: Option<&'a Lora>,
}

/// What a walk calls for each parameter.
pub type Visit<'f> = dyn FnMut(Entry<'_>) -> Result<()> + 'f;

/// A walk over parameters at a name prefix (`pp` goes one module deeper).
pub struct Walker<'a, 'f> {
    prefix: String,
    visit: &'a mut Visit<'f>,
}

impl<'a, 'f> Walker<'a, 'f> {
    /// A walk from the root (no prefix).
    pub fn new(visit: &'a mut Visit<'f>) -> Self {
        Self { prefix: String::new(), visit }
    }

    /// The walk inside the submodule `name` (which may itself hold dots).
    pub fn pp(&mut self, name: impl Display) -> Walker<'_, 'f> {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Walker { prefix, visit: &mut *self.visit }
    }

    fn param(&mut self, leaf: &str, shape: &[usize], slot: Slot<'_>, adapter: Option<&Lora>) -> Result<()> {
        let name = self.pp(leaf).prefix;
        (self.visit)(Entry { name: &name, shape, slot, adapter })
    }

    /// A 1-D parameter of `len` values.
    pub fn vector(&mut self, leaf: &str, param: &mut Param<Tensor<1>>, len: usize) -> Result<()> {
        self.param(leaf, &[len], Slot::Vector(param), None)
    }

    /// A 2-D parameter whose checkpoint shape is `shape`.
    pub fn matrix(&mut self, leaf: &str, param: &mut Param<Tensor<2>>, shape: &[usize], layout: Layout) -> Result<()> {
        self.param(leaf, shape, Slot::Matrix(param, layout), None)
    }

    /// A 2-D parameter that a LoRA adapter may adapt (a patch embedding), which an export
    /// merges into it.
    pub fn adapted_matrix(
        &mut self,
        leaf: &str,
        param: &mut Param<Tensor<2>>,
        shape: &[usize],
        layout: Layout,
        adapter: Option<&Lora>,
    ) -> Result<()> {
        self.param(leaf, shape, Slot::Matrix(param, layout), adapter)
    }

    /// An `nn.Linear` from `d_in` to `d_out`: `weight` (PyTorch `[d_out, d_in]`, burn
    /// `[d_in, d_out]`) and `bias` `[d_out]`; `adapter`: the LoRA adapter on it, if any.
    pub fn linear(
        &mut self,
        weight: &mut Param<Tensor<2>>,
        bias: Option<&mut Param<Tensor<1>>>,
        [d_in, d_out]: [usize; 2],
        adapter: Option<&Lora>,
    ) -> Result<()> {
        self.param("weight", &[d_out, d_in], Slot::Matrix(weight, Layout::Transposed), adapter)?;
        match bias {
            Some(bias) => self.vector("bias", bias, d_out),
            None => Ok(()),
        }
    }

    /// An `nn.LayerNorm` of width `d`: `weight` and `bias`.
    pub fn layer_norm(&mut self, ln: &mut LayerNorm, d: usize) -> Result<()> {
        self.vector("weight", &mut ln.gamma, d)?;
        match &mut ln.beta {
            Some(beta) => self.vector("bias", beta, d),
            None => Ok(()),
        }
    }

    /// A LoRA adapter as peft names it under its projection: `lora_A.weight` `[r, in]` and
    /// `lora_B.weight` `[out, r]` (burn `[in, r]` and `[r, out]`).
    pub fn lora(&mut self, lora: &mut Lora) -> Result<()> {
        let [d_in, r] = lora.lora_a.dims();
        let [_, d_out] = lora.lora_b.dims();
        self.matrix("lora_A.weight", &mut lora.lora_a, &[r, d_in], Layout::Transposed)?;
        self.matrix("lora_B.weight", &mut lora.lora_b, &[d_out, r], Layout::Transposed)
    }

    /// A LoRA adapter on a patch convolution (kernel = stride = `patch`, `channels` in), as peft
    /// names it: `lora_A.weight` a convolution `[r, channels, patch, patch]`, `lora_B.weight`
    /// a 1x1 convolution `[out, r, 1, 1]` (burn `[channels·patch·patch, r]` and `[r, out]`).
    pub fn conv_lora(&mut self, lora: &mut Lora, channels: usize, patch: usize) -> Result<()> {
        let [_, r] = lora.lora_a.dims();
        let [_, d_out] = lora.lora_b.dims();
        let a = Layout::PatchEmbedding { channels, patch };
        self.matrix("lora_A.weight", &mut lora.lora_a, &[r, channels, patch, patch], a)?;
        let b = Layout::PatchEmbedding { channels: r, patch: 1 };
        self.matrix("lora_B.weight", &mut lora.lora_b, &[d_out, r, 1, 1], b)
    }
}

/// Whether `name` is a LoRA adapter's (see [`Walker::lora`]).
pub fn is_adapter(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}

/// A parameter to fill from a checkpoint: an empty tensor that a walk with a [`Loader`]
/// replaces (a module's structure is built first, then its parameters named and loaded).
pub(crate) fn empty<const D: usize>(device: &Device) -> Param<Tensor<D>> {
    Param::from_tensor(Tensor::zeros([0; D], device))
}

/// Builds burn tensors from checkpoint tensors, on one device, in f32 (bf16 computes on f32
/// storage, [`super::fused::bf16`]).
#[derive(Debug, Clone)]
pub struct Loader {
    pub device: Device,
}

impl Loader {
    /// A tensor of rank `D` from host data.
    pub fn tensor<const D: usize>(&self, t: HostTensor) -> Tensor<D> {
        Tensor::<D>::from_data(TensorData::new(t.data, t.shape), &self.device)
    }

    /// Takes the entry's tensor out of `map` (its shape checked) into the entry's slot.
    pub fn fill(&self, map: &mut TensorMap, entry: Entry<'_>) -> Result<()> {
        let t = map.take(entry.name, entry.shape)?;
        match entry.slot {
            Slot::Vector(param) => *param = Param::from_tensor(self.tensor(t)),
            Slot::Matrix(param, layout) => *param = Param::from_tensor(self.tensor(layout.to_module(t))),
        }
        Ok(())
    }
}

/// The LayerNorm modules of the encoders, by their name's last component: CLIP's vision
/// tower (peft LN-tuning's targets in the original), then DINOv3's and the Perception
/// Encoder's (GenD's `unfreeze_layers` for them, `norm_pre`, `norm1`, `norm2`, `norm`, which as
/// substrings of their names select exactly these, the attention pool's `norm` included).
pub const LN_TARGETS: [&str; 9] =
    ["pre_layrnorm", "layer_norm1", "layer_norm2", "post_layernorm", "layernorm", "norm_pre", "norm1", "norm2", "norm"];

/// Which parameters train (docs/method.md §4).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    /// Train every encoder parameter (the reference's `freeze_feature_extractor = False`).
    pub full: bool,
    /// LayerNorm modules to tune (peft LN-tuning `target_modules`); empty = none.
    pub ln_targets: Vec<String>,
    /// Parameters whose name contains one of these also train (the reference's `unfreeze_layers`).
    pub unfreeze: Vec<String>,
    /// Train the LoRA adapters present in the model.
    pub lora: bool,
}

impl Selection {
    /// What a checkpoint's training method trains: the head, and every LayerNorm
    /// (LN-tuning), the LoRA adapters (LoRA) or everything (full fine-tuning).
    pub fn of(tuning: &Tuning) -> Self {
        match tuning {
            Tuning::LinearProbe => Self::default(),
            Tuning::LnTuning => Self { ln_targets: LN_TARGETS.map(String::from).to_vec(), ..Self::default() },
            Tuning::Lora { .. } => Self { lora: true, ..Self::default() },
            Tuning::Full => Self { full: true, ..Self::default() },
        }
    }

    /// Whether the parameter `name` trains.
    pub fn trains(&self, name: &str) -> bool {
        if name.starts_with("model.") || self.full {
            return true;
        }
        if self.unfreeze.iter().any(|p| name.contains(p.as_str())) {
            return true;
        }
        if self.lora && is_adapter(name) {
            return true;
        }
        let module = name.rsplit_once('.').map_or(name, |(m, _)| m);
        let is_ln = module.rsplit('.').next().is_some_and(|last| LN_TARGETS.contains(&last));
        is_ln && self.ln_targets.iter().any(|t| module_matches(module, t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_round_trip() {
        let module = HostTensor::new(vec![3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let ckpt = Layout::Transposed.to_checkpoint(&module.shape, &module.data);
        assert_eq!(ckpt.shape, [2, 3]);
        assert_eq!(ckpt.data, [1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
        assert_eq!(Layout::Transposed.to_module(ckpt), module);
        let patch = Layout::PatchEmbedding { channels: 1, patch: 2 };
        let module = HostTensor::new(vec![4, 2], (0..8).map(|v| v as f32).collect());
        let ckpt = patch.to_checkpoint(&module.shape, &module.data);
        assert_eq!(ckpt.shape, [2, 1, 2, 2]);
        assert_eq!(patch.checkpoint_shape(&module.shape), ckpt.shape);
        assert_eq!(patch.to_module(ckpt), module);
    }

    #[test]
    fn tunings_select_what_they_train() {
        let ln = "vision_model.encoder.layers.0.layer_norm1.weight";
        let lora = "vision_model.encoder.layers.0.self_attn.q_proj.lora_A.weight";
        let proj = "vision_model.encoder.layers.0.self_attn.q_proj.weight";
        let head = "model.linear.weight";
        let rank = Tuning::Lora { rank: 1, alpha: 1.0, dropout: 0.0, target_modules: vec![] };
        for (tuning, trained) in [
            (Tuning::LinearProbe, [false, false, false, true]),
            (Tuning::LnTuning, [true, false, false, true]),
            (rank, [false, true, false, true]),
            (Tuning::Full, [true, true, true, true]),
        ] {
            let s = Selection::of(&tuning);
            assert_eq!([ln, lora, proj, head].map(|n| s.trains(n)), trained, "{tuning:?}");
        }
    }
}
