//! One client connection, from accept to close: start-up, authentication,
//! the target connection, then the proxy loop that parses every frame in
//! both directions, records what happened, and forwards only what has been
//! recorded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use proctor_schemas::{
    Cancel, Direction, EndReason, ErrorReport, EventBody, Protocol as Proto, SessionEnd, SessionId, SessionStart,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::cancel::{CancelNotice, CancelRegistry};
use super::frame::{self, MAX_DECODED_FRAME, Peek};
use super::messages::{self, PgError};
use super::protocol::{Frontend, Protocol};
use super::startup::{self, Contact};
use super::stream::Conn;
use super::upstream::{self, Upstream};
use super::{Context, PgResource};
use crate::auth::{AuthRequest, Authenticator, Identity};
use crate::recording::{Record, SessionRecorder};
use crate::{EventSink, SinkError};

/// Read buffers start at this size and grow only to hold a frame that must
/// be decoded whole.
const BUFFER: usize = 64 * 1024;
/// Frames of a streamable type at least this large are passed through in
/// pieces instead of being held whole.
const STREAM_THRESHOLD: usize = 256 * 1024;
/// How long start-up (TLS, startup message, password) may take.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How a session ended, and what to tell the client.
struct Ending {
    reason: EndReason,
    message: Option<String>,
}

impl Ending {
    fn new(reason: EndReason, message: impl Into<Option<String>>) -> Ending {
        Ending { reason, message: message.into() }
    }
}

pub(super) async fn handle<S: EventSink, A: Authenticator>(
    ctx: Arc<Context<S, A>>,
    tcp: TcpStream,
    client_addr: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let resource = ctx.resource.clone();
    let mut recorder = SessionRecorder::new(ctx.sink.clone(), SessionId::new());
    let contact =
        tokio::time::timeout(STARTUP_TIMEOUT, startup::accept(tcp, ctx.tls.as_ref(), resource.allow_plaintext)).await;
    let contact = match contact {
        Err(_) => {
            refuse(
                &mut recorder,
                &resource,
                client_addr,
                None,
                PgError::fatal("08P01", "start-up took too long"),
                None,
            )
            .await;
            return;
        }
        Ok(Err(refusal)) => {
            let reason = if refusal.error.code == "28000" { EndReason::AuthFailed } else { EndReason::ClientError };
            refuse_with(&mut recorder, &resource, client_addr, None, refusal.error, refusal.conn, reason).await;
            return;
        }
        Ok(Ok(contact)) => contact,
    };
    let (mut client, params) = match contact {
        Contact::Cancel { pid, secret } => {
            handle_cancel(&ctx.cancels, pid, secret, client_addr, &mut recorder, &resource).await;
            return;
        }
        Contact::Startup { conn, params } => (conn, params),
    };
    let user = params.get("user").cloned().unwrap_or_default();
    let database = params.get("database").cloned().unwrap_or_else(|| user.clone());
    let tls = client.tls_version();

    if params.contains_key("replication") {
        let error = PgError::fatal("0A000", "replication connections are not available through Proctor");
        refuse(&mut recorder, &resource, client_addr, Some(&params), error, Some(client)).await;
        return;
    }

    // Authentication: a password, over TLS unless the resource allows plaintext.
    let identity = match authenticate(&ctx, &mut client, &user, &database, client_addr).await {
        Ok(identity) => identity,
        Err(error) => {
            refuse_with(
                &mut recorder,
                &resource,
                client_addr,
                Some(&params),
                error,
                Some(client),
                EndReason::AuthFailed,
            )
            .await;
            return;
        }
    };

    // The session begins: recorded before anything reaches the target.
    recorder.push(Direction::Gateway, session_start(&resource, client_addr, &params, Some(&identity), &tls, None));
    if let Err(error) = recorder.flush().await {
        let pg = recorder_refused(&error);
        send_error(&mut client, &pg).await;
        return;
    }

    let forwarded: Vec<(String, String)> = params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let upstream = upstream::connect(&resource.target, &forwarded).await;
    let Upstream { conn: mut target, parameters, backend_pid, secret, notices } = match upstream {
        Ok(upstream) => upstream,
        Err(error) => {
            let pg = error.to_client(&resource.name);
            recorder.push(Direction::Gateway, error_event(&pg));
            let reason = match error {
                upstream::UpstreamError::Refused(ref f) if f.code.as_deref() == Some("3D000") => EndReason::ClientError,
                _ => EndReason::TargetError,
            };
            recorder.push(Direction::Gateway, SessionEnd { reason, message: Some(pg.message.clone()) }.into());
            let _ = recorder.flush().await;
            send_error(&mut client, &pg).await;
            return;
        }
    };

    // Start-up completes for the client: its own cancel key, the target's
    // parameters, ready.
    let (cancel_tx, cancel_rx) = mpsc::channel(4);
    let key = ctx.cancels.issue(resource.target.address.clone(), backend_pid, secret, cancel_tx);
    let mut hello = BytesMut::new();
    messages::authentication_ok(&mut hello);
    for (name, value) in &parameters {
        recorder.push(
            Direction::TargetToClient,
            proctor_schemas::ParameterStatus { parameter: name.clone(), value: value.clone() }.into(),
        );
        messages::parameter_status(name, value, &mut hello);
    }
    for notice in &notices {
        hello.extend_from_slice(notice);
    }
    messages::backend_key_data(key.pid, key.secret, &mut hello);
    messages::ready_for_query(&mut hello);
    if let Err(error) = recorder.flush().await {
        send_error(&mut client, &recorder_refused(&error)).await;
        return;
    }
    if client.write_all(&hello).await.is_err() || client.flush().await.is_err() {
        end(&mut recorder, Ending::new(EndReason::ClientClosed, "the client left during start-up".to_string())).await;
        return;
    }

    let ending = relay(&resource, &mut recorder, &mut client, &mut target, cancel_rx, shutdown).await;
    drop(key);
    let message = ending.message.clone();
    if let Some(pg) = match ending.reason {
        EndReason::TargetClosed | EndReason::TargetError => Some(
            PgError::fatal("08006", message.clone().unwrap_or_else(|| "the target closed the connection".to_string()))
                .with_hint("the database server ended the session; reconnect"),
        ),
        EndReason::Shutdown => Some(PgError::fatal("57P01", "Proctor is shutting down; reconnect in a moment")),
        EndReason::RecorderUnavailable => Some(
            PgError::fatal("58030", message.clone().unwrap_or_default())
                .with_hint("nothing further was sent to the database; try again later or ask the operator"),
        ),
        EndReason::ClientError => Some(PgError::fatal("08P01", message.clone().unwrap_or_default())),
        _ => None,
    } {
        send_error(&mut client, &pg).await;
    }
    let _ = target.shutdown().await;
    end(&mut recorder, ending).await;
}

fn session_start(
    resource: &PgResource,
    client_addr: SocketAddr,
    params: &std::collections::BTreeMap<String, String>,
    identity: Option<&Identity>,
    tls: &str,
    message: Option<String>,
) -> EventBody {
    let user = params.get("user").cloned();
    SessionStart {
        protocol: Proto::Postgres,
        resource: Some(resource.name.clone()),
        subject: identity.map(|i| i.subject.clone()),
        groups: identity.map(|i| i.groups.clone()).unwrap_or_default(),
        grant_id: identity.and_then(|i| i.grant_id.clone()),
        client_addr: Some(client_addr.to_string()),
        target_user: Some(resource.target.user.clone()),
        database: params.get("database").cloned().or(user),
        application_name: params.get("application_name").cloned(),
        tls: Some(tls.to_string()),
        masking_profile: identity.and_then(|i| i.masking_profile.clone()),
        message,
    }
    .into()
}

fn error_event(error: &PgError) -> EventBody {
    ErrorReport {
        ref_seq: None,
        severity: Some(error.severity.to_string()),
        sqlstate: Some(error.code.to_string()),
        message: error.message.clone(),
        detail: error.detail.clone(),
    }
    .into()
}

fn recorder_refused(error: &SinkError) -> PgError {
    PgError::fatal("58030", format!("Proctor could not record this session ({})", error.0))
        .with_hint("nothing was sent to the database; try again later or ask the operator")
}

async fn send_error(conn: &mut Conn, error: &PgError) {
    let bytes = error.to_bytes();
    let _ = conn.write_all(&bytes).await;
    let _ = conn.flush().await;
    let _ = conn.shutdown().await;
}

async fn end<S: EventSink>(recorder: &mut SessionRecorder<S>, ending: Ending) {
    recorder.push(Direction::Gateway, SessionEnd { reason: ending.reason, message: ending.message }.into());
    if let Err(error) = recorder.flush().await {
        tracing::error!(session_id = %recorder.session_id(), %error, "could not record the end of a session");
    }
}

async fn refuse<S: EventSink>(
    recorder: &mut SessionRecorder<S>,
    resource: &PgResource,
    client_addr: SocketAddr,
    params: Option<&std::collections::BTreeMap<String, String>>,
    error: PgError,
    conn: Option<Conn>,
) {
    refuse_with(recorder, resource, client_addr, params, error, conn, EndReason::ClientError).await;
}

/// Records a connection refused before its session could begin, then tells
/// the client why.
async fn refuse_with<S: EventSink>(
    recorder: &mut SessionRecorder<S>,
    resource: &PgResource,
    client_addr: SocketAddr,
    params: Option<&std::collections::BTreeMap<String, String>>,
    error: PgError,
    conn: Option<Conn>,
    reason: EndReason,
) {
    let empty = std::collections::BTreeMap::new();
    let params = params.unwrap_or(&empty);
    let tls = conn.as_ref().map_or("off".to_string(), Conn::tls_version);
    let claimed = params.get("user").map(|u| format!("refused; the client gave user name {u:?}"));
    recorder.push(Direction::Gateway, session_start(resource, client_addr, params, None, &tls, claimed));
    recorder.push(Direction::Gateway, error_event(&error));
    recorder.push(Direction::Gateway, SessionEnd { reason, message: Some(error.message.clone()) }.into());
    if let Err(e) = recorder.flush().await {
        tracing::error!(%e, "could not record a refused connection");
    }
    if let Some(mut conn) = conn {
        send_error(&mut conn, &error).await;
    }
}

async fn authenticate<S: EventSink, A: Authenticator>(
    ctx: &Context<S, A>,
    client: &mut Conn,
    user: &str,
    database: &str,
    client_addr: SocketAddr,
) -> Result<Identity, PgError> {
    let mut request = BytesMut::new();
    messages::authentication_cleartext(&mut request);
    client.write_all(&request).await.map_err(|_| PgError::fatal("08006", "the client left during authentication"))?;
    client.flush().await.map_err(|_| PgError::fatal("08006", "the client left during authentication"))?;
    let mut header = [0u8; 5];
    let read = tokio::time::timeout(STARTUP_TIMEOUT, client.read_exact(&mut header)).await;
    if !matches!(read, Ok(Ok(_))) || header[0] != b'p' {
        return Err(PgError::fatal(
            "28P01",
            format!("password authentication failed for user \"{user}\": no password was sent"),
        ));
    }
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if !(5..=10_000).contains(&length) {
        return Err(PgError::fatal("08P01", format!("invalid password message length {length}")));
    }
    let mut body = vec![0u8; length - 4];
    client.read_exact(&mut body).await.map_err(|_| PgError::fatal("08006", "the client left during authentication"))?;
    let password = body.split(|&b| b == 0).next().unwrap_or_default();
    let request = AuthRequest { resource: &ctx.resource.name, user, database, password, client_addr };
    ctx.auth.authenticate(&request).await.map_err(|e| match e {
        crate::auth::AuthError::Refused(message) => PgError::fatal("28P01", message),
        crate::auth::AuthError::Unavailable(message) => {
            PgError::fatal("08004", message).with_hint("authentication is unavailable; try again later")
        }
    })
}

async fn handle_cancel<S: EventSink>(
    cancels: &Arc<CancelRegistry>,
    pid: i32,
    secret: i32,
    client_addr: SocketAddr,
    recorder: &mut SessionRecorder<S>,
    resource: &PgResource,
) {
    let Some(route) = cancels.route(pid, secret) else {
        // As PostgreSQL: no answer to a cancel with an unknown key; but the
        // attempt is recorded.
        let empty = std::collections::BTreeMap::new();
        recorder.push(Direction::Gateway, session_start(resource, client_addr, &empty, None, "off", None));
        recorder.push(
            Direction::ClientToTarget,
            Cancel {
                backend_pid: None,
                message: Some(format!("cancel request with an unknown key from {client_addr}")),
            }
            .into(),
        );
        recorder.push(Direction::Gateway, SessionEnd { reason: EndReason::ClientClosed, message: None }.into());
        let _ = recorder.flush().await;
        return;
    };
    let (reply, recorded) = tokio::sync::oneshot::channel();
    if route.session.send(CancelNotice { from: client_addr, reply }).await.is_err() {
        return;
    }
    // Only a cancel its session recorded goes on to the target.
    if matches!(recorded.await, Ok(true))
        && let Err(error) = upstream::cancel(&route.target, route.target_pid, route.target_secret).await
    {
        tracing::warn!(%error, "could not deliver a cancel request to the target");
    }
}

/// Outcome of parsing one buffer of one direction.
struct Scan {
    /// Bytes ready to forward from the start of the buffer.
    forward: usize,
    terminate: bool,
}

/// What [`scan`] found.
enum Found<'a> {
    /// A whole frame.
    Frame(&'a [u8]),
    /// The start of a frame to stream through: its type and total length.
    Stream(u8, usize),
}

/// Parses the complete frames at the start of `buf`, and the start of a
/// streamable frame too large to hold. `pass` counts the bytes of a streamed
/// frame still to come. `on` returns true to stop after a frame.
fn scan(
    buf: &mut BytesMut,
    pass: &mut usize,
    streamable: fn(u8) -> bool,
    mut on: impl FnMut(Found<'_>) -> bool,
) -> Result<Scan, String> {
    let mut pos = 0;
    let mut terminate = false;
    while pos < buf.len() && !terminate {
        if *pass > 0 {
            let take = (*pass).min(buf.len() - pos);
            pos += take;
            *pass -= take;
            continue;
        }
        match frame::peek(&buf[pos..]) {
            Peek::Complete { total, .. } => {
                terminate = on(Found::Frame(&buf[pos..pos + total]));
                pos += total;
            }
            Peek::Partial { tag, total } if total >= STREAM_THRESHOLD && streamable(tag) => {
                on(Found::Stream(tag, total));
                *pass = total - (buf.len() - pos);
                pos = buf.len();
            }
            Peek::Partial { tag, total } => {
                if total > MAX_DECODED_FRAME {
                    return Err(format!(
                        "a '{}' message of {total} bytes is larger than Proctor's limit of {MAX_DECODED_FRAME} bytes",
                        tag as char
                    ));
                }
                buf.reserve(total - (buf.len() - pos));
                break;
            }
            Peek::Header => break,
            Peek::Invalid { tag, length } => {
                return Err(format!("invalid length {length} of a '{}' message", tag as char));
            }
        }
    }
    Ok(Scan { forward: pos, terminate })
}

async fn relay<S: EventSink>(
    resource: &PgResource,
    recorder: &mut SessionRecorder<S>,
    client: &mut Conn,
    target: &mut Conn,
    mut cancels: mpsc::Receiver<CancelNotice>,
    mut shutdown: watch::Receiver<bool>,
) -> Ending {
    let mut protocol = Protocol::new(resource.limits);
    let mut from_client = BytesMut::with_capacity(BUFFER);
    let mut from_target = BytesMut::with_capacity(BUFFER);
    let (mut client_pass, mut target_pass) = (0usize, 0usize);
    loop {
        if from_client.capacity() - from_client.len() < BUFFER / 4 {
            from_client.reserve(BUFFER);
        }
        if from_target.capacity() - from_target.len() < BUFFER / 4 {
            from_target.reserve(BUFFER);
        }
        tokio::select! {
            read = client.read_buf(&mut from_client) => {
                match read {
                    Ok(0) | Err(_) => return Ending::new(EndReason::ClientClosed, None),
                    Ok(_) => {}
                }
                let scanned = scan(&mut from_client, &mut client_pass, Protocol::frontend_streamable, |found| match found {
                    Found::Frame(frame) => protocol.frontend(frame, recorder) == Frontend::Terminate,
                    Found::Stream(tag, total) => {
                        protocol.frontend_stream(tag, total);
                        false
                    }
                });
                let scanned = match scanned {
                    Ok(scanned) => scanned,
                    Err(why) => return Ending::new(EndReason::ClientError, why),
                };
                // Recorded first, forwarded after: nothing unrecorded passes.
                if let Err(error) = recorder.flush().await {
                    return Ending::new(EndReason::RecorderUnavailable, format!("Proctor could not record the request ({})", error.0));
                }
                if scanned.forward > 0 {
                    if target.write_all(&from_client[..scanned.forward]).await.is_err() || target.flush().await.is_err() {
                        return Ending::new(EndReason::TargetClosed, "the target closed the connection".to_string());
                    }
                    from_client.advance(scanned.forward);
                }
                if scanned.terminate {
                    return Ending::new(EndReason::ClientClosed, None);
                }
            }
            read = target.read_buf(&mut from_target) => {
                match read {
                    Ok(0) => return Ending::new(EndReason::TargetClosed, "the target closed the connection".to_string()),
                    Err(e) => return Ending::new(EndReason::TargetError, format!("lost the connection to the target: {e}")),
                    Ok(_) => {}
                }
                let scanned = scan(&mut from_target, &mut target_pass, Protocol::backend_streamable, |found| {
                    match found {
                        Found::Frame(frame) => protocol.backend(frame, recorder),
                        Found::Stream(tag, total) => protocol.backend_stream(tag, total),
                    }
                    false
                });
                let scanned = match scanned {
                    Ok(scanned) => scanned,
                    Err(why) => return Ending::new(EndReason::TargetError, why),
                };
                if let Err(error) = recorder.flush().await {
                    return Ending::new(EndReason::RecorderUnavailable, format!("Proctor could not record the response ({})", error.0));
                }
                if scanned.forward > 0 {
                    if client.write_all(&from_target[..scanned.forward]).await.is_err() || client.flush().await.is_err() {
                        return Ending::new(EndReason::ClientClosed, None);
                    }
                    from_target.advance(scanned.forward);
                }
            }
            Some(notice) = cancels.recv() => {
                recorder.push(
                    Direction::ClientToTarget,
                    Cancel { backend_pid: None, message: Some(format!("cancel requested from {}", notice.from)) }.into(),
                );
                let recorded = recorder.flush().await.is_ok();
                let _ = notice.reply.send(recorded);
                if !recorded {
                    return Ending::new(EndReason::RecorderUnavailable, "Proctor could not record a cancel request".to_string());
                }
            }
            _ = shutdown.changed() => {
                return Ending::new(EndReason::Shutdown, "Proctor shut down".to_string());
            }
        }
    }
}
