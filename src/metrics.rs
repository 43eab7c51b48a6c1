//! Every metric lockgate records: name, unit and help text in one place.
//!
//! Recorded through the `metrics` facade; an exporter installed by the binary makes them
//! visible (without one they cost a no-op). Labels: `lock`, `route`, `reason`, `direction`.

use metrics::{Unit, describe_counter, describe_gauge};

pub const LOCK_HELD: &str = "lockgate_lock_held";
pub const LOCK_TERM: &str = "lockgate_lock_term";
pub const LOCK_TRANSITIONS: &str = "lockgate_lock_transitions_total";
pub const LOCK_BACKEND_ERRORS: &str = "lockgate_lock_backend_errors_total";
pub const LOCK_BACKEND_UP: &str = "lockgate_lock_backend_up";
pub const HEALTH_CHECK_UP: &str = "lockgate_health_check_up";
pub const HEALTH_CHECK_FAILURES: &str = "lockgate_health_check_failures_total";
pub const ROUTE_LISTENING: &str = "lockgate_route_listening";
pub const ROUTE_BIND_ERRORS: &str = "lockgate_route_bind_errors_total";
pub const CONNECTIONS_ACTIVE: &str = "lockgate_connections_active";
pub const CONNECTIONS: &str = "lockgate_connections_total";
pub const CONNECTIONS_KILLED: &str = "lockgate_connections_killed_total";
pub const FORWARDED_BYTES: &str = "lockgate_forwarded_bytes_total";
pub const UPSTREAM_CONNECT_ERRORS: &str = "lockgate_upstream_connect_errors_total";
pub const ACCEPT_ERRORS: &str = "lockgate_accept_errors_total";

/// Registers help text and units; call once at start.
pub fn describe() {
    describe_gauge!(
        LOCK_BACKEND_UP,
        "1 while the lock service (ZooKeeper) is reachable."
    );
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
        LOCK_BACKEND_ERRORS,
        "Errors talking to the lock backend, by reason."
    );
    describe_gauge!(
        HEALTH_CHECK_UP,
        "1 while the local broker passes its health check."
    );
    describe_counter!(
        HEALTH_CHECK_FAILURES,
        "Failed health probes of the local broker."
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
        FORWARDED_BYTES,
        Unit::Bytes,
        "Bytes forwarded, by direction."
    );
    describe_counter!(
        UPSTREAM_CONNECT_ERRORS,
        "Failed connects to the upstream, by reason."
    );
    describe_counter!(
        ACCEPT_ERRORS,
        "Failed accepts on the route's listener, by reason."
    );
}

pub const BUILD_INFO: &str = "lockgate_build_info";

/// `lockgate_build_info{version} 1`.
pub fn build_info() {
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}
