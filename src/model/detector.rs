//! The detector: encoder + head, built from a [`Checkpoint`].

use burn::module::Param;
use burn::prelude::*;

use super::checkpoint::Checkpoint;
use super::config::Backbone;
use super::dtype::Dtype;
use super::encoder::Encoder;
use super::fused::bf16::Autocast;
use super::head::{Head, HeadOutput};
use super::lora::Lora;
use super::params::{Entry, Loader, Selection, Visit};
use super::spec::{ModelSpec, Tuning};
use crate::Result;

/// An encoder (CLIP or DINOv3) and a linear head, ready for inference.
#[derive(Debug)]
pub struct Detector {
    pub encoder: Encoder,
    pub head: Head,
    pub spec: ModelSpec,
    pub backbone: Backbone,
    /// What it computes in: f32 or bf16 ([`Dtype::resolve`]d).
    pub dtype: Dtype,
}

impl Detector {
    /// Builds the model from every tensor of `ckpt`, computing in `dtype` (`auto` resolved,
    /// [`Dtype::resolve`]); a tensor left unused is an error, so a checkpoint that does not fit
    /// the backbone is never silently half-loaded.
    pub fn from_checkpoint(ckpt: Checkpoint, device: &Device, dtype: Dtype) -> Result<Self> {
        let Checkpoint { spec, backbone, mut tensors, .. } = ckpt;
        let dtype = dtype.resolve();
        let ld = Loader { device: device.clone() };
        let mut encoder = Encoder::load(&ld, &mut tensors, &backbone.encoder)?;
        let head = Head::load(&ld, &mut tensors, spec.head, backbone.encoder.hidden_size(), spec.num_classes)?;
        tensors.finish()?;
        if dtype == Dtype::Bf16 {
            encoder.prepare_bf16_inference();
        }
        Ok(Self { encoder, head, spec, backbone, dtype })
    }

    /// `[b, 3, s, s]` f32 pixels -> logits and features, in the detector's dtype (bf16: under
    /// autocast, [`Autocast`]).
    pub fn forward(&self, pixels: Tensor<4>) -> HeadOutput {
        // An f32 detector leaves the thread's setting alone (a bf16-mixed training run sets it).
        let _autocast = (self.dtype == Dtype::Bf16).then(|| Autocast::bf16(true));
        self.head.forward(self.encoder.forward(pixels))
    }

    /// What to tell a user who chose bf16 where it is slower than f32 ([`Dtype::slower_here`]).
    pub fn slower_here(&self) -> Option<String> {
        self.dtype.slower_here()
    }

    /// Class probabilities, one row per image: softmax of the logits, computed in f32.
    pub fn probabilities(&self, pixels: Tensor<4>) -> Vec<Vec<f32>> {
        let logits = self.forward(pixels).logits;
        let [b, c] = logits.dims();
        let probs = burn::tensor::activation::softmax(logits, 1);
        let data: Vec<f32> = probs.into_data().try_into_vec::<f32>().expect("f32 tensor");
        (0..b).map(|i| data[i * c..(i + 1) * c].to_vec()).collect()
    }

    /// All parameters of encoder and head.
    pub fn num_params(&self) -> usize {
        self.encoder.num_params() + self.head.num_params()
    }

    /// Parameters the checkpoint's training method trains (docs/method.md §4): those
    /// [`Selection::of`] its tuning selects, LoRA adapters counted as training adds them.
    pub fn num_trainable(&self) -> usize {
        num_trainable(&self.backbone, &self.spec)
    }

    /// Calls `visit` on every parameter of encoder and head in checkpoint order: its HF name,
    /// PyTorch shape and slot (see [`super::params`]).
    pub fn visit_params(&mut self, visit: &mut Visit<'_>) -> Result<()> {
        let arch = &self.backbone.encoder;
        self.encoder.visit_params(arch, visit)?;
        self.head.visit_params(arch.hidden_size(), self.spec.num_classes, visit)
    }

    /// [`Self::visit_params`] with a visitor that cannot fail.
    pub fn for_each_param(&mut self, mut f: impl FnMut(Entry<'_>)) {
        self.visit_params(&mut |entry| {
            f(entry);
            Ok(())
        })
        .expect("the visitor does not fail")
    }
}

/// [`Detector::num_trainable`] of a detector of `spec` on `backbone`.
fn num_trainable(backbone: &Backbone, spec: &ModelSpec) -> usize {
    let selection = Selection::of(&spec.tuning);
    training_shapes(backbone, spec)
        .iter()
        .filter(|(name, _)| selection.trains(name))
        .map(|(_, shape)| shape.iter().product::<usize>())
        .sum()
}

/// Every parameter of a detector of `spec` on `backbone` while it trains, with its checkpoint
/// shape: LoRA adapters included, on the projections the tuning targets.
fn training_shapes(backbone: &Backbone, spec: &ModelSpec) -> Vec<(String, Vec<usize>)> {
    let arch = &backbone.encoder;
    let device = Device::flex();
    let mut encoder = Encoder::skeleton(arch, &device);
    if let Tuning::Lora { rank, alpha, target_modules, .. } = &spec.tuning {
        encoder.add_adapters(arch, target_modules, |d_in, d_out| Lora {
            lora_a: Param::from_tensor(Tensor::zeros([d_in, *rank], &device)),
            lora_b: Param::from_tensor(Tensor::zeros([*rank, d_out], &device)),
            scaling: alpha / *rank as f64,
            dropout_mask: None,
        });
    }
    let mut head = Head::skeleton(spec.head, &device);
    let mut out = Vec::new();
    let mut record = |entry: Entry<'_>| {
        out.push((entry.name.to_string(), entry.shape.to_vec()));
        Ok(())
    };
    encoder.visit_params(arch, &mut record).expect("recording names cannot fail");
    head.visit_params(arch.hidden_size(), spec.num_classes, &mut record).expect("recording names cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::spec::HeadKind;

    #[test]
    fn trainable_counts_follow_the_tuning() {
        let backbone = Backbone::preset("openai/clip-vit-base-patch32").unwrap();
        let (d, layers) = (768, 12);
        let head = 2 * d + 2;
        let spec = |tuning| ModelSpec {
            backbone: backbone.name.clone(),
            head: HeadKind::LinearNorm,
            num_classes: 2,
            tuning,
            precision: None,
            run_name: None,
        };
        let all: usize = backbone.encoder.tensor_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        let lora = Tuning::Lora {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: vec!["q_proj".into(), "out_proj".into(), "fc1".into()],
        };
        for (tuning, expected) in [
            (Tuning::LinearProbe, head),
            // pre_layrnorm, post_layernorm and two per layer, each weight + bias.
            (Tuning::LnTuning, (2 * layers + 2) * 2 * d + head),
            // A and B on each targeted attention projection (fc1 is not one).
            (lora, layers * 2 * 2 * 4 * d + head),
            (Tuning::Full, all + head),
        ] {
            assert_eq!(num_trainable(&backbone, &spec(tuning.clone())), expected, "{tuning:?}");
        }
    }

    #[test]
    fn lora_counts_the_adapters_peft_would_add() {
        let spec = |backbone: &Backbone, targets: &[&str], rank: usize| ModelSpec {
            backbone: backbone.name.clone(),
            head: HeadKind::LinearNorm,
            num_classes: 2,
            tuning: Tuning::Lora {
                rank,
                alpha: 8.0,
                dropout: 0.1,
                target_modules: targets.iter().map(|t| t.to_string()).collect(),
            },
            precision: None,
            run_name: None,
        };
        // DINOv3 ViT-B: q_proj and v_proj [d, d], up_proj [d, m], in every layer.
        let dino = Backbone::preset("facebook/dinov3-vitb16-pretrain-lvd1689m").unwrap();
        let (d, m, layers, head) = (768, 3072, 12, 2 * 768 + 2);
        let per_layer = 2 * (4 * d + 4 * d) + (4 * d + 4 * m);
        assert_eq!(num_trainable(&dino, &spec(&dino, &["q_proj", "v_proj", "up_proj"], 4)), layers * per_layer + head);
        // "proj" is no whole name component of DINOv3's modules: nothing but the head.
        assert_eq!(num_trainable(&dino, &spec(&dino, &["proj"], 4)), head);
        // PE B/16: "proj" matches the patch convolution, each block's attn.proj and the pool's
        // proj; "qkv" [d, 3d]; "fc1" the blocks' [d, m] and the pool MLP's [d, pm].
        let pe = Backbone::preset("vit_pe_core_base_patch16_224").unwrap();
        let (r, pm, conv) = (2, 3072, 3 * 16 * 16);
        let blocks = 12 * ((r * d + r * 3 * d) + (r * d + r * d) + (r * d + r * m));
        let pool = (r * d + r * d) + (r * d + r * pm);
        let patch = r * conv + r * d;
        assert_eq!(num_trainable(&pe, &spec(&pe, &["qkv", "proj", "fc1"], r)), blocks + pool + patch + head);
    }

    #[test]
    fn dinov3_ln_tuning_trains_every_norm() {
        let backbone = Backbone::preset("facebook/dinov3-vitb16-pretrain-lvd1689m").unwrap();
        let spec = ModelSpec {
            backbone: backbone.name.clone(),
            head: HeadKind::LinearNorm,
            num_classes: 2,
            tuning: Tuning::LnTuning,
            precision: None,
            run_name: None,
        };
        // GenD's `unfreeze_layers` ["norm1", "norm2", "norm"]: two per layer and the final one.
        let (d, layers) = (768, 12);
        assert_eq!(num_trainable(&backbone, &spec), (2 * layers + 1) * 2 * d + 2 * d + 2);
    }
}
