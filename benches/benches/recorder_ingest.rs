//! Recorder ingest: events per second into the recorder and bytes on disk
//! per event, side by side with the same events written as gzip'd JSON lines
//! (what a plain audit log would do), in the same run.
//!
//! Appends happen in place on the producer's thread (no hand-off); sealing
//! runs on the recorder's own thread. Both are timed in CPU: append CPU per
//! event (the producing thread), sealing CPU per event (the sealer), and the
//! events per CPU-second of the two together.
//!
//! Workloads:
//! - `mix`: `proctor generate`'s fixed mix (PostgreSQL, SSH, HTTP, control),
//!   appended in batches of 256, as a gateway with many sessions would;
//! - `uniform-200B`: statement events of about 200 bytes each;
//! - `8 producers`: eight tasks appending one event at a time, each awaiting
//!   its acknowledgement, as eight gateway sessions do;
//! - `8 producers, fsync always`: the same with `fsync = "always"` (group commit).
//!
//! `cargo bench -p proctor-benches --bench recorder_ingest [-- EVENTS [NAME-FILTER]]`

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;
use proctor_benches::{dir_size, median, process_cpu, this_thread_cpu};
use proctor_recorder::synth::{Synth, SynthConfig};
use proctor_recorder::{FsyncPolicy, Recorder, RecorderSettings};
use proctor_schemas::*;

/// The allocator of the `proctor` binary, so that what runs here is what
/// runs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RUNS: usize = 3;

fn mix(events: usize) -> Vec<NewEvent> {
    // About 80 events per session in the mix.
    let sessions = (events / 80).max(1) as u64;
    let mut out: Vec<NewEvent> =
        Synth::new(SynthConfig::new(sessions, 1, Timestamp(1_764_000_000_000_000_000))).collect();
    out.truncate(events);
    // A truncated stream may leave sessions open; the recorder ends them at close.
    out
}

fn uniform(events: usize) -> Vec<NewEvent> {
    let sessions: Vec<SessionId> = (0..64).map(|i| SessionId::from_parts(1_764_000_000_000 + i, i as u128)).collect();
    let mut out: Vec<NewEvent> = sessions
        .iter()
        .map(|&s| {
            NewEvent::new(
                s,
                Timestamp(1_764_000_000_000_000_000),
                Direction::Gateway,
                SessionStart {
                    protocol: Protocol::Postgres,
                    resource: Some("prod-db".into()),
                    subject: Some("ci-deploy".into()),
                    groups: vec!["ci".into()],
                    grant_id: Some("g_0123456789abcdef".into()),
                    client_addr: Some("10.0.0.7:51234".into()),
                    target_user: Some("app".into()),
                    database: Some("shop".into()),
                    application_name: Some("psql".into()),
                    tls: Some("TLSv1.3".into()),
                    masking_profile: Some("default".into()),
                    message: None,
                },
            )
        })
        .collect();
    let mut i = 0u64;
    while out.len() < events {
        let s = sessions[(i % 64) as usize];
        out.push(NewEvent::new(
            s,
            Timestamp(1_764_000_000_000_000_000 + i as i64 * 1000),
            Direction::ClientToTarget,
            Statement {
                sql: format!("select o.id, o.total_cents, o.status from orders o where o.customer_id = $1 and o.created_at > $2 -- {i}"),
                statement_name: Some("s3".into()),
                portal: Some(String::new()),
                params: vec![Some((i * 7919 % 250_000).to_string()), Some("2026-11-01".into())],
            },
        ));
        i += 1;
    }
    out
}

fn canonical_size(events: &[NewEvent]) -> f64 {
    let mut id = SessionIdText::default();
    let mut buf = Vec::new();
    let mut total = 0usize;
    for event in events.iter().take(100_000) {
        buf.clear();
        let event = event.clone().with_seq(0);
        canonical::encode(&event.cells(&mut id), &mut buf);
        total += buf.len();
    }
    total as f64 / events.len().min(100_000) as f64
}

struct Measured {
    accepted_per_s: f64,
    sealed_per_s: f64,
    /// CPU per event of appending (measured on the single producer).
    append_cpu_ns: Option<f64>,
    /// CPU per event of sealing.
    seal_cpu_ns: f64,
    /// Events per CPU-second of the whole process.
    events_per_cpu_s: f64,
    bytes_per_event: f64,
}

fn settings(fsync: FsyncPolicy) -> RecorderSettings {
    let zstd_level = std::env::var("PROCTOR_BENCH_ZSTD").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    RecorderSettings { fsync, zstd_level, sealer_nice: 0, ..RecorderSettings::default() }
}

/// Appends in batches from one producer thread.
fn run_batched(events: &[NewEvent], dir: &Path) -> Measured {
    let recorder = Recorder::open(dir, &settings(FsyncPolicy::Interval)).unwrap();
    let sink = recorder.sink();
    let chunks: Vec<Vec<NewEvent>> = events.chunks(256).map(|c| c.to_vec()).collect();
    let (cpu0, main0) = (process_cpu(), this_thread_cpu());
    let started = Instant::now();
    for chunk in &chunks {
        sink.append_slice_blocking(chunk).unwrap();
    }
    let accepted = started.elapsed();
    let producer = this_thread_cpu() - main0;
    recorder.close().unwrap();
    let sealed = started.elapsed();
    let cpu = process_cpu() - cpu0;
    let mut measured = finish(events.len(), accepted, sealed, &sink, cpu, dir);
    measured.append_cpu_ns = Some(producer.as_nanos() as f64 / events.len() as f64);
    measured
}

/// Eight producers, one event per append, each awaiting its acknowledgement.
fn run_producers(events: &[NewEvent], dir: &Path, fsync: FsyncPolicy) -> Measured {
    let recorder = Recorder::open(dir, &settings(fsync)).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Split by session so each producer owns its sessions' order.
    let mut lanes: Vec<Vec<NewEvent>> = vec![Vec::new(); 8];
    for event in events {
        let lane = (event.session_id.as_uuid().as_u128() % 8) as usize;
        lanes[lane].push(event.clone());
    }
    let cpu0 = process_cpu();
    let started = Instant::now();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for lane in lanes {
            let sink = recorder.sink();
            tasks.push(tokio::spawn(async move {
                for event in lane {
                    sink.append(event).await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    let accepted = started.elapsed();
    let sink = recorder.sink();
    recorder.close().unwrap();
    let sealed = started.elapsed();
    let cpu = process_cpu() - cpu0;
    finish(events.len(), accepted, sealed, &sink, cpu, dir)
}

fn finish(
    events: usize,
    accepted: Duration,
    sealed: Duration,
    sink: &proctor_recorder::Sink,
    cpu: Duration,
    dir: &Path,
) -> Measured {
    let n = events as f64;
    Measured {
        accepted_per_s: n / accepted.as_secs_f64(),
        sealed_per_s: n / sealed.as_secs_f64(),
        append_cpu_ns: None,
        seal_cpu_ns: sink.stats().sealer_cpu_ns as f64 / n,
        events_per_cpu_s: n / cpu.as_secs_f64(),
        bytes_per_event: dir_size(&dir.join("segments")) as f64 / n,
    }
}

/// The baseline: each event as a JSON object of its non-null columns, one per
/// line, through gzip (level 6, the default of gzip(1)), to a file.
fn run_jsonl_gzip(events: &[NewEvent], dir: &Path) -> (f64, f64) {
    let path = dir.join("events.jsonl.gz");
    let started = Instant::now();
    let file = std::fs::File::create(&path).unwrap();
    let mut gz = GzEncoder::new(std::io::BufWriter::new(file), Compression::default());
    let mut seqs = std::collections::HashMap::new();
    let mut id = SessionIdText::default();
    let mut line = Vec::with_capacity(1024);
    for event in events {
        let seq = seqs.entry(event.session_id).or_insert(0u64);
        let event = event.clone().with_seq(*seq);
        *seq += 1;
        let mut object = serde_json::Map::new();
        for (column, value) in event.cells(&mut id).iter() {
            object.insert(column.name().to_string(), json(value));
        }
        line.clear();
        serde_json::to_writer(&mut line, &object).unwrap();
        line.push(b'\n');
        gz.write_all(&line).unwrap();
    }
    let file = gz.finish().unwrap();
    file.into_inner().unwrap().sync_all().unwrap();
    let elapsed = started.elapsed();
    (events.len() as f64 / elapsed.as_secs_f64(), std::fs::metadata(&path).unwrap().len() as f64 / events.len() as f64)
}

fn json(value: Value<'_>) -> serde_json::Value {
    use serde_json::json;
    match value {
        Value::Str(s) => json!(s),
        Value::U64(v) => json!(v),
        Value::I64(v) => json!(v),
        Value::Bool(v) => json!(v),
        Value::Bytes(b) => json!(String::from_utf8_lossy(b)),
        Value::StrList(v) => json!(v),
        Value::OptStrList(v) => json!(v),
        Value::Rows(v) => json!(v),
        Value::Pairs(v) => json!(v.iter().map(|h| [h.name.as_str(), h.value.as_str()]).collect::<Vec<_>>()),
        Value::Counts(v) => {
            json!(v.iter().map(|c| (c.rule.clone(), json!(c.count))).collect::<serde_json::Map<_, _>>())
        }
    }
}

fn report(name: &str, runs: &mut dyn FnMut(&Path) -> Measured, baseline: (f64, f64)) {
    if let Some(filter) = std::env::args().skip(1).find(|a| a.parse::<usize>().is_err() && !a.starts_with('-'))
        && !name.contains(&filter)
    {
        return;
    }
    let mut measured = Vec::new();
    for _ in 0..RUNS {
        let dir = tempfile::tempdir().unwrap();
        measured.push(runs(dir.path()));
    }
    let m = |f: fn(&Measured) -> f64| median(measured.iter().map(f).collect());
    let accepted = m(|x| x.accepted_per_s);
    let bytes = m(|x| x.bytes_per_event);
    let seal = m(|x| x.seal_cpu_ns);
    println!(
        "{name:<34} accepted {:>9.0} ev/s  sealed {:>8.0} ev/s  seal {seal:>5.0} ns/ev  {:>7.0} ev per CPU-s (process)  {:>5.1} B/ev on disk  | vs gzip JSONL: {:>5.2}x speed, {:.2}x size",
        accepted,
        m(|x| x.sealed_per_s),
        m(|x| x.events_per_cpu_s),
        bytes,
        accepted / baseline.0,
        bytes / baseline.1,
    );
    let append: Vec<f64> = measured.iter().filter_map(|x| x.append_cpu_ns).collect();
    if !append.is_empty() {
        let append = median(append);
        println!(
            "{:<34} append {append:.0} ns/ev on the producer's core ({:.0} ev/s per core); append + seal {:.0} ns/ev = {:.0} ev per CPU-second",
            "",
            1e9 / append,
            append + seal,
            1e9 / (append + seal)
        );
    }
    let _ = std::io::stdout().flush();
}

fn main() {
    let count: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1_000_000);
    println!(
        "recorder ingest, {count} events per run, median of {RUNS} runs, on {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for (name, events) in [("mix", mix(count)), ("uniform-200B", uniform(count))] {
        println!("\nworkload {name}: {:.0} bytes per event (canonical encoding)", canonical_size(&events));
        let baseline = {
            let mut speed = Vec::new();
            let mut size = Vec::new();
            for _ in 0..RUNS {
                let dir = tempfile::tempdir().unwrap();
                let (s, b) = run_jsonl_gzip(&events, dir.path());
                speed.push(s);
                size.push(b);
            }
            (median(speed), median(size))
        };
        println!(
            "{:<28} written  {:>9.0} ev/s  {:>6.1} B/event on disk",
            "gzip JSON lines (baseline)", baseline.0, baseline.1
        );
        report(&format!("{name}, batches of 256"), &mut |dir| run_batched(&events, dir), baseline);
        report(
            &format!("{name}, 8 producers"),
            &mut |dir| run_producers(&events, dir, FsyncPolicy::Interval),
            baseline,
        );
        if name == "uniform-200B" {
            let few = &events[..events.len().min(200_000)];
            report(
                &format!("{name}, 8 producers, fsync always"),
                &mut |dir| run_producers(few, dir, FsyncPolicy::Always),
                baseline,
            );
        }
    }
}
