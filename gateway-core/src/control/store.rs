//! Where grants and reviews of held statements are kept: the
//! [`ControlStore`] trait, and [`SqlStore`], one implementation over SQLite
//! (in the data dir, the default) and PostgreSQL (shared by several
//! gateways) through sqlx's `Any` driver.
//!
//! Every change is a compare-and-swap on the row's `version`, so two
//! gateways (or two approvers) deciding the same grant or review at once
//! cannot both win: the loser reads it again and sees what happened. A
//! review's approval is used up the same way: of two sessions sending the
//! approved statement at once, one runs it.

use std::future::Future;

use proctor_schemas::HeldKind;
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

/// The state of a review of a held statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewStatus {
    /// Waiting for an approver.
    Pending,
    /// Allowed: the statement runs once, when sent again in its grant.
    Approved,
    Denied,
    /// Undecided in time, or approved but not run before its grant ended.
    Expired,
    /// Approved and run: the approval is spent.
    Used,
}

impl ReviewStatus {
    pub const ALL: [ReviewStatus; 5] = [
        ReviewStatus::Pending,
        ReviewStatus::Approved,
        ReviewStatus::Denied,
        ReviewStatus::Expired,
        ReviewStatus::Used,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReviewStatus::Pending => "pending",
            ReviewStatus::Approved => "approved",
            ReviewStatus::Denied => "denied",
            ReviewStatus::Expired => "expired",
            ReviewStatus::Used => "used",
        }
    }

    pub fn parse(text: &str) -> Option<ReviewStatus> {
        ReviewStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// One review of something the rules held (a statement, a command, a file
/// operation), as stored. Times are milliseconds since
/// the epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Review {
    /// `r_` and 16 hex digits.
    pub id: String,
    /// Bumped by every change.
    pub version: i64,
    pub grant_id: String,
    /// The grant's requester, who sent the statement, and their issuer.
    pub subject: String,
    pub issuer: String,
    pub resource: String,
    /// The session the statement was first held in, and its `statement`
    /// event there.
    pub session_id: String,
    pub ref_seq: Option<i64>,
    /// What was held.
    pub kind: HeldKind,
    /// What was held, as reviewers read it (masked as everything recorded
    /// is).
    pub text: String,
    /// The keyed hash of exactly what was sent: only the identical request
    /// runs once approved, and the review of a request sent again is found
    /// by it.
    pub text_hash: String,
    /// The rule that held it (`SET/CLASS`).
    pub rule: String,
    /// Who decides it besides the admin group.
    pub approval_group: Option<String>,
    pub status: ReviewStatus,
    /// Why it is in its status.
    pub status_reason: Option<String>,
    /// Who approved or denied it, or `proctor` (expired).
    pub decided_by: Option<String>,
    pub created_at: i64,
    pub decided_at: Option<i64>,
    /// When the approved statement ran.
    pub used_at: Option<i64>,
    /// Pending: when the review lapses undecided. Approved: when the
    /// approval lapses unused (its grant's end).
    pub expires_at: i64,
}

/// Which reviews to list.
#[derive(Clone, Debug, Default)]
pub struct ReviewFilter {
    pub grant_id: Option<String>,
    pub status: Option<ReviewStatus>,
    /// Only reviews this group decides.
    pub approval_group: Option<String>,
    /// Only statements of this subject (of `issuer`, when given).
    pub subject: Option<String>,
    pub issuer: Option<String>,
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

/// Keeps grants and reviews.
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

    /// Adds a new review (its id must be new).
    fn insert_review(&self, review: &Review) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Adds a new review unless its grant already has `bound` pending
    /// reviews whose `expires_at` is after `now`: `false` then, and nothing
    /// added. Counted and added atomically: requests inserting at once, from
    /// any gateway on the store, cannot pass the bound together.
    fn insert_review_within(
        &self,
        review: &Review,
        bound: usize,
        now: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn get_review(&self, id: &str) -> impl Future<Output = Result<Option<Review>, StoreError>> + Send;
    /// Newest first.
    fn list_reviews(&self, filter: &ReviewFilter) -> impl Future<Output = Result<Vec<Review>, StoreError>> + Send;
    /// Replaces the review if it is still at `version` (and bumps it);
    /// `false` if it changed meanwhile.
    fn update_review(&self, review: &Review, version: i64) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Pending and approved reviews whose `expires_at` is at or before `now`.
    fn due_reviews(&self, now: i64) -> impl Future<Output = Result<Vec<Review>, StoreError>> + Send;
    /// The review a request (of `kind`, by `text_hash`) sent again in grant
    /// `grant_id` finds: approved or pending, still before its `expires_at`
    /// at `now`; an approved one first, then the newest.
    fn open_review(
        &self,
        grant_id: &str,
        kind: HeldKind,
        text_hash: &str,
        now: i64,
    ) -> impl Future<Output = Result<Option<Review>, StoreError>> + Send;
    /// How many reviews are in each status (statuses without any left out).
    fn review_counts(&self) -> impl Future<Output = Result<Vec<(ReviewStatus, i64)>, StoreError>> + Send;
}

/// The control store over SQLite or PostgreSQL.
#[derive(Clone)]
pub struct SqlStore {
    pool: sqlx::AnyPool,
    /// PostgreSQL rather than SQLite: how writers are made to take turns.
    postgres: bool,
}

/// The store's schema, as versioned migrations: a store opens at the
/// newest version this Proctor knows, applying in order, each in one
/// transaction, those it has not seen (its version kept in
/// `proctor_schema`). Version 1 is the store as first released, which had
/// no version table; its statements create only what is missing, so a store
/// of any release before versions opens. A store of a newer version than
/// this Proctor knows is refused, not guessed at. A new review kind is a new
/// version too: an older Proctor must not open a store whose rows it cannot
/// read.
const MIGRATIONS: &[(i64, &[&str])] = &[
    (
        1,
        &[
            "CREATE TABLE IF NOT EXISTS grants (
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
)",
            "CREATE INDEX IF NOT EXISTS grants_due ON grants (status, expires_at)",
            "CREATE INDEX IF NOT EXISTS grants_subject ON grants (subject, issuer, created_at)",
            "CREATE TABLE IF NOT EXISTS reviews (
    id TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    grant_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    issuer TEXT NOT NULL,
    resource TEXT NOT NULL,
    session_id TEXT NOT NULL,
    ref_seq BIGINT,
    sql_text TEXT NOT NULL,
    sql_hash TEXT NOT NULL,
    rule TEXT NOT NULL,
    approval_group TEXT,
    status TEXT NOT NULL,
    status_reason TEXT,
    decided_by TEXT,
    created_at BIGINT NOT NULL,
    decided_at BIGINT,
    used_at BIGINT,
    expires_at BIGINT NOT NULL
)",
            "CREATE INDEX IF NOT EXISTS reviews_statement ON reviews (grant_id, sql_hash, status)",
            "CREATE INDEX IF NOT EXISTS reviews_due ON reviews (status, expires_at)",
            "CREATE INDEX IF NOT EXISTS reviews_subject ON reviews (subject, issuer, created_at)",
            "CREATE INDEX IF NOT EXISTS reviews_group ON reviews (approval_group, created_at)",
        ],
    ),
    // Reviews of any protocol's requests: `{kind, text}`; the statements of
    // version 1 are reviews of kind `statement`.
    (
        2,
        &[
            "ALTER TABLE reviews ADD COLUMN kind TEXT NOT NULL DEFAULT 'statement'",
            "ALTER TABLE reviews RENAME COLUMN sql_text TO review_text",
            "ALTER TABLE reviews RENAME COLUMN sql_hash TO text_hash",
            "DROP INDEX IF EXISTS reviews_statement",
            "CREATE INDEX IF NOT EXISTS reviews_request ON reviews (grant_id, kind, text_hash, status)",
        ],
    ),
];

/// The newest schema version this Proctor knows.
pub const STORE_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// The columns read into a [`Review`], for `concat!`.
macro_rules! review_columns {
    () => {
        "id, version, grant_id, subject, issuer, resource, session_id, ref_seq, kind, review_text, text_hash, rule, \
         approval_group, status, status_reason, decided_by, created_at, decided_at, used_at, expires_at"
    };
}

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
            wal_mode(&pool).await?;
        }
        migrate(&pool, !sqlite).await?;
        Ok(SqlStore { pool, postgres: !sqlite })
    }

    /// The rows of `query` (`status`, `n`), statuses it does not know left out.
    async fn counts_by_status<T>(
        &self,
        query: &'static str,
        parse: fn(&str) -> Option<T>,
    ) -> Result<Vec<(T, i64)>, StoreError> {
        let mut counts = Vec::new();
        for row in &sqlx::query(query).fetch_all(&self.pool).await? {
            let status: String = row.try_get("status")?;
            let n: i64 = row.try_get("n")?;
            if let Some(status) = parse(&status) {
                counts.push((status, n));
            }
        }
        Ok(counts)
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Brings the store at `pool` to [`STORE_VERSION`] (see [`MIGRATIONS`]),
/// all in one transaction: a crash leaves the store as it was, or migrated.
/// Gateways starting at once take turns: on PostgreSQL an advisory lock
/// held to the transaction's end, on SQLite a transaction that takes the
/// write lock at its start, whatever its first statement (a deferred one
/// that read first could fail to upgrade its lock while another migrates).
/// A store without a version table is of the first release or new:
/// version 1's statements create only what is missing.
async fn migrate(pool: &sqlx::AnyPool, postgres: bool) -> Result<(), StoreError> {
    let mut tx = if postgres { pool.begin().await? } else { pool.begin_with("BEGIN IMMEDIATE").await? };
    if postgres {
        sqlx::query("SELECT 1 AS locked FROM (SELECT pg_advisory_xact_lock(7347016)) AS migration")
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("CREATE TABLE IF NOT EXISTS proctor_schema (version BIGINT NOT NULL)").execute(&mut *tx).await?;
    let stored: Option<i64> =
        sqlx::query("SELECT MAX(version) AS v FROM proctor_schema").fetch_one(&mut *tx).await?.try_get("v")?;
    let current = stored.unwrap_or(0);
    if current > STORE_VERSION {
        return Err(StoreError(format!(
            "the store is at schema version {current}, written by a newer Proctor; this one knows versions up to \
             {STORE_VERSION}: upgrade Proctor (the store is left as it is)"
        )));
    }
    for (version, statements) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        for statement in *statements {
            sqlx::query(*statement)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError(format!("migrating the store to version {version}: {e}")))?;
        }
    }
    if stored != Some(STORE_VERSION) {
        sqlx::query("DELETE FROM proctor_schema").execute(&mut *tx).await?;
        sqlx::query("INSERT INTO proctor_schema (version) VALUES ($1)").bind(STORE_VERSION).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Puts a SQLite store in WAL mode (once per store: the mode is kept in the
/// file). The switch fails at once, without waiting, while another
/// connection (a gateway opening the same store at this moment) holds a
/// lock on the file, so it is tried again for a while.
async fn wal_mode(pool: &sqlx::AnyPool) -> Result<(), StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sqlx::query("PRAGMA journal_mode = WAL").execute(pool).await {
            Ok(_) => return Ok(()),
            Err(error) if busy(&error) && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// SQLite's "database is locked" (`SQLITE_BUSY` and its extended codes).
fn busy(error: &sqlx::Error) -> bool {
    let Some(error) = error.as_database_error() else { return false };
    let code: Option<i64> = error.code().and_then(|c| c.parse().ok());
    code.is_some_and(|c| c & 0xff == 5) || error.message().contains("database is locked")
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

fn review_from_row(row: &AnyRow) -> Result<Review, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(Review {
        id: row.try_get("id")?,
        version: row.try_get("version")?,
        grant_id: row.try_get("grant_id")?,
        subject: row.try_get("subject")?,
        issuer: row.try_get("issuer")?,
        resource: row.try_get("resource")?,
        session_id: row.try_get("session_id")?,
        ref_seq: row.try_get("ref_seq")?,
        kind: {
            let kind: String = row.try_get("kind")?;
            HeldKind::parse(&kind).ok_or_else(|| StoreError(format!("unknown review kind {kind:?}")))?
        },
        text: row.try_get("review_text")?,
        text_hash: row.try_get("text_hash")?,
        rule: row.try_get("rule")?,
        approval_group: row.try_get("approval_group")?,
        status: ReviewStatus::parse(&status).ok_or_else(|| StoreError(format!("unknown review status {status:?}")))?,
        status_reason: row.try_get("status_reason")?,
        decided_by: row.try_get("decided_by")?,
        created_at: row.try_get("created_at")?,
        decided_at: row.try_get("decided_at")?,
        used_at: row.try_get("used_at")?,
        expires_at: row.try_get("expires_at")?,
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
        let mut counts = self
            .counts_by_status("SELECT status, COUNT(*) AS n FROM grants GROUP BY status", GrantStatus::parse)
            .await?;
        counts.sort_by_key(|(s, _)| s.as_str());
        Ok(counts)
    }

    async fn insert_review(&self, r: &Review) -> Result<(), StoreError> {
        insert_review_query(r).execute(&self.pool).await?;
        Ok(())
    }

    async fn insert_review_within(&self, r: &Review, bound: usize, now: i64) -> Result<bool, StoreError> {
        // Inserts into one grant's reviews take turns: on PostgreSQL by
        // locking the grant's row to the transaction's end (a count alone
        // would not see another transaction's uncommitted insert), on SQLite
        // by taking the write lock at the transaction's start.
        let mut tx =
            if self.postgres { self.pool.begin().await? } else { self.pool.begin_with("BEGIN IMMEDIATE").await? };
        if self.postgres {
            // Each statement sees what committed before it, whatever the
            // server's default: the count must see the insert it waited on.
            sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED").execute(&mut *tx).await?;
            sqlx::query("SELECT id FROM grants WHERE id = $1 FOR UPDATE")
                .bind(&r.grant_id)
                .fetch_optional(&mut *tx)
                .await?;
        }
        let pending: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM reviews WHERE grant_id = $1 AND status = $2 AND expires_at > $3")
                .bind(&r.grant_id)
                .bind(ReviewStatus::Pending.as_str())
                .bind(now)
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
        if pending >= i64::try_from(bound).unwrap_or(i64::MAX) {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_review_query(r).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn get_review(&self, id: &str) -> Result<Option<Review>, StoreError> {
        let row = sqlx::query(concat!("SELECT ", review_columns!(), " FROM reviews WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(review_from_row).transpose()
    }

    async fn list_reviews(&self, filter: &ReviewFilter) -> Result<Vec<Review>, StoreError> {
        // As for grants: absent filters are always-true conditions.
        let rows = sqlx::query(concat!(
            "SELECT ",
            review_columns!(),
            " FROM reviews WHERE ($1 = '' OR grant_id = $1) AND ($2 = '' OR status = $2) \
             AND ($3 = '' OR approval_group = $3) AND ($4 = '' OR subject = $4) AND ($5 = '' OR issuer = $5) \
             ORDER BY created_at DESC, id DESC LIMIT $6"
        ))
        .bind(filter.grant_id.clone().unwrap_or_default())
        .bind(filter.status.map(ReviewStatus::as_str).unwrap_or_default())
        .bind(filter.approval_group.clone().unwrap_or_default())
        .bind(filter.subject.clone().unwrap_or_default())
        .bind(filter.issuer.clone().unwrap_or_default())
        .bind(filter.limit.unwrap_or(100).clamp(1, 1000))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(review_from_row).collect()
    }

    async fn update_review(&self, r: &Review, version: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE reviews SET version = $1, status = $2, status_reason = $3, decided_by = $4, decided_at = $5, \
             used_at = $6, expires_at = $7 WHERE id = $8 AND version = $9",
        )
        .bind(version + 1)
        .bind(r.status.as_str())
        .bind(r.status_reason.clone())
        .bind(r.decided_by.clone())
        .bind(r.decided_at)
        .bind(r.used_at)
        .bind(r.expires_at)
        .bind(&r.id)
        .bind(version)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn due_reviews(&self, now: i64) -> Result<Vec<Review>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            review_columns!(),
            " FROM reviews WHERE status IN ('pending', 'approved') AND expires_at <= $1 LIMIT 1000"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(review_from_row).collect()
    }

    async fn open_review(
        &self,
        grant_id: &str,
        kind: HeldKind,
        text_hash: &str,
        now: i64,
    ) -> Result<Option<Review>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            review_columns!(),
            " FROM reviews WHERE grant_id = $1 AND kind = $2 AND text_hash = $3 \
             AND status IN ('pending', 'approved') AND expires_at > $4 \
             ORDER BY CASE WHEN status = 'approved' THEN 0 ELSE 1 END, created_at DESC, id DESC LIMIT 1"
        ))
        .bind(grant_id)
        .bind(kind.as_str())
        .bind(text_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(review_from_row).transpose()
    }

    async fn review_counts(&self) -> Result<Vec<(ReviewStatus, i64)>, StoreError> {
        let query = "SELECT status, COUNT(*) AS n FROM reviews GROUP BY status";
        let mut counts = self.counts_by_status(query, ReviewStatus::parse).await?;
        counts.sort_by_key(|(s, _)| s.as_str());
        Ok(counts)
    }
}

/// The INSERT of review `r`, its values bound.
fn insert_review_query(r: &Review) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(
        "INSERT INTO reviews (id, version, grant_id, subject, issuer, resource, session_id, ref_seq, kind, \
             review_text, text_hash, rule, approval_group, status, status_reason, decided_by, created_at, decided_at, \
             used_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)",
    )
    .bind(&r.id)
    .bind(r.version)
    .bind(&r.grant_id)
    .bind(&r.subject)
    .bind(&r.issuer)
    .bind(&r.resource)
    .bind(&r.session_id)
    .bind(r.ref_seq)
    .bind(r.kind.as_str())
    .bind(&r.text)
    .bind(&r.text_hash)
    .bind(&r.rule)
    .bind(r.approval_group.clone())
    .bind(r.status.as_str())
    .bind(r.status_reason.clone())
    .bind(r.decided_by.clone())
    .bind(r.created_at)
    .bind(r.decided_at)
    .bind(r.used_at)
    .bind(r.expires_at)
}
