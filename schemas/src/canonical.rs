//! The canonical byte encoding of a row.
//!
//! It is what the WAL stores and what the hash chain covers, and it is a pure
//! function of the row's cells, so `proctor verify` can recompute it from the
//! Parquet rows alone. Layout (version 1):
//!
//! ```text
//! row    := version:u8  cell*            cells in strictly increasing column order
//! cell   := column:varint  value          only non-null cells are present
//! value  := by the column's type:
//!   Str, Bytes      len:varint bytes
//!   U64, U32, U16   varint                (LEB128)
//!   I32, Time       zigzag varint
//!   Bool            0x00 | 0x01
//!   StrList         count:varint Str*
//!   OptStrList      count:varint (0x00 | 0x01 Str)*
//!   Rows            count:varint OptStrList*
//!   Pairs           count:varint (Str Str)*
//!   Counts          count:varint (Str varint)*
//! ```
//!
//! Decoding is strict: an unknown column, a column out of order, a value of the
//! wrong shape, an empty list or trailing bytes are errors, so that one row has
//! exactly one encoding.

use crate::SchemaError;
use crate::columns::{Cells, Column, ColumnType, Header, RuleCount, Value};
use crate::row::{OwnedValue, Row};

/// The encoding's version byte.
pub const CANONICAL_VERSION: u8 = 1;

/// Appends the canonical encoding of `cells` to `out`.
pub fn encode(cells: &Cells<'_>, out: &mut Vec<u8>) {
    out.push(CANONICAL_VERSION);
    for (column, value) in cells.iter() {
        put_varint(out, column.index() as u64);
        put_value(out, value);
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_str_list(out: &mut Vec<u8>, list: &[Option<String>]) {
    put_varint(out, list.len() as u64);
    for item in list {
        match item {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                put_str(out, s);
            }
        }
    }
}

fn put_value(out: &mut Vec<u8>, value: Value<'_>) {
    match value {
        Value::Str(s) => put_str(out, s),
        Value::U64(v) => put_varint(out, v),
        Value::I64(v) => put_varint(out, ((v << 1) ^ (v >> 63)) as u64),
        Value::Bool(b) => out.push(b as u8),
        Value::Bytes(b) => {
            put_varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
        Value::StrList(list) => {
            put_varint(out, list.len() as u64);
            for s in list {
                put_str(out, s);
            }
        }
        Value::OptStrList(list) => put_opt_str_list(out, list),
        Value::Rows(rows) => {
            put_varint(out, rows.len() as u64);
            for row in rows {
                put_opt_str_list(out, row);
            }
        }
        Value::Pairs(pairs) => {
            put_varint(out, pairs.len() as u64);
            for pair in pairs {
                put_str(out, &pair.name);
                put_str(out, &pair.value);
            }
        }
        Value::Counts(counts) => {
            put_varint(out, counts.len() as u64);
            for count in counts {
                put_str(out, &count.rule);
                put_varint(out, count.count);
            }
        }
    }
}

/// Receives the cells of a canonical row as they are decoded, borrowing from
/// the encoded bytes: decoding into a [`Row`] or straight into Arrow builders
/// needs no intermediate allocation.
pub trait CellVisitor<'a> {
    /// A `Str`, integer, `Bool`, `Time` or `Bytes` cell.
    fn scalar(&mut self, column: Column, value: Value<'a>) -> Result<(), SchemaError>;
    /// A list cell of `len` items begins; items follow, then [`list_end`](Self::list_end).
    fn list_begin(&mut self, column: Column, len: usize);
    /// An item of a `StrList` or `OptStrList`, or of the current row of `Rows`.
    fn item(&mut self, value: Option<&'a str>);
    /// A row of a `Rows` cell begins (its items follow) ...
    fn row_begin(&mut self, len: usize);
    /// ... and ends.
    fn row_end(&mut self);
    /// An item of a `Pairs` cell.
    fn pair(&mut self, name: &'a str, value: &'a str);
    /// An item of a `Counts` cell.
    fn count(&mut self, rule: &'a str, count: u64);
    fn list_end(&mut self);
}

/// Decodes one canonical row into `visitor`, checking the encoding strictly.
pub fn visit<'a>(bytes: &'a [u8], visitor: &mut impl CellVisitor<'a>) -> Result<(), SchemaError> {
    let mut reader = Reader { bytes, pos: 0 };
    let version = reader.byte()?;
    if version != CANONICAL_VERSION {
        return Err(SchemaError::Canonical(format!("unsupported encoding version {version}")));
    }
    let mut previous: Option<usize> = None;
    while reader.pos < bytes.len() {
        let index = reader.varint()? as usize;
        let column =
            Column::from_index(index).ok_or_else(|| SchemaError::Canonical(format!("unknown column index {index}")))?;
        if previous.is_some_and(|p| p >= index) {
            return Err(SchemaError::Canonical(format!("column `{}` out of order", column.name())));
        }
        previous = Some(index);
        reader.cell(column, visitor).map_err(|e| match e {
            SchemaError::Canonical(msg) => SchemaError::Canonical(format!("column `{}`: {msg}", column.name())),
            other => other,
        })?;
    }
    Ok(())
}

/// The leading required cells of a canonical row, read without decoding the
/// rest: what sorting and chaining need.
#[derive(Clone, Copy, Debug)]
pub struct RowKey<'a> {
    pub session_id: &'a str,
    pub seq: u64,
    pub time: i64,
    pub kind: &'a str,
}

/// Reads the [`RowKey`] of a canonical row.
pub fn key(bytes: &[u8]) -> Result<RowKey<'_>, SchemaError> {
    let mut reader = Reader { bytes, pos: 0 };
    if reader.byte()? != CANONICAL_VERSION {
        return Err(SchemaError::Canonical("unsupported encoding version".to_string()));
    }
    let expect = |reader: &mut Reader<'_>, column: Column| -> Result<(), SchemaError> {
        if reader.varint()? != column.index() as u64 {
            return Err(SchemaError::Canonical(format!("row does not start with `{}`", column.name())));
        }
        Ok(())
    };
    expect(&mut reader, Column::SessionId)?;
    let session_id = reader.str()?;
    expect(&mut reader, Column::Seq)?;
    let seq = reader.varint()?;
    expect(&mut reader, Column::Time)?;
    let time = reader.zigzag()?;
    expect(&mut reader, Column::Kind)?;
    let kind = reader.str()?;
    Ok(RowKey { session_id, seq, time, kind })
}

/// Decodes one canonical row.
pub fn decode(bytes: &[u8]) -> Result<Row, SchemaError> {
    let mut visitor = RowVisitor::default();
    visit(bytes, &mut visitor)?;
    Ok(visitor.row)
}

/// Builds an owned [`Row`] from visited cells.
#[derive(Default)]
struct RowVisitor {
    row: Row,
    list: Option<(Column, OwnedValue)>,
    current_row: Vec<Option<String>>,
}

impl<'a> CellVisitor<'a> for RowVisitor {
    fn scalar(&mut self, column: Column, value: Value<'a>) -> Result<(), SchemaError> {
        let owned = match value {
            Value::Str(s) => OwnedValue::Str(s.to_string()),
            Value::U64(v) => OwnedValue::U64(v),
            Value::I64(v) => OwnedValue::I64(v),
            Value::Bool(v) => OwnedValue::Bool(v),
            Value::Bytes(b) => OwnedValue::Bytes(b.to_vec()),
            _ => return Err(SchemaError::Canonical("list value passed as scalar".to_string())),
        };
        self.row.set(column, owned)
    }

    fn list_begin(&mut self, column: Column, len: usize) {
        let empty = match column.ty() {
            ColumnType::StrList => OwnedValue::StrList(Vec::with_capacity(len)),
            ColumnType::OptStrList => OwnedValue::OptStrList(Vec::with_capacity(len)),
            ColumnType::Rows => OwnedValue::Rows(Vec::with_capacity(len)),
            ColumnType::Pairs => OwnedValue::Pairs(Vec::with_capacity(len)),
            _ => OwnedValue::Counts(Vec::with_capacity(len)),
        };
        self.list = Some((column, empty));
    }

    fn item(&mut self, value: Option<&'a str>) {
        match &mut self.list {
            Some((_, OwnedValue::Rows(_))) => self.current_row.push(value.map(str::to_string)),
            Some((_, OwnedValue::OptStrList(list))) => list.push(value.map(str::to_string)),
            Some((_, OwnedValue::StrList(list))) => list.push(value.unwrap_or_default().to_string()),
            _ => {}
        }
    }

    fn row_begin(&mut self, len: usize) {
        self.current_row = Vec::with_capacity(len);
    }

    fn row_end(&mut self) {
        if let Some((_, OwnedValue::Rows(rows))) = &mut self.list {
            rows.push(std::mem::take(&mut self.current_row));
        }
    }

    fn pair(&mut self, name: &'a str, value: &'a str) {
        if let Some((_, OwnedValue::Pairs(pairs))) = &mut self.list {
            pairs.push(Header { name: name.to_string(), value: value.to_string() });
        }
    }

    fn count(&mut self, rule: &'a str, count: u64) {
        if let Some((_, OwnedValue::Counts(counts))) = &mut self.list {
            counts.push(RuleCount { rule: rule.to_string(), count });
        }
    }

    fn list_end(&mut self) {
        if let Some((column, list)) = self.list.take() {
            // The decoder only produces lists of the column's own type.
            let _ = self.row.set(column, list);
        }
    }
}

/// Decodes and returns the cells of `bytes` re-encoded, for tests of the
/// one-encoding property.
pub fn reencode(bytes: &[u8]) -> Result<Vec<u8>, SchemaError> {
    let row = decode(bytes)?;
    let mut out = Vec::with_capacity(bytes.len());
    encode(&row.cells(), &mut out);
    Ok(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn eof() -> SchemaError {
        SchemaError::Canonical("unexpected end of row".to_string())
    }

    fn byte(&mut self) -> Result<u8, SchemaError> {
        let b = *self.bytes.get(self.pos).ok_or_else(Self::eof)?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, SchemaError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return Err(SchemaError::Canonical("varint overflows 64 bits".to_string()));
            }
            value |= part << shift;
            if b & 0x80 == 0 {
                // Reject non-minimal forms (a trailing zero group), so each
                // number has one encoding.
                if b == 0 && shift > 0 {
                    return Err(SchemaError::Canonical("non-minimal varint".to_string()));
                }
                return Ok(value);
            }
        }
        Err(SchemaError::Canonical("varint longer than 10 bytes".to_string()))
    }

    fn zigzag(&mut self) -> Result<i64, SchemaError> {
        let raw = self.varint()?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    fn len(&mut self) -> Result<usize, SchemaError> {
        let len = self.varint()?;
        let remaining = self.bytes.len() - self.pos;
        if len > remaining as u64 {
            return Err(Self::eof());
        }
        Ok(len as usize)
    }

    /// A list's item count: every item takes at least one byte, which bounds
    /// allocation on hostile input. Empty lists are stored as null.
    fn count(&mut self) -> Result<usize, SchemaError> {
        match self.len()? {
            0 => Err(SchemaError::Canonical("empty list (must be null)".to_string())),
            n => Ok(n),
        }
    }

    fn slice(&mut self) -> Result<&'a [u8], SchemaError> {
        let len = self.len()?;
        let slice = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(slice)
    }

    fn str(&mut self) -> Result<&'a str, SchemaError> {
        simdutf8::basic::from_utf8(self.slice()?).map_err(|_| SchemaError::Canonical("text is not UTF-8".to_string()))
    }

    fn opt_str(&mut self) -> Result<Option<&'a str>, SchemaError> {
        match self.byte()? {
            0 => Ok(None),
            1 => Ok(Some(self.str()?)),
            other => Err(SchemaError::Canonical(format!("bad null marker {other}"))),
        }
    }

    fn cell(&mut self, column: Column, visitor: &mut impl CellVisitor<'a>) -> Result<(), SchemaError> {
        let ty = column.ty();
        let value = match ty {
            ColumnType::Str => Value::Str(self.str()?),
            ColumnType::U64 | ColumnType::U32 | ColumnType::U16 => Value::U64(self.varint()?),
            ColumnType::I32 | ColumnType::Time => Value::I64(self.zigzag()?),
            ColumnType::Bool => match self.byte()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                other => return Err(SchemaError::Canonical(format!("bad boolean {other}"))),
            },
            ColumnType::Bytes => Value::Bytes(self.slice()?),
            ColumnType::StrList | ColumnType::OptStrList => {
                let count = self.count()?;
                visitor.list_begin(column, count);
                for _ in 0..count {
                    let item = if ty == ColumnType::StrList { Some(self.str()?) } else { self.opt_str()? };
                    visitor.item(item);
                }
                visitor.list_end();
                return Ok(());
            }
            ColumnType::Rows => {
                let count = self.count()?;
                visitor.list_begin(column, count);
                for _ in 0..count {
                    let items = self.len()?;
                    visitor.row_begin(items);
                    for _ in 0..items {
                        let item = self.opt_str()?;
                        visitor.item(item);
                    }
                    visitor.row_end();
                }
                visitor.list_end();
                return Ok(());
            }
            ColumnType::Pairs => {
                let count = self.count()?;
                visitor.list_begin(column, count);
                for _ in 0..count {
                    let (name, value) = (self.str()?, self.str()?);
                    visitor.pair(name, value);
                }
                visitor.list_end();
                return Ok(());
            }
            ColumnType::Counts => {
                let count = self.count()?;
                visitor.list_begin(column, count);
                for _ in 0..count {
                    let (rule, n) = (self.str()?, self.varint()?);
                    visitor.count(rule, n);
                }
                visitor.list_end();
                return Ok(());
            }
        };
        if !value.fits(ty) {
            return Err(SchemaError::Canonical(format!("value out of range for {ty:?}")));
        }
        visitor.scalar(column, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint_bytes(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        out
    }

    #[test]
    fn varints_round_trip_at_the_edges() {
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX - 1, u64::MAX] {
            let bytes = varint_bytes(v);
            let mut reader = Reader { bytes: &bytes, pos: 0 };
            assert_eq!(reader.varint().unwrap(), v);
            assert_eq!(reader.pos, bytes.len());
        }
    }

    #[test]
    fn non_minimal_and_overlong_varints_are_rejected() {
        for bytes in
            [vec![0x80, 0x00], vec![0xff; 11], vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]]
        {
            let mut reader = Reader { bytes: &bytes, pos: 0 };
            assert!(reader.varint().is_err(), "{bytes:?}");
        }
    }

    #[test]
    fn hostile_rows_are_errors_not_panics() {
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![9],
            vec![1, 0xff],
            vec![1, 0, 200],                 // string longer than the row
            vec![1, 1, 5, 0, 3],             // out of order
            vec![1, 60, 0],                  // empty list in `headers`
            vec![1, 0, 3, b'a', 0xff, 0xfe], // invalid UTF-8
            vec![1, 120, 0],                 // unknown column
        ];
        for case in cases {
            assert!(decode(&case).is_err(), "{case:?} decoded");
        }
    }
}
