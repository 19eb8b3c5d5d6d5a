//! The PostgreSQL gateway: one listener per resource; each client
//! connection is authenticated by Proctor, connected to the target with a
//! credential the client never sees, and relayed frame by frame, every
//! statement and result recorded before it passes.

mod cancel;
mod catalog;
pub mod classify;
mod copyout;
mod frame;
#[doc(hidden)]
pub mod fuzzing;
mod gate;
mod interrupt;
mod mask;
mod messages;
mod predicate;
mod protocol;
pub mod rules;
mod session;
mod shape;
mod startup;
mod upstream;
mod values;

/// The ALPN protocol of PostgreSQL's direct TLS (PostgreSQL 17): what the
/// PostgreSQL listener's TLS offers ([`proctor_gateway_core::tls::server_config`]).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

use std::sync::Arc;
use std::time::Duration;

pub use cancel::CancelRegistry;
pub use catalog::Catalog;
pub use gate::StatementPolicy;
pub use protocol::{Protocol, SampleLimits};
use tokio::net::TcpListener;
use tokio::sync::watch;
pub use upstream::Target;

use proctor_gateway_core::auth::Authenticator;
use proctor_gateway_core::config::PostgresConfig;
use proctor_gateway_core::masking::Profiles;
use proctor_gateway_core::session::SessionCounters;
use proctor_gateway_core::threads::SessionThreads;
use proctor_gateway_core::{EventSink, GatewayError};

/// A PostgreSQL resource, resolved and ready to serve.
pub struct PgResource {
    pub name: String,
    pub allow_plaintext: bool,
    pub target: Target,
    pub limits: SampleLimits,
    /// Its connections, counted for metrics.
    pub sessions: SessionCounters,
    /// Proctor's own view of the target's catalog (for masking).
    pub catalog: Catalog,
    /// The databases a grant's credential opens: the resource's `database`
    /// and any `databases` listed beside it.
    pub databases: Vec<String>,
}

impl proctor_gateway_core::session::RunningResource for PgResource {
    fn name(&self) -> &str {
        &self.name
    }

    fn protocol(&self) -> proctor_gateway_core::config::ResourceProtocol {
        proctor_gateway_core::config::ResourceProtocol::Postgres
    }

    fn sessions(&self) -> &SessionCounters {
        &self.sessions
    }
}

impl PgResource {
    /// Resolves the secrets and TLS settings of PostgreSQL resource `name`.
    pub fn from_config(name: &str, config: &PostgresConfig) -> Result<PgResource, GatewayError> {
        let password = config.password(name)?.resolve()?;
        let tls = proctor_gateway_core::tls::target_client_config(config.target_tls, config.target_ca_file.as_deref())?;
        Ok(PgResource {
            name: name.to_string(),
            allow_plaintext: config.allow_plaintext,
            target: Target {
                address: config.target.clone(),
                user: config.user.clone(),
                password,
                tls,
                connect_timeout: Duration::from_secs(10),
            },
            limits: SampleLimits { rows: config.sample_rows, bytes: config.sample_bytes },
            sessions: SessionCounters::default(),
            catalog: Catalog::default(),
            databases: std::iter::once(config.offered_database().to_string())
                .chain(config.databases.iter().cloned())
                .collect(),
        })
    }
}

/// What every connection of a resource shares.
pub(crate) struct Context<S, A> {
    pub resource: Arc<PgResource>,
    pub sink: S,
    pub auth: Arc<A>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub cancels: Arc<CancelRegistry>,
    pub policy: Arc<StatementPolicy>,
    pub masking: Arc<Profiles>,
}

/// What every resource of a gateway shares: cancel keys (a cancel request
/// may arrive on any listener), statement rules, masking profiles, and the
/// threads sessions run on (without them, on the listener's runtime).
#[derive(Clone)]
pub struct Shared {
    pub cancels: Arc<CancelRegistry>,
    pub policy: Arc<StatementPolicy>,
    pub masking: Arc<Profiles>,
    pub threads: Option<Arc<SessionThreads>>,
}

impl Default for Shared {
    /// No rules, no masking.
    fn default() -> Shared {
        Shared {
            cancels: Arc::default(),
            policy: Arc::new(StatementPolicy::new([])),
            masking: Arc::new(Profiles::none()),
            threads: None,
        }
    }
}

/// Serves one resource until `shutdown` turns true, then ends its sessions
/// (each records its end) and returns once they are all over.
pub async fn serve<S: EventSink, A: Authenticator>(
    resource: Arc<PgResource>,
    listener: TcpListener,
    sink: S,
    auth: Arc<A>,
    tls: Option<Arc<rustls::ServerConfig>>,
    Shared { cancels, policy, masking, threads }: Shared,
    shutdown: watch::Receiver<bool>,
) {
    let name = resource.name.clone();
    let ctx = Arc::new(Context { resource, sink, auth, tls: tls.map(startup::acceptor), cancels, policy, masking });
    proctor_gateway_core::session::serve(&name, listener, threads, shutdown, move |tcp, addr, shutdown| {
        let ctx = ctx.clone();
        async move {
            let _entered = ctx.resource.sessions.enter();
            session::handle(ctx.clone(), tcp, addr, shutdown).await;
        }
    })
    .await;
}

/// Starts a PostgreSQL resource: resolves its secrets and TLS towards the
/// target, binds `listen`, and returns the resource (what the wiring and
/// the metrics see of it), the address bound, and the future that serves it
/// until `shutdown` (see [`serve`]).
#[allow(clippy::too_many_arguments)]
pub async fn start<S: EventSink, A: Authenticator>(
    name: &str,
    listen: std::net::SocketAddr,
    config: &PostgresConfig,
    sink: S,
    auth: Arc<A>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shared: Shared,
    shutdown: watch::Receiver<bool>,
) -> Result<(Arc<PgResource>, std::net::SocketAddr, impl std::future::Future<Output = ()> + use<S, A>), GatewayError> {
    let resource = Arc::new(PgResource::from_config(name, config)?);
    let (listener, bound) = proctor_gateway_core::session::bind(listen).await?;
    let serving = serve(resource.clone(), listener, sink, auth, tls, shared, shutdown);
    Ok((resource, bound, serving))
}
