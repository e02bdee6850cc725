//! The library's one error type: every variant names the file or key that failed.

use std::path::PathBuf;

/// Errors of the dfdet library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written. The OS error is part of the message (and not
    /// exposed as a source, so that a `{:#}` chain says it once).
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    /// An image file could not be decoded.
    #[error("{path}: cannot decode image: {reason}")]
    Image { path: PathBuf, reason: String },
    /// A checkpoint or config file is not in a format dfdet reads.
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    /// A tensor the model needs is absent from the checkpoint.
    #[error("{path}: missing tensor `{key}`")]
    MissingTensor { path: PathBuf, key: String },
    /// A tensor has a shape other than the model expects.
    #[error("{path}: tensor `{key}` has shape {found:?}, the model expects {expected:?}")]
    ShapeMismatch { path: PathBuf, key: String, expected: Vec<usize>, found: Vec<usize> },
    /// A checkpoint holds tensors the model does not use.
    #[error("{path}: unexpected tensors {keys:?}")]
    UnexpectedTensors { path: PathBuf, keys: Vec<String> },
    /// A backbone name that is neither a preset nor a folder.
    #[error("unknown backbone `{name}`; known presets: {known}, or give a folder with a CLIP config.json")]
    UnknownBackbone { name: String, known: String },
    /// A setting that cannot work: the config key (or option) and why.
    #[error("{key}: {reason}")]
    Config { key: String, reason: String },
    /// An output file could not be made (a plot, a checkpoint): the file and why.
    #[error("{path}: cannot write: {reason}")]
    Output { path: PathBuf, reason: String },
    /// Invalid data handed to a library function (lengths that disagree, nothing to score),
    /// with what it was about.
    #[error("{0}")]
    Invalid(String),
    /// A file that must be fetched from the Hugging Face Hub is not available.
    #[error("{0}")]
    Hub(String),
}

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The message without the file it names, for lists that show the file beside it (an
    /// input's `path: reason` line, a JSON `errors` entry).
    pub fn reason(&self) -> String {
        match self {
            Self::Io { error, .. } => error.to_string(),
            Self::Image { reason, .. } => format!("cannot decode image: {reason}"),
            Self::Format { reason, .. } | Self::Output { reason, .. } => reason.clone(),
            other => other.to_string(),
        }
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), error: source }
    }
    /// An [`Error::Config`] for `key`.
    pub fn config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config { key: key.into(), reason: reason.into() }
    }
    /// An [`Error::Output`] for `path`.
    pub fn output(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Output { path: path.into(), reason: reason.into() }
    }
    /// An [`Error::Format`] for `path`.
    pub fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Format { path: path.into(), reason: reason.into() }
    }
}
