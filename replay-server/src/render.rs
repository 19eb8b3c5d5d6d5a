//! Sessions and events as JSON and as transcript lines: one rendering for the
//! API and for the CLI reading a data dir.

use proctor_recorder::reader::SessionSummary;
use proctor_schemas::{Event, EventBody, SessionIdText, Value};
use serde_json::{Map, json};

/// A session of the recording's session list.
pub fn session_json(s: &SessionSummary) -> serde_json::Value {
    json!({
        "session_id": s.session_id.to_string(),
        "protocol": s.protocol,
        "resource": s.resource,
        "subject": s.subject,
        "start": s.first_time.map(|t| t.to_rfc3339()),
        "end": s.last_time.map(|t| t.to_rfc3339()),
        "end_reason": s.end_reason,
        "events": s.events,
        "live": s.end_reason.is_none(),
    })
}

/// An event as JSON: every non-null column. Bytes (terminal data, bodies)
/// are text; where they are not UTF-8, the text is lossy and the exact bytes
/// are beside it, base64-encoded, as `COLUMN_base64` (replay is
/// binary-safe).
pub fn event_json(event: &Event) -> serde_json::Value {
    use base64::Engine;
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
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(text) => json!(text),
                Err(_) => {
                    let exact = base64::engine::general_purpose::STANDARD.encode(b);
                    object.insert(format!("{}_base64", column.name()), json!(exact));
                    json!(String::from_utf8_lossy(b))
                }
            },
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

/// One line of a readable transcript.
pub fn transcript_line(event: &Event) -> String {
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
        EventBody::Command(c) => format!("$ {}", c.command),
        EventBody::Exec(e) => format!("exec: {}", e.command),
        EventBody::TerminalInput(i) if let Some(n) = i.byte_count => {
            format!(
                "typed {n} byte{} (keystrokes are recorded by length and keyed digest)",
                if n == 1 { "" } else { "s" }
            )
        }
        _ => {
            let json = event_json(event);
            let mut fields: Vec<String> = json
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter(|(k, _)| !["session_id", "seq", "time", "kind", "direction"].contains(&k.as_str()))
                        // The transcript is for reading: the exact bytes are in the JSON.
                        .filter(|(k, _)| !k.ends_with("_base64"))
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

#[cfg(test)]
mod tests {
    use base64::Engine;
    use proctor_schemas::{Direction, OutputStream, SessionId, TerminalOutput, Timestamp};

    use super::*;

    fn output(data: &[u8]) -> Event {
        Event {
            session_id: SessionId::from_parts(1, 1),
            seq: 3,
            time: Timestamp(0),
            direction: Direction::TargetToClient,
            body: TerminalOutput { channel_id: Some(2), stream: OutputStream::Stdout, data: data.to_vec() }.into(),
        }
    }

    /// Terminal output that is not UTF-8 (a binary dump, a split character)
    /// replays exactly: its bytes are beside the text.
    #[test]
    fn bytes_that_are_not_utf8_are_given_exactly() {
        let raw = b"\x1b[1mok\x1b[0m \xff\xfe\xe2\x82";
        let json = event_json(&output(raw));
        let exact = base64::engine::general_purpose::STANDARD.decode(json["data_base64"].as_str().unwrap()).unwrap();
        assert_eq!(exact, raw);
        assert_eq!(json["channel_id"], 2);
        let text = event_json(&output("plain text, ünïcode\r\n".as_bytes()));
        assert_eq!(text["data"], "plain text, ünïcode\r\n");
        assert!(text.get("data_base64").is_none(), "{text}");
    }
}
