//! The investigators' query language.
//!
//! ```text
//! drop table                      both words (terms are ANDed)
//! "drop table customers"          a phrase
//! subject:ci-deploy kind:statement    exact field values
//! outcome:blocked OR outcome:held     boolean operators: AND, OR, NOT, -word, (...)
//! after:2026-11-01 before:2026-11-02T12:00:00Z   time bounds (UTC)
//! since:7d                        relative: s, m, h, d, w
//! ```
//!
//! Time bounds are taken out of the query and applied as a range; the rest
//! goes to tantivy's query grammar, restricted to Proctor's fields, with
//! errors that name the offending part.

use std::ops::Bound;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proctor_schemas::Timestamp;
use tantivy::collector::DocSetCollector;
use tantivy::columnar::{ColumnIndex, StrColumn};
use tantivy::index::SegmentId;
use tantivy::query::doc_predicate_query::{
    ConstOrVariableSegmentPredicate, DocPredicate, DocPredicateQuery, SegmentDocPredicate,
};
use tantivy::query::{
    AllQuery, AllScorer, BitSetDocSet, BooleanQuery, BoostQuery, EmptyQuery, ExistsQuery, Occur, Query, QueryParser,
    QueryParserError, RangeQuery,
};
use tantivy::query_grammar::{UserInputAst, UserInputLeaf};
use tantivy::{BitSet, DocId, Searcher, SegmentReader, Term};

use crate::fields::{Fields, SESSION_KEYWORDS, SESSION_RESOURCE_COLUMN, SESSION_SUBJECT_COLUMN};

/// A query that could not be understood: the message says what and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    pub message: String,
}

fn bad(message: impl Into<String>) -> QueryError {
    QueryError { message: message.into() }
}

/// A parsed query: the text part and the time bounds (nanoseconds, UTC).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub text: String,
    pub after: Option<i64>,
    pub before: Option<i64>,
}

/// Splits a query into words, keeping quoted phrases whole.
fn tokens(query: &str) -> Result<Vec<(usize, &str)>, QueryError> {
    let mut out = Vec::new();
    let bytes = query.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let mut quoted = false;
        while i < bytes.len() && (quoted || !bytes[i].is_ascii_whitespace()) {
            if bytes[i] == b'"' {
                quoted = !quoted;
            }
            i += 1;
        }
        if quoted {
            return Err(bad(format!("unclosed quote starting at column {}: {}", start + 1, &query[start..])));
        }
        out.push((start, &query[start..i]));
    }
    Ok(out)
}

/// Reads a time: an RFC 3339 instant, or a date (midnight UTC).
fn instant(value: &str) -> Option<i64> {
    if let Some(t) = Timestamp::parse_rfc3339(value) {
        return Some(t.0);
    }
    let date = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").ok()?;
    date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_nanos_opt()
}

/// Reads a span like `90s`, `15m`, `12h`, `7d`, `2w`, in nanoseconds.
pub fn span(value: &str) -> Option<i64> {
    let (number, unit) = value.split_at(value.find(|c: char| !c.is_ascii_digit())?);
    let number: i64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    number.checked_mul(seconds)?.checked_mul(1_000_000_000)
}

/// Takes the time bounds out of a query.
pub fn parse(query: &str, now: Timestamp) -> Result<Parsed, QueryError> {
    let mut parsed = Parsed::default();
    let mut rest = Vec::new();
    for (at, token) in tokens(query)? {
        let column = at + 1;
        let lower = token.to_ascii_lowercase();
        if lower.starts_with("after:") {
            let value = &token["after:".len()..];
            let t = instant(value).ok_or_else(|| {
                bad(format!("`{token}` at column {column}: expected a date (2026-11-01) or an RFC 3339 time"))
            })?;
            parsed.after = Some(parsed.after.map_or(t, |a| a.max(t)));
        } else if lower.starts_with("before:") {
            let value = &token["before:".len()..];
            let t = instant(value).ok_or_else(|| {
                bad(format!("`{token}` at column {column}: expected a date (2026-11-01) or an RFC 3339 time"))
            })?;
            parsed.before = Some(parsed.before.map_or(t, |b| b.min(t)));
        } else if let Some(value) = lower.strip_prefix("since:") {
            let span = span(value).ok_or_else(|| {
                bad(format!("`{token}` at column {column}: expected a span such as 30m, 12h, 7d or 2w"))
            })?;
            let t = now.0.saturating_sub(span);
            parsed.after = Some(parsed.after.map_or(t, |a| a.max(t)));
        } else {
            rest.push(token);
        }
    }
    parsed.text = rest.join(" ");
    Ok(parsed)
}

/// Builds the tantivy query: the text part over the full text and keyword
/// fields, ANDed with the time range. Conditions on a session's describing
/// fields are resolved against `searcher` first (see [`build_ast`]).
pub fn build(
    fields: &Fields,
    index: &tantivy::Index,
    searcher: &Searcher,
    parsed: &Parsed,
) -> Result<Box<dyn Query>, QueryError> {
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    if !parsed.text.trim().is_empty() {
        check_fields(fields, &parsed.text)?;
        let mut parser = QueryParser::for_index(index, vec![fields.text]);
        parser.set_conjunction_by_default();
        let ast = tantivy::query_grammar::parse_query(&parsed.text)
            .map_err(|_| explain(&parsed.text, QueryParserError::SyntaxError(parsed.text.clone())))?;
        let query = build_ast(&parser, searcher, ast, false).map_err(|e| match e {
            Resolve::Parse(e) => explain(&parsed.text, e),
            Resolve::Bad(message) => bad(format!("in `{}`: {message}", parsed.text)),
            Resolve::Search(e) => bad(format!("cannot resolve `{}`: {e}", parsed.text)),
        })?;
        clauses.push((Occur::Must, query));
    }
    if parsed.after.is_some() || parsed.before.is_some() {
        // The column holds milliseconds: a bound inside a millisecond keeps
        // that whole millisecond (a hit too many, never one missing).
        let bound = |t: Option<i64>, lower: bool| match t {
            Some(t) if lower => Bound::Included(Term::from_field_i64(fields.time, Fields::time_column(t))),
            Some(t) => {
                let millis = Fields::time_column(t) + i64::from(t.rem_euclid(1_000_000) != 0);
                Bound::Excluded(Term::from_field_i64(fields.time, millis))
            }
            None => Bound::Unbounded,
        };
        clauses.push((Occur::Must, Box::new(RangeQuery::new(bound(parsed.after, true), bound(parsed.before, false)))));
    }
    Ok(match clauses.len() {
        0 => Box::new(AllQuery),
        1 => clauses.pop().map(|(_, q)| q).unwrap_or_else(|| Box::new(AllQuery)),
        _ => Box::new(BooleanQuery::new(clauses)),
    })
}

enum Resolve {
    Parse(QueryParserError),
    Bad(String),
    Search(tantivy::TantivyError),
}

/// The field a leaf of a query is about, if any.
fn leaf_field(leaf: &UserInputLeaf) -> Option<&str> {
    match leaf {
        UserInputLeaf::Literal(literal) => literal.field_name.as_deref(),
        UserInputLeaf::Set { field, .. } | UserInputLeaf::Range { field, .. } | UserInputLeaf::Regex { field, .. } => {
            field.as_deref()
        }
        UserInputLeaf::Exists { field } => Some(field.as_str()),
        UserInputLeaf::All => None,
    }
}

/// Whether a leaf is a condition on a session (`session:` or one of its
/// describing keywords), resolved through the session column.
fn about_sessions(leaf: &UserInputLeaf) -> bool {
    leaf_field(leaf).is_some_and(|f| f == "session" || SESSION_KEYWORDS.contains(&f))
}

/// Whether a condition, ANDed with one on sessions, leaves few enough
/// candidates that checking each one's session beats reading the session
/// column whole: any condition but one on sessions or an exact value held
/// by more than an eighth of the documents (`kind:terminal_input`).
fn narrows(searcher: &Searcher, ast: &UserInputAst) -> bool {
    let UserInputAst::Leaf(leaf) = ast else { return true };
    if about_sessions(leaf) {
        return false;
    }
    let UserInputLeaf::Literal(literal) = &**leaf else { return true };
    let Some(field) = literal.field_name.as_deref().and_then(|name| searcher.schema().get_field(name).ok()) else {
        return true;
    };
    let docs = searcher.num_docs();
    let term = Term::from_field_text(field, &literal.phrase);
    searcher.doc_freq(&term).map_or(true, |freq| freq.saturating_mul(8) <= docs)
}

/// Builds the query of a parsed text, clause by clause: each condition on a
/// session's describing field (`subject:`, `resource:`, `group:`, `grant:`,
/// `protocol:`) becomes "this condition, or an event of one of the sessions
/// whose `session_start` meets it" (only that document carries the
/// session's values), and `session:ID` reads the session column; every
/// other leaf is built by tantivy's query parser, and clauses combine as it
/// combines them (conjunction by default; empty clauses dropped), except
/// that a clause of exclusions alone means "everything but", not nothing.
///
/// `lazy`: the condition is ANDed with one that narrows the candidates (see
/// [`narrows`]), so only those need checking (see [`Found`]).
fn build_ast(
    parser: &QueryParser,
    searcher: &Searcher,
    ast: UserInputAst,
    lazy: bool,
) -> Result<Box<dyn Query>, Resolve> {
    match ast {
        UserInputAst::Clause(clauses) => {
            let must = |occur: &Option<Occur>| matches!(occur, None | Some(Occur::Must));
            let on_sessions =
                clauses.iter().any(|(_, ast)| matches!(ast, UserInputAst::Leaf(leaf) if about_sessions(leaf)));
            let drivers = match on_sessions {
                true => clauses.iter().filter(|(occur, ast)| must(occur) && narrows(searcher, ast)).count(),
                false => 0,
            };
            let mut built: Vec<(Occur, Box<dyn Query>)> = Vec::new();
            for (occur, ast) in clauses {
                let lazy = must(&occur) && drivers > 0;
                let query = build_ast(parser, searcher, ast, lazy)?;
                if query.downcast_ref::<EmptyQuery>().is_none() {
                    built.push((occur.unwrap_or(Occur::Must), query));
                }
            }
            if !built.is_empty() && built.iter().all(|(occur, _)| *occur == Occur::MustNot) {
                built.push((Occur::Must, Box::new(AllQuery)));
            }
            Ok(match built.len() {
                0 => Box::new(EmptyQuery),
                _ => Box::new(BooleanQuery::new(built)),
            })
        }
        UserInputAst::Boost(ast, boost) => {
            Ok(Box::new(BoostQuery::new(build_ast(parser, searcher, *ast, lazy)?, boost.into_inner() as f32)))
        }
        // Any value: the session's subject and resource are columns of all
        // its events.
        UserInputAst::Leaf(leaf) if matches!(&*leaf, UserInputLeaf::Exists { field } if field == "subject" || field == "resource") =>
        {
            let column = match leaf_field(&leaf) {
                Some("subject") => SESSION_SUBJECT_COLUMN,
                _ => SESSION_RESOURCE_COLUMN,
            };
            Ok(Box::new(ExistsQuery::new(column.to_string(), false)))
        }
        UserInputAst::Leaf(leaf) if leaf_field(&leaf) == Some("session") => {
            let ids = match *leaf {
                UserInputLeaf::Literal(literal) => vec![literal.phrase],
                UserInputLeaf::Set { elements, .. } => elements,
                _ => return Err(Resolve::Bad("`session:` takes a session id (or `session: IN [id id]`)".into())),
            };
            Ok(Box::new(of_sessions(ids.into_iter().map(|id| id.trim().to_string()).collect(), lazy)))
        }
        UserInputAst::Leaf(leaf) => {
            let own =
                parser.build_query_from_user_input_ast(UserInputAst::Leaf(leaf.clone())).map_err(Resolve::Parse)?;
            if !about_sessions(&leaf) {
                return Ok(own);
            }
            let found = Found::of(searcher, &*own, lazy)?;
            if found.sessions.is_empty() {
                return Ok(own);
            }
            Ok(Box::new(DocPredicateQuery::from(found)))
        }
    }
}

/// The events of the sessions `ids` (see [`Found`] for `lazy`).
pub(crate) fn of_sessions(mut ids: Vec<String>, lazy: bool) -> DocPredicateQuery {
    ids.sort_unstable();
    ids.dedup();
    DocPredicateQuery::from(Found { docs: HashMap::new(), sessions: ids, lazy })
}

/// The documents a condition matches itself, and the sessions they belong to
/// (sorted ids): a condition on a session's describing field, as a predicate
/// on each document, true for the former and for every event of the latter.
/// Per index segment, the wanted sessions' term ordinals are found in one
/// pass over the segment's session ids; then either every document's
/// session is read in bulk into a bit set, or, when `lazy`, only the
/// documents tantivy asks about (the candidates of the clauses it is ANDed
/// with) are looked up.
#[derive(Debug)]
struct Found {
    docs: HashMap<SegmentId, Vec<DocId>>,
    sessions: Vec<String>,
    lazy: bool,
}

impl Found {
    fn of(searcher: &Searcher, query: &dyn Query, lazy: bool) -> Result<Found, Resolve> {
        let found = searcher.search(query, &DocSetCollector).map_err(Resolve::Search)?;
        let mut by_segment: BTreeMap<u32, Vec<DocId>> = BTreeMap::new();
        for address in found {
            by_segment.entry(address.segment_ord).or_default().push(address.doc_id);
        }
        let mut sessions = BTreeSet::new();
        let mut docs = HashMap::new();
        for (segment, mut segment_docs) in by_segment {
            let reader = searcher.segment_reader(segment);
            segment_docs.sort_unstable();
            // Only a `session_start` speaks for its session: another event
            // with the same value (a grant event's `grant` or `subject`)
            // matches itself, not the session it was recorded in.
            let starts: Vec<DocId> = match reader.fast_fields().str("kind").map_err(Resolve::Search)? {
                Some(kinds) => {
                    match kinds.dictionary().term_ord("session_start").map_err(|e| Resolve::Search(e.into()))? {
                        Some(start) => segment_docs
                            .iter()
                            .copied()
                            .filter(|&doc| kinds.term_ords(doc).any(|ord| ord == start))
                            .collect(),
                        None => Vec::new(),
                    }
                }
                None => Vec::new(),
            };
            if let Some(column) = reader.fast_fields().str("session").map_err(Resolve::Search)? {
                let mut ords: Vec<u64> = starts.iter().flat_map(|&doc| column.term_ords(doc)).collect();
                ords.sort_unstable();
                ords.dedup();
                column
                    .dictionary()
                    .sorted_ords_to_term_cb(&ords, |id| {
                        sessions.insert(String::from_utf8_lossy(id).into_owned());
                    })
                    .map_err(|e| Resolve::Search(e.into()))?;
            }
            docs.insert(reader.segment_id(), segment_docs);
        }
        Ok(Found { docs, sessions: sessions.into_iter().collect(), lazy })
    }

    /// Marks, by term ordinal of `column`, the wanted sessions present in
    /// this segment; `None` if none is. A few are looked up one by one, more
    /// in one pass over the segment's session ids.
    fn wanted(&self, column: &StrColumn) -> tantivy::Result<Option<Vec<bool>>> {
        let mut wanted = vec![false; column.num_terms()];
        let mut any = false;
        if self.sessions.len() <= LOOKED_UP {
            for id in &self.sessions {
                if let Some(slot) = column.dictionary().term_ord(id)?.and_then(|ord| wanted.get_mut(ord as usize)) {
                    *slot = true;
                    any = true;
                }
            }
            return Ok(any.then_some(wanted));
        }
        let mut ids = self.sessions.iter().map(String::as_bytes).peekable();
        let mut terms = column.dictionary().stream()?;
        while ids.peek().is_some() && terms.advance() {
            let term = terms.key();
            while ids.peek().is_some_and(|&id| id < term) {
                ids.next();
            }
            if ids.peek() == Some(&term) {
                if let Some(slot) = wanted.get_mut(terms.term_ord() as usize) {
                    *slot = true;
                    any = true;
                }
                ids.next();
            }
        }
        Ok(any.then_some(wanted))
    }
}

/// Sessions looked up one by one in a segment's session ids, rather than
/// found in one pass over them.
const LOOKED_UP: usize = 32;

impl DocPredicate for Found {
    type SegmentDocPredicate = SessionMember;

    fn doc_predicate(
        &self,
        segment: &SegmentReader,
    ) -> tantivy::Result<ConstOrVariableSegmentPredicate<SessionMember>> {
        let own = self.docs.get(&segment.segment_id()).cloned().unwrap_or_default();
        let column = segment.fast_fields().str("session")?;
        let wanted = match &column {
            Some(column) => self.wanted(column)?,
            None => None,
        };
        let (column, wanted) = match (column, wanted) {
            (Some(column), Some(wanted)) => (Some(column), wanted),
            _ if own.is_empty() => return Ok(ConstOrVariableSegmentPredicate::Const(false)),
            _ => (None, Vec::new()),
        };
        let member = SessionMember { column, wanted, own };
        if self.lazy {
            return Ok(ConstOrVariableSegmentPredicate::Variable {
                predicate: member,
                necessary_condition: Box::new(AllScorer::new(segment.max_doc())),
            });
        }
        let matching = member.all(segment.max_doc());
        if matching.len() == 0 {
            return Ok(ConstOrVariableSegmentPredicate::Const(false));
        }
        Ok(ConstOrVariableSegmentPredicate::Variable {
            predicate: SessionMember::default(),
            necessary_condition: Box::new(BitSetDocSet::from(matching)),
        })
    }
}

/// Whether a document is one a [`Found`] wants, in one index segment. The
/// default one wants every document it is asked about (the bit set that
/// drives it holds the answer).
#[derive(Default)]
struct SessionMember {
    column: Option<StrColumn>,
    /// By term ordinal of this segment's session column; empty: any.
    wanted: Vec<bool>,
    /// Sorted.
    own: Vec<DocId>,
}

impl SessionMember {
    /// Every wanted document of the segment, the session column read in
    /// bulk.
    fn all(&self, max_doc: DocId) -> BitSet {
        let mut matching = BitSet::with_max_value(max_doc);
        for &doc in &self.own {
            matching.insert(doc);
        }
        let Some(column) = &self.column else { return matching };
        let is_wanted = |ord: u64| self.wanted.get(ord as usize).copied().unwrap_or(false);
        let ords = column.ords();
        if matches!(ords.index, ColumnIndex::Full) {
            let mut buffer = vec![0u64; 4096];
            let mut start = 0u32;
            while start < max_doc {
                let len = (max_doc - start).min(buffer.len() as u32) as usize;
                ords.values.get_range(u64::from(start), &mut buffer[..len]);
                for (i, &ord) in buffer[..len].iter().enumerate() {
                    if is_wanted(ord) {
                        matching.insert(start + i as u32);
                    }
                }
                start += len as u32;
            }
        } else {
            for doc in 0..max_doc {
                if column.term_ords(doc).any(is_wanted) {
                    matching.insert(doc);
                }
            }
        }
        matching
    }
}

impl SegmentDocPredicate for SessionMember {
    fn eval(&mut self, doc: DocId) -> bool {
        let Some(column) = &self.column else {
            return self.own.is_empty() || self.own.binary_search(&doc).is_ok();
        };
        let ords = column.ords();
        let ord = match ords.index {
            ColumnIndex::Full => Some(ords.values.get_val(doc)),
            _ => column.term_ords(doc).next(),
        };
        ord.is_some_and(|ord| self.wanted.get(ord as usize).copied().unwrap_or(false))
            || (!self.own.is_empty() && self.own.binary_search(&doc).is_ok())
    }
}

/// Refuses `field:value` for fields Proctor does not index, naming them.
fn check_fields(fields: &Fields, text: &str) -> Result<(), QueryError> {
    let known = |name: &str| fields.keyword(name).is_some() || matches!(name, "text" | "seq" | "status" | "time");
    for (at, token) in tokens(text)? {
        let token = token.trim_start_matches(['(', '-', '+']);
        if token.starts_with('"') {
            continue;
        }
        if let Some((name, _)) = token.split_once(':')
            && !name.is_empty()
            && !known(name)
        {
            let mut names: Vec<&str> = fields.keywords.iter().map(|(n, _, _)| *n).collect();
            names.extend(["status", "after", "before", "since"]);
            return Err(bad(format!("unknown field `{name}` at column {}; fields are: {}", at + 1, names.join(", "))));
        }
    }
    Ok(())
}

fn explain(text: &str, error: tantivy::query::QueryParserError) -> QueryError {
    use tantivy::query::QueryParserError as E;
    match error {
        E::SyntaxError(detail) => bad(format!(
            "cannot read the query `{text}` ({detail}); use words, \"phrases\", field:value, AND, OR, NOT and parentheses"
        )),
        E::ExpectedInt(e) => bad(format!("in `{text}`: expected a whole number ({e})")),
        other => bad(format!("in `{text}`: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp(1_764_000_000_000_000_000);

    #[test]
    fn time_bounds_are_taken_out_of_the_query() {
        let parsed = parse("drop table after:2025-11-01 before:2025-11-02T12:00:00Z subject:ci", NOW).unwrap();
        assert_eq!(parsed.text, "drop table subject:ci");
        assert_eq!(parsed.after, Some(1_761_955_200_000_000_000));
        assert_eq!(parsed.before, Some(1_762_084_800_000_000_000));
        let parsed = parse("since:7d", NOW).unwrap();
        assert_eq!(parsed.after, Some(NOW.0 - 7 * 86_400 * 1_000_000_000));
        assert_eq!(parsed.text, "");
    }

    #[test]
    fn mistakes_are_pointed_at() {
        let error = parse("select after:yesterday", NOW).unwrap_err();
        assert!(error.message.contains("`after:yesterday` at column 8"), "{error}");
        let error = parse("since:7x", NOW).unwrap_err();
        assert!(error.message.contains("expected a span"), "{error}");
        let error = parse("\"drop table", NOW).unwrap_err();
        assert!(error.message.contains("unclosed quote"), "{error}");
        let fields = Fields::new();
        let error = check_fields(&fields, "drop colour:red").unwrap_err();
        assert!(error.message.contains("unknown field `colour` at column 6"), "{error}");
    }

    #[test]
    fn phrases_keep_their_spaces() {
        assert_eq!(
            tokens("\"drop table\" kind:statement").unwrap(),
            vec![(0, "\"drop table\""), (13, "kind:statement")]
        );
    }
}
