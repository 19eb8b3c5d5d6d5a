//! `proctor review ...`: statements held by statement rules, through the
//! control API. A request the API refuses exits 2 with its reason; so does
//! showing a review that was denied or expired.

use std::io::Write;
use std::process::ExitCode;

use proctor_replay_server::client::query_string;
use serde_json::{Value, json};

use super::{control_client as client, refused, text, visible};
use crate::cli::{ReviewDecideArgs, ReviewListArgs, ReviewShowArgs};

/// The most characters of a statement on a review's one line.
const SQL_ON_A_LINE: usize = 80;

/// A statement on one line: whitespace runs as one space, cut short.
fn one_line(sql: &str) -> String {
    let flat = visible(sql).split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= SQL_ON_A_LINE {
        return flat;
    }
    let cut: String = flat.chars().take(SQL_ON_A_LINE - 1).collect();
    format!("{cut}…")
}

/// One line per review, for people.
fn line(review: &Value) -> String {
    format!(
        "{}  {:<8} {}  {}  {}  {}  {}",
        text(review, "id"),
        text(review, "status"),
        text(review, "resource"),
        text(review, "subject"),
        text(review, "grant_id"),
        text(review, "rule"),
        one_line(text(review, "text")),
    )
}

/// Prints a review: JSON, or words with its statement in full.
fn print(review: &Value, as_json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if as_json {
        writeln!(out, "{review}")?;
        return Ok(());
    }
    writeln!(out, "{}", line(review))?;
    let reason = text(review, "status_reason");
    if !reason.is_empty() {
        writeln!(out, "  {reason}")?;
    }
    match review["ref_seq"].as_i64() {
        Some(seq) => writeln!(out, "  held in session {} at seq {seq}", text(review, "session_id"))?,
        None => writeln!(out, "  held in session {}", text(review, "session_id"))?,
    }
    writeln!(out, "  expires {}", text(review, "expires_at"))?;
    for line in visible(text(review, "text")).lines() {
        writeln!(out, "  | {line}")?;
    }
    Ok(())
}

/// The exit code for a review's state: denied and expired are refusals.
fn verdict(review: &Value) -> ExitCode {
    match text(review, "status") {
        "denied" | "expired" => {
            eprintln!(
                "proctor: review {} is {}: {}",
                text(review, "id"),
                text(review, "status"),
                text(review, "status_reason")
            );
            ExitCode::from(2)
        }
        _ => ExitCode::SUCCESS,
    }
}

pub fn list(args: ReviewListArgs) -> anyhow::Result<ExitCode> {
    let client = client(&args.api)?;
    let path = format!(
        "/v1/reviews?{}",
        query_string([("status", args.status), ("grant", args.grant), ("limit", args.limit.map(|n| n.to_string()))])
    );
    let answer = match client.get_json(&path) {
        Ok(answer) => answer,
        Err(error) => return refused(error),
    };
    let reviews = answer["reviews"].as_array().cloned().unwrap_or_default();
    let mut out = std::io::stdout().lock();
    for review in &reviews {
        if args.api.json {
            writeln!(out, "{review}")?;
        } else {
            writeln!(out, "{}", line(review))?;
        }
    }
    if reviews.is_empty() && !args.api.json {
        eprintln!("no reviews");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn show(args: ReviewShowArgs) -> anyhow::Result<ExitCode> {
    let client = client(&args.api)?;
    match client.get_json(&format!("/v1/reviews/{}", args.id)) {
        Ok(review) => {
            print(&review, args.api.json)?;
            Ok(verdict(&review))
        }
        Err(error) => refused(error),
    }
}

pub fn decide(action: &str, args: ReviewDecideArgs) -> anyhow::Result<ExitCode> {
    let client = client(&args.api)?;
    let body = json!({ "reason": args.reason });
    match client.post_json(&format!("/v1/reviews/{}/{action}", args.id), &body) {
        Ok(review) => {
            print(&review, args.api.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => refused(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_fits_on_one_line() {
        assert_eq!(one_line("DROP TABLE\n\t  legacy_orders"), "DROP TABLE legacy_orders");
        let long = format!("select {}", "x, ".repeat(40));
        let short = one_line(&long);
        assert_eq!(short.chars().count(), SQL_ON_A_LINE);
        assert!(short.ends_with('…') && short.starts_with("select x, x,"), "{short}");
    }

    /// A carriage return and an escape sequence once redrew a review's
    /// line so that the reviewer saw only a harmless statement.
    #[test]
    fn regression_control_characters_cannot_hide_part_of_a_statement() {
        let sql = "delete from scratch; drop table customers; /*\r  | delete from scratch\x1b[K\x1b[8m*/";
        let shown = visible(sql);
        assert!(!shown.chars().any(|c| c == '\r' || c == '\x1b'), "{shown:?}");
        assert!(shown.contains("drop table customers; /*\\r  | delete from scratch\\u{1b}[K"), "{shown}");
        assert!(!one_line(sql).contains('\x1b'));
        assert_eq!(visible("select 1\n\tfrom t"), "select 1\n\tfrom t");
        assert_eq!(visible("select '\u{202e}'"), "select '\\u{202e}'");
    }
}
