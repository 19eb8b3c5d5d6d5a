//! A second protocol written as nothing but its connection engine: a line
//! protocol (`LOGIN user password`, then lines relayed to a real TCP
//! target), served by the core's accept loop and lifecycle driver, recorded
//! by the real recorder. The lifecycle's order is the core's, whatever the
//! engine: the session's start is recorded before the target is reached,
//! a refusal is recorded before the client is told, the end is recorded
//! before the client hears of it, start-up is bounded, a panic still ends
//! the session, and shutdown ends it through the one `ended` future.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proctor_gateway_core::auth::{AuthRequest, Credential, Identity, SharedSecretAuthenticator};
use proctor_gateway_core::masking::{Masker, Profiles};
use proctor_gateway_core::recording::{Record, SessionRecorder};
use proctor_gateway_core::session::{self, Ending, Engine, Refusal, Refused, RuleScope, Start};
use proctor_gateway_core::{EventSink, SinkError};
use proctor_recorder::reader::Reader;
use proctor_recorder::{Recorder, RecorderSettings};
use proctor_schemas::{
    Direction, EndReason, ErrorReport, EventBody, EventKind, NewEvent, OutputStream, Protocol, SessionId, SessionStart,
    TerminalInput, TerminalOutput,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What happened, in order: events as the recorder accepted them, the
/// target's accepts, what clients were told.
type Timeline = Arc<Mutex<Vec<String>>>;

fn note(timeline: &Timeline, what: String) {
    timeline.lock().unwrap().push(what);
}

/// The real recorder, noting each event it accepted on the timeline;
/// refuses every batch while `down` (a full disk).
#[derive(Clone)]
struct Recording {
    sink: proctor_recorder::Sink,
    timeline: Timeline,
    down: Arc<AtomicBool>,
}

impl EventSink for Recording {
    async fn record(&self, event: NewEvent) -> Result<u64, SinkError> {
        self.record_batch(&[event]).await.map(|seqs| seqs[0])
    }

    async fn record_batch(&self, events: &[NewEvent]) -> Result<Vec<u64>, SinkError> {
        if self.down.load(Ordering::SeqCst) {
            note(&self.timeline, "refused a batch".into());
            return Err(SinkError("the disk is full".into()));
        }
        let seqs = self.sink.append_slice(events).await.map_err(|e| SinkError(e.to_string()))?;
        for event in events {
            note(&self.timeline, format!("recorded {}", event.body.kind().as_str()));
        }
        Ok(seqs)
    }
}

/// One connection of the line protocol.
struct LineEngine {
    target: SocketAddr,
    client_addr: SocketAddr,
    timeline: Timeline,
    client: Option<(BufReader<OwnedReadHalf>, OwnedWriteHalf)>,
    upstream: Option<(BufReader<OwnedReadHalf>, OwnedWriteHalf)>,
    tcp: Option<TcpStream>,
    user: String,
    password: Vec<u8>,
}

const RESOURCE: &str = "lines";

impl LineEngine {
    fn start_of(&self, identity: Option<&Identity>) -> SessionStart {
        SessionStart {
            resource: Some(RESOURCE.into()),
            subject: identity.map(|i| i.subject.clone()),
            client_addr: Some(self.client_addr.to_string()),
            ..SessionStart::new(Protocol::Ssh)
        }
    }
}

impl<S: EventSink> Engine<S> for LineEngine {
    type Error = String;
    type Rules = ();

    const RULES: RuleScope = RuleScope { kind: "line rules", table: "line_rules" };
    const STARTUP_TIMEOUT: Duration = Duration::from_secs(1);

    fn resource(&self) -> &str {
        RESOURCE
    }

    fn unadmitted(&self, identity: Option<&Identity>) -> SessionStart {
        self.start_of(identity)
    }

    async fn start(&mut self) -> Start<String> {
        // Kept before anything is awaited: an interrupted start-up still
        // has the connection to tell.
        let (read, write) = self.tcp.take().unwrap().into_split();
        let (read, _) = self.client.insert((BufReader::new(read), write));
        let mut line = String::new();
        let _ = read.read_line(&mut line).await;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["LOGIN", user, password] => {
                self.user = user.to_string();
                self.password = password.as_bytes().to_vec();
                Start::Credential
            }
            _ => {
                Start::Refused(Refused { error: "ERR say LOGIN user password".into(), reason: EndReason::ClientError })
            }
        }
    }

    fn credential(&self) -> AuthRequest<'_> {
        AuthRequest {
            resource: RESOURCE,
            user: &self.user,
            credential: Credential::Password(&self.password),
            client_addr: self.client_addr,
        }
    }

    /// No rule sets: a grant under rules is refused.
    fn rules(&self, _name: &str, _grant: Option<String>, _session: SessionId) -> Option<()> {
        None
    }

    fn begin(&mut self, identity: &Identity, _: Option<()>, _: Option<Arc<Masker>>, rec: &mut SessionRecorder<S>) {
        rec.push(Direction::Gateway, self.start_of(Some(identity)).into());
    }

    async fn connect(&mut self, _recorder: &mut SessionRecorder<S>) -> Result<(), Refused<String>> {
        let tcp = TcpStream::connect(self.target)
            .await
            .map_err(|e| Refused { error: format!("ERR target: {e}"), reason: EndReason::TargetError })?;
        let (read, write) = tcp.into_split();
        self.upstream = Some((BufReader::new(read), write));
        Ok(())
    }

    async fn open(&mut self) -> Result<(), ()> {
        self.client.as_mut().unwrap().1.write_all(b"OK\n").await.map_err(drop)
    }

    async fn relay<F: Future<Output = Ending> + Send>(
        &mut self,
        recorder: &mut SessionRecorder<S>,
        mut ended: Pin<&mut F>,
    ) -> Ending {
        let (client_r, client_w) = self.client.as_mut().unwrap();
        let (target_r, target_w) = self.upstream.as_mut().unwrap();
        let (mut up, mut down) = (String::new(), String::new());
        loop {
            tokio::select! {
                read = client_r.read_line(&mut up) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        return Ending::new(EndReason::ClientClosed, None);
                    }
                    assert_ne!(up.trim(), "PANIC", "a defect in the engine");
                    recorder.push(Direction::ClientToTarget, TerminalInput { channel_id: None, data: up.clone().into_bytes(), ..Default::default() }.into());
                    if recorder.flush().await.is_err() {
                        return Ending::new(EndReason::RecorderUnavailable, "not recorded".to_string());
                    }
                    let _ = target_w.write_all(std::mem::take(&mut up).as_bytes()).await;
                }
                read = target_r.read_line(&mut down) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        return Ending::new(EndReason::TargetClosed, None);
                    }
                    let output = TerminalOutput { channel_id: None, stream: OutputStream::Stdout, data: down.clone().into_bytes() };
                    recorder.push(Direction::TargetToClient, output.into());
                    if recorder.flush().await.is_err() {
                        return Ending::new(EndReason::RecorderUnavailable, "not recorded".to_string());
                    }
                    let _ = client_w.write_all(std::mem::take(&mut down).as_bytes()).await;
                }
                ending = ended.as_mut() => return ending,
            }
        }
    }

    fn refusal(&self, refusal: &Refusal) -> String {
        format!("ERR {}", refusal.message)
    }

    fn farewell(&self, ending: &Ending) -> Option<String> {
        (ending.reason != EndReason::ClientClosed).then(|| format!("BYE {}", ending.reason.as_str()))
    }

    fn report(&self, error: &String) -> ErrorReport {
        ErrorReport { ref_seq: None, severity: None, sqlstate: None, message: error.clone(), detail: None }
    }

    async fn close(&mut self, error: Option<&String>) {
        if let (Some(error), Some((_, write))) = (error, self.client.as_mut()) {
            note(&self.timeline, format!("told {error}"));
            let _ = write.write_all(format!("{error}\n").as_bytes()).await;
        }
        if let Some((_, write)) = self.client.as_mut() {
            let _ = write.shutdown().await;
        }
    }
}

/// A line echo server: the target.
async fn target(timeline: Timeline) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            note(&timeline, "target accepted".into());
            tokio::spawn(async move {
                let (read, mut write) = tcp.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if write.write_all(format!("echo {line}\n").as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

struct Gateway {
    addr: SocketAddr,
    timeline: Timeline,
    down: Arc<AtomicBool>,
    shutdown: watch::Sender<bool>,
    serving: tokio::task::JoinHandle<()>,
    recorder: Recorder,
    dir: tempfile::TempDir,
}

async fn gateway() -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::open(dir.path(), &RecorderSettings::default()).unwrap();
    let timeline = Timeline::default();
    let down = Arc::new(AtomicBool::new(false));
    let sink = Recording { sink: recorder.sink(), timeline: timeline.clone(), down: down.clone() };
    let target = target(timeline.clone()).await;
    let auth = Arc::new(SharedSecretAuthenticator::new([(RESOURCE.to_string(), "s3cret".to_string())]));
    let profiles = Arc::new(Profiles::none());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (shutdown, watching) = watch::channel(false);
    let line = timeline.clone();
    let serving =
        tokio::spawn(session::serve(RESOURCE, listener, None, watching, move |tcp, client_addr, shutdown| {
            let (sink, auth, profiles, timeline) = (sink.clone(), auth.clone(), profiles.clone(), line.clone());
            async move {
                let engine = LineEngine {
                    target,
                    client_addr,
                    timeline,
                    client: None,
                    upstream: None,
                    tcp: Some(tcp),
                    user: String::new(),
                    password: Vec::new(),
                };
                session::run(engine, sink, &*auth, &profiles, shutdown).await;
            }
        }));
    Gateway { addr, timeline, down, shutdown, serving, recorder, dir }
}

impl Gateway {
    fn timeline(&self) -> Vec<String> {
        self.timeline.lock().unwrap().clone()
    }

    /// Stops serving (every session ends) and reads back the only session.
    async fn finish(self) -> (Vec<proctor_schemas::Event>, Vec<String>) {
        let _ = self.shutdown.send(true);
        tokio::time::timeout(Duration::from_secs(20), self.serving).await.unwrap().unwrap();
        self.recorder.close().unwrap();
        let reader = Reader::open(self.dir.path()).unwrap();
        let sessions = reader.sessions().unwrap();
        assert_eq!(sessions.len(), 1, "one session: {sessions:?}");
        let events = reader.session_events(sessions[0].session_id).unwrap();
        let timeline = self.timeline.lock().unwrap().clone();
        (events, timeline)
    }
}

fn at(timeline: &[String], what: &str) -> usize {
    timeline.iter().position(|t| t == what).unwrap_or_else(|| panic!("{what:?} is not in {timeline:?}"))
}

async fn line(read: &mut BufReader<OwnedReadHalf>) -> String {
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), read.read_line(&mut line)).await.unwrap().unwrap();
    line.trim_end().to_string()
}

async fn client(addr: SocketAddr) -> (BufReader<OwnedReadHalf>, OwnedWriteHalf) {
    let (read, write) = TcpStream::connect(addr).await.unwrap().into_split();
    (BufReader::new(read), write)
}

fn kinds(events: &[proctor_schemas::Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind()).collect()
}

fn end_of(events: &[proctor_schemas::Event]) -> (EndReason, Option<String>) {
    match &events.last().unwrap().body {
        EventBody::SessionEnd(end) => (end.reason, end.message.clone()),
        other => panic!("the last event is {other:?}"),
    }
}

#[tokio::test]
async fn a_session_is_started_before_the_target_is_reached_and_ended_before_the_client_is_told() {
    let gateway = gateway().await;
    let (mut read, mut write) = client(gateway.addr).await;
    write.write_all(b"LOGIN ci-bot s3cret\n").await.unwrap();
    assert_eq!(line(&mut read).await, "OK");
    write.write_all(b"hello\n").await.unwrap();
    assert_eq!(line(&mut read).await, "echo hello");

    let _ = gateway.shutdown.send(true);
    assert_eq!(line(&mut read).await, "BYE shutdown");
    let (events, timeline) = gateway.finish().await;
    assert!(at(&timeline, "recorded session_start") < at(&timeline, "target accepted"), "{timeline:?}");
    assert!(at(&timeline, "recorded session_end") < at(&timeline, "told BYE shutdown"), "{timeline:?}");
    assert_eq!(
        kinds(&events),
        [EventKind::SessionStart, EventKind::TerminalInput, EventKind::TerminalOutput, EventKind::SessionEnd]
    );
    match &events[0].body {
        EventBody::SessionStart(start) => assert_eq!(start.subject.as_deref(), Some("ci-bot")),
        other => panic!("{other:?}"),
    }
    assert_eq!(end_of(&events), (EndReason::Shutdown, Some("Proctor shut down".into())));
}

#[tokio::test]
async fn a_refused_client_is_recorded_before_it_is_told_and_the_target_never_sees_it() {
    let gateway = gateway().await;
    let (mut read, mut write) = client(gateway.addr).await;
    write.write_all(b"LOGIN ci-bot guessed\n").await.unwrap();
    let told = line(&mut read).await;
    assert!(told.starts_with("ERR password authentication failed"), "{told}");
    let (events, timeline) = gateway.finish().await;
    assert!(!timeline.iter().any(|t| t == "target accepted"), "{timeline:?}");
    assert!(at(&timeline, "recorded session_end") < at(&timeline, &format!("told {told}")), "{timeline:?}");
    assert_eq!(kinds(&events), [EventKind::SessionStart, EventKind::Error, EventKind::SessionEnd]);
    assert_eq!(end_of(&events).0, EndReason::AuthFailed);

    // The protocol's own refusal, before any credential, is recorded alike.
    let gateway = self::gateway().await;
    let (mut read, mut write) = client(gateway.addr).await;
    write.write_all(b"HELLO\n").await.unwrap();
    assert_eq!(line(&mut read).await, "ERR say LOGIN user password");
    let (events, _) = gateway.finish().await;
    assert_eq!(kinds(&events), [EventKind::SessionStart, EventKind::Error, EventKind::SessionEnd]);
    assert_eq!(end_of(&events), (EndReason::ClientError, Some("ERR say LOGIN user password".into())));
}

#[tokio::test]
async fn start_up_is_bounded_by_the_engines_limit() {
    let gateway = gateway().await;
    let (mut read, _write) = client(gateway.addr).await;
    // Says nothing: refused at the engine's limit (1 s), not left open.
    let told = line(&mut read).await;
    assert_eq!(told, "ERR start-up took longer than Proctor's limit of 1s");
    let (events, _) = gateway.finish().await;
    assert_eq!(end_of(&events).0, EndReason::ClientError);
}

#[tokio::test]
async fn a_panicking_engine_still_ends_its_session() {
    let gateway = gateway().await;
    let (mut read, mut write) = client(gateway.addr).await;
    write.write_all(b"LOGIN ci-bot s3cret\n").await.unwrap();
    assert_eq!(line(&mut read).await, "OK");
    write.write_all(b"PANIC\n").await.unwrap();
    // The connection is cut.
    let mut rest = String::new();
    let read = tokio::time::timeout(Duration::from_secs(10), read.read_line(&mut rest)).await.unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{rest:?}");
    let timeline = gateway.timeline();
    let (events, _) = gateway.finish().await;
    assert_eq!(kinds(&events), [EventKind::SessionStart, EventKind::SessionEnd], "{timeline:?}");
    let (reason, message) = end_of(&events);
    assert_eq!(reason, EndReason::InternalError);
    assert!(message.unwrap().contains("a defect in the engine"));
}

#[tokio::test]
async fn a_session_the_recorder_refuses_never_reaches_the_target() {
    let gateway = gateway().await;
    gateway.down.store(true, Ordering::SeqCst);
    let (mut read, mut write) = client(gateway.addr).await;
    write.write_all(b"LOGIN ci-bot s3cret\n").await.unwrap();
    let told = line(&mut read).await;
    assert_eq!(told, "ERR Proctor could not record this session (the disk is full)");
    let timeline = gateway.timeline();
    assert!(!timeline.iter().any(|t| t == "target accepted"), "{timeline:?}");
    assert!(!timeline.iter().any(|t| t.starts_with("recorded")), "{timeline:?}");
}
