//! Proctor's search index over recorded sessions (tantivy), built from the
//! recorder's sealed segments and WAL tail.
//!
//! Architecture invariant: the index is derived data. It is rebuilt from the
//! segments alone, holds nothing the segments do not hold, and knows nothing
//! of protocols or HTTP. It reads recordings through `proctor-recorder`'s
//! reader, never by parsing Parquet itself.
//!
//! - [`fields`]: the schema, one document per event.
//! - [`document`]: an event's columns to a document.
//! - `directory`: the index's files on disk (their modes; read-only
//!   opening for the data dir's group).
//! - [`index`]: the index directory, the single writer, its checkpoint
//!   (committed with the documents), catching up, rebuilding.
//! - [`keyframes`]: terminal screens snapshotted as segments are indexed,
//!   the screen at any moment of a session, and frames to play it.
//! - [`query`]: the investigators' query language.
//! - [`search`]: hits in time order with snippets, and facet counts.
//! - [`background`]: the indexer thread of a running Proctor.

use std::path::{Path, PathBuf};

pub mod background;
mod directory;
pub mod document;
pub mod fields;
pub mod index;
pub mod keyframes;
pub mod query;
pub mod search;

pub use index::{Checkpoint, Indexer, Progress, SearchIndex, reindex};
pub use query::QueryError;
pub use search::{Hit, MAX_SESSIONS_MATCHED, SearchRequest, SearchResult, SessionsMatched, html_escape};

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("no search index at {0}; run `proctor reindex --data-dir DIR` to build it")]
    Missing(PathBuf),
    #[error("the search index at {0} is of another version; run `proctor reindex --data-dir DIR` to rebuild it")]
    Stale(PathBuf),
    #[error("the search index at {0} is being written by another process (a running `proctor up`?)")]
    Busy(PathBuf),
    #[error("cannot open the search index at {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("the index checkpoint cannot be read ({0}); run `proctor reindex --data-dir DIR`")]
    Checkpoint(String),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("search index: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error(transparent)]
    Recorder(#[from] proctor_recorder::RecorderError),
}

impl IndexError {
    pub(crate) fn open(path: &Path, error: impl std::fmt::Display) -> IndexError {
        IndexError::Open { path: path.to_path_buf(), message: error.to_string() }
    }
}

pub type Result<T, E = IndexError> = std::result::Result<T, E>;
