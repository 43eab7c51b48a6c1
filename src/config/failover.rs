//! The failover arithmetic of one lock-coordinator, as `lockgate check` prints it: worst-case
//! times ([`FailoverBounds`]) and the same in words ([`CoordinatorConfig::explain_failover`]).

use std::time::Duration;

use super::{BackendConfig, CoordinatorConfig, ZkConfig};

/// Worst-case times of one coordinator, as `lockgate check` prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverBounds {
    /// The holder's process dies. File: the kernel frees the flock and a standby blocked on it
    /// takes it at once (zero here; milliseconds in practice). ZooKeeper: the server gives the
    /// lock away when the session expires, S after the holder's last contact.
    pub holder_dies: Duration,
    /// The holder shuts down cleanly (SIGTERM): it releases at once (deletes its node), so the
    /// standby takes over at once.
    pub holder_stops: Duration,
    /// The holder's broker dies: `fall` failed probes (each up to `timeout`, one per
    /// `interval`), then the holder releases and the waiting standby takes over at once.
    pub broker_dies: Option<Duration>,
    /// The lock is lost under the holder: it stops serving within this. File (file replaced,
    /// storage hung): its next check plus that check's I/O bound. ZooKeeper (partition,
    /// ensemble down, frozen process): F after its last confirmed contact.
    pub fence_within: Duration,
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

impl CoordinatorConfig {
    pub fn failover_bounds(&self) -> FailoverBounds {
        let p = self.check_period;
        let (holder_dies, fence_within) = match &self.backend {
            BackendConfig::File { .. } => (Duration::ZERO, p.saturating_add(self.io_timeout())),
            BackendConfig::ZooKeeper(z) => (z.session, z.fencing(z.session).fence_after),
        };
        FailoverBounds {
            holder_dies,
            holder_stops: Duration::ZERO,
            broker_dies: self.health.as_ref().map(|h| {
                h.interval
                    .checked_mul(h.fall)
                    .and_then(|d| d.checked_add(h.timeout))
                    .unwrap_or(Duration::MAX)
            }),
            fence_within,
        }
    }

    /// The failover arithmetic in words, one line each, for `lockgate check`.
    pub fn explain_failover(&self) -> Vec<String> {
        let b = self.failover_bounds();
        let mut lines = match &self.backend {
            BackendConfig::File { .. } => self.file_lines(&b),
            BackendConfig::ZooKeeper(z) => zookeeper_lines(z, &b),
        };
        lines.extend(self.health_lines(&b));
        lines
    }

    fn file_lines(&self, b: &FailoverBounds) -> Vec<String> {
        let (within, period, io) = (
            ms(b.fence_within),
            ms(self.check_period),
            ms(self.io_timeout()),
        );
        vec![
            "holder process dies or shuts down: the kernel frees its flock and the standby, \
             blocked on the lock, takes it at once (milliseconds; check-period does not matter)"
                .to_owned(),
            format!(
                "lock lost under the holder (file replaced or removed, storage hung): the holder \
                 fences within {within} ms (check-period {period} ms + I/O bound {io} ms)"
            ),
            "holder frozen (SIGSTOP, VM pause): it keeps its flock, so no failover until it \
             resumes or dies"
                .to_owned(),
        ]
    }

    fn health_lines(&self, b: &FailoverBounds) -> Vec<String> {
        let mut lines = Vec::new();
        if let (Some(h), Some(t)) = (&self.health, b.broker_dies) {
            lines.push(format!(
                "holder's broker dies: the holder releases within {} ms (fall {} x interval {} ms \
                 + timeout {} ms) and the standby takes over at once",
                ms(t),
                h.fall,
                ms(h.interval),
                ms(h.timeout)
            ));
        }
        match &self.health {
            Some(h) if h.observe_connects => {
                let more = h.fall.saturating_sub(1);
                let within = h.fast_interval.checked_mul(more).unwrap_or(Duration::MAX);
                lines.push(format!(
                    "holder's broker dies while clients connect: a refused or reset connect to the \
                     upstream starts a probe at once and up to {more} more {} ms apart; {} failed \
                     probes in a row release within about {} ms plus the probes' connect times \
                     (the probes decide, not the client's connect)",
                    ms(h.fast_interval),
                    h.fall,
                    ms(within)
                ));
            }
            Some(_) => {}
            None => lines.push(
                "holder's broker dies: no health check, so no failover (add \
                 [lock-coordinator.health-check])"
                    .to_owned(),
            ),
        }
        lines
    }
}

fn zookeeper_lines(z: &ZkConfig, b: &FailoverBounds) -> Vec<String> {
    let f = z.fencing(z.session);
    let ignored = if f.connection_ignored {
        format!(
            " (connection-ms {} is above 3/5 of S, which zookeeper-client ignores: it uses 2/5 \
             of S)",
            ms(z.connection)
        )
    } else {
        String::new()
    };
    let capped = if f.fence_after < z.wanted_fence_after(z.session) {
        ", capped by the margin"
    } else {
        ""
    };
    let (fence, margin) = (ms(f.fence_after), ms(f.margin));
    let renew_every = ms((f.fence_after / 4).max(Duration::from_millis(10)));
    vec![
        format!(
            "session S = {} ms, connection timeout C = {} ms{ignored}, fence after F = {fence} ms \
             (session-percent {} %{capped}), margin S - C - F = {margin} ms (at least {} ms \
             needed)",
            ms(f.session),
            ms(f.connection),
            z.session_percent,
            ms(f.required_margin)
        ),
        format!(
            "holder process dies: the server expires its session, then the standby takes over: \
             within {} ms (S, plus up to one server tick)",
            ms(b.holder_dies)
        ),
        "holder shuts down (SIGTERM): it deletes its node and the standby takes over at once"
            .to_owned(),
        format!(
            "holder cut off from ZooKeeper (partition, ensemble down, frozen process): it fences \
             within {fence} ms (F) of its last confirmed contact, {margin} ms before the server \
             can give the lock away"
        ),
        format!(
            "rule: a renewal counts only if the quorum committed it (a versioned write of the \
             holder's own node every {renew_every} ms, F/4; a read, even after sync, may be \
             answered by a follower or a leader cut from the quorum); the lease runs F from when \
             that write was sent, and F <= S - C - margin"
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{Config, HealthConfig};
    use super::*;

    #[test]
    fn failover_arithmetic() {
        let text = "[[lock-coordinator]]\nname = \"l\"\ntype = \"file\"\nlock-id = \"x\"\n\
                    locks-folder = \"/tmp\"\n\n[[route]]\nname = \"r\"\n\
                    listen = \"127.0.0.1:1\"\nforward-to = \"127.0.0.1:2\"\n";
        let mut c = Config::from_str(text, Path::new("/tmp/t.toml"))
            .unwrap()
            .coordinators
            .remove(0);
        c.check_period = Duration::from_millis(1000);
        c.health = Some(HealthConfig {
            address: "127.0.0.1:1".into(),
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(250),
            rise: 2,
            fall: 2,
            observe_connects: true,
            fast_interval: Duration::from_millis(10),
        });
        let b = c.failover_bounds();
        assert_eq!(b.holder_dies, Duration::ZERO);
        assert_eq!(b.broker_dies, Some(Duration::from_millis(1250)));
        assert_eq!(b.fence_within, Duration::from_millis(2000));
    }
}
