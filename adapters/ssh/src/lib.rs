//! Proctor's SSH adapter: russh towards clients and towards targets, on
//! gateway-core's session lifecycle.

pub mod flow;
pub mod host_key;
