//! `proctor grant ...`: the control API from the command line. A request
//! the API refuses exits 2 with its reason; a denied or expired grant too.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use proctor_replay_server::client::query_string;
use serde_json::{Value, json};

use super::{control_client as client, refused, text};
use crate::cli::{GrantDecideArgs, GrantListArgs, GrantRequestArgs, GrantShowArgs};

/// One line per grant, for people.
fn line(grant: &Value) -> String {
    let status = text(grant, "status");
    let mut out = format!(
        "{}  {:<8} {}  {}  ttl {}  ",
        text(grant, "id"),
        status,
        text(grant, "resource"),
        text(grant, "subject"),
        text(grant, "ttl"),
    );
    out.push_str(&match status {
        "active" => format!("until {}", text(grant, "expires_at")),
        "pending" => format!("undecided until {}", text(grant, "expires_at")),
        _ => text(grant, "status_reason").to_string(),
    });
    out
}

/// Prints a grant: JSON, or words (with its credentials, when present).
fn print(grant: &Value, as_json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if as_json {
        writeln!(out, "{grant}")?;
        return Ok(());
    }
    writeln!(out, "{}", line(grant))?;
    let reason = text(grant, "status_reason");
    if matches!(text(grant, "status"), "pending" | "active") && !reason.is_empty() {
        writeln!(out, "  {reason}")?;
    }
    if let Some(url) = grant["credentials"]["url"].as_str() {
        writeln!(out, "  connect: psql '{url}'")?;
        writeln!(
            out,
            "  this credential is shown once and works only for {} until the grant ends",
            text(grant, "resource")
        )?;
    }
    Ok(())
}

/// The exit code for a grant's state: denied and expired are refusals.
fn verdict(grant: &Value) -> ExitCode {
    match text(grant, "status") {
        "denied" | "expired" | "revoked" => {
            eprintln!(
                "proctor: grant {} is {}: {}",
                text(grant, "id"),
                text(grant, "status"),
                text(grant, "status_reason")
            );
            ExitCode::from(2)
        }
        _ => ExitCode::SUCCESS,
    }
}

pub fn request(args: GrantRequestArgs) -> anyhow::Result<ExitCode> {
    let client = client(&args.api)?;
    let body = json!({ "resource": args.resource, "ttl": args.ttl, "reason": args.reason });
    let mut grant = match client.post_json("/v1/grants", &body) {
        Ok(grant) => grant,
        Err(error) => return refused(error),
    };
    if args.wait && text(&grant, "status") == "pending" {
        let id = text(&grant, "id").to_string();
        if !args.api.json {
            eprintln!("{}", line(&grant));
            eprintln!("  {}", text(&grant, "status_reason"));
            eprintln!("waiting for a decision...");
        }
        let started = Instant::now();
        while text(&grant, "status") == "pending" {
            if started.elapsed() > args.wait_timeout {
                eprintln!(
                    "proctor: grant {id} is still pending after {}",
                    humantime::format_duration(args.wait_timeout)
                );
                print(&grant, args.api.json)?;
                return Ok(ExitCode::from(3));
            }
            std::thread::sleep(Duration::from_millis(500));
            grant = match client.get_json(&format!("/v1/grants/{id}")) {
                Ok(grant) => grant,
                Err(error) => return refused(error),
            };
        }
    }
    print(&grant, args.api.json)?;
    Ok(verdict(&grant))
}

pub fn decide(action: &str, args: GrantDecideArgs) -> anyhow::Result<ExitCode> {
    let client = client(&args.api)?;
    let body = json!({ "reason": args.reason });
    match client.post_json(&format!("/v1/grants/{}/{action}", args.id), &body) {
        Ok(grant) => {
            print(&grant, args.api.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => refused(error),
    }
}

pub fn list(args: GrantListArgs) -> anyhow::Result<ExitCode> {
    let client = client(&args.api)?;
    let path = format!(
        "/v1/grants?{}",
        query_string([("status", args.status), ("resource", args.resource), ("subject", args.subject)])
    );
    let answer = match client.get_json(&path) {
        Ok(answer) => answer,
        Err(error) => return refused(error),
    };
    let grants = answer["grants"].as_array().cloned().unwrap_or_default();
    let mut out = std::io::stdout().lock();
    for grant in &grants {
        if args.api.json {
            writeln!(out, "{grant}")?;
        } else {
            writeln!(out, "{}", line(grant))?;
        }
    }
    if grants.is_empty() && !args.api.json {
        eprintln!("no grants");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn show(args: GrantShowArgs) -> anyhow::Result<ExitCode> {
    let client = client(&args.api)?;
    match client.get_json(&format!("/v1/grants/{}", args.id)) {
        Ok(grant) => {
            print(&grant, args.api.json)?;
            Ok(verdict(&grant))
        }
        Err(error) => refused(error),
    }
}
