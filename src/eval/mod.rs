//! Evaluation: metrics on plain slices of scores and labels, knowing nothing of models.

pub mod metrics;
pub mod plots;
pub mod report;
pub mod unifalign;
pub mod video;
