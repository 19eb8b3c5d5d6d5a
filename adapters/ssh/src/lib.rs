//! Proctor's SSH adapter: russh towards clients and towards targets, on
//! gateway-core's session lifecycle. A client authenticates to Proctor
//! (its user name naming a grant, its password the grant's credential),
//! Proctor authenticates to the target's sshd with its own key and the
//! target's pinned host key, and each channel's requests and bytes are
//! recorded before they pass.
//!
//! What runs: session channels with `exec` (stdin, stdout, stderr apart,
//! exit status and signal, EOF and close), terminals (`pty-req`, `shell`,
//! resizes, signals: keystrokes recorded as lengths and keyed digests,
//! command lines recovered from their echo), the `sftp` subsystem (read as
//! file operations), several per connection; local port forwarding to the
//! destinations a rule set lists; exec commands decided by SSH rule sets;
//! output masked as it streams under a masking profile.
//! Other subsystems, `env`, remote, agent and X11 forwarding are refused,
//! and the refusal recorded. Clients log in with a grant's credential or a
//! certificate from Proctor's SSH user CA.

pub mod certificate;
pub mod flow;
pub mod host_key;
pub mod mask;
pub mod rules;
mod session;
pub mod sftp;

use std::sync::Arc;
use std::time::Duration;

use proctor_gateway_core::EventSink;
use proctor_gateway_core::auth::Authenticator;
use proctor_gateway_core::masking::{MaskingKey, Profiles};
use proctor_gateway_core::session::SessionCounters;
use proctor_gateway_core::threads::SessionThreads;
use russh::keys::{PrivateKey, PublicKey};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::certificate::UserCa;
use crate::host_key::HostKey;
use proctor_gateway_core::GatewayError;
use proctor_gateway_core::config::{ResourceProtocol, SshConfig};

/// The target of an SSH resource, and how Proctor reaches it.
pub struct SshTarget {
    /// `host:port` of the target's sshd.
    pub address: String,
    /// The account Proctor logs in as.
    pub user: String,
    /// Proctor's key for that account (never shown to clients).
    pub key: Arc<PrivateKey>,
    /// The target's host keys, pinned: any other refuses the session.
    pub host_keys: Vec<PublicKey>,
    pub connect_timeout: Duration,
}

/// An SSH resource, ready to serve.
pub struct SshResource {
    pub name: String,
    pub target: SshTarget,
    /// Its connections, counted for metrics.
    pub sessions: SessionCounters,
    /// The CA whose user certificates log clients in, beside passwords.
    pub user_ca: Option<Arc<UserCa>>,
    /// What keys the digests of keystrokes typed at terminals.
    pub keystroke_key: MaskingKey,
    /// The SSH rule sets grants may name, and where held commands go.
    pub policy: Arc<rules::SshPolicy>,
    server: Arc<russh::server::Config>,
}

/// The ciphers offered to clients: AES-GCM, then AES-CTR (with russh's
/// MACs, encrypt-then-MAC first). ChaCha20-Poly1305 is not offered: OpenSSH
/// clients take it first whenever it is, and it costs the gateway several
/// times AES's CPU per byte relayed. (OpenSSH's default order then settles
/// on aes128-ctr; a client configured for AES-GCM gets it.)
fn client_algorithms() -> russh::Preferred {
    use russh::cipher::{AES_128_CTR, AES_128_GCM, AES_192_CTR, AES_256_CTR, AES_256_GCM};
    let cipher: Vec<russh::cipher::Name> = [AES_256_GCM, AES_128_GCM, AES_256_CTR, AES_192_CTR, AES_128_CTR]
        .into_iter()
        .filter(|c| russh::cipher::ALL_CIPHERS.contains(&c))
        .collect();
    russh::Preferred { cipher: cipher.into(), ..russh::Preferred::default() }
}

impl SshResource {
    /// Resource `name`, presenting `host_key` to clients.
    pub fn new(name: &str, target: SshTarget, host_key: &HostKey) -> SshResource {
        let server = russh::server::Config {
            server_id: russh::SshId::Standard("SSH-2.0-Proctor".into()),
            methods: russh::MethodSet::from(&[russh::MethodKind::Password, russh::MethodKind::KeyboardInteractive][..]),
            keys: vec![host_key.private_key().clone()],
            // A refused password is answered after the same delay whatever
            // went wrong.
            auth_rejection_time: Duration::from_secs(1),
            auth_rejection_time_initial: Some(Duration::ZERO),
            // A session ends with its grant, its lease or its peers; not
            // because nobody typed for a while. A client that vanishes
            // without a word is found out by keepalives.
            inactivity_timeout: None,
            keepalive_interval: Some(session::KEEPALIVE),
            keepalive_max: 3,
            preferred: client_algorithms(),
            ..Default::default()
        };
        SshResource {
            name: name.to_string(),
            target,
            sessions: SessionCounters::default(),
            user_ca: None,
            keystroke_key: ephemeral_key(),
            policy: Arc::new(rules::SshPolicy::none()),
            server: Arc::new(server),
        }
    }

    /// Keys keystroke digests with `key` (the deployment's, kept:
    /// `keys/keystroke.key`); without it, a key of this process only, so
    /// that digests confirm nothing once it has gone.
    pub fn with_keystroke_key(mut self, key: MaskingKey) -> SshResource {
        self.keystroke_key = key;
        self
    }

    /// Decides commands by `policy`'s rule sets (those grants name).
    pub fn with_policy(mut self, policy: Arc<rules::SshPolicy>) -> SshResource {
        self.policy = policy;
        self
    }

    /// Accepts user certificates `ca` signed (for the grant named as user),
    /// beside passwords.
    pub fn with_user_ca(mut self, ca: Arc<UserCa>) -> SshResource {
        // Made by `new` and not shared yet.
        if let Some(server) = Arc::get_mut(&mut self.server) {
            server.methods = russh::MethodSet::from(
                &[russh::MethodKind::PublicKey, russh::MethodKind::Password, russh::MethodKind::KeyboardInteractive][..],
            );
        }
        self.user_ca = Some(ca);
        self
    }
}

impl SshResource {
    /// Resolves SSH resource `name` as configured: Proctor's key for the
    /// target, and the target's pinned host keys.
    pub fn from_config(name: &str, config: &SshConfig, host_key: &HostKey) -> Result<SshResource, GatewayError> {
        let bad = |message: String| GatewayError::Config(format!("resource {name}: {message}"));
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&config.key_file)
                .map_err(|e| bad(format!("cannot read key_file {}: {e}", config.key_file.display())))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(bad(format!(
                    "key_file {} is readable by other accounts (mode {:o}); make it 0600, as ssh requires of its keys",
                    config.key_file.display(),
                    mode & 0o777
                )));
            }
        }
        let key = russh::keys::load_secret_key(&config.key_file, None)
            .map_err(|e| bad(format!("cannot load key_file {}: {e}", config.key_file.display())))?;
        let host_keys = match (&config.target_host_key, &config.known_hosts) {
            (Some(line), _) => vec![
                PublicKey::from_openssh(line.trim())
                    .map_err(|e| bad(format!("target_host_key is not an OpenSSH public key line: {e}")))?,
            ],
            (None, Some(file)) => {
                let (host, port) = split_address(&config.target).map_err(bad)?;
                // russh reads an unreadable file as an empty one.
                std::fs::File::open(file)
                    .map_err(|e| bad(format!("cannot read known_hosts {}: {e}", file.display())))?;
                let keys = russh::keys::known_hosts::known_host_keys_path(&host, port, file)
                    .map_err(|e| bad(format!("cannot read known_hosts {}: {e}", file.display())))?;
                if keys.is_empty() {
                    return Err(bad(format!(
                        "known_hosts {} has no key for {} (ssh-keyscan -p {port} {host} >> {} adds it, once checked)",
                        file.display(),
                        config.target,
                        file.display()
                    )));
                }
                keys.into_iter().map(|(_, key)| key).collect()
            }
            (None, None) => return Err(bad("the target's host key must be pinned".to_string())),
        };
        let target = SshTarget {
            address: config.target.clone(),
            user: config.user.clone(),
            key: Arc::new(key),
            host_keys,
            connect_timeout: Duration::from_secs(10),
        };
        Ok(SshResource::new(name, target, host_key))
    }
}

/// A random key, never stored.
fn ephemeral_key() -> MaskingKey {
    let mut bytes = vec![0u8; 32];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness: digests keyed by nothing secret would confirm
        // guesses; keyed by the clock they at least differ per run.
        bytes = format!("{:?}", std::time::SystemTime::now()).into_bytes();
    }
    MaskingKey::new(bytes)
}

/// `host:port` (or `[v6]:port`) split; the port is required.
fn split_address(address: &str) -> Result<(String, u16), String> {
    let (host, port) = address.rsplit_once(':').ok_or_else(|| format!("target {address:?} is not host:port"))?;
    let port = port.parse().map_err(|_| format!("target {address:?}: {port:?} is not a port"))?;
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_string(), port))
}

impl proctor_gateway_core::session::RunningResource for SshResource {
    fn name(&self) -> &str {
        &self.name
    }

    fn protocol(&self) -> ResourceProtocol {
        ResourceProtocol::Ssh
    }

    fn sessions(&self) -> &SessionCounters {
        &self.sessions
    }
}

/// What every connection of a resource shares.
pub(crate) struct Context<S, A> {
    pub resource: Arc<SshResource>,
    pub sink: S,
    pub auth: Arc<A>,
    pub masking: Arc<Profiles>,
}

/// Serves one resource until `shutdown` turns true, then ends its sessions
/// (each records its end) and returns once they are all over.
pub async fn serve<S: EventSink, A: Authenticator>(
    resource: Arc<SshResource>,
    listener: TcpListener,
    sink: S,
    auth: Arc<A>,
    masking: Arc<Profiles>,
    threads: Option<Arc<SessionThreads>>,
    shutdown: watch::Receiver<bool>,
) {
    let name = resource.name.clone();
    let ctx = Arc::new(Context { resource, sink, auth, masking });
    proctor_gateway_core::session::serve(&name, listener, threads, shutdown, move |tcp, addr, shutdown| {
        let ctx = ctx.clone();
        async move {
            let _entered = ctx.resource.sessions.enter();
            session::handle(ctx.clone(), tcp, addr, shutdown).await;
        }
    })
    .await;
}

/// Starts an SSH resource: resolves its keys, binds `listen`, and returns
/// the resource (what the wiring and the metrics see of it), the address
/// bound, and the future that serves it until `shutdown` (see [`serve`]).
#[allow(clippy::too_many_arguments)]
pub async fn start<S: EventSink, A: Authenticator>(
    name: &str,
    listen: std::net::SocketAddr,
    config: &SshConfig,
    host_key: &HostKey,
    user_ca: Option<Arc<UserCa>>,
    keystroke_key: MaskingKey,
    policy: Arc<rules::SshPolicy>,
    sink: S,
    auth: Arc<A>,
    masking: Arc<Profiles>,
    threads: Option<Arc<SessionThreads>>,
    shutdown: watch::Receiver<bool>,
) -> Result<(Arc<SshResource>, std::net::SocketAddr, impl std::future::Future<Output = ()> + use<S, A>), GatewayError> {
    let mut resource =
        SshResource::from_config(name, config, host_key)?.with_keystroke_key(keystroke_key).with_policy(policy);
    if let Some(ca) = user_ca {
        resource = resource.with_user_ca(ca);
    }
    let resource = Arc::new(resource);
    let (listener, bound) = proctor_gateway_core::session::bind(listen).await?;
    let serving = serve(resource.clone(), listener, sink, auth, masking, threads, shutdown);
    Ok((resource, bound, serving))
}
