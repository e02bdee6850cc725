//! Progress on stderr: indicatif bars on a terminal; when stderr is not a terminal (a log file,
//! CI), a plain `phase: done/total` line at most every [`PLAIN_EVERY`] (`$DFDET_PROGRESS_SECS`
//! seconds when set), so that long work is never silent.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use dfdet::progress::Observer;

/// How often plain progress lines are written when stderr is not a terminal.
pub const PLAIN_EVERY: Duration = Duration::from_secs(30);

/// An [`Observer`] drawing one bar per phase on a terminal (phases shorter than `min_total`
/// units get none); messages go to stderr, above the bar.
pub struct Bars {
    bar: ProgressBar,
    tty: bool,
    min_total: usize,
    /// Plain-line state: the phase, its units done and total, when a line was last written
    /// (the phase's start before the first).
    plain: Option<(String, usize, usize, Instant, bool)>,
    every: Duration,
}

impl Bars {
    /// Bars for phases of at least `min_total` units.
    pub fn new(min_total: usize) -> Self {
        let every = std::env::var("DFDET_PROGRESS_SECS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map_or(PLAIN_EVERY, Duration::from_secs_f64);
        Self { bar: ProgressBar::hidden(), tty: std::io::stderr().is_terminal(), min_total, plain: None, every }
    }

    /// Removes the current bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Observer for Bars {
    fn message(&mut self, msg: &str) {
        if self.bar.is_hidden() {
            eprintln!("{msg}");
        } else {
            self.bar.println(msg);
        }
    }

    fn phase(&mut self, name: &str, total: usize, done: usize) {
        self.bar.finish_and_clear();
        self.bar = if self.tty && total >= self.min_total {
            let style = ProgressStyle::with_template("{prefix:>14} {bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]")
                .expect("valid template");
            let bar = ProgressBar::new(total as u64).with_style(style).with_prefix(name.to_string());
            bar.set_position(done as u64);
            bar
        } else {
            ProgressBar::hidden()
        };
        self.plain = (!self.tty && total > 0).then(|| (name.to_string(), done, total, Instant::now(), false));
    }

    fn advance(&mut self, n: usize) {
        self.bar.inc(n as u64);
        if let Some((name, done, total, last, printed)) = &mut self.plain {
            *done += n;
            // A line every `every`, and the end of a phase that had lines (short work stays quiet).
            if last.elapsed() >= self.every || (*printed && *done >= *total) {
                eprintln!("{name}: {done}/{total}");
                *last = Instant::now();
                *printed = true;
            }
        }
    }

    fn status(&mut self, text: &str) {
        self.bar.set_message(text.to_string());
    }
}
