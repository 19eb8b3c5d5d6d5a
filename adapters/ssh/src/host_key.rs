//! Proctor's SSH host key: the key clients pin for every SSH resource a
//! gateway fronts. Created once, on the first start that needs it, as
//! `keys/ssh_host_ed25519_key` (OpenSSH format, mode 0600) with its public
//! half beside it as `keys/ssh_host_ed25519_key.pub`, as `sshd` keeps its
//! own; never replaced by Proctor, so a client's `known_hosts` line stays
//! true across restarts.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey};
use zeroize::Zeroizing;

/// The private key's file name in the data dir's `keys/`.
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";
/// The public key's file name in the data dir's `keys/`.
pub const HOST_PUBLIC_KEY_FILE: &str = "ssh_host_ed25519_key.pub";

/// What can go wrong with the host key, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not an OpenSSH private key Proctor can use: {message}")]
    Unreadable { path: PathBuf, message: String },
    #[error("{path} is readable by other accounts (mode {mode:o}); it must be 0600, as sshd requires of its own keys")]
    Exposed { path: PathBuf, mode: u32 },
}

fn io_error<'a>(context: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> HostKeyError + 'a {
    move |source| HostKeyError::Io { context, path: path.to_path_buf(), source }
}

/// The private key's file name of Proctor's SSH user CA in `keys/`.
pub const USER_CA_FILE: &str = "ssh_user_ca_ed25519_key";
/// Its public key's file name in `keys/`.
pub const USER_CA_PUBLIC_FILE: &str = "ssh_user_ca_ed25519_key.pub";

/// Which of Proctor's SSH keys a file pair holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRole {
    /// The host key clients pin.
    Host,
    /// The CA that signs grants' user certificates.
    UserCa,
}

impl KeyRole {
    fn files(self) -> (&'static str, &'static str) {
        match self {
            KeyRole::Host => (HOST_KEY_FILE, HOST_PUBLIC_KEY_FILE),
            KeyRole::UserCa => (USER_CA_FILE, USER_CA_PUBLIC_FILE),
        }
    }

    fn what(self) -> &'static str {
        match self {
            KeyRole::Host => "SSH host key",
            KeyRole::UserCa => "SSH user CA key",
        }
    }
}

/// One of the gateway's SSH keys (the host key unless named otherwise).
pub struct HostKey {
    key: PrivateKey,
    role: KeyRole,
}

impl HostKey {
    /// Loads the host key in `keys_dir`, creating it (and the directory,
    /// 0700) on the first start.
    pub fn load_or_create(keys_dir: &Path) -> Result<HostKey, HostKeyError> {
        HostKey::load_or_create_as(keys_dir, KeyRole::Host)
    }

    /// Loads the key of `role` in `keys_dir`, creating it on first use.
    pub fn load_or_create_as(keys_dir: &Path, role: KeyRole) -> Result<HostKey, HostKeyError> {
        let path = keys_dir.join(role.files().0);
        if path.exists() {
            return HostKey::load_as(keys_dir, role);
        }
        // A directory made here is Proctor's alone; one already there (the
        // recorder's, shaped for the data dir's group) is left as it is.
        if !keys_dir.exists() {
            fs::create_dir_all(keys_dir).map_err(io_error("cannot create key directory", keys_dir))?;
            fs::set_permissions(keys_dir, fs::Permissions::from_mode(0o700))
                .map_err(io_error("cannot restrict key directory", keys_dir))?;
        }
        let key = HostKey::generate(role)?;
        key.store(keys_dir)?;
        tracing::info!(fingerprint = %key.fingerprint(), dir = %keys_dir.display(), "created {}", role.what());
        Ok(key)
    }

    /// A new key, from the operating system's random source.
    fn generate(role: KeyRole) -> Result<HostKey, HostKeyError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut_slice())
            .map_err(|e| HostKeyError::Unreadable { path: PathBuf::new(), message: format!("no randomness: {e}") })?;
        let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        key.set_comment(match role {
            KeyRole::Host => "proctor",
            KeyRole::UserCa => "proctor user CA",
        });
        Ok(HostKey { key, role })
    }

    /// Writes the key pair into `keys_dir`; never replaces a key there.
    fn store(&self, keys_dir: &Path) -> Result<(), HostKeyError> {
        let (private_file, public_file) = self.role.files();
        let private = keys_dir.join(private_file);
        let openssh = self
            .key
            .to_openssh(LineEnding::LF)
            .map_err(|e| HostKeyError::Unreadable { path: private.clone(), message: e.to_string() })?;
        write_new(&private, openssh.as_bytes(), 0o600)?;
        let public = keys_dir.join(public_file);
        write_new(&public, format!("{}\n", self.public_line()).as_bytes(), 0o644)?;
        let dir = fs::File::open(keys_dir).map_err(io_error("cannot open key directory", keys_dir))?;
        dir.sync_all().map_err(io_error("cannot sync key directory", keys_dir))
    }

    /// Loads the key in `keys_dir`, refusing one other accounts can read.
    pub fn load(keys_dir: &Path) -> Result<HostKey, HostKeyError> {
        HostKey::load_as(keys_dir, KeyRole::Host)
    }

    /// Loads the key of `role` in `keys_dir`, refusing one other accounts
    /// can read.
    pub fn load_as(keys_dir: &Path, role: KeyRole) -> Result<HostKey, HostKeyError> {
        let (private_file, public_file) = role.files();
        let path = keys_dir.join(private_file);
        let cannot_read = match role {
            KeyRole::Host => "cannot read SSH host key",
            KeyRole::UserCa => "cannot read SSH user CA key",
        };
        let mode = fs::metadata(&path).map_err(io_error(cannot_read, &path))?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(HostKeyError::Exposed { path, mode: mode & 0o777 });
        }
        let text = Zeroizing::new(fs::read(&path).map_err(io_error(cannot_read, &path))?);
        let key = PrivateKey::from_openssh(&*text)
            .map_err(|e| HostKeyError::Unreadable { path: path.clone(), message: e.to_string() })?;
        if key.is_encrypted() {
            return Err(HostKeyError::Unreadable { path, message: "it is encrypted with a passphrase".to_string() });
        }
        let key = HostKey { key, role };
        // A start interrupted between the two files left the private one
        // alone: its public half is written again from it.
        let public = keys_dir.join(public_file);
        if !public.exists() {
            write_new(&public, format!("{}\n", key.public_line()).as_bytes(), 0o644)?;
        }
        Ok(key)
    }

    /// The private key, for the SSH server.
    pub fn private_key(&self) -> &PrivateKey {
        &self.key
    }

    pub fn public_key(&self) -> &PublicKey {
        self.key.public_key()
    }

    /// The public key as an OpenSSH line: `ssh-ed25519 AAAA… proctor`.
    pub fn public_line(&self) -> String {
        public_line(self.public_key())
    }

    /// `SHA256:…`, as `ssh-keygen -lf` and OpenSSH's prompts show it.
    pub fn fingerprint(&self) -> String {
        self.public_key().fingerprint(HashAlg::Sha256).to_string()
    }

    /// A `known_hosts` line for clients reaching Proctor at `host`:`port`
    /// (port 22 written bare, others as `[host]:port`, as OpenSSH does).
    pub fn known_hosts_line(&self, host: &str, port: u16) -> String {
        let pattern = if port == 22 { host.to_string() } else { format!("[{host}]:{port}") };
        let key = self.public_key();
        let body = key.to_openssh().unwrap_or_default();
        // `to_openssh` appends the comment; a known_hosts line carries the
        // algorithm and key only.
        let mut fields = body.split_whitespace();
        let (algorithm, data) = (fields.next().unwrap_or_default(), fields.next().unwrap_or_default());
        format!("{pattern} {algorithm} {data}")
    }
}

/// The public key in `keys_dir`, if a host key has been created there.
pub fn load_public_key(keys_dir: &Path) -> Result<Option<PublicKey>, HostKeyError> {
    load_public_key_as(keys_dir, KeyRole::Host)
}

/// The public key of `role` in `keys_dir`, if it has been created there.
pub fn load_public_key_as(keys_dir: &Path, role: KeyRole) -> Result<Option<PublicKey>, HostKeyError> {
    let path = keys_dir.join(role.files().1);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(HostKeyError::Io { context: "cannot read SSH host key", path, source: e }),
    };
    PublicKey::from_openssh(text.trim())
        .map(Some)
        .map_err(|e| HostKeyError::Unreadable { path, message: e.to_string() })
}

/// `key` as an OpenSSH public key line.
pub fn public_line(key: &PublicKey) -> String {
    key.to_openssh().unwrap_or_default()
}

/// Creates `path` with `mode`, whole or not at all (written beside it,
/// then linked into place), refusing to replace a file already there.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), HostKeyError> {
    let temp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = fs::remove_file(&temp);
    let written = (|| {
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        // A hard link fails if the name exists: never replaces a key.
        fs::hard_link(&temp, path)
    })();
    let _ = fs::remove_file(&temp);
    written.map_err(io_error("cannot create", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_to_its_owner_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let created = HostKey::load_or_create(&keys).unwrap();
        let private = keys.join(HOST_KEY_FILE);
        assert_eq!(fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&keys).unwrap().permissions().mode() & 0o777, 0o700);
        let again = HostKey::load_or_create(&keys).unwrap();
        assert_eq!(again.public_line(), created.public_line());
        assert_eq!(load_public_key(&keys).unwrap().unwrap(), *created.public_key());
        assert!(created.fingerprint().starts_with("SHA256:"), "{}", created.fingerprint());
    }

    #[test]
    fn a_lost_public_half_is_written_again_from_the_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let created = HostKey::load_or_create(dir.path()).unwrap();
        fs::remove_file(dir.path().join(HOST_PUBLIC_KEY_FILE)).unwrap();
        HostKey::load_or_create(dir.path()).unwrap();
        assert_eq!(load_public_key(dir.path()).unwrap().as_ref(), Some(created.public_key()));
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        HostKey::load_or_create(dir.path()).unwrap();
        let private = dir.path().join(HOST_KEY_FILE);
        fs::set_permissions(&private, fs::Permissions::from_mode(0o644)).unwrap();
        let error = HostKey::load(dir.path()).err().unwrap().to_string();
        assert!(error.contains("must be 0600"), "{error}");
    }

    #[test]
    fn known_hosts_lines_follow_openssh() {
        let dir = tempfile::tempdir().unwrap();
        let key = HostKey::load_or_create(dir.path()).unwrap();
        let data = key.public_line().split_whitespace().nth(1).unwrap().to_string();
        assert_eq!(key.known_hosts_line("127.0.0.1", 2222), format!("[127.0.0.1]:2222 ssh-ed25519 {data}"));
        assert_eq!(key.known_hosts_line("gw.example", 22), format!("gw.example ssh-ed25519 {data}"));
    }

    /// OpenSSH itself reads the files: `ssh-keygen -y` derives the same
    /// public key from the private file, `ssh-keygen -lf` shows the same
    /// fingerprint.
    #[test]
    fn openssh_reads_the_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = HostKey::load_or_create(dir.path()).unwrap();
        let run = |args: &[&str]| {
            let out =
                std::process::Command::new("ssh-keygen").args(args).output().expect("ssh-keygen (openssh-client)");
            assert!(out.status.success(), "ssh-keygen {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        };
        let private = dir.path().join(HOST_KEY_FILE);
        let derived = run(&["-y", "-f", private.to_str().unwrap()]);
        let derived: Vec<&str> = derived.split_whitespace().take(2).collect();
        let ours: Vec<String> = key.public_line().split_whitespace().take(2).map(str::to_string).collect();
        assert_eq!(derived, ours);
        let listed = run(&["-lf", dir.path().join(HOST_PUBLIC_KEY_FILE).to_str().unwrap()]);
        assert!(listed.contains(&key.fingerprint()), "{listed} lacks {}", key.fingerprint());
    }

    #[test]
    fn no_public_key_before_one_is_created() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_public_key(dir.path()).unwrap().is_none());
    }
}
