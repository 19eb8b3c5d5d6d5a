//! The Arrow schema of the event table, and conversion between rows and
//! Arrow record batches. One schema serves every event kind: columns a kind
//! does not use are null.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayBuilder, ArrayRef, AsArray, BinaryArray, BinaryBuilder, BooleanArray, BooleanBuilder, Int32Array,
    Int32Builder, ListBuilder, RecordBatch, StringArray, StringBuilder, StructBuilder, TimestampNanosecondArray,
    TimestampNanosecondBuilder, UInt16Array, UInt16Builder, UInt32Array, UInt32Builder, UInt64Array, UInt64Builder,
};
use arrow::datatypes::{
    DataType, Field, FieldRef, Fields, Int32Type, Schema, SchemaRef, TimeUnit, TimestampNanosecondType, UInt16Type,
    UInt32Type, UInt64Type,
};

use crate::columns::{COLUMN_COUNT, COLUMNS, Cells, Column, ColumnType, Header, RuleCount, Value};
use crate::row::{OwnedValue, Row};
use crate::{SCHEMA_VERSION, SchemaError, canonical};

/// Key under which segments store the schema version in their metadata.
pub const SCHEMA_VERSION_KEY: &str = "proctor.schema_version";

fn item(ty: DataType, nullable: bool) -> FieldRef {
    Arc::new(Field::new("item", ty, nullable))
}

fn pair_fields() -> Fields {
    Fields::from(vec![Field::new("name", DataType::Utf8, false), Field::new("value", DataType::Utf8, false)])
}

fn count_fields() -> Fields {
    Fields::from(vec![Field::new("rule", DataType::Utf8, false), Field::new("count", DataType::UInt64, false)])
}

fn opt_str_item() -> FieldRef {
    item(DataType::Utf8, true)
}

fn rows_item() -> FieldRef {
    item(DataType::List(opt_str_item()), false)
}

/// The Arrow type of a column type.
pub fn data_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::Str => DataType::Utf8,
        ColumnType::U64 => DataType::UInt64,
        ColumnType::U32 => DataType::UInt32,
        ColumnType::U16 => DataType::UInt16,
        ColumnType::I32 => DataType::Int32,
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Bytes => DataType::Binary,
        ColumnType::Time => DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
        ColumnType::StrList => DataType::List(item(DataType::Utf8, false)),
        ColumnType::OptStrList => DataType::List(opt_str_item()),
        ColumnType::Rows => DataType::List(rows_item()),
        ColumnType::Pairs => DataType::List(item(DataType::Struct(pair_fields()), false)),
        ColumnType::Counts => DataType::List(item(DataType::Struct(count_fields()), false)),
    }
}

/// The event table's schema, with the schema version in its metadata.
pub fn schema() -> SchemaRef {
    let fields: Vec<Field> = COLUMNS.iter().map(|def| Field::new(def.name, data_type(def.ty), !def.required)).collect();
    let metadata: std::collections::HashMap<String, String> =
        [(SCHEMA_VERSION_KEY.to_string(), SCHEMA_VERSION.to_string())].into_iter().collect();
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

/// A stable, human-readable rendering of the schema, independent of the
/// formatting of any arrow release: what the golden files pin.
pub fn render_schema() -> String {
    let schema = schema();
    let mut out = format!("proctor event schema v{SCHEMA_VERSION}\n");
    for field in schema.fields() {
        out.push_str(&format!(
            "{}: {}{}\n",
            field.name(),
            render_type(field.data_type()),
            if field.is_nullable() { "" } else { " not null" }
        ));
    }
    out
}

fn render_type(ty: &DataType) -> String {
    match ty {
        DataType::Utf8 => "utf8".into(),
        DataType::UInt64 => "uint64".into(),
        DataType::UInt32 => "uint32".into(),
        DataType::UInt16 => "uint16".into(),
        DataType::Int32 => "int32".into(),
        DataType::Boolean => "bool".into(),
        DataType::Binary => "binary".into(),
        DataType::Timestamp(TimeUnit::Nanosecond, Some(tz)) => format!("timestamp[ns, {tz}]"),
        DataType::List(field) => {
            format!("list<{}{}>", render_type(field.data_type()), if field.is_nullable() { "" } else { " not null" })
        }
        DataType::Struct(fields) => {
            let inner: Vec<String> = fields
                .iter()
                .map(|f| {
                    format!(
                        "{}: {}{}",
                        f.name(),
                        render_type(f.data_type()),
                        if f.is_nullable() { "" } else { " not null" }
                    )
                })
                .collect();
            format!("struct<{}>", inner.join(", "))
        }
        other => format!("{other:?}"),
    }
}

enum ColumnBuilder {
    Str(StringBuilder),
    U64(UInt64Builder),
    U32(UInt32Builder),
    U16(UInt16Builder),
    I32(Int32Builder),
    Bool(BooleanBuilder),
    Bytes(BinaryBuilder),
    Time(TimestampNanosecondBuilder),
    StrList(ListBuilder<StringBuilder>),
    OptStrList(ListBuilder<StringBuilder>),
    Rows(ListBuilder<ListBuilder<StringBuilder>>),
    Pairs(ListBuilder<StructBuilder>),
    Counts(ListBuilder<StructBuilder>),
}

fn struct_builder(fields: Fields) -> StructBuilder {
    let builders: Vec<Box<dyn ArrayBuilder>> = fields
        .iter()
        .map(|f| -> Box<dyn ArrayBuilder> {
            match f.data_type() {
                DataType::UInt64 => Box::new(UInt64Builder::new()),
                _ => Box::new(StringBuilder::new()),
            }
        })
        .collect();
    StructBuilder::new(fields, builders)
}

impl ColumnBuilder {
    fn new(ty: ColumnType, capacity: usize) -> ColumnBuilder {
        match ty {
            ColumnType::Str => ColumnBuilder::Str(StringBuilder::with_capacity(capacity, 0)),
            ColumnType::U64 => ColumnBuilder::U64(UInt64Builder::with_capacity(capacity)),
            ColumnType::U32 => ColumnBuilder::U32(UInt32Builder::with_capacity(capacity)),
            ColumnType::U16 => ColumnBuilder::U16(UInt16Builder::with_capacity(capacity)),
            ColumnType::I32 => ColumnBuilder::I32(Int32Builder::with_capacity(capacity)),
            ColumnType::Bool => ColumnBuilder::Bool(BooleanBuilder::with_capacity(capacity)),
            ColumnType::Bytes => ColumnBuilder::Bytes(BinaryBuilder::with_capacity(capacity, 0)),
            ColumnType::Time => {
                ColumnBuilder::Time(TimestampNanosecondBuilder::with_capacity(capacity).with_timezone("UTC"))
            }
            ColumnType::StrList => {
                ColumnBuilder::StrList(ListBuilder::new(StringBuilder::new()).with_field(item(DataType::Utf8, false)))
            }
            ColumnType::OptStrList => {
                ColumnBuilder::OptStrList(ListBuilder::new(StringBuilder::new()).with_field(opt_str_item()))
            }
            ColumnType::Rows => ColumnBuilder::Rows(
                ListBuilder::new(ListBuilder::new(StringBuilder::new()).with_field(opt_str_item()))
                    .with_field(rows_item()),
            ),
            ColumnType::Pairs => ColumnBuilder::Pairs(
                ListBuilder::new(struct_builder(pair_fields()))
                    .with_field(item(DataType::Struct(pair_fields()), false)),
            ),
            ColumnType::Counts => ColumnBuilder::Counts(
                ListBuilder::new(struct_builder(count_fields()))
                    .with_field(item(DataType::Struct(count_fields()), false)),
            ),
        }
    }

    fn append(&mut self, value: Option<Value<'_>>) {
        match (self, value) {
            (ColumnBuilder::Str(b), Some(Value::Str(v))) => b.append_value(v),
            (ColumnBuilder::Str(b), _) => b.append_null(),
            (ColumnBuilder::U64(b), Some(Value::U64(v))) => b.append_value(v),
            (ColumnBuilder::U64(b), _) => b.append_null(),
            (ColumnBuilder::U32(b), Some(Value::U64(v))) => b.append_option(u32::try_from(v).ok()),
            (ColumnBuilder::U32(b), _) => b.append_null(),
            (ColumnBuilder::U16(b), Some(Value::U64(v))) => b.append_option(u16::try_from(v).ok()),
            (ColumnBuilder::U16(b), _) => b.append_null(),
            (ColumnBuilder::I32(b), Some(Value::I64(v))) => b.append_option(i32::try_from(v).ok()),
            (ColumnBuilder::I32(b), _) => b.append_null(),
            (ColumnBuilder::Bool(b), Some(Value::Bool(v))) => b.append_value(v),
            (ColumnBuilder::Bool(b), _) => b.append_null(),
            (ColumnBuilder::Bytes(b), Some(Value::Bytes(v))) => b.append_value(v),
            (ColumnBuilder::Bytes(b), _) => b.append_null(),
            (ColumnBuilder::Time(b), Some(Value::I64(v))) => b.append_value(v),
            (ColumnBuilder::Time(b), _) => b.append_null(),
            (ColumnBuilder::StrList(b), Some(Value::StrList(list))) => {
                for s in list {
                    b.values().append_value(s);
                }
                b.append(true);
            }
            (ColumnBuilder::StrList(b), _) => b.append(false),
            (ColumnBuilder::OptStrList(b), Some(Value::OptStrList(list))) => {
                for s in list {
                    b.values().append_option(s.as_deref());
                }
                b.append(true);
            }
            (ColumnBuilder::OptStrList(b), _) => b.append(false),
            (ColumnBuilder::Rows(b), Some(Value::Rows(rows))) => {
                for row in rows {
                    let inner = b.values();
                    for s in row {
                        inner.values().append_option(s.as_deref());
                    }
                    inner.append(true);
                }
                b.append(true);
            }
            (ColumnBuilder::Rows(b), _) => b.append(false),
            (ColumnBuilder::Pairs(b), Some(Value::Pairs(pairs))) => {
                for Header { name, value } in pairs {
                    let s = b.values();
                    string_field(s, 0).append_value(name);
                    string_field(s, 1).append_value(value);
                    s.append(true);
                }
                b.append(true);
            }
            (ColumnBuilder::Pairs(b), _) => b.append(false),
            (ColumnBuilder::Counts(b), Some(Value::Counts(counts))) => {
                for RuleCount { rule, count } in counts {
                    let s = b.values();
                    string_field(s, 0).append_value(rule);
                    u64_field(s, 1).append_value(*count);
                    s.append(true);
                }
                b.append(true);
            }
            (ColumnBuilder::Counts(b), _) => b.append(false),
        }
    }

    fn append_nulls(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        match self {
            ColumnBuilder::Str(b) => b.append_nulls(n),
            ColumnBuilder::U64(b) => b.append_nulls(n),
            ColumnBuilder::U32(b) => b.append_nulls(n),
            ColumnBuilder::U16(b) => b.append_nulls(n),
            ColumnBuilder::I32(b) => b.append_nulls(n),
            ColumnBuilder::Bool(b) => b.append_nulls(n),
            ColumnBuilder::Bytes(b) => b.append_nulls(n),
            ColumnBuilder::Time(b) => b.append_nulls(n),
            ColumnBuilder::StrList(b) | ColumnBuilder::OptStrList(b) => b.append_nulls(n),
            ColumnBuilder::Rows(b) => b.append_nulls(n),
            ColumnBuilder::Pairs(b) | ColumnBuilder::Counts(b) => b.append_nulls(n),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Str(b) => Arc::new(b.finish()),
            ColumnBuilder::U64(b) => Arc::new(b.finish()),
            ColumnBuilder::U32(b) => Arc::new(b.finish()),
            ColumnBuilder::U16(b) => Arc::new(b.finish()),
            ColumnBuilder::I32(b) => Arc::new(b.finish()),
            ColumnBuilder::Bool(b) => Arc::new(b.finish()),
            ColumnBuilder::Bytes(b) => Arc::new(b.finish()),
            ColumnBuilder::Time(b) => Arc::new(b.finish()),
            ColumnBuilder::StrList(b) | ColumnBuilder::OptStrList(b) => Arc::new(b.finish()),
            ColumnBuilder::Rows(b) => Arc::new(b.finish()),
            ColumnBuilder::Pairs(b) | ColumnBuilder::Counts(b) => Arc::new(b.finish()),
        }
    }
}

// The struct builders are built by `struct_builder` with exactly these field
// types, so the downcasts cannot fail.
fn string_field(s: &mut StructBuilder, index: usize) -> &mut StringBuilder {
    #[allow(clippy::expect_used)]
    s.field_builder::<StringBuilder>(index).expect("struct field built as StringBuilder")
}

fn u64_field(s: &mut StructBuilder, index: usize) -> &mut UInt64Builder {
    #[allow(clippy::expect_used)]
    s.field_builder::<UInt64Builder>(index).expect("struct field built as UInt64Builder")
}

/// Accumulates rows into an Arrow record batch of the event schema.
///
/// A row fills only its kind's columns; the nulls in the other columns are
/// appended in runs when a column next gets a value (or at the end), so the
/// cost of a row follows its non-null cells, not the width of the schema.
pub struct BatchBuilder {
    columns: Vec<ColumnBuilder>,
    /// Rows appended so far to each column (values and nulls).
    filled: Vec<usize>,
    rows: usize,
}

impl BatchBuilder {
    pub fn with_capacity(capacity: usize) -> BatchBuilder {
        BatchBuilder::with_capacity_and_bytes(capacity, 0)
    }

    /// Room for `capacity` rows, and for `bytes` bytes in each column of raw
    /// bytes (`data`, `body`), so that rows of bulk traffic are not copied
    /// again each time a column outgrows its buffer. Room is only reserved:
    /// what a column never fills is never touched.
    pub fn with_capacity_and_bytes(capacity: usize, bytes: usize) -> BatchBuilder {
        BatchBuilder {
            columns: COLUMNS
                .iter()
                .map(|def| match def.ty {
                    ColumnType::Bytes => ColumnBuilder::Bytes(BinaryBuilder::with_capacity(capacity, bytes)),
                    ty => ColumnBuilder::new(ty, capacity),
                })
                .collect(),
            filled: vec![0; COLUMN_COUNT],
            rows: 0,
        }
    }

    /// Brings `column` up to the current row with nulls.
    fn catch_up(&mut self, column: usize) {
        let missing = self.rows - self.filled[column];
        self.columns[column].append_nulls(missing);
        self.filled[column] = self.rows;
    }

    fn append(&mut self, column: usize, value: Value<'_>) {
        self.catch_up(column);
        self.columns[column].append(Some(value));
        self.filled[column] += 1;
    }

    pub fn push(&mut self, cells: &Cells<'_>) {
        for (column, value) in cells.iter() {
            self.append(column.index(), value);
        }
        self.rows += 1;
    }

    /// Decodes a canonical row straight into the builders. On error the
    /// builder holds a partial row and must be discarded.
    pub fn push_canonical(&mut self, bytes: &[u8]) -> Result<(), SchemaError> {
        let mut visitor = BuilderVisitor { builder: self, list: 0 };
        canonical::visit(bytes, &mut visitor)?;
        self.rows += 1;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The rows pushed so far; the builder is left empty.
    pub fn finish(&mut self) -> Result<RecordBatch, SchemaError> {
        for column in 0..COLUMN_COUNT {
            self.catch_up(column);
            self.filled[column] = 0;
        }
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(ColumnBuilder::finish).collect();
        self.rows = 0;
        RecordBatch::try_new(schema(), arrays).map_err(|e| SchemaError::Arrow(e.to_string()))
    }
}

/// Appends visited cells to the column builders.
struct BuilderVisitor<'b> {
    builder: &'b mut BatchBuilder,
    /// The list column being filled.
    list: usize,
}

impl<'a> canonical::CellVisitor<'a> for BuilderVisitor<'_> {
    fn scalar(&mut self, column: Column, value: Value<'a>) -> Result<(), SchemaError> {
        self.builder.append(column.index(), value);
        Ok(())
    }

    fn list_begin(&mut self, column: Column, _len: usize) {
        self.builder.catch_up(column.index());
        self.list = column.index();
    }

    fn item(&mut self, value: Option<&'a str>) {
        match &mut self.builder.columns[self.list] {
            ColumnBuilder::StrList(b) | ColumnBuilder::OptStrList(b) => b.values().append_option(value),
            ColumnBuilder::Rows(b) => b.values().values().append_option(value),
            _ => {}
        }
    }

    fn row_begin(&mut self, _len: usize) {}

    fn row_end(&mut self) {
        if let ColumnBuilder::Rows(b) = &mut self.builder.columns[self.list] {
            b.values().append(true);
        }
    }

    fn pair(&mut self, name: &'a str, value: &'a str) {
        if let ColumnBuilder::Pairs(b) = &mut self.builder.columns[self.list] {
            let s = b.values();
            string_field(s, 0).append_value(name);
            string_field(s, 1).append_value(value);
            s.append(true);
        }
    }

    fn count(&mut self, rule: &'a str, count: u64) {
        if let ColumnBuilder::Counts(b) = &mut self.builder.columns[self.list] {
            let s = b.values();
            string_field(s, 0).append_value(rule);
            u64_field(s, 1).append_value(count);
            s.append(true);
        }
    }

    fn list_end(&mut self) {
        match &mut self.builder.columns[self.list] {
            ColumnBuilder::StrList(b) | ColumnBuilder::OptStrList(b) => b.append(true),
            ColumnBuilder::Rows(b) => b.append(true),
            ColumnBuilder::Pairs(b) | ColumnBuilder::Counts(b) => b.append(true),
            _ => {}
        }
        self.builder.filled[self.list] += 1;
    }
}

/// Reads rows back out of a record batch of the event schema (or of a
/// projection of it: absent columns read as null).
pub struct BatchReader<'a> {
    columns: Vec<Option<&'a ArrayRef>>,
    /// The same columns, each as its concrete array, for reading cells
    /// without a dynamic call per cell.
    typed: Vec<Option<Typed<'a>>>,
    rows: usize,
}

/// A column as its concrete array.
enum Typed<'a> {
    Str(&'a StringArray),
    U64(&'a UInt64Array),
    U32(&'a UInt32Array),
    U16(&'a UInt16Array),
    I32(&'a Int32Array),
    Bool(&'a BooleanArray),
    Bytes(&'a BinaryArray),
    Time(&'a TimestampNanosecondArray),
    /// Read whole, as an owned value.
    List(&'a ArrayRef),
    /// Not the array its type promises.
    Unexpected,
}

impl<'a> Typed<'a> {
    fn of(ty: ColumnType, array: &'a ArrayRef) -> Typed<'a> {
        let typed = match ty {
            ColumnType::Str => array.as_string_opt::<i32>().map(Typed::Str),
            ColumnType::U64 => array.as_primitive_opt::<UInt64Type>().map(Typed::U64),
            ColumnType::U32 => array.as_primitive_opt::<UInt32Type>().map(Typed::U32),
            ColumnType::U16 => array.as_primitive_opt::<UInt16Type>().map(Typed::U16),
            ColumnType::I32 => array.as_primitive_opt::<Int32Type>().map(Typed::I32),
            ColumnType::Bool => array.as_boolean_opt().map(Typed::Bool),
            ColumnType::Bytes => array.as_binary_opt::<i32>().map(Typed::Bytes),
            ColumnType::Time => array.as_primitive_opt::<TimestampNanosecondType>().map(Typed::Time),
            ColumnType::StrList
            | ColumnType::OptStrList
            | ColumnType::Rows
            | ColumnType::Pairs
            | ColumnType::Counts => Some(Typed::List(array)),
        };
        typed.unwrap_or(Typed::Unexpected)
    }

    fn is_null(&self, index: usize) -> bool {
        match self {
            Typed::Str(a) => a.is_null(index),
            Typed::U64(a) => a.is_null(index),
            Typed::U32(a) => a.is_null(index),
            Typed::U16(a) => a.is_null(index),
            Typed::I32(a) => a.is_null(index),
            Typed::Bool(a) => a.is_null(index),
            Typed::Bytes(a) => a.is_null(index),
            Typed::Time(a) => a.is_null(index),
            Typed::List(a) => a.is_null(index),
            Typed::Unexpected => false,
        }
    }
}

impl<'a> BatchReader<'a> {
    pub fn new(batch: &'a RecordBatch) -> Result<BatchReader<'a>, SchemaError> {
        let mut columns = vec![None; COLUMN_COUNT];
        for (index, field) in batch.schema_ref().fields().iter().enumerate() {
            let Some(column) = Column::from_name(field.name()) else {
                return Err(SchemaError::Arrow(format!("unknown column `{}`", field.name())));
            };
            let expected = data_type(column.ty());
            if !types_match(field.data_type(), &expected) {
                return Err(SchemaError::Arrow(format!(
                    "column `{}` has type {:?}, expected {:?}",
                    field.name(),
                    field.data_type(),
                    expected
                )));
            }
            columns[column.index()] = Some(batch.column(index));
        }
        // A column null in every row of the batch has no cell to read:
        // skipped (most columns are, for the kinds a batch holds).
        let typed = COLUMNS
            .iter()
            .map(|def| {
                columns[def.column.index()]
                    .filter(|array| array.null_count() < array.len())
                    .map(|array| Typed::of(def.ty, array))
            })
            .collect();
        Ok(BatchReader { columns, typed, rows: batch.num_rows() })
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The array of one column, if the batch has it.
    pub fn array(&self, column: Column) -> Option<&'a ArrayRef> {
        self.columns[column.index()]
    }

    /// The text of a string column at `row`, if present and not null.
    pub fn str(&self, column: Column, row: usize) -> Option<&'a str> {
        let array = self.columns[column.index()]?.as_string_opt::<i32>()?;
        array.is_valid(row).then(|| array.value(row))
    }

    /// The value of a `U64` column at `row`, if present and not null.
    pub fn u64(&self, column: Column, row: usize) -> Option<u64> {
        let array = self.columns[column.index()]?.as_primitive_opt::<UInt64Type>()?;
        array.is_valid(row).then(|| array.value(row))
    }

    /// The value of a `Time` column at `row`, if present and not null.
    pub fn time(&self, column: Column, row: usize) -> Option<i64> {
        let array = self.columns[column.index()]?.as_primitive_opt::<TimestampNanosecondType>()?;
        array.is_valid(row).then(|| array.value(row))
    }

    /// Calls `f` with the cells of row `index`: those of [`Self::row`]'s
    /// `cells()`, borrowed from the batch where they can be (text, bytes,
    /// numbers; lists are built), so that reading a row allocates little.
    /// The fast path of `row(index)?.cells()`, and equal to it.
    pub fn with_cells<T>(&self, index: usize, f: impl FnOnce(&Cells<'_>) -> T) -> Result<T, SchemaError> {
        let layout = |def: &crate::columns::ColumnDef| {
            SchemaError::Arrow(format!("column `{}` has an unexpected layout", def.name))
        };
        let mut lists: Vec<(Column, OwnedValue)> = Vec::new();
        let mut cells = Cells::new();
        for (def, typed) in COLUMNS.iter().zip(&self.typed) {
            let Some(typed) = typed else { continue };
            if typed.is_null(index) {
                continue;
            }
            let value = match typed {
                Typed::Str(a) => Value::Str(a.value(index)),
                Typed::U64(a) => Value::U64(a.value(index)),
                Typed::U32(a) => Value::U64(a.value(index).into()),
                Typed::U16(a) => Value::U64(a.value(index).into()),
                Typed::I32(a) => Value::I64(a.value(index).into()),
                Typed::Bool(a) => Value::Bool(a.value(index)),
                Typed::Bytes(a) => Value::Bytes(a.value(index)),
                Typed::Time(a) => Value::I64(a.value(index)),
                Typed::List(array) => {
                    lists.push((def.column, read_value(def.ty, array, index).ok_or_else(|| layout(def))?));
                    continue;
                }
                Typed::Unexpected => return Err(layout(def)),
            };
            cells.set(def.column, value);
        }
        for (column, value) in &lists {
            cells.set(*column, value.as_value());
        }
        Ok(f(&cells))
    }

    /// Row `index` as an owned row.
    pub fn row(&self, index: usize) -> Result<Row, SchemaError> {
        let mut row = Row::default();
        self.row_into(index, &mut row)?;
        Ok(row)
    }

    /// Row `index` read into `row` (emptied first): [`Self::row`] without
    /// a new row each time.
    pub fn row_into(&self, index: usize, row: &mut Row) -> Result<(), SchemaError> {
        let layout = |def: &crate::columns::ColumnDef| {
            SchemaError::Arrow(format!("column `{}` has an unexpected layout", def.name))
        };
        row.clear();
        for (def, typed) in COLUMNS.iter().zip(&self.typed) {
            let Some(typed) = typed else { continue };
            if typed.is_null(index) {
                continue;
            }
            let value = match typed {
                Typed::Str(a) => OwnedValue::Str(a.value(index).to_string()),
                Typed::U64(a) => OwnedValue::U64(a.value(index)),
                Typed::U32(a) => OwnedValue::U64(a.value(index).into()),
                Typed::U16(a) => OwnedValue::U64(a.value(index).into()),
                Typed::I32(a) => OwnedValue::I64(a.value(index).into()),
                Typed::Bool(a) => OwnedValue::Bool(a.value(index)),
                Typed::Bytes(a) => OwnedValue::Bytes(a.value(index).to_vec()),
                Typed::Time(a) => OwnedValue::I64(a.value(index)),
                Typed::List(array) => read_value(def.ty, array, index).ok_or_else(|| layout(def))?,
                Typed::Unexpected => return Err(layout(def)),
            };
            row.set(def.column, value)?;
        }
        Ok(())
    }
}

fn types_match(actual: &DataType, expected: &DataType) -> bool {
    // Readers may name list items differently ("item" vs "element"); compare
    // shapes and nullability, not item names.
    match (actual, expected) {
        (DataType::List(a), DataType::List(e)) | (DataType::LargeList(a), DataType::List(e)) => {
            a.is_nullable() == e.is_nullable() && types_match(a.data_type(), e.data_type())
        }
        (DataType::Struct(a), DataType::Struct(e)) => {
            a.len() == e.len()
                && a.iter()
                    .zip(e.iter())
                    .all(|(a, e)| a.name() == e.name() && types_match(a.data_type(), e.data_type()))
        }
        (a, e) => a == e,
    }
}

fn opt_strings(array: &dyn Array) -> Option<Vec<Option<String>>> {
    let strings = array.as_string_opt::<i32>()?;
    Some((0..strings.len()).map(|i| strings.is_valid(i).then(|| strings.value(i).to_string())).collect())
}

fn read_value(ty: ColumnType, array: &ArrayRef, index: usize) -> Option<OwnedValue> {
    Some(match ty {
        ColumnType::Str => OwnedValue::Str(array.as_string_opt::<i32>()?.value(index).to_string()),
        ColumnType::U64 => OwnedValue::U64(array.as_primitive_opt::<UInt64Type>()?.value(index)),
        ColumnType::U32 => OwnedValue::U64(array.as_primitive_opt::<UInt32Type>()?.value(index).into()),
        ColumnType::U16 => OwnedValue::U64(array.as_primitive_opt::<UInt16Type>()?.value(index).into()),
        ColumnType::I32 => OwnedValue::I64(array.as_primitive_opt::<Int32Type>()?.value(index).into()),
        ColumnType::Bool => OwnedValue::Bool(array.as_boolean_opt()?.value(index)),
        ColumnType::Bytes => OwnedValue::Bytes(array.as_binary_opt::<i32>()?.value(index).to_vec()),
        ColumnType::Time => OwnedValue::I64(array.as_primitive_opt::<TimestampNanosecondType>()?.value(index)),
        ColumnType::StrList => {
            let items = opt_strings(array.as_list_opt::<i32>()?.value(index).as_ref())?;
            OwnedValue::StrList(items.into_iter().collect::<Option<Vec<String>>>()?)
        }
        ColumnType::OptStrList => {
            OwnedValue::OptStrList(opt_strings(array.as_list_opt::<i32>()?.value(index).as_ref())?)
        }
        ColumnType::Rows => {
            let rows = array.as_list_opt::<i32>()?.value(index);
            let rows = rows.as_list_opt::<i32>()?;
            let mut out = Vec::with_capacity(rows.len());
            for i in 0..rows.len() {
                out.push(opt_strings(rows.value(i).as_ref())?);
            }
            OwnedValue::Rows(out)
        }
        ColumnType::Pairs => {
            let list = array.as_list_opt::<i32>()?.value(index);
            let fields = list.as_struct_opt()?;
            let names = fields.column(0).as_string_opt::<i32>()?;
            let values = fields.column(1).as_string_opt::<i32>()?;
            OwnedValue::Pairs(
                (0..fields.len())
                    .map(|i| Header { name: names.value(i).to_string(), value: values.value(i).to_string() })
                    .collect(),
            )
        }
        ColumnType::Counts => {
            let list = array.as_list_opt::<i32>()?.value(index);
            let fields = list.as_struct_opt()?;
            let rules = fields.column(0).as_string_opt::<i32>()?;
            let counts = fields.column(1).as_primitive_opt::<UInt64Type>()?;
            OwnedValue::Counts(
                (0..fields.len())
                    .map(|i| RuleCount { rule: rules.value(i).to_string(), count: counts.value(i) })
                    .collect(),
            )
        }
    })
}
