//! `proctor sessions` and `proctor replay`: reading recordings from a data dir.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use proctor_recorder::reader::Reader;
use proctor_schemas::{Event, EventBody, SessionId, SessionIdText, Value};
use serde_json::{Map, json};

use crate::cli::{ReplayArgs, SessionsArgs};

pub fn sessions(args: SessionsArgs) -> anyhow::Result<ExitCode> {
    let reader = Reader::open(&args.data_dir)?;
    let since = match &args.since {
        Some(span) => Some(
            proctor_indexer::query::span(span)
                .with_context(|| format!("--since {span:?}: expected a span such as 30m, 12h, 7d or 2w"))?,
        ),
        None => None,
    };
    let now = proctor_schemas::Timestamp::now().0;
    let filters: Vec<String> = [
        ("subject", &args.subject),
        ("resource", &args.resource),
        ("protocol", &args.protocol),
        ("since", &args.since),
    ]
    .iter()
    .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}:{v}")))
    .chain(args.live.then(|| "live".to_string()))
    .collect();
    super::access::record(
        &args.data_dir,
        super::access::Access {
            operation: "search",
            query: Some(format!("sessions {}", filters.join(" "))),
            target_session: None,
        },
    );
    let wanted = |value: &Option<String>, filter: &Option<String>| filter.is_none() || value == filter;
    let mut out = std::io::stdout().lock();
    for s in reader.sessions()? {
        let recent = since.is_none_or(|span| s.last_time.is_some_and(|t| t.0 >= now.saturating_sub(span)));
        if !(wanted(&s.subject, &args.subject)
            && wanted(&s.resource, &args.resource)
            && wanted(&s.protocol, &args.protocol)
            && recent
            && (!args.live || s.end_reason.is_none()))
        {
            continue;
        }
        if args.json {
            let value = json!({
                "session_id": s.session_id.to_string(),
                "protocol": s.protocol,
                "resource": s.resource,
                "subject": s.subject,
                "start": s.first_time.map(|t| t.to_rfc3339()),
                "end": s.last_time.map(|t| t.to_rfc3339()),
                "end_reason": s.end_reason,
                "events": s.events,
                "live": s.end_reason.is_none(),
            });
            writeln!(out, "{value}")?;
        } else {
            writeln!(
                out,
                "{}  {}  {:<8} {:<14} {:<22} {:>6} events  {}",
                s.session_id,
                s.first_time.map(|t| t.to_rfc3339()).unwrap_or_default(),
                s.protocol.as_deref().unwrap_or("-"),
                s.resource.as_deref().unwrap_or("-"),
                s.subject.as_deref().unwrap_or("-"),
                s.events,
                s.end_reason.as_deref().unwrap_or("(live)"),
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let session_id: SessionId = args.session_id.parse().context("not a session id")?;
    let reader = Reader::open(&args.data_dir)?;
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
    written?;
    out.flush()?;
    drop(out);
    if printed == 0 && args.from_seq == 0 && limit > 0 {
        anyhow::bail!("no session {session_id} in {}", args.data_dir.display());
    }
    super::access::record(
        &args.data_dir,
        super::access::Access { operation: "read", query: None, target_session: Some(session_id.to_string()) },
    );
    Ok(ExitCode::SUCCESS)
}

/// An event as JSON: every non-null column, bytes as UTF-8 (lossy).
pub fn event_json(event: &Event) -> serde_json::Value {
    let mut id = SessionIdText::default();
    let mut object = Map::new();
    for (column, value) in event.cells(&mut id).iter() {
        let value = match value {
            Value::Str(s) => json!(s),
            Value::U64(v) => json!(v),
            Value::I64(v) if column.ty() == proctor_schemas::ColumnType::Time => {
                json!(proctor_schemas::Timestamp(v).to_rfc3339())
            }
            Value::I64(v) => json!(v),
            Value::Bool(v) => json!(v),
            Value::Bytes(b) => json!(String::from_utf8_lossy(b)),
            Value::StrList(v) => json!(v),
            Value::OptStrList(v) => json!(v),
            Value::Rows(v) => json!(v),
            Value::Pairs(v) => json!(v.iter().map(|h| json!({"name": h.name, "value": h.value})).collect::<Vec<_>>()),
            Value::Counts(v) => json!(v.iter().map(|c| json!({"rule": c.rule, "count": c.count})).collect::<Vec<_>>()),
        };
        object.insert(column.name().to_string(), value);
    }
    serde_json::Value::Object(object)
}

fn transcript_line(event: &Event) -> String {
    let arrow = match event.direction {
        proctor_schemas::Direction::ClientToTarget => "->",
        proctor_schemas::Direction::TargetToClient => "<-",
        proctor_schemas::Direction::Gateway => "==",
    };
    let what = match &event.body {
        EventBody::SessionStart(s) => format!(
            "{} session: subject={} resource={} database={} client={} tls={}",
            s.protocol,
            s.subject.as_deref().unwrap_or("-"),
            s.resource.as_deref().unwrap_or("-"),
            s.database.as_deref().unwrap_or("-"),
            s.client_addr.as_deref().unwrap_or("-"),
            s.tls.as_deref().unwrap_or("-")
        ),
        EventBody::SessionEnd(e) => {
            format!("end: {}{}", e.reason, e.message.as_ref().map(|m| format!(" ({m})")).unwrap_or_default())
        }
        EventBody::Statement(s) if s.params.is_empty() => s.sql.clone(),
        EventBody::Statement(s) => format!(
            "{}  -- params: {}",
            s.sql,
            s.params
                .iter()
                .map(|p| p.as_deref().map_or("NULL".to_string(), |v| format!("'{v}'")))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        EventBody::Prepare(p) => format!("prepare {:?}: {}", p.statement_name, p.sql),
        EventBody::Result(r) => format!(
            "{} ({} rows, {} bytes, {:.3} ms){}",
            r.command_tag.as_deref().unwrap_or("result"),
            r.row_count,
            r.byte_count,
            r.duration_ns as f64 / 1e6,
            if r.sample_rows.is_empty() {
                String::new()
            } else {
                let rows: Vec<String> = r
                    .sample_rows
                    .iter()
                    .map(|row| {
                        let cells: Vec<&str> = row.iter().map(|v| v.as_deref().unwrap_or("NULL")).collect();
                        format!("({})", cells.join(", "))
                    })
                    .collect();
                format!(" sample: {}", rows.join(" "))
            }
        ),
        EventBody::Error(e) => format!("ERROR {}: {}", e.sqlstate.as_deref().unwrap_or("-"), e.message),
        other => {
            let json = event_json(&Event { body: other.clone(), ..event.clone() });
            let mut fields: Vec<String> = json
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter(|(k, _)| !["session_id", "seq", "time", "kind", "direction"].contains(&k.as_str()))
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect()
                })
                .unwrap_or_default();
            fields.sort();
            fields.join(" ")
        }
    };
    format!("{:>5} {} {arrow} {:<16} {what}", event.seq, event.time.to_rfc3339(), event.kind().as_str())
}
