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
    event(
        session,
        Direction::ClientToTarget,
        TerminalInput { channel_id: None, data: bytes.to_vec(), ..Default::default() },
    )
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
            channel_id: None,
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

/// What became of a statement, read from the recording itself: the plain
/// path the indexer's join of each statement with its answers (across
/// rounds, WAL files, segments and restarts) is checked against.
#[derive(Debug, Default, PartialEq)]
struct Fate {
    outcome: Option<String>,
    rule: Option<String>,
    review: Option<String>,
    rows: Option<u64>,
    bytes: Option<u64>,
    duration_ns: Option<u64>,
    sqlstate: Option<String>,
}

/// The fate, its tags, and whether a result or error answered it.
fn fate_in(events: &[Event], seq: u64) -> (Fate, Vec<String>, bool) {
    let mut fate = Fate::default();
    let mut tags = Vec::new();
    let mut done = false;
    let sum = |slot: &mut Option<u64>, n: u64| *slot = Some(slot.unwrap_or(0) + n);
    for event in events {
        match &event.body {
            EventBody::PolicyDecision(d) if d.ref_seq == Some(seq) => {
                fate.outcome = Some(d.outcome.as_str().to_string());
                fate.rule = d.rule.clone();
                fate.review = d.review_id.clone();
            }
            EventBody::Result(r) if r.ref_seq == Some(seq) => {
                tags.extend(r.command_tag.clone());
                sum(&mut fate.rows, r.row_count);
                sum(&mut fate.bytes, r.byte_count);
                sum(&mut fate.duration_ns, r.duration_ns);
                done = true;
            }
            EventBody::Error(e) if e.ref_seq == Some(seq) => {
                if fate.sqlstate.is_none() {
                    fate.sqlstate = e.sqlstate.clone();
                }
                done = true;
            }
            _ => {}
        }
    }
    if done && fate.outcome.is_none() {
        fate.outcome = Some("allow".into());
    }
    (fate, tags, done)
}

/// Checks every statement's (and prepared statement's) document against
/// the recording: all of them, or (while sessions run) those answered so
/// far. Returns how many.
fn check_fates(dir: &std::path::Path, sessions: &[SessionId], answered_only: bool, seed: u64) -> usize {
    let reader = proctor_recorder::reader::Reader::open(dir).unwrap();
    let index = SearchIndex::open(dir).unwrap();
    index.refresh().unwrap();
    let mut checked = 0;
    for session in sessions {
        let events = reader.session_events(*session).unwrap();
        for statement in events.iter().filter(|e| matches!(e.body, EventBody::Statement(_) | EventBody::Prepare(_))) {
            let (mut expected, tags, done) = fate_in(&events, statement.seq);
            if answered_only && !done {
                continue;
            }
            // An execution inherits its Parse's approval (the unnamed
            // statement's, only right after it).
            if let EventBody::Statement(s) = &statement.body
                && let Some(name) = &s.statement_name
                && expected.rule.is_none()
            {
                let parse = events.iter().rev().find(|e| {
                    e.seq < statement.seq && matches!(&e.body, EventBody::Prepare(p) if &p.statement_name == name)
                });
                if let Some(parse) = parse.filter(|p| !name.is_empty() || statement.seq <= p.seq + 2) {
                    let (decided, _, _) = fate_in(&events, parse.seq);
                    if decided.outcome.as_deref() == Some("allow") && decided.rule.is_some() {
                        (expected.outcome, expected.rule, expected.review) =
                            (decided.outcome, decided.rule, decided.review);
                    }
                }
            }
            let query = format!("session:{session} seq:{}", statement.seq);
            let found = index.search(&SearchRequest { limit: 5, ..SearchRequest::new(query.clone()) }).unwrap();
            assert_eq!(found.total, 1, "seed {seed}: {query}");
            let hit = &found.hits[0];
            let got = Fate {
                outcome: hit.outcome.clone(),
                rule: hit.rule.clone(),
                review: hit.review_id.clone(),
                rows: hit.rows,
                bytes: hit.bytes,
                duration_ns: hit.duration_ns,
                sqlstate: hit.sqlstate.clone(),
            };
            assert_eq!(got, expected, "seed {seed}: {query} (answered only: {answered_only})");
            for tag in tags {
                let by_tag = format!("{query} tag:\"{tag}\"");
                let found = index.search(&SearchRequest::new(by_tag.clone())).unwrap();
                assert_eq!(found.total, 1, "seed {seed}: {by_tag}");
            }
            checked += 1;
        }
    }
    checked
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn a_statement_knows_its_fate_however_rounds_seals_and_restarts_cut_it_from_its_answers() {
    // Seeds 1 and 5 keep one indexer; the others restart it now and then.
    // After a restart, a statement whose answers it read from the WAL
    // before may show less until their segment is indexed (what the tail
    // knew is not kept across runs): the intermediate checks stop there,
    // the final one stands.
    for seed in [1u64, 5, 7, 42] {
        let restarts = seed > 5;
        let mut restarted = false;
        let dir = tempfile::tempdir().unwrap();
        // Small WAL files: statements and their answers land in different
        // files and segments, and rounds fall anywhere between them.
        let settings =
            RecorderSettings { segment_max_bytes: proctor_recorder::config::ByteSize(8 << 10), ..Default::default() };
        let recorder = Recorder::open(dir.path(), &settings).unwrap();
        let sink = recorder.sink();
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut indexer = Indexer::open(dir.path()).unwrap();
        let sessions: Vec<SessionId> = (0..4).map(|_| SessionId::new()).collect();
        // Per session: its next seq, and statements still waiting (seq,
        // how many results they still give).
        let mut next = vec![0u64; sessions.len()];
        let mut waiting: Vec<Vec<(u64, u64)>> = vec![Vec::new(); sessions.len()];
        let append = |s: usize, direction, body: EventBody, next: &mut Vec<u64>| {
            sink.blocking_append(event(sessions[s], direction, body)).unwrap();
            next[s] += 1;
            next[s] - 1
        };
        let decision = |rng: &mut Rng, seq: u64| {
            let (outcome, rule, review) = match rng.below(3) {
                0 => (PolicyOutcome::Block, "ci/drop", None),
                1 => (PolicyOutcome::Hold, "ci/ddl", Some(format!("r_{seq}"))),
                _ => (PolicyOutcome::Allow, "ci/ddl", Some(format!("r_{seq}"))),
            };
            let decision = PolicyDecision {
                outcome,
                grant_id: None,
                rule: Some(rule.into()),
                review_id: review,
                ref_seq: Some(seq),
                message: None,
            };
            (outcome, decision)
        };
        for s in 0..sessions.len() {
            let start = SessionStart {
                resource: Some("db".into()),
                subject: Some(format!("agent-{s}")),
                client_addr: Some(format!("10.0.0.{s}:5{s}000")),
                ..SessionStart::new(Protocol::Postgres)
            };
            append(s, Direction::Gateway, start.into(), &mut next);
        }
        for step in 0..700 {
            let s = rng.below(sessions.len() as u64) as usize;
            match rng.below(8) {
                0 | 1 => {
                    // A simple query, of one statement or several (several
                    // results answer it).
                    let sql = format!("update t set n = {step} where id = {}", rng.below(100));
                    let statement = Statement { sql, statement_name: None, portal: None, params: vec![] };
                    let seq = append(s, Direction::ClientToTarget, statement.into(), &mut next);
                    if rng.below(4) == 0 {
                        let (_, decided) = decision(&mut rng, seq);
                        append(s, Direction::Gateway, decided.into(), &mut next);
                    }
                    waiting[s].push((seq, 1 + rng.below(3)));
                }
                2 => {
                    // The extended protocol: a Parse decided on (refused
                    // with an error, or allowed), then its executions.
                    // (The unnamed statement in the seeds without restarts:
                    // a restarted indexer does not look its Parse up.)
                    let name = match rng.below(4) {
                        3 if !restarts => String::new(),
                        n => format!("s{n}"),
                    };
                    let sql = format!("delete from t where id = $1 -- {step}");
                    let prepare = Prepare { statement_name: name.clone(), sql: sql.clone() };
                    let seq = append(s, Direction::ClientToTarget, prepare.into(), &mut next);
                    let (outcome, decided) = decision(&mut rng, seq);
                    if rng.below(2) == 0 {
                        append(s, Direction::Gateway, decided.into(), &mut next);
                        if outcome != PolicyOutcome::Allow {
                            let refused = ErrorReport {
                                ref_seq: Some(seq),
                                severity: Some("ERROR".into()),
                                sqlstate: Some("42501".into()),
                                message: "Proctor refused it".into(),
                                detail: None,
                            };
                            append(s, Direction::Gateway, refused.into(), &mut next);
                            continue;
                        }
                    }
                    let execute = Statement {
                        sql,
                        statement_name: Some(name),
                        portal: Some(String::new()),
                        params: vec![Some(step.to_string())],
                    };
                    let seq = append(s, Direction::ClientToTarget, execute.into(), &mut next);
                    waiting[s].push((seq, 1));
                }
                3 | 4 if !waiting[s].is_empty() => {
                    // The oldest waiting statement of the session gets a
                    // result (or an error, its last word).
                    let (seq, left) = waiting[s][0];
                    let body: EventBody = if rng.below(4) == 0 {
                        waiting[s].remove(0);
                        ErrorReport {
                            ref_seq: Some(seq),
                            severity: Some("ERROR".into()),
                            sqlstate: Some(format!("4{:04}", rng.below(10_000))),
                            message: "failed".into(),
                            detail: None,
                        }
                        .into()
                    } else {
                        if left == 1 {
                            waiting[s].remove(0);
                        } else {
                            waiting[s][0].1 -= 1;
                        }
                        let rows = rng.below(5_000);
                        let command = ["UPDATE", "BEGIN", "COMMIT", "INSERT 0"][rng.below(4) as usize];
                        StatementResult {
                            ref_seq: Some(seq),
                            command_tag: Some(format!("{command} {rows}")),
                            row_count: rows,
                            byte_count: rng.below(100_000),
                            duration_ns: rng.below(3_000_000_000),
                            ..Default::default()
                        }
                        .into()
                    };
                    append(s, Direction::TargetToClient, body, &mut next);
                }
                5 => {
                    // A round of the indexer, anywhere (now and then a new
                    // indexer, which holds nothing of what came before):
                    // what it has read of each answered statement is
                    // already on it.
                    if restarts && rng.below(5) == 0 {
                        indexer.finish().unwrap();
                        indexer = Indexer::open(dir.path()).unwrap();
                        restarted = true;
                    }
                    indexer.catch_up().unwrap();
                    if !restarted && rng.below(3) == 0 {
                        check_fates(dir.path(), &sessions, true, seed);
                    }
                }
                _ => {
                    let notice = Notice {
                        severity: Some("NOTICE".into()),
                        sqlstate: None,
                        message: "x".repeat(200),
                        detail: None,
                    };
                    append(s, Direction::TargetToClient, notice.into(), &mut next);
                }
            }
        }
        // Some statements never get an answer before their session ends.
        for s in 0..sessions.len() {
            let end = SessionEnd { reason: EndReason::ClientClosed, message: None };
            append(s, Direction::Gateway, end.into(), &mut next);
        }
        indexer.catch_up().unwrap();
        drop(sink);
        recorder.close().unwrap();
        indexer.catch_up().unwrap();
        indexer.finish().unwrap();

        let index = SearchIndex::open(dir.path()).unwrap();
        index.refresh().unwrap();
        let all: usize = next.iter().map(|&n| n as usize).sum();
        let total = index.search(&SearchRequest { limit: 1, ..SearchRequest::new("") }).unwrap().total;
        assert_eq!(total, all, "seed {seed}: every event once");
        let checked = check_fates(dir.path(), &sessions, false, seed);
        assert!(checked > 100, "seed {seed}: {checked} statements");
    }
}

#[test]
fn an_answer_read_from_the_wal_completes_a_statement_read_from_a_sealed_segment() {
    let dir = tempfile::tempdir().unwrap();
    let settings =
        RecorderSettings { segment_max_bytes: proctor_recorder::config::ByteSize(8 << 10), ..Default::default() };
    let recorder = Recorder::open(dir.path(), &settings).unwrap();
    let sink = recorder.sink();
    let session = SessionId::new();
    let append = |direction, body: EventBody| sink.blocking_append(event(session, direction, body)).unwrap();
    let start = SessionStart {
        resource: Some("db".into()),
        subject: Some("ci".into()),
        ..SessionStart::new(Protocol::Postgres)
    };
    append(Direction::Gateway, start.into());
    let statement = Statement { sql: "update t set n = 1".into(), statement_name: None, portal: None, params: vec![] };
    append(Direction::ClientToTarget, statement.into());
    // Filler until the statement's WAL file is sealed, before the indexer
    // ever reads it from the WAL.
    let started = std::time::Instant::now();
    while proctor_recorder::reader::Reader::open(dir.path()).unwrap().segment_numbers().unwrap().is_empty() {
        let notice = Notice { severity: Some("NOTICE".into()), sqlstate: None, message: "x".repeat(500), detail: None };
        append(Direction::TargetToClient, notice.into());
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "the WAL file is never sealed");
    }
    let mut indexer = Indexer::open(dir.path()).unwrap();
    indexer.catch_up().unwrap();
    let result =
        StatementResult { ref_seq: Some(1), command_tag: Some("UPDATE 7".into()), row_count: 7, ..Default::default() };
    append(Direction::TargetToClient, result.into());
    indexer.catch_up().unwrap();
    assert_eq!(check_fates(dir.path(), &[session], true, 0), 1);
    let (total, hits) = search(dir.path(), "kind:statement tag:UPDATE rows:7");
    assert_eq!((total, hits[0].tag.as_deref()), (1, Some("UPDATE 7")));
    drop(sink);
    recorder.close().unwrap();
    indexer.catch_up().unwrap();
    assert_eq!(check_fates(dir.path(), &[session], false, 0), 1);
}

/// A simple query of thousands of statements answers with thousands of
/// results: the statement sums them, keeps a bounded set of distinct tags,
/// and its document is put in again once per round, not once per result.
#[test]
fn a_statement_answered_thousands_of_times_stays_one_document() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::open(dir.path(), &RecorderSettings::default()).unwrap();
    let sink = recorder.sink();
    let session = SessionId::new();
    let append = |direction, body: EventBody| sink.blocking_append(event(session, direction, body)).unwrap();
    let start = SessionStart {
        resource: Some("db".into()),
        subject: Some("ci".into()),
        ..SessionStart::new(Protocol::Postgres)
    };
    append(Direction::Gateway, start.into());
    let sql = "update t set n = 1; ".repeat(3000);
    append(Direction::ClientToTarget, Statement { sql, statement_name: None, portal: None, params: vec![] }.into());
    let mut indexer = Indexer::open(dir.path()).unwrap();
    indexer.catch_up().unwrap();
    for n in 0..3000u64 {
        let result = StatementResult {
            ref_seq: Some(1),
            command_tag: Some(format!("UPDATE {n}")),
            row_count: 1,
            ..Default::default()
        };
        append(Direction::TargetToClient, result.into());
        if n % 1000 == 999 {
            indexer.catch_up().unwrap();
        }
    }
    indexer.catch_up().unwrap();
    let (total, hits) = search(dir.path(), "kind:statement rows:3000 tag:UPDATE");
    assert_eq!(total, 1, "{hits:#?}");
    assert_eq!(search(dir.path(), "tag:\"UPDATE 31\" kind:statement").0, 1, "the first distinct tags are kept");
    assert_eq!(search(dir.path(), "tag:\"UPDATE 2999\" kind:statement").0, 0, "not every one of them");
    assert_eq!(search(dir.path(), "").0, 3002, "every event once");
    drop(sink);
    recorder.close().unwrap();
}
