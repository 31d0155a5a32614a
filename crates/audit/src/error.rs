//! The one error type of this crate; every variant is a gateway-side fault (storage or a
//! damaged log), never something a client or a target caused.

use std::path::PathBuf;

use crate::chain::VerifyProblem;

/// Why the audit log could not be opened, written or read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file operation on the audit directory failed.
    #[error("audit log I/O failed: {context} ({path}): {source}", path = path.display())]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// An event could not be serialised, or a stored line could not be parsed.
    #[error("audit record is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The log does not verify; it is refused rather than extended.
    #[error("audit log does not verify: {0}")]
    Corrupt(Box<VerifyProblem>),
    /// An earlier write or fsync failed; the log refuses appends (fail closed).
    #[error("audit log is unhealthy and refuses appends: {0}")]
    Unhealthy(String),
    /// Another process (or another `AuditLog` in this one) already writes this directory.
    #[error("audit directory {} is locked by another writer", .0.display())]
    Locked(PathBuf),
    /// The writer thread is gone (it panicked or the process is shutting down).
    #[error("audit writer has stopped")]
    WriterGone,
    /// A configuration value is out of range.
    #[error("invalid audit configuration: {0}")]
    Config(String),
}

impl AuditError {
    pub(crate) fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            context,
            path: path.into(),
            source,
        }
    }
}
