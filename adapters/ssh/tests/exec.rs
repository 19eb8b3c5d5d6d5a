//! Commands run with `exec` through the SSH adapter against a real OpenSSH
//! `sshd` (started here on a free loopback port, with its own host key and
//! Proctor's key authorized), driven by the OpenSSH `ssh` client: bytes
//! pass exactly both ways, stderr apart, the exit status through; each is
//! recorded (the real recorder, in a temp dir) before it passes; a wrong
//! password, a target host key that is not the pinned one, and a terminal
//! request are refused with a message the client prints.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proctor_devcluster::sshd::{self, Sshd};
use proctor_gateway_core::auth::SharedSecretAuthenticator;
use proctor_gateway_core::masking::Profiles;
use proctor_gateway_core::{EventSink, SinkError};
use proctor_recorder::reader::Reader;
use proctor_recorder::{Recorder, RecorderSettings};
use proctor_schemas::{EndReason, Event, EventBody, NewEvent, OutputStream};
use proctor_ssh::host_key::HostKey;
use proctor_ssh::{SshResource, SshTarget};
use russh::keys::PublicKey;
use tokio::net::TcpListener;

const SECRET: &str = "resource-secret";

/// The recorder as the gateway's sink; with `refuse_input`, it refuses
/// every batch holding bytes sent to a command (a disk full just then).
#[derive(Clone)]
struct Recording {
    sink: proctor_recorder::Sink,
    refuse_input: bool,
}

impl EventSink for Recording {
    async fn record(&self, event: NewEvent) -> Result<u64, SinkError> {
        self.record_batch(&[event]).await.map(|seqs| seqs[0])
    }

    async fn record_batch(&self, events: &[NewEvent]) -> Result<Vec<u64>, SinkError> {
        if self.refuse_input && events.iter().any(|e| matches!(e.body, EventBody::TerminalInput(_))) {
            return Err(SinkError("no space left on device".into()));
        }
        self.sink.append_slice(events).await.map_err(|e| SinkError(e.to_string()))
    }
}

fn keygen(path: &Path) {
    sshd::keygen(path).unwrap();
}

/// Proctor serving one SSH resource in front of a real sshd.
struct Gateway {
    dir: tempfile::TempDir,
    sshd: Sshd,
    port: u16,
    stop: tokio::sync::watch::Sender<bool>,
    served: tokio::task::JoinHandle<()>,
    recorder: Recorder,
    known_hosts: PathBuf,
    askpass: PathBuf,
    resource: Arc<SshResource>,
}

impl Gateway {
    /// With `pinned` as the target's host key (the sshd's own if `None`).
    async fn start(pinned: Option<PublicKey>) -> Gateway {
        Gateway::start_with(pinned, false, Profiles::none()).await
    }

    async fn start_with(pinned: Option<PublicKey>, refuse_input: bool, masking: Profiles) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let upstream_key = dir.path().join("proctor_upstream_key");
        keygen(&upstream_key);
        let sshd = Sshd::start(dir.path(), &upstream_key.with_extension("pub")).unwrap();
        let sshd_host_key = russh::keys::load_public_key(&sshd.host_key_file).unwrap();
        let data = dir.path().join("data");
        let recorder = Recorder::open(&data, &RecorderSettings::default()).unwrap();
        let host_key = HostKey::load_or_create(&data.join("keys")).unwrap();
        let target = SshTarget {
            address: format!("127.0.0.1:{}", sshd.port),
            user: Sshd::user(),
            key: Arc::new(russh::keys::load_secret_key(&upstream_key, None).unwrap()),
            host_keys: vec![pinned.unwrap_or(sshd_host_key)],
            connect_timeout: Duration::from_secs(10),
        };
        let resource = Arc::new(SshResource::new("box", target, &host_key));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(&known_hosts, format!("{}\n", host_key.known_hosts_line("127.0.0.1", port))).unwrap();
        let askpass = dir.path().join("askpass");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let auth = SharedSecretAuthenticator::new([("box".to_string(), SECRET.to_string())]);
        let served = tokio::spawn(proctor_ssh::serve(
            resource.clone(),
            listener,
            Recording { sink: recorder.sink(), refuse_input },
            Arc::new(auth),
            Arc::new(masking),
            None,
            stopped,
        ));
        Gateway { dir, sshd, port, stop, served, recorder, known_hosts, askpass, resource }
    }

    /// Runs OpenSSH's `ssh` through Proctor with `password`, `input` on its
    /// stdin: (stdout, stderr, exit code).
    async fn ssh(&self, password: &str, extra: &[&str], command: &str, input: &[u8]) -> (Vec<u8>, String, i32) {
        let mut ssh = self.ssh_command(password, extra, command);
        ssh.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = ssh.spawn().expect("ssh (openssh-client)");
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(&input).await;
        });
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("ssh finished in time")
            .unwrap();
        let _ = writer.await;
        (out.stdout, String::from_utf8_lossy(&out.stderr).into_owned(), out.status.code().unwrap_or(-1))
    }

    /// OpenSSH's `ssh` through Proctor, answering its prompt with `password`.
    fn ssh_command(&self, password: &str, extra: &[&str], command: &str) -> tokio::process::Command {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&self.askpass, format!("#!/bin/sh\nprintf '%s\\n' '{password}'\n")).unwrap();
        std::fs::set_permissions(&self.askpass, std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut ssh = tokio::process::Command::new("ssh");
        ssh.env("SSH_ASKPASS", &self.askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .args(["-F", "/dev/null", "-p", &self.port.to_string()])
            // First: OpenSSH keeps the first value an option is given.
            .args(extra)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "PreferredAuthentications=password,keyboard-interactive"])
            .args(["-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1"])
            .args(["-o", "ConnectTimeout=10"])
            .arg("agent@127.0.0.1")
            .args((!command.is_empty()).then_some(command))
            .kill_on_drop(true);
        ssh
    }

    /// Stops the gateway and returns the recorded SSH sessions' events.
    async fn recorded(self) -> Vec<Vec<Event>> {
        // The client has gone: its sessions end on their own first.
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.resource.sessions.live() > 0 {
            assert!(Instant::now() < deadline, "a session outlived its client");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(30), self.served).await.expect("the gateway stops").unwrap();
        self.recorder.close().unwrap();
        let reader = Reader::open(&self.dir.path().join("data")).unwrap();
        let sessions = reader
            .sessions()
            .unwrap()
            .into_iter()
            .filter(|s| s.protocol.as_deref() == Some("ssh"))
            .map(|s| reader.session_events(s.session_id).unwrap())
            .collect();
        drop(self.sshd);
        sessions
    }
}

fn end_of(events: &[Event]) -> Option<EndReason> {
    events.iter().find_map(|e| match &e.body {
        EventBody::SessionEnd(end) => Some(end.reason),
        _ => None,
    })
}

fn output(events: &[Event], stream: OutputStream) -> Vec<u8> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::TerminalOutput(out) if out.stream == stream => Some(out.data.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_passes_bytes_exactly_and_records_them_first() {
    let gateway = Gateway::start(None).await;
    // Every byte value, both ways, and more than one window's worth.
    let input: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let (stdout, stderr, code) = gateway.ssh(SECRET, &[], "cat; printf 'to stderr' >&2; exit 7", &input).await;
    assert_eq!(code, 7, "stderr: {stderr}");
    assert!(stdout == input, "stdout differs: {} bytes back of {}", stdout.len(), input.len());
    assert!(stderr.contains("to stderr"), "{stderr}");

    let sessions = gateway.recorded().await;
    assert_eq!(sessions.len(), 1);
    let events = &sessions[0];
    let EventBody::SessionStart(start) = &events[0].body else { panic!("starts with session_start: {events:?}") };
    assert_eq!(start.resource.as_deref(), Some("box"));
    assert!(events.iter().any(|e| matches!(&e.body, EventBody::Exec(exec)
        if exec.command == "cat; printf 'to stderr' >&2; exit 7")));
    let typed: Vec<u8> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::TerminalInput(input) => Some(input.data.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(typed == input, "recorded stdin: {} bytes of {}", typed.len(), input.len());
    assert!(output(events, OutputStream::Stdout) == input);
    assert_eq!(output(events, OutputStream::Stderr), b"to stderr");
    assert!(events.iter().any(|e| matches!(&e.body, EventBody::ExitStatus(exit) if exit.exit_code == Some(7))));
    assert_eq!(end_of(events), Some(EndReason::ClientClosed));
    for pair in events.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_and_recorded() {
    let gateway = Gateway::start(None).await;
    let (stdout, stderr, code) = gateway.ssh("wrong", &[], "echo never", b"").await;
    assert_ne!(code, 0);
    assert!(stdout.is_empty());
    assert!(stderr.contains("password authentication failed for user"), "the client is told why: {stderr}");
    let sessions = gateway.recorded().await;
    assert_eq!(sessions.len(), 1);
    assert_eq!(end_of(&sessions[0]), Some(EndReason::AuthFailed));
    assert!(!sessions[0].iter().any(|e| matches!(e.body, EventBody::Exec(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_host_key_other_than_the_pinned_one_refuses_the_session() {
    let other = tempfile::tempdir().unwrap();
    let path = other.path().join("other");
    keygen(&path);
    let pinned = russh::keys::load_public_key(path.with_extension("pub")).unwrap();
    let gateway = Gateway::start(Some(pinned.clone())).await;
    let (_, stderr, code) = gateway.ssh(SECRET, &[], "echo never", b"").await;
    assert_ne!(code, 0);
    let fingerprint = pinned.fingerprint(russh::keys::HashAlg::Sha256).to_string();
    assert!(stderr.contains("not the pinned") && stderr.contains(&fingerprint), "{stderr}");
    let sessions = gateway.recorded().await;
    assert_eq!(end_of(&sessions[0]), Some(EndReason::TargetError));
    let refused = sessions[0].iter().any(|e| {
        matches!(&e.body, EventBody::Error(report)
        if report.message.contains("not the pinned"))
    });
    assert!(refused, "{:?}", sessions[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_is_refused_and_the_refusal_recorded() {
    let gateway = Gateway::start(None).await;
    // -tt asks for a terminal whatever stdin is: refused (and OpenSSH,
    // told a terminal it forced cannot be had, closes the channel).
    let (_, stderr, code) = gateway.ssh(SECRET, &["-tt"], "echo ran", b"").await;
    assert!(stderr.contains("PTY allocation request failed"), "{stderr}");
    assert_ne!(code, 0, "{stderr}");
    let sessions = gateway.recorded().await;
    let refused = sessions[0].iter().any(|e| {
        matches!(&e.body, EventBody::Error(report)
        if report.message.contains("pty-req"))
    });
    assert!(refused, "{:?}", sessions[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credential_may_be_given_at_a_keyboard_interactive_prompt() {
    let gateway = Gateway::start(None).await;
    let (stdout, stderr, code) =
        gateway.ssh(SECRET, &["-o", "PreferredAuthentications=keyboard-interactive"], "printf %s kbd", b"").await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, b"kbd");
    let sessions = gateway.recorded().await;
    assert_eq!(end_of(&sessions[0]), Some(EndReason::ClientClosed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_port_is_recorded_and_proctor_keeps_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gateway = Gateway::start(None).await;
    let mut garbage = tokio::net::TcpStream::connect(("127.0.0.1", gateway.port)).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\0\0\0\0\xff\xff\xff\xff").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), garbage.read_to_end(&mut rest)).await.expect("closed");
    let (stdout, stderr, code) = gateway.ssh(SECRET, &[], "printf %s still", b"").await;
    assert_eq!((code, stdout.as_slice()), (0, &b"still"[..]), "{stderr}");
    let sessions = gateway.recorded().await;
    assert_eq!(sessions.len(), 2);
    assert!(sessions.iter().any(|s| end_of(s) == Some(EndReason::ClientError)), "{sessions:?}");
}

/// OpenSSH sends `env` (no reply wanted) before `exec` (a reply wanted):
/// the refusal of the one must not be taken for the answer to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_variable_is_refused_and_the_command_still_runs() {
    let gateway = Gateway::start(None).await;
    let (stdout, stderr, code) =
        gateway.ssh(SECRET, &["-o", "SetEnv=PROCTOR_TEST=secret-value"], "printf %s \"$PROCTOR_TEST\"", b"").await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, b"", "the variable was not passed on");
    let sessions = gateway.recorded().await;
    let refused = sessions[0].iter().any(|e| {
        matches!(&e.body, EventBody::Error(report)
        if report.message.contains("PROCTOR_TEST") && !report.message.contains("secret-value"))
    });
    assert!(refused, "{:?}", sessions[0]);
}

/// The target going away ends the session, recorded as the target's doing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_dying_mid_command_ends_the_session() {
    let mut gateway = Gateway::start(None).await;
    let mut child = gateway
        .ssh_command(SECRET, &[], "echo started; sleep 60")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the command runs (its first line is out), sshd and everything
    // under it go.
    let mut first = String::new();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    tokio::time::timeout(Duration::from_secs(30), tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut first))
        .await
        .expect("the command started")
        .unwrap();
    assert_eq!(first, "started\n");
    gateway.sshd.kill();
    let status =
        tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("the client is let go").unwrap();
    assert_ne!(status.code(), Some(0));
    let sessions = gateway.recorded().await;
    assert_eq!(end_of(&sessions[0]), Some(EndReason::TargetClosed), "{:?}", sessions[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forwarding_is_refused_and_recorded() {
    let gateway = Gateway::start(None).await;
    let (stdout, stderr, code) =
        gateway.ssh(SECRET, &["-o", "ExitOnForwardFailure=no", "-R", "0:127.0.0.1:9"], "printf %s ran", b"").await;
    assert_eq!((code, stdout.as_slice()), (0, &b"ran"[..]), "{stderr}");
    assert!(stderr.contains("forwarding failed"), "{stderr}");
    let sessions = gateway.recorded().await;
    let refused = sessions[0].iter().any(|e| {
        matches!(&e.body, EventBody::Error(report)
        if report.message.contains("remote port forwarding"))
    });
    assert!(refused, "{:?}", sessions[0]);
}

/// Nothing reaches the target unrecorded: bytes the recorder refuses are
/// not forwarded, and the session ends saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_the_recorder_refuses_never_reach_the_target() {
    let gateway = Gateway::start_with(None, true, Profiles::none()).await;
    let landed = gateway.dir.path().join("landed");
    let command = format!("cat > {}", landed.display());
    let (_, stderr, code) = gateway.ssh(SECRET, &[], &command, b"must-not-land\n").await;
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("could not record"), "the client is told why: {stderr}");
    let written = std::fs::read(&landed).unwrap_or_default();
    assert!(written.is_empty(), "the target got {:?}", String::from_utf8_lossy(&written));
    let sessions = gateway.recorded().await;
    assert_eq!(end_of(&sessions[0]), Some(EndReason::RecorderUnavailable), "{:?}", sessions[0]);
    assert!(sessions[0].iter().any(|e| matches!(&e.body, EventBody::Exec(exec) if exec.command == command)));
}

/// Several channels on one connection (OpenSSH's connection sharing): each
/// command is recorded on its own channel of the one session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_channels_share_one_connection_each_recorded_apart() {
    let gateway = Gateway::start(None).await;
    let control = gateway.dir.path().join("cm");
    let shared = |extra: &[&str]| {
        let mut args = vec!["-o".to_string(), format!("ControlPath={}", control.display())];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    // The master goes to the background once in: its output is not
    // waited for.
    let master = shared(&["-o", "ControlMaster=yes", "-o", "ControlPersist=30", "-N", "-f"]);
    let master: Vec<&str> = master.iter().map(String::as_str).collect();
    let status = gateway.ssh_command(SECRET, &master, "").stdout(Stdio::null()).stderr(Stdio::null()).status();
    let status = tokio::time::timeout(Duration::from_secs(60), status).await.expect("the master is in").unwrap();
    assert!(status.success());
    // The master listens on its socket once it is in the background.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !control.exists() {
        assert!(Instant::now() < deadline, "the master never listened on {}", control.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = shared(&["-o", "ControlMaster=no"]);
    let client: Vec<&str> = client.iter().map(String::as_str).collect();
    let (one, stderr, code) = gateway.ssh("unused", &client, "printf one", b"").await;
    assert_eq!((code, one.as_slice()), (0, &b"one"[..]), "{stderr}");
    let (two, stderr, code) = gateway.ssh("unused", &client, "printf two", b"").await;
    assert_eq!((code, two.as_slice()), (0, &b"two"[..]), "{stderr}");
    let exit = shared(&["-O", "exit"]);
    let exit: Vec<&str> = exit.iter().map(String::as_str).collect();
    gateway.ssh("unused", &exit, "", b"").await;
    let sessions = gateway.recorded().await;
    assert_eq!(sessions.len(), 1, "one connection, one session");
    let execs: Vec<(Option<u32>, String)> = sessions[0]
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Exec(exec) => Some((exec.channel_id, exec.command.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(execs.len(), 2, "{execs:?}");
    assert_ne!(execs[0].0, execs[1].0, "each command on its own channel: {execs:?}");
    assert_eq!(output(&sessions[0], OutputStream::Stdout), b"onetwo");
}

/// A session the deployment masks is refused, not passed raw: SSH output
/// is not masked yet, and a grant under a masking profile must not walk
/// around it through an SSH resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_must_be_masked_is_refused() {
    use proctor_gateway_core::masking::{MaskingConfig, MaskingKey, ProfileConfig};
    let config = MaskingConfig {
        default_profile: Some("pii".into()),
        profiles: [("pii".to_string(), ProfileConfig { detectors: vec!["all".into()], ..Default::default() })].into(),
        ..Default::default()
    };
    let masking = Profiles::new(&config, MaskingKey::new(vec![7; 32])).unwrap();
    let gateway = Gateway::start_with(None, false, masking).await;
    let landed = gateway.dir.path().join("landed");
    let (stdout, stderr, code) = gateway.ssh(SECRET, &[], &format!("echo ran > {}", landed.display()), b"").await;
    assert_ne!(code, 0);
    assert!(stdout.is_empty() && !landed.exists(), "nothing ran on the target");
    assert!(stderr.contains("does not mask SSH output yet"), "the client is told why: {stderr}");
    let sessions = gateway.recorded().await;
    assert_eq!(end_of(&sessions[0]), Some(EndReason::Policy), "{:?}", sessions[0]);
}
