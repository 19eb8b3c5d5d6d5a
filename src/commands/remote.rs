//! `search`, `sessions` and `replay` against a running replay server
//! (`--server URL --token T`): the same output as on a data dir.

use std::io::Write;
use std::process::ExitCode;

use proctor_replay_server::client::{Client, query_string};

use super::refused;

use crate::cli::{ExportArgs, ExportFormat, ReplayArgs, SearchArgs, SessionsArgs, Source};

/// The client for `server`, with the source's token and trusted
/// certificates.
fn client(server: &str, source: &Source) -> anyhow::Result<Client> {
    let token = source.token.as_deref().filter(|t| !t.trim().is_empty()).ok_or_else(|| {
        anyhow::anyhow!("--server needs an investigator's token: --token JWT or $PROCTOR_TOKEN (the demo prints one)")
    })?;
    Ok(Client::new(server, token, source.ca_file.as_deref())?)
}

pub fn search(server: &str, args: &SearchArgs) -> anyhow::Result<ExitCode> {
    let mut query = args.query.clone();
    if let Some(since) = &args.since {
        query = format!("{query} since:{since}");
    }
    let order = if args.oldest_first { "oldest" } else { "newest" };
    let answer = match super::search::value_of(args)? {
        // The value travels in a body, never in a URL.
        Some(value) => client(server, &args.source)?.post_json(
            "/api/search/value",
            &serde_json::json!({ "value": value, "q": query, "limit": args.limit, "offset": args.offset, "order": order }),
        ),
        None => {
            let path = format!(
                "/api/search?{}",
                query_string([
                    ("q", Some(query)),
                    ("limit", Some(args.limit.to_string())),
                    ("offset", Some(args.offset.to_string())),
                    ("order", Some(order.to_string())),
                ])
            );
            client(server, &args.source)?.get_json(&path)
        }
    };
    let result = match answer {
        Ok(result) => result,
        Err(error) => return refused(error),
    };
    for notice in result["notices"].as_array().into_iter().flatten() {
        eprintln!("proctor: note: {}", notice.as_str().unwrap_or_default());
    }
    let mut out = std::io::stdout().lock();
    let hits = result["hits"].as_array().cloned().unwrap_or_default();
    for hit in &hits {
        if args.json {
            writeln!(out, "{hit}")?;
        } else {
            let text = |name: &str| hit[name].as_str().unwrap_or_default();
            let line = super::search::hit_line(
                text("time"),
                text("kind"),
                text("session_id"),
                hit["seq"].as_u64().unwrap_or_default(),
                text("text"),
            );
            writeln!(out, "{line}")?;
        }
    }
    if args.json && args.facets {
        writeln!(out, "{}", serde_json::json!({ "total": result["total"], "facets": result["facets"] }))?;
    } else if !args.json {
        writeln!(out, "{} of {} hits", hits.len(), result["total"])?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn sessions(server: &str, args: &SessionsArgs) -> anyhow::Result<ExitCode> {
    let filter = args.filter();
    let path = format!(
        "/api/sessions?{}",
        query_string([
            ("subject", filter.subject),
            ("resource", filter.resource),
            ("protocol", filter.protocol),
            ("since", filter.since),
            ("live", filter.live.then(|| "true".to_string())),
        ])
    );
    let result = match client(server, &args.source)?.get_json(&path) {
        Ok(result) => result,
        Err(error) => return refused(error),
    };
    let mut out = std::io::stdout().lock();
    for s in result["sessions"].as_array().cloned().unwrap_or_default() {
        if args.json {
            writeln!(out, "{s}")?;
        } else {
            let text = |name: &str| s[name].as_str();
            let line = super::read::session_line(super::read::SessionLine {
                session_id: text("session_id").unwrap_or("-"),
                start: text("start").unwrap_or_default(),
                protocol: text("protocol"),
                resource: text("resource"),
                subject: text("subject"),
                events: s["events"].as_u64().unwrap_or_default(),
                end_reason: text("end_reason"),
            });
            writeln!(out, "{line}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn replay(server: &str, args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let client = client(server, &args.source)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.asciicast {
        let cast = match client.get_json(&format!("/api/sessions/{}/asciicast", args.session_id)) {
            Ok(cast) => cast,
            Err(error) => return refused(error),
        };
        for line in cast["asciicast"].as_array().into_iter().flatten() {
            writeln!(out, "{}", line.as_str().unwrap_or_default())?;
        }
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut from_seq = args.from_seq;
    let mut left = args.limit.unwrap_or(usize::MAX);
    // Page by page, as the server hands them out.
    while left > 0 {
        let page = left.min(1000);
        let path = format!(
            "/api/sessions/{}/events?{}",
            args.session_id,
            query_string([("from_seq", Some(from_seq.to_string())), ("limit", Some(page.to_string()))])
        );
        let result = match client.get_json(&path) {
            Ok(result) => result,
            Err(error) => {
                out.flush()?;
                return refused(error);
            }
        };
        // The server renders the transcript with the same code as a local replay.
        let events = result["events"].as_array().cloned().unwrap_or_default();
        let lines = result["transcript"].as_array().cloned().unwrap_or_default();
        for (event, line) in events.iter().zip(&lines) {
            match (args.json, line.as_str()) {
                (false, Some(line)) => writeln!(out, "{line}")?,
                _ => writeln!(out, "{event}")?,
            }
        }
        left = left.saturating_sub(events.len());
        match result["next_seq"].as_u64() {
            Some(next) if !events.is_empty() => from_seq = next,
            _ => break,
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `proctor export --server`: the replay server selects, writes, records
/// and sends the export; it is written to `--out` as it arrives. A bundle
/// comes as one tar file (`--out` ends in `.tar`); asciicast as the one
/// terminal session's `.cast`.
pub fn export(server: &str, args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let format = match args.format {
        ExportFormat::Bundle => "bundle",
        ExportFormat::Ocsf => "ocsf",
        ExportFormat::Asciicast => "asciicast",
        ExportFormat::Csv => "csv",
    };
    let extension = args.out.extension().and_then(|e| e.to_str());
    match (args.format, extension) {
        (ExportFormat::Bundle, Some("tar")) | (ExportFormat::Asciicast, Some("cast")) => {}
        (ExportFormat::Bundle, _) => anyhow::bail!(
            "a bundle comes from --server as one tar file: give an --out ending in .tar (unpack it, or verify it as it is, with `proctor verify --bundle`)"
        ),
        (ExportFormat::Asciicast, _) => {
            anyhow::bail!("asciicast comes from --server for one terminal session: give an --out ending in .cast")
        }
        _ => {}
    }
    let body = serde_json::json!({
        "sessions": args.sessions,
        "query": args.query,
        "subject": args.subject,
        "resource": args.resource,
        "since": args.since,
        "after": args.after,
        "before": args.before,
        "reason": args.reason,
        "format": format,
    });
    // Downloaded beside --out, and moved there once checked.
    let parent = args.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let aside = tempfile::Builder::new().prefix(".proctor-export-").tempdir_in(parent)?;
    let download = aside.path().join("download");
    let headers = match client(server, &args.source)?.post_download("/api/exports", &body, &download) {
        Ok(headers) => headers,
        Err(error) => return refused(error),
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let count = |name: &str| header(name).parse::<u64>().unwrap_or_default();
    // What arrived is what the server recorded having sent.
    let (sha256, _) = proctor_recorder::verify::hash_file(&download)?;
    if sha256 != header("x-proctor-sha256") {
        anyhow::bail!(
            "the download's SHA-256 is {sha256}, not the {} the server recorded: it was cut or altered on the way; nothing was kept",
            header("x-proctor-sha256")
        );
    }
    super::export::rename_new(&download, &args.out)?;
    if args.json {
        let value = serde_json::json!({
            "out": args.out,
            "format": format,
            "sessions": count("x-proctor-sessions"),
            "events": count("x-proctor-events"),
            "bundle_sha256": header("x-proctor-bundle-sha256"),
            "sha256": header("x-proctor-sha256"),
        });
        println!("{value}");
    } else {
        println!(
            "exported {} sessions, {} events to {} ({format}) through {server}",
            count("x-proctor-sessions"),
            count("x-proctor-events"),
            args.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
