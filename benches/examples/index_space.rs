//! Where a search index's bytes go, field by field and part by part.
//!
//! `cargo run --release -p proctor-benches --example index_space -- DATA_DIR`

use std::collections::BTreeMap;

fn main() {
    let dir = std::env::args().nth(1).expect("usage: index_space DATA_DIR");
    let index = tantivy::Index::open_in_dir(std::path::Path::new(&dir).join("index")).expect("an index");
    let searcher = index.reader().expect("a reader").searcher();
    let usage = searcher.space_usage().expect("space usage");
    let mut parts: BTreeMap<(String, &str), u64> = BTreeMap::new();
    let mut docs = 0u64;
    for segment in usage.segments() {
        docs += segment.num_docs() as u64;
        for (part, per_field) in [
            ("terms", segment.termdict()),
            ("postings", segment.postings()),
            ("positions", segment.positions()),
            ("fast", segment.fast_fields()),
            ("norms", segment.fieldnorms()),
        ] {
            for field in per_field.fields() {
                *parts.entry((field.field_name().to_string(), part)).or_default() += field.total().get_bytes();
            }
        }
        *parts.entry(("(stored documents)".to_string(), "store")).or_default() += segment.store().total().get_bytes();
    }
    let total: u64 = parts.values().sum();
    println!(
        "{docs} documents, {:.1} MiB, {:.1} B/document",
        total as f64 / 1048576.0,
        total as f64 / docs.max(1) as f64
    );
    let mut rows: Vec<_> = parts.into_iter().filter(|(_, b)| *b > 0).collect();
    rows.sort_by_key(|row| std::cmp::Reverse(row.1));
    for ((field, part), bytes) in rows {
        println!(
            "  {field:<20} {part:<10} {:>10.1} KiB {:>6.2} B/doc",
            bytes as f64 / 1024.0,
            bytes as f64 / docs.max(1) as f64
        );
    }
}
