//! Binding a listener and serving the connections it accepts.
//!
//! A little over 600 lines, a third of them tests: a route's settings and metric handles, the
//! accept loop and one connection's life (connect, PROXY header, forward, reset) read as one
//! story, and the test of a connection's future size needs them together.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use metrics::{Counter, Gauge, Histogram};
use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, debug, info_span, warn};

use crate::config::{ProxyProtocol, RouteConfig};
use crate::forward::{self, Counters, Side};
use crate::lease::Lease;
use crate::metrics::{
    ACCEPT_ERRORS, CONNECTIONS, CONNECTIONS_ACTIVE, CONNECTIONS_TIMED_OUT, FORWARD_ERRORS,
    FORWARDED_BYTES, ROUTE_LISTENING, UPSTREAM_CONNECT_ERRORS, UPSTREAM_CONNECT_SECONDS,
};

/// Pending connections the kernel queues for us.
const BACKLOG: i32 = 1024;
/// Accept back-off bounds while out of file descriptors.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// TCP keepalive on both legs: a peer that vanished without a FIN is found within minutes.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// A route's settings and pre-built metric handles, shared by its connection tasks.
pub struct RouteRuntime {
    pub cfg: RouteConfig,
    counters: Counters,
    connections: Counter,
    active: Gauge,
    listening: Gauge,
    accept_errors_fd: Counter,
    accept_errors_other: Counter,
    connect_seconds: Histogram,
    /// `lockgate_upstream_connect_errors_total` by cause: refused, error, timeout.
    connect_errors: [Counter; 3],
    /// `lockgate_forward_errors_total` by the side that failed: client, upstream.
    forward_errors: [Counter; 2],
    /// At most one WARN line per cause per second for failed upstream connects.
    connect_error_log: LogLimiter,
    /// Readable copies of the gauges, for the admin endpoint.
    active_now: AtomicU64,
    listening_now: AtomicBool,
    /// `forward-to` names this host's loopback: no keepalive on that leg (a dead peer there is
    /// reported by the kernel at once), which saves three system calls per connection.
    upstream_is_loopback: bool,
    /// A gated route's failed connects raise this (observe-connects): its lock's health check
    /// probes at once.
    suspicion: Option<crate::health::Suspicion>,
}

/// Why a connect to the upstream failed: the `reason` of
/// `lockgate_upstream_connect_errors_total`, and the cause a log line stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectFailure {
    Refused,
    Error,
    Timeout,
}

impl ConnectFailure {
    const ALL: [ConnectFailure; 3] = [
        ConnectFailure::Refused,
        ConnectFailure::Error,
        ConnectFailure::Timeout,
    ];

    fn reason(self) -> &'static str {
        match self {
            ConnectFailure::Refused => "refused",
            ConnectFailure::Error => "error",
            ConnectFailure::Timeout => "timeout",
        }
    }
}

/// Per cause: when the last line was logged, and how many events it has not reported yet.
#[derive(Default)]
struct LogLimiter(std::sync::Mutex<[(Option<std::time::Instant>, u64); 3]>);

impl LogLimiter {
    /// Records one event of `cause`; returns `Some(n)` when a line should be logged now, `n`
    /// being the events of that cause since the last line (this one included), else `None`.
    fn event(&self, cause: ConnectFailure) -> Option<u64> {
        let mut slots = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (last, count) = &mut slots[cause as usize];
        *count += 1;
        let now = std::time::Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            *last = Some(now);
            Some(std::mem::take(count))
        } else {
            None
        }
    }
}

/// A route as the admin endpoint shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteView {
    pub name: String,
    pub listen: String,
    pub forward_to: String,
    pub lock: Option<String>,
    pub listening: bool,
    pub active_connections: u64,
}

impl RouteRuntime {
    pub fn new(cfg: RouteConfig) -> Arc<RouteRuntime> {
        RouteRuntime::observed(cfg, None)
    }

    /// A route whose refused or reset upstream connects raise `suspicion`.
    pub fn observed(
        cfg: RouteConfig,
        suspicion: Option<crate::health::Suspicion>,
    ) -> Arc<RouteRuntime> {
        let r = cfg.name.clone();
        crate::metrics::register_route(&r, cfg.lock.is_some());
        Arc::new(RouteRuntime {
            counters: Counters {
                to_upstream: metrics::counter!(
                    FORWARDED_BYTES, "route" => r.clone(), "direction" => "to_upstream"
                ),
                to_downstream: metrics::counter!(
                    FORWARDED_BYTES, "route" => r.clone(), "direction" => "to_downstream"
                ),
            },
            connections: metrics::counter!(CONNECTIONS, "route" => r.clone()),
            active: metrics::gauge!(CONNECTIONS_ACTIVE, "route" => r.clone()),
            listening: metrics::gauge!(ROUTE_LISTENING, "route" => r.clone()),
            accept_errors_fd: metrics::counter!(
                ACCEPT_ERRORS, "route" => r.clone(), "reason" => "out_of_fds"
            ),
            accept_errors_other: metrics::counter!(
                ACCEPT_ERRORS, "route" => r.clone(), "reason" => "other"
            ),
            connect_errors: ConnectFailure::ALL.map(|c| {
                metrics::counter!(
                    UPSTREAM_CONNECT_ERRORS, "route" => r.clone(), "reason" => c.reason()
                )
            }),
            forward_errors: [Side::Downstream, Side::Upstream].map(
                |s| metrics::counter!(FORWARD_ERRORS, "route" => r.clone(), "side" => s.label()),
            ),
            connect_error_log: LogLimiter::default(),
            connect_seconds: metrics::histogram!(UPSTREAM_CONNECT_SECONDS, "route" => r),
            active_now: AtomicU64::new(0),
            listening_now: AtomicBool::new(false),
            upstream_is_loopback: is_loopback(&cfg.forward_to),
            suspicion,
            cfg,
        })
    }

    /// Counts a connection that ended on a failed read or write of `side`.
    fn forward_failed(&self, side: Side) {
        let [client, upstream] = &self.forward_errors;
        match side {
            Side::Downstream => client.increment(1),
            Side::Upstream => upstream.increment(1),
        }
    }

    pub fn set_listening(&self, on: bool) {
        self.listening.set(if on { 1.0 } else { 0.0 });
        self.listening_now.store(on, Ordering::Relaxed);
    }

    pub fn view(&self) -> RouteView {
        RouteView {
            name: self.cfg.name.clone(),
            listen: self.cfg.listen.to_string(),
            forward_to: self.cfg.forward_to.clone(),
            lock: self.cfg.lock.clone(),
            listening: self.listening_now.load(Ordering::Relaxed),
            active_connections: self.active_now.load(Ordering::Relaxed),
        }
    }
}

/// True when `host:port` is a loopback address (or `localhost`).
fn is_loopback(host_port: &str) -> bool {
    match host_port.parse::<SocketAddr>() {
        Ok(a) => a.ip().is_loopback(),
        Err(_) => host_port
            .rsplit_once(':')
            .is_some_and(|(h, _)| h.eq_ignore_ascii_case("localhost")),
    }
}

/// An OS error in an operator's words.
pub fn explain(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            return "out of file descriptors (raise LimitNOFILE)".to_owned();
        }
        _ => {}
    }
    match e.kind() {
        io::ErrorKind::AddrInUse => "port already in use".to_owned(),
        io::ErrorKind::AddrNotAvailable => "address not available on this host".to_owned(),
        io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)".to_owned()
        }
        io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        _ => e.to_string(),
    }
}

/// Binds a listening socket (SO_REUSEADDR, so connections in TIME_WAIT do not block a rebind).
/// On Linux, accepted sockets inherit TCP_NODELAY, keepalive and TCP_USER_TIMEOUT from it,
/// which saves five system calls per connection.
pub fn bind(addr: SocketAddr, user_timeout: Duration) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    #[cfg(target_os = "linux")]
    {
        socket.set_tcp_nodelay(true)?;
        socket.set_tcp_keepalive(&keepalive())?;
        socket.set_tcp_user_timeout(Some(user_timeout))?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = user_timeout;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Stops a listening socket at once: `shutdown(SHUT_RD)` on a Linux listener moves it out of
/// LISTEN, so new connects are refused from this call on, even while a task still holds it.
pub fn shut(listener: &TcpListener) {
    let _ = SockRef::from(listener).shutdown(std::net::Shutdown::Read);
}

/// Resets a connection: linger 0, so the peer sees RST at once rather than a FIN it might
/// keep writing after.
pub fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

fn keepalive() -> TcpKeepalive {
    TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
}

/// TCP_NODELAY, keepalive and (on Linux) TCP_USER_TIMEOUT on one leg.
fn tune(stream: &TcpStream, user_timeout: Duration) {
    let _ = stream.set_nodelay(true);
    let s = SockRef::from(stream);
    let _ = s.set_tcp_keepalive(&keepalive());
    #[cfg(target_os = "linux")]
    let _ = s.set_tcp_user_timeout(Some(user_timeout));
    #[cfg(not(target_os = "linux"))]
    let _ = user_timeout;
}

/// The `reason` of `lockgate_connections_timed_out_total` when a route timeout ended `e`.
fn timed_out(e: &forward::ForwardError) -> Option<&'static str> {
    match e {
        forward::ForwardError::Inactive { which, .. } => Some(which.reason()),
        forward::ForwardError::HalfCloseTimeout(_) => Some("half_close"),
        // The kernel gave up on a leg: TCP_USER_TIMEOUT, or keepalive probes unanswered.
        forward::ForwardError::Io { source, .. }
            if source.raw_os_error() == Some(libc::ETIMEDOUT) =>
        {
            Some("peer_unresponsive")
        }
        _ => None,
    }
}

/// Accepts until `stop` (then drops the listener: new connects are refused). Each connection
/// runs on `tracker`, in a span `conn{peer=<address>}` (a child of the route's), and is reset
/// when `kill` fires.
pub async fn accept_loop(
    listener: Arc<TcpListener>,
    route: Arc<RouteRuntime>,
    stop: CancellationToken,
    kill: CancellationToken,
    tracker: TaskTracker,
    lease: Lease,
) {
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::ZERO;
                route.connections.increment(1);
                let conn = serve(stream, peer, route.clone(), kill.clone(), lease.clone());
                tracker.spawn(conn.instrument(info_span!("conn", %peer)));
            }
            // The listener was shut under us: not an error, the end.
            Err(_) if stop.is_cancelled() => break,
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {
                route.accept_errors_other.increment(1);
                debug!("a client gave up before its connection was accepted");
            }
            Err(e) => {
                if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) {
                    route.accept_errors_fd.increment(1);
                } else {
                    route.accept_errors_other.increment(1);
                }
                backoff = (backoff * 2).clamp(ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX);
                warn!(
                    error = %explain(&e),
                    backoff_ms = backoff.as_millis() as u64,
                    "cannot accept a connection; backing off"
                );
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
    drop(listener);
    route.set_listening(false);
}

/// A connect error that points at the broker (refused, reset, unreachable), not at this node.
fn broker_may_be_down(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

/// Counts a connection as active until the task ends, however it ends.
struct ActiveGuard(Arc<RouteRuntime>);

impl ActiveGuard {
    fn new(route: &Arc<RouteRuntime>) -> ActiveGuard {
        route.active.increment(1.0);
        route.active_now.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(route.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.decrement(1.0);
        self.0.active_now.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sends the route's PROXY protocol header, if any, then forwards.
async fn proxy_then_forward(
    downstream: &TcpStream,
    upstream: &TcpStream,
    peer: SocketAddr,
    route: &RouteRuntime,
    settings: forward::Settings,
    lease: &Lease,
) -> Result<forward::Totals, forward::ForwardError> {
    if route.cfg.proxy_protocol == ProxyProtocol::V2 {
        // Boxed: only routes with a header carry its state, and only while it is written.
        Box::pin(send_proxy_v2(downstream, upstream, peer, lease)).await?;
    }
    forward::forward(downstream, upstream, settings, &route.counters, lease).await
}

/// Writes the PROXY protocol v2 header of this connection to the upstream.
async fn send_proxy_v2(
    downstream: &TcpStream,
    upstream: &TcpStream,
    peer: SocketAddr,
    lease: &Lease,
) -> Result<(), forward::ForwardError> {
    let local = downstream
        .local_addr()
        .map_err(|source| forward::ForwardError::Io {
            side: Side::Downstream,
            source,
        })?;
    let header = forward::proxy_protocol::v2_header(peer, local);
    forward::copy::write_all(upstream, &header, lease).await
}

async fn serve(
    downstream: TcpStream,
    peer: SocketAddr,
    route: Arc<RouteRuntime>,
    kill: CancellationToken,
    lease: Lease,
) {
    let _active = ActiveGuard::new(&route);
    let name = route.cfg.name.as_str();
    // On Linux the accepted socket inherited both from the listener.
    #[cfg(not(target_os = "linux"))]
    tune(&downstream, route.cfg.tcp_user_timeout);
    // Boxed: the connect's state (and its timing) is gone once forwarding starts, and an
    // idle connection's future should not carry it.
    let connect = Box::pin(async {
        let started = std::time::Instant::now();
        let r = tokio::time::timeout(
            route.cfg.connect_timeout,
            TcpStream::connect(route.cfg.forward_to.as_str()),
        )
        .await;
        if matches!(r, Ok(Ok(_))) {
            route
                .connect_seconds
                .record(started.elapsed().as_secs_f64());
        }
        r
    });
    let upstream = tokio::select! {
        _ = kill.cancelled() => {
            reset(downstream);
            return;
        }
        r = connect => r,
    };
    // Every failure is counted; at most one line per cause per second is logged (a failover
    // refuses every client of the dead broker at once), with the count it stands for.
    let upstream = match upstream {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let cause = if e.kind() == io::ErrorKind::ConnectionRefused {
                ConnectFailure::Refused
            } else {
                ConnectFailure::Error
            };
            // Strong evidence that the broker is gone: its health check probes now. A local
            // shortage (out of descriptors or memory) says nothing about the broker.
            if let Some(s) = &route.suspicion
                && broker_may_be_down(&e)
            {
                s.raise();
            }
            route.connect_errors[cause as usize].increment(1);
            if let Some(failures) = route.connect_error_log.event(cause) {
                warn!(
                    upstream = %route.cfg.forward_to,
                    error = %explain(&e),
                    failures,
                    "cannot connect to the upstream; closing the client's connection (failures: \
                     how many since the last such line)"
                );
            }
            reset(downstream);
            return;
        }
        Err(_) => {
            route.connect_errors[ConnectFailure::Timeout as usize].increment(1);
            if let Some(failures) = route.connect_error_log.event(ConnectFailure::Timeout) {
                warn!(
                    upstream = %route.cfg.forward_to,
                    timeout_ms = route.cfg.connect_timeout.as_millis() as u64,
                    failures,
                    "upstream did not answer the connect in time; closing the client's connection \
                     (failures: how many since the last such line)"
                );
            }
            reset(downstream);
            return;
        }
    };
    if route.upstream_is_loopback {
        let _ = upstream.set_nodelay(true);
    } else {
        tune(&upstream, route.cfg.tcp_user_timeout);
    }
    let settings = forward::Settings {
        half_close_timeout: route.cfg.half_close_timeout,
        zero_copy: route.cfg.zero_copy,
        idle: forward::Idle::new(
            route.cfg.client_timeout,
            route.cfg.server_timeout,
            route.cfg.tunnel_timeout,
        ),
    };
    let result = tokio::select! {
        _ = kill.cancelled() => None,
        r = proxy_then_forward(&downstream, &upstream, peer, &route, settings, &lease) => Some(r),
    };
    match result {
        Some(Ok(t)) => {
            debug!(
                to_upstream = t.to_upstream,
                to_downstream = t.to_downstream,
                spliced = t.spliced,
                "connection closed"
            );
        }
        Some(Err(e)) => {
            if let forward::ForwardError::Io { side, .. } = &e {
                route.forward_failed(*side);
            }
            if let Some(reason) = timed_out(&e) {
                let route = name.to_owned();
                metrics::counter!(CONNECTIONS_TIMED_OUT, "route" => route, "reason" => reason)
                    .increment(1);
            }
            debug!(error = %e, "connection ended abnormally; resetting both legs");
            reset(downstream);
            reset(upstream);
        }
        None => {
            reset(downstream);
            reset(upstream);
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn loopback_upstreams() {
        assert!(is_loopback("127.0.0.1:61626"));
        assert!(is_loopback("127.3.2.1:1"));
        assert!(is_loopback("[::1]:61626"));
        assert!(is_loopback("localhost:61626"));
        assert!(!is_loopback("10.0.0.1:61626"));
        assert!(!is_loopback("broker-b:61626"));
    }

    /// A listener bound as a route's is, one client connected to it, and the accepted socket
    /// with the client's address.
    async fn accepted() -> (TcpListener, TcpStream, TcpStream, SocketAddr) {
        let l = bind("127.0.0.1:0".parse().unwrap(), Duration::from_millis(7000)).unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, peer) = l.accept().await.unwrap();
        (l, client, s, peer)
    }

    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_keepalive_and_user_timeout() {
        let (_l, _c, s, _) = accepted().await;
        let r = SockRef::from(&s);
        assert!(s.nodelay().unwrap());
        assert!(r.keepalive().unwrap());
        assert_eq!(r.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(r.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(
            r.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(7000))
        );
    }

    #[test]
    fn one_line_per_cause_per_second() {
        let l = LogLimiter::default();
        assert_eq!(l.event(ConnectFailure::Refused), Some(1));
        for _ in 0..50 {
            assert_eq!(l.event(ConnectFailure::Refused), None);
        }
        // Another cause has its own line.
        assert_eq!(l.event(ConnectFailure::Timeout), Some(1));
        // A second later, the next line reports the 50 it stood for, plus itself.
        l.0.lock().unwrap()[ConnectFailure::Refused as usize].0 =
            Some(std::time::Instant::now() - Duration::from_secs(1));
        assert_eq!(l.event(ConnectFailure::Refused), Some(51));
    }

    #[tokio::test]
    async fn a_shut_listener_refuses_at_once() {
        let l = bind("127.0.0.1:0".parse().unwrap(), Duration::from_millis(7000)).unwrap();
        let addr = l.local_addr().unwrap();
        TcpStream::connect(addr).await.unwrap();
        shut(&l);
        // Still open as a descriptor, but no longer listening.
        assert!(TcpStream::connect(addr).await.is_err());
    }

    /// The state an idle connection keeps in memory is mostly this future: keep it small
    /// (HAProxy spends about 3.3 KiB per idle connection in all). 1408 B before the inactivity
    /// timeouts, whose shared stamps and boxed timer pointer added 64 B.
    #[tokio::test]
    async fn a_connection_future_stays_small() {
        let (l, _c, s, peer) = accepted().await;
        let addr = l.local_addr().unwrap();
        let cfg = crate::config::Config::from_str(
            &format!(
                "[[route]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nforward-to = \"{addr}\"\n"
            ),
            std::path::Path::new("/tmp/x.toml"),
        )
        .unwrap();
        let route = RouteRuntime::new(cfg.routes[0].clone());
        let f = serve(s, peer, route, CancellationToken::new(), Lease::unlimited());
        let size = std::mem::size_of_val(&f);
        assert!(size <= 1472, "a connection's future grew to {size} B");
    }
}
