//! The control plane: the control session's events, grant policies, the
//! control store, grants and their credentials, reviews of held
//! statements, and the control API.

pub mod api;
mod authenticate;
mod grants;
mod holds;
mod live;
mod policy;
mod reviews;
mod session;
mod store;

pub use authenticate::GrantAuthenticator;
pub use grants::{
    ActionCounters, ApprovalView, Certified, ConnectionOffer, Control, ControlError, Credentials, GrantView, Offer,
    SshCertificateView, SshCertifier, is_grant_id, now_ms,
};
pub use holds::{HoldFuture, HoldOutcome, HoldRequest, Holds};
pub use live::{GrantEnd, Lease, LiveGrants};
pub use policy::{ApprovalConfig, ControlConfig, Decision, Policies, PolicyConfig};
pub use proctor_schemas::HeldKind;
pub use reviews::{MAX_PENDING_REVIEWS, ReviewView, sql_hash};
pub use session::ControlSession;
pub use store::{
    ControlStore, Grant, GrantFilter, GrantStatus, Review, ReviewFilter, ReviewStatus, STORE_VERSION, SqlStore,
    StoreError,
};
