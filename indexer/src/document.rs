//! One recorded event as one document. Built from the event's columns, not
//! its protocol: what a column holds decides where it goes.

use proctor_schemas::{Cells, Column, Value};
use tantivy::TantivyDocument;

use crate::fields::Fields;

/// Columns whose text an investigator searches, in the order they appear in
/// a document's text.
const TEXT_COLUMNS: &[Column] = &[
    Column::Sql,
    Column::Params,
    Column::Query,
    Column::Message,
    Column::Detail,
    Column::ResultColumns,
    Column::SampleRows,
    Column::Channel,
    Column::Payload,
    Column::Parameter,
    Column::Value,
    Column::Command,
    Column::Method,
    Column::Host,
    Column::Path,
    Column::Headers,
    Column::Body,
    Column::Data,
    Column::Masked,
    Column::Tokens,
];

/// Where a document comes from: the WAL file or segment number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    pub file: u64,
}

/// The searchable text of an event's columns, one per line.
pub fn event_text(cells: &Cells<'_>) -> String {
    let mut text = String::new();
    let mut line = |part: &str| {
        let part = part.trim_end_matches('\0');
        if !part.is_empty() {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(part);
        }
    };
    for &column in TEXT_COLUMNS {
        match cells.get(column) {
            Some(Value::Str(s)) => line(s),
            Some(Value::StrList(list)) => line(&list.join(" ")),
            Some(Value::OptStrList(list)) => line(&list.iter().flatten().cloned().collect::<Vec<_>>().join(" ")),
            Some(Value::Rows(rows)) => {
                for row in rows {
                    line(&row.iter().map(|v| v.as_deref().unwrap_or("NULL")).collect::<Vec<_>>().join(" | "));
                }
            }
            Some(Value::Pairs(headers)) => {
                for header in headers {
                    line(&format!("{}: {}", header.name, header.value));
                }
            }
            Some(Value::Counts(counts)) => {
                for count in counts {
                    line(&format!("{}: {}", count.rule, count.count));
                }
            }
            // Bytes are searchable where they are text; binary frames are
            // not guessed at.
            Some(Value::Bytes(bytes)) => {
                if let Ok(s) = std::str::from_utf8(bytes) {
                    line(s);
                }
            }
            _ => {}
        }
    }
    text
}

/// What every document of a session shows of its `session_start`: the
/// subject, resource and grant, as columns (see
/// [`crate::fields::SESSION_KEYWORDS`] for how queries on them are
/// answered).
#[derive(Clone, Debug, Default)]
pub struct SessionContext {
    pub subject: Option<String>,
    pub resource: Option<String>,
    pub grant: Option<String>,
}

fn text_of(cells: &Cells<'_>, column: Column) -> Option<String> {
    str_of(cells, column).map(str::to_string)
}

/// A text cell, borrowed.
pub(crate) fn str_of<'a>(cells: &Cells<'a>, column: Column) -> Option<&'a str> {
    match cells.get(column) {
        Some(Value::Str(s)) => Some(s),
        _ => None,
    }
}

/// The describing values of a `session_start` event.
pub fn session_context(cells: &Cells<'_>) -> SessionContext {
    SessionContext {
        subject: text_of(cells, Column::Subject),
        resource: text_of(cells, Column::Resource),
        grant: text_of(cells, Column::GrantId),
    }
}

/// What became of a statement (or a prepared statement), from the events
/// that answer it (its policy decision, its results or error, a copy it
/// ran): indexed on the statement's own document, so that `kind:statement
/// outcome:allow rows:>0` selects statements by their fate. A simple query
/// of several statements has a result each: their distinct tags are kept
/// (at most [`TAGS_KEPT`]), their
/// rows, bytes and durations summed, the first error's SQLSTATE kept.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fate {
    pub outcome: Option<String>,
    pub rule: Option<String>,
    pub review: Option<String>,
    pub tags: Vec<String>,
    pub rows: Option<u64>,
    pub bytes: Option<u64>,
    pub duration: Option<u64>,
    pub sqlstate: Option<String>,
    /// A result or error has answered it.
    pub done: bool,
    /// How many answers were taken in, and the seq of the last: answers
    /// come in seq order, so none is counted twice.
    answers: usize,
    last: Option<u64>,
}

/// Distinct command tags a statement keeps (a query of thousands of
/// statements answers with thousands of results).
pub const TAGS_KEPT: usize = 32;

impl Fate {
    /// How many answers it has taken in.
    pub fn answers(&self) -> usize {
        self.answers
    }

    /// The decision part alone: what an execution of a prepared statement
    /// inherits from the decision on its Parse.
    pub fn decision(&self) -> Fate {
        Fate { outcome: self.outcome.clone(), rule: self.rule.clone(), review: self.review.clone(), ..Fate::default() }
    }

    /// Takes in what the answering event `seq` says. Returns whether the
    /// fate changed. A statement answered without a recorded decision was
    /// allowed (only refusals and holds, and runs after a review, are
    /// recorded as decisions).
    pub fn learn(&mut self, cells: &Cells<'_>, seq: u64) -> bool {
        if self.last.is_some_and(|last| seq <= last) {
            return false;
        }
        self.last = Some(seq);
        self.answers += 1;
        let number = |column| match cells.get(column) {
            Some(Value::U64(n)) => Some(n),
            _ => None,
        };
        let add = |slot: &mut Option<u64>, value: Option<u64>| {
            if let Some(value) = value {
                *slot = Some(slot.unwrap_or(0).saturating_add(value));
            }
        };
        let kind = str_of(cells, Column::Kind);
        if kind == Some("policy_decision") {
            self.outcome = text_of(cells, Column::Outcome).or(self.outcome.take());
            self.rule = text_of(cells, Column::Rule).or(self.rule.take());
            self.review = text_of(cells, Column::ReviewId).or(self.review.take());
        }
        if let Some(tag) = str_of(cells, Column::CommandTag)
            && self.tags.len() < TAGS_KEPT
            && !self.tags.iter().any(|kept| kept == tag)
        {
            self.tags.push(tag.to_string());
        }
        if self.sqlstate.is_none() {
            self.sqlstate = text_of(cells, Column::Sqlstate);
        }
        // A copy's volume is its statement's result's too: counted once.
        if kind != Some("copy") {
            add(&mut self.rows, number(Column::RowCount));
            add(&mut self.bytes, number(Column::ByteCount));
            add(&mut self.duration, number(Column::DurationNs));
        }
        if matches!(kind, Some("result" | "error")) {
            self.done = true;
            if self.outcome.is_none() {
                self.outcome = Some(proctor_schemas::PolicyOutcome::Allow.as_str().to_string());
            }
        }
        true
    }
}

/// A command tag's command: the tag without its counts (`INSERT 0 1` →
/// `INSERT`, `ALTER TABLE` → `ALTER TABLE`).
pub fn command_of(tag: &str) -> &str {
    let mut command = tag.trim_end();
    while let Some((head, last)) = command.rsplit_once(' ') {
        if last.is_empty() || !last.bytes().all(|b| b.is_ascii_digit()) {
            break;
        }
        command = head.trim_end();
    }
    command
}

/// A client address's host, without its port (`10.1.2.3:5544` →
/// `10.1.2.3`, `[::1]:5544` → `::1`).
pub fn host_of(address: &str) -> Option<&str> {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split_once(']').map(|(host, _)| host);
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => Some(host),
        _ => None,
    }
}

/// An event's document, from its cells and its searchable text (its text
/// columns, or what the indexer renders of terminal traffic); a
/// statement's with what became of it.
pub fn document(
    fields: &Fields,
    cells: &Cells<'_>,
    source: Source,
    session: Option<&SessionContext>,
    text: &str,
    fate: Option<&Fate>,
) -> TantivyDocument {
    let mut doc = TantivyDocument::default();
    doc.add_text(fields.text, text);
    if let Some(Value::U64(seq)) = cells.get(Column::Seq) {
        doc.add_u64(fields.seq, seq);
    }
    if let Some(Value::I64(time)) = cells.get(Column::Time) {
        doc.add_i64(fields.time, Fields::time_column(time));
    }
    doc.add_u64(fields.file, source.file);
    if let Some(Value::U64(status)) = cells.get(Column::Status) {
        doc.add_u64(fields.status, status);
    }
    if let Some(Value::I64(code)) = cells.get(Column::ExitCode) {
        doc.add_i64(fields.exit_code, code);
    }
    let number = |column| match cells.get(column) {
        Some(Value::U64(n)) => Some(n),
        _ => None,
    };
    let none = Fate::default();
    let fate = fate.unwrap_or(&none);
    for (field, value) in [
        (fields.duration, number(Column::DurationNs).or(fate.duration)),
        (fields.rows, number(Column::RowCount).or(fate.rows)),
        (fields.bytes, number(Column::ByteCount).or(fate.bytes)),
    ] {
        if let Some(value) = value {
            doc.add_u64(field, value);
        }
    }
    for &(name, column, field) in &fields.keywords {
        let mut add = |value: &str| {
            doc.add_text(field, value);
            match name {
                "tag" if command_of(value) != value => doc.add_text(field, command_of(value)),
                "client" => {
                    if let Some(host) = host_of(value) {
                        doc.add_text(field, host);
                    }
                }
                _ => {}
            }
        };
        match cells.get(column) {
            Some(Value::Str(s)) => add(s),
            Some(Value::StrList(list)) => {
                for s in list {
                    add(s);
                }
            }
            _ if name == "rule"
                && let Some(Value::Counts(counts)) = cells.get(Column::Masked) =>
            {
                // Which masking rules replaced values: `rule:email`.
                for count in counts {
                    add(&count.rule);
                }
            }
            _ => {
                let learned: Vec<&str> = match name {
                    "outcome" => fate.outcome.as_deref().into_iter().collect(),
                    "rule" => fate.rule.as_deref().into_iter().collect(),
                    "review" => fate.review.as_deref().into_iter().collect(),
                    "tag" => fate.tags.iter().map(String::as_str).collect(),
                    "sqlstate" => fate.sqlstate.as_deref().into_iter().collect(),
                    _ => Vec::new(),
                };
                for value in learned {
                    add(value);
                }
            }
        }
    }
    // What the hit shows: the event's own names where it has them.
    let own = |column| str_of(cells, column);
    let of_session = |name: fn(&SessionContext) -> &Option<String>| session.and_then(|s| name(s).as_deref());
    for (field, value) in [
        (fields.session_subject, own(Column::Subject).or_else(|| of_session(|s| &s.subject))),
        (fields.session_resource, own(Column::Resource).or_else(|| of_session(|s| &s.resource))),
        (fields.session_grant, own(Column::GrantId).or_else(|| of_session(|s| &s.grant))),
    ] {
        if let Some(value) = value {
            doc.add_text(field, value);
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_is_found_by_its_command() {
        assert_eq!(command_of("INSERT 0 1"), "INSERT");
        assert_eq!(command_of("UPDATE 3"), "UPDATE");
        assert_eq!(command_of("ALTER TABLE"), "ALTER TABLE");
        assert_eq!(command_of("SELECT 0"), "SELECT");
        assert_eq!(command_of("COPY 12"), "COPY");
        assert_eq!(command_of("42"), "42");
    }

    #[test]
    fn a_client_is_found_by_its_host() {
        assert_eq!(host_of("10.1.2.3:5544"), Some("10.1.2.3"));
        assert_eq!(host_of("[::1]:5544"), Some("::1"));
        assert_eq!(host_of("[fe80::1%eth0]:22"), Some("fe80::1%eth0"));
        assert_eq!(host_of("::1"), None);
        assert_eq!(host_of("/tmp/.s.PGSQL.5432"), None);
    }
}
