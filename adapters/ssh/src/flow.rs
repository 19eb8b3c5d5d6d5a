//! Flow control between a session's two SSH connections.
//!
//! russh runs each connection as one loop, and calls the handler from
//! inside it: while a handler callback waits, that connection neither reads
//! nor writes. The loop also replenishes a channel's window as data
//! arrives, not as it is consumed, and offers no way to reopen a window
//! later. So the only backpressure there is, is a callback that waits: the
//! client's connection stops being read while the bytes it sent wait for
//! the target, and the other way round.
//!
//! Waiting is safe as long as the other direction does not need the
//! waiting loop: the bytes on their way to the client are written through
//! the client's loop. If both loops wait for each other (a client sending
//! bulk input to a command that echoes it, with neither side keeping up),
//! neither moves again. [`Flow::admit`] waits for room in its own direction
//! only while nothing waits on the other, or while what does is still
//! moving; when the other direction has stalled, it takes the bytes over
//! its limit so that its loop can run, and only a backlog past a hard limit
//! (neither peer reading) ends the session ([`Stuck`]).

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

/// Which connection bytes came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Target,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::Client => 0,
            Side::Target => 1,
        }
    }

    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Target,
            Side::Target => Side::Client,
        }
    }
}

/// The backlog from one side passed the hard limit while the other side
/// was not taking its own: neither peer is reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{queued} bytes from the {from} waited to be sent on while neither side read what it was sent")]
pub struct Stuck {
    pub from: &'static str,
    pub queued: usize,
}

/// The limits of a session's backlog.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes from one side waiting for the other, beyond which a callback
    /// waits.
    pub high: usize,
    /// Beyond this the session is ended.
    pub hard: usize,
    /// How long the other direction may stand still, with bytes waiting,
    /// before a waiting callback takes its bytes anyway.
    pub stall: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { high: 2 << 20, hard: 64 << 20, stall: Duration::from_millis(100) }
    }
}

#[derive(Default)]
struct Direction {
    /// Bytes admitted and not yet delivered.
    queued: usize,
    /// Bytes delivered so far: moving, or not.
    delivered: u64,
}

/// The backlog of one session, both ways.
pub struct Flow {
    limits: Limits,
    state: Mutex<[Direction; 2]>,
    changed: Notify,
}

impl Flow {
    pub fn new(limits: Limits) -> Flow {
        Flow { limits, state: Mutex::new(Default::default()), changed: Notify::new() }
    }

    /// Called from `from`'s loop with `len` bytes it received: returns once
    /// they may be queued for the other side (and counts them), waiting
    /// while the backlog from `from` is over its limit and the other
    /// direction is either empty or moving.
    pub async fn admit(&self, from: Side, len: usize) -> Result<(), Stuck> {
        let (own, other) = (from.index(), from.other().index());
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let other_seen = {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if state[own].queued + len > self.limits.hard {
                    return Err(self.stuck(from, state[own].queued));
                }
                if state[own].queued + len <= self.limits.high || state[own].queued == 0 {
                    state[own].queued += len;
                    return Ok(());
                }
                (state[other].queued, state[other].delivered)
            };
            match tokio::time::timeout(self.limits.stall, changed).await {
                Ok(()) => continue,
                Err(_) => {
                    let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    let (queued, delivered) = (state[other].queued, state[other].delivered);
                    // The other direction has bytes waiting and delivered
                    // none since: it may be waiting on this very loop.
                    if queued > 0 && other_seen.0 > 0 && delivered == other_seen.1 {
                        if state[own].queued + len > self.limits.hard {
                            return Err(self.stuck(from, state[own].queued));
                        }
                        state[own].queued += len;
                        return Ok(());
                    }
                }
            }
        }
    }

    /// `len` bytes from `from` were handed to the other side.
    pub fn delivered(&self, from: Side, len: usize) {
        {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let direction = &mut state[from.index()];
            direction.queued = direction.queued.saturating_sub(len);
            direction.delivered += len as u64;
        }
        self.changed.notify_waiters();
    }

    /// Bytes from `from` counted `was` long will be delivered `now` long
    /// (masking rewrote them): the queue counts what will be delivered.
    pub fn reckon(&self, from: Side, was: usize, now: usize) {
        {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let queued = &mut state[from.index()].queued;
            *queued = if now >= was { *queued + (now - was) } else { queued.saturating_sub(was - now) };
        }
        self.changed.notify_waiters();
    }

    /// Bytes from `from` waiting for the other side.
    pub fn queued(&self, from: Side) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner())[from.index()].queued
    }

    fn stuck(&self, from: Side, queued: usize) -> Stuck {
        Stuck {
            from: match from {
                Side::Client => "client",
                Side::Target => "target",
            },
            queued,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn limits() -> Limits {
        Limits { high: 100, hard: 1000, stall: Duration::from_millis(20) }
    }

    /// A stall time far beyond any scheduling delay of a loaded machine.
    fn patient() -> Limits {
        Limits { stall: Duration::from_millis(500), ..limits() }
    }

    #[tokio::test]
    async fn over_the_limit_a_sender_waits_until_bytes_are_delivered() {
        let flow = Arc::new(Flow::new(limits()));
        flow.admit(Side::Client, 80).await.unwrap();
        let waiting = tokio::spawn({
            let flow = flow.clone();
            async move { flow.admit(Side::Client, 80).await }
        });
        // Nothing flows the other way: the sender waits, however long (ten
        // times the stall time here).
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished());
        assert_eq!(flow.queued(Side::Client), 80);
        flow.delivered(Side::Client, 80);
        waiting.await.unwrap().unwrap();
        assert_eq!(flow.queued(Side::Client), 80);
    }

    #[tokio::test]
    async fn one_chunk_larger_than_the_limit_passes_alone() {
        let flow = Flow::new(limits());
        flow.admit(Side::Target, 300).await.unwrap();
        assert_eq!(flow.queued(Side::Target), 300);
    }

    #[tokio::test]
    async fn a_sender_keeps_waiting_while_the_other_direction_moves() {
        let flow = Arc::new(Flow::new(patient()));
        flow.admit(Side::Client, 100).await.unwrap();
        flow.admit(Side::Target, 50).await.unwrap();
        let waiting = tokio::spawn({
            let flow = flow.clone();
            async move { flow.admit(Side::Client, 10).await }
        });
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            flow.delivered(Side::Target, 1);
        }
        assert!(!waiting.is_finished(), "the target's bytes were moving: no reason to overrun");
        flow.delivered(Side::Client, 100);
        waiting.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn both_ways_stalled_a_sender_overruns_instead_of_deadlocking() {
        let flow = Arc::new(Flow::new(limits()));
        flow.admit(Side::Client, 100).await.unwrap();
        flow.admit(Side::Target, 100).await.unwrap();
        // Each loop waits for the other: both get through after the stall
        // time, over their limit.
        let (a, b) = tokio::join!(flow.admit(Side::Client, 10), flow.admit(Side::Target, 10));
        a.unwrap();
        b.unwrap();
        assert_eq!((flow.queued(Side::Client), flow.queued(Side::Target)), (110, 110));
    }

    #[tokio::test]
    async fn past_the_hard_limit_the_session_is_stuck() {
        let flow = Flow::new(limits());
        flow.admit(Side::Target, 10).await.unwrap();
        flow.admit(Side::Client, 100).await.unwrap();
        let mut admitted = 100;
        let error = loop {
            match flow.admit(Side::Client, 100).await {
                Ok(()) => admitted += 100,
                Err(stuck) => break stuck,
            }
        };
        assert_eq!(admitted, 1000);
        assert_eq!(error, Stuck { from: "client", queued: 1000 });
        assert!(error.to_string().contains("neither side read"), "{error}");
    }

    /// Random interleavings of two producers and two consumers, each
    /// consumer sometimes standing still: every admission either returns
    /// or ends the session (nothing hangs), and every byte admitted is
    /// delivered in the end (the consumers stop only once nothing is left).
    #[tokio::test]
    async fn generated_traffic_never_hangs_and_stays_bounded() {
        use std::sync::atomic::{AtomicBool, Ordering};

        use rand::{Rng, SeedableRng};
        for seed in 0..10u64 {
            let flow = Arc::new(Flow::new(Limits { stall: Duration::from_millis(5), ..limits() }));
            let done = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let plan: Vec<(bool, usize, u64)> =
                (0..100).map(|_| (rng.random(), rng.random_range(1..60), rng.random_range(0..4))).collect();
            let producer = |side: Side, plan: Vec<(bool, usize, u64)>| {
                let (flow, done) = (flow.clone(), done.clone());
                async move {
                    for (_, len, _) in plan {
                        if flow.admit(side, len).await.is_err() {
                            break;
                        }
                    }
                    done[side.index()].store(true, Ordering::SeqCst);
                }
            };
            // A consumer stands still now and then, and keeps taking until
            // its producer is done and nothing is left.
            let consumer = |side: Side, plan: Vec<(bool, usize, u64)>| {
                let (flow, done) = (flow.clone(), done.clone());
                async move {
                    for (stand, len, pause) in plan.iter().cycle() {
                        if done[side.index()].load(Ordering::SeqCst) && flow.queued(side) == 0 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(if *stand { pause * 5 } else { *pause })).await;
                        let take = flow.queued(side).min(*len);
                        flow.delivered(side, take);
                    }
                }
            };
            let run = async {
                tokio::join!(
                    producer(Side::Client, plan.clone()),
                    producer(Side::Target, plan.iter().rev().cloned().collect()),
                    consumer(Side::Client, plan.clone()),
                    consumer(Side::Target, plan.clone()),
                )
            };
            tokio::time::timeout(Duration::from_secs(60), run).await.unwrap_or_else(|_| panic!("seed {seed} hung"));
        }
    }
}
