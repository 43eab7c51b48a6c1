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

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use lockgate::config::Config;

/// `print!`/`println!` without their panic on a closed stdout (`lockgate status | head`).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

macro_rules! errln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// Exit code of a bad configuration (also used by clap for bad arguments).
const EXIT_CONFIG: u8 = 2;
const EXIT_RUNTIME: u8 = 1;
/// `status`: a lock's state is unknown.
const EXIT_UNKNOWN: u8 = 3;
/// `step-down`/`resume`: the admin port answers as another node.
const EXIT_WRONG_DAEMON: u8 = 4;

/// The version with the commit it was built from (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("LOCKGATE_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    version = VERSION,
    about = "A lock-gated L4 proxy for broker pairs",
    after_help = "Exit codes: 0 success; 1 runtime failure (daemon unreachable, bind failure); \
2 bad configuration or arguments (or an unknown --lock); 3 status: some lock's state is \
unknown (lock service unreachable); 4 step-down/resume: the admin port answers as another node."
)]
struct Cli {
    /// Log line format (stderr). Timestamps are left out when journald is the sink
    /// (JOURNAL_STREAM is set). RUST_LOG filters.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate the config; print it with defaults filled in (paths as the daemon will use
    /// them) and the failover arithmetic.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Print nothing when the config is valid (for ExecStartPre=); errors still go to stderr.
        #[arg(long, short, conflicts_with = "json")]
        quiet: bool,
        /// Print the result as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print who holds each lock now (exit 3 when a lock's state is unknown).
    Status {
        #[arg(long, short)]
        config: PathBuf,
        /// Print the result as one JSON object on stdout.
        #[arg(long)]
        json: bool,
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
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script to stdout (e.g. `lockgate completions bash >
    /// /usr/share/bash-completion/completions/lockgate`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout, for packaging.
    #[command(hide = true)]
    Man,
    /// Ask the running daemon to contend for a lock again.
    Resume {
        #[arg(long, short)]
        config: PathBuf,
        /// The lock-coordinator's name.
        #[arg(long)]
        lock: String,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

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
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "lockgate", &mut out);
            return emit(&out);
        }
        Command::Man => {
            let mut out = Vec::new();
            if let Err(e) = clap_mangen::Man::new(Cli::command()).render(&mut out) {
                errln!("lockgate: cannot render the man page: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
            return emit(&out);
        }
        Command::Run { config } => (config, false),
        Command::Check { config, json, .. }
        | Command::Status { config, json }
        | Command::StepDown { config, json, .. }
        | Command::Resume { config, json, .. } => (config, *json),
    };
    let config = match load(path, json) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cli.command {
        Command::Check { quiet, json, .. } => {
            // --quiet (ExecStartPre=) never waits on ZooKeeper.
            let sessions = if quiet {
                Vec::new()
            } else {
                negotiated_sessions(&config)
            };
            if json {
                outln!("{}", check_json(&config, &sessions));
            } else if !quiet {
                out!("{}", check_report(&config, &sessions));
            }
            ExitCode::SUCCESS
        }
        Command::Status { json, .. } => {
            let runtime = match runtime(tokio::runtime::Builder::new_current_thread()) {
                Ok(r) => r,
                Err(code) => return code,
            };
            let locks = runtime.block_on(lockgate::status::observe_all(&config));
            // A read stuck on a hung mount keeps its blocking thread: do not wait for it.
            runtime.shutdown_background();
            let all_known = locks.iter().all(|l| l.state != "unknown");
            if json {
                let v = serde_json::json!({
                    "config": config.source.display().to_string(),
                    "node_id": config.node_id,
                    "all_known": all_known,
                    "locks": locks,
                });
                outln!("{v}");
            } else {
                out!("{}", lockgate::status::render(&locks));
            }
            if all_known {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_UNKNOWN)
            }
        }
        Command::Run { .. } => run(config),
        // Answered before the config was loaded.
        Command::Completions { .. } | Command::Man => ExitCode::SUCCESS,
        Command::StepDown {
            lock,
            hold_off_ms,
            drain_ms,
            json,
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
            lock_command(&config, &lock, &path, json)
        }
        Command::Resume { lock, json, .. } => {
            let path = format!("/locks/{}/resume", encode(&lock));
            lock_command(&config, &lock, &path, json)
        }
    }
}

/// Writes generated bytes to stdout; exit 1 if they cannot be written.
fn emit(bytes: &[u8]) -> ExitCode {
    use std::io::Write as _;
    match std::io::stdout().write_all(bytes) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            errln!("lockgate: cannot write to stdout: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Loads the config on a thread of its own within `LOAD_BOUND`: validation checks the locks
/// folder, which may hang on a dead shared mount. Exit 2 for a bad config, 1 for storage that
/// does not answer (the stuck thread is left behind; exiting ends it).
fn load(path: &std::path::Path, json: bool) -> Result<Config, ExitCode> {
    // With --json the failure is an object on stdout too, so a script reads one stream.
    let fail = |code: u8, kind: &str, message: String| {
        errln!("lockgate: {message}");
        if json {
            outln!(
                "{}",
                serde_json::json!({ "ok": false, "valid": code != EXIT_CONFIG, "error": kind, "message": message, "exit_code": code })
            );
        }
        ExitCode::from(code)
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = path.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("lockgate-load".to_owned())
        .spawn(move || {
            let _ = tx.send(Config::load(&owned));
        });
    if let Err(e) = spawned {
        return Err(fail(
            EXIT_RUNTIME,
            "runtime",
            format!("cannot start a thread: {e}"),
        ));
    }
    match rx.recv_timeout(lockgate::config::LOAD_BOUND) {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(fail(EXIT_CONFIG, "config", format!("config error: {e}"))),
        Err(_) => Err(fail(
            EXIT_RUNTIME,
            "storage_not_answering",
            format!(
                "storage not answering: reading {} and its locks folders took longer than {} ms (a hung shared mount?)",
                path.display(),
                lockgate::config::LOAD_BOUND.as_millis()
            ),
        )),
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
        errln!("lockgate: cannot start the runtime: {e}");
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
            // Once: as a log line when errors are logged (text or JSON), else on stderr.
            if tracing::enabled!(tracing::Level::ERROR) {
                tracing::error!("{e:#}");
            } else {
                errln!("lockgate: {e:#}");
            }
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// One step-down or resume: the lock must be in the config (else exit 2), and the daemon on
/// the admin port must be the node the config names (else exit 4); then the POST, and the
/// daemon's answer in words (or JSON).
fn lock_command(config: &Config, lock: &str, path: &str, json: bool) -> ExitCode {
    let fail = |code: u8, kind: &str, message: String| {
        errln!("lockgate: {message}");
        if json {
            outln!(
                "{}",
                serde_json::json!({ "ok": false, "lock": lock, "error": kind, "message": message, "exit_code": code })
            );
        }
        ExitCode::from(code)
    };
    if config.coordinator(lock).is_none() {
        let names: Vec<&str> = config
            .coordinators
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        return fail(
            EXIT_CONFIG,
            "unknown_lock",
            format!(
                "{} has no lock-coordinator named \"{lock}\" (it has: {})",
                config.source.display(),
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ),
        );
    }
    let Some(admin) = &config.admin else {
        return fail(
            EXIT_CONFIG,
            "no_admin",
            format!(
                "{} has no [admin] section, so the daemon cannot be asked",
                config.source.display()
            ),
        );
    };
    let mut addr = admin.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let runtime = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let request = |method, path: &str| {
        runtime.block_on(admin_request(addr, admin.token.as_deref(), method, path))
    };
    // Is the daemon there the node this config names?
    let status = match request(hyper::Method::GET, "/status") {
        Ok((200, body)) => body,
        Ok((code, body)) => {
            return fail(
                EXIT_RUNTIME,
                "daemon_refused",
                format!("the admin endpoint at {addr} answered GET /status with {code}: {body}"),
            );
        }
        Err(e) => {
            return fail(
                EXIT_RUNTIME,
                "daemon_unreachable",
                format!("cannot reach the daemon's admin endpoint at {addr}: {e:#}"),
            );
        }
    };
    let node = serde_json::from_str::<serde_json::Value>(&status)
        .ok()
        .and_then(|v| v.get("node_id").and_then(|n| n.as_str()).map(str::to_owned));
    match node {
        Some(n) if n == config.node_id => {}
        Some(n) => {
            return fail(
                EXIT_WRONG_DAEMON,
                "wrong_daemon",
                format!(
                    "the daemon at {addr} is node \"{n}\", not \"{}\" as {} names: nothing was asked of it",
                    config.node_id,
                    config.source.display()
                ),
            );
        }
        None => {
            return fail(
                EXIT_WRONG_DAEMON,
                "wrong_daemon",
                format!(
                    "what answers at {addr} is not a lockgate admin endpoint (GET /status has no node_id)"
                ),
            );
        }
    }
    match request(hyper::Method::POST, path) {
        Ok((200, body)) => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let result = v.get("result").and_then(|r| r.as_str()).unwrap_or(&body);
            if json {
                outln!(
                    "{}",
                    serde_json::json!({ "ok": true, "lock": lock, "node_id": config.node_id, "result": result })
                );
            } else {
                outln!("lock {lock} on node {}: {result}", config.node_id);
            }
            ExitCode::SUCCESS
        }
        Ok((code, body)) => fail(
            EXIT_RUNTIME,
            "daemon_refused",
            format!("the daemon answered {code}: {body}"),
        ),
        Err(e) => fail(
            EXIT_RUNTIME,
            "daemon_unreachable",
            format!("cannot reach the daemon's admin endpoint at {addr}: {e:#}"),
        ),
    }
}

/// How long the admin endpoint may take to accept a connection.
const CONNECT_BOUND: std::time::Duration = std::time::Duration::from_secs(5);
/// How long it may take to answer: a step-down answers once its drain is over.
const ANSWER_BOUND: std::time::Duration = std::time::Duration::from_secs(120);
/// The largest answer read (the admin endpoint's are small).
const MAX_ANSWER: usize = 4 << 20;

/// One HTTP/1.1 request to the admin endpoint (hyper's client, one connection per request):
/// (status code, body).
async fn admin_request(
    addr: std::net::SocketAddr,
    token: Option<&str>,
    method: hyper::Method,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    use http_body_util::{BodyExt as _, Empty, Limited};
    use hyper::header::{AUTHORIZATION, CONNECTION, HOST};
    let stream = tokio::time::timeout(CONNECT_BOUND, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("no connection within {} s", CONNECT_BOUND.as_secs()))??;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    let driver = tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr.to_string())
        .header(CONNECTION, "close");
    if let Some(t) = token {
        request = request.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    let request = request.body(Empty::<hyper::body::Bytes>::new())?;
    let answer = async {
        let response = sender.send_request(request).await?;
        let code = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
            .to_bytes();
        anyhow::Ok((code, String::from_utf8_lossy(&body).trim().to_owned()))
    };
    let result = tokio::time::timeout(ANSWER_BOUND, answer)
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "no answer within {} s",
                ANSWER_BOUND.as_secs()
            ))
        });
    driver.abort();
    result
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

/// How long `check` waits for each ZooKeeper ensemble to grant a session.
const NEGOTIATE_BOUND: std::time::Duration = std::time::Duration::from_secs(3);

/// Per lock: the ZooKeeper session timeout granted, or why it is not known.
type Sessions = Vec<(String, Result<std::time::Duration, String>)>;

/// Per ZooKeeper lock: the session timeout its servers grant (they cap it at their
/// maxSessionTimeout, 20 x tickTime by default), or why it is not known. Bounded by
/// [`NEGOTIATE_BOUND`] per lock.
fn negotiated_sessions(config: &Config) -> Sessions {
    use lockgate::config::BackendConfig;
    let zk: Vec<_> = config
        .coordinators
        .iter()
        .filter_map(|c| match &c.backend {
            BackendConfig::ZooKeeper(z) => Some((c.name.clone(), z.clone())),
            BackendConfig::File { .. } => None,
        })
        .collect();
    if zk.is_empty() {
        return Vec::new();
    }
    let runtime = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(r) => r,
        Err(_) => return Vec::new(),
    };
    let out = runtime.block_on(async {
        let mut out = Vec::new();
        for (name, z) in zk {
            let connect = zookeeper_client::Client::connector()
                .with_session_timeout(z.session)
                .with_connection_timeout(z.connection.min(NEGOTIATE_BOUND))
                .with_fail_eagerly()
                .connect(&z.connect_string);
            let r = match tokio::time::timeout(NEGOTIATE_BOUND, connect).await {
                Ok(Ok(client)) => Ok(client.session_timeout()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "no answer within {} ms",
                    NEGOTIATE_BOUND.as_millis()
                )),
            };
            out.push((name, r));
        }
        out
    });
    runtime.shutdown_background();
    out
}

/// The words `check` adds for a ZooKeeper lock about the session its servers grant.
fn session_lines(c: &lockgate::config::CoordinatorConfig, sessions: &Sessions) -> Vec<String> {
    let lockgate::config::BackendConfig::ZooKeeper(z) = &c.backend else {
        return Vec::new();
    };
    let Some((_, r)) = sessions.iter().find(|(n, _)| *n == c.name) else {
        return Vec::new();
    };
    let ms = |d: std::time::Duration| d.as_millis();
    match r {
        Err(e) => vec![format!(
            "the negotiated session was not checked: ZooKeeper {} not reachable from here ({e})",
            z.connect_string
        )],
        Ok(n) if *n >= z.session => vec![format!(
            "the servers grant the session asked: S = {} ms",
            ms(*n)
        )],
        Ok(n) => {
            let f = z.fencing(*n);
            let mut v = vec![
                format!(
                    "WARNING: the servers grant a session of {} ms, not the {} ms asked (their maxSessionTimeout, 20 x tickTime by default; raise it, or lower session-ms)",
                    ms(*n),
                    ms(z.session)
                ),
                format!(
                    "with S = {} ms: a dead holder's lock passes after {} ms; a holder cut off fences after F = {} ms; margin S - C - F = {} ms (C = {} ms)",
                    ms(*n),
                    ms(*n),
                    ms(f.fence_after),
                    ms(f.margin),
                    ms(f.connection)
                ),
            ];
            if !f.is_safe() {
                v.push("with that session no safe fencing margin is left: the daemon fences at once on any disconnection".to_owned());
            }
            v
        }
    }
}

fn check_report(config: &Config, sessions: &Sessions) -> String {
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
        for line in session_lines(c, sessions) {
            let _ = writeln!(out, "#   {line}");
        }
    }
    out
}

/// `check --json`: the validated config, per lock its paths and failover figures.
fn check_json(config: &Config, sessions: &Sessions) -> serde_json::Value {
    use lockgate::config::BackendConfig;
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let locks: Vec<serde_json::Value> = config
        .coordinators
        .iter()
        .map(|c| {
            let b = c.failover_bounds();
            let mut v = serde_json::json!({
                "name": c.name,
                "type": c.backend.type_name(),
                "lock_id": c.lock_id,
                "check_period_ms": ms(c.check_period),
                "failover": {
                    "holder_dies_ms": ms(b.holder_dies),
                    "holder_stops_ms": ms(b.holder_stops),
                    "broker_dies_ms": b.broker_dies.map(ms),
                    "fence_within_ms": ms(b.fence_within),
                },
                "explain": c.explain_failover(),
            });
            if let (Some(o), Some((_, r))) = (
                v.as_object_mut(),
                sessions.iter().find(|(n, _)| *n == c.name),
            ) {
                o.insert(
                    "negotiated_session_ms".into(),
                    r.as_ref().ok().map(|d| ms(*d)).into(),
                );
                o.insert("session_lines".into(), session_lines(c, sessions).into());
            }
            if let (Some(o), BackendConfig::File { locks_folder }) = (v.as_object_mut(), &c.backend)
            {
                o.insert(
                    "locks_folder".into(),
                    locks_folder.display().to_string().into(),
                );
                o.insert(
                    "lock_file".into(),
                    locks_folder.join(&c.lock_id).display().to_string().into(),
                );
            }
            v
        })
        .collect();
    let routes: Vec<serde_json::Value> = config
        .routes
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "listen": r.listen.to_string(),
                "forward_to": r.forward_to,
                "lock": r.lock,
            })
        })
        .collect();
    serde_json::json!({
        "ok": true,
        "valid": true,
        "config": config.source.display().to_string(),
        "node_id": config.node_id,
        "admin": config.admin.as_ref().map(|a| a.listen.to_string()),
        "locks": locks,
        "routes": routes,
        "effective": config.render(),
    })
}
