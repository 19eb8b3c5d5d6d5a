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
