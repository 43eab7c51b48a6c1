//! Validation of one `[[route]]`: its name, a listen address no earlier route overlaps, where
//! it forwards, the lock-coordinator that gates it, its timeouts and data-path keys.

use std::net::SocketAddr;

use toml::Spanned;

use super::super::error::{KeyError, key_error};
use super::super::raw::RawRoute;
use super::super::{
    CoordinatorConfig, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_HALF_CLOSE_TIMEOUT_MS,
    DEFAULT_INACTIVITY_TIMEOUT_MS, DEFAULT_TCP_USER_TIMEOUT_MS, MAX_PERIOD_MS,
    MAX_ROUTE_TIMEOUT_MS, ProxyProtocol, RouteConfig,
};
use super::{bounded_ms, host_port, required, unique_name};

const TABLE: &str = "[[route]]";

pub(super) fn validate_route(
    raw: Spanned<RawRoute>,
    earlier: &[RouteConfig],
    coordinators: &[CoordinatorConfig],
) -> Result<RouteConfig, KeyError> {
    let table_span = raw.span();
    let r = raw.into_inner();
    let name = unique_name(r.name, &table_span, TABLE, "a route", |n| {
        earlier.iter().any(|o| o.name == n)
    })?;
    let listen = required(r.listen, &table_span, TABLE, "listen")?;
    let listen_span = listen.span();
    let listen: SocketAddr = listen.get_ref().parse().map_err(|_| {
        key_error(
            listen_span.clone(),
            "listen",
            format!(
                "\"{}\" is not an IP address and port, like \"0.0.0.0:61616\" or \"[::1]:61616\"",
                listen.get_ref()
            ),
        )
    })?;
    if let Some(other) = earlier.iter().find(|o| listens_overlap(o.listen, listen)) {
        return Err(key_error(
            listen_span,
            "listen",
            format!(
                "{listen} overlaps the listen address of route \"{}\"",
                other.name
            ),
        ));
    }
    let forward_to = required(r.forward_to, &table_span, TABLE, "forward-to")?;
    let fwd_span = forward_to.span();
    let forward_to = host_port(forward_to, "forward-to", "127.0.0.1:61626")?;
    if forward_to.parse::<SocketAddr>().ok() == Some(listen) {
        return Err(key_error(
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
                return Err(key_error(
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
                return Err(key_error(
                    v.span(),
                    "proxy-protocol",
                    format!("unknown PROXY protocol \"{other}\"; expected \"v2\" or \"none\""),
                ));
            }
        },
    };
    let timeout = |v, key, default| bounded_ms(v, key, default, MAX_ROUTE_TIMEOUT_MS);
    Ok(RouteConfig {
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
        half_close_timeout: timeout(
            r.half_close_timeout_ms,
            "half-close-timeout-ms",
            DEFAULT_HALF_CLOSE_TIMEOUT_MS,
        )?,
        client_timeout: timeout(
            r.client_timeout_ms,
            "client-timeout-ms",
            DEFAULT_INACTIVITY_TIMEOUT_MS,
        )?,
        server_timeout: timeout(
            r.server_timeout_ms,
            "server-timeout-ms",
            DEFAULT_INACTIVITY_TIMEOUT_MS,
        )?,
        tunnel_timeout: match r.tunnel_timeout_ms {
            Some(t) => Some(timeout(Some(t), "tunnel-timeout-ms", 0)?),
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
    })
}

/// Two listen addresses collide when their ports match and either IP is the other's or a
/// wildcard of the same family.
fn listens_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
