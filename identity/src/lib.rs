//! Who is calling Proctor, and over what: OIDC token verification and the
//! embedded dev issuer ([`token`]), TLS configuration for listeners, the API
//! and targets ([`tls`]), and the HTTP plumbing of the API and of fetching an
//! issuer's keys ([`http`]).
//!
//! Nothing here knows a protocol Proctor fronts: the replay server checks its
//! callers' tokens with this crate alone, without compiling any adapter.

mod error;
pub mod http;
pub mod tls;
pub mod token;

pub use error::ConfigError;
