//! The replay server's API as investigators and their tools reach it: curl
//! and `proctor --server`, with tokens from the dev issuer, against a running
//! `proctor up` recording psql sessions through the real gateway.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use proctor_tests::devcluster::{Options, free_port};
use proctor_tests::{APP_ROLE, Proctor, ProctorOptions, cluster, run, run_ok, stdout};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_proctor");

fn bin() -> &'static Path {
    Path::new(BIN)
}

/// `curl` GET: the status and the JSON body (and the headers, lowercased).
fn get(url: &str, token: Option<&str>) -> (u16, Value, String) {
    let mut command = Command::new("curl");
    command.args(["-sS", "-D", "-", "--max-time", "60", url]);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let output = command.output().expect("curl (scripts/setup installs it)");
    assert!(output.status.success(), "curl: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap();
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, json, head.to_lowercase())
}

fn token(data_dir: &Path, sub: &str, groups: &str) -> String {
    let output = run_ok(bin(), &["token", "--data-dir", data_dir.to_str().unwrap(), "--sub", sub, "--groups", groups]);
    stdout(&output).trim().to_string()
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Polls a search until it has at least `want` hits (the index follows the
/// recording within seconds; the bound only catches a hang).
fn search_until(api: &str, token: &str, query: &str, want: u64) -> Value {
    let started = Instant::now();
    loop {
        let (status, body, _) = get(&format!("{api}/api/search?q={}&limit=50", encode(query)), Some(token));
        assert_eq!(status, 200, "{body}");
        if body["total"].as_u64().unwrap_or(0) >= want {
            return body;
        }
        assert!(started.elapsed() < Duration::from_secs(50), "{query:?}: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A cluster, `proctor up` in front of it with the dev issuer and the replay
/// API (over TLS or not), and `statements` run through it by alice with psql.
fn start(tls: bool, statements: &[&str]) -> (proctor_tests::devcluster::Cluster, Proctor, u16) {
    let cluster = cluster(&Options::default());
    let replay_port = free_port();
    let options = ProctorOptions {
        extra: format!("[identity.dev_issuer]\n\n[replay]\nlisten = \"127.0.0.1:{replay_port}\"\ntls = {tls}\n"),
        ..ProctorOptions::default()
    };
    let proctor = Proctor::start(bin(), cluster.port, &options);
    let mut psql = Command::new(cluster.bindir.join("psql"));
    psql.args(["-X", "-q", "-At", "-d", &proctor.conninfo("alice", APP_ROLE, "disable")]);
    for sql in statements {
        psql.args(["-c", sql]);
    }
    let output = psql.output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    (cluster, proctor, replay_port)
}

#[test]
fn investigators_search_and_replay_through_the_api_and_everyone_else_is_refused() {
    let (_cluster, proctor, replay_port) = start(false, &["select 'larkspur' as flower", "select 42 as answer"]);
    let api = format!("http://127.0.0.1:{replay_port}");

    let ivy = token(&proctor.data_dir, "ivy", "investigators,oncall");
    let mallory = token(&proctor.data_dir, "mallory", "developers");
    let elsewhere = tempfile::tempdir().unwrap();
    let forged = token(elsewhere.path(), "ivy", "investigators");

    // No token, a forged one, garbage: 401 with a challenge; wrong group: 403.
    let (status, body, head) = get(&format!("{api}/api/search?q=larkspur"), None);
    assert_eq!(status, 401, "{body}");
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    assert!(body["error"].as_str().unwrap().contains("bearer token"), "{body}");
    let (status, body, _) = get(&format!("{api}/api/search?q=larkspur"), Some(&forged));
    assert_eq!(status, 401, "{body}");
    let (status, _, _) = get(&format!("{api}/api/sessions"), Some("not.a.token"));
    assert_eq!(status, 401);
    let (status, body, _) = get(&format!("{api}/api/search?q=larkspur"), Some(&mallory));
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("investigator"), "{body}");

    // The investigator finds the statement, with its session, seq, time,
    // kind, a highlighted snippet and the facets.
    let found = search_until(&api, &ivy, "larkspur kind:statement", 1);
    let hit = &found["hits"][0];
    assert_eq!(hit["kind"], "statement");
    assert!(hit["snippet"].as_str().unwrap().contains("<b>larkspur</b>"), "{hit}");
    assert!(hit["time"].as_str().unwrap().ends_with('Z') && hit["seq"].as_u64().is_some());
    assert_eq!(found["facets"]["subject"]["alice"], 1, "{found}");
    let session_id = hit["session_id"].as_str().unwrap().to_string();

    // A bad query says what is wrong.
    let (status, body, _) = get(&format!("{api}/api/search?q={}", encode("colour:red")), Some(&ivy));
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("colour"), "{body}");
    // So does a page beyond any sensible depth (it would ask for memory for all of them).
    let (status, body, _) = get(&format!("{api}/api/search?q=larkspur&offset=1000000000000"), Some(&ivy));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("narrow the query"), "{body}");

    // Sessions, one session, its events in pages.
    let (status, body, _) = get(&format!("{api}/api/sessions?subject=alice"), Some(&ivy));
    assert_eq!(status, 200);
    let sessions = body["sessions"].as_array().unwrap();
    assert!(sessions.iter().any(|s| s["session_id"] == session_id.as_str()), "{body}");
    assert!(sessions.iter().all(|s| s["subject"] == "alice"));
    let (status, body, _) = get(&format!("{api}/api/sessions/{session_id}"), Some(&ivy));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["start_event"]["subject"], "alice");
    assert_eq!(body["resource"], "test-db");
    let (status, first, _) = get(&format!("{api}/api/sessions/{session_id}/events?limit=2"), Some(&ivy));
    assert_eq!(status, 200);
    let events = first["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["kind"], "session_start");
    assert_eq!(first["next_seq"], 2);
    let (_, rest, _) = get(&format!("{api}/api/sessions/{session_id}/events?from_seq=2&limit=1000"), Some(&ivy));
    let rest = rest["events"].as_array().unwrap().clone();
    assert_eq!(rest[0]["seq"], 2, "pages join without a gap");
    assert!(rest.iter().any(|e| e["sql"] == "select 'larkspur' as flower"), "{rest:?}");
    let (status, _, _) = get(&format!("{api}/api/sessions/0190f000-0000-7000-8000-000000000000"), Some(&ivy));
    assert_eq!(status, 404);
    let (status, _, _) = get(&format!("{api}/api/sessions/nonsense/events"), Some(&ivy));
    assert_eq!(status, 400);

    // The CLI against the server gives what it gives on a data dir.
    let cli = |args: &[&str], token: &str| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--server", &api, "--token", token]);
        run(bin(), &all)
    };
    let output = cli(&["search", "larkspur", "--json"], &ivy);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let hits: Vec<Value> = stdout(&output).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(hits.iter().any(|h| h["session_id"] == session_id.as_str() && h["text"].as_str().is_some()));
    let output = cli(&["replay", &session_id], &ivy);
    assert!(output.status.success());
    let remote_transcript = stdout(&output);
    assert!(remote_transcript.contains("select 'larkspur' as flower"), "{remote_transcript}");
    let output = cli(&["sessions", "--subject", "alice", "--json"], &ivy);
    assert!(stdout(&output).contains(&session_id));
    let output = cli(&["search", "larkspur"], &mallory);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("403"), "{}", String::from_utf8_lossy(&output.stderr));

    // Who looked at what is itself recorded, and searchable.
    let accesses = search_until(&api, &ivy, "kind:recording_accessed actor:ivy", 10);
    assert!(accesses["hits"].as_array().unwrap().iter().all(|h| h["subject"] == "ivy"), "{accesses}");
    let reads = search_until(&api, &ivy, &format!("kind:recording_accessed actor:ivy target_session:{session_id}"), 1);
    assert!(reads["total"].as_u64().unwrap() >= 1);
    let (_, none, _) = get(&format!("{api}/api/search?q={}", encode("actor:mallory")), Some(&ivy));
    assert_eq!(none["total"], 0, "a refused request returns nothing, so it reads nothing");

    // A read on the data dir itself, beside the running Proctor, is recorded
    // too: as the local account that owns the note it leaves.
    let data_dir = proctor.data_dir.to_str().unwrap();
    let output = run_ok(bin(), &["replay", &session_id, "--data-dir", data_dir]);
    assert_eq!(stdout(&output), remote_transcript, "the same transcript locally and through the server");
    let local =
        search_until(&api, &ivy, &format!("kind:recording_accessed target_session:{session_id} NOT actor:ivy"), 1);
    let user = String::from_utf8_lossy(&Command::new("id").arg("-un").output().unwrap().stdout).trim().to_string();
    assert_eq!(local["hits"][0]["subject"], format!("local:{user}"), "{local}");
    assert!(std::fs::read_dir(proctor.data_dir.join("access")).unwrap().next().is_none(), "the note is consumed");
}

#[test]
fn the_api_over_tls_serves_clients_that_trust_its_certificate_only() {
    let (_cluster, proctor, replay_port) = start(true, &["select 'edelweiss' as flower"]);
    let ivy = token(&proctor.data_dir, "ivy", "investigators");
    // The dev certificate Proctor made for loopback (the same its database listeners use).
    let cert = proctor.data_dir.join("tls/proctor-dev.crt");
    let cert = cert.to_str().unwrap();
    let api = format!("https://127.0.0.1:{replay_port}");
    let url = format!("{api}/api/search?q=edelweiss");

    // curl trusting the certificate gets answers; without it, no handshake.
    let curl = |extra: &[&str]| {
        Command::new("curl")
            .args(["-sS", "--max-time", "30", "-H", &format!("Authorization: Bearer {ivy}")])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap()
    };
    let started = Instant::now();
    loop {
        let output = curl(&["--cacert", cert]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let body: Value = serde_json::from_slice(&output.stdout).unwrap();
        if body["total"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(50), "{body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!curl(&[]).status.success(), "an untrusted certificate is refused by curl");
    let plain = Command::new("curl")
        .args(["-sS", "--max-time", "10", &format!("http://127.0.0.1:{replay_port}/healthz")])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("ok"), "no plain HTTP on the TLS port");

    // The CLI, with and without the certificate to trust.
    let output = run(bin(), &["search", "edelweiss", "--json", "--server", &api, "--token", &ivy, "--ca-file", cert]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout(&output).contains("select 'edelweiss' as flower"));
    let output = run(bin(), &["search", "edelweiss", "--server", &api, "--token", &ivy]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--ca-file"));
    // Trusting another certificate for the same address is no better.
    let elsewhere = tempfile::tempdir().unwrap();
    let other = elsewhere.path().join("other.crt");
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    std::fs::write(&other, certified.cert.pem()).unwrap();
    let output =
        run(bin(), &["search", "edelweiss", "--server", &api, "--token", &ivy, "--ca-file", other.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("TLS"), "{}", String::from_utf8_lossy(&output.stderr));
}

/// `curl` POST of `body` as JSON, the answer saved to `out`: the status
/// and the headers (lowercased).
fn post_to_file(url: &str, token: &str, body: &Value, out: &Path) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-sS", "-D", "-", "--max-time", "60", "-o", out.to_str().unwrap(), "-X", "POST", url])
        .args(["-H", &format!("Authorization: Bearer {token}"), "-H", "Content-Type: application/json"])
        .args(["--data-binary", &body.to_string()])
        .output()
        .expect("curl (scripts/setup installs it)");
    assert!(output.status.success(), "curl: {}", String::from_utf8_lossy(&output.stderr));
    let head = String::from_utf8_lossy(&output.stdout).to_lowercase();
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap();
    (status, head)
}

fn header<'a>(head: &'a str, name: &str) -> &'a str {
    head.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).map(str::trim).unwrap_or_default()
}

#[test]
fn evidence_is_exported_through_the_api_by_investigators_and_the_compliance_group_only() {
    let cluster = cluster(&Options::default());
    let replay_port = free_port();
    let options = ProctorOptions {
        extra: format!(
            "[identity.dev_issuer]\n\n[replay]\nlisten = \"127.0.0.1:{replay_port}\"\ncompliance_group = \"audit\"\n"
        ),
        // Nothing sealed by age: an export seals what it carries itself.
        recorder: "segment_max_age = \"1h\"\n".to_string(),
        ..ProctorOptions::default()
    };
    let mut proctor = Proctor::start(bin(), cluster.port, &options);
    let psql = Command::new(cluster.bindir.join("psql"))
        .args([
            "-X",
            "-q",
            "-At",
            "-d",
            &proctor.conninfo("alice", APP_ROLE, "disable"),
            "-c",
            "select 'larkspur' as flower",
        ])
        .output()
        .unwrap();
    assert!(psql.status.success(), "{}", String::from_utf8_lossy(&psql.stderr));
    let api = format!("http://127.0.0.1:{replay_port}");
    let ivy = token(&proctor.data_dir, "ivy", "investigators");
    let carol = token(&proctor.data_dir, "carol", "audit");
    let mallory = token(&proctor.data_dir, "mallory", "developers");
    let dir = tempfile::tempdir().unwrap();
    let key = proctor.data_dir.join("keys/manifest-signing.pub.pem");

    // An investigator's bundle, by query, as soon as the search finds the
    // session: the export seals the recording's tail itself.
    search_until(&api, &ivy, "larkspur kind:statement", 1);
    let tar = dir.path().join("evidence.tar");
    let request = serde_json::json!({ "query": "larkspur", "reason": "case 7" });
    let (status, head) = post_to_file(&format!("{api}/api/exports"), &ivy, &request, &tar);
    assert_eq!(status, 200, "{head}: {}", std::fs::read_to_string(&tar).unwrap_or_default());
    assert_eq!(header(&head, "content-type"), "application/x-tar", "{head}");
    assert!(header(&head, "content-disposition").contains(".tar"), "{head}");
    let (sha256, _) = proctor_recorder::verify::hash_file(&tar).unwrap();
    assert_eq!(header(&head, "x-proctor-sha256"), sha256, "{head}");
    assert_eq!(header(&head, "x-proctor-sessions"), "1", "{head}");
    let verified = run(bin(), &["verify", "--bundle", tar.to_str().unwrap(), "--public-key", key.to_str().unwrap()]);
    assert!(verified.status.success(), "{}{}", stdout(&verified), String::from_utf8_lossy(&verified.stderr));
    // Prepared in the data dir, and gone once delivered.
    let exports = proctor.data_dir.join("exports");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&exports).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700);
    assert_eq!(std::fs::read_dir(&exports).unwrap().count(), 0, "nothing of the export is left");

    // The compliance group's member exports through the CLI, and reads
    // nothing else; anyone else exports nothing.
    let session = {
        let (_, found, _) = get(&format!("{api}/api/search?q={}", encode("larkspur kind:statement")), Some(&ivy));
        found["hits"][0]["session_id"].as_str().unwrap().to_string()
    };
    let ocsf = dir.path().join("events.ocsf.jsonl");
    let exported = run_ok(
        bin(),
        &[
            "export",
            "--server",
            &api,
            "--token",
            &carol,
            "--session",
            &session,
            "--format",
            "ocsf",
            "--reason",
            "quarterly audit",
            "--out",
            ocsf.to_str().unwrap(),
            "--json",
        ],
    );
    let summary: Value = serde_json::from_str(stdout(&exported).trim()).unwrap();
    assert_eq!(summary["sessions"], 1, "{summary}");
    let text = std::fs::read_to_string(&ocsf).unwrap();
    assert!(text.lines().any(|l| l.contains("larkspur") && l.contains("\"class_uid\":6005")), "{text}");
    let (status, body, _) = get(&format!("{api}/api/search?q=larkspur"), Some(&carol));
    assert_eq!(status, 403, "{body}");
    // Nor the gateway's own sessions, which hold everyone's grants.
    let (_, control, _) = get(&format!("{api}/api/sessions?protocol=control"), Some(&ivy));
    let control = control["sessions"][0]["session_id"].as_str().expect("a control session").to_string();
    let (status, _) = post_to_file(
        &format!("{api}/api/exports"),
        &carol,
        &serde_json::json!({ "sessions": [control] }),
        &dir.path().join("control.tar"),
    );
    assert_eq!(status, 403);
    let refused = dir.path().join("refused");
    let (status, _) = post_to_file(&format!("{api}/api/exports"), &mallory, &request, &refused);
    assert_eq!(status, 403);
    let said: Value = serde_json::from_slice(&std::fs::read(&refused).unwrap()).unwrap();
    assert!(said["error"].as_str().unwrap().contains("\"audit\""), "{said}");

    // Mistakes are named.
    for (body, status, needle) in [
        (serde_json::json!({ "query": "larkspur", "format": "pdf" }), 400, "format \"pdf\""),
        (serde_json::json!({ "reason": "nothing named" }), 400, "name the sessions"),
        (serde_json::json!({ "sessions": [session], "subject": "alice" }), 400, "not both"),
        (
            serde_json::json!({ "sessions": ["0190a7b2-5c3d-7e4f-8a9b-0c1d2e3f4a5b"] }),
            404,
            "not in the sealed recording",
        ),
        (serde_json::json!({ "query": "colour:red" }), 400, "colour"),
    ] {
        let (got, head) = post_to_file(&format!("{api}/api/exports"), &ivy, &body, &refused);
        let said: Value = serde_json::from_slice(&std::fs::read(&refused).unwrap()).unwrap();
        let said = said["error"].as_str().unwrap_or_default().to_string();
        assert_eq!(got, status, "{body}: {head} {said}");
        assert!(said.contains(needle), "{body}: {said}");
    }
    let wrong = run(
        bin(),
        &[
            "export",
            "--server",
            &api,
            "--token",
            &ivy,
            "--session",
            &session,
            "--out",
            dir.path().join("b").to_str().unwrap(),
        ],
    );
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("ending in .tar"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );

    // A selection that finds nothing is on record all the same.
    let (status, _) = post_to_file(
        &format!("{api}/api/exports"),
        &carol,
        &serde_json::json!({ "query": "nightshade" }),
        &dir.path().join("none.tar"),
    );
    assert_eq!(status, 404);
    search_until(&api, &ivy, "kind:recording_accessed actor:carol nightshade", 1);

    // Both exports are on record, by whom, of what, with their hashes.
    let found = search_until(&api, &ivy, "kind:recording_accessed operation:export", 2);
    let hits = found["hits"].as_array().unwrap();
    let by = |actor: &str| {
        hits.iter().find(|h| h["actor"] == actor).unwrap_or_else(|| panic!("no export by {actor}: {found}"))
    };
    assert!(by("ivy")["text"].as_str().unwrap().contains(&sha256), "{found}");
    assert!(by("carol")["text"].as_str().unwrap().contains("format:ocsf"), "{found}");
    assert_eq!(by("carol")["target_session"], Value::String(session.clone()));

    // What an interrupted export left (a crash between preparing and
    // delivering) is removed when the replay server starts again.
    assert!(proctor.stop().success());
    let left = proctor.data_dir.join("exports/export-interrupted");
    std::fs::create_dir_all(&left).unwrap();
    std::fs::write(left.join("bundle.tar"), b"evidence never delivered").unwrap();
    proctor.start_again(bin());
    assert!(!left.exists(), "the interrupted export is gone");
    assert_eq!(std::fs::read_dir(proctor.data_dir.join("exports")).unwrap().count(), 0);
}
