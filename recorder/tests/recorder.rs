//! The recorder through its public API, on real files in temp dirs.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use proctor_recorder::reader::Reader;
use proctor_recorder::{FsyncPolicy, RecordError, Recorder, RecorderError, RecorderSettings};
use proctor_schemas::*;

/// Every kind, full and minimal, in one session between a start and an end.
fn every_kind(session: SessionId) -> Vec<NewEvent> {
    let mut events = vec![start(session, T0)];
    for kind in EventKind::ALL.iter().copied().filter(|k| !matches!(k, EventKind::SessionStart | EventKind::SessionEnd))
    {
        for body in [sample::full(kind), sample::minimal(kind)] {
            events.push(NewEvent::new(session, Timestamp(T0 + events.len() as i64), sample::direction(kind), body));
        }
    }
    events.push(NewEvent::new(
        session,
        Timestamp(T0 + events.len() as i64),
        Direction::Gateway,
        sample::full(EventKind::SessionEnd),
    ));
    events
}

fn with_seqs(events: &[NewEvent]) -> Vec<Event> {
    events.iter().enumerate().map(|(seq, e)| e.clone().with_seq(seq as u64)).collect()
}

#[test]
fn every_kind_round_trips_through_the_wal_and_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::open(dir.path(), &settings()).unwrap();
    let sink = recorder.sink();
    let session = SessionId::new();
    let events = every_kind(session);
    let mut seqs = Vec::new();
    for event in &events {
        seqs.push(sink.blocking_append(event.clone()).unwrap());
    }
    assert_eq!(seqs, (0..events.len() as u64).collect::<Vec<_>>());

    // Readable from the WAL before sealing ...
    let reader = Reader::open(dir.path()).unwrap();
    assert_eq!(reader.session_events(session).unwrap(), with_seqs(&events));
    let live = reader.sessions().unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].wal_events, events.len() as u64);

    // ... and from the segment after.
    recorder.close().unwrap();
    assert_eq!(reader.session_events(session).unwrap(), with_seqs(&events));
    let sessions = reader.sessions().unwrap();
    assert_eq!(sessions.len(), 1);
    let summary = &sessions[0];
    assert_eq!(summary.protocol.as_deref(), Some("postgres"));
    assert_eq!(summary.resource.as_deref(), Some("prod-db"));
    assert_eq!(summary.subject.as_deref(), Some("ci-deploy"));
    assert_eq!(summary.end_reason.as_deref(), Some("client_closed"));
    assert_eq!((summary.events, summary.wal_events, summary.segments.len()), (events.len() as u64, 0, 1));
    let report = assert_verifies(dir.path());
    assert_eq!((report.segments, report.sessions, report.events), (1, 1, events.len() as u64));
}

#[test]
fn segments_are_zstd_parquet_sorted_with_page_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::open(dir.path(), &settings()).unwrap();
    let sink = recorder.sink();
    let sessions: Vec<SessionId> = (0..5).map(|_| SessionId::new()).collect();
    // Interleaved sessions, so sorting has work to do.
    for s in &sessions {
        sink.blocking_append(start(*s, T0)).unwrap();
    }
    for i in 0..200 {
        for s in sessions.iter().rev() {
            sink.blocking_append(statement(*s, T0 + i, &format!("select {i}"))).unwrap();
        }
    }
    recorder.close().unwrap();
    let manifest = Reader::open(dir.path()).unwrap().manifests().unwrap().remove(0);
    let file = std::fs::File::open(dir.path().join(&manifest.path)).unwrap();
    let reader = parquet::file::serialized_reader::SerializedFileReader::new(file).unwrap();
    use parquet::file::reader::FileReader;
    let metadata = reader.metadata();
    let column = metadata.row_group(0).column(0);
    assert!(matches!(column.compression(), parquet::basic::Compression::ZSTD(_)), "{:?}", column.compression());
    assert!(column.statistics().is_some(), "statistics are written");
    assert!(
        column.column_index_offset().is_some() && column.offset_index_offset().is_some(),
        "the page index is written"
    );
    // Free text carries no statistics; categorical columns do.
    let stats_of = |path: &str| {
        let group = metadata.row_group(0);
        let found = group.columns().iter().find(|c| c.column_path().string() == path);
        found.unwrap_or_else(|| panic!("no column {path}")).statistics().is_some()
    };
    assert!(!stats_of("sql") && !stats_of("params.list.item"), "no statistics on free text");
    assert!(stats_of("kind") && stats_of("command_tag"));
    let sorting = metadata.row_group(0).sorting_columns().cloned().unwrap_or_default();
    assert_eq!(sorting.iter().map(|c| c.column_idx).collect::<Vec<_>>(), vec![0, 1]);
    assert!(manifest.path.starts_with("segments/dt=2025-11-24/"), "{}", manifest.path);

    let mut previous: Option<(SessionId, u64)> = None;
    Reader::open(dir.path())
        .unwrap()
        .for_each_event(|e| {
            let key = (e.session_id, e.seq);
            assert!(previous.is_none_or(|p| p < key), "{previous:?} then {key:?}");
            previous = Some(key);
            Ok(())
        })
        .unwrap();
}

/// Terminal output of `bytes` bytes of log lines (compressible).
fn log_output(session: SessionId, time: i64, bytes: usize) -> NewEvent {
    let mut data = Vec::with_capacity(bytes + 100);
    let mut line = 0u64;
    while data.len() < bytes {
        data.extend_from_slice(format!("{time} INFO request {line} served in {} ms\n", line % 97).as_bytes());
        line += 1;
    }
    data.truncate(bytes);
    NewEvent::new(
        session,
        Timestamp(time),
        Direction::TargetToClient,
        TerminalOutput { channel_id: None, stream: OutputStream::Stdout, data },
    )
}

#[test]
fn raw_bytes_are_stored_uncompressed_only_where_they_do_not_compress() {
    for compressible in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::open(dir.path(), &settings()).unwrap();
        let sink = recorder.sink();
        let session = SessionId::new();
        let mut events = vec![start(session, T0)];
        // Large outputs (written through the WAL file) between small
        // statements (copied through its mapping), in one file, read back
        // from the WAL and from the segment alike.
        for i in 1..=96 {
            let time = T0 + i;
            events.push(match i % 3 {
                0 => statement(session, time, &format!("select {i}")),
                _ if compressible => log_output(session, time, 24 * 1024 + i as usize),
                _ => output(session, time, 24 * 1024 + i as usize),
            });
        }
        events.push(end(session, T0 + 1000));
        for event in &events {
            sink.blocking_append(event.clone()).unwrap();
        }
        let reader = Reader::open(dir.path()).unwrap();
        assert_eq!(reader.session_events(session).unwrap(), with_seqs(&events), "read from the WAL");
        recorder.close().unwrap();
        assert_eq!(reader.session_events(session).unwrap(), with_seqs(&events), "read from the segment");
        assert_verifies(dir.path());

        let manifest = reader.manifests().unwrap().remove(0);
        let file = std::fs::File::open(dir.path().join(&manifest.path)).unwrap();
        let parquet = parquet::file::serialized_reader::SerializedFileReader::new(file).unwrap();
        use parquet::file::reader::FileReader;
        let group = parquet.metadata().row_group(0);
        let codec_of = |path: &str| {
            let column = group.columns().iter().find(|c| c.column_path().string() == path).unwrap();
            (column.compression(), column.compressed_size(), column.uncompressed_size())
        };
        let (data, packed, unpacked) = codec_of("data");
        if compressible {
            assert!(matches!(data, parquet::basic::Compression::ZSTD(_)), "{data:?}");
            assert!(packed * 4 < unpacked, "log lines compress: {packed} of {unpacked}");
        } else {
            assert_eq!(data, parquet::basic::Compression::UNCOMPRESSED);
        }
        // The other columns are compressed either way.
        assert!(matches!(codec_of("sql").0, parquet::basic::Compression::ZSTD(_)));
    }
}

#[test]
fn events_outside_an_open_session_are_refused_and_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::open(dir.path(), &settings()).unwrap();
    let sink = recorder.sink();
    let session = SessionId::new();
    let refused = sink.blocking_append(statement(session, T0, "select 1")).unwrap_err();
    assert!(matches!(&refused, RecordError::Rejected(m) if m.contains("is not open")), "{refused}");

    sink.blocking_append(start(session, T0)).unwrap();
    let twice = sink.blocking_append(start(session, T0)).unwrap_err();
    assert!(twice.to_string().contains("already started"), "{twice}");

    // A batch is all or nothing.
    let other = SessionId::new();
    let batch = vec![statement(session, T0, "select 2"), statement(other, T0, "select 3")];
    assert!(sink.blocking_append_batch(batch).is_err());
    assert_eq!(sink.blocking_append(statement(session, T0, "select 4")).unwrap(), 1, "the refused batch used no seq");

    sink.blocking_append(end(session, T0)).unwrap();
    assert!(sink.blocking_append(statement(session, T0, "select 5")).is_err(), "nothing follows session_end");
    recorder.close().unwrap();
    let events = Reader::open(dir.path()).unwrap().session_events(session).unwrap();
    let sql: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Statement(s) => Some(s.sql.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(sql, vec!["select 4"]);
    assert_verifies(dir.path());
}

#[test]
fn a_second_recorder_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Recorder::open(dir.path(), &settings()).unwrap();
    let second = Recorder::open(dir.path(), &settings()).err().expect("second open must fail");
    assert!(matches!(second, RecorderError::Locked(_)), "{second}");
}

/// Whoever could open the lock file could hold its lock and keep the
/// recorder from starting: it is the recorder's alone, whatever the umask.
#[test]
fn the_lock_file_is_the_recorders_alone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::open(dir.path(), &settings()).unwrap();
    let mode = std::fs::metadata(dir.path().join("recorder.lock")).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    recorder.close().unwrap();
}

#[test]
fn close_ends_open_sessions_with_reason_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::open(dir.path(), &settings()).unwrap();
    let session = SessionId::new();
    recorder.sink().blocking_append(start(session, T0)).unwrap();
    recorder.close().unwrap();
    let events = Reader::open(dir.path()).unwrap().session_events(session).unwrap();
    assert!(matches!(&events.last().unwrap().body, EventBody::SessionEnd(e) if e.reason == EndReason::Shutdown));
    assert!(std::fs::read_dir(dir.path().join("wal")).unwrap().next().is_none(), "a clean close leaves no WAL");
    assert_verifies(dir.path());
}

#[test]
fn segments_roll_by_size_and_age_and_chains_continue_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let settings = RecorderSettings {
        segment_max_bytes: proctor_recorder::ByteSize(16 << 10),
        segment_max_age: Duration::from_millis(300),
        ..settings()
    };
    let recorder = Recorder::open(dir.path(), &settings).unwrap();
    let sink = recorder.sink();
    let session = SessionId::new();
    sink.blocking_append(start(session, T0)).unwrap();
    for i in 0..100 {
        sink.blocking_append(output(session, T0 + i, 1000)).unwrap();
    }
    let reader = Reader::open(dir.path()).unwrap();
    let wait_for = |count: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while reader.manifests().unwrap().len() < count {
            assert!(std::time::Instant::now() < deadline, "segments were not sealed in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(5);
    let sealed = reader.manifests().unwrap().len();
    // Age: one more event, then nothing; the segment seals on its own.
    sink.blocking_append(output(session, T0 + 1000, 10)).unwrap();
    wait_for(sealed + 1);
    // On demand.
    sink.blocking_append(output(session, T0 + 1001, 10)).unwrap();
    let id = sink.blocking_seal_now().unwrap().expect("a segment was sealed");
    assert_eq!(reader.manifests().unwrap().last().unwrap().segment_id, id);
    assert_eq!(sink.blocking_seal_now().unwrap(), None, "nothing left to seal");
    recorder.close().unwrap();

    let manifests = reader.manifests().unwrap();
    assert!(manifests.len() >= 7);
    assert!(manifests.windows(2).all(|w| w[0].segment_id < w[1].segment_id));
    assert!(manifests.iter().skip(1).all(|m| m.sessions[0].chain_in.is_some()), "chains carry across segments");
    // start, 102 outputs, and the session_end written at close.
    assert_eq!(reader.session_events(session).unwrap().len(), 104);
    assert_verifies(dir.path());
}

#[test]
fn concurrent_producers_with_fsync_always_get_dense_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let settings = RecorderSettings { fsync: FsyncPolicy::Always, ..settings() };
    let recorder = Recorder::open(dir.path(), &settings).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    let per_task = 300;
    let sessions: HashMap<SessionId, Vec<u64>> = runtime.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let sink = recorder.sink();
            tasks.push(tokio::spawn(async move {
                let session = SessionId::new();
                let mut seqs = vec![sink.append(start(session, T0)).await.unwrap()];
                for i in 0..per_task {
                    seqs.push(sink.append(statement(session, T0 + i, "select 1")).await.unwrap());
                }
                (session, seqs)
            }));
        }
        let mut out = HashMap::new();
        for task in tasks {
            let (session, seqs) = task.await.unwrap();
            out.insert(session, seqs);
        }
        out
    });
    recorder.close().unwrap();
    let reader = Reader::open(dir.path()).unwrap();
    for (session, seqs) in sessions {
        assert_eq!(seqs, (0..=per_task as u64).collect::<Vec<_>>());
        // Plus the session_end written at close.
        assert_eq!(reader.session_events(session).unwrap().len(), per_task as usize + 2);
    }
    assert_verifies(dir.path());
}

#[test]
fn an_oversized_event_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::open(dir.path(), &settings()).unwrap();
    let sink = recorder.sink();
    let session = SessionId::new();
    sink.blocking_append(start(session, T0)).unwrap();
    let error = sink.blocking_append(output(session, T0, 17 << 20)).unwrap_err();
    assert!(error.to_string().contains("too large to record at once"), "{error}");
    assert_eq!(sink.blocking_append(output(session, T0, 10)).unwrap(), 1);
    recorder.close().unwrap();
    assert_verifies(dir.path());
}

#[test]
fn a_session_id_is_used_once_even_within_one_batch_or_after_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::open(dir.path(), &settings()).unwrap();
    let sink = recorder.sink();
    let session = SessionId::new();
    sink.blocking_append(start(session, T0)).unwrap();
    // Ending and restarting in one batch is refused whole.
    let batch = vec![end(session, T0), start(session, T0)];
    let refused = sink.blocking_append_batch(batch).unwrap_err();
    assert!(refused.to_string().contains("used once"), "{refused}");
    sink.blocking_append(end(session, T0)).unwrap();
    // ... and after the file it ended in was sealed.
    sink.blocking_seal_now().unwrap();
    assert!(sink.blocking_append(start(session, T0)).unwrap_err().to_string().contains("used once"));
    recorder.close().unwrap();
    assert_eq!(Reader::open(dir.path()).unwrap().session_events(session).unwrap().len(), 2);
    assert_verifies(dir.path());
}

#[test]
fn many_open_sessions_fit_however_small_the_wal_files() {
    let dir = tempfile::tempdir().unwrap();
    let settings = RecorderSettings { segment_max_bytes: proctor_recorder::ByteSize(16 << 10), ..settings() };
    let recorder = Recorder::open(dir.path(), &settings).unwrap();
    let sink = recorder.sink();
    // More open sessions than a 16 KiB file's carry record can hold.
    let sessions: Vec<SessionId> = (0..400).map(|_| SessionId::new()).collect();
    for s in &sessions {
        sink.blocking_append(start(*s, T0)).unwrap();
    }
    for s in &sessions {
        sink.blocking_append(statement(*s, T0, "select 1")).unwrap();
        sink.blocking_append(end(*s, T0)).unwrap();
    }
    recorder.close().unwrap();
    let reader = Reader::open(dir.path()).unwrap();
    assert_eq!(reader.sessions().unwrap().len(), 400);
    assert!(reader.sessions().unwrap().iter().all(|s| s.end_reason.as_deref() == Some("client_closed")));
    assert_verifies(dir.path());
}

#[test]
fn a_session_is_read_a_page_at_a_time_across_segments_and_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments, row groups and pages: the session spans several of
    // each, among other sessions' rows.
    let settings = RecorderSettings {
        segment_max_bytes: proctor_recorder::ByteSize(16 << 10),
        row_group_rows: 64,
        page_rows: 8,
        ..settings()
    };
    let recorder = Recorder::open(dir.path(), &settings).unwrap();
    let sink = recorder.sink();
    let sessions: Vec<SessionId> = (0..4).map(|_| SessionId::new()).collect();
    for s in &sessions {
        sink.blocking_append(start(*s, T0)).unwrap();
    }
    for i in 0..300 {
        for s in &sessions {
            sink.blocking_append(statement(*s, T0 + i, &format!("select {i}"))).unwrap();
        }
    }
    let reader = Reader::open(dir.path()).unwrap();
    // Sealing runs behind the appends.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while reader.segment_numbers().unwrap().len() < 3 {
        assert!(std::time::Instant::now() < deadline, "sealed segments, and the rest in the WAL");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!reader.unsealed_wal_numbers().unwrap().is_empty());
    let wanted = sessions[2];
    let page = |from: u64, limit: usize| {
        let mut events = Vec::new();
        reader
            .for_each_session_event(wanted, from, |e| {
                events.push(e);
                Ok(if events.len() == limit {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                })
            })
            .unwrap();
        events
    };
    let all = page(0, usize::MAX);
    assert_eq!(all.len(), 301);
    // Its metadata, from the manifests that mention it and the WAL, counts
    // what the listing of every session counts.
    let one = reader.session(wanted).unwrap().unwrap();
    let listed = reader.sessions().unwrap().into_iter().find(|s| s.session_id == wanted).unwrap();
    // (Sealing may go on between the two reads: the totals stay.)
    assert_eq!((one.events, listed.events), (301, 301));
    assert!(one.segments.len() >= 2, "{one:?}");
    assert!(reader.session(SessionId::new()).unwrap().is_none());
    assert!(all.iter().enumerate().all(|(i, e)| e.session_id == wanted && e.seq == i as u64));
    // Pages, wherever they begin: in a segment, across segments, in the WAL.
    // (Pages are skipped by both sort columns' page index: every start is
    // tried, so no page holding a wanted seq is skipped.)
    let starts = (0..=301).map(|from| (from, 3));
    for (from, limit) in [(0, 10), (37, 50), (150, 1), (290, 20), (301, 5)].into_iter().chain(starts) {
        let got = page(from, limit);
        let expected: Vec<u64> = (from..(from + limit as u64).min(301)).collect();
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), expected, "from {from}, {limit}");
    }
    // Ranges, read narrowed to their rows where a page holds the session
    // alone, against the plain read: every range of every session.
    let ranged = |session: SessionId, from: u64, to: u64| {
        let mut seqs = Vec::new();
        reader
            .for_each_session_event_in(session, from..=to, |e| {
                assert_eq!(e.session_id, session);
                seqs.push(e.seq);
                Ok(std::ops::ControlFlow::Continue(()))
            })
            .unwrap();
        seqs
    };
    for session in [sessions[0], wanted, sessions[3]] {
        for from in (0..=305).step_by(7) {
            for to in [from, from + 1, from + 5, from + 13, from + 40, from + 200, u64::MAX] {
                let expected: Vec<u64> = (from..=to.min(300)).collect();
                assert_eq!(ranged(session, from, to), expected, "{from}..={to}");
            }
        }
    }
    drop(sink);
    recorder.close().unwrap();
    // Sealed now (closing may add the session's end).
    let sealed = Reader::open(dir.path()).unwrap().session_events(wanted).unwrap();
    assert!(sealed.starts_with(&all), "{} events after sealing", sealed.len());
}

#[test]
fn the_wal_tail_is_read_from_an_offset_even_past_a_record_larger_than_the_read_window() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::open(dir.path(), &settings()).unwrap();
    let sink = recorder.sink();
    let session = SessionId::new();
    sink.blocking_append(start(session, T0)).unwrap();
    sink.blocking_append(statement(session, T0 + 1, "select 1")).unwrap();
    let reader = Reader::open(dir.path()).unwrap();
    let number = *reader.unsealed_wal_numbers().unwrap().last().unwrap();
    let (first, offset) = reader.wal_events_from(number, 0).unwrap().unwrap();
    assert_eq!(first.len(), 2);
    // A 6 MiB event (more than one read window), then a small one.
    sink.blocking_append(output(session, T0 + 2, 6 << 20)).unwrap();
    sink.blocking_append(statement(session, T0 + 3, "select 2")).unwrap();
    let (rest, end) = reader.wal_events_from(number, offset).unwrap().unwrap();
    assert_eq!(rest.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
    assert!(end > offset + (6 << 20));
    // Nothing new: nothing read.
    let (none, same) = reader.wal_events_from(number, end).unwrap().unwrap();
    assert!(none.is_empty() && same == end);
    drop(sink);
    recorder.close().unwrap();
}
