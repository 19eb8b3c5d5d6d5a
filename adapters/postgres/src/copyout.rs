//! `COPY ... TO STDOUT` under masking: what the COPY will send (its columns,
//! asked of the catalog before it runs, since CopyOutResponse names none),
//! how its rows are written (text or CSV, delimiter, NULL marker), and each
//! row masked as rows of a result are. Binary COPY cannot be masked value
//! by value, so it is refused before it runs.

use pg_query::NodeEnum;

use super::mask::{Reading, ResultColumn, holds_marker, reading};
use proctor_gateway_core::masking::{Counts, Detector, Masker, NameSays, count, is_card_number};

/// How a COPY writes its rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyFormat {
    pub csv: bool,
    pub delimiter: u8,
    pub null: String,
    pub quote: u8,
    /// CSV with a header line first.
    pub header: bool,
}

/// What to do about a statement before it runs, under masking.
#[derive(Debug, PartialEq, Eq)]
pub enum CopyPlan {
    /// Not a `COPY ... TO STDOUT`.
    NotCopyOut,
    /// Refused, and why.
    Refuse(String),
    /// Its rows are masked; `describe` is the query whose columns they are
    /// (asked of the catalog when column rules need names).
    Mask { format: CopyFormat, describe: Describe },
}

/// What to ask the catalog about a COPY's columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Describe {
    /// A query returning the COPY's columns (nothing is run).
    pub query: String,
    /// A whole table (no column list): COPY leaves out generated columns,
    /// which `SELECT *` returns.
    pub whole_table: bool,
    /// Tables it names without a schema: read on Proctor's own connection,
    /// such a name could be another table than the session's search_path or
    /// temporary tables choose, so each must name one table only.
    pub unqualified: Vec<String>,
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn string_arg(node: Option<&pg_query::protobuf::Node>) -> Option<String> {
    match node?.node.as_ref()? {
        NodeEnum::String(s) => Some(s.sval.clone()),
        NodeEnum::Boolean(b) => Some(b.boolval.to_string()),
        NodeEnum::Integer(i) => Some(i.ival.to_string()),
        _ => None,
    }
}

/// Reads `sql` (a whole query string) for a COPY TO STDOUT, as a session
/// with `standard_conforming_strings` as given reads it.
pub fn plan(sql: &str, standard_conforming_strings: bool) -> CopyPlan {
    // Cheap first: most statements are not COPY.
    if !sql.as_bytes().windows(4).any(|w| w.eq_ignore_ascii_case(b"copy")) {
        return CopyPlan::NotCopyOut;
    }
    let mut options = pg_query::ParserOptions::DEFAULT;
    if !standard_conforming_strings {
        options |= pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS;
    }
    // What mentions COPY but cannot be read could be one: not let through.
    let Ok(parsed) = pg_query::parse(sql, options) else {
        return CopyPlan::Refuse("this statement mentions COPY and could not be read to mask it".into());
    };
    let copies: Vec<&pg_query::protobuf::CopyStmt> = parsed
        .protobuf
        .stmts
        .iter()
        .filter_map(|s| match s.stmt.as_ref()?.node.as_ref()? {
            NodeEnum::CopyStmt(c) if !c.is_from && !c.is_program && c.filename.is_empty() => Some(&**c),
            _ => None,
        })
        .collect();
    let Some(copy) = copies.first() else { return CopyPlan::NotCopyOut };
    if parsed.protobuf.stmts.len() > 1 {
        return CopyPlan::Refuse(
            "a COPY TO STDOUT among other statements cannot be masked; send it as a query of its own".into(),
        );
    }
    let mut format = CopyFormat { csv: false, delimiter: b'\t', null: "\\N".into(), quote: b'"', header: false };
    let mut null_set = false;
    for option in &copy.options {
        let Some(NodeEnum::DefElem(d)) = option.node.as_ref() else { continue };
        let value = string_arg(d.arg.as_deref());
        match (d.defname.as_str(), value.as_deref()) {
            ("format", Some("binary")) => {
                return CopyPlan::Refuse(
                    "binary COPY cannot be masked value by value, and this session's values are masked; use text or CSV format".into(),
                );
            }
            ("format", Some(f)) if f.eq_ignore_ascii_case("csv") => format.csv = true,
            ("format", Some(f)) if f.eq_ignore_ascii_case("text") => {}
            ("null", Some(n)) => {
                format.null = n.to_string();
                null_set = true;
            }
            ("header", value) => {
                format.header =
                    !value.is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "false" | "0" | "off"));
            }
            // Delimiters, quotes, escapes, encodings and forced quoting
            // change how rows are written: not read here, so refused.
            (other, _) => {
                return CopyPlan::Refuse(format!(
                    "the COPY option {other:?} is not supported while values are masked (FORMAT text or csv, HEADER and NULL are)"
                ));
            }
        }
    }
    if format.csv {
        format.delimiter = b',';
        if !null_set {
            format.null = String::new();
        }
    }
    let describe = if let Some(query) = &copy.query {
        match query.node.as_ref().map(|n| n.deparse(pg_query::DeparseOptions::default())) {
            Some(Ok(text)) => Describe { query: text, whole_table: false, unqualified: Vec::new() },
            _ => return CopyPlan::Refuse("the query of this COPY could not be read for masking".into()),
        }
    } else if let Some(relation) = &copy.relation {
        let columns: Vec<String> =
            copy.attlist.iter().filter_map(|a| string_arg(Some(a))).map(|c| quote_ident(&c)).collect();
        let table = match relation.schemaname.as_str() {
            "" => quote_ident(&relation.relname),
            schema => format!("{}.{}", quote_ident(schema), quote_ident(&relation.relname)),
        };
        let list = if columns.is_empty() { "*".to_string() } else { columns.join(", ") };
        Describe {
            query: format!("SELECT {list} FROM {table}"),
            whole_table: columns.is_empty(),
            unqualified: Vec::new(),
        }
    } else {
        return CopyPlan::NotCopyOut;
    };
    let unqualified = parsed.tables().into_iter().filter(|t| !t.contains('.')).collect();
    CopyPlan::Mask { format, describe: Describe { unqualified, ..describe } }
}

/// Splits one row of COPY text or CSV into fields: (text, quoted).
fn fields<'a>(line: &'a str, format: &CopyFormat) -> Vec<(std::borrow::Cow<'a, str>, bool)> {
    let delimiter = format.delimiter as char;
    if !format.csv {
        return line.split(delimiter).map(|f| (std::borrow::Cow::Borrowed(f), false)).collect();
    }
    let quote = format.quote as char;
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        let mut quoted = false;
        if chars.peek() == Some(&quote) {
            quoted = true;
            chars.next();
            while let Some(c) = chars.next() {
                if c == quote {
                    if chars.peek() == Some(&quote) {
                        chars.next();
                        field.push(quote);
                    } else {
                        break;
                    }
                } else {
                    field.push(c);
                }
            }
        }
        for c in chars.by_ref() {
            if c == delimiter {
                out.push((std::borrow::Cow::Owned(field), quoted));
                field = String::new();
                quoted = false;
                break;
            }
            field.push(c);
        }
        if chars.peek().is_none() {
            // The last field (or the one after a trailing delimiter).
            if !out.is_empty() && line.ends_with(delimiter) && field.is_empty() && !quoted {
                out.push((std::borrow::Cow::Owned(field), quoted));
                return out;
            }
            out.push((std::borrow::Cow::Owned(field), quoted));
            return out;
        }
    }
}

/// One CopyData row masked: the new row's bytes, or `None` if nothing was
/// masked. `columns` are the COPY's, when known (else detectors alone).
pub fn row(
    data: &[u8],
    format: &CopyFormat,
    columns: Option<&[ResultColumn]>,
    masker: &Masker,
    counts: &mut Counts,
) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(data).ok()?;
    let (line, newline) = match text.strip_suffix('\n') {
        Some(line) => (line, "\n"),
        None => (text, ""),
    };
    let (line, carriage) = match line.strip_suffix('\r') {
        Some(line) => (line, "\r"),
        None => (line, ""),
    };
    let parsed = fields(line, format);
    let mut changed = false;
    let mut out: Vec<String> = Vec::with_capacity(parsed.len());
    for (i, (value, quoted)) in parsed.iter().enumerate() {
        let is_null = !quoted && value.as_ref() == format.null;
        let column = columns.and_then(|c| c.get(i));
        // `Some(None)`: withheld, written as the COPY's NULL.
        let masked: Option<Option<String>> = if is_null {
            None
        } else if column.is_none() && masker.has_column_rules() {
            // A column rule could apply to a column not known.
            count(counts, "column:unknown");
            Some(None)
        } else if let Some((rule, action)) = column.and_then(|c| c.rule).map(|i| masker.column_rule_at(i)) {
            count(counts, rule);
            if column.is_some_and(|c| !holds_marker(c.type_oid)) {
                Some(None)
            } else {
                Some(Some(masker.mask_whole(rule, action, value, counts)))
            }
        } else if !masker.has_detectors() {
            None
        } else {
            // As for rows (see [`Reading`]), in text form.
            match column.map_or(Reading::Text, |c| reading(c.type_oid)) {
                Reading::Text => {
                    match masker.mask_text_in_column(value, column.map_or(NameSays::Nothing, |c| c.name_says), counts) {
                        std::borrow::Cow::Owned(m) => Some(Some(m)),
                        std::borrow::Cow::Borrowed(_) => None,
                    }
                }
                Reading::Scalar => None,
                Reading::Number => (masker.detects(Detector::Card) && is_card_number(value)).then(|| {
                    count(counts, Detector::Card.as_str());
                    None
                }),
                // Withheld whole: counted, its tokens not kept.
                Reading::Other => {
                    let mut unseen = Counts::new();
                    let found = matches!(masker.mask_text(value, &mut unseen), std::borrow::Cow::Owned(_));
                    counts.add_rules(unseen);
                    found.then_some(None)
                }
            }
        };
        changed |= masked.is_some();
        let (value, is_null) = match masked {
            Some(Some(m)) => (m, false),
            Some(None) => (format.null.clone(), true),
            None => (value.to_string(), is_null),
        };
        let needs_quotes = format.csv
            && (*quoted
                || value.contains(format.delimiter as char)
                || value.contains(format.quote as char)
                || value.contains('\n')
                || value.contains('\r'));
        if needs_quotes && !is_null {
            let q = format.quote as char;
            out.push(format!("{q}{}{q}", value.replace(q, &format!("{q}{q}"))));
        } else {
            out.push(value);
        }
    }
    if !changed {
        return None;
    }
    let mut row = out.join(&(format.delimiter as char).to_string());
    row.push_str(carriage);
    row.push_str(newline);
    Some(row.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proctor_gateway_core::masking::{MaskingKey, Profile, ProfileConfig};

    fn masker() -> Masker {
        let config: ProfileConfig = toml::from_str(
            r#"detectors = ["all"]
[[columns]]
match = "ssn""#,
        )
        .unwrap();
        Masker::new(Profile::new("p", &config).unwrap(), MaskingKey::new(b"k".to_vec()))
    }

    fn plan_default(sql: &str) -> CopyPlan {
        plan(sql, true)
    }

    #[test]
    fn copies_to_stdout_are_planned_and_binary_ones_refused() {
        assert_eq!(plan_default("select 1"), CopyPlan::NotCopyOut);
        assert_eq!(plan_default("copy t from stdin"), CopyPlan::NotCopyOut);
        let CopyPlan::Mask { format, describe } = plan_default("COPY public.customers (name, ssn) TO STDOUT") else {
            panic!()
        };
        assert_eq!(describe.query, r#"SELECT "name", "ssn" FROM "public"."customers""#);
        assert!(!describe.whole_table, "a column list");
        assert!(!format.csv);
        let CopyPlan::Mask { format, describe } =
            plan_default("copy (select * from customers where id > 3) to stdout with (format csv, header)")
        else {
            panic!()
        };
        assert!(format.csv && format.header && format.delimiter == b',');
        assert!(describe.query.to_lowercase().starts_with("select * from customers"), "{describe:?}");
        let CopyPlan::Mask { describe, .. } = plan_default("copy customers to stdout") else { panic!() };
        assert!(describe.whole_table && describe.query == r#"SELECT * FROM "customers""#, "{describe:?}");
        assert_eq!(describe.unqualified, ["customers"], "a name the catalog must find only once");
        let CopyPlan::Mask { describe, .. } =
            plan_default("copy (select * from orders join crm.customers using (id)) to stdout")
        else {
            panic!()
        };
        assert_eq!(describe.unqualified, ["orders"]);
        assert!(matches!(plan_default("copy customers to stdout (format binary)"), CopyPlan::Refuse(_)));
        assert!(matches!(plan_default("copy customers to stdout binary"), CopyPlan::Refuse(_)));
        assert!(matches!(plan_default("copy customers to stdout (delimiter '@')"), CopyPlan::Refuse(_)));
        assert!(matches!(
            plan_default("copy customers to stdout (format csv, quote '@', escape '!')"),
            CopyPlan::Refuse(_)
        ));
        let CopyPlan::Mask { format, .. } = plan_default("copy customers to stdout (format csv, header 'FALSE')")
        else {
            panic!()
        };
        assert!(!format.header, "HEADER values are read as the server reads them");
        assert!(matches!(plan_default("copy (selec 1) to stdout"), CopyPlan::Refuse(_)), "unreadable: refused");
        assert!(matches!(plan(r"copy (select 'a\' as x) to stdout (format binary)", false), CopyPlan::Refuse(_)));
    }

    #[test]
    fn rows_of_text_and_csv_copies_are_masked_by_column_and_detector() {
        let mut columns = vec![
            ResultColumn { name: "id".into(), type_oid: 23, ..Default::default() },
            ResultColumn { name: "email".into(), type_oid: 25, ..Default::default() },
            ResultColumn { name: "ssn".into(), type_oid: 25, ..Default::default() },
        ];
        super::super::mask::plan(&mut columns, &masker());
        let text = CopyFormat { csv: false, delimiter: b'\t', null: "\\N".into(), quote: b'"', header: false };
        let mut counts = Counts::new();
        let out = row(b"7\tada@example.com\t123-45-6789\n", &text, Some(&columns), &masker(), &mut counts).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "7\t[email:masked]\t[column:ssn:masked]\n");
        assert!(row(b"7\t\\N\t\\N\n", &text, Some(&columns), &masker(), &mut counts).is_none(), "NULLs stay");
        let csv = CopyFormat { csv: true, delimiter: b',', null: String::new(), quote: b'"', header: false };
        let out = row(b"7,\"Ada, <ada@example.com>\",\n", &csv, Some(&columns), &masker(), &mut counts).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "7,\"Ada, <[email:masked]>\",\n");
    }
}
