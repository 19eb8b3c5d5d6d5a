//! Terminal keyframes over a real recorder: a long terminal session spread
//! over several sealed segments, indexed in two runs (the second restores
//! the screens the first left from its keyframes), shows at every moment
//! exactly the screen that playing the whole session from its start shows.

use std::ops::ControlFlow;

use proctor_indexer::Indexer;
use proctor_indexer::keyframes::{KEYFRAME_BYTES, KeyframeStore, frames, screen_at};
use proctor_recorder::reader::Reader;
use proctor_recorder::{Recorder, RecorderSettings};
use proctor_schemas::*;
use proctor_terminal::Screen;
use rand::{Rng, SeedableRng};

const START: i64 = 1_780_000_000_000_000_000;

/// Output as a shell and full-screen programs write it.
fn output(rng: &mut impl Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.random_range(1..40) {
        let piece: &[u8] = match rng.random_range(0..16) {
            0 => b"\r\n",
            1 => b"\x1b[32m",
            2 => b"\x1b[0m",
            3 => b"\x1b[1;37;41m",
            4 => b"\x1b[38;5;33m",
            5 => b"\x1b[H\x1b[2J",
            6 => b"\x1b[K",
            7 => b"\x1b[5;10H",
            8 => b"\x1b[3;20r",
            9 => b"\x1b[r",
            10 => b"\x1b[?1049h",
            11 => b"\x1b[?1049l",
            12 => b"\x1b7",
            13 => b"\x1b8",
            _ => b"2026-12-07T10:00:00Z INFO payments: request served in 12 ms ",
        };
        out.extend_from_slice(piece);
    }
    out
}

/// Records a terminal session of about `bytes` of output (with resizes,
/// and a pause of 15 s now and then), sealing every `seal_every` bytes
/// and calling `half_way` once, and returns its id and event count.
fn record(
    sink: &proctor_recorder::Sink,
    rng: &mut impl Rng,
    bytes: usize,
    seal_every: usize,
    mut half_way: impl FnMut(),
) -> (SessionId, u64) {
    let session = SessionId::new();
    let mut now = START;
    let mut events = 0u64;
    let mut append = |body: EventBody, now: i64| {
        let direction = match body {
            EventBody::TerminalOutput(_) => Direction::TargetToClient,
            _ => Direction::ClientToTarget,
        };
        sink.blocking_append(NewEvent::new(session, Timestamp(now), direction, body)).unwrap();
        events += 1;
    };
    let start = SessionStart { resource: Some("bastion".into()), ..SessionStart::new(Protocol::Ssh) };
    append(start.into(), now);
    let pty = PtyRequest { channel_id: Some(0), term: "xterm-256color".into(), width: 80, height: 24 };
    append(pty.into(), now);
    let (mut written, mut since_seal) = (0usize, 0usize);
    while written < bytes {
        now += if rng.random_range(0..200) == 0 { 15_000_000_000 } else { 3_000_000 };
        if rng.random_range(0..150) == 0 {
            let resize =
                Resize { channel_id: Some(0), width: rng.random_range(40..140), height: rng.random_range(10..50) };
            append(resize.into(), now);
            continue;
        }
        let data = output(rng);
        let data_len = data.len();
        written += data_len;
        since_seal += data.len();
        let out = TerminalOutput { channel_id: Some(0), stream: OutputStream::Stdout, data };
        append(out.into(), now);
        if since_seal >= seal_every {
            sink.blocking_seal_now().unwrap();
            since_seal = 0;
        }
        if written >= bytes / 2 && written - data_len < bytes / 2 {
            half_way();
        }
    }
    (session, events)
}

/// What the screen shows after each of `moments` (ascending), played from
/// the session's start (the plain path the keyframes shortcut).
type Seen = Option<(Vec<Vec<proctor_terminal::screen::Run>>, (u16, u16, bool), (u16, u16))>;
fn played(reader: &Reader, session: SessionId, moments: &[u64]) -> Vec<Seen> {
    let mut screen: Option<Screen> = None;
    let mut seen = Vec::new();
    let see = |screen: &Option<Screen>| screen.as_ref().map(|s| (s.lines(), s.cursor(), s.size()));
    reader
        .for_each_session_event(session, 0, |event| {
            match &event.body {
                EventBody::PtyRequest(p) => screen = Some(Screen::new(p.height, p.width)),
                EventBody::Resize(r) => {
                    if let Some(s) = screen.as_mut() {
                        s.resize(r.height, r.width)
                    }
                }
                EventBody::TerminalOutput(o) => {
                    if let Some(s) = screen.as_mut() {
                        s.feed(&o.data)
                    }
                }
                _ => {}
            }
            while seen.len() < moments.len() && moments[seen.len()] == event.seq {
                seen.push(see(&screen));
            }
            Ok(if seen.len() == moments.len() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
        })
        .unwrap();
    seen
}

#[test]
fn the_screen_at_any_moment_is_the_one_played_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::open(dir.path(), &RecorderSettings::default()).unwrap();
    let sink = recorder.sink();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let bytes = 3 * KEYFRAME_BYTES as usize;
    // Indexed half-way, then again at the end by another indexer (a
    // restart): it restores the screen it continues from its keyframes.
    let data_dir = dir.path().to_path_buf();
    let index = || {
        let mut indexer = Indexer::open(&data_dir).unwrap();
        indexer.catch_up().unwrap();
        indexer.finish().unwrap();
    };
    let (session, events) = record(&sink, &mut rng, bytes, 400 << 10, || {
        sink.blocking_seal_now().unwrap();
        index();
    });
    sink.blocking_seal_now().unwrap();
    index();
    let reader = Reader::open(dir.path()).unwrap();
    let segments = reader.segment_numbers().unwrap();
    assert!(segments.len() >= 3, "{} segments", segments.len());
    let store = KeyframeStore::of_data_dir(dir.path());
    let keyframes_of = |store: &KeyframeStore| {
        let mut keyframes = Vec::new();
        let mut seq = events;
        while let Some(k) = store.latest(session, None, seq).unwrap() {
            keyframes.push((k.seq, k.state));
            if k.seq == 0 {
                break;
            }
            seq = k.seq - 1;
        }
        keyframes
    };
    let incremental = keyframes_of(&store);
    // The same keyframes when everything is indexed again from nothing.
    proctor_indexer::reindex(dir.path()).unwrap();
    let keyframes = keyframes_of(&store);
    assert!(incremental == keyframes, "a restarted indexer takes the keyframes one run takes");
    let keyframes: Vec<u64> = keyframes.into_iter().map(|(seq, _)| seq).collect();

    // Keyframes every 256 KiB of output or 10 s, and at the terminal's
    // opening (seq 1, after the session's start).
    assert_eq!(keyframes.last(), Some(&1), "keyframes at {keyframes:?}");
    assert!(keyframes.len() >= 4, "keyframes at {keyframes:?}");

    // The fast path against the plain one, at keyframes, next to them and
    // at random moments.
    let mut moments: Vec<u64> = keyframes.iter().flat_map(|&k| [k.saturating_sub(1), k, k + 1]).collect();
    moments.extend((0..40).map(|_| rng.random_range(0..events)));
    moments.retain(|&s| s < events);
    moments.sort_unstable();
    moments.dedup();
    let slow = played(&reader, session, &moments);
    for (&seq, slow) in moments.iter().zip(slow) {
        let fast = screen_at(&reader, &store, session, None, seq).unwrap();
        match (fast, slow) {
            (None, None) => {}
            (Some(fast), Some((lines, cursor, size))) => {
                assert_eq!(fast.screen.lines(), lines, "seq {seq} (from keyframe {:?})", fast.keyframe_seq);
                assert_eq!(fast.screen.cursor(), cursor, "seq {seq}");
                assert_eq!(fast.screen.size(), size, "seq {seq}");
                assert_eq!(fast.seq, seq);
            }
            (fast, slow) => {
                panic!("seq {seq}: keyframes say {} terminal, playing says {}", fast.is_some(), slow.is_some())
            }
        }
    }

    // Playback frames end where the plain path ends.
    let from = keyframes[keyframes.len() / 2];
    let page = frames(&reader, &store, session, None, from, 200).unwrap();
    let start = page.start.expect("a terminal");
    let last = page.frames.last().expect("frames");
    let mut lines = start.lines.clone();
    for frame in &page.frames {
        lines.resize(frame.rows as usize, Vec::new());
        for (row, runs) in &frame.changed {
            lines[*row as usize] = runs.clone();
        }
    }
    let (want, _, _) = played(&reader, session, &[last.seq]).remove(0).expect("a terminal");
    assert_eq!(lines, want, "after frame {}", last.seq);
    assert!(page.next_seq.is_some());
}
