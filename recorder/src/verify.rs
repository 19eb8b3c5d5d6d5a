//! `proctor verify`: checks a data dir (live, or an exported copy) end to end.
//!
//! - every manifest's signature, against a pinned public key or the key in
//!   the data dir (and then says so);
//! - every manifest's link to its predecessor, so a deleted or inserted
//!   manifest breaks the chain; the head manifest's hash, compared with
//!   `--expect-head`, exposes a truncated tail;
//! - every segment's SHA-256 and size against its manifest, and segments
//!   without a manifest;
//! - every row: sort order, seq continuity per session across segments, and
//!   each session's hash chain recomputed from the rows and compared with the
//!   manifests' chain heads.
//!
//! Problems are collected, not fatal: the report names every one it found.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use ed25519_dalek::VerifyingKey;
use proctor_schemas::arrow::BatchReader;
use proctor_schemas::chain::ChainHash;
use proctor_schemas::manifest::{MANIFEST_FORMAT, Manifest, OLDEST_MANIFEST_FORMAT};
use proctor_schemas::merkle;
use proctor_schemas::{Column, Event, SCHEMA_VERSION, Value, canonical};
use sha2::{Digest, Sha256};

use crate::keys::{self, PinnedKey};
use crate::layout::Layout;
use crate::{RecorderError, Result, segment};

/// What the auditor supplies.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    pub pinned_key: Option<PinnedKey>,
    /// A head manifest hash printed by an earlier `verify`.
    pub expect_head: Option<String>,
}

/// Which key the signatures were checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyTrust {
    /// The key the auditor pinned.
    Pinned(String),
    /// The key found in the data dir, trusted because nothing was pinned.
    DataDir(String),
}

/// One thing found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where: `segment 7 (segments/dt=.../...parquet)`, `manifest 7`, ...
    pub location: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

#[derive(Clone, Debug)]
pub struct VerifyReport {
    pub segments: u64,
    pub sessions: u64,
    pub events: u64,
    /// SHA-256 of the newest manifest: pin it and pass it back as `--expect-head`.
    pub head: Option<String>,
    pub key: Option<KeyTrust>,
    pub problems: Vec<Problem>,
    pub warnings: Vec<String>,
    pub unsealed_wal_files: usize,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Clone, Copy)]
struct ChainState {
    next_seq: u64,
    head: ChainHash,
}

struct SegmentSession {
    first_seq: u64,
    last_seq: u64,
    events: u64,
    chain_in: ChainHash,
    head: ChainHash,
    /// The head the sealer's Merkle leaves follow, when it started from
    /// another head than the chain here (the manifest's `chain_in` where
    /// the chain breaks): the tree is checked apart from the chain.
    leaf_head: Option<ChainHash>,
}

#[derive(Default)]
struct RowsState {
    sessions: BTreeMap<String, SegmentSession>,
    rows: u64,
    last_key: Option<(String, u64)>,
    buf: Vec<u8>,
    /// The manifest's `chain_in` of each session (the zero head if none).
    claimed_in: HashMap<String, ChainHash>,
    /// The salt of the segment's Merkle leaves (format 2 on), and the
    /// leaves of the rows, in order.
    salt: Option<merkle::Hash>,
    leaves: Vec<merkle::Hash>,
}

impl RowsState {
    fn leaf(&mut self, head: &ChainHash) {
        if let Some(salt) = &self.salt {
            let nonce = merkle::nonce(salt, self.leaves.len() as u64);
            self.leaves.push(merkle::leaf(&nonce, head));
        }
    }
}

struct Verifier<'a> {
    layout: &'a Layout,
    key: Option<VerifyingKey>,
    key_fingerprint: String,
    chains: HashMap<String, ChainState>,
    report: VerifyReport,
}

/// Verifies the data dir at `data_dir`.
pub fn verify(data_dir: &Path, options: &VerifyOptions) -> Result<VerifyReport> {
    if !data_dir.is_dir() {
        return Err(RecorderError::Io {
            context: "not a data dir",
            path: data_dir.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let layout = Layout::new(data_dir);
    let mut report = VerifyReport {
        segments: 0,
        sessions: 0,
        events: 0,
        head: None,
        key: None,
        problems: Vec::new(),
        warnings: Vec::new(),
        unsealed_wal_files: 0,
    };
    let stored_key = keys::load_public_key(&layout.keys_dir());
    let (key, key_fingerprint) = match (&options.pinned_key, stored_key) {
        (Some(PinnedKey::Key(pinned)), _) => {
            report.key = Some(KeyTrust::Pinned(keys::fingerprint(pinned)));
            (Some(*pinned), keys::fingerprint(pinned))
        }
        (Some(PinnedKey::Fingerprint(fp)), Ok(stored)) => {
            report.key = Some(KeyTrust::Pinned(fp.clone()));
            if keys::fingerprint(&stored) != *fp {
                report.problems.push(Problem {
                    location: "keys".to_string(),
                    message: format!(
                        "the data dir's public key is {}, not the pinned {fp}: the data dir was re-keyed",
                        keys::fingerprint(&stored)
                    ),
                });
                (None, fp.clone())
            } else {
                (Some(stored), fp.clone())
            }
        }
        (Some(PinnedKey::Fingerprint(fp)), Err(error)) => {
            report.key = Some(KeyTrust::Pinned(fp.clone()));
            report.problems.push(Problem {
                location: "keys".to_string(),
                message: format!("no public key to match the pinned fingerprint ({error}); pass the key file itself"),
            });
            (None, fp.clone())
        }
        (None, Ok(stored)) => {
            let fp = keys::fingerprint(&stored);
            report.key = Some(KeyTrust::DataDir(fp.clone()));
            (Some(stored), fp)
        }
        (None, Err(error)) => {
            report.problems.push(Problem {
                location: "keys".to_string(),
                message: format!("no public key in the data dir ({error}); pass --public-key"),
            });
            (None, String::new())
        }
    };

    let mut verifier = Verifier { layout: &layout, key, key_fingerprint, chains: HashMap::new(), report };
    let mut referenced = BTreeSet::new();
    let mut previous: Option<(u64, String)> = None;
    let mut hashes: Vec<(u64, String)> = Vec::new();
    for number in layout.manifest_numbers()? {
        let path = layout.manifest_path(number);
        let bytes = std::fs::read(&path).map_err(RecorderError::io("cannot read manifest", &path))?;
        let sha = hex::encode(Sha256::digest(&bytes));
        match Manifest::from_file_bytes(&bytes) {
            Ok(manifest) => {
                referenced.insert(manifest.path.clone());
                verifier.check_manifest(number, &manifest, previous.as_ref());
                verifier.check_segment(number, &manifest);
            }
            Err(error) => verifier.problem(format!("manifest {number}"), format!("unreadable: {error}")),
        }
        verifier.report.segments += 1;
        hashes.push((number, sha.clone()));
        previous = Some((number, sha));
    }

    for file in layout.segment_files()? {
        if !referenced.contains(&file) {
            verifier
                .problem(file, "segment has no manifest: its manifest was deleted, or the file was added".to_string());
        }
    }
    for temp in layout.temp_files()? {
        verifier.report.warnings.push(format!(
            "{}: leftover of an interrupted seal; removed when the recorder next starts",
            temp.display()
        ));
    }
    if let Ok(entries) = std::fs::read_dir(layout.wal_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(".wal.corrupt") {
                verifier.problem(
                    format!("wal/{name}"),
                    "a WAL file that could not be sealed was set aside: its events are in no segment (inspect it)"
                        .to_string(),
                );
            }
        }
    }
    verifier.report.unsealed_wal_files = layout.wal_numbers()?.len();
    if verifier.report.unsealed_wal_files > 0 {
        verifier.report.warnings.push(format!(
            "{} WAL file(s) not sealed yet (recording in progress, or an unclean stop); their events are verified once sealed",
            verifier.report.unsealed_wal_files
        ));
    }
    verifier.report.head = previous.map(|(_, sha)| sha);
    if let Some(expected) = &options.expect_head {
        let expected = expected.to_ascii_lowercase();
        match hashes.iter().position(|(_, sha)| *sha == expected) {
            Some(index) if index + 1 < hashes.len() => verifier.report.warnings.push(format!(
                "the expected head is manifest {}; {} manifest(s) were sealed after it",
                hashes[index].0,
                hashes.len() - index - 1
            )),
            Some(_) => {}
            None => verifier.problem(
                "head".to_string(),
                format!(
                    "expected head {expected} is not in the manifest chain (current head {}): segments were removed from the end, or the chain was rewritten",
                    verifier.report.head.as_deref().unwrap_or("none")
                ),
            ),
        }
    }
    verifier.report.sessions = verifier.chains.len() as u64;
    Ok(verifier.report)
}

impl Verifier<'_> {
    fn problem(&mut self, location: String, message: String) {
        self.report.problems.push(Problem { location, message });
    }

    /// Checks one row: order, seq continuity, and the session's chain.
    fn check_row(&mut self, location: &str, reader: &BatchReader<'_>, i: usize, state: &mut RowsState) {
        let row_number = state.rows;
        state.rows += 1;
        let row = match reader.row(i) {
            Ok(row) => row,
            Err(error) => {
                self.problem(location.to_string(), format!("row {row_number}: {error}"));
                return;
            }
        };
        let cells = row.cells();
        let (Some(Value::Str(session)), Some(Value::U64(seq))) = (cells.get(Column::SessionId), cells.get(Column::Seq))
        else {
            self.problem(location.to_string(), format!("row {row_number}: no session id or seq"));
            return;
        };
        let session = session.to_string();
        let key = (session.clone(), seq);
        if let Some(last) = &state.last_key
            && *last >= key
        {
            self.problem(
                location.to_string(),
                format!(
                    "row {row_number}: session {session} seq {seq} follows session {} seq {}: rows are out of order",
                    last.0, last.1
                ),
            );
        }
        state.last_key = Some(key);
        state.buf.clear();
        canonical::encode(&cells, &mut state.buf);
        if let Err(error) = Event::from_row(row.clone()) {
            self.problem(location.to_string(), format!("session {session} seq {seq}: not a valid event: {error}"));
        }
        match state.sessions.get_mut(&session) {
            Some(s) => {
                if seq != s.last_seq + 1 {
                    let message = if seq > s.last_seq + 1 {
                        format!(
                            "session {session}: seq {} is followed by {seq}: events {}..{} are missing",
                            s.last_seq,
                            s.last_seq + 1,
                            seq - 1
                        )
                    } else {
                        format!(
                            "session {session}: seq {seq} appears after seq {}: events are duplicated or reordered",
                            s.last_seq
                        )
                    };
                    self.problem(location.to_string(), message);
                }
                s.last_seq = seq;
                s.events += 1;
                s.head = s.head.next(&state.buf);
                let leaf_head = match &mut s.leaf_head {
                    Some(head) => {
                        *head = head.next(&state.buf);
                        *head
                    }
                    None => s.head,
                };
                state.leaf(&leaf_head);
            }
            None => {
                let carried = self.chains.get(&session).copied();
                let expected = carried.map_or(0, |c| c.next_seq);
                if seq != expected {
                    let message = match carried {
                        None => format!(
                            "session {session} begins at seq {seq}: its events 0..{} are missing",
                            seq.saturating_sub(1)
                        ),
                        Some(_) if seq > expected => format!(
                            "session {session} continues at seq {seq} but earlier segments end at seq {}: events {expected}..{} are missing",
                            expected.saturating_sub(1),
                            seq - 1
                        ),
                        Some(_) => {
                            format!("session {session} continues at seq {seq}, which earlier segments already hold")
                        }
                    };
                    self.problem(location.to_string(), message);
                }
                let chain_in = carried.map_or(ChainHash::GENESIS, |c| c.head);
                let head = chain_in.next(&state.buf);
                let claimed_in = state.claimed_in.get(&session).copied().unwrap_or(ChainHash::GENESIS);
                let leaf_head = (claimed_in != chain_in).then(|| claimed_in.next(&state.buf));
                state.leaf(&leaf_head.unwrap_or(head));
                state.sessions.insert(
                    session,
                    SegmentSession { first_seq: seq, last_seq: seq, events: 1, chain_in, head, leaf_head },
                );
            }
        }
    }

    fn check_manifest(&mut self, number: u64, manifest: &Manifest, previous: Option<&(u64, String)>) {
        let location = format!("manifest {number}");
        if !(OLDEST_MANIFEST_FORMAT..=MANIFEST_FORMAT).contains(&manifest.format) {
            self.problem(location.clone(), format!("unknown manifest format {}", manifest.format));
        }
        if manifest.segment_id != number {
            self.problem(location.clone(), format!("names segment {} but is stored as {number}", manifest.segment_id));
        }
        match (&manifest.signature, &self.key) {
            (None, _) => self.problem(location.clone(), "is not signed".to_string()),
            (Some(signature), Some(key)) => {
                if !keys::verify_signature(key, &manifest.signing_bytes(), signature) {
                    let by = if manifest.key_fingerprint != self.key_fingerprint {
                        format!(" (it claims key {})", manifest.key_fingerprint)
                    } else {
                        String::new()
                    };
                    self.problem(
                        location.clone(),
                        format!("signature does not verify with key {}{by}: the manifest was edited or signed by another key", self.key_fingerprint),
                    );
                }
            }
            (Some(_), None) => {}
        }
        // From format 2 the segment's Merkle root is signed on its own.
        if manifest.format >= 2 {
            match (manifest.root_statement(), &manifest.root_signature, &self.key) {
                (None, _, _) => self.problem(location.clone(), "has no Merkle root".to_string()),
                (Some(_), None, _) => self.problem(location.clone(), "its Merkle root is not signed".to_string()),
                (Some(statement), Some(signature), Some(key)) => {
                    if !keys::verify_signature(key, &statement.signing_bytes(), signature) {
                        self.problem(
                            location.clone(),
                            format!(
                                "the signature of its Merkle root does not verify with key {}: the root was edited or signed by another key",
                                self.key_fingerprint
                            ),
                        );
                    }
                }
                (Some(_), Some(_), None) => {}
            }
        }
        match (previous, &manifest.prev_manifest_sha256) {
            (None, None) => {}
            (Some((_, expected)), Some(actual)) if expected == actual => {}
            (None, Some(actual)) => self.problem(
                location,
                format!("links to a previous manifest {actual} that is not here: earlier manifests were deleted"),
            ),
            (Some((prev_number, expected)), actual) => self.problem(
                location,
                format!(
                    "does not link to manifest {prev_number}: expected previous hash {expected}, found {}: a manifest between them was removed, inserted or altered",
                    actual.as_deref().unwrap_or("none")
                ),
            ),
        }
    }

    /// Accepts a manifest's claims about its sessions when its rows cannot be
    /// read, so one damaged segment does not cascade into later ones.
    fn adopt_claims(&mut self, manifest: &Manifest) {
        for s in &manifest.sessions {
            if let Some(head) = ChainHash::from_hex(&s.chain_head) {
                self.chains.insert(s.session_id.clone(), ChainState { next_seq: s.last_seq + 1, head });
            }
        }
    }

    fn check_segment(&mut self, number: u64, manifest: &Manifest) {
        let path = self.layout.root().join(&manifest.path);
        let location = format!("segment {number} ({})", manifest.path);
        let (sha, size) = match hash_file(&path) {
            Ok(hashed) => hashed,
            Err(error) => {
                let message = if error.kind() == std::io::ErrorKind::NotFound {
                    "segment file is missing: it was deleted".to_string()
                } else {
                    format!("cannot read segment file: {error}")
                };
                self.problem(location, message);
                self.adopt_claims(manifest);
                return;
            }
        };
        if sha != manifest.file_sha256 || size != manifest.file_bytes {
            self.problem(
                location.clone(),
                format!(
                    "file does not match its manifest (sha-256 {sha}, {size} bytes; manifest says {}, {} bytes): the segment was modified",
                    manifest.file_sha256, manifest.file_bytes
                ),
            );
        }
        if manifest.schema_version != SCHEMA_VERSION {
            self.report.warnings.push(format!(
                "{location}: schema version {} (this build writes {SCHEMA_VERSION})",
                manifest.schema_version
            ));
        }
        match segment::schema_version(&path) {
            Ok(Some(v)) if v == manifest.schema_version.to_string() => {}
            Ok(v) => self.problem(
                location.clone(),
                format!("declares schema version {v:?}, manifest says {}", manifest.schema_version),
            ),
            Err(error) => {
                self.problem(location, format!("unreadable as Parquet: {error}"));
                self.adopt_claims(manifest);
                return;
            }
        }
        let mut state = RowsState {
            claimed_in: manifest
                .sessions
                .iter()
                .map(|s| {
                    let chain_in = s.chain_in.as_deref().and_then(ChainHash::from_hex).unwrap_or(ChainHash::GENESIS);
                    (s.session_id.clone(), chain_in)
                })
                .collect(),
            salt: manifest.merkle_salt.as_deref().and_then(|salt| {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(salt, &mut bytes).ok().map(|()| bytes)
            }),
            ..RowsState::default()
        };
        let walked = segment::for_each_batch(&path, |batch| {
            let reader = match BatchReader::new(&batch) {
                Ok(reader) => reader,
                Err(error) => {
                    return Err(RecorderError::corrupt(&path, format!("rows do not have the event schema: {error}")));
                }
            };
            for i in 0..reader.len() {
                self.check_row(&location, &reader, i, &mut state);
            }
            Ok(())
        });
        if let Err(error) = walked {
            self.problem(location, format!("unreadable: {error}"));
            self.adopt_claims(manifest);
            return;
        }
        let RowsState { sessions, rows, leaves, salt, .. } = state;
        self.report.events += rows;
        if rows != manifest.row_count {
            self.problem(location.clone(), format!("holds {rows} rows, manifest says {}", manifest.row_count));
        }
        if let Some(claimed) = &manifest.merkle_root {
            if salt.is_none() {
                self.problem(location.clone(), "has a Merkle root but no valid salt for its leaves".to_string());
            }
            let root = hex::encode(merkle::Tree::new(leaves).root());
            if *claimed != root {
                self.problem(
                    location.clone(),
                    format!(
                        "Merkle root mismatch (manifest {claimed}, rows give {root}): an event was altered, removed, added or reordered"
                    ),
                );
            }
        }

        let claimed: BTreeMap<&str, &proctor_schemas::manifest::ManifestSession> =
            manifest.sessions.iter().map(|s| (s.session_id.as_str(), s)).collect();
        for (id, s) in &sessions {
            let Some(claim) = claimed.get(id.as_str()) else {
                self.problem(location.clone(), format!("session {id} has rows but is not in the manifest"));
                continue;
            };
            if claim.first_seq != s.first_seq || claim.last_seq != s.last_seq || claim.events != s.events {
                self.problem(
                    location.clone(),
                    format!(
                        "session {id}: rows hold seq {}..{} ({} events), manifest says {}..{} ({} events)",
                        s.first_seq, s.last_seq, s.events, claim.first_seq, claim.last_seq, claim.events
                    ),
                );
            }
            let chain_in_claim = claim.chain_in.as_deref().and_then(ChainHash::from_hex).unwrap_or(ChainHash::GENESIS);
            if s.first_seq > 0 && chain_in_claim != s.chain_in && self.chains.contains_key(id) {
                self.problem(
                    location.clone(),
                    format!("session {id}: the chain does not continue from the previous segment (manifest chain_in {chain_in_claim}, previous head {})", s.chain_in),
                );
            }
            if claim.chain_head != s.head.to_hex() {
                self.problem(
                    location.clone(),
                    format!(
                        "session {id}: hash chain mismatch over seq {}..{} (manifest head {}, rows give {}): an event in that range was altered, removed or reordered",
                        s.first_seq, s.last_seq, claim.chain_head, s.head
                    ),
                );
            }
        }
        for id in claimed.keys() {
            if !sessions.contains_key(*id) {
                self.problem(
                    location.clone(),
                    format!("manifest lists session {id} but the segment has no rows of it"),
                );
            }
        }
        for (id, s) in sessions {
            self.chains.insert(id, ChainState { next_seq: s.last_seq + 1, head: s.head });
        }
    }
}

/// The SHA-256 (hex) and size of the file at `path`, read in pieces.
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}
