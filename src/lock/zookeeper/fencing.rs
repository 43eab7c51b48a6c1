//! The fencing arithmetic of a ZooKeeper lock: from the session timeout S, the connection
//! timeout C the client really uses, and `session-percent`, when a holder cut off from the
//! ensemble must stop (F) and what margin that leaves before the server can give the lock
//! away. The session task fences by it; config validation refuses a configuration with no
//! safe F; `lockgate check` prints it.

use std::time::Duration;

use crate::config::ZkConfig;

/// Scheduling slack added to one client tick in the required fencing margin.
pub const ZK_SCHEDULING_SLACK: Duration = Duration::from_millis(200);

/// The fencing arithmetic of a ZooKeeper lock, for a given session timeout S.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fencing {
    pub session: Duration,
    /// The connection timeout the client really uses: zookeeper-client ignores a configured
    /// value above 3/5 of S and uses 2/5 of S instead.
    pub connection: Duration,
    /// Whether the configured connection timeout was ignored that way.
    pub connection_ignored: bool,
    /// F: how long after losing contact the holder fences.
    pub fence_after: Duration,
    /// S − C − F: what is left between our fence and the server giving the lock away.
    pub margin: Duration,
    /// One client tick (C/8) plus scheduling slack: the least margin we accept.
    pub required_margin: Duration,
}

impl ZkConfig {
    /// The arithmetic for session timeout `session` (the configured one at load time, the
    /// negotiated one at run time). F is capped so the margin stays at least the required one.
    pub fn fencing(&self, session: Duration) -> Fencing {
        let connection_ignored = self.connection > scale(session, 3, 5);
        let connection = if connection_ignored {
            scale(session, 2, 5)
        } else {
            self.connection
        };
        let required_margin = (connection / 8).saturating_add(ZK_SCHEDULING_SLACK);
        let cap = session
            .saturating_sub(connection)
            .saturating_sub(required_margin);
        let fence_after = self.wanted_fence_after(session).min(cap);
        Fencing {
            session,
            connection,
            connection_ignored,
            fence_after,
            margin: session
                .saturating_sub(connection)
                .saturating_sub(fence_after),
            required_margin,
        }
    }

    /// F as `session-percent` asks it, before the cap: S × session-percent / 100.
    pub fn wanted_fence_after(&self, session: Duration) -> Duration {
        scale(session, self.session_percent.into(), 100)
    }
}

impl Fencing {
    /// A usable configuration leaves a positive F and the required margin.
    pub fn is_safe(&self) -> bool {
        !self.fence_after.is_zero() && self.margin >= self.required_margin
    }
}

/// `d × num / den` without overflow (saturating at `Duration::MAX`); `den` must be nonzero.
fn scale(d: Duration, num: u64, den: u64) -> Duration {
    let nanos = d.as_nanos().saturating_mul(u128::from(num)) / u128::from(den.max(1));
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    // The remainder is below 10^9: it fits.
    let sub = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    if secs == u64::MAX {
        Duration::MAX
    } else {
        Duration::new(secs, sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zookeeper_fencing_arithmetic() {
        let z = ZkConfig {
            connect_string: "127.0.0.1:2181".into(),
            namespace: "ns".into(),
            session: Duration::from_millis(18_000),
            session_percent: 33,
            connection: Duration::from_millis(8_000),
            retries: 1,
            retries_wait: Duration::from_millis(1000),
        };
        // Artemis's defaults: F = 5940, margin = 18000 - 8000 - 5940.
        let f = z.fencing(z.session);
        assert_eq!(f.fence_after, Duration::from_millis(5940));
        assert_eq!(f.margin, Duration::from_millis(4060));
        assert!(f.is_safe());
        // The crate ignores C above 3/5 S and uses 2/5 S.
        let f = ZkConfig {
            connection: Duration::from_millis(12_000),
            ..z.clone()
        }
        .fencing(z.session);
        assert!(f.connection_ignored);
        assert_eq!(f.connection, Duration::from_millis(7200));
        // A large percent is capped so the margin stays.
        let f = ZkConfig {
            session_percent: 90,
            ..z.clone()
        }
        .fencing(z.session);
        assert_eq!(f.margin, f.required_margin);
        assert!(f.is_safe());
        // No room at all: unsafe.
        let f = ZkConfig {
            session: Duration::from_millis(500),
            connection: Duration::from_millis(300),
            ..z
        }
        .fencing(Duration::from_millis(500));
        assert!(!f.is_safe());
    }
}
