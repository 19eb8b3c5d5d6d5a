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

/// At most this much passes in one write: hashed just after it was copied
/// out, while it is still in the CPU's cache, rather than read from memory
/// again after a write of mebibytes.
const HASHED_WRITE: usize = 64 << 10;

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(&buf[..buf.len().min(HASHED_WRITE)])?;
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

/// A row group's size at most, encoded (as the Parquet writer estimates it,
/// after compression): bulk traffic (a few thousand rows of 16-32 KiB) is
/// sealed and read back a few mebibytes at a time rather than whole segments
/// at once. The sealer builds its batches to the same bound before encoding.
pub const ROW_GROUP_BYTES: usize = 16 << 20;

/// How a segment's columns of raw bytes (`data`, `body`) are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawBytes {
    /// zstd at its fastest level.
    Compressed,
    /// As they are: what they hold does not compress (encrypted or already
    /// compressed transfers), and compressing it only costs the sealer and
    /// every reader a pass over it.
    Stored,
}

impl RawBytes {
    /// Decides for the rows of a segment (their canonical encodings, which
    /// are mostly their raw bytes when there are many of them) from
    /// samples spread evenly over their bytes: a segment of less than a
    /// mebibyte is compressed, as is one whose samples zstd shrinks by 3%
    /// or more.
    pub fn for_rows(rows: &[&[u8]]) -> RawBytes {
        const SAMPLES: usize = 16;
        const SAMPLE_BYTES: usize = 16 * 1024;
        // Where each row ends, counted over all of them.
        let ends: Vec<usize> = rows
            .iter()
            .scan(0usize, |end, row| {
                *end += row.len();
                Some(*end)
            })
            .collect();
        let total = ends.last().copied().unwrap_or(0);
        if total < 1 << 20 {
            return RawBytes::Compressed;
        }
        let (mut raw, mut compressed) = (0usize, 0usize);
        let mut sample = Vec::with_capacity(SAMPLE_BYTES);
        for point in 0..SAMPLES {
            // Consecutive rows from the row holding each sixteenth of the
            // bytes, up to a sample's size: a few large rows weigh as much
            // as many small ones.
            sample.clear();
            let first = ends.partition_point(|&end| end <= point * total / SAMPLES);
            for row in &rows[first.min(rows.len() - 1)..] {
                let want = SAMPLE_BYTES - sample.len();
                sample.extend_from_slice(&row[row.len().saturating_sub(want)..]);
                if sample.len() >= SAMPLE_BYTES {
                    break;
                }
            }
            let Ok(packed) = zstd::bulk::compress(&sample, 1) else {
                return RawBytes::Compressed;
            };
            raw += sample.len();
            compressed += packed.len();
        }
        if compressed * 100 >= raw * 97 { RawBytes::Stored } else { RawBytes::Compressed }
    }
}

pub fn writer_properties(settings: &RecorderSettings, raw: RawBytes) -> Result<WriterProperties> {
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
    // Raw bytes (terminal traffic, bodies, frames) are large and rarely
    // repeat whole: no dictionary (hashing every value to find none is most
    // of what writing them costs), and zstd's fastest level, which keeps
    // most of the ratio on text, or none where it would gain nothing.
    let fast = ZstdLevel::try_new(1).map_err(|e| RecorderError::Config(e.to_string()))?;
    let raw_codec = match raw {
        RawBytes::Compressed => Compression::ZSTD(fast),
        RawBytes::Stored => Compression::UNCOMPRESSED,
    };
    for column in ["data", "body"] {
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(column), false)
            .set_column_compression(ColumnPath::from(column), raw_codec);
    }
    Ok(builder
        .set_compression(Compression::ZSTD(level))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_max_row_group_row_count(Some(settings.row_group_rows))
        .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
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
    pub fn create(path: &Path, settings: &RecorderSettings, raw: RawBytes) -> Result<SegmentWriter> {
        let file = File::create(path).map_err(RecorderError::io("cannot create segment", path))?;
        let properties = writer_properties(settings, raw)?;
        let writer = ArrowWriter::try_new(HashingWriter::new(file), event_arrow::schema(), Some(properties))
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
    let mut writer = SegmentWriter::create(path, settings, RawBytes::Compressed)?;
    writer.write(batch)?;
    writer.finish()
}

/// `batch`, read from a segment, in the recorder's schema: as it is when
/// its columns are the schema's; else (a segment of an older schema) its
/// rows made again from their canonical encoding, which every version
/// shares.
pub fn conform(batch: RecordBatch) -> Result<RecordBatch> {
    let schema = event_arrow::schema();
    let same =
        batch.num_columns() == schema.fields().len()
            && batch.schema().fields().iter().zip(schema.fields()).all(|(a, b)| {
                a.name() == b.name() && a.data_type() == b.data_type() && a.is_nullable() == b.is_nullable()
            });
    if same {
        return RecordBatch::try_new(schema, batch.columns().to_vec())
            .map_err(|e| RecorderError::Schema(proctor_schemas::SchemaError::Arrow(e.to_string())));
    }
    let reader = event_arrow::BatchReader::new(&batch)?;
    let mut builder = event_arrow::BatchBuilder::with_capacity(reader.len());
    let mut bytes = Vec::new();
    for i in 0..reader.len() {
        bytes.clear();
        reader.with_cells(i, |cells| proctor_schemas::canonical::encode(cells, &mut bytes))?;
        builder.push_canonical(&bytes)?;
    }
    Ok(builder.finish()?)
}

/// Reads a whole segment.
pub fn read_all(path: &Path) -> Result<Vec<RecordBatch>> {
    let mut batches = Vec::new();
    for_each_batch(path, |batch| {
        batches.push(batch);
        Ok(())
    })?;
    Ok(batches)
}

/// Calls `f` with each batch of a segment in order, holding one at a time.
pub fn for_each_batch(path: &Path, mut f: impl FnMut(RecordBatch) -> Result<()>) -> Result<()> {
    let file = File::open(path).map_err(RecorderError::io("cannot open segment", path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|builder| builder.with_batch_size(8192).build())
        .map_err(|e| parquet_error(path, e))?;
    for batch in reader {
        f(batch.map_err(|e| parquet_error(path, e.into()))?)?;
    }
    Ok(())
}

/// [`for_each_batch`] over a Parquet file already in memory (`label`
/// names it in errors), at most `max_rows` rows: a file whose footer
/// claims more is refused before anything is decoded.
pub fn for_each_batch_in(
    bytes: bytes::Bytes,
    label: &Path,
    max_rows: u64,
    mut f: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<()> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| parquet_error(label, e))?;
    let rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(u64::MAX);
    if rows > max_rows {
        return Err(RecorderError::corrupt(label, format!("holds {rows} rows, more than the {max_rows} it may")));
    }
    let reader = builder.with_batch_size(8192).build().map_err(|e| parquet_error(label, e))?;
    for batch in reader {
        f(batch.map_err(|e| parquet_error(label, e.into()))?)?;
    }
    Ok(())
}

/// Calls `f` with the batches of a segment that may hold `session_id` at
/// seqs in `seqs`, in order, one at a time, until it says stop: row groups
/// are skipped by their statistics and, within a row group, pages by the
/// page index of both sort columns (rows are sorted by session, then seq, so
/// a session covers a few pages, and a stretch of a long session fewer).
/// Batches may still hold other rows: the caller filters.
pub fn for_each_session_batch(
    path: &Path,
    session_id: &str,
    seqs: std::ops::RangeInclusive<u64>,
    mut f: impl FnMut(RecordBatch) -> Result<std::ops::ControlFlow<()>>,
) -> Result<()> {
    use parquet::arrow::arrow_reader::{ArrowReaderOptions, RowSelection, RowSelector};
    use parquet::file::metadata::PageIndexPolicy;
    use parquet::file::page_index::column_index::ColumnIndexMetaData;

    let file = File::open(path).map_err(RecorderError::io("cannot open segment", path))?;
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    // Batches of a thousand rows: a caller that stops early (a page of
    // events, a screen) decodes little past what it asked for.
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options)
        .map_err(|e| parquet_error(path, e))?
        .with_batch_size(1024);
    let wanted = session_id.as_bytes();
    let holds = |min: Option<&[u8]>, max: Option<&[u8]>| match (min, max) {
        (Some(min), Some(max)) => min <= wanted && wanted <= max,
        _ => true,
    };
    let metadata = builder.metadata().clone();
    let columns = metadata.file_metadata().schema_descr();
    let seq_column = (0..columns.num_columns()).find(|&i| columns.column(i).name() == "seq");
    let mut groups = Vec::new();
    let mut selectors: Vec<RowSelector> = Vec::new();
    for (index, group) in metadata.row_groups().iter().enumerate() {
        let in_group = match group.column(0).statistics() {
            Some(Statistics::ByteArray(stats)) => {
                holds(stats.min_opt().map(|v| v.data()), stats.max_opt().map(|v| v.data()))
            }
            _ => true,
        };
        if !in_group {
            continue;
        }
        let rows = group.num_rows() as usize;
        let pages = metadata.page_index_for_row_group(index);
        // Each sort column's pages select rows on their own; a row is read
        // where both may hold it.
        let mut group_selection = RowSelection::from_consecutive_ranges(std::iter::once(0..rows), rows);
        if let (Some(ColumnIndexMetaData::BYTE_ARRAY(column)), Some(offsets)) =
            (pages.column_index(0), pages.offset_index(0))
        {
            let keep = |page: usize| holds(column.min_value(page), column.max_value(page));
            group_selection = group_selection.intersection(&page_selection(offsets.page_locations(), rows, keep));
        }
        // Rows of the session only, where its pages say so: the rows where
        // the session column holds nothing else.
        let only_session = match (pages.column_index(0), pages.offset_index(0)) {
            (Some(ColumnIndexMetaData::BYTE_ARRAY(column)), Some(offsets)) => {
                let keep =
                    |page: usize| column.min_value(page) == Some(wanted) && column.max_value(page) == Some(wanted);
                page_selection(offsets.page_locations(), rows, keep)
            }
            _ => RowSelection::from_consecutive_ranges(std::iter::empty(), rows),
        };
        if let Some(seq) = seq_column
            && let (Some(ColumnIndexMetaData::INT64(column)), Some(offsets)) =
                (pages.column_index(seq), pages.offset_index(seq))
        {
            let bounds = |page: usize| Some((*column.min_value(page)?, *column.max_value(page)?));
            let narrowed = seq_selection(offsets.page_locations(), rows, &seqs, bounds, &only_session);
            group_selection = group_selection.intersection(&narrowed);
        }
        if group_selection.selects_any() {
            groups.push(index);
            selectors.extend(Vec::from(group_selection));
        }
    }
    if groups.is_empty() {
        return Ok(());
    }
    let selection = RowSelection::from(selectors);
    let reader =
        builder.with_row_groups(groups).with_row_selection(selection).build().map_err(|e| parquet_error(path, e))?;
    for batch in reader {
        if f(batch.map_err(|e| parquet_error(path, e.into()))?)?.is_break() {
            break;
        }
    }
    Ok(())
}

/// The rows of one row group whose `seq` pages may hold `seqs`. A page all
/// of whose rows are the session's (`only_session` selects them all) and
/// whose seqs are as many as its rows holds consecutive seqs in order (a
/// session's seqs are dense and its rows sorted by seq): only the rows of
/// the wanted seqs are selected, so that a few events of a long session
/// cost their rows, not their page's.
fn seq_selection(
    locations: &[parquet::file::page_index::offset_index::PageLocation],
    rows: usize,
    seqs: &std::ops::RangeInclusive<u64>,
    bounds: impl Fn(usize) -> Option<(i64, i64)>,
    only_session: &parquet::arrow::arrow_reader::RowSelection,
) -> parquet::arrow::arrow_reader::RowSelection {
    use parquet::arrow::arrow_reader::RowSelection;
    let mut ranges = Vec::new();
    for (page, std::ops::Range { start: first, end }) in page_rows(locations, rows) {
        let Some((min, max)) = bounds(page) else {
            ranges.push(first..end);
            continue;
        };
        let (min, max) = (min.max(0) as u64, max.max(0) as u64);
        if max < *seqs.start() || *seqs.end() < min {
            continue;
        }
        let page_rows = RowSelection::from_consecutive_ranges(std::iter::once(first..end), rows);
        let whole_session = only_session.intersection(&page_rows).row_count() == end - first;
        if whole_session && max.checked_sub(min).is_some_and(|span| span == (end - first - 1) as u64) {
            let from = first + (seqs.start().max(&min) - min) as usize;
            let to = first + (seqs.end().min(&max) - min) as usize;
            ranges.push(from..to + 1);
        } else {
            ranges.push(first..end);
        }
    }
    RowSelection::from_consecutive_ranges(ranges.into_iter(), rows)
}

/// Each page of one column in a row group of `rows` rows, with its rows
/// (pages holding none left out). Page locations from a damaged file are
/// clamped, never trusted to be in order.
fn page_rows(
    locations: &[parquet::file::page_index::offset_index::PageLocation],
    rows: usize,
) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> + '_ {
    let mut done = 0;
    locations.iter().enumerate().filter_map(move |(page, location)| {
        let first = (location.first_row_index.max(0) as usize).clamp(done, rows);
        let end = locations.get(page + 1).map_or(rows, |next| next.first_row_index.max(0) as usize).clamp(first, rows);
        done = end;
        (first < end).then_some((page, first..end))
    })
}

/// The rows of one row group whose pages (of one column) `keep` keeps. Page
/// locations from a damaged file are clamped, never trusted to be in order.
fn page_selection(
    locations: &[parquet::file::page_index::offset_index::PageLocation],
    rows: usize,
    keep: impl Fn(usize) -> bool,
) -> parquet::arrow::arrow_reader::RowSelection {
    let ranges = page_rows(locations, rows).filter(|&(page, _)| keep(page)).map(|(_, range)| range);
    parquet::arrow::arrow_reader::RowSelection::from_consecutive_ranges(ranges, rows)
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

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    fn text(len: usize) -> Vec<u8> {
        (0..).flat_map(|i: u32| format!("line {} of the log: ok\n", i % 1000).into_bytes()).take(len).collect()
    }

    #[test]
    fn raw_bytes_are_stored_only_where_samples_over_the_bytes_do_not_compress() {
        let decide = |rows: &[Vec<u8>]| RawBytes::for_rows(&rows.iter().map(Vec::as_slice).collect::<Vec<_>>());
        let random: Vec<Vec<u8>> = (0..128).map(|i| noise(16 * 1024, i)).collect();
        assert_eq!(decide(&random), RawBytes::Stored);
        let logs: Vec<Vec<u8>> = (0..128).map(|_| text(16 * 1024)).collect();
        assert_eq!(decide(&logs), RawBytes::Compressed);
        // Under a mebibyte: compressed, whatever it holds.
        assert_eq!(decide(&random[..32]), RawBytes::Compressed);
        assert_eq!(decide(&[]), RawBytes::Compressed);
        // Many small rows of noise and a few large ones of text, the text
        // most of the bytes: weighed by bytes, not rows.
        let mut mixed: Vec<Vec<u8>> = (0..4000).map(|i| noise(100, i)).collect();
        // (Where samples spread over rows would not look: each covers
        // ~160 of these rows from every 250th.)
        for at in [200, 3950] {
            mixed.insert(at, text(2 << 20));
        }
        assert_eq!(decide(&mixed), RawBytes::Compressed);
    }

    #[test]
    fn every_column_named_in_the_writer_properties_exists() {
        let schema = ArrowSchemaConverter::new().convert(&event_arrow::schema()).unwrap();
        let paths: Vec<String> = schema.columns().iter().map(|c| c.path().string()).collect();
        for column in FREE_TEXT {
            assert!(paths.iter().any(|p| p == column), "{column} is not a column: {paths:?}");
        }
    }
}
