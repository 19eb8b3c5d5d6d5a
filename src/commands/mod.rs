mod access;
mod demo;
mod generate;
mod key;
mod read;
mod remote;
mod search;
mod token;
mod up;
mod verify;

use std::process::ExitCode;

use crate::cli::{Cli, Command, KeyCommand};

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
        Command::Key { command: KeyCommand::Show { location, json } } => key::show(location, json),
    }
}
