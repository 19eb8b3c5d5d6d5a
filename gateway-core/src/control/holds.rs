//! Held requests, as the gateway sees them: a session whose rules hold a
//! statement (or, in another protocol, a command or a file operation) asks
//! [`Holds::hold`] whether an approver already allowed that exact request in
//! its grant (then it runs, once) or opens (or finds) the review it waits on.

use std::future::Future;
use std::pin::Pin;

use proctor_schemas::{HeldKind, SessionId};

/// A request the rules hold, in a session under a grant.
#[derive(Clone, Debug)]
pub struct HoldRequest {
    pub grant_id: String,
    pub resource: String,
    /// The session the request was sent in, and its event there.
    pub session_id: SessionId,
    pub ref_seq: Option<u64>,
    /// What was held.
    pub kind: HeldKind,
    /// What reviewers read: for a statement, the whole query string (or the
    /// Parse's SQL), masked as everything recorded is.
    pub text: String,
    /// The keyed hash of the request exactly as sent: only the identical
    /// request runs once approved.
    pub text_hash: String,
    /// `SET/CLASS`, e.g. `ci/ddl`.
    pub rule: String,
    /// Who may decide the review besides the admin group (the rule set's
    /// `approval_group`).
    pub approval_group: Option<String>,
}

/// What became of a held statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HoldOutcome {
    /// An approver allowed this statement in this grant: it runs now, and
    /// the approval is used up.
    Run { review_id: String, approved_by: String },
    /// It waits for a decision: opened now (`opened`) or already open for
    /// the identical statement in this grant. Times in ms since the epoch.
    Held { review_id: String, opened: bool, expires_at: i64 },
}

pub type HoldFuture<'a> = Pin<Box<dyn Future<Output = Result<HoldOutcome, String>> + Send + 'a>>;

/// Decides held statements; `Err` (the store cannot be reached, the event
/// cannot be recorded) refuses the statement: fail closed.
pub trait Holds: Send + Sync + 'static {
    fn hold(&self, request: HoldRequest) -> HoldFuture<'_>;
}
