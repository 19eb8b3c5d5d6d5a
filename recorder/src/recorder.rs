//! The recorder's public face: [`Recorder::open`] recovers a data dir and
//! starts the writer, syncer and sealer threads; [`Sink`] accepts events;
//! [`Recorder::close`] seals everything and stops.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use proctor_schemas::{
    Direction, EndReason, EventBody, NewEvent, Protocol, RecorderRecovery, SessionEnd, SessionId, SessionStart,
    Timestamp,
};
use tokio::sync::oneshot;

use crate::config::{FsyncPolicy, RecorderSettings};
use crate::keys::ManifestKey;
use crate::layout::Layout;
use crate::seal::SealContext;
use crate::shared::{Shared, Stats};
use crate::wal::{Carried, TornTail};
use crate::writer::{AppendError, SealJob, WalWriter, tick_period};
use crate::{RecordError, RecorderError, Result};

/// What recovery found when the recorder opened a data dir.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    /// WAL files left by an earlier run and sealed now.
    pub wal_files_sealed: usize,
    /// Events those files held.
    pub events_recovered: u64,
    /// WAL files whose segment was already sealed (an interrupted clean-up).
    pub wal_files_already_sealed: usize,
    /// Torn tails cut off, by WAL file.
    pub torn_tails: Vec<(PathBuf, TornTail)>,
    /// Sessions left open by the earlier run, closed with end reason `recovered`.
    pub sessions_closed: Vec<SessionId>,
    /// Temporary files of interrupted seals, removed.
    pub temp_files_removed: usize,
    /// WAL files that could not be sealed, set aside as `.wal.corrupt`, and why.
    pub quarantined: Vec<(PathBuf, String)>,
}

impl RecoveryReport {
    /// Whether the last run ended uncleanly.
    pub fn is_empty(&self) -> bool {
        self.wal_files_sealed == 0
            && self.torn_tails.is_empty()
            && self.sessions_closed.is_empty()
            && self.quarantined.is_empty()
    }
}

/// Accepts events into the recorder. Cheap to clone; one per producer task.
#[derive(Clone)]
pub struct Sink {
    writer: Arc<WalWriter>,
    shared: Arc<Shared>,
}

impl Sink {
    /// Records one event. Returns its seq once the event is in the WAL (and
    /// fsynced under `fsync = "always"`). Waits while the unsealed backlog
    /// is full.
    pub async fn append(&self, event: NewEvent) -> Result<u64, RecordError> {
        let seqs = self.append_batch(vec![event]).await?;
        Ok(seqs[0])
    }

    /// Records several events atomically: all are accepted, or none.
    pub async fn append_batch(&self, events: Vec<NewEvent>) -> Result<Vec<u64>, RecordError> {
        self.append_slice(&events).await
    }

    /// [`Sink::append_batch`] for events the caller keeps (and reuses).
    pub async fn append_slice(&self, events: &[NewEvent]) -> Result<Vec<u64>, RecordError> {
        let appended = loop {
            match self.writer.append(events) {
                Ok(appended) => break appended,
                Err(AppendError::Refused(error)) => return Err(error),
                Err(AppendError::Backlog) => {
                    // Register for the sealer's signal before retrying, so
                    // none is missed in between.
                    let room = self.shared.room.notified();
                    tokio::pin!(room);
                    room.as_mut().enable();
                    match self.writer.append(events) {
                        Ok(appended) => break appended,
                        Err(AppendError::Refused(error)) => return Err(error),
                        Err(AppendError::Backlog) => room.await,
                    }
                }
            }
        };
        if self.writer.policy() == FsyncPolicy::Always {
            self.writer.wait_durable(appended.lsn).await?;
        }
        Ok(appended.seqs)
    }

    /// [`Sink::append`] for threads outside an async runtime.
    pub fn blocking_append(&self, event: NewEvent) -> Result<u64, RecordError> {
        let seqs = self.blocking_append_batch(vec![event])?;
        Ok(seqs[0])
    }

    /// [`Sink::append_batch`] for threads outside an async runtime.
    pub fn blocking_append_batch(&self, events: Vec<NewEvent>) -> Result<Vec<u64>, RecordError> {
        self.append_slice_blocking(&events)
    }

    /// [`Sink::append_slice`] for threads outside an async runtime.
    pub fn append_slice_blocking(&self, events: &[NewEvent]) -> Result<Vec<u64>, RecordError> {
        loop {
            match self.writer.append(events) {
                Ok(appended) => {
                    if self.writer.policy() == FsyncPolicy::Always {
                        self.writer.blocking_wait_durable(appended.lsn)?;
                    }
                    return Ok(appended.seqs);
                }
                Err(AppendError::Refused(error)) => return Err(error),
                Err(AppendError::Backlog) => self.shared.wait_for_sealer(Duration::from_millis(100)),
            }
        }
    }

    /// Seals what the WAL holds now, without waiting for the size or age
    /// limit. Returns the new segment's number, or `None` if there was
    /// nothing to seal.
    pub async fn seal_now(&self) -> Result<Option<u64>, RecordError> {
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let (tx, rx) = oneshot::channel();
            match self.writer.seal_now(tx) {
                Ok(()) => return rx.await.map_err(|_| RecordError::Closed)?,
                Err(AppendError::Refused(error)) => return Err(error),
                Err(AppendError::Backlog) => room.await,
            }
        }
    }

    /// [`Sink::seal_now`] for threads outside an async runtime.
    pub fn blocking_seal_now(&self) -> Result<Option<u64>, RecordError> {
        loop {
            let (tx, rx) = oneshot::channel();
            match self.writer.seal_now(tx) {
                Ok(()) => return rx.blocking_recv().map_err(|_| RecordError::Closed)?,
                Err(AppendError::Refused(error)) => return Err(error),
                Err(AppendError::Backlog) => self.shared.wait_for_sealer(Duration::from_millis(100)),
            }
        }
    }

    /// Counters since start.
    pub fn stats(&self) -> Stats {
        let (events, wal_bytes) = self.writer.counts();
        Stats {
            events,
            wal_bytes,
            segments_sealed: self.shared.stats.segments_sealed.load(Ordering::Relaxed),
            sealer_cpu_ns: self.shared.stats.sealer_cpu_ns.load(Ordering::Relaxed),
        }
    }

    /// WAL files waiting to be sealed.
    pub fn unsealed_segments(&self) -> usize {
        self.shared.unsealed()
    }

    /// Why the recorder refuses appends, if it failed closed.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure()
    }
}

/// A running recorder on one data dir.
pub struct Recorder {
    sink: Sink,
    layout: Layout,
    recovery: RecoveryReport,
    fingerprint: String,
    threads: Option<Threads>,
}

struct Threads {
    sealer: JoinHandle<Option<String>>,
    background: JoinHandle<()>,
    _lock: File,
}

impl Recorder {
    /// Opens (creating if needed) the data dir, takes its lock, recovers what
    /// an earlier run left in the WAL, and starts recording.
    ///
    /// This blocks (recovery seals WAL files); from async code call it inside
    /// `spawn_blocking`.
    pub fn open(data_dir: &Path, settings: &RecorderSettings) -> Result<Recorder> {
        settings.validate()?;
        let layout = Layout::new(data_dir);
        layout.create_dirs()?;
        let lock = take_lock(&layout)?;
        let key = Arc::new(ManifestKey::load_or_create(&layout.keys_dir())?);
        let fingerprint = key.fingerprint();

        let mut ctx = SealContext {
            layout: layout.clone(),
            settings: settings.clone(),
            key,
            last_manifest_sha256: None,
            kept_wal: None,
            carry_out: None,
            wal_buffer: Vec::new(),
            helper_cpu_ns: 0,
        };
        let (next_number, open_sessions, recovery) = recover(&mut ctx)?;

        let shared = Shared::new();
        let (seal_tx, seal_rx) = std::sync::mpsc::channel::<SealJob>();
        let writer = Arc::new(WalWriter::create(
            layout.clone(),
            settings.clone(),
            shared.clone(),
            seal_tx,
            next_number,
            open_sessions.clone(),
        )?);
        record_recovery(&writer, &recovery, &open_sessions)?;
        writer.sync();
        if let Some(kept) = ctx.kept_wal.take() {
            crate::seal::remove_wal_after_seal(&layout, kept);
        }

        let sealer_shared = shared.clone();
        let sealer = std::thread::Builder::new()
            .name("proctor-sealer".into())
            .spawn(move || run_sealer(ctx, seal_rx, sealer_shared))
            .map_err(RecorderError::io("cannot start sealer thread", data_dir))?;
        let background_writer = writer.clone();
        let background_shared = shared.clone();
        let background_settings = settings.clone();
        let background = std::thread::Builder::new()
            .name("proctor-wal-sync".into())
            .spawn(move || run_background(background_writer, background_shared, background_settings))
            .map_err(RecorderError::io("cannot start WAL sync thread", data_dir))?;

        if !recovery.is_empty() {
            tracing::warn!(
                wal_files_sealed = recovery.wal_files_sealed,
                events = recovery.events_recovered,
                torn_tails = recovery.torn_tails.len(),
                sessions_closed = recovery.sessions_closed.len(),
                "recovered the WAL of a run that did not stop cleanly"
            );
        }
        Ok(Recorder {
            sink: Sink { writer, shared },
            layout,
            recovery,
            fingerprint,
            threads: Some(Threads { sealer, background, _lock: lock }),
        })
    }

    pub fn sink(&self) -> Sink {
        self.sink.clone()
    }

    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    pub fn data_dir(&self) -> &Path {
        self.layout.root()
    }

    /// Fingerprint of the manifest signing key.
    pub fn key_fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Ends open sessions (end reason `shutdown`), fsyncs the WAL, seals
    /// every remaining segment and stops. Blocks until done. Appends made
    /// after this call fail with [`RecordError::Closed`].
    pub fn close(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        let Some(threads) = self.threads.take() else { return Ok(()) };
        self.sink.writer.close();
        self.sink.shared.stop.store(true, Ordering::Release);
        let _ = threads.background.join();
        self.sink.writer.discard_spare();
        let sealer_error = threads.sealer.join().unwrap_or_else(|_| Some("the sealer thread panicked".to_string()));
        match sealer_error {
            None => Ok(()),
            Some(error) => Err(RecorderError::Record(RecordError::WalWrite(format!(
                "sealing failed at shutdown ({error}); the WAL is kept and will be sealed at the next start"
            )))),
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.threads.is_some()
            && let Err(error) = self.stop()
        {
            tracing::error!(%error, "recorder did not close cleanly");
        }
    }
}

fn take_lock(layout: &Layout) -> Result<File> {
    let path = layout.lock_path();
    // The recorder's alone (0600): anyone who could open it could hold the
    // lock and keep the recorder from starting.
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(RecorderError::io("cannot open lock file", &path))?;
    // A lock just released can still be held for a moment by a child process
    // forked (by any thread) before it execs, which closes the descriptor:
    // a short wait tells that apart from a running Proctor, which keeps it.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(fs::TryLockError::WouldBlock) => return Err(RecorderError::Locked(layout.root().to_path_buf())),
            Err(fs::TryLockError::Error(e)) => return Err(RecorderError::io("cannot lock data dir", &path)(e)),
        }
    }
}

/// How long opening a data dir waits for its lock before saying another
/// Proctor holds it.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Seals every WAL file an earlier run left, in order. Returns the number of
/// the next WAL file and the sessions still open at the end of the last one.
fn recover(ctx: &mut SealContext) -> Result<(u64, Vec<Carried>, RecoveryReport)> {
    let layout = ctx.layout.clone();
    let mut report = RecoveryReport::default();
    for temp in layout.temp_files()? {
        fs::remove_file(&temp).map_err(RecorderError::io("cannot remove temporary file", &temp))?;
        report.temp_files_removed += 1;
    }
    ctx.load_last_manifest()?;
    let manifests: BTreeSet<u64> = layout.manifest_numbers()?.into_iter().collect();
    // A file prepared ahead of need and never started holds only zeros: it
    // is removed first, so that it is not taken for the last file, which is
    // kept until the new WAL file holds its open sessions.
    let mut wal_numbers = Vec::new();
    for number in layout.wal_numbers()? {
        let path = layout.wal_path(number);
        if never_started(&path)? {
            fs::remove_file(&path).map_err(RecorderError::io("cannot remove unused WAL file", &path))?;
        } else {
            wal_numbers.push(number);
        }
    }
    let mut open_sessions: Vec<Carried> = Vec::new();
    let mut keep = None;
    let newest_manifest = manifests.last().copied().unwrap_or(0);
    for (i, &number) in wal_numbers.iter().enumerate() {
        // A sealed file older than the newest segment is a leftover whose
        // removal failed: later files hold the current state.
        if manifests.contains(&number) && number < newest_manifest {
            crate::seal::remove_wal_after_seal(&layout, number);
            report.wal_files_already_sealed += 1;
            continue;
        }
        // The last file is kept until the new WAL file holds its open
        // sessions, so a crash in between cannot lose them.
        let last = i + 1 == wal_numbers.len();
        let sealed = match ctx.seal(number, true, last) {
            Ok(sealed) => sealed,
            Err(RecorderError::Corrupt { message, .. }) => {
                let aside = crate::seal::quarantine(&layout, number)?;
                tracing::error!(file = %aside.display(), %message, "a WAL file could not be sealed; set aside");
                report.quarantined.push((aside, message));
                continue;
            }
            Err(error) => return Err(error),
        };
        if last {
            keep = Some(number);
        }
        if manifests.contains(&number) {
            report.wal_files_already_sealed += 1;
        }
        if let Some(torn) = sealed.torn {
            tracing::warn!(file = %layout.wal_path(number).display(), offset = torn.offset, bytes = torn.bytes, reason = %torn.reason, "truncated a torn WAL tail");
            report.torn_tails.push((layout.wal_path(number), torn));
        }
        if sealed.saw_carry || sealed.events > 0 {
            open_sessions = sealed.open_sessions;
        }
        if sealed.events > 0 && !manifests.contains(&number) {
            report.wal_files_sealed += 1;
            report.events_recovered += sealed.events;
        }
    }
    ctx.kept_wal = keep;
    report.sessions_closed = open_sessions.iter().map(|c| c.session_id).collect();
    let last = wal_numbers.last().copied().unwrap_or(0).max(manifests.last().copied().unwrap_or(0));
    Ok((last + 1, open_sessions, report))
}

/// Whether a WAL file is all zeros: allocated ahead of need, never started.
fn never_started(path: &Path) -> Result<bool> {
    use std::io::Read;
    let io = |e| RecorderError::io("cannot read WAL file", path)(e);
    let mut file = fs::File::open(path).map_err(io)?;
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut chunk).map_err(io)?;
        if n == 0 {
            return Ok(true);
        }
        if chunk[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}

/// Closes sessions the earlier run left open and records what recovery did,
/// as events of a `system` session.
fn record_recovery(writer: &WalWriter, recovery: &RecoveryReport, open: &[Carried]) -> Result<()> {
    if recovery.is_empty() {
        return Ok(());
    }
    let now = Timestamp::now();
    let mut events: Vec<NewEvent> = open
        .iter()
        .map(|c| {
            NewEvent::new(
                c.session_id,
                now,
                Direction::Gateway,
                SessionEnd {
                    reason: EndReason::Recovered,
                    message: Some(
                        "Proctor stopped without ending this session; closed when its recording was recovered"
                            .to_string(),
                    ),
                },
            )
        })
        .collect();
    let system = SessionId::new();
    events.push(NewEvent::new(
        system,
        now,
        Direction::Gateway,
        SessionStart {
            subject: Some("proctor-recorder".to_string()),
            message: Some("WAL recovery".to_string()),
            ..SessionStart::new(Protocol::System)
        },
    ));
    let mut notes: Vec<RecorderRecovery> = recovery
        .torn_tails
        .iter()
        .map(|(path, torn)| RecorderRecovery {
            message: format!("truncated a torn WAL tail at offset {}: {}", torn.offset, torn.reason),
            path: Some(path.display().to_string()),
            byte_count: Some(torn.bytes),
        })
        .collect();
    notes.extend(recovery.quarantined.iter().map(|(path, why)| RecorderRecovery {
        message: format!("set aside a WAL file that could not be sealed ({why}); its events are not in any segment"),
        path: Some(path.display().to_string()),
        byte_count: None,
    }));
    notes.push(RecorderRecovery {
        message: format!(
            "sealed {} WAL file(s) holding {} event(s) left by a run that did not stop cleanly; closed {} open session(s)",
            recovery.wal_files_sealed,
            recovery.events_recovered,
            recovery.sessions_closed.len()
        ),
        path: None,
        byte_count: None,
    });
    events.extend(
        notes.into_iter().map(|note| NewEvent::new(system, now, Direction::Gateway, EventBody::RecorderRecovery(note))),
    );
    events.push(NewEvent::new(
        system,
        now,
        Direction::Gateway,
        SessionEnd { reason: EndReason::Completed, message: None },
    ));
    writer.append_internal(&events)?;
    Ok(())
}

fn run_sealer(mut ctx: SealContext, jobs: std::sync::mpsc::Receiver<SealJob>, shared: Arc<Shared>) -> Option<String> {
    // Sealing is compaction of data already durable in the WAL: it yields
    // the CPU to the data path, and the unsealed backlog's bound turns a
    // sustained overload into backpressure.
    lower_priority(ctx.settings.sealer_nice);
    // Jobs are sealed strictly in order: a manifest links to its
    // predecessor, so a failed file is retried, never skipped.
    while let Ok(job) = jobs.recv() {
        let mut attempt: u32 = 0;
        loop {
            match ctx.seal(job.number, false, false) {
                Ok(sealed) => {
                    shared.stats.sealer_cpu_ns.store(thread_cpu_ns() + ctx.helper_cpu_ns, Ordering::Relaxed);
                    if let Some(torn) = &sealed.torn {
                        tracing::warn!(number = job.number, reason = %torn.reason, "sealed a WAL file with an unreadable tail");
                    }
                    shared.sealed_one();
                    let segment = sealed.manifest.as_ref().map(|m| m.segment_id);
                    for reply in job.replies {
                        let _ = reply.send(Ok(segment));
                    }
                    break;
                }
                Err(RecorderError::Corrupt { message, .. }) => {
                    // Retrying cannot help: set the file aside and go on,
                    // loudly; verify reports it.
                    match crate::seal::quarantine(&ctx.layout, job.number) {
                        Ok(aside) => {
                            tracing::error!(file = %aside.display(), %message, "a WAL file could not be sealed; set aside")
                        }
                        Err(error) => tracing::error!(%error, %message, "a WAL file could not be sealed nor set aside"),
                    }
                    shared.sealed_one();
                    for reply in job.replies {
                        let _ = reply
                            .send(Err(RecordError::WalWrite(format!("the WAL file could not be sealed: {message}"))));
                    }
                    break;
                }
                Err(error) => {
                    attempt += 1;
                    let reason = error.to_string();
                    tracing::error!(number = job.number, attempt, %reason, "sealing failed; the WAL file is kept and retried");
                    shared.seal_failed(reason.clone());
                    if shared.stop.load(Ordering::Acquire) && attempt >= 3 {
                        for reply in job.replies {
                            let _ = reply.send(Err(RecordError::WalWrite(reason.clone())));
                        }
                        return Some(reason);
                    }
                    std::thread::sleep(Duration::from_millis(100u64 << attempt.min(6)));
                }
            }
        }
    }
    None
}

/// CPU time used so far by the calling thread, in nanoseconds.
pub(crate) fn thread_cpu_ns() -> u64 {
    // SAFETY: getrusage fills the struct we pass, for the calling thread.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (micros(usage.ru_utime) + micros(usage.ru_stime)) * 1000
}

/// Lowers the calling thread's scheduling priority (Linux: nice applies per
/// thread, and threads it starts inherit it): for background work that must
/// yield to the data path.
pub fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: gettid and setpriority act on the calling thread only.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if result != 0 {
        tracing::debug!(nice, error = %std::io::Error::last_os_error(), "could not lower a thread's priority");
    }
}

/// The WAL's background thread: fsyncs (periodically, or on request under
/// `fsync = "always"`), rotates files by age and prepares the next file.
fn run_background(writer: Arc<WalWriter>, shared: Arc<Shared>, settings: RecorderSettings) {
    let period = tick_period(&settings);
    let mut last_sync = std::time::Instant::now();
    while !shared.stop.load(Ordering::Acquire) {
        writer.sleep(period);
        match settings.fsync {
            FsyncPolicy::Always => {
                if writer.sync_requested() {
                    writer.sync();
                }
            }
            FsyncPolicy::Interval => {
                if last_sync.elapsed() >= settings.fsync_interval && shared.dirty.load(Ordering::Acquire) {
                    writer.sync();
                    last_sync = std::time::Instant::now();
                }
            }
        }
        writer.housekeeping();
    }
}
