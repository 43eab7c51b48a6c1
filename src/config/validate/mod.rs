//! Validation: the raw tables ([`super::raw`]) into a [`Config`]. This file checks the top
//! level and calls one validator per section (`[admin]`, each `[[lock-coordinator]]` with its
//! ZooKeeper keys and health check, each `[[route]]`); each section's failures come back as a
//! [`KeyError`] that names its table. The checks shared by every section (a non-empty string,
//! a bounded number of milliseconds, a count, a `host:port`) are here too.

mod admin;
mod coordinator;
mod health;
mod route;
mod zookeeper;

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::error::{KeyError, key_error};
use super::raw::RawConfig;
use super::{Config, DEFAULT_SHUTDOWN_GRACE_MS, MAX_COUNT, MAX_PERIOD_MS, node};

/// `raw`, read from `path`, as a [`Config`]; relative paths resolve against `base`.
pub(super) fn validate(raw: RawConfig, base: &Path, path: &Path) -> Result<Config, KeyError> {
    let node_id = match raw.node_id {
        Some(n) => non_empty(n, "node-id")?,
        None => node::default_node_id(),
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
        Some(a) => {
            Some(admin::validate_admin(a.into_inner(), base).map_err(|e| e.in_table("admin"))?)
        }
        None => None,
    };
    let mut coordinators = Vec::new();
    for (i, c) in raw.lock_coordinator.into_iter().enumerate() {
        let c = coordinator::validate_coordinator(c, &coordinators, base)
            .map_err(|e| e.in_table(&format!("lock-coordinator[{i}]")))?;
        coordinators.push(c);
    }
    let mut routes = Vec::new();
    for (i, r) in raw.route.into_iter().enumerate() {
        let r = route::validate_route(r, &routes, &coordinators)
            .map_err(|e| e.in_table(&format!("route[{i}]")))?;
        routes.push(r);
    }
    if routes.is_empty() {
        return Err(key_error(
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

/// A key every `table` needs, refused at the table's span when absent.
fn required<T>(
    v: Option<Spanned<T>>,
    table_span: &Range<usize>,
    table: &str,
    key: &str,
) -> Result<Spanned<T>, KeyError> {
    v.ok_or_else(|| {
        key_error(
            table_span.clone(),
            key,
            format!("every {table} needs `{key}`"),
        )
    })
}

/// The `name` every `table` needs, not empty and not `taken` by an earlier one (`what`, as
/// in "a route named ... is already defined").
fn unique_name(
    v: Option<Spanned<String>>,
    table_span: &Range<usize>,
    table: &str,
    what: &str,
    taken: impl Fn(&str) -> bool,
) -> Result<String, KeyError> {
    let name = required(v, table_span, table, "name")?;
    let span = name.span();
    let name = non_empty(name, "name")?;
    if taken(&name) {
        return Err(key_error(
            span,
            "name",
            format!("{what} named \"{name}\" is already defined"),
        ));
    }
    Ok(name)
}

fn non_empty(v: Spanned<String>, key: &str) -> Result<String, KeyError> {
    if v.get_ref().trim().is_empty() {
        return Err(key_error(v.span(), key, "must not be empty"));
    }
    Ok(v.into_inner())
}

/// A positive number of milliseconds of at most `max` (its documented upper bound).
fn bounded_ms(
    v: Option<Spanned<u64>>,
    key: &str,
    default: u64,
    max: u64,
) -> Result<Duration, KeyError> {
    match v {
        Some(n) if *n.get_ref() > max => Err(key_error(
            n.span(),
            key,
            format!("must be at most {max} ({})", human_ms(max)),
        )),
        Some(n) if *n.get_ref() == 0 => Err(key_error(n.span(), key, "must be greater than 0")),
        Some(n) => Ok(Duration::from_millis(n.into_inner())),
        None => Ok(Duration::from_millis(default)),
    }
}

/// A count from 1 to [`MAX_COUNT`].
fn count(v: Option<Spanned<u32>>, key: &str, default: u32) -> Result<u32, KeyError> {
    match v {
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > MAX_COUNT => Err(key_error(
            v.span(),
            key,
            format!("must be from 1 to {MAX_COUNT}"),
        )),
        Some(v) => Ok(v.into_inner()),
        None => Ok(default),
    }
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

/// A string key that must hold `host:port`, refused with an example.
fn host_port(v: Spanned<String>, key: &str, example: &str) -> Result<String, KeyError> {
    let span = v.span();
    let addr = non_empty(v, key)?;
    if !has_port(&addr) {
        return Err(key_error(
            span,
            key,
            format!("\"{addr}\" needs a host and port, like \"{example}\""),
        ));
    }
    Ok(addr)
}
