//! Evidence that leaves the data dir: a bundle of whole sessions that
//! proves exactly what it carries and reveals nothing else, checked offline
//! with nothing but the bundle and a pinned key.
//!
//! A bundle is a directory with fixed names at its root:
//!
//! - `events/events.parquet`: the sessions' events, with the recorder's
//!   schema (DuckDB and pyarrow read it as they read segments), and the
//!   control sessions' events that concern them (of their grants, or
//!   targeting them), one by one;
//! - `proofs.json`: for each segment the events come from, its root
//!   statement and signature ([`RootStatement`]), and the nodes that prove
//!   the segment's carried events together against that root (one
//!   multiproof per segment, [`merkle::Tree::multiproof`]);
//! - `proofs/leaves.parquet`: per event, by session and seq, its segment,
//!   leaf index, nonce, the session's chain head after it, and, where the
//!   event before it in its session is not carried, the head before it;
//! - `signing-key.pub.pem`: the deployment's public key (trust it by
//!   pinning it, as for `verify`);
//! - renderings of the events for the tools auditors use, made by the
//!   caller (the recorder knows no protocol): `report.html`,
//!   `statements.csv`, `ocsf.jsonl`, `asciicast/SESSION.cast` ([`Extras`]);
//! - `bundle.json`: who exported what, when and why, every file's SHA-256
//!   and size, signed by the deployment's key.
//!
//! [`verify_bundle`] checks the signature and every file, each root's
//! signature, each event's proof, and each session's completeness: seq
//! continuous from its `session_start` to its `session_end` (or to where the
//! recording was sealed, for a session marked live), every event's head
//! before it the head after the one before.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey;
use proctor_schemas::arrow::BatchReader;
use proctor_schemas::chain::ChainHash;
use proctor_schemas::manifest::{Manifest, RootStatement};
use proctor_schemas::{Cells, Column, Event, EventKind, SessionId, Timestamp, Value, canonical, merkle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keys::{self, ManifestKey, PinnedKey};
use crate::layout::Layout;
use crate::reader::Reader;
use crate::verify::{KeyTrust, Problem};
use crate::{RecorderError, RecorderSettings, Result, segment};

/// The format of a bundle, in its `bundle.json`.
pub const BUNDLE_FORMAT: &str = "proctor.bundle.v2";
/// Prefix of the bytes a bundle's signature covers.
const SIGNING_DOMAIN: &[u8] = b"proctor.bundle.v2\n";
pub const EVENTS_FILE: &str = "events/events.parquet";
pub const PROOFS_FILE: &str = "proofs.json";
pub const LEAVES_FILE: &str = "proofs/leaves.parquet";
pub const KEY_FILE: &str = "signing-key.pub.pem";
pub const BUNDLE_FILE: &str = "bundle.json";
pub const STATEMENTS_FILE: &str = "statements.csv";
pub const OCSF_FILE: &str = "ocsf.jsonl";
pub const REPORT_FILE: &str = "report.html";

/// Renders a bundle's events (its sessions', then the related ones', each
/// in seq order) as the extra files it carries: `(name, bytes)`, each name
/// [`REPORT_FILE`], [`STATEMENTS_FILE`], [`OCSF_FILE`] or
/// `asciicast/SESSION.cast` for an exported session.
pub type Extras<'a> = &'a (dyn Fn(&[Event], &mut dyn Renderings) -> Result<()> + Sync);

/// Where an export's renderings go: each file by its bundle name, written
/// through `write` as it is made (never whole in memory) and hashed on the
/// way to disk.
pub trait Renderings {
    fn file(&mut self, name: &str, write: &mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>)
    -> Result<()>;
}

/// The renderings of a bundle being written: allowed names only, each
/// once, hashed as written.
struct BundleFiles<'a> {
    out: &'a Path,
    sessions: &'a BTreeSet<String>,
    hashed: BTreeMap<String, (String, u64)>,
    /// Free space the renderings must leave where they are written.
    keep: u64,
}

/// A writer that stops, with an error naming the space left, once the
/// file system it writes on has less than `keep` bytes free: what an
/// estimate by events cannot foresee (a session of very large statements)
/// is measured as it is written. Checked every [`Guarded::EVERY`] bytes.
pub struct Guarded<W> {
    inner: W,
    at: PathBuf,
    keep: u64,
    since: u64,
}

impl<W> Guarded<W> {
    const EVERY: u64 = 16 << 20;

    pub fn new(inner: W, at: &Path, keep: u64) -> Guarded<W> {
        Guarded { inner, at: at.to_path_buf(), keep, since: 0 }
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: std::io::Write> std::io::Write for Guarded<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.since += bytes.len() as u64;
        if self.since >= Self::EVERY {
            self.since = 0;
            let free = crate::layout::free_bytes(&self.at)?;
            if free < self.keep {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!(
                        "{} MiB free at {}, less than the {} MiB an export leaves: free space there, or export fewer sessions",
                        free >> 20,
                        self.at.display(),
                        self.keep >> 20
                    ),
                ));
            }
        }
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Renderings for BundleFiles<'_> {
    fn file(
        &mut self,
        name: &str,
        write: &mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> Result<()> {
        use std::io::Write as _;
        if !allowed_extra(name, self.sessions) || self.hashed.contains_key(name) {
            return Err(export_error(format!("{name}: not a file a bundle may carry")));
        }
        let path = self.out.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(RecorderError::io("cannot create bundle", self.out))?;
        }
        let file = fs::File::create(&path).map_err(RecorderError::io("cannot write bundle file", &path))?;
        let file = Guarded::new(file, self.out, self.keep);
        let mut writer = std::io::BufWriter::with_capacity(1 << 20, segment::HashingWriter::new(file));
        let failed = |error: std::io::Error| match error.kind() {
            std::io::ErrorKind::StorageFull => RecorderError::NoRoom(error.to_string()),
            _ => RecorderError::io("cannot write bundle file", &path)(error),
        };
        write(&mut writer).map_err(failed)?;
        writer.flush().map_err(failed)?;
        let hashing =
            writer.into_inner().map_err(|e| RecorderError::io("cannot write bundle file", &path)(e.into_error()))?;
        let (_, sha256, bytes) = hashing.finish();
        self.hashed.insert(name.to_string(), (sha256, bytes));
        Ok(())
    }
}

/// Whether `name` is an extra file a bundle of `sessions` may carry.
fn allowed_extra(name: &str, sessions: &BTreeSet<String>) -> bool {
    let cast = name
        .strip_prefix("asciicast/")
        .and_then(|rest| rest.strip_suffix(".cast"))
        .is_some_and(|session| session.parse::<SessionId>().is_ok() && sessions.contains(session));
    name == STATEMENTS_FILE || name == OCSF_FILE || name == REPORT_FILE || cast
}

/// `bundle.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleManifest {
    pub format: String,
    /// Who exported it (the account that ran the export).
    pub exported_by: String,
    /// When (RFC 3339, UTC).
    pub exported_at: String,
    pub reason: Option<String>,
    /// How the sessions were chosen, when not by id (`subject:NAME
    /// since:7d`, ...).
    #[serde(default)]
    pub selection: Option<String>,
    /// The sessions asked for, sorted.
    pub sessions: Vec<String>,
    /// Sessions without a `session_end` in the recording when exported:
    /// exported as far as they were sealed.
    pub live: Vec<String>,
    /// Control sessions (grants, reviews, access to recordings) of which
    /// only the events that concern the exported sessions are carried:
    /// those of their grants, and those whose target is one of them.
    #[serde(default)]
    pub related: Vec<String>,
    /// Segments with control sessions sealed before manifest format 2,
    /// whose events about the exported sessions, if any, could not be
    /// proven one by one and are not carried.
    #[serde(default)]
    pub unsearched_segments: Vec<u64>,
    /// The recording as exported from: the SHA-256 of its newest manifest
    /// (the head `proctor verify --data-dir` prints, which `--expect-head`
    /// later finds in its chain) and that manifest's segment.
    pub recording_head: String,
    pub last_segment: u64,
    pub key_fingerprint: String,
    /// Every other file of the bundle, sorted by path.
    pub files: Vec<BundleFile>,
    /// Base64 ed25519 signature over [`BundleManifest::signing_bytes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleFile {
    /// Relative to the bundle's root, `/`-separated.
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

impl BundleManifest {
    /// The domain prefix and the JSON without the signature.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.signature = None;
        proctor_schemas::manifest::signing_bytes(SIGNING_DOMAIN, &unsigned)
    }
}

/// `proofs.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Proofs {
    pub roots: Vec<SignedRoot>,
    /// Per segment, the nodes proving its carried events together.
    pub segments: Vec<SegmentProof>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SignedRoot {
    pub statement: RootStatement,
    pub signature: String,
}

/// The multiproof of a segment's carried events: the nodes a verifier
/// needs besides their leaves, in the order [`merkle::root_from`] asks for
/// them (hex).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SegmentProof {
    pub segment_id: u64,
    pub nodes: Vec<String>,
}

/// One row of `proofs/leaves.parquet`: how one event is a leaf of its
/// segment's tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafProof {
    pub session_id: String,
    pub seq: u64,
    pub segment_id: u64,
    /// Its leaf's index in the segment's tree.
    pub index: u64,
    pub nonce: merkle::Nonce,
    /// The session's chain head after the event.
    pub head: ChainHash,
    /// The head before it, where the event before it in its session is not
    /// in the bundle (seq 0 starts from the genesis head).
    pub head_before: Option<ChainHash>,
}

/// What an export wrote.
#[derive(Debug)]
pub struct Exported {
    pub sessions: usize,
    /// Every event carried, those of the control sessions included.
    pub events: u64,
    /// Of those, the control sessions' events about the sessions.
    pub related_events: u64,
    pub segments: usize,
    pub live: Vec<String>,
}

/// A carried event as its segment was read: where its row is kept, and
/// how it is a leaf of the segment's tree.
struct Found {
    /// Its session, by its place in [`Proven::names`].
    session: u32,
    seq: u64,
    /// Its row: `row` of kept batch `batch`.
    batch: u32,
    row: u32,
    index: u64,
    nonce: merkle::Nonce,
    head: ChainHash,
    before: ChainHash,
    /// Whether it is its session's `session_end`.
    end: bool,
}

/// What proving one segment gives: its carried events, the rows they are
/// (only those, in the recorder's schema), the names of their sessions,
/// and the multiproof.
struct Proven {
    names: Vec<String>,
    batches: Vec<arrow::array::RecordBatch>,
    found: Vec<Found>,
    nodes: Vec<merkle::Hash>,
}

fn export_error(message: impl Into<String>) -> RecorderError {
    RecorderError::Export(message.into())
}

/// What to export, from where, to where, by whom and why.
pub struct ExportRequest<'a> {
    pub data_dir: &'a Path,
    /// Exported whole, as far as they are sealed.
    pub sessions: &'a [SessionId],
    pub exported_by: &'a str,
    /// When: `bundle.json`'s `exported_at`.
    pub exported_at: Timestamp,
    pub reason: Option<&'a str>,
    /// How the sessions were chosen, when not by id.
    pub selection: Option<&'a str>,
    /// The bundle: a new directory.
    pub out: &'a Path,
    pub extras: Extras<'a>,
}

/// Writes the bundle `request` asks for, signed with the data dir's key.
pub fn export(request: &ExportRequest<'_>) -> Result<Exported> {
    let out = request.out;
    if request.sessions.is_empty() {
        return Err(export_error("no session to export"));
    }
    if out.extension().is_some_and(|e| e == "tar") {
        return Err(export_error(format!(
            "{}: a bundle is written as a directory; give a path that does not end in .tar",
            out.display()
        )));
    }
    if out.exists() {
        return Err(export_error(format!("{} exists already: give a new directory for the bundle", out.display())));
    }
    let written = write_bundle(request);
    if written.is_err() && out.exists() {
        // Nothing half-written is left to be taken for evidence.
        let _ = fs::remove_dir_all(out);
    }
    written
}

fn write_bundle(request: &ExportRequest<'_>) -> Result<Exported> {
    let ExportRequest { data_dir, sessions, exported_by, exported_at, reason, selection, out, extras } = *request;
    let layout = Layout::new(data_dir);
    let key = ManifestKey::load(&layout.keys_dir())?;
    let (recording_head, last_segment) = check_manifests(&layout, &key)?;
    let reader = Reader::open(data_dir)?;
    let wanted: BTreeSet<String> = sessions.iter().map(SessionId::to_string).collect();

    // Only what was checked, and what the recording's head covers: a
    // segment sealed meanwhile by a running Proctor waits for the next export.
    let manifests: Vec<Manifest> = reader.manifests()?.into_iter().filter(|m| m.segment_id <= last_segment).collect();
    let carried: u64 =
        manifests.iter().flat_map(|m| &m.sessions).filter(|s| wanted.contains(&s.session_id)).map(|s| s.events).sum();
    let keep = check_room(out, data_dir, carried)?;
    let control: BTreeSet<String> = reader
        .sessions()?
        .into_iter()
        .filter(|s| s.protocol.as_deref() == Some("control"))
        .map(|s| s.session_id.to_string())
        .collect();
    // The grants the sessions ran under and the reviews their decisions
    // name (read first, a few columns of their segments): what makes a
    // control session's event theirs.
    let ties = ties_of(&layout, &manifests, &wanted)?;

    let mut roots: Vec<SignedRoot> = Vec::new();
    let mut segment_proofs: Vec<SegmentProof> = Vec::new();
    let mut unsearched = Vec::new();
    let mut to_prove = Vec::new();
    for manifest in &manifests {
        let has_wanted = manifest.sessions.iter().any(|s| wanted.contains(&s.session_id));
        let has_control = manifest.sessions.iter().any(|s| control.contains(&s.session_id));
        if !has_wanted && !has_control {
            continue;
        }
        if manifest.merkle_root.is_none() && !has_wanted {
            // Sealed before segments committed to each event: its control
            // events cannot be proven one by one; named.
            unsearched.push(manifest.segment_id);
            continue;
        }
        to_prove.push(manifest);
    }
    // Looked up once per row of every segment read: hashed, not ordered.
    let wanted_fast: std::collections::HashSet<&str> = wanted.iter().map(String::as_str).collect();
    let control_fast: std::collections::HashSet<&str> = control.iter().map(String::as_str).collect();
    let select = |session: &str, cells: &Cells<'_>| {
        wanted_fast.contains(session) || (control_fast.contains(session) && concerns(cells, &ties, &wanted))
    };
    // Segments are proven on every core, each on its own.
    let mut proven: Vec<Proven> = Vec::with_capacity(to_prove.len());
    for (manifest, done) in to_prove.iter().zip(on_every_core(&to_prove, |m| prove_segment(&layout, m, &select))) {
        let done = done?;
        if done.found.is_empty() {
            continue;
        }
        let (Some(statement), Some(signature)) = (manifest.root_statement(), manifest.root_signature.clone()) else {
            return Err(export_error(format!("segment {} has no signed Merkle root", manifest.segment_id)));
        };
        roots.push(SignedRoot { statement, signature });
        segment_proofs.push(SegmentProof {
            segment_id: manifest.segment_id,
            nodes: done.nodes.iter().map(hex::encode).collect(),
        });
        proven.push(done);
    }
    let segment_ids: Vec<u64> = roots.iter().map(|r| r.statement.segment_id).collect();

    // Every session met, in the bundle's order (by id), and each carried
    // event's place: by session, then seq.
    let names: BTreeSet<&str> = proven.iter().flat_map(|p| p.names.iter().map(String::as_str)).collect();
    let names: Vec<&str> = names.into_iter().collect();
    let rank_of: HashMap<&str, u32> = names.iter().enumerate().map(|(k, n)| (*n, k as u32)).collect();
    let ranks: Vec<Vec<u32>> = proven.iter().map(|p| p.names.iter().map(|n| rank_of[n.as_str()]).collect()).collect();
    let mut order: Vec<(u32, u64, u32, u32)> = Vec::with_capacity(proven.iter().map(|p| p.found.len()).sum());
    for (k, p) in proven.iter().enumerate() {
        order.extend(
            p.found.iter().enumerate().map(|(at, f)| (ranks[k][f.session as usize], f.seq, k as u32, at as u32)),
        );
    }
    order.sort_unstable();
    let found = |&(_, _, k, at): &(u32, u64, u32, u32)| &proven[k as usize].found[at as usize];
    let is_wanted: Vec<bool> = names.iter().map(|n| wanted.contains(*n)).collect();
    let related_sessions: BTreeSet<String> =
        names.iter().zip(&is_wanted).filter(|(_, w)| !**w).map(|(n, _)| n.to_string()).collect();
    let related_events = order.iter().filter(|o| !is_wanted[o.0 as usize]).count() as u64;
    if let Some(missing) = wanted.iter().find(|s| !rank_of.contains_key(s.as_str())) {
        return Err(export_error(format!(
            "session {missing} is not in the sealed recording (a session still live is exported once its first segment is sealed)"
        )));
    }
    // A session is live where its last event (in seq order) is not its end;
    // the head before an event is carried only where the event before it
    // in its session is not.
    let mut live = Vec::new();
    let mut leaves: Vec<LeafProof> = Vec::with_capacity(order.len());
    for (k, o) in order.iter().enumerate() {
        let f = found(o);
        let last_of_session = order.get(k + 1).is_none_or(|next| next.0 != o.0);
        if last_of_session && is_wanted[o.0 as usize] && !f.end {
            live.push(names[o.0 as usize].to_string());
        }
        let follows = k > 0 && order[k - 1].0 == o.0 && order[k - 1].1 + 1 == o.1;
        leaves.push(LeafProof {
            session_id: names[o.0 as usize].to_string(),
            seq: o.1,
            segment_id: segment_ids[o.2 as usize],
            index: f.index,
            nonce: f.nonce,
            head: f.head,
            head_before: (!follows && o.1 > 0).then_some(f.before),
        });
    }

    fs::create_dir_all(out.join("events")).map_err(RecorderError::io("cannot create bundle", out))?;
    fs::create_dir_all(out.join("proofs")).map_err(RecorderError::io("cannot create bundle", out))?;
    // The carried rows in the bundle's order, a row group at a time, taken
    // column by column from the segments' own: written as the events file
    // on one core while the other makes them events for the renderings.
    let sources: Vec<&arrow::array::RecordBatch> = proven.iter().flat_map(|p| p.batches.iter()).collect();
    let first_batch: Vec<usize> = proven
        .iter()
        .scan(0, |at, p| {
            let first = *at;
            *at += p.batches.len();
            Some(first)
        })
        .collect();
    let place = |o: &(u32, u64, u32, u32)| {
        let f = found(o);
        (first_batch[o.2 as usize] + f.batch as usize, f.row as usize)
    };
    // Runs of rows lying together in a segment's batch (a session's rows
    // do): (batch, first row, rows).
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    for o in &order {
        let (batch, row) = place(o);
        match runs.last_mut() {
            Some((b, first, rows)) if *b == batch && *first + *rows == row => *rows += 1,
            _ => runs.push((batch, row, 1)),
        }
    }
    drop(order);
    let events = leaves.len() as u64;
    let events_path = out.join(EVENTS_FILE);
    // Three at once: the events file then the leaves, and the rows made
    // events for the renderings, in two halves.
    let readers = sources.iter().map(|b| BatchReader::new(b)).collect::<std::result::Result<Vec<_>, _>>()?;
    let events_of = |runs: &[(usize, usize, usize)]| -> Result<Vec<Event>> {
        let mut events = Vec::with_capacity(runs.iter().map(|r| r.2).sum());
        let mut read = proctor_schemas::Row::default();
        for &(batch, row, rows) in runs {
            for i in row..row + rows {
                readers[batch].row_into(i, &mut read)?;
                events.push(Event::take_from(&mut read)?);
            }
        }
        Ok(events)
    };
    let half = {
        let mut counted = 0;
        runs.iter().position(|r| {
            counted += r.2;
            counted * 2 >= leaves.len()
        })
    }
    .map_or(runs.len(), |k| k + 1);
    let (written, bundle_events) = std::thread::scope(|scope| {
        let written = scope.spawn(|| -> Result<()> {
            let mut writer = segment::SegmentWriter::create(
                &events_path,
                &RecorderSettings::default(),
                segment::RawBytes::Compressed,
            )?;
            for &(batch, row, rows) in &runs {
                writer.write(&sources[batch].slice(row, rows))?;
            }
            writer.finish()?;
            write_leaves(&out.join(LEAVES_FILE), &leaves)
        });
        let second = scope.spawn(|| events_of(&runs[half..]));
        let first = events_of(&runs[..half]);
        let second = second.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let events = first.and_then(|mut first| {
            first.extend(second?);
            Ok(first)
        });
        (written.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)), events)
    });
    written?;
    let bundle_events = bundle_events?;
    drop(readers);
    drop(sources);
    drop(proven);
    drop(leaves);
    let segments = roots.len();
    let proofs = Proofs { roots, segments: segment_proofs };
    write_file(out, PROOFS_FILE, &serde_json::to_vec_pretty(&proofs).unwrap_or_default())?;
    write_file(out, KEY_FILE, keys::public_key_pem(&key.verifying_key()).as_bytes())?;

    let mut bundle = BundleManifest {
        format: BUNDLE_FORMAT.to_string(),
        exported_by: exported_by.to_string(),
        exported_at: exported_at.to_rfc3339(),
        reason: reason.map(str::to_string),
        selection: selection.map(str::to_string),
        sessions: wanted.iter().cloned().collect(),
        live: live.clone(),
        related: related_sessions.iter().cloned().collect(),
        unsearched_segments: unsearched,
        recording_head,
        last_segment,
        key_fingerprint: key.fingerprint(),
        files: Vec::new(),
        signature: None,
    };
    // What will be signed must verify, or it is not evidence (a session
    // whose chain restarts, its head before lost, cannot be proven whole):
    // the events, leaves and proofs as written are checked while the
    // renderings are made, the signed bundle after.
    let public = key.verifying_key();
    let (contents, rendered) = std::thread::scope(|scope| {
        let contents = scope.spawn(|| {
            let mut check = BundleReport::empty();
            let held = |name: &str| fs::read(out.join(name)).map(bytes::Bytes::from).unwrap_or_default();
            check_contents(&mut check, out, &bundle, &public, &held);
            check.problems
        });
        let mut rendered = BundleFiles { out, sessions: &wanted, hashed: BTreeMap::new(), keep };
        let done = extras(&bundle_events, &mut rendered).map(|()| rendered.hashed);
        (contents.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)), done)
    });
    drop(bundle_events);
    let mut hashed = match rendered {
        Ok(hashed) => hashed,
        Err(error) => {
            let _ = fs::remove_dir_all(out);
            return Err(error);
        }
    };
    let mut names: BTreeSet<String> =
        [EVENTS_FILE, KEY_FILE, LEAVES_FILE, PROOFS_FILE].into_iter().map(str::to_string).collect();
    names.extend(hashed.keys().cloned());
    for path in &names {
        let (sha256, bytes) = match hashed.remove(path) {
            Some(done) => done,
            None => hash_file(&out.join(path))?,
        };
        bundle.files.push(BundleFile { path: path.clone(), sha256, bytes });
    }
    bundle.signature = Some(key.sign(&bundle.signing_bytes()));
    let mut text = serde_json::to_vec_pretty(&bundle).unwrap_or_default();
    text.push(b'\n');
    write_file(out, BUNDLE_FILE, &text)?;
    let mut problems = verify_parts(out, Some(&PinnedKey::Key(public)), false, false)?.problems;
    problems.extend(contents);
    if !problems.is_empty() {
        let _ = fs::remove_dir_all(out);
        let shown: Vec<String> = problems.iter().take(5).map(ToString::to_string).collect();
        let more = problems.len().saturating_sub(shown.len());
        let more = if more > 0 { format!(" (and {more} more)") } else { String::new() };
        return Err(export_error(format!(
            "the bundle would not verify, so it was not kept: {}{more}",
            shown.join("; ")
        )));
    }
    Ok(Exported { sessions: wanted.len(), events, segments, live, related_events })
}

/// What an export writes per event, about: its row and proof, and its
/// renderings (OCSF the most), with room to spare.
const EXPORT_BYTES_PER_EVENT: u64 = 2048;
/// What an export holds in memory per event at most, about (the carried
/// rows, the events the renderings are made from, the check's walk): 1.8
/// KiB measured at a million events, with room to spare.
const EXPORT_MEMORY_PER_EVENT: u64 = 2048;
/// Free space an export leaves on the recording's own filesystem, for the
/// recorder (which refuses new events, losing none, when it runs out).
const RECORDER_HEADROOM: u64 = 256 << 20;

/// Whether there is room for an export of about `events` events (returns
/// the free space its renderings must leave as they are written): on the
/// filesystem `out` is written on (leaving the recorder its headroom when
/// it is the recording's), and in memory (a replay server runs in the
/// gateway's process: an export must not take its memory). Refused before
/// anything is written, with what it needs and what there is.
fn check_room(out: &Path, data_dir: &Path, events: u64) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let at = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let disk_free = crate::layout::free_bytes(at).map_err(RecorderError::io("cannot read the free space of", at))?;
    let device = |path: &Path| fs::metadata(path).map(|m| m.dev()).ok();
    let room = Room {
        disk_free,
        shared: device(at).is_some() && device(at) == device(data_dir),
        memory_available: memory_available(),
    };
    match room.refusal(events, at) {
        Some(why) => Err(RecorderError::NoRoom(why)),
        // What the renderings leave as they are written.
        None => Ok(if room.shared { RECORDER_HEADROOM } else { 0 }),
    }
}

/// What an export has room in.
struct Room {
    disk_free: u64,
    /// Whether the export is written on the recording's filesystem.
    shared: bool,
    /// `MemAvailable`, where the system says.
    memory_available: Option<u64>,
}

impl Room {
    /// Why an export of `events` events written at `at` does not fit, if
    /// it does not.
    fn refusal(&self, events: u64, at: &Path) -> Option<String> {
        let mib = |bytes: u64| bytes.div_ceil(1 << 20);
        let need = events.saturating_mul(EXPORT_BYTES_PER_EVENT);
        let keep = if self.shared { RECORDER_HEADROOM } else { 0 };
        if self.disk_free < need.saturating_add(keep) {
            let recorder = if self.shared {
                format!(", and the recording's filesystem keeps {} MiB free for the recorder", mib(keep))
            } else {
                String::new()
            };
            return Some(format!(
                "the export of {events} events needs about {} MiB at {} ({} MiB free{recorder}): free space there, or export fewer sessions",
                mib(need),
                at.display(),
                mib(self.disk_free)
            ));
        }
        let held = events.saturating_mul(EXPORT_MEMORY_PER_EVENT);
        match self.memory_available {
            Some(available) if available < held => Some(format!(
                "the export of {events} events needs about {} MiB of memory ({} MiB available): export fewer sessions at a time",
                mib(held),
                mib(available)
            )),
            _ => None,
        }
    }
}

/// The memory the system can give without swapping (`MemAvailable`).
fn memory_available() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// What ties control events to the exported sessions.
#[derive(Default)]
struct Ties {
    /// The grants they started under (the `grant_id` of their starts).
    grants: BTreeSet<String>,
    /// The reviews their policy decisions name: a review belongs to its
    /// grant, so one opened in another session under the grant can be
    /// what let their statement run.
    reviews: BTreeSet<String>,
}

/// The [`Ties`] of `sessions`, read from the segments they are in, four
/// columns only.
fn ties_of(layout: &Layout, manifests: &[Manifest], sessions: &BTreeSet<String>) -> Result<Ties> {
    use arrow::array::{Array, AsArray};
    use parquet::arrow::ProjectionMask;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let mut ties = Ties::default();
    for manifest in manifests {
        if !manifest.sessions.iter().any(|s| sessions.contains(&s.session_id)) {
            continue;
        }
        let path = layout.root().join(&manifest.path);
        let file = fs::File::open(&path).map_err(RecorderError::io("cannot open segment", &path))?;
        let corrupt = |e: parquet::errors::ParquetError| RecorderError::corrupt(&path, e.to_string());
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(corrupt)?;
        let names = [Column::SessionId, Column::Kind, Column::GrantId, Column::ReviewId].map(|c| c.name());
        let mask = ProjectionMask::columns(builder.parquet_schema(), names);
        for batch in builder.with_projection(mask).build().map_err(corrupt)? {
            let batch = batch.map_err(|e| RecorderError::corrupt(&path, e.to_string()))?;
            let column = |name: &str| batch.column_by_name(name).and_then(|c| c.as_string_opt::<i32>().cloned());
            let (Some(session), Some(kind)) = (column(Column::SessionId.name()), column(Column::Kind.name())) else {
                continue;
            };
            let (grant, review) = (column(Column::GrantId.name()), column(Column::ReviewId.name()));
            for i in 0..batch.num_rows() {
                if !sessions.contains(session.value(i)) {
                    continue;
                }
                let kind = kind.value(i);
                if let Some(grant) = grant.as_ref().filter(|g| g.is_valid(i))
                    && kind == EventKind::SessionStart.as_str()
                {
                    ties.grants.insert(grant.value(i).to_string());
                }
                if let Some(review) = review.as_ref().filter(|r| r.is_valid(i))
                    && kind == EventKind::PolicyDecision.as_str()
                {
                    ties.reviews.insert(review.value(i).to_string());
                }
            }
        }
    }
    Ok(ties)
}

/// Whether a control session's event concerns the exported sessions: one
/// about a review their decisions name; else one whose target is one of
/// them; else, having no target, one of their grants (a grant's own
/// events). An event about another session under the same grant (a review
/// none of theirs ran under, a read of it) is that session's.
fn concerns(cells: &Cells<'_>, ties: &Ties, sessions: &BTreeSet<String>) -> bool {
    let text = |column| match cells.get(column) {
        Some(Value::Str(text)) => Some(text),
        _ => None,
    };
    concerns_by(
        [text(Column::GrantId), text(Column::TargetSession), text(Column::ReviewId)],
        |g| ties.grants.contains(g),
        |t| sessions.contains(t),
        |r| ties.reviews.contains(r),
    )
}

/// The rule [`concerns`] and the verifier share, over an event's grant,
/// target and review.
fn concerns_by(
    [grant, target, review]: [Option<&str>; 3],
    is_grant: impl Fn(&str) -> bool,
    is_session: impl Fn(&str) -> bool,
    is_review: impl Fn(&str) -> bool,
) -> bool {
    if review.is_some_and(is_review) {
        return true;
    }
    match target {
        Some(target) => is_session(target),
        None => grant.is_some_and(is_grant),
    }
}

/// Checks every manifest of the recording before anything is signed from
/// it: each signed by the data dir's key (its root too), each linked to the
/// one before. A missing or edited manifest would otherwise cut sessions
/// short, or hide them, in a bundle that verifies. Returns the recording's
/// head (the newest manifest's SHA-256) and that manifest's number.
fn check_manifests(layout: &Layout, key: &ManifestKey) -> Result<(String, u64)> {
    let public = key.verifying_key();
    let mut previous: Option<String> = None;
    let mut last = 0;
    let refuse = |number: u64, what: &str| {
        export_error(format!(
            "manifest {number} {what}: run `proctor verify --data-dir` on the recording; nothing was exported"
        ))
    };
    for number in layout.manifest_numbers()? {
        let path = layout.manifest_path(number);
        let bytes = fs::read(&path).map_err(RecorderError::io("cannot read manifest", &path))?;
        let manifest = Manifest::from_file_bytes(&bytes).map_err(|_| refuse(number, "is unreadable"))?;
        let signed = manifest
            .signature
            .as_deref()
            .is_some_and(|s| keys::verify_signature(&public, &manifest.signing_bytes(), s));
        if !signed {
            return Err(refuse(number, "is not signed by the data dir's key"));
        }
        if let Some(statement) = manifest.root_statement() {
            let root_signed = manifest
                .root_signature
                .as_deref()
                .is_some_and(|s| keys::verify_signature(&public, &statement.signing_bytes(), s));
            if !root_signed {
                return Err(refuse(number, "has a Merkle root not signed by the data dir's key"));
            }
        }
        if manifest.prev_manifest_sha256 != previous {
            return Err(refuse(number, "does not link to the manifest before it"));
        }
        previous = Some(hex::encode(Sha256::digest(&bytes)));
        last = number;
    }
    let head = previous.ok_or_else(|| export_error("the recording has no sealed segment yet"))?;
    Ok((head, last))
}

/// `work` on each of `items`, on every core (each item on one), the
/// results in the items' order.
fn on_every_core<I: Sync, T: Send>(items: &[I], work: impl Fn(&I) -> T + Sync) -> Vec<T> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from).clamp(1, 8);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, T)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..cores.min(items.len()))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(k) else { break };
                        done.push((k, work(item)));
                    }
                    done
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    });
    done.sort_by_key(|(k, _)| *k);
    done.into_iter().map(|(_, result)| result).collect()
}

/// The selected events of one segment, each with its leaf and its row, and
/// the segment's multiproof for them. The segment's tree rebuilt from its
/// rows must be the one its manifest signs.
fn prove_segment(
    layout: &Layout,
    manifest: &Manifest,
    select: &(dyn Fn(&str, &Cells<'_>) -> bool + Sync),
) -> Result<Proven> {
    let path = layout.root().join(&manifest.path);
    let salt = manifest.merkle_salt.as_deref().and_then(|salt| {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(salt, &mut bytes).ok().map(|()| bytes)
    });
    let Some(salt) = salt.filter(|_| manifest.merkle_root.is_some()) else {
        return Err(export_error(format!(
            "segment {} was sealed before segments committed to each event (manifest format {}): its events cannot be proven one by one",
            manifest.segment_id, manifest.format
        )));
    };
    // Per session met: its chain head, and its place among the names of
    // the sessions carried.
    let mut heads: ahash::AHashMap<String, (ChainHash, u32)> = manifest
        .sessions
        .iter()
        .map(|s| {
            let head = s.chain_in.as_deref().and_then(ChainHash::from_hex).unwrap_or(ChainHash::GENESIS);
            (s.session_id.clone(), (head, u32::MAX))
        })
        .collect();
    let mut proven = Proven { names: Vec::new(), batches: Vec::new(), found: Vec::new(), nodes: Vec::new() };
    let mut leaves = Vec::with_capacity(manifest.row_count as usize);
    let mut indices = Vec::new();
    let mut bytes = Vec::new();
    let mut rows: Vec<u32> = Vec::new();
    segment::for_each_batch(&path, |batch| {
        let reader = BatchReader::new(&batch)?;
        rows.clear();
        let kept = proven.batches.len() as u32;
        for i in 0..reader.len() {
            // Every row is a leaf; a selected one is also carried.
            reader.with_cells(i, |cells| -> Result<()> {
                let (Some(Value::Str(session)), Some(Value::U64(seq))) =
                    (cells.get(Column::SessionId), cells.get(Column::Seq))
                else {
                    return Err(RecorderError::corrupt(&path, "a row without session id or seq"));
                };
                bytes.clear();
                canonical::encode(cells, &mut bytes);
                let (head, name) = match heads.get_mut(session) {
                    Some(entry) => entry,
                    None => heads.entry(session.to_string()).or_insert((ChainHash::GENESIS, u32::MAX)),
                };
                let before = *head;
                *head = before.next(&bytes);
                let index = leaves.len() as u64;
                let nonce = merkle::nonce(&salt, index);
                leaves.push(merkle::leaf(&nonce, head));
                if !select(session, cells) {
                    return Ok(());
                }
                if *name == u32::MAX {
                    *name = proven.names.len() as u32;
                    proven.names.push(session.to_string());
                }
                let end = matches!(cells.get(Column::Kind), Some(Value::Str(k)) if k == EventKind::SessionEnd.as_str());
                indices.push(index);
                proven.found.push(Found {
                    session: *name,
                    seq,
                    batch: kept,
                    row: rows.len() as u32,
                    index,
                    nonce,
                    head: *head,
                    before,
                    end,
                });
                rows.push(i as u32);
                Ok(())
            })??;
        }
        // Only the carried rows are kept.
        if rows.len() == reader.len() {
            proven.batches.push(segment::conform(batch)?);
        } else if !rows.is_empty() {
            let taken = arrow::compute::take_record_batch(&batch, &arrow::array::UInt32Array::from(rows.clone()))
                .map_err(|e| RecorderError::corrupt(&path, e.to_string()))?;
            proven.batches.push(segment::conform(taken)?);
        }
        Ok(())
    })?;
    let tree = merkle::Tree::new(leaves);
    if manifest.merkle_root.as_deref() != Some(hex::encode(tree.root()).as_str()) {
        return Err(export_error(format!(
            "segment {} does not match its signed Merkle root: run `proctor verify` on the data dir; nothing was exported",
            manifest.segment_id
        )));
    }
    proven.nodes = tree.multiproof(&indices).unwrap_or_default();
    Ok(proven)
}

/// The arrow schema of `proofs/leaves.parquet`.
fn leaves_schema() -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    std::sync::Arc::new(Schema::new(vec![
        Field::new("session_id", DataType::Utf8, false),
        Field::new("seq", DataType::UInt64, false),
        Field::new("segment_id", DataType::UInt64, false),
        Field::new("leaf_index", DataType::UInt64, false),
        Field::new("nonce", DataType::FixedSizeBinary(16), false),
        Field::new("head", DataType::FixedSizeBinary(32), false),
        Field::new("head_before", DataType::FixedSizeBinary(32), true),
    ]))
}

/// Writes `proofs/leaves.parquet` (zstd; sorted by session and seq).
pub fn write_leaves(path: &Path, leaves: &[LeafProof]) -> Result<()> {
    use arrow::array::{ArrayRef, FixedSizeBinaryBuilder, StringArray, UInt64Array};
    use parquet::arrow::ArrowWriter;
    use parquet::basic::{Compression, ZstdLevel};
    use parquet::file::properties::WriterProperties;
    use parquet::schema::types::ColumnPath;
    let failed = |e: &dyn std::fmt::Display| RecorderError::Export(format!("cannot write {}: {e}", path.display()));
    let file = fs::File::create(path).map_err(RecorderError::io("cannot write bundle file", path))?;
    // Nonces and heads are random: compressing them, or looking for
    // repeats, gains nothing.
    let mut properties = WriterProperties::builder();
    for column in ["nonce", "head", "head_before"] {
        properties = properties
            .set_column_compression(ColumnPath::from(column), Compression::UNCOMPRESSED)
            .set_column_dictionary_enabled(ColumnPath::from(column), false);
    }
    let properties = properties
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).map_err(|e| failed(&e))?))
        .set_created_by(format!("proctor {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut writer = ArrowWriter::try_new(file, leaves_schema(), Some(properties)).map_err(|e| failed(&e))?;
    for chunk in leaves.chunks(64 * 1024) {
        let fixed = |size: i32, value: &dyn Fn(&LeafProof) -> Option<&[u8]>| -> Result<ArrayRef> {
            let mut builder = FixedSizeBinaryBuilder::with_capacity(chunk.len(), size);
            for leaf in chunk {
                match value(leaf) {
                    Some(bytes) => builder.append_value(bytes).map_err(|e| failed(&e))?,
                    None => builder.append_null(),
                }
            }
            Ok(std::sync::Arc::new(builder.finish()))
        };
        let columns: Vec<ArrayRef> = vec![
            std::sync::Arc::new(StringArray::from_iter_values(chunk.iter().map(|l| l.session_id.as_str()))),
            std::sync::Arc::new(UInt64Array::from_iter_values(chunk.iter().map(|l| l.seq))),
            std::sync::Arc::new(UInt64Array::from_iter_values(chunk.iter().map(|l| l.segment_id))),
            std::sync::Arc::new(UInt64Array::from_iter_values(chunk.iter().map(|l| l.index))),
            fixed(16, &|l| Some(&l.nonce[..]))?,
            fixed(32, &|l| Some(&l.head.0[..]))?,
            fixed(32, &|l| l.head_before.as_ref().map(|h| &h.0[..]))?,
        ];
        let batch = arrow::array::RecordBatch::try_new(leaves_schema(), columns).map_err(|e| failed(&e))?;
        writer.write(&batch).map_err(|e| failed(&e))?;
    }
    let file = writer.into_inner().map_err(|e| failed(&e))?;
    file.sync_all().map_err(RecorderError::io("cannot write bundle file", path))
}

/// Reads `proofs/leaves.parquet`: its rows, or why it cannot be read.
pub fn read_leaves(path: &Path) -> std::result::Result<Vec<LeafProof>, String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot be read ({e})"))?;
    leaves_from(bytes::Bytes::from(bytes), u64::MAX)
}

/// The rows of a leaves file held in memory, at most `max_rows` of them
/// (a footer claiming more is refused before anything is decoded), each
/// session id at most a session id's length.
fn leaves_from(bytes: bytes::Bytes, max_rows: u64) -> std::result::Result<Vec<LeafProof>, String> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::UInt64Type;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| format!("is not Parquet: {e}"))?;
    let rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(u64::MAX);
    if rows > max_rows {
        return Err(format!("holds {rows} leaves, more than the events of the segments it names ({max_rows})"));
    }
    let reader = builder.with_batch_size(64 * 1024).build().map_err(|e| format!("is not Parquet: {e}"))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| format!("cannot be read: {e}"))?;
        if batch.schema().fields() != leaves_schema().fields() {
            return Err("does not have the columns of a bundle's leaves".to_string());
        }
        let session = batch.column(0).as_string::<i32>();
        let seq = batch.column(1).as_primitive::<UInt64Type>();
        let segment_id = batch.column(2).as_primitive::<UInt64Type>();
        let index = batch.column(3).as_primitive::<UInt64Type>();
        let nonce = batch.column(4).as_fixed_size_binary();
        let head = batch.column(5).as_fixed_size_binary();
        let before = batch.column(6).as_fixed_size_binary();
        for i in 0..batch.num_rows() {
            if session.value(i).len() > 64 {
                return Err(format!("row {i}: a session id of {} bytes", session.value(i).len()));
            }
            let fixed32 = |bytes: &[u8]| -> [u8; 32] { bytes.try_into().unwrap_or([0; 32]) };
            out.push(LeafProof {
                session_id: session.value(i).to_string(),
                seq: seq.value(i),
                segment_id: segment_id.value(i),
                index: index.value(i),
                nonce: nonce.value(i).try_into().unwrap_or([0; 16]),
                head: ChainHash(fixed32(head.value(i))),
                head_before: before.is_valid(i).then(|| ChainHash(fixed32(before.value(i)))),
            });
        }
    }
    Ok(out)
}

fn write_file(root: &Path, relative: &str, bytes: &[u8]) -> Result<()> {
    let path = root.join(relative);
    fs::write(&path, bytes).map_err(RecorderError::io("cannot write bundle file", &path))
}

fn hash_file(path: &Path) -> Result<(String, u64)> {
    crate::verify::hash_file(path).map_err(RecorderError::io("cannot read bundle file", path))
}

/// What [`verify_bundle`] found.
#[derive(Debug)]
pub struct BundleReport {
    pub problems: Vec<Problem>,
    pub sessions: usize,
    pub events: u64,
    pub segments: usize,
    pub live: Vec<String>,
    /// Events of control sessions about the exported ones.
    pub related_events: u64,
    pub key: Option<KeyTrust>,
    pub manifest: Option<BundleManifest>,
}

impl BundleReport {
    fn empty() -> BundleReport {
        BundleReport {
            problems: Vec::new(),
            sessions: 0,
            events: 0,
            segments: 0,
            live: Vec::new(),
            related_events: 0,
            key: None,
            manifest: None,
        }
    }

    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, location: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { location: location.into(), message: message.into() });
    }
}

/// Checks the bundle at `dir` offline. The key it was signed with is the
/// one `pinned` names; without a pin, the key the bundle carries is trusted
/// (and a bundle re-signed with another key would pass: pin it).
pub fn verify_bundle(dir: &Path, pinned: Option<&PinnedKey>) -> Result<BundleReport> {
    verify_bundle_with(dir, pinned, true)
}

/// [`verify_bundle`]; the renderings' hashes are checked only with
/// `hash_renderings` (an exporter checking what it has just written and
/// hashed from memory skips them). The renderings are never read
/// otherwise, so they are hashed on a thread of their own meanwhile.
fn verify_bundle_with(dir: &Path, pinned: Option<&PinnedKey>, hash_renderings: bool) -> Result<BundleReport> {
    verify_parts(dir, pinned, hash_renderings, true)
}

/// [`verify_bundle_with`]; the events, leaves and proofs themselves are
/// checked only with `contents` (an exporter checks them while it renders,
/// before it signs, and then the signed bundle without them).
fn verify_parts(dir: &Path, pinned: Option<&PinnedKey>, hash_renderings: bool, contents: bool) -> Result<BundleReport> {
    let mut report = BundleReport::empty();
    // Only the fixed names are read, each a regular file (never through a
    // link) of a bounded size, and nothing but bundle.json and the key
    // before the signature holds.
    let bundle: BundleManifest = match read_regular(dir, BUNDLE_FILE, 16 << 20) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(bundle) => bundle,
            Err(error) => {
                report.problem(BUNDLE_FILE, format!("unreadable: {error}"));
                return Ok(report);
            }
        },
        Err(why) => {
            report.problem(BUNDLE_FILE, format!("{why}: not a bundle"));
            return Ok(report);
        }
    };
    if bundle.format != BUNDLE_FORMAT {
        let hint = if bundle.format == "proctor.bundle.v1" {
            ": bundles of format 1 (one proof per event) were made by development builds only; export the sessions again"
        } else {
            ""
        };
        report.problem(BUNDLE_FILE, format!("unknown bundle format {:?}{hint}", bundle.format));
        return Ok(report);
    }

    // The key: the bundle's own, checked against the pin; then the
    // signature, before anything else is trusted.
    let key = read_regular(dir, KEY_FILE, 64 << 10)
        .ok()
        .and_then(|pem| String::from_utf8(pem).ok())
        .and_then(|pem| VerifyingKey::from_public_key_pem(pem.trim()).ok());
    let Some(key) = key else {
        report.problem(KEY_FILE, "missing or not an ed25519 public key: nothing in the bundle can be checked");
        return Ok(report);
    };
    let fingerprint = keys::fingerprint(&key);
    report.key = Some(match pinned {
        Some(pin) => {
            if pin.fingerprint() != fingerprint {
                report.problem(
                    KEY_FILE,
                    format!(
                        "the bundle is signed by key {fingerprint}, not by the pinned key {}: it was re-signed, or comes from another deployment",
                        pin.fingerprint()
                    ),
                );
            }
            KeyTrust::Pinned(pin.fingerprint())
        }
        None => KeyTrust::DataDir(fingerprint.clone()),
    });
    match &bundle.signature {
        Some(signature) if keys::verify_signature(&key, &bundle.signing_bytes(), signature) => {}
        Some(_) => {
            report.problem(
                BUNDLE_FILE,
                format!(
                    "signature does not verify with key {fingerprint}: bundle.json was edited or signed by another key"
                ),
            );
            return Ok(report);
        }
        None => {
            report.problem(BUNDLE_FILE, "is not signed");
            return Ok(report);
        }
    }
    if bundle.key_fingerprint != fingerprint {
        report.problem(BUNDLE_FILE, format!("names key {}, but is signed by {fingerprint}", bundle.key_fingerprint));
    }

    // Files: exactly the fixed ones, each as signed, and nothing else.
    let names: BTreeSet<&str> = bundle.files.iter().map(|f| f.path.as_str()).collect();
    let fixed = [EVENTS_FILE, KEY_FILE, LEAVES_FILE, PROOFS_FILE];
    let exported: BTreeSet<String> = bundle.sessions.iter().cloned().collect();
    let strange: Vec<&str> =
        names.iter().copied().filter(|n| !fixed.contains(n) && !allowed_extra(n, &exported)).collect();
    let missing: Vec<&str> = fixed.into_iter().filter(|n| !names.contains(n)).collect();
    if !strange.is_empty() || !missing.is_empty() || names.len() != bundle.files.len() {
        report.problem(
            BUNDLE_FILE,
            format!("lists files a bundle does not hold ({strange:?}), lacks {missing:?}, or lists one twice"),
        );
        return Ok(report);
    }
    let (read, renderings): (Vec<BundleFile>, Vec<BundleFile>) =
        bundle.files.iter().cloned().partition(|f| fixed.contains(&f.path.as_str()));
    // The files verify parses are read once, into memory, and hashed and
    // parsed from those same bytes: swapping a file after it was hashed
    // changes nothing of what is checked.
    let mut held: HashMap<String, bytes::Bytes> = HashMap::new();
    for file in &read {
        match read_regular(dir, &file.path, file.bytes) {
            Ok(bytes) if bytes.len() as u64 == file.bytes && hex::encode(Sha256::digest(&bytes)) == file.sha256 => {
                held.insert(file.path.clone(), bytes::Bytes::from(bytes));
            }
            Ok(bytes) if bytes.len() as u64 != file.bytes => report.problem(
                file.path.clone(),
                format!("holds {} bytes, signed as {}: it was removed, swapped or changed", bytes.len(), file.bytes),
            ),
            Ok(bytes) => report.problem(
                file.path.clone(),
                format!(
                    "does not match bundle.json (sha-256 {}; signed as {}): it was modified or swapped",
                    hex::encode(Sha256::digest(&bytes)),
                    file.sha256
                ),
            ),
            Err(why) => report.problem(file.path.clone(), format!("{why}: it was removed, swapped or changed")),
        }
    }
    let held_file = |name: &str| held.get(name).cloned().unwrap_or_default();
    let rendered = if hash_renderings {
        let (dir, renderings) = (dir.to_path_buf(), renderings);
        Some(std::thread::spawn(move || check_hashes(&dir, &renderings)))
    } else {
        None
    };
    let rendered = || -> Vec<Problem> {
        rendered
            .map(|thread| thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .unwrap_or_default()
    };
    for (found, what) in entries_under(dir) {
        match what {
            Entry::File if found == BUNDLE_FILE || names.contains(found.as_str()) => {}
            Entry::File => {
                report.problem(found, "is not listed in bundle.json: it was added after the bundle was signed")
            }
            Entry::Other(what) => report.problem(found, format!("is {what}, which a bundle never holds")),
        }
    }
    if !report.ok() {
        // What did not match its signature is not read.
        report.problems.extend(rendered());
        return Ok(report);
    }

    if contents {
        check_contents(&mut report, dir, &bundle, &key, &held_file);
    }
    report.manifest = Some(bundle);
    report.problems.extend(rendered());
    Ok(report)
}

/// The contents of a bundle whose files are as `bundle.json` (`bundle`)
/// signs them: each root signed by `key`, each event proven by its leaf
/// and its segment's multiproof, each session whole. `held_file` gives a
/// file's bytes by its name (empty if missing).
fn check_contents(
    report: &mut BundleReport,
    dir: &Path,
    bundle: &BundleManifest,
    key: &VerifyingKey,
    held_file: &dyn Fn(&str) -> bytes::Bytes,
) {
    // Roots, each signed by the key, and each segment's multiproof.
    let proofs: Proofs = match serde_json::from_slice(&held_file(PROOFS_FILE)) {
        Ok(proofs) => proofs,
        _ => {
            report.problem(PROOFS_FILE, "missing or unreadable: no event can be proven");
            Proofs::default()
        }
    };
    let mut roots: HashMap<u64, (u64, merkle::Hash)> = HashMap::new();
    for root in &proofs.roots {
        let location = format!("segment {}", root.statement.segment_id);
        if !keys::verify_signature(key, &root.statement.signing_bytes(), &root.signature) {
            report.problem(location.clone(), "its root statement's signature does not verify: it was edited or forged");
            continue;
        }
        match decode_hash(&root.statement.merkle_root) {
            Some(hash) => {
                roots.insert(root.statement.segment_id, (root.statement.row_count, hash));
            }
            None => report.problem(location, "its Merkle root is not a hash"),
        }
    }
    report.segments = roots.len();
    let mut multiproofs: HashMap<u64, Vec<merkle::Hash>> = HashMap::new();
    for proof in &proofs.segments {
        let nodes: Option<Vec<merkle::Hash>> = proof.nodes.iter().map(|h| decode_hash(h)).collect();
        match nodes {
            Some(nodes) if !multiproofs.contains_key(&proof.segment_id) => {
                multiproofs.insert(proof.segment_id, nodes);
            }
            Some(_) => report.problem(PROOFS_FILE, format!("segment {} has two proofs", proof.segment_id)),
            None => {
                report.problem(PROOFS_FILE, format!("segment {}: its proof holds what is not a hash", proof.segment_id))
            }
        }
    }

    // Leaves: one per event, by session and seq.
    // No more leaves, nor events, than the signed segments hold.
    let signed_rows: u64 = roots.values().map(|(size, _)| *size).sum();
    let leaves = leaves_from(held_file(LEAVES_FILE), signed_rows).unwrap_or_else(|why| {
        report.problem(LEAVES_FILE, format!("{why}: no event can be proven"));
        Vec::new()
    });
    let mut by_event: ahash::AHashMap<(&str, u64), usize> = ahash::AHashMap::with_capacity(leaves.len());
    let mut unique = true;
    for (k, leaf) in leaves.iter().enumerate() {
        if by_event.insert((leaf.session_id.as_str(), leaf.seq), k).is_some() {
            unique = false;
            report.problem(LEAVES_FILE, format!("session {} seq {} has two proofs", leaf.session_id, leaf.seq));
        }
    }
    let lookup = Lookup { leaves: &leaves, by_event: &by_event, unique };

    // Events: each proven, each session whole. Row groups are walked on
    // every core, then put together in the file's order, as one walk
    // through the file would have found them.
    let related: BTreeSet<&str> = bundle.related.iter().map(String::as_str).collect();
    let events_path = dir.join(EVENTS_FILE);
    let walks = walk_events(held_file(EVENTS_FILE), &events_path, signed_rows, &lookup, &related);
    let walks = walks.unwrap_or_else(|error| {
        report.problem(EVENTS_FILE, format!("unreadable: {error}"));
        Vec::new()
    });
    // Rows numbered in the file; nothing after a row that cannot be read,
    // as one walk through the file stops there.
    let mut failure = None;
    let mut read: Vec<Walk> = Vec::with_capacity(walks.len());
    let mut first = 0;
    for mut walk in walks {
        walk.shift(first);
        first += walk.decoded;
        failure = walk.failed.take();
        read.push(walk);
        if failure.is_some() {
            break;
        }
    }
    let walks = read;
    let mut proven = vec![false; leaves.len()];
    // Rows whose event came before: counted, named, and nothing more.
    let mut repeated: std::collections::HashSet<usize> = std::collections::HashSet::new();
    let mut problems: Vec<(usize, u8, Problem)> = Vec::new();
    for walk in &walks {
        report.events += walk.events;
        for &(row, k) in &walk.claims {
            if std::mem::replace(&mut proven[k], true) {
                repeated.insert(row);
                let leaf = &leaves[k];
                problems.push((
                    row,
                    1,
                    Problem {
                        location: format!("session {} seq {}", leaf.session_id, leaf.seq),
                        message: "appears more than once: an event was duplicated".to_string(),
                    },
                ));
            }
        }
    }
    let kept = |row: &usize| !repeated.contains(row);
    let mut segment_leaves: HashMap<u64, Vec<(u64, merkle::Hash)>> = HashMap::new();
    let mut sessions: HashMap<&str, Vec<Walked>> = HashMap::new();
    let mut grants: BTreeSet<&str> = BTreeSet::new();
    let mut reviews: BTreeSet<&str> = BTreeSet::new();
    let mut about: Vec<(&str, u64, [Option<&str>; 3])> = Vec::new();
    for walk in &walks {
        problems.extend(walk.unnamed.iter().map(|&row| {
            let message = format!("row {row}: no session id or seq");
            (row, 0, Problem { location: EVENTS_FILE.to_string(), message })
        }));
        problems.extend(walk.problems.iter().filter(|(row, stage, _)| *stage == 0 || kept(row)).cloned());
        for (_, segment, index, hash) in walk.leaves.iter().filter(|l| kept(&l.0)) {
            segment_leaves.entry(*segment).or_default().push((*index, *hash));
        }
        for (_, k, ties) in walk.about.iter().filter(|a| kept(&a.0)) {
            let leaf = &leaves[*k];
            about.push((leaf.session_id.as_str(), leaf.seq, ties.each_ref().map(|t| t.as_deref())));
        }
        grants.extend(walk.grants.iter().filter(|g| kept(&g.0)).map(|(_, grant)| grant.as_str()));
        reviews.extend(walk.reviews.iter().filter(|r| kept(&r.0)).map(|(_, review)| review.as_str()));
        for (_, k, walked) in walk.walked.iter().filter(|w| kept(&w.0)) {
            sessions.entry(leaves[*k].session_id.as_str()).or_default().push(*walked);
        }
    }
    report.related_events = about.len() as u64;
    problems.sort_by_key(|(row, stage, _)| (*row, *stage));
    report.problems.extend(problems.into_iter().map(|(_, _, problem)| problem));
    if let Some(error) = failure {
        report.problem(EVENTS_FILE, format!("unreadable: {error}"));
    }
    for (leaf, proven) in leaves.iter().zip(&proven) {
        if !proven {
            report.problem(
                format!("session {} seq {}", leaf.session_id, leaf.seq),
                "is proven but not in events/: the event was removed from the bundle",
            );
        }
    }
    // Each segment's carried events, with its multiproof, give its root;
    // a root or proof no carried event uses has no place in a bundle.
    let mut segment_ids: Vec<u64> = segment_leaves.keys().copied().collect();
    segment_ids.sort_unstable();
    let mut unused: Vec<u64> =
        roots.keys().chain(multiproofs.keys()).copied().filter(|id| !segment_leaves.contains_key(id)).collect();
    unused.sort_unstable();
    unused.dedup();
    for segment_id in unused {
        report.problem(format!("segment {segment_id}"), "has a root or proof in the bundle but no carried event");
    }
    for segment_id in segment_ids {
        let location = format!("segment {segment_id}");
        let mut known = segment_leaves.remove(&segment_id).unwrap_or_default();
        known.sort_unstable_by_key(|(index, _)| *index);
        if known.windows(2).any(|w| w[0].0 == w[1].0) {
            report.problem(location, "two events claim one leaf: an event was duplicated or its proof copied");
            continue;
        }
        let (Some((size, root)), Some(nodes)) = (roots.get(&segment_id), multiproofs.get(&segment_id)) else {
            report.problem(location, "events claim this segment, but the bundle has no signed root or proof for it");
            continue;
        };
        if merkle::root_from(*size, &known, nodes).as_ref() != Some(root) {
            report.problem(
                location,
                "its carried events do not give its signed Merkle root: an event or its proof was edited, added or removed",
            );
        }
    }
    let selected: BTreeSet<&str> = bundle.sessions.iter().map(String::as_str).collect();
    for session in &bundle.sessions {
        if !sessions.contains_key(session.as_str()) {
            report.problem(format!("session {session}"), "was exported but has no events here: it was dropped");
        }
    }
    for (session, seq, ties) in &about {
        if !concerns_by(*ties, |g| grants.contains(g), |t| selected.contains(t), |r| reviews.contains(r)) {
            report.problem(
                format!("session {session} seq {seq}"),
                "concerns none of the exported sessions (not their grants' own, not about them, not a review they ran under): it is someone else's",
            );
        }
    }
    // In session order, so that problems are named in a stable order.
    let mut sessions: Vec<(&str, Vec<Walked>)> = sessions.into_iter().collect();
    sessions.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (session, events) in &mut sessions {
        let location = format!("session {session}");
        if !selected.contains(*session) {
            report.problem(location.clone(), "is in events/ but not among the sessions bundle.json names");
        }
        events.sort_by_key(|e| e.0);
        let mut expected = (0u64, ChainHash::GENESIS);
        for (seq, kind, before, head) in events.iter() {
            if *seq < expected.0 {
                report.problem(location.clone(), format!("seq {seq} appears more than once: an event was duplicated"));
                continue;
            }
            if *seq != expected.0 {
                let message = match expected.0 {
                    0 => format!("begins at seq {seq}: events 0..{} are missing", seq.saturating_sub(1)),
                    next => format!(
                        "seq {} is followed by {seq}: events {next}..{} are missing",
                        next - 1,
                        seq.saturating_sub(1)
                    ),
                };
                report.problem(location.clone(), message);
            } else if *before != expected.1 {
                report.problem(
                    location.clone(),
                    format!("seq {seq} does not continue the chain of the events before it: events were reordered or replaced"),
                );
            }
            if *seq == 0 && *kind != Bound::Start {
                report.problem(location.clone(), "seq 0 is not its session_start");
            }
            expected = (seq.saturating_add(1), *head);
        }
        let ended = events.last().is_some_and(|e| e.1 == Bound::End);
        let live = bundle.live.iter().any(|l| l == session);
        if !ended && !live {
            report.problem(location.clone(), "ends without its session_end and is not marked live: its tail was cut");
        }
        if live {
            report.live.push(session.to_string());
        }
    }
    report.sessions = sessions.len();
}

/// What walking one row group of a bundle's events file found, by row of
/// the file: the leaf each row claims, and what the row adds once it is
/// known not to repeat an event of an earlier row.
#[derive(Default)]
struct Walk {
    /// Rows decoded.
    decoded: usize,
    /// The leaf of the last row read, if it had one.
    last: Option<usize>,
    /// Why the group's walk stopped before its end.
    failed: Option<RecorderError>,
    /// Rows read with a session id and seq.
    events: u64,
    /// Rows without one.
    unnamed: Vec<usize>,
    /// (row, stage, problem): stage 0 before the row's leaf is known to be
    /// its first claim, 2 after.
    problems: Vec<(usize, u8, Problem)>,
    /// (row, leaf): the leaf whose key is the row's.
    claims: Vec<(usize, usize)>,
    /// (row, segment, leaf index, leaf hash of what the row holds).
    leaves: Vec<(usize, u64, u64, merkle::Hash)>,
    /// (row, leaf, [grant, target, review]) of a related session's row.
    about: Vec<(usize, usize, [Option<String>; 3])>,
    /// (row, grant) of a session_start.
    grants: Vec<(usize, String)>,
    /// (row, review) of a policy decision naming a review.
    reviews: Vec<(usize, String)>,
    /// (row, leaf, how the row stands in its session).
    walked: Vec<(usize, usize, Walked)>,
}

/// The leaves by session and seq.
struct Lookup<'a> {
    leaves: &'a [LeafProof],
    by_event: &'a ahash::AHashMap<(&'a str, u64), usize>,
    /// Whether no two leaves have one key.
    unique: bool,
}

impl Lookup<'_> {
    /// The leaf of `session` `seq`: `guess` when it is that leaf and keys
    /// are unique (then it is the one leaf with that key, the one the map
    /// holds), else the map's.
    fn find(&self, session: &str, seq: u64, guess: Option<usize>) -> Option<usize> {
        if self.unique
            && let Some(guess) = guess
            && let Some(leaf) = self.leaves.get(guess)
            && leaf.seq == seq
            && leaf.session_id == session
        {
            return Some(guess);
        }
        self.by_event.get(&(session, seq)).copied()
    }
}

impl Walk {
    /// Numbers its rows in the file: `by` rows come before its group.
    fn shift(&mut self, by: usize) {
        self.problems.iter_mut().for_each(|p| p.0 += by);
        self.unnamed.iter_mut().for_each(|row| *row += by);
        self.claims.iter_mut().for_each(|c| c.0 += by);
        self.leaves.iter_mut().for_each(|l| l.0 += by);
        self.about.iter_mut().for_each(|a| a.0 += by);
        self.grants.iter_mut().for_each(|g| g.0 += by);
        self.reviews.iter_mut().for_each(|r| r.0 += by);
        self.walked.iter_mut().for_each(|w| w.0 += by);
    }
}

/// Walks the events file held in `bytes` (at most `max_rows` rows), each
/// row group on one of every core, each row against its leaf: its head
/// recomputed from the head before it, its leaf hash from that head. Rows
/// are numbered within their group as decoded ([`Walk::shift`] numbers them
/// in the file); a group stops at a row that cannot be read, or at more
/// rows than its footer says ([`Walk::failed`]).
fn walk_events(
    bytes: bytes::Bytes,
    label: &Path,
    max_rows: u64,
    lookup: &Lookup<'_>,
    related: &BTreeSet<&str>,
) -> Result<Vec<Walk>> {
    use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
    let unreadable =
        |e: parquet::errors::ParquetError| RecorderError::Parquet { path: label.to_path_buf(), message: e.to_string() };
    let metadata = ArrowReaderMetadata::load(&bytes, ArrowReaderOptions::default()).map_err(unreadable)?;
    let rows = u64::try_from(metadata.metadata().file_metadata().num_rows()).unwrap_or(u64::MAX);
    let too_many = || RecorderError::corrupt(label, format!("holds more than the {max_rows} rows it may"));
    if rows > max_rows {
        return Err(too_many());
    }
    // Each group's rows as its footer says, together within the bound.
    let mut groups: Vec<(usize, u64)> = Vec::new();
    let mut total = 0u64;
    for (group, meta) in metadata.metadata().row_groups().iter().enumerate() {
        let rows = u64::try_from(meta.num_rows())
            .map_err(|_| RecorderError::corrupt(label, format!("row group {group} claims {} rows", meta.num_rows())))?;
        total = total.checked_add(rows).filter(|t| *t <= max_rows).ok_or_else(too_many)?;
        groups.push((group, rows));
    }
    let walks = on_every_core(&groups, |&(group, rows)| {
        let mut walk = Walk::default();
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(bytes.clone(), metadata.clone())
            .with_row_groups(vec![group])
            .with_batch_size(8192)
            .build();
        let reader = match reader {
            Ok(reader) => reader,
            Err(error) => {
                walk.failed = Some(unreadable(error));
                return walk;
            }
        };
        let mut encoded = Vec::new();
        for batch in reader {
            let read = batch.map_err(|e| unreadable(e.into())).and_then(|batch| {
                let reader = BatchReader::new(&batch)?;
                for i in 0..reader.len() {
                    if walk.decoded as u64 >= rows {
                        return Err(RecorderError::corrupt(
                            label,
                            format!("row group {group} holds more rows than the {rows} its footer says"),
                        ));
                    }
                    let row = walk.decoded;
                    reader.with_cells(i, |cells| walk_row(cells, row, lookup, related, &mut encoded, &mut walk))?;
                    walk.decoded += 1;
                }
                Ok(())
            });
            if let Err(error) = read {
                walk.failed = Some(error);
                return walk;
            }
        }
        if (walk.decoded as u64) < rows {
            walk.failed = Some(RecorderError::corrupt(
                label,
                format!("row group {group} holds {} rows, not the {rows} its footer says", walk.decoded),
            ));
        }
        walk
    });
    Ok(walks)
}

/// One row of the events file, row `row`, against its leaf.
fn walk_row(
    cells: &Cells<'_>,
    row: usize,
    lookup: &Lookup<'_>,
    related: &BTreeSet<&str>,
    bytes: &mut Vec<u8>,
    walk: &mut Walk,
) {
    let leaves = lookup.leaves;
    let problem = |stage: u8, location: String, message: String| (row, stage, Problem { location, message });
    let (Some(Value::Str(session)), Some(Value::U64(seq))) = (cells.get(Column::SessionId), cells.get(Column::Seq))
    else {
        walk.unnamed.push(row);
        return;
    };
    walk.events += 1;
    let location = || format!("session {session} seq {seq}");
    // Rows follow their leaves in a bundle as exported: the leaf after the
    // last row's is the first guess.
    let found = lookup.find(session, seq, walk.last.map(|k| k + 1));
    walk.last = found;
    let Some(k) = found else {
        walk.problems.push(problem(0, location(), "has no proof: it was added to the bundle".to_string()));
        return;
    };
    walk.claims.push((row, k));
    let leaf = &leaves[k];
    // The head before it: carried, or the genesis head, or the head
    // after the event before it in its session.
    let before = match (leaf.head_before, seq) {
        (Some(before), _) => before,
        (None, 0) => ChainHash::GENESIS,
        (None, _) => match lookup.find(session, seq - 1, k.checked_sub(1)) {
            Some(previous) => leaves[previous].head,
            None => {
                walk.problems.push(problem(2, location(), "its proof is malformed: no head before it".to_string()));
                return;
            }
        },
    };
    bytes.clear();
    canonical::encode(cells, bytes);
    let head = before.next(bytes);
    if head != leaf.head {
        walk.problems.push(problem(
            2,
            location(),
            format!(
                "is not proven in segment {}: the event was edited, or its proof does not belong to it",
                leaf.segment_id
            ),
        ));
    }
    // The leaf of what is here, not of what the proof says: the root binds
    // the events themselves.
    walk.leaves.push((row, leaf.segment_id, leaf.index, merkle::leaf(&leaf.nonce, &head)));
    let text = |column| match cells.get(column) {
        Some(Value::Str(value)) => Some(value.to_string()),
        _ => None,
    };
    if related.contains(session) {
        let ties = [Column::GrantId, Column::TargetSession, Column::ReviewId].map(text);
        walk.about.push((row, k, ties));
        return;
    }
    let kind = match cells.get(Column::Kind) {
        Some(Value::Str(kind)) if kind == EventKind::SessionStart.as_str() => Bound::Start,
        Some(Value::Str(kind)) if kind == EventKind::SessionEnd.as_str() => Bound::End,
        _ => Bound::Inside,
    };
    if kind == Bound::Start
        && let Some(grant) = text(Column::GrantId)
    {
        walk.grants.push((row, grant));
    }
    let decision = matches!(cells.get(Column::Kind), Some(Value::Str(k)) if k == EventKind::PolicyDecision.as_str());
    if decision && let Some(review) = text(Column::ReviewId) {
        walk.reviews.push((row, review));
    }
    walk.walked.push((row, k, (seq, kind, before, head)));
}

/// Each of `files` under `dir` checked against its signed hash and size.
fn check_hashes(dir: &Path, files: &[BundleFile]) -> Vec<Problem> {
    let mut problems = Vec::new();
    for file in files {
        let message = match hash_regular(dir, &file.path, file.bytes) {
            Ok(sha256) if sha256 == file.sha256 => continue,
            Ok(sha256) => format!(
                "does not match bundle.json (sha-256 {sha256}; signed as {}): it was modified or swapped",
                file.sha256
            ),
            Err(why) => format!("{why}: it was removed, swapped or changed"),
        };
        problems.push(Problem { location: file.path.clone(), message });
    }
    problems
}

/// An event as the completeness check sees it: seq, where it stands, the
/// head before it and after it.
type Walked = (u64, Bound, ChainHash, ChainHash);

/// Where an event stands in its session, for the completeness check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bound {
    Start,
    Inside,
    End,
}

fn decode_hash<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok().map(|()| out)
}

/// What a bundle's directory holds besides directories.
enum Entry {
    File,
    Other(&'static str),
}

/// Everything under `dir`, relative and `/`-separated, links never followed
/// (a link is reported as one, as are devices, pipes and sockets).
fn entries_under(dir: &Path) -> Vec<(String, Entry)> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        let relative = |path: &Path| path.strip_prefix(dir).unwrap_or(path).to_string_lossy().to_string();
        let Ok(entries) = fs::read_dir(&at) else {
            out.push((relative(&at), Entry::Other("a directory that cannot be read")));
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => stack.push(path),
                Ok(kind) if kind.is_file() => out.push((relative(&path), Entry::File)),
                Ok(kind) if kind.is_symlink() => out.push((relative(&path), Entry::Other("a symbolic link"))),
                _ => out.push((relative(&path), Entry::Other("not a regular file"))),
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// `dir/name`, a regular file (not through a link) of at most `limit` bytes.
fn read_regular(dir: &Path, name: &str, limit: u64) -> std::result::Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    // The file itself, never what a link points at; checked on the open
    // descriptor, read no further than the limit.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| format!("cannot be read ({e})"))?;
    let metadata = file.metadata().map_err(|e| format!("cannot be read ({e})"))?;
    if !metadata.file_type().is_file() {
        return Err("is not a regular file".to_string());
    }
    if metadata.len() > limit {
        return Err(format!("is larger than {limit} bytes"));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| format!("cannot be read ({e})"))?;
    if bytes.len() as u64 > limit {
        return Err(format!("is larger than {limit} bytes"));
    }
    Ok(bytes)
}

/// The SHA-256 of `dir/name`, a regular file (not through a link) of
/// exactly `bytes` bytes, read in pieces.
fn hash_regular(dir: &Path, name: &str, bytes: u64) -> std::result::Result<String, String> {
    let path = dir.join(name);
    let metadata = fs::symlink_metadata(&path).map_err(|e| format!("cannot be read ({e})"))?;
    if !metadata.file_type().is_file() {
        return Err("is not a regular file".to_string());
    }
    if metadata.len() != bytes {
        return Err(format!("holds {} bytes, signed as {bytes}", metadata.len()));
    }
    crate::verify::hash_file(&path).map(|(sha256, _)| sha256).map_err(|e| format!("cannot be read ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The renderings' writer stops once the space it must leave is gone,
    /// and writes through while it is there.
    #[test]
    fn a_guarded_writer_stops_where_the_space_it_leaves_would_go() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let piece = vec![b'x'; 1 << 20];
        let mut roomy = Guarded::new(Vec::new(), dir.path(), 0);
        for _ in 0..40 {
            roomy.write_all(&piece).unwrap();
        }
        assert_eq!(roomy.into_inner().len(), 40 << 20);
        let mut full = Guarded::new(Vec::new(), dir.path(), u64::MAX);
        let stopped = (0..40).find_map(|_| full.write_all(&piece).err()).expect("stopped");
        assert_eq!(stopped.kind(), std::io::ErrorKind::StorageFull);
        assert!(stopped.to_string().contains("free space there, or export fewer sessions"), "{stopped}");
        assert!(full.into_inner().len() <= 16 << 20, "stopped within one check");
    }

    /// The leaf lookup that tries a guess first against the map alone, on
    /// generated leaves (in order, shuffled, with repeated keys) and every
    /// guess.
    #[test]
    fn a_guessed_leaf_is_the_one_the_map_finds() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for round in 0..200 {
            let mut leaves: Vec<LeafProof> = (0..rng.random_range(1..40))
                .map(|_| LeafProof {
                    session_id: format!("s{}", rng.random_range(0..4)),
                    seq: rng.random_range(0..12),
                    segment_id: 1,
                    index: 0,
                    nonce: [0; 16],
                    head: ChainHash::GENESIS,
                    head_before: None,
                })
                .collect();
            if round % 2 == 0 {
                leaves.sort_by(|a, b| (&a.session_id, a.seq).cmp(&(&b.session_id, b.seq)));
            }
            let mut by_event = ahash::AHashMap::new();
            let mut unique = true;
            for (k, leaf) in leaves.iter().enumerate() {
                unique &= by_event.insert((leaf.session_id.as_str(), leaf.seq), k).is_none();
            }
            let lookup = Lookup { leaves: &leaves, by_event: &by_event, unique };
            for session in ["s0", "s1", "s2", "s3", "s9"] {
                for seq in 0..13 {
                    let plain = by_event.get(&(session, seq)).copied();
                    for guess in (0..leaves.len() + 2).map(Some).chain([None]) {
                        assert_eq!(lookup.find(session, seq, guess), plain, "{session} {seq} {guess:?} {unique}");
                    }
                }
            }
        }
    }

    #[test]
    fn an_export_needs_room_on_disk_and_in_memory() {
        let at = Path::new("/exports");
        let gib = 1u64 << 30;
        let roomy = Room { disk_free: 100 * gib, shared: true, memory_available: Some(16 * gib) };
        assert_eq!(roomy.refusal(1_000_000, at), None);
        // On the recording's filesystem, the recorder keeps its headroom.
        let tight = Room { disk_free: 2048 * 1000 + (100 << 20), shared: true, memory_available: None };
        let why = tight.refusal(1000, at).expect("refused");
        assert!(why.contains("keeps 256 MiB free for the recorder"), "{why}");
        assert_eq!(Room { shared: false, ..tight }.refusal(1000, at), None);
        // Memory: a replay server shares the gateway's process.
        let small = Room { disk_free: 100 * gib, shared: false, memory_available: Some(gib) };
        let why = small.refusal(1_000_000, at).expect("refused");
        assert!(why.contains("MiB of memory (1024 MiB available)"), "{why}");
        assert_eq!(small.refusal(100_000, at), None);
        // Where the system does not say, memory is not what refuses.
        assert_eq!(Room { memory_available: None, ..small }.refusal(1_000_000, at), None);
    }
}
