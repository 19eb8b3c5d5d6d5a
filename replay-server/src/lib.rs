//! Proctor's replay server: the search and replay API investigators use
//! (axum, JSON, OIDC bearer tokens), and the client the CLI uses to reach it.
//!
//! Architecture invariant: no protocol parsing here. Recordings are read
//! through the recorder's reader and the indexer; every search and every read
//! of a recording is itself recorded before anything is returned: a read
//! that could not be recorded is refused.

pub mod api;
pub mod client;
pub mod console;
pub mod export;
pub mod filter;
pub mod ocsf;
pub mod render;
pub mod report;

pub use api::{AccessLog, ApiState, RecorderAccessLog, access_events, router, serve};
pub use console::dev_issuer::DevIssuerEndpoints;
pub use console::{Console, ConsoleConfig};
pub use filter::SessionFilter;
