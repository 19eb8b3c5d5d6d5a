//! The session lifecycle as the recording tells it, whatever ends a
//! session before it reaches its target: a refused password, a panic inside
//! the gateway, a shutdown during start-up. Each is recorded in the real
//! recorder (a temp dir), in seq order, start first and end last; the
//! client gets a protocol-native answer where one is possible.

use std::sync::Arc;
use std::time::Duration;

use proctor_gateway_core::auth::{AuthError, AuthRequest, Authenticator, Identity, SharedSecretAuthenticator};
use proctor_gateway_core::{EventSink, SinkError};
use proctor_postgres::{self as postgres, PgResource, SampleLimits, Shared, Target};
use proctor_recorder::reader::Reader;
use proctor_recorder::{Recorder, RecorderSettings};
use proctor_schemas::{EndReason, Event, EventBody, NewEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The recorder as the gateway's sink.
#[derive(Clone)]
struct Recording(proctor_recorder::Sink);

impl EventSink for Recording {
    async fn record(&self, event: NewEvent) -> Result<u64, SinkError> {
        self.0.append(event).await.map_err(|e| SinkError(e.to_string()))
    }

    async fn record_batch(&self, events: &[NewEvent]) -> Result<Vec<u64>, SinkError> {
        self.0.append_slice(events).await.map_err(|e| SinkError(e.to_string()))
    }
}

/// An authenticator that fails inside the gateway: a defect, as a panic.
struct Panicking;

impl Authenticator for Panicking {
    async fn authenticate(&self, _request: &AuthRequest<'_>) -> Result<Identity, AuthError> {
        panic!("a defect in authentication")
    }
}

const SECRET: &str = "the-resource-secret";

/// A resource whose target is never reached (every session here ends
/// before): a port nothing listens on.
fn resource() -> Arc<PgResource> {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    Arc::new(PgResource {
        name: "db".into(),
        allow_plaintext: true,
        target: Target {
            address: closed.to_string(),
            user: "app".into(),
            password: "unused".into(),
            tls: None,
            connect_timeout: Duration::from_secs(5),
        },
        limits: SampleLimits::default(),
        sessions: Default::default(),
        catalog: Default::default(),
        databases: vec!["app".into()],
    })
}

/// Serves one resource with `auth`, runs `client` against its port (it may
/// stop the gateway itself), stops the gateway, and returns the recorded
/// postgres sessions.
async fn run<A: Authenticator, F: std::future::Future<Output = ()>>(
    auth: A,
    client: impl FnOnce(u16, tokio::sync::watch::Sender<bool>) -> F,
) -> Vec<Vec<Event>> {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::open(dir.path(), &RecorderSettings::default()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let served = tokio::spawn(postgres::serve(
        resource(),
        listener,
        Recording(recorder.sink()),
        Arc::new(auth),
        None,
        Shared::default(),
        stopped,
    ));
    client(port, stop.clone()).await;
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(30), served).await.expect("the gateway stops").unwrap();
    recorder.close().unwrap();
    let reader = Reader::open(dir.path()).unwrap();
    reader
        .sessions()
        .unwrap()
        .into_iter()
        .filter(|s| s.protocol.as_deref() == Some("postgres"))
        .map(|s| reader.session_events(s.session_id).unwrap())
        .collect()
}

/// The kinds of a session's events, and its end reason.
fn story(events: &[Event]) -> (Vec<&'static str>, Option<EndReason>) {
    let kinds = events.iter().map(|e| e.kind().as_str()).collect();
    let end = events.iter().find_map(|e| match &e.body {
        EventBody::SessionEnd(end) => Some(end.reason),
        _ => None,
    });
    (kinds, end)
}

fn connect_as(port: u16, password: &str) -> String {
    format!("host=127.0.0.1 port={port} user=alice password={password} dbname=app sslmode=disable connect_timeout=10")
}

#[tokio::test]
async fn a_refused_password_is_recorded_start_error_end_in_seq_order() {
    let auth = SharedSecretAuthenticator::new([("db".to_string(), SECRET.to_string())]);
    let sessions = run(auth, |port, _| async move {
        let Err(refused) = tokio_postgres::connect(&connect_as(port, "wrong"), tokio_postgres::NoTls).await else {
            panic!("a wrong password is refused")
        };
        let code = refused.as_db_error().map(|e| e.code().code().to_string());
        assert_eq!(code.as_deref(), Some("28P01"), "{refused}");
    })
    .await;
    assert_eq!(sessions.len(), 1);
    let events = &sessions[0];
    assert_eq!(story(events), (vec!["session_start", "error", "session_end"], Some(EndReason::AuthFailed)));
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [0, 1, 2]);
}

#[tokio::test]
async fn a_panic_inside_the_gateway_is_recorded_as_the_sessions_end() {
    let sessions = run(Panicking, |port, _| async move {
        let cut = tokio_postgres::connect(&connect_as(port, SECRET), tokio_postgres::NoTls).await;
        assert!(cut.is_err(), "the connection is cut");
    })
    .await;
    assert_eq!(sessions.len(), 1);
    let (kinds, end) = story(&sessions[0]);
    assert_eq!(kinds.first(), Some(&"session_start"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"session_end"), "{kinds:?}");
    assert_eq!(end, Some(EndReason::InternalError));
}

#[tokio::test]
async fn a_shutdown_during_start_up_is_recorded_as_the_sessions_end() {
    let sessions = run(SharedSecretAuthenticator::new([]), |port, stop| async move {
        // A client that connects and says half of its first message:
        // start-up is still going on when the gateway shuts down, and the
        // gateway closes the connection.
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.write_all(&[0, 0]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.send(true).unwrap();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the gateway closes the connection");
    })
    .await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let (kinds, end) = story(&sessions[0]);
    assert_eq!((kinds.first(), kinds.last()), (Some(&"session_start"), Some(&"session_end")), "{kinds:?}");
    assert_eq!(end, Some(EndReason::Shutdown));
}
