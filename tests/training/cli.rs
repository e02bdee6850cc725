//! `dfdet train` as a user runs it: hard-killed and resumed runs end exactly where an
//! uninterrupted run does, Ctrl-C saves `last`, and bad input is refused before any compute.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::dfdet_process;
use crate::support::*;

/// A derived dataset and a config in a temp folder.
fn setup(extra: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    derived_dataset(tmp.path(), Some(16));
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, tiny_config(tmp.path(), extra)).unwrap();
    (tmp, config)
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "dfdet failed: {stderr}");
    stderr
}

fn fails(cmd: &mut Command) -> String {
    let t = Instant::now();
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "expected a fatal error: {stderr}");
    assert!(t.elapsed() < Duration::from_secs(20));
    stderr
}

/// The saved optimizer step of a run's `last`, if any.
fn saved_step(run: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(run.join("checkpoints/last/train_state.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["global_step"].as_u64()
}

/// Starts a run, and kills it with `signal` once `last` holds step `k` or later.
fn interrupt_at(config: &Path, run_name: &str, run: &Path, k: u64, signal: &str) -> std::process::Output {
    let child = dfdet_process()
        .args(["train", "-c", config.to_str().unwrap(), "--set", &format!("run_name=\"{run_name}\"")])
        .spawn()
        .unwrap();
    let t = Instant::now();
    while saved_step(run).is_none_or(|s| s < k) {
        assert!(t.elapsed() < Duration::from_secs(120), "no step {k} saved");
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    child.wait_with_output().unwrap()
}

fn same_files(a: &Path, b: &Path, files: &[&str]) {
    for f in files {
        let (x, y) = (std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap());
        assert!(x == y, "{f} differs between {} and {}", a.display(), b.display());
    }
}

const COMPARED: [&str; 6] = [
    "checkpoints/last/train_state.safetensors",
    "checkpoints/last/model.safetensors",
    "checkpoints/best/model.safetensors",
    "metrics.csv",
    "test/metrics.json",
    "test/test_predictions.csv",
];

#[test]
fn hard_killed_run_resumes_to_the_same_weights_and_optimizer_state() {
    let (tmp, config) = setup("save_every_steps = 1\nmax_epochs = 4\nslerp_feature_augmentation = true");
    let runs = tmp.path().join("runs");
    run_ok(dfdet_process().args(["train", "-c", config.to_str().unwrap(), "--set", "run_name=\"full\""]));
    let total = saved_step(&runs.join("full")).unwrap();
    for ext in ["png", "svg"] {
        assert!(runs.join(format!("full/training_curves.{ext}")).is_file(), "no training curves");
    }
    assert_eq!(total, 16, "4 epochs of 4 optimizer steps");

    let killed = runs.join("killed");
    let out = interrupt_at(&config, "killed", &killed, 6, "-KILL");
    assert!(!out.status.success(), "the run was to be killed before its end");
    let at = saved_step(&killed).unwrap();
    assert!((6..total).contains(&at), "killed at step {at}");
    let stderr = run_ok(dfdet_process().args(["train", "--resume", killed.to_str().unwrap()]));
    assert!(stderr.contains("resuming"), "{stderr}");
    eprintln!("killed after step {at} of {total}, resumed");
    same_files(&runs.join("full"), &killed, &COMPARED);

    // Resuming the finished run does nothing (it once ran its test again).
    let metrics = std::fs::metadata(killed.join("test/metrics.json")).unwrap().modified().unwrap();
    let stderr = run_ok(dfdet_process().args(["train", "--resume", killed.to_str().unwrap()]));
    assert!(stderr.contains("finished all 4 epochs already") && stderr.contains("nothing to do"), "{stderr}");
    assert_eq!(std::fs::metadata(killed.join("test/metrics.json")).unwrap().modified().unwrap(), metrics);
    same_files(&runs.join("full"), &killed, &COMPARED);
}

#[test]
fn resume_extends_a_finished_run_to_where_a_longer_run_ends() {
    // A constant learning rate: then 2 epochs extended to 4 are the 4-epoch run.
    let (tmp, config) = setup("lr_scheduler = \"none\"\nmax_epochs = 4");
    let runs = tmp.path().join("runs");
    run_ok(dfdet_process().args(["train", "-c", config.to_str().unwrap(), "--set", "run_name=\"full\""]));
    let short = runs.join("short");
    let c = config.to_str().unwrap();
    run_ok(dfdet_process().args(["train", "-c", c, "--set", "run_name=\"short\"", "--set", "max_epochs=2"]));
    assert_eq!(saved_step(&short), Some(8));

    // Only the keys that keep the saved state meaningful can change; fewer epochs than done
    // is refused; neither touches the run.
    let s = short.to_str().unwrap();
    let err = fails(dfdet_process().args(["train", "--resume", s, "--set", "lr=1e-3"]));
    assert!(err.contains("--set lr") && err.contains("max_epochs"), "{err}");
    let err = fails(dfdet_process().args(["train", "--resume", s, "--set", "max_epochs=1"]));
    assert!(err.contains("max_epochs") && err.contains("2 epochs already"), "{err}");
    assert!(std::fs::read_to_string(short.join("config.toml")).unwrap().contains("max_epochs = 2"));

    // Extended from another folder: the run folder's config holds absolute paths.
    let elsewhere = tempfile::tempdir().unwrap();
    let stderr =
        run_ok(dfdet_process().current_dir(elsewhere.path()).args(["train", "--resume", s, "--set", "max_epochs=4"]));
    assert!(stderr.contains("max_epochs: 2 -> 4"), "{stderr}");
    assert!(std::fs::read_to_string(short.join("config.toml")).unwrap().contains("max_epochs = 4"));
    assert_eq!(saved_step(&short), Some(16));
    same_files(&runs.join("full"), &short, &COMPARED);
}

#[test]
fn ctrl_c_saves_last_and_exits_cleanly() {
    let (tmp, config) = setup("max_epochs = 4");
    let runs = tmp.path().join("runs");
    // `last` is written at epoch ends here: wait for the first, then interrupt.
    let run = runs.join("int");
    let out = interrupt_at(&config, "int", &run, 4, "-INT");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    let at = saved_step(&run).unwrap();
    assert!(at >= 4);
    run_ok(dfdet_process().args(["train", "--resume", run.to_str().unwrap()]));
    assert_eq!(saved_step(&run), Some(16));
    run_ok(dfdet_process().args(["train", "-c", config.to_str().unwrap(), "--set", "run_name=\"full\""]));
    same_files(&runs.join("full"), &run, &COMPARED);
}

#[test]
fn unknown_keys_and_wrong_types_are_named() {
    let (_tmp, config) = setup("");
    let c = config.to_str().unwrap();
    let err = fails(dfdet_process().args(["train", "-c", c, "--set", "lrr=1e-3"]));
    assert!(err.contains("unknown field `lrr`") && err.contains("`lr`") && err.contains("`min_lr`"), "{err}");
    let err = fails(dfdet_process().args(["train", "-c", c, "--set", "peft.lora.rnk=2"]));
    assert!(err.contains("`rnk`") && err.contains("`rank`"), "{err}");
    let err = fails(dfdet_process().args(["train", "-c", c, "--set", "lr=fast"]));
    assert!(err.contains("lr = \"fast\"") && err.contains("expected f64"), "{err}");
    let err = fails(dfdet_process().args(["train", "-c", c, "--set", "lr_scheduler=\"linear\""]));
    assert!(err.contains("`cosine`, `cyclic`, `none`"), "{err}");
    let err = fails(dfdet_process().args(["train", "-c", c, "--set", "head=\"mlp\""]));
    assert!(err.contains("mlp") && err.contains("LinearNorm"), "{err}");
    let err = fails(dfdet_process().args(["train", "-c", c, "--set", "batch_size=6"]));
    assert!(err.contains("batch_size: 6 is not a multiple of mini_batch_size 4"), "{err}");
}

#[test]
fn settings_that_cannot_train_are_refused_naming_key_and_range() {
    let (tmp, config) = setup("");
    let c = config.to_str().unwrap();
    let cases = [
        ("lr=inf", "lr: inf: a finite number > 0"),
        ("lr=0.0", "lr: 0: a finite number > 0"),
        ("min_lr=nan", "min_lr: NaN"),
        ("betas=[1.0, 1.0]", "betas: [1, 1]: each in [0, 1)"),
        ("eps=-1.0", "eps: -1: a finite number > 0"),
        ("weight_decay=-1.0", "weight_decay: -1"),
        ("loss.label_smoothing=2.0", "loss.label_smoothing: 2: in [0, 1]"),
        ("loss.uniformity=-0.5", "loss.uniformity: -0.5"),
        ("warmup_epochs=-1.0", "warmup_epochs: -1"),
        ("warmup_epochs=nan", "warmup_epochs: NaN"),
        ("peft.ln_tuning.target_modules=[\"nope\"]", "`nope` names no LayerNorm"),
        ("peft.ln_tuning.target_modules=[]", "peft.ln_tuning.target_modules: is empty"),
        ("limit_trn_files=0", "limit_trn_files: 0 would keep no frame"),
    ];
    for (set, expected) in cases {
        let err = fails(dfdet_process().args(["train", "-c", c, "--set", set, "--set", "run_name=\"bad\""]));
        assert!(err.contains(expected), "--set {set}: `{expected}` not in: {err}");
        assert!(!tmp.path().join("runs/bad").exists(), "--set {set} started a run");
    }
}

#[test]
fn a_missing_class_is_refused_before_any_compute() {
    let (tmp, config) = setup("");
    // Paths given with --set are relative to the working folder, as every command-line path.
    let train = |set: &str| {
        let mut cmd = dfdet_process();
        cmd.current_dir(tmp.path()).args(["train", "-c", config.to_str().unwrap(), "--set", set]);
        cmd
    };
    let err = fails(&mut train("trn_files=[\"real.txt\"]"));
    assert!(err.contains("trn_files") && err.contains("no fake"), "{err}");
    let err = fails(&mut train("val_files=[\"fake.txt\"]"));
    assert!(err.contains("val_files") && err.contains("no real"), "{err}");
    assert!(!tmp.path().join("runs/run/checkpoints/last").exists());
    assert!(!tmp.path().join("runs/run/metrics.csv").exists());
}

#[test]
fn all_loss_weights_zero_is_refused_before_a_run_folder_exists() {
    let (tmp, config) = setup("");
    let err = fails(dfdet_process().args(["train", "-c", config.to_str().unwrap(), "--set", "loss.ce_labels=0"]));
    assert!(err.contains("loss:") && err.contains("every loss weight is 0"), "{err}");
    assert!(!tmp.path().join("runs/run").exists(), "a half-made run folder would block the next run");
}

#[test]
fn a_run_name_that_leaves_run_dir_is_refused() {
    let (tmp, config) = setup("");
    let err =
        fails(dfdet_process().args(["train", "-c", config.to_str().unwrap(), "--set", "run_name=\"../../escape\""]));
    assert!(err.contains("run_name") && err.contains("../../escape"), "{err}");
    assert!(!tmp.path().join("../escape").exists());
}

#[test]
fn an_unwritable_run_folder_fails_before_training() {
    let (tmp, config) = setup("");
    let blocker = tmp.path().join("not-a-folder");
    std::fs::write(&blocker, "").unwrap();
    let run_dir = format!("run_dir=\"{}\"", blocker.join("runs").display());
    let err = fails(dfdet_process().args(["train", "-c", config.to_str().unwrap(), "--set", &run_dir]));
    assert!(err.contains("not-a-folder"), "{err}");
    assert!(!err.contains("epoch"), "{err}");
}

#[test]
fn an_existing_run_is_not_overwritten() {
    let (_tmp, config) = setup("max_epochs = 1");
    let c = config.to_str().unwrap();
    run_ok(dfdet_process().args(["train", "-c", c]));
    let err = fails(dfdet_process().args(["train", "-c", c]));
    assert!(err.contains("already holds a run") && err.contains("--resume"), "{err}");
}

/// `dfdet train --print-config | head -1`: the reader leaving early is not a crash.
#[test]
fn a_closed_stdout_is_not_a_crash() {
    for _ in 0..3 {
        let mut child = dfdet_process().args(["train", "--print-config"]).spawn().unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

/// `--print-config` shows every key: the unset options commented at the top, where
/// uncommenting one makes it a top-level key of a config that loads.
#[test]
fn print_config_shows_unset_options_ready_to_uncomment() {
    let out = dfdet_process().args(["train", "--print-config"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for key in ["checkpoint", "data_root", "limit_trn_files", "limit_val_files", "limit_tst_files", "feature_cache_dir"]
    {
        assert!(text.contains(&format!("\n# {key} = ")), "{key} missing: {text}");
    }
    let uncommented = text.replace("# limit_trn_files = 10000", "limit_trn_files = 10000");
    let table: toml::Table = uncommented.parse().unwrap();
    assert_eq!(table["limit_trn_files"].as_integer(), Some(10000));
}

/// A truncated training frame is used as far as it decodes (as the reference's Pillow does),
/// named as such, and not left out of training.
#[test]
fn truncated_training_frames_are_used_and_named() {
    let (tmp, config) = setup("max_epochs = 3");
    let frame = tmp.path().join("D/fake/v00/000.png");
    let bytes = std::fs::read(&frame).unwrap();
    std::fs::write(&frame, &bytes[..bytes.len() / 3]).unwrap();
    let stderr = run_ok(dfdet_process().args(["train", "-c", config.to_str().unwrap()]));
    // Named once for training and validation (not once per epoch), once more by the test pass.
    let named = |what: &str| stderr.lines().filter(|l| l.contains("v00/000.png") && l.contains(what)).count();
    assert_eq!(named("used as far as it decodes"), 1, "{stderr}");
    assert_eq!(named("scored as far as it decodes"), 1, "{stderr}");
    assert!(!stderr.contains("left out of training"), "{stderr}");
}

/// Without a terminal, long work still reports progress: plain `phase: done/total` lines
/// (every 30 s by default; `DFDET_PROGRESS_SECS` sets the interval).
#[test]
fn progress_lines_when_stderr_is_not_a_terminal() {
    let (_tmp, config) = setup("max_epochs = 2");
    let out = dfdet_process()
        .env("DFDET_PROGRESS_SECS", "0")
        .args(["train", "-c", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("epoch 1/2: 1/") && stderr.contains("epoch 2/2: "), "{stderr}");
    assert!(stderr.lines().any(|l| l.starts_with("val: ") && l.ends_with("/32")), "{stderr}");
}
