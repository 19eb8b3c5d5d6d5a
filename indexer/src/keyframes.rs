//! Terminal keyframes: a snapshot of each terminal's screen every
//! [`KEYFRAME_BYTES`] of output or [`KEYFRAME_NANOS`] of activity, taken
//! as sealed segments are indexed, so that the screen at any moment of a
//! session is its latest keyframe before that moment plus at most that
//! much output, not the whole session played from its start.
//!
//! Derived data, like the rest of the index: kept in the index directory
//! (`keyframes/SESSION`, one append-only file per session), rebuilt with
//! it, never a source of truth. A keyframe is a [`Screen::keyframe`]: the
//! escape sequences that put a fresh screen of its size in the state the
//! terminal was in after event `seq`.
//!
//! A file is a run of records: `seq` u64, `time` i64 (ns), `channel` u32,
//! `rows` u16, `cols` u16, the state's length u32 (little-endian), then
//! the state. A record cut short (a crash while appending) ends the file
//! for readers and is cut off before the next append.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use proctor_recorder::reader::Reader;
use proctor_schemas::{Event, EventBody, SessionId, Timestamp};
use proctor_terminal::Screen;
use proctor_terminal::screen::Run;

use crate::{IndexError, Result};

/// Output between two keyframes of a terminal, at most (about).
pub const KEYFRAME_BYTES: u64 = 256 << 10;
/// Time between two keyframes of a terminal that shows output, at most
/// (about), once it showed at least [`KEYFRAME_MIN_BYTES`] since the last
/// (less is played faster than a keyframe is read).
pub const KEYFRAME_NANOS: i64 = 10_000_000_000;
pub const KEYFRAME_MIN_BYTES: u64 = 4 << 10;

const HEADER: usize = 8 + 8 + 4 + 2 + 2 + 4;
/// A keyframe larger than this is not read back (a screen of 1000 × 1000
/// styled cells is well under it).
const MAX_STATE: usize = 64 << 20;

/// A terminal's screen after event `seq`.
#[derive(Clone, Debug, PartialEq)]
pub struct Keyframe {
    pub seq: u64,
    pub time: Timestamp,
    pub channel: u32,
    pub rows: u16,
    pub cols: u16,
    pub state: Vec<u8>,
}

/// The keyframes of an index directory.
#[derive(Clone, Debug)]
pub struct KeyframeStore {
    dir: PathBuf,
}

impl KeyframeStore {
    /// The keyframes of the index of `data_dir`.
    pub fn of_data_dir(data_dir: &Path) -> KeyframeStore {
        KeyframeStore::in_index(&crate::index::index_dir(data_dir))
    }

    pub(crate) fn in_index(index_dir: &Path) -> KeyframeStore {
        KeyframeStore { dir: index_dir.join("keyframes") }
    }

    fn path(&self, session: SessionId) -> PathBuf {
        self.dir.join(session.to_string())
    }

    /// Appends a keyframe of one session after the last one its file
    /// holds (one already there, from a round rolled back, is not added
    /// twice; a torn record is cut off). `tail` is the file's length of
    /// whole records and last seq, if known (else the file is scanned); it
    /// is kept up to date. Returns the file written.
    fn append(&self, session: SessionId, frame: &Keyframe, tail: &mut Option<(u64, Option<u64>)>) -> Result<PathBuf> {
        let path = self.path(session);
        if frame.state.len() > MAX_STATE {
            return Ok(path);
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| IndexError::open(&self.dir, e))?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| IndexError::open(&path, e))?;
        let (whole, last) = match *tail {
            Some(known) => known,
            None => scan(&mut file, &path)?,
        };
        *tail = Some((whole, last));
        if last.is_some_and(|last| last >= frame.seq) {
            return Ok(path);
        }
        let length = file.metadata().map_err(|e| IndexError::open(&path, e))?.len();
        if whole < length {
            file.set_len(whole).map_err(|e| IndexError::open(&path, e))?;
        }
        let mut record = Vec::with_capacity(HEADER + frame.state.len());
        record.extend_from_slice(&frame.seq.to_le_bytes());
        record.extend_from_slice(&frame.time.unix_nanos().to_le_bytes());
        record.extend_from_slice(&frame.channel.to_le_bytes());
        record.extend_from_slice(&frame.rows.to_le_bytes());
        record.extend_from_slice(&frame.cols.to_le_bytes());
        record.extend_from_slice(&(frame.state.len() as u32).to_le_bytes());
        record.extend_from_slice(&frame.state);
        file.write_all(&record).map_err(|e| IndexError::open(&path, e))?;
        *tail = Some((whole + record.len() as u64, Some(frame.seq)));
        Ok(path)
    }

    /// The latest keyframe of `session` at or before `seq` (of `channel`,
    /// if given).
    pub fn latest(&self, session: SessionId, channel: Option<u32>, seq: u64) -> Result<Option<Keyframe>> {
        let path = self.path(session);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(IndexError::open(&path, e)),
        };
        let size = file.metadata().map_err(|e| IndexError::open(&path, e))?.len();
        let mut reader = BufReader::new(file);
        let mut found: Option<(Keyframe, u64, usize)> = None;
        let mut at = 0u64;
        while let Some((frame, length)) = read_header(&mut reader, &path)? {
            let end = at + (HEADER + length) as u64;
            // A record cut short (being appended, or torn) is not one.
            if frame.seq > seq || end > size {
                break;
            }
            if channel.is_none_or(|c| c == frame.channel) {
                found = Some((frame, at, length));
            }
            at = end;
            if reader.seek_relative(length as i64).is_err() {
                break;
            }
        }
        let Some((mut frame, offset, length)) = found else { return Ok(None) };
        let mut file = reader.into_inner();
        file.seek(SeekFrom::Start(offset + HEADER as u64)).map_err(|e| IndexError::open(&path, e))?;
        let mut state = vec![0; length];
        if file.read_exact(&mut state).is_err() {
            return Ok(None);
        }
        frame.state = state;
        Ok(Some(frame))
    }
}

/// Reads a record's header; its state is left unread (its length is the
/// returned `usize`; the frame's `state` is empty).
fn read_header(reader: &mut impl Read, path: &Path) -> Result<Option<(Keyframe, usize)>> {
    let mut header = [0u8; HEADER];
    match reader.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(IndexError::open(path, e)),
    }
    let u64_at = |i: usize| u64::from_le_bytes(header[i..i + 8].try_into().unwrap_or_default());
    let u16_at = |i: usize| u16::from_le_bytes(header[i..i + 2].try_into().unwrap_or_default());
    let u32_at = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap_or_default());
    let length = u32_at(24) as usize;
    if length > MAX_STATE {
        return Ok(None);
    }
    let frame = Keyframe {
        seq: u64_at(0),
        time: Timestamp::from_unix_nanos(u64_at(8) as i64),
        channel: u32_at(16),
        rows: u16_at(20),
        cols: u16_at(22),
        state: Vec::new(),
    };
    Ok(Some((frame, length)))
}

/// The length of a file's whole records and the last one's seq.
fn scan(file: &mut std::fs::File, path: &Path) -> Result<(u64, Option<u64>)> {
    file.seek(SeekFrom::Start(0)).map_err(|e| IndexError::open(path, e))?;
    let length = file.metadata().map_err(|e| IndexError::open(path, e))?.len();
    let mut reader = BufReader::new(&mut *file);
    let (mut whole, mut last) = (0u64, None);
    while let Some((frame, size)) = read_header(&mut reader, path)? {
        let end = whole + (HEADER + size) as u64;
        if end > length {
            break;
        }
        whole = end;
        last = Some(frame.seq);
        if reader.seek_relative(size as i64).is_err() {
            break;
        }
    }
    Ok((whole, last))
}

/// What an event does to a session's terminals.
pub(crate) enum TerminalEvent<'a> {
    Open { channel: u32, rows: u32, cols: u32 },
    Resize { channel: u32, rows: u32, cols: u32 },
    Output { channel: u32, data: &'a [u8] },
}

pub(crate) fn terminal_event(body: &EventBody) -> Option<TerminalEvent<'_>> {
    match body {
        EventBody::PtyRequest(p) => {
            Some(TerminalEvent::Open { channel: p.channel_id.unwrap_or(0), rows: p.height, cols: p.width })
        }
        EventBody::Resize(r) => {
            Some(TerminalEvent::Resize { channel: r.channel_id.unwrap_or(0), rows: r.height, cols: r.width })
        }
        EventBody::TerminalOutput(o) => {
            Some(TerminalEvent::Output { channel: o.channel_id.unwrap_or(0), data: &o.data })
        }
        _ => None,
    }
}

/// A session's terminal screen at a moment.
pub struct Shown {
    pub screen: Screen,
    pub channel: u32,
    /// The last event played onto it (or the keyframe's).
    pub seq: u64,
    pub time: Timestamp,
    /// The keyframe it started from, if any.
    pub keyframe_seq: Option<u64>,
}

/// The screen of a session's terminal after event `seq` (of `channel`, or
/// of the terminal of its latest keyframe, or its first terminal): its
/// latest keyframe, then the events after it. `None` if the session has
/// no terminal by then.
pub fn screen_at(
    reader: &Reader,
    store: &KeyframeStore,
    session: SessionId,
    channel: Option<u32>,
    seq: u64,
) -> Result<Option<Shown>> {
    let start = store.latest(session, channel, seq)?;
    let keyframe_seq = start.as_ref().map(|k| k.seq);
    let mut shown = start.map(|k| Shown {
        screen: Screen::restore(k.rows.into(), k.cols.into(), &k.state),
        channel: k.channel,
        seq: k.seq,
        time: k.time,
        keyframe_seq,
    });
    let Some(from) = keyframe_seq.map_or(Some(0), |s| s.checked_add(1)) else { return Ok(shown) };
    if from > seq {
        return Ok(shown);
    }
    let mut wanted = channel.or(shown.as_ref().map(|s| s.channel));
    reader.for_each_session_event_in(session, from..=seq, |event| {
        match terminal_event(&event.body) {
            Some(TerminalEvent::Open { channel, rows, cols }) if wanted.is_none_or(|w| w == channel) => {
                wanted = Some(channel);
                shown = Some(Shown {
                    screen: Screen::new(rows, cols),
                    channel,
                    seq: event.seq,
                    time: event.time,
                    keyframe_seq,
                });
            }
            Some(other) => {
                if let Some(shown) = shown.as_mut() {
                    play(shown, &other);
                }
            }
            None => {}
        }
        if let Some(shown) = shown.as_mut() {
            shown.seq = event.seq;
            shown.time = event.time;
        }
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(shown)
}

/// Plays a resize or output of the shown channel.
fn play(shown: &mut Shown, event: &TerminalEvent<'_>) -> bool {
    match *event {
        TerminalEvent::Resize { channel, rows, cols } if channel == shown.channel => {
            shown.screen.resize(rows, cols);
            true
        }
        TerminalEvent::Output { channel, data } if channel == shown.channel => {
            shown.screen.feed(data);
            true
        }
        _ => false,
    }
}

/// What changed on a terminal's screen at a moment of playback.
#[derive(Clone, Debug)]
pub struct Frame {
    /// The last event in it.
    pub seq: u64,
    /// When its first event happened.
    pub time: Timestamp,
    pub rows: u16,
    pub cols: u16,
    /// Cursor row, column, shown.
    pub cursor: (u16, u16, bool),
    /// The rows that changed, with their new runs (all rows after a resize).
    pub changed: Vec<(u16, Vec<Run>)>,
}

/// A screen as shown: what [`Shown`] holds, read out.
#[derive(Clone, Debug)]
pub struct View {
    pub channel: u32,
    pub seq: u64,
    pub time: Timestamp,
    pub keyframe_seq: Option<u64>,
    pub rows: u16,
    pub cols: u16,
    pub cursor: (u16, u16, bool),
    pub lines: Vec<Vec<Run>>,
}

impl Shown {
    pub fn view(&self) -> View {
        let (rows, cols) = self.screen.size();
        View {
            channel: self.channel,
            seq: self.seq,
            time: self.time,
            keyframe_seq: self.keyframe_seq,
            rows,
            cols,
            cursor: self.screen.cursor(),
            lines: self.screen.lines(),
        }
    }
}

/// Frames of playback after event `after` of a session's terminal.
pub struct Frames {
    /// The screen after `after` (what the first frame changes).
    pub start: Option<View>,
    pub frames: Vec<Frame>,
    /// Where the next page starts, if the session has more events.
    pub next_seq: Option<u64>,
}

/// Changes closer than this to the first of a frame go in the same frame.
const FRAME_NANOS: i64 = 20_000_000;
/// Output played for one page of frames, at most (about); events read;
/// text drawn (a resize redraws every row).
const PAGE_BYTES: usize = 2 << 20;
const PAGE_EVENTS: usize = 50_000;
const PAGE_TEXT: usize = 4 << 20;

/// Up to `limit` frames of the terminal shown at `after` (see
/// [`screen_at`]), from the events after it.
pub fn frames(
    reader: &Reader,
    store: &KeyframeStore,
    session: SessionId,
    channel: Option<u32>,
    after: u64,
    limit: usize,
) -> Result<Frames> {
    let Some(mut shown) = screen_at(reader, store, session, channel, after)? else {
        return Ok(Frames { start: None, frames: Vec::new(), next_seq: None });
    };
    let start = shown.view();
    let mut lines = start.lines.clone();
    let mut frames: Vec<Frame> = Vec::new();
    // The frame being gathered: its last event, its time, whether a resize
    // makes it redraw every row.
    let mut open: Option<(u64, Timestamp, bool)> = None;
    let (mut played, mut events, mut drawn) = (0usize, 0usize, 0usize);
    let Some(first) = after.checked_add(1) else {
        return Ok(Frames { start: Some(start), frames, next_seq: None });
    };
    let (mut next_seq, mut more) = (first, false);
    // Closes the open frame: the rows that changed since the last one.
    let mut close = |open: (u64, Timestamp, bool), shown: &Shown, frames: &mut Vec<Frame>, drawn: &mut usize| {
        let (seq, time, full) = open;
        let now = shown.screen.lines();
        let changed: Vec<(u16, Vec<Run>)> = now
            .iter()
            .enumerate()
            .filter(|(row, line)| full || lines.get(*row) != Some(*line))
            .map(|(row, line)| (row as u16, line.clone()))
            .collect();
        *drawn += changed.iter().flat_map(|(_, runs)| runs).map(|run| run.text.len()).sum::<usize>();
        lines = now;
        let (rows, cols) = shown.screen.size();
        frames.push(Frame { seq, time, rows, cols, cursor: shown.screen.cursor(), changed });
    };
    reader.for_each_session_event(session, first, |event| {
        if frames.len() >= limit || played >= PAGE_BYTES || events >= PAGE_EVENTS || drawn >= PAGE_TEXT {
            more = true;
            return Ok(ControlFlow::Break(()));
        }
        next_seq = event.seq + 1;
        events += 1;
        let Some(change) = terminal_event(&event.body) else { return Ok(ControlFlow::Continue(())) };
        let resized = match change {
            TerminalEvent::Resize { channel, .. } if channel == shown.channel => true,
            TerminalEvent::Output { channel, data } if channel == shown.channel => {
                played += data.len();
                false
            }
            _ => return Ok(ControlFlow::Continue(())),
        };
        if let Some(gathered) = open
            && (resized || event.time.unix_nanos() - gathered.1.unix_nanos() >= FRAME_NANOS)
        {
            close(gathered, &shown, &mut frames, &mut drawn);
            open = None;
        }
        play(&mut shown, &change);
        open = Some(match open {
            Some((_, time, full)) => (event.seq, time, full),
            None => (event.seq, event.time, resized),
        });
        Ok(ControlFlow::Continue(()))
    })?;
    if let Some(gathered) = open {
        close(gathered, &shown, &mut frames, &mut drawn);
    }
    Ok(Frames { start: Some(start), frames, next_seq: more.then_some(next_seq) })
}

struct Tracked {
    screen: Screen,
    /// Output since the last keyframe.
    bytes: u64,
    last_keyframe: i64,
    dirty: bool,
}

/// Terminals played at once for keyframes, per session and in all.
const MAX_SCREENS_PER_SESSION: usize = 16;
const MAX_SCREENS: usize = 1024;

/// Takes keyframes of the terminals of the sealed events an indexer reads,
/// in order.
pub(crate) struct Keyframer {
    store: KeyframeStore,
    screens: HashMap<(SessionId, u32), Tracked>,
    /// Channels that are not terminals.
    plain: HashSet<(SessionId, u32)>,
    /// Files written since the last commit.
    touched: HashSet<PathBuf>,
    /// By session, its file's length of whole records and last seq.
    tails: HashMap<SessionId, Option<(u64, Option<u64>)>>,
}

impl Keyframer {
    pub(crate) fn new(index_dir: &Path) -> Keyframer {
        Keyframer {
            store: KeyframeStore::in_index(index_dir),
            screens: HashMap::new(),
            plain: HashSet::new(),
            touched: HashSet::new(),
            tails: HashMap::new(),
        }
    }

    /// Forgets the screens played (after a rollback): they are restored
    /// from the keyframes as needed.
    pub(crate) fn forget(&mut self) {
        self.screens.clear();
        self.plain.clear();
        self.tails.clear();
    }

    /// Plays one sealed event; takes a keyframe when one is due.
    pub(crate) fn apply(&mut self, reader: &Reader, event: &Event) -> Result<()> {
        match &event.body {
            EventBody::SessionEnd(_) => {
                self.screens.retain(|(session, _), _| *session != event.session_id);
                self.plain.retain(|(session, _)| *session != event.session_id);
                self.tails.remove(&event.session_id);
                return Ok(());
            }
            // A terminal whose program ended is let go (what it may still
            // show is played from its last keyframe).
            EventBody::ExitStatus(exit) => {
                let key = (event.session_id, exit.channel_id.unwrap_or(0));
                if self.screens.remove(&key).is_some() {
                    self.plain.insert(key);
                }
                return Ok(());
            }
            _ => {}
        }
        let Some(change) = terminal_event(&event.body) else { return Ok(()) };
        let time = event.time.unix_nanos();
        let (key, opened) = match change {
            TerminalEvent::Open { channel, rows, cols } => {
                // Terminals played at once are bounded, per session and in
                // all (each is up to a few MiB): one past the bound gets no
                // keyframes (a replay plays it from its start).
                let of_session = self.screens.keys().filter(|(session, _)| *session == event.session_id).count();
                if of_session >= MAX_SCREENS_PER_SESSION || self.screens.len() >= MAX_SCREENS {
                    self.plain.insert((event.session_id, channel));
                    return Ok(());
                }
                let tracked = Tracked { screen: Screen::new(rows, cols), bytes: 0, last_keyframe: time, dirty: false };
                self.plain.remove(&(event.session_id, channel));
                self.screens.insert((event.session_id, channel), tracked);
                ((event.session_id, channel), true)
            }
            TerminalEvent::Resize { channel, .. } | TerminalEvent::Output { channel, .. } => {
                ((event.session_id, channel), false)
            }
        };
        if self.plain.contains(&key) {
            return Ok(());
        }
        if !self.screens.contains_key(&key) {
            // Not seen in this run: restored from its keyframes (a channel
            // without any never opened a terminal).
            let opened_before = self.store.latest(key.0, Some(key.1), event.seq)?.is_some();
            let restored = match event.seq.checked_sub(1) {
                // (Under the same guard as playing, below: what tripped the
                // emulator before trips it again here.)
                Some(seq) if opened_before => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    screen_at(reader, &self.store, key.0, Some(key.1), seq)
                }))
                .unwrap_or(Ok(None))?,
                _ => None,
            };
            let Some(shown) = restored.filter(|s| s.channel == key.1) else {
                self.plain.insert(key);
                return Ok(());
            };
            let tracked =
                Tracked { screen: shown.screen, bytes: 0, last_keyframe: shown.time.unix_nanos(), dirty: false };
            self.screens.insert(key, tracked);
        }
        let Some(tracked) = self.screens.get_mut(&key) else { return Ok(()) };
        // The emulator reads what a target wrote: should it trip over
        // something, the terminal gets no more keyframes (a replay plays
        // it from the last one), and indexing goes on.
        let played = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match change {
            TerminalEvent::Open { .. } => {}
            TerminalEvent::Resize { rows, cols, .. } => {
                tracked.screen.resize(rows, cols);
                // A resize redraws the screen: it counts as that much.
                let (rows, cols) = tracked.screen.size();
                tracked.bytes += u64::from(rows) * u64::from(cols);
                tracked.dirty = true;
            }
            TerminalEvent::Output { data, .. } => {
                tracked.screen.feed(data);
                tracked.bytes += data.len() as u64;
                tracked.dirty = true;
            }
        }));
        if played.is_err() {
            tracing::warn!(session = %key.0, channel = key.1, seq = event.seq, "the terminal emulator failed on this output; no more keyframes for this terminal");
            self.screens.remove(&key);
            self.plain.insert(key);
            return Ok(());
        }
        let Some(tracked) = self.screens.get_mut(&key) else { return Ok(()) };
        // A terminal's opening is kept too: it says the channel is one.
        let timely = time - tracked.last_keyframe >= KEYFRAME_NANOS && tracked.bytes >= KEYFRAME_MIN_BYTES;
        let due = opened || (tracked.dirty && (tracked.bytes >= KEYFRAME_BYTES || timely));
        if due && let Some(state) = tracked.screen.keyframe() {
            let (rows, cols) = tracked.screen.size();
            let frame = Keyframe { seq: event.seq, time: event.time, channel: key.1, rows, cols, state };
            let tail = self.tails.entry(key.0).or_default();
            let path = self.store.append(key.0, &frame, tail)?;
            self.touched.insert(path);
            tracked.bytes = 0;
            tracked.last_keyframe = time;
            tracked.dirty = false;
        }
        Ok(())
    }

    /// Makes the keyframes written so far durable (before the index's
    /// commit says their events are indexed).
    pub(crate) fn sync(&mut self) -> Result<()> {
        for path in self.touched.drain() {
            let file = std::fs::File::open(&path).map_err(|e| IndexError::open(&path, e))?;
            file.sync_data().map_err(|e| IndexError::open(&path, e))?;
        }
        Ok(())
    }
}
