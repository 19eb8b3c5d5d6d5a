//! Interactive terminals through the SSH adapter, against a real OpenSSH
//! `sshd` and its login shell, driven by OpenSSH's `ssh -tt` (a terminal on
//! the target whatever the client's stdin is) with keys written to it as a
//! person types them: the terminal request, the shell and every keystroke
//! are recorded before they pass, keystrokes as their length and a keyed
//! digest only; the command lines typed are recovered from the echo, edits
//! applied; a password typed at a prompt that does not echo is in no file
//! of the data dir and in no event.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use proctor_schemas::{EndReason, Event, EventBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `ssh -tt` through Proctor, typed at and read from as it runs.
struct Interactive {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    output: Arc<Mutex<Vec<u8>>>,
    /// How much of the output earlier waits consumed.
    seen: usize,
}

impl Interactive {
    async fn start(gateway: &Gateway) -> Interactive {
        let mut ssh = gateway.ssh_command(SECRET, &["-tt"], "");
        ssh.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = ssh.spawn().expect("ssh (openssh-client)");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let sink = output.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Interactive { child, stdin, output, seen: 0 }
    }

    async fn type_keys(&mut self, keys: &[u8]) {
        self.stdin.write_all(keys).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Waits until the output shows `text` after what earlier waits saw.
    async fn wait_for(&mut self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            {
                let output = self.output.lock().unwrap();
                let fresh = &output[self.seen..];
                if let Some(at) = fresh.windows(text.len()).position(|w| w == text.as_bytes()) {
                    self.seen += at + text.len();
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{text:?} never showed; the terminal showed {:?}",
                    String::from_utf8_lossy(&output)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the terminal has shown something and then nothing more
    /// for a while (the login banner and the first prompt).
    async fn settled(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let len = self.output.lock().unwrap().len();
            if len > 0 && len == last {
                self.seen = len;
                return;
            }
            assert!(Instant::now() < deadline, "the shell never settled");
            last = len;
        }
    }

    async fn exited(mut self) {
        tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.expect("ssh ended after exit").unwrap();
    }
}

fn commands(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Command(c) => Some(c.command.clone()),
            _ => None,
        })
        .collect()
}

/// Every file under `dir`, read whole.
fn files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files(&path));
        } else {
            found.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_records_commands_from_their_echo_and_never_a_password_typed_without_echo() {
    const PASSWORD: &str = "hunter2-XYZZY-secret";
    let gateway = Gateway::start(None).await;
    let mut shell = Interactive::start(&gateway).await;
    shell.settled().await;
    // A prompt of our own, quoted so that its echo is not the prompt.
    shell.type_keys(b"export PS1='P''> '\r").await;
    shell.wait_for("P> ").await;
    // Typed with a slip, fixed with backspaces, as a person would.
    shell.type_keys(b"echo helo").await;
    shell.wait_for("helo").await;
    shell.type_keys(b"\x7f\x7f").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    shell.type_keys(b"llo-world\r").await;
    shell.wait_for("\rhello-world\r\n").await;
    shell.wait_for("P> ").await;
    // A prompt that turns echo off.
    shell.type_keys(b"read -s -p 'Pass''word: ' pw; echo \"got ${#pw}\"\r").await;
    shell.wait_for("Password: ").await;
    for key in PASSWORD.as_bytes() {
        shell.type_keys(&[*key]).await;
    }
    shell.type_keys(b"\r").await;
    shell.wait_for(&format!("got {}", PASSWORD.len())).await;
    shell.wait_for("P> ").await;
    shell.type_keys(b"exit\r").await;
    shell.exited().await;

    let (sessions, dir) = gateway.recorded_in_dir().await;
    let data = dir.path().join("data");
    assert_eq!(sessions.len(), 1);
    let events = &sessions[0];
    assert_eq!(end_of(events), Some(EndReason::ClientClosed));
    assert!(events.iter().any(|e| matches!(&e.body, EventBody::PtyRequest(_))));
    assert!(events.iter().any(|e| matches!(&e.body, EventBody::Shell(_))));
    assert_eq!(
        commands(events),
        vec![
            "export PS1='P''> '".to_string(),
            "echo hello-world".to_string(),
            "read -s -p 'Pass''word: ' pw; echo \"got ${#pw}\"".to_string(),
            "exit".to_string(),
        ]
    );
    // Keystrokes: their length and digest, never themselves; digests of
    // the same key typed twice differ.
    let inputs: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::TerminalInput(i) => Some(i),
            _ => None,
        })
        .collect();
    assert!(inputs.len() >= 5, "{}", inputs.len());
    assert!(inputs.iter().all(|i| i.data.is_empty() && i.byte_count.is_some() && i.digest.is_some()));
    let typed: u64 = inputs.iter().map(|i| i.byte_count.unwrap()).sum();
    assert!(typed >= 100, "{typed}");
    let digests: std::collections::HashSet<_> = inputs.iter().map(|i| i.digest.clone()).collect();
    assert_eq!(digests.len(), inputs.len());
    // Each command recorded as its echo completes it: before the output
    // that followed, or just after it when the echo and the output came in
    // one piece.
    let command_at =
        events.iter().position(|e| matches!(&e.body, EventBody::Command(c) if c.command.starts_with("echo")));
    let output_at = events.iter().position(
        |e| matches!(&e.body, EventBody::TerminalOutput(o) if o.data.windows(11).any(|w| w == b"hello-world")),
    );
    assert!(command_at.unwrap() <= output_at.unwrap() + 1, "{command_at:?} {output_at:?}");
    // The password: in no event, in no file.
    assert!(!format!("{events:?}").contains("XYZZY"));
    for (path, bytes) in files(&data) {
        assert!(!bytes.windows(5).any(|w| w == b"XYZZY"), "{} holds the password", path.display());
    }
}

/// Accepts whatever host key: this client pins nothing (it is not what is
/// tested).
struct AnyHost;

impl russh::client::Handler for AnyHost {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// A target that refuses terminals: the shell runs without one, so what is
/// typed is not keystrokes at a terminal but input, recorded as it is (a
/// refused terminal must not turn input into lengths). Driven by a russh
/// client, which goes on when its terminal is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_to_a_target_that_refused_the_terminal_is_recorded_as_data() {
    use russh::ChannelMsg;
    let gateway =
        Gateway::start_full(None, false, proctor_gateway_core::masking::Profiles::none(), "PermitTTY no").await;
    let config = Arc::new(russh::client::Config::default());
    let mut client = russh::client::connect(config, ("127.0.0.1", gateway.port), AnyHost).await.unwrap();
    assert!(client.authenticate_password("agent", SECRET).await.unwrap().success());
    let mut channel = client.channel_open_session().await.unwrap();
    channel.request_pty(true, "xterm", 80, 24, 0, 0, &[]).await.unwrap();
    channel.request_shell(true).await.unwrap();
    channel.data(&b"echo no-terminal-$((6*7)); exit\n"[..]).await.unwrap();
    let (mut answers, mut shown) = (Vec::new(), Vec::new());
    let read = async {
        while let Some(message) = channel.wait().await {
            match message {
                ChannelMsg::Success => answers.push(true),
                ChannelMsg::Failure => answers.push(false),
                ChannelMsg::Data { data } => shown.extend_from_slice(&data),
                ChannelMsg::ExitStatus { .. } | ChannelMsg::Close => break,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read).await.expect("the shell ran and exited");
    assert_eq!(answers, vec![false, true], "the terminal refused, the shell granted");
    assert!(shown.windows(14).any(|w| w == b"no-terminal-42"), "{:?}", String::from_utf8_lossy(&shown));
    drop(channel);
    client.disconnect(russh::Disconnect::ByApplication, "", "").await.unwrap();
    let sessions = gateway.recorded().await;
    let events = &sessions[0];
    let typed: Vec<u8> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::TerminalInput(i) => {
                assert!(i.digest.is_none() && i.byte_count.is_none(), "{i:?}");
                Some(i.data.clone())
            }
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(typed, b"echo no-terminal-$((6*7)); exit\n");
    assert!(commands(events).is_empty());
}

/// A masked session's shell: the command lines typed are still recovered
/// (the echo is read as masking lets it go); a card number the shell prints
/// is masked for the client and the recording; asking the same channel for
/// SFTP afterwards is refused and masking stays on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_masked_shell_still_yields_its_commands_and_a_second_program_is_refused() {
    use russh::ChannelMsg;
    let gateway = Gateway::start_with(None, false, masked_by_default()).await;
    let config = Arc::new(russh::client::Config::default());
    let mut client = russh::client::connect(config, ("127.0.0.1", gateway.port), AnyHost).await.unwrap();
    assert!(client.authenticate_password("agent", SECRET).await.unwrap().success());
    let mut channel = client.channel_open_session().await.unwrap();
    channel.request_pty(true, "xterm", 120, 40, 0, 0, &[]).await.unwrap();
    channel.request_shell(true).await.unwrap();
    let mut shown = Vec::new();
    let mut answers = Vec::new();
    // Reads until `text` shows (or 20 s pass).
    async fn until(
        channel: &mut russh::Channel<russh::client::Msg>,
        text: &[u8],
        shown: &mut Vec<u8>,
        answers: &mut Vec<bool>,
    ) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !shown.windows(text.len()).any(|w| w == text) {
            assert!(
                Instant::now() < deadline,
                "{:?} never showed: {:?}",
                String::from_utf8_lossy(text),
                String::from_utf8_lossy(shown)
            );
            match tokio::time::timeout(Duration::from_secs(20), channel.wait()).await {
                Ok(Some(ChannelMsg::Data { data })) => shown.extend_from_slice(&data),
                Ok(Some(ChannelMsg::Success)) => answers.push(true),
                Ok(Some(ChannelMsg::Failure)) => answers.push(false),
                Ok(Some(_)) => {}
                _ => break,
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    channel.data(&b"export PS1='M''> '\r"[..]).await.unwrap();
    until(&mut channel, b"M> ", &mut shown, &mut answers).await;
    // Asking the shell's channel for SFTP too: refused.
    channel.request_subsystem(true, "sftp").await.unwrap();
    for key in b"printf '4111 1111 1111 1111 %s\\n' done-$((6*7))\r" {
        channel.data(&[*key][..]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    until(&mut channel, b"done-42", &mut shown, &mut answers).await;
    channel.data(&b"exit\r"[..]).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(message) = channel.wait().await {
            if let ChannelMsg::Data { data } = message {
                shown.extend_from_slice(&data);
            }
        }
    })
    .await;
    client.disconnect(russh::Disconnect::ByApplication, "", "").await.unwrap();
    assert!(answers.contains(&false), "the second program was refused: {answers:?}");
    let screen = String::from_utf8_lossy(&shown).to_string();
    assert!(screen.contains("done-42") && !screen.contains("4111 1111 1111 1111"), "{screen:?}");
    let sessions = gateway.recorded().await;
    let events = &sessions[0];
    let recorded: Vec<u8> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::TerminalOutput(o) => Some(o.data.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(!String::from_utf8_lossy(&recorded).contains("4111 1111 1111 1111"));
    let typed = commands(events);
    assert!(typed.iter().any(|c| c.starts_with("export PS1=")), "{typed:?}");
    // The typed line, as its (masked) echo showed it: the card number is
    // not in it.
    assert!(typed.iter().any(|c| c.starts_with("printf") && c.ends_with("done-$((6*7))")), "{typed:?}");
    assert!(typed.iter().all(|c| !c.contains("4111")), "{typed:?}");
}
