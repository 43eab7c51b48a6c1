//! What the rest of the process holds of a running coordinator ([`Handle`]): the state it
//! publishes for the admin endpoint and `lockgate status` ([`LockState`], with its recent
//! [`Transition`]s), and the operator's commands it takes ([`Command`]).

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

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

/// One transition, or a run of identical ones in a row (same target, reason and term):
/// `count` of them, the first `at_unix_ms`, the last `last_at_unix_ms`.
#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    pub to: &'static str,
    pub reason: String,
    pub term: u64,
    pub at_unix_ms: u64,
    pub count: u64,
    pub last_at_unix_ms: u64,
}

/// How many transitions `LockState` keeps.
const TRANSITIONS_KEPT: usize = 16;

/// The handles the rest of the process keeps on a running coordinator.
pub struct Handle {
    /// Closed (the sender dropped) once the coordinator's task has ended, however it ended.
    pub state: watch::Receiver<LockState>,
    pub commands: mpsc::Sender<Command>,
}

/// Appends a transition to the history (at most [`TRANSITIONS_KEPT`]). A repeat of the last
/// one (ZooKeeper down: "contending" again and again) is counted, not kept again, so the
/// history still shows what came before.
pub(super) fn record(
    history: &mut VecDeque<Transition>,
    to: &'static str,
    reason: String,
    term: u64,
    now: u64,
) {
    match history.back_mut() {
        Some(t) if t.to == to && t.reason == reason && t.term == term => {
            t.count = t.count.saturating_add(1);
            t.last_at_unix_ms = now;
        }
        _ => history.push_back(Transition {
            to,
            reason,
            term,
            at_unix_ms: now,
            count: 1,
            last_at_unix_ms: now,
        }),
    }
    while history.len() > TRANSITIONS_KEPT {
        history.pop_front();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn repeated_transitions_are_merged_with_a_count() {
        let mut h = std::collections::VecDeque::new();
        super::record(&mut h, "active", "acquired".into(), 1, 10);
        for at in 20..36 {
            super::record(&mut h, "standby", "contending".into(), 1, at);
        }
        super::record(&mut h, "active", "acquired".into(), 2, 40);
        assert_eq!(h.len(), 3, "{h:?}");
        assert_eq!(
            (h[1].count, h[1].at_unix_ms, h[1].last_at_unix_ms),
            (16, 20, 35)
        );
        assert_eq!(h[0].reason, "acquired");
        // Different reasons are each kept, up to the bound.
        for i in 0..40 {
            super::record(&mut h, "standby", format!("r{i}"), 2, 50 + i);
        }
        assert_eq!(h.len(), super::TRANSITIONS_KEPT);
        assert_eq!(h.back().map(|t| t.reason.as_str()), Some("r39"));
    }
}
