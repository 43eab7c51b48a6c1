//! Wiring: starts every task, owns their cancellation, orders shutdown.
//!
//! Start: open routes bind (a failure is fatal), coordinators start, then READY=1.
//! Stop: coordinators close their gated routes and release their locks (so the peer takes
//! over), then open routes drain for up to `shutdown-grace-ms`.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::coordinator::Coordinator;
use crate::route::{GatedRoutes, OpenRoute};
use crate::{health, metrics, systemd};

/// Runs lockgate until `shutdown` completes, then stops in order and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    metrics::describe();
    metrics::build_info();
    let stop = CancellationToken::new();

    let mut open = Vec::new();
    for r in config.routes.iter().filter(|r| r.lock.is_none()) {
        open.push(OpenRoute::start(r.clone())?);
    }

    let mut coordinators = Vec::new();
    for c in &config.coordinators {
        let routes: Vec<_> = config
            .routes
            .iter()
            .filter(|r| r.lock.as_deref() == Some(c.name.as_str()))
            .cloned()
            .collect();
        if routes.is_empty() {
            tracing::warn!(lock = %c.name, "no route is gated by this lock; it is contended for nothing");
        }
        let healthy = health::spawn(&c.name, c.health.clone(), stop.child_token());
        let coordinator = Coordinator::new(
            c.clone(),
            config.node_id.clone(),
            GatedRoutes::new(routes),
            healthy,
        );
        coordinators.push(tokio::spawn(coordinator.run(stop.child_token())));
    }

    info!(node_id = %config.node_id, config = %config.source.display(), "lockgate ready");
    systemd::ready();

    shutdown.await;

    info!("shutting down: closing gated routes and releasing locks");
    systemd::stopping();
    stop.cancel();
    for c in coordinators {
        if let Err(e) = c.await {
            tracing::error!(error = %e, "a lock coordinator ended abnormally");
        }
    }
    for r in &mut open {
        r.stop_accepting().await;
    }
    let left: usize = open.iter().map(OpenRoute::connections).sum();
    info!(
        connections = left,
        grace_ms = config.shutdown_grace.as_millis() as u64,
        "open routes closed; draining their connections"
    );
    systemd::status(&format!("draining {left} connections of open routes"));
    let drains: Vec<_> = open
        .into_iter()
        .map(|r| tokio::spawn(r.drain(config.shutdown_grace)))
        .collect();
    for d in drains {
        let _ = d.await;
    }
    info!("stopped");
    Ok(())
}
