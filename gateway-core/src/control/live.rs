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
    /// Registers a session under `grant_id`, which ends at `expires_at`
    /// (milliseconds since the epoch) at the latest; the lease unregisters
    /// it when dropped.
    pub fn lease(self: &Arc<Self>, grant_id: &str, expires_at: Option<i64>) -> Lease {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        self.lock().entry(grant_id.to_string()).or_default().push((key, tx));
        Lease { rx, grant_id: grant_id.to_string(), key, live: self.clone(), expires_at }
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
    expires_at: Option<i64>,
}

impl Lease {
    /// Resolves when the grant is ended, or at its expiry: on its own clock,
    /// whether or not the control store can be reached then.
    pub async fn ended(&mut self) -> GrantEnd {
        let told = async {
            let end = self.rx.wait_for(Option::is_some).await.map(|end| end.clone());
            match end {
                Ok(end) => end.unwrap_or_else(unreachable_end),
                Err(_) => std::future::pending().await,
            }
        };
        let expiry = async {
            let Some(at) = self.expires_at else { return std::future::pending().await };
            let left = at.saturating_sub(super::grants::now_ms()).max(0) as u64;
            tokio::time::sleep(std::time::Duration::from_millis(left)).await;
            let when = proctor_schemas::Timestamp(at.saturating_mul(1_000_000)).to_rfc3339();
            GrantEnd { reason: EndReason::GrantExpired, message: format!("grant {} expired at {when}", self.grant_id) }
        };
        tokio::select! {
            biased;
            end = told => end,
            end = expiry => end,
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
        let mut a1 = live.lease("g_a", None);
        let mut a2 = live.lease("g_a", None);
        let b = live.lease("g_b", None);
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

    #[tokio::test]
    async fn a_lease_ends_at_its_expiry_on_its_own() {
        let live = Arc::new(LiveGrants::default());
        let expires_at = super::super::grants::now_ms() + 50;
        let mut lease = live.lease("g_c", Some(expires_at));
        let end = tokio::time::timeout(std::time::Duration::from_secs(10), lease.ended()).await.unwrap();
        assert_eq!(end.reason, EndReason::GrantExpired);
        assert!(end.message.starts_with("grant g_c expired at "), "{}", end.message);
        assert!(super::super::grants::now_ms() >= expires_at);
    }
}
