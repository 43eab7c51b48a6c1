//! Configuration: the validated types `run`, `check` and `status` work from ([`Config`] and
//! one struct per table), their defaults and bounds, and [`Config::load`].
//!
//! Keys keep Artemis's words (`lock-id`, `check-period`, `locks-folder`) and every duration is
//! an integer number of milliseconds, as in Artemis. Every error names the file, the line and
//! column, the key and its table:
//! `FILE:LINE:COL: key `check-period` in lock-coordinator[0]: must be greater than 0`.
//!
//! The rest of the module, one noun a file: `raw` (the file as serde reads it), `validate`
//! (raw into validated, one validator per section), `error` (placing a failure in the
//! file), `effective` (the effective configuration `check` prints), `failover` (the
//! failover arithmetic in figures and words) and `node` (the host name). The ZooKeeper
//! fencing arithmetic is the backend's: [`crate::lock::zookeeper::Fencing`].

mod effective;
mod error;
mod failover;
mod node;
mod raw;
mod validate;

pub use effective::Effective;
pub use error::{ConfigError, LoadError};
pub use failover::FailoverBounds;
pub use node::hostname;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use error::KeyError;

/// Default `check-period`, as in Artemis.
pub const DEFAULT_CHECK_PERIOD_MS: u64 = 5000;
/// Default `shutdown-grace-ms`: how long open routes may drain on SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 5000;
/// Health-check defaults (HAProxy-like: a probe a second, two to rise, two to fall).
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 1000;
pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 500;
pub const DEFAULT_HEALTH_RISE: u32 = 2;
pub const DEFAULT_HEALTH_FALL: u32 = 2;
/// Default `fast-interval-ms`: the spacing of the confirming probes that a failed client
/// connect to the upstream starts (HAProxy's `fastinter`).
pub const DEFAULT_HEALTH_FAST_INTERVAL_MS: u64 = 10;
/// Default bound on connecting to a route's upstream.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5000;
/// Default bound on how long a half-closed connection may linger.
pub const DEFAULT_HALF_CLOSE_TIMEOUT_MS: u64 = 60_000;
/// Default `client-timeout-ms` and `server-timeout-ms` (HAProxy's `timeout client` and
/// `timeout server`): three times the longest heartbeat brokers use by default (Artemis core
/// pings every 30 s with a 60 s TTL; MQTT keep-alive and AMQP idle-timeout are 60 s; OpenWire's
/// inactivity monitor 30 s), so a live heartbeating connection is never closed by it.
pub const DEFAULT_INACTIVITY_TIMEOUT_MS: u64 = 180_000;
/// Default `tcp-user-timeout-ms`: how long written bytes may stay unacknowledged (or stuck
/// behind a zero window) before the kernel drops the connection. One broker heartbeat period:
/// a peer that has not taken a byte for that long has missed its heartbeats too.
pub const DEFAULT_TCP_USER_TIMEOUT_MS: u64 = 60_000;
/// Upper bound of every route timeout: one week.
pub const MAX_ROUTE_TIMEOUT_MS: u64 = 7 * 86_400_000;
/// Upper bound of every period, grace and lock-service timeout (`shutdown-grace-ms`,
/// `check-period`, `session-ms`, `connection-ms`, `retries-ms`, `interval-ms`, `timeout-ms`,
/// `connect-timeout-ms`): one hour. Far above any sensible value, and low enough that every
/// sum and product lockgate forms from them stays exact.
pub const MAX_PERIOD_MS: u64 = 3_600_000;
/// Upper bound of the counts `rise`, `fall` and `retries`.
pub const MAX_COUNT: u32 = 1000;

/// A configuration that has passed every check: what `run`, `check` and `status` work from.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, for messages.
    pub source: PathBuf,
    /// Written into owner records so `status` can say who holds a lock.
    pub node_id: String,
    /// How long open routes may drain on shutdown before their connections are reset.
    pub shutdown_grace: Duration,
    pub coordinators: Vec<CoordinatorConfig>,
    /// In file order: gated routes of one lock bind in this order and unbind in reverse.
    pub routes: Vec<RouteConfig>,
    /// The admin HTTP endpoint, if `[admin]` is present.
    pub admin: Option<AdminConfig>,
}

/// `[admin]`: metrics, readiness, status, step-down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token for mutating endpoints (required when `listen` is not loopback).
    pub token: Option<String>,
    /// The file the token was read from (`check` names it; the token is never printed).
    pub token_file: Option<PathBuf>,
    /// Admin connections served at once; more are closed as they arrive.
    pub max_connections: u32,
}

/// Default `[admin] max-connections`: a Prometheus scraper, a probe or two and an operator.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: u32 = 16;
/// Upper bound of `[admin] max-connections`.
pub const MAX_ADMIN_MAX_CONNECTIONS: u32 = 1024;

/// Default admin address: loopback, the Prometheus exporter port.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";

/// One `[[lock-coordinator]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorConfig {
    pub name: String,
    pub lock_id: String,
    /// Cadence of acquisition attempts while standing by and of liveness checks while holding.
    pub check_period: Duration,
    pub backend: BackendConfig,
    /// Contend only while the local broker answers; `None` means always contend.
    pub health: Option<HealthConfig>,
}

/// The lock engine, chosen once by a match in `lock::Lock::new`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    /// An exclusive `flock` on `<locks-folder>/<lock-id>`.
    File { locks_folder: PathBuf },
    /// Ephemeral-sequential contender nodes under `/<namespace>/<lock-id>`.
    ZooKeeper(ZkConfig),
}

impl BackendConfig {
    pub fn type_name(&self) -> &'static str {
        match self {
            BackendConfig::File { .. } => "file",
            BackendConfig::ZooKeeper(_) => "zookeeper",
        }
    }
}

/// ZooKeeper settings, in Artemis's words and with its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZkConfig {
    pub connect_string: String,
    /// Prefix of every znode (no leading slash).
    pub namespace: String,
    /// Requested session timeout S (the server may negotiate another).
    pub session: Duration,
    /// F = S × session-percent / 100: how long a disconnected holder may keep serving.
    pub session_percent: u32,
    /// Requested connection timeout C.
    pub connection: Duration,
    /// Connection attempts at start-up before falling back to one per check-period.
    pub retries: u32,
    pub retries_wait: Duration,
}

/// Artemis's ZooKeeper defaults.
pub const DEFAULT_ZK_SESSION_MS: u64 = 18_000;
pub const DEFAULT_ZK_SESSION_PERCENT: u32 = 33;
pub const DEFAULT_ZK_CONNECTION_MS: u64 = 8_000;
pub const DEFAULT_ZK_RETRIES: u32 = 1;
pub const DEFAULT_ZK_RETRIES_MS: u64 = 1_000;

/// `[lock-coordinator.health-check]`: a TCP connect to the local broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub address: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes before the broker counts as up.
    pub rise: u32,
    /// Consecutive failures before the broker counts as down.
    pub fall: u32,
    /// A gated route's refused or reset connect to its upstream starts a probe at once, and
    /// while failures mount the probes run `fast_interval` apart (HAProxy's `observe layer4`
    /// with `fastinter`): the probes decide, never the client's connect.
    pub observe_connects: bool,
    pub fast_interval: Duration,
}

/// One `[[route]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub name: String,
    pub listen: SocketAddr,
    /// `host:port`, resolved at each connect so a broker may move behind a name.
    pub forward_to: String,
    /// The coordinator that gates this route; `None` for an open route.
    pub lock: Option<String>,
    pub connect_timeout: Duration,
    pub half_close_timeout: Duration,
    /// How long the client leg may stay idle (nothing read from the client, nothing written
    /// to it) before the connection is closed. Ignored when `tunnel_timeout` is set.
    pub client_timeout: Duration,
    /// The same for the server (upstream) leg.
    pub server_timeout: Duration,
    /// When set, replaces both: how long the whole connection may stay idle (no byte moved in
    /// either direction).
    pub tunnel_timeout: Option<Duration>,
    /// TCP_USER_TIMEOUT on both legs: how long written bytes may stay unacknowledged, or stuck
    /// behind a zero window, before the kernel ends the connection.
    pub tcp_user_timeout: Duration,
    /// Forward with splice(2) through a pipe (Linux); `false` forces the portable copy path.
    pub zero_copy: bool,
    /// Send a PROXY protocol header with the client's address to the upstream first.
    pub proxy_protocol: ProxyProtocol,
}

/// `proxy-protocol` of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyProtocol {
    /// Nothing is sent before the client's bytes (the default).
    #[default]
    None,
    /// A PROXY protocol version 2 (binary) header.
    V2,
}

impl ProxyProtocol {
    /// The word used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocol::None => "none",
            ProxyProtocol::V2 => "v2",
        }
    }
}

/// The bound on loading the config at start, at reload and for `lockgate status`.
pub const LOAD_BOUND: Duration = Duration::from_secs(5);

impl Config {
    /// Reads and validates `path`. Relative paths inside resolve against the file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_str(&text, path)
    }

    /// [`Config::load`] on a blocking thread, bounded by `bound`: the load checks the locks
    /// folder, which may hang on a dead shared mount. At most one such load is outstanding in
    /// the process: while one is still stuck, another is refused at once rather than leaving
    /// one more thread behind.
    pub async fn load_bounded(path: &Path, bound: Duration) -> Result<Config, LoadError> {
        use std::sync::atomic::{AtomicBool, Ordering};
        static IN_FLIGHT: AtomicBool = AtomicBool::new(false);
        if IN_FLIGHT.swap(true, Ordering::AcqRel) {
            return Err(LoadError::StillWaiting);
        }
        let owned = path.to_path_buf();
        let task = tokio::task::spawn_blocking(move || {
            let r = Config::load(&owned);
            IN_FLIGHT.store(false, Ordering::Release);
            r
        });
        match tokio::time::timeout(bound, task).await {
            Ok(Ok(r)) => r.map_err(LoadError::Config),
            Ok(Err(join)) => {
                IN_FLIGHT.store(false, Ordering::Release);
                Err(LoadError::Failed(join.to_string()))
            }
            Err(_) => Err(LoadError::StorageNotAnswering(bound)),
        }
    }

    /// Parses and validates `text` as if read from `path`.
    pub fn from_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::de::Deserializer::parse(text)
            .map_err(|e| KeyError::from_toml(&e, None, text))
            .and_then(|document| {
                serde_path_to_error::deserialize(document)
                    .map_err(|e| KeyError::from_toml(e.inner(), Some(e.path()), text))
            })
            .map_err(|e| e.locate(path, text))?;
        // Relative paths resolve against the config file's folder, made absolute here (no
        // file system access) so that `check` prints them as the daemon uses them.
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| Path::new("."));
        let base = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
        validate::validate(raw, &base, path).map_err(|e| e.locate(path, text))
    }

    pub fn coordinator(&self, name: &str) -> Option<&CoordinatorConfig> {
        self.coordinators.iter().find(|c| c.name == name)
    }
}

impl CoordinatorConfig {
    /// What names the lock itself changed between `self` and `new` (`lock-id`, the type,
    /// `locks-folder`, `connect-string`, `namespace`), in words: a reload that changes it moves
    /// this node to another lock while its peer may still hold the old one.
    pub fn identity_changes(&self, new: &CoordinatorConfig) -> Vec<String> {
        let mut out = Vec::new();
        if self.lock_id != new.lock_id {
            out.push(format!(
                "lock-id \"{}\" -> \"{}\"",
                self.lock_id, new.lock_id
            ));
        }
        match (&self.backend, &new.backend) {
            (BackendConfig::File { locks_folder: a }, BackendConfig::File { locks_folder: b }) => {
                if a != b {
                    out.push(format!(
                        "locks-folder \"{}\" -> \"{}\"",
                        a.display(),
                        b.display()
                    ));
                }
            }
            (BackendConfig::ZooKeeper(a), BackendConfig::ZooKeeper(b)) => {
                if a.connect_string != b.connect_string {
                    out.push(format!(
                        "connect-string \"{}\" -> \"{}\"",
                        a.connect_string, b.connect_string
                    ));
                }
                if a.namespace != b.namespace {
                    out.push(format!(
                        "namespace \"{}\" -> \"{}\"",
                        a.namespace, b.namespace
                    ));
                }
            }
            (a, b) => out.push(format!(
                "type \"{}\" -> \"{}\"",
                a.type_name(),
                b.type_name()
            )),
        }
        out
    }

    /// Deadline of one lock-file operation: a hung mount fences after this long.
    pub fn io_timeout(&self) -> Duration {
        self.check_period
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_str(text, Path::new("/tmp/test.toml"))
    }

    /// The line, the full key path (`table.key`) and the message of a refusal.
    fn err(text: &str) -> (usize, String, String) {
        match parse(text) {
            Err(ConfigError::Invalid {
                line,
                table,
                key,
                message,
                ..
            }) if table.is_empty() => (line, key, message),
            Err(ConfigError::Invalid {
                line,
                table,
                key,
                message,
                ..
            }) => (line, format!("{table}.{key}"), message),
            other => panic!("expected an invalid config, got {other:?}"),
        }
    }

    const OK: &str = r#"
[[lock-coordinator]]
name = "clients-lock"
type = "file"
lock-id = "x"
locks-folder = "/tmp"

[[route]]
name = "clients"
listen = "127.0.0.1:61616"
forward-to = "127.0.0.1:61626"
lock-coordinator = "clients-lock"
"#;

    #[test]
    fn fast_interval_is_bounded_by_the_interval() {
        let with = |keys: &str| {
            let text = OK.replace(
                "locks-folder = \"/tmp\"\n",
                &format!(
                    "locks-folder = \"/tmp\"\n\n[lock-coordinator.health-check]\n\
                     address = \"127.0.0.1:1\"\ntimeout-ms = 5\n{keys}\n"
                ),
            );
            parse(&text).map(|c| c.coordinators[0].health.clone().unwrap())
        };
        let h = with("").unwrap();
        assert!(h.observe_connects);
        assert_eq!(h.fast_interval, Duration::from_millis(10));
        // The default never exceeds a shorter interval.
        assert_eq!(
            with("interval-ms = 5").unwrap().fast_interval,
            Duration::from_millis(5)
        );
        assert!(with("fast-interval-ms = 0").is_err());
        assert!(with("interval-ms = 100\nfast-interval-ms = 101").is_err());
        assert!(!with("observe-connects = false").unwrap().observe_connects);
    }

    #[test]
    fn defaults_are_filled_in() {
        let c = parse(OK).unwrap();
        assert_eq!(c.coordinators[0].check_period, Duration::from_millis(5000));
        assert_eq!(c.shutdown_grace, Duration::from_millis(5000));
        assert_eq!(c.routes[0].lock.as_deref(), Some("clients-lock"));
        assert!(c.routes[0].zero_copy);
        assert_eq!(c.routes[0].proxy_protocol, ProxyProtocol::None);
        assert!(!c.node_id.is_empty());
        // The rendered effective config is itself a valid config.
        let again = parse(&c.render()).unwrap();
        assert_eq!(again.render(), c.render());
    }

    #[test]
    fn errors_name_line_and_key() {
        let (line, key, _) =
            err(&OK.replace("lock-id = \"x\"", "lock-id = \"x\"\ncheck-period = 0"));
        assert_eq!(
            (line, key.as_str()),
            (6, "lock-coordinator[0].check-period")
        );
        let (line, key, _) =
            err(&OK.replace("name = \"clients\"", "name = \"clients\"\nlisten-on = 1"));
        assert_eq!((line, key.as_str()), (10, "route[0].listen-on"));
        let (line, key, _) = err(&OK.replace("lock-id = \"x\"", "lock-id = 5"));
        assert_eq!((line, key.as_str()), (5, "lock-coordinator[0].lock-id"));
        let (_, key, msg) = err(&OK.replace(
            "lock-coordinator = \"clients-lock\"",
            "lock-coordinator = \"nope\"",
        ));
        assert_eq!(key, "route[0].lock-coordinator");
        assert!(msg.contains("nope"));
        // A missing required key is named at the table that lacks it.
        let (line, key, _) = err(&OK.replace("name = \"clients\"\n", ""));
        assert_eq!((line, key.as_str()), (8, "route[0].name"));
        // A syntax error has no serde path: the key is the one on its line.
        let (line, key, _) = err(&OK.replace("lock-id = \"x\"", "lock-id = \"x"));
        assert_eq!((line, key.as_str()), (5, "lock-id"));
    }

    #[test]
    fn data_path_keys() {
        let c = parse(&OK.replace(
            "lock-coordinator = \"clients-lock\"",
            "lock-coordinator = \"clients-lock\"\nzero-copy = false\nproxy-protocol = \"v2\"",
        ))
        .unwrap();
        assert!(!c.routes[0].zero_copy);
        assert_eq!(c.routes[0].proxy_protocol, ProxyProtocol::V2);
        assert_eq!(parse(&c.render()).unwrap().render(), c.render());
        let (line, key, msg) = err(&OK.replace(
            "lock-coordinator = \"clients-lock\"",
            "lock-coordinator = \"clients-lock\"\nproxy-protocol = \"v1\"",
        ));
        assert_eq!((line, key.as_str()), (13, "route[0].proxy-protocol"));
        assert!(msg.contains("v1"), "{msg}");
        let (_, key, _) = err(&OK.replace(
            "lock-coordinator = \"clients-lock\"",
            "lock-coordinator = \"clients-lock\"\nzero-copy = 1",
        ));
        assert_eq!(key, "route[0].zero-copy");
    }
}
