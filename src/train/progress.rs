//! Progress bars on stderr for `dfdet train` (shown only on a terminal): one bar per phase,
//! with the latest loss and learning rate while training.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use super::run::Observer;

/// An [`Observer`] drawing indicatif bars; messages go to stderr.
pub struct Bars {
    bar: ProgressBar,
    tty: bool,
}

impl Default for Bars {
    fn default() -> Self {
        Self { bar: ProgressBar::hidden(), tty: std::io::stderr().is_terminal() }
    }
}

impl Bars {
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
        self.bar = if self.tty {
            let style = ProgressStyle::with_template("{prefix:>14} {bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]")
                .expect("valid template");
            let bar = ProgressBar::new(total as u64).with_style(style).with_prefix(name.to_string());
            bar.set_position(done as u64);
            bar
        } else {
            ProgressBar::hidden()
        };
    }

    fn advance(&mut self, n: usize, loss: Option<f64>, lr: Option<f64>) {
        self.bar.inc(n as u64);
        if let (Some(loss), Some(lr)) = (loss, lr) {
            self.bar.set_message(format!("loss {loss:.4} lr {lr:.2e}"));
        }
    }
}
