//! The WAL writer: one thread that assigns sequence numbers, encodes events
//! canonically into WAL records, advances each session's hash chain, writes
//! whole batches with one system call, and acknowledges each append only once
//! its record is in the file (and fsynced, under `fsync = "always"`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use proctor_schemas::chain::ChainHash;
use proctor_schemas::{EventBody, EventKind, NewEvent, SessionId, SessionIdText, canonical};
use tokio::sync::{mpsc, oneshot};

use crate::config::{FsyncPolicy, RecorderSettings};
use crate::layout::{Layout, sync_dir};
use crate::shared::Shared;
use crate::wal::{self, Carried};
use crate::{RecordError, RecorderError, Result};

/// A batch is written once it holds this many bytes, even if more appends wait.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// ... or this many append calls.
const MAX_BATCH_CALLS: usize = 4096;

pub(crate) type SealReply = oneshot::Sender<Result<Option<u64>, RecordError>>;

/// A request to the writer thread.
// Events travel by value: boxing them would cost an allocation per append on
// the hot path, to save bytes in a channel of bounded capacity.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Command {
    Append {
        events: Events,
        ack: Ack,
    },
    /// Periodic wake-up, for age-based rotation.
    Tick,
    /// Close the current WAL file and reply once it is sealed.
    Seal(SealReply),
    Shutdown(oneshot::Sender<()>),
}

#[allow(clippy::large_enum_variant)]
pub(crate) enum Events {
    One(NewEvent),
    Many(Vec<NewEvent>),
}

pub(crate) enum Ack {
    One(oneshot::Sender<Result<u64, RecordError>>),
    Many(oneshot::Sender<Result<Vec<u64>, RecordError>>),
}

impl Ack {
    fn send(self, result: Result<Vec<u64>, RecordError>) {
        // A dropped receiver means the caller stopped waiting; nothing to do.
        match self {
            Ack::One(tx) => {
                let _ = tx.send(result.map(|seqs| seqs.first().copied().unwrap_or_default()));
            }
            Ack::Many(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

/// A closed WAL file handed to the sealer.
pub(crate) struct SealJob {
    pub number: u64,
    pub replies: Vec<SealReply>,
}

#[derive(Clone, Copy)]
struct SessionState {
    next_seq: u64,
    head: ChainHash,
}

pub(crate) struct Writer {
    layout: Layout,
    settings: RecorderSettings,
    shared: Arc<Shared>,
    seal_tx: std::sync::mpsc::Sender<SealJob>,
    file: Arc<File>,
    number: u64,
    len: u64,
    events_in_file: u64,
    opened: Instant,
    sessions: HashMap<SessionId, SessionState>,
    buf: Vec<u8>,
    undo: Vec<(SessionId, Option<SessionState>)>,
    pending: Vec<(Ack, Vec<u64>)>,
    batch_events: u64,
    id_text: SessionIdText,
    /// Set while rotation is impossible because the sealer is failing and its
    /// backlog is full: appends are refused with this reason.
    stalled: Option<String>,
}

impl Writer {
    /// Opens WAL file `number`, carrying `open` sessions into it.
    pub fn create(
        layout: Layout,
        settings: RecorderSettings,
        shared: Arc<Shared>,
        seal_tx: std::sync::mpsc::Sender<SealJob>,
        number: u64,
        open: Vec<Carried>,
    ) -> Result<Writer> {
        let sessions: HashMap<SessionId, SessionState> =
            open.iter().map(|c| (c.session_id, SessionState { next_seq: c.next_seq, head: c.head })).collect();
        let (file, len) = new_wal_file(&layout, number, &open)?;
        let file = Arc::new(file);
        shared.set_current_wal(Some(file.clone()));
        Ok(Writer {
            layout,
            settings,
            shared,
            seal_tx,
            file,
            number,
            len,
            events_in_file: 0,
            opened: Instant::now(),
            sessions,
            buf: Vec::with_capacity(MAX_BATCH_BYTES + 64 * 1024),
            undo: Vec::new(),
            pending: Vec::new(),
            batch_events: 0,
            id_text: SessionIdText::default(),
            stalled: None,
        })
    }

    /// Appends events synchronously, before the thread starts (recovery).
    pub fn append_now(&mut self, events: Vec<NewEvent>) -> Result<Vec<u64>, RecordError> {
        let (tx, mut rx) = oneshot::channel();
        self.encode_call(Events::Many(events), Ack::Many(tx));
        self.commit();
        rx.try_recv().unwrap_or(Err(RecordError::Closed))
    }

    pub fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            let Some(first) = next_command(&mut rx) else {
                self.shutdown(None);
                return;
            };
            let mut seal_replies = Vec::new();
            let mut shutdown = None;
            self.handle(first, &mut seal_replies, &mut shutdown);
            while shutdown.is_none() && self.buf.len() < MAX_BATCH_BYTES && self.pending.len() < MAX_BATCH_CALLS {
                match rx.try_recv() {
                    Ok(command) => self.handle(command, &mut seal_replies, &mut shutdown),
                    Err(_) => break,
                }
            }
            self.commit();
            let too_big = self.len >= self.settings.segment_max_bytes.0;
            let too_old = self.events_in_file > 0 && self.opened.elapsed() >= self.settings.segment_max_age;
            if too_big || too_old || !seal_replies.is_empty() || self.stalled.is_some() {
                self.rotate(seal_replies);
            }
            if let Some(done) = shutdown {
                self.shutdown(Some(done));
                return;
            }
        }
    }

    fn handle(
        &mut self,
        command: Command,
        seal_replies: &mut Vec<SealReply>,
        shutdown: &mut Option<oneshot::Sender<()>>,
    ) {
        match command {
            Command::Append { events, ack } => self.encode_call(events, ack),
            Command::Tick => {}
            Command::Seal(reply) => seal_replies.push(reply),
            Command::Shutdown(done) => *shutdown = Some(done),
        }
    }

    /// Why appends are refused right now, if they are.
    fn refusal(&self) -> Option<RecordError> {
        if let Some(reason) = self.shared.failure() {
            return Some(RecordError::FailedClosed(reason));
        }
        self.stalled.as_ref().map(|reason| RecordError::SealerStalled(reason.clone()))
    }

    fn encode_call(&mut self, events: Events, ack: Ack) {
        if let Some(refusal) = self.refusal() {
            ack.send(Err(refusal));
            return;
        }
        let buf_start = self.buf.len();
        let undo_start = self.undo.len();
        let events_before = self.batch_events;
        let result = match events {
            Events::One(event) => self.encode(event).map(|seq| vec![seq]),
            Events::Many(events) => {
                let mut seqs = Vec::with_capacity(events.len());
                events.into_iter().try_for_each(|event| self.encode(event).map(|seq| seqs.push(seq))).map(|()| seqs)
            }
        };
        match result {
            Ok(seqs) => self.pending.push((ack, seqs)),
            Err(reason) => {
                self.buf.truncate(buf_start);
                self.rollback(undo_start);
                self.batch_events = events_before;
                ack.send(Err(RecordError::Rejected(reason)));
            }
        }
    }

    /// Encodes one event into the batch buffer; returns its seq.
    fn encode(&mut self, event: NewEvent) -> Result<u64, String> {
        let kind = event.body.kind();
        let previous = self.sessions.get(&event.session_id).copied();
        let (seq, prev_head) = match (previous, kind) {
            (None, EventKind::SessionStart) => (0, ChainHash::GENESIS),
            (None, _) => {
                return Err(format!(
                    "session {} is not open: its first event must be session_start, and nothing may follow its session_end",
                    event.session_id
                ));
            }
            (Some(_), EventKind::SessionStart) => {
                return Err(format!("session {} has already started", event.session_id));
            }
            (Some(state), _) => (state.next_seq, state.head),
        };
        let session_id = event.session_id;
        let event = event.with_seq(seq);
        let start = wal::begin_event_record(&mut self.buf);
        canonical::encode(&event.cells(&mut self.id_text), &mut self.buf);
        if self.buf.len() - start > wal::MAX_RECORD {
            let size = self.buf.len() - start;
            self.buf.truncate(start);
            return Err(format!("event of {size} bytes exceeds the WAL record limit of {} bytes", wal::MAX_RECORD));
        }
        let row = wal::finish_record(&mut self.buf, start);
        let head = prev_head.next(&self.buf[row]);
        self.undo.push((session_id, previous));
        if kind == EventKind::SessionEnd {
            self.sessions.remove(&session_id);
        } else {
            self.sessions.insert(session_id, SessionState { next_seq: seq + 1, head });
        }
        self.batch_events += 1;
        Ok(seq)
    }

    fn rollback(&mut self, undo_start: usize) {
        while self.undo.len() > undo_start {
            let Some((id, state)) = self.undo.pop() else { break };
            match state {
                Some(state) => self.sessions.insert(id, state),
                None => self.sessions.remove(&id),
            };
        }
    }

    /// Writes the batch and answers every pending append.
    fn commit(&mut self) {
        if self.buf.is_empty() {
            for (ack, seqs) in self.pending.drain(..) {
                ack.send(Ok(seqs));
            }
            return;
        }
        let written = self.file.write_all_at(&self.buf, self.len).map_err(|e| ("write", e));
        let synced = written.and_then(|()| match self.settings.fsync {
            FsyncPolicy::Always => self.file.sync_data().map_err(|e| ("fsync", e)),
            FsyncPolicy::Interval => Ok(()),
        });
        match synced {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                self.events_in_file += self.batch_events;
                self.shared.dirty.store(true, Ordering::Release);
                self.shared.stats.events.fetch_add(self.batch_events, Ordering::Relaxed);
                self.shared.stats.wal_bytes.fetch_add(self.buf.len() as u64, Ordering::Relaxed);
                self.undo.clear();
                for (ack, seqs) in self.pending.drain(..) {
                    ack.send(Ok(seqs));
                }
            }
            Err((what, error)) => {
                let path = self.layout.wal_path(self.number);
                let reason = format!("{what} {}: {error}", path.display());
                tracing::error!(%reason, events = self.batch_events, "WAL write failed; refusing the batch");
                self.rollback(0);
                // Cut the file back to its last complete batch so that nothing
                // refused stays in it. If that is impossible, or an fsync
                // failed (the kernel may have dropped dirty pages), the WAL's
                // state is unknown: fail closed until restart and recovery.
                let truncated = self.file.set_len(self.len);
                if what == "fsync" || truncated.is_err() {
                    self.shared.fail(format!("{reason}; the WAL could not be restored to its last good state"));
                }
                for (ack, _) in self.pending.drain(..) {
                    ack.send(Err(RecordError::WalWrite(reason.clone())));
                }
            }
        }
        self.buf.clear();
        self.batch_events = 0;
    }

    /// Closes the current WAL file, hands it to the sealer and opens the next.
    fn rotate(&mut self, replies: Vec<SealReply>) {
        if self.events_in_file == 0 {
            self.opened = Instant::now();
            for reply in replies {
                let _ = reply.send(Ok(None));
            }
            return;
        }
        if let Err(reason) = self.shared.wait_for_backlog_room(self.settings.max_unsealed_segments) {
            self.stalled = Some(reason.clone());
            for reply in replies {
                let _ = reply.send(Err(RecordError::SealerStalled(reason.clone())));
            }
            return;
        }
        self.stalled = None;
        let open = self.open_sessions();
        let next = self.number + 1;
        let (file, len) = match new_wal_file(&self.layout, next, &open) {
            Ok(created) => created,
            Err(error) => {
                tracing::warn!(%error, "cannot open the next WAL file; continuing in the current one");
                for reply in replies {
                    let _ = reply.send(Err(RecordError::WalWrite(error.to_string())));
                }
                return;
            }
        };
        let file = Arc::new(file);
        self.shared.set_current_wal(Some(file.clone()));
        let closed = self.number;
        self.file = file;
        self.number = next;
        self.len = len;
        self.events_in_file = 0;
        self.opened = Instant::now();
        self.hand_to_sealer(closed, replies);
    }

    fn hand_to_sealer(&mut self, number: u64, replies: Vec<SealReply>) {
        self.shared.backlog_added();
        if let Err(std::sync::mpsc::SendError(job)) = self.seal_tx.send(SealJob { number, replies }) {
            // The sealer is gone (it only exits after we do); the WAL file
            // stays on disk and is sealed at the next start.
            for reply in job.replies {
                let _ = reply.send(Err(RecordError::Closed));
            }
        }
    }

    fn open_sessions(&self) -> Vec<Carried> {
        let mut open: Vec<Carried> = self
            .sessions
            .iter()
            .map(|(&session_id, state)| Carried { session_id, next_seq: state.next_seq, head: state.head })
            .collect();
        open.sort_by_key(|c| c.session_id);
        open
    }

    /// Ends every open session, writes, fsyncs and hands the last file over.
    fn shutdown(&mut self, done: Option<oneshot::Sender<()>>) {
        self.commit();
        if self.refusal().is_none() && !self.sessions.is_empty() {
            let now = proctor_schemas::Timestamp::now();
            let mut ends: Vec<SessionId> = self.sessions.keys().copied().collect();
            ends.sort();
            let events = ends
                .into_iter()
                .map(|id| {
                    NewEvent::new(
                        id,
                        now,
                        proctor_schemas::Direction::Gateway,
                        EventBody::SessionEnd(proctor_schemas::SessionEnd {
                            reason: proctor_schemas::EndReason::Shutdown,
                            message: Some("the recorder closed while the session was open".to_string()),
                        }),
                    )
                })
                .collect();
            if let Err(error) = self.append_now(events) {
                tracing::error!(%error, "could not record the end of open sessions at shutdown");
            }
        }
        if let Err(error) = self.file.sync_all() {
            tracing::error!(%error, "fsync of the last WAL file failed at shutdown");
        }
        self.shared.set_current_wal(None);
        if self.events_in_file > 0 {
            self.hand_to_sealer(self.number, Vec::new());
        } else if self.sessions.is_empty() {
            let path = self.layout.wal_path(self.number);
            if std::fs::remove_file(&path).is_ok() {
                let _ = sync_dir(&self.layout.wal_dir());
            }
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
    }
}

/// How many times the writer yields its core, looking for more work, before
/// it sleeps. Producers that each await their acknowledgement send their next
/// event within microseconds; catching it without a futex sleep and wake-up
/// halves the cost of a single-event append under load.
const YIELDS_BEFORE_SLEEP: usize = 32;

fn next_command(rx: &mut mpsc::Receiver<Command>) -> Option<Command> {
    for _ in 0..YIELDS_BEFORE_SLEEP {
        match rx.try_recv() {
            Ok(command) => return Some(command),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
    rx.blocking_recv()
}

fn new_wal_file(layout: &Layout, number: u64, open: &[Carried]) -> Result<(File, u64)> {
    let path: PathBuf = layout.wal_path(number);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(RecorderError::io("cannot create WAL file", &path))?;
    let mut bytes = wal::header(number).to_vec();
    wal::put_carry(&mut bytes, open);
    let written = file.write_all_at(&bytes, 0).and_then(|()| file.sync_data());
    if let Err(error) = written.and_then(|()| sync_dir(&layout.wal_dir()).map_err(std::io::Error::other)) {
        let _ = std::fs::remove_file(&path);
        return Err(RecorderError::io("cannot initialise WAL file", &path)(error));
    }
    Ok((file, bytes.len() as u64))
}

/// How long the syncer sleeps between checks.
pub(crate) fn tick_period(settings: &RecorderSettings) -> Duration {
    settings.fsync_interval.min(Duration::from_millis(250))
}
