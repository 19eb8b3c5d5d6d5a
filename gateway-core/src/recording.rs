//! A session's view of the recorder: events are collected while a chunk of
//! traffic is parsed and recorded in one batch before that chunk is
//! forwarded, so pipelined traffic costs one round trip to the recorder.

use proctor_schemas::{Direction, EventBody, NewEvent, SessionId, Timestamp};

use crate::{EventSink, SinkError};

/// Where protocol state machines put the events they produce.
pub trait Record {
    /// Adds an event that happened now; returns the seq it will have.
    fn push(&mut self, direction: Direction, body: EventBody) -> u64 {
        self.push_at(Timestamp::now(), direction, body)
    }

    /// Adds an event that happened at `time`.
    fn push_at(&mut self, time: Timestamp, direction: Direction, body: EventBody) -> u64;
}

/// Records one session. Only the task that owns it appends to the session,
/// so the seq of each event is known when it is pushed.
pub struct SessionRecorder<S: EventSink> {
    sink: S,
    session_id: SessionId,
    next_seq: u64,
    pending: Vec<NewEvent>,
    first_pending_seq: u64,
    /// The seq of the session's end event, once pushed.
    end_seq: Option<u64>,
    /// The recorder assigned other seqs than this session expected: what
    /// it holds of the session can no longer be trusted, and nothing more
    /// is recorded.
    diverged: bool,
}

impl<S: EventSink> SessionRecorder<S> {
    pub fn new(sink: S, session_id: SessionId) -> Self {
        SessionRecorder {
            sink,
            session_id,
            next_seq: 0,
            pending: Vec::new(),
            first_pending_seq: 0,
            end_seq: None,
            diverged: false,
        }
    }

    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The seq the next event pushed will have.
    pub fn pending_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether the recorder and this session disagree on its seqs (see
    /// [`SessionRecorder::flush`]): a failed flush then recorded events.
    pub fn diverged(&self) -> bool {
        self.diverged
    }

    /// Whether anything was ever recorded for this session.
    pub fn started(&self) -> bool {
        self.next_seq > 0
    }

    /// Whether the session's end has been pushed.
    pub fn ended(&self) -> bool {
        self.end_seq.is_some()
    }

    /// Drops the events pushed since the last flush: they describe traffic
    /// that will not be forwarded. Their seqs are free again.
    pub fn discard_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.pending.clear();
        self.next_seq = self.first_pending_seq;
        if self.end_seq.is_some_and(|seq| seq >= self.next_seq) {
            self.end_seq = None;
        }
    }

    /// Records everything pushed since the last flush, in one batch. Returns
    /// once the recorder has accepted it; an error means none of it was
    /// recorded and the traffic it describes must not be forwarded.
    pub async fn flush(&mut self) -> Result<(), SinkError> {
        if self.diverged {
            return Err(SinkError(format!(
                "the recording of session {} is no longer reliable; nothing more is recorded",
                self.session_id
            )));
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let count = self.pending.len() as u64;
        let expected_first = self.first_pending_seq;
        let result = self.sink.record_batch(&self.pending).await;
        self.pending.clear();
        match result {
            Ok(seqs) if seqs.first() == Some(&expected_first) && seqs.len() as u64 == count => {
                self.first_pending_seq = self.next_seq;
                Ok(())
            }
            Ok(seqs) => {
                self.diverged = true;
                Err(SinkError(format!(
                    "the recorder assigned seqs {:?}.. where {expected_first} was expected; this session's recording is no longer reliable",
                    seqs.first()
                )))
            }
            Err(error) => {
                // Nothing of the batch was recorded: its seqs are free again.
                self.next_seq = expected_first;
                if self.end_seq.is_some_and(|seq| seq >= expected_first) {
                    self.end_seq = None;
                }
                Err(error)
            }
        }
    }
}

impl<S: EventSink> Record for SessionRecorder<S> {
    fn push_at(&mut self, time: Timestamp, direction: Direction, body: EventBody) -> u64 {
        if self.pending.is_empty() {
            self.first_pending_seq = self.next_seq;
        }
        if matches!(body, EventBody::SessionEnd(_)) {
            self.end_seq = Some(self.next_seq);
        }
        self.pending.push(NewEvent::new(self.session_id, time, direction, body));
        self.next_seq += 1;
        self.next_seq - 1
    }
}

/// Collects events in memory, for tests of state machines.
#[derive(Default)]
pub struct RecordedEvents {
    pub events: Vec<(Direction, EventBody)>,
}

impl Record for RecordedEvents {
    fn push_at(&mut self, _time: Timestamp, direction: Direction, body: EventBody) -> u64 {
        self.events.push((direction, body));
        self.events.len() as u64 - 1
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use proctor_schemas::{EndReason, SessionEnd, Statement};

    use super::*;

    /// Keeps accepted events in memory; refuses batches while `down`.
    #[derive(Clone, Default)]
    struct MemorySink {
        events: Arc<Mutex<Vec<NewEvent>>>,
        down: Arc<AtomicBool>,
    }

    impl EventSink for MemorySink {
        async fn record(&self, event: NewEvent) -> Result<u64, SinkError> {
            self.record_batch(&[event]).await.map(|seqs| seqs[0])
        }

        async fn record_batch(&self, events: &[NewEvent]) -> Result<Vec<u64>, SinkError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(SinkError("the disk is full".into()));
            }
            let mut kept = self.events.lock().unwrap();
            let first = kept.len() as u64;
            kept.extend_from_slice(events);
            Ok((first..kept.len() as u64).collect())
        }
    }

    fn statement(sql: &str) -> EventBody {
        Statement { sql: sql.into(), statement_name: None, portal: None, params: Vec::new() }.into()
    }

    fn end() -> EventBody {
        SessionEnd { reason: EndReason::ClientClosed, message: None }.into()
    }

    #[tokio::test]
    async fn discarded_and_refused_events_free_their_seqs_and_the_end() {
        let sink = MemorySink::default();
        let mut recorder = SessionRecorder::new(sink.clone(), SessionId::new());
        assert_eq!(recorder.push(Direction::ClientToTarget, statement("select 1")), 0);
        recorder.flush().await.unwrap();

        // Parsed, then dropped because it will not be forwarded.
        assert_eq!(recorder.push(Direction::ClientToTarget, statement("never sent")), 1);
        assert_eq!(recorder.push(Direction::Gateway, end()), 2);
        assert!(recorder.ended());
        recorder.discard_pending();
        assert!(!recorder.ended() && !recorder.has_pending());

        // Refused by the recorder: nothing of the batch counts.
        sink.down.store(true, Ordering::SeqCst);
        assert_eq!(recorder.push(Direction::Gateway, end()), 1);
        assert!(recorder.flush().await.is_err());
        assert!(!recorder.ended());

        sink.down.store(false, Ordering::SeqCst);
        assert_eq!(recorder.push(Direction::Gateway, end()), 1);
        recorder.flush().await.unwrap();
        assert!(recorder.ended());
        let kept = sink.events.lock().unwrap();
        assert_eq!(kept.len(), 2);
        assert!(matches!(kept[1].body, EventBody::SessionEnd(_)));
    }
}
