//! What trains (docs/method.md §4), decided once when training starts: the trainable tensors live
//! here as host copies in burn's layout, under their checkpoint names; frozen weights stay plain
//! tensors in the model and never get gradients or optimizer state.
//!
//! For each forward the trainable tensors are put into the model as tracked tensors on the
//! autodiff device ([`Trainable::bind`]); everything else stays on the plain device, and burn
//! treats it as a constant. For evaluation they are put back as plain tensors
//! ([`Trainable::unbind`]).
//!
//! The parameters, their names and which of them train come from the model's one walk over
//! them ([`crate::model::params`]); [`Selection`], [`Layout`], [`LN_TARGETS`] and [`host`] are
//! re-exported from there.

use std::collections::{BTreeMap, HashMap};

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Gradients;

use crate::model::Detector;
use crate::model::checkpoint::HostTensor;
use crate::model::clip::{ATTENTION_PROJECTIONS, MLP_PROJECTIONS, ROOT};
use crate::model::dinov3;
use crate::model::lora::Lora;
pub use crate::model::params::{LN_TARGETS, Layout, Selection, host};
use crate::model::params::{Slot, is_adapter};
use crate::model::tensors::transpose;
use crate::{Error, Result};

/// The original's parameter groups: no weight decay on a name with "bias" or "norm".
pub fn decays(name: &str) -> bool {
    !(name.contains("bias") || name.contains("norm"))
}

/// One trainable tensor: its master copy on the host.
#[derive(Debug, Clone)]
pub struct TrainParam {
    /// Checkpoint name.
    pub name: String,
    /// Shape in the module (burn layout).
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    /// In the weight-decay group.
    pub decay: bool,
    /// How the module's layout relates to the checkpoint's.
    pub layout: Layout,
}

impl TrainParam {
    /// `values` (this tensor's burn layout) in the checkpoint's layout and shape.
    pub fn to_checkpoint(&self, values: &[f32]) -> HostTensor {
        self.layout.to_checkpoint(&self.shape, values)
    }

    /// Replaces the values from a tensor in the checkpoint's layout.
    pub fn set_from_checkpoint(&mut self, t: &HostTensor) -> Result<()> {
        let expected = self.layout.checkpoint_shape(&self.shape);
        if t.shape != expected {
            return Err(Error::Invalid(format!("`{}`: shape {:?}, expected {:?}", self.name, t.shape, expected)));
        }
        self.data = match self.layout {
            // Same order (a leading axis of 1 changes no value's place).
            Layout::Same | Layout::LeadingOne => t.data.clone(),
            // Both are a transpose of the 2-D matrix view.
            Layout::Transposed | Layout::PatchEmbedding { .. } => transpose(&t.data, self.shape[1], self.shape[0]),
        };
        Ok(())
    }
}

/// A trainable tensor as put into the model for one forward: keep it to read its gradient.
#[derive(Debug, Clone)]
pub enum Bound {
    Vector(Tensor<1>),
    Matrix(Tensor<2>),
}

impl Bound {
    /// Its gradient in `grads` on the host; `None` if it did not take part in the loss.
    fn grad(&self, grads: &Gradients) -> Option<Vec<f32>> {
        match self {
            Bound::Vector(t) => t.grad(grads).map(|g| host(g).1),
            Bound::Matrix(t) => t.grad(grads).map(|g| host(g).1),
        }
    }
}

/// The trainable tensors of a model, in checkpoint order.
#[derive(Debug, Clone, Default)]
pub struct Trainable {
    pub params: Vec<TrainParam>,
}

impl Trainable {
    /// Reads the selected parameters out of `detector`. An empty selection is an error.
    pub fn select(detector: &mut Detector, selection: &Selection) -> Result<Self> {
        let mut params = Vec::new();
        detector.for_each_param(|entry| {
            let name = entry.name;
            if selection.trains(name) {
                let layout = entry.slot.layout();
                let (shape, data) = entry.slot.read();
                params.push(TrainParam { name: name.to_string(), shape, data, decay: decays(name), layout });
            }
        });
        if params.is_empty() {
            return Err(Error::Invalid("nothing to train: the selection matches no parameter".into()));
        }
        Ok(Self { params })
    }

    /// Number of trainable values.
    pub fn numel(&self) -> usize {
        self.params.iter().map(|p| p.data.len()).sum()
    }

    /// Puts the trainable tensors into `detector` on `device`. On an autodiff device they are
    /// tracked and returned, to read their gradients after `backward`.
    pub fn bind(&self, detector: &mut Detector, device: &Device) -> Vec<Bound> {
        let index: HashMap<&str, usize> = self.params.iter().enumerate().map(|(i, p)| (p.name.as_str(), i)).collect();
        let tracked = device.is_autodiff();
        let mut bound: Vec<Option<Bound>> = vec![None; self.params.len()];
        detector.for_each_param(|entry| {
            let Some(&i) = index.get(entry.name) else { return };
            let p = &self.params[i];
            let data = TensorData::new(p.data.clone(), p.shape.clone());
            match entry.slot {
                Slot::Vector(param) => {
                    let mut t = Tensor::<1>::from_data(data, device);
                    if tracked {
                        t = t.require_grad();
                        bound[i] = Some(Bound::Vector(t.clone()));
                    }
                    *param = Param::from_tensor(t);
                }
                Slot::Matrix(param, _) => {
                    let mut t = Tensor::<2>::from_data(data, device);
                    if tracked {
                        t = t.require_grad();
                        bound[i] = Some(Bound::Matrix(t.clone()));
                    }
                    *param = Param::from_tensor(t);
                }
            }
        });
        bound.into_iter().flatten().collect()
    }

    /// Puts the trainable tensors into `detector` as plain tensors (for evaluation).
    pub fn unbind(&self, detector: &mut Detector, device: &Device) {
        self.bind(detector, &device.clone().inner());
    }

    /// The gradients of the bound tensors, in `params` order, on the host (`None` for a tensor
    /// the loss does not depend on).
    pub fn gradients(&self, bound: &[Bound], grads: &Gradients) -> Vec<Option<Vec<f32>>> {
        assert_eq!(bound.len(), self.params.len(), "bind on an autodiff device before reading gradients");
        bound.iter().map(|b| b.grad(grads)).collect()
    }

    /// Whether the backward pass goes through the encoder's projections while they stay frozen
    /// (LN-tuning, LoRA): then keeping their transposed weights pays
    /// ([`VisionTransformer::keep_transposed_weights`]). Any trained tensor of a module named as
    /// a projection of any encoder counts as a trained projection (`patch_embed.proj` too: no
    /// copies is only slower, a copy of a trained weight would be stale).
    pub fn backward_through_frozen_projections(&self) -> bool {
        /// DINOv3's and the Perception Encoder's projections, beside CLIP's.
        const OTHER_PROJECTIONS: [&str; 8] = ["o_proj", "gate_proj", "up_proj", "down_proj", "qkv", "proj", "q", "kv"];
        let in_encoder = |name: &str| {
            [ROOT, dinov3::ROOT].iter().any(|root| name.strip_prefix(root).is_some_and(|rest| rest.starts_with('.')))
        };
        let is_projection = |name: &str| {
            in_encoder(name)
                && name.split('.').any(|m| {
                    ATTENTION_PROJECTIONS.contains(&m) || MLP_PROJECTIONS.contains(&m) || OTHER_PROJECTIONS.contains(&m)
                })
                && !is_adapter(name)
        };
        let encoder_trains = self.params.iter().any(|p| in_encoder(&p.name));
        encoder_trains && !self.params.iter().any(|p| is_projection(&p.name))
    }

    /// A trainable tensor by checkpoint name.
    pub fn get(&self, name: &str) -> Option<&TrainParam> {
        self.params.iter().find(|p| p.name == name)
    }

    /// A trainable tensor by checkpoint name, to change it.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut TrainParam> {
        self.params.iter_mut().find(|p| p.name == name)
    }
}

/// Every tensor of `detector` under its checkpoint name and in the checkpoint's layout, LoRA
/// adapters merged into their projection (`W += scaling · B A`), ready for `save_dfdet`.
pub fn export(detector: &mut Detector) -> BTreeMap<String, HostTensor> {
    let mut out = BTreeMap::new();
    detector.for_each_param(|entry| {
        if is_adapter(entry.name) {
            return;
        }
        let layout = entry.slot.layout();
        let (shape, mut values) = entry.slot.read();
        if let Some(adapter) = entry.adapter {
            for (v, d) in values.iter_mut().zip(lora_delta(adapter)) {
                *v += d;
            }
        }
        out.insert(entry.name.to_string(), layout.to_checkpoint(&shape, &values));
    });
    out
}

/// `scaling · A B` in burn layout `[in, out]` (`A` `[in, r]`, `B` `[r, out]`), on the host.
fn lora_delta(lora: &Lora) -> Vec<f32> {
    let read = |p: &Param<Tensor<2>>| {
        let (shape, values) = host(p.val());
        ([shape[0], shape[1]], values)
    };
    let ([d_in, r], a) = read(&lora.lora_a);
    let ([_, d_out], b) = read(&lora.lora_b);
    let mut out = vec![0f32; d_in * d_out];
    for i in 0..d_in {
        for k in 0..r {
            let aik = a[i * r + k] as f64 * lora.scaling;
            for j in 0..d_out {
                out[i * d_out + j] += (aik * b[k * d_out + j] as f64) as f32;
            }
        }
    }
    out
}
