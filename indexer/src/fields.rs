//! The index's schema: one document per recorded event.

use tantivy::schema::{FAST, Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions};

/// Bumped when the schema or what goes into a document changes: an index of
/// another version is rebuilt from the segments.
pub const INDEX_VERSION: u32 = 5;

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
        ("tls", C::Tls),
        ("profile", C::MaskingProfile),
        ("operation", C::Operation),
    ]
};

/// Every keyword is a column too (a fast field): what a hit shows, what
/// facets count, and what `field:*` reads. Sparse columns (a value on a few
/// kinds of events) cost little.
///
/// `session` is a column only, not a term index: every document has one, in
/// long runs, which postings hold poorly; `session:ID` reads the column (see
/// `query`).
pub const COLUMN_ONLY: &[&str] = &["session"];

/// Keywords that describe a whole session, recorded once in its
/// `session_start` (or, for `end_reason`, its `session_end`). Only that
/// event's document holds them: a query on one (`subject:ci-deploy
/// kind:statement`) is resolved to the sessions it names first, then
/// matches every event of those sessions (see `query`). Carrying them onto
/// every document instead made them a fifth of the index: postings of long
/// runs of documents compress poorly.
pub const SESSION_KEYWORDS: &[&str] = &[
    "protocol",
    "resource",
    "subject",
    "group",
    "grant",
    "client",
    "user",
    "database",
    "application",
    "tls",
    "profile",
    "end_reason",
];

/// What a hit shows of who and what it concerns, as columns of every
/// document: the event's own subject, resource and grant where it carries
/// them (a grant or review event names its own), else its session's. What
/// the subject and resource facets count. Not searchable by these names
/// (queries use `subject:`, `resource:` and `grant:`).
pub const SESSION_SUBJECT_COLUMN: &str = "session_subject";
pub const SESSION_RESOURCE_COLUMN: &str = "session_resource";
pub const SESSION_GRANT_COLUMN: &str = "session_grant";

/// Numeric fields: compared with `field:>N`, `field:[A TO B]`, `field:N`.
/// (name in queries, unit its values are read in)
pub const NUMBERS: &[(&str, Unit)] = &[
    ("duration", Unit::Duration),
    ("rows", Unit::Count),
    ("bytes", Unit::Bytes),
    ("exit_code", Unit::Signed),
    ("seq", Unit::Count),
    ("status", Unit::Count),
];

/// How a numeric field's values are written in queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Nanoseconds in the index; a query gives a unit: `500ms`, `1s`, `2m`.
    Duration,
    /// Bytes; `B`, `KB`, `MB`, `GB` (powers of 1000) or `KiB`, `MiB`, `GiB`.
    Bytes,
    /// A whole number.
    Count,
    /// A whole number that may be negative.
    Signed,
}

/// The fields, resolved once.
#[derive(Clone, Debug)]
pub struct Fields {
    pub schema: Schema,
    /// Full text of everything an investigator may look for, stored for
    /// hits and their snippets.
    pub text: Field,
    pub seq: Field,
    /// Milliseconds since the epoch, UTC: hits sort and time bounds filter
    /// by the millisecond (exact times are in the segments).
    pub time: Field,
    /// HTTP status.
    pub status: Field,
    /// The WAL file or segment number the event was read from: what lets the
    /// documents of a WAL tail be replaced by those of its sealed segment.
    pub file: Field,
    pub keywords: Vec<(&'static str, proctor_schemas::Column, Field)>,
    pub session_subject: Field,
    pub session_resource: Field,
    pub session_grant: Field,
    /// Nanoseconds a statement, result or response took.
    pub duration: Field,
    /// Rows a statement returned or changed (its result's), a copy moved.
    pub rows: Field,
    /// Bytes of a result, copy, body or frame.
    pub bytes: Field,
    /// A command's exit status.
    pub exit_code: Field,
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
        let file = builder.add_u64_field("file", NumericOptions::default().set_indexed().set_fast());
        let exact = TextFieldIndexing::default()
            .set_tokenizer("raw")
            .set_index_option(IndexRecordOption::Basic)
            .set_fieldnorms(false);
        let keywords = KEYWORDS
            .iter()
            .map(|&(name, column)| {
                let mut options = TextOptions::default().set_fast("raw");
                if !COLUMN_ONLY.contains(&name) {
                    options = options.set_indexing_options(exact.clone());
                }
                (name, column, builder.add_text_field(name, options))
            })
            .collect();
        let column = TextOptions::default().set_fast("raw");
        let session_subject = builder.add_text_field(SESSION_SUBJECT_COLUMN, column.clone());
        let session_resource = builder.add_text_field(SESSION_RESOURCE_COLUMN, column.clone());
        let session_grant = builder.add_text_field(SESSION_GRANT_COLUMN, column);
        // Compared by range over their columns: no term index needed.
        let duration = builder.add_u64_field("duration", FAST);
        let rows = builder.add_u64_field("rows", FAST);
        let bytes = builder.add_u64_field("bytes", FAST);
        let exit_code = builder.add_i64_field("exit_code", FAST);
        Fields {
            schema: builder.build(),
            text,
            seq,
            time,
            status,
            file,
            keywords,
            session_subject,
            session_resource,
            session_grant,
            duration,
            rows,
            bytes,
            exit_code,
        }
    }

    /// Milliseconds for the `time` column from nanoseconds.
    pub fn time_column(nanos: i64) -> i64 {
        nanos.div_euclid(1_000_000)
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
