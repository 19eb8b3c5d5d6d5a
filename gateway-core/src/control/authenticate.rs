//! Clients of a resource present a grant's credential: the grant id as the
//! user name and its secret as the password (or both as a bearer token), or
//! a certificate Proctor's CA signed for the grant. [`GrantAuthenticator`]
//! checks it against the store and holds the session to its grant.

use std::sync::Arc;

use super::grants::{credential_hash, is_grant_id, now_ms};
use super::live::{Lease, LiveGrants};
use super::store::{ControlStore, GrantStatus};
use crate::auth::{
    AuthError, AuthRequest, Authenticator, Credential, Identity, SharedSecretAuthenticator, constant_time_eq,
};

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
        // The grant is named by the user name, or by the bearer token.
        let named = match request.credential {
            Credential::Bearer(_) => request.secret().map_or("", |(grant, _)| grant),
            _ => request.user,
        };
        if !is_grant_id(named) {
            if self.with_secret.iter().any(|r| r == request.resource) {
                return self.shared.authenticate(request).await;
            }
            return Err(AuthError::Refused(format!(
                "connect with a grant's credentials (user g_...): request one with `proctor grant request --resource {} --ttl 15m --reason ...`",
                request.resource
            )));
        }
        let refused = || {
            AuthError::Refused(format!("password authentication failed for grant {named}: wrong or unknown credential"))
        };
        let grant = self.store.get(named).await.map_err(|error| {
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
        match (request.credential, request.secret()) {
            (Credential::Certificate { valid_before }, _) => {
                // Signed by Proctor for this grant (the adapter checked the
                // signature and the principal): still valid, and not
                // outliving the grant (a "forever" certificate, or a bound
                // that overflowed to zero or below, is neither).
                if valid_before <= now_ms() {
                    return Err(owned(format!("the certificate for grant {} has expired", grant.id)));
                }
                // (A grant revoked or ended has its end brought forward:
                // its status, checked below, says why.)
                if valid_before > grant.expires_at && grant.status == GrantStatus::Active {
                    return Err(owned(format!(
                        "the certificate for grant {} outlives the grant; request a new one",
                        grant.id
                    )));
                }
            }
            (_, Some((_, secret))) => {
                let presented = credential_hash(secret);
                let matches = grant
                    .credential_hash
                    .as_deref()
                    .is_some_and(|h| constant_time_eq(h.as_bytes(), presented.as_bytes()));
                if !matches {
                    return Err(owned(refused().to_string()));
                }
            }
            (_, None) => return Err(owned(refused().to_string())),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::store::{Grant, SqlStore};

    const SECRET: &str = "pct_s3cret";

    fn grant(id: &str, status: GrantStatus, expires_at: i64) -> Grant {
        Grant {
            id: id.into(),
            version: 0,
            subject: "ci-bot".into(),
            issuer: "proctor-dev".into(),
            groups: vec!["ci".into()],
            resource: "db".into(),
            reason: "deploy".into(),
            ttl_secs: 3600,
            status,
            status_reason: Some("approved by policy".into()),
            decided_by: None,
            policy: Some("agents".into()),
            approval_group: None,
            approvals_needed: 0,
            approvers: Vec::new(),
            created_at: 0,
            decided_at: None,
            expires_at,
            credential_hash: Some(credential_hash(SECRET.as_bytes())),
            rules: None,
            masking_profile: None,
        }
    }

    fn request<'a>(resource: &'a str, user: &'a str, credential: Credential<'a>) -> AuthRequest<'a> {
        AuthRequest { resource, user, credential, client_addr: "127.0.0.1:1".parse().unwrap() }
    }

    /// A grant's credential as a password or a bearer token, or a certificate
    /// Proctor signed for it, opens its resource while the grant is live; a
    /// wrong secret, a certificate outliving the grant, a revoked grant, a
    /// bearer token for a shared secret do not.
    #[tokio::test]
    async fn every_kind_of_credential_opens_a_live_grant_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("control.db").display());
        let store = SqlStore::open(&url).await.unwrap();
        let later = now_ms() + 3_600_000;
        store.insert(&grant("g_00000000000000aa", GrantStatus::Active, later)).await.unwrap();
        store.insert(&grant("g_00000000000000bb", GrantStatus::Revoked, later)).await.unwrap();
        let auth = GrantAuthenticator::new(store, Arc::default(), vec![("shared".into(), "letmein".into())]);
        let check = |resource: &'static str, user: &'static str, credential: Credential<'static>| {
            let auth = &auth;
            async move { auth.authenticate(&request(resource, user, credential)).await }
        };

        let granted = check("db", "g_00000000000000aa", Credential::Password(SECRET.as_bytes())).await.unwrap();
        assert_eq!(granted.grant_id.as_deref(), Some("g_00000000000000aa"));
        let bearer = check("db", "", Credential::Bearer("g_00000000000000aa.pct_s3cret")).await.unwrap();
        assert_eq!(bearer.subject, "ci-bot");
        let certified = check("db", "g_00000000000000aa", Credential::Certificate { valid_before: later }).await;
        assert_eq!(certified.unwrap().grant_id.as_deref(), Some("g_00000000000000aa"));

        let refusals = [
            check("db", "g_00000000000000aa", Credential::Password(b"pct_wrong")).await,
            check("db", "", Credential::Bearer("g_00000000000000aa.pct_wrong")).await,
            check("db", "", Credential::Bearer("pct_s3cret")).await,
            check("db", "g_00000000000000aa", Credential::Certificate { valid_before: later + 1 }).await,
            check("db", "g_00000000000000aa", Credential::Certificate { valid_before: now_ms() - 1 }).await,
            check("db", "g_00000000000000aa", Credential::Certificate { valid_before: -1 }).await,
            check("db", "g_00000000000000bb", Credential::Password(SECRET.as_bytes())).await,
            check("db", "g_00000000000000bb", Credential::Certificate { valid_before: later }).await,
            check("other", "g_00000000000000aa", Credential::Certificate { valid_before: later }).await,
            check("shared", "anyone", Credential::Bearer("letmein.x")).await,
        ];
        for (i, refused) in refusals.into_iter().enumerate() {
            assert!(refused.is_err(), "case {i}: {refused:?}");
        }
        let outlives = check("db", "g_00000000000000aa", Credential::Certificate { valid_before: later + 1 }).await;
        assert!(outlives.unwrap_err().to_string().contains("outlives the grant"));
        let shared = check("shared", "anyone", Credential::Password(b"letmein")).await.unwrap();
        assert_eq!((shared.subject.as_str(), shared.grant_id), ("anyone", None));
    }
}
