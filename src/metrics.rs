//! Every metric lockgate records: name, unit and help text in one place.
//!
//! Recorded through the `metrics` facade into a Prometheus recorder installed once at start
//! ([`install`]); the admin server renders it at `GET /metrics`. Labels: `lock`, `route`,
//! `reason`, `direction`, `side`, `to`, `version`, `commit`. Hot paths hold pre-built handles.
//! Every series of a lock or route is created at 0 when it starts ([`register_lock`],
//! [`register_route`]).

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const LOCK_HELD: &str = "lockgate_lock_held";
pub const LOCK_TERM: &str = "lockgate_lock_term";
pub const LOCK_TRANSITIONS: &str = "lockgate_lock_transitions_total";
pub const LOCK_HELD_SECONDS: &str = "lockgate_lock_held_seconds_total";
pub const LOCK_BACKEND_ERRORS: &str = "lockgate_lock_backend_errors_total";
pub const LOCK_BACKEND_UP: &str = "lockgate_lock_backend_up";
pub const FAILOVER_SECONDS: &str = "lockgate_failover_seconds";
pub const HEALTH_CHECK_UP: &str = "lockgate_health_check_up";
pub const HEALTH_CHECK_FAILURES: &str = "lockgate_health_check_failures_total";
pub const HEALTH_CHECK_LOCAL_ERRORS: &str = "lockgate_health_check_local_errors_total";
pub const HEALTH_CHECK_TRIGGERED: &str = "lockgate_health_check_triggered_total";
pub const ADMIN_CONNECTIONS_REFUSED: &str = "lockgate_admin_connections_refused_total";
pub const ROUTE_LISTENING: &str = "lockgate_route_listening";
pub const ROUTE_BIND_ERRORS: &str = "lockgate_route_bind_errors_total";
pub const CONNECTIONS_ACTIVE: &str = "lockgate_connections_active";
pub const CONNECTIONS: &str = "lockgate_connections_total";
pub const CONNECTIONS_KILLED: &str = "lockgate_connections_killed_total";
pub const CONNECTIONS_TIMED_OUT: &str = "lockgate_connections_timed_out_total";
pub const FORWARDED_BYTES: &str = "lockgate_forwarded_bytes_total";
pub const FORWARD_ERRORS: &str = "lockgate_forward_errors_total";
pub const UPSTREAM_CONNECT_ERRORS: &str = "lockgate_upstream_connect_errors_total";
pub const UPSTREAM_CONNECT_SECONDS: &str = "lockgate_upstream_connect_seconds";
pub const ACCEPT_ERRORS: &str = "lockgate_accept_errors_total";
pub const CONFIG_RELOADS: &str = "lockgate_config_reloads_total";
pub const CONFIG_RELOAD_ERRORS: &str = "lockgate_config_reload_errors_total";
pub const LOCK_IDENTITY_CHANGES: &str = "lockgate_lock_identity_changes_total";
pub const BUILD_INFO: &str = "lockgate_build_info";

/// Installs the Prometheus recorder (once per process) and registers help text.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(FAILOVER_SECONDS.to_owned()),
            &[
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full(UPSTREAM_CONNECT_SECONDS.to_owned()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0,
            ],
        )?
        .install_recorder()?;
    describe();
    build_info();
    register_process();
    Ok(handle)
}

/// Registers help text and units.
pub fn describe() {
    describe_gauge!(LOCK_HELD, "1 while this node holds the lock, else 0.");
    describe_gauge!(
        LOCK_TERM,
        "Term of the current or last holding of the lock."
    );
    describe_counter!(
        LOCK_TRANSITIONS,
        "Ownership transitions, by target state and reason."
    );
    describe_counter!(
        LOCK_HELD_SECONDS,
        Unit::Seconds,
        "Time this node has held the lock, in whole seconds."
    );
    describe_counter!(
        LOCK_BACKEND_ERRORS,
        "Errors talking to the lock backend, by reason."
    );
    describe_gauge!(
        LOCK_BACKEND_UP,
        "1 while the lock service is reachable: ZooKeeper, a session is connected; file, the last \
         attempt or check on the locks folder completed (0 after an I/O error, an I/O timeout or \
         a missing folder)."
    );
    describe_histogram!(
        FAILOVER_SECONDS,
        Unit::Seconds,
        "From the decision to contend to the client routes accepting."
    );
    describe_gauge!(
        HEALTH_CHECK_UP,
        "1 while the local broker passes its health check."
    );
    describe_counter!(
        HEALTH_CHECK_FAILURES,
        "Failed health probes of the local broker."
    );
    describe_counter!(
        HEALTH_CHECK_LOCAL_ERRORS,
        "Health probes that could not run for a local reason (out of file descriptors or memory \
         on this node); they count neither for nor against the broker."
    );
    describe_counter!(
        HEALTH_CHECK_TRIGGERED,
        "Health probes started at once by a gated route's refused or reset connect to its \
         upstream (observe-connects); the probes, not the connect, decide."
    );
    describe_counter!(
        ADMIN_CONNECTIONS_REFUSED,
        "Admin connections closed on arrival, by reason: limit (max-connections reached), \
         fd_reserve (the process is near its descriptor limit)."
    );
    describe_gauge!(ROUTE_LISTENING, "1 while the route's listener is bound.");
    describe_counter!(
        ROUTE_BIND_ERRORS,
        "Failures to bind a route's listener, by reason."
    );
    describe_gauge!(CONNECTIONS_ACTIVE, "Connections the route carries now.");
    describe_counter!(CONNECTIONS, "Connections accepted by the route.");
    describe_counter!(
        CONNECTIONS_KILLED,
        "Connections reset by lockgate, by reason."
    );
    describe_counter!(
        CONNECTIONS_TIMED_OUT,
        "Connections closed by a route timeout, by reason: client_inactive, server_inactive, \
         tunnel_inactive (client-, server-, tunnel-timeout-ms), half_close \
         (half-close-timeout-ms), peer_unresponsive (tcp-user-timeout-ms or keepalive: the kernel \
         gave up on a leg)."
    );
    describe_counter!(
        FORWARDED_BYTES,
        Unit::Bytes,
        "Bytes forwarded, by direction."
    );
    describe_counter!(
        FORWARD_ERRORS,
        "Connections that ended on a failed read or write, by the side that failed: client or \
         upstream (a reset, an unreachable peer); counted once per connection."
    );
    describe_counter!(
        UPSTREAM_CONNECT_ERRORS,
        "Failed connects to the upstream, by reason."
    );
    describe_histogram!(
        UPSTREAM_CONNECT_SECONDS,
        Unit::Seconds,
        "Time to connect to the upstream."
    );
    describe_counter!(
        ACCEPT_ERRORS,
        "Failed accepts on the route's listener, by reason."
    );
    describe_counter!(CONFIG_RELOADS, "Configuration reloads applied.");
    describe_counter!(
        CONFIG_RELOAD_ERRORS,
        "Configuration reloads refused (the old configuration keeps running)."
    );
    describe_counter!(
        LOCK_IDENTITY_CHANGES,
        "Reloads that changed what names a lock (lock-id, type, locks-folder, connect-string, \
         namespace): until every node agrees, two nodes may each hold a lock of that name."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version and the commit are labels."
    );
}

/// Every label value lockgate uses for a reason, per metric, so that each series exists at 0
/// from the start (an alert on `increase(...)` sees the first event, and a dashboard shows 0,
/// not "No data"). One style: snake_case.
pub const LOCK_STANDBY_REASONS: &[&str] = &["health", "bind_failed", "shutdown", "step_down"];
pub const FILE_LOCK_ERRORS: &[&str] = &[
    "folder_missing",
    "io_error",
    "io_timeout",
    "inode_changed",
    "removed",
];
pub const ZOOKEEPER_LOCK_ERRORS: &[&str] = &[
    "unreachable",
    "zookeeper_error",
    "session_ended",
    "node_deleted",
    "lease_expired",
];
/// Why a gated route's connections were reset (the gate's close reasons).
pub const KILL_REASONS: &[&str] = &[
    "lock_lost",
    "health",
    "bind_failed",
    "shutdown",
    "step_down",
];
pub const TIMEOUT_REASONS: &[&str] = &[
    "client_inactive",
    "server_inactive",
    "tunnel_inactive",
    "half_close",
    "peer_unresponsive",
];
/// The `side` of `lockgate_forward_errors_total`.
pub const FORWARD_ERROR_SIDES: &[&str] = &["client", "upstream"];
pub const BIND_ERROR_REASONS: &[&str] = &[
    "addr_in_use",
    "addr_not_available",
    "permission_denied",
    "out_of_fds",
    "other",
    "reload",
];

/// The reason label of a failed bind.
pub fn bind_reason(e: &std::io::Error) -> &'static str {
    if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) {
        return "out_of_fds";
    }
    match e.kind() {
        std::io::ErrorKind::AddrInUse => "addr_in_use",
        std::io::ErrorKind::AddrNotAvailable => "addr_not_available",
        std::io::ErrorKind::PermissionDenied => "permission_denied",
        _ => "other",
    }
}

/// Creates every series of one lock at its resting value (counters 0, held 0).
pub fn register_lock(lock: &str, zookeeper: bool) {
    let l = || lock.to_owned();
    metrics::gauge!(LOCK_HELD, "lock" => l()).set(0.0);
    metrics::gauge!(LOCK_TERM, "lock" => l()).increment(0.0);
    metrics::counter!(LOCK_HELD_SECONDS, "lock" => l()).increment(0);
    metrics::counter!(LOCK_IDENTITY_CHANGES, "lock" => l()).increment(0);
    metrics::counter!(LOCK_TRANSITIONS, "lock" => l(), "to" => "active", "reason" => "acquired")
        .increment(0);
    let errors = if zookeeper {
        ZOOKEEPER_LOCK_ERRORS
    } else {
        FILE_LOCK_ERRORS
    };
    for reason in LOCK_STANDBY_REASONS.iter().chain(errors) {
        metrics::counter!(LOCK_TRANSITIONS, "lock" => l(), "to" => "standby", "reason" => *reason)
            .increment(0);
    }
    for reason in errors {
        metrics::counter!(LOCK_BACKEND_ERRORS, "lock" => l(), "reason" => *reason).increment(0);
    }
    // Registered, so the histogram's _count and _sum are there at 0.
    let _ = metrics::histogram!(FAILOVER_SECONDS, "lock" => l());
}

/// Creates every series of one route at 0.
pub fn register_route(route: &str, gated: bool) {
    let r = || route.to_owned();
    let kills: &[&str] = if gated { KILL_REASONS } else { &["shutdown"] };
    for reason in kills {
        metrics::counter!(CONNECTIONS_KILLED, "route" => r(), "reason" => *reason).increment(0);
    }
    for reason in TIMEOUT_REASONS {
        metrics::counter!(CONNECTIONS_TIMED_OUT, "route" => r(), "reason" => *reason).increment(0);
    }
    for reason in BIND_ERROR_REASONS {
        metrics::counter!(ROUTE_BIND_ERRORS, "route" => r(), "reason" => *reason).increment(0);
    }
    for side in FORWARD_ERROR_SIDES {
        metrics::counter!(FORWARD_ERRORS, "route" => r(), "side" => *side).increment(0);
    }
}

/// The process-wide series at 0.
pub fn register_process() {
    metrics::counter!(CONFIG_RELOADS).increment(0);
    metrics::counter!(CONFIG_RELOAD_ERRORS).increment(0);
    for reason in ["limit", "fd_reserve"] {
        metrics::counter!(ADMIN_CONNECTIONS_REFUSED, "reason" => reason).increment(0);
    }
}

/// `lockgate_build_info{version} 1`.
pub fn build_info() {
    let (version, commit) = (env!("CARGO_PKG_VERSION"), env!("LOCKGATE_COMMIT"));
    metrics::gauge!(BUILD_INFO, "version" => version, "commit" => commit).set(1.0);
}
