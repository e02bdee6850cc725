//! What trains (METHOD.md §4), decided once when training starts: the trainable tensors live
//! here as host copies in burn's layout, under their checkpoint names; frozen weights stay plain
//! tensors in the model and never get gradients or optimizer state.
//!
//! For each forward the trainable tensors are put into the model as tracked tensors on the
//! autodiff device ([`Trainable::bind`]); everything else stays on the plain device, and burn
//! treats it as a constant. For evaluation they are put back as plain tensors
//! ([`Trainable::unbind`]).

use std::collections::{BTreeMap, HashMap};

use burn::module::Param;
use burn::nn::{LayerNorm, Linear};
use burn::prelude::*;
use burn::tensor::Gradients;

use crate::model::clip::{transpose, Lora, VisionTransformer};
use crate::model::head::Head;
use crate::model::checkpoint::HostTensor;
use crate::model::Detector;
use crate::{Error, Result};

/// How a module tensor relates to its checkpoint tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Same shape and order.
    Same,
    /// burn's `Linear` weight `[in, out]` vs PyTorch's `[out, in]`.
    Transposed,
    /// The patch convolution as a matrix `[c·p·p, d]` vs PyTorch's `[d, c, p, p]`.
    PatchEmbedding { channels: usize, patch: usize },
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
    fn read(&self) -> (Vec<usize>, Vec<f32>) {
        match self {
            Slot::Vector(p) => host(p.val()),
            Slot::Matrix(p, _) => host(p.val()),
        }
    }

    fn layout(&self) -> Layout {
        match self {
            Slot::Vector(_) => Layout::Same,
            Slot::Matrix(_, l) => *l,
        }
    }
}

/// Calls `f` with the checkpoint name and slot of every parameter of encoder and head, in
/// checkpoint order; LoRA adapters as `<proj>.lora_A.weight` / `<proj>.lora_B.weight`.
pub fn for_each_param(encoder: &mut VisionTransformer, head: &mut Head, f: &mut dyn FnMut(&str, Slot<'_>)) {
    let emb = &mut encoder.embeddings;
    let patch_layout = {
        let [rows, d] = emb.patch_embedding.dims();
        let _ = d;
        // rows = c·p·p with c = 3 channels.
        let patch = ((rows / 3) as f64).sqrt().round() as usize;
        Layout::PatchEmbedding { channels: 3, patch }
    };
    f("vision_model.embeddings.patch_embedding.weight", Slot::Matrix(&mut emb.patch_embedding, patch_layout));
    f("vision_model.embeddings.class_embedding", Slot::Vector(&mut emb.class_embedding));
    f("vision_model.embeddings.position_embedding.weight", Slot::Matrix(&mut emb.position_embedding, Layout::Same));
    layer_norm(f, "vision_model.pre_layrnorm", &mut encoder.pre_layrnorm);
    for (i, layer) in encoder.encoder.layers.iter_mut().enumerate() {
        let l = format!("vision_model.encoder.layers.{i}");
        let attn = &mut layer.self_attn;
        linear(f, &format!("{l}.self_attn.q_proj"), &mut attn.q_proj);
        linear(f, &format!("{l}.self_attn.k_proj"), &mut attn.k_proj);
        linear(f, &format!("{l}.self_attn.v_proj"), &mut attn.v_proj);
        linear(f, &format!("{l}.self_attn.out_proj"), &mut attn.out_proj);
        let lora = &mut attn.lora;
        for (proj, adapter) in [
            ("q_proj", &mut lora.q_proj),
            ("k_proj", &mut lora.k_proj),
            ("v_proj", &mut lora.v_proj),
            ("out_proj", &mut lora.out_proj),
        ] {
            if let Some(a) = adapter {
                f(&format!("{l}.self_attn.{proj}.lora_A.weight"), Slot::Matrix(&mut a.lora_a, Layout::Transposed));
                f(&format!("{l}.self_attn.{proj}.lora_B.weight"), Slot::Matrix(&mut a.lora_b, Layout::Transposed));
            }
        }
        layer_norm(f, &format!("{l}.layer_norm1"), &mut layer.layer_norm1);
        linear(f, &format!("{l}.mlp.fc1"), &mut layer.mlp.fc1);
        linear(f, &format!("{l}.mlp.fc2"), &mut layer.mlp.fc2);
        layer_norm(f, &format!("{l}.layer_norm2"), &mut layer.layer_norm2);
    }
    layer_norm(f, "vision_model.post_layernorm", &mut encoder.post_layernorm);
    linear(f, "model.linear", &mut head.linear);
}

fn layer_norm(f: &mut dyn FnMut(&str, Slot<'_>), name: &str, ln: &mut LayerNorm) {
    f(&format!("{name}.weight"), Slot::Vector(&mut ln.gamma));
    if let Some(beta) = &mut ln.beta {
        f(&format!("{name}.bias"), Slot::Vector(beta));
    }
}

fn linear(f: &mut dyn FnMut(&str, Slot<'_>), name: &str, lin: &mut Linear) {
    f(&format!("{name}.weight"), Slot::Matrix(&mut lin.weight, Layout::Transposed));
    if let Some(bias) = &mut lin.bias {
        f(&format!("{name}.bias"), Slot::Vector(bias));
    }
}

/// The LayerNorm modules of the CLIP vision tower, by their name's last component.
pub const LN_TARGETS: [&str; 5] = ["pre_layrnorm", "layer_norm1", "layer_norm2", "post_layernorm", "layernorm"];

/// Which parameters train.
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

/// peft's module matching: the module's name is the target or ends with `.target`.
fn module_matches(module: &str, target: &str) -> bool {
    module == target || module.ends_with(&format!(".{target}"))
}

impl Selection {
    /// Whether the parameter `name` trains.
    pub fn trains(&self, name: &str) -> bool {
        if name.starts_with("model.") || self.full {
            return true;
        }
        if self.unfreeze.iter().any(|p| name.contains(p.as_str())) {
            return true;
        }
        if self.lora && (name.contains(".lora_A.") || name.contains(".lora_B.")) {
            return true;
        }
        let module = name.rsplit_once('.').map_or(name, |(m, _)| m);
        let is_ln = module.rsplit('.').next().is_some_and(|last| LN_TARGETS.contains(&last));
        is_ln && self.ln_targets.iter().any(|t| module_matches(module, t))
    }
}

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
        to_checkpoint(&self.shape, values, self.layout)
    }

    /// Replaces the values from a tensor in the checkpoint's layout.
    pub fn set_from_checkpoint(&mut self, t: &HostTensor) -> Result<()> {
        let expected = self.to_checkpoint(&self.data).shape;
        if t.shape != expected {
            return Err(Error::Invalid(format!("`{}`: shape {:?}, expected {:?}", self.name, t.shape, expected)));
        }
        self.data = match self.layout {
            Layout::Same => t.data.clone(),
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
        for_each_param(&mut detector.encoder, &mut detector.head, &mut |name, slot| {
            if selection.trains(name) {
                let layout = slot.layout();
                let (shape, data) = slot.read();
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
        for_each_param(&mut detector.encoder, &mut detector.head, &mut |name, slot| {
            let Some(&i) = index.get(name) else { return };
            let p = &self.params[i];
            let data = TensorData::new(p.data.clone(), p.shape.clone());
            match slot {
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
    /// ([`VisionTransformer::keep_transposed_weights`]).
    pub fn backward_through_frozen_projections(&self) -> bool {
        const PROJECTIONS: [&str; 6] = [".q_proj.", ".k_proj.", ".v_proj.", ".out_proj.", ".fc1.", ".fc2."];
        let is_projection = |name: &str| {
            name.starts_with("vision_model.")
                && PROJECTIONS.iter().any(|p| name.contains(p))
                && !(name.contains(".lora_A.") || name.contains(".lora_B."))
        };
        let encoder_trains = self.params.iter().any(|p| p.name.starts_with("vision_model."));
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

/// A module tensor in burn layout -> the checkpoint's tensor.
pub fn to_checkpoint(shape: &[usize], values: &[f32], layout: Layout) -> HostTensor {
    match layout {
        Layout::Same => HostTensor::new(shape.to_vec(), values.to_vec()),
        Layout::Transposed => {
            let (rows, cols) = (shape[0], shape[1]);
            HostTensor::new(vec![cols, rows], transpose(values, rows, cols))
        }
        Layout::PatchEmbedding { channels, patch } => {
            let (rows, d) = (shape[0], shape[1]);
            HostTensor::new(vec![d, channels, patch, patch], transpose(values, rows, d))
        }
    }
}

/// Every tensor of `detector` under its checkpoint name and in the checkpoint's layout, LoRA
/// adapters merged into their projection (`W += scaling · B A`), ready for `save_dfdet`.
pub fn export(detector: &mut Detector) -> BTreeMap<String, HostTensor> {
    // Adapters first, so that their projection is merged when it is read.
    let mut deltas: HashMap<String, Vec<f32>> = HashMap::new();
    for (i, layer) in detector.encoder.encoder.layers.iter().enumerate() {
        let lora = &layer.self_attn.lora;
        for (proj, adapter) in [("q_proj", &lora.q_proj), ("k_proj", &lora.k_proj), ("v_proj", &lora.v_proj), ("out_proj", &lora.out_proj)] {
            if let Some(a) = adapter {
                deltas.insert(format!("vision_model.encoder.layers.{i}.self_attn.{proj}.weight"), lora_delta(a));
            }
        }
    }
    let mut out = BTreeMap::new();
    for_each_param(&mut detector.encoder, &mut detector.head, &mut |name, slot| {
        if name.contains(".lora_A.") || name.contains(".lora_B.") {
            return;
        }
        let layout = slot.layout();
        let (shape, mut values) = slot.read();
        if let Some(delta) = deltas.get(name) {
            for (v, d) in values.iter_mut().zip(delta) {
                *v += d;
            }
        }
        out.insert(name.to_string(), to_checkpoint(&shape, &values, layout));
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
