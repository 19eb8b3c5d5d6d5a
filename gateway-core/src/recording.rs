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
}

impl<S: EventSink> SessionRecorder<S> {
    pub fn new(sink: S, session_id: SessionId) -> Self {
        SessionRecorder { sink, session_id, next_seq: 0, pending: Vec::new(), first_pending_seq: 0 }
    }

    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether anything was ever recorded for this session.
    pub fn started(&self) -> bool {
        self.next_seq > 0
    }

    /// Records everything pushed since the last flush, in one batch. Returns
    /// once the recorder has accepted it; an error means none of it was
    /// recorded and the traffic it describes must not be forwarded.
    pub async fn flush(&mut self) -> Result<(), SinkError> {
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
            Ok(seqs) => Err(SinkError(format!(
                "the recorder assigned seqs {:?}.. where {expected_first} was expected; this session's recording is no longer reliable",
                seqs.first()
            ))),
            Err(error) => {
                // Nothing of the batch was recorded: its seqs are free again.
                self.next_seq = expected_first;
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
