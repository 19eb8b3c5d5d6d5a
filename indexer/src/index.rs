//! The index directory, its checkpoint, and catching up with the recorder.
//!
//! The checkpoint is the payload of the index's own commit: which segments
//! are indexed, and how many events of each unsealed WAL file. Documents and
//! checkpoint are committed together, so a crash at any point leaves an
//! index that matches its checkpoint exactly: nothing lost, nothing twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use proctor_recorder::reader::Reader;
use proctor_schemas::{Column, Event, EventBody, EventKind, SessionId, SessionIdText, Value};
use serde::{Deserialize, Serialize};
use tantivy::TantivyDocument;
use tantivy::collector::DocSetCollector;
use tantivy::directory::error::LockError;
use tantivy::indexer::UserOperation;
use tantivy::query::{Occur, Query, TermQuery};
use tantivy::schema::IndexRecordOption;
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Term};

use crate::directory::IndexDirectory;
use crate::document::{Fate, SessionContext, Source, document, event_text, session_context, str_of};
use crate::fields::{Fields, INDEX_VERSION, SESSION_GRANT_COLUMN, SESSION_RESOURCE_COLUMN, SESSION_SUBJECT_COLUMN};
use crate::search::keyword_column;
use crate::{IndexError, Result};
use proctor_terminal::{LineEditor, render_output};

/// Memory for the writer's in-progress segment.
const WRITER_MEMORY: usize = 64 << 20;
/// While catching up on a backlog, a commit (and checkpoint) after this many
/// documents or this long, whichever comes first: a crash loses little work.
const COMMIT_EVERY: usize = 500_000;
const COMMIT_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// What the committed index holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    /// Segments (by number) whose events are all indexed; stored as ranges,
    /// since segments are sealed and indexed in order.
    #[serde(with = "ranges")]
    pub segments: BTreeSet<u64>,
    /// Unsealed WAL files (by number): how far they are indexed.
    pub wal: BTreeMap<u64, TailProgress>,
}

/// A set of numbers as a list of inclusive `[first, last]` ranges.
mod ranges {
    use std::collections::BTreeSet;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(set: &BTreeSet<u64>, serializer: S) -> Result<S::Ok, S::Error> {
        let mut ranges: Vec<[u64; 2]> = Vec::new();
        for &n in set {
            match ranges.last_mut() {
                Some(last) if last[1] + 1 == n => last[1] = n,
                _ => ranges.push([n, n]),
            }
        }
        ranges.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeSet<u64>, D::Error> {
        let ranges = Vec::<[u64; 2]>::deserialize(deserializer)?;
        if ranges.iter().any(|[a, b]| a > b || b - a > 1 << 40) {
            return Err(serde::de::Error::custom("a range of segment numbers is reversed or too long"));
        }
        Ok(ranges.into_iter().flat_map(|[a, b]| a..=b).collect())
    }
}

/// How much of an unsealed WAL file is indexed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TailProgress {
    pub events: u64,
    /// Byte offset after the last indexed record: where reading resumes.
    pub offset: u64,
}

/// What one round of catching up did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub segments: u64,
    pub segment_events: u64,
    pub wal_events: u64,
    /// WAL-tail documents replaced by their segment's.
    pub replaced_files: u64,
}

impl Progress {
    pub fn is_empty(&self) -> bool {
        *self == Progress::default()
    }
}

pub fn index_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("index")
}

/// An index opened for searching.
pub struct SearchIndex {
    pub(crate) index: Index,
    pub(crate) reader: IndexReader,
    pub(crate) fields: Fields,
    pub(crate) facets: tantivy::aggregation::agg_req::Aggregations,
}

impl SearchIndex {
    /// Opens the index of a data dir for reading. It must exist: `proctor
    /// up` keeps it, `proctor reindex` builds it.
    ///
    /// An index this account may read but not write (a member of the data
    /// dir's group, beside the Proctor that owns it) is read without
    /// tantivy's lock file, which it cannot open (see `IndexDirectory`).
    pub fn open(data_dir: &Path) -> Result<SearchIndex> {
        let dir = index_dir(data_dir);
        if !dir.join("meta.json").exists() {
            return Err(IndexError::Missing(dir));
        }
        let fields = Fields::new();
        let directory = IndexDirectory::open(&dir, false)?;
        let index = Index::open(directory.clone())?;
        if index.schema() != fields.schema {
            return Err(IndexError::Stale(dir));
        }
        let (index, reader) = match index.reader_builder().reload_policy(ReloadPolicy::OnCommitWithDelay).try_into() {
            Ok(reader) => (index, reader),
            Err(error) if lock_denied(&error) => {
                let index = Index::open(directory.read_only())?;
                let reader = read_without_lock(&index)?;
                (index, reader)
            }
            Err(error) => return Err(error.into()),
        };
        Ok(SearchIndex { index, reader, fields, facets: crate::search::facet_aggregations() })
    }

    /// Sees the latest commit now rather than shortly after it.
    pub fn refresh(&self) -> Result<()> {
        Ok(self.reader.reload()?)
    }
}

/// Whether tantivy could not take a lock because this account may not
/// write the lock file.
fn lock_denied(error: &tantivy::TantivyError) -> bool {
    matches!(error, tantivy::TantivyError::LockFailure(LockError::IoError(io), _)
        if io.kind() == std::io::ErrorKind::PermissionDenied)
}

/// A reader of a read-only index: the writer's garbage collection may
/// remove a file while the reader opens it (which the lock it cannot take
/// would have prevented), so a failed open is tried again.
fn read_without_lock(index: &Index) -> Result<IndexReader> {
    let mut tries = 0;
    loop {
        match index.reader_builder().reload_policy(ReloadPolicy::OnCommitWithDelay).try_into() {
            Ok(reader) => return Ok(reader),
            Err(_) if tries < 4 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(error) => return Err(error.into()),
        }
    }
}

fn read_checkpoint(index: &Index) -> Result<Checkpoint> {
    let metas = index.load_metas()?;
    match metas.payload {
        None => Ok(Checkpoint { version: INDEX_VERSION, ..Checkpoint::default() }),
        Some(payload) => serde_json::from_str(&payload).map_err(|e| IndexError::Checkpoint(e.to_string())),
    }
}

/// Where the describing values of a session started before this indexer
/// ran come from: its `session_start` document in the committed index (the
/// session's subject and resource columns), else the recording itself.
struct Starts<'a> {
    index: &'a Index,
    committed: &'a mut Committed,
    recording: &'a Reader,
}

/// A reader of the committed index, opened on the first lookup and brought
/// up to date once per round; and who each grant seen is for.
#[derive(Default)]
struct Committed {
    reader: Option<IndexReader>,
    fresh: bool,
    grants: HashMap<String, SessionContext>,
}

/// Grants whose names are kept in memory, at most (others are read from
/// the index when needed).
const GRANTS_KEPT: usize = 100_000;

impl Committed {
    fn learn(&mut self, grant: &str, names: SessionContext) {
        if self.grants.len() >= GRANTS_KEPT {
            self.grants.clear();
        }
        self.grants.insert(grant.to_string(), names);
    }
}

impl Starts<'_> {
    fn context(&mut self, fields: &Fields, session_id: SessionId, id: &str) -> Result<SessionContext> {
        if let Some(context) = self.in_index(fields, id)? {
            return Ok(context);
        }
        Ok(match self.recording.session_start(session_id)? {
            Some(start) => session_context(&start.cells(&mut SessionIdText::default())),
            None => SessionContext::default(),
        })
    }

    fn in_index(&mut self, fields: &Fields, id: &str) -> Result<Option<SessionContext>> {
        let Some(kind) = fields.keyword("kind").map(|f| Term::from_field_text(f, EventKind::SessionStart.as_str()))
        else {
            return Ok(None);
        };
        let query = tantivy::query::BooleanQuery::new(vec![
            (Occur::Must, Box::new(TermQuery::new(kind, IndexRecordOption::Basic)) as Box<dyn Query>),
            (Occur::Must, Box::new(crate::query::of_sessions(vec![id.to_string()], true))),
        ]);
        self.names_in_index(&query)
    }

    /// Who a grant is for (its subject and resource): learned from the
    /// events that name both (its request, its sessions' starts), else
    /// read from its request's document in the committed index.
    fn grant_names(&mut self, fields: &Fields, grant: &str) -> Result<Option<SessionContext>> {
        if let Some(names) = self.committed.grants.get(grant) {
            return Ok(Some(names.clone()));
        }
        let (Some(kind), Some(field)) = (fields.keyword("kind"), fields.keyword("grant")) else { return Ok(None) };
        let query = tantivy::query::BooleanQuery::new(vec![
            (
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_text(kind, EventKind::GrantRequested.as_str()),
                    IndexRecordOption::Basic,
                )) as Box<dyn Query>,
            ),
            (Occur::Must, Box::new(TermQuery::new(Term::from_field_text(field, grant), IndexRecordOption::Basic))),
        ]);
        let names = self.names_in_index(&query)?;
        if let Some(names) = &names {
            self.committed.learn(grant, names.clone());
        }
        Ok(names)
    }

    /// A statement this stream no longer holds, with what became of it up
    /// to the answer `upto`, read again from the recording; and the file
    /// its document in the committed index came from. `None` when its
    /// document is not in the committed index.
    fn refate(
        &mut self,
        fields: &Fields,
        session: SessionId,
        id: &str,
        seq: u64,
        upto: u64,
    ) -> Result<Option<(Event, u64, Fate)>> {
        let query = tantivy::query::BooleanQuery::new(vec![
            (Occur::Must, Box::new(seq_query(fields, seq)) as Box<dyn Query>),
            (Occur::Must, Box::new(crate::query::of_sessions(vec![id.to_string()], true))),
        ]);
        let Some(file) = self.in_index_column(&query, "file")? else { return Ok(None) };
        let mut statement = None;
        let mut fate = Fate::default();
        let mut id_text = SessionIdText::default();
        self.recording.for_each_session_event(session, seq, |event| {
            if event.seq > upto {
                return Ok(std::ops::ControlFlow::Break(()));
            }
            if event.seq == seq {
                if matches!(event.body, EventBody::Statement(_) | EventBody::Prepare(_)) {
                    statement = Some(event);
                }
                return Ok(std::ops::ControlFlow::Continue(()));
            }
            let cells = event.cells(&mut id_text);
            if matches!(cells.get(Column::RefSeq), Some(Value::U64(r)) if r == seq) {
                fate.learn(&cells, event.seq);
            }
            Ok(std::ops::ControlFlow::Continue(()))
        })?;
        Ok(statement.map(|statement| (statement, file, fate)))
    }

    /// The decision on the latest Parse of `name` in session `id` before
    /// `seq`, from its document in the committed index (none found: none).
    fn prepared_decision(&mut self, fields: &Fields, id: &str, name: &str, seq: u64) -> Result<Option<(u64, Fate)>> {
        let (Some(kind), Some(named)) = (fields.keyword("kind"), fields.keyword("statement_name")) else {
            return Ok(None);
        };
        let term = |field, value: &str| {
            Box::new(TermQuery::new(Term::from_field_text(field, value), IndexRecordOption::Basic))
        };
        let before = tantivy::query::RangeQuery::new(
            std::ops::Bound::Unbounded,
            std::ops::Bound::Excluded(Term::from_field_u64(fields.seq, seq)),
        );
        let query = tantivy::query::BooleanQuery::new(vec![
            (Occur::Must, term(kind, EventKind::Prepare.as_str()) as Box<dyn Query>),
            (Occur::Must, term(named, name)),
            (Occur::Must, Box::new(before)),
            (Occur::Must, Box::new(crate::query::of_sessions(vec![id.to_string()], true))),
        ]);
        self.with_searcher(|searcher| {
            let latest =
                tantivy::collector::TopDocs::with_limit(1).order_by_fast_field::<u64>("seq", tantivy::Order::Desc);
            let Some((Some(parse_seq), address)) = searcher.search(&query, &latest)?.into_iter().next() else {
                return Ok(None);
            };
            let columns = searcher.segment_reader(address.segment_ord).fast_fields();
            let mut fate = Fate::default();
            fate.outcome = keyword_column(columns, "outcome", address.doc_id)?;
            fate.rule = keyword_column(columns, "rule", address.doc_id)?;
            fate.review = keyword_column(columns, "review", address.doc_id)?;
            Ok(Some((parse_seq, fate)))
        })
    }

    /// Runs `f` over the committed index, brought up to date once a round.
    fn with_searcher<T>(&mut self, f: impl FnOnce(&tantivy::Searcher) -> Result<T>) -> Result<T> {
        let reader = match self.committed.reader.take() {
            Some(reader) => reader,
            None => self.index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?,
        };
        if !self.committed.fresh {
            reader.reload()?;
            self.committed.fresh = true;
        }
        let answer = f(&reader.searcher());
        self.committed.reader = Some(reader);
        answer
    }

    /// A numeric column of the first document a query finds in the
    /// committed index.
    fn in_index_column(&mut self, query: &dyn Query, column: &str) -> Result<Option<u64>> {
        self.with_searcher(|searcher| {
            Ok(match searcher.search(query, &DocSetCollector)?.into_iter().next() {
                Some(address) => {
                    searcher.segment_reader(address.segment_ord).fast_fields().u64(column)?.first(address.doc_id)
                }
                None => None,
            })
        })
    }

    /// What the first document a query finds shows of who and what.
    fn names_in_index(&mut self, query: &dyn Query) -> Result<Option<SessionContext>> {
        self.with_searcher(|searcher| {
            let Some(address) = searcher.search(query, &DocSetCollector)?.into_iter().next() else { return Ok(None) };
            let columns = searcher.segment_reader(address.segment_ord).fast_fields();
            Ok(Some(SessionContext {
                subject: keyword_column(columns, SESSION_SUBJECT_COLUMN, address.doc_id)?,
                resource: keyword_column(columns, SESSION_RESOURCE_COLUMN, address.doc_id)?,
                grant: keyword_column(columns, SESSION_GRANT_COLUMN, address.doc_id)?,
            }))
        })
    }
}

/// The single writer of a data dir's index.
pub struct Indexer {
    data_dir: PathBuf,
    writer: IndexWriter,
    fields: Fields,
    checkpoint: Checkpoint,
    /// Open sessions as of the sealed segments indexed so far.
    sealed: Sessions,
    /// Likewise as of the WAL tail indexed so far. Kept apart, because a
    /// tail is indexed again from its segment once sealed.
    tail: Sessions,
    committed: Committed,
    /// Keyframes of the terminals of the sealed segments.
    keyframes: crate::keyframes::Keyframer,
}

/// Per-session state of one stream of events (the sealed segments, or the
/// WAL tail): the session's describing values, the line being typed, and
/// the statements waiting for what becomes of them.
#[derive(Default)]
struct Sessions {
    context: HashMap<String, SessionContext>,
    editors: HashMap<String, LineEditor>,
    /// By session: statements and prepared statements waiting for their
    /// answers, and the last few answered (a simple query of several
    /// statements has several results; pipelined queries answer late).
    statements: HashMap<String, Vec<Pending>>,
    /// By session and prepared statement name: the latest Parse this
    /// stream read (its seq) and the decision on it, which an execution
    /// inherits when it was an approval.
    prepared: BySession<String, (u64, Fate)>,
    /// Decisions on Parses learned from the recording (by session and the
    /// Parse's seq), fresher than the committed index may be.
    decided: BySession<u64, Fate>,
    /// The tail's only: what became of statements it saw answered, until
    /// the sealed stream reads their answers too. A segment that replaces
    /// a WAL file's documents may end before a statement's answer (read
    /// from the next WAL file already): the statement goes back in with
    /// what the tail knew, not without it.
    answered: Answered,
}

/// By session, then by a key within it: a session's entries go at once.
type BySession<K, V> = HashMap<String, HashMap<K, V>>;
/// What the tail saw answered, by session and statement seq.
type Answered = BySession<u64, Fate>;

fn entry_of<'a, K: std::hash::Hash + Eq, V>(map: &'a BySession<K, V>, id: &str, key: &K) -> Option<&'a V> {
    map.get(id).and_then(|inner| inner.get(key))
}

/// Sets a session's entry; a session's map is kept to [`PER_SESSION`]
/// entries (past it, emptied: what it held is read again as needed).
fn set_entry<K: std::hash::Hash + Eq, V>(map: &mut BySession<K, V>, id: &str, key: K, value: V) {
    let inner = map.entry(id.to_string()).or_default();
    if inner.len() >= PER_SESSION {
        inner.clear();
    }
    inner.insert(key, value);
}

/// Entries kept per session in each of the maps above, at most.
const PER_SESSION: usize = 1024;

/// A statement (or prepared statement) and what became of it so far. Its
/// document waits while answers may still come in the same round: until
/// the next statement of its session, its session's end, or the end of the
/// segment or round; then it goes in, and an answer read later replaces it
/// (see [`Op::Replace`]).
#[derive(Clone)]
struct Pending {
    seq: u64,
    event: Event,
    text: String,
    source: Source,
    fate: Fate,
    added: bool,
    /// In already, and learned more since: replaced when next put in.
    stale: bool,
}

impl Pending {
    /// Puts its document in, or replaces it if it learned more since: at
    /// most once per round however many answers came (a query of many
    /// statements answers with many results).
    fn put_in(
        &mut self,
        fields: &Fields,
        id: &str,
        context: Option<&SessionContext>,
        answered: Option<&Answered>,
        ops: &mut Vec<Op>,
    ) {
        if self.added && !self.stale {
            return;
        }
        // The sealed stream never puts back less than the tail showed.
        take_known(self, id, answered);
        let doc = statement_doc(fields, self, context);
        ops.push(match self.added {
            false => Op::Add(doc),
            true => Op::Replace(id.to_string(), self.seq, self.source.file, doc),
        });
        (self.added, self.stale) = (true, false);
    }

    fn is_prepare(&self) -> bool {
        matches!(self.event.body, EventBody::Prepare(_))
    }
}

/// Statements kept per session once their documents are in, for answers
/// that come late (older ones are completed from the recording).
const KEPT_PER_SESSION: usize = 16;
/// Statements kept per session in all, answered or not: deeper pipelines
/// than this have their oldest answers completed from the recording.
const UNANSWERED_KEPT: usize = 4096;
/// Statements kept waiting in all, at most: past it, every waiting
/// document goes in and those in are forgotten (completed from the
/// recording if an answer comes).
const PENDING_MAX: usize = 100_000;

/// What indexing an event does to the index.
enum Op {
    Add(TantivyDocument),
    /// A statement document already in the index, replaced by one that
    /// knows what became of it: (session, seq, file) name the old one.
    Replace(String, u64, u64, TantivyDocument),
}

fn statement_doc(fields: &Fields, pending: &Pending, context: Option<&SessionContext>) -> TantivyDocument {
    let mut id = SessionIdText::default();
    let cells = pending.event.cells(&mut id);
    document(fields, &cells, pending.source, context, &pending.text, Some(&pending.fate))
}

impl Sessions {
    /// Puts in the documents of waiting statements (of one session, or
    /// all) as they are — or as `answered` knows them — at a session's end,
    /// at the end of a segment or round, and when the map is full.
    fn flush(&mut self, fields: &Fields, session: Option<&str>, ops: &mut Vec<Op>, answered: Option<&Answered>) {
        let mut ids: Vec<String> = match session {
            Some(id) => vec![id.to_string()],
            None => self.statements.keys().cloned().collect(),
        };
        ids.sort_unstable();
        for id in ids {
            let Some(list) = self.statements.get_mut(&id) else { continue };
            for pending in list.iter_mut() {
                pending.put_in(fields, &id, self.context.get(&id), answered, ops);
            }
        }
        if let Some(id) = session {
            self.statements.remove(id);
            self.prepared.remove(id);
            self.decided.remove(id);
        }
        if self.statements.values().map(Vec::len).sum::<usize>() > PENDING_MAX {
            tracing::warn!(
                "too many statements wait for their results; answers read later are completed from the recording"
            );
            // Every waiting document goes in, then all are forgotten.
            for (id, list) in &mut self.statements {
                for pending in list.iter_mut() {
                    pending.put_in(fields, id, self.context.get(id), answered, ops);
                }
            }
            self.statements.clear();
        }
    }

    /// Before a session's next statement: the documents of its statements
    /// already answered go in (no more answers are expected before it, but
    /// a few are kept for pipelined queries), and prepared statements that
    /// are in already are let go.
    fn settle(&mut self, fields: &Fields, id: &str, ops: &mut Vec<Op>, answered: Option<&Answered>) {
        let Some(list) = self.statements.get_mut(id) else { return };
        for pending in list.iter_mut().filter(|p| p.fate.done || p.added) {
            pending.put_in(fields, id, self.context.get(id), answered, ops);
        }
        list.retain(|p| !(p.added && p.is_prepare()));
        let settled = list.iter().filter(|p| p.added && p.fate.done).count();
        let mut excess = settled.saturating_sub(KEPT_PER_SESSION);
        list.retain(|p| {
            let drop = excess > 0 && p.added && p.fate.done;
            excess -= usize::from(drop);
            !drop
        });
        // Statements never answered (executions skipped after an error)
        // are let go too, oldest first, once in and past the bound (an
        // answer that comes for one after all is completed from the
        // recording).
        let mut excess = list.len().saturating_sub(UNANSWERED_KEPT);
        list.retain(|p| {
            let drop = excess > 0 && p.added;
            excess -= usize::from(drop);
            !drop
        });
    }
}

/// What the tail knows of a statement, where it knows more (it reads
/// ahead of the sealed stream).
fn take_known(pending: &mut Pending, id: &str, answered: Option<&Answered>) {
    if let Some(known) = answered.and_then(|a| entry_of(a, id, &pending.seq))
        && known.answers() > pending.fate.answers()
    {
        pending.fate = known.clone();
    }
}

/// An event's documents. `seed` is the sealed stream's state, from which a
/// tail session not seen before starts; `answered`, for the sealed stream,
/// what the tail saw answered.
#[allow(clippy::too_many_arguments)]
fn event_operations(
    state: &mut Sessions,
    seed: Option<&Sessions>,
    answered: Option<&Answered>,
    starts: &mut Starts<'_>,
    fields: &Fields,
    event: &Event,
    source: Source,
    id_buf: &mut SessionIdText,
    ops: &mut Vec<Op>,
) -> Result<()> {
    let cells = event.cells(id_buf);
    let id = str_of(&cells, Column::SessionId).unwrap_or_default();
    // The session's describing values: its own for a start; else known;
    // else looked up (started before this indexer ran).
    if matches!(event.body, EventBody::SessionStart(_)) {
        state.context.insert(id.to_string(), session_context(&cells));
    } else if !state.context.contains_key(id) {
        let context = match seed.and_then(|s| s.context.get(id)) {
            Some(context) => context.clone(),
            None => starts.context(fields, event.session_id, id)?,
        };
        state.context.insert(id.to_string(), context);
    }
    // A control event names a grant (a review of a held statement, a
    // grant's decision): it shows the grant's subject and resource, not the
    // control session's, and is found by them. Who a grant is for is
    // learned from its own events (a refused login names a grant and a
    // resource it may not be for).
    let (own_subject, own_grant) = (str_of(&cells, Column::Subject), str_of(&cells, Column::GrantId));
    // Names other than the session's, when a control event's grant says so.
    let mut by_grant: Option<SessionContext> = None;
    if let Some(grant) = own_grant {
        if own_subject.is_some() && event.body.kind().as_str().starts_with("grant_") {
            let names = SessionContext {
                subject: own_subject.map(str::to_string),
                resource: str_of(&cells, Column::Resource).map(str::to_string),
                grant: Some(grant.to_string()),
            };
            starts.committed.learn(grant, names);
        } else if own_subject.is_none()
            && state.context.get(id).and_then(|c| c.grant.as_deref()) != Some(grant)
            && let Some(mut names) = starts.grant_names(fields, grant)?
        {
            // Found by the grant's names too (`subject:bob` finds the
            // review of a statement bob's grant held).
            names.grant = Some(grant.to_string());
            by_grant = Some(names);
        }
    }
    let text = match &event.body {
        EventBody::TerminalInput(input) => {
            if !state.editors.contains_key(id) {
                let editor = seed.and_then(|s| s.editors.get(id)).cloned().unwrap_or_default();
                state.editors.insert(id.to_string(), editor);
            }
            state.editors.get_mut(id).map(|editor| editor.feed(&input.data).join("\n")).unwrap_or_default()
        }
        EventBody::TerminalOutput(output) => render_output(&output.data),
        _ => event_text(&cells),
    };
    if let EventBody::Statement(_) | EventBody::Prepare(_) = &event.body {
        state.settle(fields, id, ops, answered);
        if let EventBody::Prepare(prepare) = &event.body {
            // A new Parse of a name replaces the statement prepared under it
            // (not decided on, until a decision says otherwise).
            set_entry(&mut state.prepared, id, prepare.statement_name.clone(), (event.seq, Fate::default()));
        }
        let fate = match &event.body {
            EventBody::Statement(statement) if let Some(name) = &statement.statement_name => {
                inherited(state, seed, starts, fields, id, name, event.seq)?
            }
            _ => Fate::default(),
        };
        let pending = Pending { seq: event.seq, event: event.clone(), text, source, fate, added: false, stale: false };
        state.statements.entry(id.to_string()).or_default().push(pending);
        return Ok(());
    }
    let answers = matches!(
        event.body,
        EventBody::PolicyDecision(_) | EventBody::Result(_) | EventBody::Error(_) | EventBody::Copy(_)
    );
    if answers && let Some(Value::U64(statement)) = cells.get(Column::RefSeq) {
        answer(state, seed, starts, fields, event, source, &cells, id, statement, ops)?;
    }
    let shown = by_grant.as_ref().or_else(|| state.context.get(id));
    let mut doc = document(fields, &cells, source, shown, &text, None);
    if let Some(names) = &by_grant {
        for (name, value) in [("subject", &names.subject), ("resource", &names.resource)] {
            if let (Some(field), Some(value)) = (fields.keyword(name), value) {
                doc.add_text(field, value);
            }
        }
    }
    ops.push(Op::Add(doc));
    if matches!(event.body, EventBody::SessionEnd(_)) {
        state.flush(fields, Some(id), ops, answered);
        state.context.remove(id);
        state.editors.remove(id);
    }
    Ok(())
}

/// The latest Parse of `name` before `seq` in session `id` and the
/// decision on it: from the committed index, made fresher by what this
/// stream learned of it from the recording.
fn parse_decision(
    state: &Sessions,
    starts: &mut Starts<'_>,
    fields: &Fields,
    id: &str,
    name: &str,
    seq: u64,
) -> Result<Option<(u64, Fate)>> {
    Ok(starts.prepared_decision(fields, id, name, seq)?.map(|(parse, fate)| {
        let fresher = entry_of(&state.decided, id, &parse).cloned();
        (parse, fresher.unwrap_or(fate))
    }))
}

/// What an execution of prepared statement `name` inherits from its
/// Parse: an approval (a held statement approved, run once), nothing
/// else — a refused Parse prepares nothing, and a Parse allowed without a
/// decision is not recorded, so only an approval recorded on the latest
/// Parse of the name speaks for it. The unnamed statement's Parse comes
/// with its execution: it is taken once, and never looked up.
fn inherited(
    state: &mut Sessions,
    seed: Option<&Sessions>,
    starts: &mut Starts<'_>,
    fields: &Fields,
    id: &str,
    name: &str,
    seq: u64,
) -> Result<Fate> {
    let approval = |fate: &Fate| match fate.outcome.as_deref() {
        Some("allow") => fate.decision(),
        _ => Fate::default(),
    };
    if name.is_empty() {
        // Only right after it (the Parse, its decision, this execution): an
        // unnamed Parse allowed without a decision since is not recorded,
        // and its execution is not the approved one's.
        let taken = state.prepared.get_mut(id).and_then(|inner| inner.remove(name));
        let fresh = taken.filter(|(parse, _)| seq <= parse + 2);
        return Ok(fresh.map(|(_, fate)| approval(&fate)).unwrap_or_default());
    }
    if entry_of(&state.prepared, id, &name.to_string()).is_none() {
        // Prepared before this stream began (an indexer restarted): its
        // Parse's decision is read from the index, once (a miss is kept).
        let parse = match seed.and_then(|s| entry_of(&s.prepared, id, &name.to_string())) {
            Some(parse) => parse.clone(),
            None => parse_decision(state, starts, fields, id, name, seq)?.unwrap_or_default(),
        };
        set_entry(&mut state.prepared, id, name.to_string(), parse);
    }
    Ok(entry_of(&state.prepared, id, &name.to_string()).map(|(_, fate)| approval(fate)).unwrap_or_default())
}

/// An answer (a decision, a result, an error, a copy) to statement `seq`
/// of session `id`: the statement learns it; its document, if in already,
/// is replaced when next put in. A statement this stream no longer holds (an indexer
/// restarted, or a statement long answered) is completed from the
/// recording.
#[allow(clippy::too_many_arguments)]
fn answer(
    state: &mut Sessions,
    seed: Option<&Sessions>,
    starts: &mut Starts<'_>,
    fields: &Fields,
    event: &Event,
    source: Source,
    cells: &proctor_schemas::Cells<'_>,
    id: &str,
    seq: u64,
    ops: &mut Vec<Op>,
) -> Result<()> {
    let held = state.statements.get(id).is_some_and(|list| list.iter().any(|p| p.seq == seq));
    if !held && let Some(seeded) = seed.and_then(|s| s.statements.get(id)).and_then(|l| l.iter().find(|p| p.seq == seq))
    {
        // The sealed stream's (its document is in: segments end flushed).
        let seeded = Pending { added: true, ..seeded.clone() };
        state.statements.entry(id.to_string()).or_default().push(seeded);
    }
    let context = state.context.get(id);
    let Some(pending) = state.statements.get_mut(id).and_then(|l| l.iter_mut().find(|p| p.seq == seq)) else {
        // Not held: completed from the recording, if its document is in.
        if let Some((statement, file, mut fate)) = starts.refate(fields, event.session_id, id, seq, event.seq)? {
            // An execution without a decision of its own inherits its
            // Parse's approval (never for the unnamed statement, whose
            // Parse is not known here).
            if let EventBody::Statement(execute) = &statement.body
                && let Some(name) = execute.statement_name.as_deref().filter(|n| !n.is_empty())
                && fate.rule.is_none()
                && let Some((_, decided)) = parse_decision(state, starts, fields, id, name, seq)?
                && decided.outcome.as_deref() == Some("allow")
            {
                (fate.outcome, fate.rule, fate.review) = (decided.outcome, decided.rule, decided.review);
            }
            if seed.is_some() && fate.done && source.file != file {
                set_entry(&mut state.answered, id, seq, fate.clone());
            }
            if let EventBody::Prepare(prepare) = &statement.body {
                set_entry(&mut state.decided, id, seq, fate.decision());
                if let Some(latest) =
                    state.prepared.get_mut(id).and_then(|inner| inner.get_mut(&prepare.statement_name))
                    && latest.0 == seq
                {
                    latest.1 = fate.decision();
                }
            }
            let mut id_text = SessionIdText::default();
            let statement_cells = statement.cells(&mut id_text);
            let text = event_text(&statement_cells);
            let doc = document(fields, &statement_cells, Source { file }, context, &text, Some(&fate));
            ops.push(Op::Replace(id.to_string(), seq, file, doc));
        }
        return Ok(());
    };
    if !pending.fate.learn(cells, event.seq) {
        return Ok(());
    }
    if let EventBody::Prepare(prepare) = &pending.event.body
        && matches!(event.body, EventBody::PolicyDecision(_))
    {
        set_entry(&mut state.prepared, id, prepare.statement_name.clone(), (seq, pending.fate.decision()));
    }
    // What the tail saw answered across a file's end, for the segment that
    // will replace the statement's file.
    if seed.is_some() && pending.fate.done && source.file != pending.source.file {
        set_entry(&mut state.answered, id, seq, pending.fate.clone());
    }
    // In already: replaced once, when next put in (at the session's next
    // statement, its end, or the end of the segment or round).
    pending.stale = pending.added;
    Ok(())
}

impl Indexer {
    /// Opens (or creates) the index of a data dir for writing. An index of
    /// another version is rebuilt. Fails with [`IndexError::Busy`] while
    /// another process writes it.
    pub fn open(data_dir: &Path) -> Result<Indexer> {
        let dir = index_dir(data_dir);
        let fields = Fields::new();
        let existing = dir.join("meta.json").exists();
        if existing {
            let index = Index::open(IndexDirectory::open(&dir, false)?)?;
            // The writer's lock first: nothing is changed under another writer.
            let writer = writer_of(&index, &dir)?;
            let checkpoint = read_checkpoint(&index);
            if index.schema() == fields.schema && checkpoint.as_ref().is_ok_and(|c| c.version == INDEX_VERSION) {
                return Ok(Indexer {
                    data_dir: data_dir.to_path_buf(),
                    writer,
                    fields,
                    checkpoint: checkpoint?,
                    sealed: Sessions::default(),
                    tail: Sessions::default(),
                    committed: Committed::default(),
                    keyframes: crate::keyframes::Keyframer::new(&dir),
                });
            }
            tracing::warn!(dir = %dir.display(), "the index is of another version; rebuilding it from the segments");
            drop(writer);
            drop(index);
            std::fs::remove_dir_all(&dir).map_err(|e| IndexError::open(&dir, e))?;
        }
        Indexer::create(data_dir, &dir, fields)
    }

    fn create(data_dir: &Path, dir: &Path, fields: Fields) -> Result<Indexer> {
        std::fs::create_dir_all(dir).map_err(|e| IndexError::open(dir, e))?;
        // The stored text compresses well in large zstd blocks: level 7 in
        // 256 KiB blocks keeps a fifth less than level 3 in 128 KiB at the
        // same indexing speed; a hit still decompresses a quarter MiB.
        let settings = tantivy::IndexSettings {
            docstore_compression: tantivy::store::Compressor::Zstd(tantivy::store::ZstdCompressor {
                compression_level: Some(7),
            }),
            docstore_blocksize: 256 << 10,
            ..Default::default()
        };
        let index = Index::create(IndexDirectory::open(dir, false)?, fields.schema.clone(), settings)?;
        let writer = writer_of(&index, dir)?;
        let checkpoint = Checkpoint { version: INDEX_VERSION, ..Checkpoint::default() };
        Ok(Indexer {
            data_dir: data_dir.to_path_buf(),
            writer,
            fields,
            checkpoint,
            sealed: Sessions::default(),
            tail: Sessions::default(),
            committed: Committed::default(),
            keyframes: crate::keyframes::Keyframer::new(dir),
        })
    }

    /// Indexes what was recorded since the last round: new segments
    /// (replacing the documents of their WAL tail) and new events of the WAL
    /// files not yet sealed. Commits in batches; returns what it did. On an
    /// error, whatever was not committed is rolled back, so the next round
    /// starts again from the checkpoint and adds nothing twice.
    pub fn catch_up(&mut self) -> Result<Progress> {
        match self.try_catch_up() {
            Ok(progress) => Ok(progress),
            Err(error) => {
                if let Err(rollback) = self.writer.rollback() {
                    tracing::warn!(%rollback, "the index writer could not roll back");
                }
                // The per-session state may have seen events that were rolled
                // back: it is rebuilt from the recording as needed.
                self.sealed = Sessions::default();
                self.tail = Sessions::default();
                self.keyframes.forget();
                Err(error)
            }
        }
    }

    fn try_catch_up(&mut self) -> Result<Progress> {
        let reader = Reader::open(&self.data_dir)?;
        // What was committed since the last round is looked up afresh.
        self.committed.fresh = false;
        // WAL files first: one sealed in between shows among the manifests.
        let unsealed = reader.unsealed_wal_numbers()?;
        // Only the manifests of segments not yet indexed are read.
        let segments = reader.segment_numbers()?;
        let mut next = self.checkpoint.clone();
        let mut progress = Progress::default();
        let commit_every = commit_every();
        let mut pending = 0usize;
        let mut last_commit = std::time::Instant::now();
        let mut id_buf = SessionIdText::default();
        // Operations go to the writer's thread in batches, in order: one
        // hand-off (and wake-up) per batch, not per document.
        let mut batch: Vec<UserOperation> = Vec::with_capacity(SEND_BATCH);
        let mut ops: Vec<Op> = Vec::new();

        let todo: Vec<u64> = segments.iter().copied().filter(|n| !self.checkpoint.segments.contains(n)).collect();
        for number in todo {
            let manifest = &reader.manifest(number)?;
            // A WAL tail indexed earlier is replaced, in the same commit;
            // deleted whether or not the checkpoint still lists it (a file
            // sealed between two listings of one round is not listed).
            batch.push(UserOperation::Delete(Term::from_field_u64(self.fields.file, number)));
            if next.wal.remove(&number).is_some() {
                progress.replaced_files += 1;
            }
            let source = Source { file: number };
            let mut added = 0u64;
            reader.segment_events(manifest, |event| {
                let cannot = |e: IndexError| proctor_recorder::RecorderError::Corrupt {
                    path: PathBuf::from(&manifest.path),
                    message: format!("cannot index: {e}"),
                };
                let mut starts =
                    Starts { index: self.writer.index(), committed: &mut self.committed, recording: &reader };
                event_operations(
                    &mut self.sealed,
                    None,
                    Some(&self.tail.answered),
                    &mut starts,
                    &self.fields,
                    &event,
                    source,
                    &mut id_buf,
                    &mut ops,
                )
                .map_err(cannot)?;
                apply(&self.writer, &self.fields, &mut batch, &mut ops).map_err(cannot)?;
                self.keyframes.apply(&reader, &event).map_err(cannot)?;
                // (What the tail saw answered stays until the session's end
                // here: a statement may have more answers than this one.)
                if matches!(event.body, EventBody::SessionEnd(_)) {
                    // Ended: the tail's state of it is not needed either.
                    let id = id_buf.render(event.session_id).to_string();
                    self.tail.context.remove(&id);
                    self.tail.editors.remove(&id);
                    self.tail.statements.remove(&id);
                    self.tail.prepared.remove(&id);
                    self.tail.decided.remove(&id);
                    self.tail.answered.remove(&id);
                }
                added += 1;
                Ok(())
            })?;
            // A statement whose answer is in a later segment goes in as it
            // is, with its segment: every commit holds whole segments.
            self.sealed.flush(&self.fields, None, &mut ops, Some(&self.tail.answered));
            apply(&self.writer, &self.fields, &mut batch, &mut ops)?;
            next.segments.insert(number);
            progress.segments += 1;
            progress.segment_events += added;
            pending += added as usize;
            if pending >= commit_every || last_commit.elapsed() >= COMMIT_AFTER {
                send(&self.writer, &mut batch)?;
                self.commit(&next)?;
                pending = 0;
                last_commit = std::time::Instant::now();
            }
        }

        // The WAL tail: only what was written since the last round is read.
        let sealed: BTreeSet<u64> = segments.iter().copied().collect();
        let mut live = BTreeSet::new();
        for &number in unsealed.iter().filter(|n| !sealed.contains(n)) {
            let done = next.wal.get(&number).copied().unwrap_or_default();
            let Some((events, offset)) = reader.wal_events_from(number, done.offset)? else {
                continue; // sealed meanwhile: its segment comes next round
            };
            live.insert(number);
            let source = Source { file: number };
            for event in &events {
                let seed = Some(&self.sealed);
                let mut starts =
                    Starts { index: self.writer.index(), committed: &mut self.committed, recording: &reader };
                event_operations(
                    &mut self.tail,
                    seed,
                    None,
                    &mut starts,
                    &self.fields,
                    event,
                    source,
                    &mut id_buf,
                    &mut ops,
                )?;
                apply(&self.writer, &self.fields, &mut batch, &mut ops)?;
            }
            progress.wal_events += events.len() as u64;
            next.wal.insert(number, TailProgress { events: done.events + events.len() as u64, offset });
        }
        // WAL files that vanished without a segment (an empty file) leave
        // nothing to index.
        next.wal.retain(|n, _| live.contains(n) || sealed.contains(n));
        // Statements still running go in as they are; their answers,
        // read in a later round, replace them.
        self.tail.flush(&self.fields, None, &mut ops, None);
        apply(&self.writer, &self.fields, &mut batch, &mut ops)?;

        send(&self.writer, &mut batch)?;
        if next != self.checkpoint {
            self.commit(&next)?;
        }
        Ok(progress)
    }

    fn commit(&mut self, next: &Checkpoint) -> Result<()> {
        // The keyframes of what the commit says is indexed are on disk
        // first.
        self.keyframes.sync()?;
        let payload = serde_json::to_string(next).map_err(|e| IndexError::Checkpoint(e.to_string()))?;
        let mut prepared = self.writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        self.checkpoint = next.clone();
        Ok(())
    }

    /// Waits for background merges, so the index files settle.
    pub fn finish(self) -> Result<()> {
        self.writer.wait_merging_threads()?;
        Ok(())
    }
}

/// Hands an event's operations to the writer, in order: a replaced
/// statement's old document is deleted (by a query the writer applies in
/// sequence with the batches) before its new one is added.
fn apply(writer: &IndexWriter, fields: &Fields, batch: &mut Vec<UserOperation>, ops: &mut Vec<Op>) -> Result<()> {
    for op in ops.drain(..) {
        match op {
            Op::Add(doc) => batch.push(UserOperation::Add(doc)),
            Op::Replace(session, seq, file, doc) => {
                send(writer, batch)?;
                writer.delete_query(statement_query(fields, session, seq, file))?;
                batch.push(UserOperation::Add(doc));
            }
        }
    }
    if batch.len() >= SEND_BATCH {
        send(writer, batch)?;
    }
    Ok(())
}

/// The document of one statement: its session, seq and the file it was
/// read from.
fn statement_query(fields: &Fields, session: String, seq: u64, file: u64) -> Box<dyn Query> {
    let term = |field, value: u64| Term::from_field_u64(field, value);
    Box::new(tantivy::query::BooleanQuery::new(vec![
        (Occur::Must, Box::new(TermQuery::new(term(fields.file, file), IndexRecordOption::Basic)) as Box<dyn Query>),
        (Occur::Must, Box::new(seq_query(fields, seq))),
        (Occur::Must, Box::new(crate::query::of_sessions(vec![session], true))),
    ]))
}

fn seq_query(fields: &Fields, seq: u64) -> tantivy::query::RangeQuery {
    let term = Term::from_field_u64(fields.seq, seq);
    tantivy::query::RangeQuery::new(std::ops::Bound::Included(term.clone()), std::ops::Bound::Included(term))
}

/// Operations handed to the writer's thread at once.
const SEND_BATCH: usize = 1024;

fn send(writer: &IndexWriter, batch: &mut Vec<UserOperation>) -> Result<()> {
    if !batch.is_empty() {
        writer.run(batch.drain(..))?;
    }
    Ok(())
}

/// Documents per commit while catching up: `PROCTOR_INDEX_COMMIT_DOCS`, or
/// 500,000.
fn commit_every() -> usize {
    std::env::var("PROCTOR_INDEX_COMMIT_DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(COMMIT_EVERY)
}

fn writer_of(index: &Index, dir: &Path) -> Result<IndexWriter> {
    // One indexing thread: indexing must leave the gateway its cores.
    index.writer_with_num_threads(1, WRITER_MEMORY).map_err(|e| match e {
        tantivy::TantivyError::LockFailure(..) => IndexError::Busy(dir.to_path_buf()),
        other => other.into(),
    })
}

/// Rebuilds the index of a data dir from its recordings alone: built beside
/// the old one, then swapped in, so a failed rebuild leaves the old index.
pub fn reindex(data_dir: &Path) -> Result<Progress> {
    let dir = index_dir(data_dir);
    // Holding the old index's writer keeps a running indexer out.
    let old = if dir.join("meta.json").exists() {
        let index = Index::open(IndexDirectory::open(&dir, false)?)?;
        Some(writer_of(&index, &dir)?)
    } else {
        None
    };
    let building = data_dir.join(format!("index.rebuild-{}", std::process::id()));
    if building.exists() {
        std::fs::remove_dir_all(&building).map_err(|e| IndexError::open(&building, e))?;
    }
    let mut indexer = Indexer::create(data_dir, &building, Fields::new())?;
    let progress = indexer.catch_up()?;
    indexer.finish()?;
    drop(old);
    let retired = data_dir.join(format!("index.old-{}", std::process::id()));
    if dir.exists() {
        std::fs::rename(&dir, &retired).map_err(|e| IndexError::open(&dir, e))?;
    }
    std::fs::rename(&building, &dir).map_err(|e| IndexError::open(&dir, e))?;
    if retired.exists() {
        let _ = std::fs::remove_dir_all(&retired);
    }
    Ok(progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkpoint_keeps_segments_as_ranges() {
        let checkpoint = Checkpoint {
            version: INDEX_VERSION,
            segments: [1, 2, 3, 4, 7, 9, 10].into_iter().collect(),
            wal: [(11, TailProgress { events: 5, offset: 900 })].into_iter().collect(),
        };
        let json = serde_json::to_string(&checkpoint).unwrap();
        assert!(json.contains(r#""segments":[[1,4],[7,7],[9,10]]"#), "{json}");
        assert_eq!(serde_json::from_str::<Checkpoint>(&json).unwrap(), checkpoint);
        assert!(serde_json::from_str::<Checkpoint>(r#"{"version":1,"segments":[[5,1]],"wal":{}}"#).is_err());
    }
}
