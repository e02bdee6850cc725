//! A test run's outputs, from scores to files: the predictions CSV in the reference's columns
//! (`files,labels,prob_class_0,prob_class_1,...`), `metrics.json` per named set and level,
//! the plots, and a summary table. Knows nothing of models.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::metrics::Metrics;
use super::plots::{Scores, write_plots};
use super::video::{Evaluation, frame_and_video};
use crate::{Error, Result};

/// Scored frames: the content of a predictions CSV.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Predictions {
    pub files: Vec<String>,
    pub labels: Vec<usize>,
    /// Row-major, `n_classes` per file.
    pub probs: Vec<f64>,
    pub n_classes: usize,
    /// Per row, the named sets the frame belongs to, `;`-separated (empty: none); written as an
    /// extra `set` column after the reference's columns when any row has one.
    pub sets: Vec<String>,
}

impl Predictions {
    /// Writes the reference's `test_predictions.csv` columns. Probabilities are written at
    /// full f32 precision (the reference rounds to 4 decimals), so that metrics recomputed from
    /// the file are exactly those of the run.
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        let mut w = csv::Writer::from_path(path).map_err(|e| csv_error(path, e))?;
        let mut header = vec!["files".to_string(), "labels".to_string()];
        header.extend((0..self.n_classes).map(|c| format!("prob_class_{c}")));
        let with_sets = self.sets.iter().any(|s| !s.is_empty());
        if with_sets {
            header.push("set".into());
        }
        w.write_record(&header).map_err(|e| csv_error(path, e))?;
        for (i, file) in self.files.iter().enumerate() {
            let mut row = vec![file.clone(), self.labels[i].to_string()];
            row.extend(
                self.probs[i * self.n_classes..(i + 1) * self.n_classes].iter().map(|p| format!("{}", *p as f32)),
            );
            if with_sets {
                row.push(self.sets.get(i).cloned().unwrap_or_default());
            }
            w.write_record(&row).map_err(|e| csv_error(path, e))?;
        }
        w.flush().map_err(|e| Error::io(path, e))
    }

    /// Reads a predictions CSV (dfdet's or the reference's). Errors name the line and what is wrong.
    pub fn read_csv(path: &Path) -> Result<Self> {
        let mut r = csv::Reader::from_path(path).map_err(|e| csv_error(path, e))?;
        let header = r.headers().map_err(|e| csv_error(path, e))?.clone();
        let col = |name: &str| header.iter().position(|h| h == name);
        let files_col = col("files").ok_or_else(|| Error::format(path, "missing column `files`"))?;
        let labels_col = col("labels").ok_or_else(|| Error::format(path, "missing column `labels`"))?;
        let mut prob_cols = Vec::new();
        while let Some(c) = col(&format!("prob_class_{}", prob_cols.len())) {
            prob_cols.push(c);
        }
        if prob_cols.len() < 2 {
            return Err(Error::format(path, "expected columns prob_class_0 and prob_class_1 (and more per class)"));
        }
        let n_classes = prob_cols.len();
        let set_col = col("set");
        let mut out = Self { n_classes, ..Self::default() };
        for (i, record) in r.records().enumerate() {
            let line = i + 2;
            let record = record.map_err(|e| csv_error(path, e))?;
            let at = |c: usize| record.get(c).unwrap_or("");
            let bad = |what: String| Error::format(path, format!("line {line}: {what}"));
            let label: usize = at(labels_col)
                .trim()
                .parse()
                .map_err(|_| bad(format!("label `{}` is not a class index", at(labels_col))))?;
            if label >= n_classes {
                return Err(bad(format!("label {label} is outside the {n_classes} probability columns")));
            }
            for &c in &prob_cols {
                let p: f64 = at(c).trim().parse().map_err(|_| bad(format!("`{}` is not a number", at(c))))?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(bad(format!("probability `{}` is outside [0, 1]", at(c))));
                }
                out.probs.push(p);
            }
            out.files.push(at(files_col).to_string());
            out.labels.push(label);
            out.sets.push(set_col.map(|c| at(c).trim().to_string()).unwrap_or_default());
        }
        if out.files.is_empty() {
            return Err(Error::format(path, "no rows"));
        }
        Ok(out)
    }

    /// The rows at `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> Self {
        let c = self.n_classes;
        Self {
            files: idx.iter().map(|&i| self.files[i].clone()).collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            probs: idx.iter().flat_map(|&i| self.probs[i * c..(i + 1) * c].iter().copied()).collect(),
            n_classes: c,
            sets: idx.iter().map(|&i| self.sets.get(i).cloned().unwrap_or_default()).collect(),
        }
    }

    /// The named sets of the `set` column: name -> row indices, in row order.
    pub fn named_sets(&self) -> BTreeMap<String, Vec<usize>> {
        let mut sets: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, names) in self.sets.iter().enumerate() {
            for name in names.split(';').map(str::trim).filter(|n| !n.is_empty()) {
                sets.entry(name.to_string()).or_default().push(i);
            }
        }
        sets
    }
}

fn csv_error(path: &Path, e: csv::Error) -> Error {
    let line = e.position().map(|p| format!("line {}: ", p.line())).unwrap_or_default();
    Error::format(path, format!("{line}{e}"))
}

/// Frame- and video-level metrics of one set.
#[derive(Debug, Clone, Serialize)]
pub struct SetMetrics {
    pub frame: Metrics,
    pub video: Metrics,
}

/// The metrics of a run: all frames under "all", then each named set.
pub type Report = BTreeMap<String, SetMetrics>;

/// The name under which all frames together are reported.
pub const ALL: &str = "all";

/// Evaluates all frames and each named set (indices into `preds`); with `plots_dir`, writes the
/// plots of each into `<plots_dir>/<set>/{frame,video}_metrics/`. Returns the report and its
/// warnings: sets with no frames (skipped) and metrics that are undefined.
pub fn evaluate_sets(
    preds: &Predictions,
    sets: &BTreeMap<String, Vec<usize>>,
    plots_dir: Option<&Path>,
    stage: &str,
) -> Result<(Report, Vec<String>)> {
    let mut report = Report::new();
    let mut warnings = Vec::new();
    let all: Vec<usize> = (0..preds.files.len()).collect();
    let named = sets.iter().filter(|(name, _)| name.as_str() != ALL);
    for (name, idx) in std::iter::once((&ALL.to_string(), &all)).chain(named) {
        if idx.is_empty() {
            warnings.push(format!("set `{name}` has no scored frames; skipped"));
            continue;
        }
        let subset = preds.subset(idx);
        let eval = frame_and_video(&subset.files, &subset.probs, &subset.labels, subset.n_classes, true)?;
        for w in eval.frame.warnings.iter().chain(&eval.video.warnings) {
            warnings.push(format!("set `{name}`: {w}"));
        }
        if let Some(dir) = plots_dir {
            write_set_plots(&dir.join(name), stage, &eval)?;
        }
        report.insert(name.clone(), SetMetrics { frame: eval.frame, video: eval.video });
    }
    Ok((report, warnings))
}

const CLASS_NAMES: [&str; 2] = ["real", "fake"];

fn write_set_plots(dir: &Path, stage: &str, eval: &Evaluation) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (level, probs, labels) in
        [("frame", &eval.frame_probs, &eval.frame_labels), ("video", &eval.videos.probs, &eval.videos.labels)]
    {
        let out = dir.join(format!("{level}_metrics"));
        std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
        let scores = Scores { probs, labels, n_classes: eval.n_classes, class_names: &CLASS_NAMES };
        written.extend(write_plots(&out, stage, level, scores, true)?);
    }
    Ok(written)
}

/// Writes `metrics.json` atomically.
pub fn write_report(path: &Path, report: &Report) -> Result<()> {
    let text = serde_json::to_string_pretty(report).expect("metrics serialise");
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text + "\n").map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// A set × level × metric table for the terminal.
pub fn summary_table(report: &Report) -> String {
    let fmt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
    let width = report.keys().map(|k| k.len()).max().unwrap_or(3).max(3);
    let mut s = format!("{:<width$}  level   frames  auroc   mAP     eer     acc     bal_acc f1      tpr@1%\n", "set");
    for (name, m) in report {
        for (level, x) in [("frame", &m.frame), ("video", &m.video)] {
            s += &format!(
                "{:<width$}  {:<6} {:>7}  {:<7} {:<7} {:<7} {:<7} {:<7} {:<7} {}\n",
                name,
                level,
                x.n_samples,
                fmt(x.auroc),
                fmt(x.map),
                fmt(x.eer),
                fmt(x.acc),
                fmt(x.balanced_acc),
                fmt(x.f1_score),
                fmt(x.tpr_at_fpr.fpr_0_01),
            );
        }
    }
    s
}
