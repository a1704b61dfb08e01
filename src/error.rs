//! One error type for the whole crate. User input (shapes, dtypes, files, configs) never
//! panics: it comes back as an [`Error`] that names the op or file and what was expected.

use crate::dtype::DType;

/// Result alias used throughout ponder.
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: shape mismatch: {msg} (got {lhs:?} and {rhs:?})")]
    ShapeMismatch {
        op: &'static str,
        msg: String,
        lhs: Vec<usize>,
        rhs: Vec<usize>,
    },
    #[error("{op}: {msg} (shape {shape:?})")]
    BadShape {
        op: &'static str,
        msg: String,
        shape: Vec<usize>,
    },
    #[error("{op}: dtype mismatch: expected {expected:?}, got {got:?}")]
    DTypeMismatch {
        op: &'static str,
        expected: DType,
        got: DType,
    },
    #[error(
        "{op}: tensors live on different devices ({lhs} and {rhs}); move one with .to_device()"
    )]
    DeviceMismatch {
        op: &'static str,
        lhs: String,
        rhs: String,
    },
    #[error("{op}: dimension {dim} out of range for a tensor of rank {rank}")]
    DimOutOfRange {
        op: &'static str,
        dim: isize,
        rank: usize,
    },
    #[error("{op}: {msg}")]
    Invalid { op: &'static str, msg: String },
    #[error("gpu: {0}")]
    Gpu(String),
    #[error("gpu: no adapter available: {0}")]
    NoAdapter(String),
    #[error("gpu: {what} needs {requested} bytes, over the device limit {limit} ({limit_name})")]
    DeviceLimit {
        what: String,
        requested: u64,
        limit: u64,
        limit_name: &'static str,
    },
    #[error("autograd: {0}")]
    Autograd(String),
    /// A problem with a user's file: names the file and the tensor, field or line.
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    /// Weights that are NaN or infinite: never saved.
    #[error("refusing to save: {tensor} holds {count} non-finite value(s) (NaN or inf) out of {total}; training diverged (try a lower --lr or --max-grad-norm)")]
    NonFinite {
        tensor: String,
        count: usize,
        total: usize,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn file(path: impl AsRef<std::path::Path>, msg: impl Into<String>) -> Self {
        Error::File {
            path: path.as_ref().display().to_string(),
            msg: msg.into(),
        }
    }
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Invalid {
            op,
            msg: msg.into(),
        }
    }
    pub(crate) fn shape(
        op: &'static str,
        msg: impl Into<String>,
        lhs: &[usize],
        rhs: &[usize],
    ) -> Self {
        Error::ShapeMismatch {
            op,
            msg: msg.into(),
            lhs: lhs.to_vec(),
            rhs: rhs.to_vec(),
        }
    }
    pub(crate) fn bad_shape(op: &'static str, msg: impl Into<String>, shape: &[usize]) -> Self {
        Error::BadShape {
            op,
            msg: msg.into(),
            shape: shape.to_vec(),
        }
    }
}
