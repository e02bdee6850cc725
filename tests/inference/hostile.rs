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

/// A checkpoint with a NaN weight is refused, naming the tensor (it would score NaN or 0/1).
#[test]
fn non_finite_weights_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = crate::common::gend_copy(tmp.path());
    let file = folder.join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let (name, info) = header
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, v)| *k != "__metadata__" && v["dtype"] == "F32")
        .expect("an f32 tensor");
    let start = 8 + n + info["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&file, bytes).unwrap();
    let (code, _, err) = run(&["predict", "-w", folder.to_str().unwrap(), a_crop().to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    // GenD's names are mapped to the reference's on load: the message names the tensor's last part.
    let last = name.rsplit('.').nth(1).unwrap();
    assert!(err.contains("holds 1 NaN or infinite values") && err.contains(last), "{name}: {err}");
}

/// Inputs that used to get a misleading answer now get the true reason.
#[test]
fn wrong_reasons_are_the_true_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = fixtures().join(CKPT);
    let ckpt = ckpt.to_str().unwrap();
    let crop = a_crop();

    let (code, _, err) = run(&["predict", "-w", ckpt, "--frames", "0", crop.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--frames must be at least 1"), "{err}");
    let (code, _, err) = run(&["test", "-w", ckpt, "--limit-files", "0", "--set", &format!("A={}", crop.display())]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("limit_files: 0 would keep no frame"), "{err}");
    let (code, _, err) = run(&["predict", "-w", ckpt, "--frames", "4", "--stride", "10", crop.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--stride") && err.contains("--frames") && err.contains("cannot be used with"), "{err}");

    // `x.png` and `./x.png` are one frame of one video.
    std::fs::copy(&crop, tmp.path().join("x.png")).unwrap();
    let out = dfdet()
        .current_dir(tmp.path())
        .args(["predict", "-w", ckpt, "-f", "json", "x.png", "./x.png"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["frames"].as_array().unwrap().len(), 1, "{json}");

    // A FIFO given by name is named as what it is, and the good input is still scored.
    let fifo = tmp.path().join("pipe.png");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let (code, _, err) = run(&["predict", "-w", ckpt, fifo.to_str().unwrap(), crop.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("pipe.png") && err.contains("not a regular file"), "{err}");

    // Probabilities outside [0, 1] are not probabilities.
    let csv = tmp.path().join("preds.csv");
    std::fs::write(&csv, "files,labels,prob_class_0,prob_class_1\nD/real/v/0.png,0,-0.5,1.5\n").unwrap();
    let (code, _, err) = run(&["metrics", csv.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("line 2") && err.contains("outside [0, 1]"), "{err}");
}

/// A PNG cut short is scored as far as it decodes (the reference's Pillow does the same), and
/// said so per file, on stderr and in the JSON's `warnings`.
#[test]
fn truncated_images_are_scored_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let crop = a_crop();
    let bytes = std::fs::read(&crop).unwrap();
    let cut = tmp.path().join("cut.png");
    std::fs::write(&cut, &bytes[..bytes.len().min(5000)]).unwrap();
    let ckpt = fixtures().join(CKPT);
    let (code, out, err) =
        run(&["predict", "-w", ckpt.to_str().unwrap(), "-f", "json", cut.to_str().unwrap(), crop.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["frames"].as_array().unwrap().len(), 2, "{json}");
    let warnings = json["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{json}");
    assert!(warnings[0]["path"].as_str().unwrap().ends_with("cut.png"));
    assert!(warnings[0]["reason"].as_str().unwrap().contains("truncated or corrupt"), "{json}");
    assert!(err.contains("warning:") && err.contains("cut.png"), "{err}");
    // The JSON says what produced it.
    let about = &json["about"];
    assert_eq!(about["dfdet"], env!("CARGO_PKG_VERSION"));
    assert!(about["weights"].as_str().unwrap().ends_with(CKPT), "{about}");
    assert_eq!(about["dtype"], "f32", "{about}");
    assert_eq!(about["video_frames"], "linspace:32", "{about}");
}

/// A list entry that exists but cannot be read as a file says what it is instead of "not found".
#[test]
fn list_entries_name_the_true_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let long = "x".repeat(300) + ".png";
    std::fs::create_dir(tmp.path().join("folder.png")).unwrap();
    let list = tmp.path().join("list.txt");
    std::fs::write(&list, format!("{long}\nfolder.png\n{}\n", a_crop().display())).unwrap();
    let ckpt = fixtures().join(CKPT);
    let (code, _, err) = run(&["predict", "-w", ckpt.to_str().unwrap(), list.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("list.txt line 1: cannot be read:") && err.contains("too long"), "{err}");
    assert!(err.contains("list.txt line 2: is a folder"), "{err}");
}
