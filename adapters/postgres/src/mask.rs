//! Masking PostgreSQL messages in place: rows (by column, using the row
//! description), COPY data, error and notice fields, notification payloads.
//! Each function returns the masked frame only when something changed, so
//! the common path forwards the target's bytes untouched.

use proctor_gateway_core::masking::{Column, Counts, Detector, Findings, Masker, NameSays, TextOut, count};

/// A statement's text as it is recorded and shown to reviewers under
/// masking, and whether reviewers could judge it so; `None` when masking
/// changes nothing in it.
///
/// Masking the text as a whole could let one finding swallow what follows
/// it (a private key's header in a literal runs to the end of the text,
/// and with it a `; DROP TABLE` after the literal; a URL's password or a
/// JWT's last part runs over quotes and keywords): the reviewer would
/// approve a statement they were never shown. So the text is split into
/// the server's tokens and only their contents are masked — a string's or
/// quoted identifier's inside its quotes, a comment's inside its markers,
/// an unquoted identifier or a number whole — never a keyword, an operator
/// or punctuation: the statement's structure is always shown as it will
/// run. What the detectors find in each token is masked, and so is what
/// they find in the whole text beginning in a token (a secret named in
/// context), up to that token's end. Where this session reads
/// strings otherwise than the scanner (`standard_conforming_strings` off,
/// with a backslash in the text), tokens cannot be told apart faithfully:
/// the text is withheld.
///
/// Reviewers cannot judge a text withheld or masked whole, nor one where a
/// masked value covers a quote, a semicolon, a parenthesis or a dollar
/// sign: inside a string, that is what code looks like (a `DO` block's or
/// a function's body, a string run by `EXECUTE` or `dblink_exec`), and one
/// finding (a private key's header, a URL's password) can run over the
/// rest of it. What a value of its own holds (an address, a card number,
/// a key's base64 lines, a token) is none of these.
pub(super) struct MaskedStatement {
    /// As recorded and shown.
    pub text: String,
    /// Why reviewers could not judge the statement from `text`, if so.
    pub hides: Option<&'static str>,
}

const WITHHELD_WHY: &str = "with standard_conforming_strings off, its tokens cannot be shown apart";
const WHOLE_WHY: &str = "it cannot be split into tokens, so it could only be shown masked whole";
const CODE_WHY: &str = "a masked value covers quotes, semicolons, parentheses or dollar signs inside a string, \
     which can be code (a DO block's or a function's body, a string run as SQL)";

/// [`mask_statement`]'s text.
pub(super) fn mask_statement_text(masker: &Masker, sql: &str, standard_strings: bool) -> Option<String> {
    mask_statement(masker, sql, standard_strings).map(|m| m.text)
}

/// Why reviewers could not judge held statement `sql` from its masked text
/// ([`mask_statement`]), or `None` when they can: such a statement is
/// refused rather than put to review.
pub(super) fn hidden_from_reviewers(masker: &Masker, sql: &str, standard_strings: bool) -> Option<&'static str> {
    mask_statement(masker, sql, standard_strings).and_then(|m| m.hides)
}

pub(super) fn mask_statement(masker: &Masker, sql: &str, standard_strings: bool) -> Option<MaskedStatement> {
    use pg_query::protobuf::{KeywordKind, Token};
    let whole = masker.findings(sql);
    if whole.is_empty() {
        return None;
    }
    if !standard_strings && sql.contains('\\') {
        return Some(MaskedStatement {
            text: "[statement withheld: masking found a value to mask in it, and with standard_conforming_strings off its tokens cannot be shown apart]"
                .to_string(),
            hides: Some(WITHHELD_WHY),
        });
    }
    // Text the scanner refuses is refused by the server too (and blocked
    // under rules): the whole text masked is all there is to show.
    let Ok(tokens) = pg_query::scan_tokens(sql) else {
        return masked_whole(masker, sql);
    };
    // Each token's span, and its content (absolute range), if any.
    let mut pieces: Vec<(std::ops::Range<usize>, Option<std::ops::Range<usize>>)> = Vec::with_capacity(tokens.len());
    // Per token: 1 for a `.`, 2 for an unquoted name or a number, else 0.
    let mut links: Vec<u8> = Vec::with_capacity(tokens.len());
    // Per token: a string (which can hold code), or not.
    let mut strings: Vec<bool> = Vec::with_capacity(tokens.len());
    for token in &tokens {
        let (Ok(start), Ok(end)) = (usize::try_from(token.start), usize::try_from(token.end)) else {
            return masked_whole(masker, sql);
        };
        let Some(text) = sql.get(start..end).filter(|_| start >= pieces.last().map_or(0, |p| p.0.end)) else {
            return masked_whole(masker, sql);
        };
        let kind = Token::try_from(token.token).unwrap_or(Token::Nul);
        let keyword = token.keyword_kind != KeywordKind::NoKeyword as i32;
        let quoted = |quote: char| {
            let open = text.find(quote)?;
            (text.len() > open + 1 && text.ends_with(quote)).then_some(open + 1..text.len() - 1)
        };
        // `$tag$ ... $tag$`: the inside of the tags.
        let dollar_quoted = || {
            let tag = &text[..text[1..].find('$')? + 2];
            (text.len() >= 2 * tag.len() && text.ends_with(tag)).then_some(tag.len()..text.len() - tag.len())
        };
        let content = match kind {
            Token::Sconst if text.starts_with('$') => match dollar_quoted() {
                Some(content) => Some(content),
                None => return masked_whole(masker, sql),
            },
            Token::Sconst | Token::Usconst | Token::Bconst | Token::Xconst => quoted('\''),
            Token::Ident | Token::Uident if text.ends_with('"') => quoted('"'),
            Token::SqlComment => Some(2.min(text.len())..text.len()),
            Token::CComment if text.len() >= 4 && text.ends_with("*/") => Some(2..text.len() - 2),
            Token::CComment => Some(2.min(text.len())..text.len()),
            Token::Ident | Token::Iconst | Token::Fconst | Token::Param if !keyword => Some(0..text.len()),
            // Keywords, operators, punctuation: the structure, shown as is.
            _ => None,
        };
        links.push(match kind {
            _ if text == "." => 1,
            Token::Ident | Token::Iconst | Token::Fconst if !keyword && !text.starts_with(['"', '.']) => 2,
            _ => 0,
        });
        strings.push(matches!(kind, Token::Sconst | Token::Usconst));
        pieces.push((start..end, content.map(|c| start + c.start..start + c.end)));
    }
    // What the detectors find in each token's content, on its own.
    let own: Vec<proctor_gateway_core::masking::Findings> = pieces
        .iter()
        .map(|(_, content)| content.as_ref().map(|c| masker.findings(&sql[c.clone()])).unwrap_or_default())
        .collect();
    // What they find in the whole text and no token explains on its own (a
    // secret named in context: `aws_secret_access_key = '...'`) is masked
    // in the token it begins in, and on through a dotted chain of names
    // (`eyJ...`.`eyJ...`.`sig`): a finding never crosses any other token,
    // where it would hide a keyword, a call or a statement (a URL's
    // password running over `'||f()||'`).
    let mut shares: Vec<proctor_gateway_core::masking::Findings> = vec![Default::default(); pieces.len()];
    for w in whole.iter() {
        let Some(first) = pieces.iter().position(|(_, c)| c.as_ref().is_some_and(|c| c.contains(&w.range.start)))
        else {
            continue;
        };
        let explained = pieces[first].1.as_ref().is_some_and(|c| {
            own[first].iter().any(|f| c.start + f.range.start == w.range.start && f.detector == w.detector)
        });
        if explained {
            continue;
        }
        let mut at = first;
        loop {
            if let Some(c) = &pieces[at].1 {
                let (from, to) = (w.range.start.max(c.start), w.range.end.min(c.end));
                if from < to && sql.is_char_boundary(from) && sql.is_char_boundary(to) {
                    shares[at].push(proctor_gateway_core::masking::Finding {
                        detector: w.detector,
                        range: from - c.start..to - c.start,
                    });
                }
            }
            let adjacent =
                |i: usize| pieces.get(i).is_some_and(|p| p.0.start == pieces[i - 1].0.end && p.0.start < w.range.end);
            if links[at] == 2
                && links.get(at + 1) == Some(&1)
                && links.get(at + 2) == Some(&2)
                && adjacent(at + 1)
                && adjacent(at + 2)
            {
                at += 2;
            } else {
                break;
            }
        }
    }
    let mut out = String::with_capacity(sql.len());
    let mut last = 0;
    let mut hides = None;
    for ((((span, content), own), share), string) in pieces.iter().zip(own).zip(shares).zip(strings) {
        out.push_str(&sql[last..span.start]);
        last = span.end;
        let Some(content) = content else {
            out.push_str(&sql[span.clone()]);
            continue;
        };
        let inside = &sql[content.clone()];
        let mut findings = own;
        findings.extend(share);
        findings.sort_by_key(|f| (f.range.start, std::cmp::Reverse(f.range.end)));
        let mut kept = proctor_gateway_core::masking::Findings::new();
        for finding in findings {
            if kept.last().is_none_or(|k: &proctor_gateway_core::masking::Finding| k.range.end <= finding.range.start) {
                kept.push(finding);
            }
        }
        let code = |f: &proctor_gateway_core::masking::Finding| {
            inside.get(f.range.clone()).is_none_or(|hidden| hidden.contains([';', '\'', '"', '(', ')', '$']))
        };
        if string && kept.iter().any(code) {
            hides = Some(CODE_WHY);
        }
        out.push_str(&sql[span.start..content.start]);
        masker.write_masked(inside, &kept, &mut Counts::new(), &mut out);
        out.push_str(&sql[content.end..span.end]);
    }
    out.push_str(sql.get(last..).unwrap_or_default());
    Some(MaskedStatement { text: out, hides })
}

/// The whole text masked, as is: all there is to show of a text the
/// scanner cannot split, and nothing reviewers could judge.
fn masked_whole(masker: &Masker, sql: &str) -> Option<MaskedStatement> {
    Some(MaskedStatement { text: masker.mask_text(sql, &mut Counts::new()).into_owned(), hides: Some(WHOLE_WHY) })
}

/// Types whose values are text in both formats (binary `text` is its UTF-8).
pub(super) fn text_like(oid: u32) -> bool {
    // text, varchar, bpchar, name, json, unknown, xml, and unknown (0).
    matches!(oid, 25 | 1043 | 1042 | 19 | 114 | 705 | 142 | 0)
}

pub(super) const JSON: u32 = 114;
pub(super) const JSONB: u32 = 3802;

/// The type of a column no description placed (rows asked for in binary
/// without a Describe): read as nothing, so its binary values are withheld.
pub(super) const UNPLACED: u32 = u32::MAX;

/// How masking reads a value of a type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reading {
    /// Text (or JSON, XML): detectors read it and mask in place.
    Text,
    /// A number that can hold a card number (int8, numeric): the card
    /// detector reads its digits; a hit withholds it.
    Number,
    /// A typed scalar whose text the server generates from the value (other
    /// numbers, times, bool, uuid, network addresses): it holds no text, so
    /// detectors do not read it (column rules still apply).
    Scalar,
    /// Anything else (arrays, composites, ranges, bytea, extension types):
    /// its text form is read, and a hit withholds the whole value, whose
    /// type could not hold a marker; its binary form is withheld unread.
    Other,
}

pub(super) fn reading(oid: u32) -> Reading {
    match oid {
        _ if text_like(oid) || oid == JSONB => Reading::Text,
        20 | 1700 => Reading::Number,
        // bool, int2, int4, oid, float4, float8, money, date, time,
        // timestamp, timestamptz, interval, timetz, uuid, inet, cidr,
        // macaddr, macaddr8.
        16 | 21 | 23 | 26 | 700 | 701 | 790 | 1082 | 1083 | 1114 | 1184 | 1186 | 1266 | 2950 | 869 | 650 | 829
        | 774 => Reading::Scalar,
        _ => Reading::Other,
    }
}

/// Whether a column rule's marker can stand in for a value of this type:
/// strings only (a marker is not JSON or XML); other types get NULL.
pub(super) fn holds_marker(oid: u32) -> bool {
    matches!(oid, 25 | 1043 | 1042 | 19 | 705 | 0)
}

/// Whether a number (int8 or numeric, in either format) is a card number.
fn number_is_card(value: &[u8], column: &ResultColumn) -> bool {
    use proctor_gateway_core::masking::is_card_number;
    match (column.type_oid, column.format) {
        (_, 0) => std::str::from_utf8(value).is_ok_and(is_card_number),
        (20, 1) => <[u8; 8]>::try_from(value).is_ok_and(|b| is_card_number(&i64::from_be_bytes(b).to_string())),
        (1700, 1) => numeric_integer(value).is_some_and(|digits| is_card_number(&digits)),
        _ => false,
    }
}

/// A binary numeric's integer part as decimal digits (its sign and
/// fraction left out: the integer part decides whether `-card` or
/// `card.50` is a card number), if it has at most 24 digits (longer ones
/// cannot be card numbers). NaN and infinities have none.
fn numeric_integer(value: &[u8]) -> Option<String> {
    let word = |i: usize| value.get(i * 2..i * 2 + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let (ndigits, weight, sign) = (word(0)? as usize, word(1)? as i16, word(2)?);
    if !matches!(sign, 0 | 0x4000) || !(0..=5).contains(&weight) {
        return None;
    }
    let mut out = String::with_capacity(24);
    for i in 0..=weight as usize {
        let digit = if i < ndigits { word(4 + i)? } else { 0 };
        if digit > 9999 {
            return None;
        }
        if i == 0 {
            out.push_str(&digit.to_string());
        } else {
            out.push_str(&format!("{digit:04}"));
        }
    }
    Some(out)
}

/// A result column, from a RowDescription.
#[derive(Clone, Debug, Default)]
pub struct ResultColumn {
    pub name: String,
    /// The table the column comes from (0: none, e.g. an expression), and
    /// its name once the catalog named it.
    pub table_oid: u32,
    pub table: Option<String>,
    /// The column's number in its table (0: none), and its name there once
    /// the catalog named it: a rule on `ssn` still applies to `ssn AS x`.
    pub attnum: i16,
    pub source: Option<String>,
    pub type_oid: u32,
    pub format: i16,
    /// The masking column rule that applies, by index (see
    /// [`Masker::column_rule_index`]), decided once per result.
    pub rule: Option<usize>,
    /// Whether the column's name (its label or its name in its table) says
    /// its values are secrets (`password`, `api_key`, ...), decided once per
    /// result: then a random-looking value is masked whole.
    pub name_says: NameSays,
    /// The column comes from a table the catalog did not name (the lookup
    /// failed, or the table is not visible to it): under column rules its
    /// name in its table is unknown, so an alias could hide a ruled column,
    /// and its values are withheld.
    pub unplaced: bool,
}

impl ResultColumn {
    /// Names the column's table and its name there, from what the catalog
    /// told about its table (nothing: left unnamed).
    pub fn name_source(&mut self, table: Option<&super::catalog::TableInfo>) {
        self.table = table.map(|t| t.name.clone());
        self.source = table.and_then(|t| t.columns.get(&self.attnum)).cloned();
    }
}

/// Decides, once per result, which column rule applies to each column: the
/// stricter of the rules matching its name in the result and its name in
/// its table.
pub fn plan(columns: &mut [ResultColumn], masker: &Masker) {
    for column in columns {
        let table = column.table.as_deref();
        let by_name = masker.column_rule_index(&Column { name: &column.name, table });
        let by_source = column.source.as_deref().and_then(|name| masker.column_rule_index(&Column { name, table }));
        column.rule = masker.stricter(by_name, by_source);
        let says = |name: &str| masker.name_says(&Column { name, table });
        column.name_says = says(&column.name).either(column.source.as_deref().map_or(NameSays::Nothing, says));
    }
}

/// What becomes of a value that masking changes.
enum Change<'v> {
    /// Withheld as NULL: a rule on a column whose type cannot hold the
    /// masked text, a secret inside a value of another type, or a value
    /// masking cannot read.
    Null,
    /// Replaced by these bytes.
    Bytes(Vec<u8>),
    /// Text with these findings masked in it, written where it goes.
    Text(&'v str, Findings),
}

/// Masks one value; `None` when it stays as it is. `column` is `None` when
/// no row description told what the value is.
fn mask_value<'v>(
    value: &'v [u8],
    column: Option<&ResultColumn>,
    masker: &Masker,
    counts: &mut Counts,
) -> Option<Change<'v>> {
    let says = column.map_or(NameSays::Nothing, |c| c.name_says);
    let withheld_if_found = |text: &[u8], counts: &mut Counts| {
        let text = std::str::from_utf8(text).ok()?;
        let findings = masker.findings_in_column(text, says);
        if findings.is_empty() {
            return None;
        }
        // Counted as masked: written nowhere.
        // (Its tokens are not kept: the value reaches no one.)
        let mut unseen = Counts::new();
        masker.write_masked(text, &findings, &mut unseen, &mut Discard);
        counts.add_rules(unseen);
        Some(Change::Null)
    };
    let Some(column) = column.filter(|c| !c.unplaced) else {
        // Unknown column (or one of an unnamed table): a column rule could
        // apply to it, so it is withheld; without column rules the detectors
        // read it, and a hit withholds it.
        if masker.has_column_rules() {
            count(counts, "column:unknown");
            return Some(Change::Null);
        }
        return withheld_if_found(value, counts);
    };
    // jsonb in binary: a version byte, then the JSON text.
    let (prefix, text) = match (column.type_oid, column.format) {
        (JSONB, 1) => value.split_first().map_or((None, value), |(v, rest)| (Some(*v), rest)),
        _ => (None, value),
    };
    if let Some((rule, action)) = column.rule.map(|i| masker.column_rule_at(i)) {
        count(counts, rule);
        if !holds_marker(column.type_oid) {
            // A masked value is text: for other types, NULL says "withheld".
            return Some(Change::Null);
        }
        let original = String::from_utf8_lossy(text);
        return Some(Change::Bytes(masker.mask_whole(rule, action, &original, counts).into_bytes()));
    }
    if !masker.has_detectors() {
        return None;
    }
    match reading(column.type_oid) {
        Reading::Text => {}
        Reading::Scalar => return None,
        Reading::Number => {
            if masker.detects(Detector::Card) && number_is_card(value, column) {
                count(counts, Detector::Card.as_str());
                return Some(Change::Null);
            }
            return None;
        }
        Reading::Other if column.format == 1 => {
            // Arrays, composites, bytea and other binary forms may carry
            // text masking cannot read in place: withheld.
            count(counts, "binary:unread");
            return Some(Change::Null);
        }
        // A secret in the text form of an array or a composite withholds
        // the whole value, whose type could not hold a marker.
        Reading::Other => return withheld_if_found(text, counts),
    }
    let Ok(original) = std::str::from_utf8(text) else {
        count(counts, "text:unreadable");
        return Some(Change::Null);
    };
    let findings = masker.findings_in_column(original, says);
    if matches!(column.type_oid, JSON | JSONB) {
        // Escapes (`\u0040`, `\/`) and exponents hide from the detectors
        // what the driver decodes, and masking the text in place could not
        // be trusted to cover it: a document that reads differently decoded
        // and holds a secret there is withheld.
        if let Some(decoded) = proctor_gateway_core::masking::json_decoded(original)
            && !masker.findings_in_column(&decoded, says).is_empty()
        {
            count(counts, "json:escaped");
            return Some(Change::Null);
        }
        if findings.is_empty() {
            return None;
        }
        // JSON stays JSON for the driver that parses it, or is withheld.
        let mut written = Counts::new();
        let Some(masked) = masker.masked_json(original, &findings, &mut written) else {
            // Withheld: counted, its tokens not kept (no one saw them).
            counts.add_rules(written);
            count(counts, "json:unmaskable");
            return Some(Change::Null);
        };
        counts.add(written);
        return Some(Change::Bytes(prefix.into_iter().chain(masked.into_bytes()).collect()));
    }
    if findings.is_empty() {
        return None;
    }
    let Some(prefix) = prefix else { return Some(Change::Text(original, findings)) };
    let mut out = vec![prefix];
    masker.write_masked(original, &findings, counts, &mut out);
    Some(Change::Bytes(out))
}

/// Masked text that goes nowhere (the value is withheld whole).
struct Discard;

impl TextOut for Discard {
    fn put(&mut self, _: &str) {}
}

/// A DataRow body masked column by column: the whole new frame, or `None`
/// if nothing was masked. One pass: values before the first masked one are
/// copied in one piece, and so are the runs between masked ones; masked
/// text is written straight into the new frame.
pub fn data_row(body: &[u8], columns: &[ResultColumn], masker: &Masker, counts: &mut Counts) -> Option<Vec<u8>> {
    let count = i16::from_be_bytes(body.get(..2)?.try_into().ok()?).max(0) as usize;
    let mut out: Option<Vec<u8>> = None;
    // Bytes of `body` already in `out`.
    let mut copied = 0;
    let mut at = 2;
    for i in 0..count {
        let start = at;
        let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len < 0 {
            continue;
        }
        let end = at.checked_add(len as usize)?;
        let value = body.get(at..end)?;
        at = end;
        let Some(change) = mask_value(value, columns.get(i), masker, counts) else { continue };
        let out = out.get_or_insert_with(|| {
            let mut out = Vec::with_capacity(body.len() + 5 + 64);
            out.push(b'D');
            out.extend_from_slice(&[0; 4]);
            out
        });
        out.extend_from_slice(&body[copied..start]);
        match change {
            Change::Null => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Change::Bytes(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(&v);
            }
            Change::Text(text, findings) => {
                let length_at = out.len();
                out.extend_from_slice(&[0; 4]);
                masker.write_masked(text, &findings, counts, out);
                let written = (out.len() - length_at - 4) as i32;
                out[length_at..length_at + 4].copy_from_slice(&written.to_be_bytes());
            }
        }
        copied = end;
    }
    let mut out = out?;
    out.extend_from_slice(&body[copied..]);
    let len = (out.len() - 1) as u32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    Some(out)
}

/// ErrorResponse or NoticeResponse fields masked (message, detail, hint,
/// context, internal query): the new frame, or `None`.
pub fn fields(tag: u8, body: &[u8], masker: &Masker, counts: &mut Counts) -> Option<Vec<u8>> {
    let mut parts: Vec<(u8, std::borrow::Cow<'_, str>)> = Vec::new();
    let mut rest = body;
    let mut changed = false;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]);
        // Message, detail, hint, context, and the internal query.
        let value = if matches!(kind, b'M' | b'D' | b'H' | b'W' | b'q') {
            match masker.mask_text(&value, counts) {
                std::borrow::Cow::Owned(masked) => {
                    changed = true;
                    std::borrow::Cow::Owned(masked)
                }
                std::borrow::Cow::Borrowed(_) => value,
            }
        } else {
            value
        };
        parts.push((kind, value));
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    if !changed {
        return None;
    }
    let mut out = vec![tag, 0, 0, 0, 0];
    for (kind, value) in parts {
        out.push(kind);
        out.extend_from_slice(value.replace('\0', "").as_bytes());
        out.push(0);
    }
    out.push(0);
    let len = (out.len() - 1) as u32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    Some(out)
}

/// A ParameterStatus value masked, if anything in it was.
pub fn parameter(masker: &Masker, value: &str) -> Option<String> {
    match masker.mask_text(value, &mut Counts::new()) {
        std::borrow::Cow::Owned(masked) => Some(masked),
        std::borrow::Cow::Borrowed(_) => None,
    }
}

/// A NotificationResponse with its payload masked: the new frame, or `None`.
pub fn notification(body: &[u8], masker: &Masker, counts: &mut Counts) -> Option<Vec<u8>> {
    let pid = body.get(..4)?;
    let rest = &body[4..];
    let channel_end = rest.iter().position(|&b| b == 0)?;
    let payload = &rest[channel_end + 1..];
    let payload = payload.strip_suffix(&[0]).unwrap_or(payload);
    let text = std::str::from_utf8(payload).ok()?;
    let std::borrow::Cow::Owned(masked) = masker.mask_text(text, counts) else { return None };
    let mut out = vec![b'A', 0, 0, 0, 0];
    out.extend_from_slice(pid);
    out.extend_from_slice(&rest[..=channel_end]);
    out.extend_from_slice(masked.replace('\0', "").as_bytes());
    out.push(0);
    let len = (out.len() - 1) as u32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proctor_gateway_core::masking::{MaskingKey, Profile, ProfileConfig};

    fn masker() -> Masker {
        let config: ProfileConfig = toml::from_str(
            r#"detectors = ["all"]
[[columns]]
match = "customers.ssn"
[[columns]]
match = "salary""#,
        )
        .unwrap();
        Masker::new(Profile::new("p", &config).unwrap(), MaskingKey::new(b"k".to_vec()))
    }

    /// Held statements whose masked text reviewers could not judge: a
    /// masked value inside a string covering what code is made of (a body
    /// run as code, where one finding can run over the rest of it), a text
    /// split otherwise than the server splits it. Values of their own,
    /// masked in literals or in bodies, keep the statement reviewable.
    #[test]
    fn a_statement_reviewers_could_not_judge_is_named() {
        let m = masker();
        let email = "zq7x.lindqvist@example.org";
        let code = |sql: &str| {
            let why = hidden_from_reviewers(&m, sql, true);
            assert!(why.is_some_and(|w| w.contains("inside a string")), "{sql}: {why:?}");
        };
        let reviewable = |sql: &str| assert_eq!(hidden_from_reviewers(&m, sql, true), None, "{sql}");
        reviewable("create index i on t (id)");
        reviewable(&format!("update t set email = '{email}' where id = 1"));
        reviewable(&format!("do $$ begin perform '{email}'; execute 'drop table t'; end $$"));
        reviewable(&format!("create function f() returns text language sql as $body$ select '{email}' $body$"));
        reviewable(
            "insert into keys values ('-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg+kqhkiG9w0=\n-----END PRIVATE KEY-----')",
        );
        // A private key's header runs to the end of the body: the DROP in it
        // would be hidden from whoever approves it, in any kind of quotes.
        code("do $$ begin raise notice '-----BEGIN PRIVATE KEY-----'; drop table t; end $$");
        code("do 'begin raise notice ''-----BEGIN PRIVATE KEY-----''; drop table accounts; end'");
        code("do E'begin raise notice \\'-----BEGIN PRIVATE KEY-----\\'; drop table accounts; end'");
        code("select dblink_exec('dbname=x', 'select ''-----BEGIN PRIVATE KEY-----''; drop table t')");
        // What is recorded and shown of a dollar-quoted body is masked inside the tags.
        let shown = mask_statement_text(&m, &format!("do $b$ begin perform '{email}'; end $b$"), true).unwrap();
        assert_eq!(shown, "do $b$ begin perform '[email:masked]'; end $b$");
        let escaped = format!("create table x as select E'it\\'s' || '{email}' as e");
        assert!(hidden_from_reviewers(&m, &escaped, false).is_some_and(|w| w.contains("standard_conforming_strings")));
        assert_eq!(hidden_from_reviewers(&m, &escaped, true), None);
        let unscannable = format!("select '{email}");
        assert!(hidden_from_reviewers(&m, &unscannable, true).is_some_and(|w| w.contains("tokens")));
    }

    /// A private key's header in a literal used to swallow the rest of the
    /// text when masked, hiding a `DROP` from the reviewer who approved it.
    #[test]
    fn regression_a_masked_statement_keeps_its_structure() {
        let m = masker();
        let sql = "select '-----BEGIN PRIVATE KEY-----' as note; drop table t";
        let shown = mask_statement_text(&m, sql, true).unwrap();
        assert_eq!(shown, "select '[private_key:masked]' as note; drop table t");
        let sql = "select '-----BEGIN PRIVATE KEY-----', pg_read_file('/etc/passwd') /* -----BEGIN RSA PRIVATE KEY----- */; truncate t";
        let shown = mask_statement_text(&m, sql, true).unwrap();
        assert!(shown.contains("pg_read_file('/etc/passwd')") && shown.ends_with("; truncate t"), "{shown}");
        assert!(!shown.contains("BEGIN"), "{shown}");
        // A secret spread over tokens is still masked.
        let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        let shown = mask_statement_text(&m, &format!("select {jwt}"), true).unwrap();
        assert!(!shown.contains("eyJzdWIi"), "{shown}");
        assert_eq!(mask_statement_text(&m, "select 1; drop table t", true), None, "nothing to mask");
        // From a review: a comment ending in a quote, a URL password and a
        // JWT running over quotes, keywords and calls, and more findings
        // than a value may hold: the structure stays.
        for (sql, kept) in [
            (
                "delete from scratch -- -----BEGIN PRIVATE KEY----- 'x'\n; drop table customers",
                "; drop table customers",
            ),
            ("delete from scratch; select 'http://u:';truncate\"customers\";select'@'", ";truncate"),
            ("select 'http://u:'||pg_terminate_backend(1)::text||'@'", "||pg_terminate_backend(1)::text||"),
            (
                "select eyJhYWEifQ.x-1.5-pg_terminate_backend(42)::int from (select 1 x) eyJhYWEifQ",
                "-pg_terminate_backend(42)::int from (select",
            ),
        ] {
            let shown = mask_statement_text(&m, sql, true).unwrap();
            assert!(shown.contains(kept), "{sql:?} shown as {shown:?}");
        }
        let many: Vec<String> = (0..300).map(|i| format!("u{i}@ex.com")).collect();
        let sql = format!("select '{}'; drop table customers", many.join(","));
        let shown = mask_statement_text(&m, &sql, true).unwrap();
        assert!(shown.ends_with("'; drop table customers") && !shown.contains("u7@ex.com"), "{shown}");
        // A secret named in context, over several tokens, is still masked.
        let sql = "update creds set aws_secret_access_key = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY' where id = 1";
        let shown = mask_statement_text(&m, sql, true).unwrap();
        assert!(!shown.contains("wJalrXUtnFEMI") && shown.ends_with("where id = 1"), "{shown}");
        // Read otherwise by a session with standard_conforming_strings off:
        // not shown token by token.
        let odd = "select 'a\\' || '-----BEGIN PRIVATE KEY-----'; drop table t";
        assert!(mask_statement_text(&m, odd, false).unwrap().starts_with("[statement withheld"));
    }

    fn row(values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut body = (values.len() as i16).to_be_bytes().to_vec();
        for v in values {
            match v {
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    body.extend_from_slice(v);
                }
            }
        }
        body
    }

    /// A secret of no known format in a column named like one (an AWS
    /// secret key in a column `secret`) reached the client raw.
    #[test]
    fn regression_a_random_value_in_a_column_named_secret_is_masked() {
        let m = masker();
        let mut columns = vec![column("secret", None, 25, 0), column("note", None, 25, 0)];
        plan(&mut columns, &m);
        let key = b"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let frame = data_row(&row(&[Some(key), Some(key)]), &columns, &m, &mut Counts::new()).unwrap();
        let text = String::from_utf8_lossy(&frame);
        assert_eq!(text.matches("wJalrXUtnFEMI").count(), 1, "masked under its name only: {text}");
        assert!(text.contains("secret_by_name"), "{text}");
        // Words are not secrets, whatever the column says.
        assert!(data_row(&row(&[Some(b"changeme"), None]), &columns, &m, &mut Counts::new()).is_none());
    }

    fn column(name: &str, table: Option<&str>, type_oid: u32, format: i16) -> ResultColumn {
        ResultColumn { name: name.into(), table: table.map(Into::into), type_oid, format, ..ResultColumn::default() }
    }

    /// A result's tokens are those of the values its client received: a
    /// value withheld whole (an array holding an address) is counted, but
    /// its token is not kept, since no one saw it.
    #[test]
    fn a_result_keeps_the_tokens_of_what_it_let_through_only() {
        let config: ProfileConfig = toml::from_str("detectors = [\"email\"]\nactions = { email = \"token\" }").unwrap();
        let key = MaskingKey::new(b"k".to_vec());
        let m = Masker::new(Profile::new("p", &config).unwrap(), key.clone());
        let mut columns = vec![column("mail", None, 25, 0), column("mails", None, 1009, 0)];
        plan(&mut columns, &m);
        let body = row(&[Some(b"ada@example.com"), Some(b"{bob@example.com,cy@example.com}")]);
        let mut counts = Counts::new();
        let frame = data_row(&body, &columns, &m, &mut counts).unwrap();
        let text = String::from_utf8_lossy(&frame);
        assert!(text.contains(&key.value_token("ada@example.com")) && !text.contains("bob"), "{text}");
        assert_eq!(counts.get("email"), Some(&3), "all three counted");
        assert_eq!(counts.tokens(), (vec![key.value_token("ada@example.com")], 0), "the one let through");
    }

    #[test]
    fn json_with_a_secret_behind_an_escape_is_withheld() {
        let mut columns = [column("doc", None, JSON, 0), column("b", None, JSONB, 1)];
        let masker = masker();
        plan(&mut columns, &masker);
        let escaped = br#"{"e":"ada\u0040example.com"}"#;
        let body = row(&[Some(escaped), Some(b"\x01{\"n\": 4.111111111111111e15}")]);
        let mut counts = Counts::new();
        let frame = data_row(&body, &columns, &masker, &mut counts).expect("withheld");
        assert_eq!(&frame[5..], &[0, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], "two NULLs");
        assert_eq!(counts.get("json:escaped"), Some(&2));
    }

    #[test]
    fn rows_are_masked_by_column_rules_and_detectors_keeping_types() {
        let mut columns = [
            column("id", Some("customers"), 23, 1),
            column("email", Some("customers"), 25, 0),
            column("ssn", Some("customers"), 25, 0),
            column("salary", Some("staff"), 23, 1),
            column("note", None, 25, 1),
        ];
        let body = row(&[
            Some(&7i32.to_be_bytes()),
            Some(b"ada@example.com"),
            Some(b"123-45-6789"),
            Some(&90_000i32.to_be_bytes()),
            None,
        ]);
        let masker = masker();
        plan(&mut columns, &masker);
        let mut counts = Counts::new();
        let frame = data_row(&body, &columns, &masker, &mut counts).expect("masked");
        let expected = row(&[
            Some(&7i32.to_be_bytes()),
            Some(b"[email:masked]"),
            Some(b"[column:customers.ssn:masked]"),
            None,
            None,
        ]);
        assert_eq!(&frame[5..], &expected[..], "an int under a rule becomes NULL; NULL stays NULL");
        assert_eq!(u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize, frame.len() - 1);
        assert_eq!(counts.len(), 3, "{counts:?}");
        let clean = row(&[Some(&7i32.to_be_bytes()), Some(b"ada"), None, None, None]);
        assert!(data_row(&clean, &columns, &masker, &mut counts).is_none(), "untouched rows are not rebuilt");
    }

    #[test]
    fn card_numbers_stored_as_numbers_are_found_in_either_format() {
        let masker = masker();
        let mut counts = Counts::new();
        let int8 = |format| ResultColumn { name: "n".into(), type_oid: 20, format, ..ResultColumn::default() };
        let numeric = ResultColumn { type_oid: 1700, ..int8(1) };
        let card = 4_111_111_111_111_111i64;
        let text = row(&[Some(card.to_string().as_bytes()), Some(b"4111111111111112")]);
        let frame = data_row(&text, &[int8(0), int8(0)], &masker, &mut counts).expect("masked");
        assert_eq!(&frame[5..], &row(&[None, Some(b"4111111111111112")])[..], "Luhn decides");
        let binary = row(&[Some(&card.to_be_bytes()), Some(&7i64.to_be_bytes())]);
        let frame = data_row(&binary, &[int8(1), int8(1)], &masker, &mut counts).expect("masked");
        assert_eq!(&frame[5..], &row(&[None, Some(&7i64.to_be_bytes())])[..]);
        // numeric 4111111111111111: base-10000 digits 4111 1111 1111 1111.
        let mut digits = Vec::new();
        for word in [4u16, 3, 0, 0, 4111, 1111, 1111, 1111] {
            digits.extend_from_slice(&word.to_be_bytes());
        }
        assert_eq!(numeric_integer(&digits).as_deref(), Some("4111111111111111"));
        let frame = data_row(&row(&[Some(&digits)]), &[numeric], &masker, &mut counts).expect("masked");
        assert_eq!(&frame[5..], &row(&[None])[..]);
        // The integer part decides: 12.5 is 12, -4 is 4 (a card number
        // with a sign or a fraction once leaked in binary); NaN has none.
        assert_eq!(numeric_integer(&[0, 2, 0, 0, 0, 0, 0, 1, 0, 12, 19, 136]).as_deref(), Some("12"));
        assert_eq!(numeric_integer(&[0, 1, 0, 0, 0x40, 0, 0, 0, 0, 4]).as_deref(), Some("4"));
        assert_eq!(numeric_integer(&[0, 0, 0, 0, 0xC0, 0, 0, 0]), None);
        // -4539148803436467.50: weight 3, digits 4539 1488 0343 6467 5000.
        let card = [0, 5, 0, 3, 0x40, 0, 0, 2, 0x11, 0xBB, 0x05, 0xD0, 0x01, 0x57, 0x19, 0x43, 0x13, 0x88];
        assert_eq!(numeric_integer(&card).as_deref(), Some("4539148803436467"));
        assert_eq!(counts.get("card"), Some(&3));
        // Timestamps are not read by detectors.
        let time = ResultColumn { type_oid: 1184, ..int8(0) };
        assert!(data_row(&row(&[Some(b"2026-01-02 03:04:05+00")]), &[time], &masker, &mut counts).is_none());
    }

    #[test]
    fn error_fields_are_masked() {
        let mut body = Vec::new();
        for (k, v) in [
            (b'S', "ERROR"),
            (b'C', "23505"),
            (b'M', "duplicate key"),
            (b'D', "Key (email)=(ada@example.com) already exists."),
        ] {
            body.push(k);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut counts = Counts::new();
        let frame = fields(b'E', &body, &masker(), &mut counts).unwrap();
        let text = String::from_utf8_lossy(&frame);
        assert!(text.contains("Key (email)=([email:masked]) already exists.") && !text.contains("ada@"), "{text}");
    }
}
