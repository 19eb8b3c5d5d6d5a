//! Crash safety of the recorder through the real binary: `proctor generate`
//! is SIGKILLed at random moments (while recording, sealing or recovering),
//! again and again on one data dir. Every event whose append returned must be
//! present exactly once, nothing may be duplicated, and `verify` must pass.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::Hasher;
use std::path::Path;
use std::time::Duration;

use proctor_recorder::Recorder;
use proctor_recorder::reader::Reader;
use proctor_recorder::synth::{Synth, SynthConfig};
use proctor_schemas::{EndReason, Event, EventBody, Protocol, SessionId, SessionIdText, Timestamp, canonical};
use proctor_tests::{TestRng, collect_lines, run, run_ok, signal, spawn, stderr, wait_with_timeout};

const BIN: &str = env!("CARGO_BIN_EXE_proctor");
const START: &str = "2026-11-02T08:00:00Z";
const SESSIONS: u64 = 6000;
const TRIALS: u64 = 24;

fn fingerprint(event: &Event) -> u64 {
    let mut id = SessionIdText::default();
    let mut bytes = Vec::new();
    canonical::encode(&event.cells(&mut id), &mut bytes);
    let mut hasher = DefaultHasher::new();
    hasher.write(&bytes);
    hasher.finish()
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    // Small segments, so kills land in sealing as well as in appending.
    let path = dir.join("proctor.toml");
    std::fs::write(
        &path,
        "data_dir = \"data\"\n[recorder]\nsegment_max_bytes = \"256KiB\"\nfsync_interval = \"50ms\"\n",
    )
    .unwrap();
    path
}

#[test]
fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let config = write_config(scratch.path());
    let data = scratch.path().join("data");
    let bin = Path::new(BIN);
    let mut rng = TestRng::new(20261126);
    let mut acked: HashSet<(SessionId, u64)> = HashSet::new();
    let mut killed_mid_run = 0;

    for trial in 0..TRIALS {
        let seed = 1000 + trial;
        let mut child = spawn(
            bin,
            &[
                "generate",
                "--data-dir",
                data.to_str().unwrap(),
                "--config",
                config.to_str().unwrap(),
                "--sessions",
                &SESSIONS.to_string(),
                "--seed",
                &seed.to_string(),
                "--start",
                START,
                "--print-acks",
                "--log-level",
                "warn",
            ],
        );
        let lines = collect_lines(child.stdout.take().unwrap());
        // Some kills land while the child is still recovering the last crash.
        let delay = if trial % 6 == 0 { rng.range(1, 40) } else { rng.range(40, 900) };
        std::thread::sleep(Duration::from_millis(delay));
        let finished = child.try_wait().unwrap().is_some();
        if !finished {
            signal(&child, libc::SIGKILL);
            let status = wait_with_timeout(&mut child, Duration::from_secs(60));
            killed_mid_run += 1;
            assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
        }
        // Every line printed was printed after its append returned.
        while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
            let (id, seq) = line.split_once(' ').unwrap_or_else(|| panic!("bad ack line {line:?}"));
            assert!(acked.insert((id.parse().unwrap(), seq.parse().unwrap())), "acknowledged twice: {line}");
        }
    }
    assert!(killed_mid_run >= 20, "only {killed_mid_run} of {TRIALS} kills landed mid-run");
    assert!(acked.len() > 10_000, "too few events were acknowledged ({}) for the test to mean much", acked.len());

    // The next start recovers everything.
    Recorder::open(&data, &Default::default()).unwrap().close().unwrap();
    let verified = run(bin, &["verify", "--data-dir", data.to_str().unwrap()]);
    assert!(verified.status.success(), "verify failed after recovery:\n{}", stderr(&verified));

    let mut recorded: HashMap<(SessionId, u64), (u64, Event)> = HashMap::new();
    Reader::open(&data)
        .unwrap()
        .for_each_event(|event| {
            let key = (event.session_id, event.seq);
            let print = fingerprint(&event);
            // Only the events recovery adds are kept whole.
            let keep = matches!(
                &event.body,
                EventBody::SessionEnd(_) | EventBody::SessionStart(_) | EventBody::RecorderRecovery(_)
            );
            let previous = recorded.insert(key, (print, if keep { event } else { placeholder(key) }));
            assert!(previous.is_none(), "event {key:?} is recorded twice");
            Ok(())
        })
        .unwrap();

    for (session, seq) in &acked {
        assert!(recorded.contains_key(&(*session, *seq)), "acknowledged event {session} {seq} is lost");
    }

    // Everything recorded is exactly what the generator produced, except the
    // session ends and housekeeping that recovery added.
    let start = Timestamp::parse_rfc3339(START).unwrap();
    for trial in 0..TRIALS {
        let mut seqs: HashMap<SessionId, u64> = HashMap::new();
        for event in Synth::new(SynthConfig::new(SESSIONS, 1000 + trial, start)) {
            let seq = seqs.entry(event.session_id).or_insert(0);
            let event = event.with_seq(*seq);
            *seq += 1;
            let key = (event.session_id, event.seq);
            let Some((print, kept)) = recorded.get(&key) else { continue };
            if *print == fingerprint(&event) {
                recorded.remove(&key);
            } else {
                // Where the generator was killed, recovery ended the session
                // at the next seq; anything else is a corrupted event.
                let recovered_end =
                    matches!(&kept.body, EventBody::SessionEnd(end) if end.reason == EndReason::Recovered);
                assert!(recovered_end, "event {} {} differs from what was appended", event.session_id, event.seq);
            }
        }
    }
    let mut system_sessions = HashSet::new();
    for ((session, seq), (_, event)) in &recorded {
        match &event.body {
            EventBody::SessionEnd(end) if end.reason == EndReason::Recovered || end.reason == EndReason::Shutdown => {}
            EventBody::SessionStart(start) if start.protocol == Protocol::System => {
                system_sessions.insert(*session);
            }
            EventBody::SessionEnd(_) | EventBody::RecorderRecovery(_) => {}
            _ => panic!("event {session} {seq} was recorded but never appended: {event:?}"),
        }
    }
    assert!(!system_sessions.is_empty(), "recoveries were recorded");
    eprintln!(
        "crash trials: {TRIALS} SIGKILLs ({killed_mid_run} mid-run), {} events acknowledged, all present once; {} recoveries recorded",
        acked.len(),
        system_sessions.len()
    );
    for ((session, _), (_, event)) in &recorded {
        if matches!(event.body, EventBody::RecorderRecovery(_)) {
            assert!(system_sessions.contains(session), "recovery notes belong to system sessions");
        }
    }

    // Sessions are dense from 0, and each ended exactly once.
    let reader = Reader::open(&data).unwrap();
    for summary in reader.sessions().unwrap() {
        assert!(summary.end_reason.is_some(), "session {} was never ended", summary.session_id);
    }
}

fn placeholder(key: (SessionId, u64)) -> Event {
    Event {
        session_id: key.0,
        seq: key.1,
        time: Timestamp(0),
        direction: proctor_schemas::Direction::Gateway,
        body: EventBody::Exec(proctor_schemas::Exec { channel_id: None, command: String::new() }),
    }
}

#[test]
fn a_file_size_limit_below_the_wal_size_refuses_to_start_clearly() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    // A kernel-enforced file size limit (RLIMIT_FSIZE, 256 KiB) below the
    // 64 MiB WAL files, which are allocated whole when created: the recorder
    // cannot reserve its log, so it refuses to start and accepts nothing,
    // instead of failing halfway through a record. SIGXFSZ is ignored so the
    // allocation returns the error.
    let script = format!(
        "trap '' XFSZ; ulimit -f 256; exec {BIN} generate --data-dir {} --sessions 30 --seed 9 --start {START} --print-acks --log-level error",
        data.display()
    );
    let output = std::process::Command::new("sh").arg("-c").arg(&script).output().unwrap();
    assert!(!output.status.success(), "generate must not start without its WAL");
    let message = stderr(&output);
    assert!(message.contains("cannot allocate WAL file") && message.contains("File too large"), "{message}");
    assert!(output.stdout.is_empty(), "nothing was acknowledged");
    // Without the limit, the same data dir works.
    run_ok(
        Path::new(BIN),
        &["generate", "--data-dir", data.to_str().unwrap(), "--sessions", "30", "--seed", "9", "--start", START],
    );
    run_ok(Path::new(BIN), &["verify", "--data-dir", data.to_str().unwrap()]);
}
