//! One session's recording, shared by the tasks of a multiplexed protocol
//! (SSH channels, HTTP/2 streams): an actor owns the session's recorder and
//! the tasks send to it. Each request is a batch of events; it is answered
//! once the recorder accepted the whole batch (record before forward: a task
//! forwards what a batch describes only after its answer), with the batch's
//! seqs. Seqs follow the order requests reach the actor, dense per session;
//! events keep the times their tasks saw them. Requests waiting together are
//! recorded in one batch (one round trip to the WAL), each still all or
//! nothing: a batch the recorder refuses is tried again request by request,
//! so that one request (too large beside the others, an event after the
//! session's end) is refused alone, and a refused request uses no seq. If
//! the recording itself fails (a panic, or the recorder and the session
//! disagreeing on seqs), its senders are refused, the session's end is
//! recorded if it can be, and the log takes nothing more. Seqs follow the
//! order requests reach the actor; times are when each task saw its events,
//! so across tasks the two orders may differ by the time a request waits.

use proctor_schemas::{Direction, EndReason, EventBody, SessionEnd, SessionId, Timestamp};
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
    let mut group: Vec<Request> = Vec::with_capacity(GROUP);
    while let Some(first) = queue.recv().await {
        group.push(first);
        while group.len() < GROUP {
            let Ok(request) = queue.try_recv() else { break };
            group.push(request);
        }
        // A request alone is moved into the recorder; a group's are copied,
        // to be tried one by one if the recorder refuses them together.
        let ranges: Vec<std::ops::Range<u64>> = if group.len() == 1 {
            vec![push_owned(&mut recorder, &mut group[0])]
        } else {
            group.iter().map(|request| push(&mut recorder, request)).collect()
        };
        let flushed = flush(&mut recorder).await;
        match flushed {
            Ok(()) => {
                for (request, seqs) in group.drain(..).zip(ranges) {
                    // A sender that stopped waiting has its events recorded anyway.
                    let _ = request.reply.send(Ok(seqs.collect()));
                }
            }
            // Refused together (too large as one batch, or one request the
            // recorder refuses, an event after the session's end): each is
            // tried alone, so one request does not take the others down. The
            // refused flush recorded nothing and freed its seqs.
            Err(Flush::Refused(_)) if group.len() > 1 => {
                let mut broken = None;
                for request in group.drain(..) {
                    if let Some(error) = &broken {
                        let _ = request.reply.send(Err(SinkError::clone(error)));
                        continue;
                    }
                    let seqs = push(&mut recorder, &request);
                    let answer = match flush(&mut recorder).await {
                        Ok(()) => Ok(seqs.collect()),
                        Err(failed @ Flush::Broken(_)) => {
                            broken = Some(failed.error());
                            Err(failed.error())
                        }
                        Err(failed) => Err(failed.error()),
                    };
                    let _ = request.reply.send(answer);
                }
                if let Some(error) = broken {
                    stop(&mut recorder, &error).await;
                    break;
                }
            }
            Err(failed) => {
                let error = failed.error();
                for request in group.drain(..) {
                    let _ = request.reply.send(Err(error.clone()));
                }
                if let Flush::Broken(_) = failed {
                    stop(&mut recorder, &error).await;
                    break;
                }
            }
        }
    }
    recorder
}

/// The recording failed inside: its end is recorded if it can be; the log
/// then takes nothing more (senders are told the recording has ended).
async fn stop<S: EventSink>(recorder: &mut SessionRecorder<S>, error: &SinkError) {
    if recorder.ended() {
        return;
    }
    let message = format!("{}; the session's recording stopped", error.0);
    recorder.push(Direction::Gateway, SessionEnd { reason: EndReason::InternalError, message: Some(message) }.into());
    let _ = flush(recorder).await;
}

/// Pushes a request's events; their seqs.
fn push<S: EventSink>(recorder: &mut SessionRecorder<S>, request: &Request) -> std::ops::Range<u64> {
    let start = recorder.pending_seq();
    for (time, direction, body) in &request.events {
        recorder.push_at(*time, *direction, body.clone());
    }
    start..recorder.pending_seq()
}

/// Pushes a request's events, moving them out of it; their seqs.
fn push_owned<S: EventSink>(recorder: &mut SessionRecorder<S>, request: &mut Request) -> std::ops::Range<u64> {
    let start = recorder.pending_seq();
    for (time, direction, body) in request.events.drain(..) {
        recorder.push_at(time, direction, body);
    }
    start..recorder.pending_seq()
}

/// How a flush failed.
enum Flush {
    /// The recorder refused the batch: none of it was recorded.
    Refused(SinkError),
    /// The recording cannot go on: its code panicked, or the recorder and
    /// the session disagree on its seqs (the batch may have been written).
    Broken(String),
}

impl Flush {
    fn error(&self) -> SinkError {
        match self {
            Flush::Refused(error) => error.clone(),
            Flush::Broken(what) => SinkError(format!("the recording failed internally ({what})")),
        }
    }
}

async fn flush<S: EventSink>(recorder: &mut SessionRecorder<S>) -> Result<(), Flush> {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(recorder.flush()).catch_unwind().await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) if recorder.diverged() => Err(Flush::Broken(error.0)),
        Ok(Err(error)) => Err(Flush::Refused(error)),
        Err(panic) => {
            let what = super::panic_message(&*panic);
            tracing::error!(session_id = %recorder.session_id(), panic = %what, "a session's recording failed internally");
            recorder.discard_pending();
            Err(Flush::Broken(what))
        }
    }
}
