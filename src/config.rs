//! Configuration: raw serde types parsed from TOML, validated into [`Config`].
//!
//! Keys keep Artemis's words (`lock-id`, `check-period`, `locks-folder`) and every duration is
//! an integer number of milliseconds, as in Artemis. Every error names the file, the line and
//! column, and the key: `FILE:LINE:COL: key `check-period`: must be greater than 0`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

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

/// Scheduling slack added to one client tick in the required fencing margin.
pub const ZK_SCHEDULING_SLACK: Duration = Duration::from_millis(200);

/// The fencing arithmetic of a ZooKeeper lock, for a given session timeout S.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fencing {
    pub session: Duration,
    /// The connection timeout the client really uses: zookeeper-client ignores a configured
    /// value above 3/5 of S and uses 2/5 of S instead.
    pub connection: Duration,
    /// Whether the configured connection timeout was ignored that way.
    pub connection_ignored: bool,
    /// F: how long after losing contact the holder fences.
    pub fence_after: Duration,
    /// S − C − F: what is left between our fence and the server giving the lock away.
    pub margin: Duration,
    /// One client tick (C/8) plus scheduling slack: the least margin we accept.
    pub required_margin: Duration,
}

impl ZkConfig {
    /// The arithmetic for session timeout `session` (the configured one at load time, the
    /// negotiated one at run time). F is capped so the margin stays at least the required one.
    pub fn fencing(&self, session: Duration) -> Fencing {
        let connection_ignored = self.connection > scale(session, 3, 5);
        let connection = if connection_ignored {
            scale(session, 2, 5)
        } else {
            self.connection
        };
        let required_margin = (connection / 8).saturating_add(ZK_SCHEDULING_SLACK);
        let wanted = scale(session, self.session_percent.into(), 100);
        let cap = session
            .saturating_sub(connection)
            .saturating_sub(required_margin);
        let fence_after = wanted.min(cap);
        Fencing {
            session,
            connection,
            connection_ignored,
            fence_after,
            margin: session
                .saturating_sub(connection)
                .saturating_sub(fence_after),
            required_margin,
        }
    }
}

/// `d × num / den` without overflow (saturating at `Duration::MAX`); `den` must be nonzero.
pub fn scale(d: Duration, num: u64, den: u64) -> Duration {
    let nanos = d.as_nanos().saturating_mul(u128::from(num)) / u128::from(den.max(1));
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    // The remainder is below 10^9: it fits.
    let sub = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    if secs == u64::MAX {
        Duration::MAX
    } else {
        Duration::new(secs, sub)
    }
}

impl Fencing {
    /// A usable configuration leaves a positive F and the required margin.
    pub fn is_safe(&self) -> bool {
        !self.fence_after.is_zero() && self.margin >= self.required_margin
    }
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

/// Why a bounded load gave no configuration.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "storage not answering: reading the config and its locks folder took longer than {0:?} (a hung shared mount?)"
    )]
    StorageNotAnswering(Duration),
    #[error("storage not answering: an earlier load of the config is still waiting for it")]
    StillWaiting,
    #[error("loading the config failed: {0}")]
    Failed(String),
}

/// The bound on loading the config at start, at reload and for `lockgate status`.
pub const LOAD_BOUND: Duration = Duration::from_secs(5);

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config file: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: key `{key}`: {message}")]
    Invalid {
        path: String,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    node_id: Option<Spanned<String>>,
    shutdown_grace_ms: Option<Spanned<u64>>,
    admin: Option<Spanned<RawAdmin>>,
    #[serde(default)]
    lock_coordinator: Vec<Spanned<RawCoordinator>>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAdmin {
    listen: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    max_connections: Option<Spanned<u32>>,
}

/// One flat table for every backend, so that a key of another backend gets a precise message
/// ("`locks-folder` belongs to type \"file\"") instead of serde's generic one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawCoordinator {
    name: Spanned<String>,
    #[serde(rename = "type")]
    kind: Spanned<String>,
    lock_id: Spanned<String>,
    check_period: Option<Spanned<u64>>,
    locks_folder: Option<Spanned<String>>,
    connect_string: Option<Spanned<String>>,
    namespace: Option<Spanned<String>>,
    session_ms: Option<Spanned<u64>>,
    session_percent: Option<Spanned<u32>>,
    connection_ms: Option<Spanned<u64>>,
    retries: Option<Spanned<u32>>,
    retries_ms: Option<Spanned<u64>>,
    health_check: Option<Spanned<RawHealth>>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHealth {
    address: Spanned<String>,
    interval_ms: Option<Spanned<u64>>,
    timeout_ms: Option<Spanned<u64>>,
    rise: Option<Spanned<u32>>,
    fall: Option<Spanned<u32>>,
    observe_connects: Option<bool>,
    fast_interval_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRoute {
    name: Spanned<String>,
    listen: Spanned<String>,
    forward_to: Spanned<String>,
    lock_coordinator: Option<Spanned<String>>,
    connect_timeout_ms: Option<Spanned<u64>>,
    half_close_timeout_ms: Option<Spanned<u64>>,
    client_timeout_ms: Option<Spanned<u64>>,
    server_timeout_ms: Option<Spanned<u64>>,
    tunnel_timeout_ms: Option<Spanned<u64>>,
    tcp_user_timeout_ms: Option<Spanned<u64>>,
    zero_copy: Option<Spanned<bool>>,
    proxy_protocol: Option<Spanned<String>>,
}

/// A validation failure before it is placed in the file.
struct Bad {
    span: Range<usize>,
    key: String,
    message: String,
}

fn bad(span: Range<usize>, key: &str, message: impl Into<String>) -> Bad {
    Bad {
        span,
        key: key.to_owned(),
        message: message.into(),
    }
}

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
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let key = key_of_toml_error(e.message(), text, &span);
            locate(path, text, bad(span, &key, e.message().trim().to_owned()))
        })?;
        // Relative paths resolve against the config file's folder, made absolute here (no
        // file system access) so that `check` prints them as the daemon uses them.
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| Path::new("."));
        let base = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
        validate(raw, &base, path).map_err(|b| locate(path, text, b))
    }

    pub fn coordinator(&self, name: &str) -> Option<&CoordinatorConfig> {
        self.coordinators.iter().find(|c| c.name == name)
    }

    /// The effective configuration as TOML, every default filled in.
    pub fn render(&self) -> String {
        let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let ms = |d: Duration| d.as_millis();
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "node-id = {}", q(&self.node_id));
        let _ = writeln!(out, "shutdown-grace-ms = {}", ms(self.shutdown_grace));
        if let Some(a) = &self.admin {
            let _ = writeln!(out, "\n[admin]");
            let _ = writeln!(out, "listen = {}", q(&a.listen.to_string()));
            let _ = writeln!(out, "max-connections = {}", a.max_connections);
            if a.token.is_some() {
                let _ = writeln!(out, "# token-file: set (the token is not printed)");
            }
        }
        for c in &self.coordinators {
            let _ = writeln!(out, "\n[[lock-coordinator]]");
            let _ = writeln!(out, "name = {}", q(&c.name));
            let _ = writeln!(out, "type = {}", q(c.backend.type_name()));
            let _ = writeln!(out, "lock-id = {}", q(&c.lock_id));
            let _ = writeln!(out, "check-period = {}", ms(c.check_period));
            match &c.backend {
                BackendConfig::File { locks_folder } => {
                    let folder = locks_folder.display().to_string();
                    let _ = writeln!(out, "locks-folder = {}", q(&folder));
                }
                BackendConfig::ZooKeeper(z) => {
                    let _ = writeln!(out, "connect-string = {}", q(&z.connect_string));
                    let _ = writeln!(out, "namespace = {}", q(&z.namespace));
                    let _ = writeln!(out, "session-ms = {}", ms(z.session));
                    let _ = writeln!(out, "session-percent = {}", z.session_percent);
                    let _ = writeln!(out, "connection-ms = {}", ms(z.connection));
                    let _ = writeln!(out, "retries = {}", z.retries);
                    let _ = writeln!(out, "retries-ms = {}", ms(z.retries_wait));
                }
            }
            if let Some(h) = &c.health {
                let _ = writeln!(out, "\n[lock-coordinator.health-check]");
                let _ = writeln!(out, "address = {}", q(&h.address));
                let _ = writeln!(out, "interval-ms = {}", ms(h.interval));
                let _ = writeln!(out, "timeout-ms = {}", ms(h.timeout));
                let _ = writeln!(out, "rise = {}", h.rise);
                let _ = writeln!(out, "fall = {}", h.fall);
                let _ = writeln!(out, "observe-connects = {}", h.observe_connects);
                let _ = writeln!(out, "fast-interval-ms = {}", ms(h.fast_interval));
            }
        }
        for r in &self.routes {
            let _ = writeln!(out, "\n[[route]]");
            let _ = writeln!(out, "name = {}", q(&r.name));
            let _ = writeln!(out, "listen = {}", q(&r.listen.to_string()));
            let _ = writeln!(out, "forward-to = {}", q(&r.forward_to));
            if let Some(lock) = &r.lock {
                let _ = writeln!(out, "lock-coordinator = {}", q(lock));
            }
            let _ = writeln!(out, "connect-timeout-ms = {}", ms(r.connect_timeout));
            let _ = writeln!(out, "half-close-timeout-ms = {}", ms(r.half_close_timeout));
            let _ = writeln!(out, "client-timeout-ms = {}", ms(r.client_timeout));
            let _ = writeln!(out, "server-timeout-ms = {}", ms(r.server_timeout));
            if let Some(t) = r.tunnel_timeout {
                let _ = writeln!(out, "tunnel-timeout-ms = {}", ms(t));
            }
            let _ = writeln!(out, "tcp-user-timeout-ms = {}", ms(r.tcp_user_timeout));
            let _ = writeln!(out, "zero-copy = {}", r.zero_copy);
            let _ = writeln!(out, "proxy-protocol = {}", q(r.proxy_protocol.as_str()));
        }
        out
    }
}

/// Worst-case times of one coordinator, as `lockgate check` prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverBounds {
    /// The holder's process dies. File: the kernel frees the flock and a standby blocked on it
    /// takes it at once (zero here; milliseconds in practice). ZooKeeper: the server gives the
    /// lock away when the session expires, S after the holder's last contact.
    pub holder_dies: Duration,
    /// The holder shuts down cleanly (SIGTERM): it releases at once (deletes its node), so the
    /// standby takes over at once.
    pub holder_stops: Duration,
    /// The holder's broker dies: `fall` failed probes (each up to `timeout`, one per
    /// `interval`), then the holder releases and the waiting standby takes over at once.
    pub broker_dies: Option<Duration>,
    /// The lock is lost under the holder: it stops serving within this. File (file replaced,
    /// storage hung): its next check plus that check's I/O bound. ZooKeeper (partition,
    /// ensemble down, frozen process): F after its last confirmed contact.
    pub fence_within: Duration,
}

impl CoordinatorConfig {
    pub fn failover_bounds(&self) -> FailoverBounds {
        let p = self.check_period;
        let (holder_dies, fence_within) = match &self.backend {
            BackendConfig::File { .. } => (Duration::ZERO, p.saturating_add(self.io_timeout())),
            BackendConfig::ZooKeeper(z) => (z.session, z.fencing(z.session).fence_after),
        };
        FailoverBounds {
            holder_dies,
            holder_stops: Duration::ZERO,
            broker_dies: self.health.as_ref().map(|h| {
                h.interval
                    .checked_mul(h.fall)
                    .and_then(|d| d.checked_add(h.timeout))
                    .unwrap_or(Duration::MAX)
            }),
            fence_within,
        }
    }

    /// The failover arithmetic in words, one line each, for `lockgate check`.
    pub fn explain_failover(&self) -> Vec<String> {
        let b = self.failover_bounds();
        let mut lines = Vec::new();
        match &self.backend {
            BackendConfig::File { .. } => {
                lines.push("holder process dies or shuts down: the kernel frees its flock and the standby, blocked on the lock, takes it at once (milliseconds; check-period does not matter)".to_owned());
                lines.push(format!("lock lost under the holder (file replaced or removed, storage hung): the holder fences within {} ms (check-period {} ms + I/O bound {} ms)", ms(b.fence_within), ms(self.check_period), ms(self.io_timeout())));
                lines.push("holder frozen (SIGSTOP, VM pause): it keeps its flock, so no failover until it resumes or dies".to_owned());
            }
            BackendConfig::ZooKeeper(z) => {
                let f = z.fencing(z.session);
                lines.push(format!("session S = {} ms, connection timeout C = {} ms{}, fence after F = {} ms (session-percent {} %{}), margin S - C - F = {} ms (at least {} ms needed)",
                    ms(f.session), ms(f.connection),
                    if f.connection_ignored { format!(" (connection-ms {} is above 3/5 of S, which zookeeper-client ignores: it uses 2/5 of S)", ms(z.connection)) } else { String::new() },
                    ms(f.fence_after), z.session_percent,
                    if f.fence_after < scale(z.session, z.session_percent.into(), 100) { ", capped by the margin" } else { "" },
                    ms(f.margin), ms(f.required_margin)));
                lines.push(format!("holder process dies: the server expires its session, then the standby takes over: within {} ms (S, plus up to one server tick)", ms(b.holder_dies)));
                lines.push("holder shuts down (SIGTERM): it deletes its node and the standby takes over at once".to_owned());
                lines.push(format!("holder cut off from ZooKeeper (partition, ensemble down, frozen process): it fences within {} ms (F) of its last confirmed contact, {} ms before the server can give the lock away", ms(f.fence_after), ms(f.margin)));
                lines.push(format!("rule: a renewal counts only if the quorum committed it (a versioned write of the holder's own node every {} ms, F/4; a read, even after sync, may be answered by a follower or a leader cut from the quorum); the lease runs F from when that write was sent, and F <= S - C - margin", ms((f.fence_after / 4).max(std::time::Duration::from_millis(10)))));
            }
        }
        if let (Some(h), Some(t)) = (&self.health, b.broker_dies) {
            lines.push(format!(
                "holder's broker dies: the holder releases within {} ms (fall {} x interval {} ms + timeout {} ms) and the standby takes over at once",
                ms(t), h.fall, ms(h.interval), ms(h.timeout)
            ));
        }
        match &self.health {
            Some(h) if h.observe_connects => lines.push(format!(
                "holder's broker dies while clients connect: a refused or reset connect to the upstream starts a probe at once and up to {} more {} ms apart; {} failed probes in a row release within about {} ms plus the probes' connect times (the probes decide, not the client's connect)",
                h.fall.saturating_sub(1), ms(h.fast_interval), h.fall,
                ms(h.fast_interval.checked_mul(h.fall.saturating_sub(1)).unwrap_or(Duration::MAX))
            )),
            Some(_) => {}
            None => lines.push("holder's broker dies: no health check, so no failover (add [lock-coordinator.health-check])".to_owned()),
        }
        lines
    }

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

fn validate(raw: RawConfig, base: &Path, path: &Path) -> Result<Config, Bad> {
    let node_id = match raw.node_id {
        Some(n) => non_empty(n, "node-id")?,
        None => default_node_id(),
    };
    let shutdown_grace = match raw.shutdown_grace_ms {
        // 0 is allowed: open routes' connections are reset at once.
        Some(v) if *v.get_ref() == 0 => Duration::ZERO,
        v => bounded_ms(
            v,
            "shutdown-grace-ms",
            DEFAULT_SHUTDOWN_GRACE_MS,
            MAX_PERIOD_MS,
        )?,
    };

    let admin = match raw.admin {
        Some(a) => Some(validate_admin(a.into_inner(), base)?),
        None => None,
    };

    let mut coordinators: Vec<CoordinatorConfig> = Vec::new();
    for c in raw.lock_coordinator {
        let c = c.into_inner();
        let name_span = c.name.span();
        let name = non_empty(c.name.clone(), "name")?;
        if coordinators.iter().any(|o| o.name == name) {
            return Err(bad(
                name_span,
                "name",
                format!("a lock-coordinator named \"{name}\" is already defined"),
            ));
        }
        let lock_id_span = c.lock_id.span();
        let lock_id = non_empty(c.lock_id.clone(), "lock-id")?;
        if lock_id.contains('/') || lock_id == "." || lock_id == ".." || lock_id.contains('\0') {
            return Err(bad(
                lock_id_span,
                "lock-id",
                "must be a plain name (it names a file or znode): no '/', not '.' or '..'",
            ));
        }
        let check_period = bounded_ms(
            c.check_period.clone(),
            "check-period",
            DEFAULT_CHECK_PERIOD_MS,
            MAX_PERIOD_MS,
        )?;
        let kind_span = c.kind.span();
        let kind = c.kind.get_ref().as_str();
        // Keys of the other backend are refused by name.
        let zk_keys = [
            (
                "connect-string",
                c.connect_string.as_ref().map(Spanned::span),
            ),
            ("namespace", c.namespace.as_ref().map(Spanned::span)),
            ("session-ms", c.session_ms.as_ref().map(Spanned::span)),
            (
                "session-percent",
                c.session_percent.as_ref().map(Spanned::span),
            ),
            ("connection-ms", c.connection_ms.as_ref().map(Spanned::span)),
            ("retries", c.retries.as_ref().map(Spanned::span)),
            ("retries-ms", c.retries_ms.as_ref().map(Spanned::span)),
        ];
        let file_keys = [("locks-folder", c.locks_folder.as_ref().map(Spanned::span))];
        let foreign = match kind {
            "file" => &zk_keys[..],
            "zookeeper" => &file_keys[..],
            _ => &[][..],
        };
        if let Some((key, Some(span))) = foreign.iter().find(|(_, s)| s.is_some()) {
            let owner = if kind == "file" { "zookeeper" } else { "file" };
            return Err(bad(
                span.clone(),
                key,
                format!("`{key}` belongs to lock-coordinators of type \"{owner}\", not \"{kind}\""),
            ));
        }
        let backend = match kind {
            "file" => {
                let folder = c.locks_folder.clone().ok_or_else(|| {
                    bad(
                        kind_span.clone(),
                        "locks-folder",
                        "a lock-coordinator of type \"file\" needs `locks-folder`",
                    )
                })?;
                let span = folder.span();
                let folder = base.join(folder.into_inner());
                if !folder.is_dir() {
                    return Err(bad(
                        span,
                        "locks-folder",
                        format!(
                            "the locks folder {} does not exist or is not a folder (create it; lockgate does not)",
                            folder.display()
                        ),
                    ));
                }
                BackendConfig::File {
                    locks_folder: folder,
                }
            }
            "zookeeper" => BackendConfig::ZooKeeper(validate_zk(&c, kind_span)?),
            other => {
                return Err(bad(
                    kind_span,
                    "type",
                    format!("unknown lock type \"{other}\"; expected \"file\" or \"zookeeper\""),
                ));
            }
        };
        let health = match c.health_check.clone() {
            Some(h) => Some(validate_health(h.into_inner())?),
            None => None,
        };
        coordinators.push(CoordinatorConfig {
            name,
            lock_id,
            check_period,
            backend,
            health,
        });
    }

    let mut routes: Vec<RouteConfig> = Vec::new();
    let mut listen_spans: HashMap<SocketAddr, String> = HashMap::new();
    for r in raw.route {
        let r = r.into_inner();
        let name_span = r.name.span();
        let name = non_empty(r.name, "name")?;
        if routes.iter().any(|o| o.name == name) {
            return Err(bad(
                name_span,
                "name",
                format!("a route named \"{name}\" is already defined"),
            ));
        }
        let listen_span = r.listen.span();
        let listen: SocketAddr = r.listen.get_ref().parse().map_err(|_| {
            bad(
                listen_span.clone(),
                "listen",
                format!(
                    "\"{}\" is not an IP address and port, like \"0.0.0.0:61616\" or \"[::1]:61616\"",
                    r.listen.get_ref()
                ),
            )
        })?;
        if let Some(other) = listen_spans
            .iter()
            .find(|(a, _)| listens_overlap(**a, listen))
            .map(|(_, n)| n.clone())
        {
            return Err(bad(
                listen_span,
                "listen",
                format!("{listen} overlaps the listen address of route \"{other}\""),
            ));
        }
        listen_spans.insert(listen, name.clone());
        let fwd_span = r.forward_to.span();
        let forward_to = non_empty(r.forward_to, "forward-to")?;
        if !has_port(&forward_to) {
            return Err(bad(
                fwd_span,
                "forward-to",
                format!("\"{forward_to}\" needs a host and port, like \"127.0.0.1:61626\""),
            ));
        }
        if forward_to.parse::<SocketAddr>().ok() == Some(listen) {
            return Err(bad(
                fwd_span,
                "forward-to",
                "a route cannot forward to itself",
            ));
        }
        let lock = match r.lock_coordinator {
            Some(l) => {
                let span = l.span();
                let l = l.into_inner();
                if !coordinators.iter().any(|c| c.name == l) {
                    return Err(bad(
                        span,
                        "lock-coordinator",
                        format!("no [[lock-coordinator]] is named \"{l}\""),
                    ));
                }
                Some(l)
            }
            None => None,
        };
        let proxy_protocol = match r.proxy_protocol {
            None => ProxyProtocol::None,
            Some(v) => match v.get_ref().as_str() {
                "none" => ProxyProtocol::None,
                "v2" => ProxyProtocol::V2,
                other => {
                    return Err(bad(
                        v.span(),
                        "proxy-protocol",
                        format!("unknown PROXY protocol \"{other}\"; expected \"v2\" or \"none\""),
                    ));
                }
            },
        };
        routes.push(RouteConfig {
            name,
            listen,
            forward_to,
            lock,
            connect_timeout: bounded_ms(
                r.connect_timeout_ms,
                "connect-timeout-ms",
                DEFAULT_CONNECT_TIMEOUT_MS,
                MAX_PERIOD_MS,
            )?,
            half_close_timeout: bounded_ms(
                r.half_close_timeout_ms,
                "half-close-timeout-ms",
                DEFAULT_HALF_CLOSE_TIMEOUT_MS,
                MAX_ROUTE_TIMEOUT_MS,
            )?,
            client_timeout: bounded_ms(
                r.client_timeout_ms,
                "client-timeout-ms",
                DEFAULT_INACTIVITY_TIMEOUT_MS,
                MAX_ROUTE_TIMEOUT_MS,
            )?,
            server_timeout: bounded_ms(
                r.server_timeout_ms,
                "server-timeout-ms",
                DEFAULT_INACTIVITY_TIMEOUT_MS,
                MAX_ROUTE_TIMEOUT_MS,
            )?,
            tunnel_timeout: match r.tunnel_timeout_ms {
                Some(t) => Some(bounded_ms(
                    Some(t),
                    "tunnel-timeout-ms",
                    0,
                    MAX_ROUTE_TIMEOUT_MS,
                )?),
                None => None,
            },
            tcp_user_timeout: bounded_ms(
                r.tcp_user_timeout_ms,
                "tcp-user-timeout-ms",
                DEFAULT_TCP_USER_TIMEOUT_MS,
                // The kernel takes an unsigned int of milliseconds.
                MAX_ROUTE_TIMEOUT_MS.min(u64::from(u32::MAX)),
            )?,
            zero_copy: r.zero_copy.is_none_or(Spanned::into_inner),
            proxy_protocol,
        });
    }
    if routes.is_empty() {
        return Err(bad(
            0..0,
            "route",
            "no [[route]] is defined: lockgate has nothing to do",
        ));
    }
    Ok(Config {
        source: path.to_path_buf(),
        node_id,
        shutdown_grace,
        coordinators,
        routes,
        admin,
    })
}

fn validate_admin(a: RawAdmin, base: &Path) -> Result<AdminConfig, Bad> {
    let (listen, span) = match &a.listen {
        Some(l) => (l.get_ref().clone(), l.span()),
        None => (DEFAULT_ADMIN_LISTEN.to_owned(), 0..0),
    };
    let listen: SocketAddr = listen.parse().map_err(|_| {
        bad(
            span.clone(),
            "listen",
            format!("\"{listen}\" is not an IP address and port, like \"127.0.0.1:9464\""),
        )
    })?;
    let token = match a.token_file {
        Some(t) => {
            let tspan = t.span();
            let path = base.join(t.into_inner());
            let text = std::fs::read_to_string(&path).map_err(|e| {
                bad(
                    tspan.clone(),
                    "token-file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let token = text.trim().to_owned();
            if token.len() < 16 {
                return Err(bad(
                    tspan,
                    "token-file",
                    format!(
                        "{} must hold a token of at least 16 characters",
                        path.display()
                    ),
                ));
            }
            Some(token)
        }
        None => None,
    };
    if !listen.ip().is_loopback() && token.is_none() {
        return Err(bad(
            span,
            "listen",
            format!(
                "the admin endpoint listens beyond loopback ({listen}): set `token-file` so that step-down and resume need a bearer token"
            ),
        ));
    }
    let max_connections = match a.max_connections {
        Some(m) if *m.get_ref() == 0 || *m.get_ref() > MAX_ADMIN_MAX_CONNECTIONS => {
            return Err(bad(
                m.span(),
                "max-connections",
                format!("must be from 1 to {MAX_ADMIN_MAX_CONNECTIONS}"),
            ));
        }
        Some(m) => m.into_inner(),
        None => DEFAULT_ADMIN_MAX_CONNECTIONS,
    };
    Ok(AdminConfig {
        listen,
        token,
        max_connections,
    })
}

fn validate_zk(c: &RawCoordinator, kind_span: Range<usize>) -> Result<ZkConfig, Bad> {
    let required = |v: &Option<Spanned<String>>, key: &str| -> Result<String, Bad> {
        match v {
            Some(v) if !v.get_ref().trim().is_empty() => Ok(v.get_ref().trim().to_owned()),
            Some(v) => Err(bad(v.span(), key, "must not be empty")),
            None => Err(bad(
                kind_span.clone(),
                key,
                format!("a lock-coordinator of type \"zookeeper\" needs `{key}`"),
            )),
        }
    };
    let connect_string = required(&c.connect_string, "connect-string")?;
    let cs_span = c
        .connect_string
        .as_ref()
        .map_or(kind_span.clone(), Spanned::span);
    let hosts = connect_string.split('/').next().unwrap_or_default();
    if let Some(h) = hosts.split(',').find(|h| !has_port(h.trim())) {
        return Err(bad(
            cs_span,
            "connect-string",
            format!(
                "\"{h}\" needs a host and port, like \"127.0.0.1:2181\" (hosts separated by commas)"
            ),
        ));
    }
    let ns_span = c
        .namespace
        .as_ref()
        .map_or(kind_span.clone(), Spanned::span);
    let namespace = required(&c.namespace, "namespace")?
        .trim_matches('/')
        .to_owned();
    if namespace.is_empty()
        || namespace
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == ".." || p == "zookeeper")
    {
        return Err(bad(
            ns_span,
            "namespace",
            "must be a znode path like \"lockgate\" or \"prod/lockgate\" (no empty, '.', '..' or 'zookeeper' parts)",
        ));
    }
    let copy = |v: &Option<Spanned<u64>>| v.as_ref().map(|v| Spanned::new(v.span(), *v.get_ref()));
    let session = bounded_ms(
        copy(&c.session_ms),
        "session-ms",
        DEFAULT_ZK_SESSION_MS,
        MAX_PERIOD_MS,
    )?;
    let connection = bounded_ms(
        copy(&c.connection_ms),
        "connection-ms",
        DEFAULT_ZK_CONNECTION_MS,
        MAX_PERIOD_MS,
    )?;
    let retries_wait = bounded_ms(
        copy(&c.retries_ms),
        "retries-ms",
        DEFAULT_ZK_RETRIES_MS,
        MAX_PERIOD_MS,
    )?;
    let session_percent = match &c.session_percent {
        Some(p) if *p.get_ref() == 0 || *p.get_ref() > 100 => {
            return Err(bad(p.span(), "session-percent", "must be from 1 to 100"));
        }
        Some(p) => *p.get_ref(),
        None => DEFAULT_ZK_SESSION_PERCENT,
    };
    let zk = ZkConfig {
        connect_string,
        namespace,
        session,
        session_percent,
        connection,
        retries: match &c.retries {
            Some(r) if *r.get_ref() > MAX_COUNT => {
                return Err(bad(
                    r.span(),
                    "retries",
                    format!("must be at most {MAX_COUNT}"),
                ));
            }
            Some(r) => *r.get_ref(),
            None => DEFAULT_ZK_RETRIES,
        },
        retries_wait,
    };
    let f = zk.fencing(session);
    if !f.is_safe() {
        let span = c
            .session_ms
            .as_ref()
            .or(c.connection_ms.as_ref())
            .map_or(kind_span, Spanned::span);
        let key = if c.session_ms.is_some() {
            "session-ms"
        } else {
            "connection-ms"
        };
        return Err(bad(
            span,
            key,
            format!(
                "no safe fencing: with session S = {} ms and connection C = {} ms, a holder cut off from ZooKeeper learns it only C after its last contact, and the server gives the lock away S after it; S - C leaves {} ms, less than the {} ms needed to fence in time (one client tick C/8 plus {} ms slack). Raise session-ms or lower connection-ms.",
                ms(f.session),
                ms(f.connection),
                ms(f.session.saturating_sub(f.connection)),
                ms(f.required_margin),
                ms(ZK_SCHEDULING_SLACK)
            ),
        ));
    }
    Ok(zk)
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn validate_health(h: RawHealth) -> Result<HealthConfig, Bad> {
    let addr_span = h.address.span();
    let address = non_empty(h.address, "address")?;
    if !has_port(&address) {
        return Err(bad(
            addr_span,
            "address",
            format!("\"{address}\" needs a host and port, like \"127.0.0.1:61626\""),
        ));
    }
    let interval = bounded_ms(
        h.interval_ms,
        "interval-ms",
        DEFAULT_HEALTH_INTERVAL_MS,
        MAX_PERIOD_MS,
    )?;
    let timeout_span = h.timeout_ms.as_ref().map(|t| t.span());
    let timeout = bounded_ms(
        h.timeout_ms,
        "timeout-ms",
        DEFAULT_HEALTH_TIMEOUT_MS,
        MAX_PERIOD_MS,
    )?;
    if timeout > interval {
        return Err(bad(
            timeout_span.unwrap_or(0..0),
            "timeout-ms",
            format!(
                "a probe's timeout ({} ms) must not exceed the interval between probes ({} ms)",
                timeout.as_millis(),
                interval.as_millis()
            ),
        ));
    }
    let count = |v: Option<Spanned<u32>>, key: &str, default: u32| -> Result<u32, Bad> {
        match v {
            Some(v) if *v.get_ref() == 0 || *v.get_ref() > MAX_COUNT => {
                Err(bad(v.span(), key, format!("must be from 1 to {MAX_COUNT}")))
            }
            Some(v) => Ok(v.into_inner()),
            None => Ok(default),
        }
    };
    let fast_span = h.fast_interval_ms.as_ref().map(|t| t.span());
    let fast_given = h.fast_interval_ms.is_some();
    let fast_interval = bounded_ms(
        h.fast_interval_ms,
        "fast-interval-ms",
        DEFAULT_HEALTH_FAST_INTERVAL_MS,
        MAX_PERIOD_MS,
    )?;
    // The default never exceeds a shorter interval.
    let fast_interval = if fast_given {
        fast_interval
    } else {
        fast_interval.min(interval)
    };
    if fast_interval.is_zero() || fast_interval > interval {
        return Err(bad(
            fast_span.unwrap_or(0..0),
            "fast-interval-ms",
            format!(
                "must be from 1 ms to the interval between probes ({} ms)",
                interval.as_millis()
            ),
        ));
    }
    Ok(HealthConfig {
        address,
        interval,
        timeout,
        rise: count(h.rise, "rise", DEFAULT_HEALTH_RISE)?,
        fall: count(h.fall, "fall", DEFAULT_HEALTH_FALL)?,
        observe_connects: h.observe_connects.unwrap_or(true),
        fast_interval,
    })
}

fn non_empty(v: Spanned<String>, key: &str) -> Result<String, Bad> {
    if v.get_ref().trim().is_empty() {
        return Err(bad(v.span(), key, "must not be empty"));
    }
    Ok(v.into_inner())
}

fn positive_ms(v: Option<Spanned<u64>>, key: &str, default: u64) -> Result<Duration, Bad> {
    match v {
        Some(v) if *v.get_ref() == 0 => Err(bad(v.span(), key, "must be greater than 0")),
        Some(v) => Ok(Duration::from_millis(v.into_inner())),
        None => Ok(Duration::from_millis(default)),
    }
}

/// A positive number of milliseconds of at most `max` (its documented upper bound).
fn bounded_ms(v: Option<Spanned<u64>>, key: &str, default: u64, max: u64) -> Result<Duration, Bad> {
    if let Some(n) = &v
        && *n.get_ref() > max
    {
        return Err(bad(
            n.span(),
            key,
            format!("must be at most {max} ({})", human_ms(max)),
        ));
    }
    positive_ms(v, key, default)
}

/// `604800000` as "7 days", for bound messages.
fn human_ms(ms: u64) -> String {
    match ms {
        86_400_000 => "1 day".to_owned(),
        3_600_000 => "1 hour".to_owned(),
        m if m >= 86_400_000 && m % 86_400_000 == 0 => format!("{} days", m / 86_400_000),
        m if m >= 3_600_000 && m % 3_600_000 == 0 => format!("{} hours", m / 3_600_000),
        m if m >= 1000 && m % 1000 == 0 => format!("{} s", m / 1000),
        m => format!("{m} ms"),
    }
}

fn has_port(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

/// Two listen addresses collide when their ports match and either IP is the other's or a
/// wildcard of the same family.
fn listens_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

fn default_node_id() -> String {
    hostname().unwrap_or_else(|| "lockgate".to_owned())
}

/// The kernel's host name, without libc.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
}

/// Names the key of a toml parse error: from serde's message when it names one, else from the
/// `key = ...` line the error points into.
fn key_of_toml_error(message: &str, text: &str, span: &Range<usize>) -> String {
    for marker in ["unknown field `", "missing field `", "duplicate key `"] {
        if let Some(rest) = message.split(marker).nth(1)
            && let Some(key) = rest.split('`').next()
        {
            return key.to_owned();
        }
    }
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    if let Some((key, _)) = line.split_once('=') {
        let key = key.trim().trim_matches('"');
        if !key.is_empty() {
            return key.to_owned();
        }
    }
    let header = line.trim_matches(|c| c == '[' || c == ']').trim();
    if header.is_empty() {
        "(document)".to_owned()
    } else {
        header.to_owned()
    }
}

fn locate(path: &Path, text: &str, b: Bad) -> ConfigError {
    let start = b.span.start.min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let column = start - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    ConfigError::Invalid {
        path: path.display().to_string(),
        line,
        column,
        key: b.key,
        message: b.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zookeeper_fencing_arithmetic() {
        let z = ZkConfig {
            connect_string: "127.0.0.1:2181".into(),
            namespace: "ns".into(),
            session: Duration::from_millis(18_000),
            session_percent: 33,
            connection: Duration::from_millis(8_000),
            retries: 1,
            retries_wait: Duration::from_millis(1000),
        };
        // Artemis's defaults: F = 5940, margin = 18000 - 8000 - 5940.
        let f = z.fencing(z.session);
        assert_eq!(f.fence_after, Duration::from_millis(5940));
        assert_eq!(f.margin, Duration::from_millis(4060));
        assert!(f.is_safe());
        // The crate ignores C above 3/5 S and uses 2/5 S.
        let f = ZkConfig {
            connection: Duration::from_millis(12_000),
            ..z.clone()
        }
        .fencing(z.session);
        assert!(f.connection_ignored);
        assert_eq!(f.connection, Duration::from_millis(7200));
        // A large percent is capped so the margin stays.
        let f = ZkConfig {
            session_percent: 90,
            ..z.clone()
        }
        .fencing(z.session);
        assert_eq!(f.margin, f.required_margin);
        assert!(f.is_safe());
        // No room at all: unsafe.
        let f = ZkConfig {
            session: Duration::from_millis(500),
            connection: Duration::from_millis(300),
            ..z
        }
        .fencing(Duration::from_millis(500));
        assert!(!f.is_safe());
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_str(text, Path::new("/tmp/test.toml"))
    }

    fn err(text: &str) -> (usize, String, String) {
        match parse(text) {
            Err(ConfigError::Invalid {
                line, key, message, ..
            }) => (line, key, message),
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
                &format!("locks-folder = \"/tmp\"\n\n[lock-coordinator.health-check]\naddress = \"127.0.0.1:1\"\ntimeout-ms = 5\n{keys}\n"),
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
        assert_eq!((line, key.as_str()), (6, "check-period"));
        let (line, key, _) =
            err(&OK.replace("name = \"clients\"", "name = \"clients\"\nlisten-on = 1"));
        assert_eq!((line, key.as_str()), (10, "listen-on"));
        let (line, key, _) = err(&OK.replace("lock-id = \"x\"", "lock-id = 5"));
        assert_eq!((line, key.as_str()), (5, "lock-id"));
        let (_, key, msg) = err(&OK.replace(
            "lock-coordinator = \"clients-lock\"",
            "lock-coordinator = \"nope\"",
        ));
        assert_eq!(key, "lock-coordinator");
        assert!(msg.contains("nope"));
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
        assert_eq!((line, key.as_str()), (13, "proxy-protocol"));
        assert!(msg.contains("v1"), "{msg}");
        let (_, key, _) = err(&OK.replace(
            "lock-coordinator = \"clients-lock\"",
            "lock-coordinator = \"clients-lock\"\nzero-copy = 1",
        ));
        assert_eq!(key, "zero-copy");
    }

    #[test]
    fn overlapping_listens() {
        let a: SocketAddr = "0.0.0.0:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let d: SocketAddr = "[::1]:1".parse().unwrap();
        assert!(listens_overlap(a, b));
        assert!(!listens_overlap(b, c));
        assert!(!listens_overlap(b, d));
    }

    #[test]
    fn failover_arithmetic() {
        let mut c = parse(OK).unwrap().coordinators.remove(0);
        c.check_period = Duration::from_millis(1000);
        c.health = Some(HealthConfig {
            address: "127.0.0.1:1".into(),
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(250),
            rise: 2,
            fall: 2,
            observe_connects: true,
            fast_interval: Duration::from_millis(10),
        });
        let b = c.failover_bounds();
        assert_eq!(b.holder_dies, Duration::ZERO);
        assert_eq!(b.broker_dies, Some(Duration::from_millis(1250)));
        assert_eq!(b.fence_within, Duration::from_millis(2000));
    }
}
