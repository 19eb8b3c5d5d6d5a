use std::process::ExitCode;

use proctor_recorder::keys::PinnedKey;
use proctor_recorder::verify::{KeyTrust, VerifyOptions, verify};
use serde_json::json;

use crate::cli::VerifyArgs;

pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let pinned_key = args.public_key.as_deref().map(PinnedKey::parse).transpose()?;
    let options = VerifyOptions { pinned_key, expect_head: args.expect_head };
    let report = verify(&args.data_dir, &options)?;
    let (trust, fingerprint) = match &report.key {
        Some(KeyTrust::Pinned(fp)) => ("pinned", fp.as_str()),
        Some(KeyTrust::DataDir(fp)) => ("data_dir", fp.as_str()),
        None => ("none", ""),
    };
    if args.json {
        let value = json!({
            "ok": report.ok(),
            "segments": report.segments,
            "sessions": report.sessions,
            "events": report.events,
            "head": report.head,
            "key_trust": trust,
            "key_fingerprint": fingerprint,
            "unsealed_wal_files": report.unsealed_wal_files,
            "problems": report.problems.iter().map(|p| json!({"location": p.location, "message": p.message})).collect::<Vec<_>>(),
            "warnings": report.warnings,
        });
        println!("{value}");
    } else {
        for warning in &report.warnings {
            eprintln!("warning: {warning}");
        }
        if trust == "data_dir" {
            eprintln!(
                "note: trusted the signing key found in the data dir ({fingerprint}); pin it with --public-key so that a re-signed data dir fails"
            );
        }
        if report.ok() {
            println!(
                "ok: {} segments, {} sessions, {} events; head {}",
                report.segments,
                report.sessions,
                report.events,
                report.head.as_deref().unwrap_or("none (no sealed segments)")
            );
        } else {
            for problem in &report.problems {
                eprintln!("FAILED: {problem}");
            }
            println!(
                "FAILED: {} problem(s) in {} segments, {} sessions, {} events",
                report.problems.len(),
                report.segments,
                report.sessions,
                report.events
            );
        }
    }
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
