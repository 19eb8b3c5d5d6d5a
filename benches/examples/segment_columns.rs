//! Where a segment's bytes go: compressed and uncompressed size and encodings
//! per column, summed over row groups. Used to tune the segment layout.
//!
//! `cargo run --release -p proctor-benches --example segment_columns -- FILE.parquet`

use parquet::file::reader::{FileReader, SerializedFileReader};

fn main() {
    let path = std::env::args().nth(1).expect("usage: segment_columns FILE.parquet");
    let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
    let metadata = reader.metadata();
    let rows = metadata.file_metadata().num_rows() as f64;
    let columns = metadata.row_group(0).num_columns();
    let mut sizes: Vec<(String, i64, i64, String)> = (0..columns)
        .map(|c| {
            let mut compressed = 0;
            let mut uncompressed = 0;
            let mut encodings = String::new();
            for rg in metadata.row_groups() {
                let column = rg.column(c);
                compressed += column.compressed_size();
                uncompressed += column.uncompressed_size();
                encodings = format!("{:?}", column.encodings().collect::<Vec<_>>());
            }
            (metadata.row_group(0).column(c).column_path().string(), compressed, uncompressed, encodings)
        })
        .collect();
    sizes.sort_by_key(|s| -s.1);
    let total: i64 = sizes.iter().map(|s| s.1).sum();
    println!(
        "{rows} rows, {} row groups, {:.2} bytes/row in column chunks",
        metadata.num_row_groups(),
        total as f64 / rows
    );
    for (name, compressed, uncompressed, encodings) in sizes.iter().take(25) {
        println!(
            "{name:<32} {:>8.3} B/row  ({:>8.3} uncompressed)  {encodings}",
            *compressed as f64 / rows,
            *uncompressed as f64 / rows
        );
    }
}
