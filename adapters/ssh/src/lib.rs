//! Proctor's SSH adapter: russh towards clients and towards targets, on
//! gateway-core's session lifecycle. A client authenticates to Proctor
//! (its user name naming a grant, its password the grant's credential),
//! Proctor authenticates to the target's sshd with its own key and the
//! target's pinned host key, and each channel's requests and bytes are
//! recorded before they pass.
//!
//! What runs today: session channels with `exec` (stdin, stdout, stderr
//! apart, exit status and signal, EOF and close), several per connection.
//! Terminals (`pty-req`, `shell`), subsystems (SFTP), `env` and every kind
//! of forwarding are refused, and the refusal recorded: their input is not
//! yet recorded the way a terminal's must be (typed passwords kept out).

pub mod flow;
pub mod host_key;
mod session;

use std::sync::Arc;
use std::time::Duration;

use proctor_gateway_core::EventSink;
use proctor_gateway_core::auth::Authenticator;
use proctor_gateway_core::masking::Profiles;
use proctor_gateway_core::session::SessionCounters;
use proctor_gateway_core::threads::SessionThreads;
use russh::keys::{PrivateKey, PublicKey};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::host_key::HostKey;

/// The target of an SSH resource, and how Proctor reaches it.
pub struct SshTarget {
    /// `host:port` of the target's sshd.
    pub address: String,
    /// The account Proctor logs in as.
    pub user: String,
    /// Proctor's key for that account (never shown to clients).
    pub key: Arc<PrivateKey>,
    /// The target's host key, pinned: any other refuses the session.
    pub host_key: PublicKey,
    pub connect_timeout: Duration,
}

/// An SSH resource, ready to serve.
pub struct SshResource {
    pub name: String,
    pub target: SshTarget,
    /// Its connections, counted for metrics.
    pub sessions: SessionCounters,
    server: Arc<russh::server::Config>,
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
            // because nobody typed for a while.
            inactivity_timeout: None,
            ..Default::default()
        };
        SshResource { name: name.to_string(), target, sessions: SessionCounters::default(), server: Arc::new(server) }
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
