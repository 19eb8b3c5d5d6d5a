//! SFTP as file operations: the packets of an `sftp` subsystem channel
//! (draft-ietf-secsh-filexfer-02, the version OpenSSH speaks, v3) read as
//! they pass, both ways, into the operations an investigator asks about:
//! which file was opened, read or written, how many bytes, and the SHA-256
//! of a whole file transferred; which paths were removed, renamed, made,
//! changed or linked.
//!
//! Read only (a session without file rules or masking), the reader never
//! changes a byte and never holds one back: the channel's bytes are
//! relayed and recorded as they are whatever this makes of them. A packet
//! it cannot read is counted and skipped by its length; what an operation
//! records is only what the packets said.
//!
//! Under rules that decide file operations, or in a masked session, both
//! ways go as whole packets instead ([`Sftp::whole`]). Each request is
//! read before it passes ([`Sftp::split_requests`], [`Sftp::check`]); one
//! the rules refuse is answered here with a status ([`refusal`]) and the
//! target never sees it. Masked, each read asks the target for
//! [`CONTEXT`] bytes more on each side, its answer is masked in place
//! (the same length: the client counts offsets by it) with those, and
//! trimmed back to what the client asked: a secret cut between reads is
//! found whole whatever their order, size or timing.

use std::collections::HashMap;
use std::ops::Range;

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
    pub const EXTENDED_REPLY: u8 = 201;
}

/// `SSH_FXF_READ`, `SSH_FXF_WRITE`, `SSH_FXF_APPEND`.
const OPEN_READ: u32 = 0x01;
const OPEN_WRITE: u32 = 0x02;
const OPEN_APPEND: u32 = 0x04;
/// `SSH_FXF_CREAT`, `SSH_FXF_TRUNC`.
const OPEN_CREATE: u32 = 0x08;
const OPEN_TRUNCATE: u32 = 0x10;
/// `SSH_FX_FAILURE`.
const STATUS_FAILURE: u32 = 4;
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
    /// Pieces that came ahead of `next` (answers to reads asked together,
    /// the rest of a short read asked again), by offset: hashed once the
    /// bytes before them have come; at most [`AHEAD`] bytes.
    ahead: std::collections::BTreeMap<u64, Vec<u8>>,
    /// Where a read found the end of the file.
    end: Option<u64>,
}

/// The most of a channel's transfers kept ahead of their hash, in bytes
/// and in pieces.
const AHEAD: usize = 8 << 20;
const AHEAD_PIECES: usize = 4096;

impl Open {
    /// `data` passed at `offset`; `used` is what the channel keeps ahead
    /// (bytes, pieces), counted here.
    fn passed(&mut self, offset: u64, data: &[u8], used: &mut (usize, usize)) {
        self.bytes += data.len() as u64;
        if data.is_empty() {
            return;
        }
        let Some(hasher) = self.hasher.as_mut() else { return };
        if offset > self.next
            && used.0 + data.len() <= AHEAD
            && used.1 < AHEAD_PIECES
            && !self.ahead.contains_key(&offset)
        {
            self.ahead.insert(offset, data.to_vec());
            *used = (used.0 + data.len(), used.1 + 1);
            return;
        }
        if offset != self.next {
            // Read again, or too far ahead: no whole-file hash.
            self.hasher = None;
            self.give_back(used);
            return;
        }
        hasher.update(data);
        self.next += data.len() as u64;
        // What came ahead and now follows.
        while let Some(entry) = self.ahead.first_entry() {
            if *entry.key() > self.next {
                break;
            }
            let (at, piece) = entry.remove_entry();
            *used = (used.0 - piece.len(), used.1 - 1);
            if at != self.next {
                self.hasher = None;
                self.give_back(used);
                return;
            }
            hasher.update(&piece);
            self.next += piece.len() as u64;
        }
    }

    /// Drops what was kept ahead, no longer counted.
    fn give_back(&mut self, used: &mut (usize, usize)) {
        for piece in std::mem::take(&mut self.ahead).into_values() {
            *used = (used.0 - piece.len(), used.1 - 1);
        }
    }
}

/// What a request waits for.
enum Pending {
    /// An `open` of this path: its answer is the handle.
    Open { path: String, write: bool, hashed: bool },
    /// A `read` of this handle at this offset, `len` bytes, asked of the
    /// target from `from` (before `offset` when widened for masking): its
    /// answer is the data.
    Read { handle: Vec<u8>, offset: u64, len: u32, from: u64 },
    /// The real name of `.`: its answer is the directory relative paths
    /// are relative to (`own`: asked by Proctor, the answer kept here).
    Home { own: bool },
    /// The server's limits (`limits@openssh.com`): its answer says how
    /// much one read may ask.
    Limits,
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
    /// In a masked session: what reads return is masked.
    masked: bool,
    /// Requests are decided by file rules.
    checked: bool,
    /// The most the server reads at once, as it told the client.
    read_cap: Option<u64>,
    /// What transfers keep ahead of their hash (bytes, pieces).
    ahead: (usize, usize),
}

/// How much more of a file than a read asks for it is read with, on each
/// side, when masked: a secret (a private key's armour included) cut where
/// the read starts or ends is found whole.
pub const CONTEXT: usize = 4096;

/// The id of the one request Proctor asks itself: the real name of `.`,
/// the directory relative paths are relative to (its answer is not passed
/// on).
const HOME_ID: u32 = u32::MAX;

impl Sftp {
    /// The reader of a channel: `masked`, in a session whose output is
    /// masked (what reads return is too); `checked`, under rules that
    /// decide file operations.
    pub fn new(masked: bool, checked: bool) -> Sftp {
        Sftp { masked, checked, ..Sftp::default() }
    }

    /// Whether the target's version has been read (answers then follow,
    /// and a refusal may go).
    pub fn versioned(&self) -> bool {
        self.versioned
    }

    /// Whether what reads return is masked.
    pub fn masks(&self) -> bool {
        self.masked
    }

    /// Whether both ways go as whole packets ([`Sftp::split_requests`] and
    /// [`Sftp::forward`] to the target, [`Sftp::answers`] to the client).
    pub fn whole(&self) -> bool {
        self.masked || self.checked
    }

    /// A request `id` that cannot be followed to its answer: its id is
    /// already waiting for one, or too many requests are. Passed, the
    /// answers could no longer be told apart (and reads not masked).
    pub fn conflict(&self, packet: &[u8]) -> Option<u32> {
        if packet.first() == Some(&fxp::INIT) {
            return None;
        }
        let id = u32::from_be_bytes(packet.get(1..5)?.try_into().ok()?);
        let waiting = self.pending.get(&id).is_some_and(|w| !w.is_empty());
        (waiting || self.in_flight >= MAX_PENDING).then_some(id)
    }

    /// A request packet that passes (the rules allowed it): followed, and
    /// put in `out` as it goes to the target, with its length (a read
    /// widened by [`CONTEXT`] on each side when masked; the first,
    /// `INIT`, followed under file rules by Proctor's own question of the
    /// login directory). The operation to record, if it is one.
    pub fn forward(&mut self, packet: &[u8], out: &mut Vec<u8>) -> Option<Operation> {
        let mut put = |packet: &[u8]| {
            out.extend_from_slice(&(packet.len() as u32).to_be_bytes());
            out.extend_from_slice(packet);
        };
        if self.masked
            && packet.first() == Some(&fxp::READ)
            && let Some((id, handle, offset, len)) = read_request(packet)
        {
            let from = offset.saturating_sub(CONTEXT as u64);
            let widened = widened(offset, len, from);
            if self.wait(id, Pending::Read { handle: handle.to_vec(), offset, len, from }) {
                let mut asked = vec![fxp::READ];
                asked.extend_from_slice(&id.to_be_bytes());
                asked.extend_from_slice(&(handle.len() as u32).to_be_bytes());
                asked.extend_from_slice(handle);
                asked.extend_from_slice(&from.to_be_bytes());
                asked.extend_from_slice(&widened.to_be_bytes());
                put(&asked);
                return None;
            }
        }
        let operation = self.passed(packet);
        put(packet);
        if self.checked && packet.first() == Some(&fxp::INIT) && self.wait(HOME_ID, Pending::Home { own: true }) {
            let mut asked = vec![fxp::REALPATH];
            asked.extend_from_slice(&HOME_ID.to_be_bytes());
            asked.extend_from_slice(&1u32.to_be_bytes());
            asked.push(b'.');
            put(&asked);
        }
        operation
    }

    /// Bytes the target answered with, when both ways go whole: what goes
    /// to the client now, whole packets (a read's data masked in place and
    /// trimmed to what the client asked, when masked; the answer to
    /// Proctor's own question kept). `None` once an answer is larger than
    /// is read: it cannot be told apart, so it cannot pass.
    pub fn answers(&mut self, bytes: &[u8], masker: Option<&Masker>, counts: &mut Counts) -> Option<Vec<u8>> {
        if self.answers.skip > 0 {
            return None;
        }
        let (packets, skipped) = self.answers.feed(bytes);
        if skipped > 0 {
            return None;
        }
        let mut out = Vec::new();
        for packet in packets {
            let kind = packet.first().copied();
            // (The version answers no request: it carries no id.)
            let id = packet
                .get(1..5)
                .filter(|_| kind != Some(fxp::INIT + 1))
                .and_then(|id| id.try_into().ok())
                .map(u32::from_be_bytes);
            let waiting = id.and_then(|id| self.pending.get(&id)?.front());
            let packet = match (kind, waiting, masker.filter(|_| self.masked)) {
                (_, Some(Pending::Home { own: true }), _) => {
                    // Proctor's own question: its answer kept here.
                    self.answered_packet(&packet, None);
                    continue;
                }
                (Some(fxp::EXTENDED_REPLY), Some(Pending::Limits), Some(_)) => {
                    // Reads are asked wider than the client asks them: the
                    // client is told to ask less, so that they stay within
                    // what the server reads at once.
                    let mut packet = packet;
                    if let Some(field) = packet.get_mut(13..21) {
                        let read = u64::from_be_bytes(field.try_into().expect("eight bytes"));
                        self.read_cap = Some(read).filter(|cap| *cap > 0);
                        let room = 2 * CONTEXT as u64;
                        if read > room + 1024 {
                            field.copy_from_slice(&(read - room).to_be_bytes());
                        }
                    }
                    packet
                }
                (Some(fxp::DATA), Some(Pending::Read { offset, len, from, .. }), Some(masker)) => {
                    // What the target was asked: the client's read, and
                    // the file around it.
                    let asked = widened(*offset, *len, *from) as usize;
                    let (start, len) = ((offset - from) as usize, *len as usize);
                    match data_of(&packet) {
                        Some(data) if start < data.len() => {
                            let window = &packet[data.clone()];
                            let mut end = start.saturating_add(len).min(window.len());
                            // Shorter than the most the server reads: the
                            // file's end.
                            let at_end = self.read_cap.is_some_and(|cap| (window.len() as u64) < cap.min(asked as u64));
                            if window.len() < asked && !at_end {
                                // A short answer (the file's end, or the
                                // most the server reads at once): what is
                                // given keeps what followed it, unless all
                                // that is left is its last bytes.
                                let kept = window.len().saturating_sub(CONTEXT);
                                if kept > start {
                                    end = end.min(kept);
                                }
                            }
                            let masked = masked_in_place(masker, window, counts, start..end);
                            data_packet(id.expect("an id"), &masked[start..end])
                        }
                        // Nothing of what the client asked is there: the
                        // file ends before it.
                        Some(_) => status_packet(id.expect("an id"), STATUS_EOF, "End of file"),
                        None => status_packet(id.unwrap_or(0), STATUS_FAILURE, "Proctor: a malformed answer"),
                    }
                }
                (Some(fxp::DATA), _, Some(masker)) => match data_of(&packet) {
                    // Data answering no read followed: masked by itself.
                    Some(data) => {
                        let window = &packet[data.clone()];
                        let masked = masked_in_place(masker, window, counts, 0..window.len());
                        data_packet(id.expect("an id"), &masked)
                    }
                    None => status_packet(id.unwrap_or(0), STATUS_FAILURE, "Proctor: a malformed answer"),
                },
                _ => packet,
            };
            self.answered_packet(&packet, Some(&mut out));
        }
        Some(out)
    }

    /// An answer packet (without its length): followed, and put in `out`
    /// with its length if it goes to the client.
    fn answered_packet(&mut self, packet: &[u8], out: Option<&mut Vec<u8>>) {
        if self.answer(packet).is_none() {
            self.lost(1);
        }
        if let Some(out) = out {
            out.extend_from_slice(&(packet.len() as u32).to_be_bytes());
            out.extend_from_slice(packet);
        }
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
            open.give_back(&mut self.ahead);
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
            let limits = kind == fxp::EXTENDED && Fields(f.0).bytes() == Some(b"limits@openssh.com");
            let pending = match (home, limits) {
                (true, _) => Pending::Home { own: false },
                (_, true) => Pending::Limits,
                _ => Pending::Other,
            };
            let _ = self.wait(id, pending);
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
                let len = f.u32()?;
                if !self.wait(id, Pending::Read { handle: handle.clone(), offset, len, from: offset })
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
                    open.passed(offset, data, &mut self.ahead);
                }
                None
            }
            fxp::CLOSE => {
                let handle = f.bytes()?;
                self.handles.remove(handle).map(|mut open| {
                    // (Hashed whole: written, or read up to where the file
                    // ends, with no gap left.)
                    let whole = (open.write || open.end == Some(open.next)) && open.ahead.is_empty();
                    open.give_back(&mut self.ahead);
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
                    self.handles.insert(
                        handle,
                        Open { path, write, bytes: 0, hasher, next: 0, ahead: Default::default(), end: None },
                    );
                }
            }
            (fxp::NAME, Some(Pending::Home { .. })) => {
                let _count = f.u32()?;
                let name = f.text()?;
                if name.starts_with('/') && name.len() <= MAX_PATH {
                    self.home = Some(name);
                }
            }
            (fxp::DATA, Some(Pending::Read { handle, offset, .. })) => {
                let data = f.bytes()?;
                if let Some(open) = self.handles.get_mut(&handle) {
                    open.passed(offset, data, &mut self.ahead);
                }
            }
            (fxp::STATUS, Some(Pending::Read { handle, offset, .. })) => {
                let code = f.u32()?;
                if let Some(open) = self.handles.get_mut(&handle)
                    && code == STATUS_EOF
                {
                    open.end = Some(open.end.map_or(offset, |end| end.min(offset)));
                }
            }
            _ => {}
        }
        Some(())
    }
}

/// Whether a command's first input opens an SFTP session: an
/// `SSH_FXP_INIT` packet (any version; its length within what a server
/// reads). `None` while the bytes so far could still be one.
pub fn opens_sftp(first: &[u8]) -> Option<bool> {
    if first.len() < 4 {
        // The shortest and longest lengths these bytes could begin.
        let mut low = [0u8; 4];
        let mut high = [0xffu8; 4];
        low[..first.len()].copy_from_slice(first);
        high[..first.len()].copy_from_slice(first);
        let possible = u32::from_be_bytes(low) <= MAX_SERVER_PACKET && u32::from_be_bytes(high) >= 5;
        return if first.is_empty() || possible { None } else { Some(false) };
    }
    let len = u32::from_be_bytes(first[..4].try_into().expect("four bytes"));
    if !(5..=MAX_SERVER_PACKET).contains(&len) {
        return Some(false);
    }
    first.get(4).map(|kind| *kind == fxp::INIT)
}

/// Whether a command's first output is an SFTP server's `VERSION`: an
/// SFTP session not read as one (its first input was not told in time).
/// `None` while the bytes so far could still be one.
pub fn answers_sftp(first: &[u8]) -> Option<bool> {
    if first.len() < 5 {
        // (As a request is told, from what could still be one.)
        return opens_sftp(first).filter(|could| !could);
    }
    let len = u32::from_be_bytes(first[..4].try_into().expect("four bytes"));
    Some((5..=MAX_SERVER_PACKET).contains(&len) && first[4] == fxp::INIT + 1)
}

/// The largest packet OpenSSH's server reads (256 KiB).
const MAX_SERVER_PACKET: u32 = 256 * 1024;

/// How much a masked read of `len` bytes at `offset` asks of the target
/// from `from`: the read, and [`CONTEXT`] bytes after it.
fn widened(offset: u64, len: u32, from: u64) -> u32 {
    u32::try_from(u64::from(len) + (offset - from) + CONTEXT as u64).unwrap_or(u32::MAX)
}

/// A `STATUS` answer to `id` (without its length).
fn status_packet(id: u32, code: u32, message: &str) -> Vec<u8> {
    let mut body = vec![fxp::STATUS];
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&code.to_be_bytes());
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message.as_bytes());
    // The language tag: none.
    body.extend_from_slice(&0u32.to_be_bytes());
    body
}

/// A `DATA` answer to `id` carrying `data` (without its length).
fn data_packet(id: u32, data: &[u8]) -> Vec<u8> {
    let mut body = vec![fxp::DATA];
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&(data.len() as u32).to_be_bytes());
    body.extend_from_slice(data);
    body
}

/// `window` with what the detectors find in it replaced in place (each
/// replacement as long as what it replaces); those starting in `counted`
/// are counted.
fn masked_in_place(masker: &Masker, window: &[u8], counts: &mut Counts, counted: Range<usize>) -> Vec<u8> {
    let mut masked = window.to_vec();
    for replacement in crate::mask::replacements(masker, window, counts, true, |start| counted.contains(&start)) {
        if replacement.bytes.len() == replacement.raw.len() {
            masked[replacement.raw].copy_from_slice(&replacement.bytes);
        } else {
            // (Never: in place keeps lengths. Were it to fail, nothing of
            // it passes unmasked.)
            masked[replacement.raw].fill(b'*');
        }
    }
    masked
}

/// A `READ` request's id, handle, offset and length.
fn read_request(packet: &[u8]) -> Option<(u32, &[u8], u64, u32)> {
    let mut f = Fields(packet.get(1..)?);
    let id = f.u32()?;
    let handle = f.bytes()?;
    Some((id, handle, f.u64()?, f.u32()?))
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
    let body = status_packet(id, STATUS_PERMISSION_DENIED, message);
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

    /// [`channel`] with every detector on (what `fuzz/` runs).
    pub fn channel_masked_by_all(data: &[u8]) {
        static MASKER: std::sync::OnceLock<std::sync::Arc<Masker>> = std::sync::OnceLock::new();
        let masker = MASKER.get_or_init(|| {
            use proctor_gateway_core::masking::{MaskingConfig, MaskingKey, ProfileConfig, Profiles};
            let profile = ProfileConfig { detectors: vec!["all".into()], ..Default::default() };
            let config = MaskingConfig { profiles: [("all".to_string(), profile)].into(), ..Default::default() };
            let profiles = Profiles::new(&config, MaskingKey::new(vec![1; 32])).expect("a profile");
            profiles.masker("all").expect("known").expect("a masker")
        });
        channel(data, masker);
    }

    /// An SFTP channel driven by `data`: its first byte chooses how it is
    /// read (bit 0: masked, bit 1: under file rules), then pieces, each a
    /// byte whose low bit says which way (0: a request, 1: an answer), a
    /// length byte and that many bytes. Must hold: nothing panics; going
    /// whole, what goes either way is whole packets, requests pass as they
    /// came (reads widened when masked), and unmasked answers pass as they
    /// came, less only the answer to Proctor's own question.
    pub fn channel(data: &[u8], masker: &Masker) {
        let Some((&mode, mut rest)) = data.split_first() else { return };
        let mut sftp = Sftp::new(mode & 1 != 0, mode & 2 != 0);
        let mut counts = Counts::new();
        let (mut requests_in, mut requests_out) = (Vec::new(), Vec::new());
        let (mut answers_in, mut answers_out) = (Vec::new(), Vec::new());
        let mut whole = sftp.whole();
        while let [way, len, tail @ ..] = rest {
            let (piece, after) = tail.split_at((*len as usize).min(tail.len()));
            rest = after;
            match (way & 1, whole) {
                (0, true) => match sftp.split_requests(piece) {
                    Some(packets) => {
                        for packet in packets {
                            if sftp.conflict(&packet).is_none() {
                                let _ = sftp.check(&packet);
                                requests_in.push(packet.clone());
                                sftp.forward(&packet, &mut requests_out);
                            }
                        }
                    }
                    None => whole = false,
                },
                (_, true) => {
                    answers_in.extend_from_slice(piece);
                    match sftp.answers(piece, Some(masker), &mut counts) {
                        Some(out) => answers_out.extend(out),
                        None => whole = false,
                    }
                }
                (0, false) => drop(sftp.requested(piece)),
                (_, false) => sftp.answered(piece),
            }
        }
        if !sftp.whole() {
            return;
        }
        let packets = |bytes: &[u8]| {
            let mut found = Vec::new();
            let mut at = 0;
            while at < bytes.len() {
                let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("a length")) as usize;
                found.push(bytes[at + 4..at + 4 + len].to_vec());
                at += 4 + len;
            }
            assert_eq!(at, bytes.len(), "whole packets");
            found
        };
        // (Less Proctor's own question, right after the client's INIT.)
        let own_question = [&[fxp::REALPATH][..], &HOME_ID.to_be_bytes(), &1u32.to_be_bytes(), b"."].concat();
        let mut forwarded: Vec<Vec<u8>> = Vec::new();
        for packet in packets(&requests_out) {
            let asked_by_proctor = sftp.checked
                && packet == own_question
                && forwarded.last().is_some_and(|p| p.first() == Some(&fxp::INIT));
            if !asked_by_proctor {
                forwarded.push(packet);
            }
        }
        // (Answers to Proctor's own question, whatever they are, are kept.)
        let own = |p: &Vec<u8>| p.first() != Some(&(fxp::INIT + 1)) && p.get(1..5) == Some(&HOME_ID.to_be_bytes());
        let passed: Vec<Vec<u8>> = packets(&answers_out).into_iter().filter(|p| !own(p)).collect();
        if !sftp.masked {
            assert_eq!(forwarded, requests_in, "requests pass as they came");
            if whole {
                let mut framer = Framer::default();
                let (sent, _) = framer.feed(&answers_in);
                let kept: Vec<Vec<u8>> = sent.into_iter().filter(|p| !own(p)).collect();
                assert_eq!(passed, kept, "answers pass as they came");
            }
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

    /// A packet without its length.
    fn body(packet: Vec<u8>) -> Vec<u8> {
        packet[4..].to_vec()
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
        let (mut checked, mut masked, masker) = (Sftp::new(false, true), Sftp::new(true, false), masker());
        let mut counts = Counts::new();
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
                        checked.forward(&packet, &mut Vec::new());
                    }
                }
            }
            checked.answers(&bytes, None, &mut counts);
            masked.answers(&bytes, Some(&masker), &mut counts);
            masked.requested(&bytes);
        }
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

    #[test]
    fn a_command_opening_sftp_is_told_by_its_first_bytes() {
        let init = [0, 0, 0, 5, fxp::INIT, 0, 0, 0, 3];
        assert_eq!(opens_sftp(&init), Some(true));
        for held in 1..5 {
            assert_eq!(opens_sftp(&init[..held]), None, "{held} bytes could still be one");
        }
        // Told by its type: with extensions, any version.
        assert_eq!(opens_sftp(&init[..5]), Some(true));
        assert_eq!(opens_sftp(&[0, 0, 0, 40, fxp::INIT, 0, 0, 0, 9, 1, 2]), Some(true));
        assert_eq!(opens_sftp(&[0, 3, 0, 0, fxp::INIT]), Some(true), "as long as a server reads");
        // Anything else, at its first byte that cannot be one.
        assert_eq!(opens_sftp(b"ls -la"), Some(false));
        assert_eq!(opens_sftp(&[0, 0, 0, 4]), Some(false), "too short for a version");
        assert_eq!(opens_sftp(&[0, 0, 0, 5, 2]), Some(false));
        assert_eq!(opens_sftp(&[0, 5]), Some(false), "longer than a server reads");
        assert_eq!(opens_sftp(&[0, 1]), None, "64 KiB and more: still within what a server reads");
        assert_eq!(opens_sftp(&[0, 0, 5]), None);
        assert_eq!(opens_sftp(&[0x1f, 0x8b]), Some(false), "gzip");
        // The server's side: a version answered.
        assert_eq!(answers_sftp(&[0, 0, 0, 5, fxp::INIT + 1, 0, 0, 0, 3]), Some(true));
        assert_eq!(answers_sftp(b"total 0\n"), Some(false));
        assert_eq!(answers_sftp(&[0, 0, 0, 5, 9]), Some(false));
        assert_eq!(answers_sftp(&[0]), None, "legacy scp's first answer, a lone NUL: not yet told");
    }

    #[test]
    fn requests_a_rule_cannot_read_are_told_apart() {
        let sftp = Sftp::default();
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
        // An id waiting for its answer, or too many waiting: not followed.
        let mut sftp = Sftp::new(false, true);
        let read = body(packet(fxp::READ, Some(8), &[&string(b"h"), &0u64.to_be_bytes(), &1u32.to_be_bytes()]));
        assert_eq!(sftp.conflict(&read), None);
        sftp.forward(&read, &mut Vec::new());
        assert_eq!(sftp.conflict(&read), Some(8));
        // A refusal is a whole status packet, passed as it is by the answer
        // reader; the answer to Proctor's own question is kept.
        let mut out = Vec::new();
        sftp.forward(&[fxp::INIT, 0, 0, 0, 3], &mut out);
        assert!(out.ends_with(&[fxp::REALPATH, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, b'.']), "{out:?}");
        let version = packet(fxp::INIT + 1, None, &[&3u32.to_be_bytes()]);
        let home = packet(fxp::NAME, Some(u32::MAX), &[&1u32.to_be_bytes(), &string(b"/home/u"), &string(b"")]);
        let status = refusal(7, "no");
        let answers = [version.clone(), home, status.clone()].concat();
        let passed = sftp.answers(&answers, None, &mut Counts::new()).unwrap();
        assert_eq!(passed, [version, status].concat());
        assert_eq!(sftp.home(), Some("/home/u"));
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

    /// A file read through a masked channel in reads of `chunk` bytes, all
    /// asked at once, the rest of a short read asked again (as OpenSSH's
    /// client does), answered by a target that reads at most `cap` bytes
    /// at once, in the order `shuffle` gives, its answers cut into
    /// `cut`-byte pieces: the file as the client got it, and the operation
    /// recorded at its close.
    fn read_masked(
        file: &[u8],
        chunk: usize,
        cap: usize,
        cut: usize,
        shuffle: u64,
        masker: &Masker,
    ) -> (Vec<u8>, Operation) {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        let mut sftp = Sftp::new(true, false);
        let mut counts = Counts::new();
        let handle = string(b"h");
        let open = body(packet(fxp::OPEN, Some(1), &[&string(b"/f"), &1u32.to_be_bytes(), &0u32.to_be_bytes()]));
        sftp.forward(&open, &mut Vec::new());
        sftp.answers(&packet(fxp::HANDLE, Some(1), &[&handle]), Some(masker), &mut counts).unwrap();
        // (The last read is at the end, its answer the end of the file.)
        let mut reads: Vec<(usize, usize)> = (0..file.len())
            .step_by(chunk)
            .map(|o| (o, chunk.min(file.len() - o)))
            .chain([(file.len(), chunk)])
            .collect();
        let (mut asked, mut next_id) = (HashMap::new(), 2u32);
        let mut content = vec![0u8; file.len()];
        let mut filled = 0;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(shuffle);
        while !reads.is_empty() {
            let mut to_target = Vec::new();
            for (offset, len) in reads.drain(..) {
                asked.insert(next_id, (offset, len));
                let read = packet(
                    fxp::READ,
                    Some(next_id),
                    &[&handle, &(offset as u64).to_be_bytes(), &(len as u32).to_be_bytes()],
                );
                sftp.forward(&body(read), &mut to_target);
                next_id += 1;
            }
            // The target reads what it is asked (widened), at most `cap`.
            let mut answers = Vec::new();
            let mut at = 0;
            while at < to_target.len() {
                let len = u32::from_be_bytes(to_target[at..at + 4].try_into().unwrap()) as usize;
                let (id, _, from, wanted) = read_request(&to_target[at + 4..at + 4 + len]).expect("a read");
                at += 4 + len;
                let from = from as usize;
                let end = (from + (wanted as usize).min(cap)).min(file.len());
                answers.push(match file.get(from..end) {
                    Some(data) if !data.is_empty() => packet(fxp::DATA, Some(id), &[&string(data)]),
                    _ => packet(fxp::STATUS, Some(id), &[&STATUS_EOF.to_be_bytes(), &string(b"EOF"), &string(b"")]),
                });
            }
            if shuffle != 0 {
                answers.shuffle(&mut rng);
            }
            let mut got = Vec::new();
            for piece in answers.concat().chunks(cut) {
                got.extend(sftp.answers(piece, Some(masker), &mut counts).unwrap());
            }
            let mut rest = &got[..];
            while rest.len() >= 4 {
                let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                let body = &rest[4..4 + len];
                if let Some(data) = data_of(body) {
                    let (offset, wanted) = asked[&u32::from_be_bytes(body[1..5].try_into().unwrap())];
                    content[offset..offset + data.len()].copy_from_slice(&body[data.clone()]);
                    filled += data.len();
                    assert!(data.len() <= wanted, "no more than asked");
                    if data.len() < wanted {
                        // A short read: the rest is asked again.
                        reads.push((offset + data.len(), wanted - data.len()));
                    }
                }
                rest = &rest[4 + len..];
            }
            assert!(rest.is_empty(), "whole packets only");
        }
        let closed = sftp.requested(&packet(fxp::CLOSE, Some(next_id), &[&handle]));
        assert_eq!(filled, file.len(), "every byte came back once");
        (content, closed.into_iter().next().expect("the read recorded"))
    }

    #[test]
    fn a_secret_cut_between_two_reads_is_masked_in_both_and_lengths_are_kept() {
        let masker = masker();
        let file = b"id,card\n1,4111 1111 1111 1111\n2,none\n";
        // Cut in the middle of the card number, in order and not.
        for shuffle in 0..4 {
            let (got, read) = read_masked(file, 14, usize::MAX, 7, shuffle, &masker);
            let text = String::from_utf8_lossy(&got).to_string();
            assert!(!text.contains("4111") && !text.contains("1111 1111"), "{text}");
            assert!(text.starts_with("id,card\n1,") && text.ends_with("\n2,none\n"), "{text}");
            // What is recorded of the file is what the client got, in
            // whatever order the reads came back.
            assert_eq!(read.byte_count, Some(file.len() as u64));
            assert_eq!(read.sha256, Some(hex(&Sha256::digest(&got))), "shuffle {shuffle}");
        }
    }

    /// Generated files, secrets among words, read in chunks of any size,
    /// answered in any order and in pieces of any size: what the client
    /// gets is what masking the whole file in place gives.
    #[test]
    fn a_file_read_in_any_chunks_is_masked_as_the_whole_file_is() {
        use rand::{Rng, SeedableRng};
        let masker = masker();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let secrets = ["4111 1111 1111 1111", "alice@example.com", "AKIAIOSFODNN7EXAMPLE", "password=hunter2x"];
        let words = ["alpha", "beta", "42", "x-y", "\n", "é", "gamma;"];
        for case in 0..200 {
            // Small files in small reads; large ones (beyond what a read
            // is widened by) in large reads.
            let large = case % 2 == 1;
            let mut file = Vec::new();
            for _ in 0..rng.random_range(1..if large { 3000 } else { 60 }) {
                // (Few enough secrets that the whole file is not crowded
                // with them, which masking takes whole.)
                let word = if rng.random_range(0..if large { 60 } else { 5 }) == 0 {
                    secrets[rng.random_range(0..secrets.len())]
                } else {
                    words[rng.random_range(0..words.len())]
                };
                file.extend_from_slice(word.as_bytes());
                file.push(if rng.random_range(0..4) == 0 { b'\n' } else { b' ' });
            }
            let expected = crate::mask::mask_bytes_in_place(&masker, &file, &mut Counts::new());
            let chunk = if large { rng.random_range(500..9000) } else { rng.random_range(1..64) };
            let (cut, shuffle) = (rng.random_range(1..5000), rng.random());
            // A server that reads at most so much at once, for some.
            let cap = if rng.random() { usize::MAX } else { rng.random_range(3 * CONTEXT..6 * CONTEXT) };
            let (got, read) = read_masked(&file, chunk, cap, cut, shuffle, &masker);
            assert_eq!(read.sha256, Some(hex(&Sha256::digest(&got))), "case {case}: hashed whole");
            let differs = got.iter().zip(&expected).position(|(a, b)| a != b);
            assert!(
                got == expected,
                "case {case}, chunk {chunk}, differs at {differs:?}: got {:?} expected {:?}",
                differs
                    .map(|d| String::from_utf8_lossy(&got[d.saturating_sub(40)..(d + 40).min(got.len())]).to_string()),
                differs
                    .map(|d| String::from_utf8_lossy(&expected[d.saturating_sub(40)..(d + 40).min(got.len())])
                        .to_string()),
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
