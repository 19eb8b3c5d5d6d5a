//! Just-in-time access end to end: agents and people ask the control API for
//! grants with `proctor grant`, connect with psql using the credential they
//! get, and lose the connection within a second when the grant is revoked
//! or expires. Real cluster, real `proctor up`, tokens from the dev issuer.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use proctor_tests::devcluster::{Cluster, Options, free_port};
use proctor_tests::{APP_ROLE, Proctor, ProctorOptions, cluster, dev_token, run, run_ok, stderr, stdout};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_proctor");

fn bin() -> &'static Path {
    Path::new(BIN)
}

fn token(data_dir: &Path, sub: &str, groups: &str) -> String {
    dev_token(bin(), data_dir, sub, groups)
}

struct Setup {
    cluster: Cluster,
    proctor: Proctor,
    api: String,
}

fn start() -> Setup {
    start_with(false)
}

/// `tls`: the control API over HTTPS with the dev certificate.
fn start_with(tls: bool) -> Setup {
    let cluster = cluster(&Options::default());
    let api_port = free_port();
    let extra = format!(
        r#"database = "{APP_ROLE}"

[identity.dev_issuer]

[control]
listen = "127.0.0.1:{api_port}"
pending_ttl = "1h"
admin_group = "security"
tls = {tls}

[[policies]]
name = "agents"
groups = ["ci"]
resources = ["test-db"]
max_ttl = "1h"

[[policies]]
name = "people"
groups = ["eng"]
resources = ["test-db"]
max_ttl = "30m"
approval = {{ group = "dba", count = 1 }}
"#
    );
    let proctor = Proctor::start(bin(), cluster.port, &ProctorOptions { extra, ..ProctorOptions::default() });
    let scheme = if tls { "https" } else { "http" };
    Setup { cluster, proctor, api: format!("{scheme}://127.0.0.1:{api_port}") }
}

/// `proctor grant ARGS --api API --token TOKEN`.
fn grant(setup: &Setup, token: &str, args: &[&str]) -> Output {
    let mut all: Vec<&str> = vec!["grant"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--api", &setup.api, "--token", token]);
    run(bin(), &all)
}

/// `proctor review ARGS --api API --token TOKEN`.
fn review(setup: &Setup, token: &str, args: &[&str]) -> Output {
    let mut all: Vec<&str> = vec!["review"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--api", &setup.api, "--token", token]);
    run(bin(), &all)
}

fn json(output: &Output) -> Value {
    let text = stdout(output);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {text}\n{}", stderr(output)))
}

fn curl(url: &str) -> String {
    let output = Command::new("curl").args(["-sS", "--max-time", "30", url]).output().expect("curl");
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output)
}

fn psql(cluster: &Cluster, url: &str, sql: &str) -> Output {
    Command::new(cluster.bindir.join("psql")).args(["-X", "-At", "-d", url, "-c", sql]).output().unwrap()
}

#[test]
fn agents_get_a_credential_that_works_until_it_is_revoked_or_expires() {
    let setup = start();
    let agent = token(&setup.proctor.data_dir, "ci-deploy", "ci");

    // Auto-approved by policy: active at once, with a libpq URL.
    let out = grant(
        &setup,
        &agent,
        &["request", "--resource", "test-db", "--ttl", "10m", "--reason", "deploy 4711", "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let granted = json(&out);
    assert_eq!(granted["status"], "active", "{granted}");
    assert_eq!(granted["policy"], "agents");
    let id = granted["id"].as_str().unwrap().to_string();
    let url = granted["credentials"]["url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&format!("postgresql://{id}:pct_")), "{url}");
    // The offer, in the resource's protocol's terms: libpq's.
    let offer = &granted["credentials"]["offer"];
    assert_eq!(
        (&offer["protocol"], &offer["url"], &offer["user"], &offer["sslmode"]),
        (
            &serde_json::json!("postgres"),
            &serde_json::json!(url),
            &serde_json::json!(id),
            &serde_json::json!("require")
        ),
        "{offer}"
    );
    assert!(offer["port"].as_u64().is_some() && offer["host"].is_string() && offer["database"].is_string(), "{offer}");
    let answer = psql(&setup.cluster, &url, "select current_user, 40 + 2");
    assert!(answer.status.success(), "{}", stderr(&answer));
    assert_eq!(stdout(&answer).trim(), format!("{APP_ROLE}|42"), "the target account, not the grant, runs the SQL");

    // The credential is shown once: `show` has no credentials.
    let shown = json(&grant(&setup, &agent, &["show", &id, "--json"]));
    assert_eq!(shown["credential_issued"], true);
    assert!(shown["credentials"].is_null(), "{shown}");

    // A wrong password with the grant's id is refused, plainly.
    let wrong = url.replace(":pct_", ":pct_x");
    let refused = psql(&setup.cluster, &wrong, "select 1");
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("password authentication failed for grant"), "{}", stderr(&refused));

    // Operations: health and Prometheus metrics (open, counts only).
    let metrics = curl(&format!("{}/metrics", setup.api));
    for expected in [
        "proctor_grants{status=\"active\"} 1",
        "proctor_grant_events_total{action=\"grant_approved\"} 1",
        "proctor_sessions_total{resource=\"test-db\"} 2",
        "# TYPE proctor_recorder_wal_bytes_total counter",
        "proctor_data_dir_free_bytes ",
        "proctor_recorder_wal_files ",
        "proctor_recorder_seal_queue ",
        "proctor_recorder_failed 0",
        "proctor_policy_decisions_total{outcome=\"block\"} 0",
    ] {
        assert!(metrics.contains(expected), "{expected:?} missing from:\n{metrics}");
    }
    assert_eq!(curl(&format!("{}/healthz", setup.api)), "ok");

    // Revocation ends a live session within a second, with the reason.
    let mut live = Command::new(setup.cluster.bindir.join("psql"))
        .args(["-X", "-At", "-d", &url, "-c", "select pg_sleep(30)"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(live.try_wait().unwrap().is_none(), "the session should be running");
    let metrics = curl(&format!("{}/metrics", setup.api));
    assert!(metrics.contains("proctor_sessions_live{resource=\"test-db\"} 1"), "{metrics}");
    assert!(metrics.contains("proctor_grant_sessions_live 1"), "{metrics}");
    let revoked_at = Instant::now();
    let out = grant(&setup, &agent, &["revoke", &id, "--reason", "deploy done", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["status"], "revoked");
    let status = proctor_tests::wait_with_timeout(&mut live, Duration::from_secs(10));
    let ended_in = revoked_at.elapsed();
    let mut message = String::new();
    std::io::Read::read_to_string(live.stderr.as_mut().unwrap(), &mut message).unwrap();
    assert!(!status.success());
    assert!(message.contains("revoked by ci-deploy: deploy done"), "{message}");
    println!("revocation to session end: {} ms", ended_in.as_millis());

    // The dead credential is refused with the same clarity.
    let after = psql(&setup.cluster, &url, "select 1");
    assert!(!after.status.success());
    assert!(stderr(&after).contains(&format!("grant {id} was revoked by ci-deploy")), "{}", stderr(&after));

    // A grant of a few seconds ends its session when it expires.
    let out =
        grant(&setup, &agent, &["request", "--resource", "test-db", "--ttl", "3s", "--reason", "short", "--json"]);
    let short = json(&out);
    let short_url = short["credentials"]["url"].as_str().unwrap().to_string();
    let started = Instant::now();
    let expired = psql(&setup.cluster, &short_url, "select pg_sleep(30)");
    assert!(!expired.status.success());
    assert!(started.elapsed() < Duration::from_secs(15), "the session outlived its grant");
    assert!(stderr(&expired).contains("expired"), "{}", stderr(&expired));
    let short_id = short["id"].as_str().unwrap().to_string();
    let shown = json(&grant(&setup, &agent, &["show", &short_id, "--json"]));
    assert_eq!(shown["status"], "expired", "{shown}");

    // Everything is recorded and searchable: each step of each grant, and
    // the sessions' ends with their reason and their grant.
    let mut proctor = setup.proctor;
    assert!(proctor.stop().success());
    let data_dir = proctor.data_dir.to_str().unwrap().to_string();
    let count = |query: &str| {
        let out = run_ok(bin(), &["search", "--data-dir", &data_dir, query, "--json", "--limit", "100"]);
        let hits = stdout(&out);
        eprintln!("{query}:\n{hits}");
        hits.lines().count()
    };
    assert_eq!(count(&format!("grant:{id} kind:grant_requested actor:ci-deploy")), 1);
    assert_eq!(count(&format!("grant:{id} kind:grant_approved actor:policy")), 1);
    assert_eq!(count(&format!("grant:{id} kind:grant_revoked actor:ci-deploy \"deploy done\"")), 1);
    assert_eq!(count(&format!("grant:{short_id} kind:grant_expired")), 1);
    assert_eq!(count("kind:session_end end_reason:grant_revoked"), 1);
    assert_eq!(count("kind:session_end end_reason:grant_expired"), 1);
    assert_eq!(
        count(&format!("grant:{id} kind:session_start subject:ci-deploy -end_reason:auth_failed")),
        2,
        "the two sessions under it"
    );
    // And the two refused attempts on its credential: a wrong password,
    // and the grant used after its revocation.
    assert_eq!(count(&format!("grant:{id} kind:session_end end_reason:auth_failed subject:ci-deploy")), 2);
}

#[test]
fn policy_decides_and_approvers_approve_but_never_their_own_request() {
    let setup = start();
    let data_dir = &setup.proctor.data_dir;
    let agent = token(data_dir, "ci-deploy", "ci");
    let erin = token(data_dir, "erin", "eng,dba");
    let dan = token(data_dir, "dan", "dba");
    let mallory = token(data_dir, "mallory", "sales");

    // Refusals: too long, unknown resource, no policy, no reason, bad token.
    let out = grant(&setup, &agent, &["request", "--resource", "test-db", "--ttl", "2h", "--reason", "x", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let denied = json(&out);
    assert_eq!(denied["status"], "denied");
    assert!(denied["status_reason"].as_str().unwrap().contains("at most 1h"), "{denied}");
    let out = grant(&setup, &agent, &["request", "--resource", "nope-db", "--ttl", "5m", "--reason", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("there is no resource \"nope-db\""), "{}", stderr(&out));
    let out = grant(&setup, &mallory, &["request", "--resource", "test-db", "--ttl", "5m", "--reason", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no policy lets the groups sales request resource test-db"), "{}", stderr(&out));
    let out = grant(&setup, &agent, &["request", "--resource", "test-db", "--ttl", "5m", "--reason", " "]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("a reason is required"), "{}", stderr(&out));
    let out = grant(&setup, "not.a.token", &["list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));

    // erin (eng) needs a dba's approval; she is a dba herself, and still
    // cannot approve her own request.
    let out = grant(
        &setup,
        &erin,
        &["request", "--resource", "test-db", "--ttl", "15m", "--reason", "fix order 12", "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let pending = json(&out);
    assert_eq!(pending["status"], "pending", "{pending}");
    assert!(pending["credentials"].is_null());
    let id = pending["id"].as_str().unwrap().to_string();
    let out = grant(&setup, &erin, &["approve", &id]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot approve it"), "{}", stderr(&out));
    let out = grant(&setup, &agent, &["approve", &id]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains(&format!("there is no grant {id}")), "{}", stderr(&out));

    // Approvers see what waits for them; the agent sees only its own.
    let listed = stdout(&grant(&setup, &dan, &["list", "--status", "pending", "--json"]));
    assert!(listed.contains(&id), "{listed}");
    let listed = stdout(&grant(&setup, &agent, &["list", "--json"]));
    assert!(!listed.contains(&id), "{listed}");
    let out = grant(&setup, &agent, &["show", &id]);
    assert_eq!(out.status.code(), Some(2), "another's grant is not shown");

    // dan approves; the requester's next `show` reveals the credential, once.
    let out = grant(&setup, &dan, &["approve", &id, "--reason", "ticket OPS-9", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let approved = json(&out);
    assert_eq!(approved["status"], "active");
    assert!(approved["credentials"].is_null(), "the approver never sees the credential");
    let out = grant(&setup, &dan, &["show", &id, "--json"]);
    assert!(json(&out)["credentials"].is_null(), "not to the approver either");
    let revealed = json(&grant(&setup, &erin, &["show", &id, "--json"]));
    let url = revealed["credentials"]["url"].as_str().expect("revealed to the requester").to_string();
    assert!(json(&grant(&setup, &erin, &["show", &id, "--json"]))["credentials"].is_null(), "only once");
    let answer = psql(&setup.cluster, &url, "select 7");
    assert!(answer.status.success(), "{}", stderr(&answer));

    // `--wait` blocks until the decision and then prints the credential.
    let waiter = {
        let (api, erin) = (setup.api.clone(), erin.clone());
        std::thread::spawn(move || {
            run(
                bin(),
                &[
                    "grant",
                    "request",
                    "--resource",
                    "test-db",
                    "--ttl",
                    "5m",
                    "--reason",
                    "again",
                    "--wait",
                    "--json",
                    "--api",
                    &api,
                    "--token",
                    &erin,
                ],
            )
        })
    };
    let started = Instant::now();
    let waiting = loop {
        let listed = stdout(&grant(&setup, &dan, &["list", "--status", "pending", "--json"]));
        if let Some(line) = listed.lines().find(|l| l.contains("\"again\"")) {
            break serde_json::from_str::<Value>(line).unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the waiting request never appeared");
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = grant(&setup, &dan, &["approve", waiting["id"].as_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = waiter.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let decided = json(&out);
    assert_eq!(decided["status"], "active");
    assert!(decided["credentials"]["url"].as_str().is_some(), "{decided}");

    // A denial reaches the waiting requester too.
    let out = grant(&setup, &erin, &["request", "--resource", "test-db", "--ttl", "5m", "--reason", "third", "--json"]);
    let third = json(&out)["id"].as_str().unwrap().to_string();
    let out = grant(&setup, &dan, &["deny", &third, "--reason", "not today"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = json(&grant(&setup, &erin, &["show", &third, "--json"]));
    assert_eq!(shown["status"], "denied");
    assert_eq!(shown["status_reason"], "denied by dan: not today");

    // Reviews of held statements: the same API, flags and refusals.
    let out = review(&setup, &dan, &["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).is_empty() && stderr(&out).contains("no reviews"), "{}", stderr(&out));
    let out = review(&setup, &dan, &["list", "--status", "maybe", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown status \"maybe\""), "{}", stderr(&out));
    for action in ["show", "approve", "deny"] {
        let out = review(&setup, &dan, &[action, "r_0000000000000000"]);
        assert_eq!(out.status.code(), Some(2), "{action}");
        assert!(stderr(&out).contains("there is no review r_0000000000000000"), "{}", stderr(&out));
    }
    let out = review(&setup, "not.a.token", &["list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
    assert!(curl(&format!("{}/metrics", setup.api)).contains("proctor_reviews{status=\"pending\"} 0"));
}

#[test]
fn over_https_the_cli_trusts_only_the_certificate_it_is_given() {
    let setup = start_with(true);
    let data_dir = &setup.proctor.data_dir;
    let agent = token(data_dir, "ci-deploy", "ci");
    let cert = data_dir.join("tls").join("proctor-dev.crt");
    let cert = cert.to_str().unwrap();
    let request = ["request", "--resource", "test-db", "--ttl", "5m", "--reason", "over tls", "--json"];

    // No certificate to trust: told what to pass.
    let out = grant(&setup, &agent, &request);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--ca-file"), "{}", stderr(&out));
    // Another certificate: the handshake fails, nothing is sent.
    let elsewhere = tempfile::tempdir().unwrap();
    let other = elsewhere.path().join("other.crt");
    std::fs::write(&other, stranger_certificate()).unwrap();
    let mut args = request.to_vec();
    args.extend_from_slice(&["--ca-file", other.to_str().unwrap()]);
    let out = grant(&setup, &agent, &args);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("TLS"), "{}", stderr(&out));
    // The server's own certificate: the grant, and a session with it.
    let mut args = request.to_vec();
    args.extend_from_slice(&["--ca-file", cert]);
    let out = grant(&setup, &agent, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let url = json(&out)["credentials"]["url"].as_str().unwrap().to_string();
    let answer = psql(&setup.cluster, &url, "select 'over tls'");
    assert!(answer.status.success(), "{}", stderr(&answer));
}

/// A self-signed certificate for loopback that this Proctor never saw (PEM).
fn stranger_certificate() -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = proctor_gateway_core::config::TlsConfig::default();
    let (_, path) = proctor_gateway_core::tls::http_server_config(&config, dir.path()).unwrap();
    std::fs::read_to_string(path).unwrap()
}

/// Revocation used to end the client's connection at once while the target
/// went on running the statement in flight: an UPDATE committed seconds
/// after the grant was revoked. Now the target's statement is cancelled
/// (or its backend terminated), and the client is told so.
#[test]
fn regression_revocation_stops_the_statement_in_flight() {
    let setup = start();
    setup
        .cluster
        .psql(
            APP_ROLE,
            &format!("create table slow (n int); insert into slow values (0); alter table slow owner to {APP_ROLE}"),
        )
        .unwrap();
    let agent = token(&setup.proctor.data_dir, "ci-deploy", "ci");
    let out = grant(&setup, &agent, &["request", "--resource", "test-db", "--ttl", "10m", "--reason", "r", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let granted = json(&out);
    let id = granted["id"].as_str().unwrap().to_string();
    let url = granted["credentials"]["url"].as_str().unwrap().to_string();

    // An UPDATE that commits 5 s after it starts, unless it is stopped.
    let update = "update slow set n = n + 1 where pg_sleep(5) is not null";
    let mut live = Command::new(setup.cluster.bindir.join("psql"))
        .args(["-X", "-At", "-d", &url, "-c", update])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(live.try_wait().unwrap().is_none(), "the update should be running");
    let out = grant(&setup, &agent, &["revoke", &id, "--reason", "stop", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = proctor_tests::wait_with_timeout(&mut live, Duration::from_secs(30));
    assert!(!status.success());
    let mut message = String::new();
    std::io::Read::read_to_string(live.stderr.as_mut().unwrap(), &mut message).unwrap();
    assert!(message.contains("revoked by ci-deploy: stop"), "{message}");
    assert!(message.contains("the statement in flight on the target was"), "{message}");

    // The target runs it no more, and never commits it.
    let running = || {
        setup
            .cluster
            .psql(APP_ROLE, "select count(*) from pg_stat_activity where query like 'update slow%'")
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(running(), "0", "the target still runs the revoked grant's update");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(setup.cluster.psql(APP_ROLE, "select n from slow").unwrap().trim(), "0", "the update committed");

    // Two statements pipelined: a cancel would stop the first and let the
    // target run the second, so the backend is terminated instead.
    let out = grant(&setup, &agent, &["request", "--resource", "test-db", "--ttl", "10m", "--reason", "r", "--json"]);
    let granted = json(&out);
    let id = granted["id"].as_str().unwrap().to_string();
    let url = granted["credentials"]["url"].as_str().unwrap().replace("sslmode=require", "sslmode=disable");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let pipelined = runtime.spawn(async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let slow = client.simple_query("update slow set n = n + 1 where pg_sleep(5) is not null");
        let fast = client.simple_query("update slow set n = n + 100");
        let (slow, fast) = tokio::join!(slow, fast);
        (slow.map(|_| ()), fast.map(|_| ()))
    });
    std::thread::sleep(Duration::from_millis(1500));
    let out = grant(&setup, &agent, &["revoke", &id, "--reason", "stop", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let joined = runtime.block_on(async { tokio::time::timeout(Duration::from_secs(30), pipelined).await });
    let (slow, fast) = joined.expect("the pipelined statements end").expect("the client task ran");
    assert!(slow.is_err() && fast.is_err(), "both statements end with the session: {slow:?} {fast:?}");
    let message = format!("{slow:?}");
    assert!(message.contains("cancelled and its backend terminated"), "{message}");
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(running(), "0");
    assert_eq!(setup.cluster.psql(APP_ROLE, "select n from slow").unwrap().trim(), "0", "a pipelined update committed");
}

/// A grant's credential opened every database the target account could
/// reach; it opens its resource's database only.
#[test]
fn regression_a_grant_opens_only_its_resources_database() {
    let setup = start();
    let agent = token(&setup.proctor.data_dir, "ci-deploy", "ci");
    let out = grant(&setup, &agent, &["request", "--resource", "test-db", "--ttl", "10m", "--reason", "r", "--json"]);
    let url = json(&out)["credentials"]["url"].as_str().unwrap().to_string();
    assert!(url.contains(&format!("/{APP_ROLE}?")), "{url}");
    let ok = psql(&setup.cluster, &url, "select current_database()");
    assert_eq!(stdout(&ok).trim(), APP_ROLE, "{}", stderr(&ok));
    for other in ["postgres", "template1"] {
        let elsewhere = url.replace(&format!("/{APP_ROLE}?"), &format!("/{other}?"));
        let refused = psql(&setup.cluster, &elsewhere, "select current_database()");
        assert!(!refused.status.success(), "{other}: {}", stdout(&refused));
        let expected = format!("opens database \"{APP_ROLE}\" of resource test-db");
        assert!(stderr(&refused).contains(&expected), "{}", stderr(&refused));
    }
}
