//! The training-curves figure of a run folder (`training_curves.{png,svg}`), redrawn from
//! `metrics.csv` after every epoch: the training and validation loss, validation AUROC and
//! balanced accuracy (frame and video level) per epoch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::eval::plots::study::{Panel, Series, line_panels};
use crate::{Error, Result};

/// Per-epoch values of `name` in a run's `metrics.csv`, epochs counted from 1.
pub fn epoch_series(run: &Path, name: &str) -> Result<Vec<(f64, Option<f64>)>> {
    let path = run.join("metrics.csv");
    let mut reader = csv::Reader::from_path(&path).map_err(|e| Error::format(&path, e.to_string()))?;
    let mut out: BTreeMap<usize, f64> = BTreeMap::new();
    for record in reader.records() {
        let record = record.map_err(|e| Error::format(&path, e.to_string()))?;
        if record.get(2) == Some(name)
            && let (Some(Ok(epoch)), Some(Ok(v))) =
                (record.get(0).map(str::parse::<usize>), record.get(3).map(str::parse::<f64>))
        {
            out.insert(epoch, v);
        }
    }
    Ok(out.into_iter().map(|(e, v)| ((e + 1) as f64, Some(v))).collect())
}

/// Draws `<run>/training_curves.{png,svg}`; returns the files written.
pub fn write(run: &Path, title: &str) -> Result<Vec<PathBuf>> {
    let series = |label: &str, name: &str| -> Result<Series> {
        Ok(Series { label: label.into(), points: epoch_series(run, name)? })
    };
    let panels = [
        Panel {
            title: "loss".into(),
            y_desc: "loss".into(),
            unit_y: false,
            series: vec![series("training", "train/loss_epoch")?, series("validation", "val/loss")?],
        },
        Panel {
            title: "validation AUROC".into(),
            y_desc: "AUROC".into(),
            unit_y: true,
            series: vec![series("video", "val/auroc_video")?, series("frame", "val/auroc_frame")?],
        },
        Panel {
            title: "validation balanced accuracy".into(),
            y_desc: "balanced accuracy".into(),
            unit_y: true,
            series: vec![series("video", "val/balanced_acc_video")?, series("frame", "val/balanced_acc_frame")?],
        },
    ];
    let mut written = Vec::new();
    for ext in ["png", "svg"] {
        let path = run.join(format!("training_curves.{ext}"));
        line_panels(&path, title, "epoch", &panels)?;
        written.push(path);
    }
    Ok(written)
}
