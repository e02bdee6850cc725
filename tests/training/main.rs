//! Training: gradients, AdamW, schedules and slerp against PyTorch, runs end to end, and
//! `dfdet train` as a user runs it.

#[path = "../common/mod.rs"]
mod common;
mod support;

mod cli;
mod grads;
mod optim;
mod run;
mod study;
