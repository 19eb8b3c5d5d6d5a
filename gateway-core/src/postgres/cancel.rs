//! Cancel keys. Clients get keys Proctor issues; a cancel request with one
//! is recorded in the session it cancels and then passed to the right target
//! backend with the target's own key, which never leaves Proctor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

/// A cancel request routed to its session, which records it and answers
/// whether it may go on.
pub struct CancelNotice {
    pub from: std::net::SocketAddr,
    pub reply: oneshot::Sender<bool>,
}

struct Entry {
    target: String,
    target_pid: i32,
    target_secret: i32,
    session: mpsc::Sender<CancelNotice>,
}

/// Where a valid cancel request goes.
pub struct CancelRoute {
    pub target: String,
    pub target_pid: i32,
    pub target_secret: i32,
    pub session: mpsc::Sender<CancelNotice>,
}

#[derive(Default)]
pub struct CancelRegistry {
    entries: Mutex<HashMap<(i32, i32), Entry>>,
}

/// Removes a session's key when the session ends.
pub struct CancelKey {
    registry: Arc<CancelRegistry>,
    pub pid: i32,
    pub secret: i32,
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        self.registry.lock().remove(&(self.pid, self.secret));
    }
}

impl CancelRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(i32, i32), Entry>> {
        // The map stays consistent even if a holder panicked.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Issues a fresh key for a session.
    pub fn issue(
        self: &Arc<Self>,
        target: String,
        target_pid: i32,
        target_secret: i32,
        session: mpsc::Sender<CancelNotice>,
    ) -> CancelKey {
        let mut entries = self.lock();
        loop {
            let mut bytes = [0u8; 8];
            if let Err(error) = getrandom::fill(&mut bytes) {
                // The kernel's generator does not fail once the system is up;
                // if it did, keys would be guessable: say so loudly.
                tracing::error!(%error, "no randomness for a cancel key");
            }
            let pid = i32::from_be_bytes([bytes[0] & 0x7f, bytes[1], bytes[2], bytes[3]]).max(1);
            let secret = i32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
            if let std::collections::hash_map::Entry::Vacant(slot) = entries.entry((pid, secret)) {
                slot.insert(Entry { target, target_pid, target_secret, session });
                return CancelKey { registry: self.clone(), pid, secret };
            }
        }
    }

    pub fn route(&self, pid: i32, secret: i32) -> Option<CancelRoute> {
        self.lock().get(&(pid, secret)).map(|e| CancelRoute {
            target: e.target.clone(),
            target_pid: e.target_pid,
            target_secret: e.target_secret,
            session: e.session.clone(),
        })
    }
}
