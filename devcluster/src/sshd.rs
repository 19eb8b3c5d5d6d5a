//! Throw-away OpenSSH servers: `sshd` from the system's OpenSSH, on a free
//! loopback port, with its own host key and one authorized key, in a
//! directory of the caller's; killed when dropped.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// Where Debian's openssh-server puts the daemon.
const SSHD: &str = "/usr/sbin/sshd";

/// Makes an ed25519 key pair at `path` (and `path.pub`) with `ssh-keygen`.
pub fn keygen(path: &Path) -> io::Result<()> {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "proctor-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| io::Error::new(e.kind(), format!("ssh-keygen (openssh-client): {e}")))?;
    if !status.success() {
        return Err(io::Error::other(format!("ssh-keygen failed for {}", path.display())));
    }
    Ok(())
}

/// A running `sshd`.
pub struct Sshd {
    child: Child,
    pub port: u16,
    /// Its host key's public half (`ssh-ed25519 AAAA… comment`).
    pub host_key_file: PathBuf,
    /// Where it logs.
    pub log: PathBuf,
}

impl Sshd {
    /// Starts `sshd` in `dir`, letting in the current account with the key
    /// whose public half is `authorized` (and nothing else: no passwords).
    pub fn start(dir: &Path, authorized: &Path) -> io::Result<Sshd> {
        Sshd::start_with(dir, authorized, "")
    }

    /// As [`Sshd::start`], with `extra` lines of `sshd_config` (`PermitTTY
    /// no`, ...).
    pub fn start_with(dir: &Path, authorized: &Path, extra: &str) -> io::Result<Sshd> {
        let host = dir.join("sshd_host_key");
        keygen(&host)?;
        let port = free_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                 PermitRootLogin prohibit-password\nLogLevel ERROR\nSubsystem sftp internal-sftp\n{extra}\n",
                host.display(),
                authorized.display(),
                dir.join("sshd.pid").display()
            ),
        )?;
        // sshd wants its privilege separation directory when run as root.
        let _ = std::fs::create_dir_all("/run/sshd");
        let log = dir.join("sshd.log");
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("{SSHD} (openssh-server): {e}")))?;
        let mut sshd = Sshd { child, port, host_key_file: host.with_extension("pub"), log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = sshd.child.try_wait() {
                let log = std::fs::read_to_string(&sshd.log).unwrap_or_default();
                return Err(io::Error::other(format!("sshd exited ({status}): {log}")));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!("sshd did not listen on port {port}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(sshd)
    }

    /// The process id of the listening daemon (each connection is served
    /// by processes it forks).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the daemon and every process serving its connections (they
    /// start sessions of their own, so they are found by parentage), at
    /// once.
    pub fn kill(&mut self) {
        for pid in descendants(self.child.id()) {
            // SAFETY: sends a signal to a process id; no memory is shared.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The account `sshd` lets in: the one running this process.
    pub fn user() -> String {
        Command::new("id")
            .arg("-un")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map(|name| name.trim().to_string())
            .unwrap_or_else(|| "root".to_string())
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every process descended from `root`, read from `/proc`.
fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // The parent is the second field after the command's closing paren.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = vec![root];
    let mut at = 0;
    while at < found.len() {
        let parent = found[at];
        found.extend(parents.iter().filter(|(_, ppid)| *ppid == parent).map(|(pid, _)| *pid));
        at += 1;
    }
    found.remove(0);
    found
}
