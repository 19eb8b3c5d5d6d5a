//! Clients of a resource present a grant's credential: the grant id as the
//! user name, its secret as the password. [`GrantAuthenticator`] checks it
//! against the store and holds the session to its grant.

use std::sync::Arc;

use super::grants::{credential_hash, is_grant_id, now_ms};
use super::live::{Lease, LiveGrants};
use super::store::{ControlStore, GrantStatus};
use crate::auth::{AuthError, AuthRequest, Authenticator, Identity, SharedSecretAuthenticator, constant_time_eq};

/// Result rows a grant's sessions keep (masked), unless its policy says
/// otherwise: a few, where a masking profile applies.
pub const DEFAULT_SAMPLE_ROWS: usize = 5;

/// Grants first; a resource's shared secret (if it still has one) for other
/// user names.
pub struct GrantAuthenticator<S: ControlStore> {
    store: S,
    live: Arc<LiveGrants>,
    /// Result rows sampled per policy (by name): where a grant's profile
    /// applies, its sessions keep that many rows of each result, masked.
    samples: std::collections::HashMap<String, usize>,
    shared: SharedSecretAuthenticator,
    /// Resources that still accept a shared secret.
    with_secret: Vec<String>,
}

impl<S: ControlStore> GrantAuthenticator<S> {
    pub fn new(store: S, live: Arc<LiveGrants>, secrets: Vec<(String, String)>) -> Self {
        let with_secret = secrets.iter().map(|(r, _)| r.clone()).collect();
        GrantAuthenticator {
            store,
            live,
            samples: std::collections::HashMap::new(),
            shared: SharedSecretAuthenticator::new(secrets),
            with_secret,
        }
    }

    /// Each policy's result sampling (policies not listed sample
    /// [`DEFAULT_SAMPLE_ROWS`]).
    pub fn with_samples(mut self, samples: impl IntoIterator<Item = (String, usize)>) -> Self {
        self.samples = samples.into_iter().collect();
        self
    }
}

impl<S: ControlStore> Authenticator for GrantAuthenticator<S> {
    async fn authenticate(&self, request: &AuthRequest<'_>) -> Result<Identity, AuthError> {
        if !is_grant_id(request.user) {
            if self.with_secret.iter().any(|r| r == request.resource) {
                return self.shared.authenticate(request).await;
            }
            return Err(AuthError::Refused(format!(
                "connect with a grant's credentials (user g_...): request one with `proctor grant request --resource {} --ttl 15m --reason ...`",
                request.resource
            )));
        }
        let refused = || {
            AuthError::Refused(format!(
                "password authentication failed for grant {}: wrong or unknown credential",
                request.user
            ))
        };
        let grant = self.store.get(request.user).await.map_err(|error| {
            tracing::error!(%error, "cannot check a grant credential");
            AuthError::Unavailable("the control store cannot be reached".to_string())
        })?;
        let Some(grant) = grant else { return Err(refused()) };
        // The attempt is the grant's, whoever made it: recorded under the
        // grant and its subject (the client is told only what it was told
        // before).
        let owned = |message: String| AuthError::RefusedGrant {
            message,
            grant_id: grant.id.clone(),
            subject: grant.subject.clone(),
        };
        let presented = credential_hash(request.password);
        let matches =
            grant.credential_hash.as_deref().is_some_and(|h| constant_time_eq(h.as_bytes(), presented.as_bytes()));
        if !matches {
            return Err(owned(refused().to_string()));
        }
        // Past here the caller holds the grant's credential: tell them plainly.
        if grant.resource != request.resource {
            return Err(owned(format!(
                "grant {} is for resource {}, not {}",
                grant.id, grant.resource, request.resource
            )));
        }
        let why = grant.status_reason.clone().unwrap_or_default();
        match grant.status {
            GrantStatus::Active if grant.expires_at > now_ms() => {}
            GrantStatus::Active | GrantStatus::Expired => {
                return Err(owned(format!(
                    "grant {} has expired ({why}); request a new one with `proctor grant request`",
                    grant.id
                )));
            }
            GrantStatus::Revoked => {
                return Err(owned(format!("grant {} was {why}; request a new one", grant.id)));
            }
            GrantStatus::Pending | GrantStatus::Denied => {
                return Err(owned(format!("grant {} is {}: {why}", grant.id, grant.status.as_str())));
            }
        }
        // A grant without a masking profile samples nothing: no raw value
        // reaches the recording (the session checks again).
        let sample_rows = match grant.masking_profile.as_deref() {
            None | Some("none") => 0,
            Some(_) => {
                grant.policy.as_deref().and_then(|p| self.samples.get(p)).copied().unwrap_or(DEFAULT_SAMPLE_ROWS)
            }
        };
        Ok(Identity {
            subject: grant.subject,
            groups: grant.groups,
            grant_id: Some(grant.id),
            masking_profile: grant.masking_profile,
            rules: grant.rules,
            expires_at: Some(grant.expires_at),
            sample_rows: Some(sample_rows),
        })
    }

    fn lease(&self, identity: &Identity) -> Option<Lease> {
        identity.grant_id.as_deref().map(|id| self.live.lease(id, identity.expires_at))
    }
}
