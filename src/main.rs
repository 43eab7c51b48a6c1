//! The `lockgate` binary: arguments, logging, config, then `lockgate::run`.
//!
//! Exit codes: 0 success; 1 a runtime failure (e.g. an open route cannot bind);
//! 2 a bad configuration or bad arguments.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lockgate::config::Config;

/// Exit code of a bad configuration (also used by clap for bad arguments).
const EXIT_CONFIG: u8 = 2;
const EXIT_RUNTIME: u8 = 1;

#[derive(Parser)]
#[command(version, about = "A lock-gated L4 proxy for broker pairs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate the config; print it with defaults filled in and the failover arithmetic.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print who holds each lock now.
    Status {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let path = match &cli.command {
        Command::Run { config } | Command::Check { config } | Command::Status { config } => config,
    };
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lockgate: config error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command {
        Command::Check { .. } => {
            print!("{}", check_report(&config));
            ExitCode::SUCCESS
        }
        Command::Status { .. } => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("lockgate: cannot start the runtime: {e}");
                    return ExitCode::from(EXIT_RUNTIME);
                }
            };
            print!("{}", runtime.block_on(lockgate::status::report(&config)));
            ExitCode::SUCCESS
        }
        Command::Run { .. } => run(config),
    }
}

fn run(config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lockgate: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let result = runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        lockgate::run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("lockgate: {e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Completes on the first SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

fn check_report(config: &Config) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "# {}: valid\n# effective configuration (defaults filled in):\n\n{}",
        config.source.display(),
        config.render()
    );
    for c in &config.coordinators {
        let _ = writeln!(out, "\n# failover arithmetic for lock \"{}\":", c.name);
        for line in c.explain_failover() {
            let _ = writeln!(out, "#   {line}");
        }
    }
    out
}
