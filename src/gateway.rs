//! Starting the gateway's listeners from the configuration.

use std::sync::Arc;

use anyhow::Context;
use proctor_gateway_core::auth::Authenticator;
use proctor_gateway_core::config::ResourceKind;
use proctor_gateway_core::session::RunningResource;
use proctor_gateway_core::threads::SessionThreads;
use proctor_gateway_core::tls;
use proctor_postgres::rules::RuleSet;
use proctor_postgres::{self as postgres, CancelRegistry, Shared, StatementPolicy};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::wiring::RecorderSink;

/// The running listeners.
pub struct Gateway {
    tasks: JoinSet<()>,
    /// Each resource's name and bound address.
    pub listeners: Vec<(String, std::net::SocketAddr)>,
    /// The resources served, whatever their protocol (their session
    /// counters feed the metrics).
    pub resources: Vec<Arc<dyn RunningResource>>,
    /// Statement rules, shared by every session (decision counts feed the metrics).
    pub policy: Arc<StatementPolicy>,
    /// The SSH user CA, when SSH resources are served: it signs grants'
    /// certificates.
    pub ssh_user_ca: Option<Arc<proctor_ssh::certificate::UserCa>>,
    /// SSH rule sets, shared by every SSH session (held commands go to the
    /// control plane through it).
    pub ssh_policy: Arc<proctor_ssh::rules::SshPolicy>,
}

impl Gateway {
    /// Waits until every listener has stopped and its sessions have ended.
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The shared secrets of the resources that still have one.
pub fn client_secrets(config: &Config) -> anyhow::Result<Vec<(String, String)>> {
    let mut secrets = Vec::new();
    for resource in &config.resources {
        if let Some(secret) = resource.client_secret()? {
            let secret = secret.resolve().with_context(|| format!("resource {}", resource.name))?;
            secrets.push((resource.name.clone(), secret));
        }
    }
    Ok(secrets)
}

/// Binds every resource's listener and starts serving, clients checked by `auth`.
pub async fn start<A: Authenticator>(
    config: &Config,
    sink: RecorderSink,
    auth: Arc<A>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Gateway> {
    let mut tasks = JoinSet::new();
    let mut listeners = Vec::new();
    let rules = config.rules.iter().map(|(name, rules)| RuleSet::new(name, rules)).collect::<Result<Vec<_>, _>>()?;
    let masking = Arc::new(config.masking_profiles()?);
    let ssh_sets = config
        .ssh_rules
        .iter()
        .map(|(name, rules)| proctor_ssh::rules::SshRuleSet::new(name, rules))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!(e))?;
    // Held commands are known by a hash keyed by the masking key, as held
    // statements are.
    let ssh_policy = Arc::new(proctor_ssh::rules::SshPolicy::new(ssh_sets, masking.key().clone()));
    let policy = Arc::new(StatementPolicy::new(rules).with_key(masking.key().clone()));
    if config.resources.is_empty() {
        return Ok(Gateway { tasks, listeners, resources: Vec::new(), policy, ssh_user_ca: None, ssh_policy });
    }
    let (server_tls, cert) =
        tls::server_config(&config.tls, &config.data_dir.join("tls"), &[proctor_postgres::ALPN_POSTGRESQL])
            .context("cannot set up TLS")?;
    let cancels = Arc::new(CancelRegistry::default());
    let count = config.session_threads.unwrap_or_else(SessionThreads::default_count);
    let threads =
        SessionThreads::start_with(count, config.session_scheduling).context("cannot start the session threads")?;
    let mut resources: Vec<Arc<dyn RunningResource>> = Vec::new();
    // Created (or loaded) once, for every SSH resource.
    let mut ssh_host_key = None;
    // And the user CA and keystroke key, for every SSH resource.
    let mut ssh_keys = None;
    for resource in &config.resources {
        match &resource.kind {
            ResourceKind::Postgres(postgres) => {
                let shared = Shared {
                    cancels: cancels.clone(),
                    policy: policy.clone(),
                    masking: masking.clone(),
                    threads: Some(threads.clone()),
                };
                let tls = Some(server_tls.clone());
                let (pg, bound, serving) = postgres::start(
                    &resource.name,
                    resource.listen,
                    postgres,
                    sink.clone(),
                    auth.clone(),
                    tls,
                    shared,
                    stop.clone(),
                )
                .await
                .with_context(|| format!("resource {}", resource.name))?;
                tracing::info!(
                    resource = %resource.name,
                    listen = %bound,
                    target = %postgres.target,
                    certificate = %cert.display(),
                    "postgres resource ready"
                );
                resources.push(pg);
                listeners.push((resource.name.clone(), bound));
                tasks.spawn(serving);
            }
            ResourceKind::Ssh(ssh) => {
                let host_key = match &ssh_host_key {
                    Some(key) => key,
                    None => {
                        let keys_dir = proctor_recorder::layout::Layout::new(&config.data_dir).keys_dir();
                        ssh_host_key.insert(
                            proctor_ssh::host_key::HostKey::load_or_create(&keys_dir)
                                .context("cannot set up Proctor's SSH host key")?,
                        )
                    }
                };
                let (ca, keystroke_key) = match &ssh_keys {
                    Some(keys) => keys,
                    None => {
                        let keys_dir = proctor_recorder::layout::Layout::new(&config.data_dir).keys_dir();
                        let ca = proctor_ssh::certificate::UserCa::load_or_create(&keys_dir)
                            .context("cannot set up Proctor's SSH user CA")?;
                        // Keys the digests of keystrokes at terminals:
                        // Proctor's own, read by no command that reads
                        // recordings.
                        let path = keys_dir.join("keystroke.key");
                        let key = proctor_gateway_core::masking::MaskingKey::load_or_create(&path)
                            .context("cannot set up the keystroke digest key")?;
                        ssh_keys.insert((Arc::new(ca), key))
                    }
                };
                let (running, bound, serving) = proctor_ssh::start(
                    &resource.name,
                    resource.listen,
                    ssh,
                    host_key,
                    Some(ca.clone()),
                    keystroke_key.clone(),
                    ssh_policy.clone(),
                    sink.clone(),
                    auth.clone(),
                    masking.clone(),
                    Some(threads.clone()),
                    stop.clone(),
                )
                .await
                .with_context(|| format!("resource {}", resource.name))?;
                tracing::info!(
                    resource = %resource.name,
                    listen = %bound,
                    target = %ssh.target,
                    host_key = %host_key.fingerprint(),
                    "ssh resource ready"
                );
                resources.push(running);
                listeners.push((resource.name.clone(), bound));
                tasks.spawn(serving);
            }
        }
    }
    let ssh_user_ca = ssh_keys.map(|(ca, _)| ca);
    Ok(Gateway { tasks, listeners, resources, policy, ssh_user_ca, ssh_policy })
}
