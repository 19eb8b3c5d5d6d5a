//! Sealing: one closed WAL file becomes one Parquet segment and one signed
//! manifest, atomically (temp file, fsync, rename, fsync of the directory),
//! and only then is the WAL file deleted.
//!
//! The chain heads in the manifest are computed here from the WAL's
//! canonical rows, starting from the heads in the file's carry record (or,
//! while its slot is pending, those the file before ended with). When those
//! are not known (the file before was lost, or lost writes the next file
//! kept), a session's chain restarts from the zero head, a break `verify`
//! reports.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use proctor_schemas::arrow::BatchBuilder;
use proctor_schemas::chain::ChainHash;
use proctor_schemas::manifest::{MANIFEST_FORMAT, Manifest, ManifestSession};
use proctor_schemas::merkle;
use proctor_schemas::{Column, EventKind, SCHEMA_VERSION, SessionId, Timestamp, Value, canonical};
use sha2::{Digest, Sha256};

use crate::config::RecorderSettings;
use crate::keys::ManifestKey;
use crate::layout::{Layout, sync_dir};
use crate::wal::{self, Carried, Record, TornTail};
use crate::{RecorderError, Result, segment};

/// What sealing needs to know and remembers between segments.
pub(crate) struct SealContext {
    pub layout: Layout,
    pub settings: RecorderSettings,
    pub key: Arc<ManifestKey>,
    /// SHA-256 (hex) of the newest manifest, which the next one links to.
    pub last_manifest_sha256: Option<String>,
    /// The last WAL file recovery sealed but kept, until the new WAL file
    /// holds its open sessions.
    pub kept_wal: Option<u64>,
    /// The last WAL file sealed here and the sessions open at its end: the
    /// carry of the next file while its slot is pending.
    pub carry_out: Option<CarryOut>,
    /// CPU time of the threads sealing started besides its own (the Merkle
    /// trees'), for the sealer's CPU figure.
    pub helper_cpu_ns: u64,
    /// What a WAL file is read into, kept between seals: a fresh buffer of
    /// a WAL file's size is memory the kernel zeroes first, a third of
    /// sealing's time under load (at most `segment_max_bytes` stays held).
    pub wal_buffer: Vec<u8>,
}

/// The sessions open at the end of a sealed WAL file.
pub(crate) struct CarryOut {
    pub number: u64,
    pub open: Vec<Carried>,
    /// False when the file's own carry was not known: the sessions it did not
    /// touch are missing, and the next file's pending record names them.
    pub complete: bool,
}

/// The result of sealing one WAL file.
#[derive(Debug)]
pub(crate) struct Sealed {
    pub manifest: Option<Manifest>,
    /// Sessions still open at the end of the file.
    pub open_sessions: Vec<Carried>,
    /// Whether the file's carry record was readable.
    pub saw_carry: bool,
    pub torn: Option<TornTail>,
    pub events: u64,
}

/// What sealing tracks of one session in a file.
struct Track {
    id: SessionId,
    text: String,
    /// Next seq while the session is open.
    open: Option<u64>,
    /// The chain head before the session's first event in the file (carried
    /// in, or the zero head); after [`chain`], the head after its last.
    head: ChainHash,
    summary: Option<Summary>,
}

impl Track {
    fn new(id: SessionId, text: String, open: Option<(u64, ChainHash)>) -> Track {
        let head = open.map_or(ChainHash::GENESIS, |(_, head)| head);
        Track { id, text, open: open.map(|(next, _)| next), head, summary: None }
    }
}

/// The chain heads of the sessions of `rows` (`(slot, seq, row)` in seq
/// order per slot): each track's `head` moves from before its first event
/// in the file to after its last, one row at a time as `each` visits it.
/// Sealing hashes each row as it copies it into a batch, while the row is
/// in the CPU's cache: a separate pass over a file larger than the cache
/// would read every byte from memory once more.
/// Visited in the segment's row order, it also gathers the Merkle tree's
/// leaves ([`merkle`]).
///
/// The leaves and the tree are made on a thread of their own from the
/// heads, row group by row group, while this one encodes and writes: the
/// chain needs the rows in order, the tree only their heads.
struct Chains {
    heads: Vec<ChainHash>,
    /// Heads of the rows visited since the last `flush`, in row order.
    pending: Vec<ChainHash>,
    tree: Option<TreeThread>,
}

type TreeThread = (std::sync::mpsc::Sender<Vec<ChainHash>>, std::thread::JoinHandle<(merkle::Hash, u64)>);

impl Chains {
    fn of(tracks: &[Track], salt: merkle::Hash) -> std::io::Result<Chains> {
        let (sender, receiver) = std::sync::mpsc::channel::<Vec<ChainHash>>();
        let tree = std::thread::Builder::new().name("proctor-merkle".into()).spawn(move || {
            let mut leaves: Vec<merkle::Hash> = Vec::new();
            for heads in receiver {
                for head in heads {
                    let nonce = merkle::nonce(&salt, leaves.len() as u64);
                    leaves.push(merkle::leaf(&nonce, &head));
                }
            }
            let root = merkle::Tree::new(leaves).root();
            (root, crate::recorder::thread_cpu_ns())
        })?;
        Ok(Chains { heads: tracks.iter().map(|t| t.head).collect(), pending: Vec::new(), tree: Some((sender, tree)) })
    }

    fn each(&mut self, slot: u32, row: &[u8]) {
        let head = &mut self.heads[slot as usize];
        *head = head.next(row);
        self.pending.push(*head);
    }

    /// Hands the heads visited so far to the tree's thread.
    fn flush(&mut self) {
        if let Some((sender, _)) = &self.tree {
            let _ = sender.send(std::mem::take(&mut self.pending));
        }
    }

    /// The heads alone, for a file whose segment exists already.
    fn heads_only(tracks: &mut [Track], order: &[(u32, u64, u32)], rows: &[&[u8]]) {
        let mut heads: Vec<ChainHash> = tracks.iter().map(|t| t.head).collect();
        for &(slot, _, index) in order {
            heads[slot as usize] = heads[slot as usize].next(rows[index as usize]);
        }
        for (track, head) in tracks.iter_mut().zip(heads) {
            track.head = head;
        }
    }

    /// The heads into the tracks, and into their summaries; the Merkle
    /// root over the rows visited, and the CPU time the tree's thread took.
    fn into_tracks(
        mut self,
        tracks: &mut [Track],
        summaries: &mut [(u32, SessionId, Summary)],
    ) -> std::io::Result<(merkle::Hash, u64)> {
        for (track, head) in tracks.iter_mut().zip(&self.heads) {
            track.head = *head;
        }
        for (slot, _, summary) in summaries {
            summary.chain_head = self.heads[*slot as usize];
        }
        self.flush();
        let Some((sender, handle)) = self.tree.take() else {
            return Err(std::io::Error::other("the Merkle tree's thread is gone"));
        };
        drop(sender);
        handle.join().map_err(|_| std::io::Error::other("the thread making the Merkle tree panicked"))
    }
}

#[derive(Default)]
struct Summary {
    first_seq: u64,
    last_seq: u64,
    events: u64,
    chain_in: Option<ChainHash>,
    chain_head: ChainHash,
    first_time: i64,
    last_time: i64,
    protocol: Option<String>,
    resource: Option<String>,
    subject: Option<String>,
    end_reason: Option<String>,
}

fn str_cell<'a>(cells: &proctor_schemas::Cells<'a>, column: Column) -> Option<&'a str> {
    match cells.get(column) {
        Some(Value::Str(s)) => Some(s),
        _ => None,
    }
}

impl SealContext {
    /// Reads the newest manifest's hash from disk.
    pub fn load_last_manifest(&mut self) -> Result<()> {
        if let Some(&number) = self.layout.manifest_numbers()?.last() {
            let path = self.layout.manifest_path(number);
            let bytes = fs::read(&path).map_err(RecorderError::io("cannot read manifest", &path))?;
            self.last_manifest_sha256 = Some(hex::encode(Sha256::digest(&bytes)));
        }
        Ok(())
    }

    /// Seals WAL file `number`: writes its segment and manifest unless the
    /// manifest already exists (an interrupted earlier seal), then removes the
    /// WAL file unless `keep_wal`. With `truncate_torn`, a torn tail is cut off
    /// the file first (recovery); otherwise it is only reported. Either way it
    /// returns the sessions still open at the file's end.
    pub fn seal(&mut self, number: u64, truncate_torn: bool, keep_wal: bool) -> Result<Sealed> {
        let path = self.layout.wal_path(number);
        let mut bytes = std::mem::take(&mut self.wal_buffer);
        let sealed = read_wal(&path, &mut bytes).and_then(|()| self.seal_read(number, truncate_torn, keep_wal, &bytes));
        // Kept for the next file, unless it outgrew the files it serves.
        if bytes.capacity() as u64 <= self.settings.segment_max_bytes.0.saturating_mul(2) {
            bytes.clear();
            self.wal_buffer = bytes;
        }
        sealed
    }

    /// [`SealContext::seal`] of WAL file `number`, read into `bytes`.
    fn seal_read(&mut self, number: u64, truncate_torn: bool, keep_wal: bool, bytes: &[u8]) -> Result<Sealed> {
        let path = self.layout.wal_path(number);
        let already_sealed = self.layout.manifest_path(number).exists();
        let scan = wal::scan(bytes, number);
        if let Some(format) = scan.newer_format {
            // Never mistaken for damage: truncating it would destroy events.
            return Err(RecorderError::NewerFormat { path, format, supported: wal::FORMAT });
        }
        if let Some(torn) = &scan.torn
            && torn.offset == 0
        {
            // A header is written whole before anything else, so a damaged
            // one is not a crash's torn write: the file is set aside, whole,
            // not cut to nothing.
            return Err(RecorderError::corrupt(&path, format!("damaged WAL header: {}", torn.reason)));
        }
        if let Some(torn) = &scan.torn
            && truncate_torn
        {
            let file = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(RecorderError::io("cannot open WAL file", &path))?;
            file.set_len(torn.offset)
                .and_then(|_| file.sync_all())
                .map_err(RecorderError::io("cannot truncate torn WAL tail", &path))?;
        }

        // One track per session seen in the file, found by its id's text
        // (no parsing per event).
        let mut tracks: Vec<Track> = Vec::new();
        let mut index: HashMap<String, u32, ahash::RandomState> = HashMap::default();
        let mut order: Vec<(u32, u64, u32)> = Vec::with_capacity(scan.records.len());
        let corrupt = |message: String| RecorderError::corrupt(&path, message);
        // A file whose carry slot is still pending carries the sessions open
        // at the end of the file before, as sealed here. If that file was
        // lost (set aside as damaged), the pending record still names the
        // sessions and their next seqs, but not their chain heads: their
        // chains restart here, a break `verify` reports against the segments
        // before. With neither (a pending record lost to a power loss as
        // well), sessions the file continues are taken as they come.
        let before = self.carry_out.as_ref().filter(|out| scan.carry_pending && out.number + 1 == number);
        let (carried_in, complete) = match (&scan.pending, before) {
            _ if !scan.carry_pending => (None, true),
            (Some(pending), before) => (Some(reconcile(&path, before.map_or(&[][..], |out| &out.open), pending)), true),
            (None, Some(out)) if out.complete => (Some(out.open.clone()), true),
            (None, before) => {
                tracing::error!(
                    file = %path.display(),
                    "neither this WAL file nor the file before says which sessions were open; they are taken as they come"
                );
                (before.map(|out| out.open.clone()), false)
            }
        };
        let unknown_carry = !complete;
        let saw_carry = matches!(scan.records.first(), Some(Record::Carry(_))) || carried_in.is_some();
        let carried_in = carried_in.map(Record::Carry);

        let mut rows: Vec<&[u8]> = Vec::with_capacity(scan.records.len());
        for record in carried_in.iter().chain(&scan.records) {
            let canonical_row = match record {
                Record::Carry(carried) => {
                    for c in carried {
                        let text = c.session_id.to_string();
                        index.insert(text.clone(), tracks.len() as u32);
                        tracks.push(Track::new(c.session_id, text, Some((c.next_seq, c.head))));
                    }
                    continue;
                }
                Record::Event(bytes) => *bytes,
                // Only ever in a carry slot, read there.
                Record::Pending(_) => continue,
            };
            let key = canonical::key(canonical_row).map_err(|e| corrupt(format!("undecodable event: {e}")))?;
            let (seq, time) = (key.seq, key.time);
            let is_start = key.kind == EventKind::SessionStart.as_str();
            let is_end = key.kind == EventKind::SessionEnd.as_str();
            let slot = match index.get(key.session_id) {
                Some(&slot) => slot,
                None => {
                    let id: SessionId = key.session_id.parse().map_err(|e| corrupt(format!("{e}")))?;
                    index.insert(key.session_id.to_string(), tracks.len() as u32);
                    tracks.push(Track::new(id, key.session_id.to_string(), None));
                    tracks.len() as u32 - 1
                }
            };
            let track = &mut tracks[slot as usize];
            let expected = match track.open {
                Some(next) => next,
                None if is_start && track.summary.is_none() => 0,
                None if unknown_carry && track.summary.is_none() => seq,
                None => {
                    return Err(corrupt(format!(
                        "session {} seq {seq}: event of a session that is not open",
                        track.text
                    )));
                }
            };
            if seq != expected {
                return Err(corrupt(format!("session {}: seq {seq} where {expected} was expected", track.text)));
            }
            track.open = (!is_end).then_some(seq + 1);
            // The head before the session's first event here: carried in,
            // or the zero head of a session starting (or restarting) here.
            let previous = track.head;

            let summary = track.summary.get_or_insert_with(|| Summary {
                first_seq: seq,
                chain_in: (seq > 0).then_some(previous),
                first_time: time,
                ..Summary::default()
            });
            summary.last_seq = seq;
            summary.events += 1;
            summary.first_time = summary.first_time.min(time);
            summary.last_time = summary.last_time.max(time);
            if is_start || is_end {
                let row = canonical::decode(canonical_row).map_err(|e| corrupt(format!("undecodable event: {e}")))?;
                let cells = row.cells();
                if is_start {
                    summary.protocol = str_cell(&cells, Column::Protocol).map(str::to_string);
                    summary.resource = str_cell(&cells, Column::Resource).map(str::to_string);
                    summary.subject = str_cell(&cells, Column::Subject).map(str::to_string);
                } else {
                    summary.end_reason = str_cell(&cells, Column::EndReason).map(str::to_string);
                }
            }
            order.push((slot, seq, rows.len() as u32));
            rows.push(canonical_row);
        }

        let open_sessions = |tracks: &[Track]| {
            let mut open: Vec<Carried> = tracks
                .iter()
                .filter_map(|t| t.open.map(|next_seq| Carried { session_id: t.id, next_seq, head: t.head }))
                .collect();
            open.sort_by_key(|c| c.session_id);
            open
        };
        let events = order.len() as u64;
        if events == 0 || already_sealed {
            // The heads the next file continues from, without a segment to
            // write.
            Chains::heads_only(&mut tracks, &order, &rows);
            let open_sessions = open_sessions(&tracks);
            let manifest = if already_sealed {
                Some(crate::reader::read_manifest(&self.layout.manifest_path(number))?)
            } else {
                None
            };
            let passed = self.pass_carry_on(number, &open_sessions, complete)?;
            if !keep_wal && passed {
                remove_wal_after_seal(&self.layout, number);
            }
            return Ok(Sealed { manifest, open_sessions, saw_carry, torn: scan.torn, events });
        }
        // Rows go out sorted by (session id, seq): rank the sessions once,
        // then sort the rows by rank (seq is already ascending per session).
        let mut by_id: Vec<u32> = (0..tracks.len() as u32).collect();
        by_id.sort_unstable_by_key(|&t| tracks[t as usize].id);
        let mut rank = vec![0u32; tracks.len()];
        for (position, &t) in by_id.iter().enumerate() {
            rank[t as usize] = position as u32;
        }
        order.sort_unstable_by_key(|&(slot, seq, _)| (rank[slot as usize], seq));
        let mut summaries: Vec<(u32, SessionId, Summary)> = by_id
            .iter()
            .filter_map(|&t| tracks[t as usize].summary.take().map(|s| (t, tracks[t as usize].id, s)))
            .collect();

        let min_time = summaries.iter().map(|(_, _, s)| s.first_time).min().unwrap_or_default();
        let max_time = summaries.iter().map(|(_, _, s)| s.last_time).max().unwrap_or_default();
        let rel_path = Layout::segment_rel_path(number, &Timestamp(min_time).date());
        let segment_path = self.layout.root().join(&rel_path);
        let partition = segment_path.parent().unwrap_or(self.layout.root()).to_path_buf();
        let new_partition = !partition.exists();
        fs::create_dir_all(&partition).map_err(RecorderError::io("cannot create partition", &partition))?;
        if new_partition {
            sync_dir(&self.layout.segments_dir())?;
        }
        let temp = tmp_path(&segment_path);
        // Rows are decoded in sorted order one row group at a time, so memory
        // holds the WAL file and one row group, not the whole segment twice.
        let raw = segment::RawBytes::for_rows(&rows);
        let mut writer = segment::SegmentWriter::create(&temp, &self.settings, raw)?;
        // Batches of at most a row group's rows and bytes, each with room
        // for its raw bytes at once.
        let mut salt = [0u8; 32];
        getrandom::fill(&mut salt)
            .map_err(|e| RecorderError::Key(format!("no randomness for a segment's Merkle salt: {e}")))?;
        let mut chains = Chains::of(&tracks, salt)
            .map_err(RecorderError::io("cannot start the thread making the segment's Merkle tree", &segment_path))?;
        let mut rest = &order[..];
        while !rest.is_empty() {
            let (mut len, mut bytes) = (0, 0);
            while len < rest.len()
                && len < self.settings.row_group_rows
                && (len == 0 || bytes + rows[rest[len].2 as usize].len() <= segment::ROW_GROUP_BYTES)
            {
                bytes += rows[rest[len].2 as usize].len();
                len += 1;
            }
            let (chunk, after) = rest.split_at(len);
            rest = after;
            let mut builder = BatchBuilder::with_capacity_and_bytes(chunk.len(), bytes);
            for &(slot, _, index) in chunk {
                let row = rows[index as usize];
                builder.push_canonical(row).map_err(|e| corrupt(format!("undecodable event: {e}")))?;
                chains.each(slot, row);
            }
            chains.flush();
            writer.write(&builder.finish()?)?;
        }
        let (merkle_root, tree_cpu_ns) = chains
            .into_tracks(&mut tracks, &mut summaries)
            .map_err(RecorderError::io("cannot make the segment's Merkle tree", &segment_path))?;
        self.helper_cpu_ns += tree_cpu_ns;
        let open_sessions = open_sessions(&tracks);
        let (file_sha256, file_bytes) = writer.finish()?;
        fs::rename(&temp, &segment_path)
            .map_err(RecorderError::io("cannot rename segment into place", &segment_path))?;
        sync_dir(&partition)?;

        let mut manifest = Manifest {
            format: MANIFEST_FORMAT,
            segment_id: number,
            path: rel_path,
            file_sha256,
            file_bytes,
            schema_version: SCHEMA_VERSION,
            row_count: events,
            min_time: Timestamp(min_time).to_rfc3339(),
            max_time: Timestamp(max_time).to_rfc3339(),
            sessions: summaries
                .into_iter()
                .map(|(_, id, s)| ManifestSession {
                    session_id: id.to_string(),
                    first_seq: s.first_seq,
                    last_seq: s.last_seq,
                    events: s.events,
                    chain_in: s.chain_in.map(|h| h.to_hex()),
                    chain_head: s.chain_head.to_hex(),
                    first_time: Timestamp(s.first_time).to_rfc3339(),
                    last_time: Timestamp(s.last_time).to_rfc3339(),
                    protocol: s.protocol,
                    resource: s.resource,
                    subject: s.subject,
                    end_reason: s.end_reason,
                })
                .collect(),
            prev_manifest_sha256: self.last_manifest_sha256.clone(),
            sealed_at: Timestamp::now().to_rfc3339(),
            key_fingerprint: self.key.fingerprint(),
            merkle_root: Some(hex::encode(merkle_root)),
            merkle_salt: Some(hex::encode(salt)),
            root_signature: None,
            signature: None,
        };
        manifest.root_signature = manifest.root_statement().map(|statement| self.key.sign(&statement.signing_bytes()));
        manifest.signature = Some(self.key.sign(&manifest.signing_bytes()));
        let manifest_bytes = manifest.to_file_bytes();
        write_atomically(&self.layout.manifest_path(number), &manifest_bytes)?;
        self.last_manifest_sha256 = Some(hex::encode(Sha256::digest(&manifest_bytes)));

        let passed = self.pass_carry_on(number, &open_sessions, complete)?;
        // The segment is sealed: from here on, failing to remove the WAL file
        // only leaves work for the next start, which recognises it. A file
        // whose carry could not be written into the next file's slot is kept
        // for the next start to try again.
        if !keep_wal && passed {
            remove_wal_after_seal(&self.layout, number);
        }
        Ok(Sealed { manifest: Some(manifest), open_sessions, saw_carry, torn: scan.torn, events })
    }
}

impl SealContext {
    /// Hands the sessions open at the end of WAL file `number` to the file
    /// after it: remembered for sealing it, and, when known in full, written
    /// into its carry slot (synced) before file `number` may be deleted, so
    /// that the next file can be sealed on its own after a crash. Returns
    /// false when file `number` must be kept: its carry belongs in a slot it
    /// could not be written to.
    fn pass_carry_on(&mut self, number: u64, open: &[Carried], complete: bool) -> Result<bool> {
        use std::os::unix::fs::FileExt;
        self.carry_out = Some(CarryOut { number, open: open.to_vec(), complete });
        if !complete {
            // The next file's pending record names the sessions; a partial
            // list must not replace it. Keeping this file would not help.
            return Ok(true);
        }
        let path = self.layout.wal_path(number + 1);
        let file = match fs::OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(RecorderError::io("cannot open WAL file", &path)(e)),
        };
        let mut header = [0u8; wal::HEADER_LEN];
        // Not started yet (a file prepared ahead): it gets its carry when it is.
        let Ok(layout) = file
            .read_exact_at(&mut header, 0)
            .map_err(drop)
            .and_then(|()| wal::read_header(&header, number + 1).map_err(drop))
        else {
            return Ok(true);
        };
        let (start, len) = layout.slot;
        if len == 0 {
            return Ok(true);
        }
        let mut slot = vec![0u8; len];
        if let Err(error) = file.read_exact_at(&mut slot, start as u64) {
            // This run seals that file from the carry remembered above.
            tracing::warn!(file = %path.display(), %error, "cannot read a WAL file's carry slot; the file before is kept");
            return Ok(false);
        }
        let carry = match wal::read_slot(&slot) {
            wal::Slot::Filled(_) => return Ok(true),
            wal::Slot::Pending(pending) => reconcile(&path, open, &pending),
            wal::Slot::Empty | wal::Slot::Damaged => open.to_vec(),
        };
        let Some(record) = wal::carry_for_slot(&carry, len) else {
            tracing::error!(file = %path.display(), sessions = carry.len(), slot = len, "a carry record does not fit its slot; the file before is kept");
            return Ok(false);
        };
        slot.fill(0);
        slot[..record.len()].copy_from_slice(&record);
        let io = |context| RecorderError::io(context, &path);
        file.write_all_at(&slot, start as u64).map_err(io("cannot write WAL carry slot"))?;
        file.sync_data().map_err(io("cannot sync WAL carry slot"))?;
        Ok(true)
    }
}

/// The carry of a file whose slot holds the writer's pending record, from
/// `open`, the sessions the file before ended with (as far as known). They
/// agree unless the file before was lost, was sealed without knowing its own
/// carry, or lost writes the next file kept (a power loss under `fsync =
/// "interval"`): then the writer's sessions and seqs stand, so the file
/// still seals, and a head is carried only where the seqs agree; the other
/// chains restart from the zero head, a break `verify` reports.
fn reconcile(path: &Path, open: &[Carried], pending: &[(SessionId, u64)]) -> Vec<Carried> {
    if pending.iter().copied().eq(open.iter().map(|c| (c.session_id, c.next_seq))) {
        return open.to_vec();
    }
    let heads: HashMap<(SessionId, u64), ChainHash> =
        open.iter().map(|c| ((c.session_id, c.next_seq), c.head)).collect();
    let carried: Vec<Carried> = pending
        .iter()
        .map(|&(session_id, next_seq)| Carried {
            session_id,
            next_seq,
            head: heads.get(&(session_id, next_seq)).copied().unwrap_or(ChainHash::GENESIS),
        })
        .collect();
    let unknown = pending.iter().filter(|key| !heads.contains_key(key)).count();
    if unknown > 0 {
        tracing::error!(
            file = %path.display(),
            sessions = unknown,
            "the chain heads of sessions this WAL file continues are not known (the file before was lost, sealed without knowing its own carry, or lost writes to a power loss): their chains restart here"
        );
    }
    carried
}

/// Reads a closed WAL file, synced first: under `fsync = "interval"` its
/// last writes may still be only in the page cache, and what is sealed, and
/// carried into the next file, must be what a power loss would leave.
fn read_wal(path: &Path, bytes: &mut Vec<u8>) -> Result<()> {
    use std::io::Read;
    let io = |context| RecorderError::io(context, path);
    let mut file = fs::File::open(path).map_err(io("cannot open WAL file"))?;
    file.sync_data().map_err(io("cannot sync WAL file"))?;
    bytes.clear();
    bytes.reserve(file.metadata().map(|m| m.len() as usize).unwrap_or(0));
    file.read_to_end(bytes).map_err(io("cannot read WAL file"))?;
    Ok(())
}

fn tmp_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes a file by temp file, fsync, rename and directory fsync.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let temp = tmp_path(path);
    let mut file = fs::File::create(&temp).map_err(RecorderError::io("cannot create", &temp))?;
    std::io::Write::write_all(&mut file, bytes)
        .and_then(|_| file.sync_all())
        .map_err(RecorderError::io("cannot write", &temp))?;
    fs::rename(&temp, path).map_err(RecorderError::io("cannot rename into place", path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Removes a sealed WAL file. Its segment and manifest are durable, so a
/// failure here is not an error: the next start removes the file.
pub(crate) fn remove_wal_after_seal(layout: &Layout, number: u64) {
    let path = layout.wal_path(number);
    let removed = match fs::remove_file(&path) {
        Ok(()) => sync_dir(&layout.wal_dir()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RecorderError::io("cannot remove sealed WAL file", &path)(e)),
    };
    if let Err(error) = removed {
        tracing::warn!(%error, "a sealed WAL file could not be removed; the next start removes it");
    }
}

/// Sets aside a WAL file that cannot be sealed (damaged beyond a torn tail),
/// as `NNN.wal.corrupt`, for forensic inspection; `verify` reports it.
pub(crate) fn quarantine(layout: &Layout, number: u64) -> Result<std::path::PathBuf> {
    let path = layout.wal_path(number);
    let aside = path.with_extension("wal.corrupt");
    fs::rename(&path, &aside).map_err(RecorderError::io("cannot set aside a damaged WAL file", &path))?;
    sync_dir(&layout.wal_dir())?;
    Ok(aside)
}
