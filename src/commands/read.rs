//! `proctor sessions` and `proctor replay`: reading recordings from a data dir.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use proctor_recorder::reader::Reader;
use proctor_replay_server::render::{event_json, session_json, transcript_line};

use crate::cli::{ReplayArgs, SessionsArgs};

pub fn sessions(args: SessionsArgs) -> anyhow::Result<ExitCode> {
    if let Some(server) = args.source.remote() {
        return super::remote::sessions(server, &args);
    }
    let data_dir = args.source.data_dir.clone().context("--data-dir DIR or --server URL")?;
    let reader = Reader::open(&data_dir)?;
    let filter = args.filter();
    let matches = filter.matcher(proctor_schemas::Timestamp::now()).map_err(|e| anyhow::anyhow!("--{e}"))?;
    super::access::record(
        &data_dir,
        super::access::Access { operation: "search", query: Some(filter.describe()), target_sessions: Vec::new() },
    );
    let mut out = std::io::stdout().lock();
    for s in reader.sessions()? {
        if !matches(&s) {
            continue;
        }
        if args.json {
            let value = session_json(&s);
            writeln!(out, "{value}")?;
        } else {
            let line = session_line(SessionLine {
                session_id: &s.session_id.to_string(),
                start: &s.first_time.map(|t| t.to_rfc3339()).unwrap_or_default(),
                protocol: s.protocol.as_deref(),
                resource: s.resource.as_deref(),
                subject: s.subject.as_deref(),
                events: s.events,
                end_reason: s.end_reason.as_deref(),
            });
            writeln!(out, "{line}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What one line of `sessions` shows (here and with `--server`).
pub(super) struct SessionLine<'a> {
    pub session_id: &'a str,
    pub start: &'a str,
    pub protocol: Option<&'a str>,
    pub resource: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub events: u64,
    /// `None` while the session runs.
    pub end_reason: Option<&'a str>,
}

pub(super) fn session_line(s: SessionLine<'_>) -> String {
    format!(
        "{}  {}  {:<8} {:<14} {:<22} {:>6} events  {}",
        s.session_id,
        s.start,
        s.protocol.unwrap_or("-"),
        s.resource.unwrap_or("-"),
        s.subject.unwrap_or("-"),
        s.events,
        s.end_reason.unwrap_or("(live)"),
    )
}

/// A terminal session as asciicast v2 on stdout.
fn asciicast(
    reader: &Reader,
    data_dir: &std::path::Path,
    session_id: proctor_schemas::SessionId,
) -> anyhow::Result<ExitCode> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut cast = proctor_replay_server::render::Asciicast::default();
    let (mut any, mut lines, mut written) = (false, 0usize, Ok(()));
    reader.for_each_session_event(session_id, 0, |event| {
        any = true;
        for line in cast.feed(&event) {
            lines += 1;
            written = writeln!(out, "{line}");
        }
        Ok(if written.is_ok() { std::ops::ControlFlow::Continue(()) } else { std::ops::ControlFlow::Break(()) })
    })?;
    if any {
        super::access::record(
            data_dir,
            super::access::Access { operation: "read", query: None, target_sessions: vec![session_id.to_string()] },
        );
    }
    written?;
    out.flush()?;
    if !any {
        anyhow::bail!("no session {session_id} in {}", data_dir.display());
    }
    if lines == 0 {
        anyhow::bail!("session {session_id} has no terminal output: asciicast is for terminal sessions");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    if let Some(server) = args.source.remote() {
        return super::remote::replay(server, &args);
    }
    let data_dir = args.source.data_dir.clone().context("--data-dir DIR or --server URL")?;
    let session_id = args.session_id;
    let reader = Reader::open(&data_dir)?;
    if args.asciicast {
        return asciicast(&reader, &data_dir, session_id);
    }
    // Streamed: a page of a long session costs a page, in time and memory.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut printed = 0usize;
    let mut written = Ok(());
    let limit = args.limit.unwrap_or(usize::MAX);
    if limit > 0 {
        reader.for_each_session_event(session_id, args.from_seq, |event| {
            let line = if args.json { event_json(&event).to_string() } else { transcript_line(&event) };
            written = writeln!(out, "{line}");
            printed += 1;
            let more = written.is_ok() && printed < limit;
            Ok(if more { std::ops::ControlFlow::Continue(()) } else { std::ops::ControlFlow::Break(()) })
        })?;
    }
    // What was read is recorded even if the output then failed (a closed pipe).
    if printed > 0 {
        super::access::record(
            &data_dir,
            super::access::Access { operation: "read", query: None, target_sessions: vec![session_id.to_string()] },
        );
    }
    written?;
    out.flush()?;
    drop(out);
    if printed == 0 && args.from_seq == 0 && limit > 0 {
        anyhow::bail!("no session {session_id} in {}", data_dir.display());
    }
    Ok(ExitCode::SUCCESS)
}
