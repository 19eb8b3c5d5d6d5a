//! The `proctor` commands as an operator runs them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proctor_recorder::reader::Reader;
use proctor_schemas::{EndReason, EventBody, Protocol};
use proctor_tests::{collect_lines, run, run_ok, signal, spawn, stderr, stdout, wait_for_line, wait_with_timeout};

const BIN: &str = env!("CARGO_BIN_EXE_proctor");

fn bin() -> &'static Path {
    Path::new(BIN)
}

fn config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("proctor.toml");
    std::fs::write(&path, format!("data_dir = \"data\"\n{extra}")).unwrap();
    path
}

fn up_until_signal(sig: i32, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "[recorder]\nfsync = \"always\"\n");
    let mut child = spawn(bin(), &["up", "--config", config.to_str().unwrap()]);
    let log = collect_lines(child.stderr.take().unwrap());
    wait_for_line(&log, "proctor is up", Duration::from_secs(30));
    signal(&child, sig);
    let seen = wait_for_line(&log, "every recorded event is sealed", Duration::from_secs(30));
    let status = wait_with_timeout(&mut child, Duration::from_secs(30));
    assert!(status.success(), "proctor up exited with {status}: {}", seen.join("\n"));

    let data = dir.path().join("data");
    run_ok(bin(), &["verify", "--data-dir", data.to_str().unwrap()]);
    let reader = Reader::open(&data).unwrap();
    let sessions = reader.sessions().unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].protocol.as_deref(), Some("control"));
    assert_eq!(sessions[0].wal_events, 0, "everything is sealed");
    let events = reader.session_events(sessions[0].session_id).unwrap();
    assert!(matches!(&events[0].body, EventBody::SessionStart(s) if s.protocol == Protocol::Control));
    let EventBody::SessionEnd(end) = &events.last().unwrap().body else { panic!("no session_end: {events:?}") };
    assert_eq!(end.reason, EndReason::Shutdown);
    assert_eq!(end.message.as_deref(), Some(format!("stopped by {name}").as_str()));
}

#[test]
fn up_records_its_control_session_and_seals_on_sigterm() {
    up_until_signal(libc::SIGTERM, "SIGTERM");
}

#[test]
fn up_records_its_control_session_and_seals_on_sigint() {
    up_until_signal(libc::SIGINT, "SIGINT");
}

#[test]
fn up_without_a_configuration_runs_on_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(bin())
        .arg("up")
        .current_dir(dir.path())
        .env_remove("PROCTOR_CONFIG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = collect_lines(child.stderr.take().unwrap());
    wait_for_line(&log, "proctor is up", Duration::from_secs(30));
    signal(&child, libc::SIGTERM);
    assert!(wait_with_timeout(&mut child, Duration::from_secs(30)).success());
    run_ok(bin(), &["verify", "--data-dir", dir.path().join("proctor-data").to_str().unwrap()]);
}

#[test]
fn up_refuses_a_bad_configuration_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let typo = config(dir.path(), "[recorder]\nfsync = \"sometimes\"\n");
    let output = run(bin(), &["up", "--config", typo.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("unknown variant `sometimes`"), "{}", stderr(&output));

    let unknown = config(dir.path(), "[recorder]\nsegment_size = 1\n");
    let output = run(bin(), &["up", "--config", unknown.to_str().unwrap()]);
    assert!(stderr(&output).contains("unknown field `segment_size`"), "{}", stderr(&output));

    let output = run(bin(), &["up", "--config", dir.path().join("missing.toml").to_str().unwrap()]);
    assert!(stderr(&output).contains("cannot read configuration"), "{}", stderr(&output));
}

#[test]
fn key_show_prints_the_key_that_verify_pins() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let empty = run(bin(), &["key", "show", "--data-dir", data.to_str().unwrap()]);
    assert!(!empty.status.success());
    assert!(stderr(&empty).contains("it is created when the recorder first starts"), "{}", stderr(&empty));

    run_ok(bin(), &["generate", "--data-dir", data.to_str().unwrap(), "--sessions", "5"]);
    let shown: serde_json::Value =
        serde_json::from_str(&stdout(&run_ok(bin(), &["key", "show", "--data-dir", data.to_str().unwrap(), "--json"])))
            .unwrap();
    let fingerprint = shown["fingerprint"].as_str().unwrap();
    assert!(fingerprint.starts_with("SHA256:"));
    let text = stdout(&run_ok(bin(), &["key", "show", "--data-dir", data.to_str().unwrap()]));
    assert!(text.contains(fingerprint) && text.contains("BEGIN PUBLIC KEY"), "{text}");

    let verified: serde_json::Value = serde_json::from_str(&stdout(&run_ok(
        bin(),
        &["verify", "--data-dir", data.to_str().unwrap(), "--public-key", fingerprint, "--json"],
    )))
    .unwrap();
    assert_eq!(verified["key_trust"], "pinned");
    assert_eq!(verified["key_fingerprint"], fingerprint);

    let key_file = dir.path().join("key.hex");
    std::fs::write(&key_file, shown["public_key_hex"].as_str().unwrap()).unwrap();
    run_ok(bin(), &["verify", "--data-dir", data.to_str().unwrap(), "--public-key", key_file.to_str().unwrap()]);

    let keys = data.join("keys");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(keys.join("manifest-signing.pem")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn generate_is_deterministic_and_covers_every_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    for name in ["a", "b"] {
        let data = dir.path().join(name);
        let output = run_ok(
            bin(),
            &[
                "generate",
                "--data-dir",
                data.to_str().unwrap(),
                "--sessions",
                "30",
                "--seed",
                "42",
                "--start",
                "2026-11-01T00:00:00Z",
            ],
        );
        assert!(stderr(&output).contains("generated 30 sessions"), "{}", stderr(&output));
        let reader = Reader::open(&data).unwrap();
        let mut events = Vec::new();
        reader
            .for_each_event(|e| {
                events.push(e);
                Ok(())
            })
            .unwrap();
        all.push(events);
    }
    assert_eq!(all[0], all[1]);
    let kinds: std::collections::BTreeSet<&str> = all[0].iter().map(|e| e.kind().as_str()).collect();
    for kind in [
        "session_start",
        "statement",
        "result",
        "terminal_input",
        "terminal_output",
        "http_request",
        "http_response",
        "grant_requested",
        "grant_approved",
        "session_end",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {kinds:?}");
    }
    assert!(all[0].iter().all(|e| e.time.to_rfc3339().starts_with("2026-11-0")));
}

#[test]
fn verify_expect_head_accepts_a_grown_chain() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    run_ok(bin(), &["generate", "--data-dir", data.to_str().unwrap(), "--sessions", "5", "--seed", "1"]);
    let first: serde_json::Value =
        serde_json::from_str(&stdout(&run_ok(bin(), &["verify", "--data-dir", data.to_str().unwrap(), "--json"])))
            .unwrap();
    let head = first["head"].as_str().unwrap().to_string();
    run_ok(bin(), &["generate", "--data-dir", data.to_str().unwrap(), "--sessions", "5", "--seed", "2"]);
    let grown = run_ok(bin(), &["verify", "--data-dir", data.to_str().unwrap(), "--expect-head", &head]);
    assert!(stderr(&grown).contains("sealed after it"), "{}", stderr(&grown));
    assert!(!stdout(&grown).contains(&head), "the head moved on");
}

#[test]
fn verify_of_a_missing_data_dir_is_an_error() {
    let output = run(bin(), &["verify", "--data-dir", "/nonexistent/proctor"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("not a data dir"), "{}", stderr(&output));
}

#[test]
fn a_named_data_dir_wins_over_the_server_and_configuration_in_the_environment() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let dir = data.to_str().unwrap();
    run_ok(bin(), &["generate", "--data-dir", dir, "--sessions", "3"]);
    // Exported for other commands, pointing nowhere: `--data-dir` is read.
    let sessions = std::process::Command::new(bin())
        .args(["sessions", "--data-dir", dir])
        .env("PROCTOR_SERVER", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert!(sessions.status.success(), "{}", stderr(&sessions));
    let listed = String::from_utf8_lossy(&sessions.stdout)
        .lines()
        .filter(|l| l.contains(" postgres ") || l.contains(" ssh ") || l.contains(" http "))
        .count();
    assert_eq!(listed, 3, "{}", String::from_utf8_lossy(&sessions.stdout));
    let token = std::process::Command::new(bin())
        .args(["token", "--sub", "ivy", "--data-dir", dir])
        .env("PROCTOR_CONFIG", work.path().join("absent.toml"))
        .output()
        .unwrap();
    assert!(token.status.success(), "{}", stderr(&token));
    // A session id that is none is refused before anything is asked, here
    // or of a server.
    for source in [["--data-dir", dir], ["--server", "http://127.0.0.1:9"]] {
        let output = run(bin(), &["replay", "nonsense", source[0], source[1], "--token", "t"]);
        assert_eq!(output.status.code(), Some(2));
        assert!(stderr(&output).contains("invalid session id \"nonsense\""), "{}", stderr(&output));
    }
}
