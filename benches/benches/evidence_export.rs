//! Evidence export and offline verification: events per second of
//! `proctor export` (a signed bundle of whole sessions with a proof for
//! every event, and its renderings) and of `proctor verify --bundle`, over
//! a recording of `proctor generate`'s mix, side by side with the floor any
//! export stands on: reading every segment of the recording once.
//!
//! Rows (medians of the rounds, each on a fresh copy of the recording):
//! - `read all segments`: every row of every segment decoded (the baseline);
//! - `bundle, events and proofs`: the signed bundle alone, no renderings;
//! - `bundle with renderings`: what `proctor export` writes (report.html,
//!   statements.csv, ocsf.jsonl, asciicast);
//! - `verify --bundle`: the whole offline check of that bundle.
//!
//! `cargo bench -p proctor-benches --bench evidence_export [-- SESSIONS [ROUNDS]]`
//! (default 12,500 sessions, about 1M events, and 3 rounds).

use std::time::Instant;

use proctor_benches::{dir_size, median};
use proctor_recorder::evidence::{self, ExportRequest};
use proctor_recorder::keys::{ManifestKey, PinnedKey};
use proctor_recorder::layout::Layout;
use proctor_recorder::reader::Reader;
use proctor_recorder::synth::{Synth, SynthConfig};
use proctor_recorder::{Recorder, RecorderSettings, segment};
use proctor_replay_server::export::{self, Format};
use proctor_schemas::{SessionId, Timestamp};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let sessions: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(12_500);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);

    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let started = Instant::now();
    let recorder = Recorder::open(&data, &RecorderSettings { sealer_nice: 0, ..RecorderSettings::default() }).unwrap();
    let sink = recorder.sink();
    let events: Vec<_> = Synth::new(SynthConfig::new(sessions, 1, Timestamp(1_764_000_000_000_000_000))).collect();
    let recorded = events.len();
    for chunk in events.chunks(1024) {
        sink.append_slice_blocking(chunk).unwrap();
    }
    drop(events);
    recorder.close().unwrap();
    let reader = Reader::open(&data).unwrap();
    let wanted: Vec<SessionId> = reader
        .sessions()
        .unwrap()
        .into_iter()
        .filter(|s| !matches!(s.protocol.as_deref(), Some("control" | "system")))
        .map(|s| s.session_id)
        .collect();
    println!(
        "recording: {} data sessions, {recorded} events, {} segments, {:.0} MiB, recorded in {:.1} s",
        wanted.len(),
        reader.manifests().unwrap().len(),
        dir_size(&data.join("segments")) as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    let key = ManifestKey::load(&Layout::new(&data).keys_dir()).unwrap();
    let pinned = PinnedKey::Key(key.verifying_key());

    let (mut scan, mut bare, mut full, mut verify) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut bundle_events, mut bundle_bytes, mut proofs_bytes) = (0u64, 0u64, 0u64);
    for round in 0..rounds {
        // Baseline: every row of every segment, read once.
        let started = Instant::now();
        let mut rows = 0usize;
        for manifest in reader.manifests().unwrap() {
            segment::for_each_batch(&data.join(&manifest.path), |batch| {
                rows += batch.num_rows();
                Ok(())
            })
            .unwrap();
        }
        let seconds = started.elapsed().as_secs_f64();
        scan.push(rows as f64 / seconds);

        // The bundle alone.
        let out = work.path().join(format!("bare-{round}"));
        let no_extras = |_: &[proctor_schemas::Event], _: &mut dyn evidence::Renderings| Ok(());
        let started = Instant::now();
        let exported = evidence::export(&ExportRequest {
            data_dir: &data,
            sessions: &wanted,
            exported_by: "bench",
            exported_at: Timestamp::now(),
            reason: None,
            selection: None,
            out: &out,
            extras: &no_extras,
        })
        .unwrap();
        bare.push(exported.events as f64 / started.elapsed().as_secs_f64());
        std::fs::remove_dir_all(&out).unwrap();

        // What `proctor export` writes, then its verification.
        let aside = work.path().join(format!("full-{round}"));
        std::fs::create_dir_all(&aside).unwrap();
        let started = Instant::now();
        let prepared = export::prepare(&export::Request {
            data_dir: &data,
            sessions: &wanted,
            selection: None,
            exported_by: "bench",
            reason: Some("benchmark"),
            format: Format::Bundle,
            one_file: false,
            aside: &aside,
        })
        .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        full.push(prepared.exported.events as f64 / seconds);
        bundle_events = prepared.exported.events;
        bundle_bytes = dir_size(&prepared.written);
        proofs_bytes = std::fs::metadata(prepared.written.join(evidence::PROOFS_FILE)).unwrap().len()
            + std::fs::metadata(prepared.written.join(evidence::LEAVES_FILE)).unwrap().len();
        if round == 0 {
            let mut files: Vec<(u64, String)> = walk(&prepared.written);
            files.sort();
            let big: Vec<String> = files
                .iter()
                .rev()
                .take(6)
                .map(|(bytes, name)| format!("{name} {:.1} MiB", *bytes as f64 / (1 << 20) as f64))
                .collect();
            println!("largest files: {}", big.join(", "));
        }
        let started = Instant::now();
        let report = evidence::verify_bundle(&prepared.written, Some(&pinned)).unwrap();
        assert!(report.ok(), "{:?}", report.problems.first());
        verify.push(report.events as f64 / started.elapsed().as_secs_f64());
        std::fs::remove_dir_all(&aside).unwrap();
    }
    let scan = median(scan);
    let row = |name: &str, rate: f64| {
        println!("{name:<30} {:>12.0} events/s   {:>5.2}x the baseline", rate, rate / scan);
    };
    println!(
        "{bundle_events} events in the bundle ({} sessions), {:.0} MiB ({:.0} MiB of proofs)",
        wanted.len(),
        bundle_bytes as f64 / (1 << 20) as f64,
        proofs_bytes as f64 / (1 << 20) as f64
    );
    row("read all segments (baseline)", scan);
    row("bundle, events and proofs", median(bare));
    row("bundle with renderings", median(full));
    row("verify --bundle", median(verify));
}

/// Every file under `dir`: its size and its path relative to `dir`.
fn walk(dir: &std::path::Path) -> Vec<(u64, String)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                let name = entry.path().strip_prefix(dir).unwrap().display().to_string();
                found.push((meta.len(), name));
            }
        }
    }
    found
}
