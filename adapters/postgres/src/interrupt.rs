//! Stopping the target's work when a session is ended from outside.
//!
//! Closing the target connection does not stop a statement the target is
//! running: PostgreSQL notices a closed socket only when it next writes to
//! it, so an `UPDATE` would commit and a long `SELECT` run on after the
//! grant that allowed them was revoked. When a session ends with work in
//! flight (its grant ended, its client left, Proctor shut down), Proctor
//! sends the target a CancelRequest, ends the connection, and watches the
//! backend from a connection of its own; a backend still there after
//! [`GRACE`] is terminated (`pg_terminate_backend`, allowed to the target
//! account for its own backends). With requests queued behind the running
//! one, a cancel would let the backend run the next: it is terminated at
//! once. What happened is recorded and told to the client.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::PgResource;
use super::upstream;
use proctor_gateway_core::conn::Conn;

/// How long a cancelled backend has to go before it is terminated, and a
/// terminated one before Proctor gives up watching.
const GRACE: Duration = Duration::from_secs(2);
/// How often the backend is looked for meanwhile.
const POLL: Duration = Duration::from_millis(50);

/// What became of the target's work in flight.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stopped {
    /// The cancel stopped it; the backend is gone.
    Cancelled,
    /// It did not stop on the cancel, or more were queued behind it: the
    /// backend was terminated.
    Terminated,
    /// Neither could be confirmed: why.
    Unconfirmed(String),
}

impl Stopped {
    /// As recorded and told to the client.
    pub fn describe(&self) -> String {
        match self {
            Stopped::Cancelled => "the statement in flight on the target was cancelled".to_string(),
            Stopped::Terminated => {
                "the statement in flight on the target was cancelled and its backend terminated".to_string()
            }
            Stopped::Unconfirmed(why) => {
                format!("the statement in flight on the target could not be confirmed stopped ({why})")
            }
        }
    }
}

/// Cancels the statement that backend `pid` of the session's `target`
/// connection runs, ends the connection, and makes sure the backend goes.
/// `queued`: more requests were sent behind the running one; a cancel would
/// stop only the first, and the backend would go on to the next, so it is
/// terminated at once.
pub(super) async fn stop_in_flight(
    target: &mut Conn,
    resource: &PgResource,
    database: &str,
    pid: i32,
    secret: i32,
    queued: bool,
) -> Stopped {
    if queued {
        // Terminated before anything else: a cancel, or the end of the
        // connection, would let the backend go on to the next request.
        let mut watcher = match Watcher::connect(resource, database).await {
            Ok(watcher) => watcher,
            Err(why) => {
                // The cancel, at least: it stops the running request.
                let _ = tokio::time::timeout(GRACE, upstream::cancel(&resource.target.address, pid, secret)).await;
                close(target).await;
                return Stopped::Unconfirmed(why);
            }
        };
        let stopped = watcher.terminate(pid).await;
        close(target).await;
        return stopped;
    }
    // Whether or not the cancel is delivered, the backend is watched.
    let _ = tokio::time::timeout(GRACE, upstream::cancel(&resource.target.address, pid, secret)).await;
    // Once the cancel has ended the statement, the backend reads the end of
    // the connection and exits, rolling back.
    close(target).await;
    let mut watcher = match Watcher::connect(resource, database).await {
        Ok(watcher) => watcher,
        Err(why) => return Stopped::Unconfirmed(why),
    };
    if watcher.gone_within(pid, GRACE).await {
        return Stopped::Cancelled;
    }
    watcher.terminate(pid).await
}

/// Terminate (the protocol's goodbye), and close.
async fn close(target: &mut Conn) {
    let _ = tokio::time::timeout(POLL, async {
        let _ = target.write_all(&[b'X', 0, 0, 0, 4]).await;
        let _ = target.flush().await;
        let _ = target.shutdown().await;
    })
    .await;
}

/// Proctor's own connection to the target, to watch a backend.
struct Watcher {
    conn: Conn,
    buf: BytesMut,
}

impl Watcher {
    async fn connect(resource: &PgResource, database: &str) -> Result<Watcher, String> {
        let params =
            [("database".to_string(), database.to_string()), ("application_name".to_string(), "proctor".to_string())];
        let upstream = upstream::connect(&resource.target, &params)
            .await
            .map_err(|e| format!("could not connect to watch it: {}", e.to_client(&resource.name).message))?;
        Ok(Watcher { conn: upstream.conn, buf: BytesMut::new() })
    }

    /// Whether backend `pid` is gone within `limit`.
    async fn gone_within(&mut self, pid: i32, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.query(&format!("select 1 from pg_stat_activity where pid = {pid}")).await {
                Ok(0) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Terminates backend `pid` and waits for it to go.
    async fn terminate(&mut self, pid: i32) -> Stopped {
        if let Err(why) = self.query(&format!("select pg_terminate_backend({pid})")).await {
            return Stopped::Unconfirmed(format!("could not terminate backend {pid}: {why}"));
        }
        if self.gone_within(pid, GRACE).await {
            Stopped::Terminated
        } else {
            Stopped::Unconfirmed(format!("backend {pid} was still running {GRACE:?} after it was terminated"))
        }
    }

    /// Runs `sql` (a simple query) and returns how many rows it gave.
    async fn query(&mut self, sql: &str) -> Result<usize, String> {
        let mut frame = BytesMut::with_capacity(sql.len() + 6);
        frame.put_u8(b'Q');
        frame.put_i32(sql.len() as i32 + 5);
        frame.put_slice(sql.as_bytes());
        frame.put_u8(0);
        let io = |e: std::io::Error| e.to_string();
        tokio::time::timeout(GRACE, async {
            self.conn.write_all(&frame).await.map_err(io)?;
            self.conn.flush().await.map_err(io)?;
            let (mut rows, mut error) = (0, None);
            loop {
                while self.buf.len() >= 5 {
                    let length = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
                    if self.buf.len() < 1 + length {
                        break;
                    }
                    let tag = self.buf[0];
                    let body = self.buf.split_to(1 + length);
                    match tag {
                        b'D' => rows += 1,
                        b'E' => error = Some(String::from_utf8_lossy(body.get(5..).unwrap_or_default()).into_owned()),
                        b'Z' => return error.map_or(Ok(rows), Err),
                        _ => {}
                    }
                }
                let mut chunk = [0u8; 4096];
                let n = self.conn.read(&mut chunk).await.map_err(io)?;
                if n == 0 {
                    return Err("the target closed the connection".to_string());
                }
                self.buf.put_slice(&chunk[..n]);
            }
        })
        .await
        .map_err(|_| "the target did not answer in time".to_string())?
    }
}
