//! Reviews of held statements (and approvals of grants that need several),
//! through the control plane over a real
//! control store (SQLite in a temp dir): a held statement opens one review,
//! an approver lets it run once, the sender never decides it, strangers do
//! not see it, undecided ones expire; and the same through the control API
//! on a loopback port with dev-issuer tokens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proctor_gateway_core::control::api::{ControlApi, router};
use proctor_gateway_core::control::{
    ApprovalConfig, Control, ControlError, ControlSession, ControlStore, HeldKind, HoldOutcome, HoldRequest, Holds,
    LiveGrants, Offer, Policies, PolicyConfig, ReviewFilter, ReviewStatus, SqlStore, sql_hash,
};
use proctor_gateway_core::identity::{DevIssuer, DevIssuerConfig, Identity, Verifier};
use proctor_gateway_core::{EventSink, SinkError};
use proctor_schemas::{EventBody, GrantAction, NewEvent, ReviewAction, ReviewEvent, SessionId};

/// Keeps accepted events in memory; refuses them while `down`.
#[derive(Clone, Default)]
struct MemorySink {
    events: Arc<Mutex<Vec<NewEvent>>>,
    down: Arc<AtomicBool>,
}

impl EventSink for MemorySink {
    async fn record(&self, event: NewEvent) -> Result<u64, SinkError> {
        self.record_batch(&[event]).await.map(|seqs| seqs[0])
    }

    async fn record_batch(&self, events: &[NewEvent]) -> Result<Vec<u64>, SinkError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(SinkError("the disk is full".into()));
        }
        let mut kept = self.events.lock().unwrap();
        let first = kept.len() as u64;
        kept.extend_from_slice(events);
        Ok((first..kept.len() as u64).collect())
    }
}

impl MemorySink {
    /// The review events recorded so far.
    fn reviews(&self) -> Vec<ReviewEvent> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::Review(review) => Some(review.clone()),
                _ => None,
            })
            .collect()
    }
}

type Plane = Control<SqlStore, MemorySink>;

struct Setup {
    _dir: tempfile::TempDir,
    control: Arc<Plane>,
    sink: MemorySink,
}

const RESOURCE: &str = "orders-db";
const ISSUER: &str = "https://login.example.com/";

/// The CI agents' policy: `resource` for an hour, no approval.
fn agents(resource: &str) -> PolicyConfig {
    PolicyConfig {
        name: "agents".into(),
        groups: vec!["ci".into()],
        resources: vec![resource.into()],
        max_ttl: Duration::from_secs(3600),
        approval: None,
        rules: None,
        masking_profile: None,
        masking_profiles: Default::default(),
        sample_rows: None,
    }
}

async fn setup(pending_ttl: Duration) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("control.db").display());
    let store = SqlStore::open(&url).await.unwrap();
    let sink = MemorySink::default();
    let session = ControlSession::start(sink.clone(), "reviews test").await.unwrap();
    let policy = agents(RESOURCE);
    // People need two approvals from dba.
    let people = PolicyConfig {
        name: "people".into(),
        groups: vec!["eng".into()],
        approval: Some(ApprovalConfig { group: "dba".into(), count: 2 }),
        ..policy.clone()
    };
    let offers = HashMap::from([(
        RESOURCE.to_string(),
        Offer::Postgres { host: "127.0.0.1".into(), port: 5432, database: "app".into() },
    )]);
    let control = Control::new(
        store,
        Policies::new(vec![policy, people]).unwrap(),
        offers,
        session,
        Arc::new(LiveGrants::default()),
        pending_ttl,
        "security".into(),
    );
    Setup { _dir: dir, control: Arc::new(control), sink }
}

fn person(subject: &str, groups: &[&str]) -> Identity {
    Identity {
        subject: subject.into(),
        issuer: ISSUER.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        expires_at: i64::MAX,
    }
}

fn agent() -> Identity {
    person("ci-bot", &["ci"])
}

fn dba() -> Identity {
    person("dan", &["dba"])
}

fn admin() -> Identity {
    person("sam", &["security"])
}

fn stranger() -> Identity {
    person("eve", &["eng", "sre"])
}

/// An active grant of the agent's, for `ttl`.
async fn grant(setup: &Setup, ttl: Duration) -> String {
    let grant = setup.control.request(&agent(), RESOURCE, ttl, "migrate orders").await.unwrap();
    assert_eq!(grant.status.as_str(), "active", "{grant:?}");
    grant.id
}

fn held(grant_id: &str, sql: &str) -> HoldRequest {
    HoldRequest {
        grant_id: grant_id.into(),
        resource: RESOURCE.into(),
        session_id: SessionId::new(),
        ref_seq: Some(3),
        kind: HeldKind::Statement,
        text: sql.into(),
        text_hash: sql_hash(sql),
        rule: "ci/ddl".into(),
        approval_group: Some("dba".into()),
    }
}

fn review_id(outcome: &HoldOutcome) -> String {
    match outcome {
        HoldOutcome::Held { review_id, .. } | HoldOutcome::Run { review_id, .. } => review_id.clone(),
    }
}

fn opened(outcome: &HoldOutcome) -> bool {
    matches!(outcome, HoldOutcome::Held { opened: true, .. })
}

const DROP: &str = "DROP TABLE legacy_orders";

#[tokio::test]
async fn a_held_statement_opens_one_review_that_an_approver_lets_run_once() {
    let setup = setup(Duration::from_secs(3600)).await;
    let control = &setup.control;
    let grant_id = grant(&setup, Duration::from_secs(600)).await;

    // Held: a review opens, and the same statement sent again finds it.
    let request = held(&grant_id, DROP);
    let first = control.hold(request.clone()).await.unwrap();
    assert!(opened(&first), "{first:?}");
    let id = review_id(&first);
    assert!(id.len() == 18 && id.starts_with("r_"), "{id}");
    let again = control.hold(held(&grant_id, DROP)).await.unwrap();
    assert_eq!(again, HoldOutcome::Held { review_id: id.clone(), opened: false, expires_at: held_until(&first) });
    // Another statement (even one space apart) is another review.
    let other = control.hold(held(&grant_id, &format!("{DROP} "))).await.unwrap();
    assert!(opened(&other) && review_id(&other) != id, "{other:?}");

    // Recorded: who sent what, where, and how to approve it.
    let requested = setup.sink.reviews();
    assert_eq!(requested.len(), 2, "{requested:?}");
    let event = &requested[0];
    assert_eq!(event.action, ReviewAction::Requested);
    assert_eq!(event.review_id, id);
    assert_eq!(event.grant_id.as_deref(), Some(grant_id.as_str()));
    assert_eq!(event.actor.as_deref(), Some("ci-bot"));
    assert_eq!(event.target_session, Some(request.session_id.to_string()));
    assert_eq!(event.ref_seq, Some(3));
    assert_eq!(event.held.as_ref().and_then(|h| h.sql()), Some(DROP));
    let message = event.message.as_deref().unwrap();
    assert!(message.contains("ci/ddl") && message.contains(&format!("proctor review approve {id}")), "{message}");
    assert!(message.contains("group dba or security"), "{message}");

    // The sender sees it; it waits.
    let shown = control.show_review(&agent(), &id).await.unwrap();
    assert_eq!(shown.status, ReviewStatus::Pending);
    assert_eq!(
        (shown.text.as_str(), shown.rule.as_str(), shown.grant_id.as_str()),
        (DROP, "ci/ddl", grant_id.as_str())
    );
    assert_eq!((shown.kind, shown.sql.as_deref()), (HeldKind::Statement, Some(DROP)), "a statement keeps its `sql`");
    assert_eq!((shown.subject.as_str(), shown.resource.as_str()), ("ci-bot", RESOURCE));
    assert_eq!(shown.session_id, request.session_id.to_string());
    assert_eq!(shown.ref_seq, Some(3));
    assert_eq!(control.list_reviews(&agent(), ReviewFilter::default()).await.unwrap().len(), 2);

    // The sender never decides their own statement, admin or not.
    for verdict in [control.approve_review(&agent(), &id, None).await, control.deny_review(&agent(), &id, None).await] {
        let error = verdict.unwrap_err();
        assert!(matches!(error, ControlError::Forbidden(_)), "{error:?}");
        assert!(error.to_string().contains("cannot"), "{error}");
    }

    // An approver lets it run once, until the grant ends.
    let grant_end = control.show(&admin(), &grant_id).await.unwrap().expires_at;
    let approved = control.approve_review(&dba(), &id, Some("ticket 42".into())).await.unwrap();
    assert_eq!(approved.status, ReviewStatus::Approved);
    assert_eq!(approved.decided_by.as_deref(), Some("dan"));
    assert_eq!(approved.expires_at, grant_end);
    let event = setup.sink.reviews().pop().unwrap();
    assert_eq!(event.action, ReviewAction::Approved);
    assert_eq!((event.actor.as_deref(), event.message.as_deref()), (Some("dan"), Some("ticket 42")));
    let twice = control.approve_review(&admin(), &id, None).await.unwrap_err();
    assert!(matches!(twice, ControlError::Conflict(_)), "{twice:?}");
    assert_eq!(twice.to_string(), format!("review {id} is approved, not pending"));

    // Sent again: it runs, once; then it is held again, in a new review.
    let run = control.hold(held(&grant_id, DROP)).await.unwrap();
    assert_eq!(run, HoldOutcome::Run { review_id: id.clone(), approved_by: "dan".into() });
    let used = control.show_review(&agent(), &id).await.unwrap();
    assert_eq!(used.status, ReviewStatus::Used);
    assert!(used.used_at.is_some());
    let after = control.hold(held(&grant_id, DROP)).await.unwrap();
    assert!(opened(&after) && review_id(&after) != id, "{after:?}");

    // Counted for metrics.
    let counts: HashMap<_, _> = control.review_counters().snapshot().into_iter().collect();
    assert_eq!((counts["review_requested"], counts["review_approved"]), (3, 1));
    let stored: HashMap<_, _> = control.store().review_counts().await.unwrap().into_iter().collect();
    assert_eq!((stored[&ReviewStatus::Pending], stored[&ReviewStatus::Used]), (2, 1));
}

fn held_until(outcome: &HoldOutcome) -> i64 {
    match outcome {
        HoldOutcome::Held { expires_at, .. } => *expires_at,
        HoldOutcome::Run { .. } => panic!("not held: {outcome:?}"),
    }
}

#[tokio::test]
async fn two_sessions_sending_an_approved_statement_at_once_run_it_once() {
    let setup = setup(Duration::from_secs(3600)).await;
    let control = &setup.control;
    let grant_id = grant(&setup, Duration::from_secs(600)).await;
    let id = review_id(&control.hold(held(&grant_id, DROP)).await.unwrap());
    control.approve_review(&dba(), &id, None).await.unwrap();
    let (a, b) = tokio::join!(control.hold(held(&grant_id, DROP)), control.hold(held(&grant_id, DROP)));
    let outcomes = [a.unwrap(), b.unwrap()];
    let runs = outcomes.iter().filter(|o| matches!(o, HoldOutcome::Run { .. })).count();
    assert_eq!(runs, 1, "{outcomes:?}");
    assert!(outcomes.iter().any(opened), "the other is held again: {outcomes:?}");
}

#[tokio::test]
async fn only_the_sender_and_its_deciders_see_a_review() {
    let setup = setup(Duration::from_secs(3600)).await;
    let control = &setup.control;
    let grant_id = grant(&setup, Duration::from_secs(600)).await;
    let id = review_id(&control.hold(held(&grant_id, DROP)).await.unwrap());
    let by_sre = HoldRequest { approval_group: Some("sre".into()), ..held(&grant_id, "truncate orders") };
    let sre_id = review_id(&control.hold(by_sre).await.unwrap());

    // Someone else: no such review, whatever they try.
    let no = format!("there is no review {id}");
    for attempt in [
        control.show_review(&person("mallory", &["eng"]), &id).await.map(|_| ()),
        control.approve_review(&person("mallory", &["eng"]), &id, None).await.map(|_| ()),
        control.deny_review(&person("mallory", &["eng"]), &id, None).await.map(|_| ()),
        // The sender's name from another issuer is someone else.
        control.show_review(&Identity { issuer: "proctor-dev".into(), ..agent() }, &id).await.map(|_| ()),
    ] {
        let error = attempt.unwrap_err();
        assert!(matches!(error, ControlError::NotFound(_)), "{error:?}");
        assert_eq!(error.to_string(), no);
    }
    let missing = control.show_review(&admin(), "r_0000000000000000").await.unwrap_err();
    assert!(matches!(missing, ControlError::NotFound(_)), "{missing:?}");

    // Each approval group sees and decides its own; the admin group all.
    // Sorted: both were opened within the same millisecond, perhaps.
    let ids = |views: Vec<proctor_gateway_core::control::ReviewView>| {
        let mut ids = views.into_iter().map(|v| v.id).collect::<Vec<_>>();
        ids.sort();
        ids
    };
    let mut both = [id.clone(), sre_id.clone()];
    both.sort();
    assert_eq!(ids(control.list_reviews(&dba(), ReviewFilter::default()).await.unwrap()), [id.as_str()]);
    assert_eq!(ids(control.list_reviews(&stranger(), ReviewFilter::default()).await.unwrap()), [sre_id.as_str()]);
    assert!(control.list_reviews(&person("mallory", &["eng"]), ReviewFilter::default()).await.unwrap().is_empty());
    assert_eq!(ids(control.list_reviews(&admin(), ReviewFilter::default()).await.unwrap()), both);
    assert_eq!(ids(control.list_reviews(&agent(), ReviewFilter::default()).await.unwrap()), both);
    let error = control.show_review(&dba(), &sre_id).await.unwrap_err();
    assert!(matches!(error, ControlError::NotFound(_)), "{error:?}");

    // Filters: status, grant, limit.
    let approved = ReviewFilter { status: Some(ReviewStatus::Approved), ..ReviewFilter::default() };
    assert!(control.list_reviews(&admin(), approved.clone()).await.unwrap().is_empty());
    control.approve_review(&stranger(), &sre_id, None).await.unwrap();
    assert_eq!(ids(control.list_reviews(&agent(), approved).await.unwrap()), [sre_id.as_str()]);
    let elsewhere = ReviewFilter { grant_id: Some("g_0000000000000000".into()), ..ReviewFilter::default() };
    assert!(control.list_reviews(&admin(), elsewhere).await.unwrap().is_empty());
    let one = ReviewFilter { limit: Some(1), ..ReviewFilter::default() };
    assert_eq!(control.list_reviews(&admin(), one).await.unwrap().len(), 1);
    let zero = ReviewFilter { limit: Some(0), ..ReviewFilter::default() };
    assert!(matches!(control.list_reviews(&admin(), zero).await, Err(ControlError::BadRequest(_))));
}

/// A client sending ever different held statements cannot bury the
/// approvers: past a bound of reviews waiting in its grant, one more is
/// refused (a statement already waiting is still found, not refused), and
/// once one is decided a new one may wait again.
#[tokio::test]
async fn a_grant_has_a_bounded_number_of_reviews_waiting() {
    let setup = setup(Duration::from_secs(3600)).await;
    let control = &setup.control;
    let grant_id = grant(&setup, Duration::from_secs(600)).await;
    let max = proctor_gateway_core::control::MAX_PENDING_REVIEWS;
    let mut ids = Vec::new();
    for i in 0..max {
        let outcome = control.hold(held(&grant_id, &format!("DROP TABLE t{i}"))).await.unwrap();
        assert!(opened(&outcome), "{outcome:?}");
        ids.push(review_id(&outcome));
    }
    let refused = control.hold(held(&grant_id, "DROP TABLE one_too_many")).await.unwrap_err();
    assert!(refused.contains(&format!("{max} requests of grant {grant_id} already wait for review")), "{refused}");
    let again = control.hold(held(&grant_id, "DROP TABLE t0")).await.unwrap();
    assert!(!opened(&again) && review_id(&again) == ids[0], "the same statement finds its review: {again:?}");
    assert_eq!(setup.sink.reviews().len(), max, "the refused one opened no review");
    // Another grant is not bounded by this one's queue.
    let other = grant(&setup, Duration::from_secs(600)).await;
    assert!(opened(&control.hold(held(&other, "DROP TABLE elsewhere")).await.unwrap()));
    control.deny_review(&admin(), &ids[1], None).await.unwrap();
    assert!(opened(&control.hold(held(&grant_id, "DROP TABLE one_too_many")).await.unwrap()));

    // Requests arriving at once take turns for the last places: none
    // passes the bound, and one that lost the race is answered on record.
    let racing = grant(&setup, Duration::from_secs(600)).await;
    let requests = (0..max + 8).map(|i| control.hold(held(&racing, &format!("DROP TABLE r{i}"))));
    let outcomes = futures_util::future::join_all(requests).await;
    let opened_now = outcomes.iter().filter(|o| o.as_ref().is_ok_and(opened)).count();
    assert_eq!(opened_now, max, "{outcomes:?}");
    let refused: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert_eq!(refused.len(), 8, "the rest are refused");
    assert!(refused.iter().all(|e| e.contains("already wait for review")), "{refused:?}");
    let pending = ReviewFilter {
        grant_id: Some(racing.clone()),
        status: Some(ReviewStatus::Pending),
        limit: Some(1000),
        ..ReviewFilter::default()
    };
    assert_eq!(control.store().list_reviews(&pending).await.unwrap().len(), max);
    let events = setup.sink.reviews();
    let of_racing = |action: ReviewAction| {
        events.iter().filter(|e| e.grant_id.as_deref() == Some(racing.as_str()) && e.action == action).count()
    };
    assert_eq!(
        of_racing(ReviewAction::Requested) - of_racing(ReviewAction::Denied),
        max,
        "every request recorded and not answered is one that waits"
    );
}

#[tokio::test]
async fn a_denied_statement_is_held_again_in_a_new_review() {
    let setup = setup(Duration::from_secs(3600)).await;
    let control = &setup.control;
    let grant_id = grant(&setup, Duration::from_secs(600)).await;
    let id = review_id(&control.hold(held(&grant_id, DROP)).await.unwrap());
    let denied = control.deny_review(&admin(), &id, Some("use a migration".into())).await.unwrap();
    assert_eq!(denied.status, ReviewStatus::Denied);
    assert_eq!(denied.status_reason.as_deref(), Some("denied by sam: use a migration"));
    let event = setup.sink.reviews().pop().unwrap();
    assert_eq!((event.action, event.actor.as_deref()), (ReviewAction::Denied, Some("sam")));
    let error = control.approve_review(&dba(), &id, None).await.unwrap_err();
    assert_eq!(error.to_string(), format!("review {id} is denied, not pending"));
    let again = control.hold(held(&grant_id, DROP)).await.unwrap();
    assert!(opened(&again) && review_id(&again) != id, "{again:?}");
}

#[tokio::test]
async fn undecided_reviews_expire_and_the_sweep_marks_them() {
    let setup = setup(Duration::from_millis(50)).await;
    let control = &setup.control;
    let grant_id = grant(&setup, Duration::from_secs(600)).await;
    let id = review_id(&control.hold(held(&grant_id, DROP)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Past its time it shows as expired, swept or not, and cannot be decided.
    let shown = control.show_review(&agent(), &id).await.unwrap();
    assert_eq!(shown.status, ReviewStatus::Expired);
    let reason = shown.status_reason.unwrap();
    assert!(reason.starts_with("no decision before ") && reason.ends_with("run the statement again to ask again"));
    let error = control.approve_review(&dba(), &id, None).await.unwrap_err();
    assert_eq!(error.to_string(), format!("review {id} is expired, not pending"));
    let pending = ReviewFilter { status: Some(ReviewStatus::Pending), ..ReviewFilter::default() };
    assert!(control.list_reviews(&admin(), pending).await.unwrap().is_empty());

    // The sweep marks it and records it; the statement sent again asks again.
    control.sweep().await.unwrap();
    let stored = control.store().get_review(&id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.decided_by.as_deref()), (ReviewStatus::Expired, Some("proctor")));
    let event = setup.sink.reviews().pop().unwrap();
    assert_eq!((event.action, event.review_id.as_str()), (ReviewAction::Expired, id.as_str()));
    assert_eq!(event.actor.as_deref(), Some("proctor"));
    control.sweep().await.unwrap();
    assert_eq!(setup.sink.reviews().len(), 2, "expired once");
    let again = control.hold(held(&grant_id, DROP)).await.unwrap();
    assert!(opened(&again) && review_id(&again) != id, "{again:?}");
}

#[tokio::test]
async fn an_approval_lasts_only_as_long_as_its_grant() {
    let setup = setup(Duration::from_secs(3600)).await;
    let control = &setup.control;
    let grant_id = grant(&setup, Duration::from_secs(1)).await;
    let first = control.hold(held(&grant_id, DROP)).await.unwrap();
    let id = review_id(&first);
    // A pending review never waits past its grant's end either.
    let grant_end = control.store().get(&grant_id).await.unwrap().unwrap().expires_at;
    assert_eq!(held_until(&first), grant_end);
    control.approve_review(&dba(), &id, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let shown = control.show_review(&agent(), &id).await.unwrap();
    assert_eq!(shown.status, ReviewStatus::Expired);
    assert!(shown.status_reason.unwrap().contains(&format!("not run before grant {grant_id} ended")));
    let refused = control.hold(held(&grant_id, DROP)).await.unwrap_err();
    assert!(refused.contains(&format!("grant {grant_id} is expired")) && refused.contains("not run"), "{refused}");
    control.sweep().await.unwrap();
    let stored = control.store().get_review(&id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.decided_by.as_deref()), (ReviewStatus::Expired, Some("dan")));

    // A revoked grant holds nothing and approves nothing.
    let grant_id = grant(&setup, Duration::from_secs(600)).await;
    let id = review_id(&control.hold(held(&grant_id, DROP)).await.unwrap());
    control.revoke(&agent(), &grant_id, None).await.unwrap();
    let error = control.approve_review(&dba(), &id, None).await.unwrap_err();
    assert!(matches!(error, ControlError::Conflict(_)), "{error:?}");
    assert!(error.to_string().contains(&format!("grant {grant_id} is revoked")), "{error}");
    let refused = control.hold(held(&grant_id, DROP)).await.unwrap_err();
    assert!(refused.contains("is revoked"), "{refused}");
}

#[tokio::test]
async fn holds_and_approvals_fail_closed_when_they_cannot_be_recorded_or_found() {
    let setup = setup(Duration::from_secs(3600)).await;
    let control = &setup.control;
    let refused = control.hold(held("g_0000000000000000", DROP)).await.unwrap_err();
    assert!(refused.starts_with("there is no grant g_0000000000000000"), "{refused}");
    let grant_id = grant(&setup, Duration::from_secs(600)).await;
    let elsewhere = HoldRequest { resource: "billing-db".into(), ..held(&grant_id, DROP) };
    let refused = control.hold(elsewhere).await.unwrap_err();
    assert!(refused.contains("is for resource orders-db, not billing-db"), "{refused}");

    // The recorder refuses: no review opens, the statement does not run.
    setup.sink.down.store(true, Ordering::SeqCst);
    let refused = control.hold(held(&grant_id, DROP)).await.unwrap_err();
    assert!(refused.contains("could not record") && refused.contains("it was not run"), "{refused}");
    assert!(control.store().list_reviews(&ReviewFilter::default()).await.unwrap().is_empty());

    // An approval that cannot be recorded does not stand.
    setup.sink.down.store(false, Ordering::SeqCst);
    let id = review_id(&control.hold(held(&grant_id, DROP)).await.unwrap());
    setup.sink.down.store(true, Ordering::SeqCst);
    let error = control.approve_review(&dba(), &id, None).await.unwrap_err();
    assert!(matches!(error, ControlError::Unavailable(_)), "{error:?}");
    assert_eq!(control.store().get_review(&id).await.unwrap().unwrap().status, ReviewStatus::Pending);
    setup.sink.down.store(false, Ordering::SeqCst);
    assert!(matches!(control.hold(held(&grant_id, DROP)).await.unwrap(), HoldOutcome::Held { opened: false, .. }));
}

/// One HTTP/1.1 exchange with the API: the status and the JSON answer.
async fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let json = serde_json::from_str(body).unwrap_or_else(|_| serde_json::Value::String(body.to_string()));
    (status, json)
}

#[tokio::test]
async fn the_control_api_lists_shows_and_decides_reviews() {
    let setup = setup(Duration::from_secs(3600)).await;
    let control = &setup.control;
    let grant_id = grant(&setup, Duration::from_secs(600)).await;
    let id = review_id(&control.hold(held(&grant_id, DROP)).await.unwrap());

    let keys = tempfile::tempdir().unwrap();
    let dev = DevIssuer::open_or_create(keys.path(), &DevIssuerConfig::default()).unwrap();
    let verifier = Verifier::new(&[dev.issuer_config(&keys.path().join("jwks.json")).unwrap()]).await.unwrap();
    let token = |who: Identity| dev.sign(&who.subject, &who.groups, Duration::from_secs(600)).unwrap();
    let (agent, dba, eve) = (token(agent()), token(dba()), token(person("mallory", &["eng"])));
    let api = Arc::new(ControlApi { control: control.clone(), verifier: Arc::new(verifier), metrics: None });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(proctor_gateway_core::http::serve(listener, router(api), None, std::future::pending()));

    // The dev issuer's subjects are someone else than the test's: a review
    // of the dev-issued agent's own, through a grant requested as it.
    let (status, granted) = http(
        port,
        "POST",
        "/v1/grants",
        Some(&agent),
        r#"{"resource": "orders-db", "ttl": "10m", "reason": "migrate"}"#,
    )
    .await;
    assert_eq!(status, 201, "{granted}");
    let api_grant = granted["id"].as_str().unwrap().to_string();
    let api_id = review_id(&control.hold(held(&api_grant, DROP)).await.unwrap());

    let (status, listed) = http(port, "GET", "/v1/reviews", Some(&agent), "").await;
    assert_eq!(status, 200, "{listed}");
    let reviews = listed["reviews"].as_array().unwrap();
    assert_eq!(reviews.len(), 1, "only the caller's own: {listed}");
    let review = &reviews[0];
    assert_eq!(review["id"], api_id.as_str());
    assert_eq!(review["status"], "pending");
    assert_eq!(review["sql"], DROP);
    assert_eq!(review["rule"], "ci/ddl");
    assert_eq!(review["grant_id"], api_grant.as_str());
    for field in ["status_reason", "resource", "subject", "session_id", "ref_seq", "created_at", "expires_at"] {
        assert!(!review[field].is_null(), "{field} missing: {review}");
    }
    assert!(review["created_at"].as_str().unwrap().ends_with('Z'), "RFC 3339: {review}");

    // The approver sees both; filters by grant and status.
    let (_, listed) = http(port, "GET", "/v1/reviews?status=pending", Some(&dba), "").await;
    assert_eq!(listed["reviews"].as_array().unwrap().len(), 2, "{listed}");
    let (_, listed) = http(port, "GET", &format!("/v1/reviews?grant={grant_id}&limit=5"), Some(&dba), "").await;
    let ids: Vec<_> = listed["reviews"].as_array().unwrap().iter().map(|r| r["id"].clone()).collect();
    assert_eq!(ids, [id.as_str()], "{listed}");
    let (status, error) = http(port, "GET", "/v1/reviews?status=maybe", Some(&dba), "").await;
    assert_eq!(status, 400, "{error}");
    assert!(error["error"].as_str().unwrap().contains("pending, approved, denied, expired, used"), "{error}");

    // Refusals, in the grants' style.
    let (status, _) = http(port, "GET", "/v1/reviews", None, "").await;
    assert_eq!(status, 401);
    let (status, error) = http(port, "GET", &format!("/v1/reviews/{api_id}"), Some(&eve), "").await;
    assert_eq!((status, error["error"].as_str().unwrap()), (404, format!("there is no review {api_id}").as_str()));
    let (status, error) = http(port, "POST", &format!("/v1/reviews/{api_id}/approve"), Some(&agent), "").await;
    assert_eq!(status, 403, "{error}");
    assert!(error["error"].as_str().unwrap().contains("cannot approve it"), "{error}");
    let (status, error) = http(port, "POST", &format!("/v1/reviews/{api_id}/maybe"), Some(&dba), "").await;
    assert_eq!(status, 404, "{error}");

    // Decided, with a reason; deciding again conflicts.
    let path = format!("/v1/reviews/{api_id}/approve");
    let (status, approved) = http(port, "POST", &path, Some(&dba), r#"{"reason": "ticket 42"}"#).await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["status"], "approved");
    assert_eq!(approved["decided_by"], "dan");
    let (status, error) = http(port, "POST", &path, Some(&dba), "{}").await;
    assert_eq!(status, 409, "{error}");
    assert_eq!(error["error"], format!("review {api_id} is approved, not pending").as_str());
    let (status, denied) = http(port, "POST", &format!("/v1/reviews/{id}/deny"), Some(&dba), "").await;
    assert_eq!((status, denied["status"].as_str()), (200, Some("denied")), "{denied}");
    let (status, shown) = http(port, "GET", &format!("/v1/reviews/{api_id}"), Some(&agent), "").await;
    assert_eq!((status, shown["status"].as_str()), (200, Some("approved")), "{shown}");

    // Metrics count them.
    assert!(matches!(control.hold(held(&api_grant, DROP)).await.unwrap(), HoldOutcome::Run { .. }));
    let (status, metrics) = http(port, "GET", "/metrics", None, "").await;
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap();
    for expected in [
        "proctor_reviews{status=\"used\"} 1",
        "proctor_reviews{status=\"denied\"} 1",
        "proctor_reviews{status=\"pending\"} 0",
        "proctor_review_events_total{action=\"review_requested\"} 2",
        "proctor_review_events_total{action=\"review_approved\"} 1",
        "proctor_review_events_total{action=\"review_denied\"} 1",
    ] {
        assert!(metrics.contains(expected), "{expected:?} missing from:\n{metrics}");
    }
}

#[tokio::test]
async fn each_approval_of_a_grant_needing_several_is_recorded() {
    let setup = setup(Duration::from_secs(3600)).await;
    let person_eng = person("erin", &["eng"]);
    let asked = setup.control.request(&person_eng, RESOURCE, Duration::from_secs(600), "debug orders").await.unwrap();
    assert_eq!(asked.status.as_str(), "pending");
    let first = setup.control.approve(&dba(), &asked.id, Some("looks fine".into())).await.unwrap();
    assert_eq!(first.status.as_str(), "pending", "one of two approvals");
    let second = setup.control.approve(&person("dora", &["dba"]), &asked.id, None).await.unwrap();
    assert_eq!(second.status.as_str(), "active");
    let steps: Vec<(GrantAction, Option<String>, Option<String>)> = setup
        .sink
        .events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Grant(g) if g.grant_id == asked.id => Some((g.action, g.actor.clone(), g.message.clone())),
            _ => None,
        })
        .collect();
    let actions: Vec<GrantAction> = steps.iter().map(|(a, ..)| *a).collect();
    assert_eq!(actions, [GrantAction::Requested, GrantAction::PartiallyApproved, GrantAction::Approved], "{steps:?}");
    assert_eq!(steps[1].1.as_deref(), Some("dan"));
    let message = steps[1].2.clone().unwrap_or_default();
    assert!(message.contains("1 of 2 approvals") && message.contains("looks fine"), "{message}");
    assert_eq!(steps[2].1.as_deref(), Some("dan, dora"));
}

/// A grant on an SSH resource comes with what an SSH client needs: the
/// `known_hosts` line that pins Proctor's host key at the address it is
/// offered on, an `ssh://` URL without the secret, and a ready command.
#[tokio::test]
async fn a_grant_on_an_ssh_resource_is_offered_with_its_known_hosts_line() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("control.db").display());
    let store = SqlStore::open(&url).await.unwrap();
    let session = ControlSession::start(MemorySink::default(), "ssh offer test").await.unwrap();
    let policy = agents("web-1");
    let host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl proctor";
    let offers = HashMap::from([(
        "web-1".to_string(),
        Offer::Ssh { host: "gw.example".into(), port: 2222, host_key: host_key.into() },
    )]);
    let control = Control::new(
        store,
        Policies::new(vec![policy]).unwrap(),
        offers,
        session,
        Arc::new(LiveGrants::default()),
        Duration::from_secs(60),
        "security".into(),
    );
    let grant = control.request(&agent(), "web-1", Duration::from_secs(600), "deploy").await.unwrap();
    let credentials = grant.credentials.expect("an active grant comes with its credential");
    let offer = serde_json::to_value(credentials.offer.expect("an offer")).unwrap();
    assert_eq!(offer["protocol"], "ssh");
    assert_eq!(offer["user"], grant.id.as_str());
    assert_eq!(
        offer["known_hosts"],
        "[gw.example]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    );
    assert_eq!(offer["url"], format!("ssh://{}@gw.example:2222", grant.id));
    assert_eq!(offer["command"], format!("ssh -p 2222 {}@gw.example", grant.id));
    assert!(!offer.to_string().contains(&credentials.password), "no secret in the offer: {offer}");
}
