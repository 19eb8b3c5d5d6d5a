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
    if let Some(command) = grant["ssh_certificate"]["command"].as_str() {
        writeln!(out, "  certificate: {}", text(&grant["ssh_certificate"], "certificate_file"))?;
        writeln!(out, "  valid until: {}", text(&grant["ssh_certificate"], "valid_before"))?;
        writeln!(out, "  connect: {command}")?;
    }
    if let Some(url) = grant["credentials"]["url"].as_str() {
        if grant["credentials"]["offer"]["protocol"].as_str() == Some("ssh") {
            writeln!(out, "  connect: {}", text(&grant["credentials"]["offer"], "command"))?;
            writeln!(out, "  password: {}", text(&grant["credentials"], "password"))?;
        } else {
            writeln!(out, "  connect: psql '{url}'")?;
        }
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
    if let Some(public_key) = &args.ssh_public_key {
        certify(&client, &mut grant, public_key, args.api.json)?;
    }
    print(&grant, args.api.json)?;
    Ok(verdict(&grant))
}

/// Where the certificate for public key `public` and grant `grant` goes,
/// with the `known_hosts` line beside it, and the private key `ssh -i`
/// takes: `id_ed25519.pub` → `id_ed25519-GRANT-cert.pub`,
/// `id_ed25519-GRANT-known_hosts`, `id_ed25519`. Named by the grant: a
/// certificate of another grant, or another CA's `id_ed25519-cert.pub`,
/// is never replaced.
fn certificate_paths(
    public: &std::path::Path,
    grant: &str,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    let text = public.to_str().ok_or_else(|| anyhow::anyhow!("{}: not a UTF-8 path", public.display()))?;
    let identity = text
        .strip_suffix(".pub")
        .ok_or_else(|| anyhow::anyhow!("{text}: give the public key (the .pub file), never the private one"))?;
    Ok((
        std::path::PathBuf::from(format!("{identity}-{grant}-cert.pub")),
        std::path::PathBuf::from(format!("{identity}-{grant}-known_hosts")),
        std::path::PathBuf::from(identity),
    ))
}

/// Gets an SSH user certificate for an active grant and writes it (and
/// the `known_hosts` line pinning Proctor) beside the key; adds what was
/// written and the `ssh` command line to `grant` as `ssh_certificate`. A
/// grant not active yet gets none, and is told how to get one later.
pub(crate) fn certify(
    client: &proctor_replay_server::client::Client,
    grant: &mut Value,
    public_key: &std::path::Path,
    as_json: bool,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let id = text(grant, "id").to_string();
    if text(grant, "status") != "active" {
        if !as_json {
            eprintln!(
                "no SSH certificate yet: the grant is {}; once it is active, `proctor grant show {id} --ssh-public-key {}` gets one",
                text(grant, "status"),
                public_key.display()
            );
        }
        return Ok(());
    }
    let (certificate_file, known_hosts, identity) = certificate_paths(public_key, &id)?;
    let line = std::fs::read_to_string(public_key)
        .with_context(|| format!("cannot read the SSH public key {}", public_key.display()))?;
    // Checked here: nothing but a public key leaves this machine.
    russh::keys::PublicKey::from_openssh(line.trim())
        .map_err(|e| anyhow::anyhow!("{} is not an OpenSSH public key: {e}", public_key.display()))?;
    let answer = client
        .post_json(&format!("/v1/grants/{id}/ssh-certificate"), &json!({ "ssh_public_key": line.trim() }))
        .map_err(|e| anyhow::anyhow!("no SSH certificate for grant {id}: {e}"))?;
    std::fs::write(&certificate_file, format!("{}\n", text(&answer, "certificate")))
        .with_context(|| format!("cannot write {}", certificate_file.display()))?;
    std::fs::write(&known_hosts, format!("{}\n", text(&answer, "known_hosts")))
        .with_context(|| format!("cannot write {}", known_hosts.display()))?;
    let port = answer["port"].as_u64().unwrap_or(22);
    let command = format!(
        "ssh -i {} -o CertificateFile={} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes -p {port} {}@{}",
        shell_word(&identity.to_string_lossy()),
        shell_word(&certificate_file.to_string_lossy()),
        shell_word(&known_hosts.to_string_lossy()),
        shell_word(text(&answer, "user")),
        shell_word(text(&answer, "host")),
    );
    grant["ssh_certificate"] = json!({
        "certificate": text(&answer, "certificate"),
        "certificate_file": certificate_file,
        "identity_file": identity,
        "known_hosts_file": known_hosts,
        "valid_before": text(&answer, "valid_before"),
        "command": command,
    });
    Ok(())
}

/// `word` as one shell word: as it is when it needs no quoting.
fn shell_word(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:@,".contains(c)) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
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
        Ok(mut grant) => {
            if let Some(public_key) = &args.ssh_public_key {
                certify(&client, &mut grant, public_key, args.api.json)?;
            }
            print(&grant, args.api.json)?;
            Ok(verdict(&grant))
        }
        Err(error) => refused(error),
    }
}
