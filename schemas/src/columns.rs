//! The columns of the one event schema. Every event kind fills the common
//! columns and its own subset of the rest; the others are null. The order of
//! this table is the order of the Arrow schema and of the canonical encoding.

use crate::SchemaError;

/// The storage type of a column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    /// UTF-8 text.
    Str,
    U64,
    U32,
    U16,
    I32,
    Bool,
    /// Raw bytes (terminal streams, bodies, unmodelled frames), bounded by the producer.
    Bytes,
    /// Nanoseconds since the epoch, UTC.
    Time,
    /// A list of non-null strings.
    StrList,
    /// A list of strings that may be null (SQL bind parameters).
    OptStrList,
    /// A list of rows, each a list of nullable strings (result samples).
    Rows,
    /// A list of `{name, value}` pairs (HTTP headers).
    Pairs,
    /// A list of `{rule, count}` pairs (masking counts).
    Counts,
}

macro_rules! columns {
    ( $( $variant:ident = $name:literal : $ty:ident $(, $required:ident)? ; $doc:literal )+ ) => {
        /// A column of the event schema.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        pub enum Column { $( #[doc = $doc] $variant, )+ }

        /// The schema's columns in order; `COLUMNS[c as usize].column == c`.
        pub const COLUMNS: &[ColumnDef] = &[
            $( ColumnDef {
                column: Column::$variant,
                name: $name,
                ty: ColumnType::$ty,
                required: columns!(@required $($required)?),
                doc: $doc,
            }, )+
        ];
    };
    (@required required) => { true };
    (@required) => { false };
}

/// A column's definition: its name in Arrow/Parquet, type and meaning.
#[derive(Clone, Copy, Debug)]
pub struct ColumnDef {
    pub column: Column,
    pub name: &'static str,
    pub ty: ColumnType,
    /// Set on every row, whatever the kind.
    pub required: bool,
    pub doc: &'static str,
}

columns! {
    SessionId = "session_id": Str, required; "the session the event belongs to (UUIDv7 text)"
    Seq = "seq": U64, required; "position in the session, dense from 0"
    Time = "time": Time, required; "when it happened, UTC nanoseconds"
    Kind = "kind": Str, required; "the event kind (see the kinds table)"
    Direction = "direction": Str, required; "client_to_target, target_to_client or gateway"
    Protocol = "protocol": Str; "the session's protocol"
    Resource = "resource": Str; "the configured resource name"
    Subject = "subject": Str; "the authenticated identity (OIDC subject)"
    Groups = "groups": StrList; "the subject's groups at the time"
    GrantId = "grant_id": Str; "the grant the session or decision belongs to"
    ClientAddr = "client_addr": Str; "the client's address and port"
    TargetUser = "target_user": Str; "the account used on the target (database role, ssh user)"
    Database = "database": Str; "the database the client asked for"
    ApplicationName = "application_name": Str; "the client's self-reported application name"
    Tls = "tls": Str; "TLS towards the client: the protocol version, or `off`"
    MaskingProfile = "masking_profile": Str; "the masking profile in force"
    EndReason = "end_reason": Str; "why a session ended (see end reasons)"
    Outcome = "outcome": Str; "a policy decision: allow, block or hold"
    Rule = "rule": Str; "the policy rule that decided"
    ReviewId = "review_id": Str; "the review a held statement waits on"
    Actor = "actor": Str; "who acted: an approver, a revoker, a viewer of recordings"
    ExpiresAt = "expires_at": Time; "when a grant expires"
    TargetSession = "target_session": Str; "the session an action refers to (a viewed recording, a held statement's session)"
    Query = "query": Str; "a search query run by a viewer"
    RefSeq = "ref_seq": U64; "the seq of the event this one answers or decides on"
    Message = "message": Str; "human-readable text: an error or notice message, a reason, a detail of an end"
    Detail = "detail": Str; "secondary text: an error's detail"
    Severity = "severity": Str; "an error's or notice's severity (ERROR, FATAL, WARNING, ...)"
    Sqlstate = "sqlstate": Str; "the five-character SQLSTATE of an error or notice"
    Sql = "sql": Str; "SQL text as sent (masked)"
    StatementName = "statement_name": Str; "a prepared statement's name (empty for the unnamed one)"
    Portal = "portal": Str; "an extended-protocol portal's name (empty for the unnamed one)"
    Params = "params": OptStrList; "bind parameters as text, null for SQL NULL (masked)"
    CommandTag = "command_tag": Str; "the command tag reported by the target (SELECT 3, UPDATE 1, ...)"
    ResultColumns = "result_columns": StrList; "the column names of a result"
    RowCount = "row_count": U64; "rows returned, affected or copied"
    ByteCount = "byte_count": U64; "bytes of payload (a result, a copy, a body, a frame)"
    DurationNs = "duration_ns": U64; "how long it took, in nanoseconds"
    SampleRows = "sample_rows": Rows; "the first rows of a result, bounded and masked"
    Truncated = "truncated": Bool; "whether a sample, body or frame was cut at its bound"
    Channel = "channel": Str; "a LISTEN/NOTIFY channel"
    Payload = "payload": Str; "a NOTIFY payload"
    BackendPid = "backend_pid": I32; "a target backend's process id"
    Parameter = "parameter": Str; "a reported server parameter's name"
    Value = "value": Str; "a reported server parameter's value"
    Format = "format": Str; "a COPY format: text, csv or binary"
    FrameTag = "frame_tag": Str; "the type byte of an unmodelled protocol frame, as a character"
    Data = "data": Bytes; "raw bytes: terminal input or output, an unmodelled frame (bounded)"
    Stream = "stream": Str; "terminal output stream: stdout or stderr"
    Term = "term": Str; "the terminal type of a pty request"
    Width = "width": U32; "terminal columns"
    Height = "height": U32; "terminal rows"
    Command = "command": Str; "a command run without a pty (ssh exec, subsystem); a command line typed at a terminal, as its echo showed it; a held command (a review's)"
    ExitCode = "exit_code": I32; "a command's exit status"
    ExitSignal = "exit_signal": Str; "the signal that ended a command"
    Operation = "operation": Str; "a file-transfer or recording-access operation"
    Path = "path": Str; "a file path, an HTTP request target, a segment path; a held file operation (a review's)"
    Method = "method": Str; "an HTTP method"
    Host = "host": Str; "the HTTP host (authority); a forwarded connection's host"
    Status = "status": U16; "an HTTP status code"
    Headers = "headers": Pairs; "HTTP headers in order (secrets masked)"
    Body = "body": Bytes; "an HTTP body (bounded, masked)"
    Masked = "masked": Counts; "how many values each masking rule replaced"
    Tokens = "tokens": StrList; "the keyed tokens masking wrote into a result's rows, or into the output a masking_applied event counts (each once; at most 256)"
    TokensDropped = "tokens_dropped": U64; "how many times a result's or masking_applied event's masking wrote a token not kept (beyond the 256)"
    ChannelId = "channel_id": U32; "the channel (SSH) or stream (HTTP/2) of a multiplexed session an event belongs to"
    Port = "port": U32; "a forwarded connection's port"
    BytesToTarget = "bytes_to_target": U64; "bytes a forwarded connection carried towards the target"
    BytesToClient = "bytes_to_client": U64; "bytes a forwarded connection carried back to the client"
    Digest = "digest": Str; "a keyed digest of keystrokes typed at a terminal (HMAC-SHA256 under the deployment's masking key, bound to the session, channel and offset): the keystrokes themselves are not recorded"
    Signal = "signal": Str; "a signal the client sent to a command (TERM, INT, ...)"
    TargetPath = "target_path": Str; "a file operation's second path: a rename's new name, a link's target"
    Sha256 = "sha256": Str; "the SHA-256 (hex) of a whole file transferred"
}

/// Number of columns in the schema.
pub const COLUMN_COUNT: usize = COLUMNS.len();

impl Column {
    pub fn def(self) -> &'static ColumnDef {
        &COLUMNS[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.def().name
    }

    pub fn ty(self) -> ColumnType {
        self.def().ty
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(index: usize) -> Option<Column> {
        COLUMNS.get(index).map(|def| def.column)
    }

    pub fn from_name(name: &str) -> Option<Column> {
        COLUMNS.iter().find(|def| def.name == name).map(|def| def.column)
    }
}

/// An HTTP header (or any ordered name/value pair).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// How many values one masking rule replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleCount {
    pub rule: String,
    pub count: u64,
}

/// One cell's value, borrowed. Integers of every width travel as `U64`/`I64`;
/// the column's [`ColumnType`] says how they are stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    Str(&'a str),
    U64(u64),
    I64(i64),
    Bool(bool),
    Bytes(&'a [u8]),
    StrList(&'a [String]),
    OptStrList(&'a [Option<String>]),
    Rows(&'a [Vec<Option<String>>]),
    Pairs(&'a [Header]),
    Counts(&'a [RuleCount]),
}

impl Value<'_> {
    /// Whether this value can be stored in a column of type `ty`.
    pub fn fits(&self, ty: ColumnType) -> bool {
        use ColumnType as T;
        match (self, ty) {
            (Value::Str(_), T::Str) => true,
            (Value::U64(_), T::U64) => true,
            (Value::U64(v), T::U32) => u32::try_from(*v).is_ok(),
            (Value::U64(v), T::U16) => u16::try_from(*v).is_ok(),
            (Value::I64(v), T::I32) => i32::try_from(*v).is_ok(),
            (Value::I64(_), T::Time) => true,
            (Value::Bool(_), T::Bool) => true,
            (Value::Bytes(_), T::Bytes) => true,
            (Value::StrList(_), T::StrList) => true,
            (Value::OptStrList(_), T::OptStrList) => true,
            (Value::Rows(_), T::Rows) => true,
            (Value::Pairs(_), T::Pairs) => true,
            (Value::Counts(_), T::Counts) => true,
            _ => false,
        }
    }
}

/// An event flattened onto the schema: one optional value per column.
///
/// Empty lists are never stored: a list cell holding no items is null, so that
/// the typed model, the Arrow rows and the canonical bytes agree on one form.
#[derive(Clone, Debug)]
pub struct Cells<'a> {
    values: [Option<Value<'a>>; COLUMN_COUNT],
}

impl<'a> Default for Cells<'a> {
    fn default() -> Self {
        Cells { values: [None; COLUMN_COUNT] }
    }
}

impl<'a> Cells<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, column: Column) -> Option<Value<'a>> {
        self.values[column.index()]
    }

    /// Sets a cell. Empty lists are normalised to null.
    pub fn set(&mut self, column: Column, value: Value<'a>) {
        let empty = match value {
            Value::StrList(v) => v.is_empty(),
            Value::OptStrList(v) => v.is_empty(),
            Value::Rows(v) => v.is_empty(),
            Value::Pairs(v) => v.is_empty(),
            Value::Counts(v) => v.is_empty(),
            _ => false,
        };
        debug_assert!(value.fits(column.ty()), "{value:?} does not fit column {}", column.name());
        self.values[column.index()] = if empty { None } else { Some(value) };
    }

    pub fn str(&mut self, column: Column, value: &'a str) {
        self.set(column, Value::Str(value));
    }

    pub fn opt_str(&mut self, column: Column, value: &'a Option<String>) {
        if let Some(value) = value {
            self.set(column, Value::Str(value));
        }
    }

    pub fn u64(&mut self, column: Column, value: u64) {
        self.set(column, Value::U64(value));
    }

    pub fn opt_u64(&mut self, column: Column, value: Option<u64>) {
        if let Some(value) = value {
            self.set(column, Value::U64(value));
        }
    }

    pub fn i64(&mut self, column: Column, value: i64) {
        self.set(column, Value::I64(value));
    }

    /// Checks every cell against its column's type (used on decoded input).
    pub fn check_types(&self) -> Result<(), SchemaError> {
        for def in COLUMNS {
            if let Some(value) = self.values[def.column.index()]
                && !value.fits(def.ty)
            {
                return Err(SchemaError::bad(def.column, format!("value {value:?} does not fit type {:?}", def.ty)));
            }
        }
        Ok(())
    }

    /// Non-null cells in column order.
    pub fn iter(&self) -> impl Iterator<Item = (Column, Value<'a>)> + '_ {
        self.values.iter().enumerate().filter_map(|(index, value)| value.map(|value| (COLUMNS[index].column, value)))
    }
}
