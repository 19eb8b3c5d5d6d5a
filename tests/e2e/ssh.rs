//! An SSH resource served by `proctor up`, in front of a real OpenSSH
//! `sshd`, used with the OpenSSH client: the host key Proctor creates and
//! `proctor key show` prints is what the client pins; a command's output
//! comes back; the session is recorded, verifiable and replayable.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use proctor_devcluster::sshd::{self, Sshd};
use proctor_tests::{collect_lines, run_ok, signal, spawn, stdout, wait_for_line, wait_with_timeout};

const BIN: &str = env!("CARGO_BIN_EXE_proctor");

fn bin() -> &'static Path {
    Path::new(BIN)
}

#[test]
fn an_ssh_resource_runs_a_command_recorded_and_pinned_by_its_host_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    sshd::keygen(&base.join("upstream")).unwrap();
    let target = Sshd::start(base, &base.join("upstream.pub")).unwrap();
    let target_key = std::fs::read_to_string(&target.host_key_file).unwrap();
    std::fs::write(base.join("target_known_hosts"), format!("[127.0.0.1]:{} {target_key}", target.port)).unwrap();
    std::fs::write(base.join("client-secret"), "ssh-secret\n").unwrap();
    let port = proctor_devcluster::free_port();
    let config = format!(
        "data_dir = \"data\"\n\n[[resources]]\nname = \"box\"\nprotocol = \"ssh\"\nlisten = \"127.0.0.1:{port}\"\n\
         target = \"127.0.0.1:{}\"\nuser = \"{}\"\nkey_file = \"upstream\"\nknown_hosts = \"target_known_hosts\"\n\
         client_secret_file = \"client-secret\"\n",
        target.port,
        Sshd::user()
    );
    std::fs::write(base.join("proctor.toml"), config).unwrap();
    let mut up = spawn(bin(), &["up", "--config", base.join("proctor.toml").to_str().unwrap()]);
    let log = collect_lines(up.stderr.take().unwrap());
    wait_for_line(&log, "proctor is up", Duration::from_secs(60));

    // The client pins the host key `proctor key show` prints.
    let data = base.join("data");
    let shown = run_ok(bin(), &["key", "show", "--data-dir", data.to_str().unwrap(), "--json"]);
    let shown: serde_json::Value = serde_json::from_str(&stdout(&shown)).unwrap();
    let host_key = shown["ssh_host_key"]["public_key"].as_str().expect("the SSH host key is shown").to_string();
    assert!(shown["ssh_host_key"]["fingerprint"].as_str().unwrap().starts_with("SHA256:"), "{shown}");
    let private = data.join("keys").join("ssh_host_ed25519_key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
    let known_hosts = base.join("known_hosts");
    std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_key}\n")).unwrap();
    let askpass = base.join("askpass");
    std::fs::write(&askpass, "#!/bin/sh\necho ssh-secret\n").unwrap();
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).unwrap();

    let out = std::process::Command::new("ssh")
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .args(["-F", "/dev/null", "-p", &port.to_string(), "-o", "StrictHostKeyChecking=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-o", "PreferredAuthentications=password", "ci-agent@127.0.0.1", "uname -s; echo done >&2"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Linux");
    assert!(String::from_utf8_lossy(&out.stderr).contains("done"), "{}", String::from_utf8_lossy(&out.stderr));
    // AES only: a client asking for ChaCha20-Poly1305 alone finds no cipher
    // in common; OpenSSH's default list settles on AES-CTR, and a client
    // asking for AES-GCM (either size) gets it.
    let with_ciphers = |ciphers: &str| {
        std::process::Command::new("ssh")
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .args(["-F", "/dev/null", "-v", "-p", &port.to_string(), "-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", &format!("Ciphers={ciphers}"), "-o", "PreferredAuthentications=password"])
            .args(["ci-agent@127.0.0.1", "true"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let chacha = with_ciphers("chacha20-poly1305@openssh.com");
    assert!(!chacha.status.success());
    assert!(
        String::from_utf8_lossy(&chacha.stderr).contains("no matching cipher"),
        "{}",
        String::from_utf8_lossy(&chacha.stderr)
    );
    let default = with_ciphers(
        "chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr,aes128-gcm@openssh.com,aes256-gcm@openssh.com",
    );
    assert!(default.status.success(), "{}", String::from_utf8_lossy(&default.stderr));
    assert!(
        String::from_utf8_lossy(&default.stderr).contains("cipher: aes128-ctr"),
        "{}",
        String::from_utf8_lossy(&default.stderr)
    );
    for gcm in ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"] {
        let chosen = with_ciphers(gcm);
        assert!(chosen.status.success(), "{gcm}: {}", String::from_utf8_lossy(&chosen.stderr));
        assert!(String::from_utf8_lossy(&chosen.stderr).contains(&format!("cipher: {gcm}")));
    }

    signal(&up, libc::SIGTERM);
    assert!(wait_with_timeout(&mut up, Duration::from_secs(60)).success());
    run_ok(bin(), &["verify", "--data-dir", data.to_str().unwrap()]);
    let listed = stdout(&run_ok(bin(), &["sessions", "--data-dir", data.to_str().unwrap(), "--json"]));
    let sessions: Vec<serde_json::Value> = listed.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let ssh = sessions.iter().find(|s| s["protocol"] == "ssh").expect("the SSH session is listed");
    assert_eq!(ssh["resource"], "box", "{ssh}");
    let id = ssh["session_id"].as_str().unwrap();
    let replayed = stdout(&run_ok(bin(), &["replay", id, "--data-dir", data.to_str().unwrap()]));
    assert!(replayed.contains("uname -s; echo done >&2"), "{replayed}");
    assert!(replayed.contains("Linux"), "{replayed}");
}

/// A CI agent asks for a grant on an SSH resource and connects with what
/// it gets: the grant's id as user, its credential as password, Proctor
/// pinned by the offer's `known_hosts` line. Revoking the grant ends the
/// live session within a second, the reason printed by the client, the
/// end recorded as `grant_revoked`; a short grant's session ends when it
/// expires, recorded as `grant_expired`.
/// `proctor up` serving SSH resource `box` in front of a throw-away `sshd`,
/// with grants from its control API for group `ci` (the agent `ci-deploy`),
/// under rule set `rules` if named (configured in `extra`).
struct Granting {
    dir: tempfile::TempDir,
    up: std::process::Child,
    log: std::sync::mpsc::Receiver<String>,
    port: u16,
    api: String,
    agent: String,
    _target: Sshd,
}

impl Granting {
    fn start(extra: &str, rules: Option<&str>) -> Granting {
        Granting::start_at(|_| extra.to_string(), rules)
    }

    /// [`Granting::start`], the configuration's `extra` written knowing the
    /// test's directory.
    fn start_at(extra: impl FnOnce(&Path) -> String, rules: Option<&str>) -> Granting {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        let extra = extra(base);
        sshd::keygen(&base.join("upstream")).unwrap();
        let target = Sshd::start(base, &base.join("upstream.pub")).unwrap();
        let target_key = std::fs::read_to_string(&target.host_key_file).unwrap();
        let (port, api_port) = (proctor_devcluster::free_port(), proctor_devcluster::free_port());
        let rules = rules.map(|r| format!("rules = \"{r}\"\n")).unwrap_or_default();
        let config = format!(
            "data_dir = \"data\"\n\n[identity.dev_issuer]\n\n[control]\nlisten = \"127.0.0.1:{api_port}\"\nadmin_group = \"security\"\n\n{extra}\n\
             [[policies]]\nname = \"agents\"\ngroups = [\"ci\"]\nresources = [\"box\"]\nmax_ttl = \"1h\"\n{rules}\n\
             [[resources]]\nname = \"box\"\nprotocol = \"ssh\"\nlisten = \"127.0.0.1:{port}\"\n\
             target = \"127.0.0.1:{}\"\nuser = \"{}\"\nkey_file = \"upstream\"\ntarget_host_key = \"{}\"\n",
            target.port,
            Sshd::user(),
            target_key.trim()
        );
        std::fs::write(base.join("proctor.toml"), config).unwrap();
        let mut up = spawn(bin(), &["up", "--config", base.join("proctor.toml").to_str().unwrap()]);
        let log = collect_lines(up.stderr.take().unwrap());
        wait_for_line(&log, "proctor is up", Duration::from_secs(60));
        let agent = proctor_tests::dev_token(bin(), &base.join("data"), "ci-deploy", "ci");
        Granting { dir, up, log, port, api: format!("http://127.0.0.1:{api_port}"), agent, _target: target }
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// A ten-minute grant for the agent with a certificate for a key of its
    /// own: the ready `ssh` command line.
    fn certified(&self, reason: &str) -> String {
        let key = self.dir.path().join(format!("agent_key_{reason}"));
        sshd::keygen(&key).unwrap();
        let public = format!("{}.pub", key.display());
        let args =
            ["grant", "request", "--resource", "box", "--ttl", "10m", "--reason", reason, "--ssh-public-key", &public];
        let granted = granting_control(&self.api, &self.agent, &args);
        granted["ssh_certificate"]["command"].as_str().expect("a certificate").to_string()
    }
}

/// `sh -c LINE` (an `ssh` command line of a certificate), without an agent.
fn sh(line: &str) -> std::process::Output {
    std::process::Command::new("sh")
        .args(["-c", line])
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A shell through `command` (under `-tt`), the login banner let pass,
/// each of `lines` typed a second apart: how it exited, what it said on
/// stderr.
fn typed_shell(command: &str, lines: &[&[u8]]) -> (std::process::ExitStatus, String) {
    typed_shell_keys(command, lines, None)
}

/// [`typed_shell`], each line typed key by key `per_key` apart if given
/// (else written whole, as a paste).
fn typed_shell_keys(command: &str, lines: &[&[u8]], per_key: Option<Duration>) -> (std::process::ExitStatus, String) {
    let mut shell = std::process::Command::new("sh")
        .args(["-c", &format!("{} -tt", command.replacen("ssh ", "ssh -F /dev/null ", 1))])
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut keys = shell.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    'lines: for line in lines {
        let pieces: Vec<&[u8]> = match per_key {
            Some(_) => line.chunks(1).collect(),
            None => vec![line],
        };
        for piece in pieces {
            // (A session that ended takes no more keys.)
            if std::io::Write::write_all(&mut keys, piece).is_err() {
                break 'lines;
            }
            if let Some(pause) = per_key {
                std::thread::sleep(pause);
            }
        }
        std::thread::sleep(Duration::from_millis(1000));
    }
    let status = wait_with_timeout(&mut shell, Duration::from_secs(30));
    let mut said = String::new();
    std::io::Read::read_to_string(shell.stderr.as_mut().unwrap(), &mut said).unwrap();
    (status, said)
}

/// `proctor search QUERY --json` over a data dir: its hits.
fn search_in(data: &Path, query: &str) -> Vec<serde_json::Value> {
    let found = stdout(&run_ok(bin(), &["search", query, "--data-dir", data.to_str().unwrap(), "--json"]));
    found.lines().map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()).collect()
}

/// `proctor ARGS --json` against the control API as `token`.
fn granting_control(api: &str, token: &str, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--json", "--api", api, "--token", token]);
    let out = run_ok(bin(), &all);
    serde_json::from_str::<serde_json::Value>(stdout(&out).trim()).unwrap()
}

#[test]
fn a_grant_opens_an_ssh_resource_until_it_is_revoked_or_expires() {
    let granting = Granting::start("", None);
    let (base, data, port, mut up, _log) =
        (granting.dir.path(), granting.data(), granting.port, granting.up, granting.log);
    let agent = granting.agent.clone();
    let control = |args: &[&str]| granting_control(&granting.api, &agent, args);
    let granted = control(&["grant", "request", "--resource", "box", "--ttl", "10m", "--reason", "deploy 4711"]);
    assert_eq!(granted["status"], "active", "{granted}");
    let id = granted["id"].as_str().unwrap().to_string();
    let credentials = &granted["credentials"];
    let offer = &credentials["offer"];
    assert_eq!((&offer["protocol"], &offer["user"]), (&serde_json::json!("ssh"), &serde_json::json!(id)), "{offer}");
    assert_eq!(offer["command"], format!("ssh -p {port} {id}@127.0.0.1"));
    let known_hosts = base.join("known_hosts");
    std::fs::write(&known_hosts, format!("{}\n", offer["known_hosts"].as_str().unwrap())).unwrap();
    let askpass = base.join("askpass");
    std::fs::write(&askpass, format!("#!/bin/sh\necho '{}'\n", credentials["password"].as_str().unwrap())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).unwrap();
    let ssh = |user: &str, command: &str| {
        let mut ssh = std::process::Command::new("ssh");
        ssh.env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .args(["-F", "/dev/null", "-p", &port.to_string(), "-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            // OpenSSH's own order: keyboard-interactive, then password.
            .args(["-o", "PreferredAuthentications=keyboard-interactive,password"])
            .args([&format!("{user}@127.0.0.1"), command])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        ssh
    };
    let out = ssh(&id, "printf %s granted").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"granted");

    // A live session ends within a second of the revocation, saying why.
    let mut live = ssh(&id, "echo started; sleep 60").spawn().unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(live.stdout.take().unwrap()), &mut first).unwrap();
    assert_eq!(first, "started\n");
    let revoked_at = std::time::Instant::now();
    control(&["grant", "revoke", &id, "--reason", "deploy done"]);
    let status = wait_with_timeout(&mut live, Duration::from_secs(10));
    let ended_in = revoked_at.elapsed();
    let mut said = String::new();
    std::io::Read::read_to_string(live.stderr.as_mut().unwrap(), &mut said).unwrap();
    assert!(!status.success());
    assert!(said.contains("revoked by ci-deploy: deploy done"), "{said}");
    assert!(ended_in < Duration::from_secs(10), "{ended_in:?}");
    println!("revocation to SSH session end: {} ms", ended_in.as_millis());

    // The dead credential is refused, saying so.
    let after = ssh(&id, "echo never").output().unwrap();
    assert!(!after.status.success());
    let said = String::from_utf8_lossy(&after.stderr);
    assert!(said.contains(&format!("grant {id} was revoked by ci-deploy")), "{said}");

    // A grant of a few seconds ends its session when it expires.
    let short = control(&["grant", "request", "--resource", "box", "--ttl", "3s", "--reason", "short"]);
    let short_id = short["id"].as_str().unwrap().to_string();
    std::fs::write(&askpass, format!("#!/bin/sh\necho '{}'\n", short["credentials"]["password"].as_str().unwrap()))
        .unwrap();
    let started = std::time::Instant::now();
    let expired = ssh(&short_id, "sleep 30").output().unwrap();
    assert!(!expired.status.success());
    assert!(started.elapsed() < Duration::from_secs(15), "the session outlived its grant");
    let said = String::from_utf8_lossy(&expired.stderr);
    assert!(said.contains("expired"), "{said}");

    signal(&up, libc::SIGTERM);
    assert!(wait_with_timeout(&mut up, Duration::from_secs(60)).success());
    let query = format!("grant:{id} kind:session_end end_reason:grant_revoked");
    let found = stdout(&run_ok(bin(), &["search", &query, "--data-dir", data.to_str().unwrap(), "--json"]));
    let hits: Vec<serde_json::Value> = found.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(hits.len(), 1, "the revoked session's end, found by its grant: {found}");
    assert_eq!((&hits[0]["grant_id"], &hits[0]["resource"]), (&serde_json::json!(id), &serde_json::json!("box")));
    let query = format!("grant:{short_id} kind:session_end end_reason:grant_expired");
    let found = stdout(&run_ok(bin(), &["search", &query, "--data-dir", data.to_str().unwrap(), "--json"]));
    assert_eq!(found.lines().count(), 1, "the expired session's end, found by its grant: {found}");
}

/// What a CI agent does: asks for a grant with its public key, gets a
/// short-lived certificate and a ready `ssh` command line, and runs it with
/// no password, non-interactively; a shell through it records the command
/// typed, found by `kind:command`; revoked, the certificate opens nothing.
#[test]
fn a_grant_certificate_opens_an_ssh_resource_without_a_password_until_revoked() {
    let granting = Granting::start("", None);
    let (base, data, _port, mut up, log) =
        (granting.dir.path(), granting.data(), granting.port, granting.up, granting.log);
    let agent = granting.agent.clone();
    let control = |args: &[&str]| granting_control(&granting.api, &agent, args);
    let key = base.join("agent_key");
    sshd::keygen(&key).unwrap();
    let public = format!("{}.pub", key.display());
    let granted = control(&[
        "grant",
        "request",
        "--resource",
        "box",
        "--ttl",
        "10m",
        "--reason",
        "deploy 4711",
        "--ssh-public-key",
        &public,
    ]);
    assert_eq!(granted["status"], "active", "{granted}");
    let id = granted["id"].as_str().unwrap().to_string();
    let certified = &granted["ssh_certificate"];
    let command = certified["command"].as_str().expect("a ready ssh command line").to_string();
    assert!(command.contains("BatchMode=yes") && command.contains(&format!("{id}@127.0.0.1")), "{command}");
    let certificate_file = certified["certificate_file"].as_str().unwrap();
    assert_eq!(certificate_file, format!("{}-{id}-cert.pub", key.display()));
    // OpenSSH reads it as a user certificate for the grant, signed by the
    // CA `key show` prints, valid until the grant ends.
    let listed = run_ok(Path::new("ssh-keygen"), &["-L", "-f", certificate_file]);
    let listed = stdout(&listed);
    assert!(listed.contains("user certificate") && listed.contains(&id), "{listed}");
    let shown = run_ok(bin(), &["key", "show", "--data-dir", data.to_str().unwrap(), "--json"]);
    let shown: serde_json::Value = serde_json::from_str(&stdout(&shown)).unwrap();
    let ca = shown["ssh_user_ca"]["fingerprint"].as_str().expect("the SSH user CA is shown").to_string();
    assert!(listed.contains(&ca), "{listed} / {ca}");

    // The command line as given, with a command appended; no password.
    let run = |remote: &str| sh(&format!("{command} {remote}"));
    let out = run("printf %s certified");
    assert!(out.status.success(), "{}\n{:?}", String::from_utf8_lossy(&out.stderr), log.try_iter().collect::<Vec<_>>());
    assert_eq!(out.stdout, b"certified");

    // A shell through the same command line: the command typed is recorded.
    let (status, said) = typed_shell(&command, &[b"echo typed-through-proctor\r", b"exit\r"]);
    assert!(status.success(), "{status:?}: {said}");

    control(&["grant", "revoke", &id, "--reason", "deploy done"]);
    let after = run("echo never");
    assert!(!after.status.success());
    let said = String::from_utf8_lossy(&after.stderr);
    assert!(said.contains(&format!("grant {id} was revoked by ci-deploy")), "{said}");

    signal(&up, libc::SIGTERM);
    assert!(wait_with_timeout(&mut up, Duration::from_secs(60)).success());
    let query = format!("grant:{id} kind:command typed-through-proctor");
    let found = stdout(&run_ok(bin(), &["search", &query, "--data-dir", data.to_str().unwrap(), "--json"]));
    let hits: Vec<serde_json::Value> = found.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(hits.len(), 1, "the typed command, found by its grant: {found}");
    // As a transcript: the terminal, the command typed, its output as the
    // screen showed it, the keystrokes as lengths.
    let session = hits[0]["session_id"].as_str().unwrap();
    let transcript = stdout(&run_ok(bin(), &["replay", session, "--data-dir", data.to_str().unwrap()]));
    assert!(transcript.contains("$ echo typed-through-proctor"), "{transcript}");
    assert!(
        transcript.contains("-> shell")
            && transcript.contains("bytes (keystrokes are recorded by length and keyed digest)"),
        "{transcript}"
    );
    assert!(
        transcript.lines().any(|l| l.contains("terminal_output") && l.contains("typed-through-proctor")),
        "{transcript}"
    );
    // The shell as asciicast: asciinema reads it back, the command's output
    // in it, the command typed as a marker.
    let cast = stdout(&run_ok(bin(), &["replay", session, "--asciicast", "--data-dir", data.to_str().unwrap()]));
    let lines: Vec<serde_json::Value> = cast.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["version"], 2, "{cast}");
    assert!(lines.iter().any(|l| l[1] == "m" && l[2] == "echo typed-through-proctor"), "{cast}");
    let file = base.join("shell.cast");
    std::fs::write(&file, &cast).unwrap();
    // (`asciinema cat` wants a terminal: `script` gives it one.)
    let played = std::process::Command::new("script")
        .args(["-qec", &format!("asciinema cat {}", file.display()), "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(played.status.success(), "{}", String::from_utf8_lossy(&played.stderr));
    let played = String::from_utf8_lossy(&played.stdout).to_string();
    // The command as echoed, and its output.
    assert!(played.matches("typed-through-proctor").count() >= 2, "{played}");
    // The certificate's issue is on record: which key, which certificate.
    let query = format!("grant:{id} kind:grant_certified");
    let found = stdout(&run_ok(bin(), &["search", &query, "--data-dir", data.to_str().unwrap(), "--json"]));
    assert_eq!(found.lines().count(), 1, "{found}");
    let fingerprint = stdout(&run_ok(Path::new("ssh-keygen"), &["-lf", &public]));
    let fingerprint = fingerprint.split_whitespace().nth(1).unwrap().to_string();
    assert!(found.contains(&fingerprint), "{found} / {fingerprint}");
}

/// SSH rules: a grant's exec commands matched by program and arguments: a
/// blocked one never reaches the target; a held one waits for an approver,
/// then the identical command runs once; typed at a shell, a matching line
/// is flagged.
#[test]
fn exec_commands_are_allowed_blocked_or_held_by_the_grants_ssh_rules() {
    let rules = "[ssh_rules.ops]\nblock = [\"rm -rf /\"]\nhold = [\"sudo\"]\napproval_group = \"dba\"\n";
    let granting = Granting::start(rules, Some("ops"));
    // (The log is read to its end as long as `granting.log` lives.)
    let (base, data, mut up, _log) = (granting.dir.path(), granting.data(), granting.up, granting.log);
    let agent = granting.agent.clone();
    let approver = proctor_tests::dev_token(bin(), &data, "ops-lead", "dba");
    let control = |token: &str, args: &[&str]| granting_control(&granting.api, token, args);
    let key = base.join("agent_key");
    sshd::keygen(&key).unwrap();
    let public = format!("{}.pub", key.display());
    let granted = control(
        &agent,
        &["grant", "request", "--resource", "box", "--ttl", "10m", "--reason", "ops", "--ssh-public-key", &public],
    );
    let command = granted["ssh_certificate"]["command"].as_str().expect("a certificate").to_string();
    let run = |remote: &str| sh(&format!("{command} {remote}"));
    let allowed = run("'printf %s allowed'");
    assert!(allowed.status.success(), "{}", String::from_utf8_lossy(&allowed.stderr));
    assert_eq!(allowed.stdout, b"allowed");

    // Blocked: refused with the rule's name, exit 126; the target never ran it.
    let marker = base.join("never-created");
    let blocked = run(&format!("'touch {} && rm -rf / --no-preserve-root'", marker.display()));
    assert_eq!(blocked.status.code(), Some(126));
    let said = String::from_utf8_lossy(&blocked.stderr);
    assert!(said.contains("Proctor: blocked by rule ops/block:rm -rf /"), "{said}");
    assert!(!marker.exists(), "a blocked command reached the target");

    // Held: a review to approve; then the identical command runs once.
    let held_command = "'sudo -n true; echo ran-$((40+2))'";
    let held = run(held_command);
    assert_eq!(held.status.code(), Some(126));
    let said = String::from_utf8_lossy(&held.stderr).to_string();
    assert!(said.contains("held for review r_") && said.contains("ops/hold:sudo"), "{said}");
    let at = said.find("review r_").unwrap() + "review ".len();
    let review = said[at..].split(|c: char| !c.is_ascii_alphanumeric() && c != '_').next().unwrap().to_string();
    let reviewed = control(&approver, &["review", "approve", &review, "--reason", "fine"]);
    assert_eq!(reviewed["status"], "approved", "{reviewed}");
    let ran = run(held_command);
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    assert_eq!(String::from_utf8_lossy(&ran.stdout).trim(), "ran-42");
    let again = run(held_command);
    assert_eq!(again.status.code(), Some(126), "an approval runs the command once");

    // Typed at a shell, a line the rules would hold has reached the shell as
    // it was typed: it is flagged, not enforced.
    let (status, said) = typed_shell(&command, &[b"sudo -n true; echo flagged-ok\r", b"exit\r"]);
    assert!(status.success(), "{status:?}: {said}");

    signal(&up, libc::SIGTERM);
    assert!(wait_with_timeout(&mut up, Duration::from_secs(60)).success());
    let search = |query: &str| search_in(&data, query);
    assert_eq!(search("kind:policy_decision outcome:block").len(), 1);
    assert_eq!(search("kind:policy_decision outcome:hold").len(), 2);
    let flagged = search("kind:policy_decision outcome:flag");
    assert_eq!(flagged.len(), 1, "{flagged:?}");
    assert_eq!(search("kind:command sudo").len(), 1);
    assert_eq!(search(&format!("kind:review_approved review:{review}")).len(), 1);
}

/// `end_session_on = "block"`: a line typed at a shell that a `block`
/// pattern matches ends the session (the shell goes with it), recorded as
/// ended by policy; a line matching a `hold` pattern is flagged only.
#[test]
fn a_typed_command_the_rules_block_ends_the_session() {
    let rules = "[ssh_rules.ops]\nblock = [\"forbidden-tool\"]\nhold = [\"sudo\"]\nend_session_on = \"block\"\n";
    let granting = Granting::start(rules, Some("ops"));
    let command = granting.certified("typed");
    let (data, mut up, _log) = (granting.data(), granting.up, granting.log);
    let (status, said) = typed_shell_keys(
        &command,
        &[b"sudo -n true; echo held-only\r", b"forbidden-tool --now; echo after-it\r", b"echo too-late\r"],
        Some(Duration::from_millis(20)),
    );
    assert!(!status.success(), "the session ended under the client");
    assert!(
        said.contains("Proctor: the session was ended by its rules at the command typed: forbidden-tool --now"),
        "{said}"
    );

    signal(&up, libc::SIGTERM);
    assert!(wait_with_timeout(&mut up, Duration::from_secs(60)).success());
    let search = |query: &str| search_in(&data, query);
    let flagged = search("kind:policy_decision outcome:flag");
    assert_eq!(flagged.len(), 2, "{flagged:?}");
    assert_eq!(search("kind:policy_decision rule:\"ops/block:forbidden-tool\"").len(), 1);
    assert_eq!(search("kind:session_end end_reason:policy").len(), 1);
    assert_eq!(search("kind:command too-late").len(), 0, "nothing typed after the end reached the target");
    // Typed key by key, the line was known at its Enter, which never
    // reached the shell: the command did not run.
    let reader = proctor_recorder::reader::Reader::open(&data).unwrap();
    let mut shown = Vec::new();
    reader
        .for_each_event(|event| {
            if let proctor_schemas::EventBody::TerminalOutput(out) = &event.body {
                shown.extend_from_slice(&out.data);
            }
            Ok(())
        })
        .unwrap();
    let shown = String::from_utf8_lossy(&shown);
    assert!(shown.contains("\nheld-only"), "{shown}");
    let typed = shown.find("echo after-it").expect("the line's echo") + "echo after-it".len();
    assert!(!shown[typed..].contains('\n'), "the shell took an Enter after the line: {shown}");
    assert!(!shown.contains("forbidden-tool: command not found") && !shown.contains("\nafter-it"), "{shown}");
}

/// Proctor killed (SIGKILL) in the middle of an SSH session: the client's
/// connection drops; started again, Proctor recovers the recording, the
/// session ends as `recovered` with every event it had accepted, and the
/// whole recording verifies.
#[test]
fn a_session_cut_by_sigkill_is_recovered_whole_and_verifies() {
    let granting = Granting::start("", None);
    let command = granting.certified("crash");
    let (base, data, mut up, _log) = (granting.dir.path(), granting.data(), granting.up, granting.log);
    let mut live = std::process::Command::new("sh")
        .args(["-c", &format!("{command} 'echo before-the-kill; sleep 60'")])
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(live.stdout.take().unwrap()), &mut first).unwrap();
    assert_eq!(first, "before-the-kill\n");
    signal(&up, libc::SIGKILL);
    let _ = up.wait();
    // The client is cut off with Proctor.
    assert!(!wait_with_timeout(&mut live, Duration::from_secs(30)).success());

    // Started again: the recording is recovered, then sealed on the way out.
    let mut again = spawn(bin(), &["up", "--config", base.join("proctor.toml").to_str().unwrap()]);
    let log = collect_lines(again.stderr.take().unwrap());
    wait_for_line(&log, "proctor is up", Duration::from_secs(60));
    signal(&again, libc::SIGTERM);
    assert!(wait_with_timeout(&mut again, Duration::from_secs(60)).success());
    run_ok(bin(), &["verify", "--data-dir", data.to_str().unwrap()]);
    let found = stdout(&run_ok(
        bin(),
        &[
            "search",
            "kind:session_end end_reason:recovered protocol:ssh",
            "--data-dir",
            data.to_str().unwrap(),
            "--json",
        ],
    ));
    let hits: Vec<serde_json::Value> = found.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(hits.len(), 1, "{found}");
    let session = hits[0]["session_id"].as_str().unwrap();
    let replayed = stdout(&run_ok(bin(), &["replay", session, "--data-dir", data.to_str().unwrap(), "--json"]));
    assert!(replayed.contains("echo before-the-kill; sleep 60"), "the exec is there: {replayed}");
    assert!(replayed.contains("before-the-kill\\n"), "its output is there: {replayed}");
}

/// File rules (`sftp OPERATION PATH` patterns) decide each SFTP request
/// and legacy scp's paths: reads pass; a blocked removal never reaches the
/// target; a held upload is refused with its review named on the client's
/// stderr, then runs once when approved; scp in both modes is held as the
/// upload it is.
#[test]
fn file_operations_are_allowed_blocked_or_held_by_the_grants_ssh_rules() {
    let rules = |base: &Path| {
        let r = base.join("remote").display().to_string();
        format!(
            "[ssh_rules.files]\nblock = [\"sftp remove {r}/keep/*\"]\nhold = [\"sftp write {r}/guarded/*\"]\napproval_group = \"dba\"\n"
        )
    };
    let granting = Granting::start_at(rules, Some("files"));
    let command = granting.certified("files");
    let (base, data, mut up, _log) = (granting.dir.path(), granting.data(), granting.up, granting.log);
    let approver = proctor_tests::dev_token(bin(), &data, "ops-lead", "dba");
    let remote = base.join("remote");
    std::fs::create_dir_all(remote.join("keep")).unwrap();
    std::fs::create_dir_all(remote.join("guarded")).unwrap();
    std::fs::write(remote.join("keep/kept.txt"), "kept\n").unwrap();
    let local = base.join("local.txt");
    std::fs::write(&local, "uploaded\n").unwrap();
    let (r, l) = (remote.display().to_string(), local.display().to_string());
    let guarded_rule = format!("files/hold:sftp write {r}/guarded/*");
    // The certificate's command line, as sftp and scp take it (`-P`).
    let (prefix, destination) = command.rsplit_once(' ').unwrap();
    let client = |program: &str| prefix.replacen("ssh ", &format!("{program} "), 1).replace(" -p ", " -P ");
    let batch = base.join("batch");
    let sftp = |lines: String| {
        std::fs::write(&batch, lines).unwrap();
        sh(&format!("{} -b {} {destination}", client("sftp"), batch.display()))
    };
    let said = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).to_string();

    let got = sftp(format!("get {r}/keep/kept.txt {}/back.txt\n", base.display()));
    assert!(got.status.success(), "{}", said(&got));
    assert_eq!(std::fs::read_to_string(base.join("back.txt")).unwrap(), "kept\n");

    let removed = sftp(format!("rm {r}/keep/kept.txt\n"));
    assert!(!removed.status.success());
    assert!(
        said(&removed).contains(&format!("Proctor: blocked by rule files/block:sftp remove {r}/keep/*")),
        "{}",
        said(&removed)
    );
    assert!(remote.join("keep/kept.txt").exists(), "a blocked removal reached the target");

    let put = format!("put {l} {r}/guarded/new.txt\n");
    let held = sftp(put.clone());
    assert!(!held.status.success());
    let told = said(&held);
    assert!(
        told.contains("held for review r_") && told.contains(&format!("files/hold:sftp write {r}/guarded/*")),
        "{told}"
    );
    assert!(!remote.join("guarded/new.txt").exists(), "a held upload reached the target");
    let at = told.find("review r_").unwrap() + "review ".len();
    let review = told[at..].split(|c: char| !c.is_ascii_alphanumeric() && c != '_').next().unwrap().to_string();
    let reviewed = granting_control(&granting.api, &approver, &["review", "approve", &review, "--reason", "fine"]);
    assert_eq!(reviewed["status"], "approved", "{reviewed}");
    assert_eq!(reviewed["kind"], "file", "{reviewed}");
    assert_eq!(reviewed["text"], format!("sftp write {r}/guarded/new.txt"), "{reviewed}");
    let ran = sftp(put.clone());
    assert!(ran.status.success(), "{}", said(&ran));
    assert_eq!(std::fs::read_to_string(remote.join("guarded/new.txt")).unwrap(), "uploaded\n");
    std::fs::remove_file(remote.join("guarded/new.txt")).unwrap();
    let again = sftp(put);
    assert!(!again.status.success(), "an approval runs the operation once");
    assert!(!remote.join("guarded/new.txt").exists());

    // A rename into the guarded directory is the write it amounts to.
    std::fs::write(remote.join("free.txt"), "free\n").unwrap();
    let renamed = sftp(format!("rename {r}/free.txt {r}/guarded/moved.txt\n"));
    assert!(!renamed.status.success());
    assert!(said(&renamed).contains(&guarded_rule), "{}", said(&renamed));
    assert!(remote.join("free.txt").exists() && !remote.join("guarded/moved.txt").exists());

    // SFTP run as a command under another name is read as SFTP all the same.
    let server = base.join("file-server");
    std::fs::copy("/usr/lib/openssh/sftp-server", &server).unwrap();
    std::fs::write(&batch, format!("put {l} {r}/guarded/exec.txt\n")).unwrap();
    let renamed_server =
        sh(&format!("{} -s {} -b {} {destination}", client("sftp"), server.display(), batch.display()));
    assert!(!renamed_server.status.success());
    assert!(said(&renamed_server).contains(&guarded_rule), "{}", said(&renamed_server));
    assert!(!remote.join("guarded/exec.txt").exists());

    // scp, legacy (its server side run as a command) and over SFTP.
    for (mode, name) in [("-O", "legacy.txt"), ("-s", "sftp.txt")] {
        let copied = sh(&format!("{} {mode} {l} {destination}:{r}/guarded/{name}", client("scp")));
        assert!(!copied.status.success(), "scp {mode}");
        assert!(said(&copied).contains(&guarded_rule), "scp {mode}: {}", said(&copied));
        assert!(!remote.join("guarded").join(name).exists(), "scp {mode} reached the target");
    }

    signal(&up, libc::SIGTERM);
    assert!(wait_with_timeout(&mut up, Duration::from_secs(60)).success());
    let search = |query: &str| search_in(&data, query);
    assert_eq!(search("kind:policy_decision outcome:block").len(), 1);
    assert_eq!(search("kind:policy_decision outcome:hold").len(), 6);
    assert_eq!(search(&format!("kind:review_approved review:{review}")).len(), 1);
    // The approved upload, recorded with the bytes it wrote, once.
    let files = search("kind:file_transfer");
    let hits: Vec<String> = files.iter().map(|hit| hit.to_string()).collect();
    let uploaded = hits.iter().filter(|hit| hit.contains("guarded/new.txt") && hit.contains("\"bytes\":9,")).count();
    assert_eq!(uploaded, 1, "{hits:?}");
}

/// Output no terminal shows keeps its length, so a keyed token replacing a
/// short e-mail address reaches the client and the recording cut; the
/// `masking_applied` event after it keeps the whole token, so
/// `proctor search --value` still finds who was shown the address, and the
/// address itself is stored nowhere. A command line holding it is recorded
/// masked too; held by a rule, it is refused rather than shown masked to a
/// reviewer, who could not see what they approve.
#[test]
fn a_value_masked_in_place_is_still_found_by_the_value() {
    let masking = "[masking]\ndefault_profile = \"pii\"\n\n[masking.profiles.pii]\ndetectors = [\"email\"]\n\
                   actions = { email = \"token\" }\n\n[ssh_rules.guard]\nhold = [\"sudo\"]\n";
    let granting = Granting::start(masking, Some("guard"));
    let command = granting.certified("masked");
    let (data, mut up) = (granting.data(), granting.up);
    let held = sh(&format!("{command} 'sudo echo ada@example.com'"));
    assert!(!held.status.success());
    let told = String::from_utf8_lossy(&held.stderr).to_string();
    assert!(told.contains("masking hides part of it from its reviewers"), "{told}");
    // (This command line does not hold the address: the output's masking
    // is what is shown.)
    let ran = sh(&format!("{command} \"printf 'mail %s@%s here\\\\n' ada example.com\""));
    let shown = String::from_utf8_lossy(&ran.stdout).to_string();
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    assert!(!shown.contains("ada@example.com") && shown.contains("[email:tok_"), "{shown:?}");
    assert_eq!(shown.len(), "mail ada@example.com here\n".len(), "the output kept its length: {shown:?}");
    assert!(shown.starts_with("mail [email:tok_") && shown.ends_with(" here\n"), "{shown:?}");
    signal(&up, libc::SIGTERM);
    assert!(wait_with_timeout(&mut up, Duration::from_secs(60)).success());
    let data = data.to_str().unwrap();
    let value = |value: &str| -> Vec<serde_json::Value> {
        let found = stdout(&run_ok(bin(), &["search", "--value", value, "--data-dir", data, "--json"]));
        found.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    };
    let hits = value("Ada@Example.com");
    let kinds: Vec<&str> = hits.iter().map(|h| h["kind"].as_str().unwrap()).collect();
    // The held command (masked) and its masking, the output's masking.
    assert_eq!(kinds.iter().filter(|k| **k == "exec").count(), 1, "{hits:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "masking_applied").count(), 2, "{hits:?}");
    assert!(hits.iter().all(|h| h["subject"] == "ci-deploy"), "{hits:?}");
    assert!(value("nobody@example.com").is_empty());
    let decisions =
        stdout(&run_ok(bin(), &["search", "kind:policy_decision outcome:block", "--data-dir", data, "--json"]));
    assert_eq!(decisions.lines().count(), 1, "{decisions}");
    let session = hits[0]["session_id"].as_str().unwrap();
    let replayed = stdout(&run_ok(bin(), &["replay", session, "--data-dir", data, "--json"]));
    assert!(replayed.contains("[email:tok_") && !replayed.contains("ada@example.com"), "{replayed}");
}

/// A rule set that opens no shells, and (having patterns) no SFTP: both
/// refused and the refusals recorded, while exec commands run.
#[test]
fn a_rule_set_may_refuse_shells_and_sftp() {
    let rules = "[ssh_rules.locked]\nshells = false\nhold = [\"sudo\"]\n";
    let granting = Granting::start(rules, Some("locked"));
    let command = granting.certified("locked");
    let (base, data, mut up, _log) = (granting.dir.path(), granting.data(), granting.up, granting.log);
    let ran = sh(&format!("{command} 'printf %s ran'"));
    assert_eq!(ran.stdout, b"ran", "{}", String::from_utf8_lossy(&ran.stderr));
    let shell = sh(&format!("{} -tt", command.replacen("ssh ", "ssh -F /dev/null ", 1)));
    assert!(!shell.status.success());
    assert!(String::from_utf8_lossy(&shell.stderr).contains("shell request failed"), "{shell:?}");
    let batch = base.join("batch");
    std::fs::write(&batch, "pwd\n").unwrap();
    let sftp_command = command.replacen("ssh ", "sftp -b BATCH ", 1).replace("BATCH", batch.to_str().unwrap());
    // (`sftp` takes the port as -P.)
    let sftp = sh(&sftp_command.replace(" -p ", " -P "));
    assert!(!sftp.status.success(), "{}", String::from_utf8_lossy(&sftp.stdout));
    signal(&up, libc::SIGTERM);
    assert!(wait_with_timeout(&mut up, Duration::from_secs(60)).success());
    for rule in ["locked/shells", "locked/sftp"] {
        let found = stdout(&run_ok(
            bin(),
            &[
                "search",
                &format!("kind:policy_decision outcome:block rule:\"{rule}\""),
                "--data-dir",
                data.to_str().unwrap(),
                "--json",
            ],
        ));
        assert_eq!(found.lines().count(), 1, "{rule}: {found}");
    }
}

/// Local port forwarding (`ssh -L`) to a destination the grant's rules
/// list: the connection passes, recorded as a `port_forward` event asked
/// and allowed, then one closing it with the bytes each way; to any other
/// destination it is refused and the refusal recorded.
#[test]
fn forwarding_reaches_only_the_destinations_the_rules_list() {
    // An echo server: the forwarded connection's destination.
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in echo.incoming().flatten() {
            let mut stream = stream;
            let mut reader = stream.try_clone().unwrap();
            let _ = std::io::copy(&mut reader, &mut stream);
        }
    });
    let rules = format!("[ssh_rules.fwd]\nforward = [\"127.0.0.1:{echo_port}\"]\n");
    let granting = Granting::start(&rules, Some("fwd"));
    let command = granting.certified("fwd");
    let (data, mut up, _log) = (granting.data(), granting.up, granting.log);
    let (allowed_port, refused_port) = (proctor_devcluster::free_port(), proctor_devcluster::free_port());
    let forwards =
        format!("-N -o ExitOnForwardFailure=no -L {allowed_port}:127.0.0.1:{echo_port} -L {refused_port}:127.0.0.1:22");
    let mut tunnel = std::process::Command::new("sh")
        .args(["-c", &format!("exec {}", command.replacen("ssh ", &format!("ssh {forwards} "), 1))])
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let connect = |port: u16| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(stream) => return stream,
                Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => panic!("ssh -L never listened on {port}: {e}"),
            }
        }
    };
    let mut through = connect(allowed_port);
    through.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    std::io::Write::write_all(&mut through, b"ping").unwrap();
    let mut answer = [0u8; 4];
    std::io::Read::read_exact(&mut through, &mut answer).unwrap();
    assert_eq!(&answer, b"ping");
    drop(through);
    // The refused one: closed without a byte.
    let mut refused = connect(refused_port);
    refused.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut nothing = Vec::new();
    let _ = std::io::Read::read_to_end(&mut refused, &mut nothing);
    assert!(nothing.is_empty());
    std::thread::sleep(Duration::from_millis(500));
    let _ = tunnel.kill();
    let _ = tunnel.wait();
    signal(&up, libc::SIGTERM);
    assert!(wait_with_timeout(&mut up, Duration::from_secs(60)).success());
    let search = |query: &str| search_in(&data, query);
    assert_eq!(search("kind:port_forward outcome:allow").len(), 1);
    assert_eq!(search("kind:port_forward outcome:block").len(), 1);
    let session = search("kind:port_forward outcome:allow")[0]["session_id"].as_str().unwrap().to_string();
    let replayed = stdout(&run_ok(bin(), &["replay", &session, "--data-dir", data.to_str().unwrap(), "--json"]));
    let closed: Vec<serde_json::Value> = replayed
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["kind"] == "port_forward" && e["ref_seq"].is_u64())
        .collect();
    assert_eq!(closed.len(), 1, "{replayed}");
    assert_eq!(
        (&closed[0]["bytes_to_target"], &closed[0]["bytes_to_client"]),
        (&serde_json::json!(4), &serde_json::json!(4))
    );
}
