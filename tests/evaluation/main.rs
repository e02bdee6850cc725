//! Evaluation: metrics against scikit-learn, plots, and `dfdet test`/`metrics` as a user runs them.

#[path = "../common/mod.rs"]
mod common;

mod metrics;
mod parsers;
mod plots;
mod test_command;
