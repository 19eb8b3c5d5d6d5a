//! The PostgreSQL protocol state of one session, apart from sockets: every
//! frame from either side goes through [`Protocol::frontend`] or
//! [`Protocol::backend`], which keep track of prepared statements, portals,
//! which request each response answers, results in progress and COPY, and
//! turn what happened into events.
//!
//! Responses arrive in the order of the requests they answer, so a queue of
//! expected responses ([`Expect`]) pairs them; after an error in the extended
//! protocol the server skips to the next Sync, and so does the queue.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use proctor_schemas::{
    CopySummary, Direction, ErrorReport, Notice, Notification, ParameterStatus, PolicyDecision, Prepare, RawFrame,
    Statement, StatementResult, Timestamp,
};

use super::copyout::{self, CopyFormat, CopyPlan};
use super::frame::{Body, text};
use super::gate::{Gate, Gated, Refusal};
use super::mask;
use super::messages::fields;
use super::values;
use proctor_gateway_core::masking::{Counts, Masker};
use proctor_gateway_core::recording::Record;

/// How much of each result is kept as a sample.
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleLimits {
    pub rows: usize,
    pub bytes: usize,
}

/// Bytes of an unmodelled frame kept in its `raw_frame` event.
const RAW_FRAME_BYTES: usize = 4096;

#[derive(Debug)]
enum Expect {
    /// A simple Query or a FunctionCall: answered up to ReadyForQuery.
    Query {
        seq: u64,
        started: Instant,
    },
    /// `seq` of its `prepare` event (named statements only). The statement
    /// is kept here until the server accepts it (ParseComplete).
    Parse {
        seq: Option<u64>,
        time: Timestamp,
        name: String,
        prepared: Prepared,
    },
    /// The portal, kept here until the server accepts it (BindComplete).
    Bind {
        name: String,
        portal: Portal,
    },
    DescribeStatement {
        name: String,
    },
    /// A Describe of a portal: its row description is kept with the portal
    /// (pipelined portals each keep their own).
    DescribePortal {
        name: String,
    },
    /// `columns`: the result's shape, known from an earlier Describe of the
    /// statement and the Bind's result formats, when no row description
    /// precedes the rows.
    Execute {
        seq: u64,
        started: Instant,
        portal: String,
        columns: Option<Vec<Column>>,
        /// Whether the Bind asked for any result column in binary.
        binary: bool,
    },
    Close,
    Sync,
    /// A refusal sent in place of a Parse (`seq`: its `prepare` event): the
    /// target answers with an error, which the client receives as the
    /// Parse's, and a ReadyForQuery, which the client must not see.
    Refused {
        seq: u64,
    },
}

#[derive(Debug)]
struct Prepared {
    sql: Arc<str>,
    param_types: Vec<u32>,
    /// From a Describe of the statement (format codes there are always 0).
    columns: Vec<Column>,
    /// Prepared under an approved review: it may be executed once.
    once: Option<Arc<Once>>,
    /// A COPY TO STDOUT under masking: how each Execute's rows are masked.
    copy: Option<CopyMask>,
}

/// An approval to run a held statement once.
#[derive(Debug)]
struct Once {
    review_id: String,
    ran: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct Portal {
    statement: String,
    sql: Arc<str>,
    params: Vec<Option<String>>,
    result_formats: Vec<i16>,
    /// Bound from a statement approved to run once: the approval travels
    /// with the portal (closing the statement does not end it).
    once: Option<Arc<Once>>,
    /// From a Describe of the portal (with its result formats).
    columns: Option<Vec<Column>>,
}

use super::catalog::{TABLE_TTL, TableInfo};
use super::mask::ResultColumn as Column;

/// The result being received.
#[derive(Default)]
struct ResultState {
    columns: Vec<Column>,
    rows: u64,
    bytes: u64,
    sample: Vec<Vec<Option<String>>>,
    sample_bytes: usize,
    sample_truncated: bool,
    /// Values masked in this result, by rule.
    masked: Counts,
}

struct CopyState {
    ref_seq: Option<u64>,
    binary: bool,
    rows: u64,
    bytes: u64,
    started: Instant,
    /// The last bytes of the data, to recognise the `\.` end marker line.
    tail: [u8; 4],
}

impl CopyState {
    fn new(ref_seq: Option<u64>, binary: bool) -> CopyState {
        CopyState { ref_seq, binary, rows: 0, bytes: 0, started: Instant::now(), tail: [b'\n'; 4] }
    }

    fn data(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        if self.binary {
            return;
        }
        self.rows += data.iter().filter(|&&b| b == b'\n').count() as u64;
        for &b in data.iter().rev().take(4).collect::<Vec<_>>().iter().rev() {
            self.tail.rotate_left(1);
            self.tail[3] = *b;
        }
    }

    /// Rows of text data, not counting a final `\.` end marker.
    fn rows(&self) -> Option<u64> {
        (!self.binary).then(|| if &self.tail == b"\n\\.\n" { self.rows.saturating_sub(1) } else { self.rows })
    }
}

/// What the connection loop must do after a frontend frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Frontend {
    Forward,
    /// The client said goodbye (Terminate); forward it and end the session.
    Terminate,
    /// Send this frame to the target instead (a refusal).
    Replace(Vec<u8>),
    /// Do not send the frame: the target would skip it too (the rest of an
    /// extended-protocol batch after a refused Parse, up to its Sync).
    Drop,
    /// Stop before this frame, which was not consumed: a held statement
    /// waits for the control plane's answer ([`Protocol::question`]); then
    /// the frame is read again.
    Pause,
}

/// What a paused session asks outside itself.
pub(crate) enum Question {
    /// The control plane: a held statement.
    Hold(Arc<dyn proctor_gateway_core::control::Holds>, proctor_gateway_core::control::HoldRequest),
    /// The catalog: the columns of the query a COPY will send.
    Describe(copyout::Describe),
}

/// The answer to a [`Question`] or a table lookup.
pub(crate) enum Answer {
    Hold(Result<proctor_gateway_core::control::HoldOutcome, String>),
    Described(Result<Vec<Column>, String>),
    Tables(Result<HashMap<u32, Arc<TableInfo>>, String>),
}

/// A COPY TO STDOUT whose columns the catalog is asked for, before the
/// query that runs it goes on.
struct Describing {
    /// The query string the COPY came in.
    sql: String,
    /// What to ask the catalog, until asked.
    ask: Option<copyout::Describe>,
    columns: Option<Result<Vec<Column>, String>>,
}

/// How a COPY's rows are masked.
#[derive(Clone, Debug)]
struct CopyMask {
    format: CopyFormat,
    columns: Option<Vec<Column>>,
    /// A CSV header line still to come (not masked: column names).
    header: bool,
}

/// What the connection loop must do with a target frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Backend {
    Forward,
    /// Send this frame to the client instead (masked).
    Replace(Vec<u8>),
    /// Do not send it (the end of a refusal the client must not see).
    Drop,
    /// Stop before this frame, not consumed: its tables must be looked up
    /// ([`Protocol::lookup`]) first.
    Pause,
}

pub struct Protocol {
    limits: SampleLimits,
    statements: HashMap<String, Prepared>,
    portals: HashMap<String, Portal>,
    expected: VecDeque<Expect>,
    result: ResultState,
    copy_in: Option<CopyState>,
    copy_out: Option<CopyState>,
    /// The target sent a FATAL or PANIC error: the client has been told why
    /// the session is about to end.
    target_fatal: bool,
    /// Statement rules, when the session runs under some.
    gate: Option<Gate>,
    /// The target skips the client's messages up to a Sync not sent yet (a
    /// Parse was refused, or an extended-protocol message failed): they are
    /// dropped here too.
    skipping: bool,
    /// What the session's values are masked with, if anything.
    masker: Option<Arc<Masker>>,
    /// Whether the session's client_encoding is UTF-8.
    client_utf8: bool,
    /// Whether the session reads '...' with standard conforming strings.
    standard_strings: bool,
    /// The last statement text masking found nothing in, and the string
    /// mode it was read in: a client that sends the same text again (every
    /// Parse of a prepared query, pgbench's extended protocol) is not
    /// scanned again. Masking a statement is a function of its text, the
    /// mode and the session's masker alone.
    nothing_to_mask: std::cell::RefCell<Option<(bool, String)>>,
    /// Tables by OID, from the catalog (for column rules: the table's name
    /// and its columns' names).
    tables: HashMap<u32, Arc<TableInfo>>,
    /// OIDs asked of the catalog, and when: asked again after
    /// [`TABLE_TTL`], so that a renamed column is seen.
    asked_tables: HashMap<u32, std::time::Instant>,
    /// Bumped whenever `tables` changes: a planned row description is only
    /// reused under the tables it was planned with.
    tables_generation: u64,
    /// The last row description planned (its bytes, `tables_generation`
    /// then, and its columns as planned): a client that describes the same
    /// statement again (every Execute of pgbench's extended protocol) gets
    /// the plan without its column names being read and matched again.
    /// Planning is a function of these bytes, the tables and the session's
    /// masker alone.
    described: Option<(Vec<u8>, u64, Vec<Column>)>,
    /// Tables to look up, until asked.
    looking_up: Option<Vec<u32>>,
    describing: Option<Describing>,
    /// How the next COPY TO STDOUT's rows are masked, once planned.
    copy_pending: Option<CopyMask>,
    /// Planned COPYs by the seq of the statement that runs them: each
    /// CopyOutResponse takes the plan of the request it answers.
    copy_plans: Vec<(u64, CopyMask)>,
    /// How the COPY TO STDOUT in progress is masked.
    copy_mask: Option<CopyMask>,
}

/// RowDescription: column names, types and formats, read in place.
fn row_description(body: &[u8]) -> Option<Vec<Column>> {
    let mut reader = Body::new(body);
    let count = reader.i16()?.max(0) as usize;
    let mut columns = Vec::with_capacity(count.min(body.len() / 19));
    for _ in 0..count {
        let name = text(reader.cstr()?);
        let table_oid = reader.i32()? as u32;
        let attnum = reader.i16()?;
        let type_oid = reader.i32()? as u32;
        let _size = reader.i16()?;
        let _modifier = reader.i32()?;
        let format = reader.i16()?;
        columns.push(Column { name, table_oid, attnum, type_oid, format, ..Column::default() });
    }
    Some(columns)
}

/// Parse: statement name, SQL and parameter types, read in place.
fn parse_message(body: &[u8]) -> Option<(String, Arc<str>, Vec<u32>)> {
    let mut reader = Body::new(body);
    let name = text(reader.cstr()?);
    let sql: Arc<str> = String::from_utf8_lossy(reader.cstr()?).into();
    let count = reader.i16()?.max(0) as usize;
    let types = (0..count).map(|_| reader.i32().map(|t| t as u32)).collect::<Option<Vec<u32>>>()?;
    Some((name, sql, types))
}

/// Statement and portal names are compared on every Bind and Execute, and
/// most are the unnamed one: that case needs no call to `memcmp`.
fn same_name(a: &str, b: &str) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

/// The format code of item `i` of a list of format codes (none: text; one:
/// for all).
fn format_at(formats: &[i16], i: usize) -> i16 {
    match formats.len() {
        0 => 0,
        1 => formats[0],
        _ => formats.get(i).copied().unwrap_or(0),
    }
}

impl Protocol {
    pub fn new(limits: SampleLimits) -> Protocol {
        Protocol {
            limits,
            statements: HashMap::new(),
            portals: HashMap::new(),
            expected: VecDeque::new(),
            result: ResultState::default(),
            copy_in: None,
            copy_out: None,
            target_fatal: false,
            gate: None,
            skipping: false,
            masker: None,
            client_utf8: true,
            standard_strings: true,
            nothing_to_mask: std::cell::RefCell::new(None),
            tables: HashMap::new(),
            asked_tables: HashMap::new(),
            tables_generation: 0,
            described: None,
            looking_up: None,
            describing: None,
            copy_pending: None,
            copy_plans: Vec::new(),
            copy_mask: None,
        }
    }

    /// Masks the session's values with `masker`: rows, COPY data, errors
    /// and notices towards the client, and everything recorded.
    pub(crate) fn with_masker(mut self, masker: Option<Arc<Masker>>) -> Protocol {
        self.masker = masker;
        self
    }

    /// Whether the target owes answers: a statement is in flight there.
    pub fn awaiting_target(&self) -> bool {
        !self.expected.is_empty()
    }

    /// How many queries and executions the target has been sent and not
    /// finished: past one, a cancel would stop only the first.
    pub fn requests_in_flight(&self) -> usize {
        self.expected.iter().filter(|e| matches!(e, Expect::Query { .. } | Expect::Execute { .. })).count()
    }

    /// Whether the session's values are masked.
    pub fn masking(&self) -> bool {
        self.masker.is_some()
    }

    /// A statement held for review whose masked text its reviewers could
    /// not judge is refused instead ([`mask::hidden_from_reviewers`]).
    fn reviewable(&self, gated: Option<Gated>, sql: &str) -> Option<Gated> {
        if let Some(Gated::Ask { rule }) = &gated
            && let (Some(masker), Some(gate)) = (&self.masker, &self.gate)
            && let Some(why) = mask::hidden_from_reviewers(masker, sql, self.standard_strings)
        {
            return Some(gate.hidden_from_reviewers(rule.clone(), why));
        }
        gated
    }

    /// Text as it may be recorded: masked by the detectors when masking is on.
    fn recordable(&self, text: String) -> String {
        let Some(m) = &self.masker else { return text };
        if let Some((standard, sql)) = &*self.nothing_to_mask.borrow()
            && *standard == self.standard_strings
            && *sql == text
        {
            return text;
        }
        match mask::mask_statement_text(m, &text, self.standard_strings) {
            Some(masked) => masked,
            None => {
                // The cache's buffer is reused: most texts that are not
                // repeats (simple queries with their literals) cost no
                // allocation here.
                match &mut *self.nothing_to_mask.borrow_mut() {
                    Some((standard, sql)) => {
                        *standard = self.standard_strings;
                        sql.clear();
                        sql.push_str(&text);
                    }
                    empty => *empty = Some((self.standard_strings, text.clone())),
                }
                text
            }
        }
    }

    /// Puts every statement of the session under `gate`.
    pub(crate) fn with_gate(mut self, gate: Option<Gate>) -> Protocol {
        self.gate = gate;
        self
    }

    /// A session setting the target reported at start-up.
    pub fn parameter(&mut self, name: &str, value: &str) {
        if name == "client_encoding" {
            self.client_utf8 = matches!(value.to_ascii_uppercase().as_str(), "UTF8" | "UTF-8" | "UNICODE");
        }
        if name == "standard_conforming_strings" {
            self.standard_strings = value != "off";
        }
        if let Some(gate) = &mut self.gate {
            gate.parameter(name, value);
        }
    }

    /// Under rules or masking, statements are read as UTF-8: in another
    /// client encoding a byte the server reads as part of a character could
    /// be read here as a quote or a backslash, and values could not be
    /// scanned. Such a session's statements are refused.
    fn encoding_refusal(&self) -> Option<Refusal> {
        ((self.gate.is_some() || self.masker.is_some()) && !self.client_utf8).then(|| Refusal {
            message: "Proctor refused this statement: statement rules and masking read statements and values as UTF-8, and this session's client_encoding is not UTF8".to_string(),
            hint: "connect with client_encoding=UTF8 (PGCLIENTENCODING=UTF8)".to_string(),
        })
    }

    /// What to ask the control plane about the statement the last
    /// [`Frontend::Pause`] stopped at.
    pub(crate) fn question(&mut self) -> Option<Question> {
        if let Some(query) = self.describing.as_mut().and_then(|d| d.ask.take()) {
            return Some(Question::Describe(query));
        }
        self.gate.as_mut()?.question().map(|(holds, request)| Question::Hold(holds, request))
    }

    /// The tables to look up before the row description [`Backend::Pause`]
    /// stopped at can be read again.
    pub(crate) fn lookup(&mut self) -> Option<Vec<u32>> {
        self.looking_up.take()
    }

    /// The answer to a [`Protocol::question`] or [`Protocol::lookup`].
    pub(crate) fn answer(&mut self, answer: Answer) {
        match answer {
            Answer::Hold(answer) => {
                if let Some(gate) = &mut self.gate {
                    gate.answer(answer);
                }
            }
            Answer::Described(columns) => {
                if let Some(describing) = &mut self.describing {
                    describing.columns = Some(columns);
                }
            }
            Answer::Tables(names) => {
                // Asked once: what the catalog does not name stays unnamed,
                // and its columns are withheld under column rules (an alias
                // could otherwise hide a ruled column).
                if let Ok(names) = names {
                    self.tables.extend(names);
                    self.tables_generation += 1;
                }
            }
        }
    }

    /// Plans a COPY TO STDOUT under masking: `Ok(plan)` to go on (`None`:
    /// not such a COPY, or no masking), `Err(Some(refusal))` to refuse it,
    /// `Err(None)` to pause while the catalog is asked for its columns.
    fn plan_copy(&mut self, sql: &str) -> Result<Option<CopyMask>, Option<Refusal>> {
        let Some(masker) = &self.masker else { return Ok(None) };
        let (format, describe) = match copyout::plan(sql, self.standard_strings) {
            CopyPlan::NotCopyOut => return Ok(None),
            CopyPlan::Refuse(why) => {
                return Err(Some(Refusal {
                    message: format!("Proctor refused this COPY: {why}"),
                    hint: "this session's values are masked before they leave Proctor".to_string(),
                }));
            }
            CopyPlan::Mask { format, describe } => (format, describe),
        };
        let header = format.header;
        if !masker.has_column_rules() {
            return Ok(Some(CopyMask { format, columns: None, header }));
        }
        match &mut self.describing {
            Some(d) if d.sql == sql => match &d.columns {
                Some(Ok(columns)) => {
                    let mut columns = columns.clone();
                    mask::plan(&mut columns, masker);
                    Ok(Some(CopyMask { format, columns: Some(columns), header }))
                }
                Some(Err(why)) => Err(Some(Refusal {
                    message: format!("Proctor refused this COPY: its columns could not be read for masking ({why})"),
                    hint: "check the COPY's table or query; try again".to_string(),
                })),
                None => Err(None),
            },
            _ => {
                self.describing = Some(Describing { sql: sql.to_string(), ask: Some(describe), columns: None });
                Err(None)
            }
        }
    }

    /// A decision as it may be recorded: its message masked (a parser's
    /// error can quote the statement).
    fn shown(&self, mut decision: PolicyDecision) -> PolicyDecision {
        decision.message = decision.message.map(|m| self.recordable(m));
        decision
    }

    /// The decision recorded for a statement refused by `rule`.
    fn refused_for(rule: &str, refusal: &Refusal) -> PolicyDecision {
        PolicyDecision {
            outcome: proctor_schemas::PolicyOutcome::Block,
            grant_id: None,
            rule: Some(rule.to_string()),
            review_id: None,
            ref_seq: None,
            message: Some(refusal.message.clone()),
        }
    }

    /// Expects the answer to a simple query recorded as `seq` (with the
    /// COPY plan its frame came with, if any).
    fn push_query(&mut self, seq: u64) {
        if let Some(copy) = self.copy_pending.take() {
            self.copy_plans.push((seq, copy));
        }
        self.expected.push_back(Expect::Query { seq, started: Instant::now() });
    }

    /// Records a decision about the statement recorded as `seq`.
    fn decided(seq: u64, mut decision: PolicyDecision, record: &mut impl Record) {
        decision.ref_seq = Some(seq);
        record.push(Direction::Gateway, decision.into());
    }

    /// Whether the target already told the client, with a FATAL or PANIC
    /// error, why the connection ends.
    pub fn target_said_fatal(&self) -> bool {
        self.target_fatal
    }

    /// A statement by name: the latest one prepared in the pipeline, else the
    /// one the server accepted.
    fn statement(&self, name: &str) -> Option<&Prepared> {
        self.expected
            .iter()
            .rev()
            .find_map(|e| match e {
                Expect::Parse { name: n, prepared, .. } if same_name(n, name) => Some(prepared),
                _ => None,
            })
            .or_else(|| self.statements.get(name))
    }

    /// A portal by name, likewise.
    fn portal(&self, name: &str) -> Option<&Portal> {
        self.expected
            .iter()
            .rev()
            .find_map(|e| match e {
                Expect::Bind { name: n, portal } if same_name(n, name) => Some(portal),
                _ => None,
            })
            .or_else(|| self.portals.get(name))
    }

    /// The seq of the statement the next response belongs to.
    fn current_statement(&self) -> Option<u64> {
        match self.expected.front()? {
            Expect::Query { seq, .. } | Expect::Execute { seq, .. } => Some(*seq),
            Expect::Parse { seq, .. } => *seq,
            Expect::Refused { seq } => Some(*seq),
            _ => None,
        }
    }

    fn started(&self) -> Option<Instant> {
        match self.expected.front()? {
            Expect::Query { started, .. } | Expect::Execute { started, .. } => Some(*started),
            _ => None,
        }
    }

    /// A frame recorded as it is (one not modelled, or one that could not
    /// be read). Under masking its bytes are not kept, only its tag and
    /// length: they could hold anything, and masking cannot read them.
    fn raw(&self, tag: u8, frame: &[u8], direction: Direction, record: &mut impl Record) -> u64 {
        let keep = if self.masker.is_some() { 0 } else { frame.len().min(RAW_FRAME_BYTES) };
        record.push(
            direction,
            RawFrame {
                frame_tag: (tag as char).to_string(),
                byte_count: frame.len() as u64,
                data: frame[..keep].to_vec(),
                truncated: keep < frame.len(),
            }
            .into(),
        )
    }

    /// A whole frame from the client. `frame` includes the type byte and length.
    pub fn frontend(&mut self, frame: &[u8], record: &mut impl Record) -> Frontend {
        let tag = frame[0];
        let body = &frame[5..];
        if self.skipping {
            match tag {
                b'S' => self.skipping = false,
                b'X' => return Frontend::Terminate,
                _ => return Frontend::Drop,
            }
        }
        match tag {
            b'Q' => {
                // A simple query drops the unnamed statement and portal.
                self.statements.remove("");
                self.portals.remove("");
                let sql = Body::new(body).cstr().map(text).unwrap_or_default();
                if let Some(refusal) = self.encoding_refusal() {
                    let shown = self.recordable(sql);
                    let seq = Self::push(
                        record,
                        Statement { sql: shown, statement_name: None, portal: None, params: Vec::new() }.into(),
                    );
                    Self::decided(seq, Self::refused_for("encoding", &refusal), record);
                    self.expected.push_back(Expect::Query { seq, started: Instant::now() });
                    return Frontend::Replace(refusal.query_frame());
                }
                // Under masking, a COPY TO STDOUT is planned first (its
                // columns asked of the catalog: nothing recorded yet).
                let copy = match self.plan_copy(&sql) {
                    Ok(copy) => copy,
                    Err(Some(refusal)) => {
                        let seq = Self::push(
                            record,
                            Statement {
                                sql: self.recordable(sql),
                                statement_name: None,
                                portal: None,
                                params: Vec::new(),
                            }
                            .into(),
                        );
                        Self::decided(seq, Self::refused_for("masking/copy", &refusal), record);
                        self.expected.push_back(Expect::Query { seq, started: Instant::now() });
                        return Frontend::Replace(refusal.query_frame());
                    }
                    Err(None) => return Frontend::Pause,
                };
                let gated = self.gate.as_mut().and_then(|g| g.check(&sql));
                let gated = self.reviewable(gated, &sql);
                if !matches!(gated, Some(Gated::Ask { .. })) {
                    // The frame is consumed: its COPY plan goes with it.
                    self.describing = None;
                    self.copy_pending = copy;
                }
                let statement = |sql: String, record: &mut _| {
                    Self::push(record, Statement { sql, statement_name: None, portal: None, params: Vec::new() }.into())
                };
                match gated {
                    None => {
                        let seq = statement(self.recordable(sql), record);
                        self.push_query(seq);
                    }
                    Some(Gated::Ask { rule }) => {
                        let shown = self.recordable(sql.clone());
                        let seq = statement(shown.clone(), record);
                        if let Some(gate) = &mut self.gate {
                            gate.asking(&sql, shown, seq, rule);
                        }
                        return Frontend::Pause;
                    }
                    Some(Gated::Decided { seq, decision, refusal }) => {
                        let seq = seq.unwrap_or_else(|| statement(self.recordable(sql), record));
                        Self::decided(seq, self.shown(decision), record);
                        self.push_query(seq);
                        if let Some(refusal) = refusal {
                            return Frontend::Replace(refusal.query_frame());
                        }
                    }
                }
            }
            b'P' => match parse_message(body) {
                Some((statement_name, sql, param_types)) => {
                    if let Some(refusal) = self.encoding_refusal() {
                        let shown = self.recordable(sql.to_string());
                        let seq = Self::push(record, Prepare { statement_name, sql: shown }.into());
                        Self::decided(seq, Self::refused_for("encoding", &refusal), record);
                        return self.refuse_in_batch(seq, &refusal);
                    }
                    // A COPY TO STDOUT is planned under masking, in this
                    // protocol too (asking the catalog first, or refused).
                    let copy = match self.plan_copy(&sql) {
                        Ok(copy) => copy,
                        Err(Some(refusal)) => {
                            let shown = self.recordable(sql.to_string());
                            let seq = Self::push(record, Prepare { statement_name, sql: shown }.into());
                            Self::decided(seq, Self::refused_for("masking/copy", &refusal), record);
                            return self.refuse_in_batch(seq, &refusal);
                        }
                        Err(None) => return Frontend::Pause,
                    };
                    let gated = self.gate.as_mut().and_then(|g| g.check(&sql));
                    let gated = self.reviewable(gated, &sql);
                    if !matches!(gated, Some(Gated::Ask { .. })) {
                        self.describing = None;
                    }
                    // What is recorded (and kept for the statement's Executes): masked.
                    let shown: Arc<str> =
                        if self.masker.is_some() { self.recordable(sql.to_string()).into() } else { sql.clone() };
                    let prepare = |record: &mut _| {
                        Self::push(
                            record,
                            Prepare { statement_name: statement_name.clone(), sql: shown.to_string() }.into(),
                        )
                    };
                    let (mut decided, mut once) = (None, None);
                    match gated {
                        None => {}
                        Some(Gated::Ask { rule }) => {
                            let seq = prepare(record);
                            if let Some(gate) = &mut self.gate {
                                gate.asking(&sql, shown.to_string(), seq, rule);
                            }
                            return Frontend::Pause;
                        }
                        Some(Gated::Decided { seq, decision, refusal }) => {
                            let seq = seq.unwrap_or_else(|| prepare(record));
                            let review_id = decision.review_id.clone();
                            Self::decided(seq, self.shown(decision), record);
                            if let Some(refusal) = refusal {
                                return self.refuse_in_batch(seq, &refusal);
                            }
                            decided = Some(seq);
                            once = review_id.map(|review_id| Arc::new(Once { review_id, ran: Default::default() }));
                        }
                    }
                    // A named statement is recorded when prepared; the
                    // unnamed one (prepared again for each execution by most
                    // drivers) with its Execute, or with its error if it fails.
                    let seq = decided.or_else(|| (!statement_name.is_empty()).then(|| prepare(record)));
                    let prepared = Prepared { sql: shown, param_types, columns: Vec::new(), once, copy };
                    self.expected.push_back(Expect::Parse {
                        seq,
                        time: Timestamp::now(),
                        name: statement_name,
                        prepared,
                    });
                }
                None => {
                    self.raw(tag, frame, Direction::ClientToTarget, record);
                }
            },
            b'B' => match self.bind(body) {
                Some((name, portal)) => self.expected.push_back(Expect::Bind { name, portal }),
                None => {
                    self.raw(tag, frame, Direction::ClientToTarget, record);
                }
            },
            b'D' => {
                let mut reader = Body::new(body);
                match (reader.take(1), reader.cstr()) {
                    (Some(b"S"), Some(name)) => self.expected.push_back(Expect::DescribeStatement { name: text(name) }),
                    (Some(_), Some(name)) => self.expected.push_back(Expect::DescribePortal { name: text(name) }),
                    _ => {
                        self.raw(tag, frame, Direction::ClientToTarget, record);
                    }
                }
            }
            b'E' => {
                let portal_name = Body::new(body).cstr().map(text).unwrap_or_default();
                let (sql, statement_name, params, columns, binary) = match self.portal(&portal_name) {
                    Some(portal) => (
                        portal.sql.to_string(),
                        portal.statement.clone(),
                        portal.params.clone(),
                        self.portal_columns(portal),
                        portal.result_formats.contains(&1),
                    ),
                    None => (String::new(), String::new(), Vec::new(), None, false),
                };
                // A COPY prepared under masking: its rows are masked as planned.
                let copy =
                    self.portal(&portal_name).and_then(|p| self.statement(&p.statement)).and_then(|p| p.copy.clone());
                // A statement approved to run once, run again: refused.
                let rerun = self.portal(&portal_name).and_then(|p| p.once.as_ref()).and_then(|once| {
                    once.ran.swap(true, std::sync::atomic::Ordering::Relaxed).then(|| once.review_id.clone())
                });
                let seq = record.push(
                    Direction::ClientToTarget,
                    Statement { sql, statement_name: Some(statement_name), portal: Some(portal_name.clone()), params }
                        .into(),
                );
                if let Some(review_id) = rerun
                    && let Some(gate) = &self.gate
                {
                    let (decision, refusal) = gate.ran_once(&review_id);
                    Self::decided(seq, decision, record);
                    return self.refuse_in_batch(seq, &refusal);
                }
                if let Some(copy) = copy {
                    self.copy_plans.push((seq, copy));
                }
                self.expected.push_back(Expect::Execute {
                    seq,
                    started: Instant::now(),
                    portal: portal_name,
                    columns,
                    binary,
                });
            }
            b'C' => {
                let mut reader = Body::new(body);
                if let (Some(kind), Some(target)) = (reader.take(1), reader.cstr()) {
                    let target = text(target);
                    if kind == b"S" {
                        self.statements.remove(&target);
                    } else {
                        self.portals.remove(&target);
                    }
                }
                self.expected.push_back(Expect::Close);
            }
            // The server ignores Sync while it receives COPY data.
            b'S' if self.copy_in.is_some() => {}
            b'S' => self.expected.push_back(Expect::Sync),
            b'H' => {}
            b'd' => {
                if let Some(copy) = &mut self.copy_in {
                    copy.data(body);
                }
            }
            b'c' | b'f' => {
                if let Some(copy) = self.copy_in.take() {
                    Self::copy_event(copy, Direction::ClientToTarget, record);
                }
            }
            b'X' => return Frontend::Terminate,
            b'F' => {
                // FunctionCall is not modelled: recorded raw, answered like a query.
                let seq = self.raw(tag, frame, Direction::ClientToTarget, record);
                self.expected.push_back(Expect::Query { seq, started: Instant::now() });
                // A call by OID says nothing rules could read, and returns
                // what masking cannot see into: refused under rules or masking.
                if let Some(gate) = &self.gate {
                    let (decision, refusal) = gate.function_call();
                    Self::decided(seq, decision, record);
                    return Frontend::Replace(refusal.query_frame());
                }
                if self.masker.is_some() {
                    let refusal = Refusal {
                        message: "Proctor refused a FunctionCall message: its result cannot be masked, and this session's values are masked".to_string(),
                        hint: "call the function in a query instead (SELECT f(...))".to_string(),
                    };
                    Self::decided(seq, Self::refused_for("masking/function_call_message", &refusal), record);
                    return Frontend::Replace(refusal.query_frame());
                }
            }
            _ => {
                self.raw(tag, frame, Direction::ClientToTarget, record);
            }
        }
        Frontend::Forward
    }

    fn push(record: &mut impl Record, body: proctor_schemas::EventBody) -> u64 {
        record.push(Direction::ClientToTarget, body)
    }

    /// A Parse (or Execute) refused by the rules: the target is sent the
    /// refusal instead, and the rest of the batch is dropped up to its Sync,
    /// as the target would skip it after an error.
    fn refuse_in_batch(&mut self, seq: u64, refusal: &Refusal) -> Frontend {
        // The query the target runs instead drops the unnamed statement and
        // portal there; so here.
        self.statements.remove("");
        self.portals.remove("");
        self.expected.push_back(Expect::Refused { seq });
        self.skipping = true;
        Frontend::Replace(refusal.query_frame())
    }

    /// Bind: the portal, and its statement with the parameters rendered as
    /// text, read in place.
    fn bind(&self, body: &[u8]) -> Option<(String, Portal)> {
        let mut reader = Body::new(body);
        let portal = text(reader.cstr()?);
        let statement = text(reader.cstr()?);
        let format_count = reader.i16()?.max(0) as usize;
        let formats = (0..format_count).map(|_| reader.i16()).collect::<Option<Vec<i16>>>()?;
        let (sql, types, once): (Arc<str>, &[u32], _) = match self.statement(&statement) {
            Some(prepared) => (prepared.sql.clone(), &prepared.param_types, prepared.once.clone()),
            None => (Arc::from(""), &[], None),
        };
        let count = reader.i16()?.max(0) as usize;
        let mut params = Vec::with_capacity(count);
        for i in 0..count {
            let len = reader.i32()?;
            if len < 0 {
                params.push(None);
                continue;
            }
            let value = reader.take(len as usize)?;
            let rendered = values::render(value, format_at(&formats, i), types.get(i).copied().unwrap_or(0));
            params.push(Some(self.recordable(rendered)));
        }
        let result_count = reader.i16()?.max(0) as usize;
        let result_formats = (0..result_count).map(|_| reader.i16()).collect::<Option<Vec<i16>>>()?;
        Some((portal, Portal { statement, sql, params, result_formats, once, columns: None }))
    }

    /// The start of a client frame too large to hold (COPY data).
    pub fn frontend_stream(&mut self, tag: u8, total: usize) {
        if tag == b'd'
            && let Some(copy) = &mut self.copy_in
        {
            copy.bytes += (total - 5) as u64;
        }
    }

    fn copy_event(copy: CopyState, direction: Direction, record: &mut impl Record) {
        record.push(
            direction,
            CopySummary {
                ref_seq: copy.ref_seq,
                format: if copy.binary { "binary" } else { "text" }.to_string(),
                row_count: copy.rows(),
                byte_count: copy.bytes,
                duration_ns: Some(copy.started.elapsed().as_nanos() as u64),
            }
            .into(),
        );
    }

    fn finish_result(&mut self, tag: Option<String>, record: &mut impl Record) {
        let result = std::mem::take(&mut self.result);
        // Every token masking wrote into the result's rows, sampled or not:
        // what a search by value finds.
        let (tokens, tokens_dropped) = result.masked.tokens();
        let row_count = tag
            .as_deref()
            .and_then(|t| t.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|_| result.rows == 0)
            .unwrap_or(result.rows);
        record.push(
            Direction::TargetToClient,
            StatementResult {
                ref_seq: self.current_statement(),
                command_tag: tag,
                // A column's name can be an alias the client typed.
                columns: result
                    .columns
                    .into_iter()
                    .map(|c| match &self.masker {
                        Some(m) => mask::parameter(m, &c.name).unwrap_or(c.name),
                        None => c.name,
                    })
                    .collect(),
                row_count,
                byte_count: result.bytes,
                duration_ns: self.started().map_or(0, |s| s.elapsed().as_nanos() as u64),
                sample_rows: result.sample,
                sample_truncated: result.sample_truncated,
                tokens,
                tokens_dropped,
            }
            .into(),
        );
        self.masking_applied(result.masked, record);
    }

    /// Records how many values each rule masked for the current statement.
    fn masking_applied(&self, counts: Counts, record: &mut impl Record) {
        if counts.is_empty() {
            return;
        }
        record.push(
            Direction::Gateway,
            proctor_schemas::MaskingApplied {
                masking_profile: self.masker.as_ref().map(|m| m.profile().name.clone()),
                ref_seq: self.current_statement(),
                masked: counts
                    .into_rules()
                    .into_iter()
                    .map(|(rule, count)| proctor_schemas::RuleCount { rule, count })
                    .collect(),
                // The tokens written into the statement are in its text, and
                // those written into its result in the result's `tokens`.
                ..Default::default()
            }
            .into(),
        );
    }

    /// Pops the answered extended-protocol request.
    fn pop_if(&mut self, answered: impl Fn(&Expect) -> bool) {
        self.take_if(answered);
    }

    fn take_if(&mut self, answered: impl Fn(&Expect) -> bool) -> Option<Expect> {
        if self.expected.front().is_some_and(answered) { self.expected.pop_front() } else { None }
    }

    fn sample_row(&mut self, body: &[u8]) {
        let mut reader = Body::new(body);
        let Some(count) = reader.i16() else { return };
        let mut row = Vec::with_capacity(count.max(0) as usize);
        let mut size = 0usize;
        for i in 0..count.max(0) as usize {
            // Stop rendering as soon as the row cannot fit the budget.
            if self.result.sample_bytes + size > self.limits.bytes {
                self.result.sample_truncated = true;
                return;
            }
            let Some(len) = reader.i32() else { return };
            if len < 0 {
                row.push(None);
                continue;
            }
            let Some(value) = reader.take(len as usize) else { return };
            let column = self.result.columns.get(i);
            let rendered = values::render(value, column.map_or(0, |c| c.format), column.map_or(0, |c| c.type_oid));
            size += rendered.len();
            row.push(Some(rendered));
        }
        if self.result.sample_bytes + size > self.limits.bytes {
            self.result.sample_truncated = true;
            return;
        }
        self.result.sample_bytes += size;
        self.result.sample.push(row);
    }

    /// A portal's result shape: from a Describe of the portal, else from a
    /// Describe of its statement with the Bind's result formats.
    fn portal_columns(&self, portal: &Portal) -> Option<Vec<Column>> {
        if let Some(columns) = &portal.columns {
            return Some(columns.clone());
        }
        let prepared = self.statement(&portal.statement).filter(|p| !p.columns.is_empty())?;
        let formats = &portal.result_formats;
        let format = |i: usize| match formats.len() {
            0 => 0,
            1 => formats[0],
            _ => formats.get(i).copied().unwrap_or(0),
        };
        Some(prepared.columns.iter().enumerate().map(|(i, c)| Column { format: format(i), ..c.clone() }).collect())
    }

    /// Takes the result's shape from the Execute being answered when no row
    /// description came with it: its portal's as the target has it now
    /// (Describes answered since the Execute was sent included), else as
    /// it was known when the Execute was sent.
    ///
    /// Under masking, rows asked for in binary whose shape nobody described
    /// cannot be read: their values are withheld (`row`: the first row, whose
    /// column count they take).
    fn adopt_columns(&mut self, row: Option<&[u8]>) {
        if !self.result.columns.is_empty() {
            return;
        }
        if let Some(Expect::Execute { portal, columns, binary, .. }) = self.expected.front() {
            let now = self.portals.get(portal).and_then(|p| self.portal_columns(p));
            if let Some(columns) = now.or_else(|| columns.clone()) {
                self.result.columns = columns;
            } else if *binary
                && self.masker.is_some()
                && let Some(count) = row.and_then(|r| r.get(..2)).map(|c| i16::from_be_bytes([c[0], c[1]]).max(0))
            {
                let unplaced = Column { type_oid: mask::UNPLACED, format: 1, ..Column::default() };
                self.result.columns = vec![unplaced; count as usize];
            }
        }
    }

    /// A whole frame from the target: forwarded, masked, or kept from the
    /// client (the end of a refusal sent in place of a Parse).
    pub fn backend(&mut self, frame: &[u8], record: &mut impl Record) -> Backend {
        let tag = frame[0];
        let body = &frame[5..];
        if matches!(tag, b'D' | b'C') && self.result.rows == 0 {
            self.adopt_columns((tag == b'D').then_some(body));
        }
        let mut masked = None;
        match tag {
            b'D' => {
                if let Some(masker) = &self.masker {
                    masked = mask::data_row(body, &self.result.columns, masker, &mut self.result.masked);
                }
                let body = masked.as_deref().map_or(body, |m| &m[5..]);
                self.result.rows += 1;
                self.result.bytes += body.len() as u64;
                if self.result.sample.len() < self.limits.rows && !self.result.sample_truncated {
                    self.sample_row(body);
                } else if self.limits.rows > 0 {
                    self.result.sample_truncated = true;
                }
            }
            b'T' => {
                let planned = self
                    .described
                    .as_ref()
                    .filter(|(bytes, generation, _)| *generation == self.tables_generation && **bytes == *body)
                    .map(|(_, _, columns)| columns.clone());
                let fresh = planned.is_none();
                let Some(mut columns) = planned.or_else(|| row_description(body)) else {
                    self.raw(tag, frame, Direction::TargetToClient, record);
                    return Backend::Forward;
                };
                if self.masker.as_ref().is_some_and(|m| m.has_column_rules()) {
                    let mut unknown: Vec<u32> = columns
                        .iter()
                        .map(|c| c.table_oid)
                        .filter(|o| *o != 0 && self.asked_tables.get(o).is_none_or(|at| at.elapsed() >= TABLE_TTL))
                        .collect();
                    if !unknown.is_empty() {
                        unknown.sort_unstable();
                        unknown.dedup();
                        let now = std::time::Instant::now();
                        self.asked_tables.extend(unknown.iter().map(|o| (*o, now)));
                        self.looking_up = Some(unknown);
                        return Backend::Pause;
                    }
                }
                if fresh {
                    let ruled = self.masker.as_ref().is_some_and(|m| m.has_column_rules());
                    for column in &mut columns {
                        let table = self.tables.get(&column.table_oid);
                        column.name_source(table.map(|t| &**t));
                        column.unplaced = ruled && column.table_oid != 0 && table.is_none();
                    }
                    if let Some(masker) = &self.masker {
                        mask::plan(&mut columns, masker);
                    }
                    match &mut self.described {
                        Some((bytes, generation, planned)) => {
                            bytes.clear();
                            bytes.extend_from_slice(body);
                            *generation = self.tables_generation;
                            planned.clone_from(&columns);
                        }
                        empty => *empty = Some((body.to_vec(), self.tables_generation, columns.clone())),
                    }
                }
                // A row description answering a Describe of a statement is
                // kept with the statement; one answering a Describe of a
                // portal, a query or an Execute describes the coming result.
                match self.expected.front() {
                    Some(Expect::DescribeStatement { name }) => {
                        if let Some(prepared) = self.statements.get_mut(name) {
                            prepared.columns = columns;
                        }
                    }
                    Some(Expect::DescribePortal { name }) => {
                        // A portal not known here (a SQL cursor) keeps none:
                        // its rows are then of unknown columns.
                        if let Some(portal) = self.portals.get_mut(name) {
                            portal.columns = Some(columns);
                        }
                    }
                    _ => self.result.columns = columns,
                }
                self.pop_if(|e| matches!(e, Expect::DescribeStatement { .. } | Expect::DescribePortal { .. }));
            }
            b'C' => {
                let tag = Body::new(body).cstr().map(text);
                self.finish_result(tag, record);
                self.pop_if(|e| matches!(e, Expect::Execute { .. }));
            }
            b'I' | b's' => {
                self.finish_result(None, record);
                self.pop_if(|e| matches!(e, Expect::Execute { .. }));
            }
            b'E' => {
                if let Some(masker) = &self.masker {
                    masked = mask::fields(tag, body, masker, &mut Counts::new());
                }
                let f = fields(masked.as_deref().map_or(body, |m| &m[5..]));
                if matches!(f.severity.as_deref(), Some("FATAL" | "PANIC")) {
                    self.target_fatal = true;
                }
                // An unnamed statement that fails to prepare was not recorded
                // yet: record what was asked, with the time it was asked.
                if let Some(Expect::Parse { seq: None, time, name, prepared }) = self.expected.front() {
                    let seq = record.push_at(
                        *time,
                        Direction::ClientToTarget,
                        Prepare { statement_name: name.to_string(), sql: prepared.sql.to_string() }.into(),
                    );
                    if let Some(Expect::Parse { seq: slot, .. }) = self.expected.front_mut() {
                        *slot = Some(seq);
                    }
                }
                // Rows already sent before the error: their result is
                // recorded (no command tag: it did not complete), with what
                // masking did to them and the tokens they carried.
                if self.result.rows > 0 || !self.result.masked.is_empty() {
                    self.finish_result(None, record);
                }
                let ref_seq = self.current_statement();
                record.push(
                    Direction::TargetToClient,
                    ErrorReport {
                        ref_seq,
                        severity: f.severity,
                        sqlstate: f.code,
                        message: f.message,
                        detail: f.detail,
                    }
                    .into(),
                );
                self.result = ResultState::default();
                self.copy_in = None;
                self.copy_out = None;
                // After an error in the extended protocol the server skips
                // everything up to the next Sync.
                // (queries and function calls included).
                if !matches!(self.expected.front(), Some(Expect::Query { .. } | Expect::Refused { .. })) {
                    while let Some(front) = self.expected.front() {
                        if matches!(front, Expect::Sync) {
                            break;
                        }
                        self.expected.pop_front();
                    }
                    // The Sync it skips to is not sent yet: what the client
                    // sends until then is skipped by the server, so it is
                    // dropped here (a refusal in its place would be skipped
                    // too, and its answer never come).
                    if self.expected.is_empty() {
                        self.skipping = true;
                    }
                }
            }
            b'Z' => {
                // The refusal sent in place of a Parse is over; the client
                // gets its ReadyForQuery for its own Sync.
                if let Some(Expect::Refused { .. }) = self.expected.front() {
                    self.expected.pop_front();
                    return Backend::Drop;
                }
                // Outside a transaction no named portal survives.
                if body.first() == Some(&b'I') {
                    self.portals.clear();
                }
                // Ends a simple query, a function call or an extended batch.
                while let Some(front) = self.expected.pop_front() {
                    if matches!(front, Expect::Sync | Expect::Query { .. }) {
                        break;
                    }
                }
                if self.expected.is_empty() {
                    // Nothing in flight: a plan not taken (its COPY failed
                    // before starting) is of no use any more.
                    self.copy_plans.clear();
                }
                self.result = ResultState::default();
            }
            b'1' => {
                if let Some(Expect::Parse { name, prepared, .. }) = self.take_if(|e| matches!(e, Expect::Parse { .. }))
                {
                    self.statements.insert(name, prepared);
                }
            }
            b'2' => {
                if let Some(Expect::Bind { name, portal }) = self.take_if(|e| matches!(e, Expect::Bind { .. })) {
                    self.portals.insert(name, portal);
                }
            }
            b'3' => self.pop_if(|e| matches!(e, Expect::Close)),
            b'n' => self.pop_if(|e| matches!(e, Expect::DescribeStatement { .. } | Expect::DescribePortal { .. })),
            b't' => {
                if let Some(Expect::DescribeStatement { name }) = self.expected.front() {
                    let mut reader = Body::new(body);
                    let count = reader.i16().unwrap_or(0).max(0) as usize;
                    let types: Vec<u32> = (0..count).filter_map(|_| reader.i32().map(|t| t as u32)).collect();
                    if let Some(prepared) = self.statements.get_mut(name) {
                        prepared.param_types = types;
                    }
                }
            }
            b'G' | b'H' => {
                let binary = body.first() == Some(&1);
                let copy = CopyState::new(self.current_statement(), binary);
                if tag == b'G' {
                    // Syncs the client sent after this Execute reach the
                    // server during COPY, which ignores them.
                    if matches!(self.expected.front(), Some(Expect::Execute { .. })) {
                        let mut rest = self.expected.split_off(1);
                        rest.retain(|e| !matches!(e, Expect::Sync));
                        self.expected.extend(rest);
                    }
                    self.copy_in = Some(copy);
                } else {
                    self.copy_out = Some(copy);
                    // Unplanned (no COPY was recognised): the detectors still
                    // read every field, as text.
                    let planned = self.current_statement().and_then(|seq| {
                        let at = self.copy_plans.iter().position(|(s, _)| *s == seq)?;
                        Some(self.copy_plans.swap_remove(at).1)
                    });
                    // A plan whose columns are not the COPY's (the catalog
                    // read another table of that name, or generated columns
                    // counted differently) is not trusted: its values are
                    // then of unknown columns, withheld under column rules.
                    let sent = body.get(1..3).map_or(-1, |n| i16::from_be_bytes([n[0], n[1]]));
                    let planned = planned.map(|mut plan| {
                        if plan.columns.as_ref().is_some_and(|c| c.len() as i64 != i64::from(sent)) {
                            plan.columns = Some(Vec::new());
                        }
                        plan
                    });
                    self.copy_mask = planned.or_else(|| {
                        self.masker.as_ref().map(|_| CopyMask {
                            format: CopyFormat {
                                csv: false,
                                delimiter: b'\t',
                                null: "\\N".to_string(),
                                quote: b'"',
                                header: false,
                            },
                            columns: None,
                            header: false,
                        })
                    });
                }
            }
            b'd' => {
                if let (Some(masker), Some(plan)) = (&self.masker, &mut self.copy_mask) {
                    if plan.header {
                        plan.header = false;
                    } else if let Some(row) =
                        copyout::row(body, &plan.format, plan.columns.as_deref(), masker, &mut self.result.masked)
                    {
                        let mut frame = Vec::with_capacity(row.len() + 5);
                        frame.push(b'd');
                        frame.extend_from_slice(&((row.len() + 4) as u32).to_be_bytes());
                        frame.extend_from_slice(&row);
                        masked = Some(frame);
                    }
                }
                if let Some(copy) = &mut self.copy_out {
                    copy.data(masked.as_deref().map_or(body, |m| &m[5..]));
                }
            }
            b'c' => {
                if let Some(copy) = self.copy_out.take() {
                    Self::copy_event(copy, Direction::TargetToClient, record);
                }
            }
            b'N' => {
                if let Some(masker) = &self.masker {
                    masked = mask::fields(tag, body, masker, &mut Counts::new());
                }
                let f = fields(masked.as_deref().map_or(body, |m| &m[5..]));
                record.push(
                    Direction::TargetToClient,
                    Notice { severity: f.severity, sqlstate: f.code, message: f.message, detail: f.detail }.into(),
                );
            }
            b'A' => {
                if let Some(masker) = &self.masker {
                    masked = mask::notification(body, masker, &mut Counts::new());
                }
                let mut reader = Body::new(masked.as_deref().map_or(body, |m| &m[5..]));
                let backend_pid = reader.i32().unwrap_or(0);
                let channel = reader.cstr().map(text).unwrap_or_default();
                let payload = reader.cstr().map(text).unwrap_or_default();
                record.push(Direction::TargetToClient, Notification { backend_pid, channel, payload }.into());
            }
            b'S' => {
                let mut reader = Body::new(body);
                let parameter = reader.cstr().map(text).unwrap_or_default();
                let mut value = reader.cstr().map(text).unwrap_or_default();
                self.parameter(&parameter, &value);
                // A value the client set (application_name) can hold anything.
                if let Some(shown) = self.masker.as_ref().and_then(|m| mask::parameter(m, &value)) {
                    let mut out = bytes::BytesMut::new();
                    super::messages::parameter_status(&parameter, &shown, &mut out);
                    masked = Some(out.to_vec());
                    value = shown;
                }
                record.push(Direction::TargetToClient, ParameterStatus { parameter, value }.into());
            }
            b'V' => {
                // FunctionCallResponse: the result of a FunctionCall.
                self.result.bytes += body.len() as u64;
                self.finish_result(Some("FUNCTION CALL".to_string()), record);
            }
            _ => {
                self.raw(tag, frame, Direction::TargetToClient, record);
            }
        }
        match masked {
            Some(frame) => Backend::Replace(frame),
            None => Backend::Forward,
        }
    }

    /// The start of a target frame too large to hold (a huge row, COPY data).
    pub fn backend_stream(&mut self, tag: u8, total: usize) {
        let body = (total - 5) as u64;
        match tag {
            b'D' => {
                self.result.rows += 1;
                self.result.bytes += body;
                if self.limits.rows > 0 {
                    self.result.sample_truncated = true;
                }
            }
            b'd' => {
                if let Some(copy) = &mut self.copy_out {
                    copy.bytes += body;
                }
            }
            _ => {}
        }
    }

    /// Whether a large client frame of this type may be streamed through in
    /// pieces (COPY data only).
    pub fn frontend_streamable(tag: u8) -> bool {
        tag == b'd'
    }

    /// Whether a large target frame of this type may be streamed through in
    /// pieces (rows and COPY data; not when masked: a value is masked whole).
    pub fn backend_streamable(tag: u8, masking: bool) -> bool {
        matches!(tag, b'D' | b'd') && !masking
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};
    use proctor_schemas::EventBody;

    use super::*;
    use proctor_gateway_core::recording::RecordedEvents;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn cstr(s: &str) -> Vec<u8> {
        let mut out = s.as_bytes().to_vec();
        out.push(0);
        out
    }

    fn row_description(columns: &[(&str, u32)]) -> Vec<u8> {
        let mut body = BytesMut::new();
        body.put_i16(columns.len() as i16);
        for (name, oid) in columns {
            body.put_slice(&cstr(name));
            body.put_i32(0);
            body.put_i16(0);
            body.put_u32(*oid);
            body.put_i16(-1);
            body.put_i32(-1);
            body.put_i16(0);
        }
        frame(b'T', &body)
    }

    fn data_row(values: &[Option<&str>]) -> Vec<u8> {
        let mut body = BytesMut::new();
        body.put_i16(values.len() as i16);
        for value in values {
            match value {
                None => body.put_i32(-1),
                Some(v) => {
                    body.put_i32(v.len() as i32);
                    body.put_slice(v.as_bytes());
                }
            }
        }
        frame(b'D', &body)
    }

    fn error(code: &str, message: &str) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend(b"SERROR\0VERROR\0C");
        body.extend(cstr(code));
        body.push(b'M');
        body.extend(cstr(message));
        body.push(0);
        frame(b'E', &body)
    }

    /// A masker with the profile `config` (TOML).
    fn masker_of(config: &str) -> proctor_gateway_core::masking::Masker {
        use proctor_gateway_core::masking::{Masker, MaskingKey, Profile, ProfileConfig};
        let config: ProfileConfig = toml::from_str(config).unwrap();
        Masker::new(Profile::new("p", &config).unwrap(), MaskingKey::new(b"k".to_vec()))
    }

    struct Script {
        protocol: Protocol,
        events: RecordedEvents,
    }

    impl Script {
        fn new(rows: usize) -> Script {
            Script { protocol: Protocol::new(SampleLimits { rows, bytes: 1 << 16 }), events: RecordedEvents::default() }
        }

        fn client(&mut self, frames: &[Vec<u8>]) {
            for f in frames {
                self.protocol.frontend(f, &mut self.events);
            }
        }

        fn server(&mut self, frames: &[Vec<u8>]) {
            for f in frames {
                self.protocol.backend(f, &mut self.events);
            }
        }

        fn bodies(&self) -> Vec<&EventBody> {
            self.events.events.iter().map(|(_, b)| b).collect()
        }
    }

    #[test]
    fn a_simple_query_with_two_statements_gives_one_statement_and_two_results() {
        let mut s = Script::new(2);
        s.client(&[frame(b'Q', &cstr("select 1 as a; select 2"))]);
        s.server(&[
            row_description(&[("a", 23)]),
            data_row(&[Some("1")]),
            frame(b'C', &cstr("SELECT 1")),
            row_description(&[("?column?", 23)]),
            data_row(&[Some("2")]),
            frame(b'C', &cstr("SELECT 1")),
            frame(b'Z', b"I"),
        ]);
        let bodies = s.bodies();
        assert!(matches!(bodies[0], EventBody::Statement(st) if st.sql == "select 1 as a; select 2"));
        for body in &bodies[1..] {
            let EventBody::Result(r) = body else { panic!("{body:?}") };
            assert_eq!((r.ref_seq, r.row_count, r.command_tag.as_deref()), (Some(0), 1, Some("SELECT 1")));
        }
        let EventBody::Result(first) = bodies[1] else { unreachable!() };
        assert_eq!(first.columns, vec!["a"]);
        assert_eq!(first.sample_rows, vec![vec![Some("1".to_string())]]);
        assert!(s.protocol.expected.is_empty());
    }

    /// Rows sent before an error reached the client: their result is
    /// recorded before the error, without a command tag.
    #[test]
    fn rows_sent_before_an_error_are_a_result_without_a_tag() {
        let mut s = Script::new(2);
        s.client(&[frame(b'Q', &cstr("select 10 / (3 - g) from generate_series(1, 5) g"))]);
        s.server(&[
            row_description(&[("?column?", 23)]),
            data_row(&[Some("5")]),
            data_row(&[Some("10")]),
            error("22012", "division by zero"),
            frame(b'Z', b"I"),
        ]);
        let bodies = s.bodies();
        let EventBody::Result(result) = bodies[1] else { panic!("{bodies:?}") };
        assert_eq!((result.ref_seq, result.row_count, result.command_tag.as_deref()), (Some(0), 2, None));
        assert!(
            matches!(bodies[2], EventBody::Error(e) if e.ref_seq == Some(0) && e.sqlstate.as_deref() == Some("22012"))
        );
        assert_eq!(bodies.len(), 3);
    }

    #[test]
    fn extended_protocol_records_sql_statement_name_and_rendered_parameters() {
        let mut s = Script::new(0);
        let mut parse = cstr("s1");
        parse.extend(cstr("select $1::int + $2"));
        parse.extend([0, 2, 0, 0, 0, 23, 0, 0, 0, 25]);
        let mut bind = cstr("");
        bind.extend(cstr("s1"));
        bind.extend([0, 2, 0, 1, 0, 0]); // two formats: binary, text
        bind.extend([0, 2]); // two params
        bind.extend(4i32.to_be_bytes());
        bind.extend(42i32.to_be_bytes());
        bind.extend((-1i32).to_be_bytes()); // NULL
        bind.extend([0, 0]);
        let mut execute = cstr("");
        execute.extend(0i32.to_be_bytes());
        s.client(&[frame(b'P', &parse), frame(b'B', &bind), frame(b'E', &execute), frame(b'S', b"")]);
        s.server(&[
            frame(b'1', b""),
            frame(b'2', b""),
            data_row(&[Some("43")]),
            frame(b'C', &cstr("SELECT 1")),
            frame(b'Z', b"I"),
        ]);
        let bodies = s.bodies();
        assert!(
            matches!(bodies[0], EventBody::Prepare(p) if p.statement_name == "s1" && p.sql == "select $1::int + $2")
        );
        let EventBody::Statement(st) = bodies[1] else { panic!() };
        assert_eq!(st.sql, "select $1::int + $2");
        assert_eq!(st.statement_name.as_deref(), Some("s1"));
        assert_eq!(st.portal.as_deref(), Some(""));
        assert_eq!(st.params, vec![Some("42".to_string()), None]);
        assert!(matches!(bodies[2], EventBody::Result(r) if r.ref_seq == Some(1) && r.row_count == 1));
        assert!(s.protocol.expected.is_empty());
    }

    #[test]
    fn an_error_in_a_pipeline_skips_to_sync_and_names_the_failed_statement() {
        let mut s = Script::new(0);
        let mut execute = cstr("");
        execute.extend(0i32.to_be_bytes());
        let mut parse_a = cstr("");
        parse_a.extend(cstr("select 1/0"));
        parse_a.extend([0, 0]);
        let mut parse_b = cstr("");
        parse_b.extend(cstr("select 2"));
        parse_b.extend([0, 0]);
        let mut bind = cstr("");
        bind.extend(cstr(""));
        bind.extend([0, 0, 0, 0, 0, 0]);
        s.client(&[
            frame(b'P', &parse_a),
            frame(b'B', &bind),
            frame(b'E', &execute),
            frame(b'P', &parse_b),
            frame(b'B', &bind),
            frame(b'E', &execute),
            frame(b'S', b""),
        ]);
        s.server(&[frame(b'1', b""), frame(b'2', b""), error("22012", "division by zero"), frame(b'Z', b"I")]);
        let error = s
            .bodies()
            .into_iter()
            .find_map(|b| if let EventBody::Error(e) = b { Some(e.clone()) } else { None })
            .unwrap();
        assert_eq!(error.sqlstate.as_deref(), Some("22012"));
        let failed = &s.bodies()[error.ref_seq.unwrap() as usize];
        assert!(
            matches!(failed, EventBody::Statement(st) if st.sql == "select 1/0"),
            "the first Execute failed: {failed:?}"
        );
        assert!(s.protocol.expected.is_empty(), "{:?}", s.protocol.expected);
    }

    #[test]
    fn an_unnamed_statement_that_fails_to_prepare_is_recorded_with_its_error() {
        let mut s = Script::new(0);
        let mut parse = cstr("");
        parse.extend(cstr("selec 1"));
        parse.extend([0, 0]);
        s.client(&[frame(b'P', &parse), frame(b'S', b"")]);
        assert!(s.bodies().is_empty(), "an unnamed Parse alone is recorded with its Execute");
        s.server(&[error("42601", "syntax error at or near \"selec\""), frame(b'Z', b"I")]);
        let bodies = s.bodies();
        assert!(matches!(bodies[0], EventBody::Prepare(p) if p.sql == "selec 1" && p.statement_name.is_empty()));
        assert!(
            matches!(bodies[1], EventBody::Error(e) if e.ref_seq == Some(0) && e.sqlstate.as_deref() == Some("42601"))
        );
        assert!(s.protocol.expected.is_empty());
    }

    #[test]
    fn copy_in_and_out_are_summarised() {
        let mut s = Script::new(0);
        s.client(&[frame(b'Q', &cstr("copy t from stdin"))]);
        s.server(&[frame(b'G', &[0, 0, 1, 0, 0])]);
        s.client(&[frame(b'd', b"1\n2\n3\n"), frame(b'c', b"")]);
        s.server(&[frame(b'C', &cstr("COPY 3")), frame(b'Z', b"I")]);
        s.client(&[frame(b'Q', &cstr("copy t to stdout"))]);
        s.server(&[
            frame(b'H', &[0, 0, 1, 0, 0]),
            frame(b'd', b"1\n"),
            frame(b'd', b"2\n"),
            frame(b'c', b""),
            frame(b'C', &cstr("COPY 2")),
            frame(b'Z', b"I"),
        ]);
        let copies: Vec<(u64, Option<u64>)> = s
            .bodies()
            .into_iter()
            .filter_map(|b| if let EventBody::Copy(c) = b { Some((c.byte_count, c.row_count)) } else { None })
            .collect();
        assert_eq!(copies, vec![(6, Some(3)), (4, Some(2))]);
        let results: Vec<u64> = s
            .bodies()
            .into_iter()
            .filter_map(|b| if let EventBody::Result(r) = b { Some(r.row_count) } else { None })
            .collect();
        assert_eq!(results, vec![3, 2]);
    }

    #[test]
    fn function_calls_and_unknown_frames_are_recorded_raw() {
        let mut s = Script::new(0);
        s.client(&[frame(b'F', &[0, 0, 4, 0xd2, 0, 0, 0, 0, 0, 0])]);
        s.server(&[frame(b'V', &[0, 0, 0, 1, b'x']), frame(b'Z', b"I")]);
        s.client(&[frame(b'?', b"mystery")]);
        let bodies = s.bodies();
        assert!(matches!(bodies[0], EventBody::RawFrame(r) if r.frame_tag == "F" && r.byte_count == 15));
        assert!(matches!(bodies[1], EventBody::Result(r) if r.ref_seq == Some(0)));
        assert!(matches!(bodies[2], EventBody::RawFrame(r) if r.frame_tag == "?"));
    }

    #[test]
    fn samples_stop_at_their_row_limit() {
        let mut s = Script::new(2);
        s.client(&[frame(b'Q', &cstr("select x from t"))]);
        s.server(&[
            row_description(&[("x", 25)]),
            data_row(&[Some("a")]),
            data_row(&[None]),
            data_row(&[Some("c")]),
            frame(b'C', &cstr("SELECT 3")),
        ]);
        let EventBody::Result(r) = s.bodies()[1] else { panic!() };
        assert_eq!(r.row_count, 3);
        assert_eq!(r.sample_rows, vec![vec![Some("a".to_string())], vec![None]]);
        assert!(r.sample_truncated);
    }

    fn parse(name: &str, sql: &str) -> Vec<u8> {
        let mut body = cstr(name);
        body.extend(cstr(sql));
        body.extend([0, 0]);
        frame(b'P', &body)
    }

    fn bind(portal: &str, statement: &str) -> Vec<u8> {
        let mut body = cstr(portal);
        body.extend(cstr(statement));
        body.extend([0, 0, 0, 0, 0, 0]);
        frame(b'B', &body)
    }

    fn execute(portal: &str) -> Vec<u8> {
        let mut body = cstr(portal);
        body.extend(0i32.to_be_bytes());
        frame(b'E', &body)
    }

    fn statements(s: &Script) -> Vec<String> {
        s.bodies()
            .into_iter()
            .filter_map(|b| if let EventBody::Statement(st) = b { Some(st.sql.clone()) } else { None })
            .collect()
    }

    #[test]
    fn a_rejected_parse_keeps_the_statement_the_server_kept() {
        let mut s = Script::new(0);
        s.client(&[parse("s1", "select 1"), frame(b'S', b"")]);
        s.server(&[frame(b'1', b""), frame(b'Z', b"I")]);
        s.client(&[parse("s1", "select 2"), frame(b'S', b"")]);
        s.server(&[error("42P05", "prepared statement \"s1\" already exists"), frame(b'Z', b"I")]);
        s.client(&[bind("", "s1"), execute(""), frame(b'S', b"")]);
        s.server(&[frame(b'2', b""), frame(b'C', &cstr("SELECT 1")), frame(b'Z', b"I")]);
        assert_eq!(statements(&s), vec!["select 1"], "the server still runs the first s1");
        assert!(s.protocol.expected.is_empty(), "{:?}", s.protocol.expected);
    }

    #[test]
    fn a_failed_parse_skips_a_pipelined_query_up_to_sync() {
        let mut s = Script::new(0);
        s.client(&[parse("", "selec 1"), frame(b'Q', &cstr("select 2")), frame(b'S', b"")]);
        s.server(&[error("42601", "syntax error"), frame(b'Z', b"I")]);
        assert!(s.protocol.expected.is_empty(), "{:?}", s.protocol.expected);
        // The next query's answers are matched to it, not to the skipped one.
        s.client(&[frame(b'Q', &cstr("select 3"))]);
        s.server(&[frame(b'C', &cstr("SELECT 0")), frame(b'Z', b"I")]);
        let result = s
            .bodies()
            .into_iter()
            .find_map(|b| if let EventBody::Result(r) = b { Some(r.ref_seq) } else { None })
            .unwrap();
        let answered = &s.bodies()[result.unwrap() as usize];
        assert!(matches!(answered, EventBody::Statement(st) if st.sql == "select 3"), "{answered:?}");
    }

    /// A session under rules `ci`: `drop` blocked, `truncate` held.
    fn gated() -> Protocol {
        use super::super::gate::StatementPolicy;
        use super::super::rules::{RuleSet, RuleSetConfig};
        use proctor_gateway_core::control::{HoldFuture, HoldRequest, Holds};
        /// The control plane's side is answered by each test itself.
        struct Unasked;
        impl Holds for Unasked {
            fn hold(&self, _: HoldRequest) -> HoldFuture<'_> {
                Box::pin(std::future::ready(Err("not asked in this test".to_string())))
            }
        }
        let config = RuleSetConfig { block: vec!["drop".into()], hold: vec!["truncate".into()], approval_group: None };
        let policy = std::sync::Arc::new(StatementPolicy::new([RuleSet::new("ci", &config).unwrap()]));
        policy.set_holds(std::sync::Arc::new(Unasked));
        let rules = policy.rules("ci").unwrap();
        let gate = Gate::new(policy, rules, Some("g_1".into()), "db".into(), proctor_schemas::SessionId::new());
        Protocol::new(SampleLimits::default()).with_gate(Some(gate))
    }

    #[test]
    fn a_held_statement_waits_then_an_approved_one_is_executed_once() {
        let mut p = gated();
        let mut events = RecordedEvents::default();
        let held = parse("s1", "truncate t");
        assert_eq!(p.frontend(&held, &mut events), Frontend::Pause, "the control plane is asked first");
        let Some(Question::Hold(_, request)) = p.question() else { panic!("a question for the control plane") };
        assert_eq!(
            (request.text.as_str(), request.rule.as_str(), request.grant_id.as_str()),
            ("truncate t", "ci/truncate", "g_1")
        );
        assert!(p.question().is_none(), "asked once");
        p.answer(Answer::Hold(Ok(proctor_gateway_core::control::HoldOutcome::Run {
            review_id: "r_1".into(),
            approved_by: "dan".into(),
        })));
        assert_eq!(p.frontend(&held, &mut events), Frontend::Forward, "read again: approved, it passes");
        assert_eq!(p.frontend(&bind("", "s1"), &mut events), Frontend::Forward);
        assert_eq!(p.frontend(&execute(""), &mut events), Frontend::Forward);
        assert_eq!(p.frontend(&frame(b'S', b""), &mut events), Frontend::Forward);
        for f in [frame(b'1', b""), frame(b'2', b""), frame(b'C', &cstr("TRUNCATE TABLE")), frame(b'Z', b"I")] {
            assert_eq!(p.backend(&f, &mut events), Backend::Forward);
        }
        // Executing the prepared statement again is refused: approved once.
        assert_eq!(p.frontend(&bind("", "s1"), &mut events), Frontend::Forward);
        assert!(matches!(p.frontend(&execute(""), &mut events), Frontend::Replace(_)));
        assert_eq!(p.frontend(&frame(b'S', b""), &mut events), Frontend::Forward);
        let decisions: Vec<_> = events
            .events
            .iter()
            .filter_map(|(_, b)| if let EventBody::PolicyDecision(d) = b { Some(d) } else { None })
            .collect();
        assert_eq!(decisions.len(), 2, "{decisions:?}");
        assert_eq!(decisions[0].outcome, proctor_schemas::PolicyOutcome::Allow);
        assert_eq!(decisions[0].review_id.as_deref(), Some("r_1"));
        assert_eq!(decisions[1].outcome, proctor_schemas::PolicyOutcome::Block);
    }

    #[test]
    fn masking_refuses_function_calls_and_masks_rows_and_recorded_statements() {
        let masker = masker_of(r#"detectors = ["all"]"#);
        let mut p = Protocol::new(SampleLimits { rows: 10, bytes: 1 << 16 }).with_masker(Some(Arc::new(masker)));
        let mut events = RecordedEvents::default();
        let call = frame(b'F', b"\0\0\0\x01\0\0\0\x01\0\0\0\x0fada@example.com");
        assert!(matches!(p.frontend(&call, &mut events), Frontend::Replace(_)));
        let recorded =
            events.events.iter().find_map(|(_, b)| if let EventBody::RawFrame(f) = b { Some(f) } else { None });
        let recorded = recorded.expect("the call is recorded");
        assert!(recorded.data.is_empty() && recorded.byte_count == call.len() as u64, "its bytes are not kept");
        p.backend(&error("42501", "refused"), &mut events);
        p.backend(&frame(b'Z', b"I"), &mut events);
        let sql = "select email from customers where email = 'ada@example.com'";
        assert_eq!(p.frontend(&frame(b'Q', &cstr(sql)), &mut events), Frontend::Forward);
        p.backend(&row_description(&[("email", 25)]), &mut events);
        let Backend::Replace(row) = p.backend(&data_row(&[Some("ada@example.com")]), &mut events) else {
            panic!("the row is masked")
        };
        assert!(String::from_utf8_lossy(&row).contains("[email:masked]"));
        p.backend(&frame(b'C', &cstr("SELECT 1")), &mut events);
        let recorded = format!("{:?}", events.events);
        assert!(!recorded.contains("ada@example.com"), "{recorded}");
        assert!(recorded.contains("MaskingApplied"), "{recorded}");
    }

    #[test]
    fn after_an_extended_error_with_no_sync_yet_the_client_is_skipped_like_the_server_does() {
        let mut p = gated();
        let mut events = RecordedEvents::default();
        assert_eq!(p.frontend(&parse("", "select 1"), &mut events), Frontend::Forward);
        assert_eq!(p.frontend(&frame(b'H', b""), &mut events), Frontend::Forward);
        p.backend(&error("42601", "syntax error"), &mut events);
        // The server now skips up to a Sync: a refused Parse is not replaced
        // (its refusal would be skipped and its answer never come).
        assert_eq!(p.frontend(&parse("", "drop table t"), &mut events), Frontend::Drop);
        assert_eq!(p.frontend(&frame(b'S', b""), &mut events), Frontend::Forward);
        assert_eq!(
            p.backend(&frame(b'Z', b"I"), &mut events),
            Backend::Forward,
            "the Sync's answer reaches the client"
        );
        assert!(p.expected.is_empty(), "{:?}", p.expected);
    }

    #[test]
    fn an_approval_to_run_once_travels_with_the_portal() {
        let mut p = gated();
        let mut events = RecordedEvents::default();
        let held = parse("s1", "truncate t");
        assert_eq!(p.frontend(&held, &mut events), Frontend::Pause);
        let _ = p.question();
        p.answer(Answer::Hold(Ok(proctor_gateway_core::control::HoldOutcome::Run {
            review_id: "r_1".into(),
            approved_by: "dan".into(),
        })));
        assert_eq!(p.frontend(&held, &mut events), Frontend::Forward);
        for f in [bind("p1", "s1"), bind("p2", "s1"), execute("p1")] {
            assert_eq!(p.frontend(&f, &mut events), Frontend::Forward);
        }
        let close = frame(b'C', &[b"S".as_slice(), &cstr("s1")].concat());
        assert_eq!(p.frontend(&close, &mut events), Frontend::Forward);
        assert!(
            matches!(p.frontend(&execute("p2"), &mut events), Frontend::Replace(_)),
            "closing the statement does not renew the approval"
        );
    }

    #[test]
    fn a_session_not_in_utf8_is_refused_under_rules() {
        let mut p = gated();
        let mut events = RecordedEvents::default();
        p.parameter("client_encoding", "SJIS");
        assert!(matches!(p.frontend(&frame(b'Q', &cstr("select 1")), &mut events), Frontend::Replace(_)));
        p.backend(&error("42501", "refused"), &mut events);
        p.backend(&frame(b'Z', b"I"), &mut events);
        p.parameter("client_encoding", "UTF8");
        assert_eq!(p.frontend(&frame(b'Q', &cstr("select 1")), &mut events), Frontend::Forward);
    }

    #[test]
    fn a_statement_text_seen_again_is_masked_as_the_first_time() {
        // The one-entry cache of texts with nothing to mask against masking
        // every time, on generated sequences with repeats, both string modes.
        let config: proctor_gateway_core::masking::ProfileConfig = toml::from_str(r#"detectors = ["all"]"#).unwrap();
        let masker = Arc::new(Masker::new(
            proctor_gateway_core::masking::Profile::new("p", &config).unwrap(),
            proctor_gateway_core::masking::MaskingKey::new(b"k".to_vec()),
        ));
        let texts = [
            "select abalance from pgbench_accounts where aid = $1",
            "select 'ada@example.com'",
            "select E'ada\\x40example.com'",
            "select 'ada\\x40example.com'",
            "select 1",
            "select '4111 1111 1111 1111' -- card",
        ];
        let mut protocol = Protocol::new(SampleLimits::default()).with_masker(Some(masker.clone()));
        let mut seed: u64 = 7;
        for _ in 0..2000 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let text = texts[(seed >> 33) as usize % texts.len()];
            if (seed >> 20).is_multiple_of(7) {
                protocol.parameter(
                    "standard_conforming_strings",
                    if (seed >> 40).is_multiple_of(2) { "on" } else { "off" },
                );
            }
            let plain = mask::mask_statement_text(&masker, text, protocol.standard_strings).unwrap_or(text.to_string());
            assert_eq!(protocol.recordable(text.to_string()), plain, "{text}");
        }
    }

    #[test]
    fn pipelined_portals_keep_their_own_row_descriptions() {
        let masker = masker_of("[[columns]]\nmatch = \"salary\"");
        let mut p = Protocol::new(SampleLimits::default()).with_masker(Some(Arc::new(masker)));
        let mut events = RecordedEvents::default();
        let describe = |portal: &str| {
            let mut body = vec![b'P'];
            body.extend(cstr(portal));
            frame(b'D', &body)
        };
        let client = [
            parse("s1", "select salary from staff"),
            parse("s2", "select note from staff"),
            bind("p1", "s1"),
            bind("p2", "s2"),
            describe("p1"),
            describe("p2"),
            execute("p1"),
            execute("p2"),
            frame(b'S', b""),
        ];
        for f in client {
            p.frontend(&f, &mut events);
        }
        for f in [frame(b'1', b""), frame(b'1', b""), frame(b'2', b""), frame(b'2', b"")] {
            p.backend(&f, &mut events);
        }
        p.backend(&row_description(&[("salary", 25)]), &mut events);
        p.backend(&row_description(&[("note", 25)]), &mut events);
        let Backend::Replace(row) = p.backend(&data_row(&[Some("90000")]), &mut events) else {
            panic!("p1's rows are masked by p1's columns, not by the last row description")
        };
        assert!(String::from_utf8_lossy(&row).contains("[column:salary:masked]"));
        p.backend(&frame(b'C', &cstr("SELECT 1")), &mut events);
        assert_eq!(p.backend(&data_row(&[Some("hello")]), &mut events), Backend::Forward, "p2's note is not masked");
        p.backend(&frame(b'C', &cstr("SELECT 1")), &mut events);
        p.backend(&frame(b'Z', b"I"), &mut events);
    }

    /// The plan of a row description seen again is taken from the last one
    /// planned (a fast path): on generated results (column names that rules
    /// or detectors care about, columns of tables named by the catalog or
    /// not, repeats and changes, and the catalog answering in between),
    /// every row comes out of a session that reuses plans exactly as out of
    /// a new session that plans that result afresh with what the first
    /// session knows of the tables.
    #[test]
    fn a_row_description_seen_again_is_planned_as_a_fresh_one_would_be() {
        use super::super::catalog::TableInfo;
        let masker = Arc::new(masker_of(
            "detectors = [\"all\"]\n[[columns]]\nmatch = \"salary\"\n[[columns]]\nmatch = \"staff.note\"\naction = \"token\"",
        ));
        let described = |columns: &[(&str, u32, i16)]| {
            let mut body = BytesMut::new();
            body.put_i16(columns.len() as i16);
            for (name, table, attnum) in columns {
                body.put_slice(&cstr(name));
                body.put_u32(*table);
                body.put_i16(*attnum);
                body.put_u32(25);
                body.put_i16(-1);
                body.put_i32(-1);
                body.put_i16(0);
            }
            frame(b'T', &body)
        };
        // What the catalog says of a table when asked; two of them are renamed
        // as the rounds go.
        let catalog = |oid: u32, round: usize| -> TableInfo {
            let (name, columns): (&str, &[&str]) = match (oid, round / 50 % 2) {
                (1001, 0) => ("staff", &["id", "note", "salary"]),
                (1001, _) => ("people", &["id", "note", "pay"]),
                (1002, 0) => ("notes", &["id", "note", "password"]),
                _ => ("staff", &["id", "comment", "note"]),
            };
            TableInfo {
                name: name.to_string(),
                columns: columns.iter().enumerate().map(|(i, c)| (i as i16 + 1, c.to_string())).collect(),
                generated: Vec::new(),
            }
        };
        let names = ["salary", "note", "password", "api_key", "id", "email", "token_type", "x", "pay"];
        let values = [
            Some("90000"),
            Some("ada@example.com"),
            Some("4111 1111 1111 1111"),
            Some("q8XzR2vLw9TmK4pB"),
            Some("hi"),
            None,
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        // Drives one query's result through `p`, answering its lookups from
        // `answer`; the frames it forwards, as forwarded.
        fn run(
            p: &mut Protocol,
            frames: &[Vec<u8>],
            mut answer: impl FnMut(&[u32]) -> HashMap<u32, Arc<super::super::catalog::TableInfo>>,
        ) -> Vec<Vec<u8>> {
            let mut events = RecordedEvents::default();
            p.frontend(&frame(b'Q', &cstr("select")), &mut events);
            let mut out = Vec::new();
            for f in frames {
                let mut decision = p.backend(f, &mut events);
                if decision == Backend::Pause {
                    let asked = p.lookup().expect("a pause asks for tables");
                    p.answer(Answer::Tables(Ok(answer(&asked))));
                    decision = p.backend(f, &mut events);
                }
                out.push(match decision {
                    Backend::Replace(bytes) => bytes,
                    Backend::Forward => f.clone(),
                    other => panic!("unexpected {other:?}"),
                });
            }
            out
        }
        let limits = SampleLimits { rows: 0, bytes: 0 };
        let mut warm = Protocol::new(limits).with_masker(Some(masker.clone()));
        let mut known: HashMap<u32, Arc<TableInfo>> = HashMap::new();
        let mut last: Option<Vec<u8>> = None;
        let mut reused = 0;
        for round in 0..400 {
            let description = match (&last, next(3)) {
                (Some(last), 0 | 1) => last.clone(),
                _ => {
                    let columns: Vec<(&str, u32, i16)> = (0..1 + next(3))
                        .map(|_| (names[next(names.len())], [0, 1001, 1002][next(3)], 1 + next(3) as i16))
                        .collect();
                    described(&columns)
                }
            };
            reused += usize::from(last.as_ref() == Some(&description));
            last = Some(description.clone());
            let count = i16::from_be_bytes([description[5], description[6]]) as usize;
            let rows: Vec<Vec<u8>> =
                (0..2).map(|_| data_row(&(0..count).map(|_| values[next(values.len())]).collect::<Vec<_>>())).collect();
            let mut frames = vec![description];
            frames.extend(rows);
            frames.push(frame(b'C', &cstr("SELECT 2")));
            frames.push(frame(b'Z', b"I"));
            let seen = run(&mut warm, &frames, |asked| {
                let told: HashMap<u32, Arc<TableInfo>> =
                    asked.iter().map(|&oid| (oid, Arc::new(catalog(oid, round)))).collect();
                known.extend(told.clone());
                told
            });
            let mut fresh = Protocol::new(limits).with_masker(Some(masker.clone()));
            let afresh = run(&mut fresh, &frames, |asked| {
                asked.iter().filter_map(|oid| known.get(oid).map(|t| (*oid, t.clone()))).collect()
            });
            assert_eq!(seen, afresh, "round {round}");
        }
        assert!(reused > 100, "the rounds describe the same result again ({reused} times)");
    }

    /// A catalog lookup that fails leaves a column's name in its table
    /// unknown: under column rules its values are withheld, so `SELECT ssn
    /// AS x` with the catalog unreachable does not pass a `customers.ssn`
    /// rule. With the catalog answering, the rule applies through the alias.
    #[test]
    fn a_column_of_a_table_the_catalog_did_not_name_is_withheld_under_column_rules() {
        use super::super::catalog::TableInfo;
        let masker = Arc::new(masker_of("[[columns]]\nmatch = \"customers.ssn\""));
        let mut body = BytesMut::new();
        body.put_i16(1);
        body.put_slice(&cstr("x"));
        body.put_u32(1001);
        body.put_i16(3);
        body.put_u32(25);
        body.put_i16(-1);
        body.put_i32(-1);
        body.put_i16(0);
        let description = frame(b'T', &body);
        let row = data_row(&[Some("123-45-6789")]);
        for catalog_answers in [false, true] {
            let mut p = Protocol::new(SampleLimits { rows: 0, bytes: 0 }).with_masker(Some(masker.clone()));
            let mut events = RecordedEvents::default();
            p.frontend(&frame(b'Q', &cstr("select ssn as x from customers")), &mut events);
            assert_eq!(p.backend(&description, &mut events), Backend::Pause);
            let asked = p.lookup().unwrap();
            let answer = if catalog_answers {
                let table = TableInfo {
                    name: "customers".into(),
                    columns: [(3, "ssn".to_string())].into_iter().collect(),
                    generated: Vec::new(),
                };
                Ok(asked.iter().map(|oid| (*oid, Arc::new(table.clone()))).collect())
            } else {
                Err("the catalog cannot be reached".to_string())
            };
            p.answer(Answer::Tables(answer));
            assert_eq!(p.backend(&description, &mut events), Backend::Forward);
            let Backend::Replace(masked) = p.backend(&row, &mut events) else {
                panic!("catalog answers {catalog_answers}: the value passed as it was")
            };
            let shown = String::from_utf8_lossy(&masked).into_owned();
            assert!(!shown.contains("123-45-6789"), "{shown}");
            assert_eq!(shown.contains("customers.ssn"), catalog_answers, "{shown}");
        }
    }

    #[test]
    fn masking_withholds_values_it_cannot_place() {
        let masker = masker_of(
            r#"detectors = ["all"]
[[columns]]
match = "salary""#,
        );
        let mut p = Protocol::new(SampleLimits::default()).with_masker(Some(Arc::new(masker)));
        let mut events = RecordedEvents::default();
        // An Execute with no row description: under column rules, withheld.
        for f in [parse("", "select salary from staff"), bind("", ""), execute(""), frame(b'S', b"")] {
            p.frontend(&f, &mut events);
        }
        p.backend(&frame(b'1', b""), &mut events);
        p.backend(&frame(b'2', b""), &mut events);
        let Backend::Replace(row) = p.backend(&data_row(&[Some("90000")]), &mut events) else {
            panic!("an unknown column is withheld")
        };
        assert_eq!(&row[5..], &[0, 1, 0xff, 0xff, 0xff, 0xff], "one NULL");
        p.backend(&frame(b'C', &cstr("SELECT 1")), &mut events);
        p.backend(&frame(b'Z', b"I"), &mut events);
        // A composite's text form with a secret in it: withheld whole.
        p.frontend(&frame(b'Q', &cstr("select c from customers c")), &mut events);
        p.backend(&row_description(&[("c", 16_384)]), &mut events);
        let Backend::Replace(row) = p.backend(&data_row(&[Some("(1,ada@example.com)")]), &mut events) else {
            panic!("the composite is withheld")
        };
        assert_eq!(&row[5..], &[0, 1, 0xff, 0xff, 0xff, 0xff]);
    }

    /// Parse, Bind with binary results, Execute, Sync and no Describe: the
    /// rows' shape was known to nobody, and binary values (bytes that are
    /// not UTF-8, a card number as an int8) went through unmasked.
    #[test]
    fn regression_binary_rows_nobody_described_are_withheld() {
        let masker = masker_of(r#"detectors = ["all"]"#);
        let mut p = Protocol::new(SampleLimits { rows: 10, bytes: 1 << 16 }).with_masker(Some(Arc::new(masker)));
        let mut events = RecordedEvents::default();
        let mut binary_bind = cstr("");
        binary_bind.extend(cstr(""));
        binary_bind.extend([0, 0, 0, 0, 0, 1, 0, 1]);
        let sql = "select decode('ff', 'hex') || v::bytea, n from cards";
        for f in [parse("", sql), frame(b'B', &binary_bind), execute(""), frame(b'S', b"")] {
            p.frontend(&f, &mut events);
        }
        p.backend(&frame(b'1', b""), &mut events);
        p.backend(&frame(b'2', b""), &mut events);
        let mut row = BytesMut::new();
        row.put_i16(2);
        let glued = [&[0xff][..], b"4539148803436467"].concat();
        row.put_i32(glued.len() as i32);
        row.put_slice(&glued);
        row.put_i32(8);
        row.put_i64(4_539_148_803_436_467);
        let Backend::Replace(masked) = p.backend(&frame(b'D', &row), &mut events) else {
            panic!("binary values nobody placed are withheld")
        };
        assert_eq!(&masked[5..], &[0, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], "two NULLs");
        p.backend(&frame(b'C', &cstr("SELECT 1")), &mut events);
        p.backend(&frame(b'Z', b"I"), &mut events);
        // In text, with no description either: the detectors read it.
        for f in [parse("", "select v from cards"), bind("", ""), execute(""), frame(b'S', b"")] {
            p.frontend(&f, &mut events);
        }
        p.backend(&frame(b'1', b""), &mut events);
        p.backend(&frame(b'2', b""), &mut events);
        let Backend::Replace(masked) = p.backend(&data_row(&[Some("4539 1488 0343 6467")]), &mut events) else {
            panic!("a card number in text is masked")
        };
        assert!(!String::from_utf8_lossy(&masked).contains("0343"), "{masked:?}");
        let recorded = format!("{:?}", events.events);
        assert!(!recorded.contains("4539148803436467") && !recorded.contains("0343 6467"), "{recorded}");
    }

    #[test]
    fn each_copy_keeps_its_own_plan_when_queries_are_pipelined() {
        let masker = masker_of(
            r#"detectors = ["all"]
[[columns]]
match = "email""#,
        );
        let mut p = Protocol::new(SampleLimits::default()).with_masker(Some(Arc::new(masker)));
        let mut events = RecordedEvents::default();
        let copy = frame(b'Q', &cstr("copy (select email from customers) to stdout"));
        assert_eq!(p.frontend(&copy, &mut events), Frontend::Pause, "its columns are asked first");
        let Some(Question::Describe(describe)) = p.question() else { panic!("a describe") };
        assert!(describe.query.to_lowercase().contains("select email from customers"), "{describe:?}");
        let email = Column { name: "email".into(), type_oid: 25, ..Default::default() };
        p.answer(Answer::Described(Ok(vec![email])));
        assert_eq!(p.frontend(&copy, &mut events), Frontend::Forward);
        assert_eq!(p.frontend(&frame(b'Q', &cstr("select 1")), &mut events), Frontend::Forward, "pipelined");
        p.backend(&frame(b'H', &[0, 0, 1, 0, 0]), &mut events);
        let Backend::Replace(row) = p.backend(&frame(b'd', b"ada@example.com\n"), &mut events) else {
            panic!("masked")
        };
        assert_eq!(&row[5..], b"[column:email:masked]\n", "the COPY's own plan, not the next query's");
    }

    #[test]
    fn a_refused_parse_is_replaced_and_its_batch_dropped_up_to_sync() {
        let mut p = gated();
        let mut events = RecordedEvents::default();
        let mut send = |p: &mut Protocol, f: Vec<u8>| p.frontend(&f, &mut events);
        assert_eq!(send(&mut p, parse("", "select 1")), Frontend::Forward);
        let Frontend::Replace(refusal) = send(&mut p, parse("s1", "DROP /* x */ table t")) else {
            panic!("a refused Parse is replaced")
        };
        assert_eq!(refusal[0], b'Q');
        let sql = String::from_utf8_lossy(&refusal[5..refusal.len() - 1]).to_string();
        assert!(sql.starts_with("DO $proctor1$") && sql.contains("'42501'") && sql.contains("ci/drop"), "{sql}");
        for dropped in [bind("", "s1"), execute(""), frame(b'H', b""), frame(b'Q', &cstr("select 2"))] {
            assert_eq!(send(&mut p, dropped), Frontend::Drop, "skipped up to Sync as the target would");
        }
        assert_eq!(send(&mut p, frame(b'S', b"")), Frontend::Forward);
        assert_eq!(send(&mut p, frame(b'Q', &cstr("select 3"))), Frontend::Forward, "skipping ends at Sync");

        // The target: the first Parse's answer, the refusal's error and
        // ReadyForQuery (the client must not see that one), the Sync's.
        assert_eq!(p.backend(&frame(b'1', b""), &mut events), Backend::Forward);
        assert_eq!(p.backend(&error("42501", "Proctor blocked this statement"), &mut events), Backend::Forward);
        assert_eq!(p.backend(&frame(b'Z', b"T"), &mut events), Backend::Drop, "the refusal's ReadyForQuery is dropped");
        assert_eq!(p.backend(&frame(b'Z', b"E"), &mut events), Backend::Forward, "the Sync's is the client's");
        assert_eq!(p.backend(&frame(b'Z', b"I"), &mut events), Backend::Forward, "and the next query's");
        assert!(p.expected.is_empty(), "{:?}", p.expected);
        let bodies: Vec<&EventBody> = events.events.iter().map(|(_, b)| b).collect();
        let prepared = bodies.iter().position(|b| matches!(b, EventBody::Prepare(p) if p.statement_name == "s1"));
        let decision = bodies.iter().find_map(|b| if let EventBody::PolicyDecision(d) = b { Some(d) } else { None });
        assert_eq!(decision.unwrap().ref_seq, prepared.map(|i| i as u64), "{bodies:?}");
        let error = bodies.iter().find_map(|b| if let EventBody::Error(e) = b { Some(e) } else { None });
        assert_eq!(error.unwrap().ref_seq, prepared.map(|i| i as u64), "the error is the refused statement's");
    }

    #[test]
    fn the_target_reading_backslashes_as_escapes_changes_how_queries_are_read() {
        let mut p = gated();
        let mut events = RecordedEvents::default();
        // Standard strings: 'a\' ends at its second quote, and a DROP follows.
        let sql = frame(b'Q', &cstr("select 'a\\'; drop table t; --'"));
        assert!(matches!(p.frontend(&sql, &mut events), Frontend::Replace(_)));
        p.backend(&error("42501", "blocked"), &mut events);
        p.backend(&frame(b'Z', b"I"), &mut events);
        // The target reports backslashes escape: the same text is one literal.
        let mut status = cstr("standard_conforming_strings");
        status.extend(cstr("off"));
        p.backend(&frame(b'S', &status), &mut events);
        assert_eq!(p.frontend(&sql, &mut events), Frontend::Forward);
    }

    #[test]
    fn a_sync_sent_during_extended_copy_in_is_ignored_like_the_server_does() {
        let mut s = Script::new(0);
        s.client(&[parse("", "copy t from stdin"), bind("", ""), execute(""), frame(b'S', b"")]);
        s.server(&[frame(b'1', b""), frame(b'2', b""), frame(b'G', &[0, 0, 0])]);
        s.client(&[frame(b'd', b"1\n"), frame(b'S', b""), frame(b'c', b""), frame(b'S', b"")]);
        s.server(&[frame(b'C', &cstr("COPY 1")), frame(b'Z', b"I")]);
        assert!(s.protocol.expected.is_empty(), "{:?}", s.protocol.expected);
        let copy = s.bodies().into_iter().find_map(|b| if let EventBody::Copy(c) = b { Some(c.clone()) } else { None });
        assert_eq!(copy.map(|c| (c.byte_count, c.row_count)), Some((2, Some(1))));
    }

    #[test]
    fn a_malformed_row_description_is_recorded_raw_without_panicking() {
        let mut s = Script::new(2);
        s.client(&[frame(b'Q', &cstr("select 1"))]);
        // Claims 1000 columns, carries half of one.
        s.server(&[frame(b'T', &[0x03, 0xe8, b'a', 0, 0, 0]), data_row(&[Some("1")]), frame(b'Z', b"I")]);
        assert!(
            s.bodies().iter().any(|b| matches!(b, EventBody::RawFrame(r) if r.frame_tag == "T")),
            "{:?}",
            s.bodies()
        );
        // A huge claimed column count allocates nothing up front.
        assert!(super::row_description(&[0x7f, 0xff]).is_none());
    }
}
