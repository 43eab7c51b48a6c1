//! The `lockgate` binary: arguments, logging, config, then `lockgate::run`.
//!
//! Exit codes (every command):
//! - 0 success (`status`: every lock's state is known);
//! - 1 a runtime failure: an open route cannot bind, the daemon's admin endpoint cannot be
//!   reached or refused the request, storage that does not answer while loading the config;
//! - 2 a bad configuration or bad arguments (also `--lock` naming no lock of the config);
//! - 3 `status`: some lock's state is unknown (its lock service is unreachable, or its
//!   storage did not answer within the bound);
//! - 4 `step-down`/`resume`: the daemon on the config's admin port is another node (its
//!   node-id differs from the config's), so nothing was asked of it.
//!
//! Each command lives in [`cli`]; `main` parses the arguments, installs logging, loads the
//! config and hands it to the command.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod cli;

use std::process::ExitCode;

use clap::Parser as _;
use cli::args::{Cli, Command, LogFormat};

/// Installs the log subscriber. The daemon logs at info, the other commands at warn; the
/// dependencies' chatter (zookeeper_client's info lines) is off unless RUST_LOG asks for it.
fn init_logging(format: LogFormat, daemon: bool) {
    let default = if daemon {
        "info,zookeeper_client=warn"
    } else {
        "warn,zookeeper_client=error"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // journald stamps every line itself.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match (format, journald) {
        (LogFormat::Json, false) => builder.json().init(),
        (LogFormat::Json, true) => builder.json().without_time().init(),
        (LogFormat::Text, false) => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        (LogFormat::Text, true) => builder.with_ansi(false).without_time().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, matches!(cli.command, Command::Run { .. }));

    let (path, json) = match &cli.command {
        Command::Completions { shell } => return cli::args::completions(*shell),
        Command::Man => return cli::args::man(),
        Command::Run { config } => (config, false),
        Command::Check { config, json, .. }
        | Command::Status { config, json }
        | Command::StepDown { config, json, .. }
        | Command::Resume { config, json, .. } => (config, *json),
    };
    let config = match cli::load(path, json) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cli.command {
        Command::Check { quiet, json, .. } => cli::check::run(&config, quiet, json),
        Command::Status { json, .. } => cli::status::run(&config, json),
        Command::Run { .. } => cli::daemon::run(config),
        // Answered before the config was loaded.
        Command::Completions { .. } | Command::Man => ExitCode::SUCCESS,
        Command::StepDown {
            lock,
            hold_off_ms,
            drain_ms,
            json,
            ..
        } => cli::lock_command::step_down(&config, &lock, hold_off_ms, drain_ms, json),
        Command::Resume { lock, json, .. } => cli::lock_command::resume(&config, &lock, json),
    }
}
