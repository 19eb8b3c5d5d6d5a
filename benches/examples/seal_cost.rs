//! Sealing CPU per event as a gateway's recorder sees it: pgbench-like
//! statement and result events appended two at a time, a WAL file's worth
//! per round, with idle time between rounds (a live gateway seals every few
//! seconds, and the allocator returns memory to the system in between).
//!
//! With `SEAL_COST_BULK=1`, terminal output instead: 32 KiB events of
//! incompressible bytes, as `cat` of a binary file over SSH records them,
//! the cost printed per GiB.
//!
//! `cargo run --release -p proctor-benches --example seal_cost [-- ROUNDS [IDLE_MS [SEGMENT_MIB]]]`

use std::time::{Duration, Instant};

use proctor_recorder::{ByteSize, FsyncPolicy, Recorder, RecorderSettings};
use proctor_schemas::*;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(6);
    let idle = Duration::from_millis(args.next().and_then(|a| a.parse().ok()).unwrap_or(1500));
    let segment_mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let dir = tempfile::tempdir().unwrap();
    let settings = RecorderSettings {
        fsync: FsyncPolicy::Interval,
        segment_max_bytes: ByteSize(segment_mib << 20),
        sealer_nice: 0,
        ..RecorderSettings::default()
    };
    let recorder = Recorder::open(dir.path(), &settings).unwrap();
    let sink = recorder.sink();
    let sessions: Vec<SessionId> = (0..8).map(|i| SessionId::from_parts(1_764_000_000_000 + i, i as u128)).collect();
    let now = || Timestamp::now();
    for &s in &sessions {
        let start = SessionStart {
            protocol: Protocol::Postgres,
            resource: Some("bench-db".into()),
            subject: Some("bench".into()),
            client_addr: Some("127.0.0.1:50000".into()),
            target_user: Some("app".into()),
            database: Some("app".into()),
            application_name: Some("pgbench".into()),
            groups: Vec::new(),
            grant_id: None,
            tls: None,
            masking_profile: None,
            message: None,
        };
        sink.append_slice_blocking(&[NewEvent::new(s, now(), Direction::Gateway, start)]).unwrap();
    }
    let bulk = std::env::var_os("SEAL_COST_BULK").is_some();
    // Incompressible bytes to cut 32 KiB events from (xorshift).
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..(8usize << 20) / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect();
    const CHUNK: usize = 32 << 10;
    // About a WAL file per round (138 WAL bytes per event).
    let per_round = if bulk { ((segment_mib << 20) as usize) / CHUNK } else { ((segment_mib << 20) / 138) as usize };
    let mut seq = 0u64;
    let mut costs = Vec::new();
    for round in 0..rounds {
        let (events0, sealed0, cpu0, wal0) = {
            let s = sink.stats();
            (s.events, s.segments_sealed, s.sealer_cpu_ns, s.wal_bytes)
        };
        for _ in 0..per_round {
            let s = sessions[(seq % 8) as usize];
            if bulk {
                let at = (seq as usize * 4099) % (noise.len() - CHUNK);
                let output = TerminalOutput {
                    channel_id: Some(0),
                    stream: OutputStream::Stdout,
                    data: noise[at..at + CHUNK].to_vec(),
                };
                sink.append_slice_blocking(&[NewEvent::new(s, now(), Direction::TargetToClient, output)]).unwrap();
                seq += 1;
                continue;
            }
            let aid = seq * 7919 % 1_000_000;
            let statement = Statement {
                sql: format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"),
                statement_name: None,
                portal: None,
                params: Vec::new(),
            };
            let result = StatementResult {
                ref_seq: Some(seq),
                command_tag: Some("SELECT 1".into()),
                columns: vec!["abalance".into()],
                row_count: 1,
                byte_count: 40,
                duration_ns: 41_000,
                ..StatementResult::default()
            };
            sink.append_slice_blocking(&[
                NewEvent::new(s, now(), Direction::ClientToTarget, statement),
                NewEvent::new(s, now(), Direction::TargetToClient, result),
            ])
            .unwrap();
            seq += 1;
        }
        let waited = Instant::now();
        while sink.stats().segments_sealed == sealed0 && waited.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(idle);
        let s = sink.stats();
        let events = (s.events - events0) as f64;
        let ns = (s.sealer_cpu_ns - cpu0) as f64 / events;
        let gib = (s.wal_bytes - wal0) as f64 / f64::from(1u32 << 30);
        println!(
            "round {round}: {} segments sealed, sealing {ns:.0} ns/event ({:.2} s/GiB of WAL), {:.0} WAL bytes/event",
            s.segments_sealed - sealed0,
            (s.sealer_cpu_ns - cpu0) as f64 / 1e9 / gib,
            (s.wal_bytes - wal0) as f64 / events
        );
        if round > 0 {
            costs.push(ns);
        }
    }
    recorder.close().unwrap();
    let s = sink.stats();
    println!("all told: {:.0} ns/event over {} events", s.sealer_cpu_ns as f64 / s.events as f64, s.events);
    costs.sort_by(f64::total_cmp);
    println!("median sealing CPU: {:.0} ns/event ({} rounds after the first)", costs[costs.len() / 2], costs.len());
}
