//! The index's schema: one document per recorded event.

use tantivy::schema::{FAST, Field, INDEXED, STORED, STRING, Schema, TEXT};

/// Bumped when the schema or what goes into a document changes: an index of
/// another version is rebuilt from the segments.
pub const INDEX_VERSION: u32 = 1;

/// Keyword fields: exact values, filterable with `field:value` and counted
/// in facets. (name in queries, column it comes from)
pub const KEYWORDS: &[(&str, proctor_schemas::Column)] = {
    use proctor_schemas::Column as C;
    &[
        ("session", C::SessionId),
        ("kind", C::Kind),
        ("direction", C::Direction),
        ("protocol", C::Protocol),
        ("resource", C::Resource),
        ("subject", C::Subject),
        ("group", C::Groups),
        ("grant", C::GrantId),
        ("outcome", C::Outcome),
        ("rule", C::Rule),
        ("sqlstate", C::Sqlstate),
        ("severity", C::Severity),
        ("database", C::Database),
        ("user", C::TargetUser),
        ("client", C::ClientAddr),
        ("application", C::ApplicationName),
        ("end_reason", C::EndReason),
        ("actor", C::Actor),
        ("review", C::ReviewId),
        ("method", C::Method),
        ("host", C::Host),
        ("tag", C::CommandTag),
        ("statement_name", C::StatementName),
    ]
};

/// The fields, resolved once.
#[derive(Clone, Debug)]
pub struct Fields {
    pub schema: Schema,
    /// Full text of everything an investigator may look for.
    pub text: Field,
    pub seq: Field,
    /// Nanoseconds since the epoch, UTC.
    pub time: Field,
    /// HTTP status.
    pub status: Field,
    /// The WAL file or segment number the event was read from: what lets the
    /// documents of a WAL tail be replaced by those of its sealed segment.
    pub file: Field,
    /// Whether the document came from a sealed segment (1) or a WAL tail (0).
    pub sealed: Field,
    pub keywords: Vec<(&'static str, proctor_schemas::Column, Field)>,
}

impl Fields {
    pub fn new() -> Fields {
        let mut builder = Schema::builder();
        let text = builder.add_text_field("text", TEXT | STORED);
        let seq = builder.add_u64_field("seq", INDEXED | STORED | FAST);
        let time = builder.add_i64_field("time", INDEXED | STORED | FAST);
        let status = builder.add_u64_field("status", INDEXED | STORED | FAST);
        let file = builder.add_u64_field("file", INDEXED | FAST);
        let sealed = builder.add_u64_field("sealed", INDEXED | FAST);
        let keywords = KEYWORDS
            .iter()
            .map(|&(name, column)| (name, column, builder.add_text_field(name, STRING | STORED | FAST)))
            .collect();
        Fields { schema: builder.build(), text, seq, time, status, file, sealed, keywords }
    }

    pub fn keyword(&self, name: &str) -> Option<Field> {
        self.keywords.iter().find(|(n, _, _)| *n == name).map(|(_, _, f)| *f)
    }
}

impl Default for Fields {
    fn default() -> Self {
        Fields::new()
    }
}
