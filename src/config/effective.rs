//! The effective configuration, as `lockgate check` prints it: every default filled in and
//! every path absolute, as the daemon uses them. [`Effective`] mirrors the file's tables and
//! keys and is rendered with `toml`, so what it prints is itself a valid config file.

use std::time::Duration;

use serde::Serialize;

use super::{AdminConfig, BackendConfig, Config, CoordinatorConfig, HealthConfig, RouteConfig};

/// The whole file.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Effective {
    node_id: String,
    shutdown_grace_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    admin: Option<Admin>,
    lock_coordinator: Vec<Coordinator>,
    route: Vec<Route>,
}

/// `[admin]`: the token file is named, the token never printed.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Admin {
    listen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_file: Option<String>,
    max_connections: u32,
}

/// One `[[lock-coordinator]]`; only its own backend's keys are set.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Coordinator {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    lock_id: String,
    check_period: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    locks_folder: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connect_string: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_percent: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retries_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health_check: Option<Health>,
}

/// `[lock-coordinator.health-check]`.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Health {
    address: String,
    interval_ms: u64,
    timeout_ms: u64,
    rise: u32,
    fall: u32,
    observe_connects: bool,
    fast_interval_ms: u64,
}

/// One `[[route]]`.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Route {
    name: String,
    listen: String,
    forward_to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    lock_coordinator: Option<String>,
    connect_timeout_ms: u64,
    half_close_timeout_ms: u64,
    client_timeout_ms: u64,
    server_timeout_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    tunnel_timeout_ms: Option<u64>,
    tcp_user_timeout_ms: u64,
    zero_copy: bool,
    proxy_protocol: &'static str,
}

/// Whole milliseconds, as the file spells durations (every one is bounded far below the
/// largest TOML integer).
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .min(i64::MAX.unsigned_abs())
}

impl Effective {
    pub fn of(c: &Config) -> Effective {
        Effective {
            node_id: c.node_id.clone(),
            shutdown_grace_ms: ms(c.shutdown_grace),
            admin: c.admin.as_ref().map(Admin::of),
            lock_coordinator: c.coordinators.iter().map(Coordinator::of).collect(),
            route: c.routes.iter().map(Route::of).collect(),
        }
    }
}

impl Admin {
    fn of(a: &AdminConfig) -> Admin {
        Admin {
            listen: a.listen.to_string(),
            token_file: a.token_file.as_ref().map(|p| p.display().to_string()),
            max_connections: a.max_connections,
        }
    }
}

impl Coordinator {
    fn of(c: &CoordinatorConfig) -> Coordinator {
        let mut out = Coordinator {
            name: c.name.clone(),
            kind: c.backend.type_name(),
            lock_id: c.lock_id.clone(),
            check_period: ms(c.check_period),
            locks_folder: None,
            connect_string: None,
            namespace: None,
            session_ms: None,
            session_percent: None,
            connection_ms: None,
            retries: None,
            retries_ms: None,
            health_check: c.health.as_ref().map(Health::of),
        };
        match &c.backend {
            BackendConfig::File { locks_folder } => {
                out.locks_folder = Some(locks_folder.display().to_string());
            }
            BackendConfig::ZooKeeper(z) => {
                out.connect_string = Some(z.connect_string.clone());
                out.namespace = Some(z.namespace.clone());
                out.session_ms = Some(ms(z.session));
                out.session_percent = Some(z.session_percent);
                out.connection_ms = Some(ms(z.connection));
                out.retries = Some(z.retries);
                out.retries_ms = Some(ms(z.retries_wait));
            }
        }
        out
    }
}

impl Health {
    fn of(h: &HealthConfig) -> Health {
        Health {
            address: h.address.clone(),
            interval_ms: ms(h.interval),
            timeout_ms: ms(h.timeout),
            rise: h.rise,
            fall: h.fall,
            observe_connects: h.observe_connects,
            fast_interval_ms: ms(h.fast_interval),
        }
    }
}

impl Route {
    fn of(r: &RouteConfig) -> Route {
        Route {
            name: r.name.clone(),
            listen: r.listen.to_string(),
            forward_to: r.forward_to.clone(),
            lock_coordinator: r.lock.clone(),
            connect_timeout_ms: ms(r.connect_timeout),
            half_close_timeout_ms: ms(r.half_close_timeout),
            client_timeout_ms: ms(r.client_timeout),
            server_timeout_ms: ms(r.server_timeout),
            tunnel_timeout_ms: r.tunnel_timeout.map(ms),
            tcp_user_timeout_ms: ms(r.tcp_user_timeout),
            zero_copy: r.zero_copy,
            proxy_protocol: r.proxy_protocol.as_str(),
        }
    }
}

impl Config {
    /// The effective configuration as TOML, every default filled in.
    pub fn render(&self) -> String {
        toml::to_string(&Effective::of(self))
            // Every value is a string, a bool or an integer in TOML's range: this cannot fail.
            .unwrap_or_else(|e| format!("# the effective configuration cannot be shown: {e}\n"))
    }
}
