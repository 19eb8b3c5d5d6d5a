//! Where grants are kept: the [`ControlStore`] trait, and [`SqlStore`], one
//! implementation over SQLite (in the data dir, the default) and PostgreSQL
//! (shared by several gateways) through sqlx's `Any` driver.
//!
//! Every change is a compare-and-swap on the grant's `version`, so two
//! gateways (or two approvers) deciding the same grant at once cannot both
//! win: the loser reads the grant again and sees what happened.

use std::future::Future;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::{AnyPoolOptions, AnyRow};

/// The state of a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantStatus {
    /// Waiting for approvers.
    Pending,
    /// Usable until `expires_at`.
    Active,
    Denied,
    /// Expired active, or expired undecided.
    Expired,
    Revoked,
}

impl GrantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantStatus::Pending => "pending",
            GrantStatus::Active => "active",
            GrantStatus::Denied => "denied",
            GrantStatus::Expired => "expired",
            GrantStatus::Revoked => "revoked",
        }
    }

    pub fn parse(text: &str) -> Option<GrantStatus> {
        Some(match text {
            "pending" => GrantStatus::Pending,
            "active" => GrantStatus::Active,
            "denied" => GrantStatus::Denied,
            "expired" => GrantStatus::Expired,
            "revoked" => GrantStatus::Revoked,
            _ => return None,
        })
    }

    /// Whether nothing can change it any more.
    pub fn is_final(self) -> bool {
        !matches!(self, GrantStatus::Pending | GrantStatus::Active)
    }
}

/// One grant, as stored. Times are milliseconds since the epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub id: String,
    /// Bumped by every change.
    pub version: i64,
    pub subject: String,
    /// The issuer of the requester's token: a subject is only unique within it.
    pub issuer: String,
    pub groups: Vec<String>,
    pub resource: String,
    pub reason: String,
    pub ttl_secs: i64,
    pub status: GrantStatus,
    /// Why it is in its status (the policy's or a decider's words).
    pub status_reason: Option<String>,
    /// Who last decided it (approved, denied, revoked), or `policy`.
    pub decided_by: Option<String>,
    pub policy: Option<String>,
    pub approval_group: Option<String>,
    pub approvals_needed: i64,
    pub approvers: Vec<String>,
    pub created_at: i64,
    pub decided_at: Option<i64>,
    /// Pending: when the request expires undecided. Active: when access ends.
    pub expires_at: i64,
    /// SHA-256 (hex) of the credential, once issued; the credential itself
    /// is never stored.
    pub credential_hash: Option<String>,
    pub rules: Option<String>,
    pub masking_profile: Option<String>,
}

/// Which grants to list.
#[derive(Clone, Debug, Default)]
pub struct GrantFilter {
    pub issuer: Option<String>,
    pub subject: Option<String>,
    /// Only grants waiting for (or decided by) this group.
    pub approval_group: Option<String>,
    pub status: Option<GrantStatus>,
    pub resource: Option<String>,
    pub limit: Option<i64>,
}

/// The store failed; the message says how.
#[derive(Debug, thiserror::Error)]
#[error("control store: {0}")]
pub struct StoreError(pub String);

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        StoreError(e.to_string())
    }
}

/// Keeps grants.
pub trait ControlStore: Send + Sync + 'static {
    /// Adds a new grant (its id must be new).
    fn insert(&self, grant: &Grant) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn get(&self, id: &str) -> impl Future<Output = Result<Option<Grant>, StoreError>> + Send;
    /// Newest first.
    fn list(&self, filter: &GrantFilter) -> impl Future<Output = Result<Vec<Grant>, StoreError>> + Send;
    /// Replaces the grant if it is still at `version` (and bumps it);
    /// `false` if it changed meanwhile.
    fn update(&self, grant: &Grant, version: i64) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Pending and active grants whose `expires_at` is at or before `now`.
    fn due(&self, now: i64) -> impl Future<Output = Result<Vec<Grant>, StoreError>> + Send;
    /// How many grants are in each status (statuses without any left out).
    fn counts(&self) -> impl Future<Output = Result<Vec<(GrantStatus, i64)>, StoreError>> + Send;
}

/// The control store over SQLite or PostgreSQL.
#[derive(Clone)]
pub struct SqlStore {
    pool: sqlx::AnyPool,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    subject TEXT NOT NULL,
    issuer TEXT NOT NULL,
    groups_json TEXT NOT NULL,
    resource TEXT NOT NULL,
    reason TEXT NOT NULL,
    ttl_secs BIGINT NOT NULL,
    status TEXT NOT NULL,
    status_reason TEXT,
    decided_by TEXT,
    policy TEXT,
    approval_group TEXT,
    approvals_needed BIGINT NOT NULL,
    approvers_json TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    decided_at BIGINT,
    expires_at BIGINT NOT NULL,
    credential_hash TEXT,
    rules TEXT,
    masking_profile TEXT
)";

/// The columns read into a [`Grant`], for `concat!`: queries stay static text.
macro_rules! columns {
    () => {
        "id, version, subject, issuer, groups_json, resource, reason, ttl_secs, status, status_reason, decided_by, policy, \
         approval_group, approvals_needed, approvers_json, created_at, decided_at, expires_at, credential_hash, rules, \
         masking_profile"
    };
}

impl SqlStore {
    /// Opens (creating if needed) the store at `url`: `sqlite://PATH` or
    /// `postgres://...`.
    pub async fn open(url: &str) -> Result<SqlStore, StoreError> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let url = if sqlite && !url.contains("mode=") {
            format!("{url}{}mode=rwc", if url.contains('?') { "&" } else { "?" })
        } else {
            url.to_string()
        };
        // SQLite serialises writers anyway; one connection avoids "database
        // is locked" between the pool's own connections.
        let max = if sqlite { 1 } else { 8 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(&url)
            .await
            .map_err(|e| StoreError(format!("cannot open {}: {e}", redact(&url))))?;
        if sqlite {
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await?;
        }
        sqlx::query(SCHEMA).execute(&pool).await?;
        sqlx::query("CREATE INDEX IF NOT EXISTS grants_due ON grants (status, expires_at)").execute(&pool).await?;
        sqlx::query("CREATE INDEX IF NOT EXISTS grants_subject ON grants (subject, issuer, created_at)")
            .execute(&pool)
            .await?;
        Ok(SqlStore { pool })
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_string())
}

fn from_row(row: &AnyRow) -> Result<Grant, StoreError> {
    let list = |name: &str| -> Result<Vec<String>, StoreError> {
        let text: String = row.try_get(name)?;
        serde_json::from_str(&text).map_err(|e| StoreError(format!("column {name}: {e}")))
    };
    let status: String = row.try_get("status")?;
    Ok(Grant {
        id: row.try_get("id")?,
        version: row.try_get("version")?,
        subject: row.try_get("subject")?,
        issuer: row.try_get("issuer")?,
        groups: list("groups_json")?,
        resource: row.try_get("resource")?,
        reason: row.try_get("reason")?,
        ttl_secs: row.try_get("ttl_secs")?,
        status: GrantStatus::parse(&status).ok_or_else(|| StoreError(format!("unknown grant status {status:?}")))?,
        status_reason: row.try_get("status_reason")?,
        decided_by: row.try_get("decided_by")?,
        policy: row.try_get("policy")?,
        approval_group: row.try_get("approval_group")?,
        approvals_needed: row.try_get("approvals_needed")?,
        approvers: list("approvers_json")?,
        created_at: row.try_get("created_at")?,
        decided_at: row.try_get("decided_at")?,
        expires_at: row.try_get("expires_at")?,
        credential_hash: row.try_get("credential_hash")?,
        rules: row.try_get("rules")?,
        masking_profile: row.try_get("masking_profile")?,
    })
}

impl ControlStore for SqlStore {
    async fn insert(&self, g: &Grant) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO grants (id, version, subject, issuer, groups_json, resource, reason, ttl_secs, status, \
             status_reason, decided_by, policy, approval_group, approvals_needed, approvers_json, created_at, \
             decided_at, expires_at, credential_hash, rules, masking_profile) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)",
        )
        .bind(&g.id)
        .bind(g.version)
        .bind(&g.subject)
        .bind(&g.issuer)
        .bind(json_list(&g.groups))
        .bind(&g.resource)
        .bind(&g.reason)
        .bind(g.ttl_secs)
        .bind(g.status.as_str())
        .bind(g.status_reason.clone())
        .bind(g.decided_by.clone())
        .bind(g.policy.clone())
        .bind(g.approval_group.clone())
        .bind(g.approvals_needed)
        .bind(json_list(&g.approvers))
        .bind(g.created_at)
        .bind(g.decided_at)
        .bind(g.expires_at)
        .bind(g.credential_hash.clone())
        .bind(g.rules.clone())
        .bind(g.masking_profile.clone())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        let row = sqlx::query(concat!("SELECT ", columns!(), " FROM grants WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    async fn list(&self, filter: &GrantFilter) -> Result<Vec<Grant>, StoreError> {
        // Conditions on absent filters are always true: one statement, no
        // SQL built from input.
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM grants WHERE ($1 = '' OR subject = $1) AND ($2 = '' OR status = $2) \
             AND ($3 = '' OR resource = $3) AND ($4 = '' OR issuer = $4) AND ($5 = '' OR approval_group = $5) \
             ORDER BY created_at DESC, id DESC LIMIT $6"
        ))
        .bind(filter.subject.clone().unwrap_or_default())
        .bind(filter.status.map(GrantStatus::as_str).unwrap_or_default())
        .bind(filter.resource.clone().unwrap_or_default())
        .bind(filter.issuer.clone().unwrap_or_default())
        .bind(filter.approval_group.clone().unwrap_or_default())
        .bind(filter.limit.unwrap_or(100).clamp(1, 1000))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    async fn update(&self, g: &Grant, version: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE grants SET version = $1, status = $2, status_reason = $3, decided_by = $4, approvers_json = $5, \
             decided_at = $6, expires_at = $7, credential_hash = $8 WHERE id = $9 AND version = $10",
        )
        .bind(version + 1)
        .bind(g.status.as_str())
        .bind(g.status_reason.clone())
        .bind(g.decided_by.clone())
        .bind(json_list(&g.approvers))
        .bind(g.decided_at)
        .bind(g.expires_at)
        .bind(g.credential_hash.clone())
        .bind(&g.id)
        .bind(version)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn due(&self, now: i64) -> Result<Vec<Grant>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM grants WHERE status IN ('pending', 'active') AND expires_at <= $1 LIMIT 1000"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    async fn counts(&self) -> Result<Vec<(GrantStatus, i64)>, StoreError> {
        let rows =
            sqlx::query("SELECT status, COUNT(*) AS n FROM grants GROUP BY status").fetch_all(&self.pool).await?;
        let mut counts = Vec::new();
        for row in &rows {
            let status: String = row.try_get("status")?;
            let n: i64 = row.try_get("n")?;
            if let Some(status) = GrantStatus::parse(&status) {
                counts.push((status, n));
            }
        }
        counts.sort_by_key(|(s, _)| s.as_str());
        Ok(counts)
    }
}
