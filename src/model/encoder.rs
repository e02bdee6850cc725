//! The detector's encoder, whichever family its backbone is: CLIP's vision transformer
//! ([`super::clip`]), DINOv3 ([`super::dinov3`]) or the Perception Encoder ([`super::pe`]). Each
//! turns `[b, 3, h, w]` pixels into the `[b, d]` feature the head reads, and names its
//! parameters as checkpoints do.

use burn::prelude::*;

use super::clip::{self, VisionTransformer};
use super::config::Architecture;
use super::dinov3::{self, Coords, Dinov3, Linear};
use super::lora::{self, Lora, Rows, Site};
use super::params::{Loader, Visit};
use super::pe::{self, Pe};
use super::tensors::TensorMap;
use crate::Result;

#[derive(Debug)]
pub enum Encoder {
    Clip(VisionTransformer),
    Dinov3(Dinov3),
    /// Boxed: its attention pool makes it several times the others' size.
    Pe(Box<Pe>),
}

impl Encoder {
    /// Takes the encoder's tensors out of `map` (checkpoint names, see
    /// [`Architecture::tensor_shapes`]), checking every shape.
    pub fn load(ld: &Loader, map: &mut TensorMap, arch: &Architecture) -> Result<Self> {
        Ok(match arch {
            Architecture::Clip(cfg) => Self::Clip(VisionTransformer::load(ld, map, cfg)?),
            Architecture::Dinov3(cfg) => Self::Dinov3(Dinov3::load(ld, map, cfg, dinov3::ROOT)?),
            Architecture::Pe(cfg) => Self::Pe(Box::new(Pe::load(ld, map, cfg, dinov3::ROOT)?)),
        })
    }

    /// The encoder's structure, its parameters empty until a walk fills them.
    pub(crate) fn skeleton(arch: &Architecture, device: &Device) -> Self {
        match arch {
            Architecture::Clip(cfg) => Self::Clip(VisionTransformer::skeleton(cfg, device)),
            Architecture::Dinov3(cfg) => Self::Dinov3(Dinov3::skeleton(cfg, device)),
            Architecture::Pe(cfg) => Self::Pe(Box::new(Pe::skeleton(cfg, device))),
        }
    }

    /// The feature of each image: `[b, 3, h, w]` -> `[b, d]` (CLIP's and DINOv3's
    /// `pooler_output`).
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<2> {
        match self {
            Self::Clip(e) => e.forward(pixels),
            Self::Dinov3(e) => e.forward(pixels),
            Self::Pe(e) => e.forward(pixels),
        }
    }

    /// Calls `visit` on every parameter, in checkpoint order, under its checkpoint name.
    pub fn visit_params(&mut self, arch: &Architecture, visit: &mut Visit<'_>) -> Result<()> {
        match (self, arch) {
            (Self::Clip(e), Architecture::Clip(cfg)) => e.visit_params(cfg, visit),
            (Self::Dinov3(e), Architecture::Dinov3(cfg)) => e.visit_params(cfg, dinov3::ROOT, visit),
            (Self::Pe(e), Architecture::Pe(cfg)) => e.visit_params(cfg, dinov3::ROOT, visit),
            (_, arch) => unreachable!("an encoder is always walked with its own architecture ({})", arch.family()),
        }
    }

    pub fn num_params(&self) -> usize {
        match self {
            Self::Clip(e) => e.num_params(),
            Self::Dinov3(e) => e.num_params(),
            Self::Pe(e) => e.num_params(),
        }
    }

    /// The modules a LoRA adapter can go on, under their checkpoint names, in the order
    /// adapters are made and walked: CLIP's attention projections (`q_proj`, `k_proj`,
    /// `v_proj`, `out_proj`) layer by layer; every `nn.Linear` of DINOv3; the Perception
    /// Encoder's linears and its patch convolution (what peft's LoRA wraps).
    pub fn lora_sites(&mut self, arch: &Architecture) -> Vec<Site<'_>> {
        match (self, arch) {
            (Self::Clip(e), Architecture::Clip(cfg)) => {
                let d = cfg.hidden_size;
                let mut sites = Vec::new();
                for (i, layer) in e.encoder.layers.iter_mut().enumerate() {
                    for (name, proj) in layer.self_attn.projections_mut() {
                        let name = format!("{}.encoder.layers.{i}.self_attn.{name}", clip::ROOT);
                        sites.push(Site { name, dims: [d, d], rows: Rows::Tokens, slot: &mut proj.lora });
                    }
                }
                sites
            }
            (Self::Dinov3(e), Architecture::Dinov3(cfg)) => e.sites(cfg, dinov3::ROOT),
            (Self::Pe(e), Architecture::Pe(_)) => e.sites(dinov3::ROOT),
            (_, arch) => unreachable!("an encoder is always walked with its own architecture ({})", arch.family()),
        }
    }

    /// Puts an adapter made by `make(in, out)` on every module of [`Self::lora_sites`] that
    /// one of `targets` matches as peft matches them (the name, or its end after a dot);
    /// returns the names of the modules adapted.
    pub fn add_adapters(
        &mut self,
        arch: &Architecture,
        targets: &[String],
        mut make: impl FnMut(usize, usize) -> Lora,
    ) -> Vec<String> {
        lora::add_adapters(self.lora_sites(arch), targets, &mut make)
    }

    /// The LoRA adapters, with the rows of their input (for their dropout masks), in
    /// [`Self::lora_sites`] order.
    pub fn adapters_mut(&mut self, arch: &Architecture) -> Vec<(Rows, &mut Lora)> {
        self.lora_sites(arch).into_iter().filter_map(|s| Some((s.rows, s.slot.as_mut()?))).collect()
    }

    /// CLIP's encoder, for what only it has (kept transposed weights).
    pub fn as_clip_mut(&mut self) -> Option<&mut VisionTransformer> {
        match self {
            Self::Clip(e) => Some(e),
            Self::Dinov3(_) | Self::Pe(_) => None,
        }
    }

    /// Keeps transposed copies of frozen projection weights for the backward pass in f32 (see
    /// [`VisionTransformer::keep_transposed_weights`]): CLIP's, whose LN-tuning step they make
    /// 1.14-1.17x faster. DINOv3's step measured about the same with and without them (1.02x
    /// for 1.2 GB more, OpenBLAS on AVX2; BENCHMARKS.md), so DINOv3 and the Perception Encoder
    /// keep them only for bf16-mixed ([`Self::prepare_bf16_mixed`]), where they save rounding
    /// the weights on every pass.
    pub fn keep_transposed_weights(&mut self, keep: bool) {
        if let Self::Clip(e) = self {
            e.keep_transposed_weights(keep);
        }
    }

    /// Readies the encoder for bf16 inference under autocast ([`super::Detector`]): its frozen
    /// projection weights become bfloat16 once, instead of on every pass.
    pub fn prepare_bf16_inference(&mut self) {
        match self {
            Self::Clip(e) => e.round_weights(),
            Self::Dinov3(e) => e.linears_mut().for_each(Linear::round_weight),
            Self::Pe(e) => e.linears_mut().for_each(Linear::round_weight),
        }
    }

    /// Readies the encoder for bf16-mixed precision (after [`Self::keep_transposed_weights`]):
    /// with `frozen_projections` (the projections' weights do not train), bfloat16 copies of
    /// them are made once, which the products read forward and backward; otherwise the weights
    /// are rounded on every pass, as autocast casts them.
    pub fn prepare_bf16_mixed(&mut self, frozen_projections: bool) {
        match self {
            Self::Clip(e) => e.round_transposed_weights(),
            Self::Dinov3(e) => e.linears_mut().for_each(|l| l.keep_bf16_copy(frozen_projections)),
            Self::Pe(e) => e.linears_mut().for_each(|l| l.keep_bf16_copy(frozen_projections)),
        }
    }

    /// Training mode for the next forward pass: DINOv3 moves its rotary coordinates by a
    /// draw from `uniform` (`pos_embed_*` of its config); CLIP has nothing random in
    /// training mode besides dropout, which is not used. `None`: eval mode.
    pub fn set_training(&mut self, arch: &Architecture, uniform: Option<&mut dyn FnMut() -> f64>) {
        if let (Self::Dinov3(e), Architecture::Dinov3(cfg)) = (self, arch) {
            e.coords = match uniform {
                Some(u) => Coords::draw(cfg, u),
                None => Coords::IDENTITY,
            };
        }
    }
}

/// What an architecture's checkpoints hold (here rather than in [`super::config`], which the
/// encoders' own files read).
impl Architecture {
    /// Every encoder tensor, named as checkpoints carry it, with its PyTorch shape.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        match self {
            Self::Clip(c) => clip::tensor_shapes(c),
            Self::Dinov3(c) => dinov3::tensor_shapes(c, dinov3::ROOT),
            Self::Pe(c) => pe::tensor_shapes(c, dinov3::ROOT),
        }
    }
    /// The embedding tensors that tell backbones of a family apart (width, patch size,
    /// image size), with their shapes.
    pub fn embedding_shapes(&self) -> Vec<(String, Vec<usize>)> {
        match self {
            Self::Clip(c) => clip::embedding_shapes(c),
            Self::Dinov3(c) => dinov3::tensor_shapes(c, dinov3::ROOT)
                .into_iter()
                .filter(|(n, _)| n.starts_with(&format!("{}.embeddings.", dinov3::ROOT)))
                .collect(),
            Self::Pe(c) => {
                let embeddings =
                    ["cls_token", "pos_embed", "patch_embed.proj.weight"].map(|n| format!("{}.{n}", dinov3::ROOT));
                pe::tensor_shapes(c, dinov3::ROOT).into_iter().filter(|(n, _)| embeddings.contains(n)).collect()
            }
        }
    }
    /// The layer a checkpoint tensor name belongs to, for a family's names.
    pub fn layer_index(&self, name: &str) -> Option<usize> {
        match self {
            Self::Clip(_) => clip::layer_index(name),
            Self::Dinov3(_) => dinov3::layer_index(name),
            Self::Pe(_) => pe::layer_index(name),
        }
    }
    /// The prefix all this family's encoder tensors share in a checkpoint.
    pub fn root(&self) -> &'static str {
        match self {
            Self::Clip(_) => clip::ROOT,
            Self::Dinov3(_) | Self::Pe(_) => dinov3::ROOT,
        }
    }
}
