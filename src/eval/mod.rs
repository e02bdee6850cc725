//! Evaluation: metrics on plain slices of scores and labels, knowing nothing of models.

pub mod metrics;
pub mod unifalign;
pub mod video;
pub mod plots;
pub mod report;
