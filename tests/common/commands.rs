//! Commands to lockgate from a test: the CLI (`check`, `status`, `step-down`, `resume`) run
//! with a bound, and the admin endpoint's POSTs.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use super::{http, lockgate};

/// `lockgate ARGS --config CONFIG`, killed if it has not returned within `bound`.
pub async fn cli_within(bound: Duration, args: &[&str], config: &Path) -> Output {
    tokio::time::timeout(
        bound,
        lockgate()
            .args(args)
            .arg("--config")
            .arg(config)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("lockgate {args:?} did not return within {bound:?}"))
    .unwrap()
}

/// `lockgate ARGS --config CONFIG`, within 20 s.
pub async fn cli(args: &[&str], config: &Path) -> Output {
    cli_within(Duration::from_secs(20), args, config).await
}

/// As `cli`, asserting it succeeds; returns its stdout.
pub async fn cli_ok(args: &[&str], config: &Path) -> String {
    let out = cli(args, config).await;
    assert!(out.status.success(), "lockgate {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An output's exit code, stdout and stderr, for an assertion message.
pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `lockgate step-down` / `lockgate resume` (`args`, with their options) for `lock`, through
/// the admin endpoint of the node `config` describes; asserts it succeeded.
pub async fn lock_command_for(lock: &str, config: &Path, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend(["--lock", lock]);
    let out = cli(&all, config).await;
    assert!(out.status.success(), "lockgate {args:?}: {}", text(&out));
    out
}

/// `lock_command_for` the tests' usual lock, `clients-lock`.
pub async fn lock_command(config: &Path, args: &[&str]) -> Output {
    lock_command_for("clients-lock", config, args).await
}

/// A POST to the admin endpoint on `admin` (`/locks/clients-lock/step-down?hold-off-ms=…`,
/// `/locks/clients-lock/resume`); asserts it answered 200.
pub async fn admin_post(admin: u16, path: &str) {
    let (code, body) = http(admin, "POST", path, &[]).await;
    assert_eq!(code, 200, "POST {path}: {body}");
}
