//! Search benchmark: indexing throughput, index size and query latency over
//! recordings made by the `proctor generate` generator, at one or more sizes.
//!
//! For each size: events are recorded (sealed segments); reading them all
//! back is the baseline for indexing (the floor cost of any indexer);
//! `reindex` builds the index; a fixed mix of 29 investigator queries runs
//! 10 times each (limit 20, with facets, as the search API runs them); one
//! brute-force scan of the segments for a phrase is the baseline for a
//! query.
//!
//! `cargo bench -p proctor-benches --bench search_index -- 1000000 10000000`

use std::path::Path;
use std::time::{Duration, Instant};

use proctor_indexer::{SearchIndex, SearchRequest, reindex};
use proctor_recorder::reader::Reader;
use proctor_recorder::synth::{Synth, SynthConfig};
use proctor_recorder::{Recorder, RecorderSettings};
use proctor_schemas::{EventBody, NewEvent, Timestamp};

/// The allocator of the `proctor` binary, so that what runs here is what
/// runs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What investigators ask: words, phrases, fields, time, booleans; numeric
/// ranges, networks, and conditions on sessions' starts and ends.
const QUERIES: &[&str] = &[
    "\"drop table customers\"",
    "drop table",
    "subject:ci-deploy kind:statement",
    "outcome:block",
    "outcome:hold since:7d",
    "rule:ci.block-drop",
    "kind:error sqlstate:42501",
    "pg_read_file",
    "\"/etc/passwd\"",
    "resource:prod-db delete",
    "subject:ai-sre-assistant systemctl",
    "sudo systemctl restart app",
    "kind:terminal_input resource:bastion-prod",
    "method:DELETE resource:admin-api",
    "invoices status open",
    "truncate OR \"alter table\"",
    "group:agents kind:statement NOT select",
    "card_number",
    "kind:session_start subject:alice@example.com",
    "since:1d kind:policy_decision",
    "subject:ci-deploy",
    "kind:statement duration:>100ms",
    "kind:result rows:>=40",
    "bytes:[1MB TO 10MB]",
    "kind:statement outcome:allow rows:>0 (tag:INSERT OR tag:UPDATE OR tag:DELETE)",
    "kind:statement end_reason:grant_expired",
    "kind:session_start client:10.2.0.0/16",
    "application:psql kind:statement",
    "actor:*",
];

fn du(path: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() { du(&entry.path()) } else { meta.len() };
    }
    total
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Figures {
    events: u64,
    index_seconds: f64,
    read_seconds: f64,
    segments_bytes: u64,
    index_bytes: u64,
    p50: Duration,
    p99: Duration,
}

fn record(dir: &Path, events: u64) -> u64 {
    let recorder = Recorder::open(dir, &RecorderSettings::default()).unwrap();
    let sink = recorder.sink();
    let start = Timestamp(Timestamp::now().0 - Duration::from_secs(6 * 24 * 3600).as_nanos() as i64);
    let mut synth = Synth::new(SynthConfig::new(events / 60 + 1, 7, start));
    let mut written = 0u64;
    let mut batch: Vec<NewEvent> = Vec::with_capacity(256);
    // Every session is written whole, so stop at a session's end once the
    // target is reached.
    for event in synth.by_ref() {
        let ends = matches!(event.body, EventBody::SessionEnd(_));
        batch.push(event);
        if batch.len() == 256 {
            written += sink.blocking_append_batch(std::mem::take(&mut batch)).unwrap().len() as u64;
        }
        if ends && written + batch.len() as u64 >= events {
            break;
        }
    }
    written += sink.blocking_append_batch(batch).unwrap().len() as u64;
    drop(synth);
    drop(sink);
    recorder.close().unwrap();
    written
}

fn run(target: u64) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let events = record(dir.path(), target);

    // Baseline: reading every event back from the segments.
    let started = Instant::now();
    let mut read = 0u64;
    Reader::open(dir.path())
        .unwrap()
        .for_each_event(|_| {
            read += 1;
            Ok(())
        })
        .unwrap();
    let read_seconds = started.elapsed().as_secs_f64();
    // The recorder adds a few events of its own.
    assert!(read >= events);
    let events = read;

    let started = Instant::now();
    let progress = reindex(dir.path()).unwrap();
    let index_seconds = started.elapsed().as_secs_f64();
    assert_eq!(progress.segment_events, events);
    let segments_bytes = du(&dir.path().join("segments"));
    let index_bytes = du(&dir.path().join("index"));

    let index = SearchIndex::open(dir.path()).unwrap();
    let now = Timestamp::now();
    let mut all = Vec::new();
    println!("  {:<48} {:>9} {:>9} {:>9}", "query", "hits", "p50", "p99");
    for query in QUERIES {
        let mut times = Vec::new();
        let mut total = 0;
        for _ in 0..10 {
            let request = SearchRequest { limit: 20, now, ..SearchRequest::new(*query) };
            let started = Instant::now();
            let result = index.search(&request).unwrap();
            times.push(started.elapsed());
            total = result.total;
        }
        times.sort();
        println!(
            "  {:<48} {:>9} {:>7.2}ms {:>7.2}ms",
            query,
            total,
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3
        );
        all.extend(times);
    }
    all.sort();

    // Baseline: the same phrase found by scanning every event.
    let started = Instant::now();
    let mut found = 0u64;
    Reader::open(dir.path())
        .unwrap()
        .for_each_event(|e| {
            if let EventBody::Statement(s) = &e.body
                && s.sql.contains("drop table customers")
            {
                found += 1;
            }
            Ok(())
        })
        .unwrap();
    let scan = started.elapsed();
    let p50 = percentile(&all, 0.5);
    println!(
        "  scan of the segments for \"drop table customers\": {:.0}ms ({found} hits); the index's p50 is {:.0}x faster",
        scan.as_secs_f64() * 1e3,
        scan.as_secs_f64() / p50.as_secs_f64()
    );
    replay_pages(dir.path());
    Figures { events, index_seconds, read_seconds, segments_bytes, index_bytes, p50, p99: percentile(&all, 0.99) }
}

/// Reading a page of 100 events from the middle of the longest session and
/// of a short one, straight from the segments (row groups and pages pruned),
/// against reading the long session whole.
fn replay_pages(dir: &Path) {
    let reader = Reader::open(dir).unwrap();
    let sessions = reader.sessions().unwrap();
    let longest = sessions.iter().max_by_key(|s| s.events).unwrap();
    let short = sessions.iter().filter(|s| s.events >= 10).min_by_key(|s| s.events).unwrap();
    let page = |id, from: u64| {
        let started = Instant::now();
        let mut n = 0;
        reader
            .for_each_session_event(id, from, |_| {
                n += 1;
                Ok(if n == 100 { std::ops::ControlFlow::Break(()) } else { std::ops::ControlFlow::Continue(()) })
            })
            .unwrap();
        started.elapsed()
    };
    let median = |f: &dyn Fn() -> Duration| {
        let mut times: Vec<Duration> = (0..5).map(|_| f()).collect();
        times.sort();
        times[2]
    };
    let long_page = median(&|| page(longest.session_id, longest.events / 2));
    let short_page = median(&|| page(short.session_id, 0));
    let whole = median(&|| {
        let started = Instant::now();
        reader.session_events(longest.session_id).unwrap();
        started.elapsed()
    });
    println!(
        "  replay: a 100-event page from the middle of a {}-event session {:.1}ms, of a {}-event session {:.1}ms ({:.2}x); the long session whole {:.1}ms",
        longest.events,
        long_page.as_secs_f64() * 1e3,
        short.events,
        short_page.as_secs_f64() * 1e3,
        long_page.as_secs_f64() / short_page.as_secs_f64(),
        whole.as_secs_f64() * 1e3
    );
}

fn main() {
    let sizes: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![1_000_000] } else { sizes };
    println!("search index: {} queries x 10 runs per size, on {} cores", QUERIES.len(), num_cores());
    let mut figures = Vec::new();
    for &size in &sizes {
        println!("\n{size} events:");
        let f = run(size);
        println!(
            "  indexed {} events in {:.1}s: {:.0} events/s ({:.2}x the speed of reading them back: {:.0} events/s)",
            f.events,
            f.index_seconds,
            f.events as f64 / f.index_seconds,
            f.read_seconds / f.index_seconds,
            f.events as f64 / f.read_seconds
        );
        println!(
            "  index {:.1} MiB = {:.2}x the segments' {:.1} MiB ({:.1} B/event)",
            f.index_bytes as f64 / 1048576.0,
            f.index_bytes as f64 / f.segments_bytes as f64,
            f.segments_bytes as f64 / 1048576.0,
            f.index_bytes as f64 / f.events as f64
        );
        println!("  all queries: p50 {:.2}ms p99 {:.2}ms", f.p50.as_secs_f64() * 1e3, f.p99.as_secs_f64() * 1e3);
        figures.push(f);
    }
    if let (Some(first), Some(last)) = (figures.first(), figures.last())
        && figures.len() > 1
    {
        let growth = last.events as f64 / first.events as f64;
        println!(
            "\ngrowth {:.0}x events: indexing time {:.1}x, index size {:.1}x, p50 {:.1}x, p99 {:.1}x",
            growth,
            last.index_seconds / first.index_seconds,
            last.index_bytes as f64 / first.index_bytes as f64,
            last.p50.as_secs_f64() / first.p50.as_secs_f64(),
            last.p99.as_secs_f64() / first.p99.as_secs_f64()
        );
    }
}

fn num_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
