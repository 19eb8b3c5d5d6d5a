//! File transfers through the SSH adapter against a real OpenSSH `sshd`:
//! OpenSSH's `sftp` in batch mode and `scp` (which speaks SFTP) pass the
//! files exactly, and every operation is recorded as a `file_transfer`
//! event with its path, byte count and, for a whole file, its SHA-256.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use proctor_schemas::{EventBody, FileTransfer, OutputStream};
use sha2::{Digest, Sha256};

/// OpenSSH's `sftp` or `scp` through Proctor, with the gateway's pinned key
/// and the secret as password.
fn client(gateway: &Gateway, program: &str, args: &[&str]) -> std::process::Output {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(&gateway.askpass, format!("#!/bin/sh\nprintf '%s\\n' '{SECRET}'\n")).unwrap();
    std::fs::set_permissions(&gateway.askpass, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = std::process::Command::new(program)
        .env("SSH_ASKPASS", &gateway.askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        // `sftp -b` asks ssh for batch mode, which skips the password
        // prompt: the first value given to an option is the one kept.
        .args(["-o", "BatchMode=no", "-F", "/dev/null", "-P", &gateway.port.to_string()])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", gateway.known_hosts.display()))
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "PreferredAuthentications=password,keyboard-interactive"])
        .args(["-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} (openssh-client): {e}"));
    assert!(out.status.success(), "{program}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn sha256(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_and_scp_operations_are_recorded_with_whole_file_hashes() {
    let gateway = Gateway::start(None).await;
    let local = gateway.dir.path().join("local");
    let remote = gateway.dir.path().join("remote");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::create_dir_all(&remote).unwrap();
    // 300 KiB that no two chunks share.
    let mut content = Vec::new();
    let mut state = 7u64;
    while content.len() < 300 * 1024 {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        content.extend_from_slice(&state.to_le_bytes());
    }
    let up = local.join("up.bin");
    std::fs::write(&up, &content).unwrap();
    let (r, l) = (remote.display().to_string(), local.display().to_string());
    let batch = local.join("batch");
    std::fs::write(
        &batch,
        format!(
            "put {l}/up.bin {r}/up.bin\nget {r}/up.bin {l}/down.bin\nrename {r}/up.bin {r}/moved.bin\n\
             mkdir {r}/d\nrmdir {r}/d\nrm {r}/moved.bin\n"
        ),
    )
    .unwrap();
    let to = format!("agent@127.0.0.1:{r}/scp.bin");
    let gateway = tokio::task::spawn_blocking(move || {
        client(&gateway, "sftp", &["-b", batch.to_str().unwrap(), "agent@127.0.0.1"]);
        client(&gateway, "scp", &[up.to_str().unwrap(), &to]);
        gateway
    })
    .await
    .unwrap();
    assert_eq!(std::fs::read(local.join("down.bin")).unwrap(), content, "the file came back exactly");
    assert_eq!(std::fs::read(remote.join("scp.bin")).unwrap(), content);
    assert!(!remote.join("moved.bin").exists());
    let hash = sha256(&local.join("up.bin"));

    let sessions = tokio::time::timeout(Duration::from_secs(60), gateway.recorded()).await.unwrap();
    let files: Vec<FileTransfer> = sessions
        .iter()
        .flatten()
        .filter_map(|e| match &e.body {
            EventBody::FileTransfer(f) => Some(f.clone()),
            _ => None,
        })
        .collect();
    let find = |operation: &str, path: String| {
        files
            .iter()
            .find(|f| f.operation == operation && f.path == path)
            .unwrap_or_else(|| panic!("no {operation} of {path} in {files:#?}"))
            .clone()
    };
    let written = find("write", format!("{r}/up.bin"));
    assert_eq!((written.byte_count, written.sha256.as_deref()), (Some(content.len() as u64), Some(hash.as_str())));
    let read = find("read", format!("{r}/up.bin"));
    assert_eq!((read.byte_count, read.sha256.as_deref()), (Some(content.len() as u64), Some(hash.as_str())));
    let renamed = find("rename", format!("{r}/up.bin"));
    assert_eq!(renamed.target_path, Some(format!("{r}/moved.bin")));
    find("mkdir", format!("{r}/d"));
    find("rmdir", format!("{r}/d"));
    find("remove", format!("{r}/moved.bin"));
    let copied = find("write", format!("{r}/scp.bin"));
    assert_eq!(copied.sha256.as_deref(), Some(hash.as_str()), "scp (over SFTP) too");
    // The subsystem is recorded as what the channel ran.
    assert!(sessions.iter().flatten().any(|e| matches!(&e.body, EventBody::Exec(x) if x.command == "subsystem sftp")));
}

/// In a masked session, a file read over SFTP is masked for the client and
/// the recording: a card number cut between two reads (16 KiB each, `-B`),
/// or across many tiny ones asked one at a time (`-B 7 -R 1`), is found
/// whole (and legacy scp's copy, command output, is masked in place; an
/// upload with it passes as it is); the file keeps its length; its recorded SHA-256 is that
/// of the bytes the client got; and a file without secrets passes exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_read_over_sftp_is_masked_even_across_reads() {
    let gateway = Gateway::start_with(None, false, masked_by_default()).await;
    let dir = gateway.dir.path().to_path_buf();
    let mut secret = "log line\n".repeat(32 * 1024 / 9).into_bytes();
    secret.truncate(32 * 1024 - 8);
    secret.extend_from_slice(b"4111 1111 1111 1111 is the card\n");
    secret.extend_from_slice(&"tail\n".repeat(100).into_bytes());
    std::fs::write(dir.join("secret.txt"), &secret).unwrap();
    let plain: Vec<u8> = (0..100_000u32).flat_map(|i| format!("row {i}\n").into_bytes()).collect();
    std::fs::write(dir.join("plain.txt"), &plain).unwrap();
    std::fs::write(dir.join("small.txt"), "card: 4111 1111 1111 1111 end\n").unwrap();
    let d = dir.display().to_string();
    let batch = dir.join("batch");
    std::fs::write(&batch, format!("get {d}/secret.txt {d}/got-secret.txt\nget {d}/plain.txt {d}/got-plain.txt\n"))
        .unwrap();
    let gateway = tokio::task::spawn_blocking(move || {
        client(&gateway, "sftp", &["-B", "16384", "-b", batch.to_str().unwrap(), "agent@127.0.0.1"]);
        std::fs::write(&batch, format!("get {d}/small.txt {d}/got-small.txt\n")).unwrap();
        client(&gateway, "sftp", &["-B", "7", "-R", "1", "-b", batch.to_str().unwrap(), "agent@127.0.0.1"]);
        // Legacy scp from the target: its output masked as text.
        let from = format!("agent@127.0.0.1:{d}/small.txt");
        client(&gateway, "scp", &["-O", &from, &format!("{d}/legacy-small.txt")]);
        // And to it (its server side answers first with a lone NUL).
        let to = format!("agent@127.0.0.1:{d}/legacy-up.txt");
        client(&gateway, "scp", &["-O", &format!("{d}/small.txt"), &to]);
        gateway
    })
    .await
    .unwrap();
    let got = std::fs::read(dir.join("got-secret.txt")).unwrap();
    assert_eq!(got.len(), secret.len(), "masked in place");
    let text = String::from_utf8_lossy(&got).to_string();
    assert!(!text.contains("4111 ") && !text.contains("1111 1111"), "{}", &text[32 * 1024 - 40..32 * 1024 + 40]);
    assert!(text.contains(" is the card\n") && text.starts_with("log line\n") && text.ends_with("tail\n"));
    assert_eq!(std::fs::read(dir.join("got-plain.txt")).unwrap(), plain, "a file without secrets passes exactly");
    let small = std::fs::read_to_string(dir.join("got-small.txt")).unwrap();
    assert!(small.starts_with("card: ") && small.ends_with(" end\n") && small.len() == 30, "{small:?}");
    assert!(!small.contains("1111"), "seven bytes at a time: {small:?}");
    assert_eq!(
        std::fs::read(dir.join("legacy-up.txt")).unwrap(),
        std::fs::read(dir.join("small.txt")).unwrap(),
        "an upload passes as it is"
    );
    let legacy = std::fs::read_to_string(dir.join("legacy-small.txt")).unwrap();
    assert!(legacy.starts_with("card: ") && !legacy.contains("1111"), "{legacy:?}");

    let sessions = tokio::time::timeout(Duration::from_secs(60), gateway.recorded()).await.unwrap();
    let events: Vec<_> = sessions.into_iter().flatten().collect();
    let recorded = output(&events, OutputStream::Stdout);
    assert!(
        !recorded.windows(9).any(|w| w == b"1111 1111" || w == b"4111 1111"),
        "the recording never held the card number"
    );
    assert!(events.iter().any(|e| matches!(&e.body, EventBody::MaskingApplied(m) if !m.masked.is_empty())));
    let read = events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::FileTransfer(f) if f.operation == "read" && f.path.ends_with("/secret.txt") => Some(f.clone()),
            _ => None,
        })
        .expect("the read recorded");
    let got_hash: String = Sha256::digest(&got).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(read.sha256, Some(got_hash), "the hash of what the client got");
}

/// `rsync -e ssh` and `git clone`/`git push` over SSH, through Proctor:
/// each runs its server side with exec, recorded with the bytes it moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsync_and_git_run_through_proctor() {
    use std::os::unix::fs::PermissionsExt;
    let gateway = Gateway::start(None).await;
    let base = gateway.dir.path().to_path_buf();
    std::fs::write(&gateway.askpass, format!("#!/bin/sh\nprintf '%s\\n' '{SECRET}'\n")).unwrap();
    std::fs::set_permissions(&gateway.askpass, std::fs::Permissions::from_mode(0o700)).unwrap();
    let ssh = format!(
        "ssh -F /dev/null -p {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes \
         -o PreferredAuthentications=password,keyboard-interactive -o PubkeyAuthentication=no -o NumberOfPasswordPrompts=1",
        gateway.port,
        gateway.known_hosts.display()
    );
    let askpass = gateway.askpass.clone();
    let port = gateway.port;
    let run = |program: &str, args: &[&str], dir: &Path| {
        let out = std::process::Command::new(program)
            .args(args)
            .current_dir(dir)
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .env("GIT_SSH_COMMAND", &ssh)
            .env("GIT_AUTHOR_NAME", "agent")
            .env("GIT_AUTHOR_EMAIL", "agent@example.com")
            .env("GIT_COMMITTER_NAME", "agent")
            .env("GIT_COMMITTER_EMAIL", "agent@example.com")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    };
    // rsync a tree there.
    let tree = base.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), "alpha\n").unwrap();
    std::fs::write(tree.join("sub/b.txt"), "beta\n".repeat(10_000)).unwrap();
    let synced = base.join("synced");
    tokio::task::block_in_place(|| {
        run("rsync", &["-a", "-e", &ssh, "tree/", &format!("agent@127.0.0.1:{}/", synced.display())], &base);
        // A bare repository on the target; cloned, committed to, pushed.
        run("git", &["init", "-q", "--bare", "-b", "main", "repo.git"], &base);
        let url = format!("ssh://agent@127.0.0.1:{port}{}/repo.git", base.display());
        run("git", &["clone", "-q", &url, "work"], &base);
        let work = base.join("work");
        std::fs::write(work.join("README"), "through proctor\n").unwrap();
        run("git", &["add", "README"], &work);
        run("git", &["commit", "-q", "-m", "first"], &work);
        run("git", &["push", "-q", "origin", "HEAD:main"], &work);
        run("git", &["clone", "-q", &url, "again"], &base);
    });
    assert_eq!(std::fs::read_to_string(synced.join("sub/b.txt")).unwrap(), "beta\n".repeat(10_000));
    assert_eq!(std::fs::read_to_string(base.join("again/README")).unwrap(), "through proctor\n");
    let sessions = tokio::time::timeout(Duration::from_secs(60), gateway.recorded()).await.unwrap();
    let commands: Vec<String> = sessions
        .iter()
        .flatten()
        .filter_map(|e| match &e.body {
            EventBody::Exec(x) => Some(x.command.clone()),
            _ => None,
        })
        .collect();
    assert!(commands.iter().any(|c| c.starts_with("rsync --server")), "{commands:?}");
    assert!(commands.iter().any(|c| c.starts_with("git-receive-pack")), "{commands:?}");
    assert!(commands.iter().filter(|c| c.starts_with("git-upload-pack")).count() >= 2, "{commands:?}");
}
