use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use proctor_gateway_core::ControlSession;
use proctor_recorder::Recorder;
use proctor_schemas::EndReason;
use tokio::signal::unix::{SignalKind, signal};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use proctor_gateway_core::auth::SharedSecretAuthenticator;
use proctor_gateway_core::control::{Control, ControlConfig, GrantAuthenticator, LiveGrants, Policies, SqlStore, api};
use proctor_gateway_core::identity::{DevIssuer, Verifier};
use proctor_gateway_core::session::RunningResource;
use proctor_replay_server::{ApiState, Console, ConsoleConfig, DevIssuerEndpoints, RecorderAccessLog};

use crate::cli::UpArgs;
use crate::config::Config;
use crate::wiring::RecorderSink;

pub fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => {
            tracing::info!("no --config given: using the embedded default (data dir ./proctor-data)");
            Config::embedded_default()?
        }
    };
    // Before anything is written: who may read what is created from now on,
    // and what is there already.
    crate::data_dir::prepare(&config.data_dir, config.data_dir_group.as_ref())?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    runtime.block_on(serve(config, "proctor up", |ready| {
        for (name, addr) in &ready.listeners {
            tracing::info!(resource = %name, listen = %addr, "listening");
        }
        if let Some(url) = &ready.replay_url {
            tracing::info!(url = %url, "replay API listening");
        }
        if let Some(url) = &ready.api_url {
            tracing::info!(url = %url, "control API listening");
        }
        Ok(())
    }))?;
    Ok(ExitCode::SUCCESS)
}

/// How often notes of reads beside this Proctor are recorded.
const NOTES_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// How often the index catches up with the recording.
const INDEX_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// What is listening once Proctor is up.
pub struct Ready {
    /// Each resource's name and bound address.
    pub listeners: Vec<(String, SocketAddr)>,
    pub key_fingerprint: String,
    /// The replay API's base URL, when configured.
    pub replay_url: Option<String>,
    /// The control API's base URL, when configured.
    pub api_url: Option<String>,
}

/// How often grants are checked for expiry (and for changes made by other
/// gateways sharing the store): well under the second within which a
/// session must end.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

type Tasks = Vec<tokio::task::JoinHandle<()>>;

/// The gateway's own metrics, in the Prometheus text format: sessions by
/// resource, the recorder's counters and WAL files, free space under the
/// data dir.
fn gateway_metrics(
    gateway: &crate::gateway::Gateway,
    sink: proctor_recorder::Sink,
    data_dir: PathBuf,
) -> api::MetricsSource {
    let resources = gateway.resources.clone();
    let policy = gateway.policy.clone();
    Arc::new(move || {
        let mut out = String::new();
        let decisions: Vec<(String, f64)> =
            policy.decisions().iter().map(|(o, n)| (format!("outcome=\"{}\"", o.as_str()), *n as f64)).collect();
        api::family(
            &mut out,
            "proctor_policy_decisions_total",
            "counter",
            "Statement policy decisions under rules, by outcome (a held statement counts when the control plane answers).",
            &decisions,
        );
        let by_resource = |value: &dyn Fn(&dyn RunningResource) -> u64| -> Vec<(String, f64)> {
            resources.iter().map(|r| (format!("resource=\"{}\"", r.name()), value(&**r) as f64)).collect()
        };
        let live = by_resource(&|r| r.sessions().live());
        api::family(&mut out, "proctor_sessions_live", "gauge", "Client connections open, by resource.", &live);
        let total = by_resource(&|r| r.sessions().total());
        api::family(&mut out, "proctor_sessions_total", "counter", "Client connections accepted, by resource.", &total);
        let stats = sink.stats();
        let one = |v: u64| [(String::new(), v as f64)];
        api::family(
            &mut out,
            "proctor_recorder_events_total",
            "counter",
            "Events accepted into the WAL.",
            &one(stats.events),
        );
        api::family(
            &mut out,
            "proctor_recorder_wal_bytes_total",
            "counter",
            "Bytes written to the WAL.",
            &one(stats.wal_bytes),
        );
        api::family(
            &mut out,
            "proctor_recorder_segments_sealed_total",
            "counter",
            "Segments sealed.",
            &one(stats.segments_sealed),
        );
        api::family(
            &mut out,
            "proctor_recorder_seal_queue",
            "gauge",
            "The recorder's queue: full WAL files waiting for the sealer to turn them into segments.",
            &one(sink.unsealed_segments() as u64),
        );
        api::family(
            &mut out,
            "proctor_recorder_failed",
            "gauge",
            "1 when the recorder refuses events (it failed closed: sessions are refused until it recovers).",
            &one(u64::from(sink.failure().is_some())),
        );
        let wal_files = std::fs::read_dir(data_dir.join("wal"))
            .map(|dir| dir.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "wal")).count())
            .unwrap_or(0);
        api::family(
            &mut out,
            "proctor_recorder_wal_files",
            "gauge",
            "WAL files on disk: the one being written, the spare, and those waiting to be sealed.",
            &one(wal_files as u64),
        );
        if let Ok(free) = proctor_recorder::layout::free_bytes(&data_dir) {
            api::family(
                &mut out,
                "proctor_data_dir_free_bytes",
                "gauge",
                "Bytes free to Proctor on the data dir's file system.",
                &one(free),
            );
        }
        out
    })
}

/// What grants need before the listeners start: the control store, and the
/// registry of live sessions by grant.
struct GrantsPlane<'a> {
    config: &'a ControlConfig,
    store: SqlStore,
    live: Arc<LiveGrants>,
}

/// The control store named by `[control] store`.
async fn open_store(config: &Config, control: &ControlConfig) -> anyhow::Result<SqlStore> {
    let url = if control.store == "sqlite" {
        // The path is percent-decoded by the driver: encode what would not survive.
        // Created private first: SQLite gives its journal files the
        // database's own mode.
        let path = config.data_dir.join("control.db");
        crate::data_dir::create_private_file(&path)?;
        let path = path.display().to_string();
        let path = path.replace('%', "%25").replace('?', "%3F").replace('#', "%23");
        format!("sqlite://{path}")
    } else {
        control.store.clone()
    };
    Ok(SqlStore::open(&url).await?)
}

/// Starts the control API and the expiry sweeper; they stop when `stopped`
/// turns true.
async fn start_control(
    config: &Config,
    GrantsPlane { config: control_config, store, live }: GrantsPlane<'_>,
    session: ControlSession<RecorderSink>,
    gateway: &crate::gateway::Gateway,
    metrics: api::MetricsSource,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(String, Tasks)> {
    let listeners = &gateway.listeners;
    let verifier = Arc::new(verifier(config).await?);
    let mut offers = HashMap::new();
    for (name, addr) in listeners {
        let Some(resource) = config.resources.iter().find(|r| &r.name == name) else { continue };
        let host = match &control_config.public_host {
            Some(host) => host.clone(),
            None if addr.ip().is_unspecified() => "localhost".to_string(),
            None => addr.ip().to_string(),
        };
        let keys_dir = proctor_recorder::layout::Layout::new(&config.data_dir).keys_dir();
        let ssh_host_key =
            proctor_ssh::host_key::load_public_key(&keys_dir)?.map(|k| proctor_ssh::host_key::public_line(&k));
        offers.insert(name.clone(), resource.offer(host, addr.port(), ssh_host_key.as_deref()));
    }
    let policies = Policies::new(config.policies.clone())?;
    let mut control = Control::new(
        store,
        policies,
        offers,
        session,
        live,
        control_config.pending_ttl,
        control_config.admin_group.clone(),
    );
    if let Some(ca) = &gateway.ssh_user_ca {
        control = control.with_ssh_certifier(ca.clone());
    }
    let control = Arc::new(control);
    // Statements the rules hold are reviewed here.
    gateway.policy.set_holds(control.clone());
    gateway.ssh_policy.set_holds(control.clone());
    let (listener, tls, url) = bind_api(config, "control", control_config.listen, control_config.tls).await?;
    let app = api::router(Arc::new(api::ControlApi { control: control.clone(), verifier, metrics: Some(metrics) }));
    let mut api_stopped = stopped.clone();
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = api_stopped.wait_for(|stop| *stop).await;
        };
        if let Err(error) = proctor_gateway_core::http::serve(listener, app, tls, shutdown).await {
            tracing::error!(%error, "the control API failed");
        }
    });
    let mut sweep_stopped = stopped;
    let sweeper = tokio::spawn(async move {
        let mut failing = false;
        loop {
            match control.sweep().await {
                Ok(()) => failing = false,
                Err(error) if !failing => {
                    failing = true;
                    tracing::error!(%error, "could not check grants for expiry; retrying");
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = sweep_stopped.wait_for(|stop| *stop) => break,
                () = tokio::time::sleep(SWEEP_INTERVAL) => {}
            }
        }
        // Grants that ran out while Proctor stopped are recorded as expired
        // before the recorder closes.
        if let Err(error) = control.sweep().await {
            tracing::error!(%error, "could not record the last expiries");
        }
    });
    Ok((url, vec![server, sweeper]))
}

/// The verifier of API tokens: the configured issuers, and the dev issuer
/// when it is on (its JWKS written beside its key).
pub async fn verifier(config: &Config) -> anyhow::Result<Verifier> {
    let mut issuers = config.identity.issuers.clone();
    if let Some(dev) = config.identity.dev_issuer.as_ref().filter(|d| d.enabled) {
        let issuer = DevIssuer::open_or_create(&config.data_dir, dev)?;
        let jwks = proctor_gateway_core::identity::dev_issuer_jwks_path(&config.data_dir);
        issuers.push(issuer.issuer_config(&jwks)?);
    }
    anyhow::ensure!(
        !issuers.is_empty(),
        "the replay API needs someone to vouch for its callers: configure [[identity.issuers]] or [identity.dev_issuer]"
    );
    Ok(Verifier::new(&issuers).await?)
}

/// Binds one of Proctor's HTTP APIs (`name`: its config section): the
/// listener, the TLS configuration with the `[tls]` (or dev) certificate if
/// `tls`, and the base URL. Plain HTTP beyond loopback is warned about.
async fn bind_api(
    config: &Config,
    name: &str,
    listen: SocketAddr,
    tls: bool,
) -> anyhow::Result<(tokio::net::TcpListener, Option<proctor_gateway_core::http::ServerTls>, String)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("the {name} API cannot listen on {listen}"))?;
    let tls = if tls {
        let (server, _) = proctor_gateway_core::tls::http_server_config(&config.tls, &config.data_dir.join("tls"))
            .with_context(|| format!("cannot set up TLS for the {name} API"))?;
        Some(server)
    } else {
        None
    };
    if tls.is_none() && !listen.ip().is_loopback() {
        tracing::warn!(
            %listen,
            "the {name} API speaks plain HTTP beyond loopback: bearer tokens cross the network in clear; set [{name}] tls = true or put a TLS-terminating proxy in front"
        );
    }
    let url = format!("{}://{}", if tls.is_some() { "https" } else { "http" }, listener.local_addr()?);
    Ok((listener, tls, url))
}

/// The web console of a replay server at `url`, and the dev issuer's
/// sign-in endpoints when it signs in with them.
fn console(
    config: &Config,
    replay: &crate::config::ReplayConfig,
    url: &str,
) -> anyhow::Result<(std::sync::Arc<Console>, Option<std::sync::Arc<DevIssuerEndpoints>>)> {
    let settings = &replay.console;
    let base = settings.public_url.clone().unwrap_or_else(|| url.to_string()).trim_end_matches('/').to_string();
    let dev = config.identity.dev_issuer.as_ref().filter(|d| d.enabled);
    // The dev issuer signs in whoever reaches its form: chosen only when
    // asked for, or when no real issuer is configured, and served only on
    // a loopback address.
    let use_dev = match settings.issuer.as_deref() {
        Some("dev") => true,
        Some(_) => false,
        None => dev.is_some() && config.identity.issuers.is_empty(),
    };
    let (issuer, dev_issuer) = if use_dev {
        let Some(dev) = dev else { anyhow::bail!("[replay.console] issuer = \"dev\" needs [identity.dev_issuer]") };
        anyhow::ensure!(
            replay.listen.ip().is_loopback(),
            "the console signs in with the dev issuer, whose form lets anyone choose who they are: it is served on a loopback address only, not {} (set [replay.console] issuer to a real OpenID Connect issuer, or listen on 127.0.0.1)",
            replay.listen
        );
        let issuer = std::sync::Arc::new(DevIssuer::open_or_create(&config.data_dir, dev)?);
        let subject = settings.dev_subject.clone().unwrap_or_else(|| "investigator@example.com".to_string());
        let groups = if settings.dev_groups.is_empty() {
            vec![replay.investigator_group.clone()]
        } else {
            settings.dev_groups.clone()
        };
        let endpoints =
            std::sync::Arc::new(DevIssuerEndpoints::new(issuer.clone(), &base, &settings.client_id, subject, groups));
        // Its sign-in tokens must not pass for its API tokens, which the
        // same key signs: their issuers differ.
        anyhow::ensure!(
            endpoints.url() != issuer.issuer(),
            "identity.dev_issuer.issuer must not be the console's sign-in URL {}",
            endpoints.url()
        );
        (endpoints.url().to_string(), Some(endpoints))
    } else {
        match (settings.issuer.as_deref(), config.identity.issuers.as_slice()) {
            (Some(issuer), _) => (issuer.to_string(), None),
            (None, [only]) => (only.issuer.clone(), None),
            (None, _) => anyhow::bail!(
                "the console needs an issuer to sign in with: set [replay.console] issuer (or enabled = false)"
            ),
        }
    };
    let console = Console::new(ConsoleConfig {
        base_url: base,
        issuer,
        client_id: settings.client_id.clone(),
        client_secret: settings.client_secret.clone(),
        ca_file: settings.ca_file.clone(),
        groups_claim: settings.groups_claim.clone(),
        investigator_group: replay.investigator_group.clone(),
        session_ttl: settings.session_ttl,
    });
    Ok((std::sync::Arc::new(console), dev_issuer))
}

/// Starts the replay API if configured; it stops when `stopped` turns true.
async fn start_replay(
    config: &Config,
    sink: proctor_recorder::Sink,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<(String, tokio::task::JoinHandle<()>)>> {
    let Some(replay) = &config.replay else { return Ok(None) };
    let verifier = std::sync::Arc::new(verifier(config).await?);
    let (listener, tls, url) = bind_api(config, "replay", replay.listen, replay.tls).await?;
    // Copies of evidence an interrupted export left are never delivered:
    // removed before anything is served.
    let removed = proctor_recorder::layout::Layout::new(&config.data_dir)
        .clear_exports()
        .context("cannot prepare the replay server's exports directory")?;
    if removed > 0 {
        tracing::info!(removed, "removed exports left by an interrupted run");
    }
    let mut state =
        ApiState::new(config.data_dir.clone(), verifier, replay.investigator_group.clone(), RecorderAccessLog(sink));
    if let Some(group) = &replay.compliance_group {
        state = state.with_compliance_group(group.clone());
    }
    if replay.console.enabled {
        let (console, dev_issuer) = console(config, replay, &url)?;
        state = state.with_console(console, dev_issuer);
    }
    // Searches by value need the key tokens were made with: the one the
    // masking profiles use, or one an earlier configuration left.
    let key_path = config.masking.key_file.clone().unwrap_or_else(|| config.data_dir.join("keys").join("masking.key"));
    if !config.masking.profiles.is_empty() || config.masking.default_profile.is_some() {
        state = state.with_token_key(config.masking_profiles()?.key().clone());
    } else if key_path.exists() {
        state = state.with_token_key(proctor_gateway_core::masking::MaskingKey::load(&key_path)?);
    }
    let state = std::sync::Arc::new(state);
    let served = proctor_replay_server::serve(listener, state, tls, async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    });
    let task = tokio::spawn(async move {
        if let Err(error) = served.await {
            tracing::error!(%error, "the replay API failed");
        }
    });
    Ok(Some((url, task)))
}

/// Runs Proctor with `config` until SIGINT or SIGTERM: opens the recorder,
/// records the control session, serves every resource, calls `on_ready` once
/// all listen, and on a stop signal ends the sessions and seals everything.
pub async fn serve(
    config: Config,
    run_name: &str,
    on_ready: impl FnOnce(&Ready) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    // Signals are taken over before anything is started, so a stop request
    // always ends in a clean seal.
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let data_dir = config.data_dir.clone();
    let settings = config.recorder.clone();
    let recorder = tokio::task::spawn_blocking(move || Recorder::open(&data_dir, &settings))
        .await?
        .with_context(|| format!("cannot open the recorder on {}", config.data_dir.display()))?;
    // The index follows the recording a second behind, on its own thread.
    let indexer = match proctor_indexer::background::Background::start(
        &config.data_dir,
        INDEX_INTERVAL,
        config.recorder.sealer_nice,
    ) {
        Ok(indexer) => Some(indexer),
        Err(error) => {
            tracing::warn!(%error, "searching will not see new events until the index can be written");
            None
        }
    };
    let sink = RecorderSink(recorder.sink());
    let control = ControlSession::start(sink.clone(), run_name)
        .await
        .context("cannot record the start of the control session")?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // The replay API first: if it cannot start, no listener was opened. An
    // error after it carries its task, to be waited for.
    let started = async {
        let (replay_url, replay) = match start_replay(&config, recorder.sink(), stopped.clone()).await {
            Ok(Some((url, task))) => (Some(url), Some(task)),
            Ok(None) => (None, None),
            Err(error) => return Err((error, Vec::new())),
        };
        let mut tasks: Tasks = replay.into_iter().collect();
        let secrets = match crate::gateway::client_secrets(&config) {
            Ok(secrets) => secrets,
            Err(error) => return Err((error, tasks)),
        };
        let grants = match &config.control {
            Some(control_config) => match open_store(&config, control_config).await {
                Ok(store) => Some(GrantsPlane { config: control_config, store, live: Arc::new(LiveGrants::default()) }),
                Err(error) => return Err((error, tasks)),
            },
            None => None,
        };
        let started = match &grants {
            Some(plane) => {
                let samples = config.policies.iter().filter_map(|p| Some((p.name.clone(), p.sample_rows?)));
                let auth = Arc::new(
                    GrantAuthenticator::new(plane.store.clone(), plane.live.clone(), secrets).with_samples(samples),
                );
                crate::gateway::start(&config, sink.clone(), auth, stopped.clone()).await
            }
            None => {
                let auth = Arc::new(SharedSecretAuthenticator::new(secrets));
                crate::gateway::start(&config, sink.clone(), auth, stopped.clone()).await
            }
        };
        let gateway = match started {
            Ok(gateway) => gateway,
            Err(error) => return Err((error, tasks)),
        };
        let mut api_url = None;
        if let Some(plane) = grants {
            let session = control.clone();
            let metrics = gateway_metrics(&gateway, recorder.sink(), config.data_dir.clone());
            let started = start_control(&config, plane, session, &gateway, metrics, stopped.clone()).await;
            match started {
                Ok((url, started)) => {
                    api_url = Some(url);
                    tasks.extend(started);
                }
                Err(error) => {
                    let _ = stop.send(true);
                    gateway.wait().await;
                    return Err((error, tasks));
                }
            }
        }
        let ready = Ready {
            listeners: gateway.listeners.clone(),
            key_fingerprint: recorder.key_fingerprint().to_string(),
            replay_url,
            api_url,
        };
        match on_ready(&ready) {
            Ok(()) => Ok((gateway, tasks)),
            Err(error) => Err((error, tasks)),
        }
    }
    .await;
    let (gateway, tasks) = match started {
        Ok(started) => started,
        Err((error, tasks)) => {
            let _ = stop.send(true);
            // The APIs stop appending before the recorder closes.
            for task in tasks {
                let _ = task.await;
            }
            let _ = control.end(EndReason::Shutdown, &format!("could not start: {error:#}")).await;
            let _ = tokio::task::spawn_blocking(move || {
                let _ = recorder.close();
                if let Some(indexer) = indexer {
                    indexer.finish();
                }
            })
            .await;
            return Err(error);
        }
    };
    tracing::info!(data_dir = %config.data_dir.display(), key = recorder.key_fingerprint(), "proctor is up; SIGINT or SIGTERM stops it");
    // Reads made on the data dir beside this Proctor leave notes; record them.
    let notes = {
        let (data_dir, sink, mut stopped) = (config.data_dir.clone(), recorder.sink(), stop.subscribe());
        tokio::spawn(async move {
            loop {
                super::access::record_notes(&data_dir, &sink).await;
                tokio::select! {
                    _ = stopped.wait_for(|stop| *stop) => break,
                    () = tokio::time::sleep(NOTES_INTERVAL) => {}
                }
            }
            // The last ones, before the recorder closes.
            super::access::record_notes(&data_dir, &sink).await;
        })
    };

    let signal_name = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    tracing::info!(signal = signal_name, "shutting down: ending sessions and sealing the recording");
    let _ = stop.send(true);
    gateway.wait().await;
    let _ = notes.await;
    for task in tasks {
        if let Err(error) = task.await {
            tracing::error!(%error, "an API task failed");
        }
    }
    if let Err(error) = control.end(EndReason::Shutdown, &format!("stopped by {signal_name}")).await {
        tracing::error!(%error, "could not record the end of the control session");
    }
    tokio::task::spawn_blocking(move || recorder.close()).await?.context("the recorder did not close cleanly")?;
    if let Some(indexer) = indexer {
        tokio::task::spawn_blocking(move || indexer.finish()).await?;
    }
    tracing::info!("stopped; every recorded event is sealed and indexed");
    Ok(())
}
