//! State shared by the writer, syncer and sealer threads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Counters for operators (exposed later as metrics), as of one moment.
#[derive(Default, Debug, Clone, Copy)]
pub struct Stats {
    /// Events accepted into the WAL since start.
    pub events: u64,
    /// WAL bytes written since start.
    pub wal_bytes: u64,
    /// Segments sealed since start.
    pub segments_sealed: u64,
    /// CPU time the sealer has used, in nanoseconds.
    pub sealer_cpu_ns: u64,
}

/// The counters the sealer keeps; the writer keeps its own under its lock,
/// so that an append writes no shared cache line beyond the lock's.
#[derive(Default, Debug)]
pub(crate) struct SealerStats {
    pub segments_sealed: AtomicU64,
    pub sealer_cpu_ns: AtomicU64,
}

#[derive(Default)]
struct Backlog {
    /// WAL files handed to the sealer and not yet sealed.
    pending: usize,
    /// The sealer's last error, cleared by its next success.
    last_error: Option<String>,
}

#[derive(Default)]
pub(crate) struct Shared {
    /// Set by the writer after a write, cleared by the syncer before fsync.
    pub dirty: AtomicBool,
    pub stop: AtomicBool,
    failed: Mutex<Option<String>>,
    /// Set together with `failed`, read on every append without a lock.
    has_failed: AtomicBool,
    backlog: Mutex<Backlog>,
    backlog_changed: Condvar,
    /// Wakes async appends waiting for backlog room.
    pub room: tokio::sync::Notify,
    pub stats: SealerStats,
}

// A poisoned lock means another recorder thread panicked; the data it guards
// (a file handle, counters, a message) is still consistent, so carry on.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared::default())
    }

    /// Fails the recorder closed: every later append is refused.
    pub fn fail(&self, reason: String) {
        let mut failed = lock(&self.failed);
        if failed.is_none() {
            tracing::error!(%reason, "recorder failed closed; appends are refused until restart");
            *failed = Some(reason);
            self.has_failed.store(true, Ordering::Release);
        }
    }

    pub fn failure(&self) -> Option<String> {
        if !self.has_failed.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.failed).clone()
    }

    pub fn backlog_added(&self) {
        lock(&self.backlog).pending += 1;
    }

    pub fn sealed_one(&self) {
        let mut backlog = lock(&self.backlog);
        backlog.pending = backlog.pending.saturating_sub(1);
        backlog.last_error = None;
        self.stats.segments_sealed.fetch_add(1, Ordering::Relaxed);
        self.backlog_changed.notify_all();
        self.room.notify_waiters();
    }

    pub fn seal_failed(&self, reason: String) {
        lock(&self.backlog).last_error = Some(reason);
        self.backlog_changed.notify_all();
        self.room.notify_waiters();
    }

    /// The sealer's last error, while it is failing.
    pub fn sealer_error(&self) -> Option<String> {
        lock(&self.backlog).last_error.clone()
    }

    pub fn unsealed(&self) -> usize {
        lock(&self.backlog).pending
    }

    /// Blocks until the sealer makes progress (or `timeout` passes).
    pub fn wait_for_sealer(&self, timeout: Duration) {
        let backlog = lock(&self.backlog);
        let _ = self.backlog_changed.wait_timeout(backlog, timeout);
    }
}
