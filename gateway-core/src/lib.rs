//! Proctor's protocol-neutral core: the session lifecycle every protocol
//! adapter runs on ([`session`]), grants, reviews and the control plane
//! ([`control`]), resources by protocol ([`config`]), authentication
//! ([`auth`]) and recording through an [`EventSink`] ([`recording`]). The
//! adapters (`adapters/postgres`, ...) depend on it, never on each other;
//! it compiles no protocol's parser.
//!
//! Architecture invariant: gateway-core knows nothing of Parquet, tantivy or
//! the web console, and never imports the recorder. It hands events to an
//! [`EventSink`] (the binary wires the recorder in) and treats a refused event
//! as a reason to fail closed: what was not recorded does not pass.

pub mod auth;
pub mod config;
pub mod conn;
pub mod control;
mod error;
pub mod recording;
pub mod session;
mod sink;
pub mod threads;

pub use control::ControlSession;
pub use error::GatewayError;
pub use proctor_identity::{http, tls, token as identity};
pub use proctor_masking as masking;
pub use sink::{EventSink, SinkError};
