//! One coordinator per `[[lock-coordinator]]`: contends for the lock while the local broker is
//! healthy, opens its gate (binds the gated routes) once it holds the lock, and closes the gate
//! *before* the lock can go to anyone else.
//!
//! Two halves:
//! - [`Machine::next`] (`coordinator/machine.rs`) is the whole decision, pure:
//!   `(phase, event) -> (phase, actions)`, table-tested there and explored exhaustively by
//!   `tests/model.rs`, composed with models of the lock services, for two and three nodes.
//! - [`Coordinator::run`] (this file) is the task that feeds it events (the lock arriving or
//!   going, the broker's health flipping, the check-period tick, the end of a hold-off, the
//!   operator's commands, shutdown) and executes the actions it returns, in order, each to
//!   completion. What it publishes and the commands it takes are in `coordinator/handle.rs`.
//!
//! Never two active: the gate opens only after the lock is taken, and the lock is given back
//! only with a [`gate::Closed`], the proof that the gate's listeners are shut and every
//! connection they carried is gone; a loss detected under us (lease ran out, node deleted,
//! file replaced, storage hung) fences first, then logs.
//!
//! One verb per meaning, here and in the lock backends: *close* the gate (at once, or by a
//! drain); *release* the lock (give it back, only with a [`gate::Closed`]); *lose* it (it went
//! away by itself: lease ran out, node deleted, file replaced); *withdraw* (stop contending,
//! never giving back a lock already held). [`StandbyReason`] says why a node closes and
//! releases.

mod handle;
mod machine;

use handle::record;
pub use handle::{Command, Handle, LockState, Transition};

pub use machine::{
    Action, Actions, BIND_FAILURE_HOLD_OFF_PERIODS, ERROR_HOLD_OFF_PERIODS, Event, HoldOff,
    Machine, Phase, StandbyReason,
};

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use crate::config::CoordinatorConfig;
use crate::gate::{self, Closed, Gate};
use crate::lock::{Lock, LockError, LockEvent};
use crate::metrics::{
    FAILOVER_SECONDS, LOCK_BACKEND_ERRORS, LOCK_BACKEND_UP, LOCK_HELD, LOCK_HELD_SECONDS,
    LOCK_TERM, LOCK_TRANSITIONS,
};
use crate::systemd;

/// The task that drives one [`Machine`].
pub struct Coordinator<G: Gate> {
    cfg: CoordinatorConfig,
    node_id: String,
    /// Declared before `lock`: if the task ever unwinds, the gate's listeners are shut before
    /// the lock is let go.
    gate: G,
    /// `Some` exactly while the gate is closed: the proof `release` needs.
    closed: Option<Closed>,
    lock: Lock,
    /// `true` while the local broker is up.
    health: watch::Receiver<bool>,
    machine: Machine,
    hold_off_until: Option<Instant>,
    /// The last acquisition error logged, so a persisting error is logged once.
    last_error: Option<String>,
    /// Why the lock was lost, logged once the gate is closed (fence first, then log).
    lost: Option<LockError>,
    /// When this node decided to contend (for `lockgate_failover_seconds`).
    contend_since: Option<Instant>,
    /// When the current holding began, and how many whole seconds of it were counted.
    held_since: Option<(Instant, u64)>,
    /// The last standby reason published in this event's handling, if any.
    published: bool,
    /// Leave the lock alone this long at start (a reload handed it to the peer).
    initial_hold_off: Option<Duration>,
    commands: mpsc::Receiver<Command>,
    state: watch::Sender<LockState>,
}

impl<G: Gate> Coordinator<G> {
    pub fn new(
        cfg: CoordinatorConfig,
        node_id: String,
        gate: G,
        health: watch::Receiver<bool>,
    ) -> (Self, Handle) {
        let lock = Lock::new(&cfg);
        let (state, state_rx) = watch::channel(LockState::default());
        let (commands_tx, commands) = mpsc::channel(8);
        let handle = Handle {
            state: state_rx,
            commands: commands_tx,
        };
        let c = Coordinator {
            cfg,
            node_id,
            gate,
            closed: Some(Closed::initially()),
            lock,
            health,
            machine: Machine::new(),
            hold_off_until: None,
            last_error: None,
            lost: None,
            contend_since: None,
            held_since: None,
            published: false,
            initial_hold_off: None,
            commands,
            state,
        };
        (c, handle)
    }

    /// Starts by leaving the lock alone for `d`: a reload that restarted a holding coordinator
    /// handed the lock to the peer, which is already waiting for it, and this node must not
    /// race it back.
    pub fn with_initial_hold_off(mut self, d: Duration) -> Self {
        self.initial_hold_off = Some(d);
        self
    }

    /// Runs until `shutdown`; then closes the gate and releases the lock if held. A drain in
    /// progress when `shutdown` fires is cut short (its connections are reset).
    ///
    /// Runs in a span `lock{lock=<name>}`, which every event of the task (its gate's and its
    /// lock backend's included) carries.
    pub async fn run(self, shutdown: CancellationToken) {
        let span = info_span!("lock", lock = %self.cfg.name);
        self.drive(shutdown).instrument(span).await
    }

    async fn drive(mut self, shutdown: CancellationToken) {
        let name = self.cfg.name.clone();
        info!(
            path = %self.lock.describe(),
            check_period_ms = self.cfg.check_period.as_millis() as u64,
            "lock coordinator started"
        );
        crate::metrics::register_lock(&name, !self.is_file());
        // The locks folder was there when the config was loaded.
        self.file_backend_up(true);
        self.publish_standby("starting");
        let mut health_open = true;
        let mut next_tick = Instant::now() + self.cfg.check_period;
        if let Some(hold_off) = self.initial_hold_off {
            let first = Event::StepDown {
                drain: Duration::ZERO,
                hold_off,
            };
            self.handle(first, None, &shutdown).await;
        }
        let first = Event::Health(*self.health.borrow_and_update());
        self.handle(first, None, &shutdown).await;
        while self.machine.phase != Phase::Stopped {
            let listens = self.machine.listens();
            let holds = self.machine.holds();
            let hold_off = self.hold_off_until;
            let mut reply = None;
            let event = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Event::Shutdown,
                e = self.lock.event(holds), if listens => self.lock_event(e),
                r = self.health.changed(), if health_open => {
                    if r.is_err() {
                        health_open = false;
                        continue;
                    }
                    Event::Health(*self.health.borrow_and_update())
                }
                Some(cmd) = self.commands.recv() => match cmd {
                    Command::StepDown { drain, hold_off, reply: r } => {
                        reply = Some(r);
                        Event::StepDown { drain, hold_off }
                    }
                    Command::Resume { reply: r } => {
                        reply = Some(r);
                        Event::Resume
                    }
                },
                _ = sleep_until_opt(hold_off), if hold_off.is_some() => {
                    self.hold_off_until = None;
                    Event::HoldOffEnded
                }
                _ = tokio::time::sleep_until(next_tick) => {
                    next_tick = Instant::now() + self.cfg.check_period;
                    self.count_held_seconds();
                    Event::Tick
                }
            };
            self.handle(event, reply, &shutdown).await;
        }
        self.lock.settle().await;
        info!("lock coordinator stopped");
    }

    /// Turns a backend report into an event; the error is kept to be logged later.
    fn lock_event(&mut self, e: LockEvent) -> Event {
        match e {
            LockEvent::Acquired(Ok(term)) => Event::Acquired { term },
            LockEvent::Acquired(Err(e)) => {
                self.acquire_error(e);
                Event::AcquireFailed
            }
            LockEvent::Lost(e) => {
                let reason = e.reason();
                self.file_backend_seen(reason);
                self.lost = Some(e);
                Event::Lost { reason }
            }
        }
    }

    /// Runs one event through the machine, and every event its actions cause, executing the
    /// actions in order.
    async fn handle(
        &mut self,
        event: Event,
        reply: Option<oneshot::Sender<String>>,
        shutdown: &CancellationToken,
    ) {
        let answer = match event {
            Event::StepDown { hold_off, .. } => Some(match self.machine.phase {
                Phase::Active { term } => format!(
                    "stepped down from term {term}; not contending for {} ms",
                    hold_off.as_millis()
                ),
                _ => format!(
                    "not holding the lock; not contending for {} ms",
                    hold_off.as_millis()
                ),
            }),
            Event::Resume => Some("contending".to_owned()),
            _ => None,
        };
        let mut pending = VecDeque::from([event]);
        while let Some(event) = pending.pop_front() {
            let before = self.machine;
            let (after, actions) = before.next(event);
            self.machine = after;
            self.published = false;
            debug!(?event, from = ?before.phase, to = ?after.phase, "transition");
            if matches!(event, Event::StepDown { .. }) && before.holds() {
                info!(term = before.term, "stepping down");
            }
            if event == Event::Resume {
                info!("resuming contention");
            }
            for action in actions.iter() {
                if let Some(caused) = self.execute(action, shutdown).await {
                    pending.push_back(caused);
                }
            }
            self.report(before, self.machine);
        }
        if let (Some(reply), Some(answer)) = (reply, answer) {
            let _ = reply.send(answer);
        }
    }

    /// Executes one action; returns the event it caused, if any.
    async fn execute(&mut self, action: Action, shutdown: &CancellationToken) -> Option<Event> {
        match action {
            Action::Contend { last_term } => {
                self.lock.contend(&self.node_id, last_term);
                self.contend_since.get_or_insert_with(Instant::now);
                None
            }
            Action::Withdraw => {
                self.lock.withdraw();
                self.contend_since = None;
                None
            }
            Action::OpenGate { term } => {
                // Already open: nothing to do.
                self.closed.as_ref()?;
                let started = Instant::now();
                let lease = self.lock.lease();
                if !lease.is_valid() {
                    // The acquisition came too late to use (the lease ran out before we got to
                    // it): a gate opened now would accept clients it cannot serve while the
                    // lock may already be elsewhere.
                    self.lost = Some(LockError::LeaseExpired);
                    return Some(Event::Lost {
                        reason: LockError::LeaseExpired.reason(),
                    });
                }
                match self.gate.open(term, lease).await {
                    Ok(()) => {
                        self.closed = None;
                        self.opened(term, started);
                        None
                    }
                    Err(e) => {
                        // `open` left nothing bound; make that the proof.
                        self.closed = Some(gate::close(&mut self.gate, "bind_failed").await);
                        error!(
                            term,
                            error = %e,
                            "cannot open a gated route after acquiring the lock; releasing it so \
                             the peer can serve"
                        );
                        Some(Event::OpenFailed)
                    }
                }
            }
            Action::CloseGate(why) => {
                if self.closed.is_none() {
                    let label = match why {
                        StandbyReason::Lost(_) => "lock_lost",
                        other => other.reason(),
                    };
                    self.closed = Some(gate::close(&mut self.gate, label).await);
                }
                if let StandbyReason::Lost(reason) = why {
                    // Fenced: now say why; giving back what is left may take a while.
                    let error = self.lost.take().map(|e| e.to_string()).unwrap_or_default();
                    warn!(
                        term = self.machine.term,
                        reason,
                        error = %error,
                        "lock lost: gated routes fenced"
                    );
                    self.ended_holding();
                    self.record_transition("standby", reason);
                    self.publish_standby(&format!("lost: {reason}"));
                }
                None
            }
            Action::DrainGate { drain } => {
                if self.closed.is_none() {
                    info!(
                        term = self.machine.term,
                        drain_ms = drain.as_millis() as u64,
                        "draining for a step-down"
                    );
                    let closed = tokio::select! {
                        c = gate::drain(&mut self.gate, drain) => c,
                        _ = shutdown.cancelled() => {
                            info!("shutdown during a step-down drain: resetting what is left");
                            gate::close(&mut self.gate, "shutdown").await
                        }
                    };
                    self.closed = Some(closed);
                }
                None
            }
            Action::ReleaseLock(why) => {
                let closed = match self.closed.take() {
                    Some(c) => c,
                    None => {
                        // Unreachable through `Machine::next`; the lock still waits for the
                        // gate.
                        error!("release asked with the gate open; closing it first");
                        gate::close(&mut self.gate, why.reason()).await
                    }
                };
                self.lock.release(&closed).await;
                self.closed = Some(closed);
                match why {
                    StandbyReason::Lost(_) => {}
                    StandbyReason::Unwanted => {
                        debug!("a lock that arrived unwanted was given back")
                    }
                    why => {
                        info!(
                            term = self.machine.term,
                            reason = why.reason(),
                            "lock released"
                        );
                        self.ended_holding();
                        self.record_transition("standby", why.reason());
                        self.publish_standby(&format!("released: {}", why.reason()));
                    }
                }
                None
            }
            Action::Check => match self.lock.check().await {
                Ok(()) => {
                    self.file_backend_up(true);
                    None
                }
                Err(e) => {
                    let reason = e.reason();
                    self.file_backend_seen(reason);
                    self.lost = Some(e);
                    Some(Event::Lost { reason })
                }
            },
            Action::StartHoldOff(h) => {
                let d = match h {
                    HoldOff::Periods(n) => self.cfg.check_period.saturating_mul(n),
                    HoldOff::For(d) => d,
                };
                self.hold_off_until = Instant::now().checked_add(d);
                None
            }
            Action::CancelHoldOff => {
                self.hold_off_until = None;
                None
            }
        }
    }

    /// The gate opened after acquiring: say so, count it.
    fn opened(&mut self, term: u64, started: Instant) {
        let name = self.cfg.name.clone();
        let open_us = started.elapsed().as_micros() as u64;
        self.last_error = None;
        self.file_backend_up(true);
        info!(
            term,
            reason = "acquired",
            open_us,
            "lock acquired: gated routes are open"
        );
        if let Some(since) = self.contend_since.take() {
            metrics::histogram!(FAILOVER_SECONDS, "lock" => name.clone())
                .record(since.elapsed().as_secs_f64());
        }
        self.held_since = Some((Instant::now(), 0));
        self.record_transition("active", "acquired");
        metrics::gauge!(LOCK_HELD, "lock" => name.clone()).set(1.0);
        metrics::gauge!(LOCK_TERM, "lock" => name.clone()).set(term as f64);
        systemd::status(&format!("lock {name}: active term {term}"));
        self.publish("active", "active".to_owned(), "acquired".to_owned());
    }

    /// Logs a contention error once while it persists, and counts every one.
    fn acquire_error(&mut self, e: LockError) {
        self.file_backend_seen(e.reason());
        let name = &self.cfg.name;
        metrics::counter!(LOCK_BACKEND_ERRORS, "lock" => name.clone(), "reason" => e.reason())
            .increment(1);
        let text = e.to_string();
        if self.last_error.as_ref() != Some(&text) {
            warn!(error = %text, "cannot contend for the lock; retrying every check-period");
            self.last_error = Some(text);
        } else {
            debug!(error = %text, "still cannot contend for the lock");
        }
    }

    /// Publishes the standby reasons no release already published.
    fn report(&mut self, before: Machine, after: Machine) {
        if before.phase == after.phase {
            return;
        }
        match after.phase {
            // Contending again after a loss or a release: said after the reason.
            Phase::Contending => self.publish_standby("contending"),
            _ if self.published => {}
            Phase::Idle => self.publish_standby("broker down"),
            Phase::HoldingOff => self.publish_standby("holding off"),
            Phase::Active { .. } | Phase::Stopped => {}
        }
    }

    fn is_file(&self) -> bool {
        matches!(self.cfg.backend, crate::config::BackendConfig::File { .. })
    }

    /// `lockgate_lock_backend_up` of a file lock (ZooKeeper's session task sets its own).
    fn file_backend_up(&self, up: bool) {
        if self.is_file() {
            metrics::gauge!(LOCK_BACKEND_UP, "lock" => self.cfg.name.clone()).set(if up {
                1.0
            } else {
                0.0
            });
        }
    }

    /// A file lock's storage is down after an I/O error, an I/O timeout or a missing folder.
    fn file_backend_seen(&self, reason: &str) {
        if matches!(reason, "io_error" | "io_timeout" | "folder_missing") {
            self.file_backend_up(false);
        }
    }

    fn ended_holding(&mut self) {
        self.count_held_seconds();
        self.held_since = None;
    }

    fn record_transition(&self, to: &'static str, reason: &'static str) {
        let lock = self.cfg.name.clone();
        metrics::counter!(LOCK_TRANSITIONS, "lock" => lock, "to" => to, "reason" => reason)
            .increment(1);
    }

    fn publish_standby(&mut self, why: &str) {
        self.published = true;
        metrics::gauge!(LOCK_HELD, "lock" => self.cfg.name.clone()).set(0.0);
        systemd::status(&format!("lock {}: standby ({why})", self.cfg.name));
        self.publish("standby", format!("standby ({why})"), why.to_owned());
    }

    /// Updates the state the admin endpoint shows.
    fn publish(&self, to: &'static str, state: String, reason: String) {
        let now = crate::lock::unix_ms_now();
        let (held, term) = (self.machine.holds(), self.machine.term);
        self.state.send_modify(|s| {
            if s.state != state {
                s.since_unix_ms = now;
            }
            s.held = held;
            s.term = term;
            s.state = state;
            record(&mut s.transitions, to, reason, term, now);
        });
    }

    /// Adds the whole seconds held since the last count to `lockgate_lock_held_seconds_total`.
    fn count_held_seconds(&mut self) {
        if let Some((since, counted)) = self.held_since.as_mut() {
            let whole = since.elapsed().as_secs();
            if whole > *counted {
                metrics::counter!(LOCK_HELD_SECONDS, "lock" => self.cfg.name.clone())
                    .increment(whole - *counted);
                *counted = whole;
            }
        }
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
