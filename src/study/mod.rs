//! `dfdet study`: the seed's four-method x data-size study (docs/method.md §9) as one command.
//!
//! ```text
//! <study>/study.toml                      the resolved study (base train config + [study])
//! <study>/subsets/trn-<percent>.txt       the training frames of each fraction (whole videos)
//! <study>/runs/<method>-<percent>/        one `dfdet train` run folder per cell
//! <study>/runs/<method>-<percent>/cell.json   written when the cell is finished
//! <study>/feature-cache/                  linear probing's encoder features, shared by fractions
//! <study>/summary.csv, summary.md, plots/ the report
//! ```
//!
//! Re-running skips finished cells and resumes interrupted ones; `--shard i/n` runs every n-th
//! cell from the i-th, so n processes on one file system share the grid with no coordinator.

pub mod config;
pub mod report;
pub mod subsets;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use config::{Cell, StudyConfig};
use subsets::{Videos, write_list};

use crate::data::sets::Split;
use crate::files::write_if_changed;
use crate::progress::Observer;
use crate::train::state::RunDir;
use crate::{Error, Result};

/// `--shard i/n`: cells `i, i + n, i + 2n, ...` of the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("`{s}`: expected I/N with 0 <= I < N, e.g. 0/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

/// Which cells to run.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub shard: Option<Shard>,
    /// `METHOD` or `METHOD-PERCENT` (e.g. `ln-tuning`, `ln-tuning-50`); empty: all.
    pub only: Vec<String>,
}

/// What `cell.json` records of a finished cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellRecord {
    pub method: String,
    pub fraction: f64,
    /// Wall-clock seconds of the invocation(s) that trained it (a resumed cell: the last one's).
    pub seconds: f64,
    pub optimizer_steps: usize,
    pub training_frames: usize,
}

/// The study as prepared on disk: its cells and subsets.
pub struct Prepared {
    pub config: StudyConfig,
    pub cells: Vec<Cell>,
}

/// How a study invocation ended.
#[derive(Debug)]
pub struct Outcome {
    /// Cells trained (or finished) by this invocation.
    pub ran: Vec<String>,
    /// Selected cells that were already finished.
    pub skipped: Vec<String>,
    /// Stopped by the user; the current cell's `last` is saved.
    pub interrupted: bool,
    pub report: Option<report::Written>,
}

/// Checks the study, writes `study.toml` and the subsets: everything before any compute.
pub fn prepare(config: StudyConfig, obs: &mut dyn Observer) -> Result<Prepared> {
    let dir = config.dir();
    let resolved = config.to_toml();
    let toml_path = dir.join("study.toml");
    match std::fs::read_to_string(&toml_path) {
        Ok(old) if old != resolved => {
            return Err(Error::format(
                &toml_path,
                format!(
                    "the study folder {} holds a study with other settings: keep them (compare with \
                     `dfdet study --print-config`), or give another run_name",
                    dir.display()
                ),
            ));
        }
        _ => {}
    }
    let specs = config.base.trn_files.set_specs();
    if specs.is_empty() {
        return Err(Error::config("trn_files", "is empty: give its list files"));
    }
    let trn = Split::load(&specs, None, config.base.data_root.as_deref())?;
    for e in &trn.errors {
        obs.message(&format!("warning: trn_files: {}: {}", e.path, e.reason));
    }
    for class in 0..config.base.num_classes {
        if !trn.labels.contains(&class) {
            return Err(Error::config("trn_files", format!("no frame of class {class}: every class must be present")));
        }
    }
    let videos = Videos::new(&trn, config.base.seed);
    for &f in &config.fractions {
        videos.check(f)?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    write_if_changed(&toml_path, resolved.as_bytes())?;
    let subset_path = |f: f64| dir.join("subsets").join(format!("trn-{}.txt", config::percent(f)));
    for &f in &config.fractions {
        let (frames, about) = videos.subset(f);
        write_list(&subset_path(f), &frames, &about, config.base.seed)?;
        obs.message(&format!("subset {}%: {about}", config::percent(f)));
    }
    let cells = config.cells(&|f| subset_path(f))?;
    Ok(Prepared { config, cells })
}

impl Prepared {
    /// The cells chosen by `selection`, in grid order. An `--only` that matches nothing is an
    /// error naming the cells.
    pub fn select(&self, selection: &Selection) -> Result<Vec<&Cell>> {
        for o in &selection.only {
            if !self.cells.iter().any(|c| c.method == *o || c.name == *o) {
                let names: Vec<&str> = self.cells.iter().map(|c| c.name.as_str()).collect();
                return Err(Error::config(
                    format!("--only {o}"),
                    format!("matches no method or cell; the cells are {}", names.join(", ")),
                ));
            }
        }
        Ok(self
            .cells
            .iter()
            .enumerate()
            .filter(|(i, _)| selection.shard.is_none_or(|s| i % s.count == s.index))
            .filter(|(_, c)| selection.only.is_empty() || selection.only.iter().any(|o| c.method == *o || c.name == *o))
            .map(|(_, c)| c)
            .collect())
    }

    /// Runs the selected cells, then writes the report of every finished cell.
    pub fn run(&self, selection: &Selection, obs: &mut dyn Observer, stop: &AtomicBool) -> Result<Outcome> {
        let chosen = self.select(selection)?;
        let mut outcome = Outcome { ran: Vec::new(), skipped: Vec::new(), interrupted: false, report: None };
        for (k, cell) in chosen.iter().enumerate() {
            if stop.load(Ordering::SeqCst) {
                outcome.interrupted = true;
                break;
            }
            if is_finished(&cell.config.run_path()) {
                outcome.skipped.push(cell.name.clone());
                continue;
            }
            obs.message(&format!("cell {}/{}: {}", k + 1, chosen.len(), cell.name));
            if !run_cell(cell, obs, stop)? {
                outcome.interrupted = true;
                break;
            }
            outcome.ran.push(cell.name.clone());
        }
        outcome.report = Some(self.report(obs)?);
        Ok(outcome)
    }

    /// Writes the report of the finished cells.
    pub fn report(&self, obs: &mut dyn Observer) -> Result<report::Written> {
        report::write(&self.config, &self.cells, obs)
    }
}

/// Whether the cell's run folder holds a finished cell.
pub fn is_finished(run: &Path) -> bool {
    run.join(CELL_RECORD).is_file()
}

/// The marker of a finished cell.
pub const CELL_RECORD: &str = "cell.json";

/// Trains (or resumes) one cell and marks it finished. `false` when interrupted.
fn run_cell(cell: &Cell, obs: &mut dyn Observer, stop: &AtomicBool) -> Result<bool> {
    let run = RunDir { dir: cell.config.run_path() };
    let start = Instant::now();
    let outcome = if run.last_for_resume().is_some() {
        crate::train::resume(&run.dir, &[], obs, stop)?
    } else {
        if run.dir.exists() {
            // Killed before its first checkpoint: nothing to resume, start it again.
            obs.message(&format!("{}: no checkpoint to resume from; starting the cell again", run.dir.display()));
            std::fs::remove_dir_all(&run.dir).map_err(|e| Error::io(&run.dir, e))?;
        }
        crate::train::train(&cell.config, obs, stop)?
    };
    if outcome.interrupted {
        return Ok(false);
    }
    if outcome.test.is_none() && !outcome.already_finished {
        return Err(Error::config("tst_files", "is empty: the study compares the cells on test sets"));
    }
    let frames =
        Split::load(&cell.config.trn_files.set_specs(), cell.config.limit_trn_files, cell.config.data_root.as_deref())?
            .files
            .len();
    let record = CellRecord {
        method: cell.method.clone(),
        fraction: cell.fraction,
        seconds: start.elapsed().as_secs_f64(),
        optimizer_steps: outcome.global_step,
        training_frames: frames,
    };
    let text = serde_json::to_string_pretty(&record).expect("the record serialises") + "\n";
    write_if_changed(&run.dir.join(CELL_RECORD), text.as_bytes())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_reject_nonsense() {
        assert_eq!("1/4".parse::<Shard>(), Ok(Shard { index: 1, count: 4 }));
        for bad in ["4/4", "0/0", "1", "a/2", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
