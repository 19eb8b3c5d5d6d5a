//! Parquet segments: the only place Proctor writes Parquet.
//!
//! A segment holds one sealed WAL file's events, sorted by (session_id, seq),
//! zstd-compressed, with page-level statistics and the page index, and the
//! schema version in its key-value metadata.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use arrow::array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::statistics::Statistics;
use parquet::schema::types::ColumnPath;
use proctor_schemas::arrow::SCHEMA_VERSION_KEY;
use proctor_schemas::{SCHEMA_VERSION, arrow as event_arrow};
use sha2::{Digest, Sha256};

use crate::config::RecorderSettings;
use crate::{RecorderError, Result};

/// Wraps a writer, hashing and counting what passes through, so a segment's
/// SHA-256 is known when it is written without reading it back.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), bytes: 0 }
    }

    pub fn finish(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.hasher.finalize()), self.bytes)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Columns of free text or bytes, where statistics would prune nothing.
const FREE_TEXT: &[&str] = &[
    "query",
    "message",
    "detail",
    "sql",
    "params.list.item",
    "sample_rows.list.item.list.item",
    "payload",
    "value",
    "data",
    "command",
    "path",
    "headers.list.item.value",
    "body",
];

pub fn writer_properties(settings: &RecorderSettings) -> Result<WriterProperties> {
    let level = ZstdLevel::try_new(settings.zstd_level).map_err(|e| RecorderError::Config(e.to_string()))?;
    let mut builder = WriterProperties::builder();
    // Sorted by (session, seq), these integers rise steadily: deltas pack them
    // into a few bits where a dictionary would not help.
    for column in ["seq", "time", "ref_seq", "expires_at"] {
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(column), false)
            .set_column_encoding(ColumnPath::from(column), Encoding::DELTA_BINARY_PACKED);
    }
    // Page statistics (and so the page index) where readers prune: which
    // session, when, what kind, whose; chunk statistics elsewhere, so free
    // text is not compared value by value on every page.
    for column in
        ["session_id", "seq", "time", "kind", "direction", "protocol", "resource", "subject", "outcome", "sqlstate"]
    {
        builder = builder.set_column_statistics_enabled(ColumnPath::from(column), EnabledStatistics::Page);
    }
    // No statistics at all on free text and bodies: a minimum and maximum of
    // SQL text or an HTTP body prunes nothing, and comparing every value
    // against them is most of what writing these columns costs.
    for column in FREE_TEXT {
        builder = builder.set_column_statistics_enabled(
            ColumnPath::new(column.split('.').map(str::to_string).collect()),
            EnabledStatistics::None,
        );
    }
    Ok(builder
        .set_compression(Compression::ZSTD(level))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_max_row_group_row_count(Some(settings.row_group_rows))
        .set_data_page_row_count_limit(settings.page_rows)
        .set_sorting_columns(Some(vec![
            SortingColumn { column_idx: 0, descending: false, nulls_first: false },
            SortingColumn { column_idx: 1, descending: false, nulls_first: false },
        ]))
        .set_key_value_metadata(Some(vec![KeyValue::new(SCHEMA_VERSION_KEY.to_string(), SCHEMA_VERSION.to_string())]))
        .set_created_by(format!("proctor {}", env!("CARGO_PKG_VERSION")))
        .build())
}

/// Writes a segment file batch by batch (rows already sorted) and hashes it
/// on the way out.
pub struct SegmentWriter {
    path: std::path::PathBuf,
    writer: ArrowWriter<HashingWriter<File>>,
}

impl SegmentWriter {
    pub fn create(path: &Path, settings: &RecorderSettings) -> Result<SegmentWriter> {
        let file = File::create(path).map_err(RecorderError::io("cannot create segment", path))?;
        let writer =
            ArrowWriter::try_new(HashingWriter::new(file), event_arrow::schema(), Some(writer_properties(settings)?))
                .map_err(|e| parquet_error(path, e))?;
        Ok(SegmentWriter { path: path.to_path_buf(), writer })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer.write(batch).map_err(|e| parquet_error(&self.path, e))
    }

    /// Writes the footer and fsyncs. Returns the file's SHA-256 (hex) and size.
    pub fn finish(self) -> Result<(String, u64)> {
        let hashing = self.writer.into_inner().map_err(|e| parquet_error(&self.path, e))?;
        let (file, sha256, bytes) = hashing.finish();
        file.sync_all().map_err(RecorderError::io("cannot fsync segment", &self.path))?;
        Ok((sha256, bytes))
    }
}

fn parquet_error(path: &Path, e: parquet::errors::ParquetError) -> RecorderError {
    RecorderError::Parquet { path: path.to_path_buf(), message: e.to_string() }
}

/// Writes `batch` (already sorted) as a segment file at `path` and fsyncs it.
/// Returns the file's SHA-256 (hex) and size.
pub fn write(path: &Path, batch: &RecordBatch, settings: &RecorderSettings) -> Result<(String, u64)> {
    let mut writer = SegmentWriter::create(path, settings)?;
    writer.write(batch)?;
    writer.finish()
}

/// Reads a whole segment.
pub fn read_all(path: &Path) -> Result<Vec<RecordBatch>> {
    read(path, None)
}

/// Calls `f` with each batch of a segment in order, holding one at a time.
pub fn for_each_batch(path: &Path, mut f: impl FnMut(RecordBatch) -> Result<()>) -> Result<()> {
    let file = File::open(path).map_err(RecorderError::io("cannot open segment", path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|builder| builder.with_batch_size(8192).build())
        .map_err(|e| parquet_error(path, e))?;
    for batch in reader {
        f(batch.map_err(|e| RecorderError::Parquet { path: path.to_path_buf(), message: e.to_string() })?)?;
    }
    Ok(())
}

/// Reads the row groups of a segment that may hold `session_id`, skipping the
/// others by their statistics (rows are sorted by session id, so each row
/// group covers a narrow id range). The caller filters rows.
pub fn read_session(path: &Path, session_id: &str) -> Result<Vec<RecordBatch>> {
    read(path, Some(session_id))
}

fn read(path: &Path, session_id: Option<&str>) -> Result<Vec<RecordBatch>> {
    let parquet_err =
        |e: parquet::errors::ParquetError| RecorderError::Parquet { path: path.to_path_buf(), message: e.to_string() };
    let file = File::open(path).map_err(RecorderError::io("cannot open segment", path))?;
    let mut builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_err)?.with_batch_size(8192);
    if let Some(session_id) = session_id {
        let wanted = session_id.as_bytes();
        let groups: Vec<usize> = builder
            .metadata()
            .row_groups()
            .iter()
            .enumerate()
            .filter(|(_, rg)| match rg.column(0).statistics() {
                Some(Statistics::ByteArray(stats)) => match (stats.min_opt(), stats.max_opt()) {
                    (Some(min), Some(max)) => min.data() <= wanted && wanted <= max.data(),
                    _ => true,
                },
                _ => true,
            })
            .map(|(i, _)| i)
            .collect();
        builder = builder.with_row_groups(groups);
    }
    let reader = builder.build().map_err(parquet_err)?;
    reader
        .map(|batch| batch.map_err(|e| RecorderError::Parquet { path: path.to_path_buf(), message: e.to_string() }))
        .collect()
}

/// The schema version a segment declares in its metadata.
pub fn schema_version(path: &Path) -> Result<Option<String>> {
    let file = File::open(path).map_err(RecorderError::io("cannot open segment", path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| RecorderError::Parquet { path: path.to_path_buf(), message: e.to_string() })?;
    Ok(builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|kv| kv.key == SCHEMA_VERSION_KEY))
        .and_then(|kv| kv.value.clone()))
}

#[cfg(test)]
mod tests {
    use parquet::arrow::ArrowSchemaConverter;

    use super::*;

    #[test]
    fn every_column_named_in_the_writer_properties_exists() {
        let schema = ArrowSchemaConverter::new().convert(&event_arrow::schema()).unwrap();
        let paths: Vec<String> = schema.columns().iter().map(|c| c.path().string()).collect();
        for column in FREE_TEXT {
            assert!(paths.iter().any(|p| p == column), "{column} is not a column: {paths:?}");
        }
    }
}
