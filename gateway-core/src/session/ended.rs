//! What ends a session from outside its connection, as one future: Proctor
//! shutting down, or the lease of what admitted it (its grant) ending. And
//! start-up's bound: every step before the relay shares one deadline and
//! stops at shutdown.

use std::future::Future;

use proctor_schemas::EndReason;
use tokio::sync::watch;
use tokio::time::Instant;

use super::Ending;
use crate::control::Lease;

/// Resolves once Proctor starts shutting down (never, if it cannot tell).
pub async fn shutting_down(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|&down| down).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves when the session must end from outside: Proctor shuts down, or
/// the session's grant expires or is revoked. Polled at every wake-up of a
/// relay: without a lease, just the shutdown signal.
pub async fn ended(shutdown: &mut watch::Receiver<bool>, lease: Option<&mut Lease>) -> Ending {
    let shut_down = || Ending::new(EndReason::Shutdown, "Proctor shut down".to_string());
    let Some(lease) = lease else {
        shutting_down(shutdown).await;
        return shut_down();
    };
    tokio::select! {
        biased;
        () = shutting_down(shutdown) => shut_down(),
        end = lease.ended() => Ending::new(end.reason, end.message),
    }
}

/// Why start-up stopped before it completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupted {
    TimedOut,
    Shutdown,
}

impl Interrupted {
    /// The session's end reason: a client that takes too long is the
    /// client's error.
    pub fn reason(self) -> EndReason {
        match self {
            Interrupted::TimedOut => EndReason::ClientError,
            Interrupted::Shutdown => EndReason::Shutdown,
        }
    }
}

/// Runs one step of start-up, within the start-up `deadline` and until
/// shutdown.
pub async fn step<T>(
    deadline: Instant,
    shutdown: &mut watch::Receiver<bool>,
    work: impl Future<Output = T>,
) -> Result<T, Interrupted> {
    tokio::select! {
        biased;
        _ = shutting_down(shutdown) => Err(Interrupted::Shutdown),
        done = tokio::time::timeout_at(deadline, work) => done.map_err(|_| Interrupted::TimedOut),
    }
}
