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
use crate::document::{SessionContext, Source, document, event_text, session_context};
use crate::fields::{Fields, INDEX_VERSION, SESSION_RESOURCE_COLUMN, SESSION_SUBJECT_COLUMN};
use crate::search::keyword_column;
use crate::terminal::{LineEditor, render_output};
use crate::{IndexError, Result};

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
/// up to date once per round.
#[derive(Default)]
struct Committed {
    reader: Option<IndexReader>,
    fresh: bool,
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
        let reader = match self.committed.reader.take() {
            Some(reader) => reader,
            None => self.index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?,
        };
        if !self.committed.fresh {
            reader.reload()?;
            self.committed.fresh = true;
        }
        let searcher = reader.searcher();
        let kind = fields.keyword("kind").map(|f| Term::from_field_text(f, EventKind::SessionStart.as_str()));
        let Some(kind) = kind else { return Ok(None) };
        let query = tantivy::query::BooleanQuery::new(vec![
            (Occur::Must, Box::new(TermQuery::new(kind, IndexRecordOption::Basic)) as Box<dyn Query>),
            (Occur::Must, Box::new(crate::query::of_sessions(vec![id.to_string()], true))),
        ]);
        let found = searcher.search(&query, &DocSetCollector)?;
        let context = match found.into_iter().next() {
            Some(address) => {
                let columns = searcher.segment_reader(address.segment_ord).fast_fields();
                Some(SessionContext {
                    subject: keyword_column(columns, SESSION_SUBJECT_COLUMN, address.doc_id)?,
                    resource: keyword_column(columns, SESSION_RESOURCE_COLUMN, address.doc_id)?,
                })
            }
            None => None,
        };
        self.committed.reader = Some(reader);
        Ok(context)
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
}

/// Per-session state of one stream of events (the sealed segments, or the
/// WAL tail): the session's describing values and the line being typed.
#[derive(Default)]
struct Sessions {
    context: HashMap<String, SessionContext>,
    editors: HashMap<String, LineEditor>,
}

/// An event's document. `seed` is the sealed stream's state, from which a
/// tail session not seen before starts.
fn event_document(
    state: &mut Sessions,
    seed: Option<&Sessions>,
    starts: &mut Starts<'_>,
    fields: &Fields,
    event: &Event,
    source: Source,
    id_buf: &mut SessionIdText,
) -> Result<TantivyDocument> {
    let cells = event.cells(id_buf);
    let id = match cells.get(Column::SessionId) {
        Some(Value::Str(id)) => id,
        _ => "",
    };
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
    let doc = document(fields, &cells, source, state.context.get(id), &text);
    if matches!(event.body, EventBody::SessionEnd(_)) {
        state.context.remove(id);
        state.editors.remove(id);
    }
    Ok(doc)
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
                let doc =
                    event_document(&mut self.sealed, None, &mut starts, &self.fields, &event, source, &mut id_buf)
                        .map_err(cannot)?;
                batch.push(UserOperation::Add(doc));
                if batch.len() >= SEND_BATCH {
                    send(&self.writer, &mut batch).map_err(cannot)?;
                }
                if matches!(event.body, EventBody::SessionEnd(_)) {
                    // Ended: the tail's state of it is not needed either.
                    let id = id_buf.render(event.session_id);
                    self.tail.context.remove(id);
                    self.tail.editors.remove(id);
                }
                added += 1;
                Ok(())
            })?;
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
                let doc = event_document(&mut self.tail, seed, &mut starts, &self.fields, event, source, &mut id_buf)?;
                batch.push(UserOperation::Add(doc));
                if batch.len() >= SEND_BATCH {
                    send(&self.writer, &mut batch)?;
                }
            }
            progress.wal_events += events.len() as u64;
            next.wal.insert(number, TailProgress { events: done.events + events.len() as u64, offset });
        }
        // WAL files that vanished without a segment (an empty file) leave
        // nothing to index.
        next.wal.retain(|n, _| live.contains(n) || sealed.contains(n));

        send(&self.writer, &mut batch)?;
        if next != self.checkpoint {
            self.commit(&next)?;
        }
        Ok(progress)
    }

    fn commit(&mut self, next: &Checkpoint) -> Result<()> {
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
