//! `proctor export`: whole sessions as a signed evidence bundle, with the
//! renderings auditors' tools read (`statements.csv`, asciicast for
//! terminal sessions), each listed and hashed in the signed `bundle.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use proctor_recorder::evidence::{self, STATEMENTS_FILE};
use proctor_replay_server::render::Asciicast;
use proctor_schemas::{Event, EventBody, SessionId};
use serde_json::json;

use super::access::{self, Access};
use crate::cli::ExportArgs;

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    if args.format != "bundle" {
        anyhow::bail!(
            "--format {}: this release writes evidence bundles only (--format bundle, holding statements.csv and asciicast files); OCSF and an HTML report come with a later one",
            args.format
        );
    }
    let sessions = if args.sessions.is_empty() {
        selected(&args)?
    } else {
        args.sessions
            .iter()
            .map(|s| s.parse::<SessionId>().map_err(|e| anyhow::anyhow!("--session {s}: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let selection = args.sessions.is_empty().then(|| describe(&args));
    let wanted: BTreeSet<SessionId> = sessions.iter().copied().collect();
    let extras = |events: &[Event]| renderings(events, &wanted);
    let exported_by = access::local_user();
    // A `.tar` is the bundle's directory, written aside and then packed.
    let tar = args.out.extension().is_some_and(|e| e == "tar");
    if tar && args.out.exists() {
        anyhow::bail!("{} exists already: give a new path for the bundle", args.out.display());
    }
    let parent = args.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let aside = if tar { Some(tempfile::Builder::new().prefix(".bundle-").tempdir_in(parent)?) } else { None };
    let directory = aside.as_ref().map_or(args.out.clone(), |dir| dir.path().join("bundle"));
    let exported = evidence::export(&evidence::ExportRequest {
        data_dir: &args.data_dir,
        sessions: &sessions,
        exported_by: &exported_by,
        reason: args.reason.as_deref(),
        selection: selection.as_deref(),
        out: &directory,
        extras: &extras,
    })?;
    if tar {
        pack(&directory, &args.out)?;
    }
    // Exporting is reading: recorded as such, per session.
    for session in &wanted {
        access::record(
            &args.data_dir,
            Access { operation: "export", query: args.reason.clone(), target_session: Some(session.to_string()) },
        );
    }
    if args.json {
        let value = json!({
            "out": args.out,
            "sessions": exported.sessions,
            "events": exported.events,
            "related_events": exported.related_events,
            "segments": exported.segments,
            "live": exported.live,
        });
        println!("{value}");
    } else {
        println!(
            "exported {} sessions, {} events ({} of them grants, reviews and access about them) from {} segments to {}{}",
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

/// Packs the bundle directory `dir` into the tar file `out`: its files at
/// the archive's root by their bundle names, written aside, synced and
/// renamed into place.
fn pack(dir: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    let temp = out.with_extension("tar.partial");
    let file = std::fs::File::create(&temp)?;
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
    std::fs::rename(&temp, out)?;
    Ok(())
}

/// The sessions `--subject`, `--resource`, `--since`, `--after` and
/// `--before` select together (control and system sessions aside: their
/// events ride along where they concern the selected ones).
fn selected(args: &ExportArgs) -> anyhow::Result<Vec<SessionId>> {
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
    let reader = proctor_recorder::reader::Reader::open(&args.data_dir)?;
    let sessions: Vec<SessionId> = reader
        .sessions()?
        .into_iter()
        .filter(|s| !matches!(s.protocol.as_deref(), Some("control" | "system")))
        .filter(|s| matches(s))
        .filter(|s| after.is_none_or(|t| s.last_time.is_some_and(|last| last.0 >= t.0)))
        .filter(|s| before.is_none_or(|t| s.first_time.is_some_and(|first| first.0 < t.0)))
        .filter(|s| !s.segments.is_empty())
        .map(|s| s.session_id)
        .collect();
    if sessions.is_empty() {
        anyhow::bail!("no sealed session matches {}", describe(args));
    }
    Ok(sessions)
}

/// The selectors given, as `flag:value` words.
fn describe(args: &ExportArgs) -> String {
    [
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
/// has a terminal, and `statements.csv`.
fn renderings(events: &[Event], wanted: &BTreeSet<SessionId>) -> Vec<(String, Vec<u8>)> {
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
