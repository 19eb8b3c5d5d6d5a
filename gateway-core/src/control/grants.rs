//! Grants: requested by a subject for one resource and a while, decided by
//! policy or by approvers, usable with a credential shown once, ended by
//! expiry or revocation. Every step is recorded in the control session.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proctor_schemas::{EndReason, GrantAction, GrantEvent, ReviewAction, Timestamp};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::live::{GrantEnd, LiveGrants};
use super::policy::{Decision, Policies};
use super::session::ControlSession;
use super::store::{ControlStore, Grant, GrantFilter, GrantStatus, StoreError};
use crate::EventSink;
use crate::identity::Identity;

/// How clients reach a resource, by protocol: what a grant's credential is
/// offered with.
#[derive(Clone, Debug)]
pub enum Offer {
    /// A PostgreSQL resource: where Proctor listens for it, and the database
    /// named in the libpq URL.
    Postgres { host: String, port: u16, database: String },
    /// An SSH resource: where Proctor listens for it, and Proctor's host key
    /// (an OpenSSH public key line) for clients to pin.
    Ssh { host: String, port: u16, host_key: String },
}

/// A grant's connection offer, shown with its credential: how to connect,
/// in the terms of the resource's protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "protocol", rename_all = "lowercase")]
pub enum ConnectionOffer {
    /// libpq's terms: the URL (the credential in it), and its parts.
    Postgres { url: String, host: String, port: u16, database: String, user: String, sslmode: &'static str },
    /// OpenSSH's terms: an `ssh://` URL (no secret in it: the credential is
    /// the password), the `known_hosts` line that pins Proctor, and a ready
    /// command line.
    Ssh { url: String, host: String, port: u16, user: String, known_hosts: String, command: String },
}

/// Why a control request failed, with the HTTP status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> ControlError {
        ControlError::Unavailable(format!("{e}; try again"))
    }
}

/// A grant as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct GrantView {
    pub id: String,
    pub status: GrantStatus,
    /// Why it is in its status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    pub subject: String,
    /// The issuer that vouched for the subject.
    pub issuer: String,
    pub groups: Vec<String>,
    pub resource: String,
    pub reason: String,
    /// The access asked for, e.g. `15m`.
    pub ttl: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// Pending: when the request lapses undecided. Active: when access ends.
    pub expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masking_profile: Option<String>,
    /// Whether its credential was issued (it is shown only then, once).
    pub credential_issued: bool,
    /// Present once: in the answer that issued it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ApprovalView {
    pub group: String,
    pub needed: i64,
    pub approvers: Vec<String>,
}

/// A grant's credential, shown once.
#[derive(Clone, Debug, Serialize)]
pub struct Credentials {
    pub user: String,
    pub password: String,
    /// A libpq connection URL (PostgreSQL resources).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// How to connect, by the resource's protocol.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offer: Option<ConnectionOffer>,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub(super) fn rfc3339(ms: i64) -> String {
    Timestamp(ms.saturating_mul(1_000_000)).to_rfc3339()
}

pub(super) fn random(bytes: usize) -> Vec<u8> {
    let mut out = vec![0u8; bytes];
    getrandom::fill(&mut out).expect("the system's random source failed");
    out
}

/// The hash a credential is kept as.
pub fn credential_hash(secret: &[u8]) -> String {
    hex::encode(Sha256::digest(secret))
}

/// Whether `user` names a grant (grants' credentials use the grant id as user).
pub fn is_grant_id(user: &str) -> bool {
    user.len() == 18 && user.starts_with("g_") && user[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Steps this gateway recorded, by action (for metrics): grants' or
/// reviews'.
#[derive(Debug)]
pub struct ActionCounters<A: 'static> {
    actions: &'static [A],
    name: fn(&A) -> &'static str,
    counts: Vec<std::sync::atomic::AtomicU64>,
}

impl<A: PartialEq> ActionCounters<A> {
    /// Counts of each of `actions`, named by `name`.
    pub fn new(actions: &'static [A], name: fn(&A) -> &'static str) -> Self {
        ActionCounters { actions, name, counts: actions.iter().map(|_| Default::default()).collect() }
    }

    pub(super) fn add(&self, action: A) {
        if let Some(i) = self.actions.iter().position(|a| *a == action) {
            self.counts[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Each action (`grant_requested`, ...) and its count.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        self.actions
            .iter()
            .zip(&self.counts)
            .map(|(a, c)| ((self.name)(a), c.load(std::sync::atomic::Ordering::Relaxed)))
            .collect()
    }
}

/// Signs short-lived OpenSSH user certificates for grants: the SSH
/// adapter's user CA, given to the control plane by the binary.
pub trait SshCertifier: Send + Sync + 'static {
    /// A user certificate (OpenSSH text) for `public_key` (an OpenSSH
    /// public key line), principal `principal`, valid from now until
    /// `valid_before` (Unix seconds), `key_id` naming it in the target's
    /// and Proctor's logs. The error says what is wrong with the key.
    fn certify(&self, public_key: &str, principal: &str, key_id: &str, valid_before: u64) -> Result<Certified, String>;
}

/// A certificate signed, and what the record says of it.
#[derive(Clone, Debug)]
pub struct Certified {
    /// The certificate, in OpenSSH's format.
    pub certificate: String,
    /// The certified key's fingerprint (`SHA256:…`).
    pub fingerprint: String,
    pub serial: u64,
}

/// An SSH user certificate for a grant, as the API returns it.
#[derive(Clone, Debug, Serialize)]
pub struct SshCertificateView {
    pub grant: String,
    /// The certificate, in OpenSSH's format (`ssh-ed25519-cert-v01@openssh.com AAAA…`),
    /// to be saved beside the private key as `KEY-cert.pub`.
    pub certificate: String,
    /// The user name to log in as: the grant.
    pub user: String,
    pub valid_before: String,
    pub host: String,
    pub port: u16,
    /// The line that pins Proctor's host key.
    pub known_hosts: String,
}

/// The control plane's grant logic over a store.
pub struct Control<S: ControlStore, K: EventSink> {
    counters: ActionCounters<GrantAction>,
    pub(super) review_counters: ActionCounters<ReviewAction>,
    pub(super) store: S,
    policies: Policies,
    offers: HashMap<String, Offer>,
    pub(super) session: ControlSession<K>,
    live: Arc<LiveGrants>,
    /// How long a grant request, or a held statement, waits for a decision.
    pub(super) pending_ttl: Duration,
    pub(super) admin_group: String,
    certifier: Option<Arc<dyn SshCertifier>>,
}

impl<S: ControlStore, K: EventSink> Control<S, K> {
    pub fn new(
        store: S,
        policies: Policies,
        offers: HashMap<String, Offer>,
        session: ControlSession<K>,
        live: Arc<LiveGrants>,
        pending_ttl: Duration,
        admin_group: String,
    ) -> Self {
        Control {
            counters: ActionCounters::new(GrantAction::ALL, GrantAction::as_str),
            review_counters: ActionCounters::new(ReviewAction::ALL, ReviewAction::as_str),
            store,
            policies,
            offers,
            session,
            live,
            pending_ttl,
            admin_group,
            certifier: None,
        }
    }

    /// Signs SSH user certificates for grants on SSH resources.
    pub fn with_ssh_certifier(mut self, certifier: Arc<dyn SshCertifier>) -> Self {
        self.certifier = Some(certifier);
        self
    }

    /// An SSH user certificate for `public_key`, for the requester of an
    /// active grant on an SSH resource: principal the grant, valid until
    /// the grant ends (never after). The grant is still checked live at
    /// each connection: revoked, its certificates open nothing.
    pub async fn ssh_certificate(
        &self,
        who: &Identity,
        id: &str,
        public_key: &str,
    ) -> Result<SshCertificateView, ControlError> {
        let grant = self.visible(who, id).await?;
        if !owns(who, &grant) {
            return Err(ControlError::Forbidden(format!(
                "grant {id} is {}'s: only its requester gets certificates for it",
                grant.subject
            )));
        }
        if grant.status != GrantStatus::Active || grant.expires_at <= now_ms() {
            let status = if grant.expires_at <= now_ms() { GrantStatus::Expired } else { grant.status };
            return Err(ControlError::Conflict(format!(
                "grant {id} is {}: a certificate is issued for an active grant only",
                status.as_str()
            )));
        }
        let Some(Offer::Ssh { host, port, host_key }) = self.offers.get(&grant.resource) else {
            return Err(ControlError::BadRequest(format!(
                "resource {:?} is not an SSH resource: certificates are for SSH resources",
                grant.resource
            )));
        };
        let Some(certifier) = &self.certifier else {
            return Err(ControlError::Unavailable("this gateway has no SSH user CA".to_string()));
        };
        // Whole seconds, rounded down: the certificate never outlives the grant.
        let valid_before = u64::try_from(grant.expires_at / 1000).unwrap_or(0);
        let key_id = format!("proctor grant {} for {}", grant.id, grant.subject);
        let certified = certifier
            .certify(public_key.trim(), &grant.id, &key_id, valid_before)
            .map_err(|e| ControlError::BadRequest(format!("ssh_public_key: {e}")))?;
        let valid_until = rfc3339(i64::try_from(valid_before).unwrap_or(0).saturating_mul(1000));
        // Issued only once recorded: which key, which certificate.
        let message = format!(
            "SSH user certificate serial {} for key {}, valid until {valid_until}",
            certified.serial, certified.fingerprint
        );
        self.record(GrantAction::Certified, &grant, &who.subject, Some(message), false).await?;
        let certificate = certified.certificate;
        let pattern = if *port == 22 { host.clone() } else { format!("[{host}]:{port}") };
        let key: Vec<&str> = host_key.split_whitespace().take(2).collect();
        Ok(SshCertificateView {
            grant: grant.id.clone(),
            certificate,
            user: grant.id.clone(),
            valid_before: valid_until,
            host: host.clone(),
            port: *port,
            known_hosts: format!("{pattern} {}", key.join(" ")),
        })
    }

    /// Grant steps this gateway recorded.
    pub fn counters(&self) -> &ActionCounters<GrantAction> {
        &self.counters
    }

    /// Review steps this gateway recorded.
    pub fn review_counters(&self) -> &ActionCounters<ReviewAction> {
        &self.review_counters
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn live(&self) -> &Arc<LiveGrants> {
        &self.live
    }

    pub(super) fn is_admin(&self, who: &Identity) -> bool {
        who.in_group(&self.admin_group)
    }

    /// Whether `who` decides `grant` (approves, denies, revokes it): the
    /// admin group, and the grant's approval group.
    fn decides(&self, who: &Identity, grant: &Grant) -> bool {
        self.is_admin(who) || grant.approval_group.as_deref().is_some_and(|g| who.in_group(g))
    }

    /// Whether `who` sees `grant` at all; to anyone else it does not exist.
    fn sees(&self, who: &Identity, grant: &Grant) -> bool {
        owns(who, grant) || self.decides(who, grant)
    }

    /// Loads a grant `who` may see (`404` otherwise, as for no grant).
    async fn visible(&self, who: &Identity, id: &str) -> Result<Grant, ControlError> {
        let grant = self.load(id).await?;
        if !self.sees(who, &grant) {
            return Err(ControlError::NotFound(format!("there is no grant {id}")));
        }
        Ok(grant)
    }

    fn view(&self, grant: &Grant, credentials: Option<Credentials>) -> GrantView {
        // Past its time a grant is over, whether or not the sweep has
        // marked it yet.
        let (status, status_reason) = match grant.status {
            GrantStatus::Active | GrantStatus::Pending if grant.expires_at <= now_ms() => {
                let reason = match grant.status {
                    GrantStatus::Active => format!("expired at {}", rfc3339(grant.expires_at)),
                    _ => format!("no decision before {}; request again", rfc3339(grant.expires_at)),
                };
                (GrantStatus::Expired, Some(reason))
            }
            status => (status, grant.status_reason.clone()),
        };
        GrantView {
            id: grant.id.clone(),
            status,
            status_reason,
            subject: grant.subject.clone(),
            issuer: grant.issuer.clone(),
            groups: grant.groups.clone(),
            resource: grant.resource.clone(),
            reason: grant.reason.clone(),
            ttl: humantime::format_duration(Duration::from_secs(grant.ttl_secs.max(0) as u64)).to_string(),
            created_at: rfc3339(grant.created_at),
            decided_at: grant.decided_at.map(rfc3339),
            decided_by: grant.decided_by.clone(),
            expires_at: rfc3339(grant.expires_at),
            policy: grant.policy.clone(),
            approval: grant.approval_group.as_ref().map(|group| ApprovalView {
                group: group.clone(),
                needed: grant.approvals_needed,
                approvers: grant.approvers.clone(),
            }),
            rules: grant.rules.clone(),
            masking_profile: grant.masking_profile.clone(),
            credential_issued: grant.credential_hash.is_some(),
            credentials,
        }
    }

    /// A new credential for `grant`: the secret (returned) and its hash (kept).
    fn issue(&self, grant: &mut Grant) -> Credentials {
        let password = format!("pct_{}", URL_SAFE_NO_PAD.encode(random(32)));
        grant.credential_hash = Some(credential_hash(password.as_bytes()));
        let offer = self.offers.get(&grant.resource).map(|offer| match offer {
            Offer::Postgres { host, port, database } => ConnectionOffer::Postgres {
                url: format!(
                    "postgresql://{}:{}@{}:{}/{}?sslmode=require",
                    grant.id,
                    password,
                    url_host(host),
                    port,
                    encode_path(database)
                ),
                host: host.clone(),
                port: *port,
                database: database.clone(),
                user: grant.id.clone(),
                sslmode: "require",
            },
            Offer::Ssh { host, port, host_key } => {
                let pattern = if *port == 22 { host.clone() } else { format!("[{host}]:{port}") };
                let key: Vec<&str> = host_key.split_whitespace().take(2).collect();
                ConnectionOffer::Ssh {
                    url: format!("ssh://{}@{}:{port}", grant.id, url_host(host)),
                    host: host.clone(),
                    port: *port,
                    user: grant.id.clone(),
                    known_hosts: format!("{pattern} {}", key.join(" ")),
                    command: format!("ssh -p {port} {}@{host}", grant.id),
                }
            }
        });
        let url = match &offer {
            Some(ConnectionOffer::Postgres { url, .. } | ConnectionOffer::Ssh { url, .. }) => url.clone(),
            None => String::new(),
        };
        Credentials { user: grant.id.clone(), password, url, offer }
    }

    /// Records a grant step. `applied`: the step already took effect (a
    /// denial, revocation or expiry stands even unrecorded: fail closed),
    /// which the error then says.
    async fn record(
        &self,
        action: GrantAction,
        grant: &Grant,
        actor: &str,
        message: Option<String>,
        applied: bool,
    ) -> Result<(), ControlError> {
        let event = GrantEvent {
            action,
            grant_id: grant.id.clone(),
            resource: Some(grant.resource.clone()),
            subject: Some(grant.subject.clone()),
            groups: grant.groups.clone(),
            actor: Some(actor.to_string()),
            expires_at: Some(Timestamp(grant.expires_at.saturating_mul(1_000_000))),
            message,
        };
        self.session.record(event).await.map_err(|e| {
            ControlError::Unavailable(if applied {
                format!(
                    "grant {} is {}, but Proctor could not record it ({}); tell the operator",
                    grant.id,
                    grant.status.as_str(),
                    e.0
                )
            } else {
                format!("Proctor could not record this ({}); nothing was changed, try again later", e.0)
            })
        })?;
        self.counters.add(action);
        Ok(())
    }

    /// A subject asks for `resource` for `ttl`, saying why.
    pub async fn request(
        &self,
        who: &Identity,
        resource: &str,
        ttl: Duration,
        reason: &str,
    ) -> Result<GrantView, ControlError> {
        if !self.offers.contains_key(resource) {
            let mut known: Vec<&str> = self.offers.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err(ControlError::NotFound(format!(
                "there is no resource {resource:?} (resources: {})",
                known.join(", ")
            )));
        }
        if ttl.is_zero() {
            return Err(ControlError::BadRequest("ttl must be positive, e.g. 15m".into()));
        }
        if reason.trim().is_empty() {
            return Err(ControlError::BadRequest("a reason is required: say why you need access".into()));
        }
        if reason.chars().count() > MAX_REASON {
            return Err(ControlError::BadRequest(format!("the reason is longer than {MAX_REASON} characters")));
        }
        let now = now_ms();
        let id = format!("g_{}", hex::encode(random(8)));
        let decision = self.policies.decide(&who.groups, resource, ttl);
        let policy = match &decision {
            Decision::Approve { policy } | Decision::Approval { policy, .. } => Some(policy.clone()),
            Decision::Deny { policy, .. } => policy.clone(),
        };
        let chosen = policy.as_deref().and_then(|p| self.policies.by_name(p));
        let mut grant = Grant {
            id,
            version: 0,
            subject: who.subject.clone(),
            issuer: who.issuer.clone(),
            groups: who.groups.clone(),
            resource: resource.to_string(),
            reason: reason.to_string(),
            ttl_secs: ttl.as_secs().max(1) as i64,
            status: GrantStatus::Pending,
            status_reason: None,
            decided_by: None,
            policy: policy.clone(),
            approval_group: None,
            approvals_needed: 0,
            approvers: Vec::new(),
            created_at: now,
            decided_at: None,
            expires_at: now + self.pending_ttl.as_millis() as i64,
            credential_hash: None,
            rules: chosen.and_then(|p| p.rules.clone()),
            masking_profile: chosen.and_then(|p| Policies::masking_for(p, &who.groups)),
        };
        // The request itself is recorded first, whatever is decided.
        self.record(GrantAction::Requested, &grant, &who.subject, Some(reason.to_string()), false).await?;
        let mut credentials = None;
        let (action, message) = match decision {
            Decision::Approve { policy } => {
                grant.status = GrantStatus::Active;
                grant.decided_at = Some(now);
                grant.decided_by = Some("policy".to_string());
                grant.expires_at = now + grant.ttl_secs * 1000;
                grant.status_reason = Some(format!("approved by policy {policy}"));
                credentials = Some(self.issue(&mut grant));
                (GrantAction::Approved, grant.status_reason.clone())
            }
            Decision::Approval { policy, group, count } => {
                grant.approval_group = Some(group.clone());
                grant.approvals_needed = i64::from(count);
                grant.status_reason = Some(format!(
                    "policy {policy} needs {count} approval(s) from group {group}; ask an approver to run `proctor grant approve {}`",
                    grant.id
                ));
                (GrantAction::Requested, None)
            }
            Decision::Deny { reason, .. } => {
                grant.status = GrantStatus::Denied;
                grant.decided_at = Some(now);
                grant.decided_by = Some("policy".to_string());
                grant.expires_at = now;
                grant.status_reason = Some(reason);
                (GrantAction::Denied, grant.status_reason.clone())
            }
        };
        if action != GrantAction::Requested {
            // Recorded before the grant exists in the store: an unrecorded
            // approval never becomes usable.
            self.record(action, &grant, "policy", message, false).await?;
        }
        self.store.insert(&grant).await?;
        Ok(self.view(&grant, credentials))
    }

    pub(super) async fn load(&self, id: &str) -> Result<Grant, ControlError> {
        self.store.get(id).await?.ok_or_else(|| ControlError::NotFound(format!("there is no grant {id}")))
    }

    /// One grant, to its requester or a decider. An active grant whose
    /// credential was not issued yet (it was approved later) issues it
    /// now, to its requester only, once.
    pub async fn show(&self, who: &Identity, id: &str) -> Result<GrantView, ControlError> {
        for _ in 0..MAX_ATTEMPTS {
            let mut grant = self.visible(who, id).await?;
            let mine = owns(who, &grant);
            if !(mine && grant.status == GrantStatus::Active && grant.credential_hash.is_none())
                || grant.expires_at <= now_ms()
            {
                return Ok(self.view(&grant, None));
            }
            let version = grant.version;
            let credentials = self.issue(&mut grant);
            if self.store.update(&grant, version).await? {
                grant.version += 1;
                return Ok(self.view(&grant, Some(credentials)));
            }
        }
        Err(busy(id))
    }

    /// Grants `who` may see: their own, and those they decide.
    pub async fn list(&self, who: &Identity, filter: GrantFilter) -> Result<Vec<GrantView>, ControlError> {
        let limit = filter.limit.unwrap_or(DEFAULT_LIST);
        if !(1..=MAX_LIST).contains(&limit) {
            return Err(ControlError::BadRequest(format!("limit must be between 1 and {MAX_LIST}")));
        }
        let mut grants = if self.is_admin(who) {
            self.store.list(&GrantFilter { limit: Some(limit), ..filter }).await?
        } else {
            // Each part the caller may see, newest first, merged: their own,
            // and each approval group of theirs.
            let mut parts = Vec::new();
            if filter.subject.as_ref().is_none_or(|s| s == &who.subject) {
                let own = GrantFilter {
                    issuer: Some(who.issuer.clone()),
                    subject: Some(who.subject.clone()),
                    ..filter.clone()
                };
                parts.push(own);
            }
            for group in self.policies.approver_groups().filter(|g| who.in_group(g)) {
                parts.push(GrantFilter { approval_group: Some(group.to_string()), ..filter.clone() });
            }
            let mut all: Vec<Grant> = Vec::new();
            for part in parts {
                let part = GrantFilter { limit: Some(limit), ..part };
                for grant in self.store.list(&part).await? {
                    if !all.iter().any(|g| g.id == grant.id) {
                        all.push(grant);
                    }
                }
            }
            all.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
            all
        };
        grants.truncate(limit as usize);
        Ok(grants.iter().map(|g| self.view(g, None)).collect())
    }

    /// Applies `change` to grant `id` with compare-and-swap, retrying when
    /// someone else changed it first.
    async fn change(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Grant) -> Result<(), ControlError>,
    ) -> Result<(Grant, Grant), ControlError> {
        for _ in 0..MAX_ATTEMPTS {
            let before = self.load(id).await?;
            let mut after = before.clone();
            change(&mut after)?;
            if self.store.update(&after, before.version).await? {
                after.version = before.version + 1;
                return Ok((before, after));
            }
        }
        Err(busy(id))
    }

    pub async fn approve(&self, who: &Identity, id: &str, note: Option<String>) -> Result<GrantView, ControlError> {
        let now = now_ms();
        self.visible(who, id).await?;
        let (before, grant) = self
            .change(id, |g| {
                if owns(who, g) {
                    return Err(ControlError::Forbidden(format!(
                        "{} requested grant {id} and cannot approve it: another member of {} must",
                        who.subject,
                        g.approval_group.as_deref().unwrap_or("the approval group")
                    )));
                }
                if !self.decides(who, g) {
                    return Err(ControlError::Forbidden(format!(
                        "{} may not approve grant {id}: approvals come from group {}",
                        who.subject,
                        g.approval_group.as_deref().unwrap_or("(none: it needed no approval)")
                    )));
                }
                if g.status != GrantStatus::Pending || g.expires_at <= now {
                    let status = if g.status == GrantStatus::Pending { "expired" } else { g.status.as_str() };
                    return Err(ControlError::Conflict(format!("grant {id} is {status}, not pending")));
                }
                if g.approvers.contains(&who.subject) {
                    return Err(ControlError::Conflict(format!("{} has already approved grant {id}", who.subject)));
                }
                g.approvers.push(who.subject.clone());
                let by = g.approvers.join(", ");
                if g.approvers.len() as i64 >= g.approvals_needed {
                    g.status = GrantStatus::Active;
                    g.decided_at = Some(now);
                    g.decided_by = Some(by.clone());
                    g.expires_at = now + g.ttl_secs * 1000;
                    g.status_reason = Some(match &note {
                        Some(note) => format!("approved by {by}: {note}"),
                        None => format!("approved by {by}"),
                    });
                } else {
                    g.status_reason = Some(format!(
                        "{} of {} approvals from group {} ({by})",
                        g.approvers.len(),
                        g.approvals_needed,
                        g.approval_group.as_deref().unwrap_or_default(),
                    ));
                }
                Ok(())
            })
            .await?;
        // Its credential is issued only on the requester's next `show`, so
        // nobody can use the grant before this is recorded. An approval
        // that leaves it pending is recorded too, by its approver.
        let (action, by, message) = if grant.status == GrantStatus::Active {
            (GrantAction::Approved, grant.decided_by.clone().unwrap_or_default(), grant.status_reason.clone())
        } else {
            let message = match &note {
                Some(note) => format!("{}; {}: {note}", grant.status_reason.clone().unwrap_or_default(), who.subject),
                None => grant.status_reason.clone().unwrap_or_default(),
            };
            (GrantAction::PartiallyApproved, who.subject.clone(), Some(message))
        };
        if let Err(error) = self.record(action, &grant, &by, message, false).await {
            // An approval that was not recorded does not stand: undone,
            // unless something else changed the grant meanwhile.
            if self.store.update(&before, grant.version).await.unwrap_or(false) {
                return Err(error);
            }
            return Err(ControlError::Unavailable(format!(
                "grant {id} was approved but Proctor could not record the approval and could not undo it; tell the operator ({error})"
            )));
        }
        Ok(self.view(&grant, None))
    }

    pub async fn deny(&self, who: &Identity, id: &str, note: Option<String>) -> Result<GrantView, ControlError> {
        let now = now_ms();
        self.visible(who, id).await?;
        let (_, grant) = self
            .change(id, |g| {
                if !self.decides(who, g) {
                    return Err(ControlError::Forbidden(format!(
                        "{} may not deny grant {id}: decisions come from group {}",
                        who.subject,
                        g.approval_group.as_deref().unwrap_or(&self.admin_group)
                    )));
                }
                if g.status != GrantStatus::Pending {
                    return Err(ControlError::Conflict(format!("grant {id} is {}, not pending", g.status.as_str())));
                }
                settle(g, GrantStatus::Denied, &who.subject, note.as_deref(), now);
                Ok(())
            })
            .await?;
        // A denial stands even if it could not be recorded (fail closed);
        // the caller is told.
        self.record(GrantAction::Denied, &grant, &who.subject, grant.status_reason.clone(), true).await?;
        Ok(self.view(&grant, None))
    }

    /// Ends a grant before its time: its requester or a decider.
    pub async fn revoke(&self, who: &Identity, id: &str, note: Option<String>) -> Result<GrantView, ControlError> {
        let now = now_ms();
        self.visible(who, id).await?;
        let (_, grant) = self
            .change(id, |g| {
                if !owns(who, g) && !self.decides(who, g) {
                    return Err(ControlError::Forbidden(format!(
                        "{} may not revoke grant {id}: only its requester, its approvers and group {} may",
                        who.subject, self.admin_group
                    )));
                }
                if g.status.is_final() {
                    return Err(ControlError::Conflict(format!("grant {id} is already {}", g.status.as_str())));
                }
                settle(g, GrantStatus::Revoked, &who.subject, note.as_deref(), now);
                Ok(())
            })
            .await?;
        let message = grant.status_reason.clone().unwrap_or_default();
        self.live.end(
            &grant.id,
            &GrantEnd { reason: EndReason::GrantRevoked, message: format!("grant {} was {message}", grant.id) },
        );
        self.record(GrantAction::Revoked, &grant, &who.subject, grant.status_reason.clone(), true).await?;
        Ok(self.view(&grant, None))
    }

    /// Expires what is due (grants, and reviews of held statements) and
    /// ends live sessions whose grant is no longer active (also when another gateway sharing the store changed it).
    /// Goes through everything whatever fails on the way; returns the first
    /// failure.
    pub async fn sweep(&self) -> Result<(), ControlError> {
        let now = now_ms();
        let mut first_error = None;
        let mut failed = |error: ControlError| {
            first_error.get_or_insert(error);
        };
        match self.store.due(now).await {
            Ok(due) => {
                for grant in due {
                    if let Err(error) = self.expire(grant).await {
                        failed(error);
                    }
                }
            }
            Err(error) => failed(error.into()),
        }
        if let Err(error) = self.expire_reviews(now).await {
            failed(error);
        }
        for id in self.live.grant_ids() {
            let end = match self.store.get(&id).await {
                Ok(Some(g)) if g.status == GrantStatus::Active && g.expires_at > now => continue,
                Ok(Some(g)) if g.status == GrantStatus::Revoked => GrantEnd {
                    reason: EndReason::GrantRevoked,
                    message: format!("grant {id} was {}", g.status_reason.unwrap_or_else(|| "revoked".into())),
                },
                Ok(Some(g)) => expired(&g),
                Ok(None) => {
                    GrantEnd { reason: EndReason::GrantRevoked, message: format!("grant {id} no longer exists") }
                }
                // Leases end at their grant's expiry on their own.
                Err(error) => {
                    failed(error.into());
                    continue;
                }
            };
            self.live.end(&id, &end);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Marks a due grant expired: recorded first, so that a failure leaves
    /// it due for the next sweep (its sessions end at its expiry anyway).
    async fn expire(&self, due: Grant) -> Result<(), ControlError> {
        let mut grant = due.clone();
        let was_active = grant.status == GrantStatus::Active;
        grant.status_reason = Some(if was_active {
            format!("expired at {}", rfc3339(grant.expires_at))
        } else {
            format!("no decision before {}; request again", rfc3339(grant.expires_at))
        });
        grant.status = GrantStatus::Expired;
        grant.decided_by = Some("proctor".to_string());
        if was_active {
            self.live.end(&grant.id, &expired(&grant));
        }
        self.record(GrantAction::Expired, &grant, "proctor", grant.status_reason.clone(), false).await?;
        // Lost to a concurrent change (a revocation): that change stands.
        self.store.update(&grant, due.version).await?;
        Ok(())
    }
}

/// Whether `who` requested `grant`: the same subject of the same issuer.
fn owns(who: &Identity, grant: &Grant) -> bool {
    grant.subject == who.subject && grant.issuer == who.issuer
}

/// A grant changed by others on every attempt.
fn busy(id: &str) -> ControlError {
    ControlError::Conflict(format!("grant {id} kept changing while this was applied; try again"))
}

/// The most characters of a request's reason.
const MAX_REASON: usize = 1000;
/// Compare-and-swap attempts before giving up.
pub(super) const MAX_ATTEMPTS: usize = 16;
/// Grants (and reviews) listed by default, and at most.
pub(super) const DEFAULT_LIST: i64 = 100;
pub(super) const MAX_LIST: i64 = 1000;

/// Ends a grant by a person's decision (`Denied` or `Revoked`), from `now`.
fn settle(grant: &mut Grant, status: GrantStatus, by: &str, note: Option<&str>, now: i64) {
    grant.status = status;
    grant.decided_at = Some(now);
    grant.decided_by = Some(by.to_string());
    grant.expires_at = now;
    let verb = if status == GrantStatus::Denied { "denied" } else { "revoked" };
    grant.status_reason = Some(match note {
        Some(note) => format!("{verb} by {by}: {note}"),
        None => format!("{verb} by {by}"),
    });
}

fn expired(grant: &Grant) -> GrantEnd {
    GrantEnd {
        reason: EndReason::GrantExpired,
        message: format!("grant {} expired at {}", grant.id, rfc3339(grant.expires_at)),
    }
}

/// A host for a URL: IPv6 addresses in brackets.
fn url_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() }
}

/// Percent-encodes a URL path segment.
fn encode_path(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
