//! Validation of a ZooKeeper `[[lock-coordinator]]`'s keys: the connect string, the
//! namespace, the timeouts and retries, and that S and C leave a safe fencing margin (the
//! arithmetic itself is the backend's: [`crate::lock::zookeeper::Fencing`]).

use std::ops::Range;

use toml::Spanned;

use super::super::error::{KeyError, key_error};
use super::super::raw::RawCoordinator;
use super::super::{
    DEFAULT_ZK_CONNECTION_MS, DEFAULT_ZK_RETRIES, DEFAULT_ZK_RETRIES_MS, DEFAULT_ZK_SESSION_MS,
    DEFAULT_ZK_SESSION_PERCENT, MAX_COUNT, MAX_PERIOD_MS, ZkConfig,
};
use super::{bounded_ms, has_port};
use crate::lock::zookeeper::ZK_SCHEDULING_SLACK;

pub(super) fn validate_zk(
    c: &RawCoordinator,
    kind_span: Range<usize>,
) -> Result<ZkConfig, KeyError> {
    let required = |v: &Option<Spanned<String>>, key: &str| -> Result<String, KeyError> {
        match v {
            Some(v) if !v.get_ref().trim().is_empty() => Ok(v.get_ref().trim().to_owned()),
            Some(v) => Err(key_error(v.span(), key, "must not be empty")),
            None => Err(key_error(
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
        return Err(key_error(
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
        return Err(key_error(
            ns_span,
            "namespace",
            "must be a znode path like \"lockgate\" or \"prod/lockgate\" (no empty, '.', '..' or \
             'zookeeper' parts)",
        ));
    }
    let ms = |v: &Option<Spanned<u64>>, key: &str, default: u64| {
        let v = v.as_ref().map(|v| Spanned::new(v.span(), *v.get_ref()));
        bounded_ms(v, key, default, MAX_PERIOD_MS)
    };
    let session = ms(&c.session_ms, "session-ms", DEFAULT_ZK_SESSION_MS)?;
    let connection = ms(&c.connection_ms, "connection-ms", DEFAULT_ZK_CONNECTION_MS)?;
    let retries_wait = ms(&c.retries_ms, "retries-ms", DEFAULT_ZK_RETRIES_MS)?;
    let session_percent = match &c.session_percent {
        Some(p) if *p.get_ref() == 0 || *p.get_ref() > 100 => {
            return Err(key_error(
                p.span(),
                "session-percent",
                "must be from 1 to 100",
            ));
        }
        Some(p) => *p.get_ref(),
        None => DEFAULT_ZK_SESSION_PERCENT,
    };
    let retries = match &c.retries {
        Some(r) if *r.get_ref() > MAX_COUNT => {
            return Err(key_error(
                r.span(),
                "retries",
                format!("must be at most {MAX_COUNT}"),
            ));
        }
        Some(r) => *r.get_ref(),
        None => DEFAULT_ZK_RETRIES,
    };
    let zk = ZkConfig {
        connect_string,
        namespace,
        session,
        session_percent,
        connection,
        retries,
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
        return Err(key_error(
            span,
            key,
            format!(
                "no safe fencing: with session S = {} ms and connection C = {} ms, a holder cut \
                 off from ZooKeeper learns it only C after its last contact, and the server gives \
                 the lock away S after it; S - C leaves {} ms, less than the {} ms needed to fence \
                 in time (one client tick C/8 plus {} ms slack). Raise session-ms or lower \
                 connection-ms.",
                f.session.as_millis(),
                f.connection.as_millis(),
                f.session.saturating_sub(f.connection).as_millis(),
                f.required_margin.as_millis(),
                ZK_SCHEDULING_SLACK.as_millis()
            ),
        ));
    }
    Ok(zk)
}
