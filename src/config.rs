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
/// Default bound on connecting to a route's upstream.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5000;
/// Default bound on how long a half-closed connection may linger.
pub const DEFAULT_HALF_CLOSE_TIMEOUT_MS: u64 = 60_000;

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
}

/// One `[[lock-coordinator]]`.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
pub enum BackendConfig {
    /// An exclusive `flock` on `<locks-folder>/<lock-id>`.
    File { locks_folder: PathBuf },
}

impl BackendConfig {
    pub fn type_name(&self) -> &'static str {
        match self {
            BackendConfig::File { .. } => "file",
        }
    }
}

/// `[lock-coordinator.health-check]`: a TCP connect to the local broker.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub address: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes before the broker counts as up.
    pub rise: u32,
    /// Consecutive failures before the broker counts as down.
    pub fall: u32,
}

/// One `[[route]]`.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub listen: SocketAddr,
    /// `host:port`, resolved at each connect so a broker may move behind a name.
    pub forward_to: String,
    /// The coordinator that gates this route; `None` for an open route.
    pub lock: Option<String>,
    pub connect_timeout: Duration,
    pub half_close_timeout: Duration,
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
    #[serde(default)]
    lock_coordinator: Vec<Spanned<RawCoordinator>>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
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
    health_check: Option<Spanned<RawHealth>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHealth {
    address: Spanned<String>,
    interval_ms: Option<Spanned<u64>>,
    timeout_ms: Option<Spanned<u64>>,
    rise: Option<Spanned<u32>>,
    fall: Option<Spanned<u32>>,
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

    /// Parses and validates `text` as if read from `path`.
    pub fn from_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let key = key_of_toml_error(e.message(), text, &span);
            locate(path, text, bad(span, &key, e.message().trim().to_owned()))
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        validate(raw, base, path).map_err(|b| locate(path, text, b))
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
            }
            if let Some(h) = &c.health {
                let _ = writeln!(out, "\n[lock-coordinator.health-check]");
                let _ = writeln!(out, "address = {}", q(&h.address));
                let _ = writeln!(out, "interval-ms = {}", ms(h.interval));
                let _ = writeln!(out, "timeout-ms = {}", ms(h.timeout));
                let _ = writeln!(out, "rise = {}", h.rise);
                let _ = writeln!(out, "fall = {}", h.fall);
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
            let _ = writeln!(out, "zero-copy = {}", r.zero_copy);
            let _ = writeln!(out, "proxy-protocol = {}", q(r.proxy_protocol.as_str()));
        }
        out
    }
}

/// Worst-case takeover times of one coordinator, as `lockgate check` prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverBounds {
    /// Holder process dies (or shuts down): the kernel frees the flock at once; a standby
    /// finds it free at its next attempt, at most one check-period later.
    pub holder_dies: Duration,
    /// The holder's broker dies: `fall` failed probes (each up to `timeout`, one per
    /// `interval`), then the holder releases, then the standby's next attempt.
    pub broker_dies: Option<Duration>,
    /// The lock is lost under the holder (file replaced or storage hung): detected at the
    /// holder's next check, whose I/O may take up to one check-period before it fences.
    pub loss_detected: Duration,
}

impl CoordinatorConfig {
    pub fn failover_bounds(&self) -> FailoverBounds {
        let p = self.check_period;
        FailoverBounds {
            holder_dies: p,
            broker_dies: self
                .health
                .as_ref()
                .map(|h| h.interval * h.fall + h.timeout + p),
            loss_detected: p + self.io_timeout(),
        }
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
    let shutdown_grace = Duration::from_millis(
        raw.shutdown_grace_ms
            .map(|v| v.into_inner())
            .unwrap_or(DEFAULT_SHUTDOWN_GRACE_MS),
    );

    let mut coordinators: Vec<CoordinatorConfig> = Vec::new();
    for c in raw.lock_coordinator {
        let c = c.into_inner();
        let name_span = c.name.span();
        let name = non_empty(c.name, "name")?;
        if coordinators.iter().any(|o| o.name == name) {
            return Err(bad(
                name_span,
                "name",
                format!("a lock-coordinator named \"{name}\" is already defined"),
            ));
        }
        let lock_id_span = c.lock_id.span();
        let lock_id = non_empty(c.lock_id, "lock-id")?;
        if lock_id.contains('/') || lock_id == "." || lock_id == ".." || lock_id.contains('\0') {
            return Err(bad(
                lock_id_span,
                "lock-id",
                "must be a plain name (it names a file or znode): no '/', not '.' or '..'",
            ));
        }
        let check_period = positive_ms(c.check_period, "check-period", DEFAULT_CHECK_PERIOD_MS)?;
        let kind_span = c.kind.span();
        let backend = match c.kind.get_ref().as_str() {
            "file" => {
                let folder = c.locks_folder.ok_or_else(|| {
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
            "zookeeper" => {
                return Err(bad(
                    kind_span,
                    "type",
                    "type \"zookeeper\" is not supported by this build yet; use \"file\"",
                ));
            }
            other => {
                return Err(bad(
                    kind_span,
                    "type",
                    format!("unknown lock type \"{other}\"; expected \"file\""),
                ));
            }
        };
        let health = match c.health_check {
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
            connect_timeout: positive_ms(
                r.connect_timeout_ms,
                "connect-timeout-ms",
                DEFAULT_CONNECT_TIMEOUT_MS,
            )?,
            half_close_timeout: positive_ms(
                r.half_close_timeout_ms,
                "half-close-timeout-ms",
                DEFAULT_HALF_CLOSE_TIMEOUT_MS,
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
    })
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
    let interval = positive_ms(h.interval_ms, "interval-ms", DEFAULT_HEALTH_INTERVAL_MS)?;
    let timeout_span = h.timeout_ms.as_ref().map(|t| t.span());
    let timeout = positive_ms(h.timeout_ms, "timeout-ms", DEFAULT_HEALTH_TIMEOUT_MS)?;
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
            Some(v) if *v.get_ref() == 0 => Err(bad(v.span(), key, "must be at least 1")),
            Some(v) => Ok(v.into_inner()),
            None => Ok(default),
        }
    };
    Ok(HealthConfig {
        address,
        interval,
        timeout,
        rise: count(h.rise, "rise", DEFAULT_HEALTH_RISE)?,
        fall: count(h.fall, "fall", DEFAULT_HEALTH_FALL)?,
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
        });
        let b = c.failover_bounds();
        assert_eq!(b.holder_dies, Duration::from_millis(1000));
        assert_eq!(b.broker_dies, Some(Duration::from_millis(2250)));
    }
}
