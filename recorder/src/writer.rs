//! The WAL writer. Producers append in place: under one short lock, the
//! calling task assigns each event its seq, encodes it canonically into a WAL
//! record and copies the records into the current WAL file, which is
//! preallocated and memory-mapped. The hash chains are computed once, by the
//! sealer (see `wal` for how a file started by rotation gets the chain heads
//! of the sessions it continues). The copy lands in the kernel's page cache
//! at once, so an accepted event survives
//! the process being killed; no system call and no thread hand-off is made
//! per event (a record of 4 KiB or more is written through the file
//! instead, one `pwrite`: see [`WalFile::write_at`]). A background thread
//! fsyncs (every `fsync_interval`, or on demand for `fsync = "always"`, one
//! fsync covering every waiting append),
//! rotates files by age and prepares the next file ahead of time.
//!
//! Because files are fully allocated when created, a full disk shows as a
//! clean refusal when a new file cannot be created, never as a torn record;
//! a write through the file that fails anyway (an I/O error) leaves zeros
//! where it was, as if never made.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use memmap2::{MmapMut, MmapOptions};
use proctor_schemas::{EventKind, NewEvent, SessionId, SessionIdText, canonical};
use tokio::sync::{Notify, oneshot};

use crate::config::{FsyncPolicy, RecorderSettings};
use crate::layout::{Layout, sync_dir};
use crate::shared::Shared;
use crate::wal::{self, Carried};
use crate::{RecordError, RecorderError, Result};

pub(crate) type SealReply = oneshot::Sender<Result<Option<u64>, RecordError>>;

/// The encoding buffer's usual size; it shrinks back after a large batch.
const SCRATCH: usize = 64 * 1024;

/// Appends of at least this many bytes are written through the file rather
/// than the mapping (see [`WalFile::write_at`]).
const WRITE_THROUGH_FILE: usize = 4 * 1024;

/// How many ended session ids are remembered to refuse their reuse. Ids are
/// random UUIDv7s, so reuse means a faulty producer; `verify` catches any
/// reuse this window misses.
const ENDED_REMEMBERED: usize = 1 << 20;

/// Recently ended sessions, oldest forgotten first.
#[derive(Default)]
struct EndedSessions {
    ids: std::collections::HashSet<SessionId>,
    order: std::collections::VecDeque<SessionId>,
}

impl EndedSessions {
    fn contains(&self, id: &SessionId) -> bool {
        self.ids.contains(id)
    }

    fn insert(&mut self, id: SessionId) {
        if self.ids.insert(id) {
            self.order.push_back(id);
            if self.order.len() > ENDED_REMEMBERED
                && let Some(oldest) = self.order.pop_front()
            {
                self.ids.remove(&oldest);
            }
        }
    }
}

/// A closed WAL file handed to the sealer.
pub(crate) struct SealJob {
    pub number: u64,
    pub replies: Vec<SealReply>,
}

/// Why an append did not go through.
pub(crate) enum AppendError {
    /// Refused for good; the message says why.
    Refused(RecordError),
    /// The unsealed backlog is full: wait for the sealer and retry.
    Backlog,
}

impl From<RecordError> for AppendError {
    fn from(error: RecordError) -> Self {
        AppendError::Refused(error)
    }
}

/// Accepted: the seqs given, and the log position after the last record.
pub(crate) struct Appended {
    pub seqs: Vec<u64>,
    pub lsn: u64,
}

#[derive(Clone, Copy)]
struct SessionState {
    next_seq: u64,
}

/// One preallocated, mapped WAL file.
struct WalFile {
    number: u64,
    file: Arc<File>,
    map: MmapMut,
    len: usize,
    /// Of `len`, the bytes copied through the mapping.
    mapped: usize,
    events: u64,
    opened: Instant,
}

impl WalFile {
    /// Creates and fully allocates file `number` (no header yet). With
    /// `prefault`, the mapping's pages are brought into the page cache now
    /// (zeroed, mapped read-only), so that appends to it later touch pages
    /// that exist instead of faulting each one in under the writer's lock:
    /// the background thread pays that for the file it prepares ahead.
    fn create(layout: &Layout, number: u64, capacity: usize, prefault: bool) -> Result<WalFile> {
        let path = layout.wal_path(number);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(RecorderError::io("cannot create WAL file", &path))?;
        let cleanup = |error: std::io::Error| {
            let _ = std::fs::remove_file(&path);
            RecorderError::io("cannot allocate WAL file", &path)(error)
        };
        // SAFETY: posix_fallocate on a file descriptor we own.
        let status = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, capacity as libc::off_t) };
        if status != 0 {
            return Err(cleanup(std::io::Error::from_raw_os_error(status)));
        }
        // SAFETY: the mapping covers a file this process created and no one
        // else truncates; it is written through this mapping (or, for large
        // records, the file), under the writer's lock, except for its carry
        // slot, which the sealer writes with pwrite and which is never read
        // or written through the mapping after the writer's pending record
        // (disjoint bytes).
        let mut options = MmapOptions::new();
        options.len(capacity);
        if prefault {
            options.populate();
        }
        let map = unsafe { options.map_mut(&file) }.map_err(cleanup)?;
        if let Err(error) = sync_dir(&layout.wal_dir()) {
            let _ = std::fs::remove_file(&path);
            return Err(error);
        }
        Ok(WalFile { number, file: Arc::new(file), map, len: 0, mapped: 0, events: 0, opened: Instant::now() })
    }

    /// Writes the header and the carry record of the sessions open at the
    /// file's start.
    fn begin(&mut self, open: &[Carried]) -> Result<(), RecordError> {
        let mut bytes = wal::header(self.number).to_vec();
        wal::put_carry(&mut bytes, open);
        if bytes.len() > self.map.len() {
            return Err(RecordError::WalWrite(format!(
                "{} open sessions do not fit in a WAL file of {} bytes; raise recorder.segment_max_bytes",
                open.len(),
                self.map.len()
            )));
        }
        self.map[..bytes.len()].copy_from_slice(&bytes);
        self.len = bytes.len();
        self.mapped = bytes.len();
        self.opened = Instant::now();
        Ok(())
    }

    /// Writes the header of a file started by rotation and a slot for the
    /// carry record of the `open` sessions, holding for now their ids and next
    /// seqs: their chain heads are not known here (appends do not hash); the
    /// sealer writes the carry record when it has sealed the file before.
    fn begin_reserved(&mut self, open: &[(SessionId, u64)]) -> Result<(), RecordError> {
        if open.is_empty() {
            // Nothing to wait for: the carry record is empty.
            return self.begin(&[]);
        }
        if open.len() > wal::MAX_CARRIED {
            return Err(RecordError::WalWrite(format!(
                "{} sessions are open, more than a WAL file can carry ({}); end some sessions",
                open.len(),
                wal::MAX_CARRIED
            )));
        }
        let slot = wal::carry_len(open.len());
        let mut bytes = wal::header_with_slot(self.number, slot as u32).to_vec();
        wal::put_pending(&mut bytes, open);
        if wal::HEADER_LEN + slot > self.map.len() {
            return Err(RecordError::WalWrite(format!(
                "{} open sessions do not fit in a WAL file of {} bytes; raise recorder.segment_max_bytes",
                open.len(),
                self.map.len()
            )));
        }
        self.map[..bytes.len()].copy_from_slice(&bytes);
        self.len = wal::HEADER_LEN + slot;
        self.mapped = self.len;
        self.opened = Instant::now();
        Ok(())
    }

    fn room(&self) -> usize {
        self.map.len() - self.len
    }

    /// Writes `bytes` at `at`, within the file's allocated length. Small
    /// records are copied into the mapping: no system call. Large ones are
    /// written through the file: a page written through a mapping is
    /// write-protected again by every fsync, each one with a TLB shootdown
    /// to every core and a fault on its next write, which for bulk traffic
    /// (terminal output, file transfers) costs more than the copy itself.
    fn write_at(&mut self, at: usize, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if bytes.len() < WRITE_THROUGH_FILE {
            self.map[at..at + bytes.len()].copy_from_slice(bytes);
            self.mapped += bytes.len();
            Ok(())
        } else {
            self.file.write_all_at(bytes, at as u64)
        }
    }
}

struct State {
    file: WalFile,
    /// Log position (bytes across all files) where `file` begins.
    lsn_base: u64,
    sessions: HashMap<SessionId, SessionState>,
    /// Files rotated out since the last fsync.
    unsynced: Vec<Arc<File>>,
    scratch: Vec<u8>,
    /// Reused for each append's undo log.
    undo: Vec<(SessionId, Option<SessionState>)>,
    /// Recently ended sessions: their ids may not start again.
    ended: EndedSessions,
    id_text: SessionIdText,
    closed: bool,
    /// Events and bytes appended since start (for [`WalWriter::counts`]).
    events_total: u64,
    bytes_total: u64,
}

/// Durability progress, for `fsync = "always"`.
#[derive(Default)]
struct Durable {
    lsn: u64,
    requested: bool,
    failed: Option<String>,
}

pub(crate) struct WalWriter {
    layout: Layout,
    settings: RecorderSettings,
    capacity: usize,
    shared: Arc<Shared>,
    state: Mutex<State>,
    seal_tx: Mutex<Option<std::sync::mpsc::Sender<SealJob>>>,
    spare: Mutex<Option<WalFile>>,
    /// Number of the current file, for the thread preparing the next one.
    current_number: AtomicU64,
    /// Whether the next file's pages are brought in ahead: only worth it
    /// when appends go through the mapping, so the last file's appends
    /// decide (large ones are written through the file, which needs no
    /// zeroed page to write a whole one).
    prefault_next: AtomicBool,
    written_lsn: AtomicU64,
    durable: Mutex<Durable>,
    durable_changed: Condvar,
    durable_notify: Notify,
    /// Wakes the background thread (sync requested, stop).
    wake: Condvar,
    wake_lock: Mutex<bool>,
}

// A poisoned lock means a thread panicked while holding it. The writer's
// state is updated only after every step that can fail, so it is still
// consistent: carry on.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl WalWriter {
    /// Starts WAL file `number`, carrying `open` sessions into it.
    pub fn create(
        layout: Layout,
        settings: RecorderSettings,
        shared: Arc<Shared>,
        seal_tx: std::sync::mpsc::Sender<SealJob>,
        number: u64,
        open: Vec<Carried>,
    ) -> Result<WalWriter> {
        let capacity = (settings.segment_max_bytes.0 as usize).max(wal::HEADER_LEN + 64).next_multiple_of(4096);
        let mut file = WalFile::create(&layout, number, capacity, true)?;
        file.begin(&open)?;
        let sessions = open.iter().map(|c| (c.session_id, SessionState { next_seq: c.next_seq })).collect();
        Ok(WalWriter {
            layout,
            settings,
            capacity,
            shared,
            current_number: AtomicU64::new(number),
            prefault_next: AtomicBool::new(true),
            written_lsn: AtomicU64::new(file.len as u64),
            state: Mutex::new(State {
                lsn_base: 0,
                file,
                sessions,
                unsynced: Vec::new(),
                scratch: Vec::with_capacity(SCRATCH),
                undo: Vec::new(),
                ended: Default::default(),
                id_text: SessionIdText::default(),
                closed: false,
                events_total: 0,
                bytes_total: 0,
            }),
            seal_tx: Mutex::new(Some(seal_tx)),
            spare: Mutex::new(None),
            durable: Mutex::new(Durable::default()),
            durable_changed: Condvar::new(),
            durable_notify: Notify::new(),
            wake: Condvar::new(),
            wake_lock: Mutex::new(false),
        })
    }

    /// Events and WAL bytes appended since start.
    pub fn counts(&self) -> (u64, u64) {
        let state = lock(&self.state);
        (state.events_total, state.bytes_total)
    }

    pub fn policy(&self) -> FsyncPolicy {
        self.settings.fsync
    }

    /// Appends events atomically: all are written, or none. Returns once
    /// they are in the WAL file's pages (durable against a process crash).
    pub fn append(&self, events: &[NewEvent]) -> Result<Appended, AppendError> {
        if let Some(reason) = self.shared.failure() {
            return Err(RecordError::FailedClosed(reason).into());
        }
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        if state.closed {
            return Err(RecordError::Closed.into());
        }
        self.append_locked(state, events)
    }

    fn append_locked(&self, state: &mut State, events: &[NewEvent]) -> Result<Appended, AppendError> {
        state.scratch.clear();
        let mut undo = std::mem::take(&mut state.undo);
        undo.clear();
        let result = self.append_with(state, events, &mut undo);
        state.undo = undo;
        result
    }

    fn append_with(
        &self,
        state: &mut State,
        events: &[NewEvent],
        undo: &mut Vec<(SessionId, Option<SessionState>)>,
    ) -> Result<Appended, AppendError> {
        let mut seqs = Vec::with_capacity(events.len());
        let rollback = |sessions: &mut HashMap<SessionId, SessionState>,
                        undo: &mut Vec<(SessionId, Option<SessionState>)>| {
            while let Some((id, previous)) = undo.pop() {
                match previous {
                    Some(s) => sessions.insert(id, s),
                    None => sessions.remove(&id),
                };
            }
        };
        let batch = wal::begin_batch(&mut state.scratch);
        for (i, event) in events.iter().enumerate() {
            let kind = event.body.kind();
            let previous = state.sessions.get(&event.session_id).copied();
            let restarted = kind == EventKind::SessionStart
                && (state.ended.contains(&event.session_id)
                    || events[..i]
                        .iter()
                        .any(|e| e.session_id == event.session_id && e.body.kind() == EventKind::SessionEnd));
            let seq = match (previous, kind) {
                (None, EventKind::SessionStart) if restarted => {
                    rollback(&mut state.sessions, undo);
                    return Err(RecordError::Rejected(format!(
                        "session {} has already ended; a session id is used once",
                        event.session_id
                    ))
                    .into());
                }
                (None, EventKind::SessionStart) => 0,
                (None, _) => {
                    rollback(&mut state.sessions, undo);
                    return Err(RecordError::Rejected(format!(
                        "session {} is not open: its first event must be session_start, and nothing may follow its session_end",
                        event.session_id
                    ))
                    .into());
                }
                (Some(_), EventKind::SessionStart) => {
                    rollback(&mut state.sessions, undo);
                    return Err(
                        RecordError::Rejected(format!("session {} has already started", event.session_id)).into()
                    );
                }
                (Some(s), _) => s.next_seq,
            };
            let row_start = wal::begin_row(&mut state.scratch);
            canonical::encode(&event.cells_with_seq(seq, &mut state.id_text), &mut state.scratch);
            // Refuse a batch too big for any WAL file before anything
            // changes (in particular before a rotation).
            if state.scratch.len() > wal::MAX_RECORD {
                rollback(&mut state.sessions, undo);
                state.scratch.clear();
                state.scratch.shrink_to(SCRATCH);
                return Err(RecordError::Rejected(format!(
                    "a batch of more than {} bytes is too large to record at once; record fewer or smaller events",
                    wal::MAX_RECORD
                ))
                .into());
            }
            wal::finish_row(&mut state.scratch, row_start);
            undo.push((event.session_id, previous));
            if kind == EventKind::SessionEnd {
                state.sessions.remove(&event.session_id);
            } else {
                state.sessions.insert(event.session_id, SessionState { next_seq: seq + 1 });
            }
            seqs.push(seq);
        }
        wal::finish_batch(&mut state.scratch, batch, events.len() as u32);
        if state.scratch.len() > state.file.room() {
            // The next file begins with the sessions as they were before this
            // batch, and is made big enough for them and the batch.
            let mut before = state.sessions.clone();
            rollback(&mut before, &mut undo.clone());
            let needed = state.scratch.len();
            if let Err(error) = self.rotate(state, open_of(&before), Vec::new(), needed) {
                rollback(&mut state.sessions, undo);
                return Err(error);
            }
        }
        let at = state.file.len;
        let size = state.scratch.len();
        if let Err(error) = state.file.write_at(at, &state.scratch) {
            // Nothing of the batch counts, and nothing of it stays: what was
            // written of it is zeroed again through the mapping (which cannot
            // fail), so that a scan, which reads up to the first zeros, never
            // takes a shorter next record followed by the rest of this one
            // (bytes a client chose) for records.
            state.file.map[at..at + size].fill(0);
            rollback(&mut state.sessions, undo);
            state.scratch.clear();
            return Err(RecordError::WalWrite(format!(
                "cannot write WAL file {}: {error}",
                self.layout.wal_path(state.file.number).display()
            ))
            .into());
        }
        for event in events.iter().filter(|e| e.body.kind() == EventKind::SessionEnd) {
            state.ended.insert(event.session_id);
        }
        state.file.len += size;
        state.file.events += events.len() as u64;
        if state.scratch.capacity() > 4 * SCRATCH {
            state.scratch.clear();
            state.scratch.shrink_to(SCRATCH);
        }
        let lsn = state.lsn_base + state.file.len as u64;
        self.written_lsn.store(lsn, Ordering::Release);
        // Read first: the syncer clears the flag once per fsync, and a store
        // on every append would pull the line away from the other cores.
        if !self.shared.dirty.load(Ordering::Relaxed) {
            self.shared.dirty.store(true, Ordering::Release);
        }
        state.events_total += events.len() as u64;
        state.bytes_total += size as u64;
        Ok(Appended { seqs, lsn })
    }

    /// Closes the current file, hands it to the sealer and starts the next,
    /// with room for the carry record and `needed` more bytes.
    fn rotate(
        &self,
        state: &mut State,
        open: Vec<(SessionId, u64)>,
        replies: Vec<SealReply>,
        needed: usize,
    ) -> Result<(), AppendError> {
        let max = self.settings.max_unsealed_segments;
        if self.shared.unsealed() >= max {
            if let Some(error) = self.shared.sealer_error() {
                return Err(RecordError::SealerStalled(error).into());
            }
            return Err(AppendError::Backlog);
        }
        let next = state.file.number + 1;
        let required = wal::HEADER_LEN + wal::carry_len(open.len()) + needed;
        let capacity = self.capacity.max(required.next_multiple_of(4096));
        // The spare's lock is held while a file is created, so the
        // background thread cannot create the same file meanwhile.
        let mut spare = lock(&self.spare);
        let prepared = spare.take().filter(|s| s.number == next && s.map.len() >= capacity);
        if prepared.is_none() {
            let _ = std::fs::remove_file(self.layout.wal_path(next));
        }
        let mut file = match prepared {
            Some(file) => file,
            None => WalFile::create(&self.layout, next, capacity, false).map_err(|e| {
                RecordError::WalWrite(format!("cannot start the next WAL file ({e}); free space in the data dir"))
            })?,
        };
        drop(spare);
        if let Err(error) = file.begin_reserved(&open) {
            let _ = std::fs::remove_file(self.layout.wal_path(next));
            return Err(error.into());
        }
        let old = std::mem::replace(&mut state.file, file);
        self.prefault_next.store(old.mapped * 2 >= old.len, Ordering::Relaxed);
        state.lsn_base += old.len as u64;
        state.unsynced.push(old.file.clone());
        self.current_number.store(next, Ordering::Release);
        self.written_lsn.store(state.lsn_base + state.file.len as u64, Ordering::Release);
        self.hand_to_sealer(old.number, replies);
        self.poke();
        Ok(())
    }

    fn hand_to_sealer(&self, number: u64, replies: Vec<SealReply>) {
        self.shared.backlog_added();
        let sender = lock(&self.seal_tx);
        let job = SealJob { number, replies };
        match sender.as_ref() {
            Some(tx) => {
                if let Err(std::sync::mpsc::SendError(job)) = tx.send(job) {
                    for reply in job.replies {
                        let _ = reply.send(Err(RecordError::Closed));
                    }
                }
            }
            None => {
                for reply in job.replies {
                    let _ = reply.send(Err(RecordError::Closed));
                }
            }
        }
    }

    /// Seals what the current file holds now. `reply` hears the segment's
    /// number once sealed (`None` when there was nothing to seal).
    pub fn seal_now(&self, reply: SealReply) -> Result<(), AppendError> {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        if state.closed {
            return Err(RecordError::Closed.into());
        }
        if state.file.events == 0 {
            let _ = reply.send(Ok(None));
            return Ok(());
        }
        let open = open_of(&state.sessions);
        self.rotate(state, open, vec![reply], 0)
    }

    /// Called periodically: rotates a file whose oldest event is too old, and
    /// prepares the next file ahead of need.
    pub fn housekeeping(&self) {
        {
            let mut guard = lock(&self.state);
            let state = &mut *guard;
            if state.closed {
                return;
            }
            if state.file.events > 0 && state.file.opened.elapsed() >= self.settings.segment_max_age {
                let open = open_of(&state.sessions);
                // A full backlog or a failing disk: try again next time.
                let _ = self.rotate(state, open, Vec::new(), 0);
            }
        }
        let next = self.current_number.load(Ordering::Acquire) + 1;
        let mut spare = lock(&self.spare);
        if spare.as_ref().is_some_and(|s| s.number != next)
            && let Some(stale) = spare.take()
        {
            let _ = std::fs::remove_file(self.layout.wal_path(stale.number));
        }
        if spare.is_none() && !self.layout.wal_path(next).exists() {
            match WalFile::create(&self.layout, next, self.capacity, self.prefault_next.load(Ordering::Relaxed)) {
                Ok(file) => *spare = Some(file),
                Err(error) => tracing::debug!(%error, "cannot prepare the next WAL file yet"),
            }
        }
    }

    /// Removes the file prepared ahead of need, if any.
    pub fn discard_spare(&self) {
        if let Some(spare) = lock(&self.spare).take() {
            let _ = std::fs::remove_file(self.layout.wal_path(spare.number));
        }
    }

    /// Wakes the background thread.
    fn poke(&self) {
        *lock(&self.wake_lock) = true;
        self.wake.notify_all();
    }

    /// Blocks the background thread until poked or `timeout` passes.
    pub fn sleep(&self, timeout: Duration) {
        let guard = lock(&self.wake_lock);
        let (mut guard, _) =
            self.wake.wait_timeout_while(guard, timeout, |poked| !*poked).unwrap_or_else(|p| p.into_inner());
        *guard = false;
    }

    /// Asks for an fsync covering everything written (always mode).
    pub fn request_sync(&self) {
        lock(&self.durable).requested = true;
        self.poke();
    }

    pub fn sync_requested(&self) -> bool {
        lock(&self.durable).requested
    }

    /// fsyncs every file written since the last sync; publishes the result.
    pub fn sync(&self) {
        lock(&self.durable).requested = false;
        let (target, files) = {
            let mut state = lock(&self.state);
            let mut files = std::mem::take(&mut state.unsynced);
            files.push(state.file.file.clone());
            (self.written_lsn.load(Ordering::Acquire), files)
        };
        self.shared.dirty.store(false, Ordering::Release);
        let mut failure = None;
        for file in files {
            if let Err(error) = file.sync_data() {
                failure = Some(format!("fsync of the WAL failed: {error}"));
            }
        }
        let mut durable = lock(&self.durable);
        match failure {
            Some(reason) => {
                self.shared.fail(reason.clone());
                durable.failed = Some(reason);
            }
            None => durable.lsn = durable.lsn.max(target),
        }
        drop(durable);
        self.durable_changed.notify_all();
        self.durable_notify.notify_waiters();
    }

    fn durable_state(&self, lsn: u64) -> Option<Result<(), RecordError>> {
        let durable = lock(&self.durable);
        if let Some(reason) = &durable.failed {
            return Some(Err(RecordError::WalWrite(reason.clone())));
        }
        (durable.lsn >= lsn).then_some(Ok(()))
    }

    /// Waits until `lsn` is fsynced (always mode).
    pub async fn wait_durable(&self, lsn: u64) -> Result<(), RecordError> {
        self.request_sync();
        loop {
            let notified = self.durable_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(result) = self.durable_state(lsn) {
                return result;
            }
            notified.await;
        }
    }

    /// [`WalWriter::wait_durable`] for threads outside a runtime.
    pub fn blocking_wait_durable(&self, lsn: u64) -> Result<(), RecordError> {
        self.request_sync();
        let mut durable = lock(&self.durable);
        loop {
            if let Some(reason) = &durable.failed {
                return Err(RecordError::WalWrite(reason.clone()));
            }
            if durable.lsn >= lsn {
                return Ok(());
            }
            durable = self.durable_changed.wait(durable).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Appends events the recorder itself writes (recovery), bypassing
    /// nothing but the closed check.
    pub fn append_internal(&self, events: &[NewEvent]) -> Result<Vec<u64>, RecordError> {
        let mut guard = lock(&self.state);
        match self.append_locked(&mut guard, events) {
            Ok(appended) => Ok(appended.seqs),
            Err(AppendError::Refused(error)) => Err(error),
            Err(AppendError::Backlog) => Err(RecordError::SealerStalled("the unsealed backlog is full".into())),
        }
    }

    /// Ends open sessions (reason `shutdown`), fsyncs, hands the last file to
    /// the sealer and stops accepting. Returns once done; the sealer then
    /// finishes on its own thread.
    pub fn close(&self) {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        if state.closed {
            return;
        }
        if self.shared.failure().is_none() && !state.sessions.is_empty() {
            let now = proctor_schemas::Timestamp::now();
            let mut open: Vec<SessionId> = state.sessions.keys().copied().collect();
            open.sort();
            let ends: Vec<NewEvent> = open
                .into_iter()
                .map(|id| {
                    NewEvent::new(
                        id,
                        now,
                        proctor_schemas::Direction::Gateway,
                        proctor_schemas::SessionEnd {
                            reason: proctor_schemas::EndReason::Shutdown,
                            message: Some("the recorder closed while the session was open".to_string()),
                        },
                    )
                })
                .collect();
            if let Err(AppendError::Refused(error)) = self.append_locked(state, &ends) {
                tracing::error!(%error, "could not record the end of open sessions at shutdown");
            }
        }
        state.closed = true;
        let mut failure = None;
        for file in state.unsynced.drain(..).chain([state.file.file.clone()]) {
            if let Err(error) = file.sync_data() {
                failure = Some(format!("fsync of the WAL failed at shutdown: {error}"));
            }
        }
        let number = state.file.number;
        if state.file.events > 0 {
            if state.sessions.is_empty() || failure.is_some() {
                self.hand_to_sealer(number, Vec::new());
            } else {
                // Sessions could not be ended: a carry-only file keeps their
                // state, so the next start closes them.
                let open = open_of(&state.sessions);
                // The file prepared ahead has this number: the carry-only
                // file takes its place (under the spare's lock, so the
                // background thread cannot prepare it again meanwhile).
                let mut spare = lock(&self.spare);
                if let Some(prepared) = spare.take() {
                    let _ = std::fs::remove_file(self.layout.wal_path(prepared.number));
                }
                let (seal, keep) = match WalFile::create(
                    &self.layout,
                    number + 1,
                    (wal::HEADER_LEN + wal::carry_len(open.len())).next_multiple_of(4096),
                    false,
                ) {
                    Ok(mut file) => match file
                        .begin_reserved(&open)
                        .and_then(|()| file.file.sync_data().map_err(|e| RecordError::WalWrite(e.to_string())))
                    {
                        Ok(()) => (true, Some(file)),
                        Err(_) => {
                            let _ = std::fs::remove_file(self.layout.wal_path(number + 1));
                            (false, None)
                        }
                    },
                    Err(_) => (false, None),
                };
                drop(spare);
                if let Some(file) = keep {
                    tracing::warn!(
                        sessions = open.len(),
                        file = file.number,
                        "sessions left open at shutdown; they are closed at the next start"
                    );
                }
                if seal {
                    self.hand_to_sealer(number, Vec::new());
                }
                // Otherwise the current file stays unsealed and the next
                // start recovers it, open sessions included.
            }
        } else if state.sessions.is_empty() {
            let path = self.layout.wal_path(number);
            if std::fs::remove_file(&path).is_ok() {
                let _ = sync_dir(&self.layout.wal_dir());
            }
        }
        drop(guard);
        self.discard_spare();
        // Closing the channel lets the sealer finish and stop.
        lock(&self.seal_tx).take();
        let mut durable = lock(&self.durable);
        match failure {
            Some(reason) => {
                self.shared.fail(reason.clone());
                durable.failed = Some(reason);
            }
            // Everything written is now fsynced.
            None => durable.lsn = u64::MAX,
        }
        drop(durable);
        self.durable_changed.notify_all();
        self.durable_notify.notify_waiters();
        self.poke();
    }
}

/// The open sessions and their next seqs, in id order.
fn open_of(sessions: &HashMap<SessionId, SessionState>) -> Vec<(SessionId, u64)> {
    let mut open: Vec<(SessionId, u64)> = sessions.iter().map(|(&id, s)| (id, s.next_seq)).collect();
    open.sort_unstable();
    open
}

/// How long the background thread sleeps between checks.
pub(crate) fn tick_period(settings: &RecorderSettings) -> Duration {
    settings.fsync_interval.min(Duration::from_millis(250))
}

#[cfg(test)]
mod tests {
    use proctor_schemas::{Direction, EventKind, NewEvent, OutputStream, SessionId, TerminalOutput, Timestamp, sample};

    use super::*;

    fn writer(dir: &std::path::Path) -> WalWriter {
        let layout = Layout::new(dir);
        std::fs::create_dir_all(layout.wal_dir()).unwrap();
        let (seal_tx, _seal_rx) = std::sync::mpsc::channel::<SealJob>();
        WalWriter::create(layout, RecorderSettings::default(), Shared::new(), seal_tx, 1, Vec::new()).unwrap()
    }

    fn output(session: SessionId, bytes: usize) -> NewEvent {
        let data = (0..bytes).map(|i| (i * 7) as u8).collect();
        let body = TerminalOutput { channel_id: None, stream: OutputStream::Stdout, data };
        NewEvent::new(session, Timestamp(1), Direction::TargetToClient, body)
    }

    fn ok(appended: Result<Appended, AppendError>) -> Appended {
        match appended {
            Ok(appended) => appended,
            Err(AppendError::Refused(error)) => panic!("refused: {error}"),
            Err(AppendError::Backlog) => panic!("backlog"),
        }
    }

    /// A record written through the file that fails leaves nothing behind:
    /// what it may have written is zeroed, so the next, shorter record is
    /// followed by zeros, and the file scans as exactly the records that
    /// were accepted, with no torn tail.
    #[test]
    fn a_failed_write_through_the_file_leaves_zeros_and_the_batch_unrecorded() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(dir.path());
        let session = SessionId::new();
        let start = NewEvent::new(session, Timestamp(0), Direction::Gateway, sample::full(EventKind::SessionStart));
        ok(writer.append(&[start]));
        ok(writer.append(&[output(session, 64)]));
        let path = writer.layout.wal_path(1);
        let at = {
            let mut state = lock(&writer.state);
            let at = state.file.len;
            // What a write cut short would have left: bytes of the batch
            // (fewer than it has) beyond the file's end. Then the file
            // refuses writes.
            state.file.map[at..at + 32 * 1024].fill(0xA5);
            state.file.file = Arc::new(File::open(&path).unwrap());
            at
        };
        assert!(matches!(writer.append(&[output(session, 32 * 1024)]), Err(AppendError::Refused(_))));
        {
            let mut state = lock(&writer.state);
            assert_eq!(state.file.len, at, "nothing of the batch counts");
            assert!(state.file.map[at..at + 64 * 1024].iter().all(|&b| b == 0), "what it wrote is zeroed");
            state.file.file = Arc::new(OpenOptions::new().read(true).write(true).open(&path).unwrap());
        }
        // The session goes on at the seq the refused batch did not take.
        let appended = ok(writer.append(&[output(session, 100)]));
        assert_eq!(appended.seqs, vec![2]);
        let bytes = lock(&writer.state).file.map.to_vec();
        let scan = wal::scan(&bytes[..at + 64 * 1024], 1);
        assert!(scan.torn.is_none(), "{:?}", scan.torn);
        assert_eq!(scan.event_count(), 3);
    }
}
