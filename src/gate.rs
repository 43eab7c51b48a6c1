//! The gate of a lock: the routes it opens while the lock is held, and the proof that they are
//! closed.
//!
//! A lock may be given back only while its gate is closed. [`Closed`] is that proof: it can
//! be made only here, by [`close`] or [`drain`] after the gate's listeners are shut and every
//! connection they carried is gone (or by `Closed::initially` for a gate that was never
//! opened), and the lock backends' `release` takes it. "Give the lock back, then close the
//! gate" does not compile.

use std::future::Future;
use std::time::Duration;

use crate::lease::Lease;

/// The routes a lock gates, seen from the coordinator.
pub trait Gate: Send {
    /// Binds every gated route in order; their connections forward only while `lease` is
    /// valid. On error nothing stays bound; the message says which route failed and why, in
    /// plain words.
    fn open(&mut self, term: u64, lease: Lease) -> impl Future<Output = Result<(), String>> + Send;
    /// Closes every listener (reverse order) and resets every connection they carried;
    /// returns only when none is left. `reason` labels the killed connections. Idempotent.
    fn close(&mut self, reason: &'static str) -> impl Future<Output = ()> + Send;
    /// A planned switchover: closes every listener, lets connections finish for up to
    /// `drain`, then resets the rest; returns only when none is left.
    fn close_draining(&mut self, drain: Duration) -> impl Future<Output = ()> + Send;
}

/// Proof that a gate is closed: no listener bound, no connection left.
#[derive(Debug)]
pub struct Closed(());

impl Closed {
    /// A gate that has not been opened yet.
    pub(crate) fn initially() -> Closed {
        Closed(())
    }
}

/// Closes the gate at once (listeners, then a reset of every connection) and awaits it.
pub async fn close<G: Gate>(gate: &mut G, reason: &'static str) -> Closed {
    gate.close(reason).await;
    Closed(())
}

/// Closes the listeners, drains connections for up to `drain`, resets the rest, and awaits
/// it.
pub async fn drain<G: Gate>(gate: &mut G, drain: Duration) -> Closed {
    gate.close_draining(drain).await;
    Closed(())
}
