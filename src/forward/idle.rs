//! Inactivity timeouts (HAProxy's `timeout client`, `timeout server`, `timeout tunnel`): when
//! each leg of a connection last moved a byte, and the one timer that fires when a leg (or,
//! with a tunnel timeout, the whole connection) was still for too long.
//!
//! The stamps live in [`Shared`], which the two directions of one connection share (with the
//! flag that says one direction has ended); [`inactive`] is the watch over them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::{ForwardError, Side};

/// Which inactivity timeout ended a connection; also the `reason` label of
/// `lockgate_connections_timed_out_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inactivity {
    Client,
    Server,
    Tunnel,
}

impl Inactivity {
    pub fn reason(self) -> &'static str {
        match self {
            Inactivity::Client => "client_inactive",
            Inactivity::Server => "server_inactive",
            Inactivity::Tunnel => "tunnel_inactive",
        }
    }
}

impl std::fmt::Display for Inactivity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Inactivity::Client => "client leg",
            Inactivity::Server => "server leg",
            Inactivity::Tunnel => "connection",
        })
    }
}

/// Inactivity timeouts, in HAProxy's terms, in milliseconds (a `u32` holds the configured
/// bound of one week, and keeps a connection's future small).
#[derive(Debug, Clone, Copy)]
pub enum Idle {
    /// Each leg on its own: nothing read from or written to the client for `client_ms`, or
    /// the server for `server_ms`.
    Legs { client_ms: u32, server_ms: u32 },
    /// The whole connection: nothing moved either way for this long.
    Tunnel { ms: u32 },
}

impl Idle {
    /// From configured durations; a value past `u32::MAX` ms (not accepted by the config)
    /// saturates.
    pub fn new(client: Duration, server: Duration, tunnel: Option<Duration>) -> Idle {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        match tunnel {
            Some(t) => Idle::Tunnel { ms: ms(t) },
            None => Idle::Legs {
                client_ms: ms(client),
                server_ms: ms(server),
            },
        }
    }
}

/// State the two directions of one connection share: whether one has ended, and when each leg
/// last moved a byte (milliseconds of the coarse monotonic clock, stamped after every read and
/// write, read by the inactivity watch).
pub(super) struct Shared {
    pub(super) one_ended: AtomicBool,
    client: AtomicU64,
    server: AtomicU64,
    /// A direction waits for room on its destination: its source leg is not expected to move
    /// meanwhile, so only the destination's timeout runs (as in HAProxy: the client is not
    /// blamed for a server that does not read).
    pub(super) waiting_on_server: AtomicBool,
    pub(super) waiting_on_client: AtomicBool,
}

/// The coarse monotonic clock in milliseconds: a vDSO read of the last tick, cheap enough to
/// take after every system call of the data path.
fn coarse_ms() -> u64 {
    #[cfg(target_os = "linux")]
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    #[cfg(not(target_os = "linux"))]
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1000)
        .saturating_add(t.tv_nsec as u64 / 1_000_000)
}

impl Shared {
    pub(super) fn new() -> Shared {
        let now = coarse_ms();
        Shared {
            one_ended: AtomicBool::new(false),
            client: AtomicU64::new(now),
            server: AtomicU64::new(now),
            waiting_on_server: AtomicBool::new(false),
            waiting_on_client: AtomicBool::new(false),
        }
    }

    pub(super) fn mark(&self, side: Side) {
        let leg = match side {
            Side::Downstream => &self.client,
            Side::Upstream => &self.server,
        };
        leg.store(coarse_ms(), Ordering::Relaxed);
    }

    /// The next moment an inactivity timeout could fire, and which one.
    fn deadline(&self, idle: Idle) -> (u64, Inactivity, u32) {
        let now = coarse_ms();
        // A leg whose direction waits on the other leg counts as moving now.
        let fresh = |leg: &AtomicU64, excused: &AtomicBool| {
            if excused.load(Ordering::Relaxed) {
                now
            } else {
                leg.load(Ordering::Relaxed)
            }
        };
        let client = fresh(&self.client, &self.waiting_on_server);
        let server = fresh(&self.server, &self.waiting_on_client);
        let at = |last: u64, ms: u32| last.saturating_add(u64::from(ms));
        match idle {
            Idle::Tunnel { ms } => (at(client.max(server), ms), Inactivity::Tunnel, ms),
            Idle::Legs {
                client_ms,
                server_ms,
            } => {
                let (cd, sd) = (at(client, client_ms), at(server, server_ms));
                if cd <= sd {
                    (cd, Inactivity::Client, client_ms)
                } else {
                    (sd, Inactivity::Server, server_ms)
                }
            }
        }
    }
}

/// Resolves when an inactivity timeout fires. One timer, re-armed whenever the connection
/// moved in the meantime. The caller boxes this future, so a connection's own future carries
/// only a pointer to it.
pub(super) async fn inactive(activity: &Shared, idle: Idle) -> ForwardError {
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    loop {
        let (deadline, which, after) = activity.deadline(idle);
        let now = coarse_ms();
        if now >= deadline {
            return ForwardError::Inactive {
                which,
                after: Duration::from_millis(after.into()),
            };
        }
        // The coarse clock lags the timer by up to one tick: wake a little late rather than
        // early.
        let wait = Duration::from_millis(deadline - now + 5);
        timer.as_mut().reset(tokio::time::Instant::now() + wait);
        timer.as_mut().await;
    }
}
