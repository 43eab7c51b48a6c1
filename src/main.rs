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
    /// Ask the running daemon to hand a lock to its peer (planned switchover).
    StepDown {
        #[arg(long, short)]
        config: PathBuf,
        /// The lock-coordinator's name.
        #[arg(long)]
        lock: String,
        /// Do not contend again for this long (default: 3 check-periods).
        #[arg(long)]
        hold_off_ms: Option<u64>,
        /// Let live connections finish for up to this long before resetting them.
        #[arg(long)]
        drain_ms: Option<u64>,
    },
    /// Ask the running daemon to contend for a lock again.
    Resume {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        lock: String,
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
        Command::Run { config }
        | Command::Check { config }
        | Command::Status { config }
        | Command::StepDown { config, .. }
        | Command::Resume { config, .. } => config,
    };
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cli.command {
        Command::Check { .. } => {
            print!("{}", check_report(&config));
            ExitCode::SUCCESS
        }
        Command::Status { .. } => {
            let runtime = match runtime(tokio::runtime::Builder::new_current_thread()) {
                Ok(r) => r,
                Err(code) => return code,
            };
            print!("{}", runtime.block_on(lockgate::status::report(&config)));
            // A read stuck on a hung mount keeps its blocking thread: do not wait for it.
            runtime.shutdown_background();
            ExitCode::SUCCESS
        }
        Command::Run { .. } => run(config),
        Command::StepDown {
            lock,
            hold_off_ms,
            drain_ms,
            ..
        } => {
            let mut query = Vec::new();
            if let Some(v) = hold_off_ms {
                query.push(format!("hold-off-ms={v}"));
            }
            if let Some(v) = drain_ms {
                query.push(format!("drain-ms={v}"));
            }
            let path = format!("/locks/{}/step-down?{}", encode(&lock), query.join("&"));
            admin_post(&config, &path)
        }
        Command::Resume { lock, .. } => {
            admin_post(&config, &format!("/locks/{}/resume", encode(&lock)))
        }
    }
}

/// Loads the config on a thread of its own within `LOAD_BOUND`: validation checks the locks
/// folder, which may hang on a dead shared mount. Exit 2 for a bad config, 1 for storage that
/// does not answer (the stuck thread is left behind; exiting ends it).
fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = path.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("lockgate-load".to_owned())
        .spawn(move || {
            let _ = tx.send(Config::load(&owned));
        });
    if let Err(e) = spawned {
        eprintln!("lockgate: cannot start a thread: {e}");
        return Err(ExitCode::from(EXIT_RUNTIME));
    }
    match rx.recv_timeout(lockgate::config::LOAD_BOUND) {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => {
            eprintln!("lockgate: config error: {e}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
        Err(_) => {
            eprintln!(
                "lockgate: storage not answering: reading {} and its locks folders took longer than {} ms (a hung shared mount?)",
                path.display(),
                lockgate::config::LOAD_BOUND.as_millis()
            );
            Err(ExitCode::from(EXIT_RUNTIME))
        }
    }
}

/// Percent-encodes a lock name for one path segment: every byte but RFC 3986's unreserved
/// ones, so a name with a space, `/`, `?`, `#` or `%` reaches the daemon intact.
fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Builds a tokio runtime, or says why it cannot.
fn runtime(mut builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("lockgate: cannot start the runtime: {e}");
        ExitCode::from(EXIT_RUNTIME)
    })
}

fn run(config: Config) -> ExitCode {
    let runtime = match runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let reloads = reload_signal()?;
        // Registered after the first signal, so only a second one completes it.
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            shutdown.await;
            let _ = first_tx.send(());
        };
        let hurry = async move {
            let _ = first_rx.await;
            match shutdown_signal() {
                Ok(second) => second.await,
                Err(_) => std::future::pending().await,
            }
        };
        lockgate::run_with_reload(config, shutdown, hurry, reloads).await
    });
    // Everything has stopped in order; a blocking thread still stuck in the kernel (a read of
    // a hung shared mount) must not hold the exit: do not join it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("lockgate: {e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// POSTs to the running daemon's admin endpoint and prints its answer.
fn admin_post(config: &Config, path: &str) -> ExitCode {
    use std::io::{Read as _, Write as _};
    let Some(admin) = &config.admin else {
        eprintln!(
            "lockgate: {} has no [admin] section, so the daemon cannot be asked",
            config.source.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let mut addr = admin.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let auth = admin
        .token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let result = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
        .and_then(|mut s| {
            s.set_read_timeout(Some(std::time::Duration::from_secs(120)))?;
            s.write_all(request.as_bytes())?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        });
    match result {
        Ok(response) => {
            let ok = response.starts_with("HTTP/1.1 200");
            let body = response.split("\r\n\r\n").nth(1).unwrap_or("").trim();
            if ok {
                println!("{body}");
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "lockgate: {}: {body}",
                    response.lines().next().unwrap_or("no answer")
                );
                ExitCode::from(EXIT_RUNTIME)
            }
        }
        Err(e) => {
            eprintln!("lockgate: cannot reach the daemon's admin endpoint at {addr}: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Yields on every SIGHUP.
fn reload_signal() -> anyhow::Result<tokio::sync::mpsc::Receiver<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received");
            // A reload already queued covers this one too.
            let _ = tx.try_send(());
        }
    });
    Ok(rx)
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
