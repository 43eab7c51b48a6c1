//! Wiring: starts every task, owns their cancellation, orders shutdown, applies reloads.
//!
//! Start: metrics recorder, open routes (a bind failure is fatal), coordinators with their
//! gated routes and health probes, the admin endpoint, then READY=1 (and WATCHDOG=1 pings when
//! systemd asks for them).
//! Reload (SIGHUP): the file is read again; a bad one is refused and the old config keeps
//! running. Coordinators whose settings, gated routes or node-id changed are stopped (gate
//! closed, lock released) before their replacement starts; open routes that went or changed
//! stop accepting and drain; everything unchanged keeps running untouched.
//! Stop: coordinators close their gated routes and release their locks (so the peer takes
//! over; a step-down drain in progress is cut short), then open routes drain for up to
//! `shutdown-grace-ms`. The whole stop is bounded by `shutdown-grace-ms`, and a second signal
//! (`hurry`) ends it at once.
//! Supervision: a coordinator task that ends on its own (a panic) has already fenced its gate
//! (its listeners shut as it unwinds); the process then stops everything and exits non-zero,
//! so that the service manager restarts it. `/ready` never reports a dead coordinator.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::{self, LockEntry};
use crate::config::{Config, CoordinatorConfig, RouteConfig};
use crate::coordinator::Coordinator;
use crate::metrics::{
    CONFIG_RELOAD_ERRORS, CONFIG_RELOADS, LOCK_IDENTITY_CHANGES, ROUTE_BIND_ERRORS,
};
use crate::route::listener::{self, RouteRuntime};
use crate::route::{GatedRoutes, OpenRoute};
use crate::{health, systemd};

/// Runs lockgate until `shutdown` completes, then stops in order and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let (_keep, reloads) = mpsc::channel(1);
    run_with_reload(config, shutdown, std::future::pending(), reloads).await
}

/// As [`run`], and re-reads the config file each time `reloads` yields. Once stopping,
/// `hurry` completing (a second SIGTERM) ends the grace period at once.
pub async fn run_with_reload(
    config: Config,
    shutdown: impl Future<Output = ()>,
    hurry: impl Future<Output = ()>,
    mut reloads: mpsc::Receiver<()>,
) -> anyhow::Result<()> {
    let metrics = match crate::metrics::install() {
        Ok(h) => Some(h),
        Err(e) => {
            warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
            None
        }
    };
    let (died_tx, mut died) = mpsc::channel(8);
    let mut app = App::start(config, metrics, died_tx).await?;
    info!(node_id = %app.config.node_id, config = %app.config.source.display(), "lockgate ready");
    systemd::ready();
    let watchdog = systemd::watchdog_interval().map(|every| {
        info!(
            interval_ms = every.as_millis() as u64,
            "sending watchdog pings"
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                systemd::watchdog();
            }
        })
    });

    tokio::pin!(shutdown);
    let mut dead = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(name) = died.recv() => {
                error!(lock = %name, "a lock coordinator ended unexpectedly (its gate is \
                    closed); stopping so that the service manager restarts lockgate");
                dead = Some(name);
                break;
            }
            Some(()) = reloads.recv() => app.reload().await,
        }
    }

    info!("shutting down: closing gated routes and releasing locks");
    systemd::stopping();
    let grace = app.config.shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    let stopped = tokio::select! {
        _ = app.stop(deadline) => true,
        _ = tokio::time::sleep_until(deadline + RESET_ALLOWANCE) => {
            warn!(grace_ms = grace.as_millis() as u64, "shutdown-grace-ms is over: exiting with \
                what is left open reset");
            false
        }
        _ = hurry => {
            warn!("second signal: exiting now");
            false
        }
    };
    if let Some(w) = watchdog {
        w.abort();
    }
    info!(clean = stopped, "stopped");
    match dead {
        Some(name) => Err(anyhow::anyhow!(
            "the lock coordinator \"{name}\" ended unexpectedly"
        )),
        None => Ok(()),
    }
}

/// After the grace period: time for the last resets before the process exits anyway.
const RESET_ALLOWANCE: std::time::Duration = std::time::Duration::from_millis(250);

struct OpenEntry {
    cfg: RouteConfig,
    route: OpenRoute,
}

struct CoordinatorEntry {
    cfg: CoordinatorConfig,
    routes: Vec<RouteConfig>,
    node_id: String,
    stop: CancellationToken,
    /// The supervisor of the coordinator's task: ends when the task does.
    task: JoinHandle<()>,
}

struct App {
    config: Config,
    open: BTreeMap<String, OpenEntry>,
    coordinators: BTreeMap<String, CoordinatorEntry>,
    admin: Arc<admin::State>,
    admin_stop: CancellationToken,
    /// Open routes removed or changed by a reload, still draining.
    draining: Vec<JoinHandle<()>>,
    /// Told the name of a coordinator whose task ended without being asked to.
    died: mpsc::Sender<String>,
}

fn gated_by(config: &Config, lock: &str) -> Vec<RouteConfig> {
    config
        .routes
        .iter()
        .filter(|r| r.lock.as_deref() == Some(lock))
        .cloned()
        .collect()
}

impl App {
    async fn start(
        config: Config,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
        died: mpsc::Sender<String>,
    ) -> anyhow::Result<App> {
        let token = config.admin.as_ref().and_then(|a| a.token.clone());
        let admin = Arc::new(admin::State::new(metrics, token, &config.node_id));
        let admin_stop = CancellationToken::new();
        if let Some(a) = &config.admin {
            let l = tokio::net::TcpListener::bind(a.listen)
                .await
                .map_err(|e| anyhow::anyhow!(listener::explain(&e)))
                .with_context(|| format!("admin endpoint: cannot listen on {}", a.listen))?;
            tokio::spawn(admin::serve(
                l,
                admin.clone(),
                admin_stop.clone(),
                a.max_connections,
            ));
        }
        let mut app = App {
            config: config.clone(),
            open: BTreeMap::new(),
            coordinators: BTreeMap::new(),
            admin,
            admin_stop,
            draining: Vec::new(),
            died,
        };
        for r in config.routes.iter().filter(|r| r.lock.is_none()) {
            app.start_open(r)?;
        }
        for c in &config.coordinators {
            app.start_coordinator(c, gated_by(&config, &c.name), &config.node_id, None);
        }
        Ok(app)
    }

    fn start_open(&mut self, cfg: &RouteConfig) -> anyhow::Result<()> {
        let runtime = RouteRuntime::new(cfg.clone());
        let route = OpenRoute::start(runtime.clone())?;
        if let Ok(mut routes) = self.admin.routes.write() {
            routes.insert(cfg.name.clone(), runtime);
        }
        self.open.insert(
            cfg.name.clone(),
            OpenEntry {
                cfg: cfg.clone(),
                route,
            },
        );
        Ok(())
    }

    fn start_coordinator(
        &mut self,
        c: &CoordinatorConfig,
        routes: Vec<RouteConfig>,
        node_id: &str,
        hold_off: Option<std::time::Duration>,
    ) {
        if routes.is_empty() {
            warn!(lock = %c.name, "no route is gated by this lock; it is contended for nothing");
        }
        let suspicion = health::Suspicion::default();
        let observed = c
            .health
            .as_ref()
            .is_some_and(|h| h.observe_connects)
            .then(|| suspicion.clone());
        let runtimes: Vec<Arc<RouteRuntime>> = routes
            .iter()
            .cloned()
            .map(|r| RouteRuntime::observed(r, observed.clone()))
            .collect();
        if let Ok(mut all) = self.admin.routes.write() {
            for r in &runtimes {
                all.insert(r.cfg.name.clone(), r.clone());
            }
        }
        let stop = CancellationToken::new();
        let healthy = health::spawn(&c.name, c.health.clone(), suspicion, stop.clone());
        let (coordinator, handle) = Coordinator::new(
            c.clone(),
            node_id.to_owned(),
            GatedRoutes::new(runtimes),
            healthy,
        );
        let coordinator = match hold_off {
            Some(d) => coordinator.with_initial_hold_off(d),
            None => coordinator,
        };
        let run = tokio::spawn(coordinator.run(stop.clone()));
        let (died, asked, name) = (self.died.clone(), stop.clone(), c.name.clone());
        let task = tokio::spawn(async move {
            let ended = run.await;
            if let Err(e) = &ended {
                error!(lock = %name, error = %e, "a lock coordinator ended abnormally");
            }
            if ended.is_err() || !asked.is_cancelled() {
                let _ = died.send(name).await;
            }
        });
        if let Ok(mut locks) = self.admin.locks.write() {
            locks.insert(
                c.name.clone(),
                LockEntry {
                    cfg: c.clone(),
                    state: handle.state,
                    commands: handle.commands,
                },
            );
        }
        self.coordinators.insert(
            c.name.clone(),
            CoordinatorEntry {
                cfg: c.clone(),
                routes,
                node_id: node_id.to_owned(),
                stop,
                task,
            },
        );
    }

    /// Closes the coordinator's gate, releases its lock, and waits until it has.
    async fn stop_coordinator(&mut self, name: &str) {
        let Some(entry) = self.coordinators.remove(name) else {
            return;
        };
        entry.stop.cancel();
        let _ = entry.task.await;
        if let Ok(mut locks) = self.admin.locks.write() {
            locks.remove(name);
        }
        if let Ok(mut all) = self.admin.routes.write() {
            for r in &entry.routes {
                all.remove(&r.name);
            }
        }
    }

    async fn reload(&mut self) {
        systemd::reloading();
        info!(config = %self.config.source.display(), "reloading the configuration");
        // Off the runtime and bounded: the load checks the locks folder, which may hang.
        let new = match Config::load_bounded(&self.config.source, crate::config::LOAD_BOUND).await {
            Ok(c) => c,
            Err(e) => {
                metrics::counter!(CONFIG_RELOAD_ERRORS).increment(1);
                error!(error = %e, "reload refused; the running configuration stays");
                systemd::status(&format!("reload failed: {e}"));
                systemd::ready();
                return;
            }
        };
        if new.admin != self.config.admin {
            warn!("changes to [admin] take effect at the next restart");
        }
        self.warn_identity_changes(&new);
        // Stop what went or changed, coordinators first (their gates close and their locks go
        // before anything else may bind their ports).
        let stale: Vec<String> = self
            .coordinators
            .iter()
            .filter(|(name, e)| {
                new.coordinator(name).is_none_or(|c| *c != e.cfg)
                    || gated_by(&new, name) != e.routes
                    || new.node_id != e.node_id
            })
            .map(|(name, _)| name.clone())
            .collect();
        // Locks held now: the restarted coordinator first leaves them to the peer for one
        // check-period, or it could race the peer (already waiting) for the lock it just gave.
        let handed: Vec<String> = self
            .admin
            .locks
            .read()
            .map(|l| {
                stale
                    .iter()
                    .filter(|n| l.get(*n).is_some_and(|e| e.active()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for name in &stale {
            info!(lock = %name, "reload: stopping the lock coordinator (changed or removed)");
            self.stop_coordinator(name).await;
        }
        let gone: Vec<String> = self
            .open
            .iter()
            .filter(|(name, e)| !new.routes.iter().any(|r| &r.name == *name && *r == e.cfg))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &gone {
            if let Some(mut e) = self.open.remove(name) {
                info!(route = %name, "reload: closing the open route (changed or removed)");
                e.route.stop_accepting().await;
                if let Ok(mut all) = self.admin.routes.write() {
                    all.remove(name);
                }
                self.draining
                    .push(tokio::spawn(e.route.drain(new.shutdown_grace)));
            }
        }
        // Start what is new or changed.
        for r in new.routes.iter().filter(|r| r.lock.is_none()) {
            if !self.open.contains_key(&r.name)
                && let Err(e) = self.start_open(r)
            {
                metrics::counter!(
                    ROUTE_BIND_ERRORS,
                    "route" => r.name.clone(),
                    "reason" => "reload"
                )
                .increment(1);
                error!(route = %r.name, error = format!("{e:#}"), "reload: cannot open the \
                    route; the rest of the new configuration applies");
            }
        }
        for c in &new.coordinators {
            if !self.coordinators.contains_key(&c.name) {
                info!(lock = %c.name, "reload: starting the lock coordinator");
                let hold_off = handed.contains(&c.name).then_some(c.check_period);
                self.start_coordinator(c, gated_by(&new, &c.name), &new.node_id, hold_off);
            }
        }
        if let Ok(mut n) = self.admin.node_id.write() {
            n.clone_from(&new.node_id);
        }
        self.config = new;
        self.draining.retain(|d| !d.is_finished());
        metrics::counter!(CONFIG_RELOADS).increment(1);
        info!("configuration reloaded");
        systemd::status("configuration reloaded");
        systemd::ready();
    }

    /// A reload that changes what names a lock is an operator hazard: this node moves to a
    /// lock its peer does not contend for, so both may serve until every node agrees. Loud:
    /// a warning per lock and `lockgate_lock_identity_changes_total`.
    fn warn_identity_changes(&self, new: &Config) {
        for (name, e) in &self.coordinators {
            let Some(c) = new.coordinator(name) else {
                continue;
            };
            let changes = e.cfg.identity_changes(c);
            if changes.is_empty() {
                continue;
            }
            let held = self
                .admin
                .locks
                .read()
                .ok()
                .and_then(|l| l.get(name).map(|l| l.state.borrow().held))
                .unwrap_or(false);
            metrics::counter!(LOCK_IDENTITY_CHANGES, "lock" => name.clone()).increment(1);
            warn!(lock = %name, held, changes = %changes.join(", "), "reload changes the \
                identity of this lock: this node now contends for another lock than its peer, \
                so both may serve until every node runs the same identity; change it with the \
                lock released on every node (see the README, \"Changing a lock's identity\")");
        }
    }

    /// Fences and releases every lock, then drains open routes until `deadline`.
    async fn stop(mut self, deadline: tokio::time::Instant) {
        let names: Vec<String> = self.coordinators.keys().cloned().collect();
        // All coordinators fence and release at once.
        for name in &names {
            if let Some(e) = self.coordinators.get(name) {
                e.stop.cancel();
            }
        }
        for name in &names {
            self.stop_coordinator(name).await;
        }
        let mut open: Vec<OpenRoute> = std::mem::take(&mut self.open)
            .into_values()
            .map(|e| e.route)
            .collect();
        for r in &mut open {
            r.stop_accepting().await;
        }
        let left: usize = open.iter().map(OpenRoute::connections).sum();
        let grace = deadline.saturating_duration_since(tokio::time::Instant::now());
        info!(
            connections = left,
            grace_ms = grace.as_millis() as u64,
            "open routes closed; draining their connections"
        );
        systemd::status(&format!("draining {left} connections of open routes"));
        let drains: Vec<_> = open
            .into_iter()
            .map(|r| tokio::spawn(r.drain(grace)))
            .collect();
        for d in drains.into_iter().chain(self.draining.drain(..)) {
            let _ = d.await;
        }
        self.admin_stop.cancel();
    }
}
