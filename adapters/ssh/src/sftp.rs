//! SFTP as file operations: the packets of an `sftp` subsystem channel
//! (draft-ietf-secsh-filexfer-02, the version OpenSSH speaks, v3) read as
//! they pass, both ways, into the operations an investigator asks about:
//! which file was opened, read or written, how many bytes, and the SHA-256
//! of a whole file transferred; which paths were removed, renamed, made,
//! changed or linked.
//!
//! In a masked session, the data reads return is masked in place, and
//! answers go as whole packets ([`Sftp::answered_masked`]). Otherwise, read
//! only, the reader never changes a byte and never holds one back:
//! the channel's bytes are relayed and recorded as they are whatever this
//! makes of them. A packet it cannot read is counted and skipped by its
//! length; what an operation records is only what the packets said.
//!
//! Under rules that decide file operations, requests are relayed as whole
//! packets instead: each is read before it is passed ([`Sftp::split_requests`],
//! [`Sftp::check`]), one the rules refuse is answered here with a status
//! ([`refusal`]) put between the target's answers at a packet boundary
//! ([`Sftp::answer_rest`]), and the target never sees it.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Instant;

use proctor_gateway_core::masking::{Counts, Masker};

use sha2::{Digest, Sha256};

/// SFTP packet types (v3).
mod fxp {
    pub const INIT: u8 = 1;
    pub const OPEN: u8 = 3;
    pub const OPENDIR: u8 = 11;
    pub const CLOSE: u8 = 4;
    pub const READ: u8 = 5;
    pub const REALPATH: u8 = 16;
    pub const WRITE: u8 = 6;
    pub const SETSTAT: u8 = 9;
    pub const FSETSTAT: u8 = 10;
    pub const REMOVE: u8 = 13;
    pub const MKDIR: u8 = 14;
    pub const RMDIR: u8 = 15;
    pub const RENAME: u8 = 18;
    pub const SYMLINK: u8 = 20;
    pub const STATUS: u8 = 101;
    pub const HANDLE: u8 = 102;
    pub const DATA: u8 = 103;
    pub const NAME: u8 = 104;
    pub const EXTENDED: u8 = 200;
}

/// `SSH_FXF_READ`, `SSH_FXF_WRITE`, `SSH_FXF_APPEND`.
const OPEN_READ: u32 = 0x01;
const OPEN_WRITE: u32 = 0x02;
const OPEN_APPEND: u32 = 0x04;
/// `SSH_FXF_CREAT`, `SSH_FXF_TRUNC`.
const OPEN_CREATE: u32 = 0x08;
const OPEN_TRUNCATE: u32 = 0x10;
/// `SSH_FX_PERMISSION_DENIED`.
const STATUS_PERMISSION_DENIED: u32 = 3;
/// `SSH_FX_EOF`.
const STATUS_EOF: u32 = 1;
/// Open handles followed at most, and the longest handle (the protocol's
/// own bound) and path kept.
const MAX_HANDLES: usize = 1024;
const MAX_HANDLE: usize = 256;
const MAX_PATH: usize = 4096;

/// The largest packet read whole (OpenSSH's own limit is 256 KiB); a larger
/// one is skipped by its length, its type counted.
pub const MAX_PACKET: usize = 1 << 20;
/// Requests awaiting their answer, at most (a client that never reads its
/// answers cannot grow this without end).
const MAX_PENDING: usize = 4096;

/// A file operation the packets said, to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// `open`, `read`, `write`, `remove`, `rename`, `mkdir`, `rmdir`,
    /// `setstat`, `symlink`.
    pub operation: &'static str,
    pub path: String,
    /// The second path of `rename` (the new name) and `symlink` (the link's
    /// target).
    pub target_path: Option<String>,
    /// Bytes read or written through a handle, at its close.
    pub byte_count: Option<u64>,
    /// The SHA-256 (hex) of the whole file transferred: the bytes written
    /// from the first in order up to the close, or read from the first in
    /// order up to the end of the file.
    pub sha256: Option<String>,
}

impl Operation {
    fn path(operation: &'static str, path: String) -> Operation {
        Operation { operation, path, target_path: None, byte_count: None, sha256: None }
    }
}

/// An open file handle: its path, and what passed through it.
struct Open {
    path: String,
    write: bool,
    bytes: u64,
    /// Hashing while the transfer stays sequential from offset 0 (not for
    /// a handle opened to append, or to read and write).
    hasher: Option<Sha256>,
    /// The next offset a sequential transfer continues at.
    next: u64,
    /// A read reached the end of the file right after the last byte hashed.
    ended: bool,
}

impl Open {
    fn passed(&mut self, offset: u64, data: &[u8]) {
        self.bytes += data.len() as u64;
        if offset == self.next
            && let Some(hasher) = self.hasher.as_mut()
        {
            hasher.update(data);
            self.next += data.len() as u64;
        } else {
            // Out of order (parallel requests, a seek): no whole-file hash.
            self.hasher = None;
        }
    }
}

/// What a request waits for.
enum Pending {
    /// An `open` of this path: its answer is the handle.
    Open { path: String, write: bool, hashed: bool },
    /// A `read` of this handle at this offset: its answer is the data.
    Read { handle: Vec<u8>, offset: u64 },
    /// The real name of `.`: its answer is the directory relative paths
    /// are relative to.
    Home,
    /// Any other request: its answer is only counted.
    Other,
}

/// Reads the packets of one direction of an SFTP channel.
#[derive(Default)]
struct Framer {
    buffer: Vec<u8>,
    /// Bytes still to skip of a packet too large to read whole.
    skip: usize,
}

impl Framer {
    /// How many of `bytes` finish the packet under way: 0 between packets,
    /// `None` if they do not finish it.
    fn rest_of_packet(&self, bytes: &[u8]) -> Option<usize> {
        if self.skip > 0 {
            return (self.skip <= bytes.len()).then_some(self.skip);
        }
        let have = self.buffer.len();
        if have == 0 {
            return Some(0);
        }
        let mut header = [0u8; 4];
        let from_buffer = have.min(4);
        header[..from_buffer].copy_from_slice(&self.buffer[..from_buffer]);
        let from_bytes = 4 - from_buffer;
        header[from_buffer..].copy_from_slice(bytes.get(..from_bytes)?);
        let need = (4 + u32::from_be_bytes(header) as usize).checked_sub(have)?;
        (need <= bytes.len()).then_some(need)
    }

    /// The whole packets `bytes` completes (each without its length), and
    /// how many packets too large to read were skipped.
    fn feed(&mut self, bytes: &[u8]) -> (Vec<Vec<u8>>, u64) {
        let mut bytes = bytes;
        if self.skip > 0 {
            let n = self.skip.min(bytes.len());
            self.skip -= n;
            bytes = &bytes[n..];
        }
        self.buffer.extend_from_slice(bytes);
        let (mut packets, mut skipped) = (Vec::new(), 0);
        while self.buffer.len() >= 4 {
            let len = u32::from_be_bytes(self.buffer[..4].try_into().expect("four bytes")) as usize;
            let have = self.buffer.len() - 4;
            if len > MAX_PACKET {
                skipped += 1;
                if have >= len {
                    self.buffer.drain(..4 + len);
                    continue;
                }
                self.skip = len - have;
                self.buffer.clear();
                break;
            }
            if have < len {
                break;
            }
            packets.push(self.buffer[4..4 + len].to_vec());
            self.buffer.drain(..4 + len);
        }
        (packets, skipped)
    }
}

/// A cursor over a packet's fields.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.0.split_at_checked(4)?;
        self.0 = rest;
        Some(u32::from_be_bytes(head.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_at_checked(8)?;
        self.0 = rest;
        Some(u64::from_be_bytes(head.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        let (head, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        Some(head)
    }

    fn text(&mut self) -> Option<String> {
        self.bytes().map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

/// One SFTP channel's operations, from its packets both ways.
#[derive(Default)]
pub struct Sftp {
    requests: Framer,
    answers: Framer,
    /// Requests by id, oldest first (a client may reuse an id).
    pending: HashMap<u32, std::collections::VecDeque<Pending>>,
    /// Requests awaiting their answer, at most [`MAX_PENDING`].
    in_flight: usize,
    /// The target's answer to its version: answers follow.
    versioned: bool,
    /// The directory relative paths are relative to, once the target said.
    home: Option<String>,
    handles: HashMap<Vec<u8>, Open>,
    /// Packets that could not be read (malformed, or too large).
    pub unread: u64,
    /// In a masked session: what reads return, masked.
    masking: Option<ReadMasking>,
}

/// What a read returns, masked in place (the same length: the client
/// counts offsets by it) for the client and the recording alike. The
/// target's answers then go as whole packets, and a read's answer waits
/// (at most [`crate::mask::DELAY`]) until [`CONTEXT`] bytes of the same
/// file that follow it have come: each answer is masked as read between
/// the [`CONTEXT`] bytes before and after it, so that a secret cut between
/// reads, however small, is found whole, and each secret is counted once
/// (by the answer it starts in).
#[derive(Default)]
struct ReadMasking {
    /// Answers to reads of one file, one after another in it, held back.
    held: std::collections::VecDeque<HeldRead>,
    /// The last bytes of that file that went before them: its handle, the
    /// offset they end at, the bytes (as read, unmasked).
    before: Option<(Vec<u8>, u64, Vec<u8>)>,
}

/// A read's answer held back.
struct HeldRead {
    /// The packet (without its length).
    packet: Vec<u8>,
    /// Where its data is in it.
    data: Range<usize>,
    /// The handle and offset it was read at, when the read was followed.
    at: Option<(Vec<u8>, u64)>,
    since: Instant,
}

impl HeldRead {
    /// Whether `at` is where this answer's data ends in the same file.
    fn followed_by(&self, at: Option<&(Vec<u8>, u64)>) -> bool {
        matches!((&self.at, at), (Some((h, o)), Some((handle, offset)))
            if h == handle && o + self.data.len() as u64 == *offset)
    }
}

/// How much of a file before and after a read's answer it is masked with.
const CONTEXT: usize = 256;

impl Sftp {
    /// The reader of a channel; `masked`: in a session whose output is
    /// masked, what reads return is too.
    pub fn new(masked: bool) -> Sftp {
        Sftp { masking: masked.then(ReadMasking::default), ..Sftp::default() }
    }

    /// Whether the target's version has been read (answers then follow).
    pub fn versioned(&self) -> bool {
        self.versioned
    }

    /// Whether what reads return is masked (then answers go through
    /// [`Sftp::answered_masked`]).
    pub fn masks(&self) -> bool {
        self.masking.is_some()
    }

    /// Bytes the target answered with, in a masked session: what may go
    /// to the client now, whole packets, what reads returned masked in
    /// place. `None` once an answer is larger than is read: it cannot be
    /// masked, so it cannot pass.
    pub fn answered_masked(
        &mut self,
        bytes: &[u8],
        masker: &Masker,
        counts: &mut Counts,
        now: Instant,
    ) -> Option<Vec<u8>> {
        if self.answers.skip > 0 {
            return None;
        }
        let (packets, skipped) = self.answers.feed(bytes);
        if skipped > 0 {
            return None;
        }
        let mut out = Vec::new();
        for packet in packets {
            let data = data_of(&packet);
            // The handle and offset of the read a `DATA` answer answers.
            let at = data.as_ref().and_then(|_| {
                let id = u32::from_be_bytes(packet.get(1..5)?.try_into().ok()?);
                match self.pending.get(&id)?.front()? {
                    Pending::Read { handle, offset } => Some((handle.clone(), *offset)),
                    _ => None,
                }
            });
            let Some(masking) = self.masking.as_ref() else { break };
            // What is held goes first unless this answer continues it:
            // answers keep their order.
            if !masking.held.back().is_none_or(|last| data.is_some() && last.followed_by(at.as_ref())) {
                self.release_held(usize::MAX, masker, counts, &mut out);
            }
            match data {
                Some(data) => {
                    let masking = self.masking.as_mut().expect("masking");
                    masking.held.push_back(HeldRead { packet, data, at, since: now });
                    // What has enough of the file after it goes.
                    self.release_held(CONTEXT, masker, counts, &mut out);
                }
                None => self.answered_packet(&packet, &mut out),
            }
        }
        Some(out)
    }

    /// When the read's answer held back must go.
    pub fn masking_due(&self) -> Option<Instant> {
        let held = self.masking.as_ref()?.held.front()?;
        Some(held.since + crate::mask::DELAY)
    }

    /// The reads' answers held back, masked with what is known: to go now.
    pub fn flush_masked(&mut self, masker: &Masker, counts: &mut Counts) -> Vec<u8> {
        let mut out = Vec::new();
        self.release_held(usize::MAX, masker, counts, &mut out);
        out
    }

    /// Sends on (into `out`) each held answer followed by at least `after`
    /// bytes of the file held after it (all of them: `usize::MAX`), masked
    /// between what went before it and what is held after it.
    fn release_held(&mut self, after: usize, masker: &Masker, counts: &mut Counts, out: &mut Vec<u8>) {
        loop {
            let Some(masking) = self.masking.as_mut() else { return };
            if masking.held.is_empty() {
                return;
            }
            let following: usize = masking.held.iter().skip(1).map(|h| h.data.len()).sum();
            if after != usize::MAX && following < after {
                return;
            }
            let front = masking.held.pop_front().expect("a held answer");
            // The file's bytes before it, and after it (as read).
            let before = match (&masking.before, &front.at) {
                (Some((handle, end, bytes)), Some((h, o))) if handle == h && end == o => bytes.as_slice(),
                _ => &[],
            };
            let mut next = Vec::new();
            for held in &masking.held {
                if next.len() >= CONTEXT {
                    break;
                }
                next.extend_from_slice(&held.packet[held.data.clone()]);
            }
            next.truncate(CONTEXT);
            let raw = &front.packet[front.data.clone()];
            let mut window = Vec::with_capacity(before.len() + raw.len() + next.len());
            window.extend_from_slice(before);
            window.extend_from_slice(raw);
            window.extend_from_slice(&next);
            let span = before.len()..before.len() + raw.len();
            let found = crate::mask::replacements(masker, &window, counts, true, |start| span.contains(&start));
            let mut packet = front.packet.clone();
            let data = &mut packet[front.data.clone()];
            for replacement in found {
                if replacement.bytes.len() != replacement.raw.len() {
                    // (Never: in place keeps lengths. Were it to fail,
                    // nothing of this answer passes unmasked.)
                    data.fill(b'*');
                    break;
                }
                let (start, end) = (replacement.raw.start.max(span.start), replacement.raw.end.min(span.end));
                if start < end {
                    let from = start - replacement.raw.start;
                    data[start - span.start..end - span.start]
                        .copy_from_slice(&replacement.bytes[from..from + (end - start)]);
                }
            }
            // What went is what is before the next.
            masking.before = front.at.as_ref().map(|(handle, offset)| {
                let mut tail = before.to_vec();
                tail.extend_from_slice(raw);
                let tail = tail.split_off(tail.len().saturating_sub(CONTEXT));
                (handle.clone(), offset + raw.len() as u64, tail)
            });
            self.answered_packet(&packet, out);
        }
    }

    /// An answer packet (without its length) that goes to the client:
    /// followed, and put in `out` with its length.
    fn answered_packet(&mut self, packet: &[u8], out: &mut Vec<u8>) {
        if self.answer(packet).is_none() {
            self.lost(1);
        }
        out.extend_from_slice(&(packet.len() as u32).to_be_bytes());
        out.extend_from_slice(packet);
    }

    /// Bytes the client sent; the operations they request that are
    /// recorded as they pass (removals, renames, ..., and transfers ending
    /// at a close).
    pub fn requested(&mut self, bytes: &[u8]) -> Vec<Operation> {
        let (packets, skipped) = self.requests.feed(bytes);
        if skipped > 0 {
            self.lost(skipped);
        }
        packets.iter().filter_map(|packet| self.passed(packet)).collect()
    }

    /// The whole request packets `bytes` completes (each without its
    /// length), none passed yet: each is to be [`check`](Sftp::check)ed,
    /// then [`passed`](Sftp::passed) or refused. `None` once a packet is
    /// larger than any SFTP server reads ([`MAX_PACKET`]): it cannot be
    /// read, so it cannot pass, and nothing after it can be told apart.
    pub fn split_requests(&mut self, bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
        if self.requests.skip > 0 {
            return None;
        }
        let (packets, skipped) = self.requests.feed(bytes);
        (skipped == 0).then_some(packets)
    }

    /// A request packet passed on to the target: what it asks is followed,
    /// and the operation to record if it is one.
    pub fn passed(&mut self, packet: &[u8]) -> Option<Operation> {
        match self.request(packet) {
            Some(operation) => operation,
            None => {
                self.lost(1);
                None
            }
        }
    }

    /// What the rules decide of a request packet before it passes.
    pub fn check(&self, packet: &[u8]) -> Check {
        let mut f = Fields(packet);
        let Some(kind) = f.u8() else { return Check::Unreadable { id: None } };
        if kind == fxp::INIT {
            return Check::Pass;
        }
        let Some(id) = Fields(f.0).u32() else { return Check::Unreadable { id: None } };
        // An id already waiting for its answer, or more requests waiting
        // than are followed: answers could no longer be told apart.
        if self.pending.get(&id).is_some_and(|waiting| !waiting.is_empty()) || self.in_flight >= MAX_PENDING {
            return Check::Unreadable { id: Some(id) };
        }
        if !matches!(
            kind,
            fxp::OPEN
                | fxp::OPENDIR
                | fxp::REMOVE
                | fxp::MKDIR
                | fxp::RMDIR
                | fxp::SETSTAT
                | fxp::FSETSTAT
                | fxp::RENAME
                | fxp::SYMLINK
                | fxp::EXTENDED
        ) {
            // Reading and writing through handles opened under the rules,
            // attributes, directories' entries, paths' real names.
            return Check::Pass;
        }
        let Some(id) = f.u32() else { return Check::Unreadable { id: None } };
        let unreadable = Check::Unreadable { id: Some(id) };
        let operation = |operation: &'static str, paths: Vec<&[u8]>| Check::Operation {
            id,
            operation,
            paths: paths.into_iter().map(<[u8]>::to_vec).collect(),
        };
        let read = (|| {
            Some(match kind {
                fxp::OPEN => {
                    let path = f.bytes()?;
                    let flags = f.u32()?;
                    let writes = flags & (OPEN_WRITE | OPEN_APPEND | OPEN_CREATE | OPEN_TRUNCATE) != 0;
                    operation(if writes { "write" } else { "read" }, vec![path])
                }
                fxp::OPENDIR => operation("list", vec![f.bytes()?]),
                fxp::REMOVE => operation("remove", vec![f.bytes()?]),
                fxp::MKDIR => operation("mkdir", vec![f.bytes()?]),
                fxp::RMDIR => operation("rmdir", vec![f.bytes()?]),
                fxp::SETSTAT => operation("setstat", vec![f.bytes()?]),
                fxp::FSETSTAT => {
                    // Its handle's path (a handle not followed: unreadable).
                    let open = self.handles.get(f.bytes()?)?;
                    operation("setstat", vec![open.path.as_bytes()])
                }
                fxp::RENAME => operation("rename", vec![f.bytes()?, f.bytes()?]),
                // (OpenSSH's order: the link's target, then the link.)
                fxp::SYMLINK => operation("symlink", vec![f.bytes()?, f.bytes()?]),
                _ => match f.bytes()? {
                    b"posix-rename@openssh.com" => operation("rename", vec![f.bytes()?, f.bytes()?]),
                    b"hardlink@openssh.com" => operation("link", vec![f.bytes()?, f.bytes()?]),
                    b"lsetstat@openssh.com" => operation("setstat", vec![f.bytes()?]),
                    b"check-file-name" => operation("read", vec![f.bytes()?]),
                    // Through handles, or about the server or the file
                    // system: nothing a path rule speaks of.
                    b"statvfs@openssh.com"
                    | b"fstatvfs@openssh.com"
                    | b"fsync@openssh.com"
                    | b"limits@openssh.com"
                    | b"expand-path@openssh.com"
                    | b"home-directory"
                    | b"users-groups-by-id@openssh.com"
                    | b"copy-data"
                    | b"check-file-handle" => Check::Pass,
                    // An extension not known here could do anything.
                    _ => return None,
                },
            })
        })();
        read.unwrap_or(unreadable)
    }

    /// How many of the target's `bytes` (about to be read) finish the
    /// answer packet under way: 0 between packets, where a status may be
    /// put; `None` if they do not finish it.
    pub fn answer_rest(&self, bytes: &[u8]) -> Option<usize> {
        if self.masking.is_some() {
            // Answers go whole there: the client is always between two,
            // once the version has gone.
            return self.versioned.then_some(0);
        }
        if !self.versioned && self.answers.buffer.is_empty() && self.answers.skip == 0 {
            // Nothing may go before the version: the end of the first
            // packet (the version) is the first place.
            let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
            return (4 + len <= bytes.len()).then_some(4 + len);
        }
        self.answers.rest_of_packet(bytes)
    }

    /// Bytes the target answered with.
    pub fn answered(&mut self, bytes: &[u8]) {
        let (packets, skipped) = self.answers.feed(bytes);
        if skipped > 0 {
            self.lost(skipped);
        }
        for packet in packets {
            if self.answer(&packet).is_none() {
                self.lost(1);
            }
        }
    }

    /// Packets not read: what they carried is not known, so no transfer
    /// under way can claim a whole-file hash.
    fn lost(&mut self, packets: u64) {
        self.unread += packets;
        for open in self.handles.values_mut() {
            open.hasher = None;
        }
    }

    /// Follows request `id` to its answer; false if too many are.
    fn wait(&mut self, id: u32, pending: Pending) -> bool {
        if self.in_flight >= MAX_PENDING {
            return false;
        }
        self.in_flight += 1;
        self.pending.entry(id).or_default().push_back(pending);
        true
    }

    /// The directory relative paths are relative to, once the target said
    /// (answering the client's own question, which OpenSSH's asks first).
    pub fn home(&self) -> Option<&str> {
        self.home.as_deref()
    }

    /// What a request packet is; `None` if it could not be read.
    fn request(&mut self, packet: &[u8]) -> Option<Option<Operation>> {
        let mut f = Fields(packet);
        let kind = f.u8()?;
        if kind == fxp::INIT {
            return Some(None);
        }
        let id = f.u32()?;
        if !matches!(kind, fxp::OPEN | fxp::READ) {
            // Every request is answered: followed, so that each answer is
            // told the request it answers.
            let home = kind == fxp::REALPATH && matches!(Fields(f.0).bytes(), Some(b"." | b""));
            let _ = self.wait(id, if home { Pending::Home } else { Pending::Other });
        }
        Some(match kind {
            fxp::OPEN => {
                let path = f.text()?;
                let flags = f.u32()?;
                let write = flags & OPEN_WRITE != 0;
                // A file written is hashed as it is sent (not appended to,
                // not read and written through one handle).
                let hashed = !write || flags & (OPEN_READ | OPEN_APPEND) == 0;
                let _ = self.wait(id, Pending::Open { path: path.clone(), write, hashed });
                Some(Operation::path("open", path))
            }
            fxp::READ => {
                let handle = f.bytes()?.to_vec();
                let offset = f.u64()?;
                if !self.wait(id, Pending::Read { handle: handle.clone(), offset })
                    && let Some(open) = self.handles.get_mut(&handle)
                {
                    // Not followed: its data will not be counted.
                    open.hasher = None;
                }
                None
            }
            fxp::WRITE => {
                let handle = f.bytes()?;
                let offset = f.u64()?;
                let data = f.bytes()?;
                if let Some(open) = self.handles.get_mut(handle) {
                    open.passed(offset, data);
                }
                None
            }
            fxp::CLOSE => {
                let handle = f.bytes()?;
                self.handles.remove(handle).map(|open| {
                    let whole = open.write || open.ended;
                    Operation {
                        operation: if open.write { "write" } else { "read" },
                        path: open.path,
                        target_path: None,
                        byte_count: Some(open.bytes),
                        sha256: open.hasher.filter(|_| whole).map(|h| hex(&h.finalize())),
                    }
                })
            }
            fxp::REMOVE => Some(Operation::path("remove", f.text()?)),
            fxp::MKDIR => Some(Operation::path("mkdir", f.text()?)),
            fxp::RMDIR => Some(Operation::path("rmdir", f.text()?)),
            fxp::SETSTAT => Some(Operation::path("setstat", f.text()?)),
            fxp::FSETSTAT => {
                let handle = f.bytes()?;
                self.handles.get(handle).map(|open| Operation::path("setstat", open.path.clone()))
            }
            fxp::RENAME => {
                let from = f.text()?;
                let to = f.text()?;
                Some(Operation { target_path: Some(to), ..Operation::path("rename", from) })
            }
            fxp::SYMLINK => {
                // OpenSSH sends them in the opposite order to the draft:
                // the target first, then the link.
                let target = f.text()?;
                let link = f.text()?;
                Some(Operation { target_path: Some(target), ..Operation::path("symlink", link) })
            }
            fxp::EXTENDED => {
                let name = f.text()?;
                match name.as_str() {
                    "posix-rename@openssh.com" => {
                        let from = f.text()?;
                        let to = f.text()?;
                        Some(Operation { target_path: Some(to), ..Operation::path("rename", from) })
                    }
                    "hardlink@openssh.com" => {
                        let target = f.text()?;
                        let link = f.text()?;
                        Some(Operation { target_path: Some(target), ..Operation::path("link", link) })
                    }
                    "lsetstat@openssh.com" => Some(Operation::path("setstat", f.text()?)),
                    _ => None,
                }
            }
            // Reading directories and attributes: passed, not recorded as
            // operations (their bytes are recorded).
            _ => None,
        })
    }

    /// Reads an answer packet; `None` if it could not be read.
    fn answer(&mut self, packet: &[u8]) -> Option<()> {
        let mut f = Fields(packet);
        let kind = f.u8()?;
        if kind == fxp::INIT + 1 {
            // VERSION
            self.versioned = true;
            return Some(());
        }
        let id = f.u32()?;
        let pending = self.pending.get_mut(&id).and_then(std::collections::VecDeque::pop_front);
        if self.pending.get(&id).is_some_and(std::collections::VecDeque::is_empty) {
            self.pending.remove(&id);
        }
        if pending.is_some() {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        match (kind, pending) {
            (fxp::HANDLE, Some(Pending::Open { mut path, write, hashed })) => {
                let handle = f.bytes()?.to_vec();
                if handle.len() <= MAX_HANDLE && self.handles.len() < MAX_HANDLES {
                    if path.len() > MAX_PATH {
                        let mut end = MAX_PATH;
                        while !path.is_char_boundary(end) {
                            end -= 1;
                        }
                        path.truncate(end);
                    }
                    let hasher = hashed.then(Sha256::new);
                    self.handles.insert(handle, Open { path, write, bytes: 0, hasher, next: 0, ended: false });
                }
            }
            (fxp::NAME, Some(Pending::Home)) => {
                let _count = f.u32()?;
                let name = f.text()?;
                if name.starts_with('/') && name.len() <= MAX_PATH {
                    self.home = Some(name);
                }
            }
            (fxp::DATA, Some(Pending::Read { handle, offset })) => {
                let data = f.bytes()?;
                if let Some(open) = self.handles.get_mut(&handle) {
                    open.passed(offset, data);
                }
            }
            (fxp::STATUS, Some(Pending::Read { handle, offset })) => {
                let code = f.u32()?;
                if let Some(open) = self.handles.get_mut(&handle)
                    && code == STATUS_EOF
                    && offset == open.next
                {
                    open.ended = true;
                }
            }
            _ => {}
        }
        Some(())
    }
}

/// Whether a command's first input opens an SFTP session: a packet whose
/// type is `SSH_FXP_INIT` (its length's first byte 0), or the start of one.
pub fn looks_like_sftp(first: &[u8]) -> bool {
    first.first() == Some(&0) && first.get(4).is_none_or(|&kind| kind == fxp::INIT)
}

/// Where a `DATA` answer's data is in its packet (`None`: not one).
fn data_of(packet: &[u8]) -> Option<Range<usize>> {
    if packet.first() != Some(&fxp::DATA) {
        return None;
    }
    let len = u32::from_be_bytes(packet.get(5..9)?.try_into().ok()?) as usize;
    let end = 9usize.checked_add(len)?;
    (end <= packet.len()).then_some(9..end)
}

/// What the rules are asked of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// Nothing a rule decides.
    Pass,
    /// `operation` (`read`, `write`, `list`, `remove`, `mkdir`, `rmdir`,
    /// `setstat`, `rename`, `symlink`, `link`) on `paths` as the request
    /// named them.
    Operation { id: u32, operation: &'static str, paths: Vec<Vec<u8>> },
    /// A request a rule would decide, which cannot be read (malformed, an
    /// unknown extension, a handle not followed).
    Unreadable { id: Option<u32> },
}

/// The status that refuses request `id`, with `message`: a whole packet,
/// its length first.
pub fn refusal(id: u32, message: &str) -> Vec<u8> {
    let mut body = vec![fxp::STATUS];
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&STATUS_PERMISSION_DENIED.to_be_bytes());
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message.as_bytes());
    // The language tag: none.
    body.extend_from_slice(&0u32.to_be_bytes());
    let mut packet = (body.len() as u32).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The entry point for coverage-guided fuzzing (`fuzz/`, see the README's
/// "Fuzzing") and its regression replays: both directions of an SFTP
/// channel are what a client and a target sent, untrusted.
pub mod fuzzing {
    use super::*;

    /// An SFTP channel driven by `data`: its first byte chooses what reads
    /// it (bit 0: masked, bit 1: read whole under rules), then pieces, each
    /// a byte whose low bit says which way (0: a request, 1: an answer), a
    /// length byte and that many bytes. Must hold: nothing panics; masked,
    /// the answers go as whole packets and exactly as many bytes as came
    /// (masking keeps lengths); under rules, the requests split into whole
    /// packets that are exactly the bytes that came, less an unfinished
    /// last one.
    pub fn channel(data: &[u8], masker: &Masker) {
        let Some((&mode, mut rest)) = data.split_first() else { return };
        let (masked, checked) = (mode & 1 != 0, mode & 2 != 0);
        let mut sftp = Sftp::new(masked);
        let (mut counts, now) = (Counts::new(), Instant::now());
        let (mut requests_in, mut requests_out) = (Vec::new(), Vec::new());
        let (mut answers_in, mut answers_out) = (0usize, Vec::new());
        let mut whole = true;
        while let [way, len, tail @ ..] = rest {
            let (piece, after) = tail.split_at((*len as usize).min(tail.len()));
            rest = after;
            if way & 1 == 0 {
                if checked && whole {
                    requests_in.extend_from_slice(piece);
                    match sftp.split_requests(piece) {
                        Some(packets) => {
                            for packet in packets {
                                let _ = sftp.check(&packet);
                                sftp.passed(&packet);
                                requests_out.extend_from_slice(&(packet.len() as u32).to_be_bytes());
                                requests_out.extend_from_slice(&packet);
                            }
                        }
                        None => whole = false,
                    }
                } else {
                    sftp.requested(piece);
                }
            } else if masked {
                answers_in += piece.len();
                match sftp.answered_masked(piece, masker, &mut counts, now) {
                    Some(out) => answers_out.extend(out),
                    None => return,
                }
            } else {
                let _ = sftp.answer_rest(piece);
                sftp.answered(piece);
            }
        }
        if masked {
            answers_out.extend(sftp.flush_masked(masker, &mut counts));
            let mut at = 0;
            while at < answers_out.len() {
                let len = u32::from_be_bytes(answers_out[at..at + 4].try_into().expect("a length")) as usize;
                at += 4 + len;
            }
            assert_eq!(at, answers_out.len(), "answers go as whole packets");
            let unfinished = sftp.answers.buffer.len();
            assert_eq!(answers_out.len() + unfinished, answers_in, "masking keeps lengths");
        }
        if checked && whole {
            assert_eq!(requests_out.len() + sftp.requests.buffer.len(), requests_in.len());
            assert_eq!(requests_out[..], requests_in[..requests_out.len()], "requests pass as they came");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, id: Option<u32>, fields: &[&[u8]]) -> Vec<u8> {
        let mut body = vec![kind];
        if let Some(id) = id {
            body.extend_from_slice(&id.to_be_bytes());
        }
        for field in fields {
            body.extend_from_slice(field);
        }
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    fn string(s: &[u8]) -> Vec<u8> {
        let mut out = (s.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(s);
        out
    }

    #[test]
    fn a_file_written_in_order_is_hashed_whole_and_pieces_split_anywhere_are_read() {
        let mut sftp = Sftp::default();
        let open = packet(fxp::OPEN, Some(1), &[&string(b"/tmp/up.bin"), &0x1au32.to_be_bytes(), &0u32.to_be_bytes()]);
        let handle = string(b"h1");
        let down = packet(fxp::HANDLE, Some(1), &[&handle]);
        let mut up = Vec::new();
        up.extend(packet(fxp::WRITE, Some(2), &[&handle, &0u64.to_be_bytes(), &string(b"hello ")]));
        up.extend(packet(fxp::WRITE, Some(3), &[&handle, &6u64.to_be_bytes(), &string(b"world")]));
        up.extend(packet(fxp::CLOSE, Some(4), &[&handle]));
        up.extend(packet(fxp::RENAME, Some(5), &[&string(b"/tmp/up.bin"), &string(b"/tmp/done.bin")]));
        // Pieces split anywhere: the open in two, its answer in two, the
        // rest byte by byte.
        let mut ops = sftp.requested(&open[..10]);
        ops.extend(sftp.requested(&open[10..]));
        sftp.answered(&down[..3]);
        sftp.answered(&down[3..]);
        for byte in &up {
            ops.extend(sftp.requested(&[*byte]));
        }
        let expected = hex(&Sha256::digest(b"hello world"));
        assert_eq!(ops.len(), 3, "{ops:?}");
        assert_eq!(ops[0], Operation::path("open", "/tmp/up.bin".into()));
        assert_eq!(
            ops[1],
            Operation {
                operation: "write",
                path: "/tmp/up.bin".into(),
                target_path: None,
                byte_count: Some(11),
                sha256: Some(expected)
            }
        );
        assert_eq!(ops[2].target_path.as_deref(), Some("/tmp/done.bin"));
        assert_eq!(sftp.unread, 0);
    }

    #[test]
    fn a_read_is_hashed_whole_only_once_it_reached_the_end() {
        for reaches_end in [true, false] {
            let mut sftp = Sftp::default();
            let handle = string(b"h");
            sftp.requested(&packet(
                fxp::OPEN,
                Some(1),
                &[&string(b"/etc/x"), &1u32.to_be_bytes(), &0u32.to_be_bytes()],
            ));
            sftp.answered(&packet(fxp::HANDLE, Some(1), &[&handle]));
            sftp.requested(&packet(fxp::READ, Some(2), &[&handle, &0u64.to_be_bytes(), &1024u32.to_be_bytes()]));
            sftp.answered(&packet(fxp::DATA, Some(2), &[&string(b"abc")]));
            if reaches_end {
                sftp.requested(&packet(fxp::READ, Some(3), &[&handle, &3u64.to_be_bytes(), &1024u32.to_be_bytes()]));
                sftp.answered(&packet(fxp::STATUS, Some(3), &[&STATUS_EOF.to_be_bytes(), &string(b"EOF")]));
            }
            let ops = sftp.requested(&packet(fxp::CLOSE, Some(4), &[&handle]));
            assert_eq!(ops[0].operation, "read");
            assert_eq!(ops[0].byte_count, Some(3));
            let whole = reaches_end.then(|| hex(&Sha256::digest(b"abc")));
            assert_eq!(ops[0].sha256, whole, "reached the end: {reaches_end}");
        }
    }

    #[test]
    fn garbage_and_huge_packets_are_skipped_without_panicking() {
        let mut sftp = Sftp::default();
        let mut huge = ((MAX_PACKET + 10) as u32).to_be_bytes().to_vec();
        huge.extend(std::iter::repeat_n(0xffu8, MAX_PACKET + 10));
        assert!(sftp.requested(&huge).is_empty());
        assert!(sftp.requested(&packet(fxp::OPEN, Some(1), &[b"\xff\xff"])).is_empty());
        assert_eq!(sftp.unread, 2);
        let ops = sftp.requested(&packet(fxp::REMOVE, Some(2), &[&string(b"/x")]));
        assert_eq!(ops, vec![Operation::path("remove", "/x".into())]);
        // Random bytes: nothing panics.
        let (mut checked, mut masked, masker) = (Sftp::default(), Sftp::new(true), masker());
        let (mut counts, now) = (Counts::new(), Instant::now());
        let mut state = 1u64;
        for _ in 0..2000 {
            let bytes: Vec<u8> = (0..64)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (state >> 56) as u8
                })
                .collect();
            sftp.requested(&bytes);
            sftp.answered(&bytes);
            // Read whole under rules, and masked: nothing panics either.
            if let Some(packets) = checked.split_requests(&bytes) {
                for packet in packets {
                    if checked.check(&packet) == Check::Pass {
                        checked.passed(&packet);
                    }
                }
            }
            masked.answered_masked(&bytes, &masker, &mut counts, now);
            masked.requested(&bytes);
        }
        masked.flush_masked(&masker, &mut counts);
    }

    /// An operation's name and the paths it names.
    type Expected<'a> = (&'static str, Vec<&'a [u8]>);

    /// Generated requests of every kind a rule decides: what the rules are
    /// asked ([`Sftp::check`]) names the same paths as what is recorded
    /// once the request passes ([`Sftp::passed`]): the two readers agree.
    #[test]
    fn what_the_rules_decide_is_what_is_recorded() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let alphabet = b"ab/.~ -_\xc3\xa9";
        let path = |rng: &mut rand_chacha::ChaCha8Rng| -> Vec<u8> {
            (0..rng.random_range(0..12)).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect()
        };
        for case in 0..3000u32 {
            let mut sftp = Sftp::default();
            let (a, b) = (path(&mut rng), path(&mut rng));
            let flags: u32 = rng.random_range(0..0x40);
            let (kind, fields, expected): (u8, Vec<Vec<u8>>, Expected) = match rng.random_range(0..9) {
                0 => {
                    let writes = flags & (OPEN_WRITE | OPEN_APPEND | OPEN_CREATE | OPEN_TRUNCATE) != 0;
                    let fields = vec![string(&a), flags.to_be_bytes().to_vec(), 0u32.to_be_bytes().to_vec()];
                    (fxp::OPEN, fields, (if writes { "write" } else { "read" }, vec![&a]))
                }
                1 => (fxp::REMOVE, vec![string(&a)], ("remove", vec![&a])),
                2 => (fxp::MKDIR, vec![string(&a), 0u32.to_be_bytes().to_vec()], ("mkdir", vec![&a])),
                3 => (fxp::RMDIR, vec![string(&a)], ("rmdir", vec![&a])),
                4 => (fxp::SETSTAT, vec![string(&a), 0u32.to_be_bytes().to_vec()], ("setstat", vec![&a])),
                5 => (fxp::RENAME, vec![string(&a), string(&b)], ("rename", vec![&a, &b])),
                6 => (fxp::SYMLINK, vec![string(&a), string(&b)], ("symlink", vec![&a, &b])),
                7 => {
                    let fields = vec![string(b"posix-rename@openssh.com"), string(&a), string(&b)];
                    (fxp::EXTENDED, fields, ("rename", vec![&a, &b]))
                }
                _ => (
                    fxp::EXTENDED,
                    vec![string(b"hardlink@openssh.com"), string(&a), string(&b)],
                    ("link", vec![&a, &b]),
                ),
            };
            let refs: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
            let whole = packet(kind, Some(case), &refs);
            let body = &whole[4..];
            let Check::Operation { id, operation, paths } = sftp.check(body) else {
                panic!("case {case}: {:?}", sftp.check(body))
            };
            assert_eq!((id, operation), (case, expected.0), "case {case}");
            assert_eq!(paths, expected.1.iter().map(|p| p.to_vec()).collect::<Vec<_>>(), "case {case}");
            let recorded = sftp.passed(body).expect("recorded");
            let lossy = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
            // Recorded as the path, then the other path (a symlink's and a
            // link's target first on the wire, as OpenSSH sends it).
            let (first, second) = match kind {
                fxp::SYMLINK => (&paths[1], paths.first()),
                fxp::EXTENDED if operation == "link" => (&paths[1], paths.first()),
                _ => (&paths[0], paths.get(1)),
            };
            assert_eq!(recorded.path, lossy(first), "case {case}");
            assert_eq!(recorded.target_path, second.map(|p| lossy(p)), "case {case}");
        }
    }

    /// The answer stream cut anywhere: where the packet under way ends, as
    /// [`Sftp::answer_rest`] tells it, is where the whole packets of the
    /// stream end.
    #[test]
    fn the_end_of_an_answer_is_found_wherever_the_stream_is_cut() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for case in 0..500 {
            // The version first: nothing may go before its end.
            let mut stream = packet(fxp::INIT + 1, None, &[&3u32.to_be_bytes()]);
            let version = stream.len();
            let mut ends = std::collections::BTreeSet::from([version]);
            for id in 0..rng.random_range(1..8u32) {
                let data: Vec<u8> = (0..rng.random_range(0..300)).map(|_| rng.random()).collect();
                stream.extend(packet(fxp::DATA, Some(id), &[&string(&data)]));
                ends.insert(stream.len());
            }
            let mut sftp = Sftp::default();
            let mut at = 0;
            while at < stream.len() {
                let cut = (at + rng.random_range(0..400)).min(stream.len());
                let piece = &stream[at..cut];
                let between = ends.contains(&at);
                let next_end = ends.range(at + usize::from(between)..).next().copied();
                let expected = if between { Some(0) } else { next_end.filter(|&end| end <= cut).map(|end| end - at) };
                assert_eq!(sftp.answer_rest(piece), expected, "case {case} at {at}..{cut}");
                sftp.answered(piece);
                at = cut;
            }
            assert_eq!(sftp.answer_rest(&[]), Some(0));
        }
    }

    #[test]
    fn requests_a_rule_cannot_read_are_told_apart() {
        let sftp = Sftp::default();
        let body = |p: Vec<u8>| p[4..].to_vec();
        assert_eq!(sftp.check(&body(packet(fxp::READ, Some(1), &[b"x"]))), Check::Pass);
        assert_eq!(sftp.check(&body(packet(fxp::OPEN, Some(2), &[b"\xff\xff"]))), Check::Unreadable { id: Some(2) });
        assert_eq!(sftp.check(&[fxp::REMOVE, 0]), Check::Unreadable { id: None });
        let unknown = body(packet(fxp::EXTENDED, Some(3), &[&string(b"rm-rf@example.com"), &string(b"/")]));
        assert_eq!(sftp.check(&unknown), Check::Unreadable { id: Some(3) });
        let harmless = body(packet(fxp::EXTENDED, Some(4), &[&string(b"limits@openssh.com")]));
        assert_eq!(sftp.check(&harmless), Check::Pass);
        // A handle not followed cannot be told a path.
        let fsetstat = body(packet(fxp::FSETSTAT, Some(5), &[&string(b"h9"), &0u32.to_be_bytes()]));
        assert_eq!(sftp.check(&fsetstat), Check::Unreadable { id: Some(5) });
        // A refusal is a whole status packet that the answer reader reads.
        let mut reader = Sftp::default();
        let version = packet(fxp::INIT + 1, None, &[&3u32.to_be_bytes()]);
        assert_eq!(reader.answer_rest(&[]), None, "nothing goes before the version");
        assert_eq!(reader.answer_rest(&version), Some(version.len()));
        reader.answered(&version);
        let status = refusal(7, "no");
        assert_eq!(reader.answer_rest(&status[..5]), Some(0));
        reader.answered(&status[..5]);
        assert_eq!(reader.answer_rest(&status[5..]), Some(status.len() - 5));
        // More than one packet over the limit cannot be split.
        let mut split = Sftp::default();
        let mut huge = ((MAX_PACKET + 1) as u32).to_be_bytes().to_vec();
        huge.push(fxp::WRITE);
        assert!(split.split_requests(&huge).is_none());
        assert!(split.split_requests(b"more").is_none());
    }

    fn masker() -> std::sync::Arc<Masker> {
        use proctor_gateway_core::masking::{MaskingConfig, MaskingKey, ProfileConfig, Profiles};
        let profile = ProfileConfig { detectors: vec!["all".into()], ..Default::default() };
        let config = MaskingConfig { profiles: [("p".to_string(), profile)].into(), ..Default::default() };
        Profiles::new(&config, MaskingKey::new(vec![1; 32])).unwrap().masker("p").unwrap().unwrap()
    }

    /// A file read through a masked channel in `reads` of `chunk` bytes
    /// (all asked at once, as OpenSSH's client does), the target's answers
    /// cut into `cuts`-byte pieces: the file as the client got it, and the
    /// operation recorded at its close.
    fn read_masked(file: &[u8], chunk: usize, cut: usize, masker: &Masker) -> (Vec<u8>, Operation) {
        let mut sftp = Sftp::new(true);
        let mut counts = Counts::new();
        let now = Instant::now();
        let handle = string(b"h");
        sftp.requested(&packet(fxp::OPEN, Some(1), &[&string(b"/f"), &1u32.to_be_bytes(), &0u32.to_be_bytes()]));
        let mut got =
            sftp.answered_masked(&packet(fxp::HANDLE, Some(1), &[&handle]), masker, &mut counts, now).unwrap();
        let mut answers = Vec::new();
        let mut id = 2;
        // (The last read is at the end, its answer the end of the file, as
        // OpenSSH's client asks again for the rest of a short read.)
        for offset in (0..file.len()).step_by(chunk).chain([file.len()]) {
            sftp.requested(&packet(
                fxp::READ,
                Some(id),
                &[&handle, &(offset as u64).to_be_bytes(), &(chunk as u32).to_be_bytes()],
            ));
            answers.extend(match file.get(offset..(offset + chunk).min(file.len())) {
                Some(data) if !data.is_empty() => packet(fxp::DATA, Some(id), &[&string(data)]),
                _ => packet(fxp::STATUS, Some(id), &[&STATUS_EOF.to_be_bytes(), &string(b"EOF"), &string(b"")]),
            });
            id += 1;
        }
        for piece in answers.chunks(cut) {
            got.extend(sftp.answered_masked(piece, masker, &mut counts, now).unwrap());
        }
        got.extend(sftp.flush_masked(masker, &mut counts));
        let closed = sftp.requested(&packet(fxp::CLOSE, Some(id), &[&handle]));
        // The data the client got, from the answers' packets.
        let mut content = Vec::new();
        let mut rest = &got[..];
        while rest.len() >= 4 {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            let body = &rest[4..4 + len];
            if let Some(data) = data_of(body) {
                content.extend_from_slice(&body[data]);
            }
            rest = &rest[4 + len..];
        }
        assert!(rest.is_empty(), "whole packets only");
        (content, closed.into_iter().next().expect("the read recorded"))
    }

    #[test]
    fn a_secret_cut_between_two_reads_is_masked_in_both_and_lengths_are_kept() {
        let masker = masker();
        let file = b"id,card\n1,4111 1111 1111 1111\n2,none\n";
        // Cut in the middle of the card number.
        let (got, read) = read_masked(file, 14, 7, &masker);
        assert_eq!(got.len(), file.len());
        let text = String::from_utf8_lossy(&got).to_string();
        assert!(!text.contains("4111") && !text.contains("1111 1111"), "{text}");
        assert!(text.starts_with("id,card\n1,") && text.ends_with("\n2,none\n"), "{text}");
        // What is recorded of the file is what the client got.
        assert_eq!(read.byte_count, Some(file.len() as u64));
        assert_eq!(read.sha256, Some(hex(&Sha256::digest(&got))));
    }

    /// Generated files, secrets among words, read in chunks of any size
    /// and answered in pieces of any size: what the client gets is what
    /// masking the whole file in place gives.
    #[test]
    fn a_file_read_in_any_chunks_is_masked_as_the_whole_file_is() {
        use rand::{Rng, SeedableRng};
        let masker = masker();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let secrets = ["4111 1111 1111 1111", "alice@example.com", "AKIAIOSFODNN7EXAMPLE", "password=hunter2x"];
        let words = ["alpha", "beta", "42", "x-y", "\n", "é", "gamma;"];
        for case in 0..300 {
            let mut file = Vec::new();
            for _ in 0..rng.random_range(1..40) {
                let word = if rng.random_range(0..5) == 0 {
                    secrets[rng.random_range(0..secrets.len())]
                } else {
                    words[rng.random_range(0..words.len())]
                };
                file.extend_from_slice(word.as_bytes());
                file.push(if rng.random_range(0..4) == 0 { b'\n' } else { b' ' });
            }
            let expected = crate::mask::mask_bytes_in_place(&masker, &file, &mut Counts::new());
            let (chunk, cut) = (rng.random_range(1..64), rng.random_range(1..100));
            let (got, _) = read_masked(&file, chunk, cut, &masker);
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&expected),
                "case {case}, chunk {chunk}: {}",
                String::from_utf8_lossy(&file)
            );
        }
    }

    /// The fuzzing entry point on generated channels: well-formed packets
    /// of every kind both ways (data with secrets in it), cut anywhere,
    /// with garbage among them.
    #[test]
    fn the_fuzzing_entry_point_holds_on_generated_channels() {
        use rand::{Rng, SeedableRng};
        let masker = masker();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let contents: [&[u8]; 4] =
            [b"4111 1111 1111 1111 ", b"bob@example.com\n", b"plain words ", b"\xff\x00\x1b[31m"];
        for _ in 0..400 {
            let mut stream = vec![rng.random_range(0..4u8)];
            for _ in 0..rng.random_range(1..30) {
                let id = Some(rng.random_range(0..6u32));
                let handle = string(&[b'h', rng.random_range(0..3u8)]);
                let mut data = Vec::new();
                for _ in 0..rng.random_range(0..6) {
                    data.extend_from_slice(contents[rng.random_range(0..contents.len())]);
                }
                let offset = (rng.random_range(0..4u64) * 64).to_be_bytes();
                let (way, bytes) = match rng.random_range(0..8) {
                    0 => (0, packet(fxp::OPEN, id, &[&string(b"/f"), &1u32.to_be_bytes(), &0u32.to_be_bytes()])),
                    1 => (0, packet(fxp::READ, id, &[&handle, &offset, &64u32.to_be_bytes()])),
                    2 => (0, packet(fxp::REMOVE, id, &[&string(b"/x")])),
                    3 => (1, packet(fxp::HANDLE, id, &[&handle])),
                    4 | 5 => (1, packet(fxp::DATA, id, &[&string(&data)])),
                    6 => (1, packet(fxp::STATUS, id, &[&STATUS_EOF.to_be_bytes(), &string(b""), &string(b"")])),
                    _ => (rng.random_range(0..2), (0..rng.random_range(0..9)).map(|_| rng.random()).collect()),
                };
                for piece in bytes.chunks(rng.random_range(1..40)) {
                    stream.extend_from_slice(&[way, piece.len() as u8]);
                    stream.extend_from_slice(piece);
                }
            }
            fuzzing::channel(&stream, &masker);
        }
    }
}
