//! Throw-away PostgreSQL clusters: find the server binaries, `initdb` a
//! cluster in a temporary directory owned by an unprivileged account (the
//! server refuses to run as root), start it on a free loopback port with
//! SCRAM authentication and optionally TLS, and remove it when dropped.
//!
//! Used by `proctor demo`, the end-to-end tests and the benchmarks. It only
//! runs real PostgreSQL; nothing is simulated.

pub mod sshd;

use std::ffi::OsStr;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "no PostgreSQL server binaries found (looked for initdb on PATH, in `pg_config --bindir` and in /usr/lib/postgresql/*/bin); install the postgresql package"
    )]
    NoBinaries,
    #[error("no unprivileged account to run PostgreSQL as (looked for {0:?}); scripts/setup creates one")]
    NoAccount(Vec<&'static str>),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed: {output}")]
    Command { command: String, output: String },
    #[error("PostgreSQL did not accept connections on port {port} within {seconds}s; its log:\n{log}")]
    NotReady { port: u16, seconds: u64, log: String },
    #[error("cannot generate a TLS certificate: {0}")]
    Certificate(String),
}

type Result<T> = std::result::Result<T, ClusterError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// The directory holding `initdb`, `postgres`, `pg_ctl`, `psql` and `pgbench`.
pub fn find_bindir() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            // Follow links (e.g. /usr/local/bin/initdb -> .../15/bin/initdb)
            // to the directory holding the whole set of tools.
            if let Ok(initdb) = std::fs::canonicalize(dir.join("initdb"))
                && let Some(bin) = initdb.parent()
                && bin.join("postgres").is_file()
                && bin.join("pg_ctl").is_file()
            {
                return Ok(bin.to_path_buf());
            }
        }
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output()
        && output.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or(ClusterError::NoBinaries)
}

/// An account to run the server as: `postgres`, else `proctor`.
pub const ACCOUNTS: [&str; 2] = ["postgres", "proctor"];

/// (name, uid, gid) of the account the server runs as, or `None` when this
/// process is not root (then it runs as ourselves).
fn account() -> Result<Option<(String, u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    for name in ACCOUNTS {
        let Ok(cname) = std::ffi::CString::new(name) else { continue };
        // SAFETY: getpwnam returns a pointer into static storage or null; we
        // copy the ids out at once, on this thread.
        let entry = unsafe { libc::getpwnam(cname.as_ptr()) };
        if !entry.is_null() {
            let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
            return Ok(Some((name.to_string(), uid, gid)));
        }
    }
    Err(ClusterError::NoAccount(ACCOUNTS.to_vec()))
}

/// Makes `command` run as the account throw-away clusters run as (when this
/// process is root); for tools that, like the server, refuse root (pgbouncer).
pub fn run_as_cluster_account(command: &mut Command) -> Result<()> {
    if let Some((_, uid, gid)) = account()? {
        use std::os::unix::process::CommandExt;
        command.uid(uid).gid(gid);
    }
    Ok(())
}

/// Gives a path to the cluster account, so a tool running as it can use it.
pub fn hand_to_cluster_account(path: &Path) -> Result<()> {
    if let Some((_, uid, gid)) = account()? {
        chown(path, Some(uid), Some(gid)).map_err(io(format!("cannot chown {}", path.display())))?;
    }
    Ok(())
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    // The kernel may hand a port just released out again: a port this
    // process gave before (to another listener of the same test, not yet
    // bound) is not given twice.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..64 {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0);
        if port != 0 && !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    0
}

/// How to set a cluster up.
#[derive(Clone, Debug)]
pub struct Options {
    /// Serve TLS (a self-signed certificate) as well as plaintext.
    pub tls: bool,
    /// `scram-sha-256` or `md5`.
    pub auth_method: &'static str,
    /// The superuser's (`postgres`) password.
    pub superuser_password: String,
    /// Extra `postgresql.conf` settings.
    pub settings: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tls: false,
            auth_method: "scram-sha-256",
            superuser_password: "postgres".to_string(),
            settings: Vec::new(),
        }
    }
}

/// A running throw-away cluster.
pub struct Cluster {
    pub bindir: PathBuf,
    pub port: u16,
    pub superuser_password: String,
    dir: PathBuf,
    account: Option<(String, u32, u32)>,
    stopped: bool,
}

impl Cluster {
    /// initdb + start on a free loopback port. The cluster lives in a new
    /// directory under the system temp dir and is removed on drop.
    pub fn start(options: &Options) -> Result<Cluster> {
        let bindir = find_bindir()?;
        let account = account()?;
        let base = std::env::temp_dir().join(format!("proctor-pg-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&base).map_err(io(format!("cannot create {}", base.display())))?;
        let mut cluster = Cluster {
            bindir,
            port: free_port(),
            superuser_password: options.superuser_password.clone(),
            dir: base,
            account,
            stopped: true,
        };
        let data = cluster.data_dir();
        let pwfile = cluster.dir.join("pwfile");
        std::fs::write(&pwfile, format!("{}\n", options.superuser_password))
            .map_err(io("cannot write the password file"))?;
        cluster.hand_over(&cluster.dir)?;
        cluster.hand_over(&pwfile)?;
        cluster.run(
            "initdb",
            [
                "-D",
                data.to_str().unwrap_or_default(),
                "-U",
                "postgres",
                "--auth",
                options.auth_method,
                "--pwfile",
                pwfile.to_str().unwrap_or_default(),
                "--no-sync",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
            ],
        )?;
        let _ = std::fs::remove_file(&pwfile);
        let mut conf = String::from(
            "\n# proctor-devcluster\nlisten_addresses = '127.0.0.1'\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n",
        );
        conf.push_str(&format!("port = {}\nunix_socket_directories = '{}'\n", cluster.port, cluster.dir.display()));
        conf.push_str(&format!("password_encryption = '{}'\n", options.auth_method));
        if options.tls {
            cluster.write_certificate(&data)?;
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        for (key, value) in &options.settings {
            conf.push_str(&format!("{key} = {value}\n"));
        }
        let conf_path = data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).map_err(io("cannot read postgresql.conf"))?;
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).map_err(io("cannot write postgresql.conf"))?;
        let hba = format!(
            "local all all {m}\nhost all all 127.0.0.1/32 {m}\nhost all all ::1/128 {m}\n",
            m = options.auth_method
        );
        std::fs::write(data.join("pg_hba.conf"), hba).map_err(io("cannot write pg_hba.conf"))?;
        cluster.hand_over(&data.join("pg_hba.conf"))?;
        cluster.hand_over(&conf_path)?;
        let log = cluster.dir.join("postgres.log");
        cluster.run(
            "pg_ctl",
            [
                "-D",
                data.to_str().unwrap_or_default(),
                "-l",
                log.to_str().unwrap_or_default(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        cluster.stopped = false;
        cluster.wait_ready(Duration::from_secs(60))?;
        Ok(cluster)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The directory of the cluster (data, socket, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    fn hand_over(&self, path: &Path) -> Result<()> {
        if let Some((_, uid, gid)) = &self.account {
            chown(path, Some(*uid), Some(*gid)).map_err(io(format!("cannot chown {}", path.display())))?;
        }
        Ok(())
    }

    fn write_certificate(&self, data: &Path) -> Result<()> {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let certified =
            rcgen::generate_simple_self_signed(names).map_err(|e| ClusterError::Certificate(e.to_string()))?;
        let cert = data.join("server.crt");
        let key = data.join("server.key");
        std::fs::write(&cert, certified.cert.pem()).map_err(io("cannot write server.crt"))?;
        std::fs::write(&key, certified.signing_key.serialize_pem()).map_err(io("cannot write server.key"))?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .map_err(io("cannot chmod server.key"))?;
        self.hand_over(&cert)?;
        self.hand_over(&key)
    }

    /// Runs a server binary as the cluster's account.
    fn run<I, S>(&self, program: &str, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(self.bindir.join(program));
        command.args(args).current_dir(&self.dir).stdin(Stdio::null());
        if let Some((_, uid, gid)) = &self.account {
            use std::os::unix::process::CommandExt;
            command.uid(*uid).gid(*gid);
        }
        let output = command.output().map_err(io(format!("cannot run {program}")))?;
        if !output.status.success() {
            return Err(ClusterError::Command {
                command: program.to_string(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            });
        }
        Ok(output)
    }

    fn wait_ready(&self, limit: Duration) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < limit {
            let ready = Command::new(self.bindir.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(ClusterError::NotReady { port: self.port, seconds: limit.as_secs(), log: self.log() })
    }

    /// A libpq URL straight to the cluster.
    pub fn url(&self, user: &str, password: &str, database: &str, sslmode: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{database}?sslmode={sslmode}", self.port)
    }

    /// The superuser's URL.
    pub fn superuser_url(&self, database: &str) -> String {
        self.url("postgres", &self.superuser_password, database, "disable")
    }

    /// Runs SQL as the superuser with psql; returns its output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let output = Command::new(self.bindir.join("psql"))
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-q", "-At", "-d", &self.superuser_url(database), "-c", sql])
            .output()
            .map_err(io("cannot run psql"))?;
        if !output.status.success() {
            return Err(ClusterError::Command {
                command: format!("psql -c {sql:?}"),
                output: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Stops the server (fast shutdown: sessions are ended).
    pub fn stop(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let data = self.data_dir();
        self.run("pg_ctl", ["-D", data.to_str().unwrap_or_default(), "-m", "fast", "-w", "stop"]).map(|_| ())
    }

    /// Stops the server at once, as a crash would.
    pub fn kill(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let data = self.data_dir();
        self.run("pg_ctl", ["-D", data.to_str().unwrap_or_default(), "-m", "immediate", "-w", "stop"]).map(|_| ())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(error) = self.kill() {
            tracing::warn!(%error, "could not stop a throw-away cluster");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos() as u64;
    (nanos << 16) | NEXT.fetch_add(1, Ordering::Relaxed)
}
