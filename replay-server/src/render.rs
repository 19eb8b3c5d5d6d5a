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
        // Output as the screen showed it (colour codes and overwrites
        // applied), on one line; the exact bytes are in `--json`.
        EventBody::TerminalOutput(o) => {
            let text = proctor_terminal::render_output(&o.data);
            let text = if text.is_empty() { format!("({} bytes)", o.data.len()) } else { text.replace('\n', " ⏎ ") };
            match o.stream {
                proctor_schemas::OutputStream::Stderr => format!("stderr: {text}"),
                proctor_schemas::OutputStream::Stdout => text,
            }
        }
        EventBody::PtyRequest(p) => format!("terminal {} {}x{}", p.term, p.width, p.height),
        EventBody::Shell(_) => "shell".to_string(),
        EventBody::Resize(r) => format!("resized to {}x{}", r.width, r.height),
        EventBody::Signal(x) => format!("signal {}", x.signal),
        EventBody::ExitStatus(e) => match (&e.exit_code, &e.exit_signal) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => "exit".to_string(),
        },
        EventBody::FileTransfer(f) => {
            let mut line = format!("{} {}", f.operation, f.path);
            if let Some(to) = &f.target_path {
                line.push_str(&format!(" -> {to}"));
            }
            if let Some(n) = f.byte_count {
                line.push_str(&format!(" ({n} bytes)"));
            }
            if let Some(sha) = &f.sha256 {
                line.push_str(&format!(" sha256:{sha}"));
            }
            line
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

/// A terminal session as asciicast v2 (what `asciinema play` plays), one
/// line at a time as its events come: a header once the session's first
/// terminal is known (its size and type), then `[seconds, "o", text]` for
/// its output, `"r"` for resizes, `"m"` markers for the command lines typed
/// (keystrokes are recorded as lengths, never as text, so there are no
/// `"i"` events for them), and `"i"` for input recorded as data (exec
/// stdin). One channel is followed: the first terminal's, or, in a session
/// without one, the first channel that printed anything.
#[derive(Debug, Default)]
pub struct Asciicast {
    started: Option<proctor_schemas::Timestamp>,
    channel: Option<Option<u32>>,
    header: bool,
    /// Bytes of a character cut at the end of the last output.
    carry: Vec<u8>,
}

impl Asciicast {
    /// The asciicast lines `event` adds.
    pub fn feed(&mut self, event: &Event) -> Vec<String> {
        let mut lines = Vec::new();
        let seconds = |this: &Self| {
            let start = this.started.map_or(event.time.0, |s| s.0);
            (event.time.0 - start).max(0) as f64 / 1e9
        };
        let ours = |this: &Self, channel: Option<u32>| this.channel.is_none_or(|c| c == channel);
        match &event.body {
            EventBody::SessionStart(_) => self.started = Some(event.time),
            EventBody::PtyRequest(p) if !self.header => {
                self.channel = Some(p.channel_id);
                lines.push(self.header_line(p.width, p.height, Some(&p.term), event));
            }
            EventBody::TerminalOutput(o) if ours(self, o.channel_id) => {
                if !self.header {
                    self.channel = Some(o.channel_id);
                    lines.push(self.header_line(80, 24, None, event));
                }
                let mut bytes = std::mem::take(&mut self.carry);
                bytes.extend_from_slice(&o.data);
                let text = match std::str::from_utf8(&bytes) {
                    Ok(text) => text.to_string(),
                    Err(e) if e.error_len().is_none() => {
                        let (whole, rest) = bytes.split_at(e.valid_up_to());
                        self.carry = rest.to_vec();
                        String::from_utf8_lossy(whole).into_owned()
                    }
                    Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
                };
                if !text.is_empty() {
                    lines.push(json!([round6(seconds(self)), "o", text]).to_string());
                }
            }
            EventBody::Resize(r) if self.header && ours(self, r.channel_id) => {
                lines.push(json!([round6(seconds(self)), "r", format!("{}x{}", r.width, r.height)]).to_string());
            }
            EventBody::Command(c) if self.header && ours(self, c.channel_id) => {
                lines.push(json!([round6(seconds(self)), "m", c.command]).to_string());
            }
            EventBody::TerminalInput(i) if self.header && i.byte_count.is_none() && ours(self, i.channel_id) => {
                lines.push(json!([round6(seconds(self)), "i", String::from_utf8_lossy(&i.data)]).to_string());
            }
            _ => {}
        }
        lines
    }

    fn header_line(&mut self, width: u32, height: u32, term: Option<&str>, event: &Event) -> String {
        self.header = true;
        let start = self.started.unwrap_or(event.time);
        let mut header = json!({
            "version": 2,
            "width": width.max(1),
            "height": height.max(1),
            "timestamp": start.0.div_euclid(1_000_000_000),
            "title": format!("proctor session {}", event.session_id),
        });
        if let Some(term) = term {
            header["env"] = json!({ "TERM": term });
        }
        header.to_string()
    }
}

/// Seconds to the microsecond, as asciicast files write them.
fn round6(seconds: f64) -> f64 {
    (seconds * 1e6).round() / 1e6
}

/// A terminal screen as the console's player draws it: `rows`, `cols`,
/// `cursor` `[row, col, shown]`, and `lines`, each a list of runs
/// `{"t": text}` with what differs from the default style: `fg`/`bg` (a
/// palette index, or `"#rrggbb"`), `b` bold, `d` dim, `i` italic, `u`
/// underline, `r` inverse.
pub fn view_json(view: &proctor_indexer::keyframes::View) -> serde_json::Value {
    json!({
        "channel": view.channel,
        "seq": view.seq,
        "time": view.time.to_rfc3339(),
        "ms": view.time.unix_nanos() as f64 / 1e6,
        "keyframe_seq": view.keyframe_seq,
        "rows": view.rows,
        "cols": view.cols,
        "cursor": [view.cursor.0, view.cursor.1, view.cursor.2],
        "lines": view.lines.iter().map(|line| runs_json(line)).collect::<Vec<_>>(),
    })
}

/// A frame of playback: what changed (`changed`: `[row, runs]` pairs).
pub fn frame_json(frame: &proctor_indexer::keyframes::Frame) -> serde_json::Value {
    json!({
        "seq": frame.seq,
        "time": frame.time.to_rfc3339(),
        "ms": frame.time.unix_nanos() as f64 / 1e6,
        "rows": frame.rows,
        "cols": frame.cols,
        "cursor": [frame.cursor.0, frame.cursor.1, frame.cursor.2],
        "changed": frame.changed.iter().map(|(row, line)| json!([row, runs_json(line)])).collect::<Vec<_>>(),
    })
}

fn runs_json(line: &[proctor_terminal::screen::Run]) -> serde_json::Value {
    use proctor_terminal::screen::Color;
    let color = |c: Color| match c {
        Color::Default => None,
        Color::Idx(n) => Some(json!(n)),
        Color::Rgb(r, g, b) => Some(json!(format!("#{r:02x}{g:02x}{b:02x}"))),
    };
    serde_json::Value::Array(
        line.iter()
            .map(|run| {
                let mut object = Map::new();
                object.insert("t".into(), json!(run.text));
                let s = run.style;
                if let Some(fg) = color(s.fg) {
                    object.insert("fg".into(), fg);
                }
                if let Some(bg) = color(s.bg) {
                    object.insert("bg".into(), bg);
                }
                for (on, key) in [(s.bold, "b"), (s.dim, "d"), (s.italic, "i"), (s.underline, "u"), (s.inverse, "r")] {
                    if on {
                        object.insert(key.into(), json!(1));
                    }
                }
                serde_json::Value::Object(object)
            })
            .collect(),
    )
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

    #[test]
    fn a_terminal_session_becomes_asciicast() {
        use proctor_schemas::{Command, PtyRequest, Resize, SessionStart, TerminalInput};
        let at = |seq: u64, ms: i64, body: EventBody| Event {
            session_id: SessionId::from_parts(1, 1),
            seq,
            time: Timestamp(1_765_000_000_000_000_000 + ms * 1_000_000),
            direction: Direction::Gateway,
            body,
        };
        let out = |data: &[u8]| {
            EventBody::from(TerminalOutput { channel_id: Some(0), stream: OutputStream::Stdout, data: data.to_vec() })
        };
        let events = [
            at(0, 0, SessionStart::new(proctor_schemas::Protocol::Ssh).into()),
            at(1, 10, PtyRequest { channel_id: Some(0), term: "xterm".into(), width: 120, height: 40 }.into()),
            // "é" cut in two between two outputs.
            at(2, 250, out(b"caf\xc3")),
            at(3, 500, out(b"\xa9\r\n")),
            at(4, 600, TerminalInput { channel_id: Some(0), byte_count: Some(3), ..Default::default() }.into()),
            at(5, 700, Command { channel_id: Some(0), command: "ls -la".into() }.into()),
            at(6, 1500, Resize { channel_id: Some(0), width: 100, height: 30 }.into()),
            // Another channel's output is not this terminal's.
            at(
                7,
                1600,
                EventBody::from(TerminalOutput {
                    channel_id: Some(1),
                    stream: OutputStream::Stdout,
                    data: b"x".to_vec(),
                }),
            ),
        ];
        let mut cast = Asciicast::default();
        let lines: Vec<serde_json::Value> =
            events.iter().flat_map(|e| cast.feed(e)).map(|l| serde_json::from_str(&l).unwrap()).collect();
        assert_eq!(lines[0]["version"], 2);
        assert_eq!((&lines[0]["width"], &lines[0]["height"]), (&json!(120), &json!(40)));
        assert_eq!(lines[0]["timestamp"], 1_765_000_000);
        assert_eq!(lines[0]["env"]["TERM"], "xterm");
        assert_eq!(lines[1], json!([0.25, "o", "caf"]));
        assert_eq!(lines[2], json!([0.5, "o", "é\r\n"]));
        assert_eq!(lines[3], json!([0.7, "m", "ls -la"]));
        assert_eq!(lines[4], json!([1.5, "r", "100x30"]));
        assert_eq!(lines.len(), 5, "{lines:?}");
    }
}
