//! PostgreSQL's connection engine: the client's start-up (TLS, the startup
//! message, the password), the target's, then the relay that parses every
//! frame in both directions, records what happened, and forwards only what
//! has been recorded. The session lifecycle around it (who is let in, when
//! the session begins and ends, and in what order) is the core's
//! [`session::run`].

use std::collections::BTreeMap;
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
    Cancel, Direction, EndReason, ErrorReport, Notice, Protocol as Proto, SessionEnd, SessionId, SessionStart,
};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use zeroize::Zeroizing;

use super::cancel::{CancelKey, CancelNotice, CancelRegistry};
use super::frame::{self, MAX_DECODED_FRAME, Peek};
use super::gate::Gate;
use super::messages::{self, PgError};
use super::protocol::{Answer, Backend, Frontend, Protocol, Question};
use super::startup::{self, Contact};
use super::upstream::{self, Upstream};
use super::{Context, PgResource};
use proctor_gateway_core::EventSink;
use proctor_gateway_core::auth::{AuthRequest, Authenticator, Credential, Identity};
use proctor_gateway_core::config::ResourceProtocol;
use proctor_gateway_core::conn::Conn;
use proctor_gateway_core::masking::Masker;
use proctor_gateway_core::recording::{Record, SessionRecorder};
use proctor_gateway_core::session::{self, Ending, Refusal, Refused, RuleScope, Start};

/// Read buffers start at this size and grow only to hold a frame that must
/// be decoded whole.
const BUFFER: usize = 64 * 1024;
/// Frames of a streamable type at least this large are passed through in
/// pieces instead of being held whole.
const STREAM_THRESHOLD: usize = 256 * 1024;
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
    let _ = tcp.set_nodelay(true);
    let engine = PgEngine::new(ctx.clone(), tcp, client_addr);
    session::run(engine, ctx.sink.clone(), &*ctx.auth, &ctx.masking, shutdown).await;
}

/// One PostgreSQL connection, as the session lifecycle drives it: the
/// client's start-up, the target's, then the relay.
struct PgEngine<S, A> {
    ctx: Arc<Context<S, A>>,
    client_addr: SocketAddr,
    /// The connection before start-up.
    tcp: Option<TcpStream>,
    client: Option<Conn>,
    /// A cancel request, served aside.
    cancel: Option<(i32, i32)>,
    /// The startup message's parameters, as the client sent them.
    params: BTreeMap<String, String>,
    /// What a refusal records of them.
    claimed: Claimed,
    password: Zeroizing<Vec<u8>>,
    database: String,
    tls: Option<String>,
    /// Set once the session begins.
    admitted: Option<Terms>,
    /// Set once the target is reached.
    upstream: Option<Reached>,
}

/// What an admitted session runs under.
struct Terms {
    gate: Option<Gate>,
    masker: Option<Arc<Masker>>,
    sample_rows: Option<usize>,
    /// The start-up parameters the target is given.
    forwarded: Vec<(String, String)>,
}

/// The target's side, once reached.
struct Reached {
    target: Conn,
    backend_pid: i32,
    secret: i32,
    /// The client's cancel key, routed to this session while it lives.
    key: Option<CancelKey>,
    cancels: mpsc::Receiver<CancelNotice>,
    protocol: Protocol,
    /// Start-up as the client is told it: parameters, notices, its key, ready.
    hello: BytesMut,
}

impl<S: EventSink, A: Authenticator> PgEngine<S, A> {
    fn new(ctx: Arc<Context<S, A>>, tcp: TcpStream, client_addr: SocketAddr) -> Self {
        PgEngine {
            ctx,
            client_addr,
            tcp: Some(tcp),
            client: None,
            cancel: None,
            params: BTreeMap::new(),
            claimed: Claimed::default(),
            password: Zeroizing::default(),
            database: String::new(),
            tls: None,
            admitted: None,
            upstream: None,
        }
    }

    fn user(&self) -> &str {
        self.params.get("user").map_or("", String::as_str)
    }

    /// Start-up up to the password; a refusal says its native error.
    async fn startup(&mut self) -> Result<(), Refused<PgError>> {
        let tcp = self.tcp.take().expect("start-up runs once");
        let resource = &self.ctx.resource;
        let contact = match startup::accept(tcp, self.ctx.tls.as_ref(), resource.allow_plaintext).await {
            Ok(contact) => contact,
            Err(refusal) => {
                self.tls = refusal.conn.as_ref().map(Conn::tls_version);
                self.client = refusal.conn;
                let reason = if refusal.error.code == "28000" { EndReason::AuthFailed } else { EndReason::ClientError };
                return Err(Refused { error: refusal.error, reason });
            }
        };
        let (client, params) = match contact {
            Contact::Cancel { conn, pid, secret } => {
                self.client = Some(conn);
                self.cancel = Some((pid, secret));
                return Ok(());
            }
            Contact::Startup { conn, params } => (conn, params),
        };
        self.tls = Some(client.tls_version());
        self.client = Some(client);
        let user = params.get("user").cloned().unwrap_or_default();
        self.database = params.get("database").cloned().unwrap_or_else(|| user.clone());
        // What a refusal records of them: typed by a client not yet admitted.
        let strictest = self.ctx.masking.strictest().and_then(|p| self.ctx.masking.masker(&p).ok().flatten());
        self.claimed = Claimed::new(&params, strictest.as_ref());
        self.params = params;
        if self.params.contains_key("replication") {
            let error = PgError::fatal("0A000", "replication connections are not available through Proctor");
            return Err(Refused { error, reason: EndReason::ClientError });
        }
        // A password, over TLS unless the resource allows plaintext.
        let client = self.client.as_mut().expect("set above");
        self.password =
            ask_password(client, &user).await.map_err(|error| Refused { error, reason: EndReason::AuthFailed })?;
        Ok(())
    }
}

impl<S: EventSink, A: Authenticator> session::Engine<S> for PgEngine<S, A> {
    type Error = PgError;
    type Rules = Gate;

    const RULES: RuleScope = ResourceProtocol::Postgres.rules();

    fn resource(&self) -> &str {
        &self.ctx.resource.name
    }

    fn unadmitted(&self, identity: Option<&Identity>) -> SessionStart {
        let params = &self.claimed.params;
        let gave = params.get("user").map(|u| format!("refused; the client gave user name {u:?}"));
        let tls = self.tls.as_deref().unwrap_or("unknown");
        session_start(&self.ctx.resource, self.client_addr, params, identity, tls, gave)
    }

    async fn start(&mut self) -> Start<PgError> {
        match self.startup().await {
            Ok(()) if self.cancel.is_some() => Start::Aside,
            Ok(()) => Start::Credential,
            Err(refused) => Start::Refused(refused),
        }
    }

    async fn aside(&mut self, recorder: &mut SessionRecorder<S>) {
        let Some((pid, secret)) = self.cancel else { return };
        handle_cancel(&self.ctx.cancels, pid, secret, self.client_addr, recorder, &self.ctx.resource).await;
        if let Some(conn) = self.client.as_mut() {
            let _ = tokio::time::timeout(GOODBYE_TIMEOUT, conn.shutdown()).await;
        }
    }

    fn credential(&self) -> AuthRequest<'_> {
        AuthRequest {
            resource: &self.ctx.resource.name,
            user: self.user(),
            credential: Credential::Password(&self.password),
            client_addr: self.client_addr,
        }
    }

    fn forget_credential(&mut self) {
        self.password = Zeroizing::default();
    }

    /// A grant opens its resource's database (or those listed), not every
    /// database the target account can reach.
    fn authorize(&self, identity: &Identity) -> Result<(), Refused<PgError>> {
        let resource = &self.ctx.resource;
        match &identity.grant_id {
            Some(grant) if !resource.databases.contains(&self.database) => {
                let error = PgError::fatal(
                    "42501",
                    format!(
                        "grant {grant} opens database {} of resource {}, not the one this connection asked for",
                        resource.databases.iter().map(|d| format!("{d:?}")).collect::<Vec<_>>().join(" or "),
                        resource.name
                    ),
                )
                .with_hint("connect to the database in the grant's credentials URL");
                Err(Refused { error, reason: EndReason::Policy })
            }
            _ => Ok(()),
        }
    }

    fn rules(&self, name: &str, grant_id: Option<String>, session_id: SessionId) -> Option<Gate> {
        let rules = self.ctx.policy.rules(name)?;
        Some(Gate::new(self.ctx.policy.clone(), rules, grant_id, self.ctx.resource.name.clone(), session_id))
    }

    /// Records the session's start with every start-up parameter the target
    /// will be given (masked, as the client's other words are: `options`
    /// and `application_name` can hold anything).
    fn begin(
        &mut self,
        identity: &Identity,
        gate: Option<Gate>,
        masker: Option<Arc<Masker>>,
        recorder: &mut SessionRecorder<S>,
    ) {
        let recorded: BTreeMap<String, String> = self
            .params
            .iter()
            .map(|(k, v)| {
                (k.clone(), masker.as_ref().and_then(|m| super::mask::parameter(m, v)).unwrap_or_else(|| v.clone()))
            })
            .collect();
        let tls = self.tls.as_deref().unwrap_or("unknown");
        let start = session_start(&self.ctx.resource, self.client_addr, &recorded, Some(identity), tls, None);
        recorder.push(Direction::Gateway, start.into());
        for (parameter, value) in recorded.iter().filter(|(k, _)| k.as_str() != "user") {
            recorder.push(
                Direction::ClientToTarget,
                proctor_schemas::ParameterStatus { parameter: parameter.clone(), value: value.clone() }.into(),
            );
        }
        let forwarded =
            self.params.iter().filter(|(k, _)| k.as_str() != "user").map(|(k, v)| (k.clone(), v.clone())).collect();
        self.admitted = Some(Terms { gate, masker, sample_rows: identity.sample_rows, forwarded });
    }

    async fn connect(&mut self, recorder: &mut SessionRecorder<S>) -> Result<(), Refused<PgError>> {
        let resource = &self.ctx.resource;
        let terms = self.admitted.as_mut().expect("the session began");
        let upstream = upstream::connect(&resource.target, &terms.forwarded).await.map_err(|error| {
            let reason = match error {
                upstream::UpstreamError::Refused(ref f) if f.code.as_deref() == Some("3D000") => EndReason::ClientError,
                _ => EndReason::TargetError,
            };
            Refused { error: error.to_client(&resource.name), reason }
        })?;
        let Upstream { conn: target, parameters, backend_pid, secret, notices } = upstream;

        // Start-up completes for the client: its own cancel key, the
        // target's parameters and notices, ready.
        let (cancel_tx, cancels) = mpsc::channel(4);
        let key = self.ctx.cancels.issue(resource.target.address.clone(), backend_pid, secret, cancel_tx);
        let masker = terms.masker.clone();
        let mut hello = BytesMut::new();
        messages::authentication_ok(&mut hello);
        // Under masking, what the client sees of them and what is recorded
        // are masked alike (a client-set application_name, a login notice).
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

        // Result samples: as the grant's policy says, and only where a
        // profile masks them; otherwise as the resource says.
        let rows = match terms.sample_rows {
            Some(rows) if masker.is_some() => rows,
            Some(_) => 0,
            None => resource.limits.rows,
        };
        let limits = super::SampleLimits { rows, ..resource.limits };
        let mut protocol = Protocol::new(limits).with_gate(terms.gate.take()).with_masker(masker);
        for (name, value) in &parameters {
            protocol.parameter(name, value);
        }
        self.upstream = Some(Reached { target, backend_pid, secret, key: Some(key), cancels, protocol, hello });
        Ok(())
    }

    async fn open(&mut self) -> Result<(), ()> {
        let (Some(client), Some(reached)) = (self.client.as_mut(), self.upstream.as_mut()) else { return Err(()) };
        let hello = std::mem::take(&mut reached.hello);
        client.write_all(&hello).await.map_err(drop)?;
        client.flush().await.map_err(drop)
    }

    async fn relay<F: Future<Output = Ending> + Send>(
        &mut self,
        recorder: &mut SessionRecorder<S>,
        ended: Pin<&mut F>,
    ) -> Ending {
        let (Some(client), Some(reached)) = (self.client.as_mut(), self.upstream.as_mut()) else {
            return Ending::new(EndReason::InternalError, "the relay began before start-up completed".to_string());
        };
        let catalog = CatalogAccess { resource: self.ctx.resource.clone(), database: self.database.clone() };
        let Reached { target, cancels, protocol, .. } = reached;
        relay(recorder, client, target, cancels, ended, protocol, catalog).await
    }

    /// Work in flight on the target ends with the session: a grant that
    /// ended stops the work it allowed, and a client that left (or was
    /// refused, or Proctor shutting down) leaves nothing running whose
    /// outcome no one will see recorded. (A target that closed has nothing
    /// left to stop.)
    async fn wind_down(&mut self, recorder: &mut SessionRecorder<S>, ending: &mut Ending) {
        let Some(reached) = self.upstream.as_mut() else { return };
        // Cancel requests no longer reach this session: those waiting are
        // answered at once (not delivered) instead of at their timeout.
        reached.key = None;
        reached.cancels.close();
        while let Ok(notice) = reached.cancels.try_recv() {
            let _ = notice.reply.send(false);
        }
        let target_gone = matches!(ending.reason, EndReason::TargetClosed | EndReason::TargetError);
        if target_gone || !reached.protocol.awaiting_target() {
            return;
        }
        let queued = reached.protocol.requests_in_flight() > 1;
        let (resource, database) = (&self.ctx.resource, &self.database);
        let (pid, secret) = (reached.backend_pid, reached.secret);
        let stopped =
            super::interrupt::stop_in_flight(&mut reached.target, resource, database, pid, secret, queued).await;
        let what = stopped.describe();
        recorder.push(Direction::Gateway, Cancel { backend_pid: Some(pid), message: Some(what.clone()) }.into());
        let _ = recorder.flush().await;
        ending.message = Some(match ending.message.take() {
            Some(message) => format!("{message}; {what}"),
            None => what,
        });
    }

    fn refusal(&self, refusal: &Refusal) -> PgError {
        let code = match refusal.reason {
            _ if refusal.unavailable => "08004",
            EndReason::AuthFailed => "28P01",
            EndReason::Policy => "42501",
            EndReason::Shutdown | EndReason::GrantExpired | EndReason::GrantRevoked => "57P01",
            EndReason::RecorderUnavailable => "58030",
            EndReason::TargetError | EndReason::TargetClosed => "08001",
            _ => "08P01",
        };
        let error = PgError::fatal(code, refusal.message.clone());
        match &refusal.hint {
            Some(hint) => error.with_hint(hint),
            None => error,
        }
    }

    fn farewell(&self, ending: &Ending) -> Option<PgError> {
        let message = ending.message.clone();
        match ending.reason {
            // The target's own FATAL error already reached the client.
            EndReason::TargetClosed | EndReason::TargetError if ending.client_told => None,
            EndReason::TargetClosed | EndReason::TargetError => Some(
                PgError::fatal("08006", message.unwrap_or_else(|| "the target closed the connection".to_string()))
                    .with_hint("the database server ended the session; reconnect"),
            ),
            EndReason::Shutdown => Some(PgError::fatal("57P01", "Proctor is shutting down; reconnect in a moment")),
            EndReason::GrantExpired | EndReason::GrantRevoked => Some(
                PgError::fatal(
                    "57P01",
                    format!("Proctor ended this session: {}", message.unwrap_or_else(|| "its grant ended".into())),
                )
                .with_hint("request a new grant with `proctor grant request` and reconnect with its credentials"),
            ),
            EndReason::RecorderUnavailable => Some(
                PgError::fatal("58030", message.unwrap_or_default())
                    .with_hint("nothing further was sent to the database; try again later or ask the operator"),
            ),
            EndReason::ClientError => Some(PgError::fatal("08P01", message.unwrap_or_default())),
            _ => None,
        }
    }

    fn report(&self, error: &PgError) -> ErrorReport {
        ErrorReport {
            ref_seq: None,
            severity: Some(error.severity.to_string()),
            sqlstate: Some(error.code.to_string()),
            message: self.claimed.scrub(&error.message),
            detail: error.detail.as_deref().map(|d| self.claimed.scrub(d)),
        }
    }

    async fn close(&mut self, error: Option<&PgError>) {
        if let Some(client) = self.client.as_mut() {
            match error {
                Some(error) => send_error(client, error).await,
                None => {
                    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, client.shutdown()).await;
                }
            }
        }
        if let Some(reached) = self.upstream.as_mut() {
            let _ = tokio::time::timeout(GOODBYE_TIMEOUT, reached.target.shutdown()).await;
        }
    }
}

fn session_start(
    resource: &PgResource,
    client_addr: SocketAddr,
    params: &BTreeMap<String, String>,
    identity: Option<&Identity>,
    tls: &str,
    message: Option<String>,
) -> SessionStart {
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
}

/// What a client not (yet) admitted claimed at start-up, as it is recorded:
/// a user name that names a grant is an identifier and stays; any other
/// user or database name, and every other parameter, is masked by every
/// configured profile's detectors at once and cut to 64 characters: a
/// secret of a known format pasted into the wrong field does not reach the
/// disk raw (a plain password no detector knows is bounded, not masked).
#[derive(Default)]
struct Claimed {
    params: BTreeMap<String, String>,
    /// Each name as typed, and as recorded (where they differ).
    names: Vec<(String, String)>,
    masker: Option<Arc<Masker>>,
}

/// How much of a claimed name or parameter is recorded, at most.
const CLAIMED_CHARS: usize = 64;

impl Claimed {
    fn new(params: &BTreeMap<String, String>, masker: Option<&Arc<Masker>>) -> Claimed {
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

/// Asks for the password in cleartext (the connection is TLS unless the
/// resource allows plaintext) and reads it; the message is wiped when
/// dropped, whatever part of it is the password.
async fn ask_password(client: &mut Conn, user: &str) -> Result<Zeroizing<Vec<u8>>, PgError> {
    let mut request = BytesMut::new();
    messages::authentication_cleartext(&mut request);
    let left = || PgError::fatal("08006", "the client left during authentication");
    client.write_all(&request).await.map_err(|_| left())?;
    client.flush().await.map_err(|_| left())?;
    let mut header = [0u8; 5];
    if client.read_exact(&mut header).await.is_err() || header[0] != b'p' {
        return Err(PgError::fatal(
            "28P01",
            format!("password authentication failed for user \"{user}\": no password was sent"),
        ));
    }
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if !(5..=10_000).contains(&length) {
        return Err(PgError::fatal("08P01", format!("invalid password message length {length}")));
    }
    let mut body = Zeroizing::new(vec![0u8; length - 4]);
    client.read_exact(&mut body).await.map_err(|_| left())?;
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    Ok(Zeroizing::new(body[..end].to_vec()))
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
            let empty = BTreeMap::new();
            recorder.push(Direction::Gateway, session_start(resource, client_addr, &empty, None, "off", None).into());
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

/// Relays until either side ends the session, or `stop` does (shutdown,
/// the lease's end). `cancels` are cancel requests for this session, to
/// record before they go on.
async fn relay<S: EventSink, F: Future<Output = Ending>>(
    recorder: &mut SessionRecorder<S>,
    client: &mut Conn,
    target: &mut Conn,
    cancels: &mut mpsc::Receiver<CancelNotice>,
    mut stop: Pin<&mut F>,
    protocol: &mut Protocol,
    catalog: CatalogAccess,
) -> Ending {
    // Answers on their way about a paused client frame, and a paused
    // target frame; once one came, the paused frame is read again as soon
    // as what went before it has been sent.
    let (mut asking, mut looking): (Option<Asking>, Option<Asking>) = (None, None);
    let (mut rescan_up, mut rescan_down) = (false, false);
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut target_r, mut target_w) = tokio::io::split(target);
    let mut up = Half::new();
    let mut down = Half::new();
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
            ending = stop.as_mut() => return ending,
        }
    }
}
