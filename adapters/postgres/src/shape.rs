//! The classification cache and the statement shapes it is keyed by.
//!
//! Parsing every query string would cost more than relaying it, so
//! classifications are cached by the statement's *shape*: its text with
//! comments dropped, whitespace collapsed and plain literals replaced. Two
//! texts may share an entry only if PostgreSQL would run them alike, which
//! takes two things:
//!
//! - **The shaper lexes as PostgreSQL does.** Comments end where the
//!   server's scanner ends them (`--` at a line feed *or* a carriage
//!   return), whitespace is the server's six characters, and anything the
//!   shaper does not read exactly as the server does (escape strings,
//!   backslashes, dollar quotes, Unicode escapes, numbers in other radixes or
//!   with exponents, adjacent string literals, which the server joins) makes
//!   the text unshaped: it is parsed each time. The test suite compares the
//!   shaper's literals and comments with PostgreSQL's own scanner
//!   (`pg_query::scan_tokens`) on generated statements.
//! - **Only literals that are values are replaced.** A literal slot of the
//!   shape is free only where the first text's parse tree has an `A_Const`
//!   there: a constant in an expression, whose value no rule reads. Every
//!   other literal — an `EXPLAIN` or `COPY` option, a `COPY` file name, a
//!   type modifier, a negated number — is compared exactly, so
//!   `explain (analyze 'on')` never reuses the verdict of
//!   `explain (analyze 'off')`, nor `copy t to '/tmp/x'` that of
//!   `copy t to ''`.
//!
//! The differential test (`tests/statement_rules.rs`) classifies tens of
//! thousands of generated statements and near-variants with and without the
//! cache; they must agree.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use smallvec::SmallVec;

use super::classify::{Classification, ParseAs, classify_tree};

/// A query string's shape: the cache key, and where its replaced literals
/// stand in the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// The text with comments dropped, whitespace collapsed, and each plain
    /// literal replaced by its kind: `0` (an integer the server reads as
    /// `int4`), `0.0` (any other number), `'?'` (a string).
    pub key: String,
    /// The replaced literals' byte ranges in the text, in order.
    pub literals: SmallVec<[(u32, u32); 8]>,
}

/// PostgreSQL's whitespace (`space` in its scanner): space, tab, line feed,
/// carriage return, form feed and vertical tab.
fn is_pg_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'\x0b')
}

/// A byte that continues an identifier in PostgreSQL (`ident_cont`, less `$`,
/// which the shaper refuses instead).
fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// `sql`'s shape, or `None` when anything in it could be read otherwise by
/// the server than by the shaper: such a text is parsed every time.
/// Parameters (`$1`) are kept: extended-protocol statements are shaped too.
pub fn shape(sql: &str) -> Option<Shape> {
    let bytes = sql.as_bytes();
    // The parser takes a C string: a NUL anywhere (even in a comment) makes
    // the text unparseable, so it must never share a parseable text's entry.
    if u32::try_from(bytes.len()).is_err() || memchr::memchr(0, bytes).is_some() {
        return None;
    }
    let mut out = String::with_capacity(sql.len());
    let mut literals = SmallVec::new();
    // Whether the last token was a string literal: the server joins two
    // string literals separated by whitespace with a newline.
    let mut after_string = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            // `$1`: a parameter (a dollar quote's tag cannot start with a
            // digit), kept as it is.
            b'$' if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let mut j = i + 1;
                while j < bytes.len() && bytes[j].is_ascii_digit() {
                    j += 1;
                }
                if bytes.get(j).is_some_and(|&b| is_ident(b) || b == b'$') {
                    return None;
                }
                out.push_str(&sql[i..j]);
                i = j;
            }
            b'\\' | b'$' => return None,
            b'\'' => {
                // E'..', U&'..', B'..', X'..', N'..': prefixed strings; and a
                // string after a string, which the server may join.
                if (i > 0 && (is_ident(bytes[i - 1]) || bytes[i - 1] == b'&')) || after_string {
                    return None;
                }
                let mut j = i + 1;
                loop {
                    match bytes.get(j) {
                        None | Some(b'\\') => return None,
                        Some(b'\'') if bytes.get(j + 1) == Some(&b'\'') => j += 2,
                        Some(b'\'') => break,
                        Some(_) => j += 1,
                    }
                }
                out.push_str("'?'");
                literals.push((i as u32, (j + 1) as u32));
                i = j + 1;
                after_string = true;
                continue;
            }
            b'"' => {
                let mut j = i + 1;
                loop {
                    match bytes.get(j) {
                        None => return None,
                        Some(b'"') if bytes.get(j + 1) == Some(&b'"') => j += 2,
                        Some(b'"') => break,
                        Some(_) => j += 1,
                    }
                }
                out.push_str(&sql[i..=j]);
                i = j + 1;
            }
            // A comment to the end of the line: the server's scanner ends it
            // at a line feed or a carriage return.
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && !matches!(bytes[i], b'\n' | b'\r') {
                    i += 1;
                }
                if !out.ends_with(' ') {
                    out.push(' ');
                }
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                // Comments nest in PostgreSQL.
                let mut depth = 0;
                loop {
                    match (bytes.get(i), bytes.get(i + 1)) {
                        (Some(b'/'), Some(b'*')) => {
                            depth += 1;
                            i += 2;
                        }
                        (Some(b'*'), Some(b'/')) => {
                            depth -= 1;
                            i += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        (Some(_), _) => i += 1,
                        (None, _) => return None,
                    }
                }
                if !out.ends_with(' ') {
                    out.push(' ');
                }
                continue;
            }
            b'0'..=b'9' => {
                // Inside an identifier or after a `.` (`t.5`, `.5`), digits
                // are not a literal of their own: kept as they are.
                let mut j = i;
                while j < bytes.len() && bytes[j].is_ascii_digit() {
                    j += 1;
                }
                if i > 0 && (is_ident(bytes[i - 1]) || bytes[i - 1] == b'.') {
                    // Junk after them is the server's error: parsed as is.
                    if bytes.get(j).is_some_and(|&b| is_ident(b) || b == b'.' || b == b'$') {
                        return None;
                    }
                    out.push_str(&sql[i..j]);
                    i = j;
                    after_string = false;
                    continue;
                }
                let mut decimal = false;
                if bytes.get(j) == Some(&b'.') {
                    // `1..5` is lexed by the server in pieces.
                    if bytes.get(j + 1) == Some(&b'.') {
                        return None;
                    }
                    decimal = true;
                    j += 1;
                    while j < bytes.len() && bytes[j].is_ascii_digit() {
                        j += 1;
                    }
                }
                // Exponents, radix prefixes, `_` separators and anything
                // glued to a number: parsed as they are.
                if bytes.get(j).is_some_and(|&b| is_ident(b) || b == b'.' || b == b'$') {
                    return None;
                }
                // The server reads an integer too large for int4 as numeric.
                let int4 = !decimal && sql[i..j].parse::<i32>().is_ok();
                out.push_str(if int4 { "0" } else { "0.0" });
                literals.push((i as u32, j as u32));
                i = j;
            }
            b if is_pg_space(b) => {
                if !out.ends_with(' ') {
                    out.push(' ');
                }
                i += 1;
                continue;
            }
            _ => {
                let start = i;
                i += 1;
                if is_ident(b) {
                    while i < bytes.len() && is_ident(bytes[i]) {
                        i += 1;
                    }
                }
                out.push_str(&sql[start..i]);
            }
        }
        after_string = false;
    }
    Some(Shape { key: out.trim_matches(' ').to_string(), literals })
}

/// A cached classification: what the first text of a shape parsed to, and
/// the literals of that shape that are not values (compared exactly).
struct Entry {
    classification: Arc<Classification>,
    /// (index into the shape's literals, the text it must have).
    fixed: Box<[(u32, Box<str>)]>,
}

/// Classifications cached by statement shape, bounded.
pub struct ClassCache {
    entries: Mutex<HashMap<String, Entry>>,
    capacity: usize,
}

impl ClassCache {
    pub fn new(capacity: usize) -> ClassCache {
        ClassCache { entries: Mutex::new(HashMap::new()), capacity }
    }

    /// The classes of `sql`'s statements, read as a session with
    /// `parse_as` reads them: from the cache when a query of the same shape
    /// and the same non-value literals was classified before under the same
    /// settings.
    pub fn classify(&self, sql: &str, parse_as: ParseAs) -> Arc<Classification> {
        let Some(shape) = shape(sql) else { return Arc::new(classify_tree(sql, parse_as).0.into()) };
        let mut key = shape.key;
        if !parse_as.standard_conforming_strings {
            key.insert_str(0, "scs=off\u{0}");
        }
        let literal = |index: u32| {
            let (start, end) = shape.literals[index as usize];
            &sql[start as usize..end as usize]
        };
        if let Some(entry) = self.lock().get(&key) {
            if entry.fixed.iter().all(|(index, text)| literal(*index) == &**text) {
                return entry.classification.clone();
            }
            // The same shape with another option, file name, ...: parsed
            // on its own (the first text's entry stays).
            return Arc::new(classify_tree(sql, parse_as).0.into());
        }
        let (classified, constants) = classify_tree(sql, parse_as);
        let classification: Arc<Classification> = Arc::new(classified.into());
        let fixed = shape
            .literals
            .iter()
            .enumerate()
            .filter(|(_, (start, _))| constants.binary_search(&i64::from(*start)).is_err())
            .map(|(index, _)| (index as u32, literal(index as u32).into()))
            .collect();
        let mut entries = self.lock();
        if entries.len() >= self.capacity {
            // Simple and bounded: start over (shapes are few in practice).
            entries.clear();
        }
        entries.insert(key, Entry { classification: classification.clone(), fixed });
        classification
    }

    /// How many shapes are cached.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}
