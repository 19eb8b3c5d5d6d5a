//! Evidence bundles: `proctor export` writes whole sessions with a proof per
//! event, `proctor verify --bundle` checks one offline with nothing but the
//! bundle and a pinned key, and every way of editing, removing, adding,
//! reordering, dropping, swapping or re-signing is caught, naming where.
//! A bundle carries nothing of the sessions it was not asked for.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arrow::array::{Array, AsArray, RecordBatch, StringArray, UInt64Array};
use arrow::compute::concat_batches;
use std::collections::BTreeSet;

use proctor_recorder::evidence::{self, BUNDLE_FILE, BundleManifest, EVENTS_FILE, LEAVES_FILE, PROOFS_FILE};
use proctor_recorder::keys::ManifestKey;
use proctor_recorder::{RecorderSettings, segment};
use proctor_tests::{copy_dir, run, run_ok, stderr, stdout};
use serde_json::Value;
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_proctor");

struct Recorded {
    _dir: tempfile::TempDir,
    data: PathBuf,
    public_key: PathBuf,
    /// Ended sessions spanning more than one segment, and the rest.
    spanning: Vec<Value>,
    others: Vec<Value>,
}

/// A generated data dir with small segments, built once.
fn recorded() -> &'static Recorded {
    static RECORDED: OnceLock<Recorded> = OnceLock::new();
    RECORDED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("proctor.toml");
        std::fs::write(&config, "data_dir = \"data\"\n[recorder]\nsegment_max_bytes = \"64KiB\"\n").unwrap();
        let data = dir.path().join("data");
        let data_arg = data.to_str().unwrap();
        let config_arg = config.to_str().unwrap();
        run_ok(Path::new(BIN), &["generate", "--data-dir", data_arg, "--config", config_arg, "--sessions", "40"]);
        let listed = run_ok(Path::new(BIN), &["sessions", "--data-dir", data_arg, "--json"]);
        let sessions: Vec<Value> = stdout(&listed).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let manifests = proctor_recorder::reader::Reader::open(&data).unwrap().manifests().unwrap();
        let segments_of = |id: &str| manifests.iter().filter(|m| m.sessions.iter().any(|s| s.session_id == id)).count();
        let (spanning, others): (Vec<Value>, Vec<Value>) = sessions.into_iter().partition(|s| {
            s["live"] == false && s["protocol"] != "control" && segments_of(s["session_id"].as_str().unwrap()) > 1
        });
        assert!(!spanning.is_empty(), "some session spans segments");
        let public_key = dir.path().join("pinned.pub.pem");
        std::fs::copy(data.join("keys/manifest-signing.pub.pem"), &public_key).unwrap();
        Recorded { _dir: dir, data, public_key, spanning, others }
    })
}

/// A copy of the recording in `dir`: an export records itself in the
/// recording it reads (an access event), so each test exports from its own.
fn copy_of_recording(dir: &Path) -> PathBuf {
    let copy = dir.join("data");
    copy_dir(&recorded().data, &copy);
    copy
}

fn id(session: &Value) -> &str {
    session["session_id"].as_str().unwrap()
}

/// An ended session that is not a control session's nor the first spanning one.
fn ended_other(r: &Recorded) -> &str {
    id(r.others.iter().find(|s| s["live"] == false && s["protocol"] != "control").unwrap())
}

/// A fresh bundle of the first spanning session and one other, in a temp dir.
fn bundle() -> (tempfile::TempDir, PathBuf, Vec<String>) {
    let r = recorded();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    let data = copy_of_recording(dir.path());
    let chosen = [id(&r.spanning[0]).to_string(), ended_other(r).to_string()];
    let exported = run_ok(
        Path::new(BIN),
        &[
            "export",
            "--session",
            &chosen[0],
            &chosen[1],
            "--out",
            out.to_str().unwrap(),
            "--reason",
            "inquiry 4711",
            "--data-dir",
            data.to_str().unwrap(),
            "--json",
        ],
    );
    let summary: Value = serde_json::from_str(stdout(&exported).trim()).unwrap();
    assert_eq!(summary["sessions"], 2, "{summary}");
    assert!(summary["related_events"].as_u64().unwrap() > 0, "the grants' events come along: {summary}");
    (dir, out, chosen.to_vec())
}

/// A bundle of one other ended session (not one of [`bundle`]'s).
fn bundle_of_another() -> (tempfile::TempDir, PathBuf) {
    let r = recorded();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    let data = copy_of_recording(dir.path());
    let another = r.spanning.iter().chain(&r.others).filter(|s| s["live"] == false && s["protocol"] != "control");
    let another = another.map(id).find(|s| *s != id(&r.spanning[0]) && *s != ended_other(r)).unwrap();
    run_ok(
        Path::new(BIN),
        &["export", "--session", another, "--out", out.to_str().unwrap(), "--data-dir", data.to_str().unwrap()],
    );
    (dir, out)
}

/// `verify --bundle`, pinned: whether it passed, and all it printed.
fn verify(bundle: &Path) -> (bool, String) {
    let out = run(
        Path::new(BIN),
        &["verify", "--bundle", bundle.to_str().unwrap(), "--public-key", recorded().public_key.to_str().unwrap()],
    );
    (out.status.success(), format!("{}{}", stdout(&out), stderr(&out)))
}

fn expect_failure(bundle: &Path, needles: &[&str]) {
    let (ok, text) = verify(bundle);
    assert!(!ok, "verify passed a tampered bundle: {text}");
    for needle in needles {
        assert!(text.contains(needle), "expected {needle:?} in:\n{text}");
    }
}

fn events(bundle: &Path) -> RecordBatch {
    let batches = segment::read_all(&bundle.join(EVENTS_FILE)).unwrap();
    concat_batches(&batches[0].schema(), &batches).unwrap()
}

/// Signs `bundle.json` again, its files' hashes made right, with `key`:
/// what the proofs must hold against even when the signature is good (an
/// exporter's mistake, or a key holder's forgery).
fn resign(bundle: &Path, key: &ManifestKey) {
    let path = bundle.join(BUNDLE_FILE);
    let mut manifest: BundleManifest = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for file in &mut manifest.files {
        let bytes = std::fs::read(bundle.join(&file.path)).unwrap();
        file.sha256 = hex::encode(Sha256::digest(&bytes));
        file.bytes = bytes.len() as u64;
    }
    manifest.key_fingerprint = key.fingerprint();
    manifest.signature = None;
    manifest.signature = Some(key.sign(&manifest.signing_bytes()));
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
}

fn deployment_key() -> ManifestKey {
    ManifestKey::load(&recorded().data.join("keys")).unwrap()
}

/// Rewrites the events file with `batch`, the bundle signed again.
fn replace_events(bundle: &Path, batch: &RecordBatch) {
    segment::write(&bundle.join(EVENTS_FILE), batch, &RecorderSettings::default()).unwrap();
    resign(bundle, &deployment_key());
}

#[test]
fn an_exported_bundle_verifies_offline_and_carries_nothing_of_other_sessions() {
    let r = recorded();
    let (_dir, out, chosen) = bundle();
    let (ok, text) = verify(&out);
    assert!(ok, "{text}");
    assert!(text.contains("ok: bundle of 2 sessions") && text.contains("exported by"), "{text}");
    assert!(text.contains("of them grants, reviews and access about them"), "{text}");
    // The renderings: statements for spreadsheets, listed and signed.
    let manifest: BundleManifest = serde_json::from_slice(&std::fs::read(out.join(BUNDLE_FILE)).unwrap()).unwrap();
    assert!(manifest.files.iter().any(|f| f.path == "statements.csv"), "{:?}", manifest.files);
    let csv = std::fs::read_to_string(out.join("statements.csv")).unwrap();
    assert!(
        csv.starts_with("time,session_id,seq,subject,resource,grant_id,kind,text,outcome,rule,review_id,message\n")
    );
    for line in csv.lines().skip(1) {
        assert!(chosen.iter().any(|c| line.contains(c.as_str())), "a row of another session: {line}");
    }

    // Offline: the data dir is not needed.
    let elsewhere = tempfile::tempdir().unwrap();
    let moved = elsewhere.path().join("moved");
    copy_dir(&out, &moved);
    let (ok, text) = verify(&moved);
    assert!(ok, "{text}");
    let json = run_ok(Path::new(BIN), &["verify", "--bundle", moved.to_str().unwrap(), "--json"]);
    let report: Value = serde_json::from_str(stdout(&json).trim()).unwrap();
    assert_eq!((report["ok"].as_bool(), report["key_trust"].as_str()), (Some(true), Some("bundle")), "{report}");
    assert_eq!(report["reason"], "inquiry 4711");
    // Pinned by fingerprint, as `proctor key show` prints it.
    let shown = run_ok(Path::new(BIN), &["key", "show", "--data-dir", r.data.to_str().unwrap(), "--json"]);
    let key: Value = serde_json::from_str(stdout(&shown).trim()).unwrap();
    let fingerprint = key["fingerprint"].as_str().unwrap();
    let pinned = run_ok(Path::new(BIN), &["verify", "--bundle", moved.to_str().unwrap(), "--public-key", fingerprint]);
    assert!(stdout(&pinned).starts_with("ok: bundle of 2 sessions"), "{}", stdout(&pinned));

    // Whole sessions, in the recorder's schema.
    let batch = events(&out);
    let sessions = batch.column_by_name("session_id").unwrap().as_string::<i32>();
    let listed: Vec<&Value> = r.spanning.iter().chain(&r.others).collect();
    for chosen_id in &chosen {
        let rows = (0..batch.num_rows()).filter(|&i| sessions.value(i) == chosen_id).count() as u64;
        let expected = listed.iter().find(|s| id(s) == chosen_id).unwrap()["events"].as_u64().unwrap();
        assert_eq!(rows, expected, "session {chosen_id} whole");
    }
    // Nothing of anyone else: no row of another session, and no other
    // session named by the proofs or the signed manifest (an exported
    // session's own events may name another, as a viewer's names what it
    // viewed).
    let manifest: BundleManifest = serde_json::from_slice(&std::fs::read(out.join(BUNDLE_FILE)).unwrap()).unwrap();
    let carried = |s: &str| chosen.iter().any(|c| c == s) || manifest.related.iter().any(|c| c == s);
    assert!((0..batch.num_rows()).all(|i| carried(sessions.value(i))));
    for other in listed.iter().map(|s| id(s)).filter(|s| !carried(s)) {
        for entry in walk(&out).into_iter().filter(|p| !p.ends_with(EVENTS_FILE)) {
            let bytes = std::fs::read(&entry).unwrap();
            assert!(!contains(&bytes, other.as_bytes()), "{} names session {other}", entry.display());
        }
    }
}

#[test]
fn an_edited_event_is_caught() {
    let (_dir, out, chosen) = bundle();
    let batch = events(&out);
    let sql = batch.column_by_name("sql").unwrap().as_string::<i32>();
    let row = (0..batch.num_rows()).find(|&i| !sql.is_null(i)).expect("a statement");
    let edited: StringArray = (0..batch.num_rows())
        .map(|i| if i == row { Some("select 'nothing to see'") } else { sql.is_valid(i).then(|| sql.value(i)) })
        .collect();
    let mut columns = batch.columns().to_vec();
    columns[batch.schema().index_of("sql").unwrap()] = std::sync::Arc::new(edited);
    replace_events(&out, &RecordBatch::try_new(batch.schema(), columns).unwrap());
    let session = batch.column_by_name("session_id").unwrap().as_string::<i32>().value(row).to_string();
    let seq = batch.column_by_name("seq").unwrap().as_primitive::<arrow::datatypes::UInt64Type>().value(row);
    assert!(chosen.contains(&session));
    expect_failure(&out, &[&format!("session {session} seq {seq}: is not proven in segment")]);

    // Edited without signing again: the file no longer matches.
    let (_dir, out, _) = bundle();
    let batch = events(&out);
    let keep: Vec<u32> = (1..batch.num_rows() as u32).collect();
    let fewer = arrow::compute::take_record_batch(&batch, &arrow::array::UInt32Array::from(keep)).unwrap();
    segment::write(&out.join(EVENTS_FILE), &fewer, &RecorderSettings::default()).unwrap();
    expect_failure(&out, &["events/events.parquet: holds", "signed as"]);

    // A node of a segment's multiproof changed: the segment's root is not
    // given by its events any more.
    let (_dir, out, _) = bundle();
    let mut proofs: evidence::Proofs = serde_json::from_slice(&std::fs::read(out.join(PROOFS_FILE)).unwrap()).unwrap();
    let proof = proofs.segments.iter_mut().find(|p| !p.nodes.is_empty()).expect("a segment shared with other sessions");
    let segment = proof.segment_id;
    let flipped = if proof.nodes[0].starts_with('0') { "1" } else { "0" };
    proof.nodes[0].replace_range(0..1, flipped);
    std::fs::write(out.join(PROOFS_FILE), serde_json::to_vec(&proofs).unwrap()).unwrap();
    resign(&out, &deployment_key());
    expect_failure(&out, &[&format!("segment {segment}: its carried events do not give its signed Merkle root")]);

    // A genuine root of a segment none of its events come from: named.
    let (_dir, out, _) = bundle();
    let mut proofs: evidence::Proofs = serde_json::from_slice(&std::fs::read(out.join(PROOFS_FILE)).unwrap()).unwrap();
    let manifests = proctor_recorder::reader::Reader::open(&recorded().data).unwrap().manifests().unwrap();
    let other = manifests
        .iter()
        .find(|m| !proofs.roots.iter().any(|r| r.statement.segment_id == m.segment_id))
        .expect("a segment the bundle does not use");
    proofs.roots.push(evidence::SignedRoot {
        statement: other.root_statement().unwrap(),
        signature: other.root_signature.clone().unwrap(),
    });
    std::fs::write(out.join(PROOFS_FILE), serde_json::to_vec(&proofs).unwrap()).unwrap();
    resign(&out, &deployment_key());
    expect_failure(
        &out,
        &[&format!("segment {}: has a root or proof in the bundle but no carried event", other.segment_id)],
    );

    // An event edited and its leaf's head made to match: named by its
    // segment's root.
    let (_dir, out, chosen) = bundle();
    let batch = events(&out);
    let sql = batch.column_by_name("sql").unwrap().as_string::<i32>();
    let row = (0..batch.num_rows()).rfind(|&i| !sql.is_null(i)).expect("a statement");
    let edited: StringArray = (0..batch.num_rows())
        .map(|i| if i == row { Some("select 'nothing to see'") } else { sql.is_valid(i).then(|| sql.value(i)) })
        .collect();
    let mut columns = batch.columns().to_vec();
    columns[batch.schema().index_of("sql").unwrap()] = std::sync::Arc::new(edited);
    let edited = RecordBatch::try_new(batch.schema(), columns).unwrap();
    let session = batch.column_by_name("session_id").unwrap().as_string::<i32>().value(row).to_string();
    let seq = batch.column_by_name("seq").unwrap().as_primitive::<arrow::datatypes::UInt64Type>().value(row);
    assert!(chosen.contains(&session));
    let mut leaves = evidence::read_leaves(&out.join(LEAVES_FILE)).unwrap();
    let k = leaves.iter().position(|l| l.session_id == session && l.seq == seq).unwrap();
    let before = match leaves[k].head_before {
        Some(before) => before,
        None => leaves[k - 1].head,
    };
    let reader = proctor_schemas::arrow::BatchReader::new(&edited).unwrap();
    let mut bytes = Vec::new();
    proctor_schemas::canonical::encode(&reader.row(row).unwrap().cells(), &mut bytes);
    leaves[k].head = before.next(&bytes);
    let segment = leaves[k].segment_id;
    evidence::write_leaves(&out.join(LEAVES_FILE), &leaves).unwrap();
    replace_events(&out, &edited);
    expect_failure(&out, &[&format!("segment {segment}: its carried events do not give its signed Merkle root")]);
}

/// An events file of many row groups (each walked on its own core) is
/// checked as one file: whole, it verifies; a row repeated in another row
/// group is named once, as a repeat.
#[test]
fn events_in_many_row_groups_are_checked_as_one_file() {
    let small = RecorderSettings { row_group_rows: 3, page_rows: 3, ..RecorderSettings::default() };
    let (_dir, out, _) = bundle();
    let batch = events(&out);
    segment::write(&out.join(EVENTS_FILE), &batch, &small).unwrap();
    resign(&out, &deployment_key());
    let groups = parquet::file::reader::FileReader::metadata(
        &parquet::file::serialized_reader::SerializedFileReader::new(
            std::fs::File::open(out.join(EVENTS_FILE)).unwrap(),
        )
        .unwrap(),
    )
    .num_row_groups();
    assert!(groups > 3, "{groups} row groups");
    let (ok, text) = verify(&out);
    assert!(ok, "{text}");

    let (_dir, out, _) = bundle();
    let batch = events(&out);
    let mut rows: Vec<u32> = (0..batch.num_rows() as u32).collect();
    rows.push(1);
    let repeated = arrow::compute::take_record_batch(&batch, &arrow::array::UInt32Array::from(rows)).unwrap();
    segment::write(&out.join(EVENTS_FILE), &repeated, &small).unwrap();
    resign(&out, &deployment_key());
    expect_failure(&out, &["appears more than once: an event was duplicated"]);
    let (_, text) = verify(&out);
    assert_eq!(text.matches("appears more than once").count(), 1, "{text}");
    assert!(!text.contains("is not proven"), "the repeat is named, not taken for an edit: {text}");

    // Bytes of a later row group spoiled, the bundle signed again: a
    // failed check that names the file, never a crash.
    let (_dir, out, _) = bundle();
    let batch = events(&out);
    segment::write(&out.join(EVENTS_FILE), &batch, &small).unwrap();
    let mut bytes = std::fs::read(out.join(EVENTS_FILE)).unwrap();
    let middle = bytes.len() / 2;
    for byte in &mut bytes[middle..middle + 64] {
        *byte ^= 0x5a;
    }
    std::fs::write(out.join(EVENTS_FILE), &bytes).unwrap();
    resign(&out, &deployment_key());
    let checked = run(
        Path::new(BIN),
        &["verify", "--bundle", out.to_str().unwrap(), "--public-key", recorded().public_key.to_str().unwrap()],
    );
    let text = format!("{}{}", stdout(&checked), stderr(&checked));
    assert_eq!(checked.status.code(), Some(1), "{text}");
    assert!(text.contains("events/events.parquet") && !text.contains("panicked"), "{text}");
}

#[test]
fn a_removed_added_or_reordered_event_is_caught() {
    // Removed (the last of a session: its proof stays).
    let (_dir, out, _) = bundle();
    let batch = events(&out);
    let keep: Vec<u32> = (0..batch.num_rows() as u32 - 1).collect();
    let fewer = arrow::compute::take_record_batch(&batch, &arrow::array::UInt32Array::from(keep)).unwrap();
    replace_events(&out, &fewer);
    expect_failure(&out, &["is proven but not in events/: the event was removed"]);

    // Two events' seqs swapped: each is proven no more, and the chain breaks.
    let (_dir, out, _) = bundle();
    let batch = events(&out);
    let seqs = batch.column_by_name("seq").unwrap().as_primitive::<arrow::datatypes::UInt64Type>();
    let mut swapped: Vec<u64> = seqs.values().to_vec();
    swapped.swap(1, 2);
    let mut columns = batch.columns().to_vec();
    columns[batch.schema().index_of("seq").unwrap()] = std::sync::Arc::new(UInt64Array::from(swapped));
    replace_events(&out, &RecordBatch::try_new(batch.schema(), columns).unwrap());
    expect_failure(&out, &["is not proven in segment"]);

    // A row duplicated.
    let (_dir, out, _) = bundle();
    let batch = events(&out);
    let mut rows: Vec<u32> = (0..batch.num_rows() as u32).collect();
    rows.insert(2, 1);
    replace_events(&out, &arrow::compute::take_record_batch(&batch, &arrow::array::UInt32Array::from(rows)).unwrap());
    expect_failure(&out, &["appears more than once: an event was duplicated"]);

    // A file put beside the signed ones, or a link.
    let (_dir, out, _) = bundle();
    std::fs::write(out.join("events/extra.parquet"), b"PAR1").unwrap();
    expect_failure(&out, &["events/extra.parquet: is not listed in bundle.json"]);
    let (_dir, out, _) = bundle();
    std::os::unix::fs::symlink("/", out.join("events/root")).unwrap();
    expect_failure(&out, &["events/root: is a symbolic link"]);
}

#[test]
fn a_dropped_session_a_swapped_file_or_a_re_signed_bundle_is_caught() {
    // A session dropped: its events and its proofs removed, bundle.json
    // left naming it.
    let (_dir, out, chosen) = bundle();
    let batch = events(&out);
    let sessions = batch.column_by_name("session_id").unwrap().as_string::<i32>();
    let keep: Vec<u32> = (0..batch.num_rows() as u32).filter(|&i| sessions.value(i as usize) != chosen[1]).collect();
    replace_events(&out, &arrow::compute::take_record_batch(&batch, &arrow::array::UInt32Array::from(keep)).unwrap());
    let mut leaves = evidence::read_leaves(&out.join(LEAVES_FILE)).unwrap();
    leaves.retain(|l| l.session_id != chosen[1]);
    evidence::write_leaves(&out.join(LEAVES_FILE), &leaves).unwrap();
    resign(&out, &deployment_key());
    expect_failure(&out, &[&format!("session {}: was exported but has no events here", chosen[1])]);

    // A file swapped for another bundle's.
    let (_a, first, _) = bundle();
    let (_b, second, _) = bundle();
    std::fs::copy(second.join(BUNDLE_FILE), first.join(BUNDLE_FILE)).unwrap();
    let (ok, text) = verify(&first);
    assert!(ok, "the same sessions exported twice are the same evidence: {text}");
    std::fs::write(first.join(PROOFS_FILE), b"{\"roots\": [], \"events\": []}").unwrap();
    expect_failure(&first, &["proofs.json: holds"]);

    // Re-signed by another key, with the files' hashes made right: it
    // passes unpinned (say so), and fails under the pinned key.
    let (_dir, out, _) = bundle();
    let forger = ManifestKey::generate().unwrap();
    let pem = proctor_recorder::keys::public_key_pem(&forger.verifying_key());
    std::fs::write(out.join("signing-key.pub.pem"), &pem).unwrap();
    resign(&out, &forger);
    expect_failure(&out, &["not by the pinned key"]);
    // Unpinned, the forger's key is trusted, and the roots it did not sign
    // still give it away.
    let unpinned = run(Path::new(BIN), &["verify", "--bundle", out.to_str().unwrap()]);
    assert!(!unpinned.status.success());
    assert!(stderr(&unpinned).contains("root statement's signature does not verify"), "{}", stderr(&unpinned));
}

#[test]
fn a_live_session_is_exported_as_far_as_it_was_sealed_and_named_live() {
    use proctor_schemas::{Direction, EventKind, NewEvent, SessionId, Statement, Timestamp, sample};
    // A recording whose one session has not ended: sealed in part while
    // it goes on (small segments), exported meanwhile.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let settings =
        RecorderSettings { segment_max_bytes: proctor_recorder::ByteSize(64 << 10), ..RecorderSettings::default() };
    let recorder = proctor_recorder::Recorder::open(&data, &settings).unwrap();
    let sink = recorder.sink();
    let session = SessionId::new();
    let t0 = Timestamp::now().0;
    let start = NewEvent::new(session, Timestamp(t0), Direction::Gateway, sample::full(EventKind::SessionStart));
    sink.append_slice_blocking(&[start]).unwrap();
    for n in 1..200 {
        let sql =
            Statement { sql: format!("select '{n:01000}'"), statement_name: None, portal: None, params: Vec::new() };
        sink.append_slice_blocking(&[NewEvent::new(session, Timestamp(t0 + n), Direction::ClientToTarget, sql)])
            .unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while (sink.stats().segments_sealed == 0 || sink.unsealed_segments() > 0) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(sink.stats().segments_sealed > 0, "a segment was sealed");
    let id = session.to_string();
    let out = dir.path().join("bundle");
    let exported = export_one(&id, out.to_str().unwrap(), &["--json"], data.to_str().unwrap());
    assert!(exported.status.success(), "{}", stderr(&exported));
    let summary: Value = serde_json::from_str(stdout(&exported).trim()).unwrap();
    assert_eq!(summary["live"], serde_json::json!([id]), "{summary}");
    assert!(summary["events"].as_u64().unwrap() > 1, "{summary}");
    let pin = data.join("keys/manifest-signing.pub.pem");
    let verify = |bundle: &Path| {
        run(Path::new(BIN), &["verify", "--bundle", bundle.to_str().unwrap(), "--public-key", pin.to_str().unwrap()])
    };
    let checked = verify(&out);
    assert!(checked.status.success(), "{}", stderr(&checked));
    assert!(stdout(&checked).contains(&format!("(1 live: {id})")), "{}", stdout(&checked));
    // Not marked live, the same events are a cut tail.
    let key = ManifestKey::load(&data.join("keys")).unwrap();
    let path = out.join(BUNDLE_FILE);
    let mut manifest: BundleManifest = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    manifest.live.clear();
    manifest.signature = None;
    manifest.signature = Some(key.sign(&manifest.signing_bytes()));
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    let cut = verify(&out);
    assert!(!cut.status.success());
    assert!(stderr(&cut).contains("ends without its session_end and is not marked live"), "{}", stderr(&cut));
    // The bundle names the recording's head, which verify finds in its chain.
    let checked = run(
        Path::new(BIN),
        &["verify", "--data-dir", data.to_str().unwrap(), "--expect-head", &manifest.recording_head],
    );
    assert!(checked.status.success(), "{}{}", stdout(&checked), stderr(&checked));
    recorder.close().unwrap();
}

/// Grant, review and access events ride along from the shared control
/// sessions, one by one, each proven; one about another grant, proven as
/// well as it is, is still someone else's.
#[test]
fn a_control_event_about_someone_else_is_caught() {
    let (_a, out, chosen) = bundle();
    let manifest: BundleManifest = serde_json::from_slice(&std::fs::read(out.join(BUNDLE_FILE)).unwrap()).unwrap();
    assert!(!manifest.related.is_empty() && manifest.related.iter().all(|s| !chosen.contains(s)), "{manifest:?}");
    let (_b, other) = bundle_of_another();
    let theirs = events(&other);
    let sessions = theirs.column_by_name("session_id").unwrap().as_string::<i32>();
    let seqs = theirs.column_by_name("seq").unwrap().as_primitive::<arrow::datatypes::UInt64Type>();
    let ours = events(&out);
    let our_keys: std::collections::BTreeSet<(String, u64)> = {
        let s = ours.column_by_name("session_id").unwrap().as_string::<i32>();
        let q = ours.column_by_name("seq").unwrap().as_primitive::<arrow::datatypes::UInt64Type>();
        (0..ours.num_rows()).map(|i| (s.value(i).to_string(), q.value(i))).collect()
    };
    let foreign: Vec<u32> = (0..theirs.num_rows() as u32)
        .filter(|&i| {
            let key = (sessions.value(i as usize).to_string(), seqs.value(i as usize));
            manifest.related.contains(&key.0) && !our_keys.contains(&key)
        })
        .collect();
    assert!(!foreign.is_empty(), "the other bundle has control events of its own");
    // Carried with genuine proofs, as a key holder could make them.
    let extra: BTreeSet<(String, u64)> =
        foreign.iter().map(|&i| (sessions.value(i as usize).to_string(), seqs.value(i as usize))).collect();
    carry_also(&out, &recorded().data, &extra);
    let (ok, text) = verify(&out);
    assert!(!ok, "{text}");
    assert!(!text.contains("Merkle root") && !text.contains("is not proven"), "each event is genuinely proven: {text}");
    expect_failure(&out, &["concerns none of the exported sessions", "it is someone else's"]);
}

/// Sessions under one grant: a bundle of one carries the grant's own
/// events, the reviews of what that session held and the reviews its
/// decisions name (an approval given in another session under the grant
/// that let its statement run), never the review of another session's held
/// statement; one carried anyway (with a genuine proof) is named as
/// someone else's.
#[test]
fn a_shared_grant_carries_only_the_exported_sessions_reviews() {
    use proctor_schemas::{
        Direction, EndReason, GrantAction, GrantEvent, Held, NewEvent, PolicyDecision, PolicyOutcome, Protocol,
        ReviewAction, ReviewEvent, SessionEnd, SessionId, SessionStart, Statement, Timestamp,
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let recorder = proctor_recorder::Recorder::open(&data, &RecorderSettings::default()).unwrap();
    let sink = recorder.sink();
    const T0: i64 = 1_764_000_000_000_000_000;
    let at = |second: i64| Timestamp(T0 + second * 1_000_000_000);
    let id = |second: i64, random: u128| SessionId::from_parts((T0 / 1_000_000 + second * 1000) as u64, random);
    let (control, a, b, c) = (id(0, 1), id(10, 2), id(20, 3), id(40, 4));
    let grant = "g_shared00000001";
    let event = |session, second, body: proctor_schemas::EventBody| {
        NewEvent::new(session, at(second), Direction::Gateway, body)
    };
    let grant_event = |action| GrantEvent {
        action,
        grant_id: grant.to_string(),
        resource: Some("prod-db".to_string()),
        subject: Some("alice".to_string()),
        groups: vec!["ci".to_string()],
        actor: Some("alice".to_string()),
        expires_at: Some(at(3600)),
        message: None,
    };
    let start = |subject: &str| SessionStart {
        subject: Some(subject.to_string()),
        resource: Some("prod-db".to_string()),
        grant_id: Some(grant.to_string()),
        ..SessionStart::new(Protocol::Postgres)
    };
    let review = |target: SessionId, held: &str| ReviewEvent {
        action: ReviewAction::Requested,
        review_id: format!("r_{held}"),
        grant_id: Some(grant.to_string()),
        actor: Some("alice".to_string()),
        target_session: Some(target.to_string()),
        ref_seq: Some(1),
        message: Some("held by policy".to_string()),
        held: Some(Held::statement(held)),
    };
    let statement = |sql: &str| Statement { sql: sql.to_string(), statement_name: None, portal: None, params: vec![] };
    let end = || SessionEnd { reason: EndReason::ClientClosed, message: None };
    let appended = vec![
        event(
            control,
            0,
            SessionStart { subject: Some("proctor".to_string()), ..SessionStart::new(Protocol::Control) }.into(),
        ),
        event(control, 1, grant_event(GrantAction::Requested).into()),
        event(control, 2, grant_event(GrantAction::Approved).into()),
        event(a, 10, start("alice").into()),
        event(a, 11, statement("delete from orders_a").into()),
        event(control, 12, review(a, "delete from orders_a").into()),
        event(b, 20, start("alice").into()),
        event(b, 21, statement("drop table secret_b").into()),
        event(control, 22, review(b, "drop table secret_b").into()),
        event(b, 23, end().into()),
        event(a, 30, end().into()),
        // The same statement in a third session, allowed by A's review.
        event(c, 40, start("alice").into()),
        event(c, 41, statement("delete from orders_a").into()),
        event(
            c,
            42,
            PolicyDecision {
                outcome: PolicyOutcome::Allow,
                grant_id: Some(grant.to_string()),
                rule: Some("hold-deletes".to_string()),
                review_id: Some("r_delete from orders_a".to_string()),
                ref_seq: Some(1),
                message: Some("approved in review r_delete from orders_a".to_string()),
            }
            .into(),
        ),
        event(c, 45, end().into()),
    ];
    sink.append_slice_blocking(&appended).unwrap();
    recorder.close().unwrap();

    let out = dir.path().join("bundle");
    run_ok(
        Path::new(BIN),
        &["export", "--session", &a.to_string(), "--out", out.to_str().unwrap(), "--data-dir", data.to_str().unwrap()],
    );
    let (b_id, mut carried_a_review) = (b.to_string(), false);
    for entry in walk(&out) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(!contains(&bytes, b"secret_b"), "{} holds the other session's held statement", entry.display());
        assert!(!contains(&bytes, b_id.as_bytes()), "{} names the other session", entry.display());
        carried_a_review |= entry.ends_with("ocsf.jsonl") && contains(&bytes, b"delete from orders_a");
    }
    assert!(carried_a_review, "the review of the exported session's own held statement rides along");
    let batch = events(&out);
    let kinds = batch.column_by_name("kind").unwrap().as_string::<i32>();
    let kinds: Vec<&str> = (0..batch.num_rows()).map(|i| kinds.value(i)).collect();
    assert!(kinds.contains(&"grant_requested") && kinds.contains(&"grant_approved"), "{kinds:?}");
    let public_key = data.join("keys/manifest-signing.pub.pem");
    let checked = run(
        Path::new(BIN),
        &["verify", "--bundle", out.to_str().unwrap(), "--public-key", public_key.to_str().unwrap()],
    );
    assert!(checked.status.success(), "{}{}", stdout(&checked), stderr(&checked));

    // C's bundle carries the review its statement ran under, not B's.
    let of_c = dir.path().join("bundle-c");
    run_ok(
        Path::new(BIN),
        &["export", "--session", &c.to_string(), "--out", of_c.to_str().unwrap(), "--data-dir", data.to_str().unwrap()],
    );
    let carried = events(&of_c);
    let sessions = carried.column_by_name("session_id").unwrap().as_string::<i32>();
    let seqs = carried.column_by_name("seq").unwrap().as_primitive::<arrow::datatypes::UInt64Type>();
    let control_seqs: Vec<u64> =
        (0..carried.num_rows()).filter(|&i| sessions.value(i) == control.to_string()).map(|i| seqs.value(i)).collect();
    assert_eq!(control_seqs, [1, 2, 3], "the grant's own events and A's review, not B's");
    let checked = run(
        Path::new(BIN),
        &["verify", "--bundle", of_c.to_str().unwrap(), "--public-key", public_key.to_str().unwrap()],
    );
    assert!(checked.status.success(), "{}{}", stdout(&checked), stderr(&checked));

    // The other session's review carried with its genuine proof, signed
    // again by the deployment's key: someone else's.
    let extra: BTreeSet<(String, u64)> = [(control.to_string(), 4)].into_iter().collect();
    carry_also(&out, &data, &extra);
    let key = ManifestKey::load(&data.join("keys")).unwrap();
    resign(&out, &key);
    let checked = run(
        Path::new(BIN),
        &["verify", "--bundle", out.to_str().unwrap(), "--public-key", public_key.to_str().unwrap()],
    );
    let text = format!("{}{}", stdout(&checked), stderr(&checked));
    assert!(!checked.status.success(), "{text}");
    assert!(text.contains(&format!("session {control} seq 4: concerns none of the exported sessions")), "{text}");
}

/// An export that would not fit where it is written is refused before
/// anything is written, saying what it needs and what there is (a real
/// tmpfs, so this test needs root, as CI has).
#[test]
fn an_export_without_room_is_refused_before_anything_is_written() {
    struct Tmpfs(PathBuf);
    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let data = copy_of_recording(dir.path());
    let small = dir.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs", small.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs needs root");
    let _mount = Tmpfs(small.clone());
    let out = small.join("bundle");
    let refused = run(
        Path::new(BIN),
        &["export", "--since", "3650d", "--out", out.to_str().unwrap(), "--data-dir", data.to_str().unwrap()],
    );
    let text = stderr(&refused);
    assert!(!refused.status.success(), "{text}");
    assert!(text.contains("MiB free") && text.contains("free space there, or export fewer sessions"), "{text}");
    assert_eq!(std::fs::read_dir(&small).unwrap().count(), 0, "nothing written");
    // With room, the same selection exports.
    let roomy = dir.path().join("bundle");
    run_ok(
        Path::new(BIN),
        &["export", "--since", "3650d", "--out", roomy.to_str().unwrap(), "--data-dir", data.to_str().unwrap()],
    );
    let (ok, text) = verify(&roomy);
    assert!(ok, "{text}");
}

/// A terminal session comes with its asciicast, a statement-holding one
/// with its rows; a swapped rendering is caught like any other file.
#[test]
fn renderings_ride_in_the_bundle_signed_like_the_events() {
    let r = recorded();
    let terminal = r.spanning.iter().chain(&r.others).find(|s| s["protocol"] == "ssh" && s["live"] == false);
    let terminal = id(terminal.expect("an ended ssh session"));
    let dir = tempfile::tempdir().unwrap();
    let data = copy_of_recording(dir.path());
    let out = dir.path().join("bundle");
    run_ok(
        Path::new(BIN),
        &["export", "--session", terminal, "--out", out.to_str().unwrap(), "--data-dir", data.to_str().unwrap()],
    );
    let cast = std::fs::read_to_string(out.join(format!("asciicast/{terminal}.cast"))).unwrap();
    let header: Value = serde_json::from_str(cast.lines().next().unwrap()).unwrap();
    assert_eq!(header["version"], 2, "{header}");
    let (ok, text) = verify(&out);
    assert!(ok, "{text}");
    // Exporting was recorded, as a read of the session.
    let mut exports = 0;
    proctor_recorder::reader::Reader::open(&data)
        .unwrap()
        .for_each_event(|event| {
            if let proctor_schemas::EventBody::RecordingAccessed(a) = &event.body
                && a.operation == "export"
                && a.target_session.as_deref() == Some(terminal)
            {
                exports += 1;
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(exports, 1, "the export is recorded once");
    std::fs::write(out.join(format!("asciicast/{terminal}.cast")), b"{\"version\": 2}\n").unwrap();
    expect_failure(&out, &[&format!("asciicast/{terminal}.cast: holds")]);
}

/// A recording sealed in part before segments committed to each event
/// (manifest format 1, an upgraded deployment): a session sealed since is
/// exported, and the old segments whose control events could not be
/// searched are named in the bundle.
#[test]
fn segments_older_than_merkle_roots_are_named_not_fatal() {
    let r = recorded();
    let dir = tempfile::tempdir().unwrap();
    let data = copy_of_recording(dir.path());
    let layout = proctor_recorder::layout::Layout::new(&data);
    let key = ManifestKey::load(&layout.keys_dir()).unwrap();
    let numbers = layout.manifest_numbers().unwrap();
    let chosen = id(&r.spanning[0]);
    let read = |n: u64| {
        proctor_schemas::manifest::Manifest::from_file_bytes(&std::fs::read(layout.manifest_path(n)).unwrap()).unwrap()
    };
    // The first segment with a control session and without the chosen one
    // becomes format 1, and the chain is linked and signed again from there.
    let control: Vec<&str> =
        r.spanning.iter().chain(&r.others).filter(|s| s["protocol"] == "control").map(id).collect();
    let old = *numbers
        .iter()
        .find(|&&n| {
            let sessions = read(n).sessions;
            !sessions.iter().any(|s| s.session_id == chosen)
                && sessions.iter().any(|s| control.contains(&s.session_id.as_str()))
        })
        .expect("a segment of control events alone");
    let mut previous: Option<String> = None;
    for &n in &numbers {
        let mut manifest = read(n);
        if n == old {
            manifest.format = 1;
            manifest.merkle_root = None;
            manifest.merkle_salt = None;
            manifest.root_signature = None;
        }
        if n >= old {
            manifest.prev_manifest_sha256 = previous.clone();
            manifest.signature = None;
            manifest.signature = Some(key.sign(&manifest.signing_bytes()));
            std::fs::write(layout.manifest_path(n), manifest.to_file_bytes()).unwrap();
        }
        previous = Some(hex::encode(Sha256::digest(std::fs::read(layout.manifest_path(n)).unwrap())));
    }
    run_ok(Path::new(BIN), &["verify", "--data-dir", data.to_str().unwrap()]);
    let out = dir.path().join("bundle");
    run_ok(
        Path::new(BIN),
        &["export", "--session", chosen, "--out", out.to_str().unwrap(), "--data-dir", data.to_str().unwrap()],
    );
    let manifest: BundleManifest = serde_json::from_slice(&std::fs::read(out.join(BUNDLE_FILE)).unwrap()).unwrap();
    assert_eq!(manifest.unsearched_segments, [old], "{manifest:?}");
    let (ok, text) = verify(&out);
    assert!(ok, "{text}");
}

/// Sessions chosen by subject and time rather than by id: all of that
/// subject's sealed sessions in the window, the selection kept, signed.
#[test]
fn sessions_are_selected_by_subject_and_time() {
    let r = recorded();
    let subject = r.spanning[0]["subject"].as_str().expect("a subject");
    let of_subject: Vec<&str> = r
        .spanning
        .iter()
        .chain(&r.others)
        .filter(|s| s["subject"] == subject && s["protocol"] != "control" && s["protocol"] != "system")
        .map(id)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let data = copy_of_recording(dir.path());
    let out = dir.path().join("bundle");
    let exported = run_ok(
        Path::new(BIN),
        &[
            "export",
            "--subject",
            subject,
            "--before",
            "2200-01-01T00:00:00Z",
            "--out",
            out.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--json",
        ],
    );
    let summary: Value = serde_json::from_str(stdout(&exported).trim()).unwrap();
    assert_eq!(summary["sessions"].as_u64(), Some(of_subject.len() as u64), "{summary}");
    let manifest: BundleManifest = serde_json::from_slice(&std::fs::read(out.join(BUNDLE_FILE)).unwrap()).unwrap();
    assert_eq!(manifest.selection.as_deref(), Some(format!("subject:{subject} before:2200-01-01T00:00:00Z").as_str()));
    let mut listed = manifest.sessions.clone();
    listed.sort();
    let mut expected: Vec<String> = of_subject.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    let (ok, text) = verify(&out);
    assert!(ok, "{text}");
    // Nothing in the window: said, and nothing written.
    let empty = dir.path().join("empty");
    let none = run(
        Path::new(BIN),
        &[
            "export",
            "--subject",
            subject,
            "--before",
            "2000-01-01T00:00:00Z",
            "--out",
            empty.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    assert!(stderr(&none).contains("no sealed session matches subject:"), "{}", stderr(&none));
    assert!(!empty.exists());
}

/// A bundle as one file: `--out X.tar` packs it, `verify --bundle X.tar`
/// unpacks it entry by entry; a link or a path leaving the bundle in the
/// archive is named, not followed.
#[test]
fn a_bundle_can_be_one_tar_file() {
    let r = recorded();
    let dir = tempfile::tempdir().unwrap();
    let data = copy_of_recording(dir.path());
    let tar_path = dir.path().join("evidence.tar");
    run_ok(
        Path::new(BIN),
        &[
            "export",
            "--session",
            id(&r.spanning[0]),
            "--out",
            tar_path.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    let (ok, text) = verify(&tar_path);
    assert!(ok, "{text}");
    let mut names: Vec<String> = tar::Archive::new(std::fs::File::open(&tar_path).unwrap())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert!(names.contains(&"bundle.json".to_string()) && names.contains(&EVENTS_FILE.to_string()), "{names:?}");

    // The same archive with a link and a path outside it appended.
    let forged = dir.path().join("forged.tar");
    std::fs::copy(&tar_path, &forged).unwrap();
    // Appended where the archive's two closing blocks of zeros begin.
    let length = std::fs::metadata(&forged).unwrap().len();
    let mut file = std::fs::OpenOptions::new().write(true).open(&forged).unwrap();
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(length - 1024)).unwrap();
    let mut archive = tar::Builder::new(file);
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    archive.append_link(&mut header, "events/root", "/").unwrap();
    let mut outside = tar::Header::new_old();
    outside.set_size(1);
    outside.set_mode(0o644);
    {
        let bytes = outside.as_old_mut();
        bytes.name[..9].copy_from_slice(b"../escape");
    }
    outside.set_cksum();
    archive.append(&outside, &b"x"[..]).unwrap();
    archive.finish().unwrap();
    expect_failure(&forged, &["events/root: is a link or a special file", "../escape: is a path outside the bundle"]);
    assert!(!dir.path().join("escape").exists());
}

#[test]
fn export_refuses_what_it_cannot_prove() {
    let r = recorded();
    let dir = tempfile::tempdir().unwrap();
    let recording = copy_of_recording(dir.path());
    let data = recording.to_str().unwrap();
    let out = dir.path().join("b");
    let missing = run(
        Path::new(BIN),
        &[
            "export",
            "--session",
            "0190a7b2-5c3d-7e4f-8a9b-0c1d2e3f4a5b",
            "--out",
            out.to_str().unwrap(),
            "--data-dir",
            data,
        ],
    );
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("is not in the sealed recording"), "{}", stderr(&missing));
    assert!(!out.exists(), "nothing written");
    // No asciicast from a session without a terminal; nothing over a path
    // that exists.
    let postgres = r.spanning.iter().chain(&r.others).find(|s| s["protocol"] == "postgres" && s["live"] == false);
    let cast = export_one(id(postgres.unwrap()), out.to_str().unwrap(), &["--format", "asciicast"], data);
    assert!(stderr(&cast).contains("none of the selected sessions has a terminal"), "{}", stderr(&cast));
    assert!(!out.exists(), "nothing written");
    std::fs::write(&out, "keep me").unwrap();
    let over = export_one(id(&r.spanning[0]), out.to_str().unwrap(), &["--format", "csv"], data);
    assert!(stderr(&over).contains("exists already"), "{}", stderr(&over));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep me");
    std::fs::remove_file(&out).unwrap();
    // A segment that does not match its signed root is not exported from.
    let copy = dir.path().join("copy");
    copy_dir(&r.data, &copy);
    let manifests = proctor_recorder::reader::Reader::open(&copy).unwrap().manifests().unwrap();
    let manifest = manifests.iter().find(|m| m.sessions.iter().any(|s| s.session_id == id(&r.spanning[0]))).unwrap();
    let batches = segment::read_all(&copy.join(&manifest.path)).unwrap();
    let batch = concat_batches(&batches[0].schema(), &batches).unwrap();
    let one: Vec<u32> = (1..batch.num_rows() as u32).collect();
    let fewer = arrow::compute::take_record_batch(&batch, &arrow::array::UInt32Array::from(one)).unwrap();
    segment::write(&copy.join(&manifest.path), &fewer, &RecorderSettings::default()).unwrap();
    let refused = export_one(id(&r.spanning[0]), out.to_str().unwrap(), &[], copy.to_str().unwrap());
    assert!(stderr(&refused).contains("does not match its signed Merkle root"), "{}", stderr(&refused));
}

/// `proctor export --session SESSION --out OUT EXTRA --data-dir DATA`.
fn export_one(session: &str, out: &str, extra: &[&str], data: &str) -> std::process::Output {
    let mut args = vec!["export", "--session", session, "--out", out];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--data-dir", data]);
    run(Path::new(BIN), &args)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `tests/e2e/ocsf/validate.py` on `jsonl`, against OCSF 1.3.0's JSON
/// Schema (fetched by `scripts/setup`): whether every object passed, and
/// the report.
fn validate_ocsf(jsonl: &Path) -> (bool, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let schema = root.join("target/test-suites/ocsf-1.3.0/ocsf.schema.json");
    assert!(schema.exists(), "{} is missing: run scripts/setup", schema.display());
    let out = std::process::Command::new("python3")
        .arg(root.join("tests/e2e/ocsf/validate.py"))
        .arg(&schema)
        .arg(jsonl)
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", stdout(&out), stderr(&out)))
}

#[test]
fn ocsf_objects_of_every_kind_of_session_validate_against_the_ocsf_schema() {
    let dir = tempfile::tempdir().unwrap();
    let data = copy_of_recording(dir.path());
    let out = dir.path().join("all.jsonl");
    let exported = run_ok(
        Path::new(BIN),
        &[
            "export",
            "--since",
            "3650d",
            "--format",
            "ocsf",
            "--out",
            out.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--json",
        ],
    );
    let summary: Value = serde_json::from_str(stdout(&exported).trim()).unwrap();
    let (ok, report) = validate_ocsf(&out);
    assert!(ok, "{report}");
    // Statements, terminals and commands, HTTP, logons, grants and reviews.
    for class in ["1007:", "3002:", "3003:", "4007:", "6003:", "6005:"] {
        assert!(report.contains(class), "no object of class {class} in {report}");
    }
    // One object per event, each naming its session and seq once.
    let text = std::fs::read_to_string(&out).unwrap();
    let objects: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(objects.len() as u64, summary["events"].as_u64().unwrap(), "{summary}");
    let mut ids = std::collections::BTreeSet::new();
    for object in &objects {
        let metadata = &object["metadata"];
        let uid = format!("{}/{}", metadata["correlation_uid"].as_str().unwrap(), metadata["sequence"]);
        assert_eq!(metadata["uid"], Value::String(uid.clone()));
        assert!(ids.insert(uid), "one object per event");
        assert_eq!(metadata["product"]["name"], "Proctor");
    }
    // Policy decisions carry the security control profile's verdicts.
    let blocked = objects.iter().find(|o| o["unmapped"]["proctor"]["outcome"] == "block").expect("a blocked statement");
    assert_eq!((blocked["action_id"].as_u64(), blocked["disposition_id"].as_u64()), (Some(2), Some(2)), "{blocked}");
    assert_eq!(blocked["metadata"]["profiles"][0], "security_control");

    // The check itself fails on what OCSF does not allow.
    let mut broken = objects[0].clone();
    broken["no_such_attribute"] = Value::from(1);
    let mut missing = objects[1].clone();
    missing["metadata"].as_object_mut().unwrap().remove("product");
    let mut wrong_type = objects[2].clone();
    wrong_type["type_uid"] = Value::from(1);
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, format!("{broken}\n{missing}\n{wrong_type}\n")).unwrap();
    let (ok, report) = validate_ocsf(&bad);
    assert!(!ok, "{report}");
    for needle in ["no_such_attribute", "'product' is a required property", "type_uid 1 is not"] {
        assert!(report.contains(needle), "expected {needle:?} in {report}");
    }
}

#[test]
fn a_session_recorded_through_the_gateway_exports_for_duckdb_ocsf_and_spreadsheets() {
    use proctor_tests::{APP_ROLE, Proctor, ProctorOptions};
    let cluster = proctor_tests::cluster(&proctor_devcluster::Options::default());
    let masking = "[masking]\ndefault_profile = \"all\"\n[masking.profiles.all]\ndetectors = [\"all\"]\n";
    let mut proctor = Proctor::start(
        Path::new(BIN),
        cluster.port,
        &ProctorOptions { extra: masking.to_string(), ..Default::default() },
    );
    let statements = [
        "create table accounts (id int, email text)",
        "insert into accounts values (1, 'ada.lovelace@example.org')",
        "select * from accounts",
        "select 1/0",
        "drop table accounts",
    ];
    let url = proctor.url(APP_ROLE, APP_ROLE, "disable");
    let mut args = vec!["-X", "-At", "-d", &url];
    for statement in &statements {
        args.extend(["-c", statement]);
    }
    let psql = std::process::Command::new(cluster.bindir.join("psql")).args(&args).output().unwrap();
    assert!(stderr(&psql).contains("division by zero"), "{}", stderr(&psql));
    assert!(proctor.stop().success());
    let data = proctor.data_dir.clone();
    let dir = tempfile::tempdir().unwrap();
    let export = |format: &str, out: &Path| -> Value {
        let exported = run_ok(
            Path::new(BIN),
            &[
                "export",
                "--query",
                "kind:statement accounts",
                "--format",
                format,
                "--out",
                out.to_str().unwrap(),
                "--reason",
                "inquiry 12",
                "--data-dir",
                data.to_str().unwrap(),
                "--json",
            ],
        );
        serde_json::from_str(stdout(&exported).trim()).unwrap()
    };
    let tar_path = dir.path().join("evidence.tar");
    let summary = export("bundle", &tar_path);
    assert_eq!(summary["sessions"], 1, "{summary}");
    let key = data.join("keys/manifest-signing.pub.pem");
    let verified =
        run(Path::new(BIN), &["verify", "--bundle", tar_path.to_str().unwrap(), "--public-key", key.to_str().unwrap()]);
    assert!(verified.status.success(), "{}{}", stdout(&verified), stderr(&verified));

    // The bundle's files, unpacked: Parquet DuckDB reads as it is, OCSF
    // that validates, a spreadsheet's rows, and the masked value nowhere.
    let unpacked = dir.path().join("unpacked");
    tar::Archive::new(std::fs::File::open(&tar_path).unwrap()).unpack(&unpacked).unwrap();
    let duckdb = std::process::Command::new("python3")
        .args(["-c", "import duckdb, sys; print(duckdb.sql(f\"select count(*), count(distinct session_id) from read_parquet('{sys.argv[1]}') where kind = 'statement'\").fetchall()[0])"])
        .arg(unpacked.join(EVENTS_FILE))
        .output()
        .unwrap();
    assert_eq!(stdout(&duckdb).trim(), "(5, 1)", "{}", stderr(&duckdb));
    let (ok, report) = validate_ocsf(&unpacked.join("ocsf.jsonl"));
    assert!(ok, "{report}");
    let ocsf = std::fs::read_to_string(unpacked.join("ocsf.jsonl")).unwrap();
    let objects: Vec<Value> = ocsf.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let failed = objects.iter().find(|o| o["status_code"] == "22012").expect("the division by zero, by SQLSTATE");
    assert_eq!((failed["class_uid"].as_u64(), failed["status_id"].as_u64()), (Some(6005), Some(2)), "{failed}");
    let logon = objects.iter().find(|o| o["class_uid"] == 3002 && o["activity_id"] == 1).expect("a logon");
    assert_eq!(logon["src_endpoint"]["ip"], "127.0.0.1", "{logon}");
    assert!(
        objects
            .iter()
            .any(|o| o["query_info"]["query_string"].as_str().is_some_and(|q| q.starts_with("drop table accounts"))),
        "{ocsf}"
    );
    let csv = std::fs::read_to_string(unpacked.join("statements.csv")).unwrap();
    assert!(csv.lines().any(|l| l.contains("drop table accounts")), "{csv}");
    // The report: self-contained, with the session, its error, its
    // transcript and the masked value marked as masked; and printable.
    let report = std::fs::read_to_string(unpacked.join("report.html")).unwrap();
    for outside in ["<script", "src=", "url(", "http://", "https://", "@import"] {
        assert!(!report.contains(outside), "the report reaches outside itself ({outside})");
    }
    for needle in ["test-db", "inquiry 12", "division by zero", "drop table accounts", "<mark class=\"masked\""] {
        assert!(report.contains(needle), "{needle:?} is not in the report");
    }
    let pdf = dir.path().join("report.pdf");
    let printed = std::process::Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer"])
        .arg(format!("--print-to-pdf={}", pdf.display()))
        .arg(format!("file://{}", unpacked.join("report.html").display()))
        .output()
        .unwrap();
    let printed_bytes = std::fs::read(&pdf).unwrap_or_default();
    assert!(printed_bytes.starts_with(b"%PDF-") && printed_bytes.len() > 10_000, "{}", stderr(&printed));
    for file in walk(&unpacked) {
        assert!(
            !contains(&std::fs::read(&file).unwrap(), b"ada.lovelace@example.org"),
            "{} holds the masked value",
            file.display()
        );
    }

    // Each format alone, and every export found as one in the recording,
    // with the hash of what it wrote.
    let ocsf_summary = export("ocsf", &dir.path().join("events.ocsf.jsonl"));
    let (ok, report) = validate_ocsf(&dir.path().join("events.ocsf.jsonl"));
    assert!(ok, "{report}");
    let csv_summary = export("csv", &dir.path().join("statements.csv"));
    assert!(std::fs::read_to_string(dir.path().join("statements.csv")).unwrap().contains("drop table accounts"));
    let session = summary_session(&data);
    let found = run_ok(
        Path::new(BIN),
        &["search", "--data-dir", data.to_str().unwrap(), "--json", "kind:recording_accessed operation:export"],
    );
    let hits: Vec<Value> = stdout(&found).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(hits.len(), 3, "{}", stdout(&found));
    for (summary, format) in [(&summary, "bundle"), (&ocsf_summary, "ocsf"), (&csv_summary, "csv")] {
        let hash = summary["sha256"].as_str().unwrap();
        let hit = hits
            .iter()
            .find(|h| h["text"].as_str().unwrap().contains(hash))
            .unwrap_or_else(|| panic!("no export access with {hash}: {hits:?}"));
        assert!(hit["text"].as_str().unwrap().contains(&format!("format:{format}")), "{hit}");
        assert_eq!(hit["target_session"], Value::String(session.clone()), "{hit}");
        assert!(hit["text"].as_str().unwrap().contains("inquiry 12"), "{hit}");
    }
}

/// The one data session of a gateway's recording.
fn summary_session(data: &Path) -> String {
    let listed = run_ok(Path::new(BIN), &["sessions", "--data-dir", data.to_str().unwrap(), "--json"]);
    let sessions: Vec<Value> = stdout(&listed).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let data_sessions: Vec<&Value> = sessions.iter().filter(|s| s["protocol"] == "postgres").collect();
    assert_eq!(data_sessions.len(), 1, "{sessions:?}");
    id(data_sessions[0]).to_string()
}

/// What a key holder could forge: the recording's events `extra` (by
/// session and seq) added to `bundle` with genuine leaves, every segment's
/// multiproof made anew for what it then carries, and the bundle signed
/// again: a second, independent construction of proofs.
fn carry_also(bundle: &Path, recording: &Path, extra: &BTreeSet<(String, u64)>) {
    use proctor_schemas::arrow::BatchReader;
    use proctor_schemas::chain::ChainHash;
    use proctor_schemas::{Column, Value as Cell, canonical, merkle};
    let mut leaves = evidence::read_leaves(&bundle.join(LEAVES_FILE)).unwrap();
    let mut proofs: evidence::Proofs =
        serde_json::from_slice(&std::fs::read(bundle.join(PROOFS_FILE)).unwrap()).unwrap();
    let mut batches = vec![events(bundle)];
    let manifests = proctor_recorder::reader::Reader::open(recording).unwrap().manifests().unwrap();
    for manifest in &manifests {
        let carried: BTreeSet<u64> =
            leaves.iter().filter(|l| l.segment_id == manifest.segment_id).map(|l| l.index).collect();
        let Some(salt) = manifest.merkle_salt.as_deref() else { continue };
        let salt: [u8; 32] = hex::decode(salt).unwrap().try_into().unwrap();
        let rows = segment::read_all(&recording.join(&manifest.path)).unwrap();
        let rows = concat_batches(&rows[0].schema(), &rows).unwrap();
        let reader = BatchReader::new(&rows).unwrap();
        let mut heads: std::collections::HashMap<String, ChainHash> = manifest
            .sessions
            .iter()
            .map(|s| {
                (
                    s.session_id.clone(),
                    s.chain_in.as_deref().and_then(ChainHash::from_hex).unwrap_or(ChainHash::GENESIS),
                )
            })
            .collect();
        let (mut tree_leaves, mut taken, mut indices) = (Vec::new(), Vec::new(), carried.clone());
        for i in 0..reader.len() {
            let row = reader.row(i).unwrap();
            let cells = row.cells();
            let (Some(Cell::Str(session)), Some(Cell::U64(seq))) =
                (cells.get(Column::SessionId), cells.get(Column::Seq))
            else {
                panic!("a row without session or seq")
            };
            let mut bytes = Vec::new();
            canonical::encode(&cells, &mut bytes);
            let head = heads.entry(session.to_string()).or_insert(ChainHash::GENESIS);
            let before = *head;
            *head = before.next(&bytes);
            let index = i as u64;
            let nonce = merkle::nonce(&salt, index);
            tree_leaves.push(merkle::leaf(&nonce, head));
            if extra.contains(&(session.to_string(), seq)) {
                taken.push(i as u32);
                indices.insert(index);
                leaves.push(evidence::LeafProof {
                    session_id: session.to_string(),
                    seq,
                    segment_id: manifest.segment_id,
                    index,
                    nonce,
                    head: *head,
                    head_before: Some(before),
                });
            }
        }
        if taken.is_empty() {
            continue;
        }
        batches.push(arrow::compute::take_record_batch(&rows, &arrow::array::UInt32Array::from(taken)).unwrap());
        let indices: Vec<u64> = indices.into_iter().collect();
        let nodes = merkle::Tree::new(tree_leaves).multiproof(&indices).unwrap();
        proofs.segments.retain(|p| p.segment_id != manifest.segment_id);
        proofs.segments.push(evidence::SegmentProof {
            segment_id: manifest.segment_id,
            nodes: nodes.iter().map(hex::encode).collect(),
        });
        if !proofs.roots.iter().any(|r| r.statement.segment_id == manifest.segment_id) {
            proofs.roots.push(evidence::SignedRoot {
                statement: manifest.root_statement().unwrap(),
                signature: manifest.root_signature.clone().unwrap(),
            });
        }
    }
    leaves.sort_by(|a, b| (&a.session_id, a.seq).cmp(&(&b.session_id, b.seq)));
    evidence::write_leaves(&bundle.join(LEAVES_FILE), &leaves).unwrap();
    std::fs::write(bundle.join(PROOFS_FILE), serde_json::to_vec(&proofs).unwrap()).unwrap();
    let merged = concat_batches(&batches[0].schema(), &batches).unwrap();
    replace_events(bundle, &merged);
}
