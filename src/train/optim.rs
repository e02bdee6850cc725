//! AdamW with the reference's two parameter groups (docs/method.md §7), on the host.
//!
//! Written here rather than taken from burn-optim: the trainable tensors are few (LN-tuning of
//! ViT-L/14 is 104k values) and live on the host between steps, the weight decay differs per
//! group, the state must be saved and restored exactly for `--resume`, and the arithmetic
//! follows `torch.optim.AdamW` (single-tensor path, float32 elementwise, float64 scalars) step
//! for step, which the parity fixtures check. A tensor that got no gradient in a step is left
//! alone, with no decay and no moment update, as PyTorch skips parameters whose `grad` is None.

use serde::{Deserialize, Serialize};

use super::params::Trainable;

/// AdamW's hyper-parameters (the learning rate comes from the schedule at each step).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub betas: [f64; 2],
    pub eps: f64,
    /// Weight decay of the decay group; the other group has none.
    pub weight_decay: f64,
}

/// Per-tensor state: step count and the two moments (burn layout, as the parameter).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Moments {
    pub step: u64,
    pub exp_avg: Vec<f32>,
    pub exp_avg_sq: Vec<f32>,
}

/// The optimizer and its state, one entry per trainable tensor in [`Trainable`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    pub config: AdamWConfig,
    pub state: Vec<Moments>,
}

impl AdamW {
    /// Zero state for `params`.
    pub fn new(config: AdamWConfig, params: &Trainable) -> Self {
        let state = params
            .params
            .iter()
            .map(|p| Moments { step: 0, exp_avg: vec![0.0; p.data.len()], exp_avg_sq: vec![0.0; p.data.len()] })
            .collect();
        Self { config, state }
    }

    /// One update of every tensor that has a gradient, at learning rate `lr`.
    #[allow(clippy::needless_range_loop)] // four arrays in step
    pub fn step(&mut self, params: &mut Trainable, grads: &[Option<Vec<f32>>], lr: f64) {
        assert_eq!(grads.len(), params.params.len(), "one gradient slot per trainable tensor");
        let [beta1, beta2] = self.config.betas;
        for ((p, g), st) in params.params.iter_mut().zip(grads).zip(&mut self.state) {
            let Some(g) = g else { continue };
            st.step += 1;
            let wd = if p.decay { self.config.weight_decay } else { 0.0 };
            let decay = (1.0 - lr * wd) as f32;
            let bias_correction1 = 1.0 - beta1.powi(st.step as i32);
            let bias_correction2 = 1.0 - beta2.powi(st.step as i32);
            let step_size = -(lr / bias_correction1) as f32;
            let bc2_sqrt = bias_correction2.sqrt() as f32;
            let (w1, b2, w2, eps) = ((1.0 - beta1) as f32, beta2 as f32, (1.0 - beta2) as f32, self.config.eps as f32);
            for i in 0..p.data.len() {
                if wd != 0.0 {
                    p.data[i] *= decay;
                }
                let (m, v) = (&mut st.exp_avg[i], &mut st.exp_avg_sq[i]);
                *m += w1 * (g[i] - *m); // lerp(m, g, 1 - beta1)
                *v = *v * b2 + w2 * g[i] * g[i];
                let denom = v.sqrt() / bc2_sqrt + eps;
                p.data[i] += step_size * (*m / denom);
            }
        }
    }
}
