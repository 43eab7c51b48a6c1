//! A config's TOML text, built a table at a time. No other part of `common` is needed, so a
//! test without the harness (`config_fuzz.rs`) can include this file alone.
#![allow(dead_code)]

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A config's text: top-level keys first, then `[admin]`, coordinators and routes in the order
/// they are added, a blank line before each table.
pub struct Toml(String);

impl Toml {
    /// `node-id = "<id>"` and more top-level `keys` (whole lines: "shutdown-grace-ms = 500\n").
    pub fn node(id: &str, keys: &str) -> Toml {
        Toml(format!("node-id = \"{id}\"\n{keys}"))
    }

    /// An `[admin]` table listening on `listen`, with more `keys`.
    pub fn admin_on(mut self, listen: impl Display, keys: &str) -> Toml {
        self.0 += &format!("\n[admin]\nlisten = \"{listen}\"\n{keys}");
        self
    }

    /// An `[admin]` table on `127.0.0.1:<port>`, with more `keys`.
    pub fn admin(self, port: u16, keys: &str) -> Toml {
        self.admin_on(format!("127.0.0.1:{port}"), keys)
    }

    /// A coordinator `name` of type `kind` on lock `lock_id`, with more `keys` (its backend's).
    pub fn coordinator(mut self, name: &str, kind: &str, lock_id: &str, keys: &str) -> Toml {
        self.0 += &format!(
            "\n[[lock-coordinator]]\nname = \"{name}\"\ntype = \"{kind}\"\nlock-id = \"{lock_id}\"\n{keys}"
        );
        self
    }

    /// A file-lock coordinator `name` on lock `lock_id` in `locks`.
    pub fn file_lock(self, name: &str, lock_id: &str, locks: &Path, check_period: u64) -> Toml {
        let keys = format!(
            "check-period = {check_period}\nlocks-folder = \"{}\"\n",
            locks.display()
        );
        self.coordinator(name, "file", lock_id, &keys)
    }

    /// The last coordinator's health check of `address`: (interval-ms, timeout-ms, rise, fall).
    pub fn health_check(
        mut self,
        address: impl Display,
        (interval, timeout, rise, fall): (u64, u64, u32, u32),
    ) -> Toml {
        self.0 += &format!(
            "\n[lock-coordinator.health-check]\naddress = \"{address}\"\ninterval-ms = {interval}\ntimeout-ms = {timeout}\nrise = {rise}\nfall = {fall}\n"
        );
        self
    }

    /// A route `name` from `listen` to `forward_to`, with more `keys` (whole lines:
    /// `lock-coordinator = "…"` gates it, timeouts, `zero-copy`).
    pub fn route_on(
        mut self,
        name: &str,
        listen: impl Display,
        forward_to: impl Display,
        keys: &str,
    ) -> Toml {
        self.0 += &format!(
            "\n[[route]]\nname = \"{name}\"\nlisten = \"{listen}\"\nforward-to = \"{forward_to}\"\n{keys}"
        );
        self
    }

    /// A route `name` from `127.0.0.1:<port>` to `forward_to`, with more `keys`.
    pub fn route(self, name: &str, port: u16, forward_to: impl Display, keys: &str) -> Toml {
        self.route_on(name, format!("127.0.0.1:{port}"), forward_to, keys)
    }

    /// A route from `127.0.0.1:<port>` gated by coordinator `lock`.
    pub fn gated_route(self, name: &str, port: u16, forward_to: impl Display, lock: &str) -> Toml {
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

    pub fn into_text(self) -> String {
        self.0
    }

    /// Writes it as `<dir>/<name>.toml`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, &self.0).unwrap();
        path
    }
}

/// `127.0.0.1:<port>`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
