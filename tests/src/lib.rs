//! Harness for Proctor's end-to-end tests: temporary data dirs, child
//! processes of the real `proctor` binary, and helpers to reach real targets.
//! Nothing here fakes a target or storage.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Runs the binary to completion and returns its output.
pub fn run(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

/// Runs the binary and fails the test unless it exits 0.
pub fn run_ok(bin: &Path, args: &[&str]) -> Output {
    let output = run(bin, args);
    assert!(
        output.status.success(),
        "proctor {} failed ({}):\n{}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A token from the data dir's dev issuer (`proctor token`) for `sub` in
/// `groups` (comma-separated).
pub fn dev_token(bin: &Path, data_dir: &Path, sub: &str, groups: &str) -> String {
    let output = run_ok(bin, &["token", "--data-dir", data_dir.to_str().unwrap(), "--sub", sub, "--groups", groups]);
    stdout(&output).trim().to_string()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Sends a signal to a child process.
pub fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on a pid we own; no memory is involved.
    let result = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(result, 0, "kill({}, {signal}) failed", child.id());
}

/// Waits for a child, failing the test if it takes longer than `limit`.
pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Collects a child's stdout lines on a thread, so the pipe never fills.
/// Only whole lines: a child killed in the middle of writing one (its
/// output buffer flushed part of a line) leaves a piece without its newline,
/// which was never printed as a line and is dropped.
pub fn collect_lines(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.last() != Some(&b'\n') => break,
                Ok(_) => {}
            }
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if tx.send(String::from_utf8_lossy(&line).into_owned()).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits until a line containing `needle` arrives, returning the lines seen.
pub fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(_) => panic!("no line containing {needle:?} within {limit:?}; saw:\n{}", seen.join("\n")),
        }
    }
}

/// Spawns the binary with piped stdout and stderr.
pub fn spawn(bin: &Path, args: &[&str]) -> Child {
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The mode bits (permissions, setgid, sticky) and group of `path`.
pub fn mode_of(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (metadata.mode() & 0o7777, metadata.gid())
}

/// Every entry under `dir` (itself included) with whether it is a
/// directory, its mode bits and its group; files removed meanwhile (a
/// running index replaces its own) are left out.
pub fn modes_under(dir: &Path) -> Vec<(std::path::PathBuf, bool, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let (mode, gid) = mode_of(dir);
    out.push((dir.to_path_buf(), true, mode, gid));
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let Ok(metadata) = entry.metadata() else { continue };
        if metadata.is_dir() {
            out.extend(modes_under(&entry.path()));
        } else {
            out.push((entry.path(), false, metadata.mode() & 0o7777, metadata.gid()));
        }
    }
    out
}

/// A small deterministic generator for test choices (delays, positions), so a
/// failing run can be repeated exactly.
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> TestRng {
        TestRng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low).max(1)
    }
}

pub use proctor_devcluster as devcluster;

/// The database role and database every test cluster has for Proctor to use.
pub const APP_ROLE: &str = "app";
pub const APP_PASSWORD: &str = "app-password-for-tests";

/// Starts a throw-away cluster with the `app` role (not a superuser) owning
/// the `app` database.
pub fn cluster(options: &devcluster::Options) -> devcluster::Cluster {
    let cluster = devcluster::Cluster::start(options).unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e}"));
    cluster
        .psql("postgres", &format!("create role {APP_ROLE} login password '{APP_PASSWORD}'"))
        .and_then(|_| cluster.psql("postgres", &format!("create database {APP_ROLE} owner {APP_ROLE}")))
        .unwrap_or_else(|e| panic!("cannot create the app role: {e}"));
    cluster
}

/// How a Proctor under test fronts its cluster.
#[derive(Clone, Debug)]
pub struct ProctorOptions {
    pub allow_plaintext: bool,
    pub sample_rows: usize,
    pub extra: String,
    /// More lines of the `[recorder]` table (`segment_max_age = "1s"`).
    pub recorder: String,
}

impl Default for ProctorOptions {
    fn default() -> Self {
        ProctorOptions { allow_plaintext: true, sample_rows: 0, extra: String::new(), recorder: String::new() }
    }
}

/// A running `proctor up` in front of a cluster, stopped (SIGTERM) when dropped.
pub struct Proctor {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    pub data_dir: std::path::PathBuf,
    pub port: u16,
    pub secret: String,
    pub log: mpsc::Receiver<String>,
}

impl Proctor {
    pub fn start(bin: &Path, target_port: u16, options: &ProctorOptions) -> Proctor {
        let dir = tempfile::tempdir().unwrap();
        let port = devcluster::free_port();
        let secret = format!("client-secret-{}", std::process::id());
        std::fs::write(dir.path().join("target-password"), format!("{APP_PASSWORD}\n")).unwrap();
        std::fs::write(dir.path().join("client-secret"), format!("{secret}\n")).unwrap();
        let config = format!(
            "data_dir = \"data\"\n[recorder]\nfsync_interval = \"20ms\"\n{}\n[[resources]]\nname = \"test-db\"\nprotocol = \"postgres\"\nlisten = \"127.0.0.1:{port}\"\ntarget = \"127.0.0.1:{target_port}\"\nuser = \"{APP_ROLE}\"\npassword_file = \"target-password\"\nclient_secret_file = \"client-secret\"\nallow_plaintext = {}\nsample_rows = {}\n{}\n",
            options.recorder, options.allow_plaintext, options.sample_rows, options.extra
        );
        let config_path = dir.path().join("proctor.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut child = spawn(bin, &["up", "--config", config_path.to_str().unwrap()]);
        let log = collect_lines(child.stderr.take().unwrap());
        wait_for_line(&log, "proctor is up", Duration::from_secs(60));
        Proctor { child: Some(child), data_dir: dir.path().join("data"), _dir: dir, port, secret, log }
    }

    /// A libpq URL through Proctor.
    pub fn url(&self, user: &str, database: &str, sslmode: &str) -> String {
        format!("postgres://{user}:{}@127.0.0.1:{}/{database}?sslmode={sslmode}", self.secret, self.port)
    }

    /// A libpq keyword/value connection string through Proctor.
    pub fn conninfo(&self, user: &str, database: &str, sslmode: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={} dbname={database} sslmode={sslmode}",
            self.port, self.secret
        )
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Stops Proctor with SIGTERM and waits; returns its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("proctor is running");
        signal(&child, libc::SIGTERM);
        wait_with_timeout(&mut child, Duration::from_secs(60))
    }

    /// Starts the stopped Proctor again, with the same configuration and
    /// data dir.
    pub fn start_again(&mut self, bin: &Path) {
        assert!(self.child.is_none(), "proctor is running");
        let config_path = self._dir.path().join("proctor.toml");
        let mut child = spawn(bin, &["up", "--config", config_path.to_str().unwrap()]);
        self.log = collect_lines(child.stderr.take().unwrap());
        wait_for_line(&self.log, "proctor is up", Duration::from_secs(60));
        self.child = Some(child);
    }
}

impl Drop for Proctor {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}
