//! The admin HTTP endpoint: `[admin] listen` (loopback, `127.0.0.1:9464`, by default), served
//! by hyper. Every endpoint:
//!
//! - `GET /metrics` — Prometheus text exposition of every metric in [`crate::metrics`].
//! - `GET /healthz` — 200 while the process serves its event loop.
//! - `GET /ready` — 200 when this node is active for every lock it has, else 503 (a load
//!   balancer's or Kubernetes' probe, like Patroni's `/primary`).
//! - `GET /ready/<lock>` — the same for one lock; 404 for an unknown lock.
//! - `GET /status` — JSON: each lock (held, term, state, since, recent transitions, the holder
//!   per the owner record) and each route (listening, active connections).
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
use crate::lock;
use crate::route::listener::RouteRuntime;

/// The largest request head the endpoint reads.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// What the endpoint shows and commands, updated by the app on start and reload.
pub struct State {
    pub metrics: Option<PrometheusHandle>,
    pub token: Option<String>,
    pub node_id: RwLock<String>,
    pub locks: RwLock<BTreeMap<String, LockEntry>>,
    pub routes: RwLock<BTreeMap<String, Arc<RouteRuntime>>>,
}

/// One running coordinator.
#[derive(Clone)]
pub struct LockEntry {
    pub cfg: CoordinatorConfig,
    pub state: watch::Receiver<LockState>,
    pub commands: mpsc::Sender<Command>,
}

impl State {
    pub fn new(metrics: Option<PrometheusHandle>, token: Option<String>, node_id: &str) -> State {
        State {
            metrics,
            token,
            node_id: RwLock::new(node_id.to_owned()),
            locks: RwLock::default(),
            routes: RwLock::default(),
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
                warn!(%peer, reason, max_connections, "admin connection refused (see lockgate_admin_connections_refused_total)");
                refused_logged = Some(std::time::Instant::now());
            }
            refuse(stream, reason);
            continue;
        };
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
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
                    "{key} must be a whole number of milliseconds from 0 to {MAX_COMMAND_MS} (one day)"
                )),
            };
        }
    }
    Ok(None)
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
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
                .filter(|(_, l)| !l.state.borrow().held)
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
            Some(l) if l.state.borrow().held => text(StatusCode::OK, "active"),
            Some(l) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                l.state.borrow().state.clone(),
            ),
            None => text(StatusCode::NOT_FOUND, format!("no lock named \"{name}\"")),
        },
        ["status"] if get => json(StatusCode::OK, &status(&state).await),
        ["locks", name, action @ ("step-down" | "resume")] if post => {
            if let Some(token) = &state.token {
                let given = req
                    .headers()
                    .get(hyper::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                if given != Some(token.as_str()) {
                    return Ok(text(StatusCode::UNAUTHORIZED, "a bearer token is required"));
                }
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

async fn status(state: &State) -> serde_json::Value {
    let mut locks = serde_json::Map::new();
    for (name, l) in state.locks() {
        let s = l.state.borrow().clone();
        let holder = match tokio::time::timeout(Duration::from_secs(2), lock::observe(&l.cfg)).await
        {
            Ok(Ok((lock::Observed::Held(Some(r)), _))) => {
                serde_json::to_value(r).unwrap_or_default()
            }
            Ok(Ok(_)) => serde_json::Value::Null,
            Ok(Err(e)) => serde_json::json!({ "error": e.to_string() }),
            Err(_) => serde_json::json!({ "error": "timed out" }),
        };
        let mut v = serde_json::to_value(&s).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("type".into(), l.cfg.backend.type_name().into());
            o.insert("holder".into(), holder);
        }
        locks.insert(name, v);
    }
    let routes: Vec<serde_json::Value> = state
        .routes
        .read()
        .map(|r| {
            r.values()
                .map(|r| serde_json::to_value(r.view()).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    let node_id = state.node_id.read().map(|n| n.clone()).unwrap_or_default();
    serde_json::json!({
        "node_id": node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "locks": locks,
        "routes": routes,
    })
}
