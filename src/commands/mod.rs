mod access;
mod demo;
mod generate;
mod grant;
mod key;
mod read;
mod remote;
mod search;
mod token;
mod up;
mod verify;

use std::process::ExitCode;

use crate::cli::{Cli, Command, GrantCommand, KeyCommand};

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Up(args) => up::run(args),
        Command::Verify(args) => verify::run(args),
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
        Command::Key { command: KeyCommand::Show { location, json } } => key::show(location, json),
    }
}

/// A request an API refused exits 2 with its reason; other failures are errors.
fn refused(error: proctor_replay_server::client::ClientError) -> anyhow::Result<ExitCode> {
    match error {
        proctor_replay_server::client::ClientError::Refused { .. } => {
            eprintln!("proctor: {error}");
            Ok(ExitCode::from(2))
        }
        other => Err(other.into()),
    }
}
