//! Proctor's recorder: the durable, tamper-evident store of every session.
//!
//! - [`Recorder`] / [`Sink`]: events go in through a bounded channel; an
//!   append completes only once its event is in the write-ahead log.
//! - WAL files are sealed into zstd Parquet segments sorted by
//!   (session_id, seq), each with a manifest signed by the deployment's
//!   ed25519 key and linked to the manifest before it.
//! - [`reader`] reads sessions back across segments and the WAL;
//!   [`verify`] checks a data dir end to end; [`synth`] fills one with
//!   realistic synthetic sessions; [`evidence`] exports sessions as a
//!   signed bundle that proves what it carries, and checks one offline.
//!
//! Architecture invariant: this crate knows nothing of protocols or HTTP. It
//! is the only crate that writes Parquet.

pub mod config;
mod error;
pub mod evidence;
pub mod keys;
pub mod layout;
pub mod reader;
mod recorder;
mod seal;
pub mod segment;
mod shared;
pub mod synth;
pub mod verify;
pub mod wal;
mod writer;

pub use config::{ByteSize, FsyncPolicy, RecorderSettings};
pub use error::{RecordError, RecorderError, Result};
pub use recorder::{Recorder, RecoveryReport, Sink, lower_priority};
pub use shared::Stats;
