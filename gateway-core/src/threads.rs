//! Session threads: single-threaded runtimes, one per core but one, and a
//! session stays on the thread it was given, from its first byte to its
//! last.
//!
//! A proxy's session is a chain of short steps (a frame in, recorded,
//! forwarded). Under a work-stealing scheduler each step may wake another
//! core to steal it, and on virtual machines a wakeup across cores costs
//! more than the step: measured with `pgbench -S` through TLS on both sides,
//! a third more context switches and about a sixth more CPU per statement
//! than the same sessions each kept on one thread. So sessions are dealt out
//! to threads round-robin, as nginx, Envoy and HAProxy deal connections to
//! their workers; everything else (listeners, the control plane, the
//! console) stays on the main runtime.
//!
//! One core is left to everything else the gateway does beside relaying,
//! and does in proportion to it: sealing the WAL into segments (Parquet,
//! zstd, the SHA-256 chains; about a sixth of a session thread's CPU per
//! statement), syncing the WAL, indexing for search, the control plane
//! ([`SessionThreads::default_count`]). On a host the gateway shares with
//! its clients or targets this matters most: measured with `pgbench -S`,
//! 8 clients, TLS on both sides, target and clients on the same 2 cores,
//! one session thread instead of two took a fifth less CPU per statement
//! and served 0.99-1.07x pgbouncer's statements per second instead of
//! 0.92x (medians of alternating runs), since one thread serves several
//! sessions per wake-up where two each wake for fewer. The price is on a
//! host the gateway has to itself: with two cores, sessions get one of
//! them; `session_threads = 2` gives them both.
//!
//! On Linux the threads run under `SCHED_BATCH` by default
//! ([`Scheduling::Batch`]): a session thread woken by a frame does not
//! preempt the task running on its CPU (often the client or the target that
//! sent the frame, switched out in the middle of a write only to be switched
//! back in a few microseconds later); it waits for an idle CPU or for that
//! task's turn to end. Measured with `pgbench -S`, 8 clients, TLS on both
//! sides, target and clients on the same 2 cores: fewer context switches
//! per statement, throughput 9-14% higher (medians of alternating runs),
//! and with the simple protocol about a sixth less CPU per statement. The
//! price is latency when every CPU is busy: a woken session may wait out
//! the running task's slice (a few milliseconds at worst). The threads'
//! share of the CPU and their nice value are unchanged. Only threads the
//! process started under the default policy are switched: a policy a
//! service manager set (real-time, idle) is left as it is.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// How the kernel schedules session threads (`session_scheduling`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduling {
    /// `SCHED_BATCH`: woken, a session thread waits for an idle CPU or for
    /// the running task's turn to end instead of preempting it.
    #[default]
    Batch,
    /// The policy the process runs under, left as it is (the kernel's
    /// default unless a service manager set another).
    Normal,
}

impl Scheduling {
    /// Applies this policy to the calling thread; says why if it could not.
    fn apply(self) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        if self == Scheduling::Batch {
            // SAFETY: reads the calling thread's own policy.
            let inherited = unsafe { libc::sched_getscheduler(0) };
            if inherited != libc::SCHED_OTHER {
                // Chosen by whoever started the process (or unreadable):
                // not overridden.
                return Ok(());
            }
            // SAFETY: an all-zero sched_param is valid (priority 0, and
            // zeroed padding where the C library has any).
            let param: libc::sched_param = unsafe { std::mem::zeroed() };
            // SAFETY: sets the calling thread's own policy (pid 0) from a
            // valid sched_param; nothing is retained.
            if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Whether a session thread already said it could not be scheduled as
/// asked (said once, not once per thread).
static SCHEDULING_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The session threads of a gateway. Dropping it lets the threads end
/// once no session is left on them.
pub struct SessionThreads {
    handles: Vec<Handle>,
    next: AtomicUsize,
    _stops: Vec<oneshot::Sender<()>>,
}

impl SessionThreads {
    /// Starts `count` threads (at least one), named `proctor-session-N`,
    /// scheduled by default ([`Scheduling::Batch`]).
    pub fn start(count: usize) -> io::Result<Arc<SessionThreads>> {
        SessionThreads::start_with(count, Scheduling::default())
    }

    /// [`SessionThreads::start`] with the kernel scheduling them as
    /// `scheduling` says.
    pub fn start_with(count: usize, scheduling: Scheduling) -> io::Result<Arc<SessionThreads>> {
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        for index in 0..count.max(1) {
            // The runtime is made, run and dropped on its own thread: never
            // dropped in the async context that starts the threads, even if
            // starting one of them fails.
            let (stop, stopped) = oneshot::channel::<()>();
            let (made, handle) = std::sync::mpsc::channel();
            std::thread::Builder::new().name(format!("proctor-session-{index}")).spawn(move || {
                if let Err(error) = scheduling.apply()
                    && !SCHEDULING_REFUSED.swap(true, Ordering::Relaxed)
                {
                    // Sessions run as well without it, only dearer.
                    tracing::warn!(%error, ?scheduling, "cannot set the session threads' scheduling policy");
                }
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build() {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = made.send(Err(error));
                        return;
                    }
                };
                let _ = made.send(Ok(runtime.handle().clone()));
                // Sessions are spawned onto this runtime from elsewhere; the
                // thread drives them until the gateway lets go of it.
                let _ = runtime.block_on(stopped);
                // Sessions still here were ended by the gateway's shutdown
                // already; what is left is dropped with the runtime.
            })?;
            let handle = handle.recv().map_err(|_| io::Error::other("a session thread ended at start"))??;
            handles.push(handle);
            stops.push(stop);
        }
        Ok(Arc::new(SessionThreads { handles, next: AtomicUsize::new(0), _stops: stops }))
    }

    /// How many session threads a gateway starts unless told: one per core
    /// the process may use (its CPU affinity and cgroup quota counted) but
    /// one, left to the recorder, the indexer and the control plane; at
    /// least one.
    pub fn default_count() -> usize {
        default_count_for(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// The thread for the next session.
    pub fn next(&self) -> &Handle {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[index]
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

/// [`SessionThreads::default_count`] on a host with `cores` usable cores.
fn default_count_for(cores: usize) -> usize {
    cores.saturating_sub(1).max(1)
}

#[cfg(test)]
mod count_tests {
    use super::*;

    #[test]
    fn one_core_is_left_beside_the_sessions() {
        assert_eq!(default_count_for(0), 1);
        assert_eq!(default_count_for(1), 1);
        assert_eq!(default_count_for(2), 1);
        assert_eq!(default_count_for(3), 2);
        assert_eq!(default_count_for(16), 15);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(SessionThreads::default_count(), cores.saturating_sub(1).max(1));
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The policy a session on `threads` runs under, read on its thread.
    async fn policy_of_sessions(threads: &SessionThreads) -> Vec<libc::c_int> {
        let mut policies = Vec::new();
        for _ in 0..threads.len() {
            // SAFETY: reads the calling thread's own policy.
            let policy = threads.next().spawn(async { unsafe { libc::sched_getscheduler(0) } });
            policies.push(policy.await.unwrap());
        }
        policies
    }

    #[tokio::test]
    async fn sessions_run_under_the_scheduling_asked_for() {
        // SAFETY: reads the calling thread's own policy.
        let own = unsafe { libc::sched_getscheduler(0) };
        // Batch where the process runs under the default policy; a policy
        // its starter chose is kept.
        let batched = if own == libc::SCHED_OTHER { libc::SCHED_BATCH } else { own };
        let batch = SessionThreads::start(2).unwrap();
        assert_eq!(policy_of_sessions(&batch).await, [batched, batched]);
        let normal = SessionThreads::start_with(2, Scheduling::Normal).unwrap();
        assert_eq!(policy_of_sessions(&normal).await, [own, own]);
        // Whatever the threads run under, the thread that started them
        // keeps its own policy.
        // SAFETY: reads the calling thread's own policy.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, own);
    }

    /// A policy the process was started under is not overridden: run here
    /// under `SCHED_IDLE` (which needs no privilege to enter), the session
    /// threads stay idle whatever `session_scheduling` says.
    #[test]
    fn a_policy_chosen_by_the_starter_is_kept() {
        std::thread::spawn(|| {
            // SAFETY: an all-zero sched_param is valid; sets this thread's
            // own policy.
            let param: libc::sched_param = unsafe { std::mem::zeroed() };
            assert_eq!(unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) }, 0);
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                for scheduling in [Scheduling::Batch, Scheduling::Normal] {
                    let threads = SessionThreads::start_with(2, scheduling).unwrap();
                    assert_eq!(
                        policy_of_sessions(&threads).await,
                        [libc::SCHED_IDLE, libc::SCHED_IDLE],
                        "{scheduling:?}"
                    );
                }
            });
        })
        .join()
        .unwrap();
    }
}
