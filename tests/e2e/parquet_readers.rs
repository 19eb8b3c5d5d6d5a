//! Segments are plain Parquet: another engine (DuckDB, installed by
//! scripts/setup) reads every column, nested ones included, and sees exactly
//! the events the recorder holds.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use proctor_recorder::reader::Reader;
use proctor_schemas::EventBody;
use proctor_tests::run_ok;

const BIN: &str = env!("CARGO_BIN_EXE_proctor");

fn duckdb(sql: &str) -> serde_json::Value {
    let script = format!("import duckdb, json\nprint(json.dumps(duckdb.sql({sql:?}).fetchall(), default=str))");
    let output = Command::new("python3").arg("-c").arg(&script).output().expect("python3");
    assert!(
        output.status.success(),
        "duckdb failed (scripts/setup installs it): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("duckdb printed JSON")
}

#[test]
fn duckdb_reads_segments_as_the_recorder_wrote_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    run_ok(Path::new(BIN), &["generate", "--data-dir", data.to_str().unwrap(), "--sessions", "40", "--seed", "3"]);
    let glob = format!("{}/segments/*/*.parquet", data.display());

    let mut ours: BTreeMap<String, u64> = BTreeMap::new();
    let mut statement = None;
    let mut result = None;
    Reader::open(&data)
        .unwrap()
        .for_each_event(|e| {
            *ours.entry(e.kind().as_str().to_string()).or_default() += 1;
            match &e.body {
                EventBody::Statement(s) if statement.is_none() && s.params.len() > 1 => statement = Some(e.clone()),
                EventBody::Result(r) if result.is_none() && r.sample_rows.len() > 1 => result = Some(e.clone()),
                _ => {}
            }
            Ok(())
        })
        .unwrap();
    let expected: Vec<(String, u64)> = ours.into_iter().collect();
    let theirs = duckdb(&format!("select kind, count(*) from '{glob}' group by kind order by kind"));
    assert_eq!(theirs, serde_json::json!(expected));

    let statement = statement.unwrap();
    let EventBody::Statement(s) = &statement.body else { unreachable!() };
    let params = duckdb(&format!(
        "select params from '{glob}' where session_id = '{}' and seq = {}",
        statement.session_id, statement.seq
    ));
    assert_eq!(params, serde_json::json!([[s.params]]));

    let result = result.unwrap();
    let EventBody::Result(r) = &result.body else { unreachable!() };
    let sample = duckdb(&format!(
        "select sample_rows, result_columns, row_count, epoch_ns(time) from '{glob}' where session_id = '{}' and seq = {}",
        result.session_id, result.seq
    ));
    let expected = serde_json::json!([[r.sample_rows, r.columns, r.row_count, result.time.0]]);
    assert_eq!(sample, expected);
}
