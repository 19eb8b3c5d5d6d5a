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
use crate::columns::{COLUMNS, Cells, Column, ColumnType, Header, RuleCount, Value};
use crate::row::{OwnedValue, Row, is_list};

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

/// Decodes one canonical row.
pub fn decode(bytes: &[u8]) -> Result<Row, SchemaError> {
    let mut reader = Reader { bytes, pos: 0 };
    let version = reader.byte()?;
    if version != CANONICAL_VERSION {
        return Err(SchemaError::Canonical(format!("unsupported encoding version {version}")));
    }
    let mut row = Row::default();
    let mut previous: Option<usize> = None;
    while reader.pos < bytes.len() {
        let index = reader.varint()? as usize;
        let column =
            Column::from_index(index).ok_or_else(|| SchemaError::Canonical(format!("unknown column index {index}")))?;
        if previous.is_some_and(|p| p >= index) {
            return Err(SchemaError::Canonical(format!("column `{}` out of order", column.name())));
        }
        previous = Some(index);
        let ty = COLUMNS[index].ty;
        let value = reader.value(ty).map_err(|e| match e {
            SchemaError::Canonical(msg) => SchemaError::Canonical(format!("column `{}`: {msg}", column.name())),
            other => other,
        })?;
        if is_list(ty) && list_is_empty(&value) {
            return Err(SchemaError::Canonical(format!("column `{}`: empty list (must be null)", column.name())));
        }
        row.set(column, value)?;
    }
    Ok(row)
}

/// Decodes and returns the cells of `bytes` re-encoded, for tests of the
/// one-encoding property.
pub fn reencode(bytes: &[u8]) -> Result<Vec<u8>, SchemaError> {
    let row = decode(bytes)?;
    let mut out = Vec::with_capacity(bytes.len());
    encode(&row.cells(), &mut out);
    Ok(out)
}

fn list_is_empty(value: &OwnedValue) -> bool {
    match value {
        OwnedValue::StrList(v) => v.is_empty(),
        OwnedValue::OptStrList(v) => v.is_empty(),
        OwnedValue::Rows(v) => v.is_empty(),
        OwnedValue::Pairs(v) => v.is_empty(),
        OwnedValue::Counts(v) => v.is_empty(),
        _ => false,
    }
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

    fn len(&mut self) -> Result<usize, SchemaError> {
        let len = self.varint()?;
        let remaining = self.bytes.len() - self.pos;
        if len > remaining as u64 {
            return Err(Self::eof());
        }
        Ok(len as usize)
    }

    fn count(&mut self) -> Result<usize, SchemaError> {
        // Every item takes at least one byte, which bounds allocation on
        // hostile input.
        self.len()
    }

    fn slice(&mut self) -> Result<&'a [u8], SchemaError> {
        let len = self.len()?;
        let slice = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(slice)
    }

    fn string(&mut self) -> Result<String, SchemaError> {
        let slice = self.slice()?;
        std::str::from_utf8(slice)
            .map(str::to_string)
            .map_err(|_| SchemaError::Canonical("text is not UTF-8".to_string()))
    }

    fn opt_str_list(&mut self) -> Result<Vec<Option<String>>, SchemaError> {
        let count = self.count()?;
        let mut list = Vec::with_capacity(count);
        for _ in 0..count {
            list.push(match self.byte()? {
                0 => None,
                1 => Some(self.string()?),
                other => return Err(SchemaError::Canonical(format!("bad null marker {other}"))),
            });
        }
        Ok(list)
    }

    fn value(&mut self, ty: ColumnType) -> Result<OwnedValue, SchemaError> {
        Ok(match ty {
            ColumnType::Str => OwnedValue::Str(self.string()?),
            ColumnType::U64 | ColumnType::U32 | ColumnType::U16 => OwnedValue::U64(self.varint()?),
            ColumnType::I32 | ColumnType::Time => {
                let raw = self.varint()?;
                OwnedValue::I64(((raw >> 1) as i64) ^ -((raw & 1) as i64))
            }
            ColumnType::Bool => match self.byte()? {
                0 => OwnedValue::Bool(false),
                1 => OwnedValue::Bool(true),
                other => return Err(SchemaError::Canonical(format!("bad boolean {other}"))),
            },
            ColumnType::Bytes => OwnedValue::Bytes(self.slice()?.to_vec()),
            ColumnType::StrList => {
                let count = self.count()?;
                let mut list = Vec::with_capacity(count);
                for _ in 0..count {
                    list.push(self.string()?);
                }
                OwnedValue::StrList(list)
            }
            ColumnType::OptStrList => OwnedValue::OptStrList(self.opt_str_list()?),
            ColumnType::Rows => {
                let count = self.count()?;
                let mut rows = Vec::with_capacity(count);
                for _ in 0..count {
                    rows.push(self.opt_str_list()?);
                }
                OwnedValue::Rows(rows)
            }
            ColumnType::Pairs => {
                let count = self.count()?;
                let mut pairs = Vec::with_capacity(count);
                for _ in 0..count {
                    pairs.push(Header { name: self.string()?, value: self.string()? });
                }
                OwnedValue::Pairs(pairs)
            }
            ColumnType::Counts => {
                let count = self.count()?;
                let mut counts = Vec::with_capacity(count);
                for _ in 0..count {
                    counts.push(RuleCount { rule: self.string()?, count: self.varint()? });
                }
                OwnedValue::Counts(counts)
            }
        })
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
