use std::path::PathBuf;

use proctor_schemas::SchemaError;

/// Why the recorder could not accept an event. Every variant means the event
/// was *not* recorded; the caller must not forward what it describes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    #[error("the recorder is closed")]
    Closed,
    #[error("the write-ahead log could not be written ({0}); the event was not recorded")]
    WalWrite(String),
    #[error("the recorder failed closed after an earlier error ({0}); restart it once the cause is fixed")]
    FailedClosed(String),
    #[error("segment sealing is failing ({0}) and the unsealed backlog is full; free space or fix the data dir")]
    SealerStalled(String),
    #[error("rejected: {0}")]
    Rejected(String),
}

/// Errors opening, recovering, closing, reading or verifying a data dir.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error("{context}: {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data dir {0} is in use by another recorder (lock held on its recorder.lock)")]
    Locked(PathBuf),
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("parquet: {path}: {message}")]
    Parquet { path: PathBuf, message: String },
    #[error("signing key: {0}")]
    Key(String),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("invalid setting: {0}")]
    Config(String),
    #[error(
        "{path} says it was written by a newer Proctor (WAL format {format}; this build reads up to {supported}): run that version on this data dir; if no newer version ever ran here, its header is damaged: rename it to {path}.corrupt (verify reports it) and start again"
    )]
    NewerFormat { path: PathBuf, format: u32, supported: u32 },
    #[error("{0}")]
    Record(#[from] RecordError),
    #[error("export: {0}")]
    Export(String),
    /// No room for an export where it is written.
    #[error("export: {0}")]
    NoRoom(String),
}

impl RecorderError {
    pub(crate) fn io(context: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RecorderError {
        let path = path.into();
        move |source| RecorderError::Io { context, path, source }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, message: impl Into<String>) -> RecorderError {
        RecorderError::Corrupt { path: path.into(), message: message.into() }
    }
}

pub type Result<T, E = RecorderError> = std::result::Result<T, E>;
