//! The investigators' query language.
//!
//! ```text
//! drop table                      both words (terms are ANDed)
//! "drop table customers"          a phrase
//! subject:ci-deploy kind:statement    exact field values
//! outcome:block OR outcome:hold   boolean operators: AND, OR, NOT, -word, (...)
//! duration:>1s rows:>=500 bytes:[1MB TO 10MB]   numeric comparisons, with units
//! client:10.0.0.0/8               a network (or an address, with or without port)
//! after:2026-11-01 before:2026-11-02T12:00:00Z   time bounds (UTC)
//! since:7d                        relative: s, m, h, d, w
//! ```
//!
//! Time bounds are taken out of the query and applied as a range; the rest
//! is read by tantivy's query grammar, then checked and rewritten against
//! Proctor's fields (closed vocabularies, units, networks) before it is
//! built, with errors that name the offending part.

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

use proctor_schemas::{Direction, EndReason, EventKind, PolicyOutcome, Protocol};
use tantivy::query_grammar::{UserInputBound, UserInputLiteral};

use crate::fields::{Fields, NUMBERS, SESSION_KEYWORDS, SESSION_RESOURCE_COLUMN, SESSION_SUBJECT_COLUMN, Unit};

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

/// The values a field with a closed vocabulary takes.
fn vocabulary(field: &str) -> Option<Vec<&'static str>> {
    fn names<T: Copy>(all: &[T], name: fn(&T) -> &'static str) -> Vec<&'static str> {
        all.iter().map(name).collect()
    }
    Some(match field {
        "kind" => names(EventKind::ALL, EventKind::as_str),
        "direction" => names(Direction::ALL, Direction::as_str),
        "protocol" => names(Protocol::ALL, Protocol::as_str),
        "outcome" => names(PolicyOutcome::ALL, PolicyOutcome::as_str),
        "end_reason" => names(EndReason::ALL, EndReason::as_str),
        _ => return None,
    })
}

/// Obvious other spellings of a closed vocabulary's value, taken for it
/// (and said so).
fn synonym(field: &str, value: &str) -> Option<&'static str> {
    match (field, value) {
        ("outcome", "allowed" | "allows" | "allowing") => Some("allow"),
        ("outcome", "blocked" | "blocks" | "blocking") => Some("block"),
        ("outcome", "held" | "holds" | "holding") => Some("hold"),
        ("protocol", "postgresql" | "pg" | "psql") => Some("postgres"),
        _ => None,
    }
}

/// A value of a closed vocabulary, or why it is none.
fn closed_value(field: &str, value: &str, notices: &mut Vec<String>) -> Result<Option<String>, QueryError> {
    let Some(values) = vocabulary(field) else { return Ok(None) };
    let lower = value.to_ascii_lowercase();
    if values.contains(&lower.as_str()) {
        return Ok(Some(lower));
    }
    if let Some(value_meant) = synonym(field, &lower) {
        notices.push(format!("`{field}:{value}` was read as `{field}:{value_meant}`"));
        return Ok(Some(value_meant.to_string()));
    }
    Err(bad(format!("`{field}:{value}`: `{value}` is not a {field}; {field} is one of: {}", values.join(", "))))
}

/// A numeric field's value as written in a query, in the index's unit.
fn number(field: &str, unit: Unit, value: &str) -> Result<i128, QueryError> {
    let split = value.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-')).unwrap_or(value.len());
    let (digits, suffix) = value.split_at(split);
    let scale: f64 = match unit {
        Unit::Duration => match suffix {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" | "min" => 60e9,
            "h" => 3600e9,
            "d" => 86_400e9,
            "" => {
                return Err(bad(format!(
                    "`{value}` in `{field}:`: a duration needs a unit: ns, us, ms, s, m, h or d (`{field}:>1s`, `{field}:[100ms TO 2s]`)"
                )));
            }
            _ => {
                return Err(bad(format!(
                    "`{value}` in `{field}:`: `{suffix}` is not a unit of time; use ns, us, ms, s, m, h or d"
                )));
            }
        },
        Unit::Bytes => match suffix.to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "kb" => 1e3,
            "mb" => 1e6,
            "gb" => 1e9,
            "tb" => 1e12,
            "kib" => 1024.0,
            "mib" => 1024.0 * 1024.0,
            "gib" => 1024.0 * 1024.0 * 1024.0,
            "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
            _ => {
                return Err(bad(format!(
                    "`{value}` in `{field}:`: `{suffix}` is not a unit of size; use B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB"
                )));
            }
        },
        Unit::Count | Unit::Signed if suffix.is_empty() && !digits.contains('.') => {
            return digits
                .parse::<i128>()
                .ok()
                .filter(|n| unit == Unit::Signed || *n >= 0)
                .ok_or_else(|| bad(format!("`{value}` in `{field}:`: expected a whole number")));
        }
        Unit::Count | Unit::Signed => return Err(bad(format!("`{value}` in `{field}:`: expected a whole number"))),
    };
    let amount: f64 =
        digits.parse().map_err(|_| bad(format!("`{value}` in `{field}:`: expected a number, such as 1.5{suffix}")))?;
    if amount.is_nan() || amount < 0.0 {
        return Err(bad(format!("`{value}` in `{field}:`: expected a number of zero or more")));
    }
    Ok((amount * scale).round().min(u64::MAX as f64) as i128)
}

/// Reads a query's leaves against Proctor's fields: closed vocabularies
/// checked (obvious synonyms taken, and said so in `notices`), command tags
/// upper-cased, numeric values read in their units, networks expanded to
/// the addresses the index holds; forms a field cannot take are refused.
fn normalize(
    fields: &Fields,
    searcher: &Searcher,
    ast: UserInputAst,
    notices: &mut Vec<String>,
) -> Result<UserInputAst, QueryError> {
    Ok(match ast {
        UserInputAst::Clause(clauses) => UserInputAst::Clause(
            clauses
                .into_iter()
                .map(|(occur, ast)| Ok((occur, normalize(fields, searcher, ast, notices)?)))
                .collect::<Result<_, QueryError>>()?,
        ),
        UserInputAst::Boost(ast, boost) => {
            UserInputAst::Boost(Box::new(normalize(fields, searcher, *ast, notices)?), boost)
        }
        UserInputAst::Leaf(leaf) => UserInputAst::Leaf(Box::new(normalize_leaf(fields, searcher, *leaf, notices)?)),
    })
}

fn unit_of(field: &str) -> Option<Unit> {
    NUMBERS.iter().find(|(name, _)| *name == field).map(|(_, unit)| *unit)
}

fn normalize_leaf(
    fields: &Fields,
    searcher: &Searcher,
    leaf: UserInputLeaf,
    notices: &mut Vec<String>,
) -> Result<UserInputLeaf, QueryError> {
    let value = |field: &str, value: String, notices: &mut Vec<String>| -> Result<String, QueryError> {
        if let Some(closed) = closed_value(field, &value, notices)? {
            return Ok(closed);
        }
        Ok(if field == "tag" { value.to_ascii_uppercase() } else { value })
    };
    Ok(match leaf {
        UserInputLeaf::Literal(literal) => match literal.field_name.clone() {
            Some(field) if unit_of(&field).is_some() => {
                let unit = unit_of(&field).unwrap_or(Unit::Count);
                let n = number(&field, unit, &literal.phrase)?.to_string();
                UserInputLeaf::Range {
                    field: Some(field),
                    lower: UserInputBound::Inclusive(n.clone()),
                    upper: UserInputBound::Inclusive(n),
                }
            }
            Some(field) if field == "client" && literal.phrase.contains('/') => {
                let network: ipnet::IpNet = literal.phrase.parse().map_err(|_| {
                    bad(format!(
                        "`client:{}`: expected an address (10.1.2.3, 10.1.2.3:5544) or a network (10.0.0.0/8, fd00::/8)",
                        literal.phrase
                    ))
                })?;
                UserInputLeaf::Set { field: Some(field), elements: hosts_in(fields, searcher, network)? }
            }
            Some(field) if field == "time" => {
                return Err(bad("`time:` is not a condition; use after:, before: or since:"));
            }
            Some(field) => {
                let phrase = value(&field, literal.phrase, notices)?;
                UserInputLeaf::Literal(UserInputLiteral { field_name: Some(field), phrase, ..literal })
            }
            None => UserInputLeaf::Literal(literal),
        },
        UserInputLeaf::Set { field: Some(field), .. } if unit_of(&field).is_some() => {
            return Err(bad(format!(
                "`{field}: IN [...]` compares no numbers; use `{field}:N OR {field}:M` or a range"
            )));
        }
        UserInputLeaf::Set { field: Some(field), elements } => {
            let elements = elements.into_iter().map(|e| value(&field, e, notices)).collect::<Result<_, _>>()?;
            UserInputLeaf::Set { field: Some(field), elements }
        }
        UserInputLeaf::Range { field: Some(field), lower, upper } => {
            let Some(unit) = unit_of(&field) else {
                let numbers: Vec<&str> = NUMBERS.iter().map(|(name, _)| *name).collect();
                return Err(bad(format!(
                    "`{field}:` takes values, not ranges; ranges apply to {} (and times to after:, before:, since:)",
                    numbers.join(", ")
                )));
            };
            let bound = |bound: UserInputBound| -> Result<UserInputBound, QueryError> {
                Ok(match bound {
                    UserInputBound::Inclusive(v) => UserInputBound::Inclusive(number(&field, unit, &v)?.to_string()),
                    UserInputBound::Exclusive(v) => UserInputBound::Exclusive(number(&field, unit, &v)?.to_string()),
                    UserInputBound::Unbounded => UserInputBound::Unbounded,
                })
            };
            let (lower, upper) = (bound(lower)?, bound(upper)?);
            UserInputLeaf::Range { field: Some(field), lower, upper }
        }
        UserInputLeaf::Exists { field } if field == "text" => {
            return Err(bad("`text:*` is not a condition: every event has text; search for words instead"));
        }
        UserInputLeaf::Range { field: None, .. } => {
            return Err(bad("a range needs a field: `duration:>1s`, `rows:[10 TO 100]`, `bytes:>=1MB`"));
        }
        other => other,
    })
}

/// The client hosts in the index that lie in `network`.
fn hosts_in(fields: &Fields, searcher: &Searcher, network: ipnet::IpNet) -> Result<Vec<String>, QueryError> {
    let Some(field) = fields.keyword("client") else { return Ok(Vec::new()) };
    let mut hosts = BTreeSet::new();
    let failed = |e: std::io::Error| {
        tracing::error!(error = %e, "cannot read the index's client addresses");
        bad("the index's client addresses could not be read (the reason is in Proctor's log)")
    };
    for segment in searcher.segment_readers() {
        let inverted = segment.inverted_index(field).map_err(|e| {
            tracing::error!(error = %e, "cannot read the index's client addresses");
            bad("the index's client addresses could not be read (the reason is in Proctor's log)")
        })?;
        let mut terms = inverted.terms().stream().map_err(failed)?;
        while terms.advance() {
            if let Ok(text) = std::str::from_utf8(terms.key())
                && let Ok(address) = text.parse::<std::net::IpAddr>()
                && network.contains(&address)
            {
                hosts.insert(text.to_string());
            }
        }
    }
    Ok(hosts.into_iter().collect())
}

/// A range over a numeric field's column, its bounds already in the
/// index's unit (see [`normalize`]).
fn numeric_range(
    fields: &Fields,
    field: &str,
    lower: &UserInputBound,
    upper: &UserInputBound,
) -> Result<Box<dyn Query>, Resolve> {
    let Ok(handle) = fields.schema.get_field(field) else {
        return Err(Resolve::Bad(format!("unknown field `{field}`")));
    };
    let signed = unit_of(field) == Some(Unit::Signed);
    let term = |value: &str| -> Result<Term, Resolve> {
        let n: i128 = value.parse().map_err(|_| Resolve::Bad(format!("`{field}`: expected a number")))?;
        Ok(match signed {
            true => Term::from_field_i64(handle, n.clamp(i64::MIN as i128, i64::MAX as i128) as i64),
            false => Term::from_field_u64(handle, n.clamp(0, u64::MAX as i128) as u64),
        })
    };
    let bound = |b: &UserInputBound| -> Result<Bound<Term>, Resolve> {
        Ok(match b {
            UserInputBound::Inclusive(v) => Bound::Included(term(v)?),
            UserInputBound::Exclusive(v) => Bound::Excluded(term(v)?),
            UserInputBound::Unbounded => Bound::Unbounded,
        })
    };
    let (lower, upper) = (bound(lower)?, bound(upper)?);
    if matches!((&lower, &upper), (Bound::Unbounded, Bound::Unbounded)) {
        return Ok(Box::new(ExistsQuery::new(field.to_string(), false)));
    }
    Ok(Box::new(RangeQuery::new(lower, upper)))
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
    notices: &mut Vec<String>,
) -> Result<Box<dyn Query>, QueryError> {
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    if !parsed.text.trim().is_empty() {
        check_fields(fields, &parsed.text)?;
        let mut parser = QueryParser::for_index(index, vec![fields.text]);
        parser.set_conjunction_by_default();
        let ast = tantivy::query_grammar::parse_query(&parsed.text)
            .map_err(|_| explain(&parsed.text, QueryParserError::SyntaxError(parsed.text.clone())))?;
        let ast = normalize(fields, searcher, ast, notices)?;
        let query = build_ast(fields, &parser, searcher, ast, false).map_err(|e| match e {
            Resolve::Parse(e) => explain(&parsed.text, e),
            Resolve::Bad(message) => bad(format!("in `{}`: {message}", parsed.text)),
            Resolve::Search(e) => {
                tracing::error!(query = %parsed.text, error = %e, "a search could not be resolved");
                bad(format!(
                    "`{}` could not be resolved against the index (the reason is in Proctor's log)",
                    parsed.text
                ))
            }
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
    fields: &Fields,
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
                let query = build_ast(fields, parser, searcher, ast, lazy)?;
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
            Ok(Box::new(BoostQuery::new(build_ast(fields, parser, searcher, *ast, lazy)?, boost.into_inner() as f32)))
        }
        UserInputAst::Leaf(leaf) if matches!(&*leaf, UserInputLeaf::Range { field: Some(f), .. } if unit_of(f).is_some()) =>
        {
            let UserInputLeaf::Range { field: Some(field), lower, upper } = *leaf else {
                return Err(Resolve::Bad("a numeric range".into()));
            };
            numeric_range(fields, &field, &lower, &upper)
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
        // Every event has a session.
        UserInputAst::Leaf(leaf) if matches!(&*leaf, UserInputLeaf::Exists { field } if field == "session") => {
            Ok(Box::new(AllQuery))
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
            // Only a `session_start` or `session_end` speaks for its
            // session: another event with the same value (a grant event's
            // `grant` or `subject`) matches itself, not the session it was
            // recorded in.
            let starts: Vec<DocId> = match reader.fast_fields().str("kind").map_err(Resolve::Search)? {
                Some(kinds) => {
                    let ord = |kind: &str| kinds.dictionary().term_ord(kind).map_err(|e| Resolve::Search(e.into()));
                    let speaking = [ord("session_start")?, ord("session_end")?];
                    segment_docs
                        .iter()
                        .copied()
                        .filter(|&doc| kinds.term_ords(doc).any(|ord| speaking.contains(&Some(ord))))
                        .collect()
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
    let known =
        |name: &str| fields.keyword(name).is_some() || unit_of(name).is_some() || matches!(name, "text" | "time");
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
            names.extend(NUMBERS.iter().map(|(name, _)| *name));
            names.extend(["after", "before", "since"]);
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
        E::ExpectedInt(_) | E::ExpectedFloat(_) => bad(format!("in `{text}`: expected a number")),
        E::FieldDoesNotExist(field) => bad(format!("in `{text}`: unknown field `{field}`")),
        E::RangeMustNotHavePhrase | E::UnsupportedQuery(_) | E::AllButQueryForbidden | E::NoDefaultFieldDeclared => {
            bad(format!(
                "in `{text}`: this form is not supported; use words, \"phrases\", field:value, field:*, numeric ranges, AND, OR, NOT and parentheses"
            ))
        }
        other => {
            tracing::warn!(query = %text, error = %other, "a query was refused by the query parser");
            bad(format!("in `{text}`: a field cannot take this value or form (see the query language in the README)"))
        }
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
    fn numbers_are_read_in_their_units() {
        let ok = |field: &str, unit, value: &str| number(field, unit, value).unwrap();
        assert_eq!(ok("duration", Unit::Duration, "1s"), 1_000_000_000);
        assert_eq!(ok("duration", Unit::Duration, "1.5s"), 1_500_000_000);
        assert_eq!(ok("duration", Unit::Duration, "500ms"), 500_000_000);
        assert_eq!(ok("duration", Unit::Duration, "250us"), 250_000);
        assert_eq!(ok("duration", Unit::Duration, "250µs"), 250_000);
        assert_eq!(ok("duration", Unit::Duration, "2m"), 120_000_000_000);
        assert_eq!(ok("duration", Unit::Duration, "1h"), 3_600_000_000_000);
        assert_eq!(ok("bytes", Unit::Bytes, "1MB"), 1_000_000);
        assert_eq!(ok("bytes", Unit::Bytes, "1MiB"), 1_048_576);
        assert_eq!(ok("bytes", Unit::Bytes, "10kb"), 10_000);
        assert_eq!(ok("bytes", Unit::Bytes, "7"), 7);
        assert_eq!(ok("rows", Unit::Count, "500"), 500);
        assert_eq!(ok("exit_code", Unit::Signed, "-1"), -1);
        let refused = |field: &str, unit, value: &str| number(field, unit, value).unwrap_err().message;
        assert!(refused("duration", Unit::Duration, "1000").contains("a duration needs a unit"));
        assert!(refused("duration", Unit::Duration, "5xs").contains("`xs` is not a unit of time"));
        assert!(refused("bytes", Unit::Bytes, "1XB").contains("`XB` is not a unit of size"));
        assert!(refused("rows", Unit::Count, "-1").contains("expected a whole number"));
        assert!(refused("rows", Unit::Count, "1.5").contains("expected a whole number"));
        assert!(refused("bytes", Unit::Bytes, "-1MB").contains("zero or more"));
    }

    #[test]
    fn closed_vocabularies_take_their_values_and_say_what_they_read() {
        let mut notices = Vec::new();
        assert_eq!(closed_value("kind", "Statement", &mut notices).unwrap().as_deref(), Some("statement"));
        assert_eq!(closed_value("outcome", "held", &mut notices).unwrap().as_deref(), Some("hold"));
        assert_eq!(closed_value("outcome", "BLOCKED", &mut notices).unwrap().as_deref(), Some("block"));
        assert_eq!(closed_value("protocol", "pg", &mut notices).unwrap().as_deref(), Some("postgres"));
        assert_eq!(closed_value("subject", "anything", &mut notices).unwrap(), None, "an open field");
        assert_eq!(
            notices,
            [
                "`outcome:held` was read as `outcome:hold`",
                "`outcome:BLOCKED` was read as `outcome:block`",
                "`protocol:pg` was read as `protocol:postgres`"
            ]
        );
        let error = closed_value("kind", "bogus", &mut notices).unwrap_err().message;
        assert!(error.contains("`bogus` is not a kind") && error.contains("session_start, session_end"), "{error}");
        let error = closed_value("end_reason", "revoked", &mut notices).unwrap_err().message;
        assert!(error.contains("grant_revoked"), "{error}");
    }

    /// An index in memory: two sessions' starts (clients 10.1.2.3 and
    /// 192.168.0.9) and a statement with a command tag and row count.
    fn small_index() -> (Fields, tantivy::Index) {
        let fields = Fields::new();
        let index = tantivy::Index::create_in_ram(fields.schema.clone());
        let mut writer: tantivy::IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
        let keyword = |name: &str| fields.keyword(name).unwrap();
        for (session, client) in [("s1", "10.1.2.3"), ("s2", "192.168.0.9")] {
            let mut doc = tantivy::TantivyDocument::default();
            doc.add_text(keyword("session"), session);
            doc.add_text(keyword("kind"), "session_start");
            doc.add_text(keyword("client"), format!("{client}:5544"));
            doc.add_text(keyword("client"), client);
            doc.add_u64(fields.seq, 0);
            doc.add_i64(fields.time, 1);
            writer.add_document(doc).unwrap();
        }
        let mut doc = tantivy::TantivyDocument::default();
        doc.add_text(keyword("session"), "s1");
        doc.add_text(keyword("kind"), "statement");
        doc.add_text(keyword("tag"), "UPDATE 3");
        doc.add_text(keyword("tag"), "UPDATE");
        doc.add_u64(fields.rows, 3);
        doc.add_u64(fields.duration, 2_000_000_000);
        doc.add_u64(fields.seq, 1);
        doc.add_i64(fields.time, 2);
        writer.add_document(doc).unwrap();
        writer.commit().unwrap();
        (fields, index)
    }

    /// How many documents a query finds in [`small_index`], or its refusal.
    fn count(fields: &Fields, index: &tantivy::Index, text: &str) -> Result<usize, String> {
        let searcher = index.reader().unwrap().searcher();
        let parsed = parse(text, NOW).map_err(|e| e.message)?;
        let query = build(fields, index, &searcher, &parsed, &mut Vec::new()).map_err(|e| e.message)?;
        Ok(searcher.search(&*query, &tantivy::collector::Count).unwrap())
    }

    #[test]
    fn the_new_forms_select_what_they_say() {
        let (fields, index) = small_index();
        let count = |text: &str| count(&fields, &index, text);
        assert_eq!(count("rows:>2"), Ok(1));
        assert_eq!(count("rows:>3"), Ok(0));
        assert_eq!(count("rows:[3 TO 3]"), Ok(1));
        assert_eq!(count("rows:3"), Ok(1));
        assert_eq!(count("duration:>1s"), Ok(1));
        assert_eq!(count("duration:>=2001ms"), Ok(0));
        assert_eq!(count("rows:*"), Ok(1));
        assert_eq!(count("tag:update"), Ok(1), "upper-cased");
        assert_eq!(count("tag:\"UPDATE 3\""), Ok(1));
        // A network, or an address with or without its port: the session's
        // events (its start and its statement).
        assert_eq!(count("client:10.0.0.0/8"), Ok(2));
        assert_eq!(count("client:10.1.2.3"), Ok(2));
        assert_eq!(count("client:\"10.1.2.3:5544\""), Ok(2));
        assert_eq!(count("client:192.168.0.0/16 kind:statement"), Ok(0));
        assert_eq!(count("client:\"::/0\""), Ok(0));
        assert_eq!(count("session:*"), Ok(3));
        assert_eq!(count("client:*"), Ok(3));
    }

    #[test]
    fn every_form_a_field_cannot_take_is_refused_by_name() {
        let (fields, index) = small_index();
        let refused = |text: &str| count(&fields, &index, text).unwrap_err();
        assert!(refused("subject:[a TO b]").contains("`subject:` takes values, not ranges"));
        assert!(refused("[1 TO 2]").contains("a range needs a field"));
        assert!(refused("text:*").contains("`text:*` is not a condition"));
        assert!(refused("time:5").contains("use after:, before: or since:"));
        assert!(refused("rows: IN [1 2]").contains("compares no numbers"));
        assert!(refused("client:10.0.0.0/99").contains("expected an address"));
        assert!(refused("kind:bogus").contains("is not a kind"));
        assert!(refused("duration:>5").contains("needs a unit"));
        assert!(refused("colour:red").contains("unknown field `colour`"));
    }

    #[test]
    fn phrases_keep_their_spaces() {
        assert_eq!(
            tokens("\"drop table\" kind:statement").unwrap(),
            vec![(0, "\"drop table\""), (13, "kind:statement")]
        );
    }
}
