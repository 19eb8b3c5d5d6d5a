//! Proctor's search and replay API and the investigators' console (axum).
//!
//! Architecture invariant: replay-server parses no protocol traffic; it reads
//! recordings through the recorder and the indexer, and records every read
//! of a recording as an event.
