//! The learning rate at each optimizer step (docs/method.md §7), as PyTorch's schedulers give it
//! when stepped once per optimizer step (Lightning's `interval = "step"`):
//! `CosineAnnealingLR(T_max = total, eta_min = min_lr)` (the original), and GenD's variants:
//! a `LinearLR` warm-up from `min_lr` to `lr` over `warmup` steps chained by `SequentialLR`
//! (the next scheduler starts afresh at the milestone), and `CosineAnnealingWarmRestarts`
//! (`T_0 = cycle`, `T_mult = 1`). Closed forms of PyTorch's recursive updates.

use std::f64::consts::PI;

use serde::{Deserialize, Serialize};

/// The scheduler after any warm-up: the reference's `lr_scheduler`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    /// `CosineAnnealingLR` over the whole run.
    Cosine,
    /// `CosineAnnealingWarmRestarts`, a restart every `cycle` steps.
    Cyclic,
}

/// A learning-rate schedule in optimizer steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub lr: f64,
    pub min_lr: f64,
    /// `None`: constant `lr` (after any warm-up).
    pub scheduler: Option<Scheduler>,
    /// `T_max` of the cosine: max_epochs x optimizer steps per epoch.
    pub total: usize,
    /// Warm-up steps (0 = none).
    pub warmup: usize,
    /// Restart period of `Cyclic`.
    pub cycle: usize,
}

impl Schedule {
    /// The learning rate of optimizer step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        let (lr, min) = (self.lr, self.min_lr);
        if step < self.warmup {
            let start = min / lr;
            return lr * (start + (1.0 - start) * step as f64 / self.warmup as f64);
        }
        let s = step - self.warmup;
        let cosine = |t: f64, period: f64| min + (lr - min) * (1.0 + (PI * t / period).cos()) / 2.0;
        match self.scheduler {
            None => lr,
            Some(Scheduler::Cosine) => cosine(s as f64, self.total.max(1) as f64),
            Some(Scheduler::Cyclic) => {
                let c = self.cycle.max(1);
                cosine((s % c) as f64, c as f64)
            }
        }
    }
}
