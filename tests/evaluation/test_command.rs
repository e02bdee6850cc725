//! `dfdet test` and `dfdet metrics` on the real sample crops, through the real binary.

use std::path::Path;

use crate::common::{dfdet, fixtures, read_json, samples};

const LISTS: &str = "config/datasets";

fn sets() -> [String; 2] {
    let ff = ["real", "DF", "F2F", "FS", "NT"].map(|s| format!("{LISTS}/FF/test/{s}.txt")).join(",");
    let cdf =
        ["Celeb-real", "Celeb-synthesis", "YouTube-real"].map(|s| format!("{LISTS}/CDFv2/test/{s}.txt")).join(",");
    [format!("FF={ff}"), format!("CDF={cdf}")]
}

/// The list files name paths relative to the samples root, as the reference's do: run from
/// there with `--root .`.
fn dfdet_test(out: &Path, extra: &[&str]) -> std::process::Output {
    let [ff, cdf] = sets();
    dfdet()
        .current_dir(samples())
        .args(["test", "--root", ".", "-w", fixtures().join("ckpt-ln-linearnorm.ckpt").to_str().unwrap()])
        .args(["--set", &ff, "--set", &cdf, "-o", out.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn set_names_given_twice_or_escaping_the_run_folder_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let [ff, _] = sets();
    let out = dfdet_test(tmp.path(), &["--set", &ff]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--set FF") && err.contains("given twice"), "{err}");
    let evil = ff.replacen("FF=", "../../evil=", 1);
    let out = dfdet()
        .current_dir(samples())
        .args(["test", "-w", fixtures().join("ckpt-ln-linearnorm.ckpt").to_str().unwrap()])
        .args(["--set", &evil, "-o", tmp.path().to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("../../evil") && err.contains("plain name"), "{err}");
    assert!(!tmp.path().join("../evil").exists() && !tmp.path().join("../../evil").exists());
}

#[test]
fn test_run_writes_predictions_metrics_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let res = dfdet_test(&out, &[]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(stderr.contains("32 frames, 8 videos"), "{stderr}");

    // The reference's CSV columns (and the named set), one row per frame.
    let csv = std::fs::read_to_string(out.join("test_predictions.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("files,labels,prob_class_0,prob_class_1,set"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 32);
    let real = rows.iter().filter(|r| r.split(',').nth(1) == Some("0")).count();
    assert_eq!(real, 12, "FF real (4) + Celeb-real (4) + YouTube-real (4)");

    let metrics = read_json(out.join("metrics.json"));
    for (set, frames, videos) in [("all", 32, 8), ("FF", 20, 5), ("CDF", 12, 3)] {
        assert_eq!(metrics[set]["frame"]["n_samples"], frames, "{set}");
        assert_eq!(metrics[set]["video"]["n_samples"], videos, "{set}");
        for key in ["auroc", "mAP", "eer", "acc", "balanced_acc", "f1_score"] {
            let v = metrics[set]["video"][key].as_f64().unwrap_or_else(|| panic!("{set} {key}"));
            assert!((0.0..=1.0).contains(&v), "{set} {key} = {v}");
        }
    }
    assert!(out.join("config.toml").is_file());
    for set in ["all", "FF", "CDF"] {
        for level in ["frame", "video"] {
            let plots = out.join(format!("plots/{set}/{level}_metrics"));
            let pngs = std::fs::read_dir(&plots)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().path().extension().unwrap() == "png")
                .count();
            assert_eq!(pngs, 6, "{}", plots.display());
        }
    }
    let summary = String::from_utf8(res.stdout).unwrap();
    assert!(summary.lines().filter(|l| l.starts_with("CDF")).count() == 2, "{summary}");

    // `dfdet metrics` on the written CSV reproduces metrics.json, every set included (the CSV's
    // extra `set` column, after the reference's columns).
    let res = dfdet().args(["metrics", out.join("test_predictions.csv").to_str().unwrap()]).output().unwrap();
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let recomputed: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    assert_eq!(recomputed, metrics, "all, FF and CDF");
}

#[test]
fn missing_image_in_a_list_is_reported_and_the_rest_evaluated() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("extra.txt");
    // Written as the other lists write it (relative to the samples root, the working folder),
    // so that it is the same frame as theirs.
    std::fs::write(&list, "datasets/FF/DF/000_003/025.png\nFF/DF/000_003/does-not-exist.png\n").unwrap();
    let out = dir.path().join("run");
    let res = dfdet_test(&out, &["--set", &format!("extra={}", list.display())]);
    assert_eq!(res.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(stderr.contains("extra.txt line 2"), "{stderr}");
    let metrics = read_json(out.join("metrics.json"));
    // The extra set's one good frame is one of the 32, which are all still evaluated.
    assert_eq!(metrics["all"]["frame"]["n_samples"], 32);
    assert_eq!(metrics["extra"]["frame"]["n_samples"], 1);
    // One class only: undefined metrics are null, never NaN.
    assert!(metrics["extra"]["frame"]["auroc"].is_null());
}

#[test]
fn malformed_csv_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("p.csv");
    std::fs::write(&csv, "files,labels,prob_class_0,prob_class_1\na/b/c/0.png,0,0.9,0.1\na/b/c/1.png,1,0.2,oops\n")
        .unwrap();
    let res = dfdet().args(["metrics", csv.to_str().unwrap()]).output().unwrap();
    assert_eq!(res.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(stderr.contains("line 3") && stderr.contains("oops"), "{stderr}");

    std::fs::write(&csv, "files,prob_class_0,prob_class_1\na/b/c/0.png,0.9,0.1\n").unwrap();
    let res = dfdet().args(["metrics", csv.to_str().unwrap()]).output().unwrap();
    assert!(String::from_utf8_lossy(&res.stderr).contains("missing column `labels`"));

    std::fs::write(&csv, "files,labels,prob_class_0,prob_class_1\na/b/c/0.png,2,0.9,0.1\n").unwrap();
    let res = dfdet().args(["metrics", csv.to_str().unwrap()]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&res.stderr).contains("label 2 is outside"),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
}

/// Three probability columns (per-source classes): p(fake) = max of the fake columns.
#[test]
fn metrics_from_a_per_source_csv() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("p.csv");
    std::fs::write(
        &csv,
        "files,labels,prob_class_0,prob_class_1,prob_class_2\n\
         d/real/v1/0.png,0,0.8,0.1,0.1\nd/real/v1/1.png,0,0.6,0.3,0.1\n\
         d/DF/v2/0.png,1,0.2,0.7,0.1\nd/FS/v3/0.png,2,0.3,0.1,0.6\n",
    )
    .unwrap();
    let res = dfdet().args(["metrics", csv.to_str().unwrap()]).output().unwrap();
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let m: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    assert_eq!(m["all"]["frame"]["n_per_class"], serde_json::json!([2, 2]));
    assert_eq!(m["all"]["video"]["n_samples"], 3);
    assert_eq!(m["all"]["frame"]["auroc"], 1.0);
}

/// The same run from a TOML config file, started from another folder: its paths are relative
/// to the file (lists and data_root alike); an unknown key is named.
#[test]
fn test_run_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let [ff, cdf] = sets();
    std::os::unix::fs::symlink(samples(), dir.path().join("data")).unwrap();
    let quote = |s: &str| {
        let lists = s.split_once('=').unwrap().1.split(',');
        lists.map(|l| format!("\"../data/{l}\"")).collect::<Vec<_>>().join(", ")
    };
    std::fs::create_dir(dir.path().join("cfg")).unwrap();
    let config = dir.path().join("cfg/test.toml");
    let weights = fixtures().join("ckpt-ln-linearnorm.ckpt");
    std::fs::write(
        &config,
        format!(
            "weights = \"{}\"\nbatch_size = 16\nlimit_files = 10\ndata_root = \"../data\"\n\n[sets]\nFF = [{}]\nCDF = [{}]\n",
            weights.display(),
            quote(&ff),
            quote(&cdf)
        ),
    )
    .unwrap();
    let out = dir.path().join("run");
    let res = dfdet()
        .current_dir(dir.path())
        .args(["test", "-c", "cfg/test.toml", "-o", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let metrics = read_json(out.join("metrics.json"));
    // limit_files = 10 keeps the first videos of the seeded order, cut at 10 frames.
    assert_eq!(metrics["all"]["frame"]["n_samples"], 10);
    let written = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(written.contains("limit_files = 10"), "{written}");

    std::fs::write(&config, "weights = \"x\"\nbatchsize = 3\n[sets]\nA = [\"a.txt\"]\n").unwrap();
    let res = dfdet().args(["test", "-c", config.to_str().unwrap()]).output().unwrap();
    assert_eq!(res.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(stderr.contains("batchsize") && stderr.contains("batch_size"), "{stderr}");
}

#[test]
fn root_resolves_list_entries_from_any_folder_and_a_bom_is_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    // A copy of a list with a UTF-8 byte-order mark, as some Windows editors save it.
    let real = std::fs::read_to_string(samples().join(LISTS).join("FF/test/real.txt")).unwrap();
    let bom_list = tmp.path().join("real-bom.txt");
    std::fs::write(&bom_list, format!("\u{feff}{real}")).unwrap();
    let df = samples().join(LISTS).join("FF/test/DF.txt");
    let set = format!("FF={},{}", bom_list.display(), df.display());
    let run = |extra: &[&str]| {
        dfdet()
            .current_dir(tmp.path())
            .args(["test", "-w", fixtures().join("ckpt-ln-linearnorm.ckpt").to_str().unwrap()])
            .args(["--set", &set, "-o", tmp.path().join("run").to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap()
    };
    // Relative entries are relative to the list's folder, or to --root: the error says where
    // it looked and what to do.
    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let looked = format!("line 1 but not found: looked for {}", tmp.path().join("datasets/FF/").display());
    assert!(err.contains(&looked) && err.contains("--root DIR"), "{err}");
    let out = run(&["--root", samples().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let metrics = read_json(tmp.path().join("run/metrics.json"));
    assert_eq!(metrics["FF"]["frame"]["n_samples"], 8, "both lists' 4 frames each, the BOM line included");
}
