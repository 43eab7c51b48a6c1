//! A lease: until when this node may forward bytes on its gated routes without having
//! confirmed its lock again.
//!
//! The data path checks it before every write, so a process that was frozen (SIGSTOP, a paused
//! VM) past its lease forwards nothing when it wakes, even before its coordinator runs. The
//! ZooKeeper backend extends it on every confirmed contact with the server; the file lock
//! cannot be lost by freezing, so its lease is unlimited.
//!
//! Time is `CLOCK_BOOTTIME`, which keeps counting while the process is stopped and while the
//! machine sleeps, as the ZooKeeper server's session clock does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const FOREVER: u64 = u64::MAX;

/// Shared between a coordinator, its lock backend and every connection of its gated routes.
#[derive(Clone, Debug)]
pub struct Lease(Arc<AtomicU64>);

impl Lease {
    /// Never expires (open routes, the file lock).
    pub fn unlimited() -> Lease {
        Lease(Arc::new(AtomicU64::new(FOREVER)))
    }

    /// Already expired until extended.
    pub fn revoked() -> Lease {
        Lease(Arc::new(AtomicU64::new(0)))
    }

    /// True while forwarding is allowed. One atomic load when unlimited.
    pub fn is_valid(&self) -> bool {
        let until = self.0.load(Ordering::Acquire);
        until == FOREVER || now_ns() < until
    }

    /// Valid until `now + d` (replacing any earlier deadline).
    pub fn set_for(&self, from_ns: u64, d: Duration) {
        let until = from_ns.saturating_add(d.as_nanos() as u64);
        self.0.store(until.min(FOREVER - 1), Ordering::Release);
    }

    /// Shortens the lease to at most `from_ns + d`.
    pub fn cap(&self, from_ns: u64, d: Duration) {
        let until = from_ns.saturating_add(d.as_nanos() as u64);
        self.0.fetch_min(until, Ordering::AcqRel);
    }

    pub fn revoke(&self) {
        self.0.store(0, Ordering::Release);
    }

    /// Time left, `None` when unlimited.
    pub fn remaining(&self) -> Option<Duration> {
        let until = self.0.load(Ordering::Acquire);
        if until == FOREVER {
            return None;
        }
        Some(Duration::from_nanos(until.saturating_sub(now_ns())))
    }
}

/// Nanoseconds of `CLOCK_BOOTTIME`.
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_expires_and_caps() {
        assert!(Lease::unlimited().is_valid());
        assert!(!Lease::revoked().is_valid());
        let l = Lease::revoked();
        l.set_for(now_ns(), Duration::from_secs(60));
        assert!(l.is_valid());
        l.cap(now_ns(), Duration::ZERO);
        assert!(!l.is_valid());
        l.set_for(now_ns(), Duration::from_secs(60));
        l.cap(now_ns(), Duration::from_secs(3600));
        assert!(l.remaining().is_some_and(|r| r <= Duration::from_secs(60)));
        l.revoke();
        assert!(!l.is_valid());
    }
}
