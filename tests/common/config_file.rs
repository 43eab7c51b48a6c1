//! Test configs on disk: a scratch folder with a locks folder in it, the spec of one node on
//! the file lock (every other setting at its usual test value), a config written from TOML
//! text, an `[admin]` table added to a written one, and a setting read from the environment.
//! The `NodeSpec` of a test node's config, written as TOML. (TOML built a table at a time:
//! `toml_text.rs`.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
        ..NodeSpec::default()
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

/// Settings of one test node's config.
pub struct NodeSpec<'a> {
    pub node_id: &'a str,
    pub locks: &'a Path,
    pub client_port: u16,
    pub upstream: SocketAddr,
    pub check_period_ms: u64,
    /// Health-check the upstream: (interval-ms, rise, fall).
    pub health: Option<(u64, u32, u32)>,
    /// Extra TOML appended at the end (more routes).
    pub extra: String,
    /// Use ZooKeeper instead of the file lock: the coordinator's TOML keys after `type`.
    pub zookeeper: Option<String>,
}

impl Default for NodeSpec<'_> {
    /// node0 on the file lock, check-period 500 ms, no health check; set at least the locks
    /// folder, the client port and the upstream.
    fn default() -> Self {
        NodeSpec {
            node_id: "node0",
            locks: Path::new("locks"),
            client_port: 0,
            upstream: SocketAddr::from(([127, 0, 0, 1], 0)),
            check_period_ms: 500,
            health: None,
            extra: String::new(),
            zookeeper: None,
        }
    }
}

/// The coordinator keys of a ZooKeeper lock in the tests' namespace, after `type`.
pub fn zk_keys(connect: &str, timing: &str) -> String {
    format!("connect-string = \"{connect}\"\nnamespace = \"lockgate-test\"\n{timing}")
}

impl NodeSpec<'_> {
    pub fn write(&self, dir: &Path) -> PathBuf {
        let backend = match &self.zookeeper {
            Some(keys) => format!("type = \"zookeeper\"\n{keys}\n"),
            None => format!(
                "type = \"file\"\nlocks-folder = \"{}\"\n",
                self.locks.display()
            ),
        };
        let mut text = format!(
            r#"node-id = "{id}"
shutdown-grace-ms = 2000

[[lock-coordinator]]
name = "clients-lock"
lock-id = "mirror-cluster-clients"
check-period = {period}
{backend}"#,
            id = self.node_id,
            period = self.check_period_ms,
        );
        if let Some((interval, rise, fall)) = self.health {
            text += &format!(
                "\n[lock-coordinator.health-check]\naddress = \"{}\"\ninterval-ms = {interval}\ntimeout-ms = {interval}\nrise = {rise}\nfall = {fall}\n",
                self.upstream
            );
        }
        text += &format!(
            "\n[[route]]\nname = \"clients\"\nlisten = \"127.0.0.1:{}\"\nforward-to = \"{}\"\nlock-coordinator = \"clients-lock\"\n",
            self.client_port, self.upstream
        );
        text += &self.extra;
        let path = dir.join(format!("{}.toml", self.node_id));
        std::fs::write(&path, text).unwrap();
        path
    }
}
