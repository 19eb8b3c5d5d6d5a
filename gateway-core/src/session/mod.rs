//! The session lifecycle every protocol adapter shares, written once:
//!
//! ```text
//!  listen::serve        accept, one task per connection on a session thread
//!    └─ guard::guarded   a panic still ends the session, recorded
//!         ├─ (adapter)   the protocol's start-up and its credential
//!         ├─ admit       identity → grant → rules → masking profile → lease
//!         ├─ (adapter)   session_start recorded, the target reached
//!         ├─ (adapter)   the relay: record, then forward (one task owns the
//!         │              recorder; a multiplexed protocol's tasks send to
//!         │              it through a `SessionLog`)
//!         │    └─ ended  shutdown or the lease's end, one future
//!         └─ end         session_end with its reason
//! ```
//!
//! A refusal is a [`Refusal`], in the gateway's terms; the adapter alone
//! turns it into its protocol's native error (a PostgreSQL `FATAL`, an SSH
//! disconnect). The adapter keeps only its connection engine.

mod admit;
mod ended;
mod guard;
mod listen;
mod log;
mod run;

pub use admit::{Admitted, admit};
pub use ended::{Interrupted, ended, shutting_down, step};
pub use guard::guarded;
pub use listen::{bind, serve};
pub use log::{LOG_QUEUE, SessionLog};
pub use run::{Engine, Refused, RuleScope, Start, recorder_refusal, run};

use std::sync::atomic::{AtomicU64, Ordering};

use proctor_schemas::{Direction, EndReason, SessionEnd};

use crate::EventSink;
use crate::recording::{Record, SessionRecorder};

/// How a session ended, and what to tell the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ending {
    pub reason: EndReason,
    pub message: Option<String>,
    /// The client already received an error explaining the end.
    pub client_told: bool,
}

impl Ending {
    pub fn new(reason: EndReason, message: impl Into<Option<String>>) -> Ending {
        Ending { reason, message: message.into(), client_told: false }
    }
}

/// Why a client is not let in, in the gateway's terms: what it may not do
/// (`reason`, recorded as the session's end), what happened (`message`) and
/// what to do about it (`hint`). The adapter maps it to its protocol's
/// native error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: EndReason,
    pub message: String,
    pub hint: Option<String>,
    /// A service Proctor depends on did not answer (the authenticator's
    /// issuer, the control store): the same attempt may succeed later
    /// (PostgreSQL's `08004`, HTTP's `503`).
    pub unavailable: bool,
}

impl Refusal {
    pub fn new(reason: EndReason, message: impl Into<String>) -> Refusal {
        Refusal { reason, message: message.into(), hint: None, unavailable: false }
    }

    pub fn with_hint(self, hint: impl Into<String>) -> Refusal {
        Refusal { hint: Some(hint.into()), ..self }
    }
}

/// What the gateway's wiring (metrics, the control plane's offers) sees of a
/// resource being served, whatever its protocol.
pub trait RunningResource: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn protocol(&self) -> crate::config::ResourceProtocol;
    /// Its connections, counted.
    fn sessions(&self) -> &SessionCounters;
}

/// Connections of a resource: open now, and accepted since start.
#[derive(Debug, Default)]
pub struct SessionCounters {
    live: AtomicU64,
    total: AtomicU64,
}

impl SessionCounters {
    pub fn live(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Counts a connection in; it is counted out when the guard is dropped
    /// (also on a panic).
    pub fn enter(&self) -> Entered<'_> {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.live.fetch_add(1, Ordering::Relaxed);
        Entered(self)
    }
}

/// One open connection; counted out when dropped.
pub struct Entered<'a>(&'a SessionCounters);

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a panic said, for the session's end and the log.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown failure".to_string())
}

/// Records the session's end (its last event) and flushes it.
pub async fn end<S: EventSink>(recorder: &mut SessionRecorder<S>, ending: Ending) {
    recorder.push(Direction::Gateway, SessionEnd { reason: ending.reason, message: ending.message }.into());
    if let Err(error) = recorder.flush().await {
        tracing::error!(session_id = %recorder.session_id(), %error, "could not record the end of a session");
    }
}
