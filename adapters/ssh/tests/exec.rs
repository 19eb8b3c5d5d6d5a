//! Commands run with `exec` through the SSH adapter against a real OpenSSH
//! `sshd` (started here on a free loopback port, with its own host key and
//! Proctor's key authorized), driven by the OpenSSH `ssh` client: bytes
//! pass exactly both ways, stderr apart, the exit status through; each is
//! recorded (the real recorder, in a temp dir) before it passes; a wrong
//! password, a target host key that is not the pinned one, and a terminal
//! request are refused with a message the client prints.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use proctor_gateway_core::masking::Profiles;
use proctor_schemas::{EndReason, EventBody, OutputStream};

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

/// Two hundred connections at once that never finish their handshake
/// (half silent, half stopping after the version line), and a client whose
/// command floods output it never reads: Proctor goes on serving others,
/// and the flooded session is held back, not buffered without end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_and_a_client_that_never_reads_leave_proctor_serving() {
    use tokio::io::AsyncWriteExt;
    let gateway = Gateway::start(None).await;
    let mut stalled = Vec::new();
    for i in 0..200 {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", gateway.port)).await.unwrap();
        if i % 2 == 0 {
            tcp.write_all(b"SSH-2.0-stalled\r\n").await.unwrap();
        }
        stalled.push(tcp);
    }
    // A client that reads nothing of 1 GiB its command writes.
    let mut flood = gateway.ssh_command(SECRET, &[], "head -c 1073741824 /dev/zero");
    flood.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut flood = flood.spawn().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let (stdout, stderr, code) = gateway.ssh(SECRET, &[], "printf %s served", b"").await;
    assert_eq!((code, stdout.as_slice()), (0, &b"served"[..]), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));
    // The flood is held back: what Proctor holds for it stays bounded
    // (the flow's hard limit), far below what was written.
    let rss = std::fs::read_to_string("/proc/self/status").unwrap();
    let rss_kib: u64 = rss
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(rss_kib < 512 * 1024, "{rss_kib} KiB resident");
    flood.kill().await.unwrap();
    let _ = flood.wait().await;
    drop(stalled);
    let sessions = gateway.recorded().await;
    assert!(
        sessions
            .iter()
            .any(|s| s.iter().any(|e| matches!(&e.body, EventBody::Exec(x) if x.command == "printf %s served")))
    );
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

/// A session a masking profile applies to: a card number the command
/// prints in two writes with a colour code between them reaches neither the
/// client nor the recording; the rest of the output passes as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_masked_session_masks_output_for_the_client_and_the_recording() {
    let gateway = Gateway::start_with(None, false, masked_by_default()).await;
    let command =
        "printf 'card: 4111 1111 '; sleep 0.005; printf '\\033[31m1111 1111\\033[0m ok\\n'; echo plain-$((6*7))";
    let (stdout, stderr, code) = gateway.ssh(SECRET, &[], command, b"").await;
    assert_eq!(code, 0, "{stderr}");
    let shown = String::from_utf8_lossy(&stdout).to_string();
    assert!(!shown.contains("1111 1111") && !shown.contains("4111"), "{shown:?}");
    assert!(shown.starts_with("card: ") && shown.contains(" ok\n") && shown.ends_with("plain-42\n"), "{shown:?}");
    let sessions = gateway.recorded().await;
    let recorded = String::from_utf8_lossy(&output(&sessions[0], OutputStream::Stdout)).to_string();
    assert_eq!(recorded, shown, "the recording holds what the client was shown");
    assert!(sessions[0].iter().any(|e| matches!(&e.body, EventBody::MaskingApplied(m) if !m.masked.is_empty())));
}

/// In a masked session a secret on a command line is recorded masked (the
/// target runs the command as sent), with the masking counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_on_a_command_line_is_recorded_masked() {
    let gateway = Gateway::start_with(None, false, masked_by_default()).await;
    let command = "echo -n ran; : 4111 1111 1111 1111";
    let (stdout, stderr, code) = gateway.ssh(SECRET, &[], command, b"").await;
    assert_eq!((code, stdout.as_slice()), (0, &b"ran"[..]), "{stderr}");
    let sessions = gateway.recorded().await;
    let execs: Vec<String> = sessions[0]
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Exec(exec) => Some(exec.command.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(execs.len(), 1, "{execs:?}");
    assert!(execs[0].starts_with("echo -n ran; : ") && !execs[0].contains("4111 1111"), "{execs:?}");
    let counted = sessions[0]
        .iter()
        .any(|e| matches!(&e.body, EventBody::MaskingApplied(m) if m.masked.iter().any(|c| c.rule == "card")));
    assert!(counted, "the masking is counted");
}

/// In a masked session, a command that answers as an SFTP server on a
/// channel not read as SFTP (what a forced `sftp-server` does) is closed
/// before any of it reaches the client, the closing recorded; the session
/// goes on serving, and a command that merely starts its output with a
/// NUL passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_answering_as_an_sftp_server_is_closed() {
    let gateway = Gateway::start_with(None, false, masked_by_default()).await;
    // SSH_FXP_VERSION, version 3, then what a server would go on with.
    let (stdout, _, code) = gateway
        .ssh(SECRET, &[], "printf '\\000\\000\\000\\005\\002\\000\\000\\000\\003'; sleep 2; echo more", b"")
        .await;
    assert_ne!(code, 0, "the channel was closed under the client");
    assert!(stdout.is_empty(), "nothing of it reached the client: {stdout:?}");
    let (stdout, stderr, code) = gateway.ssh(SECRET, &[], "printf '\\000ok'", b"").await;
    assert_eq!((code, stdout.as_slice()), (0, &b"\0ok"[..]), "{stderr}");
    let sessions = gateway.recorded().await;
    let closed = sessions
        .iter()
        .flatten()
        .any(|e| matches!(&e.body, EventBody::Error(r) if r.message.contains("answered as an SFTP server")));
    assert!(closed, "the closing is recorded");
}
