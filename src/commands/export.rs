//! `proctor export`: whole sessions as a signed evidence bundle, with the
//! renderings auditors' tools read (`statements.csv`, `ocsf.jsonl`,
//! asciicast for terminal sessions), each listed and hashed in the signed
//! `bundle.json`; or one of those renderings alone. Every export is
//! recorded (`recording_accessed`, operation `export`, with the bundle's
//! hash) before it is moved into place; one that cannot be is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use proctor_recorder::evidence::{self, OCSF_FILE, REPORT_FILE, STATEMENTS_FILE};
use proctor_replay_server::render::Asciicast;
use proctor_replay_server::report::{self, ReportHeader};
use proctor_schemas::{Event, EventBody, SessionId};
use serde_json::json;

use super::access::{self, Access};
use crate::cli::{ExportArgs, ExportFormat};

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    if args.out.exists() {
        anyhow::bail!("{} exists already: give a new path to export to", args.out.display());
    }
    let (sessions, mut notices) = if args.sessions.is_empty() {
        selected(&args)?
    } else {
        let sessions = args
            .sessions
            .iter()
            .map(|s| s.parse::<SessionId>().map_err(|e| anyhow::anyhow!("--session {s}: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        (sessions, Vec::new())
    };
    let selection = args.sessions.is_empty().then(|| describe(&args));
    let wanted: BTreeSet<SessionId> = sessions.iter().copied().collect();
    let exported_by = access::local_user();
    let exported_at = proctor_schemas::Timestamp::now();
    let header =
        ReportHeader { exported_by: &exported_by, reason: args.reason.as_deref(), selection: selection.as_deref() };
    let extras = |events: &[Event]| renderings(events, &wanted, &header);
    // Everything is written aside, beside PATH, and moved into place only
    // once the export is recorded: evidence no record says was taken
    // never leaves.
    let parent = args.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let aside = tempfile::Builder::new().prefix(".proctor-export-").tempdir_in(parent)?;
    let directory = aside.path().join("bundle");
    let exported = evidence::export(&evidence::ExportRequest {
        data_dir: &args.data_dir,
        sessions: &sessions,
        exported_by: &exported_by,
        exported_at,
        reason: args.reason.as_deref(),
        selection: selection.as_deref(),
        out: &directory,
        extras: &extras,
    })?;
    let bundle_sha256 = sha256_of(&directory.join(evidence::BUNDLE_FILE))?;
    // What is delivered: (the path written aside, what it is).
    let (written, what) = match args.format {
        ExportFormat::Bundle if args.out.extension().is_some_and(|e| e == "tar") => {
            let tar = aside.path().join("bundle.tar");
            pack(&directory, &tar)?;
            (tar, "bundle")
        }
        ExportFormat::Bundle => (directory.clone(), "bundle"),
        ExportFormat::Ocsf => (directory.join(OCSF_FILE), "ocsf"),
        ExportFormat::Csv => (directory.join(STATEMENTS_FILE), "csv"),
        ExportFormat::Asciicast => (casts(&directory, &args.out)?, "asciicast"),
    };
    let delivered_sha256 = if written.is_file() { sha256_of(&written)? } else { bundle_sha256.clone() };
    let mut query = format!("format:{what} bundle_sha256:{bundle_sha256}");
    if written.is_file() {
        query.push_str(&format!(" file_sha256:{delivered_sha256}"));
    }
    if let Some(selection) = &selection {
        query.push_str(&format!(" selection:({selection})"));
    }
    if let Some(reason) = &args.reason {
        query.push_str(&format!(" reason:({reason})"));
    }
    let targets: Vec<String> = wanted.iter().map(ToString::to_string).collect();
    access::try_record(&args.data_dir, Access { operation: "export", query: Some(query), target_sessions: targets })
        .map_err(|e| anyhow::anyhow!("{e:#}; nothing was exported"))?;
    std::fs::rename(&written, &args.out)
        .map_err(|e| anyhow::anyhow!("cannot move the export into {}: {e}", args.out.display()))?;
    if let Some(dir) = args.out.parent() {
        let _ = std::fs::File::open(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })
            .and_then(|d| d.sync_all());
    }
    if !args.json {
        for notice in notices.drain(..) {
            eprintln!("proctor: note: {notice}");
        }
    }
    if args.json {
        let value = json!({
            "out": args.out,
            "format": what,
            "sessions": exported.sessions,
            "events": exported.events,
            "related_events": exported.related_events,
            "segments": exported.segments,
            "live": exported.live,
            "bundle_sha256": bundle_sha256,
            "sha256": delivered_sha256,
            "notices": notices,
        });
        println!("{value}");
    } else {
        println!(
            "exported {} sessions, {} events ({} of them grants, reviews and access about them) from {} segments to {} ({what}){}",
            exported.sessions,
            exported.events,
            exported.related_events,
            exported.segments,
            args.out.display(),
            if exported.live.is_empty() { String::new() } else { format!(" (live: {})", exported.live.join(", ")) }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// SHA-256 of a file, hex.
fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let (sha256, _) =
        proctor_recorder::verify::hash_file(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(sha256)
}

/// The asciicast files of a bundle written at `bundle`, as `out` wants
/// them: the one file when `out` ends in `.cast` (there must be exactly
/// one), else the bundle's `asciicast/` directory.
fn casts(bundle: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    let dir = bundle.join("asciicast");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    if files.is_empty() {
        anyhow::bail!("none of the selected sessions has a terminal: there is no asciicast to write");
    }
    if out.extension().is_some_and(|e| e == "cast") {
        if files.len() > 1 {
            anyhow::bail!(
                "{} terminal sessions are selected: give a directory (a PATH not ending in .cast) for their asciicast files",
                files.len()
            );
        }
        return Ok(files.remove(0));
    }
    Ok(dir)
}

/// Packs the bundle directory `dir` into the tar file `out`: its files at
/// the archive's root by their bundle names, synced.
fn pack(dir: &Path, out: &Path) -> anyhow::Result<()> {
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
        let name = path.strip_prefix(dir)?;
        builder.append_path_with_name(&path, name)?;
    }
    let file = builder.into_inner()?;
    file.sync_all()?;
    Ok(())
}

/// The sessions `--query`, `--subject`, `--resource`, `--since`,
/// `--after` and `--before` select together (control and system sessions
/// aside: their events ride along where they concern the selected ones),
/// and notes on how the query was read.
fn selected(args: &ExportArgs) -> anyhow::Result<(Vec<SessionId>, Vec<String>)> {
    let time = |flag: &str, value: &Option<String>| -> anyhow::Result<Option<proctor_schemas::Timestamp>> {
        value
            .as_deref()
            .map(|v| {
                proctor_schemas::Timestamp::parse_rfc3339(v)
                    .ok_or_else(|| anyhow::anyhow!("--{flag} {v}: expected a time such as 2026-12-07T09:00:00Z"))
            })
            .transpose()
    };
    let (after, before) = (time("after", &args.after)?, time("before", &args.before)?);
    let filter = proctor_replay_server::SessionFilter {
        subject: args.subject.clone(),
        resource: args.resource.clone(),
        protocol: None,
        since: args.since.clone(),
        live: false,
    };
    let matches = filter.matcher(proctor_schemas::Timestamp::now()).map_err(|e| anyhow::anyhow!("--{e}"))?;
    let mut notices = Vec::new();
    let hit: Option<BTreeSet<String>> = match &args.query {
        Some(query) => {
            let matched = sessions_matching(&args.data_dir, query)?;
            notices.extend(matched.notices);
            Some(matched.sessions.into_keys().collect())
        }
        None => None,
    };
    let reader = proctor_recorder::reader::Reader::open(&args.data_dir)?;
    let mut hits_in_control = 0;
    let sessions: Vec<SessionId> = reader
        .sessions()?
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
        anyhow::bail!("no sealed session matches {}", describe(args));
    }
    Ok((sessions, notices))
}

/// The sessions `query`'s hits belong to, from the data dir's search
/// index (brought up to date first when no running Proctor keeps it).
fn sessions_matching(data_dir: &Path, query: &str) -> anyhow::Result<proctor_indexer::SessionsMatched> {
    use proctor_indexer::{IndexError, Indexer, SearchIndex};
    let refreshed = Indexer::open(data_dir).and_then(|mut indexer| {
        indexer.catch_up()?;
        indexer.finish()
    });
    match refreshed {
        Ok(()) | Err(IndexError::Busy(_)) => {}
        Err(error) => tracing::warn!(%error, "the search index could not be brought up to date"),
    }
    let index = SearchIndex::open(data_dir)?;
    index.sessions_matching(query, proctor_schemas::Timestamp::now()).map_err(|e| match e {
        IndexError::Query(error) => anyhow::anyhow!("--query: {error}"),
        other => other.into(),
    })
}

/// The selectors given, as `flag:value` words.
fn describe(args: &ExportArgs) -> String {
    [
        ("query", &args.query),
        ("subject", &args.subject),
        ("resource", &args.resource),
        ("since", &args.since),
        ("after", &args.after),
        ("before", &args.before),
    ]
    .iter()
    .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}:{v}")))
    .collect::<Vec<_>>()
    .join(" ")
}

/// The bundle's renderings: an asciicast file per exported session that
/// has a terminal, `statements.csv`, `ocsf.jsonl` and `report.html`.
fn renderings(events: &[Event], wanted: &BTreeSet<SessionId>, header: &ReportHeader<'_>) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut casts: BTreeMap<SessionId, (Asciicast, String)> = BTreeMap::new();
    for event in events.iter().filter(|e| wanted.contains(&e.session_id)) {
        let (cast, text) = casts.entry(event.session_id).or_default();
        for line in cast.feed(event) {
            text.push_str(&line);
            text.push('\n');
        }
    }
    for (session, (_, text)) in casts {
        if !text.is_empty() {
            files.push((format!("asciicast/{session}.cast"), text.into_bytes()));
        }
    }
    files.push((STATEMENTS_FILE.to_string(), statements_csv(events, wanted)));
    files.push((OCSF_FILE.to_string(), proctor_replay_server::ocsf::jsonl(events)));
    files.push((REPORT_FILE.to_string(), report::html(events, wanted, header)));
    files
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
