//! `proctor demo` as a newcomer runs it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use proctor_recorder::reader::Reader;
use proctor_schemas::EventBody;
use proctor_tests::{collect_lines, devcluster, run_ok, signal, spawn, wait_for_line, wait_with_timeout};

const BIN: &str = env!("CARGO_BIN_EXE_proctor");

#[test]
fn demo_prints_its_urls_serves_both_and_seals_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo-data");
    let mut child = spawn(Path::new(BIN), &["demo", "--data-dir", data.to_str().unwrap(), "--json"]);
    let stdout = collect_lines(child.stdout.take().unwrap());
    let stderr = collect_lines(child.stderr.take().unwrap());
    let line = stdout.recv_timeout(Duration::from_secs(120)).expect("the demo printed its JSON line");
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    let postgres_url = ready["postgres_url"].as_str().unwrap().to_string();
    let target_url = ready["target_url"].as_str().unwrap().to_string();
    assert_eq!(ready["resource"], "demo");
    assert_eq!(std::fs::canonicalize(&data).unwrap(), Path::new(ready["data_dir"].as_str().unwrap()));
    assert!(postgres_url.ends_with("sslmode=require") && target_url.ends_with("sslmode=require"), "like with like");
    wait_for_line(&stderr, "psql \"postgres://", Duration::from_secs(10));

    let psql = devcluster::find_bindir().unwrap().join("psql");
    let query = |url: &str| {
        let output = Command::new(&psql)
            .args(["-X", "-At", "-d", url, "-c", "select count(*) from customers"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    assert_eq!(query(&postgres_url), "200");
    assert_eq!(query(&target_url), "200", "the target URL reaches the same data directly");

    // The SSH resource: the agent's certificate command line runs a
    // command with no prompt; the same straight to the throw-away sshd.
    assert_eq!(ready["ssh_resource"], "demo-ssh");
    let shell = |command: String| {
        Command::new("sh")
            .args(["-c", &command])
            .env_remove("SSH_AUTH_SOCK")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let ssh_command = ready["ssh_command"].as_str().expect("the demo's ssh command line").to_string();
    let via = shell(format!("{ssh_command} 'printf %s via-proctor'"));
    assert!(via.status.success(), "{}", String::from_utf8_lossy(&via.stderr));
    assert_eq!(via.stdout, b"via-proctor");
    let direct = shell(format!("{} 'printf %s direct'", ready["ssh_target_command"].as_str().unwrap()));
    assert!(direct.status.success(), "{}", String::from_utf8_lossy(&direct.stderr));
    assert_eq!(direct.stdout, b"direct");
    wait_for_line(&stderr, "demo-ssh", Duration::from_secs(10));

    // The agent's first look at customers shows masking at work.
    let first = Command::new(&psql)
        .args(["-X", "-At", "-d", &postgres_url, "-c", "select * from customers order by id limit 1"])
        .output()
        .unwrap();
    let row = String::from_utf8_lossy(&first.stdout).to_string();
    // (E-mail addresses as keyed tokens: equal addresses, equal tokens.)
    assert!(row.contains("|[email:tok_") && row.contains("]|************4444|"), "{row}");

    // The demo's statements are searchable while it runs.
    let started = std::time::Instant::now();
    loop {
        let output = run_ok(
            Path::new(BIN),
            &["search", "customers kind:statement", "--data-dir", data.to_str().unwrap(), "--json"],
        );
        let out = String::from_utf8_lossy(&output.stdout).to_string();
        if out.contains("select count(*) from customers") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(50), "not searchable: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The data dir is the demo's account's alone: the WAL, the index and the
    // control store now, the segments and manifests once stopped (below).
    let running = private_to_its_owner(&data);
    for wanted in [".wal", "control.db", "meta.json"] {
        assert!(running.iter().any(|p| p.to_string_lossy().ends_with(wanted)), "no {wanted} in {running:?}");
    }

    // ... and through the replay API, as the demo investigator.
    let replay_url = ready["replay_url"].as_str().unwrap();
    let token = ready["investigator_token"].as_str().unwrap();
    let output = run_ok(
        Path::new(BIN),
        &["search", "customers kind:statement", "--server", replay_url, "--token", token, "--json"],
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("select count(*) from customers"));

    // ... and in the console at the same URL: signing in as the demo
    // investigator through the dev issuer's form, then searching.
    assert_eq!(ready["console_url"].as_str(), Some(format!("{replay_url}/").as_str()));
    let jar = tempfile::NamedTempFile::new().unwrap();
    let jar = jar.path().to_str().unwrap();
    let curl = |args: &[&str]| -> String {
        let output = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-c", jar, "-b", jar, "-o", "/dev/stdout", "-D", "/dev/stdout"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    let location = |response: &str| -> String {
        let line = response.lines().find(|l| l.to_ascii_lowercase().starts_with("location:")).unwrap_or_default();
        line.split_once(':').map(|(_, v)| v.trim().to_string()).unwrap_or_else(|| panic!("no redirect: {response}"))
    };
    // Not signed in, a page answers 401 with the way to sign in (a script
    // follows it, adding the link's #fragment).
    let page = curl(&[&format!("{replay_url}/?q=customers")]);
    assert!(page.starts_with("HTTP/1.1 401"), "{page}");
    let to_login = page.split("id=sign-in-link href=\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_string();
    let to_issuer = location(&curl(&[&format!("{replay_url}{to_login}")]));
    let form = curl(&[&to_issuer]);
    assert!(form.contains("value=\"demo-investigator\""), "the form proposes the demo investigator: {form}");
    let (_, query) = to_issuer.split_once('?').unwrap();
    let posted = curl(&[
        "--data",
        &format!("{query}&subject=demo-investigator&groups=investigators"),
        &format!("{replay_url}/dev-issuer/authorize"),
    ]);
    let signed_in = curl(&[&location(&posted)]);
    assert_eq!(location(&signed_in), "/?q=customers", "{signed_in}");
    // The page holds the session's CSRF token, which its script sends with
    // every API request; the cookie alone reads nothing.
    let page = curl(&[&format!("{replay_url}/?q=customers")]);
    let csrf = page.split("name=\"proctor-csrf\" content=\"").nth(1).and_then(|r| r.split('"').next()).unwrap();
    let csrf_header = format!("X-Proctor-CSRF: {csrf}");
    let search = ["-G", "--data-urlencode", "q=customers kind:statement"];
    let found = curl(&[&search[..], &["-H", &csrf_header, &format!("{replay_url}/api/search")]].concat());
    assert!(found.contains("select count(*) from customers"), "{found}");
    let cookie_only = curl(&[&search[..], &[format!("{replay_url}/api/search").as_str()]].concat());
    assert!(cookie_only.starts_with("HTTP/1.1 403") && cookie_only.contains("X-Proctor-CSRF"), "{cookie_only}");

    // The URL carries the agent's grant; the approver revokes it, and a
    // session under it ends, saying why.
    let api_url = ready["api_url"].as_str().unwrap();
    let grant_id = ready["grant_id"].as_str().unwrap();
    assert!(postgres_url.starts_with(&format!("postgresql://{grant_id}:")), "{postgres_url}");
    let agent = ready["agent_token"].as_str().unwrap();
    let approver = ready["approver_token"].as_str().unwrap();
    let listed = run_ok(Path::new(BIN), &["grant", "list", "--api", api_url, "--token", agent, "--json"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains(grant_id));
    // Risky statements wait for a dba: held with a review id, then run once approved.
    let held = Command::new(&psql)
        .args(["-X", "-d", &postgres_url, "-c", "create index on orders (status)"])
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&held.stderr).to_string();
    assert!(message.contains("holding this statement for approval: review r_"), "{message}");
    let at = message.find("review r_").unwrap() + "review ".len();
    let review = &message[at..at + 18];
    run_ok(Path::new(BIN), &["review", "approve", review, "--api", api_url, "--token", approver]);
    let ran = Command::new(&psql)
        .args(["-X", "-d", &postgres_url, "-c", "create index on orders (status)"])
        .output()
        .unwrap();
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));

    let live = Command::new(&psql)
        .args(["-X", "-At", "-d", &postgres_url, "-c", "select count(*) from generate_series(1, 2000000000)"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    run_ok(
        Path::new(BIN),
        &["grant", "revoke", grant_id, "--api", api_url, "--token", approver, "--reason", "demo over"],
    );
    let ended = live.wait_with_output().unwrap();
    assert!(!ended.status.success());
    assert!(String::from_utf8_lossy(&ended.stderr).contains("revoked by demo-dba: demo over"));

    signal(&child, libc::SIGTERM);
    assert!(wait_with_timeout(&mut child, Duration::from_secs(60)).success());
    run_ok(Path::new(BIN), &["verify", "--data-dir", data.to_str().unwrap()]);
    let stopped = private_to_its_owner(&data);
    for wanted in [".parquet", ".json", "manifest-signing.pem"] {
        assert!(stopped.iter().any(|p| p.to_string_lossy().ends_with(wanted)), "no {wanted} in {stopped:?}");
    }
    let reader = Reader::open(&data).unwrap();
    let session = reader.sessions().unwrap().into_iter().find(|s| s.protocol.as_deref() == Some("postgres")).unwrap();
    let events = reader.session_events(session.session_id).unwrap();
    assert!(
        events.iter().any(|e| matches!(&e.body, EventBody::Statement(s) if s.sql == "select count(*) from customers"))
    );
    let ssh = reader.sessions().unwrap().into_iter().find(|s| s.protocol.as_deref() == Some("ssh")).unwrap();
    let events = reader.session_events(ssh.session_id).unwrap();
    assert!(events.iter().any(|e| matches!(&e.body, EventBody::Exec(x) if x.command == "printf %s via-proctor")));
    // The throw-away cluster is gone.
    let gone = Command::new(&psql).args(["-X", "-d", &target_url, "-c", "select 1"]).output().unwrap();
    assert!(!gone.status.success());
}

/// Checks that everything under `data` is for its owner alone (directories
/// 0700, files 0600), and returns the files.
fn private_to_its_owner(data: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for (path, is_dir, mode, _) in proctor_tests::modes_under(data) {
        assert_eq!(mode, if is_dir { 0o700 } else { 0o600 }, "{} is {mode:04o}", path.display());
        if !is_dir {
            files.push(path);
        }
    }
    files
}
