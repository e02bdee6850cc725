//! Latent augmentation by spherical interpolation (docs/method.md §5).
//!
//! Ports `slerp` and `DeepfakeDetectionModel.slerp_feature_augmentation` of
//! yermandy/deepfake-detection `src/model/dfdet.py`: per class with at least two samples in the
//! mini-batch, every feature is replaced by the slerp between it and a randomly permuted
//! feature of the same class, at `t ~ U[t0, t1]` per sample. Other features pass unchanged.

use burn::prelude::*;

use crate::model::head::l2_normalize;
use crate::rng::Rng;

/// Spherical interpolation of the rows of `a` and `b` (`[n, d]`) at `t` (`[n, 1]`), both
/// L2-normalised first, `cos θ` clamped to `[-1 + 1e-7, 1 - 1e-7]`:
/// `sin((1 - t) θ) / sin θ · a + sin(t θ) / sin θ · b`.
pub fn slerp(a: Tensor<2>, b: Tensor<2>, t: Tensor<2>) -> Tensor<2> {
    let a = l2_normalize(a);
    let b = l2_normalize(b);
    let dot = (a.clone() * b.clone()).sum_dim(1).clamp(-1.0 + 1e-7, 1.0 - 1e-7); // [n, 1]
    let theta = dot.acos(); // [n, 1]
    let sin_theta = theta.clone().sin();
    let t_theta = t * theta.clone();
    // The reference writes sin(θ - tθ) for sin((1 - t)θ).
    let coeff_a = (theta - t_theta.clone()).sin() / sin_theta.clone();
    let coeff_b = t_theta.sin() / sin_theta;
    a * coeff_a + b * coeff_b
}

/// Which rows are interpolated with which partner, and at which `t`.
#[derive(Debug, Clone, PartialEq)]
pub struct SlerpPlan {
    /// Rows replaced by an interpolation, grouped by class (ascending labels).
    pub rows: Vec<usize>,
    /// The partner of each of `rows` (a row of the same class; may be the row itself).
    pub partners: Vec<usize>,
    /// The interpolation parameter of each of `rows`.
    pub t: Vec<f32>,
}

impl SlerpPlan {
    /// Draws pairs and `t` for a mini-batch with `labels`, `t` in `[t0, t1]`.
    pub fn draw(labels: &[usize], range: [f64; 2], rng: &mut Rng) -> Self {
        let mut classes: Vec<usize> = labels.to_vec();
        classes.sort_unstable();
        classes.dedup();
        let mut plan = Self { rows: Vec::new(), partners: Vec::new(), t: Vec::new() };
        for c in classes {
            let members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
            if members.len() < 2 {
                continue;
            }
            let perm = rng.permutation(members.len());
            for (k, &row) in members.iter().enumerate() {
                plan.rows.push(row);
                plan.partners.push(members[perm[k]]);
                plan.t.push(rng.range(range[0], range[1]) as f32);
            }
        }
        plan
    }

    /// `features` (`[n, d]`) with the planned rows replaced by their interpolations.
    pub fn apply(&self, features: Tensor<2>) -> Tensor<2> {
        if self.rows.is_empty() {
            return features;
        }
        let [n, _] = features.dims();
        let device = features.device();
        let index = |idx: &[usize]| {
            let data: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
            Tensor::<1, Int>::from_data(TensorData::new(data, [idx.len()]), &device)
        };
        let a = features.clone().select(0, index(&self.rows));
        let b = features.clone().select(0, index(&self.partners));
        let t = Tensor::<2>::from_data(TensorData::new(self.t.clone(), [self.rows.len(), 1]), &device);
        let mixed = slerp(a, b, t); // [m, d]
        let rest: Vec<usize> = (0..n).filter(|i| !self.rows.contains(i)).collect();
        let stacked = if rest.is_empty() {
            mixed
        } else {
            Tensor::cat(vec![mixed, features.select(0, index(&rest))], 0) // [n, d], rows then rest
        };
        // Back to batch order: row i sits where it was stacked.
        let mut position = vec![0usize; n];
        for (k, &i) in self.rows.iter().chain(&rest).enumerate() {
            position[i] = k;
        }
        stacked.select(0, index(&position))
    }
}
