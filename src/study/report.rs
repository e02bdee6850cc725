//! The study's report, gathered from the finished cells' run folders: `summary.csv` (each cell's
//! final test `metrics.json`, number for number), `summary.md` (the seed's tables) and the
//! comparison plots.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::config::{StudyConfig, percent};
use super::{CELL_RECORD, Cell, CellRecord, is_finished};
use crate::eval::plots::study::{Panel, Series, grouped_bars, line_panels};
use crate::eval::report::ALL;
use crate::progress::Observer;
use crate::train::curves::epoch_series;
use crate::{Error, Result};

/// The metrics of `summary.csv`, in its column order, by their `metrics.json` names.
pub const METRICS: [&str; 7] = ["auroc", "balanced_acc", "mAP", "eer", "acc", "f1_score", "n_samples"];
/// Levels, in report order.
pub const LEVELS: [&str; 2] = ["video", "frame"];

/// One row of `summary.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub method: String,
    pub fraction: f64,
    pub set: String,
    pub level: String,
    /// In [`METRICS`] order; `None` where metrics.json has `null`.
    pub values: Vec<Option<f64>>,
}

impl Row {
    fn get(&self, metric: &str) -> Option<f64> {
        METRICS.iter().position(|m| *m == metric).and_then(|i| self.values[i])
    }
}

/// What the report wrote.
#[derive(Debug)]
pub struct Written {
    pub summary_csv: PathBuf,
    pub summary_md: PathBuf,
    pub plots: Vec<PathBuf>,
    pub cells_done: usize,
    pub cells_total: usize,
}

/// The rows of one finished cell, from its `test/metrics.json`.
pub fn cell_rows(cell: &Cell) -> Result<Vec<Row>> {
    let path = cell.config.run_path().join("test").join("metrics.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(&path, e.to_string()))?;
    let sets = doc.as_object().ok_or_else(|| Error::format(&path, "expected an object of sets"))?;
    let mut rows = Vec::new();
    for (set, levels) in sets {
        for level in LEVELS {
            let m = &levels[level];
            if !m.is_object() {
                return Err(Error::format(&path, format!("set `{set}` has no `{level}` metrics")));
            }
            let values = METRICS.iter().map(|k| m[*k].as_f64()).collect();
            rows.push(Row {
                method: cell.method.clone(),
                fraction: cell.fraction,
                set: set.clone(),
                level: level.into(),
                values,
            });
        }
    }
    Ok(rows)
}

/// Writes the report of every finished cell of `cells` into the study folder.
pub fn write(study: &StudyConfig, cells: &[Cell], obs: &mut dyn Observer) -> Result<Written> {
    let dir = study.dir();
    let done: Vec<&Cell> = cells.iter().filter(|c| is_finished(&c.config.run_path())).collect();
    let mut rows = Vec::new();
    for cell in &done {
        rows.extend(cell_rows(cell)?);
    }
    let summary_csv = dir.join("summary.csv");
    write_csv(&summary_csv, &rows)?;
    let records: Vec<(&Cell, Option<CellRecord>)> = done
        .iter()
        .map(|c| {
            let text = std::fs::read_to_string(c.config.run_path().join(CELL_RECORD)).ok();
            (*c, text.and_then(|t| serde_json::from_str(&t).ok()))
        })
        .collect();
    let summary_md = dir.join("summary.md");
    let md = markdown(study, cells.len(), &rows, &records);
    std::fs::write(&summary_md, md).map_err(|e| Error::io(&summary_md, e))?;
    let plots = plots(study, &done, &rows, &dir.join("plots"))?;
    obs.message(&format!(
        "report: {} of {} cells finished; wrote {}, {} and {} plots",
        done.len(),
        cells.len(),
        summary_csv.display(),
        summary_md.display(),
        plots.len()
    ));
    Ok(Written { summary_csv, summary_md, plots, cells_done: done.len(), cells_total: cells.len() })
}

/// `summary.csv`: one row per cell, test set and level; numbers as `metrics.json` holds them
/// (shortest exact decimal form), empty where undefined.
fn write_csv(path: &Path, rows: &[Row]) -> Result<()> {
    let mut text = String::from("method,fraction,set,level");
    for m in METRICS {
        text += &format!(",{m}");
    }
    text.push('\n');
    for r in rows {
        let _ = write!(text, "{},{},{},{}", csv_field(&r.method), r.fraction, csv_field(&r.set), r.level);
        for v in &r.values {
            text.push(',');
            if let Some(v) = v {
                let _ = write!(text, "{v}");
            }
        }
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// The test sets to tabulate: the named ones, or "all" when there are none.
fn sets(rows: &[Row]) -> Vec<String> {
    let named: BTreeSet<String> = rows.iter().filter(|r| r.set != ALL).map(|r| r.set.clone()).collect();
    if named.is_empty() { vec![ALL.to_string()] } else { named.into_iter().collect() }
}

fn metric_title(metric: &str) -> &str {
    match metric {
        "auroc" => "AUROC",
        "balanced_acc" => "Balanced accuracy",
        other => other,
    }
}

/// The value of `metric` for a method, fraction, set and level.
fn lookup(rows: &[Row], method: &str, fraction: f64, set: &str, level: &str, metric: &str) -> Option<f64> {
    rows.iter()
        .find(|r| r.method == method && r.fraction == fraction && r.set == set && r.level == level)
        .and_then(|r| r.get(metric))
}

/// A markdown table: `header` columns, then rows of cells; the best value of each numeric
/// column in bold.
fn table(out: &mut String, header: &[String], names: &[String], values: &[Vec<Option<f64>>]) {
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        header.iter().enumerate().map(|(i, _)| if i == 0 { "---|" } else { "---:|" }).collect::<String>()
    );
    let columns = header.len() - 1;
    let best: Vec<Option<f64>> = (0..columns)
        .map(|c| values.iter().filter_map(|row| row[c]).fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v)))))
        .collect();
    for (name, row) in names.iter().zip(values) {
        let cells: Vec<String> = row
            .iter()
            .zip(&best)
            .map(|(v, b)| match v {
                Some(v) if Some(*v) == *b => format!("**{v:.4}**"),
                Some(v) => format!("{v:.4}"),
                None => "–".into(),
            })
            .collect();
        let _ = writeln!(out, "| {} | {} |", name, cells.join(" | "));
    }
    out.push('\n');
}

fn markdown(study: &StudyConfig, total: usize, rows: &[Row], records: &[(&Cell, Option<CellRecord>)]) -> String {
    let methods: Vec<String> = study.methods.iter().map(|m| m.name.clone()).collect();
    let fractions = &study.fractions;
    let frac_header: Vec<String> =
        std::iter::once("method".to_string()).chain(fractions.iter().map(|f| format!("{} %", percent(*f)))).collect();
    let mut s = format!(
        "# Study `{}`\n\n{} of {} cells finished. Each cell is a `dfdet train` run folder under `runs/`; \
         its numbers are the final test pass with the checkpoint of best validation video-level mAP \
         (`runs/<cell>/test/metrics.json`; all of them in `summary.csv`). Fractions are of the \
         training videos, nested, the same for every method (`subsets/`). Best value per column in bold.\n\n",
        study.base.run_name,
        records.len(),
        total
    );
    let test_sets = sets(rows);
    for metric in ["auroc", "balanced_acc"] {
        let _ = writeln!(s, "## {}\n", metric_title(metric));
        for set in &test_sets {
            for level in LEVELS {
                let _ = writeln!(s, "### {set}, {level} level\n");
                let values: Vec<Vec<Option<f64>>> = methods
                    .iter()
                    .map(|m| fractions.iter().map(|&f| lookup(rows, m, f, set, level, metric)).collect())
                    .collect();
                table(&mut s, &frac_header, &methods, &values);
            }
        }
    }
    let largest = *fractions.last().expect("at least one fraction");
    let _ = writeln!(s, "## Across test sets, {} % of the training videos\n", percent(largest));
    let set_header: Vec<String> = std::iter::once("method".to_string()).chain(test_sets.iter().cloned()).collect();
    for metric in ["auroc", "balanced_acc"] {
        for level in LEVELS {
            let _ = writeln!(s, "### {}, {level} level\n", metric_title(metric));
            let values: Vec<Vec<Option<f64>>> = methods
                .iter()
                .map(|m| test_sets.iter().map(|set| lookup(rows, m, largest, set, level, metric)).collect())
                .collect();
            table(&mut s, &set_header, &methods, &values);
        }
    }
    let _ = writeln!(
        s,
        "## Cost\n\nWall-clock seconds per cell (training, validation and test), and its training frames.\n"
    );
    let _ = writeln!(s, "| cell | frames | optimizer steps | seconds |\n|---|---:|---:|---:|");
    for (cell, record) in records {
        match record {
            Some(r) => {
                let _ =
                    writeln!(s, "| {} | {} | {} | {:.1} |", cell.name, r.training_frames, r.optimizer_steps, r.seconds);
            }
            None => {
                let _ = writeln!(s, "| {} | – | – | – |", cell.name);
            }
        }
    }
    s
}

fn plots(study: &StudyConfig, done: &[&Cell], rows: &[Row], dir: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    if done.is_empty() {
        return Ok(written);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let exts = ["png", "svg"];
    // Training curves per method, a line per fraction.
    for m in &study.methods {
        let cells: Vec<&&Cell> = done.iter().filter(|c| c.method == m.name).collect();
        if cells.is_empty() {
            continue;
        }
        let mut panels = Vec::new();
        for (name, title, unit) in [
            ("train/loss_epoch", "training loss", false),
            ("val/auroc_video", "validation AUROC (video)", true),
            ("val/balanced_acc_video", "validation balanced accuracy (video)", true),
        ] {
            let mut series = Vec::new();
            for c in &cells {
                series.push(Series {
                    label: format!("{} %", percent(c.fraction)),
                    points: epoch_series(&c.config.run_path(), name)?,
                });
            }
            panels.push(Panel { title: title.into(), y_desc: title.into(), unit_y: unit, series });
        }
        for ext in exts {
            let path = dir.join(format!("curves-{}.{ext}", m.name));
            line_panels(&path, &format!("{}: training curves per data fraction", m.name), "epoch", &panels)?;
            written.push(path);
        }
    }
    // Each metric against the fraction, a panel per test set and a line per method; and bars of
    // the methods per test set at the largest fraction.
    let test_sets = sets(rows);
    let methods: Vec<String> = study.methods.iter().map(|m| m.name.clone()).collect();
    let largest = *study.fractions.last().expect("at least one fraction");
    for metric in ["auroc", "balanced_acc"] {
        for level in LEVELS {
            let panels: Vec<Panel> = test_sets
                .iter()
                .map(|set| Panel {
                    title: set.clone(),
                    y_desc: format!("{} ({level})", metric_title(metric)),
                    unit_y: true,
                    series: methods
                        .iter()
                        .map(|m| Series {
                            label: m.clone(),
                            points: study
                                .fractions
                                .iter()
                                .map(|&f| (f * 100.0, lookup(rows, m, f, set, level, metric)))
                                .collect(),
                        })
                        .collect(),
                })
                .collect();
            let values: Vec<Vec<Option<f64>>> = test_sets
                .iter()
                .map(|set| methods.iter().map(|m| lookup(rows, m, largest, set, level, metric)).collect())
                .collect();
            for ext in exts {
                let path = dir.join(format!("{metric}-{level}-vs-fraction.{ext}"));
                let title = format!("Test {} ({level}-level) against training data", metric_title(metric));
                line_panels(&path, &title, "training videos (%)", &panels)?;
                written.push(path);
                let path = dir.join(format!("{metric}-{level}-bars.{ext}"));
                let title = format!(
                    "Test {} ({level}-level), {} % of the training videos",
                    metric_title(metric),
                    percent(largest)
                );
                grouped_bars(&path, &title, metric_title(metric), &test_sets, &methods, &values)?;
                written.push(path);
            }
        }
    }
    Ok(written)
}
