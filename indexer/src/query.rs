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

use proctor_schemas::Timestamp;
use tantivy::Term;
use tantivy::query::{BooleanQuery, Occur, Query, QueryParser, RangeQuery};

use crate::fields::Fields;

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
/// fields, ANDed with the time range.
pub fn build(fields: &Fields, index: &tantivy::Index, parsed: &Parsed) -> Result<Box<dyn Query>, QueryError> {
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    if !parsed.text.trim().is_empty() {
        check_fields(fields, &parsed.text)?;
        let mut parser = QueryParser::for_index(index, vec![fields.text]);
        parser.set_conjunction_by_default();
        let query = parser.parse_query(&parsed.text).map_err(|e| explain(&parsed.text, e))?;
        clauses.push((Occur::Must, query));
    }
    if parsed.after.is_some() || parsed.before.is_some() {
        let bound = |t: Option<i64>, inclusive: bool| match t {
            Some(t) if inclusive => Bound::Included(Term::from_field_i64(fields.time, t)),
            Some(t) => Bound::Excluded(Term::from_field_i64(fields.time, t)),
            None => Bound::Unbounded,
        };
        clauses.push((Occur::Must, Box::new(RangeQuery::new(bound(parsed.after, true), bound(parsed.before, false)))));
    }
    Ok(match clauses.len() {
        0 => Box::new(tantivy::query::AllQuery),
        1 => clauses.pop().map(|(_, q)| q).unwrap_or_else(|| Box::new(tantivy::query::AllQuery)),
        _ => Box::new(BooleanQuery::new(clauses)),
    })
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
