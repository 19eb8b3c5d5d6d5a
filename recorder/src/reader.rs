//! Reading recordings back: sessions and their events, in order, across
//! sealed segments and the WAL files not yet sealed. Read-only; safe beside a
//! running recorder.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::ops::ControlFlow;
use std::path::Path;

use proctor_schemas::arrow::BatchReader;
use proctor_schemas::manifest::{Manifest, ManifestSession};
use proctor_schemas::{Column, Event, EventBody, SessionId, Timestamp, canonical};

use crate::layout::Layout;
use crate::wal::{self, Record};
use crate::{RecorderError, Result, segment};

/// A session as the recordings describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSummary {
    pub session_id: SessionId,
    pub protocol: Option<String>,
    pub resource: Option<String>,
    pub subject: Option<String>,
    pub first_time: Option<Timestamp>,
    pub last_time: Option<Timestamp>,
    /// Set once the session's `session_end` is recorded.
    pub end_reason: Option<String>,
    pub events: u64,
    /// Segments holding its sealed events.
    pub segments: Vec<u64>,
    /// Events still in the WAL.
    pub wal_events: u64,
}

impl SessionSummary {
    fn new(session_id: SessionId) -> Self {
        SessionSummary {
            session_id,
            protocol: None,
            resource: None,
            subject: None,
            first_time: None,
            last_time: None,
            end_reason: None,
            events: 0,
            segments: Vec::new(),
            wal_events: 0,
        }
    }

    fn saw_time(&mut self, time: Timestamp) {
        self.first_time = Some(self.first_time.map_or(time, |t| t.min(time)));
        self.last_time = Some(self.last_time.map_or(time, |t| t.max(time)));
    }
}

/// How much of a WAL file is read at a time by [`Reader::wal_events_from`].
const WAL_WINDOW: usize = 4 << 20;

/// Reads a data dir (or an exported copy of one).
pub struct Reader {
    layout: Layout,
}

/// A snapshot of what is sealed and what is still in the WAL.
struct Snapshot {
    manifests: Vec<Manifest>,
    /// WAL files without a manifest, with their decoded events.
    wal: Vec<(u64, Vec<Event>)>,
}

impl Reader {
    pub fn open(data_dir: &Path) -> Result<Reader> {
        if !data_dir.is_dir() {
            return Err(RecorderError::Io {
                context: "not a data dir",
                path: data_dir.to_path_buf(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        Ok(Reader { layout: Layout::new(data_dir) })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The numbers of the sealed segments, in order (a directory listing;
    /// no manifest is read).
    pub fn segment_numbers(&self) -> Result<Vec<u64>> {
        self.layout.manifest_numbers()
    }

    /// One segment's manifest.
    pub fn manifest(&self, number: u64) -> Result<Manifest> {
        read_manifest(&self.layout.manifest_path(number))
    }

    /// Segment `number`'s manifest if its text mentions `id_text` at all: a
    /// byte search costs microseconds where parsing a manifest of thousands
    /// of sessions costs milliseconds, and most segments do not hold a given
    /// session.
    fn manifest_mentioning(&self, number: u64, id_text: &str) -> Result<Option<Manifest>> {
        match self.manifest_text_mentioning(number, id_text)? {
            Some((path, bytes)) => parse_manifest(&path, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Segment `number`'s manifest path and text, if the text mentions
    /// `id_text`.
    fn manifest_text_mentioning(&self, number: u64, id_text: &str) -> Result<Option<(std::path::PathBuf, Vec<u8>)>> {
        let path = self.layout.manifest_path(number);
        let bytes = fs::read(&path).map_err(RecorderError::io("cannot read manifest", &path))?;
        Ok(memchr::memmem::find(&bytes, id_text.as_bytes()).is_some().then_some((path, bytes)))
    }

    /// Every manifest, in segment order.
    pub fn manifests(&self) -> Result<Vec<Manifest>> {
        self.layout.manifest_numbers()?.into_iter().map(|n| read_manifest(&self.layout.manifest_path(n))).collect()
    }

    fn snapshot(&self, wanted: Option<SessionId>) -> Result<Snapshot> {
        // WAL files are listed before manifests: a file sealed in between is
        // then found in the manifests and skipped; one that vanished while
        // being read was sealed, and the snapshot is taken again.
        let id_text = wanted.map(|id| id.to_string());
        'retry: for _ in 0..5 {
            let wal_numbers = self.layout.wal_numbers()?;
            let numbers = self.layout.manifest_numbers()?;
            let sealed: BTreeSet<u64> = numbers.iter().copied().collect();
            // For one session, only the manifests that mention it.
            let manifests = match &id_text {
                None => numbers.into_iter().map(|n| self.manifest(n)).collect::<Result<Vec<_>>>()?,
                Some(id) => numbers
                    .into_iter()
                    .filter_map(|n| self.manifest_mentioning(n, id).transpose())
                    .collect::<Result<Vec<_>>>()?,
            };
            let mut wal = Vec::new();
            for number in wal_numbers.into_iter().filter(|n| !sealed.contains(n)) {
                let path = self.layout.wal_path(number);
                let bytes = match fs::read(&path) {
                    Ok(bytes) => bytes,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue 'retry,
                    Err(e) => return Err(RecorderError::io("cannot read WAL file", &path)(e)),
                };
                let scan = wal::scan(&bytes, number);
                let mut events = Vec::new();
                for record in scan.records {
                    let Record::Event(row) = record else { continue };
                    let row = canonical::decode(row).map_err(|e| RecorderError::corrupt(&path, e.to_string()))?;
                    if let Some(id) = &id_text {
                        let matches = row.cells().get(Column::SessionId) == Some(proctor_schemas::Value::Str(id));
                        if !matches {
                            continue;
                        }
                    }
                    events.push(Event::from_row(row).map_err(|e| RecorderError::corrupt(&path, e.to_string()))?);
                }
                wal.push((number, events));
            }
            return Ok(Snapshot { manifests, wal });
        }
        Err(RecorderError::corrupt(self.layout.wal_dir(), "WAL files keep vanishing while being read"))
    }

    /// Every session, with its metadata, ordered by id (that is, by start).
    pub fn sessions(&self) -> Result<Vec<SessionSummary>> {
        summaries(self.snapshot(None)?)
    }

    /// One session's metadata, reading only the manifests that mention it.
    pub fn session(&self, id: SessionId) -> Result<Option<SessionSummary>> {
        Ok(summaries(self.snapshot(Some(id))?)?.into_iter().find(|s| s.session_id == id))
    }

    /// One session's events in seq order.
    pub fn session_events(&self, session_id: SessionId) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        self.for_each_session_event(session_id, 0, |event| {
            events.push(event);
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(events)
    }

    /// Calls `f` with one session's events in seq order, from `from_seq` on,
    /// until it says stop: a page of a long session costs a page. Only the
    /// segments whose manifests list the session at those seqs are opened,
    /// and in them only the row groups and pages that may hold it; then the
    /// session's events still in the WAL. Safe beside a running recorder: a
    /// WAL file sealed meanwhile is read from its segment.
    pub fn for_each_session_event(
        &self,
        session_id: SessionId,
        from_seq: u64,
        f: impl FnMut(Event) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        self.for_each_session_event_in(session_id, from_seq..=u64::MAX, f)
    }

    /// [`Reader::for_each_session_event`] for the events of `seqs` only:
    /// where a page holds the session alone, only the rows of those seqs
    /// are read (a few events of a long session cost their rows).
    pub fn for_each_session_event_in(
        &self,
        session_id: SessionId,
        seqs: std::ops::RangeInclusive<u64>,
        mut f: impl FnMut(Event) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        let (from_seq, last) = (*seqs.start(), *seqs.end());
        let id_text = session_id.to_string();
        // Every event passed on has the next seq: nothing twice, whatever is
        // sealed while this runs.
        let mut next = from_seq;
        let mut done_segments = BTreeSet::new();
        for _ in 0..5 {
            // WAL files are listed before segments (see `snapshot`).
            let wal_numbers = self.layout.wal_numbers()?;
            for number in self.segment_numbers()? {
                if !done_segments.insert(number) {
                    continue;
                }
                // A long session is in every manifest: its own entry says
                // whether this segment holds seqs still wanted, without
                // parsing the whole manifest.
                let Some((path, bytes)) = self.manifest_text_mentioning(number, &id_text)? else { continue };
                if session_entry(&bytes, &id_text).is_some_and(|entry| entry.last_seq < next) {
                    continue;
                }
                let manifest = parse_manifest(&path, &bytes)?;
                let listed = manifest.sessions.iter().any(|s| s.session_id == id_text && s.last_seq >= next);
                if !listed {
                    continue;
                }
                if next > last {
                    return Ok(());
                }
                let stop = self.session_rows(&manifest, &id_text, next..=last, |event| {
                    if event.seq < next {
                        return Ok(ControlFlow::Continue(()));
                    }
                    if event.seq > last {
                        return Ok(ControlFlow::Break(()));
                    }
                    next = event.seq + 1;
                    f(event)
                })?;
                if stop {
                    return Ok(());
                }
            }
            let mut vanished = false;
            for number in wal_numbers.into_iter().filter(|n| !done_segments.contains(n)) {
                let Some((events, _)) = self.wal_events_from(number, 0)? else {
                    // Sealed meanwhile: read it, and what follows it, from
                    // the segments first, to keep seq order.
                    vanished = true;
                    break;
                };
                for event in events.into_iter().filter(|e| e.session_id == session_id) {
                    if event.seq < next {
                        continue;
                    }
                    if event.seq > last {
                        return Ok(());
                    }
                    next = event.seq + 1;
                    if f(event)?.is_break() {
                        return Ok(());
                    }
                }
            }
            if !vanished {
                return Ok(());
            }
        }
        Err(RecorderError::corrupt(self.layout.wal_dir(), "WAL files keep vanishing while being read"))
    }

    /// Calls `f` with every event of one sealed segment, in (session, seq)
    /// order.
    pub fn segment_events(&self, manifest: &Manifest, mut f: impl FnMut(Event) -> Result<()>) -> Result<()> {
        let path = self.layout.root().join(&manifest.path);
        segment::for_each_batch(&path, |batch| {
            let reader = BatchReader::new(&batch)?;
            for i in 0..reader.len() {
                f(Event::from_row(reader.row(i)?)?)?;
            }
            Ok(())
        })
    }

    /// Calls `f` with a session's events in one segment, in seq order, until
    /// it says stop; returns whether it did.
    fn session_rows(
        &self,
        manifest: &Manifest,
        id_text: &str,
        seqs: std::ops::RangeInclusive<u64>,
        mut f: impl FnMut(Event) -> Result<ControlFlow<()>>,
    ) -> Result<bool> {
        let path = self.layout.root().join(&manifest.path);
        let mut stopped = false;
        segment::for_each_session_batch(&path, id_text, seqs, |batch| {
            let reader = BatchReader::new(&batch)?;
            for i in 0..reader.len() {
                if reader.str(Column::SessionId, i) == Some(id_text) && f(Event::from_row(reader.row(i)?)?)?.is_break()
                {
                    stopped = true;
                    return Ok(ControlFlow::Break(()));
                }
            }
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(stopped)
    }

    /// A session's `session_start` (its event of seq 0), read from the one
    /// segment or WAL file that holds it. `None` if it is not recorded.
    pub fn session_start(&self, session_id: SessionId) -> Result<Option<Event>> {
        let id_text = session_id.to_string();
        // Newest first: a session still being read about started recently.
        for number in self.segment_numbers()?.into_iter().rev() {
            let Some(manifest) = self.manifest_mentioning(number, &id_text)? else { continue };
            if !manifest.sessions.iter().any(|s| s.session_id == id_text && s.first_seq == 0) {
                continue;
            }
            let mut start = None;
            self.session_rows(&manifest, &id_text, 0..=0, |event| {
                if event.seq == 0 {
                    start = Some(event);
                    return Ok(ControlFlow::Break(()));
                }
                Ok(ControlFlow::Continue(()))
            })?;
            if start.is_some() {
                return Ok(start);
            }
        }
        for number in self.unsealed_wal_numbers()? {
            let Some((events, _)) = self.wal_events_from(number, 0)? else { continue };
            if let Some(start) = events.into_iter().find(|e| e.session_id == session_id && e.seq == 0) {
                return Ok(Some(start));
            }
        }
        Ok(None)
    }

    /// The numbers of the WAL files not yet sealed, in order.
    pub fn unsealed_wal_numbers(&self) -> Result<Vec<u64>> {
        let sealed: BTreeSet<u64> = self.layout.manifest_numbers()?.into_iter().collect();
        Ok(self.layout.wal_numbers()?.into_iter().filter(|n| !sealed.contains(n)).collect())
    }

    /// The events written to WAL file `number` from byte `offset` on (0: the
    /// start), reading only that part of the file, and the offset after the
    /// last complete record: where the next read starts. A record being
    /// written is left for the next read. `None` once the file is gone
    /// (sealed).
    pub fn wal_events_from(&self, number: u64, offset: u64) -> Result<Option<(Vec<Event>, u64)>> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.layout.wal_path(number);
        let mut file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RecorderError::io("cannot open WAL file", &path)(e)),
        };
        let io = |e| RecorderError::io("cannot read WAL file", &path)(e);
        let mut start = offset as usize;
        if start == 0 {
            let mut header = [0u8; wal::HEADER_LEN];
            // The carry slot is skipped: it holds no events.
            match file.read_exact(&mut header).ok().and_then(|()| wal::read_header(&header, number).ok()) {
                Some(layout) => start = layout.records,
                // Not yet written, or not a WAL file of this number.
                None => return Ok(Some((Vec::new(), 0))),
            }
        }
        file.seek(SeekFrom::Start(start as u64)).map_err(io)?;
        let mut events = Vec::new();
        let mut window = vec![0u8; WAL_WINDOW];
        let mut carried = 0usize;
        loop {
            // `window[..carried]` holds a record cut by the previous read.
            let mut filled = carried;
            while filled < window.len() {
                match file.read(&mut window[filled..]).map_err(io)? {
                    0 => break,
                    n => filled += n,
                }
            }
            let bytes = &window[..filled];
            let (records, end, torn) = wal::scan_records(bytes, 0);
            for record in records {
                if let Record::Event(row) = record {
                    let row = canonical::decode(row).map_err(|e| RecorderError::corrupt(&path, e.to_string()))?;
                    events.push(Event::from_row(row).map_err(|e| RecorderError::corrupt(&path, e.to_string()))?);
                }
            }
            start += end;
            // A full window whose last record is cut, or whose records end
            // exactly at its edge, may go on in the file; anything else is
            // as far as the file is written.
            if filled < window.len() || (torn.is_none() && end < filled) {
                break;
            }
            if end == 0 {
                // One record larger than the window: grow it once, to the
                // largest record there can be.
                if window.len() > wal::MAX_RECORD {
                    break;
                }
                window.resize(wal::MAX_RECORD + 64, 0);
                carried = filled;
                continue;
            }
            window.copy_within(end..filled, 0);
            carried = filled - end;
        }
        Ok(Some((events, start as u64)))
    }

    /// Calls `f` with every recorded event: sealed segments in order, then
    /// the WAL.
    pub fn for_each_event(&self, mut f: impl FnMut(Event) -> Result<()>) -> Result<()> {
        let snapshot = self.snapshot(None)?;
        for manifest in &snapshot.manifests {
            self.segment_events(manifest, &mut f)?;
        }
        for (_, events) in snapshot.wal {
            for event in events {
                f(event)?;
            }
        }
        Ok(())
    }
}

pub(crate) fn read_manifest(path: &Path) -> Result<Manifest> {
    let bytes = fs::read(path).map_err(RecorderError::io("cannot read manifest", path))?;
    parse_manifest(path, &bytes)
}

/// One session's entry in a manifest's text, parsed alone: the object that
/// holds `"session_id": "ID"`, delimited by a scan that respects strings.
/// `None` if it cannot be found that way (the caller then parses the whole
/// manifest, which stays the authority).
fn session_entry(bytes: &[u8], id_text: &str) -> Option<ManifestSession> {
    let key = format!("\"session_id\": \"{id_text}\"");
    let at = memchr::memmem::find(bytes, key.as_bytes())?;
    // The entry's opening brace, with only whitespace before the key.
    let open = bytes[..at].iter().rposition(|b| !b.is_ascii_whitespace())?;
    if bytes[open] != b'{' {
        return None;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in bytes[open..].iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    let entry: ManifestSession = serde_json::from_slice(&bytes[open..=open + i]).ok()?;
                    return (entry.session_id == id_text).then_some(entry);
                }
            }
            _ => {}
        }
    }
    None
}

fn parse_manifest(path: &Path, bytes: &[u8]) -> Result<Manifest> {
    Manifest::from_file_bytes(bytes).map_err(|e| RecorderError::corrupt(path, format!("not a manifest: {e}")))
}

/// The sessions of a snapshot, with their metadata, ordered by id.
fn summaries(snapshot: Snapshot) -> Result<Vec<SessionSummary>> {
    let mut sessions: BTreeMap<SessionId, SessionSummary> = BTreeMap::new();
    for manifest in &snapshot.manifests {
        for s in &manifest.sessions {
            let id: SessionId = s.session_id.parse()?;
            let summary = sessions.entry(id).or_insert_with(|| SessionSummary::new(id));
            summary.events += s.events;
            summary.segments.push(manifest.segment_id);
            for time in [&s.first_time, &s.last_time] {
                if let Some(t) = Timestamp::parse_rfc3339(time) {
                    summary.saw_time(t);
                }
            }
            summary.protocol = summary.protocol.take().or_else(|| s.protocol.clone());
            summary.resource = summary.resource.take().or_else(|| s.resource.clone());
            summary.subject = summary.subject.take().or_else(|| s.subject.clone());
            summary.end_reason = summary.end_reason.take().or_else(|| s.end_reason.clone());
        }
    }
    for (_, events) in &snapshot.wal {
        for event in events {
            let summary = sessions.entry(event.session_id).or_insert_with(|| SessionSummary::new(event.session_id));
            summary.events += 1;
            summary.wal_events += 1;
            summary.saw_time(event.time);
            match &event.body {
                EventBody::SessionStart(start) => {
                    summary.protocol = Some(start.protocol.to_string());
                    summary.resource = start.resource.clone();
                    summary.subject = start.subject.clone();
                }
                EventBody::SessionEnd(end) => summary.end_reason = Some(end.reason.to_string()),
                _ => {}
            }
        }
    }
    Ok(sessions.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, resource: &str, last_seq: u64) -> ManifestSession {
        ManifestSession {
            session_id: id.to_string(),
            first_seq: 0,
            last_seq,
            events: last_seq + 1,
            chain_in: None,
            chain_head: "00".repeat(32),
            first_time: "2026-11-26T00:00:00Z".to_string(),
            last_time: "2026-11-26T00:00:01Z".to_string(),
            protocol: Some("postgres".to_string()),
            resource: Some(resource.to_string()),
            subject: None,
            end_reason: None,
        }
    }

    #[test]
    fn a_session_entry_is_read_alone_whatever_the_strings_around_it_hold() {
        let wanted = SessionId::new().to_string();
        let other = SessionId::new().to_string();
        let manifest = Manifest {
            format: 1,
            segment_id: 3,
            path: "segments/x.parquet".to_string(),
            file_sha256: String::new(),
            file_bytes: 0,
            schema_version: 1,
            row_count: 0,
            min_time: String::new(),
            max_time: String::new(),
            sessions: vec![
                // Braces, quotes and the wanted id inside another entry's strings.
                entry(&other, &format!("db {{\"}}] \\ \"session_id\": {wanted}"), 4),
                entry(&wanted, "prod } { [", 41),
            ],
            prev_manifest_sha256: None,
            sealed_at: String::new(),
            key_fingerprint: String::new(),
            merkle_root: None,
            merkle_salt: None,
            root_signature: None,
            signature: None,
        };
        let bytes = manifest.to_file_bytes();
        let found = session_entry(&bytes, &wanted).expect("the entry is found");
        assert_eq!(found, manifest.sessions[1]);
        assert_eq!(session_entry(&bytes, &other), Some(manifest.sessions[0].clone()));
        assert_eq!(session_entry(&bytes, &SessionId::new().to_string()), None);
    }
}
