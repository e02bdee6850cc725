//! Shared by the training tests: a small labelled set derived from the real sample crops, and
//! configs for the tiny CLIP.

use std::path::{Path, PathBuf};

use crate::common::{fixtures, samples};

pub fn tiny_clip() -> PathBuf {
    fixtures().join("tiny-clip-p14")
}

/// The 32 sample crops, sorted.
pub fn crops() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "png") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&samples().join("datasets"), &mut out);
    out.sort();
    out
}

/// The visible manipulation that makes a crop "fake": a magenta block over the lower face.
pub fn manipulate(img: &mut image::RgbImage) {
    let (w, h) = img.dimensions();
    for y in h * 9 / 16..h * 7 / 8 {
        for x in w / 4..w * 3 / 4 {
            img.put_pixel(x, y, image::Rgb([255, 0, 255]));
        }
    }
}

/// `<dir>/D/{real,fake}/<video>/<frame>.png`: each sample crop as is (real) and manipulated
/// (fake); returns the list files (real.txt, fake.txt) with their paths relative to `dir`.
pub fn derived_dataset(dir: &Path, limit: Option<usize>) -> [PathBuf; 2] {
    let mut real = String::new();
    let mut fake = String::new();
    for (k, crop) in crops().into_iter().enumerate().take(limit.unwrap_or(usize::MAX)) {
        let video = format!("v{:02}", k / 4);
        let frame = format!("{:03}.png", k % 4);
        let img = image::open(&crop).unwrap().to_rgb8();
        for (source, list) in [("real", &mut real), ("fake", &mut fake)] {
            let rel = format!("D/{source}/{video}/{frame}");
            let path = dir.join(&rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let mut out = img.clone();
            if source == "fake" {
                manipulate(&mut out);
            }
            out.save(&path).unwrap();
            *list += &format!("{rel}\n");
        }
    }
    let lists = [dir.join("real.txt"), dir.join("fake.txt")];
    std::fs::write(&lists[0], real).unwrap();
    std::fs::write(&lists[1], fake).unwrap();
    lists
}

/// A tiny-CLIP config training on `dir`'s derived set, validating and testing on it too;
/// `extra` (TOML) adds or replaces keys.
pub fn tiny_config(dir: &Path, extra: &str) -> String {
    let base = format!(
        r#"run_name = "run"
run_dir = "{runs}"
backbone = "{tiny}"
trn_files = ["real.txt", "fake.txt"]
val_files = ["real.txt", "fake.txt"]
tst_files = {{ D = ["real.txt", "fake.txt"] }}
max_epochs = 3
batch_size = 8
mini_batch_size = 4
lr = 1e-2
min_lr = 1e-4
"#,
        runs = dir.join("runs").display(),
        tiny = tiny_clip().display(),
    );
    let mut table: toml::Table = base.parse().unwrap();
    table.extend(extra.parse::<toml::Table>().unwrap());
    toml::to_string(&table).unwrap()
}

/// `(epoch, step, name, value)` rows of a metrics.csv.
pub fn metrics(run: &Path) -> Vec<(usize, usize, String, f64)> {
    let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].to_string(), f[3].parse().unwrap())
        })
        .collect()
}

/// The last value logged under `name`.
pub fn last_metric(run: &Path, name: &str) -> Option<f64> {
    metrics(run).into_iter().rev().find(|r| r.2 == name).map(|r| r.3)
}

/// p(fake) of every test frame of a training run (or, given `test/`, of a test run folder).
pub fn test_probs(run: &Path) -> Vec<(String, f64)> {
    let csv = if run.join("test_predictions.csv").is_file() { run.to_path_buf() } else { run.join("test") };
    let text = std::fs::read_to_string(csv.join("test_predictions.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), f[3].parse().unwrap())
        })
        .collect()
}
