//! The write-ahead log file format.
//!
//! ```text
//! file    := header slot record* zero*
//! header  := "PRCTRWAL" format:u32le number:u64le slot_len:u32le   (24 bytes)
//! slot    := slot_len bytes: zeros, or a pending or a carry record then zeros
//! record  := len:u32le crc:u32le body                     body is `len` bytes
//! body    := 0x01 carry | 0x02 pending | 0x03 batch
//! carry   := count:varint (session_id:str next_seq:varint head:[u8;32])*
//! pending := count:varint (session_id:str next_seq:varint)*
//! batch   := count:u32le (row_len:u32le canonical-event-row)*
//! ```
//!
//! `crc` is CRC-32C of the body. Each file starts with a carry record listing
//! the sessions open when the file began (their next seq and chain head), so
//! a file can be sealed on its own. The chain heads are computed once, by the
//! sealer, not by every append: a file started by rotation gets a slot sized
//! for the carry record of the sessions open then, holding a pending record
//! (their ids and next seqs, which the writer knows), and the sealer, when it
//! has sealed the file before (whose rows it reads anyway), replaces it with
//! the carry record, synced before that file is deleted. A file whose slot
//! is still pending is sealed with the carry of the file before; if that
//! file was lost, its sessions are still known, but not their chain heads:
//! their chains restart, and `verify` reports the break. With no slot
//! (`slot_len` 0) the carry record, if any, is the first record, as in
//! format 2 (a 20-byte header, no slot), which is still read. A file of a
//! newer format is refused, never treated as damage.
//!
//! One append is one batch record, so it is recovered whole or not at all.
//! Files are preallocated: zeros after the last record are unwritten space.
//! Scanning stops at the first record that is incomplete or fails its
//! checksum: that is a torn tail, reported and truncated at recovery, never
//! parsed.

use proctor_schemas::SessionId;
use proctor_schemas::chain::ChainHash;

pub const MAGIC: &[u8; 8] = b"PRCTRWAL";
pub const FORMAT: u32 = 3;
/// The format before carry slots; its files are still read.
const FORMAT_INLINE_CARRY: u32 = 2;
pub const HEADER_LEN: usize = 24;
const HEADER_LEN_INLINE_CARRY: usize = 20;
const FRAME_LEN: usize = 8;
const TAG_CARRY: u8 = 1;
const TAG_PENDING: u8 = 2;
const TAG_BATCH: u8 = 3;
/// The largest record body accepted; larger lengths are treated as corruption.
pub const MAX_RECORD: usize = 16 << 20;

/// The header of a file with no carry slot (its carry record, if any, is
/// its first record).
pub fn header(number: u64) -> [u8; HEADER_LEN] {
    header_with_slot(number, 0)
}

/// The header of a file reserving `slot_len` bytes for its carry record.
pub fn header_with_slot(number: u64, slot_len: u32) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..8].copy_from_slice(MAGIC);
    out[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    out[12..20].copy_from_slice(&number.to_le_bytes());
    out[20..24].copy_from_slice(&slot_len.to_le_bytes());
    out
}

/// Where a file's parts are, from its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The carry slot's offset and length (zero length: no slot).
    pub slot: (usize, usize),
    /// Where the records begin.
    pub records: usize,
}

/// Why a header was not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Not the header of this file: damaged, or never written.
    Damaged(String),
    /// The header of this file in a format newer than this build reads.
    Newer(u32),
}

/// Reads a header: the file's layout if `bytes` begin with the header of WAL
/// file `expected_number`, or why not.
pub fn read_header(bytes: &[u8], expected_number: u64) -> Result<Layout, HeaderError> {
    let damaged = |why: String| Err(HeaderError::Damaged(why));
    if bytes.len() < HEADER_LEN_INLINE_CARRY || &bytes[..8] != MAGIC {
        return damaged("missing or damaged header".to_string());
    }
    let format = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let mut number_bytes = [0u8; 8];
    number_bytes.copy_from_slice(&bytes[12..20]);
    let number = u64::from_le_bytes(number_bytes);
    if number == expected_number && format > FORMAT && format < 64 {
        return Err(HeaderError::Newer(format));
    }
    if number != expected_number || (format != FORMAT && format != FORMAT_INLINE_CARRY) {
        return damaged(format!(
            "header says format {format} file {number}, expected format {FORMAT} file {expected_number}"
        ));
    }
    if format == FORMAT_INLINE_CARRY {
        return Ok(Layout { slot: (HEADER_LEN, 0), records: HEADER_LEN_INLINE_CARRY });
    }
    let Some(slot) = bytes.get(20..24) else { return damaged("missing or damaged header".to_string()) };
    let slot_len = u32::from_le_bytes([slot[0], slot[1], slot[2], slot[3]]) as usize;
    // Slots are only ever sized by `carry_len`: anything else is damage.
    if slot_len != 0 && (slot_len > MAX_RECORD || !is_carry_len(slot_len)) {
        return damaged(format!("implausible carry slot of {slot_len} bytes"));
    }
    Ok(Layout { slot: (HEADER_LEN, slot_len), records: HEADER_LEN + slot_len })
}

/// A session open when a WAL file began.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Carried {
    pub session_id: SessionId,
    pub next_seq: u64,
    pub head: ChainHash,
}

/// Starts a batch record in `buf`; returns its start for [`finish_batch`].
pub fn begin_batch(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_LEN]);
    buf.push(TAG_BATCH);
    buf.extend_from_slice(&[0u8; 4]);
    start
}

/// Starts a row of the batch; returns its start for [`finish_row`].
pub fn begin_row(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 4]);
    start
}

/// Fills in a row's length; returns the range of the canonical row.
pub fn finish_row(buf: &mut [u8], start: usize) -> std::ops::Range<usize> {
    let len = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    start + 4..buf.len()
}

/// Fills in the batch's row count, length and checksum.
pub fn finish_batch(buf: &mut [u8], start: usize, rows: u32) {
    let body = start + FRAME_LEN;
    buf[body + 1..body + 5].copy_from_slice(&rows.to_le_bytes());
    finish_record(buf, start);
}

/// Appends a batch record holding `rows` (for tests and tools).
pub fn put_batch(buf: &mut Vec<u8>, rows: &[&[u8]]) {
    let start = begin_batch(buf);
    for row in rows {
        let row_start = begin_row(buf);
        buf.extend_from_slice(row);
        finish_row(buf, row_start);
    }
    finish_batch(buf, start, rows.len() as u32);
}

fn finish_record(buf: &mut [u8], start: usize) {
    let body = start + FRAME_LEN;
    let len = (buf.len() - body) as u32;
    let crc = crc32c::crc32c(&buf[body..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

const CARRY_BASE: usize = FRAME_LEN + 1 + 10;
const CARRY_PER_SESSION: usize = 1 + 36 + 10 + 32;

/// Bytes a carry record of `open` sessions takes at most.
pub fn carry_len(open: usize) -> usize {
    CARRY_BASE + open * CARRY_PER_SESSION
}

fn is_carry_len(len: usize) -> bool {
    len >= CARRY_BASE && (len - CARRY_BASE).is_multiple_of(CARRY_PER_SESSION)
}

/// The most open sessions a carry slot can hold.
pub const MAX_CARRIED: usize = (MAX_RECORD - CARRY_BASE) / CARRY_PER_SESSION;

/// Appends a pending record: the sessions open when a file began, before
/// their chain heads are known.
pub fn put_pending(buf: &mut Vec<u8>, sessions: &[(SessionId, u64)]) {
    put_sessions(buf, TAG_PENDING, sessions.iter().map(|&(id, next_seq)| (id, next_seq, None)));
}

/// The carry record to put in a slot of `slot_len` bytes, or `None` if it
/// does not fit.
pub fn carry_for_slot(sessions: &[Carried], slot_len: usize) -> Option<Vec<u8>> {
    let mut record = Vec::with_capacity(carry_len(sessions.len()));
    put_carry(&mut record, sessions);
    (record.len() <= slot_len).then_some(record)
}

/// Appends a carry record.
pub fn put_carry(buf: &mut Vec<u8>, sessions: &[Carried]) {
    put_sessions(buf, TAG_CARRY, sessions.iter().map(|c| (c.session_id, c.next_seq, Some(&c.head))));
}

/// A carry or pending record: each session's id and next seq, and its chain
/// head in a carry record.
fn put_sessions<'a>(
    buf: &mut Vec<u8>,
    tag: u8,
    sessions: impl ExactSizeIterator<Item = (SessionId, u64, Option<&'a ChainHash>)>,
) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_LEN]);
    buf.push(tag);
    put_varint(buf, sessions.len() as u64);
    let mut text = proctor_schemas::SessionIdText::default();
    for (session_id, next_seq, head) in sessions {
        let id = text.render(session_id);
        put_varint(buf, id.len() as u64);
        buf.extend_from_slice(id.as_bytes());
        put_varint(buf, next_seq);
        if let Some(head) = head {
            buf.extend_from_slice(&head.0);
        }
    }
    finish_record(buf, start);
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One record found by a scan.
#[derive(Debug)]
pub enum Record<'a> {
    Carry(Vec<Carried>),
    /// The sessions a file's carry will name, before their heads are known
    /// (only ever in a carry slot).
    Pending(Vec<(SessionId, u64)>),
    /// A canonical event row.
    Event(&'a [u8]),
}

/// Where and why a scan stopped early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// Offset of the first byte not part of a complete record.
    pub offset: u64,
    /// Bytes after `offset`.
    pub bytes: u64,
    pub reason: String,
}

/// The complete records of a WAL file.
#[derive(Debug)]
pub struct Scan<'a> {
    pub number: u64,
    pub records: Vec<Record<'a>>,
    /// Length of the valid prefix (header and complete records).
    pub valid_len: u64,
    /// The file's carry slot does not hold the carry record yet: its carry
    /// is the open sessions at the end of the file before.
    pub carry_pending: bool,
    /// The sessions the pending record names (their ids and next seqs), if
    /// the slot holds one.
    pub pending: Option<Vec<(SessionId, u64)>>,
    /// The file is in a newer format than this build reads.
    pub newer_format: Option<u32>,
    pub torn: Option<TornTail>,
}

impl Scan<'_> {
    pub fn event_count(&self) -> usize {
        self.records.iter().filter(|r| matches!(r, Record::Event(_))).count()
    }
}

/// Scans a WAL file's bytes. A file too short for its header, or whose header
/// is damaged, has no records (its whole length is the torn tail).
pub fn scan(bytes: &[u8], expected_number: u64) -> Scan<'_> {
    let torn_at = |offset: usize, reason: String| TornTail {
        offset: offset as u64,
        bytes: (bytes.len() - offset) as u64,
        reason,
    };
    let empty = |valid_len: usize, torn| Scan {
        number: expected_number,
        records: Vec::new(),
        valid_len: valid_len as u64,
        carry_pending: false,
        pending: None,
        newer_format: None,
        torn,
    };
    let layout = match read_header(bytes, expected_number) {
        Ok(layout) => layout,
        // Not damage: left alone for the build that wrote it.
        Err(HeaderError::Newer(format)) => return Scan { newer_format: Some(format), ..empty(0, None) },
        // A file of zeros was allocated ahead of need and never used.
        Err(_) if bytes.iter().all(|&b| b == 0) => return empty(0, None),
        Err(HeaderError::Damaged(reason)) => return empty(0, Some(torn_at(0, reason))),
    };
    if bytes.len() < layout.records {
        // Cut short inside the slot: only the header is whole.
        let header_len = layout.slot.0.min(bytes.len());
        let torn = bytes[header_len..].iter().any(|&b| b != 0);
        return empty(header_len, torn.then(|| torn_at(header_len, "the carry slot is cut short".to_string())));
    }
    let (slot_start, slot_len) = layout.slot;
    let mut carry_pending = false;
    let mut pending = None;
    let mut records = Vec::new();
    if slot_len > 0 {
        match read_slot(&bytes[slot_start..slot_start + slot_len]) {
            Slot::Filled(carried) => records.push(Record::Carry(carried)),
            Slot::Pending(sessions) => {
                carry_pending = true;
                pending = Some(sessions);
            }
            Slot::Empty | Slot::Damaged => carry_pending = true,
        }
    }
    let (rest, end, torn) = scan_records(bytes, layout.records);
    records.extend(rest);
    Scan { number: expected_number, records, valid_len: end as u64, carry_pending, pending, newer_format: None, torn }
}

/// What a carry slot holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Slot {
    /// Nothing: the writer did not get to write its pending record.
    Empty,
    /// The writer's record of the sessions open, heads not known yet.
    Pending(Vec<(SessionId, u64)>),
    /// The carry record, written by the sealer.
    Filled(Vec<Carried>),
    /// Neither: a fill cut short by a power loss. The file before is deleted
    /// only after a fill is synced, so it is still there to fill it again
    /// (unless it was set aside as damaged).
    Damaged,
}

/// Reads a carry slot's bytes.
pub fn read_slot(slot: &[u8]) -> Slot {
    if slot.iter().all(|&b| b == 0) {
        return Slot::Empty;
    }
    let (records, end, torn) = scan_records(slot, 0);
    if torn.is_some() || slot[end..].iter().any(|&b| b != 0) {
        return Slot::Damaged;
    }
    match <[Record<'_>; 1]>::try_from(records) {
        Ok([Record::Carry(carried)]) => Slot::Filled(carried),
        Ok([Record::Pending(sessions)]) => Slot::Pending(sessions),
        _ => Slot::Damaged,
    }
}

/// Scans the complete records of `bytes` from `start` (a record boundary):
/// the records, where the complete ones end, and why the scan stopped early
/// if it did (zeros after the last record are not a tear).
pub fn scan_records(bytes: &[u8], start: usize) -> (Vec<Record<'_>>, usize, Option<TornTail>) {
    let torn_at = |offset: usize, reason: String| TornTail {
        offset: offset as u64,
        bytes: (bytes.len() - offset) as u64,
        reason,
    };
    let mut records = Vec::new();
    let mut pos = start;
    let mut torn = None;
    while pos < bytes.len() {
        if bytes.len() - pos < FRAME_LEN {
            if bytes[pos..].iter().any(|&b| b != 0) {
                torn = Some(torn_at(pos, "incomplete record frame".to_string()));
            }
            break;
        }
        let len = u32::from_le_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]]) as usize;
        let crc = u32::from_le_bytes([bytes[pos + 4], bytes[pos + 5], bytes[pos + 6], bytes[pos + 7]]);
        if len == 0 && bytes[pos..].iter().all(|&b| b == 0) {
            // WAL files are preallocated: zeros after the last record are
            // space not yet written, not damage.
            break;
        }
        if len == 0 || len > MAX_RECORD {
            torn = Some(torn_at(pos, format!("implausible record length {len}")));
            break;
        }
        let body_start = pos + FRAME_LEN;
        if bytes.len() - body_start < len {
            torn = Some(torn_at(pos, format!("record of {len} bytes is incomplete")));
            break;
        }
        let body = &bytes[body_start..body_start + len];
        if crc32c::crc32c(body) != crc {
            torn = Some(torn_at(pos, "record checksum mismatch".to_string()));
            break;
        }
        let parsed = match body[0] {
            TAG_BATCH => parse_batch(&body[1..]).map(|rows| rows.into_iter().map(Record::Event).collect()),
            TAG_CARRY => parse_carry(&body[1..], true).map(|c| {
                vec![Record::Carry(
                    c.into_iter().map(|(session_id, next_seq, head)| Carried { session_id, next_seq, head }).collect(),
                )]
            }),
            TAG_PENDING => parse_carry(&body[1..], false)
                .map(|c| vec![Record::Pending(c.into_iter().map(|(id, next_seq, _)| (id, next_seq)).collect())]),
            _ => None,
        };
        let Some(parsed) = parsed else {
            torn = Some(torn_at(pos, format!("unreadable record of type {}", body[0])));
            break;
        };
        records.extend(parsed);
        pos = body_start + len;
    }
    let end = torn.as_ref().map_or(pos, |t| t.offset as usize);
    (records, end, torn)
}

fn parse_batch(bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let count = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let mut rest = &bytes[4..];
    let mut rows = Vec::with_capacity(count.min(rest.len() / 4));
    for _ in 0..count {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let row = rest.get(4..4 + len)?;
        rows.push(row);
        rest = &rest[4 + len..];
    }
    rest.is_empty().then_some(rows)
}

/// Parses a carry record's body (with heads) or a pending record's (without:
/// the heads are returned as zeros).
fn parse_carry(mut bytes: &[u8], with_heads: bool) -> Option<Vec<(SessionId, u64, ChainHash)>> {
    fn varint(bytes: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = bytes.split_first()?;
            *bytes = rest;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    let count = varint(&mut bytes)? as usize;
    let mut out = Vec::with_capacity(count.min(bytes.len()));
    for _ in 0..count {
        let len = varint(&mut bytes)? as usize;
        if bytes.len() < len {
            return None;
        }
        let (id, rest) = bytes.split_at(len);
        bytes = rest;
        let session_id: SessionId = std::str::from_utf8(id).ok()?.parse().ok()?;
        let next_seq = varint(&mut bytes)?;
        let mut hash = [0u8; 32];
        if with_heads {
            if bytes.len() < 32 {
                return None;
            }
            let (head, rest) = bytes.split_at(32);
            bytes = rest;
            hash.copy_from_slice(head);
        }
        out.push((session_id, next_seq, ChainHash(hash)));
    }
    bytes.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(events: &[&[u8]], carried: &[Carried]) -> Vec<u8> {
        let mut buf = header(7).to_vec();
        put_carry(&mut buf, carried);
        for payload in events {
            put_batch(&mut buf, &[payload]);
        }
        buf
    }

    #[test]
    fn a_batch_is_recovered_whole_or_not_at_all() {
        let mut file = header(7).to_vec();
        put_carry(&mut file, &[]);
        put_batch(&mut file, &[b"a1", b"a2", b"a3"]);
        let whole = file.len();
        put_batch(&mut file, &[b"b1", b"b2"]);
        assert_eq!(scan(&file, 7).event_count(), 5);
        for cut in whole + 1..file.len() {
            let scan = scan(&file[..cut], 7);
            assert_eq!(scan.event_count(), 3, "cut at {cut}: the second batch is all or nothing");
        }
    }

    #[test]
    fn complete_records_scan_back() {
        let carried = vec![Carried { session_id: SessionId::from_parts(5, 9), next_seq: 12, head: ChainHash([3; 32]) }];
        let file = file_with(&[b"one", b"two"], &carried);
        let scan = scan(&file, 7);
        assert!(scan.torn.is_none());
        assert_eq!(scan.valid_len, file.len() as u64);
        assert!(matches!(&scan.records[0], Record::Carry(c) if c == &carried));
        assert!(matches!(scan.records[1], Record::Event(b"one")));
        assert!(matches!(scan.records[2], Record::Event(b"two")));
    }

    #[test]
    fn every_truncation_point_yields_a_prefix_and_a_torn_tail() {
        let file = file_with(&[b"first event", b"second event"], &[]);
        let full = scan(&file, 7).records.len();
        for cut in 0..file.len() {
            let scan = scan(&file[..cut], 7);
            assert!(scan.records.len() < full, "cut at {cut}");
            assert!(scan.valid_len <= cut as u64);
            match &scan.torn {
                // A cut on a record boundary leaves a shorter, intact file.
                None => assert_eq!(scan.valid_len, cut as u64, "cut at {cut}"),
                Some(torn) => {
                    assert_eq!(torn.offset, scan.valid_len);
                    assert_eq!(torn.offset + torn.bytes, cut as u64);
                }
            }
        }
    }

    #[test]
    fn a_flipped_byte_is_never_parsed_as_a_record() {
        let file = file_with(&[b"first event", b"second event"], &[]);
        let intact = scan(&file, 7).records.len();
        for i in HEADER_LEN..file.len() {
            let mut damaged = file.clone();
            damaged[i] ^= 0x40;
            let scan = scan(&damaged, 7);
            assert!(scan.torn.is_some(), "flip at {i} went unnoticed");
            assert!(scan.records.len() < intact);
        }
    }

    #[test]
    fn zeros_after_the_last_record_are_unwritten_space_not_damage() {
        let mut file = file_with(&[b"one"], &[]);
        let written = file.len();
        file.resize(written + 4096, 0);
        let scan = scan(&file, 7);
        assert!(scan.torn.is_none());
        assert_eq!(scan.valid_len, written as u64);
        assert_eq!(scan.event_count(), 1);
        // A stray byte in the zeros is damage.
        file[written + 100] = 1;
        assert!(super::scan(&file, 7).torn.is_some());
    }

    #[test]
    fn a_file_from_another_number_is_refused() {
        let file = file_with(&[b"x"], &[]);
        let scan = scan(&file, 8);
        assert!(scan.records.is_empty());
        assert!(scan.torn.unwrap().reason.contains("expected format 3 file 8"));
    }
}

#[cfg(test)]
mod hostile {
    use super::*;

    #[test]
    fn random_damage_never_panics_and_never_yields_unchecked_records() {
        let mut file = header(3).to_vec();
        put_carry(
            &mut file,
            &[Carried { session_id: SessionId::from_parts(1, 2), next_seq: 4, head: ChainHash([9; 32]) }],
        );
        put_batch(&mut file, &[&b"alpha"[..], b"beta"]);
        put_batch(&mut file, &[&b"gamma delta"[..]]);
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..100_000 {
            let mut damaged = file.clone();
            let position = (next() as usize) % damaged.len();
            damaged[position] = next() as u8;
            let cut = (next() as usize) % (damaged.len() + 1);
            damaged.truncate(cut);
            let scan = scan(&damaged, 3);
            // Every record returned lies inside the valid prefix, and the
            // valid prefix plus the torn tail is the whole input ...
            assert!(scan.valid_len as usize <= damaged.len());
            // ... or, without a torn tail, followed only by unwritten zeros.
            // (A format number above this build's is left alone, not cut.)
            match &scan.torn {
                Some(t) => assert_eq!(scan.valid_len + t.bytes, damaged.len() as u64),
                None if scan.newer_format.is_some() => assert!(scan.records.is_empty() && scan.valid_len == 0),
                None => assert!(damaged[scan.valid_len as usize..].iter().all(|&b| b == 0)),
            }
            for record in &scan.records {
                if let Record::Event(bytes) = record {
                    let offset = bytes.as_ptr() as usize - damaged.as_ptr() as usize;
                    assert!(offset + bytes.len() <= scan.valid_len as usize);
                }
            }
        }
    }

    #[test]
    fn a_carry_slot_is_empty_filled_or_damaged_and_records_follow_it() {
        let slot = carry_len(1);
        let mut file = header_with_slot(4, slot as u32).to_vec();
        file.resize(file.len() + slot, 0);
        put_batch(&mut file, &[b"e1", b"e2"]);
        let scan = scan(&file, 4);
        assert!(scan.carry_pending);
        assert_eq!(scan.event_count(), 2);
        assert!(scan.torn.is_none());

        let carried = Carried { session_id: SessionId::new(), next_seq: 9, head: ChainHash([7; 32]) };
        let record = carry_for_slot(std::slice::from_ref(&carried), slot).unwrap();
        let mut filled = file.clone();
        filled[HEADER_LEN..HEADER_LEN + record.len()].copy_from_slice(&record);
        let scan = super::scan(&filled, 4);
        assert!(!scan.carry_pending);
        assert!(matches!(&scan.records[0], Record::Carry(c) if c == &vec![carried.clone()]));
        assert_eq!(scan.event_count(), 2);

        // A fill cut short reads as damaged: pending, to be filled again.
        let mut cut = file.clone();
        cut[HEADER_LEN..HEADER_LEN + record.len() / 2].copy_from_slice(&record[..record.len() / 2]);
        let scan = super::scan(&cut, 4);
        assert!(scan.carry_pending);
        assert_eq!(scan.event_count(), 2);
        assert_eq!(read_slot(&cut[HEADER_LEN..HEADER_LEN + slot]), Slot::Damaged);

        // Two sessions do not fit a slot sized for one.
        assert!(carry_for_slot(&[carried.clone(), carried], slot).is_none());
    }

    #[test]
    fn files_of_the_format_before_carry_slots_are_still_read() {
        let mut file = Vec::new();
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&FORMAT_INLINE_CARRY.to_le_bytes());
        file.extend_from_slice(&5u64.to_le_bytes());
        assert_eq!(file.len(), HEADER_LEN_INLINE_CARRY);
        put_carry(&mut file, &[]);
        put_batch(&mut file, &[b"old"]);
        file.resize(file.len() + 100, 0);
        let scan = scan(&file, 5);
        assert!(scan.torn.is_none());
        assert!(!scan.carry_pending);
        assert!(matches!(scan.records[0], Record::Carry(_)));
        assert_eq!(scan.event_count(), 1);
    }

    #[test]
    fn a_pending_slot_names_the_open_sessions_and_a_newer_format_is_not_damage() {
        let open = [(SessionId::from_parts(1, 2), 5), (SessionId::from_parts(3, 4), 0)];
        let slot = carry_len(open.len());
        let mut file = header_with_slot(6, slot as u32).to_vec();
        put_pending(&mut file, &open);
        file.resize(HEADER_LEN + slot, 0);
        put_batch(&mut file, &[b"e1"]);
        let scanned = scan(&file, 6);
        assert!(scanned.carry_pending);
        assert_eq!(scanned.pending.as_deref(), Some(&open[..]));
        assert_eq!(scanned.event_count(), 1);

        // A slot length `carry_len` never yields is damage, not a layout.
        let mut odd = file.clone();
        odd[20..24].copy_from_slice(&(slot as u32 + 1).to_le_bytes());
        assert!(matches!(read_header(&odd, 6), Err(HeaderError::Damaged(_))));

        let mut newer = file.clone();
        newer[8..12].copy_from_slice(&(FORMAT + 1).to_le_bytes());
        let scanned = scan(&newer, 6);
        assert_eq!(scanned.newer_format, Some(FORMAT + 1));
        assert!(scanned.torn.is_none() && scanned.records.is_empty());
    }
}
