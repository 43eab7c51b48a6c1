//! Validation of `[admin]`: the listen address, the bearer token (required beyond loopback)
//! and the connection limit.

use std::net::SocketAddr;
use std::path::Path;

use super::super::error::{KeyError, key_error};
use super::super::raw::RawAdmin;
use super::super::{
    AdminConfig, DEFAULT_ADMIN_LISTEN, DEFAULT_ADMIN_MAX_CONNECTIONS, MAX_ADMIN_MAX_CONNECTIONS,
};

pub(super) fn validate_admin(a: RawAdmin, base: &Path) -> Result<AdminConfig, KeyError> {
    let (listen, span) = match &a.listen {
        Some(l) => (l.get_ref().clone(), l.span()),
        None => (DEFAULT_ADMIN_LISTEN.to_owned(), 0..0),
    };
    let listen: SocketAddr = listen.parse().map_err(|_| {
        key_error(
            span.clone(),
            "listen",
            format!("\"{listen}\" is not an IP address and port, like \"127.0.0.1:9464\""),
        )
    })?;
    let (token, token_file) = match a.token_file {
        Some(t) => {
            let tspan = t.span();
            let path = base.join(t.into_inner());
            let text = std::fs::read_to_string(&path).map_err(|e| {
                key_error(
                    tspan.clone(),
                    "token-file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let token = text.trim().to_owned();
            if token.len() < 16 {
                return Err(key_error(
                    tspan,
                    "token-file",
                    format!(
                        "{} must hold a token of at least 16 characters",
                        path.display()
                    ),
                ));
            }
            (Some(token), Some(path))
        }
        None => (None, None),
    };
    if !listen.ip().is_loopback() && token.is_none() {
        return Err(key_error(
            span,
            "listen",
            format!(
                "the admin endpoint listens beyond loopback ({listen}): set `token-file` so that \
                 step-down and resume need a bearer token"
            ),
        ));
    }
    let max_connections = match a.max_connections {
        Some(m) if *m.get_ref() == 0 || *m.get_ref() > MAX_ADMIN_MAX_CONNECTIONS => {
            return Err(key_error(
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
        token_file,
        max_connections,
    })
}
