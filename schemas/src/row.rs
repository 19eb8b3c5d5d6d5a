//! An owned, decoded row: what the canonical decoder and the Arrow reader
//! produce before the typed [`Event`](crate::Event) is rebuilt from it.

use crate::columns::{COLUMN_COUNT, Cells, Column, Header, RuleCount, Value};
use crate::{SchemaError, Timestamp};

/// One owned cell value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum OwnedValue {
    Str(String),
    U64(u64),
    I64(i64),
    Bool(bool),
    Bytes(Vec<u8>),
    StrList(Vec<String>),
    OptStrList(Vec<Option<String>>),
    Rows(Vec<Vec<Option<String>>>),
    Pairs(Vec<Header>),
    Counts(Vec<RuleCount>),
}

impl OwnedValue {
    pub(crate) fn as_value(&self) -> Value<'_> {
        match self {
            OwnedValue::Str(v) => Value::Str(v),
            OwnedValue::U64(v) => Value::U64(*v),
            OwnedValue::I64(v) => Value::I64(*v),
            OwnedValue::Bool(v) => Value::Bool(*v),
            OwnedValue::Bytes(v) => Value::Bytes(v),
            OwnedValue::StrList(v) => Value::StrList(v),
            OwnedValue::OptStrList(v) => Value::OptStrList(v),
            OwnedValue::Rows(v) => Value::Rows(v),
            OwnedValue::Pairs(v) => Value::Pairs(v),
            OwnedValue::Counts(v) => Value::Counts(v),
        }
    }
}

/// A decoded row: one optional owned value per column.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    values: Vec<Option<OwnedValue>>,
}

impl Default for Row {
    fn default() -> Self {
        Row { values: vec![None; COLUMN_COUNT] }
    }
}

impl Row {
    /// Every column null again.
    pub fn clear(&mut self) {
        self.values.iter_mut().for_each(|value| *value = None);
    }

    pub(crate) fn set(&mut self, column: Column, value: OwnedValue) -> Result<(), SchemaError> {
        if !value.as_value().fits(column.ty()) {
            return Err(SchemaError::bad(column, format!("value does not fit type {:?}", column.ty())));
        }
        self.values[column.index()] = Some(value);
        Ok(())
    }

    /// Borrowed view, for re-encoding.
    pub fn cells(&self) -> Cells<'_> {
        let mut cells = Cells::new();
        for (index, value) in self.values.iter().enumerate() {
            if let (Some(value), Some(column)) = (value, Column::from_index(index)) {
                cells.set(column, value.as_value());
            }
        }
        cells
    }

    pub fn is_null(&self, column: Column) -> bool {
        self.values[column.index()].is_none()
    }

    fn take(&mut self, column: Column) -> Option<OwnedValue> {
        self.values[column.index()].take()
    }

    pub(crate) fn take_str(&mut self, column: Column) -> Result<Option<String>, SchemaError> {
        match self.take(column) {
            None => Ok(None),
            Some(OwnedValue::Str(v)) => Ok(Some(v)),
            Some(other) => Err(type_error(column, &other)),
        }
    }

    pub(crate) fn take_u64(&mut self, column: Column) -> Result<Option<u64>, SchemaError> {
        match self.take(column) {
            None => Ok(None),
            Some(OwnedValue::U64(v)) => Ok(Some(v)),
            Some(other) => Err(type_error(column, &other)),
        }
    }

    pub(crate) fn take_u32(&mut self, column: Column) -> Result<Option<u32>, SchemaError> {
        self.take_u64(column)?
            .map(|v| u32::try_from(v).map_err(|_| SchemaError::bad(column, format!("{v} is out of range"))))
            .transpose()
    }

    pub(crate) fn take_u16(&mut self, column: Column) -> Result<Option<u16>, SchemaError> {
        self.take_u64(column)?
            .map(|v| u16::try_from(v).map_err(|_| SchemaError::bad(column, format!("{v} is out of range"))))
            .transpose()
    }

    pub(crate) fn take_i64(&mut self, column: Column) -> Result<Option<i64>, SchemaError> {
        match self.take(column) {
            None => Ok(None),
            Some(OwnedValue::I64(v)) => Ok(Some(v)),
            Some(other) => Err(type_error(column, &other)),
        }
    }

    pub(crate) fn take_i32(&mut self, column: Column) -> Result<Option<i32>, SchemaError> {
        self.take_i64(column)?
            .map(|v| i32::try_from(v).map_err(|_| SchemaError::bad(column, format!("{v} is out of range"))))
            .transpose()
    }

    pub(crate) fn take_time(&mut self, column: Column) -> Result<Option<Timestamp>, SchemaError> {
        Ok(self.take_i64(column)?.map(Timestamp))
    }

    pub(crate) fn take_bool(&mut self, column: Column) -> Result<Option<bool>, SchemaError> {
        match self.take(column) {
            None => Ok(None),
            Some(OwnedValue::Bool(v)) => Ok(Some(v)),
            Some(other) => Err(type_error(column, &other)),
        }
    }

    pub(crate) fn take_bytes(&mut self, column: Column) -> Result<Vec<u8>, SchemaError> {
        match self.take(column) {
            None => Ok(Vec::new()),
            Some(OwnedValue::Bytes(v)) => Ok(v),
            Some(other) => Err(type_error(column, &other)),
        }
    }

    pub(crate) fn take_str_list(&mut self, column: Column) -> Result<Vec<String>, SchemaError> {
        match self.take(column) {
            None => Ok(Vec::new()),
            Some(OwnedValue::StrList(v)) => Ok(v),
            Some(other) => Err(type_error(column, &other)),
        }
    }

    pub(crate) fn take_opt_str_list(&mut self, column: Column) -> Result<Vec<Option<String>>, SchemaError> {
        match self.take(column) {
            None => Ok(Vec::new()),
            Some(OwnedValue::OptStrList(v)) => Ok(v),
            Some(other) => Err(type_error(column, &other)),
        }
    }

    pub(crate) fn take_rows(&mut self, column: Column) -> Result<Vec<Vec<Option<String>>>, SchemaError> {
        match self.take(column) {
            None => Ok(Vec::new()),
            Some(OwnedValue::Rows(v)) => Ok(v),
            Some(other) => Err(type_error(column, &other)),
        }
    }

    pub(crate) fn take_pairs(&mut self, column: Column) -> Result<Vec<Header>, SchemaError> {
        match self.take(column) {
            None => Ok(Vec::new()),
            Some(OwnedValue::Pairs(v)) => Ok(v),
            Some(other) => Err(type_error(column, &other)),
        }
    }

    pub(crate) fn take_counts(&mut self, column: Column) -> Result<Vec<RuleCount>, SchemaError> {
        match self.take(column) {
            None => Ok(Vec::new()),
            Some(OwnedValue::Counts(v)) => Ok(v),
            Some(other) => Err(type_error(column, &other)),
        }
    }

    /// The first column still holding a value, if any: after an event has
    /// taken every column its kind uses, a leftover means the row is not in
    /// canonical form for that kind.
    pub(crate) fn first_leftover(&self) -> Option<Column> {
        self.values.iter().position(Option::is_some).and_then(Column::from_index)
    }
}

fn type_error(column: Column, value: &OwnedValue) -> SchemaError {
    SchemaError::bad(column, format!("expected {:?}, found {value:?}", column.ty()))
}
