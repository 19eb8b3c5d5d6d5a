//! `proctor search` and `proctor reindex` on a data dir.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use proctor_indexer::{IndexError, Indexer, SearchIndex, SearchRequest};

use crate::cli::{ReindexArgs, SearchArgs};

pub fn search(args: SearchArgs) -> anyhow::Result<ExitCode> {
    if let Some(server) = args.source.remote() {
        return super::remote::search(server, &args);
    }
    let data_dir = args.source.data_dir.clone().ok_or_else(|| anyhow::anyhow!("--data-dir DIR or --server URL"))?;
    // Bring the index up to date when no running Proctor keeps it; a data
    // dir that cannot be written (an exported copy) is searched as it is.
    let refreshed = Indexer::open(&data_dir).and_then(|mut indexer| {
        indexer.catch_up()?;
        indexer.finish()
    });
    match refreshed {
        Ok(()) | Err(IndexError::Busy(_)) => {}
        Err(error) => tracing::warn!(%error, "the search index could not be brought up to date"),
    }
    let index = SearchIndex::open(&data_dir)?;
    let mut query = args.query.clone();
    if let Some(since) = &args.since {
        query = format!("{query} since:{since}");
    }
    if let Some(value) = value_of(&args)? {
        let path = data_dir.join("keys").join("masking.key");
        let key = proctor_gateway_core::masking::MaskingKey::load(&path).map_err(|e| {
            anyhow::anyhow!(
                "{e}; where this account may not read the deployment's masking key, or masking.key_file keeps it elsewhere, search through the replay server (--server URL --token JWT)"
            )
        })?;
        query = proctor_replay_server::api::value_query(&key.value_token(&value), &query);
    }
    let request = SearchRequest {
        limit: args.limit,
        offset: args.offset,
        newest_first: !args.oldest_first,
        ..SearchRequest::new(query)
    };
    let result = match index.search(&request) {
        Ok(result) => result,
        Err(IndexError::Query(error)) => {
            eprintln!("proctor: {error}");
            return Ok(ExitCode::from(2));
        }
        Err(error) => return Err(error.into()),
    };
    super::access::record(
        &data_dir,
        super::access::Access { operation: "search", query: Some(request.query.clone()), target_sessions: Vec::new() },
    );
    for notice in &result.notices {
        eprintln!("proctor: note: {notice}");
    }
    let mut out = std::io::stdout().lock();
    for hit in &result.hits {
        if args.json {
            writeln!(out, "{}", serde_json::to_string(hit)?)?;
        } else {
            writeln!(out, "{}", hit_line(&hit.time, &hit.kind, &hit.session_id, hit.seq, &hit.text))?;
        }
    }
    if args.json && args.facets {
        writeln!(out, "{}", serde_json::json!({ "total": result.total, "facets": result.facets }))?;
    } else if !args.json {
        writeln!(out, "{} of {} hits", result.hits.len(), result.total)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The value of `--value`: as given, or (`-`) one line of stdin.
pub(super) fn value_of(args: &SearchArgs) -> anyhow::Result<Option<String>> {
    let Some(value) = &args.value else { return Ok(None) };
    let value = if value == "-" {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else {
        value.clone()
    };
    if value.trim().is_empty() {
        anyhow::bail!("--value: give the value to look for");
    }
    Ok(Some(value))
}

/// A hit as one line of human output (here and with `--server`): time,
/// kind, `session#seq`, the first line of its text.
pub(super) fn hit_line(time: &str, kind: &str, session_id: &str, seq: u64, text: &str) -> String {
    // Recorded text is the client's: shown with its control characters
    // written out, so that it cannot redraw an investigator's terminal.
    format!("{time}  {kind}  {session_id}#{seq}  {}", super::visible(text.lines().next().unwrap_or_default()))
}

pub fn reindex(args: ReindexArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let progress = proctor_indexer::reindex(&args.data_dir)?;
    let seconds = started.elapsed().as_secs_f64();
    let events = progress.segment_events + progress.wal_events;
    eprintln!(
        "indexed {events} events ({} segments, {} in the WAL) in {seconds:.1}s ({:.0} events/s)",
        progress.segments,
        progress.wal_events,
        events as f64 / seconds.max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}
