//! Cancel keys. A client is told its backend's real process id (drivers
//! compare it with the pids of notifications, and pass it to
//! `pg_terminate_backend`) with a secret Proctor issues in place of the
//! target's. A cancel request with that pair is recorded in the session it
//! cancels and then passed to the target backend with the target's own
//! secret, which never leaves Proctor: a cancel sent to the target around
//! Proctor finds no key that works.

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

    /// Issues a key for a session: the backend's own pid, with a fresh
    /// secret that no other live session of this registry has with that pid
    /// (two targets may have backends of the same pid).
    pub fn issue(
        self: &Arc<Self>,
        target: String,
        target_pid: i32,
        target_secret: i32,
        session: mpsc::Sender<CancelNotice>,
    ) -> CancelKey {
        let mut entries = self.lock();
        loop {
            let mut bytes = [0u8; 4];
            if let Err(error) = getrandom::fill(&mut bytes) {
                // The kernel's generator does not fail once the system is up;
                // if it did, keys would be guessable: say so loudly.
                tracing::error!(%error, "no randomness for a cancel key");
            }
            let pid = target_pid;
            let secret = i32::from_be_bytes(bytes);
            // The target's own secret is never handed out, even by chance.
            if secret == target_secret {
                continue;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_tells_the_real_pid_and_hides_the_real_secret() {
        let registry = Arc::new(CancelRegistry::default());
        let (tx, _rx) = mpsc::channel(1);
        let keys: Vec<CancelKey> = (0..200).map(|_| registry.issue("t:5432".into(), 4242, 77, tx.clone())).collect();
        let mut pairs = std::collections::HashSet::new();
        for key in &keys {
            assert_eq!(key.pid, 4242);
            assert_ne!(key.secret, 77);
            assert!(pairs.insert((key.pid, key.secret)), "two live sessions share a key");
            let route = registry.route(key.pid, key.secret).unwrap();
            assert_eq!((route.target_pid, route.target_secret), (4242, 77));
        }
        // The target's own secret routes nowhere, and a key goes with its session.
        assert!(registry.route(4242, 77).is_none());
        let first = (keys[0].pid, keys[0].secret);
        drop(keys);
        assert!(registry.route(first.0, first.1).is_none());
    }
}
