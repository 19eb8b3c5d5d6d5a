//! Session threads: one single-threaded runtime per core, and a session
//! stays on the thread it was given, from its first byte to its last.
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

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The session threads of a gateway. Dropping it lets the threads end
/// once no session is left on them.
pub struct SessionThreads {
    handles: Vec<Handle>,
    next: AtomicUsize,
    _stops: Vec<oneshot::Sender<()>>,
}

impl SessionThreads {
    /// Starts `count` threads (at least one), named `proctor-session-N`.
    pub fn start(count: usize) -> io::Result<Arc<SessionThreads>> {
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        for index in 0..count.max(1) {
            // The runtime is made, run and dropped on its own thread: never
            // dropped in the async context that starts the threads, even if
            // starting one of them fails.
            let (stop, stopped) = oneshot::channel::<()>();
            let (made, handle) = std::sync::mpsc::channel();
            std::thread::Builder::new().name(format!("proctor-session-{index}")).spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
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

    /// As many threads as the machine has cores.
    pub fn per_core() -> io::Result<Arc<SessionThreads>> {
        SessionThreads::start(std::thread::available_parallelism().map_or(1, |n| n.get()))
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
