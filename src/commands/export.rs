//! `proctor export`: selects the sessions, prepares the export aside
//! (see [`proctor_replay_server::export`]), records it as an `export`
//! access naming its hashes, and only then moves it into place: evidence no
//! record says was taken never leaves, and an export that cannot be
//! recorded is refused.

use std::path::Path;
use std::process::ExitCode;

use proctor_replay_server::export::{self, ExportError, Format, Selectors};
use proctor_schemas::SessionId;
use serde_json::json;

use super::access::{self, Access};
use crate::cli::{ExportArgs, ExportFormat};

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    if args.out.exists() {
        anyhow::bail!("{} exists already: give a new path to export to", args.out.display());
    }
    if let Some(server) = args.source.remote() {
        return super::remote::export(server, &args);
    }
    let data_dir = args.source.data_dir.clone().ok_or_else(|| anyhow::anyhow!("--data-dir DIR or --server URL"))?;
    let selectors = Selectors {
        query: args.query.clone(),
        subject: args.subject.clone(),
        resource: args.resource.clone(),
        since: args.since.clone(),
        after: args.after.clone(),
        before: args.before.clone(),
    };
    let flagged = |e: ExportError| anyhow::anyhow!("{}", flag_names(&e.to_string()));
    let (sessions, mut notices) = if args.sessions.is_empty() {
        export::select(&data_dir, &selectors).map_err(flagged)?
    } else {
        let sessions = args
            .sessions
            .iter()
            .map(|s| s.parse::<SessionId>().map_err(|e| anyhow::anyhow!("--session {s}: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        (sessions, Vec::new())
    };
    let selection = args.sessions.is_empty().then(|| selectors.describe());
    let format = match args.format {
        ExportFormat::Bundle => Format::Bundle,
        ExportFormat::Ocsf => Format::Ocsf,
        ExportFormat::Asciicast => Format::Asciicast,
        ExportFormat::Csv => Format::Csv,
    };
    let extension = args.out.extension().and_then(|e| e.to_str());
    let one_file = match format {
        Format::Bundle => extension == Some("tar"),
        Format::Asciicast => extension == Some("cast"),
        Format::Ocsf | Format::Csv => true,
    };
    let exported_by = access::local_user();
    // Written aside, beside PATH (the same filesystem: moved, not copied).
    let parent = args.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let aside = tempfile::Builder::new().prefix(".proctor-export-").tempdir_in(parent)?;
    let prepared = export::prepare(&export::Request {
        data_dir: &data_dir,
        sessions: &sessions,
        selection: selection.as_deref(),
        exported_by: &exported_by,
        reason: args.reason.as_deref(),
        format,
        one_file,
        aside: aside.path(),
    })
    .map_err(flagged)?;
    access::try_record(
        &data_dir,
        Access {
            operation: "export",
            query: Some(prepared.access_query.clone()),
            target_sessions: prepared.targets.clone(),
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}; nothing was exported"))?;
    rename_new(&prepared.written, &args.out)?;
    let _ = std::fs::File::open(parent).and_then(|d| d.sync_all());
    let exported = &prepared.exported;
    let what = format.as_str();
    if args.json {
        let value = json!({
            "out": args.out,
            "format": what,
            "sessions": exported.sessions,
            "events": exported.events,
            "related_events": exported.related_events,
            "segments": exported.segments,
            "live": exported.live,
            "bundle_sha256": prepared.bundle_sha256,
            "sha256": prepared.sha256,
            "notices": notices,
        });
        println!("{value}");
    } else {
        for notice in notices.drain(..) {
            eprintln!("proctor: note: {notice}");
        }
        println!(
            "exported {} sessions, {} events ({} of them grants, reviews and access about them) from {} segments to {} ({what}){}",
            exported.sessions,
            exported.events,
            exported.related_events,
            exported.segments,
            args.out.display(),
            if exported.live.is_empty() { String::new() } else { format!(" (live: {})", exported.live.join(", ")) }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A message about a selector, naming it as the flag it was given as.
fn flag_names(message: &str) -> String {
    for name in ["query", "subject", "resource", "since", "after", "before"] {
        if let Some(rest) =
            message.strip_prefix(&format!("{name} ")).or_else(|| message.strip_prefix(&format!("{name}:")))
        {
            let separator = if message.as_bytes()[name.len()] == b':' { ":" } else { " " };
            return format!("--{name}{separator}{rest}");
        }
    }
    message.to_string()
}

/// Moves `from` to `to`, which must not exist (a file or directory made
/// there meanwhile is never replaced): `renameat2` with `RENAME_NOREPLACE`.
pub(super) fn rename_new(from: &Path, to: &Path) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let cstring = |path: &Path| std::ffi::CString::new(path.as_os_str().as_bytes());
    let (from_c, to_c) = (cstring(from)?, cstring(to)?);
    // SAFETY: both are NUL-terminated paths that outlive the call.
    let status = unsafe {
        libc::renameat2(libc::AT_FDCWD, from_c.as_ptr(), libc::AT_FDCWD, to_c.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if status != 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::bail!(
                "{} was made while exporting: it was left as it is, and nothing was exported there",
                to.display()
            );
        }
        anyhow::bail!("cannot move the export into {}: {error}", to.display());
    }
    Ok(())
}
