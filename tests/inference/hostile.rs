//! Inputs that once crashed or hung dfdet: each now ends with a clear error naming the option,
//! file or key (exit 2), or with the good inputs scored (exit 0).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{dfdet, fixtures, samples};

const CKPT: &str = "ckpt-ln-linearnorm.ckpt";

fn a_crop() -> PathBuf {
    let mut dir = samples().join("datasets");
    loop {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
        entries.sort();
        let first = entries.into_iter().next().expect("sample crops");
        if first.is_file() {
            return first;
        }
        dir = first;
    }
}

/// Runs dfdet (at most 120 s: a hang fails the test) and returns its exit code and stderr.
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = dfdet().args(args).timeout(Duration::from_secs(120)).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

#[test]
fn out_of_range_counts_are_refused() {
    let tiny = fixtures().join("tiny-clip-p14");
    for batch in ["0", "100000"] {
        let (code, _, err) = run(&["bench", "--backbone", tiny.to_str().unwrap(), "--batch", batch, "--iters", "1"]);
        assert_eq!(code, Some(2), "bench --batch {batch}: {err}");
        assert!(err.contains("--batch") && err.contains(batch), "{err}");
    }
    let ckpt = fixtures().join(CKPT);
    let crop = a_crop();
    for threads in ["0", "100000"] {
        let (code, _, err) =
            run(&["predict", "--threads", threads, "-w", ckpt.to_str().unwrap(), crop.to_str().unwrap()]);
        assert_eq!(code, Some(2), "--threads {threads}: {err}");
        assert!(err.contains("--threads"), "{err}");
    }
}

#[cfg(unix)]
#[test]
fn folder_walks_pass_over_symlink_loops_and_fifos() {
    let tmp = tempfile::tempdir().unwrap();
    let video = tmp.path().join("clips/v1");
    std::fs::create_dir_all(&video).unwrap();
    std::fs::copy(a_crop(), video.join("000.png")).unwrap();
    std::os::unix::fs::symlink("..", video.join("loop")).unwrap();
    std::os::unix::fs::symlink("../..", video.join("loop2")).unwrap();
    let fifo = video.join("001.png");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo");
    let ckpt = fixtures().join(CKPT);
    let dir = tmp.path().join("clips");
    let (code, out, err) = run(&["predict", "-f", "json", "-w", ckpt.to_str().unwrap(), dir.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let frames = json["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 1, "the image once, not the FIFO nor copies through the links: {out}");
    assert!(frames[0]["path"].as_str().unwrap().ends_with("v1/000.png"), "{out}");
}

/// A copy of the tiny CLIP folder whose `preprocessor_config.json` has `key` set to `value`.
fn backbone_with(dir: &Path, key: &str, value: serde_json::Value) -> PathBuf {
    let src = fixtures().join("tiny-clip-p14");
    let out = dir.join(key);
    std::fs::create_dir_all(&out).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), out.join(f)).unwrap();
    }
    let text = std::fs::read_to_string(src.join("preprocessor_config.json")).unwrap();
    let mut pre: serde_json::Value = serde_json::from_str(&text).unwrap();
    pre[key] = value;
    std::fs::write(out.join("preprocessor_config.json"), pre.to_string()).unwrap();
    out
}

#[test]
fn pixel_settings_that_cannot_work_name_the_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = fixtures().join(CKPT);
    let crop = a_crop();
    for (key, value) in [
        ("crop_size", serde_json::json!({"height": 0, "width": 0})),
        ("size", serde_json::json!({"shortest_edge": 100000})),
        ("image_std", serde_json::json!([0.0, 0.0, 0.0])),
    ] {
        let backbone = backbone_with(tmp.path(), key, value);
        let (code, _, err) = run(&[
            "predict",
            "-w",
            ckpt.to_str().unwrap(),
            "--backbone",
            backbone.to_str().unwrap(),
            crop.to_str().unwrap(),
        ]);
        assert_eq!(code, Some(2), "{key}: {err}");
        assert!(err.contains("preprocessor_config.json") && err.contains(key), "{key}: {err}");
    }
}
