//! The vocabulary every other Proctor crate speaks: sessions and typed events,
//! one Arrow schema for all event kinds, the canonical byte encoding that the
//! WAL stores and the hash chain covers, and the segment manifest format.
//!
//! Architecture invariant: this crate performs no I/O. It knows nothing of
//! files, sockets, Parquet or tantivy; it only defines and converts data.
//!
//! The layers, from the typed model down to bytes:
//!
//! - [`Event`] / [`EventBody`]: what happened, one Rust type per event kind.
//! - [`Cells`]: an event flattened onto the [`COLUMNS`] of the schema (one
//!   optional [`Value`] per column). Every encoding goes through cells, so the
//!   WAL, the Parquet rows and the hash chain can never disagree.
//! - [`canonical`]: the deterministic byte form of a row (WAL payload, chain input).
//! - [`arrow`](mod@crate::arrow): Arrow schema, batch building and reading.
//! - [`chain`]: the per-session SHA-256 hash chain.
//! - [`manifest`]: the signed per-segment manifest.

pub mod arrow;
pub mod canonical;
pub mod chain;
mod columns;
mod error;
mod event;
mod ids;
pub mod manifest;
pub mod merkle;
mod row;
pub mod sample;
mod vocab;
pub mod vocabulary_doc;

pub use columns::{COLUMN_COUNT, COLUMNS, Cells, Column, ColumnDef, ColumnType, Header, RuleCount, Value};
pub use error::SchemaError;
pub use event::*;
pub use ids::{SessionId, Timestamp};
pub use row::Row;
pub use vocab::*;

/// Version of the event schema: the Arrow columns, their meaning per kind and
/// the canonical encoding. A change to any of them adds a version and a golden
/// file under `schemas/golden/`.
///
/// - v1: the first schema.
/// - v2: `grant_partially_approved`, an approval that leaves a grant pending.
/// - v3: `tokens` and `tokens_dropped` on results: the keyed tokens masking
///   wrote into every row, sampled or not, so a value is found wherever it
///   passed.
/// - v4: what multiplexed protocols need: `channel_id` on terminal, exec,
///   exit and file events (an SSH channel, an HTTP/2 stream); the
///   `port_forward` kind (`port`, `bytes_to_target`, `bytes_to_client`);
///   reviews of any request: a held command in `command`, a held file
///   operation in `path`, a held statement in `sql` as before.
/// - v5: interactive terminals: keystrokes recorded as `byte_count` and a
///   keyed `digest` (never the bytes), the `shell` kind, the `command` kind
///   (a command line recovered from the terminal's echo) and the `signal`
///   kind; `grant_certified` (an SSH user certificate issued for a grant);
///   the `flag` policy outcome (a typed command line a rule matched);
///   `target_path` and `sha256` on file operations.
/// - v6: `tokens` and `tokens_dropped` on `masking_applied`: the keyed tokens
///   masking wrote into output that carries them cut (a replacement that
///   keeps the secret's length: output no terminal shows, SFTP reads) or not
///   at all, so the value they hid is still found.
pub const SCHEMA_VERSION: u32 = 6;
