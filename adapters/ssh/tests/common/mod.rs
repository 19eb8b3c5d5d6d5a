//! The harness of the SSH adapter's tests: Proctor serving one SSH resource
//! in front of a real OpenSSH `sshd` (started on a free loopback port, with
//! its own host key and Proctor's key authorized), the real recorder in a
//! temp dir, and OpenSSH's `ssh` as the client.
#![allow(dead_code)]

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

pub const SECRET: &str = "resource-secret";

/// The recorder as the gateway's sink; with `refuse_input`, it refuses
/// every batch holding bytes sent to a command (a disk full just then).
#[derive(Clone)]
pub struct Recording {
    pub sink: proctor_recorder::Sink,
    pub refuse_input: bool,
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

pub fn keygen(path: &Path) {
    sshd::keygen(path).unwrap();
}

/// Proctor serving one SSH resource in front of a real sshd.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub sshd: Sshd,
    pub port: u16,
    pub stop: tokio::sync::watch::Sender<bool>,
    pub served: tokio::task::JoinHandle<()>,
    pub recorder: Recorder,
    pub known_hosts: PathBuf,
    pub askpass: PathBuf,
    pub resource: Arc<SshResource>,
}

impl Gateway {
    /// With `pinned` as the target's host key (the sshd's own if `None`).
    pub async fn start(pinned: Option<PublicKey>) -> Gateway {
        Gateway::start_with(pinned, false, Profiles::none()).await
    }

    pub async fn start_with(pinned: Option<PublicKey>, refuse_input: bool, masking: Profiles) -> Gateway {
        Gateway::start_full(pinned, refuse_input, masking, "").await
    }

    /// With `sshd_extra` lines in the target's `sshd_config`.
    pub async fn start_full(
        pinned: Option<PublicKey>,
        refuse_input: bool,
        masking: Profiles,
        sshd_extra: &str,
    ) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let upstream_key = dir.path().join("proctor_upstream_key");
        keygen(&upstream_key);
        let sshd = Sshd::start_with(dir.path(), &upstream_key.with_extension("pub"), sshd_extra).unwrap();
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
    pub async fn ssh(&self, password: &str, extra: &[&str], command: &str, input: &[u8]) -> (Vec<u8>, String, i32) {
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
    pub fn ssh_command(&self, password: &str, extra: &[&str], command: &str) -> tokio::process::Command {
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
    pub async fn recorded(self) -> Vec<Vec<Event>> {
        self.recorded_in_dir().await.0
    }

    /// As [`Gateway::recorded`], with the temp dir the data dir is in, kept.
    pub async fn recorded_in_dir(self) -> (Vec<Vec<Event>>, tempfile::TempDir) {
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
        (sessions, self.dir)
    }
}

pub fn end_of(events: &[Event]) -> Option<EndReason> {
    events.iter().find_map(|e| match &e.body {
        EventBody::SessionEnd(end) => Some(end.reason),
        _ => None,
    })
}

pub fn output(events: &[Event], stream: OutputStream) -> Vec<u8> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::TerminalOutput(out) if out.stream == stream => Some(out.data.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Masking profiles whose default (`pii`) turns every detector on: every
/// session is masked.
pub fn masked_by_default() -> Profiles {
    use proctor_gateway_core::masking::{MaskingConfig, MaskingKey, ProfileConfig};
    let config = MaskingConfig {
        default_profile: Some("pii".into()),
        profiles: [("pii".to_string(), ProfileConfig { detectors: vec!["all".into()], ..Default::default() })].into(),
        ..Default::default()
    };
    Profiles::new(&config, MaskingKey::new(vec![7; 32])).unwrap()
}
