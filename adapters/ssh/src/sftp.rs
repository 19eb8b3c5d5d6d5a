//! SFTP as file operations: the packets of an `sftp` subsystem channel
//! (draft-ietf-secsh-filexfer-02, the version OpenSSH speaks, v3) read as
//! they pass, both ways, into the operations an investigator asks about:
//! which file was opened, read or written, how many bytes, and the SHA-256
//! of a whole file transferred; which paths were removed, renamed, made,
//! changed or linked.
//!
//! The reader never changes a byte and never holds one back: the channel's
//! bytes are relayed and recorded as they are whatever this makes of them.
//! A packet it cannot read is counted and skipped by its length; what an
//! operation records is only what the packets said.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// SFTP packet types (v3).
mod fxp {
    pub const INIT: u8 = 1;
    pub const OPEN: u8 = 3;
    pub const CLOSE: u8 = 4;
    pub const READ: u8 = 5;
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
    pub const EXTENDED: u8 = 200;
}

/// `SSH_FXF_READ`, `SSH_FXF_WRITE`, `SSH_FXF_APPEND`.
const OPEN_READ: u32 = 0x01;
const OPEN_WRITE: u32 = 0x02;
const OPEN_APPEND: u32 = 0x04;
/// `SSH_FX_EOF`.
const STATUS_EOF: u32 = 1;
/// Open handles followed at most, and the longest handle (the protocol's
/// own bound) and path kept.
const MAX_HANDLES: usize = 1024;
const MAX_HANDLE: usize = 256;
const MAX_PATH: usize = 4096;

/// The largest packet read whole (OpenSSH's own limit is 256 KiB); a larger
/// one is skipped by its length, its type counted.
const MAX_PACKET: usize = 1 << 20;
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
    /// Reads awaiting their answer, at most [`MAX_PENDING`].
    reads: usize,
    handles: HashMap<Vec<u8>, Open>,
    /// Packets that could not be read (malformed, or too large).
    pub unread: u64,
}

impl Sftp {
    /// Bytes the client sent; the operations they request that are
    /// recorded as they pass (removals, renames, ..., and transfers ending
    /// at a close).
    pub fn requested(&mut self, bytes: &[u8]) -> Vec<Operation> {
        let mut operations = Vec::new();
        let (packets, skipped) = self.requests.feed(bytes);
        if skipped > 0 {
            self.lost(skipped);
        }
        for packet in packets {
            match self.request(&packet) {
                Some(Some(operation)) => operations.push(operation),
                Some(None) => {}
                None => self.lost(1),
            }
        }
        operations
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

    fn wait(&mut self, id: u32, pending: Pending) {
        self.pending.entry(id).or_default().push_back(pending);
    }

    /// What a request packet is; `None` if it could not be read.
    fn request(&mut self, packet: &[u8]) -> Option<Option<Operation>> {
        let mut f = Fields(packet);
        let kind = f.u8()?;
        if kind == fxp::INIT {
            return Some(None);
        }
        let id = f.u32()?;
        Some(match kind {
            fxp::OPEN => {
                let path = f.text()?;
                let flags = f.u32()?;
                let write = flags & OPEN_WRITE != 0;
                // A file written is hashed as it is sent (not appended to,
                // not read and written through one handle).
                let hashed = !write || flags & (OPEN_READ | OPEN_APPEND) == 0;
                self.wait(id, Pending::Open { path: path.clone(), write, hashed });
                Some(Operation::path("open", path))
            }
            fxp::READ => {
                let handle = f.bytes()?.to_vec();
                let offset = f.u64()?;
                if self.reads < MAX_PENDING {
                    self.reads += 1;
                    self.wait(id, Pending::Read { handle, offset });
                } else if let Some(open) = self.handles.get_mut(&handle) {
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
            return Some(());
        }
        let id = f.u32()?;
        let pending = self.pending.get_mut(&id).and_then(std::collections::VecDeque::pop_front);
        if self.pending.get(&id).is_some_and(std::collections::VecDeque::is_empty) {
            self.pending.remove(&id);
        }
        if matches!(pending, Some(Pending::Read { .. })) {
            self.reads = self.reads.saturating_sub(1);
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
        }
    }
}
