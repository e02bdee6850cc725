//! Evaluation: metrics against scikit-learn, plots, and `dfdet test`/`metrics` as a user runs them.

#[path = "../common/mod.rs"]
mod common;

#[path = "../common/alloc.rs"]
mod alloc;

#[global_allocator]
static ALLOCATOR: alloc::Recording = alloc::Recording;

mod metrics;
mod parsers;
mod plots;
mod test_command;
