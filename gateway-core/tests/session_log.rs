//! A multiplexed protocol's session recorded through one actor: many tasks
//! (as SSH channels would be) send batches to the session's `SessionLog`
//! at once, through the real recorder. Every batch is answered only once it
//! is recorded, with its seqs; the session's seqs stay dense, each task's
//! events keep its order, each batch stays together, and a refused batch is
//! recorded nowhere and uses no seq.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use proctor_gateway_core::recording::{Record, SessionRecorder};
use proctor_gateway_core::session::SessionLog;
use proctor_gateway_core::{EventSink, SinkError};
use proctor_recorder::reader::Reader;
use proctor_recorder::{Recorder, RecorderSettings};
use proctor_schemas::{
    Direction, EndReason, EventBody, NewEvent, OutputStream, Protocol, SessionEnd, SessionId, SessionStart,
    TerminalOutput,
};

/// The recorder as the gateway's sink; refuses every batch while `down`,
/// and fails inside (panics) on the next batch after `panic_next` is set.
#[derive(Clone)]
struct Recording {
    sink: proctor_recorder::Sink,
    down: Arc<AtomicBool>,
    panic_next: Arc<AtomicBool>,
    /// The next batch is written, but answered with other seqs.
    skew_next: Arc<AtomicBool>,
}

impl EventSink for Recording {
    async fn record(&self, event: NewEvent) -> Result<u64, SinkError> {
        self.record_batch(&[event]).await.map(|seqs| seqs[0])
    }

    async fn record_batch(&self, events: &[NewEvent]) -> Result<Vec<u64>, SinkError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(SinkError("the disk is full".into()));
        }
        if self.panic_next.swap(false, Ordering::SeqCst) {
            panic!("a defect in the recording");
        }
        let seqs = self.sink.append_slice(events).await.map_err(|e| SinkError(e.to_string()))?;
        if self.skew_next.swap(false, Ordering::SeqCst) {
            return Ok(seqs.into_iter().map(|seq| seq + 1000).collect());
        }
        Ok(seqs)
    }
}

fn output(text: String) -> EventBody {
    TerminalOutput { channel_id: None, stream: OutputStream::Stdout, data: text.into_bytes() }.into()
}

fn start() -> EventBody {
    SessionStart { resource: Some("host".into()), subject: Some("ci-bot".into()), ..SessionStart::new(Protocol::Ssh) }
        .into()
}

const TASKS: usize = 8;
const BATCHES: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_one_session_record_through_its_log_in_order_and_whole() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::open(dir.path(), &RecorderSettings::default()).unwrap();
    let down = Arc::new(AtomicBool::new(false));
    let sink =
        Recording { sink: recorder.sink(), down: down.clone(), panic_next: Arc::default(), skew_next: Arc::default() };
    let id = SessionId::new();
    let mut session = SessionRecorder::new(sink, id);
    session.push(Direction::Gateway, start());
    session.flush().await.unwrap();
    let (log, actor) = SessionLog::spawn(session);

    // Every task sends its batches while the others do.
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            for batch in 0..BATCHES {
                let events: Vec<(Direction, EventBody)> = (0..1 + (task + batch) % 3)
                    .map(|e| (Direction::TargetToClient, output(format!("task {task} batch {batch} event {e}"))))
                    .collect();
                let texts: Vec<String> = events
                    .iter()
                    .map(|(_, b)| match b {
                        EventBody::TerminalOutput(o) => String::from_utf8(o.data.clone()).unwrap(),
                        _ => unreachable!(),
                    })
                    .collect();
                let seqs = log.record(events).await.unwrap();
                assert_eq!(seqs.len(), texts.len());
                assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "a batch's seqs are consecutive: {seqs:?}");
                answered.extend(seqs.into_iter().zip(texts));
            }
            answered
        }));
    }
    let mut answered = Vec::new();
    for task in tasks {
        let mine = task.await.unwrap();
        assert!(mine.windows(2).all(|w| w[0].0 < w[1].0), "a task's events keep its order");
        answered.extend(mine);
    }

    // Refused: nothing recorded, no seq used; then recording goes on.
    down.store(true, Ordering::SeqCst);
    let refused = log.record(vec![(Direction::TargetToClient, output("lost".into()))]).await;
    assert!(refused.is_err(), "a refused batch is an error to its sender");
    down.store(false, Ordering::SeqCst);
    let after = log.record(vec![(Direction::TargetToClient, output("after".into()))]).await.unwrap();
    answered.push((after[0], "after".to_string()));

    drop(log);
    let mut session = actor.await.unwrap();
    session.push(Direction::Gateway, SessionEnd { reason: EndReason::ClientClosed, message: None }.into());
    session.flush().await.unwrap();
    recorder.close().unwrap();

    let events = Reader::open(dir.path()).unwrap().session_events(id).unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (0..events.len() as u64).collect::<Vec<_>>(), "dense seqs from 0");
    answered.sort();
    assert_eq!(answered.len() + 2, events.len(), "start, every answered event, end; nothing refused");
    for (seq, text) in &answered {
        match &events[*seq as usize].body {
            EventBody::TerminalOutput(o) => assert_eq!(&String::from_utf8_lossy(&o.data), text, "seq {seq}"),
            other => panic!("seq {seq}: {other:?}"),
        }
    }
    assert!(!events.iter().any(|e| matches!(&e.body, EventBody::TerminalOutput(o) if o.data == b"lost")));
}

/// Opens a session through the real recorder and hands it to a log.
async fn open_log(
    dir: &std::path::Path,
) -> (Recorder, Recording, SessionId, SessionLog, tokio::task::JoinHandle<SessionRecorder<Recording>>) {
    let recorder = Recorder::open(dir, &RecorderSettings::default()).unwrap();
    let sink = Recording {
        sink: recorder.sink(),
        down: Arc::default(),
        panic_next: Arc::default(),
        skew_next: Arc::default(),
    };
    let id = SessionId::new();
    let mut session = SessionRecorder::new(sink.clone(), id);
    session.push(Direction::Gateway, start());
    session.flush().await.unwrap();
    let (log, actor) = SessionLog::spawn(session);
    (recorder, sink, id, log, actor)
}

/// One request the recorder refuses (a second `session_start`) among others
/// waiting with it is refused alone: the others are recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_does_not_take_the_others_waiting_with_it_down() {
    let dir = tempfile::tempdir().unwrap();
    let (recorder, _sink, id, log, actor) = open_log(dir.path()).await;
    for round in 0..5 {
        let mut tasks = Vec::new();
        for task in 0..16 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let body = if task == 7 { start() } else { output(format!("round {round} task {task}")) };
                (task, log.record(vec![(Direction::TargetToClient, body)]).await)
            }));
        }
        for task in tasks {
            let (task, answer) = task.await.unwrap();
            assert_eq!(answer.is_ok(), task != 7, "round {round} task {task}: {answer:?}");
        }
    }
    drop(log);
    let mut session = actor.await.unwrap();
    session.push(Direction::Gateway, SessionEnd { reason: EndReason::ClientClosed, message: None }.into());
    session.flush().await.unwrap();
    recorder.close().unwrap();
    let events = Reader::open(dir.path()).unwrap().session_events(id).unwrap();
    assert_eq!(events.len(), 1 + 5 * 15 + 1, "start, the 75 good requests, end");
    assert!(events.iter().enumerate().all(|(i, e)| e.seq == i as u64));
}

/// The recording failing inside (a panic) refuses the request, records the
/// session's end as an internal error, and refuses everything after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_that_fails_inside_ends_the_session_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (recorder, sink, id, log, actor) = open_log(dir.path()).await;
    log.record(vec![(Direction::TargetToClient, output("before".into()))]).await.unwrap();
    sink.panic_next.store(true, Ordering::SeqCst);
    assert!(log.record(vec![(Direction::TargetToClient, output("lost".into()))]).await.is_err());
    let after = log.record(vec![(Direction::TargetToClient, output("after".into()))]).await;
    assert!(after.unwrap_err().0.contains("has ended"), "nothing more is taken");
    drop(log);
    let session = actor.await.unwrap();
    assert!(session.ended());
    recorder.close().unwrap();
    let events = Reader::open(dir.path()).unwrap().session_events(id).unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind().as_str()).collect();
    assert_eq!(kinds, ["session_start", "terminal_output", "session_end"]);
    assert!(matches!(&events[2].body, EventBody::SessionEnd(end) if end.reason == EndReason::InternalError));
}

/// The recorder answering a batch with seqs the session did not expect (it
/// wrote the batch): the log neither tries it again nor takes anything more,
/// so nothing is recorded twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorder_that_disagrees_on_seqs_stops_the_log_without_recording_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (recorder, sink, id, log, actor) = open_log(dir.path()).await;
    sink.skew_next.store(true, Ordering::SeqCst);
    let mut tasks = Vec::new();
    for task in 0..8 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            log.record(vec![(Direction::TargetToClient, output(format!("task {task}")))]).await
        }));
    }
    for task in tasks {
        assert!(task.await.unwrap().is_err(), "every sender of the group, and every one after, is refused");
    }
    assert!(log.record(vec![(Direction::TargetToClient, output("after".into()))]).await.is_err());
    drop(log);
    let session = actor.await.unwrap();
    assert!(session.diverged());
    recorder.close().unwrap();
    let events = Reader::open(dir.path()).unwrap().session_events(id).unwrap();
    let outputs: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::TerminalOutput(o) => Some(String::from_utf8_lossy(&o.data).into_owned()),
            _ => None,
        })
        .collect();
    let distinct: std::collections::BTreeSet<&String> = outputs.iter().collect();
    assert_eq!(distinct.len(), outputs.len(), "nothing recorded twice: {outputs:?}");
}
