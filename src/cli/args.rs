//! The command line: every subcommand and option (clap), the shell completions and the man page
//! generated from them.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};

use super::{EXIT_RUNTIME, emit};

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
pub struct Cli {
    /// Log line format (stderr). Timestamps are left out when journald is the sink
    /// (JOURNAL_STREAM is set). RUST_LOG filters.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
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

/// `lockgate completions SHELL`: the completion script on stdout.
pub fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "lockgate", &mut out);
    emit(&out)
}

/// `lockgate man`: the man page (roff) on stdout.
pub fn man() -> ExitCode {
    let mut out = Vec::new();
    if let Err(e) = clap_mangen::Man::new(Cli::command()).render(&mut out) {
        errln!("lockgate: cannot render the man page: {e}");
        return ExitCode::from(EXIT_RUNTIME);
    }
    emit(&out)
}
