//! How long-running library work reports to whoever runs it: a front end (the command line's
//! progress bars, a server's job status) implements [`Observer`]; the library never prints.

/// What a caller sees of work as it goes. Every method defaults to doing nothing.
pub trait Observer {
    /// A line for the user: a warning, a summary.
    fn message(&mut self, _msg: &str) {}
    /// A phase with `total` units of work starts, `done` of them already done ("epoch 3/10",
    /// "val", "frames", "videos").
    fn phase(&mut self, _name: &str, _total: usize, _done: usize) {}
    /// `n` more units of the current phase are done.
    fn advance(&mut self, _n: usize) {}
    /// The latest status of the current phase ("loss 0.31 lr 1e-4", a video's name).
    fn status(&mut self, _text: &str) {}
}

/// An observer that shows nothing.
pub struct Silent;

impl Observer for Silent {}

/// An observer that keeps every message, for callers that report them later.
#[derive(Debug, Default)]
pub struct Messages(pub Vec<String>);

impl Observer for Messages {
    fn message(&mut self, msg: &str) {
        self.0.push(msg.to_string());
    }
}
