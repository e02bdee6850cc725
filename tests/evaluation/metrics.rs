//! Parity of `dfdet::eval` with scikit-learn and the original's formulas.
//!
//! The fixture is written by scripts/fixtures/make_metric_fixtures.py (numpy 2.4.6,
//! scikit-learn 1.9.1, scipy 1.17.1); see that script for what each expected value is.

use dfdet::eval::metrics::{Metrics, precision_recall_curve, roc_curve};
use dfdet::eval::video::frame_and_video;
use serde_json::Value;

use crate::common::read_json;

const TOL: f64 = 1e-9;

fn fixture() -> Value {
    read_json("metrics_cases.json")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// Compares an optional value with the fixture's number or null; returns |Δ|.
fn check_opt(what: &str, got: Option<f64>, want: &Value) -> f64 {
    match (got, want.as_f64()) {
        (None, None) => 0.0,
        (Some(g), Some(w)) => {
            let d = (g - w).abs();
            assert!(d <= TOL, "{what}: got {g}, expected {w} (|Δ| = {d:e})");
            d
        }
        (g, _) => panic!("{what}: got {g:?}, expected {want}"),
    }
}

fn check_metrics(what: &str, got: &Metrics, want: &Value) -> f64 {
    let mut worst: f64 = 0.0;
    for (key, value) in [
        ("auroc", got.auroc),
        ("mAP", got.map),
        ("eer", got.eer),
        ("acc", got.acc),
        ("balanced_acc", got.balanced_acc),
        ("f1_score", got.f1_score),
    ] {
        worst = worst.max(check_opt(&format!("{what} {key}"), value, &want[key]));
    }
    let tpr = &got.tpr_at_fpr;
    for (key, value) in [("0.001", tpr.fpr_0_001), ("0.01", tpr.fpr_0_01), ("0.05", tpr.fpr_0_05)] {
        worst = worst.max(check_opt(&format!("{what} tpr@{key}"), value, &want["tpr_at_fpr"][key]));
    }
    assert_eq!(got.n_samples as u64, want["n_samples"].as_u64().unwrap(), "{what} n_samples");
    let per_class: Vec<usize> = serde_json::from_value(want["n_per_class"].clone()).unwrap();
    assert_eq!(got.n_per_class, per_class, "{what} n_per_class");
    let confusion: Vec<Vec<usize>> = serde_json::from_value(want["confusion_matrix"].clone()).unwrap();
    assert_eq!(got.confusion_matrix, confusion, "{what} confusion_matrix");
    // Every null comes with a reason.
    let has_null = [got.auroc, got.map, got.eer].iter().any(Option::is_none);
    assert!(!has_null || !got.warnings.is_empty(), "{what}: None without a warning");
    worst
}

#[test]
fn frame_and_video_metrics_match_sklearn() {
    let fixture = fixture();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    let mut worst: f64 = 0.0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let n_classes = case["n_classes"].as_u64().unwrap() as usize;
        let files: Vec<String> = serde_json::from_value(case["files"].clone()).unwrap();
        let labels: Vec<usize> = serde_json::from_value(case["labels"].clone()).unwrap();
        let probs: Vec<f64> = case["probs"].as_array().unwrap().iter().flat_map(floats).collect();
        let binary = case["binary"].as_bool().unwrap();

        let e = frame_and_video(&files, &probs, &labels, n_classes, binary).unwrap();
        let want = &case["expected"];
        worst = worst.max(check_metrics(&format!("{name} frame"), &e.frame, &want["frame"]));
        worst = worst.max(check_metrics(&format!("{name} video"), &e.video, &want["video"]));

        let videos: Vec<String> = serde_json::from_value(want["videos"].clone()).unwrap();
        assert_eq!(e.videos.videos, videos, "{name} video order");
        let video_labels: Vec<usize> = serde_json::from_value(want["video_labels"].clone()).unwrap();
        assert_eq!(e.videos.labels, video_labels, "{name} video labels");
        let video_probs: Vec<f64> = want["video_probs"].as_array().unwrap().iter().flat_map(floats).collect();
        assert_eq!(e.videos.probs.len(), video_probs.len(), "{name} video probs");
        for (g, w) in e.videos.probs.iter().zip(&video_probs) {
            assert!((g - w).abs() <= TOL, "{name} video probs: {g} vs {w}");
            worst = worst.max((g - w).abs());
        }

        // The JSON a run folder gets: nulls, never NaN.
        let json = serde_json::to_string(&e.frame).unwrap();
        assert!(!json.contains("NaN") && json.contains("\"mAP\""), "{name}: {json}");
    }
    eprintln!("metrics parity: max |Δ| = {worst:e} over {} cases", cases.len());
}

#[test]
fn curves_match_sklearn() {
    let fixture = fixture();
    let mut worst: f64 = 0.0;
    let mut close = |what: &str, got: &[f64], want: &[f64]| {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (g, w) in got.iter().zip(want) {
            let d = (g - w).abs();
            assert!(d <= TOL, "{what}: {g} vs {w}");
            worst = worst.max(d);
        }
    };
    for case in fixture["curves"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let labels: Vec<bool> = serde_json::from_value(case["labels"].clone()).unwrap();
        let scores = floats(&case["scores"]);

        let roc = roc_curve(&labels, &scores).unwrap();
        close(&format!("{name} fpr"), &roc.fpr, &floats(&case["roc"]["fpr"]));
        close(&format!("{name} tpr"), &roc.tpr, &floats(&case["roc"]["tpr"]));
        let th = case["roc"]["thresholds"].as_array().unwrap();
        assert!(th[0].is_null() && roc.thresholds[0] == f64::INFINITY, "{name}: first threshold +inf");
        let th: Vec<f64> = th[1..].iter().map(|x| x.as_f64().unwrap()).collect();
        close(&format!("{name} roc thresholds"), &roc.thresholds[1..], &th);

        let pr = precision_recall_curve(&labels, &scores);
        close(&format!("{name} precision"), &pr.precision, &floats(&case["pr"]["precision"]));
        close(&format!("{name} recall"), &pr.recall, &floats(&case["pr"]["recall"]));
        close(&format!("{name} pr thresholds"), &pr.thresholds, &floats(&case["pr"]["thresholds"]));
    }
    eprintln!("curve parity: max |Δ| = {worst:e}");
}

#[test]
fn unsorted_input_gives_the_same_frame_metrics() {
    // Reversing the samples changes nothing at frame level (ties included).
    let fixture = fixture();
    let case = fixture["cases"].as_array().unwrap().iter().find(|c| c["name"] == "heavy_ties").unwrap();
    let labels: Vec<usize> = serde_json::from_value(case["labels"].clone()).unwrap();
    let rows: Vec<Vec<f64>> = case["probs"].as_array().unwrap().iter().map(floats).collect();
    let probs: Vec<f64> = rows.iter().flatten().copied().collect();
    let rev_labels: Vec<usize> = labels.iter().rev().copied().collect();
    let rev_probs: Vec<f64> = rows.iter().rev().flatten().copied().collect();
    let a = dfdet::eval::metrics::compute_metrics(&probs, &labels, 2).unwrap();
    let b = dfdet::eval::metrics::compute_metrics(&rev_probs, &rev_labels, 2).unwrap();
    for (x, y) in [(a.auroc, b.auroc), (a.map, b.map), (a.eer, b.eer), (a.f1_score, b.f1_score)] {
        assert!((x.unwrap() - y.unwrap()).abs() < 1e-12);
    }
}
