//! Forensic search: events recorded through the real gateway (psql against
//! an initdb cluster) or made by `proctor generate`, found with `proctor
//! search` by words, fields and time; the index neither loses nor duplicates
//! events across sealing, restarts, kills and rebuilds.

use std::path::Path;
use std::time::{Duration, Instant};

use proctor_recorder::reader::Reader;
use proctor_schemas::{Event, EventBody, EventKind, Timestamp};
use proctor_tests::devcluster::Options;
use proctor_tests::{APP_ROLE, Proctor, ProctorOptions, cluster, run, run_ok, stdout};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_proctor");

fn bin() -> &'static Path {
    Path::new(BIN)
}

/// `proctor search --json --facets`: the hits, then the total.
fn search(data_dir: &Path, query: &str, limit: usize) -> (Vec<Value>, u64) {
    let dir = data_dir.to_str().unwrap();
    let limit = limit.to_string();
    let output = run_ok(bin(), &["search", query, "--data-dir", dir, "--json", "--facets", "--limit", &limit]);
    let mut lines: Vec<Value> =
        stdout(&output).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let summary = lines.pop().expect("the summary line");
    (lines, summary["total"].as_u64().unwrap())
}

/// `proctor search --json --facets`: the facet counts.
fn facets(data_dir: &Path, query: &str) -> Value {
    let dir = data_dir.to_str().unwrap();
    let output = run_ok(bin(), &["search", query, "--data-dir", dir, "--json", "--facets", "--limit", "1"]);
    let summary: Value = serde_json::from_str(stdout(&output).lines().last().unwrap()).unwrap();
    summary["facets"].clone()
}

/// Every recorded event is one document. (A search on a data dir records
/// itself after it has read the index, so counting first is exact.)
fn assert_every_event_once(data_dir: &Path) {
    let events = all_events(data_dir).len() as u64;
    let (_, total) = search(data_dir, "", 1);
    assert_eq!(total, events, "every event once");
}

/// How many segments the committed index holds, from its checkpoint.
fn indexed_segments(data_dir: &Path) -> usize {
    let Ok(meta) = std::fs::read_to_string(data_dir.join("index/meta.json")) else { return 0 };
    let meta: Value = serde_json::from_str(&meta).unwrap();
    let Some(payload) = meta["payload"].as_str() else { return 0 };
    let checkpoint: Value = serde_json::from_str(payload).unwrap();
    // Stored as inclusive [first, last] ranges.
    let ranges = checkpoint["segments"].as_array().cloned().unwrap_or_default();
    ranges.iter().map(|r| (r[1].as_u64().unwrap() - r[0].as_u64().unwrap() + 1) as usize).sum()
}

fn all_events(data_dir: &Path) -> Vec<Event> {
    let mut events = Vec::new();
    Reader::open(data_dir)
        .unwrap()
        .for_each_event(|e| {
            events.push(e);
            Ok(())
        })
        .unwrap();
    events
}

#[test]
fn statements_through_the_gateway_are_found_by_words_fields_and_time_while_proctor_runs() {
    let cluster = cluster(&Options::default());
    let mut proctor = Proctor::start(bin(), cluster.port, &ProctorOptions::default());
    let psql = |user: &str, sql: &str, succeeds: bool| {
        let output = std::process::Command::new(cluster.bindir.join("psql"))
            .args(["-X", "-q", "-At", "-d", &proctor.conninfo(user, APP_ROLE, "disable"), "-c", sql])
            .output()
            .unwrap();
        assert_eq!(output.status.success(), succeeds, "{}", String::from_utf8_lossy(&output.stderr));
    };
    let before = Timestamp::now();
    psql("alice", "create table orchids (id int, name text)", true);
    psql("alice", "insert into orchids values (4242, 'phalaenopsis')", true);
    psql("bob", "select name from orchids where id = 4242", true);
    psql("bob", "select 1/0 as orchids_fail", false);

    // The running Proctor indexes the WAL tail: found while still unsealed.
    let started = Instant::now();
    let (hits, total) = loop {
        let (hits, total) = search(&proctor.data_dir, "orchids kind:statement", 50);
        if total >= 4 {
            break (hits, total);
        }
        assert!(started.elapsed() < Duration::from_secs(50), "statements not searchable after 50s: {hits:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("searchable {:?} after the last statement", started.elapsed());
    assert_eq!(total, 4, "{hits:#?}");
    assert!(hits.iter().all(|h| h["kind"] == "statement"));
    let newest = &hits[0];
    assert_eq!(newest["text"], "select 1/0 as orchids_fail");
    assert_eq!(newest["subject"], "bob", "a statement carries its session's subject");
    assert!(newest["snippet"].as_str().unwrap().contains("<b>orchids</b>_fail"), "{newest}");
    for key in ["session_id", "seq", "time"] {
        assert!(!newest[key].is_null(), "{key} in {newest}");
    }

    // By field.
    let (hits, total) = search(&proctor.data_dir, "orchids subject:alice kind:statement", 50);
    assert_eq!(total, 2, "{hits:#?}");
    let (hits, total) = search(&proctor.data_dir, "sqlstate:22012", 50);
    let kinds: Vec<&str> = hits.iter().map(|h| h["kind"].as_str().unwrap()).collect();
    assert_eq!(
        (total, kinds),
        (2, vec!["error", "statement"]),
        "the division by zero, and the statement that raised it"
    );
    // A phrase, and boolean operators.
    let (_, total) = search(&proctor.data_dir, "\"from orchids where\"", 50);
    assert_eq!(total, 1);
    let (_, total) = search(&proctor.data_dir, "orchids kind:statement NOT subject:bob", 50);
    assert_eq!(total, 2);
    // By time.
    let after = format!("orchids kind:statement after:{}", before.to_rfc3339());
    assert_eq!(search(&proctor.data_dir, &after, 50).1, 4);
    assert_eq!(search(&proctor.data_dir, "orchids before:2000-01-01", 50).1, 0);
    assert_eq!(search(&proctor.data_dir, "orchids kind:statement since:1h", 50).1, 4);

    // Once stopped, everything is sealed; the WAL documents were replaced by
    // the segment's, not added to.
    assert!(proctor.stop().success());
    let events = all_events(&proctor.data_dir);
    let (_, total) = search(&proctor.data_dir, "", 1);
    assert_eq!(total, events.len() as u64, "one document per recorded event");
    assert_eq!(search(&proctor.data_dir, "orchids kind:statement", 50).1, 4);

    // A session's describing fields (on its `session_start` alone in the
    // index) match every event of the session, alone, combined and negated;
    // `session:ID` reads the session column; facets count by session.
    let sessions_of = |subject: &str| -> Vec<String> {
        let mut ids: Vec<String> = events
            .iter()
            .filter(|e| matches!(&e.body, EventBody::SessionStart(s) if s.subject.as_deref() == Some(subject)))
            .map(|e| e.session_id.to_string())
            .collect();
        ids.sort();
        ids
    };
    let events_of = |ids: &[String]| events.iter().filter(|e| ids.contains(&e.session_id.to_string())).count() as u64;
    let (alice, bob) = (sessions_of("alice"), sessions_of("bob"));
    assert_eq!((alice.len(), bob.len()), (2, 2), "one psql session per statement");
    assert_eq!(search(&proctor.data_dir, "subject:alice", 1).1, events_of(&alice));
    assert_eq!(search(&proctor.data_dir, "subject:alice OR subject:bob", 1).1, events_of(&alice) + events_of(&bob));
    let (_, total) = search(&proctor.data_dir, "kind:session_start subject:alice", 1);
    assert_eq!(total, 2);
    let (_, total) = search(&proctor.data_dir, "resource:test-db orchids kind:statement -subject:alice", 50);
    assert_eq!(total, 2, "bob's two statements");
    assert_eq!(search(&proctor.data_dir, "subject:nobody", 1).1, 0);
    // Exclusions alone mean everything but. (Each search here indexes the
    // reads recorded before it, so the whole grows between two searches.)
    let before = search(&proctor.data_dir, "", 1).1;
    let (hits, but_alice) = search(&proctor.data_dir, "NOT subject:alice", 50);
    let after = search(&proctor.data_dir, "", 1).1;
    assert!((before..=after).contains(&(but_alice + events_of(&alice))), "{before} {but_alice} {after}");
    assert!(hits.iter().all(|h| !alice.iter().any(|id| h["session_id"] == id.as_str())));
    // Any subject at all.
    let with_subject: Vec<String> = events
        .iter()
        .filter(|e| matches!(&e.body, EventBody::SessionStart(s) if s.subject.is_some()))
        .map(|e| e.session_id.to_string())
        .collect();
    assert!(search(&proctor.data_dir, "subject:*", 1).1 >= events_of(&with_subject));
    assert_eq!(search(&proctor.data_dir, "subject:* kind:statement", 1).1, 4);
    assert_eq!(search(&proctor.data_dir, &format!("session:{}", alice[0]), 1).1, events_of(&alice[..1]));
    let both = format!("session: IN [{} {}] kind:statement", alice[0], bob[1]);
    assert_eq!(search(&proctor.data_dir, &both, 1).1, 2);
    let dir = proctor.data_dir.to_str().unwrap();
    let output = run_ok(bin(), &["search", "orchids kind:statement", "--data-dir", dir, "--json", "--facets"]);
    let summary: Value = serde_json::from_str(stdout(&output).lines().last().unwrap()).unwrap();
    assert_eq!(summary["facets"]["subject"], serde_json::json!({ "alice": 2, "bob": 2 }), "{summary}");
    assert_eq!(summary["facets"]["resource"], serde_json::json!({ "test-db": 4 }), "{summary}");

    // A bad query is refused with a message that points at the mistake.
    let output = run(bin(), &["search", "orchids colour:red", "--data-dir", dir]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown field `colour` at column 9"));
    let output = run(bin(), &["search", "orchids since:7x", "--data-dir", dir]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("`since:7x` at column 9"));
    let output = run(bin(), &["search", "session:[a TO b]", "--data-dir", dir]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("`session:` takes values, not ranges"));
}

#[test]
fn a_killed_indexer_and_a_rebuild_neither_lose_nor_duplicate_documents() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let dir = data.to_str().unwrap();
    run_ok(bin(), &["generate", "--data-dir", dir, "--sessions", "150", "--seed", "1"]);
    assert_every_event_once(&data);
    // The search itself was recorded, attributed to the local user; the next
    // search indexes it.
    let (hits, _) = search(&data, "kind:recording_accessed", 1);
    assert!(hits[0]["subject"].as_str().unwrap().starts_with("local:"), "newest first: {hits:?}");

    // More recordings, in small segments; the indexer is killed while
    // catching up, at a few different moments (it commits every 2s).
    let config = work.path().join("small-segments.toml");
    std::fs::write(&config, "data_dir = \"data\"\n[recorder]\nsegment_max_bytes = \"256KiB\"\n").unwrap();
    let config = config.to_str().unwrap();
    run_ok(bin(), &["generate", "--data-dir", dir, "--sessions", "2500", "--seed", "2", "--config", config]);
    let segments = Reader::open(&data).unwrap().manifests().unwrap().len();
    let mut indexed = Vec::new();
    for delay in [150, 300, 600] {
        let mut child = std::process::Command::new(bin())
            .args(["search", "", "--data-dir", dir])
            .env("PROCTOR_INDEX_COMMIT_DOCS", "2000")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        indexed.push(indexed_segments(&data));
    }
    eprintln!("segments indexed after each kill: {indexed:?} of {segments}");
    assert!(indexed.windows(2).all(|w| w[0] <= w[1]), "progress is kept: {indexed:?}");
    assert!(indexed.iter().any(|&n| n > 0 && n < segments), "a kill landed mid-way: {indexed:?} of {segments}");
    let statements = all_events(&data).iter().filter(|e| e.body.kind() == EventKind::Statement).count() as u64;
    assert_every_event_once(&data);
    assert_eq!(search(&data, "kind:statement", 1).1, statements);
    // Sessions that span a kill carry their subject and resource on every
    // event all the same (looked up once the indexer runs again): counted by
    // subject and resource, the statements are what a clean rebuild counts.
    let after_kills = facets(&data, "kind:statement");

    // A page of one session, read straight from the segments.
    let session = all_events(&data).iter().find(|e| e.seq == 9).map(|e| e.session_id.to_string()).unwrap();
    let page = run_ok(bin(), &["replay", &session, "--data-dir", dir, "--from-seq", "5", "--limit", "3", "--json"]);
    let seqs: Vec<u64> =
        stdout(&page).lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![5, 6, 7]);

    // The index is derived data: removed and rebuilt, it says the same.
    std::fs::remove_dir_all(data.join("index")).unwrap();
    run_ok(bin(), &["reindex", "--data-dir", dir]);
    assert_every_event_once(&data);
    assert_eq!(search(&data, "kind:statement", 1).1, statements);
    let rebuilt = facets(&data, "kind:statement");
    assert_eq!(after_kills["subject"], rebuilt["subject"]);
    assert_eq!(after_kills["resource"], rebuilt["resource"]);
    let counted: u64 = rebuilt["subject"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(counted, statements, "every statement has its session's subject: {rebuilt}");
    // And rebuilt over an existing index.
    run_ok(bin(), &["reindex", "--data-dir", dir]);
    assert_eq!(search(&data, "kind:statement", 1).1, statements);
}
