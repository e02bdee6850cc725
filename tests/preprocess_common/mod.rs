//! Shared by the preprocessing tests: third-party assets fetched by scripts/setup-assets.sh.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures/faces")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// `assets/<name>`, or `None` (with a note on stderr) when it is absent outside CI. Under
/// `CI=true` a missing asset fails the test: CI must run scripts/setup-assets.sh.
pub fn asset(name: &str) -> Option<PathBuf> {
    let path = root().join("assets").join(name);
    if path.exists() {
        return Some(path);
    }
    let msg = format!("asset {} is missing: run scripts/setup-assets.sh", path.display());
    assert!(!in_ci(), "{msg} (CI is set, so this fails instead of skipping)");
    eprintln!("SKIPPED: {msg}");
    None
}

/// A file a system package installs (`package`, e.g. Debian's libdlib-data), with the same
/// rule: `None` (with a note on stderr) when it is absent outside CI, a failure under `CI=true`.
pub fn installed(path: &str, package: &str) -> Option<PathBuf> {
    let path = PathBuf::from(path);
    if path.is_file() {
        return Some(path);
    }
    let msg = format!("{package} is not installed ({}): run scripts/setup-assets.sh", path.display());
    assert!(!in_ci(), "{msg} (CI is set, so this fails instead of skipping)");
    eprintln!("SKIPPED: {msg}");
    None
}

/// A program on PATH (e.g. the ffmpeg CLI that makes test videos), with the same rule.
pub fn program(name: &str) -> Option<PathBuf> {
    let found =
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|c| c.is_file()));
    if found.is_none() {
        let msg = format!("`{name}` is not installed: run scripts/setup-assets.sh");
        assert!(!in_ci(), "{msg} (CI is set, so this fails instead of skipping)");
        eprintln!("SKIPPED: {msg}");
    }
    found
}

pub fn json(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Block means over a cells x cells grid, as `thumb` in make_face_fixtures.py.
pub fn thumb(img: &image::RgbImage, cells: usize) -> Vec<f64> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let edges = |n: usize| (0..=cells).map(|i| (i as f64 * n as f64 / cells as f64) as usize).collect::<Vec<_>>();
    let (xs, ys) = (edges(w), edges(h));
    let mut out = Vec::with_capacity(cells * cells * 3);
    for i in 0..cells {
        for j in 0..cells {
            let mut sum = [0f64; 3];
            let mut n = 0f64;
            for y in ys[i]..ys[i + 1] {
                for x in xs[j]..xs[j + 1] {
                    let p = img.get_pixel(x as u32, y as u32);
                    for c in 0..3 {
                        sum[c] += p[c] as f64;
                    }
                    n += 1.0;
                }
            }
            out.extend(sum.map(|s| s / n));
        }
    }
    out
}

pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

pub fn dfdet_bin() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("dfdet").unwrap()
}

pub fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}
