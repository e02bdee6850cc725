//! Random weights shaped for a backbone: for benchmarks and cost estimates, where only the
//! architecture matters (random weights are as fast as real ones).

use std::path::PathBuf;

use super::{Checkpoint, HostTensor, TensorMap};
use crate::model::config::Backbone;
use crate::model::params::LN_TARGETS;
use crate::model::spec::{HeadKind, ModelSpec, Tuning};
use crate::rng::Rng;

/// A random checkpoint shaped for `backbone`, with a LinearNorm head.
pub fn random_checkpoint(backbone: &Backbone, seed: u64) -> Checkpoint {
    let mut rng = Rng::new(seed);
    let mut tensors = TensorMap::new(PathBuf::from("<random>"));
    let mut shapes = backbone.encoder.tensor_shapes();
    let d = backbone.encoder.hidden_size();
    shapes.push(("model.linear.weight".into(), vec![2, d]));
    shapes.push(("model.linear.bias".into(), vec![2]));
    for (key, shape) in shapes {
        let n = shape.iter().product();
        // LayerNorm weights (and DINOv3's layer scales) at 1, as at initialisation.
        let module = key.strip_suffix(".weight").or_else(|| key.strip_suffix(".lambda1")).unwrap_or("");
        let is_ln_weight = LN_TARGETS.contains(&module.rsplit('.').next().unwrap_or("")) || key.ends_with(".lambda1");
        let data = (0..n).map(|_| if is_ln_weight { 1.0 } else { 0.02 * rng.normal() as f32 }).collect();
        tensors.insert(key, HostTensor { shape, data });
    }
    let spec = ModelSpec {
        backbone: backbone.name.clone(),
        head: HeadKind::LinearNorm,
        num_classes: 2,
        tuning: Tuning::LnTuning,
        precision: None,
        run_name: None,
    };
    Checkpoint { path: PathBuf::from("<random>"), spec, backbone: backbone.clone(), tensors }
}
