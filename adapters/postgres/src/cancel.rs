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

/// Cancel requests with an unknown key one address may send per second
/// before its requests are no longer looked up for the rest of that second.
/// The pid a client is told is the backend's real one (anyone may read it in
/// `pg_stat_activity`), so the key's strength is its 32-bit secret, as in
/// PostgreSQL's protocol 3.0: unthrottled, 2^31 guesses on average would
/// cancel someone else's statement; at this rate it takes years.
pub const UNKNOWN_KEYS_PER_SECOND: u32 = 16;

#[derive(Default)]
pub struct CancelRegistry {
    entries: Mutex<HashMap<(i32, i32), Entry>>,
    /// Unknown-key cancel requests by source address, in the current second.
    misses: Mutex<(Option<std::time::Instant>, HashMap<std::net::IpAddr, u32>)>,
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
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.wrapping_add(1);
            let mut bytes = [0u8; 4];
            if let Err(error) = getrandom::fill(&mut bytes) {
                // The kernel's generator does not fail once the system is up;
                // if it did, keys would be guessable: say so loudly (and
                // still make each attempt differ, so this never spins).
                tracing::error!(%error, "no randomness for a cancel key");
            }
            let pid = target_pid;
            let secret = i32::from_be_bytes(bytes) ^ attempt.wrapping_mul(0x9E37_79B9) as i32;
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

    /// Where a cancel request from `from` goes: `Err(true)` if `from` sent
    /// too many unknown keys this second (not looked up), `Err(false)` if the
    /// key is unknown.
    pub fn route_from(&self, from: std::net::IpAddr, pid: i32, secret: i32) -> Result<CancelRoute, bool> {
        let mut misses = self.misses.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if misses.0.is_none_or(|start| now.duration_since(start) >= std::time::Duration::from_secs(1)) {
            *misses = (Some(now), HashMap::new());
        }
        if misses.1.get(&from).is_some_and(|n| *n >= UNKNOWN_KEYS_PER_SECOND) {
            return Err(true);
        }
        match self.route(pid, secret) {
            Some(route) => Ok(route),
            None => {
                *misses.1.entry(from).or_insert(0) += 1;
                Err(false)
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
        // Guessing from one address stops being looked up after a few misses.
        let guesser: std::net::IpAddr = "10.9.8.7".parse().unwrap();
        let (pid, secret) = (keys[1].pid, keys[1].secret);
        for guess in 0..UNKNOWN_KEYS_PER_SECOND as i32 {
            assert_eq!(registry.route_from(guesser, pid, secret.wrapping_add(guess + 1_000_000)).err(), Some(false));
        }
        assert_eq!(registry.route_from(guesser, pid, secret).err(), Some(true), "throttled: not looked up");
        let other: std::net::IpAddr = "10.9.8.6".parse().unwrap();
        assert!(registry.route_from(other, pid, secret).is_ok(), "another address is not held back");
        // The target's own secret routes nowhere, and a key goes with its session.
        assert!(registry.route(4242, 77).is_none());
        let first = (keys[0].pid, keys[0].secret);
        drop(keys);
        assert!(registry.route(first.0, first.1).is_none());
    }
}
