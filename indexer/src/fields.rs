//! The index's schema: one document per recorded event.

use tantivy::schema::{FAST, Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions};

/// Bumped when the schema or what goes into a document changes: an index of
/// another version is rebuilt from the segments.
pub const INDEX_VERSION: u32 = 2;

/// Keyword fields: exact values, filterable with `field:value`. (name in
/// queries, column it comes from)
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
        ("target_session", C::TargetSession),
    ]
};

/// Keywords kept as columns too (fast fields): what a hit shows, what facets
/// count, and what aggregations run over (with `time`, `seq` and `status`).
/// `group` and `grant` are filterable but not columns: as columns they would
/// add a seventh to the index (multi-valued groups, a grant per session) for
/// aggregations nothing runs.
pub const COLUMNAR: &[&str] = &["session", "kind", "subject", "resource", "outcome", "protocol", "rule", "sqlstate"];

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
    pub keywords: Vec<(&'static str, proctor_schemas::Column, Field)>,
}

impl Fields {
    pub fn new() -> Fields {
        // Hits come in time order, never by relevance: no field norms, and
        // positions only where phrases are searched.
        let mut builder = Schema::builder();
        let words = TextFieldIndexing::default()
            .set_tokenizer("default")
            .set_index_option(IndexRecordOption::WithFreqsAndPositions)
            .set_fieldnorms(false);
        let text = builder.add_text_field("text", TextOptions::default().set_indexing_options(words).set_stored());
        let seq = builder.add_u64_field("seq", FAST);
        let time = builder.add_i64_field("time", FAST);
        let status = builder.add_u64_field("status", NumericOptions::default().set_indexed().set_fast());
        let file = builder.add_u64_field("file", NumericOptions::default().set_indexed());
        let exact = TextFieldIndexing::default()
            .set_tokenizer("raw")
            .set_index_option(IndexRecordOption::Basic)
            .set_fieldnorms(false);
        let keywords = KEYWORDS
            .iter()
            .map(|&(name, column)| {
                let mut options = TextOptions::default().set_indexing_options(exact.clone());
                if COLUMNAR.contains(&name) {
                    options = options.set_fast("raw");
                }
                (name, column, builder.add_text_field(name, options))
            })
            .collect();
        Fields { schema: builder.build(), text, seq, time, status, file, keywords }
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
