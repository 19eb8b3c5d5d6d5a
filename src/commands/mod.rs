mod access;
mod demo;
mod export;
mod generate;
mod grant;
mod key;
mod read;
mod remote;
mod review;
mod search;
mod token;
mod up;
mod verify;

use std::process::ExitCode;

use proctor_replay_server::client::{Client, ClientError};

use crate::cli::{Api, Cli, Command, GrantCommand, KeyCommand, ReviewCommand};

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // `up` and `demo` set their own (stricter) mask.
    crate::data_dir::close_to_the_world();
    match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Up(args) => up::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Export(args) => export::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Sessions(args) => read::sessions(args),
        Command::Replay(args) => read::replay(args),
        Command::Search(args) => search::search(args),
        Command::Reindex(args) => search::reindex(args),
        Command::Token(args) => token::run(args),
        Command::Grant { command } => match command {
            GrantCommand::Request(args) => grant::request(args),
            GrantCommand::Approve(args) => grant::decide("approve", args),
            GrantCommand::Deny(args) => grant::decide("deny", args),
            GrantCommand::Revoke(args) => grant::decide("revoke", args),
            GrantCommand::List(args) => grant::list(args),
            GrantCommand::Show(args) => grant::show(args),
        },
        Command::Review { command } => match command {
            ReviewCommand::List(args) => review::list(args),
            ReviewCommand::Show(args) => review::show(args),
            ReviewCommand::Approve(args) => review::decide("approve", args),
            ReviewCommand::Deny(args) => review::decide("deny", args),
        },
        Command::Key { command: KeyCommand::Show { location, json } } => key::show(location, json),
    }
}

/// A request an API refused exits 2 with its reason; other failures are errors.
fn refused(error: ClientError) -> anyhow::Result<ExitCode> {
    match error {
        ClientError::Refused { .. } => {
            eprintln!("proctor: {error}");
            Ok(ExitCode::from(2))
        }
        other => Err(other.into()),
    }
}

/// The control API's client for `grant` and `review` commands.
fn control_client(api: &Api) -> anyhow::Result<Client> {
    let url =
        api.api.as_deref().filter(|u| !u.trim().is_empty()).ok_or_else(|| {
            anyhow::anyhow!("which control API? --api URL or $PROCTOR_API (the demo prints its api_url)")
        })?;
    let token = api
        .token
        .as_deref()
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| anyhow::anyhow!("the control API needs your OIDC token: --token JWT or $PROCTOR_TOKEN"))?;
    Ok(Client::named(url, token, api.ca_file.as_deref(), "control API", "--api")?)
}

/// A string field of an API answer (empty if absent).
fn text<'a>(value: &'a serde_json::Value, name: &str) -> &'a str {
    value[name].as_str().unwrap_or_default()
}

/// Text from a client as a terminal may show it: control characters
/// other than line feeds and tabs written out (`\r`, `\u{1b}`), so that a
/// carriage return or an escape sequence cannot redraw the line and hide
/// part of a statement from its reviewer.
pub(crate) fn visible(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out.extend(c.escape_default())
            }
            c => out.push(c),
        }
    }
    out
}
