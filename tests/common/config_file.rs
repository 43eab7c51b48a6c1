//! Test configs on disk: a scratch folder with a locks folder in it, the spec of one node on
//! the file lock (every other setting at its usual test value), a config written from TOML
//! text, an `[admin]` table added to a written one, and a setting read from the environment.
//! (TOML built a table at a time: `toml_text.rs`.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::NodeSpec;

/// A fresh scratch folder (removed when dropped) and an empty `locks` folder in it.
pub fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let locks = dir.path().join("locks");
    std::fs::create_dir(&locks).unwrap();
    (dir, locks)
}

/// One node on the file lock in `locks`, its client route on `client_port` to `upstream`:
/// a check-period of 1 s, no health check, no extra routes. Change a field with
/// `NodeSpec { check_period_ms: 500, ..file_spec(..) }`.
pub fn file_spec<'a>(
    node_id: &'a str,
    locks: &'a Path,
    client_port: u16,
    upstream: SocketAddr,
) -> NodeSpec<'a> {
    NodeSpec {
        node_id,
        locks,
        client_port,
        upstream,
        check_period_ms: 1000,
        health: None,
        extra: String::new(),
        zookeeper: None,
    }
}

/// Writes `text` as `<dir>/<name>.toml`.
pub fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Adds an `[admin]` table listening on `listen` (with `extra` keys) to a config written by
/// `NodeSpec`.
pub fn with_admin_on(config: PathBuf, listen: &str, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen(
            "\n[[lock-coordinator]]",
            &format!("\n[admin]\nlisten = \"{listen}\"\n{extra}\n[[lock-coordinator]]"),
            1,
        ),
    )
    .unwrap();
    config
}

/// Adds an `[admin]` table on `127.0.0.1:<admin>` (with `extra` keys) to a config written by
/// `NodeSpec`.
pub fn with_admin(config: PathBuf, admin: u16, extra: &str) -> PathBuf {
    with_admin_on(config, &format!("127.0.0.1:{admin}"), extra)
}

/// The value of environment variable `name` (a count, a number of runs), or `default` when it
/// is unset or not a number.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
