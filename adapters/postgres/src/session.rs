//! One client connection, from accept to close: start-up, authentication,
//! the target connection, then the proxy loop that parses every frame in
//! both directions, records what happened, and forwards only what has been
//! recorded.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::FutureExt;
use proctor_schemas::{
    Cancel, Direction, EndReason, ErrorReport, EventBody, Notice, Protocol as Proto, SessionEnd, SessionId,
    SessionStart,
};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::cancel::{CancelNotice, CancelRegistry};
use super::frame::{self, MAX_DECODED_FRAME, Peek};
use super::gate::Gate;
use super::messages::{self, PgError};
use super::protocol::{Answer, Backend, Frontend, Protocol, Question};
use super::startup::{self, Contact};
use super::stream::Conn;
use super::upstream::{self, Upstream};
use super::{Context, PgResource};
use proctor_gateway_core::auth::{AuthRequest, Authenticator, Credential, Identity};
use proctor_gateway_core::control::Lease;
use proctor_gateway_core::masking::Masker;
use proctor_gateway_core::recording::{Record, SessionRecorder};
use proctor_gateway_core::session::{self, Admitted, Ending, Interrupted, Refusal, step};
use proctor_gateway_core::{EventSink, SinkError};

/// Read buffers start at this size and grow only to hold a frame that must
/// be decoded whole.
const BUFFER: usize = 64 * 1024;
/// Frames of a streamable type at least this large are passed through in
/// pieces instead of being held whole.
const STREAM_THRESHOLD: usize = 256 * 1024;
/// How long start-up may take, from accepting the connection (TLS, startup
/// message, password, the target's own start-up) to the first ReadyForQuery.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a goodbye (an error message, a TLS close) may take to send.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a cancel request waits for its session to record it.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn handle<S: EventSink, A: Authenticator>(
    ctx: Arc<Context<S, A>>,
    tcp: TcpStream,
    client_addr: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    let mut recorder = SessionRecorder::new(ctx.sink.clone(), SessionId::new());
    let empty = std::collections::BTreeMap::new();
    session::guarded(
        &mut recorder,
        async |recorder| serve(&ctx, tcp, client_addr, shutdown, recorder).await,
        |note| session_start(&ctx.resource, client_addr, &empty, None, "unknown", Some(note)),
    )
    .await;
}

/// What the client is told when start-up stops before it completes.
fn interrupted_error(interrupted: Interrupted) -> PgError {
    match interrupted {
        Interrupted::TimedOut => PgError::fatal(
            "08P01",
            format!("start-up took longer than Proctor's limit of {}s", STARTUP_TIMEOUT.as_secs()),
        )
        .with_hint("connect again; if this repeats, check the network between the client, Proctor and the database"),
        Interrupted::Shutdown => PgError::fatal("57P01", "Proctor is shutting down; reconnect in a moment"),
    }
}

/// A refusal at admission, as PostgreSQL says it.
fn refusal_error(refusal: &Refusal) -> PgError {
    let error = PgError::fatal("42501", refusal.message.clone());
    match &refusal.hint {
        Some(hint) => error.with_hint(hint),
        None => error,
    }
}

async fn serve<S: EventSink, A: Authenticator>(
    ctx: &Context<S, A>,
    tcp: TcpStream,
    client_addr: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
    recorder: &mut SessionRecorder<S>,
) {
    let _ = tcp.set_nodelay(true);
    let resource = &ctx.resource;
    // Everything from accepting the connection to the first query shares one deadline.
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let contact = step(deadline, &mut shutdown, startup::accept(tcp, ctx.tls.as_ref(), resource.allow_plaintext)).await;
    let contact = match contact {
        Err(interrupted) => {
            let reason = interrupted.reason();
            refuse_with(recorder, resource, client_addr, None, interrupted_error(interrupted), None, reason).await;
            return;
        }
        Ok(Err(refusal)) => {
            let reason = if refusal.error.code == "28000" { EndReason::AuthFailed } else { EndReason::ClientError };
            refuse_with(recorder, resource, client_addr, None, refusal.error, refusal.conn, reason).await;
            return;
        }
        Ok(Ok(contact)) => contact,
    };
    let (mut client, params) = match contact {
        Contact::Cancel { mut conn, pid, secret } => {
            handle_cancel(&ctx.cancels, pid, secret, client_addr, recorder, resource).await;
            let _ = tokio::time::timeout(GOODBYE_TIMEOUT, conn.shutdown()).await;
            return;
        }
        Contact::Startup { conn, params } => (conn, params),
    };
    let user = params.get("user").cloned().unwrap_or_default();
    let database = params.get("database").cloned().unwrap_or_else(|| user.clone());
    let tls = client.tls_version();
    // What a refusal records of them: typed by a client not yet admitted.
    let strictest = ctx.masking.strictest().and_then(|p| ctx.masking.masker(&p).ok().flatten());
    let claimed = Claimed::new(&params, strictest.as_ref());

    if params.contains_key("replication") {
        let error = PgError::fatal("0A000", "replication connections are not available through Proctor");
        refuse(recorder, resource, client_addr, Some(&claimed), error, Some(client)).await;
        return;
    }

    // Authentication: a password, over TLS unless the resource allows plaintext.
    let authenticated = step(deadline, &mut shutdown, authenticate(ctx, &mut client, &user, client_addr)).await;
    let identity = match authenticated {
        Ok(Ok(identity)) => identity,
        Ok(Err((error, owner))) => {
            let claimed = Some(&claimed);
            let reason = EndReason::AuthFailed;
            refuse_owned(recorder, resource, client_addr, claimed, error, Some(client), reason, owner.as_ref()).await;
            return;
        }
        Err(interrupted) => {
            let (error, reason) = (interrupted_error(interrupted), interrupted.reason());
            refuse_with(recorder, resource, client_addr, Some(&claimed), error, Some(client), reason).await;
            return;
        }
    };

    // A grant opens its resource's database (or those listed), not every
    // database the target account can reach.
    if let Some(grant) = &identity.grant_id
        && !resource.databases.contains(&database)
    {
        let error = PgError::fatal(
            "42501",
            format!(
                "grant {grant} opens database {} of resource {}, not the one this connection asked for",
                resource.databases.iter().map(|d| format!("{d:?}")).collect::<Vec<_>>().join(" or "),
                resource.name
            ),
        )
        .with_hint("connect to the database in the grant's credentials URL");
        refuse_with(recorder, resource, client_addr, Some(&claimed), error, Some(client), EndReason::Policy).await;
        return;
    }

    // Admitted under its grant's statement rules and masking profile, held
    // to its grant.
    let (session_id, grant_id) = (recorder.session_id(), identity.grant_id.clone());
    let rules = |name: &str| {
        let rules = ctx.policy.rules(name)?;
        Some(Gate::new(ctx.policy.clone(), rules, grant_id, resource.name.clone(), session_id))
    };
    let admitted = session::admit(identity, "statement rules", rules, &ctx.masking, &*ctx.auth);
    let Admitted { identity, rules: gate, masker, mut lease } = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => {
            let error = refusal_error(&refusal);
            refuse_with(recorder, resource, client_addr, Some(&claimed), error, Some(client), refusal.reason).await;
            return;
        }
    };

    // The session begins: recorded before anything reaches the target,
    // with every start-up parameter the target will be given (masked, as
    // the client's other words are: `options` and `application_name` can
    // hold anything).
    let recorded: std::collections::BTreeMap<String, String> = params
        .iter()
        .map(|(k, v)| {
            (k.clone(), masker.as_ref().and_then(|m| super::mask::parameter(m, v)).unwrap_or_else(|| v.clone()))
        })
        .collect();
    recorder.push(Direction::Gateway, session_start(resource, client_addr, &recorded, Some(&identity), &tls, None));
    let forwarded: Vec<(String, String)> =
        params.iter().filter(|(k, _)| k.as_str() != "user").map(|(k, v)| (k.clone(), v.clone())).collect();
    for (parameter, value) in recorded.iter().filter(|(k, _)| k.as_str() != "user") {
        recorder.push(
            Direction::ClientToTarget,
            proctor_schemas::ParameterStatus { parameter: parameter.clone(), value: value.clone() }.into(),
        );
    }
    if let Err(error) = recorder.flush().await {
        let pg = recorder_refused(&error);
        send_error(&mut client, &pg).await;
        return;
    }

    let upstream = match step(deadline, &mut shutdown, upstream::connect(&resource.target, &forwarded)).await {
        Ok(upstream) => upstream,
        Err(interrupted) => {
            let pg = match interrupted {
                Interrupted::TimedOut => PgError::fatal(
                    "08001",
                    format!("the database behind {} did not finish start-up in time", resource.name),
                )
                .with_hint("try again; if this repeats, the database may be overloaded or unreachable"),
                Interrupted::Shutdown => interrupted_error(interrupted),
            };
            let reason = match interrupted {
                Interrupted::TimedOut => EndReason::TargetError,
                Interrupted::Shutdown => EndReason::Shutdown,
            };
            recorder.push(Direction::Gateway, error_event(&pg));
            recorder.push(Direction::Gateway, SessionEnd { reason, message: Some(pg.message.clone()) }.into());
            let _ = recorder.flush().await;
            send_error(&mut client, &pg).await;
            return;
        }
    };
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
    // parameters and notices, ready.
    let (cancel_tx, cancel_rx) = mpsc::channel(4);
    let key = ctx.cancels.issue(resource.target.address.clone(), backend_pid, secret, cancel_tx);
    let mut hello = BytesMut::new();
    messages::authentication_ok(&mut hello);
    // Under masking, what the client sees of them and what is recorded are
    // masked alike (a client-set application_name, a login notice).
    for (name, value) in &parameters {
        let value = masker.as_ref().and_then(|m| super::mask::parameter(m, value)).unwrap_or_else(|| value.clone());
        messages::parameter_status(name, &value, &mut hello);
        recorder.push(
            Direction::TargetToClient,
            proctor_schemas::ParameterStatus { parameter: name.clone(), value }.into(),
        );
    }
    for notice in &notices {
        let body = notice.get(5..).unwrap_or_default();
        let masked = masker.as_ref().and_then(|m| super::mask::fields(b'N', body, m, &mut Default::default()));
        let notice = masked.as_deref().unwrap_or(notice);
        let f = messages::fields(notice.get(5..).unwrap_or_default());
        recorder.push(
            Direction::TargetToClient,
            Notice { severity: f.severity, sqlstate: f.code, message: f.message, detail: f.detail }.into(),
        );
        hello.extend_from_slice(notice);
    }
    messages::backend_key_data(key.pid, key.secret, &mut hello);
    messages::ready_for_query(&mut hello);
    if let Err(error) = recorder.flush().await {
        send_error(&mut client, &recorder_refused(&error)).await;
        let _ = target.shutdown().await;
        return;
    }
    if client.write_all(&hello).await.is_err() || client.flush().await.is_err() {
        let _ = target.shutdown().await;
        session::end(recorder, Ending::new(EndReason::ClientClosed, "the client left during start-up".to_string()))
            .await;
        return;
    }

    // Result samples: as the grant's policy says, and only where a profile
    // masks them; otherwise as the resource says.
    let rows = match identity.sample_rows {
        Some(rows) if masker.is_some() => rows,
        Some(_) => 0,
        None => resource.limits.rows,
    };
    let limits = super::SampleLimits { rows, ..resource.limits };
    let mut protocol = Protocol::new(limits).with_gate(gate).with_masker(masker);
    for (name, value) in &parameters {
        protocol.parameter(name, value);
    }
    let outside = Outside { cancels: cancel_rx, shutdown, lease: lease.as_mut() };
    let catalog = CatalogAccess { resource: ctx.resource.clone(), database: database.clone() };
    let mut ending = relay(recorder, &mut client, &mut target, outside, &mut protocol, catalog).await;
    drop(lease);
    drop(key);
    // Work in flight on the target ends with the session: a grant that
    // ended stops the work it allowed, and a client that left (or was
    // refused, or Proctor shutting down) leaves nothing running whose
    // outcome no one will see recorded. (A target that closed has nothing
    // left to stop.)
    let target_gone = matches!(ending.reason, EndReason::TargetClosed | EndReason::TargetError);
    if !target_gone && protocol.awaiting_target() {
        let queued = protocol.requests_in_flight() > 1;
        let stopped =
            super::interrupt::stop_in_flight(&mut target, resource, &database, backend_pid, secret, queued).await;
        let what = stopped.describe();
        recorder
            .push(Direction::Gateway, Cancel { backend_pid: Some(backend_pid), message: Some(what.clone()) }.into());
        let _ = recorder.flush().await;
        ending.message = Some(match ending.message.take() {
            Some(message) => format!("{message}; {what}"),
            None => what,
        });
    }
    let message = ending.message.clone();
    let tell = match ending.reason {
        // The target's own FATAL error already reached the client.
        EndReason::TargetClosed | EndReason::TargetError if ending.client_told => None,
        EndReason::TargetClosed | EndReason::TargetError => Some(
            PgError::fatal("08006", message.clone().unwrap_or_else(|| "the target closed the connection".to_string()))
                .with_hint("the database server ended the session; reconnect"),
        ),
        EndReason::Shutdown => Some(PgError::fatal("57P01", "Proctor is shutting down; reconnect in a moment")),
        EndReason::GrantExpired | EndReason::GrantRevoked => Some(
            PgError::fatal(
                "57P01",
                format!("Proctor ended this session: {}", message.clone().unwrap_or_else(|| "its grant ended".into())),
            )
            .with_hint("request a new grant with `proctor grant request` and reconnect with its credentials"),
        ),
        EndReason::RecorderUnavailable => Some(
            PgError::fatal("58030", message.clone().unwrap_or_default())
                .with_hint("nothing further was sent to the database; try again later or ask the operator"),
        ),
        EndReason::ClientError => Some(PgError::fatal("08P01", message.clone().unwrap_or_default())),
        _ => None,
    };
    match tell {
        Some(pg) => send_error(&mut client, &pg).await,
        None => {
            let _ = tokio::time::timeout(GOODBYE_TIMEOUT, client.shutdown()).await;
        }
    }
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, target.shutdown()).await;
    session::end(recorder, ending).await;
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

/// What a client not (yet) admitted claimed at start-up, as it is recorded:
/// a user name that names a grant is an identifier and stays; any other
/// user or database name, and every other parameter, is masked by every
/// configured profile's detectors at once and cut to 64 characters: a
/// secret of a known format pasted into the wrong field does not reach the
/// disk raw (a plain password no detector knows is bounded, not masked).
#[derive(Default)]
struct Claimed {
    params: std::collections::BTreeMap<String, String>,
    /// Each name as typed, and as recorded (where they differ).
    names: Vec<(String, String)>,
    masker: Option<Arc<Masker>>,
}

/// How much of a claimed name or parameter is recorded, at most.
const CLAIMED_CHARS: usize = 64;

impl Claimed {
    fn new(params: &std::collections::BTreeMap<String, String>, masker: Option<&Arc<Masker>>) -> Claimed {
        let mut names = Vec::new();
        let recorded = params
            .iter()
            .map(|(key, value)| {
                let shown = if key == "user" && proctor_gateway_core::control::is_grant_id(value) {
                    value.clone()
                } else {
                    let masked = masker.and_then(|m| super::mask::parameter(m, value)).unwrap_or_else(|| value.clone());
                    bounded(&masked)
                };
                if matches!(key.as_str(), "user" | "database") && shown != *value && !value.is_empty() {
                    names.push((value.clone(), shown.clone()));
                }
                (key.clone(), shown)
            })
            .collect();
        Claimed { params: recorded, names, masker: masker.cloned() }
    }

    /// `text` (a refusal's message) as recorded: the names in it as
    /// recorded, and the rest masked.
    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        // Longest first: one name may hold another.
        let mut names: Vec<&(String, String)> = self.names.iter().collect();
        names.sort_by_key(|(typed, _)| std::cmp::Reverse(typed.len()));
        for (typed, shown) in names {
            out = out.replace(typed.as_str(), shown);
        }
        match &self.masker {
            Some(m) => m.mask_text(&out, &mut Default::default()).into_owned(),
            None => out,
        }
    }
}

/// `value`, cut to [`CLAIMED_CHARS`] characters with its length said.
fn bounded(value: &str) -> String {
    match value.char_indices().nth(CLAIMED_CHARS) {
        None => value.to_string(),
        Some((cut, _)) => format!("{}…[{} bytes]", &value[..cut], value.len()),
    }
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

/// Sends a last error and closes, giving a client that does not read a
/// bounded time.
async fn send_error(conn: &mut Conn, error: &PgError) {
    let bytes = error.to_bytes();
    let goodbye = async {
        conn.write_all(&bytes).await?;
        conn.flush().await?;
        conn.shutdown().await
    };
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, goodbye).await;
}

async fn refuse<S: EventSink>(
    recorder: &mut SessionRecorder<S>,
    resource: &PgResource,
    client_addr: SocketAddr,
    claimed: Option<&Claimed>,
    error: PgError,
    conn: Option<Conn>,
) {
    refuse_with(recorder, resource, client_addr, claimed, error, conn, EndReason::ClientError).await;
}

/// Records a connection refused before its session could begin, then tells
/// the client why.
async fn refuse_with<S: EventSink>(
    recorder: &mut SessionRecorder<S>,
    resource: &PgResource,
    client_addr: SocketAddr,
    claimed: Option<&Claimed>,
    error: PgError,
    conn: Option<Conn>,
    reason: EndReason,
) {
    refuse_owned(recorder, resource, client_addr, claimed, error, conn, reason, None).await
}

/// The grant a refused credential belonged to, and its subject.
struct Owner {
    grant_id: String,
    subject: String,
}

/// Records a refused connection (under the grant its credential named, if
/// known: `grant:` and `subject:` find the failed attempts on a grant) and
/// tells the client.
#[allow(clippy::too_many_arguments)]
async fn refuse_owned<S: EventSink>(
    recorder: &mut SessionRecorder<S>,
    resource: &PgResource,
    client_addr: SocketAddr,
    claimed: Option<&Claimed>,
    error: PgError,
    conn: Option<Conn>,
    reason: EndReason,
    owner: Option<&Owner>,
) {
    let nothing = Claimed::default();
    let claimed = claimed.unwrap_or(&nothing);
    let params = &claimed.params;
    let tls = conn.as_ref().map_or("off".to_string(), Conn::tls_version);
    let gave = params.get("user").map(|u| format!("refused; the client gave user name {u:?}"));
    let attempted = owner.map(|owner| Identity {
        subject: owner.subject.clone(),
        groups: Vec::new(),
        grant_id: Some(owner.grant_id.clone()),
        masking_profile: None,
        rules: None,
        expires_at: None,
        sample_rows: None,
    });
    recorder.push(Direction::Gateway, session_start(resource, client_addr, params, attempted.as_ref(), &tls, gave));
    let recorded = PgError {
        message: claimed.scrub(&error.message),
        detail: error.detail.as_deref().map(|d| claimed.scrub(d)),
        ..error.clone()
    };
    recorder.push(Direction::Gateway, error_event(&recorded));
    recorder.push(Direction::Gateway, SessionEnd { reason, message: Some(recorded.message.clone()) }.into());
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
    client_addr: SocketAddr,
) -> Result<Identity, (PgError, Option<Owner>)> {
    let unowned = |error: PgError| (error, None);
    let mut request = BytesMut::new();
    messages::authentication_cleartext(&mut request);
    let left = || unowned(PgError::fatal("08006", "the client left during authentication"));
    client.write_all(&request).await.map_err(|_| left())?;
    client.flush().await.map_err(|_| left())?;
    let mut header = [0u8; 5];
    if client.read_exact(&mut header).await.is_err() || header[0] != b'p' {
        return Err(unowned(PgError::fatal(
            "28P01",
            format!("password authentication failed for user \"{user}\": no password was sent"),
        )));
    }
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if !(5..=10_000).contains(&length) {
        return Err(unowned(PgError::fatal("08P01", format!("invalid password message length {length}"))));
    }
    let mut body = vec![0u8; length - 4];
    client.read_exact(&mut body).await.map_err(|_| left())?;
    let password = body.split(|&b| b == 0).next().unwrap_or_default();
    let request =
        AuthRequest { resource: &ctx.resource.name, user, credential: Credential::Password(password), client_addr };
    ctx.auth.authenticate(&request).await.map_err(|e| match e {
        proctor_gateway_core::auth::AuthError::Refused(message) => unowned(PgError::fatal("28P01", message)),
        proctor_gateway_core::auth::AuthError::RefusedGrant { message, grant_id, subject } => {
            (PgError::fatal("28P01", message), Some(Owner { grant_id, subject }))
        }
        proctor_gateway_core::auth::AuthError::Unavailable(message) => {
            unowned(PgError::fatal("08004", message).with_hint("authentication is unavailable; try again later"))
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
    let route = match cancels.route_from(client_addr.ip(), pid, secret) {
        Ok(route) => route,
        Err(throttled) => {
            // As PostgreSQL: no answer to a cancel with an unknown key; but the
            // attempt is recorded.
            let message = if throttled {
                format!(
                    "cancel request from {client_addr} not looked up: more than {} unknown keys from it this second",
                    super::cancel::UNKNOWN_KEYS_PER_SECOND
                )
            } else {
                format!("cancel request with an unknown key from {client_addr}")
            };
            let empty = std::collections::BTreeMap::new();
            recorder.push(Direction::Gateway, session_start(resource, client_addr, &empty, None, "off", None));
            recorder.push(Direction::ClientToTarget, Cancel { backend_pid: None, message: Some(message) }.into());
            recorder.push(Direction::Gateway, SessionEnd { reason: EndReason::ClientClosed, message: None }.into());
            let _ = recorder.flush().await;
            return;
        }
    };
    let (reply, recorded) = tokio::sync::oneshot::channel();
    if route.session.send(CancelNotice { from: client_addr, reply }).await.is_err() {
        return;
    }
    // Only a cancel its session recorded goes on to the target. A session
    // too busy to record it in time does not hold the cancel connection.
    match tokio::time::timeout(CANCEL_TIMEOUT, recorded).await {
        Ok(Ok(true)) => {
            let deliver = upstream::cancel(&route.target, route.target_pid, route.target_secret);
            match tokio::time::timeout(CANCEL_TIMEOUT, deliver).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "could not deliver a cancel request to the target"),
                Err(_) => tracing::warn!("the target did not accept a cancel request in time"),
            }
        }
        Ok(_) => {}
        Err(_) => tracing::warn!(%client_addr, "a cancel request was dropped: its session did not record it in time"),
    }
}

/// Outcome of parsing one buffer of one direction.
struct Scan {
    /// Bytes ready to forward from the start of the buffer.
    forward: usize,
    terminate: bool,
    /// A malformed frame follows the bytes to forward: why it is malformed.
    error: Option<String>,
    /// Frames within `forward` not to send as they are: replaced, or
    /// dropped (`None`), by their byte range. Empty in the common case.
    edits: Vec<(std::ops::Range<usize>, Option<Vec<u8>>)>,
    /// Scanning stopped before a frame that waits for a decision.
    paused: bool,
}

/// What [`scan`] found.
enum Found<'a> {
    /// A whole frame.
    Frame(&'a [u8]),
    /// The start of a frame to stream through: its type and total length.
    Stream(u8, usize),
}

/// What to do with a frame [`scan`] found.
enum Act {
    Pass,
    /// Pass it, and stop: the session ends after it.
    Last,
    Replace(Vec<u8>),
    Drop,
    /// Stop before it, leaving it unread.
    Pause,
}

impl From<Frontend> for Act {
    fn from(frontend: Frontend) -> Act {
        match frontend {
            Frontend::Forward => Act::Pass,
            Frontend::Terminate => Act::Last,
            Frontend::Replace(frame) => Act::Replace(frame),
            Frontend::Drop => Act::Drop,
            Frontend::Pause => Act::Pause,
        }
    }
}

/// Parses the complete frames at the start of `buf`, and the start of a
/// streamable frame too large to hold. `pass` counts the bytes of a streamed
/// frame still to come. `on` says what to do with each frame.
fn scan(
    buf: &mut BytesMut,
    pass: &mut usize,
    streamable: impl Fn(u8) -> bool,
    mut on: impl FnMut(Found<'_>) -> Act,
) -> Scan {
    let mut pos = 0;
    let mut terminate = false;
    let mut edits = Vec::new();
    let mut paused = false;
    let done = |pos, terminate, edits, paused, error| Scan { forward: pos, terminate, error, edits, paused };
    while pos < buf.len() && !terminate && !paused {
        if *pass > 0 {
            let take = (*pass).min(buf.len() - pos);
            pos += take;
            *pass -= take;
            continue;
        }
        match frame::peek(&buf[pos..]) {
            Peek::Complete { total, .. } => {
                match on(Found::Frame(&buf[pos..pos + total])) {
                    Act::Pass => {}
                    Act::Last => terminate = true,
                    Act::Replace(frame) => edits.push((pos..pos + total, Some(frame))),
                    Act::Drop => edits.push((pos..pos + total, None)),
                    Act::Pause => {
                        paused = true;
                        break;
                    }
                }
                pos += total;
            }
            Peek::Partial { tag, total } if total >= STREAM_THRESHOLD && streamable(tag) => {
                on(Found::Stream(tag, total));
                *pass = total - (buf.len() - pos);
                pos = buf.len();
            }
            Peek::Partial { tag, total } => {
                if total > MAX_DECODED_FRAME {
                    let why = format!(
                        "a '{}' message of {total} bytes is larger than Proctor's limit of {MAX_DECODED_FRAME} bytes",
                        tag as char
                    );
                    return done(pos, terminate, edits, paused, Some(why));
                }
                buf.reserve(total - (buf.len() - pos));
                break;
            }
            Peek::Header => break,
            Peek::Invalid { tag, length } => {
                let why = format!("invalid length {length} of a '{}' message", tag as char);
                return done(pos, terminate, edits, paused, Some(why));
            }
        }
    }
    done(pos, terminate, edits, paused, None)
}

/// One direction of the relay.
struct Half {
    /// Bytes read and not yet recorded (a partial frame).
    buf: BytesMut,
    /// Bytes still to come of a frame being streamed through.
    pass: usize,
    /// Recorded bytes still to write to the other side.
    out: BytesMut,
    /// Written bytes not yet flushed (TLS buffers them).
    unflushed: bool,
    /// What ends the session once `out` has been written.
    then: Option<Ending>,
    /// A frame at the start of `buf` waits for a decision: nothing more is
    /// read until it is scanned again.
    paused: bool,
}

impl Half {
    fn new() -> Half {
        Half {
            buf: BytesMut::with_capacity(BUFFER),
            pass: 0,
            out: BytesMut::new(),
            unflushed: false,
            then: None,
            paused: false,
        }
    }

    /// Reads only while nothing waits to be written: a slow reader on the
    /// other side slows this side down instead of growing the buffer.
    fn may_read(&self) -> bool {
        self.out.is_empty() && !self.unflushed && self.then.is_none() && !self.paused
    }

    fn may_write(&self) -> bool {
        !self.out.is_empty() || self.unflushed
    }

    fn done(&self) -> bool {
        self.out.is_empty() && !self.unflushed
    }

    fn reserve(&mut self) {
        if self.may_read() && self.buf.capacity() - self.buf.len() < BUFFER / 4 {
            self.buf.reserve(BUFFER);
        }
    }
}

/// Writes all of `out` and flushes it, keeping its progress in `out` and
/// `unflushed`: cancel-safe, since a dropped poll loses nothing. Completes
/// once everything is written and flushed.
fn pump<'a, W: AsyncWrite + Unpin>(
    writer: &'a mut W,
    out: &'a mut BytesMut,
    unflushed: &'a mut bool,
) -> impl Future<Output = io::Result<()>> + 'a {
    std::future::poll_fn(move |cx| {
        while !out.is_empty() {
            match ready!(Pin::new(&mut *writer).poll_write(cx, out))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => {
                    out.advance(n);
                    *unflushed = true;
                }
            }
        }
        // Lets the read buffer reclaim the memory they shared.
        *out = BytesMut::new();
        if *unflushed {
            ready!(Pin::new(&mut *writer).poll_flush(cx))?;
            *unflushed = false;
        }
        Poll::Ready(Ok(()))
    })
}

/// Records what a scan found, then marks it ready to forward. A malformed
/// frame ends the session after the frames before it have gone through.
async fn commit<S: EventSink>(
    recorder: &mut SessionRecorder<S>,
    half: &mut Half,
    scanned: Scan,
    what: &str,
    malformed: EndReason,
) -> Result<(), Ending> {
    // Recorded first, forwarded after: nothing unrecorded passes.
    if let Err(error) = recorder.flush().await {
        return Err(Ending::new(
            EndReason::RecorderUnavailable,
            format!("Proctor could not record the {what} ({})", error.0),
        ));
    }
    let scanned_bytes = half.buf.split_to(scanned.forward);
    half.out = if scanned.edits.is_empty() {
        scanned_bytes
    } else {
        let mut out = BytesMut::with_capacity(scanned_bytes.len());
        let mut at = 0;
        for (range, replacement) in &scanned.edits {
            out.extend_from_slice(&scanned_bytes[at..range.start]);
            if let Some(frame) = replacement {
                out.extend_from_slice(frame);
            }
            at = range.end;
        }
        out.extend_from_slice(&scanned_bytes[at..]);
        out
    };
    half.paused = scanned.paused;
    if let Some(why) = scanned.error {
        half.then = Some(Ending::new(malformed, why));
    } else if scanned.terminate {
        half.then = Some(Ending::new(EndReason::ClientClosed, None));
    }
    Ok(())
}

/// Scans what the client sent, records it, and marks it ready to forward
/// (or stops before a held statement: `up.paused`).
async fn client_frames<S: EventSink>(
    protocol: &mut Protocol,
    recorder: &mut SessionRecorder<S>,
    up: &mut Half,
) -> Result<(), Ending> {
    let scanned = scan(&mut up.buf, &mut up.pass, Protocol::frontend_streamable, |found| match found {
        Found::Frame(frame) => protocol.frontend(frame, recorder).into(),
        Found::Stream(tag, total) => {
            protocol.frontend_stream(tag, total);
            Act::Pass
        }
    });
    commit(recorder, up, scanned, "request", EndReason::ClientError).await
}

/// Scans what the target sent, records it, and marks it ready to forward
/// (masked where masking applies; or stops before a row description whose
/// tables must be looked up: `down.paused`).
async fn target_frames<S: EventSink>(
    protocol: &mut Protocol,
    recorder: &mut SessionRecorder<S>,
    down: &mut Half,
) -> Result<(), Ending> {
    let masking = protocol.masking();
    let streamable = |tag| Protocol::backend_streamable(tag, masking);
    let scanned = scan(&mut down.buf, &mut down.pass, streamable, |found| match found {
        Found::Frame(frame) => match protocol.backend(frame, recorder) {
            Backend::Forward => Act::Pass,
            Backend::Replace(frame) => Act::Replace(frame),
            Backend::Drop => Act::Drop,
            Backend::Pause => Act::Pause,
        },
        Found::Stream(tag, total) => {
            protocol.backend_stream(tag, total);
            Act::Pass
        }
    });
    commit(recorder, down, scanned, "response", EndReason::TargetError).await
}

/// An answer from outside the session (the control plane, the catalog), on
/// its way.
type Asking = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// Where a session's questions about the target's catalog go.
pub(super) struct CatalogAccess {
    pub resource: Arc<PgResource>,
    pub database: String,
}

impl CatalogAccess {
    fn describe(&self, describe: super::copyout::Describe) -> Asking {
        let (resource, database) = (self.resource.clone(), self.database.clone());
        Box::pin(async move {
            let catalog = &resource.catalog;
            Answer::Described(catalog.describe(&resource.target, &database, &describe).await)
        })
    }

    fn tables(&self, oids: Vec<u32>) -> Asking {
        let (resource, database) = (self.resource.clone(), self.database.clone());
        Box::pin(async move { Answer::Tables(resource.catalog.tables(&resource.target, &database, &oids).await) })
    }
}

/// How long a held statement waits for the control plane to record it.
const HOLD_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks outside the session about the statement the client frames stopped at.
fn ask(protocol: &mut Protocol, up: &Half, asking: &mut Option<Asking>, catalog: &CatalogAccess) {
    if !up.paused || asking.is_some() {
        return;
    }
    *asking = Some(match protocol.question() {
        Some(Question::Hold(holds, request)) => Box::pin(async move {
            // A control plane that does not answer fails closed, in time:
            // the statement is refused, the session goes on.
            match tokio::time::timeout(HOLD_TIMEOUT, holds.hold(request)).await {
                Ok(answer) => Answer::Hold(answer),
                Err(_) => Answer::Hold(Err(format!("the control plane did not answer within {HOLD_TIMEOUT:?}"))),
            }
        }),
        Some(Question::Describe(query)) => catalog.describe(query),
        None => Box::pin(std::future::ready(Answer::Hold(Err("no control plane is configured".to_string())))),
    });
}

/// Looks up the tables of the row description the target frames stopped at.
fn look_up(protocol: &mut Protocol, down: &Half, looking: &mut Option<Asking>, catalog: &CatalogAccess) {
    if !down.paused || looking.is_some() {
        return;
    }
    *looking = Some(match protocol.lookup() {
        Some(oids) => catalog.tables(oids),
        None => Box::pin(std::future::ready(Answer::Tables(Ok(Default::default())))),
    });
}

/// What may end a session from outside, or ask it something.
struct Outside<'a> {
    cancels: mpsc::Receiver<CancelNotice>,
    shutdown: watch::Receiver<bool>,
    lease: Option<&'a mut Lease>,
}

async fn relay<S: EventSink>(
    recorder: &mut SessionRecorder<S>,
    client: &mut Conn,
    target: &mut Conn,
    outside: Outside<'_>,
    protocol: &mut Protocol,
    catalog: CatalogAccess,
) -> Ending {
    let Outside { mut cancels, mut shutdown, lease } = outside;
    // Answers on their way about a paused client frame, and a paused
    // target frame; once one came, the paused frame is read again as soon
    // as what went before it has been sent.
    let (mut asking, mut looking): (Option<Asking>, Option<Asking>) = (None, None);
    let (mut rescan_up, mut rescan_down) = (false, false);
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut target_r, mut target_w) = tokio::io::split(target);
    let mut up = Half::new();
    let mut down = Half::new();
    let stop = session::ended(&mut shutdown, lease);
    tokio::pin!(stop);
    loop {
        // A direction whose bytes have all gone through may end the session.
        for half in [&mut up, &mut down] {
            if half.done()
                && let Some(ending) = half.then.take()
            {
                return ending;
            }
        }
        if rescan_up && up.done() {
            rescan_up = false;
            if let Err(ending) = client_frames(protocol, recorder, &mut up).await {
                return ending;
            }
            ask(protocol, &up, &mut asking, &catalog);
            if let Some(Err(_)) = pump(&mut target_w, &mut up.out, &mut up.unflushed).now_or_never() {
                return Ending::new(EndReason::TargetClosed, "the target closed the connection".to_string());
            }
            continue;
        }
        if rescan_down && down.done() {
            rescan_down = false;
            if let Err(ending) = target_frames(protocol, recorder, &mut down).await {
                return ending;
            }
            look_up(protocol, &down, &mut looking, &catalog);
            if let Some(Err(_)) = pump(&mut client_w, &mut down.out, &mut down.unflushed).now_or_never() {
                return Ending::new(EndReason::ClientClosed, None);
            }
            continue;
        }
        up.reserve();
        down.reserve();
        tokio::select! {
            read = client_r.read_buf(&mut up.buf), if up.may_read() => {
                match read {
                    Ok(0) | Err(_) => return Ending::new(EndReason::ClientClosed, None),
                    Ok(_) => {}
                }
                if let Err(ending) = client_frames(protocol, recorder, &mut up).await {
                    return ending;
                }
                ask(protocol, &up, &mut asking, &catalog);
                // Forwards at once: the target is almost always ready, and
                // this saves a round through the select for each message.
                if let Some(Err(_)) = pump(&mut target_w, &mut up.out, &mut up.unflushed).now_or_never() {
                    return Ending::new(EndReason::TargetClosed, "the target closed the connection".to_string());
                }
            }
            answer = async { asking.as_mut().expect("guarded by is_some").await }, if asking.is_some() => {
                asking = None;
                protocol.answer(answer);
                rescan_up = true;
            }
            answer = async { looking.as_mut().expect("guarded by is_some").await }, if looking.is_some() => {
                looking = None;
                protocol.answer(answer);
                rescan_down = true;
            }
            read = target_r.read_buf(&mut down.buf), if down.may_read() => {
                match read {
                    Ok(0) => {
                        let mut ending = Ending::new(EndReason::TargetClosed, "the target closed the connection".to_string());
                        ending.client_told = protocol.target_said_fatal();
                        return ending;
                    }
                    Err(e) => {
                        let mut ending = Ending::new(EndReason::TargetError, format!("lost the connection to the target: {e}"));
                        ending.client_told = protocol.target_said_fatal();
                        return ending;
                    }
                    Ok(_) => {}
                }
                if let Err(ending) = target_frames(protocol, recorder, &mut down).await {
                    return ending;
                }
                look_up(protocol, &down, &mut looking, &catalog);
                if let Some(Err(_)) = pump(&mut client_w, &mut down.out, &mut down.unflushed).now_or_never() {
                    return Ending::new(EndReason::ClientClosed, None);
                }
            }
            pumped = pump(&mut target_w, &mut up.out, &mut up.unflushed), if up.may_write() => {
                if pumped.is_err() {
                    return Ending::new(EndReason::TargetClosed, "the target closed the connection".to_string());
                }
            }
            pumped = pump(&mut client_w, &mut down.out, &mut down.unflushed), if down.may_write() => {
                if pumped.is_err() {
                    return Ending::new(EndReason::ClientClosed, None);
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
            ending = &mut stop => return ending,
        }
    }
}
