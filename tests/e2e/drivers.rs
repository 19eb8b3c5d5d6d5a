//! Drivers' own expectations of a PostgreSQL connection, through Proctor:
//! what psycopg and tokio-postgres rely on about the backend they were
//! told of (its pid, its notifications, terminating it, cancelling it), and
//! values of every built-in type in both formats. Each behaviour here once
//! broke a driver's own test suite through the gateway.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use proctor_recorder::reader::Reader;
use proctor_schemas::EventBody;
use proctor_tests::devcluster::Options;
use proctor_tests::{APP_ROLE, Proctor, ProctorOptions, cluster};
use tokio_postgres::{AsyncMessage, NoTls};

const BIN: &str = env!("CARGO_BIN_EXE_proctor");

fn bin() -> &'static Path {
    Path::new(BIN)
}

fn script(name: &str) -> String {
    format!("{}/tests/e2e/drivers/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs a Python script with psycopg and returns its JSON output.
fn python(name: &str, args: &[&str]) -> serde_json::Value {
    let output = Command::new("python3").arg(script(name)).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{name} failed (scripts/setup installs psycopg):\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
}

#[test]
fn psycopg_is_told_its_backend_and_can_notify_cancel_and_terminate_it() {
    let cluster = cluster(&Options { tls: true, ..Options::default() });
    let mut proctor = Proctor::start(bin(), cluster.port, &ProctorOptions::default());
    let seen = python("psycopg_backend.py", &[&proctor.conninfo("erin", APP_ROLE, "require")]);
    let expected = serde_json::json!({
        "backend_pid_is_the_backends": true,
        "two_connections_two_pids": true,
        "own_notification_pid": true,
        "other_notification_pid": true,
        "rolled_back_on_error": true,
        "usable_after_error": true,
        "cancel": "cancelled",
        "cancel_safe": "cancelled",
        "usable_after_cancel": true,
        "terminated": true,
        "broken_after_terminate": true,
        "terminate_sqlstate": "57P01",
        "newest_protocol_negotiated_down": [3, 9],
    });
    assert_eq!(seen, expected);

    // Both cancels went through Proctor and were recorded in the session.
    proctor.stop();
    let reader = Reader::open(&proctor.data_dir).unwrap();
    let cancels: usize = reader
        .sessions()
        .unwrap()
        .into_iter()
        .filter(|s| s.protocol.as_deref() == Some("postgres"))
        .map(|s| {
            let events = reader.session_events(s.session_id).unwrap();
            events.iter().filter(|e| matches!(&e.body, EventBody::Cancel(c) if c.backend_pid.is_none())).count()
        })
        .sum();
    assert_eq!(cancels, 2, "each cancel request is recorded in the session it cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_notifications_carry_the_pid_of_the_backend_that_sent_them() {
    let cluster = cluster(&Options::default());
    let proctor = Proctor::start(bin(), cluster.port, &ProctorOptions::default());
    let (client, mut connection) =
        tokio_postgres::connect(&proctor.conninfo("frank", APP_ROLE, "disable"), NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = futures_util::StreamExt::next(&mut messages).await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.process_id(), n.payload().to_string()));
            }
        }
    });
    let pid: i32 = client.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    client.batch_execute("listen jobs; notify jobs, 'from myself'").await.unwrap();
    let (from, payload) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
    assert_eq!((from, payload.as_str()), (pid, "from myself"));

    // The cancel token names the same backend, and cancelling through
    // Proctor stops the statement.
    let token = client.cancel_token();
    let sleeping = client.query("select pg_sleep(30)", &[]);
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(NoTls).await.unwrap();
    };
    let (result, ()) = tokio::join!(sleeping, cancel);
    let error = result.unwrap_err();
    assert_eq!(error.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED), "{error}");
    let terminated: bool =
        client.query_one("select pg_terminate_backend($1)", &[&pid]).await.map(|r| r.get(0)).unwrap_or(true);
    assert!(terminated);
    let error = client.simple_query("select 1").await.unwrap_err();
    assert!(client.is_closed() || error.code() == Some(&tokio_postgres::error::SqlState::ADMIN_SHUTDOWN), "{error}");
}

/// Runs `psycopg_types.py` with a seed, bounded generously (it takes a few
/// seconds): a relay that stalls on some frame, type or size fails here
/// instead of hanging the suite.
fn random_types(conninfo: &str, seed: u64) -> String {
    let mut command = Command::new("python3");
    command.arg(script("psycopg_types.py")).args([conninfo, &seed.to_string()]);
    let (status, stdout, stderr) = run_within(command, Duration::from_secs(120));
    assert!(status.success(), "seed {seed}: {stderr}");
    stdout
}

/// Runs a command to its end, killed after `limit` (a hang fails the test
/// instead of the suite); its status, stdout and stderr.
fn run_within(mut command: Command, limit: Duration) -> (std::process::ExitStatus, String, String) {
    let mut child = command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let stdout = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let stderr = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let status = proctor_tests::wait_with_timeout(&mut child, limit);
    (status, stdout.join().unwrap(), stderr.join().unwrap())
}

#[test]
fn random_values_of_every_built_in_type_read_back_as_directly() {
    let cluster = cluster(&Options { tls: true, ..Options::default() });
    let proctor = Proctor::start(bin(), cluster.port, &ProctorOptions::default());
    let direct = format!(
        "host=127.0.0.1 port={} user={APP_ROLE} password={} dbname={APP_ROLE} sslmode=require",
        cluster.port,
        proctor_tests::APP_PASSWORD
    );
    for seed in [1, 2, 3] {
        let expected = random_types(&direct, seed);
        assert!(expected.lines().count() >= 60, "{expected}");
        assert!(expected.contains(" %b "), "binary parameters were sent");
        // Most rounds read values back (a value the server refuses makes a
        // round an error, alike both ways).
        let errors = expected.lines().filter(|l| l.contains(" error ")).count();
        assert!(errors * 4 < expected.lines().count(), "{expected}");
        let through = random_types(&proctor.conninfo("gina", APP_ROLE, "require"), seed);
        if through != expected {
            let first = expected.lines().zip(through.lines()).find(|(a, b)| a != b);
            panic!("seed {seed}: through Proctor differs from directly, first at {first:#?}");
        }
        if std::env::var_os("SHOW_TYPES").is_some() {
            eprintln!("{expected}");
        }
    }
}

#[test]
fn masked_random_values_stay_readable_to_the_driver() {
    // Every detector on: masked values must still be values the driver can
    // read (JSON stays JSON, a withheld value is NULL), and nothing stalls.
    let cluster = cluster(&Options::default());
    let masking = "[masking]\ndefault_profile = \"all\"\n[masking.profiles.all]\ndetectors = [\"all\"]\nactions = { card = \"last4\" }\n";
    let proctor =
        Proctor::start(bin(), cluster.port, &ProctorOptions { extra: masking.to_string(), ..Default::default() });
    let direct = format!(
        "host=127.0.0.1 port={} user={APP_ROLE} password={} dbname={APP_ROLE} sslmode=disable",
        cluster.port,
        proctor_tests::APP_PASSWORD
    );
    // What a driver decodes is what is masked: escapes and exponents in a
    // json document do not hide a secret from the detectors.
    let hidden = r#"import psycopg, sys
with psycopg.connect(sys.argv[1]) as conn:
    for doc in [r'{"e":"ada\u0040example.com"}', r'{"n": 4.111111111111111e15}', r'{"u":"postgres:\/\/admin:hunter2@db\/x"}']:
        print(conn.execute("select %s::json", [doc]).fetchone()[0])
    print(conn.execute("select %s::json", ['{"plain": "nothing here", "n": 1.5e3}']).fetchone()[0])
"#;
    let output =
        Command::new("python3").args(["-c", hidden, &proctor.conninfo("hana", APP_ROLE, "disable")]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let shown = String::from_utf8_lossy(&output.stdout);
    for secret in ["ada@example.com", "4111111111111111", "hunter2"] {
        assert!(!shown.contains(secret), "{secret} reached the client: {shown}");
    }
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines, ["None", "None", "None", "{'plain': 'nothing here', 'n': 1500.0}"], "{shown}");
    for seed in [4, 5] {
        let expected = random_types(&direct, seed);
        let through = random_types(&proctor.conninfo("hana", APP_ROLE, "disable"), seed);
        assert_eq!(through.lines().count(), expected.lines().count(), "seed {seed}");
        let errors = |s: &str| s.lines().filter(|l| l.contains(" error ")).map(str::to_string).collect::<Vec<_>>();
        assert_eq!(errors(&through), errors(&expected), "seed {seed}");
    }
}

/// asyncpg's own test suite (`scripts/setup` fetches it from the driver's
/// source distribution on PyPI), run with the environment pointing at a
/// server; returns (tests that failed or errored, tests passed).
fn asyncpg_suite(port: u16, user: &str, password: &str) -> (Vec<String>, usize) {
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-suites/asyncpg-0.32.0");
    assert!(suite.join("tests").is_dir(), "{} is missing: run scripts/setup", suite.display());
    let mut command = Command::new("python3");
    command
        .args([
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--assert=plain",
            "--tb=native",
            "--import-mode=importlib",
            "--timeout=120",
            "-q",
            "-rfE",
            "tests",
            // Builds clusters of its own with initdb, which refuses root.
            "-k",
            "not TestConnectionAttributes",
            // Asserts that the client stops sending rows of a 4 MB batch
            // within about 2 ms of the server's error: with a hop that
            // records each chunk before forwarding it, the error comes
            // a couple of milliseconds later and the client has sent all
            // of them (the error, the rollback and the rows are right).
            "--deselect",
            "tests/test_execute.py::TestExecuteMany::test_executemany_server_failure_during_writes",
        ])
        .current_dir(&suite)
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", port.to_string())
        .env("PGUSER", user)
        .env("PGPASSWORD", password)
        .env("PGDATABASE", "postgres")
        .env("PGSSLMODE", "disable");
    let (_, output, _) = run_within(command, Duration::from_secs(900));
    let failed: Vec<String> = output
        .lines()
        .filter(|l| l.starts_with("FAILED ") || l.starts_with("ERROR "))
        .map(|l| l.split(" - ").next().unwrap_or(l).to_string())
        .collect();
    let summary = output.lines().rev().find(|l| l.contains(" passed")).unwrap_or_else(|| panic!("{output}"));
    let passed = summary
        .split(", ")
        .find_map(|part| part.trim_matches('=').trim().strip_suffix(" passed").and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no pass count in {summary:?}"));
    (failed, passed)
}

#[test]
fn asyncpg_passes_its_own_test_suite_through_proctor_as_directly() {
    let cluster = cluster(&Options::default());
    // The suite creates roles, databases and extensions, and terminates
    // backends: it runs as a superuser, and so does Proctor's account here.
    cluster.psql("postgres", &format!("alter role {APP_ROLE} superuser")).unwrap();
    let (failed_directly, passed_directly) = asyncpg_suite(cluster.port, APP_ROLE, proctor_tests::APP_PASSWORD);
    assert!(passed_directly >= 300, "directly: {passed_directly} passed, failed: {failed_directly:#?}");
    let mut proctor = Proctor::start(bin(), cluster.port, &ProctorOptions::default());
    let (failed_through, passed_through) = asyncpg_suite(proctor.port, "asyncpg-suite", &proctor.secret);
    assert_eq!(failed_through, failed_directly, "failed through Proctor, against directly");
    assert_eq!(passed_through, passed_directly);
    // Every session the suite opened was recorded, start to end.
    proctor.stop();
    let sessions = Reader::open(&proctor.data_dir).unwrap().sessions().unwrap();
    assert!(sessions.len() > passed_through, "{} sessions recorded for {passed_through} tests", sessions.len());
    assert!(sessions.iter().all(|s| s.end_reason.is_some()), "every session recorded its end");
}
