//! The admin HTTP endpoint: `[admin] listen` (loopback, `127.0.0.1:9464`, by default), served
//! by hyper. Every endpoint:
//!
//! - `GET /metrics` — Prometheus text exposition of every metric in [`crate::metrics`].
//! - `GET /healthz` — 200 while the process serves its event loop.
//! - `GET /ready` — 200 when this node is active for every lock it has, else 503 (a load
//!   balancer's or Kubernetes' probe, like Patroni's `/primary`).
//! - `GET /ready/<lock>` — the same for one lock; 404 for an unknown lock.
//! - `GET /status` — JSON: each lock as its coordinator sees it (held, term, state, since,
//!   recent transitions; the holder is this node while it holds the lock) and each route
//!   (listening, active connections). It touches neither the locks folder nor ZooKeeper.
//! - `GET /status?fresh=1` — also reads each lock's holder from the backend (the owner record
//!   in the lock file, or ZooKeeper's queue: a session on the ensemble), as `observed`. Such a
//!   read runs at most once per second per lock (others get the last result, with its age),
//!   never more than one at a time per lock, within a 2 s bound; from beyond loopback it needs
//!   the bearer token, as it costs the lock service. The document is built in `admin/status.rs`.
//! - `POST /locks/<lock>/step-down?hold-off-ms=N&drain-ms=M` — planned switchover: close the
//!   gated routes, let connections finish for up to `drain-ms` (default 0), reset the rest,
//!   release the lock, and do not contend for `hold-off-ms` (default 3 × check-period).
//! - `POST /locks/<lock>/resume` — contend again now.
//!
//! With `[admin] token-file`, the two POSTs need `Authorization: Bearer <token>` (401
//! otherwise); an admin endpoint beyond loopback must have one (the config refuses it
//! without). Unknown paths get 404, a wrong method 405, a malformed or oversized request
//! (header block over 16 KiB) is refused by hyper; request bodies are never read. None of it
//! touches the data path.
//!
//! The endpoint cannot starve the node of descriptors: it serves at most `[admin]
//! max-connections` connections at once (default 16) and closes more as they arrive, and it
//! closes any connection whose descriptor falls within a reserve of the process's
//! `RLIMIT_NOFILE` (a quarter of it, at most 256), which is kept for the data path and the
//! health probe. Both are counted in `lockgate_admin_connections_refused_total{reason}`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::CoordinatorConfig;
use crate::coordinator::{Command, LockState};
use crate::route::listener::RouteRuntime;

mod status;

/// The largest request head the endpoint reads.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// What the endpoint shows and commands, updated by the app on start and reload.
pub struct State {
    pub metrics: Option<PrometheusHandle>,
    pub token: Option<String>,
    pub node_id: RwLock<String>,
    pub locks: RwLock<BTreeMap<String, LockEntry>>,
    pub routes: RwLock<BTreeMap<String, Arc<RouteRuntime>>>,
    /// Per lock: the last fresh read of its holder.
    fresh: std::sync::Mutex<BTreeMap<String, status::Fresh>>,
}

/// One running coordinator.
#[derive(Clone)]
pub struct LockEntry {
    pub cfg: CoordinatorConfig,
    pub state: watch::Receiver<LockState>,
    pub commands: mpsc::Sender<Command>,
}

impl LockEntry {
    /// Active: the coordinator holds the lock and its task is alive (a task that ended drops
    /// the sender, whatever its last word was).
    pub fn active(&self) -> bool {
        self.state.has_changed().is_ok() && self.state.borrow().held
    }

    /// What `/ready/<lock>` says when not active.
    fn standby_text(&self) -> String {
        if self.state.has_changed().is_err() {
            "the lock coordinator has ended".to_owned()
        } else {
            self.state.borrow().state.clone()
        }
    }
}

impl State {
    pub fn new(metrics: Option<PrometheusHandle>, token: Option<String>, node_id: &str) -> State {
        State {
            metrics,
            token,
            node_id: RwLock::new(node_id.to_owned()),
            locks: RwLock::default(),
            routes: RwLock::default(),
            fresh: std::sync::Mutex::default(),
        }
    }

    fn locks(&self) -> BTreeMap<String, LockEntry> {
        self.locks.read().map(|l| l.clone()).unwrap_or_default()
    }

    fn lock(&self, name: &str) -> Option<LockEntry> {
        self.locks.read().ok().and_then(|l| l.get(name).cloned())
    }
}

/// Descriptors the admin endpoint leaves to the data path and the health probe: a quarter of
/// the limit, at most 256.
fn fd_reserve(limit: u64) -> u64 {
    (limit / 4).min(256)
}

/// Whether an accepted admin connection's descriptor lies in the reserve. Linux hands out the
/// lowest free descriptor, so descriptor N means at least N + 1 are open.
fn in_fd_reserve(stream: &tokio::net::TcpStream) -> bool {
    use std::os::fd::AsRawFd as _;
    let fd = u64::try_from(stream.as_raw_fd()).unwrap_or(0);
    match rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
        Some(limit) => fd.saturating_add(fd_reserve(limit)) >= limit,
        None => false,
    }
}

/// Closes a refused admin connection at once (RST: no FIN_WAIT state kept for it).
fn refuse(stream: tokio::net::TcpStream, reason: &'static str) {
    metrics::counter!(crate::metrics::ADMIN_CONNECTIONS_REFUSED, "reason" => reason).increment(1);
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Serves until `stop`, at most `max_connections` connections at once.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    stop: CancellationToken,
    max_connections: u32,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, max_connections, "admin endpoint listening");
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections as usize));
    let mut refused_logged: Option<std::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "admin endpoint cannot accept; backing off");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let reason = if in_fd_reserve(&stream) {
            Some("fd_reserve")
        } else {
            None
        };
        let permit = match reason {
            Some(_) => None,
            None => permits.clone().try_acquire_owned().ok(),
        };
        let Some(permit) = permit else {
            let reason = reason.unwrap_or("limit");
            // One line per second at most: a flood must not become a log flood.
            if refused_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                warn!(%peer, reason, max_connections, "admin connection refused (see \
                    lockgate_admin_connections_refused_total)");
                refused_logged = Some(std::time::Instant::now());
            }
            refuse(stream, reason);
            continue;
        };
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| handle(state.clone(), peer, req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .max_buf_size(MAX_REQUEST_HEAD)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    debug!(%peer, error = %e, "admin request failed");
                },
                _ = stop.cancelled() => {}
            }
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut b = body.into();
    b.push('\n');
    reply(status, "text/plain; charset=utf-8", b)
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", v.to_string())
}

fn method_not_allowed(allow: &str) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, format!("use {allow}"));
    if let Ok(v) = allow.parse() {
        r.headers_mut().insert(hyper::header::ALLOW, v);
    }
    r
}

/// Upper bound of `hold-off-ms` and `drain-ms`: one day.
pub const MAX_COMMAND_MS: u64 = 86_400_000;

fn query_ms(query: Option<&str>, key: &str) -> Result<Option<Duration>, String> {
    let Some(q) = query else { return Ok(None) };
    for pair in q.split('&') {
        if let Some((k, v)) = pair.split_once('=')
            && k == key
        {
            return match v.parse::<u64>() {
                Ok(n) if n <= MAX_COMMAND_MS => Ok(Some(Duration::from_millis(n))),
                _ => Err(format!(
                    "{key} must be a whole number of milliseconds from 0 to {MAX_COMMAND_MS} \
                        (one day)"
                )),
            };
        }
    }
    Ok(None)
}

/// Whether the request carries the configured bearer token (true when none is configured).
/// Compared in constant time.
fn authorized(state: &State, req: &Request<Incoming>) -> bool {
    let Some(token) = &state.token else {
        return true;
    };
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()))
}

/// Equality whose time depends only on the lengths, not on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    // Lengths differ, or some byte did.
    std::hint::black_box(diff) == 0
}

/// Percent-decodes one path segment (an invalid escape stays as it is).
fn decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let v = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a query has `key=1` (or `key=true`, or a bare `key`).
fn query_flag(query: Option<&str>, key: &str) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|pair| match pair.split_once('=') {
            Some((k, v)) => k == key && (v == "1" || v == "true"),
            None => pair == key,
        })
    })
}

async fn handle(
    state: Arc<State>,
    peer: std::net::SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    // Segments are percent-decoded after splitting: a lock name may hold any character
    // (`lockgate step-down` encodes it).
    let decoded: Vec<String> = path.trim_matches('/').split('/').map(decode).collect();
    let parts: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    let post = req.method() == Method::POST;
    let response = match parts.as_slice() {
        ["metrics"] if get => match &state.metrics {
            Some(h) => {
                h.run_upkeep();
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    h.render(),
                )
            }
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "no metrics recorder in this process",
            ),
        },
        ["healthz"] if get => text(StatusCode::OK, "ok"),
        ["ready"] if get => {
            let locks = state.locks();
            let standby: Vec<&String> = locks
                .iter()
                .filter(|(_, l)| !l.active())
                .map(|(n, _)| n)
                .collect();
            if standby.is_empty() {
                text(StatusCode::OK, "active")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "standby for {}",
                        standby
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            }
        }
        ["ready", name] if get => match state.lock(name) {
            Some(l) if l.active() => text(StatusCode::OK, "active"),
            Some(l) => text(StatusCode::SERVICE_UNAVAILABLE, l.standby_text()),
            None => text(StatusCode::NOT_FOUND, format!("no lock named \"{name}\"")),
        },
        ["status"] if get => {
            let fresh = query_flag(query.as_deref(), "fresh");
            if fresh
                && !peer.ip().is_loopback()
                && (state.token.is_none() || !authorized(&state, &req))
            {
                return Ok(text(
                    StatusCode::UNAUTHORIZED,
                    "a fresh read of the lock service from beyond loopback needs the bearer token",
                ));
            }
            json(StatusCode::OK, &status::document(&state, fresh).await)
        }
        ["locks", name, action @ ("step-down" | "resume")] if post => {
            if !authorized(&state, &req) {
                return Ok(text(StatusCode::UNAUTHORIZED, "a bearer token is required"));
            }
            match state.lock(name) {
                None => text(StatusCode::NOT_FOUND, format!("no lock named \"{name}\"")),
                Some(l) => command(&l, action, query.as_deref()).await,
            }
        }
        ["metrics" | "healthz" | "ready" | "status"] | ["ready", _] => method_not_allowed("GET"),
        ["locks", _, "step-down" | "resume"] => method_not_allowed("POST"),
        _ => text(
            StatusCode::NOT_FOUND,
            "unknown path; see the admin module's endpoint list",
        ),
    };
    Ok(response)
}

async fn command(l: &LockEntry, action: &str, query: Option<&str>) -> Response<Full<Bytes>> {
    let (tx, rx) = oneshot::channel();
    let (cmd, wait) = if action == "step-down" {
        let hold_off = match query_ms(query, "hold-off-ms") {
            Ok(v) => v.unwrap_or(l.cfg.check_period.saturating_mul(3)),
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        };
        let drain = match query_ms(query, "drain-ms") {
            Ok(v) => v.unwrap_or(Duration::ZERO),
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        };
        (
            Command::StepDown {
                drain,
                hold_off,
                reply: tx,
            },
            drain,
        )
    } else {
        (Command::Resume { reply: tx }, Duration::ZERO)
    };
    if l.commands.send(cmd).await.is_err() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the lock coordinator is stopping",
        );
    }
    match tokio::time::timeout(wait.saturating_add(Duration::from_secs(30)), rx).await {
        Ok(Ok(answer)) => json(
            StatusCode::OK,
            &serde_json::json!({ "lock": l.cfg.name, "result": answer }),
        ),
        _ => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the lock coordinator did not answer",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_decoded() {
        assert_eq!(decode("a%20b%2Fc%25"), "a b/c%");
        assert_eq!(decode("plain"), "plain");
        assert_eq!(decode("bad%zz%2"), "bad%zz%2");
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcdef", b"0123456789abcdeX"));
        assert!(!constant_time_eq(b"0123456789abcdef", b"0123456789abcde"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn query_flags_and_bounds() {
        assert!(query_flag(Some("fresh=1"), "fresh"));
        assert!(query_flag(Some("a=2&fresh"), "fresh"));
        assert!(!query_flag(Some("fresh=0"), "fresh"));
        assert!(!query_flag(None, "fresh"));
        assert!(query_ms(Some("drain-ms=86400001"), "drain-ms").is_err());
        assert_eq!(
            query_ms(Some("drain-ms=5"), "drain-ms").unwrap(),
            Some(Duration::from_millis(5))
        );
    }
}
