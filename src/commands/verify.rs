use std::process::ExitCode;

use proctor_recorder::evidence;
use proctor_recorder::keys::PinnedKey;
use proctor_recorder::verify::{KeyTrust, VerifyOptions, verify};
use serde_json::json;

use crate::cli::VerifyArgs;

pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let pinned_key = args.public_key.as_deref().map(PinnedKey::parse).transpose()?;
    if let Some(bundle) = &args.bundle {
        if args.expect_head.is_some() {
            anyhow::bail!("--expect-head checks a data dir's manifest chain; a bundle carries none");
        }
        return verify_bundle(bundle, pinned_key.as_ref(), args.json);
    }
    let Some(data_dir) = &args.data_dir else { anyhow::bail!("give --data-dir DIR or --bundle PATH") };
    let options = VerifyOptions { pinned_key, expect_head: args.expect_head };
    let report = verify(data_dir, &options)?;
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

fn verify_bundle(path: &std::path::Path, pinned: Option<&PinnedKey>, json: bool) -> anyhow::Result<ExitCode> {
    // A `.tar` bundle is unpacked aside, entry by entry, and checked there.
    let unpacked = if path.is_file() { Some(tempfile::tempdir()?) } else { None };
    let mut refused = Vec::new();
    if let Some(dir) = &unpacked {
        refused = unpack(path, dir.path())?;
    }
    let checked = unpacked.as_ref().map_or(path, |dir| dir.path());
    let mut report = evidence::verify_bundle(checked, pinned)?;
    report.problems.splice(0..0, refused);
    let (trust, fingerprint) = match &report.key {
        Some(KeyTrust::Pinned(fp)) => ("pinned", fp.as_str()),
        Some(KeyTrust::DataDir(fp)) => ("bundle", fp.as_str()),
        None => ("none", ""),
    };
    let bundle = report.manifest.as_ref();
    if json {
        let value = json!({
            "ok": report.ok(),
            "sessions": report.sessions,
            "events": report.events,
            "segments": report.segments,
            "related_events": report.related_events,
            "live": report.live,
            "key_trust": trust,
            "key_fingerprint": fingerprint,
            "exported_by": bundle.map(|b| b.exported_by.as_str()),
            "exported_at": bundle.map(|b| b.exported_at.as_str()),
            "recording_head": bundle.map(|b| b.recording_head.as_str()),
            "last_segment": bundle.map(|b| b.last_segment),
            "reason": bundle.and_then(|b| b.reason.as_deref()),
            "problems": report.problems.iter().map(|p| json!({"location": p.location, "message": p.message})).collect::<Vec<_>>(),
        });
        println!("{value}");
    } else {
        if trust == "bundle" {
            eprintln!(
                "note: trusted the signing key the bundle carries ({fingerprint}); pin the deployment's key with --public-key so that a re-signed bundle fails"
            );
        }
        if report.ok() {
            println!(
                "ok: bundle of {} sessions, {} events ({} of them grants, reviews and access about them) from {} segments{}; exported by {} at {}",
                report.sessions,
                report.events,
                report.related_events,
                report.segments,
                if report.live.is_empty() {
                    String::new()
                } else {
                    format!(" ({} live: {})", report.live.len(), report.live.join(", "))
                },
                bundle.map_or("?", |b| b.exported_by.as_str()),
                bundle.map_or("?", |b| b.exported_at.as_str()),
            );
        } else {
            for problem in &report.problems {
                eprintln!("FAILED: {problem}");
            }
            println!(
                "FAILED: {} problem(s) in a bundle of {} sessions, {} events",
                report.problems.len(),
                report.sessions,
                report.events
            );
        }
    }
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Unpacks the tar bundle at `path` into `dir`: regular files and
/// directories only, each at a plain relative path inside `dir`. What it
/// will not unpack (links, devices, a path leaving the bundle) is returned
/// as problems, named.
fn unpack(path: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<Vec<proctor_recorder::verify::Problem>> {
    use std::path::Component;
    let mut problems = Vec::new();
    let mut archive = tar::Archive::new(std::fs::File::open(path)?);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.into_owned();
        let location = name.to_string_lossy().to_string();
        let plain = name.components().all(|c| matches!(c, Component::Normal(_)));
        let kind = entry.header().entry_type();
        if !plain {
            problems.push(proctor_recorder::verify::Problem {
                location,
                message: "is a path outside the bundle, which a bundle never holds".to_string(),
            });
            continue;
        }
        if kind.is_dir() {
            std::fs::create_dir_all(dir.join(&name))?;
        } else if kind.is_file() {
            let target = dir.join(&name);
            if target.exists() {
                problems.push(proctor_recorder::verify::Problem {
                    location,
                    message: "appears more than once in the archive".to_string(),
                });
                continue;
            }
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut file = std::fs::File::create(&target)?;
            std::io::copy(&mut entry, &mut file)?;
        } else {
            problems.push(proctor_recorder::verify::Problem {
                location,
                message: "is a link or a special file, which a bundle never holds".to_string(),
            });
        }
    }
    Ok(problems)
}
