use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use proctor_gateway_core::ControlSession;
use proctor_recorder::Recorder;
use proctor_schemas::EndReason;
use tokio::signal::unix::{SignalKind, signal};

use proctor_gateway_core::identity::{DevIssuer, Verifier};
use proctor_replay_server::{ApiState, RecorderAccessLog};

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
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    runtime.block_on(serve(config, "proctor up", |ready| {
        for (name, addr) in &ready.listeners {
            tracing::info!(resource = %name, listen = %addr, "listening");
        }
        if let Some(url) = &ready.replay_url {
            tracing::info!(url = %url, "replay API listening");
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
}

/// The verifier of API tokens: the configured issuers, and the dev issuer
/// when it is on (its JWKS written beside its key).
pub fn verifier(config: &Config) -> anyhow::Result<Verifier> {
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
    Ok(Verifier::new(&issuers)?)
}

/// Starts the replay API if configured; it stops when `stopped` turns true.
async fn start_replay(
    config: &Config,
    sink: proctor_recorder::Sink,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<(String, tokio::task::JoinHandle<std::io::Result<()>>)>> {
    let Some(replay) = &config.replay else { return Ok(None) };
    let verifier = std::sync::Arc::new(verifier(config)?);
    let listener = tokio::net::TcpListener::bind(replay.listen)
        .await
        .with_context(|| format!("the replay API cannot listen on {}", replay.listen))?;
    let tls = if replay.tls {
        let (server, _) = proctor_gateway_core::tls::http_server_config(&config.tls, &config.data_dir.join("tls"))
            .context("cannot set up TLS for the replay API")?;
        Some(server)
    } else {
        None
    };
    if tls.is_none() && !replay.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %replay.listen,
            "the replay API speaks plain HTTP beyond loopback: bearer tokens cross the network in clear; set [replay] tls = true or put a TLS-terminating proxy in front"
        );
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", listener.local_addr()?);
    let state = std::sync::Arc::new(ApiState::new(
        config.data_dir.clone(),
        verifier,
        replay.investigator_group.clone(),
        RecorderAccessLog(sink),
    ));
    let task = tokio::spawn(proctor_replay_server::serve(listener, state, tls, async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    }));
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
            Err(error) => return Err((error, None)),
        };
        let gateway = match crate::gateway::start(&config, sink, stopped).await {
            Ok(gateway) => gateway,
            Err(error) => return Err((error, replay)),
        };
        let ready = Ready {
            listeners: gateway.listeners.clone(),
            key_fingerprint: recorder.key_fingerprint().to_string(),
            replay_url,
        };
        match on_ready(&ready) {
            Ok(()) => Ok((gateway, replay)),
            Err(error) => Err((error, replay)),
        }
    }
    .await;
    let (gateway, replay) = match started {
        Ok(started) => started,
        Err((error, replay)) => {
            let _ = stop.send(true);
            // The API stops appending before the recorder closes.
            if let Some(task) = replay {
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
    if let Some(task) = replay {
        match task.await {
            Ok(Err(error)) => tracing::error!(%error, "the replay API failed"),
            Err(error) => tracing::error!(%error, "the replay API failed"),
            Ok(Ok(())) => {}
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
