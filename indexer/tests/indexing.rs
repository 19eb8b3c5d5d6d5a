//! The indexer over a real recorder (WAL and sealed segments in a temp dir):
//! terminal sessions are found by the commands as they ran, the WAL tail is
//! searchable before it is sealed, and sealing replaces its documents.

use proctor_indexer::{Indexer, SearchIndex, SearchRequest};
use proctor_recorder::{Recorder, RecorderSettings};
use proctor_schemas::*;

fn event(session: SessionId, direction: Direction, body: impl Into<EventBody>) -> NewEvent {
    NewEvent::new(session, Timestamp::now(), direction, body)
}

fn keys(session: SessionId, bytes: &[u8]) -> NewEvent {
    event(session, Direction::ClientToTarget, TerminalInput { data: bytes.to_vec() })
}

fn search(data_dir: &std::path::Path, query: &str) -> (usize, Vec<Hit>) {
    let index = SearchIndex::open(data_dir).unwrap();
    index.refresh().unwrap();
    let result = index.search(&SearchRequest { limit: 100, ..SearchRequest::new(query) }).unwrap();
    (result.total, result.hits)
}

use proctor_indexer::Hit;

#[test]
fn a_terminal_session_is_found_by_the_commands_it_ran_before_and_after_sealing() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::open(dir.path(), &RecorderSettings::default()).unwrap();
    let sink = recorder.sink();
    let session = SessionId::new();
    sink.blocking_append(event(
        session,
        Direction::ClientToTarget,
        SessionStart {
            protocol: Protocol::Ssh,
            resource: Some("bastion".into()),
            subject: Some("dana".into()),
            groups: vec!["sre".into()],
            grant_id: None,
            client_addr: None,
            target_user: Some("ops".into()),
            database: None,
            application_name: None,
            tls: None,
            masking_profile: None,
            message: None,
        },
    ))
    .unwrap();
    // "systemctl restart payments", typed key by key: a slip fixed with
    // backspace, a missing letter inserted after moving left with the
    // arrow keys, then Enter.
    let typed: Vec<&[u8]> = vec![
        b"s", b"y", b"s", b"t", b"e", b"m", b"c", b"t", b"l", b" ", b"r", b"e", b"s", b"x", b"\x7f", b"t", b"a", b"r",
        b"t", b" ", b"p", b"a", b"y", b"m", b"e", b"t", b"s", b"\x1b[D", b"\x1b[D", b"n", b"\x1b[F", b"\r",
    ];
    for k in &typed {
        sink.blocking_append(keys(session, k)).unwrap();
    }
    sink.blocking_append(event(
        session,
        Direction::TargetToClient,
        TerminalOutput {
            stream: OutputStream::Stdout,
            data: b"\x1b[1;31mFailed\x1b[0m to restart payments.service: Unit not found.\r\n".to_vec(),
        },
    ))
    .unwrap();

    // Unsealed: indexed from the WAL.
    let mut indexer = Indexer::open(dir.path()).unwrap();
    let progress = indexer.catch_up().unwrap();
    assert_eq!((progress.segments, progress.wal_events), (0, typed.len() as u64 + 2));
    let (total, hits) = search(dir.path(), "\"systemctl restart payments\"");
    assert_eq!(total, 1, "{hits:#?}");
    assert_eq!(hits[0].kind, "terminal_input");
    assert_eq!(hits[0].text, "systemctl restart payments");
    assert_eq!(hits[0].subject.as_deref(), Some("dana"));
    let (total, hits) = search(dir.path(), "\"failed to restart\" kind:terminal_output");
    assert_eq!(total, 1, "colour codes do not split the words: {hits:#?}");
    // Nothing new: nothing indexed twice.
    assert!(indexer.catch_up().unwrap().is_empty());

    // A restarted indexer; more keystrokes, then the end; the recorder
    // seals everything.
    indexer.finish().unwrap();
    let mut indexer = Indexer::open(dir.path()).unwrap();
    for k in [b"w".as_slice(), b"h", b"o", b"a", b"m", b"i", b"\r"] {
        sink.blocking_append(keys(session, k)).unwrap();
    }
    assert_eq!(indexer.catch_up().unwrap().wal_events, 7);
    // The session's subject is read back from its recorded start.
    assert_eq!(search(dir.path(), "whoami subject:dana").0, 1);
    sink.blocking_append(event(
        session,
        Direction::TargetToClient,
        SessionEnd { reason: EndReason::ClientClosed, message: None },
    ))
    .unwrap();
    drop(sink);
    recorder.close().unwrap();

    let progress = indexer.catch_up().unwrap();
    assert_eq!((progress.segments, progress.replaced_files), (1, 1));
    let events = typed.len() as u64 + 2 + 7 + 1;
    assert_eq!(search(dir.path(), "").0 as u64, events, "the WAL's documents were replaced, not added to");
    let (total, hits) = search(dir.path(), "\"systemctl restart payments\"");
    assert_eq!((total, hits[0].text.as_str()), (1, "systemctl restart payments"));
    assert_eq!(search(dir.path(), "whoami").0, 1);
    indexer.finish().unwrap();
}

#[test]
fn a_round_that_fails_half_way_adds_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let settings = RecorderSettings {
        segment_max_bytes: proctor_recorder::config::ByteSize(64 << 10),
        ..RecorderSettings::default()
    };
    let recorder = Recorder::open(dir.path(), &settings).unwrap();
    let sink = recorder.sink();
    let start = Timestamp(Timestamp::now().0 - 3_600_000_000_000);
    let events: Vec<NewEvent> =
        proctor_recorder::synth::Synth::new(proctor_recorder::synth::SynthConfig::new(60, 3, start)).collect();
    for chunk in events.chunks(64) {
        sink.blocking_append_batch(chunk.to_vec()).unwrap();
    }
    drop(sink);
    recorder.close().unwrap();
    let reader = proctor_recorder::reader::Reader::open(dir.path()).unwrap();
    let manifests = reader.manifests().unwrap();
    assert!(manifests.len() >= 3, "{} segments", manifests.len());
    let mut recorded = 0usize;
    reader
        .for_each_event(|_| {
            recorded += 1;
            Ok(())
        })
        .unwrap();

    // The last segment cannot be read: the round fails after indexing the
    // others, uncommitted.
    let last = dir.path().join(&manifests.last().unwrap().path);
    let original = std::fs::read(&last).unwrap();
    std::fs::write(&last, b"not parquet").unwrap();
    let mut indexer = Indexer::open(dir.path()).unwrap();
    assert!(indexer.catch_up().is_err());
    std::fs::write(&last, &original).unwrap();
    let progress = indexer.catch_up().unwrap();
    assert_eq!(progress.segments as usize, manifests.len());
    assert_eq!(search(dir.path(), "").0, recorded, "every event once");
    indexer.finish().unwrap();
}
