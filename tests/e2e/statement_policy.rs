//! Statement rules in the data path, end to end: an agent with a grant
//! under rules connects with psql and tokio-postgres; refused statements
//! get a clean 42501 naming the rule, leave the transaction aborted on the
//! target as a server-side error would (a later COMMIT commits nothing),
//! and every decision is recorded; held statements wait for a reviewer and
//! then run once.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use proctor_recorder::reader::Reader;
use proctor_schemas::{Event, EventBody, PolicyOutcome};
use proctor_tests::devcluster::{Cluster, Options, free_port};
use proctor_tests::{APP_ROLE, Proctor, ProctorOptions, cluster, dev_token, run, stderr, stdout};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_proctor");

fn bin() -> &'static Path {
    Path::new(BIN)
}

struct Setup {
    cluster: Cluster,
    proctor: Proctor,
    api: String,
}

const RULES: &str = r#"block = ["drop", "truncate", "alter_system", "copy_program"]
hold = ["ddl", "delete_without_where", "admin_function"]
approval_group = "dba""#;

fn start() -> Setup {
    start_with(RULES)
}

/// Proctor with `rules` as `[rules.ci]`, the rules of the `agents` policy.
fn start_with(rules: &str) -> Setup {
    let cluster = cluster(&Options::default());
    cluster.psql(APP_ROLE, &format!("create table t (id int); alter table t owner to {APP_ROLE}")).unwrap();
    let api_port = free_port();
    let extra = format!(
        r#"database = "{APP_ROLE}"

[identity.dev_issuer]

[control]
listen = "127.0.0.1:{api_port}"
admin_group = "security"

[rules.ci]
{rules}

[[policies]]
name = "agents"
groups = ["ci"]
resources = ["test-db"]
max_ttl = "1h"
rules = "ci"
"#
    );
    let proctor = Proctor::start(bin(), cluster.port, &ProctorOptions { extra, ..ProctorOptions::default() });
    Setup { cluster, proctor, api: format!("http://127.0.0.1:{api_port}") }
}

fn token(setup: &Setup, sub: &str, groups: &str) -> String {
    dev_token(bin(), &setup.proctor.data_dir, sub, groups)
}

/// `proctor COMMAND ARGS --api API --token TOKEN`.
fn control(setup: &Setup, token: &str, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--api", &setup.api, "--token", token]);
    run(bin(), &all)
}

fn json(output: &Output) -> Value {
    let text = stdout(output);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {text}\n{}", stderr(output)))
}

/// The agent's grant: its id and libpq URL.
fn agent_grant(setup: &Setup, agent: &str) -> (String, String) {
    let out = control(
        setup,
        agent,
        &["grant", "request", "--resource", "test-db", "--ttl", "30m", "--reason", "migrations", "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let grant = json(&out);
    assert_eq!(grant["rules"], "ci", "{grant}");
    (grant["id"].as_str().unwrap().to_string(), grant["credentials"]["url"].as_str().unwrap().to_string())
}

/// Runs a psql script through stdin (errors do not stop it), all output.
fn psql_script(cluster: &Cluster, url: &str, script: &str) -> String {
    let mut child = Command::new(cluster.bindir.join("psql"))
        .args(["-X", "-At", "-d", url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    format!("{}{}", stdout(&output), stderr(&output))
}

fn psql(cluster: &Cluster, url: &str, sql: &str) -> Output {
    Command::new(cluster.bindir.join("psql")).args(["-X", "-At", "-d", url, "-c", sql]).output().unwrap()
}

/// Rows in `t`, read directly from the target.
fn rows_in_t(cluster: &Cluster) -> i64 {
    let count = cluster.psql(APP_ROLE, "select count(*) from t").unwrap();
    count.trim().parse().unwrap_or_else(|_| panic!("not a count: {count}"))
}

/// The events of the postgres sessions that ran under `grant`, once `count`
/// of them have ended.
fn grant_sessions(data_dir: &Path, grant: &str, count: usize) -> Vec<Vec<Event>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reader = Reader::open(data_dir).unwrap();
        let sessions: Vec<_> = reader
            .sessions()
            .unwrap()
            .into_iter()
            .filter(|s| s.protocol.as_deref() == Some("postgres") && s.end_reason.is_some())
            .map(|s| reader.session_events(s.session_id).unwrap())
            .filter(|events| {
                events
                    .iter()
                    .any(|e| matches!(&e.body, EventBody::SessionStart(s) if s.grant_id.as_deref() == Some(grant)))
            })
            .collect();
        if sessions.len() >= count {
            return sessions;
        }
        assert!(Instant::now() < deadline, "only {} of {count} sessions ended", sessions.len());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (outcome, rule, the SQL of the statement decided on) of each decision.
fn decisions(events: &[Event]) -> Vec<(PolicyOutcome, String, String)> {
    let sql_at = |seq: Option<u64>| {
        events
            .iter()
            .find(|e| Some(e.seq) == seq)
            .map(|e| match &e.body {
                EventBody::Statement(s) => s.sql.clone(),
                EventBody::Prepare(p) => p.sql.clone(),
                EventBody::RawFrame(f) => format!("raw {}", f.frame_tag),
                other => format!("{other:?}"),
            })
            .unwrap_or_default()
    };
    events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::PolicyDecision(d) => Some((d.outcome, d.rule.clone().unwrap_or_default(), sql_at(d.ref_seq))),
            _ => None,
        })
        .collect()
}

#[test]
fn refused_statements_fail_like_server_errors_and_commit_nothing() {
    let setup = start();
    let agent = token(&setup, "ci-deploy", "ci");
    let (grant, url) = agent_grant(&setup, &agent);

    // In a transaction: the blocked DROP aborts it on the target too, so the
    // COMMIT the client sends afterwards rolls back the INSERT before it.
    let out = psql_script(
        &setup.cluster,
        &url,
        "begin;\ninsert into t values (1);\ndrop table t;\ninsert into t values (2);\ncommit;\nselect 'after: ' || count(*) from t;\n",
    );
    assert!(out.contains("Proctor blocked this statement: rule ci/drop does not allow drop statements"), "{out}");
    assert!(out.contains("current transaction is aborted"), "the target saw the failure: {out}");
    assert!(out.contains("ROLLBACK"), "COMMIT rolled back: {out}");
    assert!(out.contains("after: 0"), "{out}");
    assert_eq!(rows_in_t(&setup.cluster), 0, "nothing the client saw fail was committed");

    // One refused statement in a multi-statement query refuses the query;
    // the session stays usable, with a 42501.
    let out = psql(&setup.cluster, &url, "insert into t values (3); truncate t");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("rule ci/truncate") && err.contains("statement 2 of 2"), "{err}");
    assert_eq!(rows_in_t(&setup.cluster), 0);
    let out = psql_script(&setup.cluster, &url, "\\set VERBOSITY verbose\nselec 1;\nselect 'usable';\n");
    assert!(out.contains("42501") && out.contains("cannot be parsed"), "unparseable SQL fails closed: {out}");
    assert!(out.contains("usable"), "{out}");

    // FunctionCall messages (libpq's large-object calls) are refused under rules.
    let file = setup.proctor.data_dir.parent().unwrap().join("object.txt");
    std::fs::write(&file, "contents").unwrap();
    let out = psql_script(&setup.cluster, &url, &format!("\\lo_import {}\nselect 'after lo';\n", file.display()));
    assert!(out.contains("Proctor blocked a FunctionCall message"), "{out}");
    assert!(out.contains("after lo"), "{out}");

    // Allowed statements pass.
    let out = psql(&setup.cluster, &url, "insert into t values (4); select count(*) from t");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(rows_in_t(&setup.cluster), 1);

    let sessions = grant_sessions(&setup.proctor.data_dir, &grant, 5);
    let all: Vec<_> = sessions.iter().flat_map(|events| decisions(events)).collect();
    let blocked =
        |rule: &str, sql: &str| all.iter().any(|(o, r, s)| *o == PolicyOutcome::Block && r == rule && s.contains(sql));
    assert!(blocked("ci/drop", "drop table t"), "{all:?}");
    assert!(blocked("ci/truncate", "insert into t values (3); truncate t"), "{all:?}");
    assert!(blocked("ci/unparseable", "selec 1"), "{all:?}");
    assert!(blocked("ci/function_call_message", "raw F"), "{all:?}");
    assert_eq!(all.len(), 4, "allowed statements add no decision events: {all:?}");
    let metrics = Command::new("curl").args(["-sS", "--max-time", "30", &format!("{}/metrics", setup.api)]).output();
    let metrics = stdout(&metrics.unwrap());
    assert!(metrics.contains("proctor_policy_decisions_total{outcome=\"block\"} 4"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_parses_skip_the_rest_of_their_pipeline() {
    let setup = tokio::task::spawn_blocking(start).await.unwrap();
    let agent = token(&setup, "ci-deploy", "ci");
    let (grant, url) = agent_grant(&setup, &agent);
    let url = url.replace("sslmode=require", "sslmode=disable");
    let (mut client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);

    // A Parse refused alone, and one in a Parse/Bind/Execute/Sync batch.
    let error = client.prepare("drop table t").await.unwrap_err();
    let db = error.as_db_error().unwrap_or_else(|| panic!("{error}"));
    assert_eq!(db.code().code(), "42501");
    assert!(db.message().contains("rule ci/drop"), "{}", db.message());
    let error = client.query_typed("truncate t", &[]).await.unwrap_err();
    assert_eq!(error.code().map(|c| c.code()), Some("42501"), "{error}");
    let row = client.query_one("select $1::int + 1", &[&41i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42, "the session goes on after refusals");

    // Pipelined in a transaction after an INSERT: the refused Parse aborts
    // the transaction on the target, so the statement after it fails and
    // COMMIT commits nothing, not even the INSERT that succeeded.
    let tx = client.transaction().await.unwrap();
    tx.execute("insert into t values ($1)", &[&10i32]).await.unwrap();
    let (refused, after) =
        tokio::join!(tx.execute("drop table t", &[]), tx.execute("insert into t values ($1)", &[&11i32]),);
    assert_eq!(refused.unwrap_err().code().map(|c| c.code()), Some("42501"));
    assert_eq!(after.unwrap_err().code().map(|c| c.code()), Some("25P02"), "the target's transaction was aborted");
    tx.commit().await.unwrap();
    assert_eq!(rows_in_t(&setup.cluster), 0, "COMMIT after a refusal commits nothing");
    let row = client.query_one("select count(*) from t", &[]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 0);
    drop(client);

    let sessions =
        tokio::task::spawn_blocking(move || grant_sessions(&setup.proctor.data_dir, &grant, 1)).await.unwrap();
    let all = decisions(&sessions[0]);
    let rules: Vec<&str> = all.iter().map(|(_, r, _)| r.as_str()).collect();
    assert_eq!(rules, ["ci/drop", "ci/truncate", "ci/drop"], "{all:?}");
    assert!(all.iter().all(|(o, _, sql)| *o == PolicyOutcome::Block && !sql.is_empty()), "{all:?}");
}

/// The review id named in a hold's error message.
fn review_id(output: &str) -> String {
    let start = output.find("review r_").unwrap_or_else(|| panic!("no review named: {output}")) + "review ".len();
    output[start..start + 18].to_string()
}

/// `proctor review list --json` as `token`: one object per line.
fn reviews(setup: &Setup, token: &str) -> Vec<Value> {
    let out = control(setup, token, &["review", "list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn held_statements_wait_for_a_reviewer_and_then_run_once() {
    let setup = start();
    let agent = token(&setup, "ci-deploy", "ci");
    let dba = token(&setup, "dana", "dba");
    let stranger = token(&setup, "eve", "eng");
    let (grant, url) = agent_grant(&setup, &agent);
    let ddl = "create index t_id on t (id)";

    // Held: a 42501 naming the review, which stays the same while undecided.
    let out = psql(&setup.cluster, &url, ddl);
    assert!(!out.status.success());
    let first = stderr(&out);
    assert!(first.contains("Proctor is holding this statement for approval: review r_"), "{first}");
    assert!(first.contains("(rule ci/ddl)") && first.contains("proctor review approve"), "{first}");
    let review = review_id(&first);
    let again = stderr(&psql(&setup.cluster, &url, ddl));
    assert_eq!(review_id(&again), review, "{again}");
    assert!(again.contains("still undecided"), "{again}");

    // Who sees and decides it: the reviewer group, not the requester, not others.
    let listed = reviews(&setup, &dba);
    let held = listed.iter().find(|r| r["id"] == review.as_str()).unwrap_or_else(|| panic!("{listed:?}"));
    assert_eq!(held["status"], "pending");
    assert_eq!((&held["kind"], &held["text"], &held["sql"]), (&json!("statement"), &json!(ddl), &json!(ddl)));
    assert!(reviews(&setup, &stranger).is_empty(), "others do not see it");
    let own = control(&setup, &agent, &["review", "approve", &review]);
    assert_eq!(own.status.code(), Some(2), "the requester cannot approve their own statement");
    assert!(!stderr(&own).is_empty());
    let approved = control(&setup, &dba, &["review", "approve", &review, "--reason", "index is fine", "--json"]);
    assert!(approved.status.success(), "{}", stderr(&approved));

    // The identical statement now runs, once.
    let out = psql(&setup.cluster, &url, ddl);
    assert!(out.status.success(), "{}", stderr(&out));
    let exists = setup.cluster.psql(APP_ROLE, "select count(*) from pg_indexes where indexname = 't_id'").unwrap();
    assert_eq!(exists.trim(), "1");
    let out = psql(&setup.cluster, &url, "drop index t_id");
    assert!(stderr(&out).contains("rule ci/drop"), "drop is blocked, not held: {}", stderr(&out));
    let third = stderr(&psql(&setup.cluster, &url, ddl));
    let next = review_id(&third);
    assert_ne!(next, review, "approved once: the next run is held anew");

    // Denied: the requester sees why.
    let denied = control(&setup, &dba, &["review", "deny", &next, "--reason", "one index is enough"]);
    assert!(denied.status.success(), "{}", stderr(&denied));
    let mine = reviews(&setup, &agent);
    let decided = mine.iter().find(|r| r["id"] == next.as_str()).unwrap_or_else(|| panic!("{mine:?}"));
    assert_eq!(decided["status"], "denied", "{decided}");

    // Recorded: the decisions in the session, the reviews in the control session.
    let sessions = grant_sessions(&setup.proctor.data_dir, &grant, 5);
    let all: Vec<_> = sessions.iter().flat_map(|events| decisions(events)).collect();
    let outcomes: Vec<PolicyOutcome> = all.iter().filter(|(_, r, _)| r == "ci/ddl").map(|(o, ..)| *o).collect();
    assert_eq!(
        outcomes,
        [PolicyOutcome::Hold, PolicyOutcome::Hold, PolicyOutcome::Allow, PolicyOutcome::Hold],
        "{all:?}"
    );
    let reader = Reader::open(&setup.proctor.data_dir).unwrap();
    let control_events: Vec<Event> = reader
        .sessions()
        .unwrap()
        .into_iter()
        .filter(|s| s.protocol.as_deref() == Some("control"))
        .flat_map(|s| reader.session_events(s.session_id).unwrap())
        .collect();
    let review_actions: Vec<String> = control_events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Review(r) => Some(format!("{}:{}", r.action.as_str(), r.review_id)),
            _ => None,
        })
        .collect();
    for expected in [
        format!("review_requested:{review}"),
        format!("review_approved:{review}"),
        format!("review_requested:{next}"),
        format!("review_denied:{next}"),
    ] {
        assert!(review_actions.contains(&expected), "{expected} missing from {review_actions:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_evasion_gets_through_the_gateway() {
    // The corpus the classifier is tested with, under the rules it is
    // tested with, sent through the real gateway in both protocols.
    let rules = r#"block = ["copy_program", "alter_system", "load_library", "parser_settings"]
hold = ["ddl", "drop", "truncate", "delete_without_where", "update_without_where", "write_in_cte",
        "copy_file", "do_block", "admin_function", "user_function", "explain_analyze_write",
        "select_into", "sql_prepare", "sql_execute", "set_role", "role_change", "maintenance", "lock"]
approval_group = "dba""#;
    let setup = tokio::task::spawn_blocking(move || start_with(rules)).await.unwrap();
    let tables = "create table customers (id int primary key, name text, email text);
                  create table orders (id int primary key, customer_id int, total_cents int, status text);
                  insert into customers values (1, 'Ada', 'ada@example.com');
                  insert into orders values (1, 1, 100, 'paid');";
    setup.cluster.psql(APP_ROLE, &format!("set role {APP_ROLE}; {tables}")).unwrap();
    let agent = token(&setup, "ci-deploy", "ci");
    let (_, url) = agent_grant(&setup, &agent);
    let url = url.replace("sslmode=require", "sslmode=disable");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);

    let evasions: Vec<String> =
        serde_json::from_str(include_str!("../../adapters/postgres/tests/data/evasions.json")).unwrap();
    assert!(evasions.len() >= 40);
    let refused_by_proctor = |error: &tokio_postgres::Error| {
        error.as_db_error().is_some_and(|db| db.code().code() == "42501" && db.message().starts_with("Proctor "))
    };
    let mut bypasses = Vec::new();
    for sql in &evasions {
        let simple = client.simple_query(sql).await;
        if !simple.as_ref().is_err_and(refused_by_proctor) {
            bypasses.push(format!("simple query {sql:?}: {simple:?}"));
        }
        let parsed = client.prepare(sql).await;
        if !parsed.as_ref().is_err_and(refused_by_proctor) {
            bypasses.push(format!("Parse {sql:?}: {:?}", parsed.map(|_| "prepared")));
        }
    }
    // Statements the classification cache once let through after an
    // allowed statement of the same shape ran: each pair in turn.
    for (allowed, refused) in [
        ("select 1", "select 1 --\r; drop table orders"),
        ("select 1", "select 1 --\r; truncate orders"),
        ("explain (analyze 'off') delete from orders", "explain (analyze 'on') delete from orders"),
        ("explain (analyze 0) delete from orders", "explain (analyze 1) delete from orders"),
        ("copy orders to ''", "copy orders to '/tmp/x'"),
        ("copy orders from ''", "copy orders from '/etc/hostname'"),
    ] {
        let first = client.simple_query(allowed).await;
        assert!(!first.as_ref().is_err_and(refused_by_proctor), "{allowed}: {first:?}");
        let _ = client.prepare(allowed).await;
        let simple = client.simple_query(refused).await;
        if !simple.as_ref().is_err_and(refused_by_proctor) {
            bypasses.push(format!("after {allowed:?}, simple query {refused:?}: {simple:?}"));
        }
        let parsed = client.prepare(refused).await;
        if !parsed.as_ref().is_err_and(refused_by_proctor) {
            bypasses.push(format!("after {allowed:?}, Parse {refused:?}: {:?}", parsed.map(|_| "prepared")));
        }
    }
    assert!(bypasses.is_empty(), "{} bypasses:\n{}", bypasses.len(), bypasses.join("\n"));
    // And nothing changed on the target.
    let left =
        setup.cluster.psql(APP_ROLE, "select (select count(*) from customers) || '/' || (select count(*) from orders)");
    assert_eq!(left.unwrap().trim(), "1/1");
}
