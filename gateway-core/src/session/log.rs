//! One session's recording, shared by the tasks of a multiplexed protocol
//! (SSH channels, HTTP/2 streams): an actor owns the session's recorder and
//! the tasks send to it. Each request is a batch of events; it is answered
//! once the recorder accepted the whole batch (record before forward: a task
//! forwards what a batch describes only after its answer), with the batch's
//! seqs. Seqs follow the order requests reach the actor, dense per session;
//! events keep the times their tasks saw them. Requests waiting together are
//! recorded in one batch (one round trip to the WAL), each still all or
//! nothing: a refused flush refuses every request in it, and none of their
//! seqs are used.

use proctor_schemas::{Direction, EventBody, SessionId, Timestamp};
use tokio::sync::{mpsc, oneshot};

use crate::recording::{Record, SessionRecorder};
use crate::{EventSink, SinkError};

/// Requests waiting for a session's recorder, at most: past it, senders
/// wait (bounded memory).
pub const LOG_QUEUE: usize = 64;

/// Requests recorded in one batch, at most.
const GROUP: usize = 32;

struct Request {
    events: Vec<(Timestamp, Direction, EventBody)>,
    reply: oneshot::Sender<Result<Vec<u64>, SinkError>>,
}

/// A task's way to the session's recording. Cloned for each task; the
/// actor stops when the last handle is dropped.
#[derive(Clone)]
pub struct SessionLog {
    session_id: SessionId,
    requests: mpsc::Sender<Request>,
}

impl SessionLog {
    /// Starts the actor that owns `recorder`; it returns the recorder (for
    /// the session's last words) when every handle is gone.
    pub fn spawn<S: EventSink>(
        recorder: SessionRecorder<S>,
    ) -> (SessionLog, tokio::task::JoinHandle<SessionRecorder<S>>) {
        let (requests, queue) = mpsc::channel(LOG_QUEUE);
        let session_id = recorder.session_id();
        (SessionLog { session_id, requests }, tokio::spawn(run(recorder, queue)))
    }

    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// Records `events` (that happened now) in the session, all or none;
    /// returns their seqs once the recorder accepted them. An error means
    /// none was recorded: what they describe must not be forwarded.
    pub async fn record(&self, events: Vec<(Direction, EventBody)>) -> Result<Vec<u64>, SinkError> {
        let now = Timestamp::now();
        self.record_at(events.into_iter().map(|(direction, body)| (now, direction, body)).collect()).await
    }

    /// [`SessionLog::record`] of events with the times they happened.
    pub async fn record_at(&self, events: Vec<(Timestamp, Direction, EventBody)>) -> Result<Vec<u64>, SinkError> {
        let (reply, answer) = oneshot::channel();
        let closed = || SinkError(format!("the recording of session {} has ended", self.session_id));
        self.requests.send(Request { events, reply }).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

async fn run<S: EventSink>(mut recorder: SessionRecorder<S>, mut queue: mpsc::Receiver<Request>) -> SessionRecorder<S> {
    let mut group: Vec<(Request, std::ops::Range<u64>)> = Vec::with_capacity(GROUP);
    while let Some(first) = queue.recv().await {
        let mut next = Some(first);
        while let Some(request) = next.take() {
            let start = recorder.pending_seq();
            for (time, direction, body) in &request.events {
                recorder.push_at(*time, *direction, body.clone());
            }
            let end = recorder.pending_seq();
            group.push((request, start..end));
            if group.len() < GROUP {
                next = queue.try_recv().ok();
            }
        }
        let flushed = recorder.flush().await;
        for (request, seqs) in group.drain(..) {
            let answer = match &flushed {
                Ok(()) => Ok(seqs.collect()),
                Err(error) => Err(error.clone()),
            };
            // A sender that stopped waiting has its events recorded anyway.
            let _ = request.reply.send(answer);
        }
    }
    recorder
}
