//! The typed event model: one Rust type per event kind, and its mapping onto
//! the schema's columns (in both directions).

use crate::columns::{Cells, Column as C, Header, RuleCount, Value};
use crate::row::Row;
use crate::{
    Direction, EndReason, EventKind, GrantAction, OutputStream, PolicyOutcome, Protocol, ReviewAction, SchemaError,
    SessionId, Timestamp,
};

/// One recorded event: a row of a session.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub session_id: SessionId,
    /// Position in the session, dense from 0; assigned by the recorder.
    pub seq: u64,
    pub time: Timestamp,
    pub direction: Direction,
    pub body: EventBody,
}

/// An event as a producer submits it: the recorder assigns `seq`.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub session_id: SessionId,
    pub time: Timestamp,
    pub direction: Direction,
    pub body: EventBody,
}

fn flatten<'a>(
    session_id: SessionId,
    seq: u64,
    time: Timestamp,
    direction: Direction,
    body: &'a EventBody,
    id_buf: &'a mut SessionIdText,
) -> Cells<'a> {
    let mut cells = Cells::new();
    cells.str(C::SessionId, id_buf.render(session_id));
    cells.u64(C::Seq, seq);
    cells.i64(C::Time, time.0);
    cells.str(C::Kind, body.kind().as_str());
    cells.str(C::Direction, direction.as_str());
    body.write_cells(&mut cells);
    cells
}

impl NewEvent {
    /// The cells the event will have once given `seq`, without moving it.
    pub fn cells_with_seq<'a>(&'a self, seq: u64, id_buf: &'a mut SessionIdText) -> Cells<'a> {
        flatten(self.session_id, seq, self.time, self.direction, &self.body, id_buf)
    }

    pub fn new(session_id: SessionId, time: Timestamp, direction: Direction, body: impl Into<EventBody>) -> Self {
        NewEvent { session_id, time, direction, body: body.into() }
    }

    pub fn with_seq(self, seq: u64) -> Event {
        Event { session_id: self.session_id, seq, time: self.time, direction: self.direction, body: self.body }
    }
}

/// The payload of an event, by kind.
#[derive(Clone, Debug, PartialEq)]
pub enum EventBody {
    SessionStart(SessionStart),
    SessionEnd(SessionEnd),
    Prepare(Prepare),
    Statement(Statement),
    Result(StatementResult),
    Error(ErrorReport),
    Notice(Notice),
    Notification(Notification),
    ParameterStatus(ParameterStatus),
    Copy(CopySummary),
    Cancel(Cancel),
    RawFrame(RawFrame),
    PtyRequest(PtyRequest),
    TerminalInput(TerminalInput),
    TerminalOutput(TerminalOutput),
    Resize(Resize),
    Exec(Exec),
    ExitStatus(ExitStatus),
    Shell(Shell),
    Command(Command),
    Signal(Signal),
    FileTransfer(FileTransfer),
    PortForward(PortForward),
    HttpRequest(HttpRequest),
    HttpResponse(HttpResponse),
    Grant(GrantEvent),
    PolicyDecision(PolicyDecision),
    Review(ReviewEvent),
    MaskingApplied(MaskingApplied),
    RecordingAccessed(RecordingAccessed),
    RetentionDeleted(RetentionDeleted),
    RecorderRecovery(RecorderRecovery),
}

/// A session began.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionStart {
    pub protocol: Protocol,
    pub resource: Option<String>,
    pub subject: Option<String>,
    pub groups: Vec<String>,
    pub grant_id: Option<String>,
    pub client_addr: Option<String>,
    pub target_user: Option<String>,
    pub database: Option<String>,
    pub application_name: Option<String>,
    /// TLS towards the client: the version (`TLSv1.3`) or `off`.
    pub tls: Option<String>,
    pub masking_profile: Option<String>,
    pub message: Option<String>,
}

impl SessionStart {
    /// A start of `protocol` that says nothing more yet: fill in what is
    /// known with struct update syntax.
    pub fn new(protocol: Protocol) -> SessionStart {
        SessionStart {
            protocol,
            resource: None,
            subject: None,
            groups: Vec::new(),
            grant_id: None,
            client_addr: None,
            target_user: None,
            database: None,
            application_name: None,
            tls: None,
            masking_profile: None,
            message: None,
        }
    }
}

/// A session ended.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionEnd {
    pub reason: EndReason,
    pub message: Option<String>,
}

/// PostgreSQL Parse.
#[derive(Clone, Debug, PartialEq)]
pub struct Prepare {
    pub statement_name: String,
    pub sql: String,
}

/// A statement sent to run.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    pub sql: String,
    /// The prepared statement executed (extended protocol only).
    pub statement_name: Option<String>,
    /// The portal executed (extended protocol only).
    pub portal: Option<String>,
    /// Bind parameters as text; `None` for SQL NULL.
    pub params: Vec<Option<String>>,
}

/// The outcome of a statement.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatementResult {
    /// The `statement` event this result answers.
    pub ref_seq: Option<u64>,
    pub command_tag: Option<String>,
    pub columns: Vec<String>,
    pub row_count: u64,
    pub byte_count: u64,
    pub duration_ns: u64,
    pub sample_rows: Vec<Vec<Option<String>>>,
    /// Whether rows beyond the sample bound were left out.
    pub sample_truncated: bool,
    /// The keyed tokens masking wrote into its rows (sampled or not), each
    /// once, at most [`MAX_RESULT_TOKENS`].
    pub tokens: Vec<String>,
    /// How many times a token not kept was written (past the bound).
    pub tokens_dropped: u64,
}

/// Keyed tokens a result keeps, at most.
pub const MAX_RESULT_TOKENS: usize = 256;

/// An error reported to the client.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ErrorReport {
    pub ref_seq: Option<u64>,
    pub severity: Option<String>,
    pub sqlstate: Option<String>,
    pub message: String,
    pub detail: Option<String>,
}

/// A PostgreSQL NoticeResponse.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Notice {
    pub severity: Option<String>,
    pub sqlstate: Option<String>,
    pub message: String,
    pub detail: Option<String>,
}

/// A PostgreSQL NotificationResponse.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    pub backend_pid: i32,
    pub channel: String,
    pub payload: String,
}

/// A PostgreSQL ParameterStatus.
#[derive(Clone, Debug, PartialEq)]
pub struct ParameterStatus {
    pub parameter: String,
    pub value: String,
}

/// The volume of a COPY; the event's direction says which way.
#[derive(Clone, Debug, PartialEq)]
pub struct CopySummary {
    pub ref_seq: Option<u64>,
    /// `text`, `csv` or `binary`.
    pub format: String,
    pub row_count: Option<u64>,
    pub byte_count: u64,
    pub duration_ns: Option<u64>,
}

/// A cancel request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cancel {
    pub backend_pid: Option<i32>,
    pub message: Option<String>,
}

/// A frame relayed without being modelled.
#[derive(Clone, Debug, PartialEq)]
pub struct RawFrame {
    /// The frame's type byte, as a character.
    pub frame_tag: String,
    /// The frame's full length.
    pub byte_count: u64,
    /// Its bytes, up to the producer's bound.
    pub data: Vec<u8>,
    pub truncated: bool,
}

/// A pty was requested.
#[derive(Clone, Debug, PartialEq)]
pub struct PtyRequest {
    /// The channel it was asked on (SSH), if the session has several.
    pub channel_id: Option<u32>,
    pub term: String,
    pub width: u32,
    pub height: u32,
}

/// What the client sent on a channel. Keystrokes at a terminal are
/// recorded as their length and a keyed digest (`data` empty), never as
/// themselves: a password typed at a prompt that does not echo it must not
/// be stored, and only the echo shows whether the prompt did. What was typed
/// is recovered from the echo into [`Command`] events. Input without a
/// terminal (exec stdin) is data, recorded as it is (`byte_count` and
/// `digest` none).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TerminalInput {
    pub channel_id: Option<u32>,
    pub data: Vec<u8>,
    pub byte_count: Option<u64>,
    pub digest: Option<String>,
}

/// An interactive shell was started.
#[derive(Clone, Debug, PartialEq)]
pub struct Shell {
    pub channel_id: Option<u32>,
}

/// A command line typed at a terminal, as the terminal echoed it.
#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    pub channel_id: Option<u32>,
    pub command: String,
}

/// A signal the client sent to a command.
#[derive(Clone, Debug, PartialEq)]
pub struct Signal {
    pub channel_id: Option<u32>,
    pub signal: String,
}

/// Bytes written to the terminal.
#[derive(Clone, Debug, PartialEq)]
pub struct TerminalOutput {
    pub channel_id: Option<u32>,
    pub stream: OutputStream,
    pub data: Vec<u8>,
}

/// The terminal was resized.
#[derive(Clone, Debug, PartialEq)]
pub struct Resize {
    pub channel_id: Option<u32>,
    pub width: u32,
    pub height: u32,
}

/// A command run without a pty.
#[derive(Clone, Debug, PartialEq)]
pub struct Exec {
    pub channel_id: Option<u32>,
    pub command: String,
}

/// How a command or shell ended.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExitStatus {
    pub channel_id: Option<u32>,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<String>,
    pub message: Option<String>,
}

/// A file operation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FileTransfer {
    pub channel_id: Option<u32>,
    pub operation: String,
    pub path: String,
    pub byte_count: Option<u64>,
    /// A rename's new name, a link's target.
    pub target_path: Option<String>,
    /// The SHA-256 of the whole file, when it was transferred whole in order.
    pub sha256: Option<String>,
}

/// A forwarded connection: asked for and decided (`outcome`, `rule`), then,
/// in a second event answering the first (`ref_seq`), closed with what it
/// carried each way and how long it lasted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PortForward {
    pub channel_id: Option<u32>,
    /// What was asked: `direct-tcpip`, `tcpip-forward`, `forwarded-tcpip`,
    /// `auth-agent`, `x11`.
    pub operation: String,
    pub host: Option<String>,
    pub port: Option<u32>,
    /// Allowed or refused (on the event that asks).
    pub outcome: Option<PolicyOutcome>,
    pub rule: Option<String>,
    /// The event that asked (on the event that closes).
    pub ref_seq: Option<u64>,
    pub bytes_to_target: Option<u64>,
    pub bytes_to_client: Option<u64>,
    pub duration_ns: Option<u64>,
    pub message: Option<String>,
}

/// An HTTP request.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpRequest {
    pub method: String,
    pub host: Option<String>,
    /// The request target: path and query.
    pub path: String,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
    /// The body's full length.
    pub byte_count: u64,
    pub truncated: bool,
}

/// An HTTP response.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpResponse {
    pub ref_seq: Option<u64>,
    pub status: u16,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
    pub byte_count: u64,
    pub truncated: bool,
    pub duration_ns: Option<u64>,
}

/// Something happened to a grant.
#[derive(Clone, Debug, PartialEq)]
pub struct GrantEvent {
    pub action: GrantAction,
    pub grant_id: String,
    pub resource: Option<String>,
    pub subject: Option<String>,
    pub groups: Vec<String>,
    pub actor: Option<String>,
    pub expires_at: Option<Timestamp>,
    /// The reason given (by the requester, approver or policy).
    pub message: Option<String>,
}

/// A policy decision on one statement or command.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyDecision {
    pub outcome: PolicyOutcome,
    pub grant_id: Option<String>,
    pub rule: Option<String>,
    pub review_id: Option<String>,
    /// The statement or command decided on.
    pub ref_seq: Option<u64>,
    pub message: Option<String>,
}

/// Something happened to a held statement.
#[derive(Clone, Debug, PartialEq)]
pub struct ReviewEvent {
    pub action: ReviewAction,
    pub review_id: String,
    pub grant_id: Option<String>,
    pub actor: Option<String>,
    /// The session the statement was held in.
    pub target_session: Option<String>,
    pub ref_seq: Option<u64>,
    pub message: Option<String>,
    /// What was held (masked): a statement, a command, a file operation.
    pub held: Option<Held>,
}

/// What a review is of: what the rules held, in the protocol's terms. One
/// vocabulary for the control store, the API and the events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldKind {
    /// A database statement (the whole query string, or a Parse's SQL): in
    /// `sql`.
    Statement,
    /// A command run on a host (an SSH exec request): in `command`.
    Exec,
    /// A file operation (an upload, a removal): in `path`.
    File,
}

impl HeldKind {
    pub const ALL: [HeldKind; 3] = [HeldKind::Statement, HeldKind::Exec, HeldKind::File];

    pub fn as_str(self) -> &'static str {
        match self {
            HeldKind::Statement => "statement",
            HeldKind::Exec => "exec",
            HeldKind::File => "file",
        }
    }

    pub fn parse(text: &str) -> Option<HeldKind> {
        HeldKind::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// The column a review event carries the held text in.
    fn column(self) -> C {
        match self {
            HeldKind::Statement => C::Sql,
            HeldKind::Exec => C::Command,
            HeldKind::File => C::Path,
        }
    }
}

/// A held request, as reviewers read it.
#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    pub kind: HeldKind,
    pub text: String,
}

impl Held {
    pub fn statement(sql: impl Into<String>) -> Held {
        Held { kind: HeldKind::Statement, text: sql.into() }
    }

    /// The statement, if a statement was held.
    pub fn sql(&self) -> Option<&str> {
        (self.kind == HeldKind::Statement).then_some(self.text.as_str())
    }
}

/// Masking counts for one result or message.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MaskingApplied {
    pub masking_profile: Option<String>,
    pub ref_seq: Option<u64>,
    pub masked: Vec<RuleCount>,
    /// The keyed tokens masking wrote into the output it counts, each once,
    /// at most [`MAX_RESULT_TOKENS`]: output that carries them cut (where a
    /// replacement must keep the secret's length) or not at all is still
    /// found by the value it hid.
    pub tokens: Vec<String>,
    /// How many times a token not kept was written (past the bound).
    pub tokens_dropped: u64,
}

/// Someone looked at recordings.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordingAccessed {
    pub actor: String,
    pub target_session: Option<String>,
    pub query: Option<String>,
    /// `search`, `read`, `view`, `export`.
    pub operation: String,
}

/// Retention deleted a segment.
#[derive(Clone, Debug, PartialEq)]
pub struct RetentionDeleted {
    pub path: String,
    pub row_count: Option<u64>,
    pub message: Option<String>,
}

/// What recovery found and did.
#[derive(Clone, Debug, PartialEq)]
pub struct RecorderRecovery {
    pub message: String,
    pub path: Option<String>,
    pub byte_count: Option<u64>,
}

macro_rules! into_body {
    ($($ty:ident => $variant:ident),+ $(,)?) => {
        $( impl From<$ty> for EventBody { fn from(v: $ty) -> Self { EventBody::$variant(v) } } )+
    };
}

into_body! {
    SessionStart => SessionStart, SessionEnd => SessionEnd, Prepare => Prepare, Statement => Statement,
    StatementResult => Result, ErrorReport => Error, Notice => Notice, Notification => Notification,
    ParameterStatus => ParameterStatus, CopySummary => Copy, Cancel => Cancel, RawFrame => RawFrame,
    PtyRequest => PtyRequest, TerminalInput => TerminalInput, TerminalOutput => TerminalOutput,
    Resize => Resize, Exec => Exec, ExitStatus => ExitStatus, Shell => Shell, Command => Command, Signal => Signal, FileTransfer => FileTransfer, PortForward => PortForward,
    HttpRequest => HttpRequest, HttpResponse => HttpResponse, GrantEvent => Grant,
    PolicyDecision => PolicyDecision, ReviewEvent => Review, MaskingApplied => MaskingApplied,
    RecordingAccessed => RecordingAccessed, RetentionDeleted => RetentionDeleted,
    RecorderRecovery => RecorderRecovery,
}

fn opt_str<'a>(cells: &mut Cells<'a>, column: C, value: &'a Option<String>) {
    cells.opt_str(column, value);
}

fn channel(cells: &mut Cells<'_>, channel_id: Option<u32>) {
    cells.opt_u64(C::ChannelId, channel_id.map(u64::from));
}

/// What a review event says was held: the one of `sql`, `command` and
/// `path` it carries (none: a review event of the first schemas that named
/// nothing).
fn held(row: &mut Row) -> Result<Option<Held>, SchemaError> {
    let found = HeldKind::ALL.map(|kind| row.take_str(kind.column()).map(|text| (kind, text)));
    let found = found.into_iter().collect::<Result<Vec<_>, _>>()?;
    let mut held = found.into_iter().filter_map(|(kind, text)| text.map(|text| Held { kind, text }));
    let first = held.next();
    if let Some(second) = held.next() {
        return Err(SchemaError::bad(
            second.kind.column(),
            "a review event names one held request (sql, command or path), not several",
        ));
    }
    Ok(first)
}

impl EventBody {
    pub fn kind(&self) -> EventKind {
        match self {
            EventBody::SessionStart(_) => EventKind::SessionStart,
            EventBody::SessionEnd(_) => EventKind::SessionEnd,
            EventBody::Prepare(_) => EventKind::Prepare,
            EventBody::Statement(_) => EventKind::Statement,
            EventBody::Result(_) => EventKind::Result,
            EventBody::Error(_) => EventKind::Error,
            EventBody::Notice(_) => EventKind::Notice,
            EventBody::Notification(_) => EventKind::Notification,
            EventBody::ParameterStatus(_) => EventKind::ParameterStatus,
            EventBody::Copy(_) => EventKind::Copy,
            EventBody::Cancel(_) => EventKind::Cancel,
            EventBody::RawFrame(_) => EventKind::RawFrame,
            EventBody::PtyRequest(_) => EventKind::PtyRequest,
            EventBody::TerminalInput(_) => EventKind::TerminalInput,
            EventBody::TerminalOutput(_) => EventKind::TerminalOutput,
            EventBody::Resize(_) => EventKind::Resize,
            EventBody::Exec(_) => EventKind::Exec,
            EventBody::ExitStatus(_) => EventKind::ExitStatus,
            EventBody::Shell(_) => EventKind::Shell,
            EventBody::Command(_) => EventKind::Command,
            EventBody::Signal(_) => EventKind::Signal,
            EventBody::FileTransfer(_) => EventKind::FileTransfer,
            EventBody::PortForward(_) => EventKind::PortForward,
            EventBody::HttpRequest(_) => EventKind::HttpRequest,
            EventBody::HttpResponse(_) => EventKind::HttpResponse,
            EventBody::Grant(g) => match g.action {
                GrantAction::Requested => EventKind::GrantRequested,
                GrantAction::Approved => EventKind::GrantApproved,
                GrantAction::PartiallyApproved => EventKind::GrantPartiallyApproved,
                GrantAction::Denied => EventKind::GrantDenied,
                GrantAction::Expired => EventKind::GrantExpired,
                GrantAction::Revoked => EventKind::GrantRevoked,
                GrantAction::Certified => EventKind::GrantCertified,
            },
            EventBody::PolicyDecision(_) => EventKind::PolicyDecision,
            EventBody::Review(r) => match r.action {
                ReviewAction::Requested => EventKind::ReviewRequested,
                ReviewAction::Approved => EventKind::ReviewApproved,
                ReviewAction::Denied => EventKind::ReviewDenied,
                ReviewAction::Expired => EventKind::ReviewExpired,
            },
            EventBody::MaskingApplied(_) => EventKind::MaskingApplied,
            EventBody::RecordingAccessed(_) => EventKind::RecordingAccessed,
            EventBody::RetentionDeleted(_) => EventKind::RetentionDeleted,
            EventBody::RecorderRecovery(_) => EventKind::RecorderRecovery,
        }
    }

    /// Writes the kind-specific columns.
    fn write_cells<'a>(&'a self, cells: &mut Cells<'a>) {
        match self {
            EventBody::SessionStart(s) => {
                cells.str(C::Protocol, s.protocol.as_str());
                opt_str(cells, C::Resource, &s.resource);
                opt_str(cells, C::Subject, &s.subject);
                cells.set(C::Groups, Value::StrList(&s.groups));
                opt_str(cells, C::GrantId, &s.grant_id);
                opt_str(cells, C::ClientAddr, &s.client_addr);
                opt_str(cells, C::TargetUser, &s.target_user);
                opt_str(cells, C::Database, &s.database);
                opt_str(cells, C::ApplicationName, &s.application_name);
                opt_str(cells, C::Tls, &s.tls);
                opt_str(cells, C::MaskingProfile, &s.masking_profile);
                opt_str(cells, C::Message, &s.message);
            }
            EventBody::SessionEnd(s) => {
                cells.str(C::EndReason, s.reason.as_str());
                opt_str(cells, C::Message, &s.message);
            }
            EventBody::Prepare(p) => {
                cells.str(C::Sql, &p.sql);
                cells.str(C::StatementName, &p.statement_name);
            }
            EventBody::Statement(s) => {
                cells.str(C::Sql, &s.sql);
                opt_str(cells, C::StatementName, &s.statement_name);
                opt_str(cells, C::Portal, &s.portal);
                cells.set(C::Params, Value::OptStrList(&s.params));
            }
            EventBody::Result(r) => {
                cells.opt_u64(C::RefSeq, r.ref_seq);
                opt_str(cells, C::CommandTag, &r.command_tag);
                cells.set(C::ResultColumns, Value::StrList(&r.columns));
                cells.u64(C::RowCount, r.row_count);
                cells.u64(C::ByteCount, r.byte_count);
                cells.u64(C::DurationNs, r.duration_ns);
                cells.set(C::SampleRows, Value::Rows(&r.sample_rows));
                cells.set(C::Truncated, Value::Bool(r.sample_truncated));
                cells.set(C::Tokens, Value::StrList(&r.tokens));
                cells.opt_u64(C::TokensDropped, (r.tokens_dropped > 0).then_some(r.tokens_dropped));
            }
            EventBody::Error(e) => {
                cells.opt_u64(C::RefSeq, e.ref_seq);
                cells.str(C::Message, &e.message);
                opt_str(cells, C::Detail, &e.detail);
                opt_str(cells, C::Severity, &e.severity);
                opt_str(cells, C::Sqlstate, &e.sqlstate);
            }
            EventBody::Notice(n) => {
                cells.str(C::Message, &n.message);
                opt_str(cells, C::Detail, &n.detail);
                opt_str(cells, C::Severity, &n.severity);
                opt_str(cells, C::Sqlstate, &n.sqlstate);
            }
            EventBody::Notification(n) => {
                cells.str(C::Channel, &n.channel);
                cells.str(C::Payload, &n.payload);
                cells.i64(C::BackendPid, n.backend_pid.into());
            }
            EventBody::ParameterStatus(p) => {
                cells.str(C::Parameter, &p.parameter);
                cells.str(C::Value, &p.value);
            }
            EventBody::Copy(c) => {
                cells.opt_u64(C::RefSeq, c.ref_seq);
                cells.opt_u64(C::RowCount, c.row_count);
                cells.u64(C::ByteCount, c.byte_count);
                cells.opt_u64(C::DurationNs, c.duration_ns);
                cells.str(C::Format, &c.format);
            }
            EventBody::Cancel(c) => {
                opt_str(cells, C::Message, &c.message);
                if let Some(pid) = c.backend_pid {
                    cells.i64(C::BackendPid, pid.into());
                }
            }
            EventBody::RawFrame(f) => {
                cells.u64(C::ByteCount, f.byte_count);
                cells.set(C::Truncated, Value::Bool(f.truncated));
                cells.str(C::FrameTag, &f.frame_tag);
                cells.set(C::Data, Value::Bytes(&f.data));
            }
            EventBody::PtyRequest(p) => {
                channel(cells, p.channel_id);
                cells.str(C::Term, &p.term);
                cells.u64(C::Width, p.width.into());
                cells.u64(C::Height, p.height.into());
            }
            EventBody::TerminalInput(t) => {
                channel(cells, t.channel_id);
                cells.set(C::Data, Value::Bytes(&t.data));
                cells.opt_u64(C::ByteCount, t.byte_count);
                opt_str(cells, C::Digest, &t.digest);
            }
            EventBody::Shell(x) => channel(cells, x.channel_id),
            EventBody::Command(c) => {
                channel(cells, c.channel_id);
                cells.str(C::Command, &c.command);
            }
            EventBody::Signal(x) => {
                channel(cells, x.channel_id);
                cells.str(C::Signal, &x.signal);
            }
            EventBody::TerminalOutput(t) => {
                channel(cells, t.channel_id);
                cells.set(C::Data, Value::Bytes(&t.data));
                cells.str(C::Stream, t.stream.as_str());
            }
            EventBody::Resize(r) => {
                channel(cells, r.channel_id);
                cells.u64(C::Width, r.width.into());
                cells.u64(C::Height, r.height.into());
            }
            EventBody::Exec(e) => {
                channel(cells, e.channel_id);
                cells.str(C::Command, &e.command);
            }
            EventBody::ExitStatus(e) => {
                channel(cells, e.channel_id);
                opt_str(cells, C::Message, &e.message);
                if let Some(code) = e.exit_code {
                    cells.i64(C::ExitCode, code.into());
                }
                opt_str(cells, C::ExitSignal, &e.exit_signal);
            }
            EventBody::FileTransfer(f) => {
                channel(cells, f.channel_id);
                cells.opt_u64(C::ByteCount, f.byte_count);
                cells.str(C::Operation, &f.operation);
                cells.str(C::Path, &f.path);
                opt_str(cells, C::TargetPath, &f.target_path);
                opt_str(cells, C::Sha256, &f.sha256);
            }
            EventBody::PortForward(p) => {
                channel(cells, p.channel_id);
                cells.str(C::Operation, &p.operation);
                opt_str(cells, C::Host, &p.host);
                cells.opt_u64(C::Port, p.port.map(u64::from));
                if let Some(outcome) = p.outcome {
                    cells.str(C::Outcome, outcome.as_str());
                }
                opt_str(cells, C::Rule, &p.rule);
                cells.opt_u64(C::RefSeq, p.ref_seq);
                cells.opt_u64(C::BytesToTarget, p.bytes_to_target);
                cells.opt_u64(C::BytesToClient, p.bytes_to_client);
                cells.opt_u64(C::DurationNs, p.duration_ns);
                opt_str(cells, C::Message, &p.message);
            }
            EventBody::HttpRequest(h) => {
                cells.u64(C::ByteCount, h.byte_count);
                cells.set(C::Truncated, Value::Bool(h.truncated));
                cells.str(C::Path, &h.path);
                cells.str(C::Method, &h.method);
                opt_str(cells, C::Host, &h.host);
                cells.set(C::Headers, Value::Pairs(&h.headers));
                cells.set(C::Body, Value::Bytes(&h.body));
            }
            EventBody::HttpResponse(h) => {
                cells.opt_u64(C::RefSeq, h.ref_seq);
                cells.u64(C::ByteCount, h.byte_count);
                cells.opt_u64(C::DurationNs, h.duration_ns);
                cells.set(C::Truncated, Value::Bool(h.truncated));
                cells.u64(C::Status, h.status.into());
                cells.set(C::Headers, Value::Pairs(&h.headers));
                cells.set(C::Body, Value::Bytes(&h.body));
            }
            EventBody::Grant(g) => {
                opt_str(cells, C::Resource, &g.resource);
                opt_str(cells, C::Subject, &g.subject);
                cells.set(C::Groups, Value::StrList(&g.groups));
                cells.str(C::GrantId, &g.grant_id);
                opt_str(cells, C::Actor, &g.actor);
                if let Some(expires_at) = g.expires_at {
                    cells.i64(C::ExpiresAt, expires_at.0);
                }
                opt_str(cells, C::Message, &g.message);
            }
            EventBody::PolicyDecision(p) => {
                opt_str(cells, C::GrantId, &p.grant_id);
                cells.str(C::Outcome, p.outcome.as_str());
                opt_str(cells, C::Rule, &p.rule);
                opt_str(cells, C::ReviewId, &p.review_id);
                cells.opt_u64(C::RefSeq, p.ref_seq);
                opt_str(cells, C::Message, &p.message);
            }
            EventBody::Review(r) => {
                opt_str(cells, C::GrantId, &r.grant_id);
                cells.str(C::ReviewId, &r.review_id);
                opt_str(cells, C::Actor, &r.actor);
                opt_str(cells, C::TargetSession, &r.target_session);
                cells.opt_u64(C::RefSeq, r.ref_seq);
                opt_str(cells, C::Message, &r.message);
                if let Some(held) = &r.held {
                    cells.str(held.kind.column(), &held.text);
                }
            }
            EventBody::MaskingApplied(m) => {
                opt_str(cells, C::MaskingProfile, &m.masking_profile);
                cells.opt_u64(C::RefSeq, m.ref_seq);
                cells.set(C::Masked, Value::Counts(&m.masked));
                cells.set(C::Tokens, Value::StrList(&m.tokens));
                cells.opt_u64(C::TokensDropped, (m.tokens_dropped > 0).then_some(m.tokens_dropped));
            }
            EventBody::RecordingAccessed(r) => {
                cells.str(C::Actor, &r.actor);
                opt_str(cells, C::TargetSession, &r.target_session);
                opt_str(cells, C::Query, &r.query);
                cells.str(C::Operation, &r.operation);
            }
            EventBody::RetentionDeleted(r) => {
                opt_str(cells, C::Message, &r.message);
                cells.opt_u64(C::RowCount, r.row_count);
                cells.str(C::Path, &r.path);
            }
            EventBody::RecorderRecovery(r) => {
                cells.str(C::Message, &r.message);
                cells.opt_u64(C::ByteCount, r.byte_count);
                opt_str(cells, C::Path, &r.path);
            }
        }
    }

    /// Rebuilds a payload from the kind-specific columns of a row.
    fn from_row(kind: EventKind, row: &mut Row) -> Result<EventBody, SchemaError> {
        let k = kind.as_str();
        let req_str = |row: &mut Row, column: C| row.take_str(column)?.ok_or_else(|| SchemaError::missing(column, k));
        let req_u64 = |row: &mut Row, column: C| row.take_u64(column)?.ok_or_else(|| SchemaError::missing(column, k));
        let req_u32 = |row: &mut Row, column: C| row.take_u32(column)?.ok_or_else(|| SchemaError::missing(column, k));
        let req_bool = |row: &mut Row, column: C| row.take_bool(column)?.ok_or_else(|| SchemaError::missing(column, k));
        Ok(match kind {
            EventKind::SessionStart => EventBody::SessionStart(SessionStart {
                protocol: req_str(row, C::Protocol)?.parse()?,
                resource: row.take_str(C::Resource)?,
                subject: row.take_str(C::Subject)?,
                groups: row.take_str_list(C::Groups)?,
                grant_id: row.take_str(C::GrantId)?,
                client_addr: row.take_str(C::ClientAddr)?,
                target_user: row.take_str(C::TargetUser)?,
                database: row.take_str(C::Database)?,
                application_name: row.take_str(C::ApplicationName)?,
                tls: row.take_str(C::Tls)?,
                masking_profile: row.take_str(C::MaskingProfile)?,
                message: row.take_str(C::Message)?,
            }),
            EventKind::SessionEnd => EventBody::SessionEnd(SessionEnd {
                reason: req_str(row, C::EndReason)?.parse()?,
                message: row.take_str(C::Message)?,
            }),
            EventKind::Prepare => EventBody::Prepare(Prepare {
                sql: req_str(row, C::Sql)?,
                statement_name: req_str(row, C::StatementName)?,
            }),
            EventKind::Statement => EventBody::Statement(Statement {
                sql: req_str(row, C::Sql)?,
                statement_name: row.take_str(C::StatementName)?,
                portal: row.take_str(C::Portal)?,
                params: row.take_opt_str_list(C::Params)?,
            }),
            EventKind::Result => EventBody::Result(StatementResult {
                ref_seq: row.take_u64(C::RefSeq)?,
                command_tag: row.take_str(C::CommandTag)?,
                columns: row.take_str_list(C::ResultColumns)?,
                row_count: req_u64(row, C::RowCount)?,
                byte_count: req_u64(row, C::ByteCount)?,
                duration_ns: req_u64(row, C::DurationNs)?,
                sample_rows: row.take_rows(C::SampleRows)?,
                sample_truncated: req_bool(row, C::Truncated)?,
                tokens: row.take_str_list(C::Tokens)?,
                tokens_dropped: row.take_u64(C::TokensDropped)?.unwrap_or(0),
            }),
            EventKind::Error => EventBody::Error(ErrorReport {
                ref_seq: row.take_u64(C::RefSeq)?,
                message: req_str(row, C::Message)?,
                detail: row.take_str(C::Detail)?,
                severity: row.take_str(C::Severity)?,
                sqlstate: row.take_str(C::Sqlstate)?,
            }),
            EventKind::Notice => EventBody::Notice(Notice {
                message: req_str(row, C::Message)?,
                detail: row.take_str(C::Detail)?,
                severity: row.take_str(C::Severity)?,
                sqlstate: row.take_str(C::Sqlstate)?,
            }),
            EventKind::Notification => EventBody::Notification(Notification {
                channel: req_str(row, C::Channel)?,
                payload: req_str(row, C::Payload)?,
                backend_pid: row.take_i32(C::BackendPid)?.ok_or_else(|| SchemaError::missing(C::BackendPid, k))?,
            }),
            EventKind::ParameterStatus => EventBody::ParameterStatus(ParameterStatus {
                parameter: req_str(row, C::Parameter)?,
                value: req_str(row, C::Value)?,
            }),
            EventKind::Copy => EventBody::Copy(CopySummary {
                ref_seq: row.take_u64(C::RefSeq)?,
                row_count: row.take_u64(C::RowCount)?,
                byte_count: req_u64(row, C::ByteCount)?,
                duration_ns: row.take_u64(C::DurationNs)?,
                format: req_str(row, C::Format)?,
            }),
            EventKind::Cancel => EventBody::Cancel(Cancel {
                message: row.take_str(C::Message)?,
                backend_pid: row.take_i32(C::BackendPid)?,
            }),
            EventKind::RawFrame => EventBody::RawFrame(RawFrame {
                byte_count: req_u64(row, C::ByteCount)?,
                truncated: req_bool(row, C::Truncated)?,
                frame_tag: req_str(row, C::FrameTag)?,
                data: row.take_bytes(C::Data)?,
            }),
            EventKind::PtyRequest => EventBody::PtyRequest(PtyRequest {
                channel_id: row.take_u32(C::ChannelId)?,
                term: req_str(row, C::Term)?,
                width: req_u32(row, C::Width)?,
                height: req_u32(row, C::Height)?,
            }),
            EventKind::TerminalInput => EventBody::TerminalInput(TerminalInput {
                channel_id: row.take_u32(C::ChannelId)?,
                data: row.take_bytes(C::Data)?,
                byte_count: row.take_u64(C::ByteCount)?,
                digest: row.take_str(C::Digest)?,
            }),
            EventKind::Shell => EventBody::Shell(Shell { channel_id: row.take_u32(C::ChannelId)? }),
            EventKind::Command => EventBody::Command(Command {
                channel_id: row.take_u32(C::ChannelId)?,
                command: req_str(row, C::Command)?,
            }),
            EventKind::Signal => {
                EventBody::Signal(Signal { channel_id: row.take_u32(C::ChannelId)?, signal: req_str(row, C::Signal)? })
            }
            EventKind::TerminalOutput => EventBody::TerminalOutput(TerminalOutput {
                channel_id: row.take_u32(C::ChannelId)?,
                data: row.take_bytes(C::Data)?,
                stream: req_str(row, C::Stream)?.parse()?,
            }),
            EventKind::Resize => EventBody::Resize(Resize {
                channel_id: row.take_u32(C::ChannelId)?,
                width: req_u32(row, C::Width)?,
                height: req_u32(row, C::Height)?,
            }),
            EventKind::Exec => {
                EventBody::Exec(Exec { channel_id: row.take_u32(C::ChannelId)?, command: req_str(row, C::Command)? })
            }
            EventKind::ExitStatus => EventBody::ExitStatus(ExitStatus {
                channel_id: row.take_u32(C::ChannelId)?,
                message: row.take_str(C::Message)?,
                exit_code: row.take_i32(C::ExitCode)?,
                exit_signal: row.take_str(C::ExitSignal)?,
            }),
            EventKind::FileTransfer => EventBody::FileTransfer(FileTransfer {
                channel_id: row.take_u32(C::ChannelId)?,
                byte_count: row.take_u64(C::ByteCount)?,
                operation: req_str(row, C::Operation)?,
                path: req_str(row, C::Path)?,
                target_path: row.take_str(C::TargetPath)?,
                sha256: row.take_str(C::Sha256)?,
            }),
            EventKind::PortForward => EventBody::PortForward(PortForward {
                channel_id: row.take_u32(C::ChannelId)?,
                operation: req_str(row, C::Operation)?,
                host: row.take_str(C::Host)?,
                port: row.take_u32(C::Port)?,
                outcome: row.take_str(C::Outcome)?.map(|o| o.parse()).transpose()?,
                rule: row.take_str(C::Rule)?,
                ref_seq: row.take_u64(C::RefSeq)?,
                bytes_to_target: row.take_u64(C::BytesToTarget)?,
                bytes_to_client: row.take_u64(C::BytesToClient)?,
                duration_ns: row.take_u64(C::DurationNs)?,
                message: row.take_str(C::Message)?,
            }),
            EventKind::HttpRequest => EventBody::HttpRequest(HttpRequest {
                byte_count: req_u64(row, C::ByteCount)?,
                truncated: req_bool(row, C::Truncated)?,
                path: req_str(row, C::Path)?,
                method: req_str(row, C::Method)?,
                host: row.take_str(C::Host)?,
                headers: row.take_pairs(C::Headers)?,
                body: row.take_bytes(C::Body)?,
            }),
            EventKind::HttpResponse => EventBody::HttpResponse(HttpResponse {
                ref_seq: row.take_u64(C::RefSeq)?,
                byte_count: req_u64(row, C::ByteCount)?,
                duration_ns: row.take_u64(C::DurationNs)?,
                truncated: req_bool(row, C::Truncated)?,
                status: row.take_u16(C::Status)?.ok_or_else(|| SchemaError::missing(C::Status, k))?,
                headers: row.take_pairs(C::Headers)?,
                body: row.take_bytes(C::Body)?,
            }),
            EventKind::GrantRequested
            | EventKind::GrantApproved
            | EventKind::GrantPartiallyApproved
            | EventKind::GrantDenied
            | EventKind::GrantExpired
            | EventKind::GrantRevoked
            | EventKind::GrantCertified => EventBody::Grant(GrantEvent {
                action: k.parse()?,
                resource: row.take_str(C::Resource)?,
                subject: row.take_str(C::Subject)?,
                groups: row.take_str_list(C::Groups)?,
                grant_id: req_str(row, C::GrantId)?,
                actor: row.take_str(C::Actor)?,
                expires_at: row.take_time(C::ExpiresAt)?,
                message: row.take_str(C::Message)?,
            }),
            EventKind::PolicyDecision => EventBody::PolicyDecision(PolicyDecision {
                grant_id: row.take_str(C::GrantId)?,
                outcome: req_str(row, C::Outcome)?.parse()?,
                rule: row.take_str(C::Rule)?,
                review_id: row.take_str(C::ReviewId)?,
                ref_seq: row.take_u64(C::RefSeq)?,
                message: row.take_str(C::Message)?,
            }),
            EventKind::ReviewRequested
            | EventKind::ReviewApproved
            | EventKind::ReviewDenied
            | EventKind::ReviewExpired => EventBody::Review(ReviewEvent {
                action: k.parse()?,
                grant_id: row.take_str(C::GrantId)?,
                review_id: req_str(row, C::ReviewId)?,
                actor: row.take_str(C::Actor)?,
                target_session: row.take_str(C::TargetSession)?,
                ref_seq: row.take_u64(C::RefSeq)?,
                message: row.take_str(C::Message)?,
                held: held(row)?,
            }),
            EventKind::MaskingApplied => EventBody::MaskingApplied(MaskingApplied {
                masking_profile: row.take_str(C::MaskingProfile)?,
                ref_seq: row.take_u64(C::RefSeq)?,
                masked: row.take_counts(C::Masked)?,
                tokens: row.take_str_list(C::Tokens)?,
                tokens_dropped: row.take_u64(C::TokensDropped)?.unwrap_or(0),
            }),
            EventKind::RecordingAccessed => EventBody::RecordingAccessed(RecordingAccessed {
                actor: req_str(row, C::Actor)?,
                target_session: row.take_str(C::TargetSession)?,
                query: row.take_str(C::Query)?,
                operation: req_str(row, C::Operation)?,
            }),
            EventKind::RetentionDeleted => EventBody::RetentionDeleted(RetentionDeleted {
                message: row.take_str(C::Message)?,
                row_count: row.take_u64(C::RowCount)?,
                path: req_str(row, C::Path)?,
            }),
            EventKind::RecorderRecovery => EventBody::RecorderRecovery(RecorderRecovery {
                message: req_str(row, C::Message)?,
                byte_count: row.take_u64(C::ByteCount)?,
                path: row.take_str(C::Path)?,
            }),
        })
    }
}

impl Event {
    pub fn kind(&self) -> EventKind {
        self.body.kind()
    }

    /// The event flattened onto the schema's columns. The session id is
    /// rendered into `id_buf`, which must outlive the cells.
    pub fn cells<'a>(&'a self, id_buf: &'a mut SessionIdText) -> Cells<'a> {
        flatten(self.session_id, self.seq, self.time, self.direction, &self.body, id_buf)
    }

    /// Rebuilds a typed event from a decoded row. The row must be in the
    /// canonical form for its kind: a value in a column the kind does not use
    /// is an error, so that every stored row has exactly one typed meaning.
    pub fn from_row(mut row: Row) -> Result<Event, SchemaError> {
        Event::take_from(&mut row)
    }

    /// [`Event::from_row`], taking the values out of `row` (all of them,
    /// when it succeeds): a row read into again and again
    /// ([`crate::arrow::BatchReader::row_into`]) allocates once.
    pub fn take_from(row: &mut Row) -> Result<Event, SchemaError> {
        let session_id = row.take_str(C::SessionId)?.ok_or_else(|| SchemaError::missing(C::SessionId, "any"))?;
        let seq = row.take_u64(C::Seq)?.ok_or_else(|| SchemaError::missing(C::Seq, "any"))?;
        let time = row.take_time(C::Time)?.ok_or_else(|| SchemaError::missing(C::Time, "any"))?;
        let kind: EventKind = row.take_str(C::Kind)?.ok_or_else(|| SchemaError::missing(C::Kind, "any"))?.parse()?;
        let direction: Direction =
            row.take_str(C::Direction)?.ok_or_else(|| SchemaError::missing(C::Direction, "any"))?.parse()?;
        let body = EventBody::from_row(kind, row)?;
        if let Some(column) = row.first_leftover() {
            return Err(SchemaError::bad(column, format!("is not used by kind `{kind}`")));
        }
        Ok(Event { session_id: session_id.parse()?, seq, time, direction, body })
    }
}

/// A stack buffer for a session id's 36-character text form, so that
/// flattening an event does not allocate.
pub struct SessionIdText {
    buf: [u8; uuid::fmt::Hyphenated::LENGTH],
}

impl Default for SessionIdText {
    fn default() -> Self {
        SessionIdText { buf: [0; uuid::fmt::Hyphenated::LENGTH] }
    }
}

impl SessionIdText {
    pub fn render(&mut self, id: SessionId) -> &str {
        id.as_uuid().hyphenated().encode_lower(&mut self.buf)
    }
}
