//! Every plot function writes a decodable, non-blank PNG and a well-formed SVG.
//!
//! Set `DFDET_KEEP_PLOTS=/some/folder` to keep the files for a look.

use std::path::{Path, PathBuf};

use dfdet::eval::metrics::{argmax_rows, confusion_matrix};
use dfdet::eval::plots::{self, Scores};
use serde_json::Value;

use crate::common::{read_json, skip_or_fail};

fn case(name: &str) -> (Vec<f64>, Vec<usize>, usize) {
    let fixture: Value = read_json("metrics_cases.json");
    let case = fixture["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap();
    let probs = case["probs"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().clone());
    let probs = probs.map(|x| x.as_f64().unwrap()).collect();
    let labels = serde_json::from_value(case["labels"].clone()).unwrap();
    (probs, labels, case["n_classes"].as_u64().unwrap() as usize)
}

/// The TrueType font plots need, by the assets' rule: `None` (the test is skipped, with a note)
/// outside CI, a failure under `CI=true`.
fn require_font() -> Option<PathBuf> {
    let font = plots::find_font();
    if font.is_none() {
        skip_or_fail(&format!(
            "no TrueType font on this machine and {} unset: install fonts-dejavu-core or set it",
            plots::FONT_ENV
        ));
    }
    font
}

fn out_dir() -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("DFDET_KEEP_PLOTS") {
        Some(dir) => (None, PathBuf::from(dir)),
        None => {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().to_path_buf();
            (Some(tmp), path)
        }
    }
}

fn assert_png(path: &Path) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    assert!(img.width() >= 400 && img.height() >= 400, "{}", path.display());
    let first = img.get_pixel(0, 0);
    let differing = img.pixels().filter(|p| *p != first).count();
    assert!(differing > 1000, "{}: nearly blank", path.display());
}

fn assert_svg(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"), "{}", path.display());
    assert!(text.contains("<text"), "{}: no text", path.display());
}

#[test]
fn every_plot_writes_png_and_svg() {
    let Some(_) = require_font() else { return };
    let (_keep, dir) = out_dir();
    let (probs, labels, n_classes) = case("binary_random_500");
    let names = ["real", "fake"];
    let scores = Scores { probs: &probs, labels: &labels, n_classes, class_names: &names };
    let written = plots::write_plots(&dir.join("binary"), "test", "frame", scores, true).unwrap();
    assert_eq!(written.len(), 12);
    for path in &written {
        assert!(std::fs::metadata(path).unwrap().len() > 0);
        if path.extension().unwrap() == "png" {
            assert_png(path);
        } else {
            assert_svg(path);
        }
    }
    assert!(dir.join("binary/test_roc_frame.png").exists());

    // Five classes, one by one.
    let (probs, labels, n_classes) = case("multiclass_5");
    let names = ["real", "DF", "F2F", "FS", "NT"];
    let scores = Scores { probs: &probs, labels: &labels, n_classes, class_names: &names };
    let d = dir.join("multiclass");
    plots::roc_plot(&d.join("roc.png"), "ROC", scores).unwrap();
    plots::pr_plot(&d.join("pr.png"), "PR", scores).unwrap();
    plots::f1_plot(&d.join("f1.png"), "F1", scores).unwrap();
    plots::distribution_plot(&d.join("dist.png"), "Distributions", scores).unwrap();
    let cm = confusion_matrix(&labels, &argmax_rows(&probs, n_classes), n_classes);
    plots::confusion_plot(&d.join("cm.png"), "Confusion", &cm, &names, false).unwrap();
    plots::confusion_plot(&d.join("cm_norm.svg"), "Confusion", &cm, &names, true).unwrap();
    for name in ["roc.png", "pr.png", "f1.png", "dist.png", "cm.png"] {
        assert_png(&d.join(name));
    }
    assert_svg(&d.join("cm_norm.svg"));
}

#[test]
fn one_class_and_bad_input() {
    let Some(_) = require_font() else { return };
    let (_keep, dir) = out_dir();
    // Only fakes: the ROC has no curve to draw but the file is still written.
    let probs = [0.2, 0.8, 0.6, 0.4, 0.1, 0.9];
    let labels = [1, 1, 1];
    let scores = Scores { probs: &probs, labels: &labels, n_classes: 2, class_names: &[] };
    let written = plots::write_plots(&dir.join("one_class"), "val", "video", scores, false).unwrap();
    assert_eq!(written.len(), 6);
    written.iter().for_each(|p| assert!(image::open(p).is_ok()));
    // Mismatched shapes are an error, not a panic.
    let bad = Scores { probs: &probs[..5], labels: &labels, n_classes: 2, class_names: &[] };
    assert!(plots::roc_plot(&dir.join("bad.png"), "x", bad).is_err());
    assert!(plots::confusion_plot(&dir.join("bad.png"), "x", &[vec![1, 2]], &[], false).is_err());
}

/// What the figures say in words (read from their SVG text): a one-class ROC says why it has no
/// curve; two-class distributions show p(fake) only, on [0, 1], with "1 sample" in the singular;
/// confusion matrices state the decision rule; the PR legend sits under the chart.
#[test]
fn figures_say_what_they_show() {
    let Some(_) = require_font() else { return };
    let (_keep, dir) = out_dir();
    let probs = [0.8, 0.2, 0.3, 0.7, 0.4, 0.6];
    let labels = [0, 1, 1];
    let names = ["real", "fake"];
    let scores = Scores { probs: &probs, labels: &labels, n_classes: 2, class_names: &names };
    plots::write_plots(&dir.join("two"), "test", "frame", scores, true).unwrap();
    let read = |f: &str| std::fs::read_to_string(dir.join("two").join(f)).unwrap();
    let dist = read("test_probs_distribution.svg");
    assert!(dist.contains("p(1: fake)") && !dist.contains("p(0: real)"), "the mirrored p(real) is drawn");
    assert!(dist.contains("(1 sample)") && dist.contains("(2 samples)"));
    // Scores here lie in [0.2, 0.8]: ticks at 0.1 and 0.9 mean the axis spans [0, 1].
    assert!(dist.contains("\n0.1\n") && dist.contains("\n0.9\n"), "the score axis spans [0, 1]");
    let confusion = read("test_confusion.svg");
    assert!(confusion.contains("fake if p(fake) &gt; 0.5") || confusion.contains("fake if p(fake) > 0.5"), "no rule");
    let pr = read("test_pr_curve.svg");
    assert!(pr.contains("1: fake (AP"), "the PR legend names the classes");

    let only_fakes = [1, 1, 1];
    let one = Scores { probs: &probs, labels: &only_fakes, n_classes: 2, class_names: &names };
    plots::write_plots(&dir.join("one"), "test", "video", one, true).unwrap();
    let roc = std::fs::read_to_string(dir.join("one/test_roc_video.svg")).unwrap();
    assert!(roc.contains("No ROC curve: every sample is of class 1: fake"), "a one-class ROC says why it is empty");
}
