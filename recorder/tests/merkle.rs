//! A segment's Merkle root over its events (manifest format 2): every
//! event is proven by its own encoding, the chain head before it and a
//! path to a root signed apart from the manifest, so a proof shows nothing
//! of the segment's other sessions; `verify` recomputes the root from the
//! rows and checks its signature; manifests of format 1 still verify.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use proctor_recorder::keys::{self, ManifestKey};
use proctor_recorder::layout::Layout;
use proctor_recorder::reader::Reader;
use proctor_recorder::verify::verify;
use proctor_recorder::{Recorder, segment};
use proctor_schemas::arrow::BatchReader;
use proctor_schemas::chain::ChainHash;
use proctor_schemas::manifest::Manifest;
use proctor_schemas::merkle;
use proctor_schemas::*;

/// Three sessions, interleaved, sealed into one segment.
fn recorded(dir: &Path) -> Vec<SessionId> {
    let recorder = Recorder::open(dir, &settings()).unwrap();
    let sink = recorder.sink();
    let sessions: Vec<SessionId> = (0..3).map(|_| SessionId::new()).collect();
    for (i, &s) in sessions.iter().enumerate() {
        sink.append_slice_blocking(&[start(s, T0 + i as i64)]).unwrap();
    }
    for n in 0..20 {
        let s = sessions[n % 3];
        sink.append_slice_blocking(&[statement(s, T0 + 10 + n as i64, &format!("select {n}"))]).unwrap();
    }
    recorder.close().unwrap();
    sessions
}

/// The segment's rows in order: session id, seq, canonical encoding.
fn rows(dir: &Path, manifest: &Manifest) -> Vec<(String, u64, Vec<u8>)> {
    let mut out = Vec::new();
    segment::for_each_batch(&dir.join(&manifest.path), |batch| {
        let reader = BatchReader::new(&batch).unwrap();
        for i in 0..reader.len() {
            let row = reader.row(i).unwrap();
            let cells = row.cells();
            let (Some(Value::Str(session)), Some(Value::U64(seq))) =
                (cells.get(Column::SessionId), cells.get(Column::Seq))
            else {
                panic!("a row without session or seq");
            };
            let mut bytes = Vec::new();
            canonical::encode(&cells, &mut bytes);
            out.push((session.to_string(), seq, bytes));
        }
        Ok(())
    })
    .unwrap();
    out
}

fn only_manifest(dir: &Path) -> Manifest {
    let manifests = Reader::open(dir).unwrap().manifests().unwrap();
    assert_eq!(manifests.len(), 1, "one segment");
    manifests.into_iter().next().unwrap()
}

#[test]
fn every_event_is_proven_by_the_signed_root_alone() {
    let dir = tempfile::tempdir().unwrap();
    recorded(dir.path());
    let manifest = only_manifest(dir.path());
    assert_eq!(manifest.format, 2);
    let public = keys::load_public_key(&Layout::new(dir.path()).keys_dir()).unwrap();

    // What a bundle would carry of the segment: the statement and its
    // signature, nothing of the manifest's sessions.
    let statement = manifest.root_statement().expect("a root");
    let signature = manifest.root_signature.clone().expect("a signed root");
    assert!(keys::verify_signature(&public, &statement.signing_bytes(), &signature));
    let shown = String::from_utf8(statement.signing_bytes()).unwrap();
    for session in &manifest.sessions {
        assert!(!shown.contains(&session.session_id), "the statement names no session");
    }
    let root: merkle::Hash = hex::decode(&statement.merkle_root).unwrap().try_into().unwrap();
    let salt: merkle::Hash = hex::decode(manifest.merkle_salt.as_ref().unwrap()).unwrap().try_into().unwrap();

    // Each event: its leaf from its encoding and the head before it.
    let rows = rows(dir.path(), &manifest);
    assert_eq!(rows.len() as u64, statement.row_count);
    let mut heads: HashMap<String, ChainHash> = HashMap::new();
    let mut proven = Vec::new();
    for (index, (session, _, bytes)) in rows.iter().enumerate() {
        let before = heads.get(session).copied().unwrap_or(ChainHash::GENESIS);
        let head = before.next(bytes);
        heads.insert(session.clone(), head);
        let nonce = merkle::nonce(&salt, index as u64);
        proven.push((before, bytes.clone(), nonce, merkle::leaf(&nonce, &head)));
    }
    let tree = merkle::Tree::new(proven.iter().map(|p| p.3).collect());
    assert_eq!(tree.root(), root, "the root is over the rows in order");
    for (index, (before, bytes, nonce, _)) in proven.iter().enumerate() {
        // What a bundle carries of an event: its encoding, the head before
        // it, its nonce, its index and its path.
        let proof = tree.proof(index as u64).unwrap();
        let leaf = merkle::leaf(nonce, &before.next(bytes));
        assert!(merkle::verify_inclusion(&leaf, index as u64, statement.row_count, &proof, &root));
        // Another encoding (an edited event), or another nonce, is not in
        // the segment.
        let mut edited = bytes.clone();
        *edited.last_mut().unwrap() ^= 1;
        let forged = merkle::leaf(nonce, &before.next(&edited));
        assert!(!merkle::verify_inclusion(&forged, index as u64, statement.row_count, &proof, &root));
        let renonced = merkle::leaf(&merkle::nonce(&salt, index as u64 + 1), &before.next(bytes));
        assert!(!merkle::verify_inclusion(&renonced, index as u64, statement.row_count, &proof, &root));
        // The path's first hash is a neighbour's leaf: with its nonce unknown,
        // a guess at the event next in the same session (one hash of this
        // head away) cannot be tested against it.
        if let Some((next_before, next_bytes, _, next_leaf)) = proven.get(index ^ 1)
            && *next_before == before.next(bytes)
        {
            assert_eq!(proof[0], *next_leaf);
            let guess = merkle::leaf(&[0; 16], &next_before.next(next_bytes));
            assert_ne!(guess, proof[0], "an unblinded guess does not match");
        }
    }
}

/// Rewrites the only manifest with `edit`, signed again with the
/// deployment's key (as someone holding it could), its root statement too
/// unless `edit` removed it.
fn rewrite(dir: &Path, edit: impl FnOnce(&mut Manifest), resign_root: bool) {
    let layout = Layout::new(dir);
    let key = ManifestKey::load(&layout.keys_dir()).unwrap();
    let mut manifest = only_manifest(dir);
    edit(&mut manifest);
    if resign_root {
        manifest.root_signature = manifest.root_statement().map(|s| key.sign(&s.signing_bytes()));
    }
    manifest.signature = None;
    manifest.signature = Some(key.sign(&manifest.signing_bytes()));
    std::fs::write(layout.manifest_path(manifest.segment_id), manifest.to_file_bytes()).unwrap();
}

fn problems(dir: &Path) -> Vec<String> {
    verify(dir, &Default::default()).unwrap().problems.into_iter().map(|p| p.message).collect()
}

#[test]
fn verify_checks_the_root_against_the_rows_and_its_signature() {
    let dir = tempfile::tempdir().unwrap();
    recorded(dir.path());
    assert_verifies(dir.path());

    // A root that is not the rows', signed as it should be.
    let other = hex::encode(merkle::leaf(&[0; 16], &ChainHash::GENESIS));
    rewrite(dir.path(), |m| m.merkle_root = Some(other.clone()), true);
    let found = problems(dir.path());
    assert!(found.iter().any(|p| p.starts_with("Merkle root mismatch")), "{found:?}");

    // The rows' root, but its signature taken from another statement.
    let dir = tempfile::tempdir().unwrap();
    recorded(dir.path());
    let layout = Layout::new(dir.path());
    let key = ManifestKey::load(&layout.keys_dir()).unwrap();
    rewrite(
        dir.path(),
        |m| {
            let mut statement = m.root_statement().unwrap();
            statement.segment_id += 1;
            m.root_signature = Some(key.sign(&statement.signing_bytes()));
        },
        false,
    );
    let found = problems(dir.path());
    assert!(found.iter().any(|p| p.contains("the signature of its Merkle root does not verify")), "{found:?}");

    // A salt that is not the one the leaves were made with.
    let dir = tempfile::tempdir().unwrap();
    recorded(dir.path());
    rewrite(dir.path(), |m| m.merkle_salt = Some(hex::encode([9u8; 32])), true);
    let found = problems(dir.path());
    assert!(found.iter().any(|p| p.starts_with("Merkle root mismatch")), "{found:?}");
    rewrite(dir.path(), |m| m.merkle_salt = None, true);
    let found = problems(dir.path());
    assert!(found.iter().any(|p| p == "has a Merkle root but no valid salt for its leaves"), "{found:?}");

    // No root, or an unsigned one, in a format 2 manifest.
    rewrite(dir.path(), |m| m.root_signature = None, false);
    let found = problems(dir.path());
    assert!(found.iter().any(|p| p == "its Merkle root is not signed"), "{found:?}");
    rewrite(dir.path(), |m| m.merkle_root = None, false);
    let found = problems(dir.path());
    assert!(found.iter().any(|p| p == "has no Merkle root"), "{found:?}");
}

#[test]
fn a_manifest_of_format_1_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    recorded(dir.path());
    rewrite(
        dir.path(),
        |m| {
            m.format = 1;
            m.merkle_root = None;
            m.root_signature = None;
        },
        false,
    );
    let text = std::fs::read_to_string(Layout::new(dir.path()).manifest_path(only_manifest(dir.path()).segment_id));
    let text = text.unwrap();
    assert!(!text.contains("merkle_root") && text.contains("\"format\": 1"), "{text}");
    assert_verifies(dir.path());
    // A format this build does not know is named.
    rewrite(dir.path(), |m| m.format = 3, false);
    let found = problems(dir.path());
    assert!(found.iter().any(|p| p == "unknown manifest format 3"), "{found:?}");
}

/// The borrowed read of a row (what exports and bundle checks read every
/// row by) against the owned one, on every row of a generated recording
/// of every kind of session, sealed into segments and read back.
#[test]
fn borrowed_cells_are_the_owned_rows_cells_on_generated_recordings() {
    use proctor_recorder::synth::{Synth, SynthConfig};
    for seed in [1, 2, 3] {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::open(dir.path(), &settings()).unwrap();
        let sink = recorder.sink();
        let events: Vec<NewEvent> = Synth::new(SynthConfig::new(60, seed, Timestamp(T0))).collect();
        for chunk in events.chunks(500) {
            sink.append_slice_blocking(chunk).unwrap();
        }
        recorder.close().unwrap();
        let mut compared = 0;
        for manifest in Reader::open(dir.path()).unwrap().manifests().unwrap() {
            segment::for_each_batch(&dir.path().join(&manifest.path), |batch| {
                let reader = BatchReader::new(&batch).unwrap();
                for i in 0..reader.len() {
                    let row = reader.row(i).unwrap();
                    let owned = row.cells();
                    let (mut slow, mut fast) = (Vec::new(), Vec::new());
                    canonical::encode(&owned, &mut slow);
                    reader
                        .with_cells(i, |cells| {
                            for def in COLUMNS {
                                assert_eq!(
                                    cells.get(def.column),
                                    owned.get(def.column),
                                    "seed {seed} row {i} {}",
                                    def.name
                                );
                            }
                            canonical::encode(cells, &mut fast);
                        })
                        .unwrap();
                    assert_eq!(fast, slow, "seed {seed} row {i}");
                    compared += 1;
                }
                Ok(())
            })
            .unwrap();
        }
        assert!(compared >= events.len(), "every row read: {compared} of {}", events.len());
    }
}

/// A segment's batch made the recorder's schema (what exports carry rows
/// by): as it is when it has the schema's columns, and, for a batch of an
/// older schema (columns missing), the same rows made again; each row's
/// canonical encoding is the one it had.
#[test]
fn batches_conform_to_the_schema_row_for_row() {
    use proctor_recorder::synth::{Synth, SynthConfig};
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::open(dir.path(), &settings()).unwrap();
    let sink = recorder.sink();
    let events: Vec<NewEvent> = Synth::new(SynthConfig::new(40, 9, Timestamp(T0))).collect();
    for chunk in events.chunks(500) {
        sink.append_slice_blocking(chunk).unwrap();
    }
    recorder.close().unwrap();
    let canonical_rows = |batch: &::arrow::array::RecordBatch| -> Vec<Vec<u8>> {
        let reader = BatchReader::new(batch).unwrap();
        (0..reader.len())
            .map(|i| {
                let mut bytes = Vec::new();
                reader.with_cells(i, |cells| canonical::encode(cells, &mut bytes)).unwrap();
                bytes
            })
            .collect()
    };
    let mut older = 0;
    for manifest in Reader::open(dir.path()).unwrap().manifests().unwrap() {
        for batch in segment::read_all(&dir.path().join(&manifest.path)).unwrap() {
            let same = segment::conform(batch.clone()).unwrap();
            assert_eq!(same.schema(), proctor_schemas::arrow::schema());
            assert_eq!(same.columns(), batch.columns(), "a batch of the schema is kept as it is");
            // Every third nullable column dropped, as a segment of an
            // older schema lacks columns added since.
            let schema = batch.schema();
            let kept: Vec<usize> = (0..batch.num_columns())
                .filter(|&c| !(schema.field(c).is_nullable() && c % 3 == 0 && batch.column(c).null_count() > 0))
                .collect();
            assert!(kept.len() < batch.num_columns(), "columns dropped");
            let reduced = batch.project(&kept).unwrap();
            let made = segment::conform(reduced.clone()).unwrap();
            assert_eq!(made.schema(), proctor_schemas::arrow::schema());
            assert_eq!(canonical_rows(&made), canonical_rows(&reduced));
            older += 1;
        }
    }
    assert!(older > 0, "batches compared");
}
