//! One SSH connection as the session lifecycle drives it: the client's
//! handshake up to its password, the target reached with Proctor's key,
//! then the channels relayed, each request and each byte recorded before
//! it passes.
//!
//! Each side is a russh connection running its own loop. Per channel, a
//! reader task takes what a side sends (admitted by the [`Flow`], which is
//! where a side that sends faster than the other reads is held back), the
//! relay records it and hands it to a writer task of the other side; the
//! relay itself never waits on a peer, so neither loop can wait on the
//! other through it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proctor_gateway_core::EventSink;
use proctor_gateway_core::auth::{AuthRequest, Authenticator, Credential, Identity};
use proctor_gateway_core::control::{HeldKind, HoldOutcome, HoldRequest};
use proctor_gateway_core::masking::MaskingKey;
use proctor_gateway_core::masking::{Counts, Masker};
use proctor_gateway_core::recording::{Record, SessionRecorder};
use proctor_gateway_core::session::{self, Ending, Engine, Refusal, Refused, RuleScope, Start};
use proctor_schemas::{
    Command, Direction, EndReason, ErrorReport, EventBody, Exec, ExitStatus, FileTransfer, OutputStream,
    PolicyDecision, PolicyOutcome, PortForward, Protocol, PtyRequest, Resize, SessionId, SessionStart, Shell, Signal,
    TerminalInput, TerminalOutput,
};
use proctor_terminal::EchoedLines;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey};
use russh::server::{Auth, Msg as ServerMsg};
use russh::{ChannelId, ChannelMsg, ChannelOpenFailure, ChannelWriteHalf, Disconnect};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use zeroize::Zeroizing;

use crate::Context;
use crate::flow::{Flow, Limits, Side, Stuck};
use crate::rules::{SshPolicy, Verdict};

pub(crate) async fn handle<S: EventSink, A: Authenticator>(
    ctx: Arc<Context<S, A>>,
    tcp: TcpStream,
    client_addr: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let engine = SshEngine::new(ctx.clone(), tcp, client_addr);
    session::run(engine, ctx.sink.clone(), &*ctx.auth, &ctx.masking, shutdown).await;
}

/// An SSH refusal or farewell: said to the client as the description of
/// its disconnect, which OpenSSH prints.
pub struct SshError {
    pub message: String,
}

/// What the client's connection tells the engine.
enum FromClient {
    Credential {
        user: String,
        proof: Proof,
        reply: oneshot::Sender<Auth>,
    },
    Open {
        channel: russh::Channel<ServerMsg>,
        reply: russh::server::ChannelOpenHandle,
    },
    /// A connection the client asks to forward (`ssh -L`): allowed by the
    /// session's rules, or refused.
    Forward {
        channel: russh::Channel<ServerMsg>,
        host: String,
        port: u32,
        origin: (String, u32),
        reply: russh::server::ChannelOpenHandle,
    },
    /// Something the handler refused outright (forwarding), to record.
    Refused(String),
}

/// How the client proved who it is.
enum Proof {
    /// A password, or a keyboard-interactive answer: the grant's credential.
    Password(Zeroizing<String>),
    /// A user certificate Proctor's CA signed for the grant named as user,
    /// checked; valid until `valid_before` (ms since the epoch).
    Certificate { valid_before: i64 },
    /// A certificate refused, and why.
    Refused(String),
}

/// The target's answers to the client's channel requests (terminal, shell,
/// exec), passed back in the order the client asked. russh keeps one
/// pending reply per channel, so a request is answered before the next one
/// is read: the handler waits here for the target's answer to each.
#[derive(Default)]
struct Answers {
    channels: std::sync::Mutex<HashMap<ChannelId, Answering>>,
    /// The relay ended: no request will be answered.
    ended: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Answering {
    /// Handlers waiting, oldest first.
    waiting: std::collections::VecDeque<oneshot::Sender<bool>>,
    /// Answers that came before their handler waited.
    early: std::collections::VecDeque<bool>,
    /// The target's channel is gone (or the relay ended): nothing more
    /// will be answered.
    closed: bool,
}

impl Answers {
    /// The target's answer to the oldest unanswered request on `channel`;
    /// false if none comes in time, or the channel is gone.
    async fn wait(&self, channel: ChannelId) -> bool {
        let answer = {
            let mut all = self.channels.lock().unwrap_or_else(|p| p.into_inner());
            let answering = all.entry(channel).or_default();
            if let Some(answer) = answering.early.pop_front() {
                return answer;
            }
            if answering.closed || self.ended.load(Ordering::SeqCst) {
                return false;
            }
            let (tx, rx) = oneshot::channel();
            answering.waiting.push_back(tx);
            rx
        };
        matches!(tokio::time::timeout(OPEN_TIMEOUT, answer).await, Ok(Ok(true)))
    }

    /// The target answered the oldest request on `channel`.
    fn answered(&self, channel: ChannelId, granted: bool) {
        let mut all = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let answering = all.entry(channel).or_default();
        match answering.waiting.pop_front() {
            Some(waiting) => {
                let _ = waiting.send(granted);
            }
            None => answering.early.push_back(granted),
        }
    }

    /// The target's channel is gone: its waiting handlers, and any that
    /// come, are answered no.
    fn forget(&self, channel: ChannelId) {
        let mut all = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let answering = all.entry(channel).or_default();
        answering.waiting.clear();
        answering.closed = true;
    }

    /// The relay ended: every request is answered no.
    fn close_all(&self) {
        let mut all = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        for answering in all.values_mut() {
            answering.waiting.clear();
            answering.closed = true;
        }
        self.ended.store(true, Ordering::SeqCst);
    }
}

/// The client-facing russh handler: passes what matters to the engine and
/// never waits on the target, but for its answers to channel requests.
struct ClientSide {
    tx: mpsc::UnboundedSender<FromClient>,
    /// The CA whose user certificates are accepted, if any.
    user_ca: Option<Arc<crate::certificate::UserCa>>,
    answers: Arc<Answers>,
    /// Why the session was refused, once it was: said to the client as a
    /// keyboard-interactive instruction, the one text an SSH client prints
    /// before authentication succeeds.
    refusal: Arc<std::sync::Mutex<Option<String>>>,
}

impl ClientSide {
    /// Answers the client's request on `channel` as the target did.
    async fn answer(&self, channel: ChannelId, session: &mut russh::server::Session) -> Result<(), russh::Error> {
        if self.answers.wait(channel).await {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn credential(&mut self, user: &str, proof: Proof) -> Auth {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(FromClient::Credential { user: user.to_string(), proof, reply }).is_err() {
            return Auth::reject();
        }
        answer.await.unwrap_or_else(|_| Auth::reject())
    }
}

/// The one keyboard-interactive method, as a set.
fn keyboard_interactive() -> russh::MethodSet {
    russh::MethodSet::from(&[russh::MethodKind::KeyboardInteractive][..])
}

impl russh::server::Handler for ClientSide {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        Ok(self.credential(user, Proof::Password(Zeroizing::new(password.to_string()))).await)
    }

    /// A user certificate (russh has checked the client holds its key):
    /// accepted if Proctor's CA signed it for the grant named as user; the
    /// grant is then checked live like a password's.
    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        let Some(ca) = self.user_ca.clone() else {
            return Ok(Auth::reject());
        };
        if !ca.signed(certificate) {
            // Another CA's certificate (an agent offers all it holds): not
            // ours to refuse the session over; the client tries its next key.
            return Ok(Auth::reject());
        }
        let proof = match ca.check_at(certificate, user, crate::certificate::unix_now()) {
            Ok(valid_before) => Proof::Certificate { valid_before },
            Err(why) => {
                tracing::info!(user, %why, "a client certificate was refused");
                Proof::Refused(format!("certificate refused: {why}"))
            }
        };
        Ok(self.credential(user, proof).await)
    }

    /// The grant's credential asked for at a prompt (as `password` gives
    /// it); after a refusal, the reason, shown with no prompt.
    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        let refusal = self.refusal.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(message) = refusal {
            return Ok(match response {
                None => Auth::Partial {
                    name: "Proctor".into(),
                    instructions: message.into(),
                    prompts: std::borrow::Cow::Borrowed(&[]),
                },
                Some(_) => Auth::Reject { proceed_with_methods: None, partial_success: false },
            });
        }
        match response {
            None => Ok(Auth::Partial {
                name: "Proctor".into(),
                instructions: "".into(),
                prompts: vec![("Grant credential: ".into(), false)].into(),
            }),
            Some(mut response) => {
                let answer = response.next().unwrap_or_default();
                let password = Zeroizing::new(String::from_utf8_lossy(&answer).into_owned());
                Ok(self.credential(user, Proof::Password(password)).await)
            }
        }
    }

    // Terminals, shells and commands are recorded and passed to the target
    // by the relay; the client gets the target's answer here, before its
    // next request is read (russh keeps one reply per channel). Resizes and
    // signals want none. What is refused is refused as it comes, for the
    // same reason; the relay records the refusals.
    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        self.answer(channel, session).await
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        self.answer(channel, session).await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _command: &[u8],
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        self.answer(channel, session).await
    }

    /// SFTP is passed to the target, read as file operations; any other
    /// subsystem is refused.
    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        if name == SFTP {
            return self.answer(channel, session).await;
        }
        session.channel_failure(channel)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    /// Decided by the relay, under the session's rules.
    async fn channel_open_direct_tcpip(
        &mut self,
        channel: russh::Channel<ServerMsg>,
        host: &str,
        port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        let origin = (originator_address.to_string(), originator_port);
        let _ = self.tx.send(FromClient::Forward { channel, host: host.to_string(), port, origin, reply });
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: russh::Channel<ServerMsg>,
        socket_path: &str,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        let _ = self.tx.send(FromClient::Refused(format!("forwarding to socket {socket_path:?}")));
        reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut russh::server::Session,
    ) -> Result<bool, Self::Error> {
        let _ =
            self.tx.send(FromClient::Refused(format!("remote port forwarding from {address}:{port} (tcpip-forward)")));
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut russh::server::Session,
    ) -> Result<bool, Self::Error> {
        let _ = self.tx.send(FromClient::Refused(format!("remote forwarding from socket {socket_path:?}")));
        Ok(false)
    }

    async fn channel_open_session(
        &mut self,
        channel: russh::Channel<ServerMsg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        // Accepted (or refused) by the relay once the target's side is open.
        let _ = self.tx.send(FromClient::Open { channel, reply });
        Ok(())
    }
}

/// The target-facing russh handler: checks the target's host key against
/// the pinned one.
struct TargetSide {
    pinned: Vec<PublicKey>,
    /// The key the target presented, when it was not the pinned one.
    presented: Arc<std::sync::Mutex<Option<PublicKey>>>,
}

impl russh::client::Handler for TargetSide {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let presented = match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            russh::keys::PublicKeyOrCertificate::Certificate(certificate) => {
                PublicKey::from(certificate.public_key().clone())
            }
        };
        if self.pinned.iter().any(|pinned| pinned.key_data() == presented.key_data()) {
            return Ok(true);
        }
        *self.presented.lock().unwrap_or_else(|p| p.into_inner()) = Some(presented);
        Ok(false)
    }
}

/// What the relay learns, from the reader tasks and the channel openings.
enum Event {
    /// A channel opening ended: the client channel and the target channel
    /// it is relayed to, both open; `None` if it was refused.
    Opened(Option<(russh::Channel<ServerMsg>, russh::Channel<russh::client::Msg>, Option<Forwarded>)>),
    Client(ChannelId, ChannelMsg),
    Target(ChannelId, ChannelMsg),
    /// One side's channel ended (its reader saw the last message).
    Gone(Side, ChannelId),
    Stuck(Stuck),
}

/// What a writer task sends on one channel of its side.
enum Out {
    Data(bytes::Bytes),
    Extended(u32, bytes::Bytes),
    Exec(Vec<u8>),
    Pty { term: String, cols: u32, rows: u32, pixel_width: u32, pixel_height: u32, modes: Vec<(russh::Pty, u32)> },
    Shell,
    Subsystem(String),
    WindowChange { cols: u32, rows: u32, pixel_width: u32, pixel_height: u32 },
    Signal(russh::Sig),
    ExitStatus(u32),
    ExitSignal { signal: russh::Sig, core_dumped: bool, message: String },
    Eof,
    Close,
}

/// What the flow counts of a message that carries no bytes: floods of
/// requests are held back as data is.
const MESSAGE_COST: usize = 64;

/// What a channel message costs in the flow.
fn cost(message: &ChannelMsg) -> usize {
    match message {
        ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } => data.len(),
        ChannelMsg::Exec { command, .. } => MESSAGE_COST + command.len(),
        ChannelMsg::SetEnv { variable_name, variable_value, .. } => {
            MESSAGE_COST + variable_name.len() + variable_value.len()
        }
        ChannelMsg::RequestSubsystem { name, .. } => MESSAGE_COST + name.len(),
        ChannelMsg::RequestPty { term, terminal_modes, .. } => MESSAGE_COST + term.len() + 5 * terminal_modes.len(),
        ChannelMsg::ExitSignal { error_message, .. } => MESSAGE_COST + error_message.len(),
        // The target's answers to requests are never held back: a handler
        // waits on each, holding the client's loop, which is what drains
        // what the flow holds.
        ChannelMsg::Success | ChannelMsg::Failure => 0,
        _ => MESSAGE_COST,
    }
}

/// What a message to a peer costs in the flow (as the message it came of).
fn out_cost(message: &Out) -> usize {
    match message {
        Out::Data(data) | Out::Extended(_, data) => data.len(),
        Out::Exec(command) => MESSAGE_COST + command.len(),
        Out::Pty { term, modes, .. } => MESSAGE_COST + term.len() + 5 * modes.len(),
        Out::ExitSignal { message, .. } => MESSAGE_COST + message.len(),
        _ => MESSAGE_COST,
    }
}

/// A writer task: its queue, what is queued on it and not yet sent (so
/// that stopping it gives the flow back what it held), and the task.
struct Writer {
    /// `None` once stopped: what is sent then is dropped and credited.
    tx: Option<mpsc::UnboundedSender<Out>>,
    pending: Arc<AtomicUsize>,
    task: tokio::task::AbortHandle,
    /// Whose bytes it sends on.
    from: Side,
}

impl Writer {
    fn send(&self, message: Out, flow: &Flow) {
        let cost = out_cost(&message);
        let Some(tx) = &self.tx else {
            flow.delivered(self.from, cost);
            return;
        };
        self.pending.fetch_add(cost, Ordering::SeqCst);
        if tx.send(message).is_err() {
            take(&self.pending, cost);
            flow.delivered(self.from, cost);
        }
    }

    /// Stops the task; what it still held is no longer waited for, nor
    /// what is sent to it from now on.
    fn stop(&mut self, flow: &Flow) {
        self.tx = None;
        self.task.abort();
        flow.delivered(self.from, self.pending.swap(0, Ordering::SeqCst));
    }

    /// Waits (at most `limit`) until what was sent to it has gone out.
    async fn flushed(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.pending.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Takes `cost` off `pending`, never below zero (a writer stopped while
/// sending has been credited already).
fn take(pending: &AtomicUsize, cost: usize) -> usize {
    let before = pending.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| Some(p.saturating_sub(cost)));
    before.unwrap_or(0).min(cost)
}

/// A client channel and the target channel it is relayed to.
struct Pair {
    to_client: Writer,
    to_target: Writer,
    readers: [tokio::task::AbortHandle; 2],
    /// Sides whose channel ended.
    gone: [bool; 2],
    /// The target's EOF, held until its exit status (or its close) has been
    /// passed on: a client told EOF on both ways may close the channel
    /// before an exit status that follows arrives (OpenSSH's connection
    /// sharing does), and loses it.
    eof_held: bool,
    /// The channel's terminal, once the target granted the client's
    /// request for one (until then, input is recorded as data: a target
    /// that refuses terminals must not turn input into unrecorded lengths).
    terminal: Option<Terminal>,
    /// Requests passed to the target whose answer has not come back, in
    /// order.
    asked: std::collections::VecDeque<Asked>,
    /// Where the target's answers go: to the client's handler.
    answers: Arc<Answers>,
    /// The channel's SFTP, read as file operations, once asked for.
    sftp: Option<crate::sftp::Sftp>,
    /// Statuses refusing SFTP requests, waiting for the end of the answer
    /// packet the target is sending.
    refusals: Vec<bytes::Bytes>,
    /// The client's first bytes to a command or a shell without a terminal
    /// are looked at (those seen so far, held back until told): a command
    /// may speak SFTP (`ForceCommand internal-sftp`, an `sftp-server` under
    /// another name), read as SFTP then.
    sniff: Option<Vec<u8>>,
    /// The target's first output to a command or shell (terminal or not)
    /// is looked at (its first bytes so far): one that answers as an SFTP
    /// server on a channel not read as SFTP ends the channel.
    watch: Option<Vec<u8>>,
    /// What the channel forwards, when it is a forwarded connection.
    forward: Option<Forwarded>,
    /// Output held back for masking: stdout, stderr.
    masking: [crate::mask::OutputMasker; 2],
    /// The channel's program (shell, command or subsystem) was asked for.
    started: bool,
}

impl Pair {
    /// Whether this channel's output (`stream` 0 stdout, 1 stderr) is
    /// masked as text (when the session is): text output is; SFTP's
    /// packets (stdout) are another protocol's, whose reads' data its
    /// reader masks ([`crate::sftp::Sftp::answers`]); forwarded
    /// connections' bytes pass as they are.
    fn masks(&self, stream: usize) -> bool {
        self.forward.is_none() && (stream == 1 || self.sftp.is_none())
    }

    /// Sends the statuses refusing SFTP requests: answers go whole, so a
    /// refusal goes at once, once the server's version has.
    fn send_refusals(&mut self, flow: &Flow) {
        if self.sftp.as_ref().is_some_and(crate::sftp::Sftp::versioned) {
            for status in std::mem::take(&mut self.refusals) {
                self.to_client.send(Out::Data(status), flow);
            }
        }
    }

    /// Whether the client's first input is to be looked at for SFTP: a
    /// command or shell without a terminal, in a session that masks or
    /// decides file operations.
    fn sniffs(&self, rc: &RelayCtx<'_>) -> bool {
        self.terminal.is_none() && !self.asked.contains(&Asked::Pty) && watches(rc)
    }
}

/// A forwarded connection: where to, what asked for it, what it carried.
struct Forwarded {
    host: String,
    port: u32,
    asked_seq: u64,
    started: std::time::Instant,
    to_target: u64,
    to_client: u64,
}

impl Forwarded {
    /// Its close: what it carried, answering the event that asked for it.
    fn closed(self, id: ChannelId, message: &str) -> PortForward {
        PortForward {
            channel_id: Some(u32::from(id)),
            operation: "direct-tcpip".to_string(),
            host: Some(self.host),
            port: Some(self.port),
            ref_seq: Some(self.asked_seq),
            bytes_to_target: Some(self.to_target),
            bytes_to_client: Some(self.to_client),
            duration_ns: Some(self.started.elapsed().as_nanos().try_into().unwrap_or(u64::MAX)),
            message: Some(message.to_string()),
            ..Default::default()
        }
    }
}

/// A request passed to the target, awaiting its answer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Asked {
    Pty,
    Sftp,
    Other,
}

/// A channel's terminal: its keystrokes are recorded as their length and a
/// keyed digest, and its command lines are recovered from their echo.
#[derive(Default)]
struct Terminal {
    lines: EchoedLines,
    /// Bytes typed so far: what the next keystrokes' digest is bound to.
    typed: u64,
}

impl Terminal {
    /// How keystrokes are recorded: their length and digest, never
    /// themselves.
    fn keystrokes(&mut self, key: &MaskingKey, session: SessionId, channel: ChannelId, data: &[u8]) -> TerminalInput {
        let digest = keystroke_digest(key, session, channel, self.typed, data);
        self.typed += data.len() as u64;
        TerminalInput {
            channel_id: Some(u32::from(channel)),
            byte_count: Some(data.len() as u64),
            digest: Some(digest),
            ..Default::default()
        }
    }
}

/// The keyed digest of keystrokes typed at a terminal: HMAC-SHA256 under
/// the deployment's masking key, bound to the session, the channel and
/// where in the channel's input the bytes were typed. It confirms a
/// candidate only to whoever holds the key; a digest of the same key
/// pressed twice differs, so digests say nothing about each other.
fn keystroke_digest(key: &MaskingKey, session: SessionId, channel: ChannelId, offset: u64, bytes: &[u8]) -> String {
    let mut bound = Vec::with_capacity(64 + bytes.len());
    bound.extend_from_slice(session.to_string().as_bytes());
    bound.extend_from_slice(&u32::from(channel).to_be_bytes());
    bound.extend_from_slice(&offset.to_be_bytes());
    bound.extend_from_slice(bytes);
    key.digest("ssh terminal input", &bound)
}

impl Pair {
    fn writer(&self, to: Side) -> &Writer {
        match to {
            Side::Client => &self.to_client,
            Side::Target => &self.to_target,
        }
    }

    fn writer_mut(&mut self, to: Side) -> &mut Writer {
        match to {
            Side::Client => &mut self.to_client,
            Side::Target => &mut self.to_target,
        }
    }
}

/// Every task of a session's relay, stopped when the relay ends, however
/// it ends.
#[derive(Default)]
struct Tasks(Vec<tokio::task::AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

struct SshEngine<S, A> {
    ctx: Arc<Context<S, A>>,
    client_addr: SocketAddr,
    tcp: Option<TcpStream>,
    from_client: Option<mpsc::UnboundedReceiver<FromClient>>,
    server: Option<russh::server::Handle>,
    user: String,
    password: Zeroizing<String>,
    /// A checked certificate's end, when the client logged in with one.
    certificate: Option<i64>,
    /// The client offered a certificate (accepted or not): it may have no
    /// interactive method to be told a refusal by (`BatchMode`).
    by_certificate: bool,
    /// The client's password, answered once the session is open (or refused).
    pending: Option<oneshot::Sender<Auth>>,
    /// Shared with the handler: why the session was refused.
    refusal: Arc<std::sync::Mutex<Option<String>>>,
    /// Shared with the handler: the target's answers to channel requests.
    answers: Arc<Answers>,
    /// The session's rules, when its grant names some.
    gate: Option<Gate>,
    /// What masks the session's output, when a profile applies.
    masker: Option<Arc<Masker>>,
    target: Option<Arc<russh::client::Handle<TargetSide>>>,
}

/// Where SSH rule sets are configured (`[ssh_rules.NAME]`).
const RULES: RuleScope = RuleScope { kind: "SSH rules", table: "ssh_rules" };

impl<S: EventSink, A: Authenticator> SshEngine<S, A> {
    fn new(ctx: Arc<Context<S, A>>, tcp: TcpStream, client_addr: SocketAddr) -> Self {
        SshEngine {
            ctx,
            client_addr,
            tcp: Some(tcp),
            from_client: None,
            server: None,
            user: String::new(),
            password: Zeroizing::default(),
            certificate: None,
            by_certificate: false,
            pending: None,
            refusal: Arc::default(),
            answers: Arc::default(),
            gate: None,
            masker: None,
            target: None,
        }
    }

    fn start_of(&self, identity: Option<&Identity>, message: Option<String>) -> SessionStart {
        SessionStart {
            resource: Some(self.ctx.resource.name.clone()),
            subject: identity.map(|i| i.subject.clone()),
            groups: identity.map(|i| i.groups.clone()).unwrap_or_default(),
            grant_id: identity.and_then(|i| i.grant_id.clone()),
            client_addr: Some(self.client_addr.to_string()),
            target_user: Some(self.ctx.resource.target.user.clone()),
            masking_profile: identity.and_then(|i| i.masking_profile.clone()),
            message,
            ..SessionStart::new(Protocol::Ssh)
        }
    }

    async fn reach_target(&mut self) -> Result<russh::client::Handle<TargetSide>, Refused<SshError>> {
        let target = &self.ctx.resource.target;
        let resource = &self.ctx.resource.name;
        let refused = |reason: EndReason, message: String| Refused { error: SshError { message }, reason };
        let tcp = match tokio::time::timeout(target.connect_timeout, TcpStream::connect(&target.address)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                return Err(refused(
                    EndReason::TargetError,
                    format!("Proctor could not reach the target of resource {resource}: {e}"),
                ));
            }
            Err(_) => {
                return Err(refused(
                    EndReason::TargetError,
                    format!("the target of resource {resource} did not answer within {:?}", target.connect_timeout),
                ));
            }
        };
        let _ = tcp.set_nodelay(true);
        let presented = Arc::new(std::sync::Mutex::new(None));
        let handler = TargetSide { pinned: target.host_keys.clone(), presented: presented.clone() };
        // A target that vanishes without a word (powered off, cut off) is
        // found out by keepalives: three unanswered end the session.
        let config = Arc::new(russh::client::Config {
            inactivity_timeout: None,
            keepalive_interval: Some(KEEPALIVE),
            keepalive_max: 3,
            preferred: upstream_algorithms(),
            ..Default::default()
        });
        let mut handle = match russh::client::connect_stream(config, tcp, handler).await {
            Ok(handle) => handle,
            Err(error) => {
                let presented = presented.lock().unwrap_or_else(|p| p.into_inner()).take();
                let message = match presented {
                    Some(key) => format!(
                        "the target of resource {resource} presented host key {}, not the pinned {}: the session is refused",
                        key.fingerprint(HashAlg::Sha256),
                        target
                            .host_keys
                            .iter()
                            .map(|k| k.fingerprint(HashAlg::Sha256).to_string())
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ),
                    None => format!("the SSH handshake with the target of resource {resource} failed: {error}"),
                };
                return Err(refused(EndReason::TargetError, message));
            }
        };
        let hash = handle.best_supported_rsa_hash().await.ok().flatten().flatten();
        let key = PrivateKeyWithHashAlg::new(target.key.clone(), hash);
        match handle.authenticate_publickey(target.user.clone(), key).await {
            Ok(result) if result.success() => Ok(handle),
            Ok(_) => Err(refused(
                EndReason::TargetError,
                format!(
                    "the target of resource {resource} refused Proctor's key for user {}: the operator must authorize it there",
                    target.user
                ),
            )),
            Err(error) => Err(refused(
                EndReason::TargetError,
                format!("the target of resource {resource} failed during authentication: {error}"),
            )),
        }
    }
}

/// How often a silent peer is asked whether it is still there.
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(15);
/// How long what a departed client's channels still carry is waited for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the target may take to open a channel.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the client may take to close once told goodbye.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a refused client may take to read why and leave (a refusal
/// is answered after russh's constant rejection delay).
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

impl<S: EventSink, A: Authenticator> Engine<S> for SshEngine<S, A> {
    type Error = SshError;
    type Rules = Gate;

    const RULES: RuleScope = RULES;

    fn resource(&self) -> &str {
        &self.ctx.resource.name
    }

    fn unadmitted(&self, identity: Option<&Identity>) -> SessionStart {
        let gave = (!self.user.is_empty() && identity.is_none()).then(|| {
            let user: String = self.user.chars().take(64).collect();
            format!("refused; the client gave user name {user:?}")
        });
        self.start_of(identity, gave)
    }

    async fn start(&mut self) -> Start<SshError> {
        let tcp = self.tcp.take().expect("start-up runs once");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let handler = ClientSide {
            tx,
            user_ca: self.ctx.resource.user_ca.clone(),
            answers: self.answers.clone(),
            refusal: self.refusal.clone(),
        };
        let running = match russh::server::run_stream(self.ctx.resource.server.clone(), tcp, handler).await {
            Ok(running) => running,
            Err(error) => {
                return Start::Refused(Refused {
                    error: SshError { message: format!("the SSH handshake failed: {error}") },
                    reason: EndReason::ClientError,
                });
            }
        };
        self.server = Some(running.handle());
        // The session's own task drives the connection; its end shows as
        // the handler's channel closing.
        tokio::spawn(async move {
            let _ = running.await;
        });
        match rx.recv().await {
            Some(FromClient::Credential { user, proof, reply }) => {
                self.user = user;
                self.pending = Some(reply);
                self.from_client = Some(rx);
                self.by_certificate = !matches!(proof, Proof::Password(_));
                match proof {
                    Proof::Password(password) => self.password = password,
                    Proof::Certificate { valid_before } => self.certificate = Some(valid_before),
                    Proof::Refused(why) => {
                        return Start::Refused(Refused {
                            error: SshError { message: why },
                            reason: EndReason::AuthFailed,
                        });
                    }
                }
                Start::Credential
            }
            Some(FromClient::Refused(what)) => Start::Refused(Refused {
                error: SshError { message: format!("{what} was asked before authentication") },
                reason: EndReason::ClientError,
            }),
            Some(FromClient::Open { reply, .. } | FromClient::Forward { reply, .. }) => {
                // Not possible before authentication; refused all the same.
                reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
                Start::Refused(Refused {
                    error: SshError { message: "a channel was opened before authentication".to_string() },
                    reason: EndReason::ClientError,
                })
            }
            None => Start::Refused(Refused {
                error: SshError { message: "the client left before authenticating".to_string() },
                reason: EndReason::ClientClosed,
            }),
        }
    }

    fn credential(&self) -> AuthRequest<'_> {
        AuthRequest {
            resource: &self.ctx.resource.name,
            user: &self.user,
            credential: match self.certificate {
                Some(valid_before) => Credential::Certificate { valid_before },
                None => Credential::Password(self.password.as_bytes()),
            },
            client_addr: self.client_addr,
        }
    }

    fn forget_credential(&mut self) {
        self.password = Zeroizing::default();
        self.certificate = None;
    }

    /// The SSH rule set `name`, for this session's grant.
    fn rules(&self, name: &str, grant_id: Option<String>, _session_id: SessionId) -> Option<Gate> {
        let rules = self.ctx.resource.policy.rules(name)?;
        Some(Gate { rules, grant_id })
    }

    fn begin(
        &mut self,
        identity: &Identity,
        rules: Option<Gate>,
        masker: Option<Arc<Masker>>,
        recorder: &mut SessionRecorder<S>,
    ) {
        self.gate = rules;
        self.masker = masker;
        recorder.push(Direction::Gateway, self.start_of(Some(identity), None).into());
    }

    async fn connect(&mut self, _recorder: &mut SessionRecorder<S>) -> Result<(), Refused<SshError>> {
        let handle = self.reach_target().await?;
        self.target = Some(Arc::new(handle));
        Ok(())
    }

    async fn open(&mut self) -> Result<(), ()> {
        let reply = self.pending.take().ok_or(())?;
        reply.send(Auth::Accept).map_err(drop)
    }

    async fn relay<F: std::future::Future<Output = Ending> + Send>(
        &mut self,
        recorder: &mut SessionRecorder<S>,
        mut ended: std::pin::Pin<&mut F>,
    ) -> Ending {
        let (Some(mut from_client), Some(server), Some(target)) =
            (self.from_client.take(), self.server.clone(), self.target.clone())
        else {
            return Ending::new(EndReason::ClientClosed, None);
        };
        let flow = Arc::new(Flow::new(Limits::default()));
        let key = self.ctx.resource.keystroke_key.clone();
        let answers = self.answers.clone();
        let rc = RelayCtx {
            key: &key,
            masker: self.masker.as_deref(),
            gate: self.gate.as_ref(),
            policy: &self.ctx.resource.policy,
            resource: &self.ctx.resource.name,
        };
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let mut pairs: HashMap<ChannelId, Pair> = HashMap::new();
        let mut tasks = Tasks::default();
        // Channels being opened towards the target, and refusals recorded.
        let (mut opening, mut refusals) = (0usize, 0usize);
        let mut target_alive = tokio::time::interval(Duration::from_millis(250));
        // Output masking holds back an unfinished line at most this long.
        let mut mask_tick = tokio::time::interval(crate::mask::DELAY / 2);
        mask_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ending = async {
            loop {
                tokio::select! {
                    ending = ended.as_mut() => return ending,
                    opened = from_client.recv() => match opened {
                        Some(FromClient::Open { reply, .. }) if pairs.len() + opening >= MAX_CHANNELS => {
                            reply.reject(ChannelOpenFailure::ResourceShortage).await;
                            let what = format!("a channel beyond the {MAX_CHANNELS} a session may have open");
                            if let Err(ending) = record_refusal(recorder, &mut refusals, what).await {
                                return ending;
                            }
                        }
                        Some(FromClient::Refused(what)) => {
                            if let Err(ending) = record_refusal(recorder, &mut refusals, what).await {
                                return ending;
                            }
                        }
                        Some(FromClient::Forward { reply, host, port, .. }) if pairs.len() + opening >= MAX_CHANNELS => {
                            reply.reject(ChannelOpenFailure::ResourceShortage).await;
                            let what = format!("forwarding to {host}:{port} beyond the {MAX_CHANNELS} channels a session may have open");
                            if let Err(ending) = record_refusal(recorder, &mut refusals, what).await {
                                return ending;
                            }
                        }
                        Some(FromClient::Forward { channel, host, port, origin, reply }) => {
                            let allowed = rc.gate.and_then(|g| g.rules.forwards_to(&host, port).map(|p| format!("{}/forward:{p}", g.rules.name)));
                            let message = match &allowed {
                                Some(_) => None,
                                None => Some(match rc.gate {
                                    Some(g) => format!("{host}:{port} is not among the destinations rule set {} forwards to", g.rules.name),
                                    None => "port forwarding is refused: no rule set of this session lists destinations".to_string(),
                                }),
                            };
                            let asked = PortForward {
                                channel_id: Some(u32::from(channel.id())),
                                operation: "direct-tcpip".to_string(),
                                host: Some(host.clone()),
                                port: Some(port),
                                outcome: Some(if allowed.is_some() { PolicyOutcome::Allow } else { PolicyOutcome::Block }),
                                rule: allowed.clone(),
                                message,
                                ..Default::default()
                            };
                            let asked_seq = recorder.push(Direction::ClientToTarget, asked.into());
                            if let Err(ending) = flush(recorder).await {
                                return ending;
                            }
                            if allowed.is_none() {
                                reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
                                continue;
                            }
                            opening += 1;
                            tasks.0.retain(|task| !task.is_finished());
                            let (target, events) = (target.clone(), events_tx.clone());
                            let forwarded = Forwarded { host: host.clone(), port, asked_seq, started: std::time::Instant::now(), to_target: 0, to_client: 0 };
                            let task = tokio::spawn(async move {
                                let opened = tokio::time::timeout(
                                    OPEN_TIMEOUT,
                                    target.channel_open_direct_tcpip(host, port, origin.0, origin.1),
                                )
                                .await;
                                match opened {
                                    Ok(Ok(upstream)) => {
                                        reply.accept().await;
                                        let _ = events.send(Event::Opened(Some((channel, upstream, Some(forwarded)))));
                                    }
                                    _ => {
                                        reply.reject(ChannelOpenFailure::ConnectFailed).await;
                                        let _ = events.send(Event::Opened(None));
                                    }
                                }
                            });
                            tasks.0.push(task.abort_handle());
                        }
                        Some(FromClient::Open { channel, reply }) => {
                            opening += 1;
                            tasks.0.retain(|task| !task.is_finished());
                            // Opened aside: a target that does not answer holds
                            // up this channel, not the session.
                            let (target, events) = (target.clone(), events_tx.clone());
                            let task = tokio::spawn(async move {
                                match tokio::time::timeout(OPEN_TIMEOUT, target.channel_open_session()).await {
                                    Ok(Ok(upstream)) => {
                                        reply.accept().await;
                                        let _ = events.send(Event::Opened(Some((channel, upstream, None))));
                                    }
                                    Ok(Err(error)) => {
                                        tracing::warn!(%error, "the target refused a session channel");
                                        reply.reject(ChannelOpenFailure::ConnectFailed).await;
                                        let _ = events.send(Event::Opened(None));
                                    }
                                    Err(_) => {
                                        reply.reject(ChannelOpenFailure::ConnectFailed).await;
                                        let _ = events.send(Event::Opened(None));
                                    }
                                }
                            });
                            tasks.0.push(task.abort_handle());
                        }
                        Some(FromClient::Credential { reply, .. }) => {
                            let _ = reply.send(Auth::reject());
                        }
                        None => {
                            // What the client's channels said before it left is
                            // still recorded (their readers end as they do).
                            let drained = async {
                                while !pairs.is_empty() {
                                    let Some(event) = events.recv().await else { break };
                                    if let Event::Opened(..) = event {
                                        continue;
                                    }
                                    if let Err(ending) = relay_event(event, &mut pairs, &flow, recorder, &mut refusals, &rc).await {
                                        return Some(ending);
                                    }
                                }
                                None
                            };
                            // The lease's end (or shutdown) still ends it at once.
                            tokio::select! {
                                ending = ended.as_mut() => return ending,
                                drained = tokio::time::timeout(DRAIN_TIMEOUT, drained) => {
                                    if let Ok(Some(ending)) = drained {
                                        return ending;
                                    }
                                }
                            }
                            return Ending::new(EndReason::ClientClosed, None);
                        }
                    },
                    Some(event) = events.recv() => {
                        // A target channel that ended with the target's whole
                        // connection: the target's doing, whatever the client
                        // does next.
                        let target_gone = matches!(event, Event::Gone(Side::Target, _)) && target.is_closed();
                        if let Event::Opened(opened) = event {
                            opening = opening.saturating_sub(1);
                            if let Some((client, upstream, forwarded)) = opened {
                                let id = client.id();
                                let mut pair = pair(id, client, upstream, server.clone(), &flow, &events_tx, &mut tasks, answers.clone());
                                pair.forward = forwarded;
                                pairs.insert(id, pair);
                            }
                        } else if let Err(ending) = relay_event(event, &mut pairs, &flow, recorder, &mut refusals, &rc).await {
                            return ending;
                        }
                        if target_gone {
                            // What the target said last (exit status, EOF,
                            // close) reaches the client before the session ends.
                            for pair in pairs.values() {
                                pair.to_client.flushed(GOODBYE_TIMEOUT).await;
                            }
                            return Ending::new(EndReason::TargetClosed, "the target closed the connection".to_string());
                        }
                    }
                    _ = mask_tick.tick(), if rc.masker.is_some() => {
                        if let Some(masker) = rc.masker
                            && let Err(ending) = flush_due(&mut pairs, masker, recorder, &flow, rc.gate).await
                        {
                            return ending;
                        }
                    }
                    _ = target_alive.tick() => {
                        if target.is_closed() {
                            return Ending::new(EndReason::TargetClosed, "the target closed the connection".to_string());
                        }
                        // Command lines that waited on an echo given up by now.
                        if let Err(ending) = overdue_commands(&mut pairs, recorder, rc.gate).await {
                            return ending;
                        }
                    }
                }
            }
        }
        .await;
        // What output masking still holds goes before the end: recorded,
        // and sent if the client is still there.
        if let Some(masker) = rc.masker {
            for (id, pair) in pairs.iter_mut() {
                // (A command line it completes that the rules end the
                // session on says why the session ended.)
                if let Err(policy) =
                    flush_masked(pair, masker, Some(u32::from(*id)), recorder, &flow, rc.gate, true).await
                    && policy.reason == EndReason::Policy
                {
                    ending = policy;
                }
            }
        }
        // Forwarded connections still open end with the session.
        for (id, pair) in pairs.iter_mut() {
            if let Some(forward) = pair.forward.take() {
                recorder.push(Direction::Gateway, forward.closed(*id, "ended with the session").into());
            }
        }
        let _ = flush(recorder).await;
        ending
    }

    fn refusal(&self, refusal: &Refusal) -> SshError {
        let message = match &refusal.hint {
            Some(hint) => format!("{} ({hint})", refusal.message),
            None => refusal.message.clone(),
        };
        SshError { message }
    }

    fn farewell(&self, ending: &Ending) -> Option<SshError> {
        match ending.reason {
            EndReason::ClientClosed => None,
            _ => Some(SshError {
                message: ending
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("the session ended: {}", ending.reason.as_str())),
            }),
        }
    }

    fn report(&self, error: &SshError) -> ErrorReport {
        ErrorReport { message: error.message.clone(), ..Default::default() }
    }

    async fn close(&mut self, error: Option<&SshError>) {
        // A handler still waiting on the target's answer holds the client's
        // loop, which the goodbye below must pass through.
        self.answers.close_all();
        // A credential still unanswered is refused, and the client is
        // offered keyboard-interactive once more only to be shown why (a
        // disconnect's text is not printed before authentication ends).
        if let Some(reply) = self.pending.take()
            && self.by_certificate
            && error.is_some()
        {
            // A client logging in with a certificate (a CI agent in
            // `BatchMode`) has no prompt to be shown the reason at: it is
            // let through authentication only to be disconnected with it
            // at once (the text OpenSSH prints); nothing is relayed, the
            // relay never having started.
            let _ = reply.send(Auth::Accept);
            self.from_client = None;
        }
        if let Some(reply) = self.pending.take() {
            let message = error.map(|e| format!("Proctor: {}", e.message));
            let proceed = message.as_ref().map(|_| keyboard_interactive());
            *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = message;
            let _ = reply.send(Auth::Reject { proceed_with_methods: proceed, partial_success: false });
            if let Some(mut from_client) = self.from_client.take() {
                // Until the client has read it and left.
                let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
                    while let Some(event) = from_client.recv().await {
                        if let FromClient::Credential { reply, .. } = event {
                            let _ = reply.send(Auth::reject());
                        }
                    }
                })
                .await;
            }
        }
        if let Some(server) = self.server.take() {
            let description = error.map(|e| format!("Proctor: {}", e.message)).unwrap_or_default();
            let _ = tokio::time::timeout(
                GOODBYE_TIMEOUT,
                server.disconnect(Disconnect::ByApplication, description, String::new()),
            )
            .await;
        }
        if let Some(target) = self.target.take() {
            let _ = tokio::time::timeout(GOODBYE_TIMEOUT, target.disconnect(Disconnect::ByApplication, "", "")).await;
        }
    }
}

/// Starts the reader and writer tasks of a client channel and the target
/// channel it is relayed to.
#[allow(clippy::too_many_arguments)]
fn pair(
    id: ChannelId,
    client: russh::Channel<ServerMsg>,
    target: russh::Channel<russh::client::Msg>,
    server: russh::server::Handle,
    flow: &Arc<Flow>,
    events: &mpsc::UnboundedSender<Event>,
    tasks: &mut Tasks,
    answers: Arc<Answers>,
) -> Pair {
    let (client_r, client_w) = client.split();
    let (target_r, target_w) = target.split();
    let mut writer = |peer: Peer| {
        let (tx, out) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let from = peer.from();
        let task = tokio::spawn(write(peer, out, flow.clone(), pending.clone())).abort_handle();
        tasks.0.push(task.clone());
        Writer { tx: Some(tx), pending, task, from }
    };
    let to_client = writer(Peer::Client { id, channel: client_w, server });
    let to_target = writer(Peer::Target(target_w));
    let mut reader = |side: Side, channel: russh::ChannelReadHalf| {
        let task = tokio::spawn(read(side, id, channel, flow.clone(), events.clone())).abort_handle();
        tasks.0.push(task.clone());
        task
    };
    let readers = [reader(Side::Client, client_r), reader(Side::Target, target_r)];
    Pair {
        to_client,
        to_target,
        readers,
        gone: [false, false],
        eof_held: false,
        terminal: None,
        asked: std::collections::VecDeque::new(),
        answers,
        sftp: None,
        refusals: Vec::new(),
        sniff: None,
        watch: None,
        forward: None,
        masking: Default::default(),
        started: false,
    }
}

/// Takes what one side sends on a channel, admitted by the flow, to the
/// relay.
async fn read(
    side: Side,
    id: ChannelId,
    mut channel: russh::ChannelReadHalf,
    flow: Arc<Flow>,
    events: mpsc::UnboundedSender<Event>,
) {
    while let Some(message) = channel.wait().await {
        let cost = cost(&message);
        if cost > 0
            && let Err(stuck) = flow.admit(side, cost).await
        {
            let _ = events.send(Event::Stuck(stuck));
            return;
        }
        let event = match side {
            Side::Client => Event::Client(id, message),
            Side::Target => Event::Target(id, message),
        };
        if events.send(event).is_err() {
            return;
        }
    }
    let _ = events.send(Event::Gone(side, id));
}

/// Where a writer task sends: a channel of the client's connection, or of
/// the target's.
enum Peer {
    Client { id: ChannelId, channel: ChannelWriteHalf<ServerMsg>, server: russh::server::Handle },
    Target(ChannelWriteHalf<russh::client::Msg>),
}

impl Peer {
    /// Whose bytes this peer is sent.
    fn from(&self) -> Side {
        match self {
            Peer::Client { .. } => Side::Target,
            Peer::Target(_) => Side::Client,
        }
    }

    /// Sends one message; false once the channel is gone (or closed here).
    async fn send(&self, message: Out) -> bool {
        match (self, message) {
            (Peer::Client { channel, .. }, Out::Data(data)) => channel.data_bytes(data).await.is_ok(),
            (Peer::Target(channel), Out::Data(data)) => channel.data_bytes(data).await.is_ok(),
            (Peer::Client { channel, .. }, Out::Extended(code, data)) => {
                channel.extended_data_bytes(code, data).await.is_ok()
            }
            (Peer::Target(channel), Out::Extended(code, data)) => channel.extended_data_bytes(code, data).await.is_ok(),
            (Peer::Client { channel, .. }, Out::ExitStatus(status)) => channel.exit_status(status).await.is_ok(),
            (Peer::Client { id, server, .. }, Out::ExitSignal { signal, core_dumped, message }) => {
                server.exit_signal_request(*id, signal, core_dumped, message, String::new()).await.is_ok()
            }
            (Peer::Target(channel), Out::Exec(command)) => channel.exec(true, command).await.is_ok(),
            (Peer::Target(channel), Out::Pty { term, cols, rows, pixel_width, pixel_height, modes }) => {
                channel.request_pty(true, &term, cols, rows, pixel_width, pixel_height, &modes).await.is_ok()
            }
            (Peer::Target(channel), Out::Shell) => channel.request_shell(true).await.is_ok(),
            (Peer::Target(channel), Out::Subsystem(name)) => channel.request_subsystem(true, name).await.is_ok(),
            (Peer::Target(channel), Out::WindowChange { cols, rows, pixel_width, pixel_height }) => {
                channel.window_change(cols, rows, pixel_width, pixel_height).await.is_ok()
            }
            (Peer::Target(channel), Out::Signal(signal)) => channel.signal(signal).await.is_ok(),
            (Peer::Client { channel, .. }, Out::Eof) => channel.eof().await.is_ok(),
            (Peer::Target(channel), Out::Eof) => channel.eof().await.is_ok(),
            (Peer::Client { channel, .. }, Out::Close) => {
                let _ = channel.close().await;
                false
            }
            (Peer::Target(channel), Out::Close) => {
                let _ = channel.close().await;
                false
            }
            // What only the other side is sent.
            (_, _) => true,
        }
    }
}

/// Sends a peer what the relay recorded, in order, giving the flow back
/// what each message cost once it is sent.
async fn write(peer: Peer, mut out: mpsc::UnboundedReceiver<Out>, flow: Arc<Flow>, pending: Arc<AtomicUsize>) {
    let from = peer.from();
    while let Some(message) = out.recv().await {
        let cost = out_cost(&message);
        let sent = peer.send(message).await;
        flow.delivered(from, take(&pending, cost));
        if !sent {
            break;
        }
    }
    // What was never sent is no longer waited for.
    out.close();
    while let Ok(message) = out.try_recv() {
        flow.delivered(from, take(&pending, out_cost(&message)));
    }
}

/// Records one event of a channel, then passes it on.
async fn relay_event<S: EventSink>(
    event: Event,
    pairs: &mut HashMap<ChannelId, Pair>,
    flow: &Flow,
    recorder: &mut SessionRecorder<S>,
    refusals: &mut usize,
    rc: &RelayCtx<'_>,
) -> Result<(), Ending> {
    let key = rc.key;
    let (id, side, message) = match event {
        Event::Client(id, message) => (id, Side::Client, message),
        Event::Target(id, message) => (id, Side::Target, message),
        Event::Gone(side, id) => {
            if let Some(pair) = pairs.get_mut(&id) {
                pair.gone[side as usize] = true;
                if side == Side::Target {
                    // Nothing the target was asked will be answered now,
                    // and no answer of its will end for a refusal to follow.
                    pair.answers.forget(id);
                    for status in pair.refusals.drain(..) {
                        flow.delivered(Side::Target, status.len());
                    }
                    // What masking held of its output goes before the close.
                    if let Some(masker) = rc.masker {
                        flush_masked(pair, masker, Some(u32::from(id)), recorder, flow, rc.gate, true).await?;
                    }
                }
                // Nothing more reaches the side that left; the other is
                // told once what it was sent before has gone out.
                pair.writer_mut(side).stop(flow);
                pair.writer(side.other()).send(Out::Close, flow);
                if pair.gone == [true, true] {
                    pair.readers.iter().for_each(tokio::task::AbortHandle::abort);
                    pair.answers.forget(id);
                    if let Some(forward) = pair.forward.take() {
                        recorder.push(Direction::Gateway, forward.closed(id, "closed").into());
                        flush(recorder).await?;
                    }
                    pairs.remove(&id);
                }
            }
            return Ok(());
        }
        Event::Stuck(stuck) => {
            return Err(Ending::new(
                EndReason::ClientError,
                format!("{stuck}; Proctor ended the session rather than hold more"),
            ));
        }
        Event::Opened(..) => return Ok(()),
    };
    let admitted = cost(&message);
    let Some(pair) = pairs.get_mut(&id) else {
        flow.delivered(side, admitted);
        return Ok(());
    };
    if pair.gone[side as usize] {
        // A side Proctor closed: what it still sends is dropped.
        flow.delivered(side, admitted);
        return Ok(());
    }
    let channel_id = Some(u32::from(id));
    if let Some(forward) = pair.forward.as_mut() {
        match (&message, side) {
            (ChannelMsg::Data { data }, Side::Client) => forward.to_target += data.len() as u64,
            (ChannelMsg::Data { data }, Side::Target) => forward.to_client += data.len() as u64,
            _ => {}
        }
    }
    // A channel runs one program (RFC 4254 6.5): a second shell, command or
    // subsystem on it is refused.
    if side == Side::Client
        && match &message {
            ChannelMsg::Exec { .. } | ChannelMsg::RequestShell { .. } => true,
            // (Other subsystems are refused as they come, by the handler.)
            ChannelMsg::RequestSubsystem { name, .. } => name == SFTP,
            _ => false,
        }
    {
        if pair.started {
            flow.delivered(side, admitted);
            pair.answers.answered(id, false);
            return record_refusal(recorder, refusals, "a second program on one channel".to_string()).await;
        }
        pair.started = true;
    }
    // A command's first input that opens an SFTP session is read as SFTP
    // (masked, and under the rules for files); until told, what came is
    // held back.
    if side == Side::Client && pair.sniff.is_some() {
        match &message {
            ChannelMsg::Data { data } => {
                let mut seen = pair.sniff.take().expect("looked at");
                let held = seen.len();
                seen.extend_from_slice(data);
                let told = crate::sftp::opens_sftp(&seen);
                if told == Some(true) {
                    pair.sftp = Some(sftp_of(rc));
                    return sftp_requests(pair, id, &seen, data, admitted, rc, recorder, flow).await;
                }
                if told.is_none() || held > 0 {
                    // Recorded as it comes; held back until told (uncounted
                    // in the flow while held), then what was held goes
                    // first, with this.
                    recorder.push(
                        Direction::ClientToTarget,
                        TerminalInput { channel_id, data: data.to_vec(), ..Default::default() }.into(),
                    );
                    if let Err(ending) = flush(recorder).await {
                        flow.delivered(side, admitted);
                        return Err(ending);
                    }
                    if told.is_none() {
                        flow.reckon(side, admitted, 0);
                        pair.sniff = Some(seen);
                    } else {
                        flow.reckon(side, admitted, seen.len());
                        pair.to_target.send(Out::Data(bytes::Bytes::from(seen)), flow);
                    }
                    return Ok(());
                }
            }
            ChannelMsg::Eof | ChannelMsg::Close => {
                // The input ended before it told: what was held goes on.
                let seen = pair.sniff.take().expect("looked at");
                if !seen.is_empty() {
                    flow.reckon(side, 0, seen.len());
                    pair.to_target.send(Out::Data(bytes::Bytes::from(seen)), flow);
                }
            }
            _ => {}
        }
    }
    // A command answering as an SFTP server on a channel not read as SFTP:
    // what its client asks could not be decided, nor its reads masked.
    if side == Side::Target
        && pair.sftp.is_none()
        && let Some(seen) = pair.watch.as_mut()
        && let ChannelMsg::Data { data } = &message
    {
        let want = 5usize.saturating_sub(seen.len());
        seen.extend_from_slice(&data[..want.min(data.len())]);
        match crate::sftp::answers_sftp(seen) {
            Some(true) => {
                flow.delivered(side, admitted);
                let message = "a command answered as an SFTP server on a channel not read as SFTP";
                return end_channel(pair, side, message.to_string(), recorder, flow).await;
            }
            Some(false) => pair.watch = None,
            None => {}
        }
    }
    // Command lines a keystroke or an echo completed, recorded after it.
    let mut commands = Vec::new();
    // File operations an SFTP request said, recorded after its bytes.
    let mut files = Vec::new();
    // What masking replaced in output, recorded after it.
    let mut masked_counts = Counts::new();
    // Output held back for masking goes before what ends a channel.
    if side == Side::Target
        && matches!(
            message,
            ChannelMsg::Eof | ChannelMsg::Close | ChannelMsg::ExitStatus { .. } | ChannelMsg::ExitSignal { .. }
        )
        && let Some(masker) = rc.masker
    {
        flush_masked(pair, masker, channel_id, recorder, flow, rc.gate, true).await?;
    }
    let (forward, recorded): (Option<Out>, Option<EventBody>) = match (side, message) {
        (Side::Client, ChannelMsg::Exec { command, .. }) => {
            let text = String::from_utf8_lossy(&command).into_owned();
            // Recorded masked, as statements are: a secret on a command line
            // (a token in a header, a password option) is not stored; the
            // target gets the command as sent.
            let mut counts = Counts::new();
            let shown =
                rc.masker.map_or(std::borrow::Cow::Borrowed(text.as_str()), |m| m.mask_text(&text, &mut counts));
            recorder.push(Direction::ClientToTarget, Exec { channel_id, command: shown.to_string() }.into());
            if !counts.is_empty() {
                recorder.push(Direction::Gateway, masking_applied(rc.masker, counts).into());
            }
            if let Some(gate) = rc.gate
                && let Some((decision, refusal)) = decide_exec(gate, rc, &command, &shown, recorder.session_id()).await
            {
                recorder.push(Direction::Gateway, decision.into());
                if let Err(ending) = flush(recorder).await {
                    flow.delivered(side, admitted);
                    return Err(ending);
                }
                flow.delivered(side, admitted);
                if let Some(message) = refusal {
                    // Answered here: the command never reaches the target.
                    pair.answers.answered(id, true);
                    let message = bytes::Bytes::from(format!("Proctor: {message}\r\n"));
                    for out in [Out::Extended(1, message), Out::ExitStatus(REFUSED_EXIT), Out::Eof, Out::Close] {
                        pair.to_client.send(out, flow);
                    }
                    pair.to_target.send(Out::Close, flow);
                    return Ok(());
                }
                // Approved in review: it runs, once.
                pair.asked.push_back(Asked::Other);
                let scp = crate::rules::legacy_scp(&String::from_utf8_lossy(&command));
                pair.sniff = (pair.sniffs(rc) && !scp).then(Vec::new);
                pair.watch = (watches(rc) && !scp).then(Vec::new);
                pair.to_target.send(Out::Exec(command), flow);
                return Ok(());
            }
            // (Legacy scp's first input is one byte, and it waits: its own
            // paths are decided instead.)
            let scp = crate::rules::legacy_scp(&text);
            pair.sniff = (pair.sniffs(rc) && !scp).then(Vec::new);
            pair.watch = (watches(rc) && !scp).then(Vec::new);
            // Recorded (above) before it passes.
            if let Err(ending) = flush(recorder).await {
                flow.delivered(side, admitted);
                return Err(ending);
            }
            (Some(Out::Exec(command)), None)
        }
        (Side::Client, ChannelMsg::RequestShell { .. }) if rc.gate.is_some_and(|g| !g.rules.shells) => {
            let gate = rc.gate.expect("checked");
            let message = format!("rule set {} opens no interactive shells: run commands with exec", gate.rules.name);
            let refused = refuse_by_rule(recorder, gate, Shell { channel_id }.into(), "shells", message).await;
            flow.delivered(side, admitted);
            refused?;
            pair.answers.answered(id, false);
            return Ok(());
        }
        (
            Side::Client,
            ChannelMsg::RequestPty { term, col_width, row_height, pix_width, pix_height, terminal_modes, .. },
        ) => {
            let recorded = PtyRequest { channel_id, term: term.clone(), width: col_width, height: row_height };
            let out = Out::Pty {
                term,
                cols: col_width,
                rows: row_height,
                pixel_width: pix_width,
                pixel_height: pix_height,
                modes: terminal_modes,
            };
            (Some(out), Some(recorded.into()))
        }
        (Side::Client, ChannelMsg::RequestShell { .. }) => {
            pair.sniff = pair.sniffs(rc).then(Vec::new);
            pair.watch = watches(rc).then(Vec::new);
            (Some(Out::Shell), Some(Shell { channel_id }.into()))
        }
        (Side::Client, ChannelMsg::RequestSubsystem { name, .. })
            if name == SFTP && rc.gate.is_some_and(|g| !g.rules.sftp) =>
        {
            let gate = rc.gate.expect("checked");
            let message = format!(
                "rule set {} opens no SFTP: its file operations are recorded, not matched against its patterns (sftp = true allows it)",
                gate.rules.name
            );
            let asked = Exec { channel_id, command: format!("subsystem {SFTP}") }.into();
            let refused = refuse_by_rule(recorder, gate, asked, "sftp", message).await;
            flow.delivered(side, admitted);
            refused?;
            pair.answers.answered(id, false);
            return Ok(());
        }
        (Side::Client, ChannelMsg::RequestSubsystem { name, .. }) if name == SFTP => {
            // Read as SFTP from the request on: a client need not wait for
            // the answer before it sends its first requests.
            pair.sftp.get_or_insert_with(|| sftp_of(rc));
            let recorded = Exec { channel_id, command: format!("subsystem {SFTP}") };
            (Some(Out::Subsystem(name)), Some(recorded.into()))
        }
        (Side::Client, ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height }) => {
            let out = Out::WindowChange {
                cols: col_width,
                rows: row_height,
                pixel_width: pix_width,
                pixel_height: pix_height,
            };
            (Some(out), Some(Resize { channel_id, width: col_width, height: row_height }.into()))
        }
        (Side::Client, ChannelMsg::Signal { signal }) => {
            let recorded = Signal { channel_id, signal: signal_name_of(&signal) };
            (Some(Out::Signal(signal)), Some(recorded.into()))
        }
        (Side::Client, ChannelMsg::Data { data }) if pair.sftp.as_ref().is_some_and(crate::sftp::Sftp::whole) => {
            return sftp_requests(pair, id, &data, &data, admitted, rc, recorder, flow).await;
        }
        (Side::Client, ChannelMsg::Data { data }) => {
            let recorded = match (pair.sftp.as_mut(), pair.terminal.as_mut()) {
                // SFTP, even on a channel with a terminal: its bytes, and
                // the file operations they request.
                (Some(sftp), _) => {
                    files = sftp.requested(&data);
                    TerminalInput { channel_id, data: data.to_vec(), ..Default::default() }
                }
                // Keystrokes: their length and digest, never themselves.
                (None, Some(terminal)) => {
                    commands = terminal.lines.typed(&data, std::time::Instant::now());
                    terminal.keystrokes(key, recorder.session_id(), id, &data)
                }
                (None, None) => TerminalInput { channel_id, data: data.to_vec(), ..Default::default() },
            };
            (Some(Out::Data(data.clone())), Some(recorded.into()))
        }
        (Side::Client, ChannelMsg::ExtendedData { data, ext }) => {
            let recorded = match pair.terminal.as_mut() {
                Some(terminal) => terminal.keystrokes(key, recorder.session_id(), id, &data),
                None => TerminalInput { channel_id, data: data.to_vec(), ..Default::default() },
            };
            (Some(Out::Extended(ext, data.clone())), Some(recorded.into()))
        }
        (Side::Client, ChannelMsg::Eof) => (Some(Out::Eof), None),
        (Side::Client, ChannelMsg::Close) => (Some(Out::Close), None),
        // Refused (and answered) by the connection's handler as they come;
        // recorded here.
        (Side::Client, refused) => {
            flow.delivered(side, admitted);
            return match refusal(&refused) {
                Some(what) => record_refusal(recorder, refusals, what).await,
                None => Ok(()),
            };
        }
        (Side::Target, ChannelMsg::Data { data }) if pair.sftp.as_ref().is_some_and(crate::sftp::Sftp::whole) => {
            let sftp = pair.sftp.as_mut().expect("checked");
            let Some(ready) = sftp.answers(&data, rc.masker, &mut masked_counts) else {
                // An answer too large to read cannot be told apart (nor
                // masked): the channel ends rather than pass it.
                flow.delivered(side, admitted);
                let message = format!("an SFTP answer larger than {} bytes cannot be read", crate::sftp::MAX_PACKET);
                return end_channel(pair, side, message, recorder, flow).await;
            };
            // What goes is what the flow counts (bytes held for a packet's
            // end are not counted while held).
            flow.reckon(Side::Target, admitted, ready.len());
            if !ready.is_empty() {
                let recorded = TerminalOutput { channel_id, stream: OutputStream::Stdout, data: ready.clone() };
                recorder.push(Direction::TargetToClient, recorded.into());
            }
            if !masked_counts.is_empty() {
                let applied = masking_applied(rc.masker, std::mem::take(&mut masked_counts));
                recorder.push(Direction::Gateway, applied.into());
            }
            flush(recorder).await?;
            if !ready.is_empty() {
                pair.to_client.send(Out::Data(bytes::Bytes::from(ready)), flow);
            }
            pair.send_refusals(flow);
            return Ok(());
        }
        (Side::Target, ChannelMsg::Data { data }) => {
            if let Some(sftp) = pair.sftp.as_mut() {
                sftp.answered(&data);
            }
            let Some(data) = masked(pair, rc, 0, data, &mut masked_counts, flow) else {
                return Ok(());
            };
            if let Some(terminal) = pair.terminal.as_mut() {
                commands = terminal.lines.shown(&data, std::time::Instant::now());
            }
            (
                Some(Out::Data(data.clone())),
                Some(TerminalOutput { channel_id, stream: OutputStream::Stdout, data: data.to_vec() }.into()),
            )
        }
        (Side::Target, ChannelMsg::ExtendedData { data, ext }) => {
            let stream = if ext == 1 { OutputStream::Stderr } else { OutputStream::Stdout };
            let Some(data) = masked(pair, rc, 1, data, &mut masked_counts, flow) else {
                return Ok(());
            };
            (
                Some(Out::Extended(ext, data.clone())),
                Some(TerminalOutput { channel_id, stream, data: data.to_vec() }.into()),
            )
        }
        (Side::Target, ChannelMsg::ExitStatus { exit_status }) => (
            Some(Out::ExitStatus(exit_status)),
            Some(ExitStatus { channel_id, exit_code: Some(exit_status as i32), ..Default::default() }.into()),
        ),
        (Side::Target, ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, .. }) => {
            let recorded = ExitStatus {
                channel_id,
                exit_signal: Some(signal_name_of(&signal_name)),
                message: (!error_message.is_empty()).then(|| error_message.clone()),
                ..Default::default()
            };
            (Some(Out::ExitSignal { signal: signal_name, core_dumped, message: error_message }), Some(recorded.into()))
        }
        // Answers to the client's requests, passed back by the handler.
        (Side::Target, ChannelMsg::Success) => {
            match pair.asked.pop_front() {
                Some(Asked::Pty) => {
                    pair.terminal.get_or_insert_with(Terminal::default);
                }
                // Read as SFTP (and not masked) only once the target runs it.
                Some(Asked::Sftp) => {
                    pair.sftp.get_or_insert_with(|| sftp_of(rc));
                }
                _ => {}
            }
            pair.answers.answered(id, true);
            (None, None)
        }
        (Side::Target, ChannelMsg::Failure) => {
            pair.asked.pop_front();
            pair.answers.answered(id, false);
            (None, None)
        }
        (Side::Target, ChannelMsg::Eof) => {
            pair.eof_held = true;
            flow.delivered(side, admitted);
            return Ok(());
        }
        (Side::Target, ChannelMsg::Close) => (Some(Out::Close), None),
        _ => (None, None),
    };
    if let Some(body) = recorded {
        let direction = match (side, &forward) {
            (_, None) => Direction::Gateway,
            (Side::Client, Some(_)) => Direction::ClientToTarget,
            (Side::Target, Some(_)) => Direction::TargetToClient,
        };
        recorder.push(direction, body);
        let mut ended = None;
        for command in commands {
            ended = ended.or(record_command(recorder, channel_id, command, rc.gate));
        }
        if !masked_counts.is_empty() {
            recorder.push(Direction::Gateway, masking_applied(rc.masker, masked_counts).into());
        }
        for file in files {
            recorder.push(Direction::ClientToTarget, file_transfer(channel_id, file).into());
        }
        if let Err(ending) = flush(recorder).await {
            flow.delivered(side, admitted);
            return Err(ending);
        }
        if let Some(ending) = ended {
            flow.delivered(side, admitted);
            return Err(ending);
        }
    }
    match forward {
        Some(out) => {
            match &out {
                Out::Pty { .. } => pair.asked.push_back(Asked::Pty),
                Out::Subsystem(_) => pair.asked.push_back(Asked::Sftp),
                Out::Exec(_) | Out::Shell => pair.asked.push_back(Asked::Other),
                _ => {}
            }
            let ends = matches!(out, Out::ExitStatus(_) | Out::ExitSignal { .. } | Out::Close);
            let eof_first = matches!(out, Out::Close) && pair.eof_held;
            if eof_first {
                pair.eof_held = false;
                pair.to_client.send(Out::Eof, flow);
            }
            pair.writer(side.other()).send(out, flow);
            if ends && side == Side::Target && pair.eof_held {
                pair.eof_held = false;
                pair.to_client.send(Out::Eof, flow);
            }
        }
        None => flow.delivered(side, admitted),
    }
    Ok(())
}

/// Records the command lines each terminal completes by giving up on
/// echoes that are overdue.
async fn overdue_commands<S: EventSink>(
    pairs: &mut HashMap<ChannelId, Pair>,
    recorder: &mut SessionRecorder<S>,
    gate: Option<&Gate>,
) -> Result<(), Ending> {
    let now = std::time::Instant::now();
    let (mut any, mut ended) = (false, None);
    for (id, pair) in pairs.iter_mut() {
        if let Some(terminal) = pair.terminal.as_mut() {
            for command in terminal.lines.tick(now) {
                ended = ended.or(record_command(recorder, Some(u32::from(*id)), command, gate));
                any = true;
            }
        }
    }
    if any {
        flush(recorder).await?;
    }
    ended.map_or(Ok(()), Err)
}

/// Records a command line typed at a terminal, and, where the session's
/// rules would have held or blocked it, a `flag` decision naming the rule:
/// it reached the shell as it was typed, so it is marked, not enforced —
/// unless the rules end the session on it (`end_session_on`): then the
/// session's end is returned.
fn record_command<S: EventSink>(
    recorder: &mut SessionRecorder<S>,
    channel_id: Option<u32>,
    command: String,
    gate: Option<&Gate>,
) -> Option<Ending> {
    let (gate, verdict) = match gate {
        Some(gate) => (gate, gate.rules.decide(&command)),
        None => {
            recorder.push(Direction::ClientToTarget, Command { channel_id, command }.into());
            return None;
        }
    };
    let ends = gate.rules.ends_session(&verdict);
    let ending = ends.then(|| {
        Ending::new(EndReason::Policy, format!("the session was ended by its rules at the command typed: {command}"))
    });
    recorder.push(Direction::ClientToTarget, Command { channel_id, command }.into());
    let rule = match verdict {
        Verdict::Block { rule } | Verdict::Hold { rule } => rule,
        Verdict::Allow => return None,
    };
    let message = if ends {
        "typed at a terminal: the rules end the session on it (a line typed key by key ends it before its Enter reaches the shell; a line pasted whole, once its echo shows it)"
    } else {
        "typed at a terminal: marked, not enforced (it reached the shell as it was typed)"
    };
    let decision = PolicyDecision {
        outcome: PolicyOutcome::Flag,
        grant_id: gate.grant_id.clone(),
        rule: Some(rule),
        review_id: None,
        ref_seq: None,
        message: Some(message.to_string()),
    };
    recorder.push(Direction::Gateway, decision.into());
    ending
}

/// The one subsystem passed on.
const SFTP: &str = "sftp";

/// What a client's request refused by the handler was, if it was one.
fn refusal(message: &ChannelMsg) -> Option<String> {
    Some(match message {
        ChannelMsg::RequestSubsystem { name, .. } if name != SFTP => format!("subsystem {name:?}"),
        ChannelMsg::RequestX11 { .. } => "X11 forwarding".to_string(),
        ChannelMsg::AgentForward { .. } => "agent forwarding".to_string(),
        // The name only: a variable's value may be a secret.
        ChannelMsg::SetEnv { variable_name, .. } => format!("environment variable {variable_name:?}"),
        _ => return None,
    })
}

fn refused_report(what: String) -> ErrorReport {
    ErrorReport {
        message: format!(
            "{what} refused: Proctor relays commands (exec) and terminals (pty, shell, resizes, signals) on this resource; subsystems (SFTP), environment variables and forwarding are not passed on"
        ),
        ..Default::default()
    }
}

/// Towards the target, AES-GCM first (128-bit keys first, in OpenSSH's own
/// order of AES key sizes): every OpenSSH speaks it, and both ring and the
/// target's libcrypto run it on the CPU's AES instructions, where
/// ChaCha20-Poly1305 (OpenSSH's own first choice) is computed in software;
/// the rest as russh prefers.
fn upstream_algorithms() -> russh::Preferred {
    let default = russh::Preferred::default();
    let first = [russh::cipher::AES_128_GCM, russh::cipher::AES_256_GCM];
    let mut cipher = first.to_vec();
    cipher.extend(default.cipher.iter().filter(|c| !first.contains(c)));
    russh::Preferred { cipher: cipher.into(), ..default }
}

/// The exit status of a command Proctor refused (blocked, or held for
/// review), as a shell's for a command it cannot run.
const REFUSED_EXIT: u32 = 126;

/// What a relay needs beyond its channels.
struct RelayCtx<'a> {
    key: &'a MaskingKey,
    masker: Option<&'a Masker>,
    gate: Option<&'a Gate>,
    policy: &'a SshPolicy,
    resource: &'a str,
}

/// A session's SSH rules, as its grant names them.
pub(crate) struct Gate {
    rules: Arc<crate::rules::SshRuleSet>,
    grant_id: Option<String>,
}

/// Output of a channel as it may pass: masked (`stream` 0 stdout, 1
/// stderr) when the session is and the channel's output is text; `None`
/// while masking holds it back.
fn masked(
    pair: &mut Pair,
    rc: &RelayCtx<'_>,
    stream: usize,
    data: bytes::Bytes,
    counts: &mut Counts,
    flow: &Flow,
) -> Option<bytes::Bytes> {
    let Some(masker) = rc.masker.filter(|_| pair.masks(stream)) else {
        return Some(data);
    };
    // Output no terminal shows keeps its length.
    pair.masking[stream].in_place = pair.terminal.is_none();
    let (ready, was) = pair.masking[stream].push(masker, &data, std::time::Instant::now(), counts);
    if ready.is_empty() {
        // Held: its bytes stay counted in the flow until they go.
        return None;
    }
    // What goes is what the flow counts; the held bytes it carries were
    // admitted before.
    flow.reckon(Side::Target, was, ready.len());
    Some(bytes::Bytes::from(ready))
}

/// What masking replaced, by rule, and the tokens it wrote: output masked in
/// place carries a token cut to the secret's length, found only by these.
fn masking_applied(masker: Option<&Masker>, counts: Counts) -> proctor_schemas::MaskingApplied {
    let (tokens, tokens_dropped) = counts.tokens();
    proctor_schemas::MaskingApplied {
        masking_profile: masker.map(|m| m.profile().name.clone()),
        ref_seq: None,
        tokens,
        tokens_dropped,
        masked: counts
            .into_rules()
            .into_iter()
            .map(|(rule, count)| proctor_schemas::RuleCount { rule, count })
            .collect(),
    }
}

/// Sends (recorded first) the output a channel's masking holds back.
async fn flush_masked<S: EventSink>(
    pair: &mut Pair,
    masker: &Masker,
    channel_id: Option<u32>,
    recorder: &mut SessionRecorder<S>,
    flow: &Flow,
    gate: Option<&Gate>,
    all: bool,
) -> Result<(), Ending> {
    let mut counts = Counts::new();
    let mut out = Vec::new();
    let mut ended = None;
    for (index, stream) in [OutputStream::Stdout, OutputStream::Stderr].into_iter().enumerate() {
        let (held, was) = pair.masking[index].flush(masker, &mut counts, all, std::time::Instant::now());
        if held.is_empty() {
            continue;
        }
        flow.reckon(Side::Target, was, held.len());
        let data = bytes::Bytes::from(held);
        recorder.push(Direction::TargetToClient, TerminalOutput { channel_id, stream, data: data.to_vec() }.into());
        // What the terminal showed, for the command lines typed at it.
        if stream == OutputStream::Stdout
            && let Some(terminal) = pair.terminal.as_mut()
        {
            for command in terminal.lines.shown(&data, std::time::Instant::now()) {
                ended = ended.or(record_command(recorder, channel_id, command, gate));
            }
        }
        out.push(match stream {
            OutputStream::Stdout => Out::Data(data),
            OutputStream::Stderr => Out::Extended(1, data),
        });
    }
    if out.is_empty() {
        return Ok(());
    }
    if !counts.is_empty() {
        let applied = masking_applied(Some(masker), counts);
        recorder.push(Direction::Gateway, applied.into());
    }
    flush(recorder).await?;
    if let Some(ending) = ended {
        return Err(ending);
    }
    for message in out {
        pair.to_client.send(message, flow);
    }
    Ok(())
}

/// Sends what every channel's masking has held back longer than it may.
async fn flush_due<S: EventSink>(
    pairs: &mut HashMap<ChannelId, Pair>,
    masker: &Masker,
    recorder: &mut SessionRecorder<S>,
    flow: &Flow,
    gate: Option<&Gate>,
) -> Result<(), Ending> {
    let now = std::time::Instant::now();
    for (id, pair) in pairs.iter_mut() {
        if pair.masking.iter().any(|m| m.due().is_some_and(|due| due <= now)) {
            flush_masked(pair, masker, Some(u32::from(*id)), recorder, flow, gate, false).await?;
        }
    }
    Ok(())
}

/// Records a request the session's rules refuse outright (`what` was
/// asked), and the `block` decision `SET/rule` that refused it.
async fn refuse_by_rule<S: EventSink>(
    recorder: &mut SessionRecorder<S>,
    gate: &Gate,
    what: EventBody,
    rule: &str,
    message: String,
) -> Result<(), Ending> {
    recorder.push(Direction::ClientToTarget, what);
    let decision = PolicyDecision {
        outcome: PolicyOutcome::Block,
        grant_id: gate.grant_id.clone(),
        rule: Some(format!("{}/{rule}", gate.rules.name)),
        review_id: None,
        ref_seq: None,
        message: Some(message),
    };
    recorder.push(Direction::Gateway, decision.into());
    flush(recorder).await
}

/// How long a held command waits for the control plane to record it.
const HOLD_TIMEOUT: Duration = Duration::from_secs(10);

/// Decides an exec command under the session's rules: `None` if it is
/// allowed outright; else the decision to record, and why the client is
/// refused (`None`: approved in review, it runs).
async fn decide_exec(
    gate: &Gate,
    rc: &RelayCtx<'_>,
    raw: &[u8],
    recorded: &str,
    session_id: SessionId,
) -> Option<(PolicyDecision, Option<String>)> {
    // Decided on text: a command that is not UTF-8 text could be read as
    // another; it is not let through unread.
    let Ok(command) = std::str::from_utf8(raw) else {
        let rule = format!("{}/unreadable", gate.rules.name);
        let message = format!("refused by rule {rule}: the command is not UTF-8 text");
        return Some((rule_decision(gate, PolicyOutcome::Block, &rule, None, message.clone()), Some(message)));
    };
    let verdict = gate.rules.decide(command);
    // Reviewers would read it as it is recorded, masked: a command whose
    // masking hid anything (a detector's match can run to the line's end,
    // or take a whole command of many findings) could not be seen for what
    // it is, so it is refused rather than put to them.
    if let Verdict::Hold { rule } = &verdict
        && recorded != command
    {
        let message = format!(
            "held by rule {rule}, and masking hides part of it from its reviewers, who could not see what they \
             approve: pass secrets through the environment or a file"
        );
        return Some((rule_decision(gate, PolicyOutcome::Block, rule, None, message.clone()), Some(message)));
    }
    // Only the identical command (by its keyed hash) runs once approved.
    let held =
        Held { kind: HeldKind::Exec, text: recorded.to_string(), hash: rc.policy.command_hash(raw), what: "command" };
    decide_held(gate, rc, verdict, held, session_id).await
}

/// Decides a file operation an SFTP request asks under the session's
/// rules, as [`decide_exec`] decides a command.
async fn decide_file(
    gate: &Gate,
    rc: &RelayCtx<'_>,
    operation: &str,
    paths: &[Vec<u8>],
    home: Option<&str>,
    session_id: SessionId,
) -> Option<(PolicyDecision, Option<String>)> {
    let (verdict, line) = gate.rules.decide_file(operation, paths, home);
    let held = Held { kind: HeldKind::File, hash: rc.policy.file_hash(&line), text: line, what: "operation" };
    decide_held(gate, rc, verdict, held, session_id).await
}

/// What a rule holds: its kind, its text as a review shows it, the keyed
/// hash that makes only the identical request run once approved, and what
/// the client is told it is.
struct Held {
    kind: HeldKind,
    text: String,
    hash: String,
    what: &'static str,
}

fn rule_decision(
    gate: &Gate,
    outcome: PolicyOutcome,
    rule: &str,
    review_id: Option<String>,
    message: String,
) -> PolicyDecision {
    PolicyDecision {
        outcome,
        grant_id: gate.grant_id.clone(),
        rule: Some(rule.to_string()),
        review_id,
        ref_seq: None,
        message: Some(message),
    }
}

/// A verdict carried out: `None` if it allows; else the decision to
/// record and why the client is refused (`None`: approved in review).
async fn decide_held(
    gate: &Gate,
    rc: &RelayCtx<'_>,
    verdict: Verdict,
    held: Held,
    session_id: SessionId,
) -> Option<(PolicyDecision, Option<String>)> {
    let decision = |outcome, rule: &str, review_id, message| rule_decision(gate, outcome, rule, review_id, message);
    let rule = match verdict {
        Verdict::Allow => return None,
        Verdict::Block { rule } => {
            let message = format!("blocked by rule {rule}");
            return Some((decision(PolicyOutcome::Block, &rule, None, message.clone()), Some(message)));
        }
        Verdict::Hold { rule } => rule,
    };
    let refuse = |message: String| Some((decision(PolicyOutcome::Block, &rule, None, message.clone()), Some(message)));
    let (Some(holds), Some(grant_id)) = (rc.policy.holds(), gate.grant_id.clone()) else {
        return refuse(format!("held by rule {rule}, and no control plane here reviews held {}s", held.what));
    };
    let request = HoldRequest {
        grant_id,
        resource: rc.resource.to_string(),
        session_id,
        ref_seq: None,
        kind: held.kind,
        text: held.text,
        text_hash: held.hash,
        rule: rule.clone(),
        approval_group: gate.rules.approval_group.clone(),
    };
    match tokio::time::timeout(HOLD_TIMEOUT, holds.hold(request)).await {
        Ok(Ok(HoldOutcome::Run { review_id, approved_by })) => {
            let message = format!("approved by {approved_by} in review {review_id}: runs once");
            Some((decision(PolicyOutcome::Allow, &rule, Some(review_id), message), None))
        }
        Ok(Ok(HoldOutcome::Held { review_id, .. })) => {
            let message = format!(
                "held for review {review_id} by rule {rule}; once an approver allows it (proctor review approve {review_id}), run the identical {} again: it runs once",
                held.what
            );
            Some((decision(PolicyOutcome::Hold, &rule, Some(review_id), message.clone()), Some(message)))
        }
        Ok(Err(error)) => refuse(format!("held by rule {rule}, and it cannot be reviewed now ({error}); try again")),
        Err(_) => refuse(format!(
            "held by rule {rule}, and the control plane did not answer within {HOLD_TIMEOUT:?}; try again"
        )),
    }
}

/// Relays what a client sends on an SFTP channel that goes as whole
/// packets (its requests decided by file rules, or its reads masked): each
/// request read before it passes. Everything the client sent is recorded
/// first (`record`: what of it is not recorded yet); a request refused is
/// recorded as the operation asked with its decision, never reaches the
/// target, and is answered with a status saying why.
#[allow(clippy::too_many_arguments)]
async fn sftp_requests<S: EventSink>(
    pair: &mut Pair,
    id: ChannelId,
    data: &[u8],
    record: &[u8],
    admitted: usize,
    rc: &RelayCtx<'_>,
    recorder: &mut SessionRecorder<S>,
    flow: &Flow,
) -> Result<(), Ending> {
    let channel_id = Some(u32::from(id));
    let gate = rc.gate.filter(|g| g.rules.checks_files());
    if !record.is_empty() {
        recorder.push(
            Direction::ClientToTarget,
            TerminalInput { channel_id, data: record.to_vec(), ..Default::default() }.into(),
        );
    }
    let sftp = pair.sftp.as_mut().expect("an SFTP channel");
    let Some(packets) = sftp.split_requests(data) else {
        // A packet no SFTP server reads: it cannot pass, and nothing after
        // it can be told apart. The channel ends.
        flow.delivered(Side::Client, admitted);
        let message = format!("an SFTP request larger than {} bytes cannot be read", crate::sftp::MAX_PACKET);
        return end_channel(pair, Side::Client, message, recorder, flow).await;
    };
    let (mut passing, mut files, mut refused, mut said) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for packet in packets {
        let sftp = pair.sftp.as_ref().expect("an SFTP channel");
        let check = match (sftp.conflict(&packet), gate) {
            (Some(id), _) => crate::sftp::Check::Unreadable { id: Some(id) },
            (None, Some(_)) => sftp.check(&packet),
            (None, None) => crate::sftp::Check::Pass,
        };
        let refusal = match check {
            crate::sftp::Check::Pass => None,
            crate::sftp::Check::Operation { id, operation, paths } => {
                let gate = gate.expect("checked under rules");
                let home = pair.sftp.as_ref().and_then(|sftp| sftp.home().map(str::to_string));
                match decide_file(gate, rc, operation, &paths, home.as_deref(), recorder.session_id()).await {
                    None => None,
                    Some((decision, refusal)) => {
                        let mut paths = paths.iter().map(|p| String::from_utf8_lossy(p).into_owned());
                        let asked = FileTransfer {
                            channel_id,
                            operation: operation.to_string(),
                            path: paths.next().unwrap_or_default(),
                            target_path: paths.next(),
                            ..Default::default()
                        };
                        recorder.push(Direction::ClientToTarget, asked.into());
                        recorder.push(Direction::Gateway, decision.into());
                        refusal.map(|message| (Some(id), message))
                    }
                }
            }
            crate::sftp::Check::Unreadable { id } => {
                let rule = gate.map_or_else(|| "sftp".to_string(), |g| format!("{}/unreadable", g.rules.name));
                let message = format!(
                    "refused by rule {rule}: the request cannot be read, or cannot be told apart from another (its id already waiting for an answer)"
                );
                let report = match gate {
                    Some(gate) => rule_decision(gate, PolicyOutcome::Block, &rule, None, message.clone()).into(),
                    None => ErrorReport { message: message.clone(), ..Default::default() }.into(),
                };
                recorder.push(Direction::Gateway, report);
                Some((id, message))
            }
        };
        match refusal {
            None => files.extend(pair.sftp.as_mut().expect("an SFTP channel").forward(&packet, &mut passing)),
            Some((id, message)) => {
                // Said on the channel's stderr too: SFTP clients show their
                // user the status's code, seldom its message.
                said.push(bytes::Bytes::from(format!("Proctor: {message}\n")));
                // (A request too short to carry an id gets no answer.)
                if let Some(id) = id {
                    refused.push(bytes::Bytes::from(crate::sftp::refusal(id, &format!("Proctor: {message}"))));
                }
            }
        }
    }
    for file in files {
        recorder.push(Direction::ClientToTarget, file_transfer(channel_id, file).into());
    }
    for (stream, sent) in
        refused.iter().map(|s| (OutputStream::Stdout, s)).chain(said.iter().map(|s| (OutputStream::Stderr, s)))
    {
        recorder.push(Direction::Gateway, TerminalOutput { channel_id, stream, data: sent.to_vec() }.into());
    }
    if let Err(ending) = flush(recorder).await {
        flow.delivered(Side::Client, admitted);
        return Err(ending);
    }
    // The flow counts what goes to the target (bytes held for a packet's
    // end are not counted while held), and what goes back.
    flow.reckon(Side::Client, admitted, passing.len());
    if !passing.is_empty() {
        pair.to_target.send(Out::Data(bytes::Bytes::from(passing)), flow);
    }
    for message in said {
        flow.reckon(Side::Target, 0, message.len());
        pair.to_client.send(Out::Extended(1, message), flow);
    }
    for status in refused {
        flow.reckon(Side::Target, 0, status.len());
        pair.refusals.push(status);
    }
    pair.send_refusals(flow);
    Ok(())
}

/// Whether a session looks for SFTP where it was not asked for as the
/// subsystem: when it masks, or decides file operations.
fn watches(rc: &RelayCtx<'_>) -> bool {
    rc.masker.is_some() || rc.gate.is_some_and(|g| g.rules.checks_files())
}

/// A channel's SFTP reader, as the session reads it: masked if the
/// session is, decided if its rules decide file operations.
fn sftp_of(rc: &RelayCtx<'_>) -> crate::sftp::Sftp {
    crate::sftp::Sftp::new(rc.masker.is_some(), rc.gate.is_some_and(|g| g.rules.checks_files()))
}

/// Ends a channel Proctor cannot relay further because of what `side`
/// sent: why recorded first, then the close sent both ways; what `side`
/// still sends on it is dropped.
async fn end_channel<S: EventSink>(
    pair: &mut Pair,
    side: Side,
    why: String,
    recorder: &mut SessionRecorder<S>,
    flow: &Flow,
) -> Result<(), Ending> {
    let message = format!("{why}: the channel was closed");
    recorder.push(Direction::Gateway, ErrorReport { message, ..Default::default() }.into());
    flush(recorder).await?;
    pair.to_client.send(Out::Close, flow);
    pair.to_target.send(Out::Close, flow);
    pair.gone[side as usize] = true;
    Ok(())
}

/// A file operation SFTP requests said, as recorded.
fn file_transfer(channel_id: Option<u32>, file: crate::sftp::Operation) -> FileTransfer {
    FileTransfer {
        channel_id,
        operation: file.operation.to_string(),
        path: file.path,
        byte_count: file.byte_count,
        target_path: file.target_path,
        sha256: file.sha256,
    }
}

/// Refusals recorded one by one per session; past them, refused requests
/// are still refused, and counted in one last event.
const REFUSALS_RECORDED: usize = 32;
/// Channels a session may have open at once.
const MAX_CHANNELS: usize = 64;

/// Records a request refused outright (`what` was asked).
async fn record_refusal<S: EventSink>(
    recorder: &mut SessionRecorder<S>,
    refusals: &mut usize,
    what: String,
) -> Result<(), Ending> {
    *refusals += 1;
    let report = match *refusals {
        n if n < REFUSALS_RECORDED => refused_report(what),
        REFUSALS_RECORDED => ErrorReport {
            message: format!(
                "{REFUSALS_RECORDED} requests refused in this session; further refusals are not recorded one by one (nothing refused passes)"
            ),
            ..Default::default()
        },
        _ => return Ok(()),
    };
    recorder.push(Direction::Gateway, report.into());
    flush(recorder).await
}

/// Records what was pushed; nothing passes unrecorded.
async fn flush<S: EventSink>(recorder: &mut SessionRecorder<S>) -> Result<(), Ending> {
    recorder.flush().await.map_err(|error| {
        Ending::new(EndReason::RecorderUnavailable, format!("Proctor could not record the session ({})", error.0))
    })
}

/// A signal's name as OpenSSH sends it (`TERM`, not `SIGTERM`).
fn signal_name_of(signal: &russh::Sig) -> String {
    match signal {
        russh::Sig::Custom(custom) => custom.clone(),
        other => format!("{other:?}"),
    }
}
