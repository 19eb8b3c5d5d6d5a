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

/// A `[[resources]]` entry is read by its protocol: a key its protocol does
/// not use, an unknown protocol, a missing one, are refused at start-up
/// with the resource, the key and the protocol named.
#[test]
fn up_refuses_a_resource_key_its_protocol_does_not_use() {
    let dir = tempfile::tempdir().unwrap();
    let resource = |extra: &str| {
        format!(
            "[[resources]]\nname = \"db\"\n{extra}listen = \"127.0.0.1:1\"\ntarget = \"127.0.0.1:2\"\nuser = \"app\"\npassword_env = \"PW\"\nclient_secret_env = \"S\"\n"
        )
    };
    for (extra, says) in [
        (
            "protocol = \"postgres\"\nkey_file = \"id_ed25519\"\n",
            "resource db: `key_file` is not a key of a postgres resource (it is a key of ssh resources); its keys are name, protocol, listen, target, user",
        ),
        ("protocol = \"postgres\"\ndatabse = \"app\"\n", "`databse` is not a key of a postgres resource"),
        (
            "protocol = \"telnet\"\n",
            "resource db: protocol \"telnet\" is not one Proctor fronts (it fronts \"postgres\", \"ssh\")",
        ),
        ("", "resource db: `protocol` is required"),
        (
            "protocol = \"postgres\"\nsample_rows = \"many\"\n",
            "resource db: `sample_rows` of a postgres resource: invalid type",
        ),
        ("protocol = \"postgres\"\npassword_file = nan\n", "resource db: `password_file` has no usable value"),
        // An SSH resource: PostgreSQL's keys are not its own, and the
        // target's host key must be pinned, one way.
        (
            "protocol = \"ssh\"\nkey_file = \"id\"\ntarget_host_key = \"ssh-ed25519 AAAA\"\n",
            "resource db: `password_env` is not a key of an ssh resource (it is a key of postgres resources)",
        ),
    ] {
        let path = config(dir.path(), &resource(extra));
        let output = run(bin(), &["up", "--config", path.to_str().unwrap()]);
        assert!(!output.status.success(), "{extra}");
        assert!(stderr(&output).contains(says), "{extra}: {}", stderr(&output));
    }
}

/// An SSH resource pins its target's host key: without a pin, or with
/// two, it is refused at start-up, saying how to pin it.
#[test]
fn up_refuses_an_ssh_resource_whose_target_key_is_not_pinned_once() {
    let dir = tempfile::tempdir().unwrap();
    let resource = |pin: &str| {
        format!(
            "[[resources]]\nname = \"box\"\nprotocol = \"ssh\"\nlisten = \"127.0.0.1:1\"\ntarget = \"127.0.0.1:2\"\nuser = \"ops\"\nkey_file = \"id\"\nclient_secret_env = \"S\"\n{pin}"
        )
    };
    for (pin, says) in [
        (
            "",
            "resource box: the target's host key must be pinned: set target_host_key (its public key line) or known_hosts",
        ),
        (
            "target_host_key = \"ssh-ed25519 AAAA\"\nknown_hosts = \"kh\"\n",
            "resource box: pin the target's host key with target_host_key or known_hosts, not both",
        ),
    ] {
        let path = config(dir.path(), &resource(pin));
        let output = run(bin(), &["up", "--config", path.to_str().unwrap()]);
        assert!(!output.status.success(), "{pin}");
        assert!(stderr(&output).contains(says), "{pin}: {}", stderr(&output));
    }
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

/// Files under `dir` whose name ends with `suffix`.
fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    proctor_tests::modes_under(dir)
        .into_iter()
        .filter(|(p, d, _, _)| !d && p.to_string_lossy().ends_with(suffix))
        .map(|e| e.0)
        .collect()
}

/// `proctor up` with the control store (`control.db`) and the dev issuer.
fn config_with_control(dir: &Path, extra: &str) -> PathBuf {
    config(
        dir,
        &format!(
            "{extra}\n[recorder]\nfsync_interval = \"20ms\"\n\n[identity.dev_issuer]\n\n[control]\nlisten = \"127.0.0.1:0\"\nstore = \"sqlite\"\nadmin_group = \"dba\"\n"
        ),
    )
}

/// Waits until the running Proctor's index holds its control session.
fn wait_for_index(data: &Path) {
    let started = std::time::Instant::now();
    loop {
        let found = run(bin(), &["search", "kind:session_start", "--data-dir", data.to_str().unwrap(), "--json"]);
        if stdout(&found).contains("session_start") {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "not indexed: {}", stderr(&found));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The red team's finding: the data dir's WAL, segments, manifests, index
/// and control.db were created world-readable (files 0644 in 0755
/// directories), so any local account could read every recording. Now
/// everything under it is Proctor's account's alone (0700 / 0600), and
/// what an older run left open is closed at start.
#[test]
fn the_data_dir_is_not_world_readable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Left by an older run: open to all.
    std::fs::create_dir_all(data.join("segments")).unwrap();
    std::fs::write(data.join("old.log"), "left behind").unwrap();
    for (path, mode) in [(&data, 0o755), (&data.join("segments"), 0o777), (&data.join("old.log"), 0o666)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let config = config_with_control(dir.path(), "");
    let mut child = spawn(bin(), &["up", "--config", config.to_str().unwrap()]);
    let log = collect_lines(child.stderr.take().unwrap());
    let seen = wait_for_line(&log, "proctor is up", Duration::from_secs(30));
    assert!(seen.iter().any(|l| l.contains("corrected the modes")), "{}", seen.join("\n"));
    wait_for_index(&data);
    let running = proctor_tests::modes_under(&data);
    signal(&child, libc::SIGTERM);
    assert!(wait_with_timeout(&mut child, Duration::from_secs(30)).success());
    let stopped = proctor_tests::modes_under(&data);

    for (path, is_dir, mode, _) in running.iter().chain(&stopped) {
        let want = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{} is {mode:04o}", path.display());
    }
    // What was checked: while running, the WAL, the index and the control
    // store; once stopped, the segments and manifests.
    let running: Vec<PathBuf> = running.into_iter().map(|e| e.0).collect();
    let stopped: Vec<PathBuf> = stopped.into_iter().map(|e| e.0).collect();
    assert!(running.iter().any(|p| p.extension().is_some_and(|e| e == "wal")), "{running:?}");
    assert!(running.iter().any(|p| p.starts_with(data.join("index")) && p.is_file()), "{running:?}");
    assert!(running.contains(&data.join("control.db")), "{running:?}");
    assert!(!files_ending(&data.join("segments"), ".parquet").is_empty(), "{stopped:?}");
    assert!(!files_ending(&data.join("manifests"), ".json").is_empty(), "{stopped:?}");
    assert!(stopped.contains(&data.join("keys").join("manifest-signing.pem")), "{stopped:?}");
    run_ok(bin(), &["verify", "--data-dir", data.to_str().unwrap()]);
}

/// An account to read as: (uid, its own gid), `postgres` (or `proctor`).
fn other_account() -> (u32, u32) {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root: it reads the data dir as other accounts");
    for name in proctor_tests::devcluster::ACCOUNTS {
        let cname = std::ffi::CString::new(name).unwrap();
        // SAFETY: getpwnam returns null or a pointer into static storage,
        // read at once on this thread.
        let entry = unsafe { libc::getpwnam(cname.as_ptr()) };
        if !entry.is_null() {
            return unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
        }
    }
    panic!("no account {:?} to read as: scripts/setup creates one", proctor_tests::devcluster::ACCOUNTS);
}

/// Runs `proctor args` as `uid`, in group `gid` and the supplementary
/// `groups`.
fn run_as(uid: u32, gid: u32, groups: &[u32], args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let groups = groups.to_vec();
    let mut command = std::process::Command::new(bin());
    command.args(args).env_remove("PROCTOR_CONFIG").env_remove("PROCTOR_SERVER");
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.output().unwrap()
}

/// Who read, as the recording says: each `recording_accessed` event's actor
/// and operation.
fn accesses(data: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    Reader::open(data)
        .unwrap()
        .for_each_event(|event| {
            if let EventBody::RecordingAccessed(a) = &event.body {
                found.push((a.actor.clone(), a.operation.clone()));
            }
            Ok(())
        })
        .unwrap();
    found
}

/// `data_dir_group`: its members read the recording with `sessions`,
/// `search` and `replay --data-dir` (their reads recorded, as theirs, from
/// the notes they leave, which they cannot list or read back); the keys'
/// private halves and the control store stay Proctor's; another account
/// reads nothing.
#[test]
fn data_dir_group_members_read_the_recording_and_no_one_else_does() {
    use std::os::unix::fs::PermissionsExt;
    const GROUP: u32 = 47_114;
    let (reader_uid, reader_gid) = other_account();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let data = dir.path().join("data");
    let config = config_with_control(dir.path(), &format!("data_dir_group = {GROUP}"));
    let up = || {
        let mut child = spawn(bin(), &["up", "--config", config.to_str().unwrap()]);
        let log = collect_lines(child.stderr.take().unwrap());
        wait_for_line(&log, "proctor is up", Duration::from_secs(30));
        (child, log)
    };
    let (mut child, _log) = up();
    wait_for_index(&data);

    let member = |args: &[&str]| run_as(reader_uid, reader_gid, &[GROUP], args);
    let dir_arg = data.to_str().unwrap();
    let listed = member(&["sessions", "--data-dir", dir_arg, "--json"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let session = stdout(&listed).lines().find(|l| l.contains("\"control\"")).map(str::to_string);
    let session: serde_json::Value = serde_json::from_str(&session.expect("the control session is listed")).unwrap();
    let found = member(&["search", "kind:session_start", "--data-dir", dir_arg, "--json"]);
    assert!(found.status.success(), "{}", stderr(&found));
    assert!(stdout(&found).contains("session_start"), "{}", stdout(&found));
    assert!(!stderr(&found).contains("WARN"), "a member's search is quiet: {}", stderr(&found));
    let id = session["session_id"].as_str().unwrap();
    let replayed = member(&["replay", id, "--data-dir", dir_arg]);
    assert!(replayed.status.success(), "{}", stderr(&replayed));
    // Someone else reads nothing.
    let stranger = run_as(reader_uid, reader_gid, &[], &["sessions", "--data-dir", dir_arg]);
    assert!(!stranger.status.success());
    assert!(stderr(&stranger).contains("Permission denied"), "{}", stderr(&stranger));
    let running = proctor_tests::modes_under(&data);
    signal(&child, libc::SIGTERM);
    assert!(wait_with_timeout(&mut child, Duration::from_secs(30)).success());

    // Stopped: a member's read leaves a note for the next Proctor, theirs
    // alone (and the group's Proctor's), which the group cannot list.
    let later = member(&["sessions", "--data-dir", dir_arg]);
    assert!(later.status.success(), "{}", stderr(&later));
    let notes = files_ending(&data.join("access"), ".json");
    assert_eq!(notes.len(), 1, "{notes:?}");
    let note = std::fs::symlink_metadata(&notes[0]).unwrap();
    assert_eq!(
        (std::os::unix::fs::MetadataExt::uid(&note), proctor_tests::mode_of(&notes[0])),
        (reader_uid, (0o640, GROUP)),
        "{}",
        notes[0].display()
    );
    let peek = std::process::Command::new("setpriv")
        .args([&format!("--reuid={reader_uid}"), &format!("--regid={reader_gid}"), &format!("--groups={GROUP}")])
        .args(["ls", data.join("access").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!peek.status.success(), "a member lists the notes: {}", stdout(&peek));
    let stopped = proctor_tests::modes_under(&data);

    // The modes, running and stopped.
    for (path, is_dir, mode, gid) in running.iter().chain(&stopped) {
        let relative = path.strip_prefix(&data).unwrap();
        let top = relative.components().next().map(|c| c.as_os_str().to_string_lossy().to_string());
        let want = match (top.as_deref(), is_dir) {
            (Some("access"), true) if relative.components().count() == 1 => 0o3730,
            (Some("access"), _) => continue,
            (_, false) if path.extension().is_some_and(|e| e == "lock") => 0o600,
            (None | Some("wal" | "segments" | "manifests" | "index" | "keys"), true) => 0o2750,
            (Some("keys"), false)
                if path.to_string_lossy().ends_with(".pem") && !path.ends_with("manifest-signing.pub.pem") =>
            {
                0o600
            }
            (Some("keys"), false) => 0o640,
            (None | Some("wal" | "segments" | "manifests" | "index"), false) => 0o640,
            (_, true) => 0o700,
            (_, false) => 0o600,
        };
        assert_eq!(*mode, want, "{} is {mode:04o}", path.display());
        if want & 0o070 != 0 {
            assert_eq!(*gid, GROUP, "{} belongs to group {gid}", path.display());
        }
    }
    let running: Vec<PathBuf> = running.into_iter().map(|e| e.0).collect();
    assert!(running.iter().any(|p| p.extension().is_some_and(|e| e == "wal")), "{running:?}");
    assert!(running.contains(&data.join("control.db")), "{running:?}");
    assert!(!files_ending(&data.join("segments"), ".parquet").is_empty());

    // The next Proctor records the note, as its writer's read.
    let (mut child, _log) = up();
    let started = std::time::Instant::now();
    while !files_ending(&data.join("access"), ".json").is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10), "the note was not recorded");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&child, libc::SIGTERM);
    assert!(wait_with_timeout(&mut child, Duration::from_secs(30)).success());
    let reader_name = ["postgres", "proctor"]
        .into_iter()
        .find(|name| {
            let cname = std::ffi::CString::new(*name).unwrap();
            // SAFETY: as in other_account.
            let entry = unsafe { libc::getpwnam(cname.as_ptr()) };
            !entry.is_null() && unsafe { (*entry).pw_uid } == reader_uid
        })
        .unwrap();
    let mut theirs: Vec<String> = accesses(&data)
        .into_iter()
        .filter(|(actor, _)| *actor == format!("local:{reader_name}"))
        .map(|a| a.1)
        .collect();
    theirs.sort();
    // sessions, search, replay, and sessions while stopped.
    assert_eq!(theirs, ["read", "search", "search", "search"]);
}

/// A path under the data dir that another account owns and the world can
/// read is not Proctor's to change: start-up is refused, naming it.
#[test]
fn up_refuses_a_world_readable_path_another_account_owns() {
    let (uid, gid) = other_account();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let stray = data.join("export.csv");
    std::fs::write(&stray, "someone's copy").unwrap();
    std::os::unix::fs::chown(&stray, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(&stray, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let config = config(dir.path(), "");
    let output = run(bin(), &["up", "--config", config.to_str().unwrap()]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains(&stray.display().to_string()) && message.contains("chown"), "{message}");
    assert!(!data.join("wal").exists(), "nothing was started");
}
