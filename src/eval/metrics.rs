//! Frame- or video-level metrics on plain slices, checked against scikit-learn.
//!
//! Ports the metric calls of yermandy/deepfake-detection (`src/metrics.py`, `log_metrics` in
//! `src/model/dfdet.py`, scikit-learn 1.6.1) and GenD's `calculate_tpr_at_fpr`:
//!
//! - AUROC and mAP: the original one-hot encodes the labels (`np.eye(C)[labels]`) before
//!   calling `roc_auc_score(..., multi_class="ovr", average="macro")` and
//!   `average_precision_score(..., average="macro")`, so scikit-learn sees a
//!   multilabel-indicator target and averages the binary score of every probability column,
//!   two columns included: for C = 2 the AUROC is the mean of AUROC(label == 0, p0) and
//!   AUROC(label == 1, p1), which differ when the columns do not sum to one.
//! - EER: `brentq(1 - x - interp1d(fpr, tpr)(x), 0, 1)` on `roc_curve(labels, probs[:, 1])`,
//!   i.e. where the ROC, linearly interpolated (`np.interp`, upper point on vertical steps),
//!   crosses FPR = 1 - TPR; computed here in closed form (brentq's answer is within 2e-12).
//! - TPR at FPR: `np.interp(target, fpr, tpr)` on the same ROC (GenD).
//! - Accuracy, balanced accuracy, macro F1 and the confusion matrix of the argmax prediction.
//!
//! Probabilities are a flat row-major slice with `n_classes` columns: row `i` is
//! `probs[i * n_classes..(i + 1) * n_classes]`. Labels are class indices. Scores must be
//! finite ([`compute_metrics`] checks).

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The false positive rates at which [`Metrics::tpr_at_fpr`] reports the TPR (GenD).
pub const TPR_FPR_TARGETS: [f64; 3] = [0.001, 0.01, 0.05];

/// A ROC curve as scikit-learn's `roc_curve(drop_intermediate=True)` returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct RocCurve {
    /// False positive rates, non-decreasing, from 0 to 1.
    pub fpr: Vec<f64>,
    /// True positive rates, non-decreasing, from 0 to 1.
    pub tpr: Vec<f64>,
    /// Decreasing score thresholds; the first is `+inf` (the point (0, 0)).
    pub thresholds: Vec<f64>,
}

/// A precision-recall curve as scikit-learn's `precision_recall_curve` returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct PrCurve {
    /// Precision at each threshold (increasing thresholds), then a final 1.
    pub precision: Vec<f64>,
    /// Recall at each threshold (non-increasing), then a final 0.
    pub recall: Vec<f64>,
    /// The distinct scores, increasing; one fewer than `precision`.
    pub thresholds: Vec<f64>,
}

/// TPR at the FPRs of [`TPR_FPR_TARGETS`]; `None` where undefined.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct TprAtFpr {
    /// TPR at FPR = 0.1 %.
    #[serde(rename = "0.001")]
    pub fpr_0_001: Option<f64>,
    /// TPR at FPR = 1 %.
    #[serde(rename = "0.01")]
    pub fpr_0_01: Option<f64>,
    /// TPR at FPR = 5 %.
    #[serde(rename = "0.05")]
    pub fpr_0_05: Option<f64>,
}

/// The metrics the original logs per split and level, plus GenD's TPR at FPR.
///
/// A value that is undefined for the data (a class missing, no samples) is `None` (JSON
/// `null`) and the reason is in `warnings`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Metrics {
    /// One-vs-rest macro AUROC over the probability columns.
    pub auroc: Option<f64>,
    /// One-vs-rest macro average precision (step-wise, not interpolated).
    #[serde(rename = "mAP")]
    pub map: Option<f64>,
    /// Equal error rate of column 1 (2 columns only).
    pub eer: Option<f64>,
    /// Accuracy of the argmax prediction.
    pub acc: Option<f64>,
    /// Mean recall over the classes present in the labels.
    pub balanced_acc: Option<f64>,
    /// Macro F1 of the argmax prediction over the classes in labels or predictions.
    pub f1_score: Option<f64>,
    /// TPR of column 1 at FPR 0.1 %, 1 %, 5 % (2 columns only).
    pub tpr_at_fpr: TprAtFpr,
    /// Number of samples.
    pub n_samples: usize,
    /// Number of samples of each class, `n_classes` entries.
    pub n_per_class: Vec<usize>,
    /// `n_classes` x `n_classes` counts, rows the true class, columns the predicted one.
    pub confusion_matrix: Vec<Vec<usize>>,
    /// Why values are `None`, and other things scikit-learn would warn about.
    pub warnings: Vec<String>,
}

/// Sample counts at every distinct score, scores descending (sklearn's `_binary_clf_curve`).
struct ClfCounts {
    fps: Vec<usize>,
    tps: Vec<usize>,
    thresholds: Vec<f64>,
}

fn binary_clf_counts(y_true: &[bool], scores: &[f64]) -> ClfCounts {
    assert_eq!(y_true.len(), scores.len(), "labels and scores differ in length");
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // Descending; the order inside a tie does not matter, counts are read at its end.
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut fps, mut tps, mut thresholds) = (Vec::new(), Vec::new(), Vec::new());
    let mut tp = 0;
    for (k, &i) in order.iter().enumerate() {
        tp += usize::from(y_true[i]);
        let tie_ends = order.get(k + 1).is_none_or(|&next| scores[next] != scores[i]);
        if tie_ends {
            tps.push(tp);
            fps.push(k + 1 - tp);
            thresholds.push(scores[i]);
        }
    }
    ClfCounts { fps, tps, thresholds }
}

/// The ROC curve of `scores` for the positives `y_true`, with scikit-learn's
/// `drop_intermediate=True`: points whose fps and tps both have a zero second difference are
/// dropped, and `(0, 0)` is prepended with threshold `+inf`.
///
/// `None` when `y_true` lacks positives or negatives (scikit-learn returns NaN rates).
///
/// # Panics
/// If the slices differ in length.
pub fn roc_curve(y_true: &[bool], scores: &[f64]) -> Option<RocCurve> {
    let ClfCounts { fps, tps, thresholds } = binary_clf_counts(y_true, scores);
    let (&n_neg, &n_pos) = (fps.last()?, tps.last()?);
    if n_neg == 0 || n_pos == 0 {
        return None;
    }
    let m = fps.len();
    let second_diff = |v: &[usize], i: usize| v[i + 1] + v[i - 1] != 2 * v[i];
    let keep: Vec<usize> =
        (0..m).filter(|&i| m <= 2 || i == 0 || i == m - 1 || second_diff(&fps, i) || second_diff(&tps, i)).collect();
    let mut curve = RocCurve { fpr: vec![0.0], tpr: vec![0.0], thresholds: vec![f64::INFINITY] };
    for i in keep {
        curve.fpr.push(fps[i] as f64 / n_neg as f64);
        curve.tpr.push(tps[i] as f64 / n_pos as f64);
        curve.thresholds.push(thresholds[i]);
    }
    Some(curve)
}

/// The precision-recall curve of `scores` for the positives `y_true`, as scikit-learn's
/// `precision_recall_curve` (no point dropped). Without positives, recall is 1 at every
/// threshold (scikit-learn's convention, with a warning there).
///
/// # Panics
/// If the slices differ in length.
pub fn precision_recall_curve(y_true: &[bool], scores: &[f64]) -> PrCurve {
    let ClfCounts { fps, tps, thresholds } = binary_clf_counts(y_true, scores);
    let n_pos = tps.last().copied().unwrap_or(0);
    let mut precision: Vec<f64> = fps.iter().zip(&tps).rev().map(|(&fp, &tp)| tp as f64 / (tp + fp) as f64).collect();
    let mut recall: Vec<f64> =
        tps.iter().rev().map(|&tp| if n_pos == 0 { 1.0 } else { tp as f64 / n_pos as f64 }).collect();
    precision.push(1.0);
    recall.push(0.0);
    PrCurve { precision, recall, thresholds: thresholds.into_iter().rev().collect() }
}

/// Area under a curve by the trapezoidal rule (sklearn's `auc` for increasing `x`).
pub fn auc(x: &[f64], y: &[f64]) -> f64 {
    x.windows(2).zip(y.windows(2)).map(|(x, y)| (x[1] - x[0]) * (y[1] + y[0]) / 2.0).sum()
}

/// `np.interp(x, xp, fp)` for non-decreasing `xp`: constant outside, and on a run of equal
/// `xp` the last of their `fp` (NumPy finds the last `j` with `xp[j] <= x`).
pub fn interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    let n = xp.len();
    if x > xp[n - 1] {
        return fp[n - 1];
    }
    if x < xp[0] {
        return fp[0];
    }
    let j = xp.partition_point(|&v| v <= x) - 1;
    if j == n - 1 || xp[j] == x {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    slope * (x - xp[j]) + fp[j]
}

impl RocCurve {
    /// Area under the curve.
    pub fn auc(&self) -> f64 {
        auc(&self.fpr, &self.tpr)
    }

    /// The equal error rate as the original computes it: the root of
    /// `1 - x - interp(x, fpr, tpr)` on [0, 1], found exactly. `tpr(x)` is piecewise linear
    /// with upward jumps on vertical steps, so the root is on a segment or at a jump.
    pub fn eer(&self) -> f64 {
        let (x, y) = (&self.fpr, &self.tpr);
        let g = |x: f64, tpr: f64| 1.0 - x - tpr;
        let mut prev: Option<(f64, f64)> = None;
        let mut i = 0;
        while i < x.len() {
            // A run of equal fpr: tpr jumps from its first to its last value there.
            let mut j = i;
            while j + 1 < x.len() && x[j + 1] == x[i] {
                j += 1;
            }
            let (xi, first, last) = (x[i], y[i], y[j]);
            if let Some((xp, yp)) = prev
                && g(xi, first) <= 0.0
            {
                // The root is on the segment (xp, yp) -> (xi, first).
                let slope = (first - yp) / (xi - xp);
                return (1.0 - yp + slope * xp) / (1.0 + slope);
            }
            if g(xi, last) <= 0.0 {
                return xi;
            }
            prev = Some((xi, last));
            i = j + 1;
        }
        // Unreachable for a curve ending at (1, 1), where 1 - x - tpr = -1.
        1.0
    }

    /// `np.interp(target, fpr, tpr)` (GenD's TPR at FPR); `None` outside the curve's FPRs.
    pub fn tpr_at(&self, target: f64) -> Option<f64> {
        let (lo, hi) = (self.fpr[0], self.fpr[self.fpr.len() - 1]);
        (lo..=hi).contains(&target).then(|| interp(target, &self.fpr, &self.tpr))
    }
}

impl PrCurve {
    /// Average precision, `sum_n (R_n - R_{n-1}) P_n` (sklearn's step-wise integral).
    pub fn average_precision(&self) -> f64 {
        let s: f64 = self.recall.windows(2).zip(&self.precision).map(|(r, p)| (r[1] - r[0]) * p).sum();
        (-s).max(0.0)
    }

    /// F1 at each threshold, `2PR / (P + R)` or 0 where `P + R = 0` (the original's
    /// `plot_f1_curve`): one value per entry of `thresholds`.
    pub fn f1(&self) -> Vec<f64> {
        self.precision
            .iter()
            .zip(&self.recall)
            .take(self.thresholds.len())
            .map(|(&p, &r)| if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) })
            .collect()
    }
}

/// Binary AUROC; `None` when `y_true` holds one class only.
pub fn auroc(y_true: &[bool], scores: &[f64]) -> Option<f64> {
    roc_curve(y_true, scores).map(|c| c.auc())
}

/// Binary average precision; `None` without positives (scikit-learn would say 0).
pub fn average_precision(y_true: &[bool], scores: &[f64]) -> Option<f64> {
    y_true.contains(&true).then(|| precision_recall_curve(y_true, scores).average_precision())
}

/// The original's EER of `scores` for the positives `y_true`; `None` when one class only
/// (the original then returns 1.0, after brentq fails on NaN rates).
pub fn eer(y_true: &[bool], scores: &[f64]) -> Option<f64> {
    roc_curve(y_true, scores).map(|c| c.eer())
}

/// Column `c` of row-major `probs`.
pub fn column(probs: &[f64], n_classes: usize, c: usize) -> Vec<f64> {
    probs.chunks_exact(n_classes).map(|row| row[c]).collect()
}

/// `labels == c`.
pub fn one_vs_rest(labels: &[usize], c: usize) -> Vec<bool> {
    labels.iter().map(|&l| l == c).collect()
}

/// Mean of a binary metric over the probability columns, each column against `labels == c`
/// (scikit-learn's macro average on one-hot labels); `None` if any column's is.
fn macro_over_columns(
    probs: &[f64],
    labels: &[usize],
    n_classes: usize,
    metric: impl Fn(&[bool], &[f64]) -> Option<f64>,
) -> Option<f64> {
    let per_class = (0..n_classes)
        .map(|c| metric(&one_vs_rest(labels, c), &column(probs, n_classes, c)))
        .collect::<Option<Vec<f64>>>()?;
    Some(per_class.iter().sum::<f64>() / n_classes as f64)
}

/// One-vs-rest macro AUROC, as the original calls `roc_auc_score` (see the module docs).
pub fn ovr_macro_auroc(probs: &[f64], labels: &[usize], n_classes: usize) -> Option<f64> {
    macro_over_columns(probs, labels, n_classes, auroc)
}

/// One-vs-rest macro average precision (mAP), as the original calls
/// `average_precision_score`; `None` if a class has no sample.
pub fn ovr_macro_ap(probs: &[f64], labels: &[usize], n_classes: usize) -> Option<f64> {
    macro_over_columns(probs, labels, n_classes, average_precision)
}

/// The argmax of each row, the first on ties (`np.argmax`).
pub fn argmax_rows(probs: &[f64], n_classes: usize) -> Vec<usize> {
    probs
        .chunks_exact(n_classes)
        .map(|row| {
            let mut best = 0;
            for (c, &p) in row.iter().enumerate() {
                if p > row[best] {
                    best = c;
                }
            }
            best
        })
        .collect()
}

/// `confusion[true][predicted]` over all `n_classes` (scikit-learn drops classes absent
/// from both labels and predictions; this keeps them as zero rows and columns).
///
/// # Panics
/// If a label or prediction is not below `n_classes`.
pub fn confusion_matrix(labels: &[usize], preds: &[usize], n_classes: usize) -> Vec<Vec<usize>> {
    let mut m = vec![vec![0; n_classes]; n_classes];
    for (&l, &p) in labels.iter().zip(preds) {
        m[l][p] += 1;
    }
    m
}

/// Fraction of correct predictions; `None` without samples.
pub fn accuracy(labels: &[usize], preds: &[usize]) -> Option<f64> {
    let correct = labels.iter().zip(preds).filter(|(l, p)| l == p).count();
    (!labels.is_empty()).then(|| correct as f64 / labels.len() as f64)
}

/// scikit-learn's `balanced_accuracy_score`: the mean recall over the classes present in
/// the labels (classes only predicted are left out). `None` without samples.
pub fn balanced_accuracy(confusion: &[Vec<usize>]) -> Option<f64> {
    let recalls: Vec<f64> = confusion
        .iter()
        .enumerate()
        .filter_map(|(c, row)| {
            let support: usize = row.iter().sum();
            (support > 0).then(|| row[c] as f64 / support as f64)
        })
        .collect();
    (!recalls.is_empty()).then(|| recalls.iter().sum::<f64>() / recalls.len() as f64)
}

/// scikit-learn's `f1_score(average="macro")`: the mean over the classes present in the
/// labels or the predictions of `2 tp / (n_true + n_predicted)` (0 when tp = 0, which is
/// what `zero_division="warn"` gives). `None` without samples.
pub fn f1_macro(confusion: &[Vec<usize>]) -> Option<f64> {
    let n = confusion.len();
    let f1s: Vec<f64> = (0..n)
        .filter_map(|c| {
            let n_true: usize = confusion[c].iter().sum();
            let n_pred: usize = confusion.iter().map(|row| row[c]).sum();
            (n_true + n_pred > 0).then(|| (2 * confusion[c][c]) as f64 / (n_true + n_pred) as f64)
        })
        .collect();
    (!f1s.is_empty()).then(|| f1s.iter().sum::<f64>() / f1s.len() as f64)
}

/// Checks that `probs` has `labels.len()` finite rows of `n_classes` and labels in range.
pub fn check_inputs(probs: &[f64], labels: &[usize], n_classes: usize) -> Result<()> {
    if n_classes == 0 {
        return Err(Error::Invalid("metrics need at least one probability column".into()));
    }
    if probs.len() != labels.len() * n_classes {
        return Err(Error::Invalid(format!(
            "metrics: {} probabilities for {} labels with {n_classes} classes (expected {})",
            probs.len(),
            labels.len(),
            labels.len() * n_classes
        )));
    }
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, l)| **l >= n_classes) {
        return Err(Error::Invalid(format!("metrics: label {l} of sample {i} is not below {n_classes} classes")));
    }
    if let Some(i) = probs.iter().position(|p| !p.is_finite()) {
        return Err(Error::Invalid(format!(
            "metrics: probability {} of sample {} is not finite",
            i % n_classes,
            i / n_classes
        )));
    }
    Ok(())
}

/// Every metric of one split at one level, for row-major `probs` with `n_classes` columns.
///
/// EER and TPR at FPR use column 1 as the positive ("fake") score and need 2 columns
/// (the original logs EER only for 2-class models).
///
/// # Errors
/// [`Error::Invalid`] when the shapes disagree, a label is out of range or a score is not
/// finite. Undefined metrics are not errors: they are `None` with a warning.
pub fn compute_metrics(probs: &[f64], labels: &[usize], n_classes: usize) -> Result<Metrics> {
    check_inputs(probs, labels, n_classes)?;
    let n = labels.len();
    let preds = argmax_rows(probs, n_classes);
    let confusion = confusion_matrix(labels, &preds, n_classes);
    let n_per_class: Vec<usize> = confusion.iter().map(|row| row.iter().sum()).collect();
    let mut warnings = Vec::new();

    if n == 0 {
        warnings.push("no samples: every metric is undefined".to_string());
    } else {
        let missing: Vec<usize> = (0..n_classes).filter(|&c| n_per_class[c] == 0).collect();
        let only: Vec<usize> = (0..n_classes).filter(|&c| n_per_class[c] == n).collect();
        if !missing.is_empty() || !only.is_empty() {
            warnings.push(format!(
                "auroc undefined: one-vs-rest needs both outcomes for every class; \
                 absent: {missing:?}, the only class: {only:?}"
            ));
        }
        if !missing.is_empty() {
            warnings.push(format!("mAP undefined: classes {missing:?} have no sample"));
        }
        if n_classes != 2 {
            warnings.push(format!("eer and tpr_at_fpr need 2 probability columns, got {n_classes}"));
        }
        let predicted_only: Vec<usize> =
            (0..n_classes).filter(|&c| n_per_class[c] == 0 && confusion.iter().any(|r| r[c] > 0)).collect();
        if !predicted_only.is_empty() {
            warnings.push(format!(
                "balanced_acc leaves out classes {predicted_only:?}: predicted but absent from the labels"
            ));
        }
    }

    let roc = if n_classes == 2 { roc_curve(&one_vs_rest(labels, 1), &column(probs, 2, 1)) } else { None };
    if n_classes == 2 && n > 0 && roc.is_none() {
        warnings.push("eer and tpr_at_fpr undefined: the labels hold one class only".to_string());
    }
    let tpr_at = |t: f64| roc.as_ref().and_then(|r| r.tpr_at(t));

    Ok(Metrics {
        auroc: ovr_macro_auroc(probs, labels, n_classes),
        map: ovr_macro_ap(probs, labels, n_classes),
        eer: roc.as_ref().map(RocCurve::eer),
        acc: accuracy(labels, &preds),
        balanced_acc: balanced_accuracy(&confusion),
        f1_score: f1_macro(&confusion),
        tpr_at_fpr: TprAtFpr {
            fpr_0_001: tpr_at(TPR_FPR_TARGETS[0]),
            fpr_0_01: tpr_at(TPR_FPR_TARGETS[1]),
            fpr_0_05: tpr_at(TPR_FPR_TARGETS[2]),
        },
        n_samples: n,
        n_per_class,
        confusion_matrix: confusion,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn roc_of_a_hand_checked_case() {
        // scores 0.9 0.8 0.7 0.6 | labels 1 0 1 0: fps 0 1 1 2, tps 1 1 2 2.
        let y = [true, false, true, false];
        let s = [0.9, 0.8, 0.7, 0.6];
        let roc = roc_curve(&y, &s).unwrap();
        assert_eq!(roc.fpr, vec![0.0, 0.0, 0.5, 0.5, 1.0]);
        assert_eq!(roc.tpr, vec![0.0, 0.5, 0.5, 1.0, 1.0]);
        assert_eq!(roc.thresholds[0], f64::INFINITY);
        assert!(close(roc.auc(), 0.75));
        // 1 - x - tpr(x): at x = 0.5 tpr jumps 0.5 -> 1, so the root is the step itself.
        assert!(close(roc.eer(), 0.5));
        assert!(close(roc.tpr_at(0.25).unwrap(), 0.5));
        assert!(close(roc.tpr_at(0.5).unwrap(), 1.0), "upper point on a vertical step");
    }

    #[test]
    fn drop_intermediate_removes_collinear_points() {
        // All positives first: fps 0 0 0 1 2, tps 1 2 3 3 3 -> keep the corners only.
        let y = [true, true, true, false, false];
        let s = [5.0, 4.0, 3.0, 2.0, 1.0];
        let roc = roc_curve(&y, &s).unwrap();
        assert_eq!(roc.fpr, vec![0.0, 0.0, 0.0, 1.0]);
        assert_eq!(roc.tpr, vec![0.0, 1.0 / 3.0, 1.0, 1.0]);
        assert_eq!(roc.thresholds[1..], [5.0, 3.0, 1.0]);
        assert_eq!(roc.eer(), 0.0);
    }

    #[test]
    fn ties_and_all_equal_scores() {
        let y = [true, false, true, false];
        let roc = roc_curve(&y, &[0.5; 4]).unwrap();
        assert_eq!(roc.fpr, vec![0.0, 1.0]);
        assert!(close(roc.auc(), 0.5));
        assert!(close(roc.eer(), 0.5));
        let pr = precision_recall_curve(&y, &[0.5; 4]);
        assert_eq!(pr.precision, vec![0.5, 1.0]);
        assert_eq!(pr.recall, vec![1.0, 0.0]);
        assert!(close(pr.average_precision(), 0.5));
    }

    #[test]
    fn one_class_is_none_not_nan() {
        let probs = [0.2, 0.8, 0.6, 0.4, 0.5, 0.5];
        let m = compute_metrics(&probs, &[1, 1, 1], 2).unwrap();
        assert_eq!((m.auroc, m.map, m.eer), (None, None, None));
        assert_eq!(m.tpr_at_fpr, TprAtFpr::default());
        assert!(close(m.acc.unwrap(), 1.0 / 3.0));
        assert!(!m.warnings.is_empty());
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"mAP\":null") && json.contains("\"0.001\":null"), "{json}");
    }

    #[test]
    fn empty_input() {
        let m = compute_metrics(&[], &[], 2).unwrap();
        assert_eq!(m.n_samples, 0);
        assert_eq!(m.acc, None);
        assert_eq!(m.confusion_matrix, vec![vec![0, 0], vec![0, 0]]);
    }

    #[test]
    fn f1_and_balanced_accuracy_follow_sklearn_label_sets() {
        // labels 0 0 1 1, predictions all 0: F1(0) = 2*2/(2+4) = 2/3, F1(1) = 0.
        let cm = confusion_matrix(&[0, 0, 1, 1], &[0, 0, 0, 0], 3);
        assert!(close(f1_macro(&cm).unwrap(), 1.0 / 3.0), "class 2 is in neither: left out");
        assert!(close(balanced_accuracy(&cm).unwrap(), 0.5));
        // A class only predicted counts for F1 but not for balanced accuracy.
        let cm = confusion_matrix(&[0, 0], &[0, 2], 3);
        assert!(close(f1_macro(&cm).unwrap(), (2.0 / 3.0 + 0.0) / 2.0));
        assert!(close(balanced_accuracy(&cm).unwrap(), 0.5));
    }

    #[test]
    fn argmax_takes_the_first_of_equal_values() {
        assert_eq!(argmax_rows(&[0.5, 0.5, 0.2, 0.8], 2), vec![0, 1]);
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(compute_metrics(&[0.1, 0.9, 0.5], &[0, 1], 2).is_err());
        assert!(compute_metrics(&[0.1, 0.9], &[2], 2).is_err());
        assert!(compute_metrics(&[0.1, f64::NAN], &[1], 2).is_err());
        assert!(compute_metrics(&[], &[], 0).is_err());
    }

    #[test]
    fn numpy_interp_edges() {
        let xp = [0.0, 0.0, 0.5, 1.0, 1.0];
        let fp = [0.0, 0.2, 0.6, 0.8, 1.0];
        assert_eq!(interp(0.0, &xp, &fp), 0.2);
        assert!(close(interp(0.25, &xp, &fp), 0.4));
        assert_eq!(interp(1.0, &xp, &fp), 1.0);
        assert_eq!(interp(2.0, &xp, &fp), 1.0);
    }
}
