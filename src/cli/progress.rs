//! Progress on stderr: indicatif bars on a terminal, plain message lines otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use dfdet::progress::Observer;

/// An [`Observer`] drawing one bar per phase on a terminal (phases shorter than `min_total`
/// units get none); messages go to stderr, above the bar.
pub struct Bars {
    bar: ProgressBar,
    tty: bool,
    min_total: usize,
}

impl Bars {
    /// Bars for phases of at least `min_total` units.
    pub fn new(min_total: usize) -> Self {
        Self { bar: ProgressBar::hidden(), tty: std::io::stderr().is_terminal(), min_total }
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
    }

    fn advance(&mut self, n: usize) {
        self.bar.inc(n as u64);
    }

    fn status(&mut self, text: &str) {
        self.bar.set_message(text.to_string());
    }
}
