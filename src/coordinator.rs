//! One coordinator per `[[lock-coordinator]]`: contends for the lock while the local broker is
//! healthy, opens its gate (binds the gated routes) once it holds the lock, and closes the gate
//! *before* the lock can go to anyone else.
//!
//! The decision is the pure [`plan`]; [`Coordinator::run`] drives it from four events: the
//! lock arriving (the backend waits on it, so takeover does not wait for a tick), a flip of
//! the broker's health (rise ⇒ contend now, fall ⇒ release now), the check-period tick (the
//! holder's liveness check, and retries after errors), and shutdown.
//!
//! Never two active: the gate opens only after the lock is taken, and every path that gives
//! the lock up (health, bind failure, shutdown) closes the gate first and awaits it; a loss
//! detected under us (file replaced, storage hung) fences at once.

use std::future::Future;

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::CoordinatorConfig;
use crate::lease::Lease;
use crate::lock::{Lock, LockError, LockEvent};
use crate::metrics as m;
use crate::systemd;

/// The routes a lock gates, seen from the coordinator.
pub trait Gate: Send {
    /// Binds every gated route in order; their connections forward only while `lease` is
    /// valid. On error nothing stays bound; the message says which route failed and why, in
    /// plain words.
    fn open(&mut self, term: u64, lease: Lease) -> impl Future<Output = Result<(), String>> + Send;
    /// Closes every listener (reverse order) and resets every connection they carried;
    /// returns only when none is left. `reason` labels the killed connections.
    fn close(&mut self, reason: &'static str) -> impl Future<Output = ()> + Send;
    /// A planned switchover: closes every listener, lets connections finish for up to
    /// `drain`, then resets the rest; returns only when none is left.
    fn drain_close(&mut self, drain: Duration) -> impl Future<Output = ()> + Send;
}

/// What the admin endpoint asks of a coordinator.
#[derive(Debug)]
pub enum Command {
    /// Planned switchover: drain, release, and leave the lock alone for `hold_off`.
    StepDown {
        drain: Duration,
        hold_off: Duration,
        reply: oneshot::Sender<String>,
    },
    /// Contend again now (ends a hold-off).
    Resume { reply: oneshot::Sender<String> },
}

/// A coordinator's state as the admin endpoint shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LockState {
    pub held: bool,
    pub term: u64,
    /// "active", or "standby (why)".
    pub state: String,
    /// Unix milliseconds of the last transition.
    pub since_unix_ms: u64,
    /// The most recent transitions, newest last.
    pub transitions: VecDeque<Transition>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    pub to: &'static str,
    pub reason: String,
    pub term: u64,
    pub at_unix_ms: u64,
}

/// How many transitions `LockState` keeps.
const TRANSITIONS_KEPT: usize = 16;

/// The handles the rest of the process keeps on a running coordinator.
pub struct Handle {
    pub state: watch::Receiver<LockState>,
    pub commands: mpsc::Sender<Command>,
}

/// Why a held lock is given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The local broker failed its health check.
    Health,
    /// A gated route could not bind; the peer should serve instead.
    BindFailed,
    /// lockgate is stopping.
    Shutdown,
    /// An operator asked for a planned switchover.
    StepDown,
}

impl Release {
    pub fn reason(self) -> &'static str {
        match self {
            Release::Health => "health",
            Release::BindFailed => "bind_failed",
            Release::Shutdown => "shutdown",
            Release::StepDown => "step_down",
        }
    }
}

/// What to do at a wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Wait for the lock (idempotent).
    Contend,
    /// Stop waiting for the lock.
    Withdraw,
    /// Confirm we still hold the lock.
    Check,
    Release(Release),
}

/// The coordinator's decision, from what it knows. `holding_off`: a recent bind failure or
/// backend error asks us to leave the lock alone for a while.
pub fn plan(held: bool, healthy: bool, holding_off: bool) -> Plan {
    match (held, healthy) {
        (true, true) => Plan::Check,
        (true, false) => Plan::Release(Release::Health),
        (false, true) if !holding_off => Plan::Contend,
        (false, _) => Plan::Withdraw,
    }
}

/// After a bind failure, how many check-periods to leave the lock to the peer (which tries
/// once per period, so it gets a turn).
const BIND_FAILURE_HOLD_OFF_PERIODS: u32 = 2;

pub struct Coordinator<G: Gate> {
    cfg: CoordinatorConfig,
    node_id: String,
    /// Declared before `lock`: if the task ever unwinds, the gate's listeners are shut before
    /// the lock is let go.
    gate: G,
    lock: Lock,
    /// `true` while the local broker is up.
    health: watch::Receiver<bool>,
    /// The term of the current or last holding; grows on every acquisition.
    term: u64,
    held: bool,
    /// Waiting for the lock: the backend's `acquired()` may fire.
    contending: bool,
    hold_off_until: Option<Instant>,
    /// The last acquisition error logged, so a persisting error is logged once.
    last_error: Option<String>,
    /// When this node decided to contend (for `lockgate_failover_seconds`).
    contend_since: Option<Instant>,
    /// When the current holding began, and how many whole seconds of it were counted.
    held_since: Option<(Instant, u64)>,
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
            lock,
            health,
            term: 0,
            held: false,
            contending: false,
            hold_off_until: None,
            last_error: None,
            contend_since: None,
            held_since: None,
            commands,
            state,
        };
        (c, handle)
    }

    /// Runs until `shutdown`; then closes the gate and releases the lock if held.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let name = self.cfg.name.clone();
        info!(lock = %name, path = %self.lock.describe(), check_period_ms = self.cfg.check_period.as_millis() as u64, "lock coordinator started");
        self.publish_standby("starting");
        let mut health_open = true;
        let mut next = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                e = self.lock.event(self.held), if self.contending || self.held => match e {
                    LockEvent::Acquired(r) => self.on_acquired(r).await,
                    LockEvent::Lost(e) => self.lost(e).await,
                },
                r = self.health.changed(), if health_open => {
                    if r.is_err() {
                        health_open = false;
                    }
                }
                Some(cmd) = self.commands.recv() => self.command(cmd).await,
                _ = tokio::time::sleep_until(next) => {}
            }
            let now = Instant::now();
            let ticked = now >= next;
            self.step(ticked).await;
            if ticked {
                self.count_held_seconds();
            }
            if ticked {
                next = now + self.cfg.check_period;
            }
            if let Some(t) = self.hold_off_until.filter(|t| *t > now) {
                next = next.min(t);
            }
        }
        self.lock.withdraw();
        self.contending = false;
        if self.held {
            self.give_up(Release::Shutdown).await;
        }
        info!(lock = %name, "lock coordinator stopped");
    }

    /// Acts on the plan. The liveness check runs only on ticks; everything else at once.
    async fn step(&mut self, ticked: bool) {
        let healthy = *self.health.borrow_and_update();
        let now = Instant::now();
        let holding_off = self.hold_off_until.is_some_and(|t| now < t);
        match plan(self.held, healthy, holding_off) {
            Plan::Contend => {
                self.lock.contend(&self.node_id, self.term);
                if !self.contending {
                    self.contending = true;
                    self.contend_since.get_or_insert(now);
                    self.publish_standby("contending");
                }
            }
            Plan::Withdraw => {
                if self.contending {
                    self.lock.withdraw();
                    self.contending = false;
                    self.contend_since = None;
                    self.publish_standby(if healthy {
                        "holding off"
                    } else {
                        "broker down"
                    });
                }
            }
            Plan::Check if ticked => {
                if let Err(e) = self.lock.check().await {
                    self.lost(e).await;
                }
            }
            Plan::Check => {}
            Plan::Release(why) => self.give_up(why).await,
        }
    }

    async fn on_acquired(&mut self, result: Result<u64, LockError>) {
        let name = self.cfg.name.clone();
        self.contending = false;
        match result {
            Ok(term) => {
                self.term = term;
                self.held = true;
                self.last_error = None;
                let started = Instant::now();
                let lease = self.lock.lease();
                match self.gate.open(term, lease).await {
                    Ok(()) => {
                        let open_us = started.elapsed().as_micros() as u64;
                        info!(lock = %name, term, reason = "acquired", open_us, "lock acquired: gated routes are open");
                        if let Some(since) = self.contend_since.take() {
                            metrics::histogram!(m::FAILOVER_SECONDS, "lock" => name.clone())
                                .record(since.elapsed().as_secs_f64());
                        }
                        self.held_since = Some((Instant::now(), 0));
                        self.record_transition("active", "acquired");
                        metrics::gauge!(m::LOCK_HELD, "lock" => name.clone()).set(1.0);
                        metrics::gauge!(m::LOCK_TERM, "lock" => name.clone()).set(term as f64);
                        systemd::status(&format!("lock {name}: active term {term}"));
                        self.publish("active", "active".to_owned(), "acquired".to_owned());
                    }
                    Err(e) => {
                        error!(lock = %name, term, error = %e, "cannot open a gated route after acquiring the lock; releasing it so the peer can serve");
                        self.give_up(Release::BindFailed).await;
                        self.hold_off_until = Some(
                            Instant::now() + self.cfg.check_period * BIND_FAILURE_HOLD_OFF_PERIODS,
                        );
                    }
                }
            }
            Err(e) => {
                metrics::counter!(m::LOCK_BACKEND_ERRORS, "lock" => name.clone(), "reason" => e.reason()).increment(1);
                let text = e.to_string();
                if self.last_error.as_ref() != Some(&text) {
                    warn!(lock = %name, error = %text, "cannot contend for the lock; retrying every check-period");
                    self.last_error = Some(text);
                } else {
                    debug!(lock = %name, error = %text, "still cannot contend for the lock");
                }
                self.hold_off_until = Some(Instant::now() + self.cfg.check_period);
            }
        }
    }

    /// The lock went away under us: fence at once, then drop what is left of it.
    async fn lost(&mut self, e: LockError) {
        let name = self.cfg.name.clone();
        warn!(lock = %name, term = self.term, reason = e.reason(), error = %e, "lock lost: fencing gated routes");
        self.gate.close("lock_lost").await;
        self.held = false;
        self.count_held_seconds();
        self.held_since = None;
        // Fenced: say so now; giving back what is left of the lock may take a while.
        self.record_transition("standby", e.reason());
        self.publish_standby(&format!("lost: {}", e.reason()));
        self.lock.release().await;
    }

    /// Gives the lock back: gate closed first, then the lock.
    async fn give_up(&mut self, why: Release) {
        self.gate.close(why.reason()).await;
        self.released(why).await;
    }

    /// After the gate is closed: release the lock and say so.
    async fn released(&mut self, why: Release) {
        let name = self.cfg.name.clone();
        self.lock.release().await;
        self.held = false;
        self.count_held_seconds();
        self.held_since = None;
        info!(lock = %name, term = self.term, reason = why.reason(), "lock released");
        self.record_transition("standby", why.reason());
        self.publish_standby(&format!("released: {}", why.reason()));
    }

    fn record_transition(&self, to: &'static str, reason: &'static str) {
        metrics::counter!(m::LOCK_TRANSITIONS, "lock" => self.cfg.name.clone(), "to" => to, "reason" => reason)
            .increment(1);
    }

    fn publish_standby(&self, why: &str) {
        metrics::gauge!(m::LOCK_HELD, "lock" => self.cfg.name.clone()).set(0.0);
        systemd::status(&format!("lock {}: standby ({why})", self.cfg.name));
        self.publish("standby", format!("standby ({why})"), why.to_owned());
    }

    /// Updates the state the admin endpoint shows.
    fn publish(&self, to: &'static str, state: String, reason: String) {
        let now = crate::lock::unix_ms_now();
        let (held, term) = (self.held, self.term);
        self.state.send_modify(|s| {
            if s.state != state {
                s.since_unix_ms = now;
            }
            s.held = held;
            s.term = term;
            s.state = state;
            s.transitions.push_back(Transition {
                to,
                reason,
                term,
                at_unix_ms: now,
            });
            while s.transitions.len() > TRANSITIONS_KEPT {
                s.transitions.pop_front();
            }
        });
    }

    /// Adds the whole seconds held since the last count to `lockgate_lock_held_seconds_total`.
    fn count_held_seconds(&mut self) {
        if let Some((since, counted)) = self.held_since.as_mut() {
            let whole = since.elapsed().as_secs();
            if whole > *counted {
                metrics::counter!(m::LOCK_HELD_SECONDS, "lock" => self.cfg.name.clone())
                    .increment(whole - *counted);
                *counted = whole;
            }
        }
    }

    async fn command(&mut self, cmd: Command) {
        let name = self.cfg.name.clone();
        match cmd {
            Command::StepDown {
                drain,
                hold_off,
                reply,
            } => {
                self.hold_off_until = Some(Instant::now() + hold_off);
                let answer = if self.held {
                    info!(lock = %name, term = self.term, drain_ms = drain.as_millis() as u64, hold_off_ms = hold_off.as_millis() as u64, "stepping down");
                    self.gate.drain_close(drain).await;
                    self.released(Release::StepDown).await;
                    format!(
                        "stepped down from term {}; not contending for {} ms",
                        self.term,
                        hold_off.as_millis()
                    )
                } else {
                    format!(
                        "not holding the lock; not contending for {} ms",
                        hold_off.as_millis()
                    )
                };
                if self.contending {
                    self.lock.withdraw();
                    self.contending = false;
                    self.contend_since = None;
                    self.publish_standby("holding off");
                }
                let _ = reply.send(answer);
            }
            Command::Resume { reply } => {
                self.hold_off_until = None;
                info!(lock = %name, "resuming contention");
                let _ = reply.send("contending".to_owned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_table() {
        // held, healthy, holding_off => plan
        let table = [
            (false, false, false, Plan::Withdraw),
            (false, false, true, Plan::Withdraw),
            (false, true, false, Plan::Contend),
            (false, true, true, Plan::Withdraw),
            (true, true, false, Plan::Check),
            (true, true, true, Plan::Check),
            (true, false, false, Plan::Release(Release::Health)),
            (true, false, true, Plan::Release(Release::Health)),
        ];
        for (held, healthy, off, want) in table {
            assert_eq!(
                plan(held, healthy, off),
                want,
                "held={held} healthy={healthy} off={off}"
            );
        }
    }
}
