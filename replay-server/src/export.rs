//! Exports: whole sessions as a signed evidence bundle (see
//! [`proctor_recorder::evidence`]) with the renderings auditors' tools read
//! (`report.html`, `statements.csv`, `ocsf.jsonl`, asciicast for terminal
//! sessions), or one of those renderings alone. Shared by `proctor export`
//! and `POST /api/exports`: both [`select`] the sessions, [`prepare`] the
//! export aside, record it as an access naming its hashes, and only then
//! deliver it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proctor_recorder::RecorderError;
use proctor_recorder::evidence::{self, Exported, OCSF_FILE, REPORT_FILE, Renderings, STATEMENTS_FILE};
use proctor_schemas::{Event, EventBody, SessionId, Timestamp};

use crate::render::Asciicast;
use crate::report::{self, ReportHeader};

/// What an export writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The signed bundle, holding every format below.
    Bundle,
    /// OCSF 1.3.0 JSON lines.
    Ocsf,
    /// asciicast v2, terminal sessions.
    Asciicast,
    /// Statements and decisions, for spreadsheets.
    Csv,
}

impl Format {
    pub const ALL: [Format; 4] = [Format::Bundle, Format::Ocsf, Format::Asciicast, Format::Csv];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Bundle => "bundle",
            Format::Ocsf => "ocsf",
            Format::Asciicast => "asciicast",
            Format::Csv => "csv",
        }
    }

    pub fn parse(text: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.as_str() == text)
    }
}

/// Why an export was not made: the selection was wrong (the caller's
/// mistake), selected nothing, or the recording could not give it.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Selection(String),
    #[error("{0}")]
    Nothing(String),
    #[error("{0}")]
    Failed(String),
    /// No room where the export is written.
    #[error("{0}")]
    NoRoom(String),
}

fn failed(error: impl std::fmt::Display) -> ExportError {
    ExportError::Failed(error.to_string())
}

/// Sessions chosen by what they are rather than by id.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct Selectors {
    /// A search: the sessions its hits belong to.
    pub query: Option<String>,
    pub subject: Option<String>,
    pub resource: Option<String>,
    /// Active within this span (`7d`).
    pub since: Option<String>,
    /// Active at or after this time (RFC 3339).
    pub after: Option<String>,
    /// Begun before this time (RFC 3339).
    pub before: Option<String>,
}

impl Selectors {
    pub fn is_empty(&self) -> bool {
        self.describe().is_empty()
    }

    /// The selectors given, as `name:value` words.
    pub fn describe(&self) -> String {
        [
            ("query", &self.query),
            ("subject", &self.subject),
            ("resource", &self.resource),
            ("since", &self.since),
            ("after", &self.after),
            ("before", &self.before),
        ]
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}:{v}")))
        .collect::<Vec<_>>()
        .join(" ")
    }
}

/// The sealed sessions the selectors choose together (control and system
/// sessions aside: their events ride along where they concern the chosen
/// ones), and notes on how the query was read.
pub fn select(data_dir: &Path, selectors: &Selectors) -> Result<(Vec<SessionId>, Vec<String>), ExportError> {
    let time = |name: &str, value: &Option<String>| -> Result<Option<Timestamp>, ExportError> {
        value
            .as_deref()
            .map(|v| {
                Timestamp::parse_rfc3339(v).ok_or_else(|| {
                    ExportError::Selection(format!("{name} {v}: expected a time such as 2026-12-07T09:00:00Z"))
                })
            })
            .transpose()
    };
    let (after, before) = (time("after", &selectors.after)?, time("before", &selectors.before)?);
    let filter = crate::SessionFilter {
        subject: selectors.subject.clone(),
        resource: selectors.resource.clone(),
        protocol: None,
        since: selectors.since.clone(),
        live: false,
    };
    let matches = filter.matcher(Timestamp::now()).map_err(ExportError::Selection)?;
    let mut notices = Vec::new();
    let hit: Option<BTreeSet<String>> = match &selectors.query {
        Some(query) => {
            let matched = sessions_matching(data_dir, query)?;
            notices.extend(matched.notices);
            Some(matched.sessions.into_keys().collect())
        }
        None => None,
    };
    let reader = proctor_recorder::reader::Reader::open(data_dir).map_err(failed)?;
    let mut hits_in_control = 0;
    let sessions: Vec<SessionId> = reader
        .sessions()
        .map_err(failed)?
        .into_iter()
        .filter(|s| hit.as_ref().is_none_or(|hit| hit.contains(&s.session_id.to_string())))
        .filter(|s| {
            let control = matches!(s.protocol.as_deref(), Some("control" | "system"));
            hits_in_control += usize::from(control && hit.is_some());
            !control
        })
        .filter(|s| matches(s))
        .filter(|s| after.is_none_or(|t| s.last_time.is_some_and(|last| last.0 >= t.0)))
        .filter(|s| before.is_none_or(|t| s.first_time.is_some_and(|first| first.0 < t.0)))
        .filter(|s| !s.segments.is_empty())
        .map(|s| s.session_id)
        .collect();
    if hits_in_control > 0 {
        notices.push(format!(
            "the query also matched events of {hits_in_control} control sessions (grants, reviews, access): they are not exported whole; their events about the exported sessions are"
        ));
    }
    if sessions.is_empty() {
        return Err(ExportError::Nothing(format!("no sealed session matches {}", selectors.describe())));
    }
    Ok((sessions, notices))
}

/// The sessions `query`'s hits belong to, from the data dir's search
/// index (brought up to date first when no running Proctor keeps it).
fn sessions_matching(data_dir: &Path, query: &str) -> Result<proctor_indexer::SessionsMatched, ExportError> {
    use proctor_indexer::{IndexError, Indexer, SearchIndex};
    let refreshed = Indexer::open(data_dir).and_then(|mut indexer| {
        indexer.catch_up()?;
        indexer.finish()
    });
    match refreshed {
        Ok(()) | Err(IndexError::Busy(_)) => {}
        Err(error) => tracing::warn!(%error, "the search index could not be brought up to date"),
    }
    let index = SearchIndex::open(data_dir).map_err(failed)?;
    index.sessions_matching(query, Timestamp::now()).map_err(|e| match e {
        IndexError::Query(error) => ExportError::Selection(format!("query: {error}")),
        other => failed(other),
    })
}

/// An export to make.
pub struct Request<'a> {
    pub data_dir: &'a Path,
    pub sessions: &'a [SessionId],
    /// How the sessions were chosen, when not by id.
    pub selection: Option<&'a str>,
    pub exported_by: &'a str,
    pub reason: Option<&'a str>,
    pub format: Format,
    /// A bundle as one tar file, asciicast as one `.cast` file (of the one
    /// terminal session selected); else directories.
    pub one_file: bool,
    /// A new directory to write in, on the filesystem the export is
    /// delivered to.
    pub aside: &'a Path,
}

/// An export written aside, not yet delivered.
#[derive(Debug)]
pub struct Prepared {
    /// What to deliver: a file or a directory under the request's `aside`.
    pub written: PathBuf,
    pub format: Format,
    pub exported: Exported,
    /// SHA-256 of the bundle's `bundle.json`, and of what is delivered
    /// (the same for a bundle directory).
    pub bundle_sha256: String,
    pub sha256: String,
    /// The sessions exported, and what the access record of the export
    /// says: `format:F bundle_sha256:H [file_sha256:H] [selection:"..."]
    /// [reason:"..."]` (the last two JSON strings).
    pub targets: Vec<String>,
    pub access_query: String,
}

/// Writes the export `request` asks for under its `aside` directory: the
/// bundle (every format is rendered from the events it proves), then what
/// the format asks for.
pub fn prepare(request: &Request<'_>) -> Result<Prepared, ExportError> {
    let wanted: BTreeSet<SessionId> = request.sessions.iter().copied().collect();
    let header =
        ReportHeader { exported_by: request.exported_by, reason: request.reason, selection: request.selection };
    let extras = |events: &[Event], files: &mut dyn Renderings| renderings(events, &wanted, &header, files);
    let directory = request.aside.join("bundle");
    let exported = evidence::export(&evidence::ExportRequest {
        data_dir: request.data_dir,
        sessions: request.sessions,
        exported_by: request.exported_by,
        exported_at: Timestamp::now(),
        reason: request.reason,
        selection: request.selection,
        out: &directory,
        extras: &extras,
    })
    .map_err(|e| match e {
        proctor_recorder::RecorderError::Export(message) if message.contains("is not in the sealed recording") => {
            ExportError::Nothing(message)
        }
        proctor_recorder::RecorderError::NoRoom(message) => ExportError::NoRoom(message),
        other => failed(other),
    })?;
    let bundle_sha256 = sha256_of(&directory.join(evidence::BUNDLE_FILE))?;
    let written = match request.format {
        Format::Bundle if request.one_file => {
            let tar = request.aside.join("bundle.tar");
            pack(&directory, &tar).map_err(|e| failed(format!("cannot pack the bundle: {e}")))?;
            tar
        }
        Format::Bundle => directory.clone(),
        Format::Ocsf => directory.join(OCSF_FILE),
        Format::Csv => directory.join(STATEMENTS_FILE),
        Format::Asciicast => casts(&directory, request.one_file)?,
    };
    let sha256 = if written.is_file() { sha256_of(&written)? } else { bundle_sha256.clone() };
    let mut access_query = format!("format:{} bundle_sha256:{bundle_sha256}", request.format.as_str());
    if written.is_file() {
        access_query.push_str(&format!(" file_sha256:{sha256}"));
    }
    // Quoted as JSON strings: what a caller wrote cannot pass for a field.
    let quoted = |text: &str| serde_json::to_string(text).unwrap_or_default();
    if let Some(selection) = request.selection {
        access_query.push_str(&format!(" selection:{}", quoted(selection)));
    }
    if let Some(reason) = request.reason {
        access_query.push_str(&format!(" reason:{}", quoted(reason)));
    }
    Ok(Prepared {
        written,
        format: request.format,
        exported,
        bundle_sha256,
        sha256,
        targets: wanted.iter().map(ToString::to_string).collect(),
        access_query,
    })
}

/// SHA-256 of a file, hex.
fn sha256_of(path: &Path) -> Result<String, ExportError> {
    let (sha256, _) =
        proctor_recorder::verify::hash_file(path).map_err(|e| failed(format!("{}: {e}", path.display())))?;
    Ok(sha256)
}

/// The asciicast files of the bundle at `bundle`: the one file when
/// `one_file` (there must be exactly one), else the `asciicast/` directory.
fn casts(bundle: &Path, one_file: bool) -> Result<PathBuf, ExportError> {
    let dir = bundle.join("asciicast");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    if files.is_empty() {
        return Err(ExportError::Nothing(
            "none of the selected sessions has a terminal: there is no asciicast to write".to_string(),
        ));
    }
    if one_file {
        if files.len() > 1 {
            return Err(ExportError::Selection(format!(
                "{} terminal sessions are selected: export their asciicast files as a directory (a PATH not ending in .cast), or as a bundle",
                files.len()
            )));
        }
        return Ok(files.remove(0));
    }
    Ok(dir)
}

/// Packs the bundle directory `dir` into the tar file `out`: its files at
/// the archive's root by their bundle names, synced.
pub fn pack(dir: &Path, out: &Path) -> std::io::Result<()> {
    let file = std::fs::File::create(out)?;
    let mut builder = tar::Builder::new(file);
    builder.mode(tar::HeaderMode::Deterministic);
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    for path in files {
        let name = path.strip_prefix(dir).map_err(std::io::Error::other)?;
        builder.append_path_with_name(&path, name)?;
    }
    let file = builder.into_inner()?;
    file.sync_all()?;
    Ok(())
}

/// The bundle's renderings, written to `files` as they are made: an
/// asciicast file per exported session that has a terminal,
/// `statements.csv`, `report.html`, and `ocsf.jsonl` (made in pieces on
/// every core and written in order, never whole in memory).
fn renderings(
    events: &[Event],
    wanted: &BTreeSet<SessionId>,
    header: &ReportHeader<'_>,
    files: &mut dyn Renderings,
) -> Result<(), RecorderError> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from).clamp(1, 8);
    let starts = crate::ocsf::Starts::of(events);
    std::thread::scope(|scope| {
        // The report and the spreadsheet meanwhile, on a core of their own.
        let others = scope.spawn(|| {
            let mut casts: BTreeMap<SessionId, (Asciicast, String)> = BTreeMap::new();
            for event in events.iter().filter(|e| wanted.contains(&e.session_id)) {
                let (cast, text) = casts.entry(event.session_id).or_default();
                for line in cast.feed(event) {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
            let csv = statements_csv(events, wanted);
            let html = report::html(events, wanted, header);
            (casts, csv, html)
        });
        // As many pieces made at once as there are cores, each written (and
        // hashed) in order as soon as it is made, the next one begun.
        const PIECE: usize = 16 * 1024;
        let starts = &starts;
        // Their buffers are used again, piece after piece.
        files.file(OCSF_FILE, &mut |out| {
            let mut pieces = events.chunks(PIECE);
            let make = |piece, mut buffer: Vec<u8>| {
                scope.spawn(move || {
                    buffer.clear();
                    crate::ocsf::jsonl_into(piece, starts, &mut buffer);
                    buffer
                })
            };
            let mut running: std::collections::VecDeque<_> =
                pieces.by_ref().take(cores).map(|piece| make(piece, Vec::new())).collect();
            let mut spare = Vec::new();
            while let Some(made) = running.pop_front() {
                let bytes = made.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                if let Some(piece) = pieces.next() {
                    running.push_back(make(piece, std::mem::take(&mut spare)));
                }
                out.write_all(&bytes)?;
                spare = bytes;
            }
            Ok(())
        })?;
        let (casts, csv, html) = others.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        for (session, (_, text)) in casts {
            if !text.is_empty() {
                files.file(&format!("asciicast/{session}.cast"), &mut |out| out.write_all(text.as_bytes()))?;
            }
        }
        files.file(STATEMENTS_FILE, &mut |out| out.write_all(&csv))?;
        files.file(REPORT_FILE, &mut |out| out.write_all(&html))
    })
}

/// Every statement, prepared statement, command run and command typed of
/// the exported sessions, one row each, with the session's subject and
/// resource and the policy decision on it, for spreadsheets. A cell a
/// spreadsheet would take for a formula (beginning `=`, `+`, `-`, `@`, a
/// tab or a carriage return: what a recorded user typed could otherwise
/// run in the auditor's spreadsheet) begins with `'`; the events file
/// holds the text as recorded.
pub fn statements_csv(events: &[Event], wanted: &BTreeSet<SessionId>) -> Vec<u8> {
    let mut starts: BTreeMap<SessionId, &proctor_schemas::SessionStart> = BTreeMap::new();
    let mut decisions: BTreeMap<(SessionId, u64), &proctor_schemas::PolicyDecision> = BTreeMap::new();
    for event in events {
        match &event.body {
            EventBody::SessionStart(s) => {
                starts.insert(event.session_id, s);
            }
            EventBody::PolicyDecision(d) => {
                if let Some(seq) = d.ref_seq {
                    decisions.insert((event.session_id, seq), d);
                }
            }
            _ => {}
        }
    }
    let mut out = csv::Writer::from_writer(Vec::new());
    let header = [
        "time",
        "session_id",
        "seq",
        "subject",
        "resource",
        "grant_id",
        "kind",
        "text",
        "outcome",
        "rule",
        "review_id",
        "message",
    ];
    let _ = out.write_record(header);
    for event in events.iter().filter(|e| wanted.contains(&e.session_id)) {
        let text = match &event.body {
            EventBody::Statement(s) => &s.sql,
            EventBody::Prepare(p) => &p.sql,
            EventBody::Exec(e) => &e.command,
            EventBody::Command(c) => &c.command,
            _ => continue,
        };
        let start = starts.get(&event.session_id);
        let of_start = |field: fn(&proctor_schemas::SessionStart) -> &Option<String>| {
            start.and_then(|s| field(s).clone()).unwrap_or_default()
        };
        let decision = decisions.get(&(event.session_id, event.seq));
        let record = [
            event.time.to_rfc3339(),
            event.session_id.to_string(),
            event.seq.to_string(),
            of_start(|s| &s.subject),
            of_start(|s| &s.resource),
            of_start(|s| &s.grant_id),
            event.body.kind().as_str().to_string(),
            text.clone(),
            decision.map(|d| d.outcome.as_str().to_string()).unwrap_or_default(),
            decision.and_then(|d| d.rule.clone()).unwrap_or_default(),
            decision.and_then(|d| d.review_id.clone()).unwrap_or_default(),
            decision.and_then(|d| d.message.clone()).unwrap_or_default(),
        ];
        let _ = out.write_record(record.iter().map(|cell| spreadsheet_safe(cell).into_owned()));
    }
    out.into_inner().unwrap_or_default()
}

/// `cell`, with `'` before it if a spreadsheet would read it as a formula.
fn spreadsheet_safe(cell: &str) -> std::borrow::Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        std::borrow::Cow::Owned(format!("'{cell}"))
    } else {
        std::borrow::Cow::Borrowed(cell)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_a_spreadsheet_would_run_are_neutralised() {
        for formula in ["=HYPERLINK(\"http://x\")", "+1+1", "-- comment", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(spreadsheet_safe(formula), format!("'{formula}"));
        }
        assert_eq!(spreadsheet_safe("select 1"), "select 1");
        assert_eq!(spreadsheet_safe(""), "");
    }
}
