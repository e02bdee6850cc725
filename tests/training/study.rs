//! `dfdet study` on the sample crops with a tiny CLIP: the whole 4 x 4 grid uninterrupted,
//! sharded over two processes, and hard-killed mid-cell then resumed (all three equal), its
//! report against the cells' own files, the subsets, a cell against a plain `dfdet train`, the
//! shared feature store against `dfdet test`, and bad input refused up front.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{DTYPE_F32, dfdet_process};
use crate::support::*;

const METHODS: [&str; 4] = ["linear-probe", "ln-tuning", "ln-tuning-norm", "ln-tuning-norm-slerp"];
const PERCENTS: [&str; 4] = ["25", "50", "75", "100"];

/// The derived dataset (8 videos per class) with two named test sets split by video, and a
/// study config writing to `<dir>/runs/<name>`.
fn setup(dir: &Path) -> PathBuf {
    derived_dataset(dir, None);
    let mut cdf = String::new();
    let mut ff = String::new();
    for source in ["real", "fake"] {
        for v in 0..8 {
            for f in 0..4 {
                let line = format!("D/{source}/v{v:02}/{f:03}.png\n");
                // The first 12 sample crops are Celeb-DF's (3 videos), the other 20 FF++'s.
                if v < 3 { cdf += &line } else { ff += &line }
            }
        }
    }
    std::fs::write(dir.join("cdf.txt"), cdf).unwrap();
    std::fs::write(dir.join("ff.txt"), ff).unwrap();
    let config = dir.join("study.toml");
    let extra = "tst_files = { CDF = [\"cdf.txt\"], FF = [\"ff.txt\"] }\nmax_epochs = 2\nsave_every_steps = 1\n";
    std::fs::write(&config, tiny_config(dir, extra)).unwrap();
    config
}

fn study(config: &Path, name: &str, extra: &[&str]) -> Command {
    let mut c = dfdet_process();
    c.args(["study", "-c", config.to_str().unwrap(), "--set", &format!("run_name=\"{name}\"")]);
    c.args(extra);
    c
}

fn run_ok(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "dfdet study failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn list(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

fn video(frame: &str) -> &str {
    &frame[..frame.rfind('/').unwrap()]
}

/// `summary.csv` as (method, percent-string, set, level) -> column -> value text.
fn summary(dir: &Path) -> BTreeMap<(String, String, String, String), BTreeMap<String, String>> {
    let text = std::fs::read_to_string(dir.join("summary.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(&header[..9], ["method", "fraction", "set", "level", "auroc", "balanced_acc", "mAP", "eer", "acc"]);
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let key = (f[0].to_string(), f[1].to_string(), f[2].to_string(), f[3].to_string());
            (key, header.iter().zip(&f).skip(4).map(|(h, v)| (h.to_string(), v.to_string())).collect())
        })
        .collect()
}

/// Files with extension `ext` under `dir`.
fn walk_count(dir: &Path, ext: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() { walk_count(&p, ext) } else { usize::from(p.extension().is_some_and(|x| x == ext)) }
        })
        .sum()
}

#[test]
fn the_study_grid_runs_resumes_shards_and_reports_its_cells_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path());
    let runs = tmp.path().join("runs");

    // Sharded: two processes at once on one study folder, then the report.
    let mut children: Vec<_> =
        ["0/2", "1/2"].iter().map(|s| study(&config, "sharded", &["--shard", s]).spawn().unwrap()).collect();
    for child in children.drain(..) {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "shard failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    run_ok(study(&config, "sharded", &["--report"]));
    // Unsharded and uninterrupted.
    run_ok(study(&config, "clean", &[]));

    // Unsharded, hard-killed in the middle of its sixth cell (ln-tuning-50), then run again.
    let whole = runs.join("whole");
    let mut child = study(&config, "whole", &[]).spawn().unwrap();
    let victim = whole.join("runs/ln-tuning-50/checkpoints/last/train_state.json");
    let t = Instant::now();
    while !victim.exists() {
        assert!(t.elapsed() < Duration::from_secs(300), "the study never reached ln-tuning-50");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!whole.join("runs/ln-tuning-50/cell.json").exists(), "killed too late");
    let stdout = run_ok(study(&config, "whole", &[]));
    assert!(stdout.contains("## AUROC") && stdout.contains("ln-tuning-norm-slerp"), "{stdout}");

    // 16 finished run folders in each.
    for name in ["sharded", "clean", "whole"] {
        for m in METHODS {
            for p in PERCENTS {
                let cell = runs.join(name).join("runs").join(format!("{m}-{p}"));
                assert!(cell.join("cell.json").is_file(), "{} is not finished", cell.display());
                assert!(cell.join("test/metrics.json").is_file());
            }
        }
    }
    // Killed and resumed, and sharded, give the numbers of the uninterrupted study.
    let a = summary(&runs.join("clean"));
    assert_eq!(a.len(), 16 * 3 * 2, "16 cells x (all, CDF, FF) x (frame, video)");
    assert_eq!(a, summary(&whole), "a killed-then-resumed study differs from an uninterrupted one");
    assert_eq!(a, summary(&runs.join("sharded")), "the sharded study differs from the unsharded one");

    // Every summary row equals the cell's metrics.json, number for number.
    for ((method, fraction, set, level), values) in &a {
        let percent = format!("{}", (fraction.parse::<f64>().unwrap() * 100.0).round());
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(whole.join(format!("runs/{method}-{percent}/test/metrics.json"))).unwrap(),
        )
        .unwrap();
        for (column, text) in values {
            let expected = &json[set][level][column];
            match expected.as_f64() {
                Some(x) => assert_eq!(text.parse::<f64>().unwrap(), x, "{method} {fraction} {set} {level} {column}"),
                None => assert!(text.is_empty() && expected.is_null(), "{method} {set} {level} {column}: {text}"),
            }
        }
    }

    // Subsets: whole videos, nested, both classes in each.
    let mut smaller: Vec<String> = Vec::new();
    for p in PERCENTS {
        let frames = list(&whole.join(format!("subsets/trn-{p}.txt")));
        let videos: BTreeSet<&str> = frames.iter().map(|f| video(f)).collect();
        for v in &videos {
            assert_eq!(frames.iter().filter(|f| video(f) == *v).count(), 4, "{v} is not whole in {p} %");
        }
        assert!(smaller.iter().all(|f| frames.contains(f)), "the {p} % subset does not hold the smaller one");
        assert!(videos.iter().any(|v| v.contains("/real/")) && videos.iter().any(|v| v.contains("/fake/")));
        assert_eq!(videos.len(), [4, 8, 12, 16][PERCENTS.iter().position(|x| *x == p).unwrap()], "{p} %");
        smaller = frames;
    }

    // The slerp method's 100 % cell is a plain `dfdet train` with the same keys and seed.
    let plain = Command::new(env!("CARGO_BIN_EXE_dfdet"))
        .env(DTYPE_F32.0, DTYPE_F32.1)
        .args(["train", "-c", config.to_str().unwrap()])
        .args(["--set", "run_name=\"plain\"", "--set", "head=\"LinearNorm\""])
        .args(["--set", "slerp_feature_augmentation=true", "--set", "loss.uniformity=0.5"])
        .args(["--set", "loss.alignment_labels=0.1"])
        .output()
        .unwrap();
    assert!(plain.status.success(), "{}", String::from_utf8_lossy(&plain.stderr));
    let (cell, plain) = (test_probs(&whole.join("runs/ln-tuning-norm-slerp-100")), test_probs(&runs.join("plain")));
    assert_eq!(cell.len(), 64);
    for ((f1, p1), (f2, p2)) in cell.iter().zip(&plain) {
        assert_eq!(f1, f2);
        assert!((p1 - p2).abs() <= 1e-6, "{f1}: study {p1} vs plain train {p2}");
    }

    // Linear probing encoded each distinct frame once into the shared store (training,
    // validation and test frames are the same 64 here), and its store-fed test pass gives what
    // `dfdet test` gives with the cell's best checkpoint.
    let stored = walk_count(&whole.join("feature-cache"), "f32");
    assert_eq!(stored, 64, "one stored feature per distinct frame");
    let lp = whole.join("runs/linear-probe-100");
    let retest = tmp.path().join("lp-test");
    let out = Command::new(env!("CARGO_BIN_EXE_dfdet"))
        .env(DTYPE_F32.0, DTYPE_F32.1)
        .current_dir(tmp.path())
        .args(["test", "-w", lp.join("checkpoints/best").to_str().unwrap(), "-o", retest.to_str().unwrap()])
        .args(["--set", "CDF=cdf.txt", "--set", "FF=ff.txt"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (cell, again) = (test_probs(&lp), test_probs(&retest));
    assert_eq!(cell.len(), again.len());
    for ((f1, p1), (f2, p2)) in cell.iter().zip(&again) {
        assert!(f1.ends_with(f2.as_str()), "{f1} vs {f2}");
        assert!((p1 - p2).abs() <= 1e-6, "{f1}: store-fed test {p1} vs dfdet test {p2}");
    }

    // The report's plots.
    for f in ["curves-ln-tuning.png", "auroc-video-vs-fraction.svg", "balanced_acc-frame-bars.png"] {
        assert!(whole.join("plots").join(f).is_file(), "no {f}");
    }
}

#[test]
fn bad_studies_are_refused_before_any_compute() {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path());
    let cases: [(&[&str], &[&str]); 4] = [
        (&["--set", "study.methods.ln-tuning.nope=1"], &["study.methods.ln-tuning", "nope"]),
        (&["--set", "study.fractions=[0.5, 1.5]"], &["study.fractions", "1.5", "(0, 1]"]),
        (&["--set", "study.fractions=[0.05, 1.0]"], &["study.fractions", "0.05", "keeps none", "real"]),
        (&["--only", "no-such-method"], &["--only no-such-method", "linear-probe-25"]),
    ];
    for (args, words) in cases {
        let t = Instant::now();
        let out = study(&config, "bad", args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        for w in words {
            assert!(stderr.contains(w), "{args:?}: `{w}` not in: {stderr}");
        }
        assert!(t.elapsed() < Duration::from_secs(20));
        assert!(!tmp.path().join("runs/bad/runs").exists(), "{args:?} started training");
    }
}
