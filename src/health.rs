//! Health of the local broker: a TCP connect every `interval`, with HAProxy-style rise/fall.
//!
//! The coordinator contends only while the broker is up, so a dead broker behind a live
//! lockgate still fails over.
//!
//! A probe that cannot run for a local reason (this process is out of file descriptors or
//! memory: `EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) says nothing about the broker: it counts
//! neither as a pass nor as a failure, so it never moves the lock. The broker may be fine, and
//! the node's live connections are; giving the lock up would reset every client of this node
//! for a local shortage that a restart or the end of a flood cures, and a node out of
//! descriptors cannot accept new clients but keeps serving the ones it has. It is logged as a
//! local resource error (once per streak) and counted in
//! `lockgate_health_check_local_errors_total`. To make it rare, the probe opens the socket of
//! its next attempt right after each attempt: a descriptor reserved for it, taken while the
//! process still has some.
//!
//! Evidence from the data path (`observe-connects`, HAProxy's `observe layer4`): a gated
//! route whose connect to its upstream is refused or reset raises a [`Suspicion`]. The probe
//! loop then probes at once instead of at its next tick, and while failures mount it probes
//! `fast-interval-ms` apart (HAProxy's `fastinter`) until `fall` failures in a row mark the
//! broker down or one success clears it. The client's failed connect itself never counts as a
//! failure: one flaky connect costs one probe, and the lock moves only when `fall` probes in a
//! row fail. Suspicions coalesce (at most one pending), and none is acted on while the broker
//! already counts as down.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpSocket;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, info_span, warn};

use crate::config::HealthConfig;
use crate::metrics::{
    HEALTH_CHECK_FAILURES, HEALTH_CHECK_LOCAL_ERRORS, HEALTH_CHECK_TRIGGERED, HEALTH_CHECK_UP,
};

/// Consecutive-result counting: up after `rise` successes in a row, down after `fall`
/// failures in a row. Starts down: a broker must prove itself before we contend.
#[derive(Debug, Clone)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    up: bool,
    streak: u32,
}

impl RiseFall {
    pub fn new(rise: u32, fall: u32) -> RiseFall {
        RiseFall {
            rise,
            fall,
            up: false,
            streak: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one probe; returns the new state when it flips.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if ok { self.rise } else { self.fall };
        if self.streak >= needed {
            self.up = ok;
            self.streak = 0;
            Some(ok)
        } else {
            None
        }
    }
}

/// Evidence that the broker may be down: a gated route's connect to its upstream was refused
/// or reset. Raising it asks the probe loop for a probe now; the probes decide.
#[derive(Debug, Clone, Default)]
pub struct Suspicion(Arc<Notify>);

impl Suspicion {
    /// Cheap and coalescing: many failed connects at once ask for one probe.
    pub fn raise(&self) {
        self.0.notify_one();
    }
}

/// Starts probing; the receiver holds `true` while the broker is up. Without a health check
/// the broker always counts as up.
pub fn spawn(
    lock: &str,
    cfg: Option<HealthConfig>,
    suspicion: Suspicion,
    cancel: CancellationToken,
) -> watch::Receiver<bool> {
    let Some(cfg) = cfg else {
        let (tx, rx) = watch::channel(true);
        // Keep the sender alive as long as anyone listens, so `changed()` never errors out.
        tokio::spawn(async move { tx.closed().await });
        return rx;
    };
    let (tx, rx) = watch::channel(false);
    let lock = lock.to_owned();
    let span = info_span!("health", lock = %lock);
    tokio::spawn(
        async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = probe_loop(&lock, &cfg, &suspicion, &tx) => {}
            }
        }
        .instrument(span),
    );
    rx
}

/// What one probe found.
#[derive(Debug)]
enum Probe {
    Up,
    Down(String),
    /// The probe could not run for a local reason; the broker's state is unknown.
    Local(String),
}

/// An error of this process's resources, not of the broker.
fn is_local(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

fn new_socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
}

/// One probe: a TCP connect within `timeout`, on the socket reserved by the previous probe
/// when it fits; then the next probe's socket is reserved.
async fn probe(cfg: &HealthConfig, reserved: &mut Option<(SocketAddr, TcpSocket)>) -> Probe {
    let addr = match tokio::net::lookup_host(&cfg.address).await {
        Ok(mut a) => match a.next() {
            Some(a) => a,
            None => return Probe::Down(format!("{} resolves to no address", cfg.address)),
        },
        Err(e) if is_local(&e) => return Probe::Local(e.to_string()),
        Err(e) => return Probe::Down(e.to_string()),
    };
    let socket = match reserved.take() {
        Some((a, s)) if a.is_ipv4() == addr.is_ipv4() => Ok(s),
        _ => new_socket(addr),
    };
    let result = match socket {
        Err(e) if is_local(&e) => Probe::Local(e.to_string()),
        Err(e) => Probe::Down(e.to_string()),
        Ok(socket) => match tokio::time::timeout(cfg.timeout, socket.connect(addr)).await {
            Ok(Ok(_)) => Probe::Up,
            Ok(Err(e)) if is_local(&e) => Probe::Local(e.to_string()),
            Ok(Err(e)) => Probe::Down(e.to_string()),
            Err(_) => Probe::Down(format!("no answer within {} ms", cfg.timeout.as_millis())),
        },
    };
    // The probe's connection is closed by now: its descriptor becomes the next probe's.
    *reserved = new_socket(addr).ok().map(|s| (addr, s));
    result
}

/// What starts the next probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// The interval's tick.
    Tick,
    /// A failed client connect: probe now.
    Suspected,
    /// A down streak is under way after a suspicion: confirm `fast-interval-ms` later.
    Confirm,
}

/// Whether the probe after this one is a fast confirmation: only while a streak that a
/// suspicion started (or continued) heads down, and the broker still counts as up.
fn confirm_next(started_by: Next, probe_failed: bool, still_up: bool) -> bool {
    started_by != Next::Tick && probe_failed && still_up
}

async fn probe_loop(
    lock: &str,
    cfg: &HealthConfig,
    suspicion: &Suspicion,
    tx: &watch::Sender<bool>,
) {
    let up_gauge = metrics::gauge!(HEALTH_CHECK_UP, "lock" => lock.to_owned());
    let triggered = metrics::counter!(HEALTH_CHECK_TRIGGERED, "lock" => lock.to_owned());
    let failures = metrics::counter!(HEALTH_CHECK_FAILURES, "lock" => lock.to_owned());
    let local_errors = metrics::counter!(HEALTH_CHECK_LOCAL_ERRORS, "lock" => lock.to_owned());
    let mut reserved = None;
    let mut local_streak = false;
    up_gauge.set(0.0);
    info!(address = %cfg.address, rise = cfg.rise, "waiting for the local broker's health check \
        before contending for the lock");
    let mut state = RiseFall::new(cfg.rise, cfg.fall);
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    let mut confirming = false;
    // Suspected probes run at most one per fast interval: a route that keeps failing while the
    // probes pass (a `forward-to` other than the checked address) cannot storm the broker.
    let mut next_suspected = tokio::time::Instant::now();
    loop {
        let next = if confirming {
            tokio::time::sleep(cfg.fast_interval).await;
            Next::Confirm
        } else {
            tokio::select! {
                biased;
                _ = suspicion.0.notified(), if cfg.observe_connects && state.is_up() => {
                    Next::Suspected
                }
                _ = ticker.tick() => Next::Tick,
            }
        };
        if next == Next::Suspected {
            triggered.increment(1);
            tokio::time::sleep_until(next_suspected).await;
            next_suspected = tokio::time::Instant::now() + cfg.fast_interval;
        }
        // Suspicions raised while this probe runs are about the state it is finding out.
        let result = match probe(cfg, &mut reserved).await {
            Probe::Up => Ok(()),
            Probe::Down(e) => Err(e),
            Probe::Local(e) => {
                confirming = false;
                local_errors.increment(1);
                if !local_streak {
                    warn!(address = %cfg.address, error = %e, "health probe could not run: a \
                        local resource error on this node (out of file descriptors or memory), \
                        not a broker failure; it counts neither way and the lock stays where it \
                        is");
                    local_streak = true;
                }
                continue;
            }
        };
        if local_streak {
            info!(address = %cfg.address, "health probes run again");
            local_streak = false;
        }
        if let Err(e) = &result {
            failures.increment(1);
            if last_error.as_deref() != Some(e) {
                warn!(address = %cfg.address, error = %e, "health probe of the local broker \
                    failed");
                last_error = Some(e.clone());
            }
        } else {
            last_error = None;
        }
        let flipped = state.observe(result.is_ok());
        confirming = confirm_next(next, result.is_err(), state.is_up());
        if let Some(up) = flipped {
            up_gauge.set(if up { 1.0 } else { 0.0 });
            if up {
                info!(address = %cfg.address, "local broker is up: contending for the lock");
            } else {
                warn!(
                    address = %cfg.address,
                    fall = cfg.fall,
                    confirmed_fast = (next != Next::Tick),
                    "local broker is down: withdrawing from the lock (a held one is released once \
                    its gate closes)"
                );
            }
            tx.send_replace(up);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Next, RiseFall, confirm_next};

    #[test]
    fn only_a_suspected_down_streak_is_confirmed_fast() {
        // The regular tick never speeds up: a broker nobody talks to is found at the interval.
        assert!(!confirm_next(Next::Tick, true, true));
        assert!(confirm_next(Next::Suspected, true, true));
        assert!(confirm_next(Next::Confirm, true, true));
        // A pass ends the burst: one flaky connect costs one probe.
        assert!(!confirm_next(Next::Suspected, false, true));
        assert!(!confirm_next(Next::Confirm, false, true));
        // Down: nothing left to confirm.
        assert!(!confirm_next(Next::Confirm, true, false));
    }

    #[test]
    fn rise_and_fall_need_streaks() {
        let mut s = RiseFall::new(2, 3);
        assert_eq!(s.observe(true), None);
        assert_eq!(s.observe(false), None); // streak broken
        assert_eq!(s.observe(true), None);
        assert_eq!(s.observe(true), Some(true));
        assert!(s.is_up());
        assert_eq!(s.observe(false), None);
        assert_eq!(s.observe(false), None);
        assert_eq!(s.observe(true), None); // streak broken
        assert_eq!(s.observe(false), None);
        assert_eq!(s.observe(false), None);
        assert_eq!(s.observe(false), Some(false));
        assert!(!s.is_up());
    }

    #[test]
    fn rise_of_one_flips_at_once() {
        let mut s = RiseFall::new(1, 1);
        assert_eq!(s.observe(true), Some(true));
        assert_eq!(s.observe(false), Some(false));
    }
}
