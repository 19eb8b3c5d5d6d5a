//! The tamper matrix: every way of editing, reordering, removing or forging
//! recordings is caught by `proctor verify`, with a message that says where.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch, StringArray, UInt32Array};
use arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use proctor_recorder::keys::ManifestKey;
use proctor_recorder::layout::Layout;
use proctor_recorder::{RecorderSettings, segment};
use proctor_schemas::manifest::Manifest;
use proctor_tests::{copy_dir, run, run_ok, stdout};
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_proctor");

struct Pristine {
    _dir: tempfile::TempDir,
    data: PathBuf,
    head: String,
    public_key: PathBuf,
    fingerprint: String,
}

/// One data dir with several segments, built once and copied per case.
fn pristine() -> &'static Pristine {
    static PRISTINE: OnceLock<Pristine> = OnceLock::new();
    PRISTINE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("proctor.toml");
        std::fs::write(&config, "data_dir = \"data\"\n[recorder]\nsegment_max_bytes = \"64KiB\"\n").unwrap();
        let data = dir.path().join("data");
        let bin = Path::new(BIN);
        run_ok(
            bin,
            &[
                "generate",
                "--data-dir",
                data.to_str().unwrap(),
                "--config",
                config.to_str().unwrap(),
                "--sessions",
                "80",
                "--seed",
                "5",
            ],
        );
        let verified = run_ok(bin, &["verify", "--data-dir", data.to_str().unwrap(), "--json"]);
        let report: serde_json::Value = serde_json::from_str(stdout(&verified).trim()).unwrap();
        assert!(report["segments"].as_u64().unwrap() >= 5, "{report}");
        let public_key = dir.path().join("pinned.pub.pem");
        std::fs::copy(data.join("keys/manifest-signing.pub.pem"), &public_key).unwrap();
        Pristine {
            head: report["head"].as_str().unwrap().to_string(),
            fingerprint: report["key_fingerprint"].as_str().unwrap().to_string(),
            data,
            public_key,
            _dir: dir,
        }
    })
}

/// A copy of the pristine data dir to tamper with.
struct Case {
    _dir: tempfile::TempDir,
    data: PathBuf,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        copy_dir(&pristine().data, &data);
        Case { _dir: dir, data }
    }

    fn layout(&self) -> Layout {
        Layout::new(&self.data)
    }

    fn numbers(&self) -> Vec<u64> {
        self.layout().manifest_numbers().unwrap()
    }

    /// A segment in the middle of the chain.
    fn middle(&self) -> u64 {
        let numbers = self.numbers();
        numbers[numbers.len() / 2]
    }

    fn manifest(&self, number: u64) -> Manifest {
        Manifest::from_file_bytes(&std::fs::read(self.layout().manifest_path(number)).unwrap()).unwrap()
    }

    fn write_manifest(&self, manifest: &Manifest) {
        std::fs::write(self.layout().manifest_path(manifest.segment_id), manifest.to_file_bytes()).unwrap();
    }

    fn segment_path(&self, number: u64) -> PathBuf {
        self.data.join(self.manifest(number).path)
    }

    /// Rewrites a segment's rows and recomputes its file hash, size and row
    /// count in the manifest (whose signature then no longer matches).
    fn rewrite_rows(&self, number: u64, change: impl FnOnce(RecordBatch) -> RecordBatch) {
        let path = self.segment_path(number);
        let batches = segment::read_all(&path).unwrap();
        let batch = concat_batches(&batches[0].schema(), &batches).unwrap();
        let changed = change(batch);
        let (sha, bytes) = segment::write(&path, &changed, &RecorderSettings::default()).unwrap();
        let mut manifest = self.manifest(number);
        manifest.file_sha256 = sha;
        manifest.file_bytes = bytes;
        manifest.row_count = changed.num_rows() as u64;
        self.write_manifest(&manifest);
    }

    /// Re-signs every manifest from `from` on with `key`, relinking the chain
    /// as an attacker holding `key` would.
    fn resign_from(&self, from: u64, key: &ManifestKey) {
        let numbers = self.numbers();
        let mut previous: Option<String> = None;
        for number in numbers {
            let path = self.layout().manifest_path(number);
            if number >= from {
                let mut manifest = self.manifest(number);
                manifest.prev_manifest_sha256 = previous.clone();
                manifest.key_fingerprint = key.fingerprint();
                manifest.root_signature = manifest.root_statement().map(|s| key.sign(&s.signing_bytes()));
                manifest.signature = None;
                manifest.signature = Some(key.sign(&manifest.signing_bytes()));
                self.write_manifest(&manifest);
            }
            previous = Some(hex::encode(Sha256::digest(std::fs::read(&path).unwrap())));
        }
    }

    fn verify(&self, extra: &[&str]) -> (bool, String) {
        let mut args = vec!["verify", "--data-dir", self.data.to_str().unwrap()];
        args.extend_from_slice(extra);
        let output = run(Path::new(BIN), &args);
        let text = format!("{}{}", stdout(&output), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    }

    fn expect_failure(&self, extra: &[&str], needles: &[&str]) -> String {
        let (ok, text) = self.verify(extra);
        assert!(!ok, "verify passed a tampered data dir:\n{text}");
        for needle in needles {
            assert!(text.contains(needle), "verify's report lacks {needle:?}:\n{text}");
        }
        text
    }
}

/// Rows of the column `kind`/`session_id`/`seq` of a batch.
fn row_of(batch: &RecordBatch, wanted: impl Fn(&str, &str, &str) -> bool) -> usize {
    let kind = batch.column_by_name("kind").unwrap().as_string::<i32>();
    let session = batch.column_by_name("session_id").unwrap().as_string::<i32>();
    (0..batch.num_rows().saturating_sub(1))
        .find(|&i| {
            let next_same = session.value(i + 1) == session.value(i);
            next_same && wanted(kind.value(i), kind.value(i + 1), session.value(i))
        })
        .expect("a row to tamper with")
}

fn session_and_seq(batch: &RecordBatch, row: usize) -> (String, u64) {
    let session = batch.column_by_name("session_id").unwrap().as_string::<i32>().value(row).to_string();
    let seq = batch.column_by_name("seq").unwrap().as_primitive::<arrow::datatypes::UInt64Type>().value(row);
    (session, seq)
}

#[test]
fn the_pristine_data_dir_verifies_with_a_pinned_key_and_head() {
    let p = pristine();
    let pinned = run_ok(
        Path::new(BIN),
        &[
            "verify",
            "--data-dir",
            p.data.to_str().unwrap(),
            "--public-key",
            p.public_key.to_str().unwrap(),
            "--expect-head",
            &p.head,
        ],
    );
    assert!(stdout(&pinned).starts_with("ok: "), "{}", stdout(&pinned));
    run_ok(Path::new(BIN), &["verify", "--data-dir", p.data.to_str().unwrap(), "--public-key", &p.fingerprint]);
}

#[test]
fn a_flipped_byte_in_a_segment() {
    let case = Case::new();
    let n = case.middle();
    let path = case.segment_path(n);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();
    case.expect_failure(&[], &[&format!("segment {n} ("), "does not match its manifest"]);
}

#[test]
fn a_deleted_segment() {
    let case = Case::new();
    let n = case.middle();
    std::fs::remove_file(case.segment_path(n)).unwrap();
    case.expect_failure(&[], &[&format!("segment {n} ("), "segment file is missing"]);
}

#[test]
fn a_deleted_manifest() {
    let case = Case::new();
    let n = case.middle();
    let segment = case.manifest(n).path;
    std::fs::remove_file(case.layout().manifest_path(n)).unwrap();
    case.expect_failure(&[], &["does not link to manifest", &format!("{segment}: segment has no manifest")]);
}

#[test]
fn a_deleted_last_manifest() {
    let case = Case::new();
    let last = *case.numbers().last().unwrap();
    let segment = case.manifest(last).path;
    std::fs::remove_file(case.layout().manifest_path(last)).unwrap();
    case.expect_failure(&[], &[&format!("{segment}: segment has no manifest")]);
}

#[test]
fn an_edited_manifest() {
    let case = Case::new();
    let n = case.middle();
    let mut manifest = case.manifest(n);
    manifest.sessions[0].end_reason = Some("client_closed".to_string());
    manifest.sessions[0].subject = Some("someone-else".to_string());
    case.write_manifest(&manifest);
    case.expect_failure(&[], &[&format!("manifest {n}: signature does not verify")]);
}

#[test]
fn a_removed_event_with_the_file_hash_recomputed() {
    let case = Case::new();
    let n = case.middle();
    let mut gone = None;
    case.rewrite_rows(n, |batch| {
        let row = row_of(&batch, |kind, _, _| kind == "statement");
        gone = Some(session_and_seq(&batch, row));
        let keep: BooleanArray = (0..batch.num_rows()).map(|i| Some(i != row)).collect();
        filter_record_batch(&batch, &keep).unwrap()
    });
    let (session, seq) = gone.unwrap();
    case.expect_failure(
        &[],
        &[
            &format!("manifest {n}: signature does not verify"),
            &format!("session {session}: seq {} is followed by {}: events {seq}..{seq} are missing", seq - 1, seq + 1),
        ],
    );
}

#[test]
fn reordered_events_with_the_file_hash_recomputed() {
    let case = Case::new();
    let n = case.middle();
    let mut swapped = None;
    case.rewrite_rows(n, |batch| {
        let row = row_of(&batch, |_, _, _| true);
        swapped = Some(session_and_seq(&batch, row));
        let mut order: Vec<u32> = (0..batch.num_rows() as u32).collect();
        order.swap(row, row + 1);
        take_record_batch(&batch, &UInt32Array::from(order)).unwrap()
    });
    let (session, seq) = swapped.unwrap();
    case.expect_failure(
        &[],
        &[&format!("session {session} seq {seq} follows session {session} seq {}: rows are out of order", seq + 1)],
    );
}

#[test]
fn swapped_event_contents_under_their_original_seqs() {
    let case = Case::new();
    let n = case.middle();
    let mut session = String::new();
    case.rewrite_rows(n, |batch| {
        let row = row_of(&batch, |a, b, _| a != b);
        session = session_and_seq(&batch, row).0;
        let mut order: Vec<u32> = (0..batch.num_rows() as u32).collect();
        order.swap(row, row + 1);
        let mut columns: Vec<Arc<dyn Array>> =
            take_record_batch(&batch, &UInt32Array::from(order)).unwrap().columns().to_vec();
        // Keep the seq column as it was, so the order looks intact.
        columns[1] = batch.column(1).clone();
        RecordBatch::try_new(batch.schema(), columns).unwrap()
    });
    case.expect_failure(
        &[],
        &[&format!("session {session}: hash chain mismatch over seq"), "altered, removed or reordered"],
    );
}

#[test]
fn an_edited_event_with_the_file_hash_recomputed() {
    let case = Case::new();
    let n = case.middle();
    let mut session = String::new();
    case.rewrite_rows(n, |batch| {
        let row = row_of(&batch, |kind, _, _| kind == "statement");
        session = session_and_seq(&batch, row).0;
        let sql = batch.column_by_name("sql").unwrap().as_string::<i32>();
        let edited: StringArray = (0..sql.len())
            .map(|i| if i == row { Some("select 1") } else { sql.is_valid(i).then(|| sql.value(i)) })
            .collect();
        let index = batch.schema().index_of("sql").unwrap();
        let mut columns = batch.columns().to_vec();
        columns[index] = Arc::new(edited);
        RecordBatch::try_new(batch.schema(), columns).unwrap()
    });
    case.expect_failure(&[], &[&format!("session {session}: hash chain mismatch over seq")]);
}

#[test]
fn a_data_dir_resigned_with_a_foreign_key() {
    let case = Case::new();
    let n = case.middle();
    // The attacker edits a segment, re-signs the whole chain with their own
    // key and replaces the data dir's key.
    case.rewrite_rows(n, |batch| {
        let row = row_of(&batch, |kind, _, _| kind == "statement");
        let keep: BooleanArray = (0..batch.num_rows()).map(|i| Some(i != row)).collect();
        filter_record_batch(&batch, &keep).unwrap()
    });
    let foreign = ManifestKey::generate().unwrap();
    case.resign_from(0, &foreign);
    let keys = case.layout().keys_dir();
    std::fs::remove_dir_all(&keys).unwrap();
    std::fs::create_dir_all(&keys).unwrap();
    foreign.store(&keys).unwrap();

    let p = pristine();
    case.expect_failure(
        &["--public-key", p.public_key.to_str().unwrap()],
        &["signature does not verify with key", &p.fingerprint],
    );
    case.expect_failure(&["--public-key", &p.fingerprint], &["the data dir was re-keyed"]);
    // Without a pinned key or head, only the chain contents betray the edit.
    case.expect_failure(&[], &["are missing"]);
}

#[test]
fn one_manifest_signed_by_another_key() {
    let case = Case::new();
    let n = case.middle();
    let foreign = ManifestKey::generate().unwrap();
    let mut manifest = case.manifest(n);
    manifest.key_fingerprint = foreign.fingerprint();
    manifest.signature = None;
    manifest.signature = Some(foreign.sign(&manifest.signing_bytes()));
    case.write_manifest(&manifest);
    case.expect_failure(
        &[],
        &[&format!("manifest {n}: signature does not verify"), &format!("it claims key {}", foreign.fingerprint())],
    );
}

#[test]
fn history_rewritten_by_a_holder_of_the_key_is_caught_by_the_pinned_head() {
    let case = Case::new();
    let n = case.middle();
    // An insider with the signing key rebuilds a segment, its chain heads,
    // Merkle roots and every later manifest: structurally perfect, but the
    // head moved.
    let key = ManifestKey::load(&case.layout().keys_dir()).unwrap();
    let path = case.segment_path(n);
    let batches = segment::read_all(&path).unwrap();
    let batch = concat_batches(&batches[0].schema(), &batches).unwrap();
    let sql = batch.column_by_name("sql").unwrap().as_string::<i32>();
    let row = (0..batch.num_rows()).find(|&i| sql.is_valid(i)).unwrap();
    let session = session_and_seq(&batch, row).0;
    // Recompute the chain heads by resealing the rows the way the recorder does.
    let edited: StringArray = (0..sql.len())
        .map(|i| if i == row { Some("select 'nothing to see'") } else { sql.is_valid(i).then(|| sql.value(i)) })
        .collect();
    let index = batch.schema().index_of("sql").unwrap();
    let mut columns = batch.columns().to_vec();
    columns[index] = Arc::new(edited);
    let edited = RecordBatch::try_new(batch.schema(), columns).unwrap();
    let (sha, bytes) = segment::write(&path, &edited, &RecorderSettings::default()).unwrap();
    let mut manifest = case.manifest(n);
    manifest.file_sha256 = sha;
    manifest.file_bytes = bytes;
    let (heads, root) = recompute_heads(&case, n, &edited);
    manifest.merkle_root = Some(root);
    for s in manifest.sessions.iter_mut() {
        if let Some(head) = heads.iter().find(|(id, _, _)| *id == s.session_id) {
            s.chain_head = head.1.clone();
        }
    }
    case.write_manifest(&manifest);
    // Later segments continue the edited session's chain from the new head.
    for later in case.numbers().into_iter().filter(|&m| m > n) {
        let later_path = case.segment_path(later);
        let batches = segment::read_all(&later_path).unwrap();
        let batch = concat_batches(&batches[0].schema(), &batches).unwrap();
        let (heads, root) = recompute_heads(&case, later, &batch);
        let mut manifest = case.manifest(later);
        manifest.merkle_root = Some(root);
        for s in manifest.sessions.iter_mut() {
            if let Some(head) = heads.iter().find(|(id, _, _)| *id == s.session_id) {
                s.chain_head = head.1.clone();
                s.chain_in = head.2.clone();
            }
        }
        case.write_manifest(&manifest);
    }
    case.resign_from(n, &key);
    let (ok, text) = case.verify(&[]);
    assert!(ok, "a key holder's rewrite is structurally valid: {text}\n(session {session})");
    case.expect_failure(&["--expect-head", &pristine().head], &["is not in the manifest chain"]);
}

/// Chain heads of every session in `batch`, continuing from the heads the
/// earlier manifests of `case` record: (session, head, chain_in).
/// The chain heads of the sessions of segment `number` rebuilt from `batch`
/// (id, head, chain in), and the segment's Merkle root over them.
fn recompute_heads(case: &Case, number: u64, batch: &RecordBatch) -> (Vec<(String, String, Option<String>)>, String) {
    use proctor_schemas::arrow::BatchReader;
    use proctor_schemas::chain::ChainHash;
    let mut carried: std::collections::HashMap<String, ChainHash> = std::collections::HashMap::new();
    for earlier in case.numbers().into_iter().filter(|&m| m < number) {
        for s in case.manifest(earlier).sessions {
            carried.insert(s.session_id.clone(), ChainHash::from_hex(&s.chain_head).unwrap());
        }
    }
    let reader = BatchReader::new(batch).unwrap();
    let mut out: Vec<(String, String, Option<String>)> = Vec::new();
    let mut heads: std::collections::BTreeMap<String, (ChainHash, Option<ChainHash>)> = Default::default();
    let mut leaves = Vec::new();
    let salt: [u8; 32] = hex::decode(case.manifest(number).merkle_salt.unwrap()).unwrap().try_into().unwrap();
    for i in 0..reader.len() {
        let row = reader.row(i).unwrap();
        let mut bytes = Vec::new();
        proctor_schemas::canonical::encode(&row.cells(), &mut bytes);
        let session = reader.str(proctor_schemas::Column::SessionId, i).unwrap().to_string();
        let entry = heads.entry(session.clone()).or_insert_with(|| {
            let input = carried.get(&session).copied();
            (input.unwrap_or(ChainHash::GENESIS), input)
        });
        entry.0 = entry.0.next(&bytes);
        let nonce = proctor_schemas::merkle::nonce(&salt, leaves.len() as u64);
        leaves.push(proctor_schemas::merkle::leaf(&nonce, &entry.0));
    }
    for (session, (head, input)) in heads {
        out.push((session, head.to_hex(), input.map(|h| h.to_hex())));
    }
    (out, hex::encode(proctor_schemas::merkle::root(&leaves)))
}

#[test]
fn a_truncated_tail_is_caught_by_the_expected_head() {
    let case = Case::new();
    let last = *case.numbers().last().unwrap();
    std::fs::remove_file(case.segment_path(last)).unwrap();
    std::fs::remove_file(case.layout().manifest_path(last)).unwrap();
    let (ok, _) = case.verify(&[]);
    assert!(ok, "without a pinned head, a clean truncation of the tail is indistinguishable from an earlier state");
    case.expect_failure(
        &["--expect-head", &pristine().head],
        &["is not in the manifest chain", "removed from the end"],
    );
}

#[test]
fn an_added_segment_file() {
    let case = Case::new();
    let n = case.middle();
    let source = case.segment_path(n);
    let planted = source.with_file_name("99999999999999999999.parquet");
    std::fs::copy(&source, &planted).unwrap();
    case.expect_failure(&[], &["99999999999999999999.parquet: segment has no manifest"]);
}

#[test]
fn verify_reports_as_json() {
    let case = Case::new();
    let n = case.middle();
    std::fs::remove_file(case.segment_path(n)).unwrap();
    let output = run(Path::new(BIN), &["verify", "--data-dir", case.data.to_str().unwrap(), "--json"]);
    assert!(!output.status.success());
    let report: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(report["ok"], false);
    let problems = report["problems"].as_array().unwrap();
    assert!(problems.iter().any(|p| p["location"].as_str().unwrap().starts_with(&format!("segment {n} "))), "{report}");
}
