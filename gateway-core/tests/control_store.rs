//! One conformance suite for the control store, run against SQLite (a file
//! in a temp dir, the default) and against a real PostgreSQL cluster (the
//! scale-out option): the same behaviour, whichever backs a deployment.
//! Grants, and reviews of held requests; and a store written by the first
//! release, opened and migrated by this one.

use proctor_devcluster::{Cluster, Options};
use proctor_gateway_core::control::{
    ControlStore, Grant, GrantFilter, GrantStatus, HeldKind, Review, ReviewFilter, ReviewStatus, STORE_VERSION,
    SqlStore, sql_hash,
};
use sqlx::Row;

fn grant(id: &str, subject: &str, status: GrantStatus, created_at: i64, expires_at: i64) -> Grant {
    Grant {
        id: id.to_string(),
        version: 0,
        subject: subject.to_string(),
        issuer: "https://login.example.com/".to_string(),
        groups: vec!["ci".to_string(), "with \"quotes\"".to_string()],
        resource: "orders-db".to_string(),
        reason: "deploy 4711 — ünïcode".to_string(),
        ttl_secs: 900,
        status,
        status_reason: None,
        decided_by: None,
        policy: Some("agents".to_string()),
        approval_group: Some("dba".to_string()),
        approvals_needed: 2,
        approvers: Vec::new(),
        created_at,
        decided_at: None,
        expires_at,
        credential_hash: None,
        rules: Some("strict".to_string()),
        masking_profile: None,
    }
}

fn review(id: &str, grant_id: &str, subject: &str, sql: &str, created_at: i64, expires_at: i64) -> Review {
    Review {
        id: id.to_string(),
        version: 0,
        grant_id: grant_id.to_string(),
        subject: subject.to_string(),
        issuer: "https://login.example.com/".to_string(),
        resource: "orders-db".to_string(),
        session_id: "0190a7b2-5c3d-7e4f-8a9b-0c1d2e3f4a5b".to_string(),
        ref_seq: Some(7),
        kind: HeldKind::Statement,
        text: sql.to_string(),
        text_hash: sql_hash(sql),
        rule: "ci/ddl".to_string(),
        approval_group: Some("dba".to_string()),
        status: ReviewStatus::Pending,
        status_reason: Some("rule ci/ddl holds this statement".to_string()),
        decided_by: None,
        created_at,
        decided_at: None,
        used_at: None,
        expires_at,
    }
}

async fn review_conformance(store: &SqlStore) {
    let drop = "DROP TABLE customers; -- ünïcode 'quoted' \"ident\"\n\ttab";
    let truncate = "truncate orders";

    // Insert and read back every field, NULLs included.
    let a = review("r_000000000000000a", "g_1", "alice", drop, 1_000, 10_000);
    store.insert_review(&a).await.unwrap();
    assert_eq!(store.get_review(&a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(store.get_review("r_missing").await.unwrap(), None);
    assert!(store.insert_review(&a).await.is_err(), "an id is unique");
    let bare = Review { ref_seq: None, approval_group: None, status_reason: None, ..a.clone() };
    let bare = Review { id: "r_00000000000000ba".into(), created_at: 500, ..bare };
    store.insert_review(&bare).await.unwrap();
    assert_eq!(store.get_review(&bare.id).await.unwrap(), Some(bare.clone()));

    // Found again by the statement's hash in its grant, while open.
    let found = store.open_review("g_1", HeldKind::Statement, &sql_hash(drop), 9_999).await.unwrap().unwrap();
    assert_eq!(found.id, a.id, "the newest open review of the statement");
    assert_eq!(
        store.open_review("g_1", HeldKind::Statement, &sql_hash(drop), 10_000).await.unwrap(),
        None,
        "past its time"
    );
    assert_eq!(
        store.open_review("g_2", HeldKind::Statement, &sql_hash(drop), 2_000).await.unwrap(),
        None,
        "another grant"
    );
    assert_eq!(
        store.open_review("g_1", HeldKind::Statement, &sql_hash(truncate), 2_000).await.unwrap(),
        None,
        "another statement"
    );
    assert_eq!(
        store.open_review("g_1", HeldKind::Statement, &sql_hash("DROP TABLE customers"), 2_000).await.unwrap(),
        None
    );
    // A review of another kind with the same hash is another request.
    let exec = Review { kind: HeldKind::Exec, ..review("r_00000000000000e1", "g_1", "alice", drop, 900, 10_000) };
    store.insert_review(&exec).await.unwrap();
    assert_eq!(store.get_review(&exec.id).await.unwrap(), Some(exec.clone()));
    assert_eq!(store.open_review("g_1", HeldKind::Exec, &sql_hash(drop), 2_000).await.unwrap(), Some(exec.clone()));
    assert_eq!(store.open_review("g_1", HeldKind::Statement, &sql_hash(drop), 9_999).await.unwrap().unwrap().id, a.id);
    assert!(store.update_review(&Review { status: ReviewStatus::Denied, ..exec.clone() }, 0).await.unwrap());

    // Compare-and-swap: the first writer at a version wins, the second loses.
    let mut approved = a.clone();
    approved.status = ReviewStatus::Approved;
    approved.decided_by = Some("dan".to_string());
    approved.decided_at = Some(2_000);
    approved.status_reason = Some("approved by dan".to_string());
    approved.expires_at = 50_000;
    assert!(store.update_review(&approved, 0).await.unwrap());
    let mut denied = a.clone();
    denied.status = ReviewStatus::Denied;
    assert!(!store.update_review(&denied, 0).await.unwrap(), "a stale version must not overwrite");
    let stored = store.get_review(&a.id).await.unwrap().unwrap();
    assert_eq!(stored, Review { version: 1, ..approved.clone() });

    // An approved review is found before a newer pending one of the same
    // statement (two sessions held it at once).
    let b = review("r_000000000000000b", "g_1", "alice", drop, 3_000, 20_000);
    store.insert_review(&b).await.unwrap();
    assert_eq!(store.open_review("g_1", HeldKind::Statement, &sql_hash(drop), 4_000).await.unwrap().unwrap().id, a.id);
    // Used up (once: the loser of two sessions sees it changed), it is not
    // open any more.
    let mut used = stored.clone();
    used.status = ReviewStatus::Used;
    used.used_at = Some(5_000);
    assert!(store.update_review(&used, 1).await.unwrap());
    assert!(!store.update_review(&used, 1).await.unwrap(), "an approval is used once");
    assert_eq!(store.get_review(&a.id).await.unwrap().unwrap().used_at, Some(5_000));
    assert_eq!(store.open_review("g_1", HeldKind::Statement, &sql_hash(drop), 6_000).await.unwrap().unwrap().id, b.id);

    // Listing: newest first, filtered by grant, status, group and sender.
    let c = Review {
        approval_group: Some("sre".into()),
        ..review("r_000000000000000c", "g_2", "bob", truncate, 4_000, 4_500)
    };
    store.insert_review(&c).await.unwrap();
    let ids = |reviews: Vec<Review>| reviews.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_reviews(&ReviewFilter::default()).await.unwrap()),
        ["r_000000000000000c", "r_000000000000000b", "r_000000000000000a", "r_00000000000000e1", "r_00000000000000ba"]
    );
    let g1 = ReviewFilter { grant_id: Some("g_1".into()), ..ReviewFilter::default() };
    assert_eq!(
        ids(store.list_reviews(&g1).await.unwrap()),
        ["r_000000000000000b", "r_000000000000000a", "r_00000000000000e1", "r_00000000000000ba"]
    );
    let pending = ReviewFilter { status: Some(ReviewStatus::Pending), ..ReviewFilter::default() };
    assert_eq!(
        ids(store.list_reviews(&pending).await.unwrap()),
        ["r_000000000000000c", "r_000000000000000b", "r_00000000000000ba"]
    );
    let sre = ReviewFilter { approval_group: Some("sre".into()), ..ReviewFilter::default() };
    assert_eq!(ids(store.list_reviews(&sre).await.unwrap()), ["r_000000000000000c"]);
    let bob = ReviewFilter {
        subject: Some("bob".into()),
        issuer: Some("https://login.example.com/".into()),
        ..ReviewFilter::default()
    };
    assert_eq!(ids(store.list_reviews(&bob).await.unwrap()), ["r_000000000000000c"]);
    let other_issuer =
        ReviewFilter { subject: Some("bob".into()), issuer: Some("proctor-dev".into()), ..ReviewFilter::default() };
    assert!(store.list_reviews(&other_issuer).await.unwrap().is_empty(), "a subject is only unique within its issuer");
    let one = ReviewFilter { limit: Some(1), ..ReviewFilter::default() };
    assert_eq!(ids(store.list_reviews(&one).await.unwrap()), ["r_000000000000000c"]);
    let hostile = ReviewFilter { grant_id: Some("' OR '1'='1".into()), ..ReviewFilter::default() };
    assert!(store.list_reviews(&hostile).await.unwrap().is_empty());

    // Due: pending and approved ones at or past their time, never final ones.
    let mut late = review("r_000000000000000d", "g_3", "carol", truncate, 6_000, 30_000);
    store.insert_review(&late).await.unwrap();
    late.status = ReviewStatus::Approved;
    assert!(store.update_review(&late, 0).await.unwrap());
    let due = |now| async move {
        let mut due = ids(store.due_reviews(now).await.unwrap());
        due.sort();
        due
    };
    assert!(due(4_499).await.is_empty(), "{:?}", due(4_499).await);
    assert_eq!(due(4_500).await, ["r_000000000000000c"]);
    assert_eq!(due(10_000).await, ["r_000000000000000c", "r_00000000000000ba"]);
    assert_eq!(
        due(30_000).await,
        ["r_000000000000000b", "r_000000000000000c", "r_000000000000000d", "r_00000000000000ba"]
    );
    // The used one (expires_at 50_000 once approved) is final: never due.
    assert!(!due(60_000).await.contains(&a.id));

    // Counts by status.
    assert_eq!(
        store.review_counts().await.unwrap(),
        [(ReviewStatus::Approved, 1), (ReviewStatus::Denied, 1), (ReviewStatus::Pending, 3), (ReviewStatus::Used, 1)]
    );
}

/// A grant's pending reviews are bounded: counted and added atomically, so
/// requests adding at once, over several connections or several stores on
/// one database (gateways), never pass the bound together. Expired and
/// decided reviews do not count.
async fn bounded_reviews_conform(stores: &[SqlStore]) {
    let store = &stores[0];
    let now = 2_000;
    for id in ["g_bound", "g_race"] {
        store.insert(&grant(id, "alice", GrantStatus::Active, 1_000, 100_000)).await.unwrap();
    }
    let of = |grant: &str, i: usize| {
        review(&format!("r_{grant}_{i:08}"), grant, "alice", &format!("drop table t{i}"), 1_000, 50_000)
    };
    store.insert_review(&Review { expires_at: now, ..of("g_bound", 100) }).await.unwrap();
    store.insert_review(&Review { status: ReviewStatus::Denied, ..of("g_bound", 101) }).await.unwrap();
    assert!(store.insert_review_within(&of("g_bound", 0), 2, now).await.unwrap());
    assert!(store.insert_review_within(&of("g_bound", 1), 2, now).await.unwrap());
    assert!(!store.insert_review_within(&of("g_bound", 2), 2, now).await.unwrap(), "past the bound");
    assert_eq!(store.get_review(&of("g_bound", 2).id).await.unwrap(), None, "nothing added");
    assert!(store.insert_review_within(&of("g_race", 0), 2, now).await.unwrap(), "other grants have their own");

    let tasks: Vec<_> = (1..=400)
        .map(|i| {
            let (store, review) = (stores[i % stores.len()].clone(), of("g_race", i));
            tokio::spawn(async move { store.insert_review_within(&review, 200, now).await.unwrap() })
        })
        .collect();
    let mut added = 0;
    for task in tasks {
        added += usize::from(task.await.unwrap());
    }
    assert_eq!(added, 199, "400 at once, one place taken, a bound of 200");
    let filter = ReviewFilter { grant_id: Some("g_race".into()), limit: Some(1000), ..ReviewFilter::default() };
    assert_eq!(store.list_reviews(&filter).await.unwrap().len(), 200);
}

async fn conformance(store: SqlStore) {
    review_conformance(&store).await;

    // Insert and read back every field, NULLs included.
    let a = grant("g_000000000000000a", "alice", GrantStatus::Pending, 1_000, 10_000);
    store.insert(&a).await.unwrap();
    assert_eq!(store.get(&a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(store.get("g_missing").await.unwrap(), None);
    assert!(store.insert(&a).await.is_err(), "an id is unique");

    // Compare-and-swap: the first writer at a version wins, the second loses.
    let mut approved = a.clone();
    approved.status = GrantStatus::Active;
    approved.approvers = vec!["dan".to_string()];
    approved.decided_at = Some(2_000);
    approved.decided_by = Some("dan".to_string());
    approved.status_reason = Some("approved by dan".to_string());
    approved.credential_hash = Some("ab".repeat(32));
    assert!(store.update(&approved, 0).await.unwrap());
    let mut denied = a.clone();
    denied.status = GrantStatus::Denied;
    assert!(!store.update(&denied, 0).await.unwrap(), "a stale version must not overwrite");
    let stored = store.get(&a.id).await.unwrap().unwrap();
    assert_eq!(stored.version, 1);
    assert_eq!(stored.status, GrantStatus::Active);
    assert_eq!(stored.approvers, vec!["dan".to_string()]);
    assert_eq!(stored.credential_hash, approved.credential_hash);
    assert_eq!(stored.decided_at, Some(2_000));

    // Listing: newest first, filtered by subject, status and resource.
    store.insert(&grant("g_000000000000000b", "bob", GrantStatus::Pending, 3_000, 20_000)).await.unwrap();
    store.insert(&grant("g_000000000000000c", "alice", GrantStatus::Denied, 4_000, 4_000)).await.unwrap();
    let ids = |grants: Vec<Grant>| grants.into_iter().map(|g| g.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list(&GrantFilter::default()).await.unwrap()),
        ["g_000000000000000c", "g_000000000000000b", "g_000000000000000a"]
    );
    let alice = GrantFilter { subject: Some("alice".into()), ..GrantFilter::default() };
    assert_eq!(ids(store.list(&alice).await.unwrap()), ["g_000000000000000c", "g_000000000000000a"]);
    let pending = GrantFilter { status: Some(GrantStatus::Pending), ..GrantFilter::default() };
    assert_eq!(ids(store.list(&pending).await.unwrap()), ["g_000000000000000b"]);
    let mine = GrantFilter {
        issuer: Some("https://login.example.com/".into()),
        subject: Some("bob".into()),
        ..GrantFilter::default()
    };
    assert_eq!(ids(store.list(&mine).await.unwrap()), ["g_000000000000000b"]);
    let other_issuer = GrantFilter { issuer: Some("proctor-dev".into()), ..GrantFilter::default() };
    assert!(store.list(&other_issuer).await.unwrap().is_empty(), "a subject is only unique within its issuer");
    let dba = GrantFilter { approval_group: Some("dba".into()), ..GrantFilter::default() };
    assert_eq!(store.list(&dba).await.unwrap().len(), 3);
    let elsewhere = GrantFilter { resource: Some("billing-db".into()), ..GrantFilter::default() };
    assert!(store.list(&elsewhere).await.unwrap().is_empty());
    let one = GrantFilter { limit: Some(1), ..GrantFilter::default() };
    assert_eq!(store.list(&one).await.unwrap().len(), 1);
    // A filter value is data, never SQL.
    let hostile = GrantFilter { subject: Some("' OR '1'='1".into()), ..GrantFilter::default() };
    assert!(store.list(&hostile).await.unwrap().is_empty());

    // Due: pending or active at or past their time, never final ones.
    let mut due = ids(store.due(9_999).await.unwrap());
    assert!(due.is_empty(), "{due:?}");
    due = ids(store.due(10_000).await.unwrap());
    assert_eq!(due, ["g_000000000000000a"]);
    due = ids(store.due(30_000).await.unwrap());
    due.sort();
    assert_eq!(due, ["g_000000000000000a", "g_000000000000000b"]);

    // Counts by status.
    assert_eq!(
        store.counts().await.unwrap(),
        [(GrantStatus::Active, 1), (GrantStatus::Denied, 1), (GrantStatus::Pending, 1)]
    );
}

#[tokio::test]
async fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("control.db").display());
    conformance(SqlStore::open(&url).await.unwrap()).await;
    // The file keeps what was written: reopened, it still holds the grants.
    let reopened = SqlStore::open(&url).await.unwrap();
    assert_eq!(reopened.list(&GrantFilter::default()).await.unwrap().len(), 3);
    assert_eq!(reopened.list_reviews(&ReviewFilter::default()).await.unwrap().len(), 6);
    // Two gateways on one SQLite file.
    bounded_reviews_conform(&[reopened, SqlStore::open(&url).await.unwrap()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_conforms() {
    let cluster = Cluster::start(&Options::default()).unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e}"));
    cluster.psql("postgres", "create database control").unwrap();
    let store = SqlStore::open(&cluster.superuser_url("control")).await.unwrap();
    conformance(store.clone()).await;
    let url = cluster.superuser_url("control");
    bounded_reviews_conform(&[store, SqlStore::open(&url).await.unwrap()]).await;
}

/// Gateways reach a shared store over the network: TLS, the server's
/// certificate checked against the one given in `sslrootcert`.
#[tokio::test]
async fn postgres_store_conforms_over_verified_tls() {
    let cluster = Cluster::start(&Options { tls: true, ..Options::default() })
        .unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e}"));
    cluster.psql("postgres", "create database control").unwrap();
    let cert = cluster.dir().join("data").join("server.crt");
    let url = format!(
        "postgres://postgres:{}@localhost:{}/control?sslmode=verify-full&sslrootcert={}",
        cluster.superuser_password,
        cluster.port,
        cert.display()
    );
    conformance(SqlStore::open(&url).await.unwrap()).await;
    // Another certificate to trust: refused, not downgraded.
    let stranger = tempfile::tempdir().unwrap();
    let other = stranger.path().join("other.crt");
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(&other, key.cert.pem()).unwrap();
    let url = url.replace(&cert.display().to_string(), &other.display().to_string());
    assert!(SqlStore::open(&url).await.is_err(), "an untrusted certificate must be refused");
}

#[tokio::test]
async fn a_store_that_cannot_be_opened_says_where_without_the_password() {
    let port = proctor_devcluster::free_port();
    let error = SqlStore::open(&format!("postgres://proctor:s3cret@127.0.0.1:{port}/control")).await.err().unwrap();
    let message = error.to_string();
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
}

/// The store as the first release created it (no version table; reviews of
/// statements only, by `sql_text` and `sql_hash`), with one grant and one
/// review in it, written the way that release wrote them.
const FIRST_RELEASE: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS grants (id TEXT PRIMARY KEY, version BIGINT NOT NULL, subject TEXT NOT NULL, \
     issuer TEXT NOT NULL, groups_json TEXT NOT NULL, resource TEXT NOT NULL, reason TEXT NOT NULL, \
     ttl_secs BIGINT NOT NULL, status TEXT NOT NULL, status_reason TEXT, decided_by TEXT, policy TEXT, \
     approval_group TEXT, approvals_needed BIGINT NOT NULL, approvers_json TEXT NOT NULL, created_at BIGINT NOT NULL, \
     decided_at BIGINT, expires_at BIGINT NOT NULL, credential_hash TEXT, rules TEXT, masking_profile TEXT)",
    "CREATE INDEX IF NOT EXISTS grants_due ON grants (status, expires_at)",
    "CREATE INDEX IF NOT EXISTS grants_subject ON grants (subject, issuer, created_at)",
    "CREATE TABLE IF NOT EXISTS reviews (id TEXT PRIMARY KEY, version BIGINT NOT NULL, grant_id TEXT NOT NULL, \
     subject TEXT NOT NULL, issuer TEXT NOT NULL, resource TEXT NOT NULL, session_id TEXT NOT NULL, ref_seq BIGINT, \
     sql_text TEXT NOT NULL, sql_hash TEXT NOT NULL, rule TEXT NOT NULL, approval_group TEXT, status TEXT NOT NULL, \
     status_reason TEXT, decided_by TEXT, created_at BIGINT NOT NULL, decided_at BIGINT, used_at BIGINT, \
     expires_at BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS reviews_statement ON reviews (grant_id, sql_hash, status)",
    "CREATE INDEX IF NOT EXISTS reviews_due ON reviews (status, expires_at)",
    "CREATE INDEX IF NOT EXISTS reviews_subject ON reviews (subject, issuer, created_at)",
    "CREATE INDEX IF NOT EXISTS reviews_group ON reviews (approval_group, created_at)",
    "INSERT INTO grants VALUES ('g_old', 3, 'alice', 'https://login.example.com/', '[\"ci\"]', 'orders-db', \
     'deploy', 900, 'active', 'approved by dan', 'dan', 'people', 'dba', 1, '[\"dan\"]', 1000, 2000, 4102444800000, \
     'c0ffee', 'strict', 'pii')",
    "INSERT INTO reviews VALUES ('r_00000000000000aa', 1, 'g_old', 'alice', 'https://login.example.com/', \
     'orders-db', '0190a7b2-5c3d-7e4f-8a9b-0c1d2e3f4a5b', 7, 'DROP TABLE customers', 'beef', 'strict/ddl', 'dba', \
     'approved', 'approved by dan', 'dan', 1500, 1600, NULL, 4102444800000)",
];

/// A store written by the first release opens in this one: migrated in
/// place, its grants and reviews kept (the statements become reviews of
/// kind `statement`), usable as before, at this release's version; opened
/// again, nothing more happens. A store of a newer version is refused, and
/// left as it is.
async fn first_release_store_migrates(url: &str) {
    sqlx::any::install_default_drivers();
    {
        let old = sqlx::AnyPool::connect(url).await.unwrap();
        for statement in FIRST_RELEASE {
            sqlx::query(*statement).execute(&old).await.unwrap();
        }
        old.close().await;
    }
    // Opened twice: migrated the first time, as it was the second, with
    // what the first made of it.
    for (round, status) in [ReviewStatus::Approved, ReviewStatus::Used].into_iter().enumerate() {
        let store = SqlStore::open(url).await.unwrap();
        let grant = store.get("g_old").await.unwrap().unwrap();
        assert_eq!(
            (grant.version, grant.status, grant.approvers.as_slice(), grant.masking_profile.as_deref()),
            (3, GrantStatus::Active, &["dan".to_string()][..], Some("pii"))
        );
        let review = store.get_review("r_00000000000000aa").await.unwrap().unwrap();
        assert_eq!(
            (review.kind, review.text.as_str(), review.text_hash.as_str(), review.status, review.ref_seq),
            (HeldKind::Statement, "DROP TABLE customers", "beef", status, Some(7)),
            "round {round}"
        );
        if round == 0 {
            // The approved statement is found again and used up, as before.
            let found = store.open_review("g_old", HeldKind::Statement, "beef", 3_000).await.unwrap();
            assert_eq!(found.map(|r| r.id).as_deref(), Some("r_00000000000000aa"));
            let used = Review { status: ReviewStatus::Used, used_at: Some(3_000), ..review.clone() };
            assert!(store.update_review(&used, review.version).await.unwrap());
        }
        store.close().await;
    }
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let version: i64 = sqlx::query("SELECT version FROM proctor_schema").fetch_one(&pool).await.unwrap().get(0);
    assert_eq!(version, STORE_VERSION);
    sqlx::query("UPDATE proctor_schema SET version = 99").execute(&pool).await.unwrap();
    pool.close().await;
    let refused = SqlStore::open(url).await.err().expect("a newer store is refused").to_string();
    assert!(refused.contains("schema version 99") && refused.contains("upgrade Proctor"), "{refused}");
}

#[tokio::test]
async fn a_sqlite_store_of_the_first_release_opens_and_keeps_its_grants_and_reviews() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("control.db").display());
    first_release_store_migrates(&url).await;
}

/// A store from before reviews existed (grants only) opens too: what is
/// missing is created, the grants kept.
#[tokio::test]
async fn a_store_from_before_reviews_opens_with_its_grants() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("control.db").display());
    sqlx::any::install_default_drivers();
    let old = sqlx::AnyPool::connect(&url).await.unwrap();
    for statement in FIRST_RELEASE.iter().filter(|s| s.contains("grants")) {
        sqlx::query(*statement).execute(&old).await.unwrap();
    }
    old.close().await;
    let store = SqlStore::open(&url).await.unwrap();
    assert_eq!(store.get("g_old").await.unwrap().unwrap().subject, "alice");
    let held = review("r_0000000000000001", "g_old", "alice", "drop table t", 1_000, 9_000);
    store.insert_review(&held).await.unwrap();
    assert_eq!(store.get_review(&held.id).await.unwrap(), Some(held));
}

#[tokio::test]
async fn a_postgres_store_of_the_first_release_opens_and_keeps_its_grants_and_reviews() {
    let cluster = Cluster::start(&Options::default()).unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e}"));
    cluster.psql("postgres", "create database control").unwrap();
    first_release_store_migrates(&cluster.superuser_url("control")).await;
}

/// Gateways starting at once on one store of the first release take turns
/// migrating it: every one opens, and the store is migrated once.
async fn a_first_release_store_opened_at_once_migrates_once(url: &str) {
    sqlx::any::install_default_drivers();
    let old = sqlx::AnyPool::connect(url).await.unwrap();
    for statement in FIRST_RELEASE {
        sqlx::query(*statement).execute(&old).await.unwrap();
    }
    old.close().await;
    let opening: Vec<_> = (0..6)
        .map(|_| {
            let url = url.to_string();
            tokio::spawn(async move { SqlStore::open(&url).await.map_err(|e| e.to_string()) })
        })
        .collect();
    for opened in opening {
        let store = opened.await.unwrap().unwrap_or_else(|e| panic!("a gateway could not open the store: {e}"));
        let review = store.get_review("r_00000000000000aa").await.unwrap().unwrap();
        assert_eq!((review.kind, review.text.as_str()), (HeldKind::Statement, "DROP TABLE customers"));
        store.close().await;
    }
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let versions: Vec<i64> = sqlx::query("SELECT version FROM proctor_schema")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [STORE_VERSION]);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_opening_one_sqlite_store_at_once_take_turns_migrating_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("control.db").display());
    a_first_release_store_opened_at_once_migrates_once(&url).await;
}
