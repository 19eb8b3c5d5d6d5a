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
/// subject and resource, as columns (see [`crate::fields::SESSION_KEYWORDS`]
/// for how queries on them are answered).
#[derive(Clone, Debug, Default)]
pub struct SessionContext {
    pub subject: Option<String>,
    pub resource: Option<String>,
}

/// The describing values of a `session_start` event.
pub fn session_context(cells: &Cells<'_>) -> SessionContext {
    let text = |column| match cells.get(column) {
        Some(Value::Str(s)) => Some(s.to_string()),
        _ => None,
    };
    SessionContext { subject: text(Column::Subject), resource: text(Column::Resource) }
}

/// An event's document, from its cells and its searchable text (its text
/// columns, or what the indexer renders of terminal traffic).
pub fn document(
    fields: &Fields,
    cells: &Cells<'_>,
    source: Source,
    session: Option<&SessionContext>,
    text: &str,
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
    for &(_, column, field) in &fields.keywords {
        match cells.get(column) {
            Some(Value::Str(s)) => doc.add_text(field, s),
            Some(Value::StrList(list)) => {
                for s in list {
                    doc.add_text(field, s);
                }
            }
            _ => continue,
        }
    }
    if let Some(session) = session {
        if let Some(subject) = &session.subject {
            doc.add_text(fields.session_subject, subject);
        }
        if let Some(resource) = &session.resource {
            doc.add_text(fields.session_resource, resource);
        }
    }
    doc
}
