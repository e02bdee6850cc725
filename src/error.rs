//! The library's one error type: every variant names the file or key that failed.

use std::path::PathBuf;

/// Errors of the dfdet library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    ShapeMismatch {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A checkpoint holds tensors the model does not use.
    #[error("{path}: unexpected tensors {keys:?}")]
    UnexpectedTensors { path: PathBuf, keys: Vec<String> },
    /// A backbone name that is neither a preset nor a folder.
    #[error("unknown backbone `{name}`; known presets: {known}, or give a folder with a CLIP config.json")]
    UnknownBackbone { name: String, known: String },
    /// Invalid input data (list files, CSVs, options), with where it came from.
    #[error("{0}")]
    Invalid(String),
    /// A file that must be fetched from the Hugging Face Hub is not available.
    #[error("{0}")]
    Hub(String),
}

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
    /// An [`Error::Format`] for `path`.
    pub fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Format { path: path.into(), reason: reason.into() }
    }
}
