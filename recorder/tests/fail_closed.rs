//! Fail closed, lose nothing: a full disk, a data dir that cannot be written,
//! a sealer that cannot write segments. These tests mount real tmpfs and
//! read-only bind mounts, so they need root (CI runs as root).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use proctor_recorder::reader::Reader;
use proctor_recorder::{ByteSize, RecordError, Recorder, RecorderSettings};
use proctor_schemas::*;

/// A mount that is undone when dropped.
struct Mount {
    path: PathBuf,
}

fn run(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(status.success(), "`{}` failed: these tests need root to mount tmpfs and bind mounts", args.join(" "));
}

impl Mount {
    fn tmpfs(path: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(path).unwrap();
        run(&["mount", "-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", path.to_str().unwrap()]);
        Mount { path: path.to_path_buf() }
    }

    fn read_only_bind(path: &Path) -> Mount {
        let p = path.to_str().unwrap();
        run(&["mount", "--bind", p, p]);
        let mount = Mount { path: path.to_path_buf() };
        run(&["mount", "-o", "remount,ro,bind", p]);
        mount
    }

    fn resize(&self, size: &str) {
        run(&["mount", "-o", &format!("remount,size={size}"), self.path.to_str().unwrap()]);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Small WAL files, so several fit on a small tmpfs.
fn small() -> RecorderSettings {
    RecorderSettings { segment_max_bytes: ByteSize(128 << 10), ..settings() }
}

fn events_of(dir: &Path, session: SessionId) -> Vec<Event> {
    Reader::open(dir).unwrap().session_events(session).unwrap()
}

/// Appends 4 KiB outputs until the recorder refuses one; returns how many it
/// accepted and the refusal.
fn fill(sink: &proctor_recorder::Sink, session: SessionId) -> (u64, RecordError) {
    for i in 0.. {
        if let Err(error) = sink.blocking_append(output(session, T0 + i, 4096)) {
            return (i as u64, error);
        }
        assert!(i < 100_000, "the disk never filled");
    }
    unreachable!()
}

/// Whether a refusal names a full disk (the WAL or the sealer hit it).
fn is_full_disk(error: &RecordError) -> bool {
    matches!(error, RecordError::WalWrite(m) | RecordError::SealerStalled(m) if m.contains("No space left"))
}

#[test]
fn a_full_disk_refuses_appends_and_loses_nothing_accepted() {
    let scratch = tempfile::tempdir().unwrap();
    let mount = Mount::tmpfs(&scratch.path().join("mnt"), "1m");
    let dir = mount.path.join("data");
    let recorder = Recorder::open(&dir, &small()).unwrap();
    let sink = recorder.sink();
    let session = SessionId::new();
    sink.blocking_append(start(session, T0)).unwrap();
    let (accepted, error) = fill(&sink, session);
    assert!(accepted > 10, "only {accepted} events fit");
    assert!(is_full_disk(&error), "{error}");
    // Still full: still refused, clearly, and the recorder is not wedged.
    let again = sink.blocking_append(output(session, T0, 4096)).unwrap_err();
    assert!(is_full_disk(&again), "{again}");
    // Sealing may need space too: then close says so and keeps the WAL.
    if let Err(closed) = recorder.close() {
        assert!(closed.to_string().contains("WAL is kept"), "{closed}");
    }

    mount.resize("64m");
    Recorder::open(&dir, &small()).unwrap().close().unwrap();
    let events = events_of(&dir, session);
    // Start, every accepted output, and the session's end (written at close
    // if the current WAL file still had room, else by recovery).
    assert_eq!(events.len() as u64, 1 + accepted + 1);
    assert!(
        matches!(&events.last().unwrap().body, EventBody::SessionEnd(e) if matches!(e.reason, EndReason::Shutdown | EndReason::Recovered))
    );
    assert!(events.iter().enumerate().all(|(i, e)| e.seq == i as u64));
    assert_verifies(&dir);
}

#[test]
fn appends_resume_once_space_is_freed() {
    let scratch = tempfile::tempdir().unwrap();
    let mount = Mount::tmpfs(&scratch.path().join("mnt"), "1m");
    let dir = mount.path.join("data");
    let recorder = Recorder::open(&dir, &small()).unwrap();
    let sink = recorder.sink();
    let session = SessionId::new();
    sink.blocking_append(start(session, T0)).unwrap();
    let (accepted, _) = fill(&sink, session);
    mount.resize("64m");
    let seq = sink.blocking_append(output(session, T0, 4096)).unwrap();
    assert_eq!(seq, accepted + 1, "refused events took no seq");
    sink.blocking_append(end(session, T0)).unwrap();
    recorder.close().unwrap();
    assert_eq!(events_of(&dir, session).len() as u64, accepted + 3);
    assert_verifies(&dir);
}

#[test]
fn an_unwritable_data_dir_is_refused_at_open() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let _ro = Mount::read_only_bind(&dir);
    let error = Recorder::open(&dir, &settings()).err().expect("open must fail");
    let message = error.to_string();
    assert!(message.contains("Read-only file system") && message.contains(dir.to_str().unwrap()), "{message}");
}

#[test]
fn a_sealer_that_cannot_write_stalls_appends_then_catches_up() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("data");
    let settings = RecorderSettings { segment_max_bytes: ByteSize(8 << 10), max_unsealed_segments: 2, ..settings() };
    let recorder = Recorder::open(&dir, &settings).unwrap();
    let sink = recorder.sink();
    let session = SessionId::new();
    sink.blocking_append(start(session, T0)).unwrap();
    let ro = Mount::read_only_bind(&dir.join("segments"));

    let mut accepted = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    let stalled = loop {
        match sink.blocking_append(output(session, T0 + accepted as i64, 1024)) {
            Ok(_) => accepted += 1,
            Err(error) => break error,
        }
        assert!(Instant::now() < deadline, "appends never stalled");
    };
    assert!(matches!(&stalled, RecordError::SealerStalled(m) if m.contains("Read-only")), "{stalled}");
    assert!(sink.unsealed_segments() >= 2);

    drop(ro);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match sink.blocking_append(output(session, T0, 1024)) {
            Ok(_) => {
                accepted += 1;
                break;
            }
            Err(RecordError::SealerStalled(_)) => std::thread::sleep(Duration::from_millis(100)),
            Err(other) => panic!("{other}"),
        }
        assert!(Instant::now() < deadline, "sealing never caught up");
    }
    sink.blocking_append(end(session, T0)).unwrap();
    recorder.close().unwrap();
    assert_eq!(events_of(&dir, session).len() as u64, accepted + 2);
    assert_verifies(&dir);
}
