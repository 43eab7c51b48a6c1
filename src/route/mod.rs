//! Routes: a listener that forwards every connection to one upstream.
//!
//! - An **open** route ([`OpenRoute`]) binds at start and stays bound until shutdown, when it
//!   drains for up to `shutdown-grace-ms`.
//! - **Gated** routes ([`GatedRoutes`]) are the [`Gate`] of their lock coordinator: bound in
//!   config order once the lock is held, and on loss closed in reverse order, listener first,
//!   then every connection reset, no grace.

pub mod listener;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, Span, info, info_span, warn};

use crate::gate::Gate;
use crate::lease::Lease;
use crate::metrics::{CONNECTIONS_KILLED, ROUTE_BIND_ERRORS};
use listener::RouteRuntime;

/// A bound listener and the connections it carries. Dropping it (even in a panic) stops the
/// listener at once and resets its connections.
struct Bound {
    route: Arc<RouteRuntime>,
    /// Shared with the accept loop, so the listener can be shut here synchronously.
    listener: Arc<tokio::net::TcpListener>,
    /// Stops the accept loop, which then drops the listener.
    stop_accepting: CancellationToken,
    /// Resets every connection of this listener.
    kill: CancellationToken,
    accept: JoinHandle<()>,
    conns: TaskTracker,
    /// `route{route=<name>}`: the accept loop runs in it, each connection in a child span of
    /// it, and this listener's own events are logged in it.
    span: Span,
}

impl Bound {
    fn bind(route: &Arc<RouteRuntime>, lease: Lease) -> std::io::Result<Bound> {
        let listener = Arc::new(listener::bind(
            route.cfg.listen,
            route.cfg.tcp_user_timeout,
        )?);
        let stop_accepting = CancellationToken::new();
        let kill = CancellationToken::new();
        let conns = TaskTracker::new();
        let span = info_span!("route", route = %route.cfg.name);
        let accept = listener::accept_loop(
            listener.clone(),
            route.clone(),
            stop_accepting.clone(),
            kill.clone(),
            conns.clone(),
            lease,
        );
        let accept = tokio::spawn(accept.instrument(span.clone()));
        route.set_listening(true);
        let (listen, forward_to) = (&route.cfg.listen, &route.cfg.forward_to);
        span.in_scope(|| info!(%listen, %forward_to, "route listening"));
        Ok(Bound {
            route: route.clone(),
            listener,
            stop_accepting,
            kill,
            accept,
            conns,
            span,
        })
    }

    /// Stops accepting: from this call on, connects are refused; returns when the accept loop
    /// has ended.
    async fn stop_accepting(&mut self) {
        self.stop_accepting.cancel();
        listener::shut(&self.listener);
        if let Err(e) = (&mut self.accept).await {
            self.span
                .in_scope(|| warn!(error = %e, "accept task ended abnormally"));
        }
        self.route.set_listening(false);
    }

    /// Resets every remaining connection and waits until all are gone.
    async fn kill(self, reason: &'static str) {
        let left = self.conns.len();
        if left > 0 {
            let route = self.route.cfg.name.clone();
            metrics::counter!(CONNECTIONS_KILLED, "route" => route, "reason" => reason)
                .increment(left as u64);
            self.span
                .in_scope(|| info!(connections = left, reason, "resetting connections"));
        }
        self.kill.cancel();
        self.conns.close();
        self.conns.wait().await;
    }

    /// Gated close: listener first, then every connection, at once.
    async fn close(mut self, reason: &'static str) {
        self.stop_accepting().await;
        let listen = self.route.cfg.listen;
        self.span
            .in_scope(|| info!(%listen, reason, "route closed"));
        self.kill(reason).await;
    }

    /// After `stop_accepting`: let connections finish for up to `grace`, then reset the rest.
    async fn drain(self, grace: Duration, reason: &'static str) {
        self.conns.close();
        if tokio::time::timeout(grace, self.conns.wait())
            .await
            .is_err()
        {
            let grace_ms = grace.as_millis() as u64;
            self.span.in_scope(|| {
                warn!(grace_ms, reason, "connections still open after the drain");
            });
        }
        self.kill(reason).await;
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        // Normally already done by `close`/`drain`; after a panic this is the fence.
        listener::shut(&self.listener);
        self.stop_accepting.cancel();
        self.kill.cancel();
    }
}

/// An always-bound route.
pub struct OpenRoute(Bound);

impl OpenRoute {
    /// Binds now; a failure is fatal at start-up and says which route and why.
    pub fn start(route: Arc<RouteRuntime>) -> anyhow::Result<OpenRoute> {
        let bound = Bound::bind(&route, Lease::unlimited())
            .map_err(|e| anyhow::anyhow!(listener::explain(&e)))
            .with_context(|| {
                format!(
                    "route \"{}\": cannot listen on {}",
                    route.cfg.name, route.cfg.listen
                )
            })?;
        Ok(OpenRoute(bound))
    }

    /// Closes the listener; connections keep flowing.
    pub async fn stop_accepting(&mut self) {
        self.0.stop_accepting().await;
    }

    /// Connections still open.
    pub fn connections(&self) -> usize {
        self.0.conns.len()
    }

    /// Waits up to `grace` for the connections to finish, then resets the rest.
    pub async fn drain(self, grace: Duration) {
        self.0.drain(grace, "shutdown").await;
    }
}

/// The gated routes of one lock, in config order.
pub struct GatedRoutes {
    routes: Vec<Arc<RouteRuntime>>,
    /// Bound listeners, in bind order (a prefix of `routes`).
    bound: Vec<Bound>,
}

impl GatedRoutes {
    pub fn new(routes: Vec<Arc<RouteRuntime>>) -> GatedRoutes {
        GatedRoutes {
            routes,
            bound: Vec::new(),
        }
    }
}

impl Gate for GatedRoutes {
    async fn open(&mut self, _term: u64, lease: Lease) -> Result<(), String> {
        for route in &self.routes {
            if self.bound.iter().any(|b| Arc::ptr_eq(&b.route, route)) {
                continue;
            }
            match Bound::bind(route, lease.clone()) {
                Ok(b) => self.bound.push(b),
                Err(e) => {
                    let (name, reason) = (route.cfg.name.clone(), crate::metrics::bind_reason(&e));
                    metrics::counter!(ROUTE_BIND_ERRORS, "route" => name, "reason" => reason)
                        .increment(1);
                    let message = format!(
                        "route \"{}\": cannot listen on {}: {}",
                        route.cfg.name,
                        route.cfg.listen,
                        listener::explain(&e)
                    );
                    self.close("bind_failed").await;
                    return Err(message);
                }
            }
        }
        Ok(())
    }

    async fn close(&mut self, reason: &'static str) {
        while let Some(b) = self.bound.pop() {
            b.close(reason).await;
        }
    }

    async fn close_draining(&mut self, drain: Duration) {
        // Every listener first (reverse order), then one shared drain window.
        for b in self.bound.iter_mut().rev() {
            b.stop_accepting().await;
            let (listen, drain_ms) = (b.route.cfg.listen, drain.as_millis() as u64);
            b.span.in_scope(|| {
                info!(%listen, drain_ms, "route closed for a step-down; draining");
            });
        }
        let deadline = tokio::time::Instant::now() + drain;
        while let Some(b) = self.bound.pop() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            b.drain(left, "step_down").await;
        }
    }
}
