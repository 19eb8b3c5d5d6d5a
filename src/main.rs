//! `proctor`: the one binary. It parses flags, loads the configuration and
//! wires the library crates together; the logic lives in them.

mod cli;
mod commands;
mod config;
mod data_dir;
mod gateway;
mod wiring;

use std::process::ExitCode;

use clap::Parser;

/// See the workspace's `Cargo.toml` for why not glibc's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_tracing(cli.log_level.as_deref());
    match commands::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("proctor: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_env("PROCTOR_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
