//! Live sessions by grant: when a grant expires or is revoked, every session
//! running under it is told at once and ends with a protocol error that says
//! why.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use proctor_schemas::EndReason;
use tokio::sync::watch;

/// Why sessions under a grant must end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantEnd {
    /// `GrantExpired` or `GrantRevoked`.
    pub reason: EndReason,
    /// Told to the client and recorded.
    pub message: String,
}

/// Each live session's key and the channel that tells it its grant ended,
/// by grant id.
type Sessions = HashMap<String, Vec<(u64, watch::Sender<Option<GrantEnd>>)>>;

#[derive(Default)]
pub struct LiveGrants {
    sessions: Mutex<Sessions>,
    next: AtomicU64,
}

impl LiveGrants {
    /// Registers a session under `grant_id`; the lease unregisters it when dropped.
    pub fn lease(self: &Arc<Self>, grant_id: &str) -> Lease {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        self.lock().entry(grant_id.to_string()).or_default().push((key, tx));
        Lease { rx, grant_id: grant_id.to_string(), key, live: self.clone() }
    }

    /// Ends every session under `grant_id`.
    pub fn end(&self, grant_id: &str, end: &GrantEnd) -> usize {
        let sessions = self.lock().remove(grant_id).unwrap_or_default();
        for (_, tx) in &sessions {
            let _ = tx.send(Some(end.clone()));
        }
        sessions.len()
    }

    /// The grants with live sessions.
    pub fn grant_ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// How many sessions are live.
    pub fn sessions(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A session's hold on its grant.
pub struct Lease {
    rx: watch::Receiver<Option<GrantEnd>>,
    grant_id: String,
    key: u64,
    live: Arc<LiveGrants>,
}

impl Lease {
    /// Resolves when the grant ends (never, if the registry is gone).
    pub async fn ended(&mut self) -> GrantEnd {
        let end = self.rx.wait_for(Option::is_some).await.map(|end| end.clone());
        match end {
            Ok(end) => end.unwrap_or_else(unreachable_end),
            Err(_) => std::future::pending().await,
        }
    }
}

fn unreachable_end() -> GrantEnd {
    GrantEnd { reason: EndReason::GrantRevoked, message: "the grant ended".to_string() }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut sessions = self.live.lock();
        if let Some(list) = sessions.get_mut(&self.grant_id) {
            list.retain(|(key, _)| *key != self.key);
            if list.is_empty() {
                sessions.remove(&self.grant_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ending_a_grant_ends_its_sessions_and_only_those() {
        let live = Arc::new(LiveGrants::default());
        let mut a1 = live.lease("g_a");
        let mut a2 = live.lease("g_a");
        let b = live.lease("g_b");
        assert_eq!(live.sessions(), 3);
        let end = GrantEnd { reason: EndReason::GrantRevoked, message: "revoked by bob".into() };
        assert_eq!(live.end("g_a", &end), 2);
        assert_eq!(a1.ended().await, end);
        assert_eq!(a2.ended().await, end);
        assert_eq!(live.grant_ids(), vec!["g_b".to_string()]);
        drop(b);
        assert_eq!(live.sessions(), 0);
        assert!(live.grant_ids().is_empty());
    }
}
