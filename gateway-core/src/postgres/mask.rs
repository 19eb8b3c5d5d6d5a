//! Masking PostgreSQL messages in place: rows (by column, using the row
//! description), COPY data, error and notice fields, notification payloads.
//! Each function returns the masked frame only when something changed, so
//! the common path forwards the target's bytes untouched.

use crate::masking::{Column, Counts, Masker, count};

/// Types whose values are text in both formats (binary `text` is its UTF-8).
pub(super) fn text_like(oid: u32) -> bool {
    // text, varchar, bpchar, name, json, unknown, xml, and unknown (0).
    matches!(oid, 25 | 1043 | 1042 | 19 | 114 | 705 | 142 | 0)
}

pub(super) const JSONB: u32 = 3802;

/// A result column, from a RowDescription.
#[derive(Clone, Debug, Default)]
pub struct ResultColumn {
    pub name: String,
    /// The table the column comes from (0: none, e.g. an expression), and
    /// its name once the catalog named it.
    pub table_oid: u32,
    pub table: Option<String>,
    pub type_oid: u32,
    pub format: i16,
    /// The masking column rule that applies, by index (see
    /// [`Masker::column_rule_index`]), decided once per result.
    pub rule: Option<usize>,
}

/// Decides, once per result, which column rule applies to each column.
pub fn plan(columns: &mut [ResultColumn], masker: &Masker) {
    for column in columns {
        column.rule = masker.column_rule_index(&Column { name: &column.name, table: column.table.as_deref() });
    }
}

/// Scalar types whose binary form holds no text: left as they are.
fn opaque_scalar(oid: u32) -> bool {
    // bool, int8, int2, int4, oid, float4, float8, money, numeric, date,
    // time, timestamp, timestamptz, interval, timetz, uuid, inet, cidr,
    // macaddr, macaddr8.
    matches!(
        oid,
        16 | 20
            | 21
            | 23
            | 26
            | 700
            | 701
            | 790
            | 1700
            | 1082
            | 1083
            | 1114
            | 1184
            | 1186
            | 1266
            | 2950
            | 869
            | 650
            | 829
            | 774
    )
}

/// Masks one value; `None` when it stays as it is, `Some(None)` when it
/// becomes NULL (withheld: a rule on a column whose type cannot hold the
/// masked text, a secret inside a value of another type, or a value
/// masking cannot read). `column` is `None` when no row description told
/// what the value is.
fn mask_value(
    value: &[u8],
    column: Option<&ResultColumn>,
    masker: &Masker,
    counts: &mut Counts,
) -> Option<Option<Vec<u8>>> {
    let Some(column) = column else {
        // Unknown column: a column rule could apply to it, so it is withheld;
        // without column rules the detectors read it, and a hit withholds it.
        if masker.has_column_rules() {
            count(counts, "column:unknown");
            return Some(None);
        }
        let text = std::str::from_utf8(value).ok()?;
        return matches!(masker.mask_text(text, counts), std::borrow::Cow::Owned(_)).then_some(None);
    };
    // jsonb in binary: a version byte, then the JSON text.
    let (prefix, text) = match (column.type_oid, column.format) {
        (JSONB, 1) => value.split_first().map_or((None, value), |(v, rest)| (Some(*v), rest)),
        _ => (None, value),
    };
    let textual = text_like(column.type_oid) || column.type_oid == JSONB;
    if let Some((rule, action)) = column.rule.map(|i| masker.column_rule_at(i)) {
        count(counts, rule);
        if !textual || column.type_oid == JSONB {
            // A masked value is text: for other types, NULL says "withheld".
            return Some(None);
        }
        let original = String::from_utf8_lossy(text);
        return Some(Some(masker.mask_whole(rule, action, &original).into_bytes()));
    }
    if !masker.has_detectors() {
        return None;
    }
    if !textual {
        if column.format == 1 {
            // Arrays, composites, bytea and other binary forms may carry
            // text masking cannot read in place: withheld.
            if opaque_scalar(column.type_oid) {
                return None;
            }
            count(counts, "binary:unread");
            return Some(None);
        }
        // Text form of another type (an array, a composite, a number): a
        // secret in it withholds the whole value, whose type could not hold
        // a marker.
        let text = std::str::from_utf8(text).ok()?;
        return matches!(masker.mask_text(text, counts), std::borrow::Cow::Owned(_)).then_some(None);
    }
    let Ok(original) = std::str::from_utf8(text) else {
        count(counts, "text:unreadable");
        return Some(None);
    };
    let masked = masker.mask_text(original, counts);
    if let std::borrow::Cow::Borrowed(_) = masked {
        return None;
    }
    let mut out = Vec::with_capacity(masked.len() + 1);
    out.extend(prefix);
    out.extend_from_slice(masked.as_bytes());
    Some(Some(out))
}

/// A DataRow body masked column by column: the whole new frame, or `None`
/// if nothing was masked.
pub fn data_row(body: &[u8], columns: &[ResultColumn], masker: &Masker, counts: &mut Counts) -> Option<Vec<u8>> {
    let count = i16::from_be_bytes(body.get(..2)?.try_into().ok()?).max(0) as usize;
    let mut values: Vec<Option<&[u8]>> = Vec::with_capacity(count);
    let mut at = 2;
    for _ in 0..count {
        let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len < 0 {
            values.push(None);
        } else {
            let end = at.checked_add(len as usize)?;
            values.push(Some(body.get(at..end)?));
            at = end;
        }
    }
    let mut changed: Vec<(usize, Option<Vec<u8>>)> = Vec::new();
    for (i, value) in values.iter().enumerate() {
        let Some(value) = value else { continue };
        if let Some(masked) = mask_value(value, columns.get(i), masker, counts) {
            changed.push((i, masked));
        }
    }
    if changed.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() + 5 + 64);
    out.push(b'D');
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(count as i16).to_be_bytes());
    let mut next = changed.iter().peekable();
    for (i, value) in values.iter().enumerate() {
        let value: Option<&[u8]> = match next.peek() {
            Some((j, masked)) if *j == i => {
                next.next();
                masked.as_deref()
            }
            _ => *value,
        };
        match value {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }
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
    use crate::masking::{MaskingKey, Profile, ProfileConfig};

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

    fn column(name: &str, table: Option<&str>, type_oid: u32, format: i16) -> ResultColumn {
        ResultColumn { name: name.into(), table_oid: 0, table: table.map(Into::into), type_oid, format, rule: None }
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
