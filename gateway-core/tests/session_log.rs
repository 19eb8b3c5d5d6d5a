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

/// The recorder as the gateway's sink; refuses every batch while `down`.
#[derive(Clone)]
struct Recording {
    sink: proctor_recorder::Sink,
    down: Arc<AtomicBool>,
}

impl EventSink for Recording {
    async fn record(&self, event: NewEvent) -> Result<u64, SinkError> {
        self.record_batch(&[event]).await.map(|seqs| seqs[0])
    }

    async fn record_batch(&self, events: &[NewEvent]) -> Result<Vec<u64>, SinkError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(SinkError("the disk is full".into()));
        }
        self.sink.append_slice(events).await.map_err(|e| SinkError(e.to_string()))
    }
}

fn output(text: String) -> EventBody {
    TerminalOutput { channel_id: None, stream: OutputStream::Stdout, data: text.into_bytes() }.into()
}

fn start() -> EventBody {
    SessionStart {
        protocol: Protocol::Ssh,
        resource: Some("host".into()),
        subject: Some("ci-bot".into()),
        groups: Vec::new(),
        grant_id: None,
        client_addr: None,
        target_user: None,
        database: None,
        application_name: None,
        tls: None,
        masking_profile: None,
        message: None,
    }
    .into()
}

const TASKS: usize = 8;
const BATCHES: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_one_session_record_through_its_log_in_order_and_whole() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::open(dir.path(), &RecorderSettings::default()).unwrap();
    let down = Arc::new(AtomicBool::new(false));
    let sink = Recording { sink: recorder.sink(), down: down.clone() };
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
