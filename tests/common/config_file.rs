//! Test configs on disk: a scratch folder with a locks folder in it, the spec of one node on
//! the file lock (every other setting at its usual test value), a config written from TOML
//! text, and an `[admin]` table added to a written one.

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

/// A config's TOML text, built a table at a time: top-level keys first, then `[admin]`,
/// coordinators and routes in the order they are added.
pub struct Toml(String);

impl Toml {
    /// `node-id = "<id>"` and more top-level `keys` (whole lines, e.g. "shutdown-grace-ms = 500\n").
    pub fn node(id: &str, keys: &str) -> Toml {
        Toml(format!("node-id = \"{id}\"\n{keys}"))
    }

    /// An `[admin]` table on `127.0.0.1:<port>`, with more `keys`.
    pub fn admin(mut self, port: u16, keys: &str) -> Toml {
        self.0 += &format!("\n[admin]\nlisten = \"127.0.0.1:{port}\"\n{keys}");
        self
    }

    /// A file-lock coordinator `name` on lock `lock_id` in `locks`.
    pub fn file_lock(mut self, name: &str, lock_id: &str, locks: &Path, check_period: u64) -> Toml {
        self.0 += &format!(
            "\n[[lock-coordinator]]\nname = \"{name}\"\ntype = \"file\"\nlock-id = \"{lock_id}\"\nlocks-folder = \"{}\"\ncheck-period = {check_period}\n",
            locks.display()
        );
        self
    }

    /// The last coordinator's health check of `address`: (interval-ms, timeout-ms, rise, fall).
    pub fn health_check(
        mut self,
        address: SocketAddr,
        (interval, timeout, rise, fall): (u64, u64, u32, u32),
    ) -> Toml {
        self.0 += &format!(
            "\n[lock-coordinator.health-check]\naddress = \"{address}\"\ninterval-ms = {interval}\ntimeout-ms = {timeout}\nrise = {rise}\nfall = {fall}\n"
        );
        self
    }

    /// A route `name` from `127.0.0.1:<port>` to `forward_to`, with more `keys` (whole lines:
    /// `lock-coordinator = "…"` gates it, timeouts, `zero-copy`).
    pub fn route(
        mut self,
        name: &str,
        port: u16,
        forward_to: impl std::fmt::Display,
        keys: &str,
    ) -> Toml {
        self.0 += &format!(
            "\n[[route]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\nforward-to = \"{forward_to}\"\n{keys}"
        );
        self
    }

    /// A route gated by coordinator `lock`.
    pub fn gated_route(
        self,
        name: &str,
        port: u16,
        forward_to: impl std::fmt::Display,
        lock: &str,
    ) -> Toml {
        self.route(
            name,
            port,
            forward_to,
            &format!("lock-coordinator = \"{lock}\"\n"),
        )
    }

    pub fn text(&self) -> &str {
        &self.0
    }

    /// Writes it as `<dir>/<name>.toml`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        write_config(dir, name, &self.0)
    }
}

/// The value of environment variable `name` (a count, a number of runs), or `default` when it
/// is unset or not a number.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
