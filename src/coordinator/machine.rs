//! The coordinator's whole decision, pure: `(phase, event) -> (phase, actions)`.
//!
//! [`Machine::next`] is table-tested here, and `tests/model.rs` explores it exhaustively,
//! composed with models of the lock services, for two and three nodes. It does no I/O and
//! keeps no clock: the driver in the parent module feeds it events and executes its actions.

use std::time::Duration;

/// What a coordinator is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Not contending: the broker is not (yet) healthy.
    Idle,
    /// Not contending until the hold-off ends (after a backend error, a bind failure, a
    /// step-down).
    HoldingOff,
    /// Waiting for the lock.
    Contending,
    /// Holding the lock; the gate is open.
    Active { term: u64 },
    /// Shut down: nothing held, nothing wanted, for good.
    Stopped,
}

/// Why this node goes to (or stays in) standby: why its gate closes and its lock is given
/// back. [`StandbyReason::reason`] is the `reason` of `to="standby"` transitions, the word after
/// "released:" in the standby status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StandbyReason {
    /// The local broker failed its health check.
    Health,
    /// A gated route could not bind; the peer should serve instead.
    BindFailed,
    /// lockgate is stopping (or a reload replaces this coordinator).
    Shutdown,
    /// An operator asked for a planned switchover.
    StepDown,
    /// The lock went away under us; the word is the backend's reason.
    Lost(&'static str),
    /// The lock arrived while nobody wanted it.
    Unwanted,
}

impl StandbyReason {
    /// The metric label and the log's short word.
    pub fn reason(self) -> &'static str {
        match self {
            StandbyReason::Health => "health",
            StandbyReason::BindFailed => "bind_failed",
            StandbyReason::Shutdown => "shutdown",
            StandbyReason::StepDown => "step_down",
            StandbyReason::Lost(reason) => reason,
            StandbyReason::Unwanted => "unwanted",
        }
    }
}

/// How long a hold-off lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldOff {
    /// This many check-periods.
    Periods(u32),
    /// As the operator asked.
    For(Duration),
}

/// After a bind failure, how many check-periods to leave the lock to the peer (which tries
/// once per period, so it gets a turn).
pub const BIND_FAILURE_HOLD_OFF_PERIODS: u32 = 2;
/// After a backend error, how many check-periods before contending again.
pub const ERROR_HOLD_OFF_PERIODS: u32 = 1;

/// What happened, as the state machine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// The broker's health flipped (or is first known).
    Health(bool),
    /// The lock is ours, with this term.
    Acquired { term: u64 },
    /// Contending failed (backend unreachable, an error from it).
    AcquireFailed,
    /// The held lock went away under us, or a liveness check failed.
    Lost { reason: &'static str },
    /// A gated route could not bind after the lock was taken.
    OpenFailed,
    /// The check-period elapsed.
    Tick,
    /// The hold-off ended.
    HoldOffEnded,
    /// Planned switchover.
    StepDown { drain: Duration, hold_off: Duration },
    /// Contend again now (ends a hold-off).
    Resume,
    /// Stop for good.
    Shutdown,
}

/// What the driving task does, in order, each to completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Start (or keep) waiting for the lock.
    Contend { last_term: u64 },
    /// Stop waiting for the lock. Never gives back a lock already held.
    Withdraw,
    /// Bind the gated routes.
    OpenGate { term: u64 },
    /// Close the gate at once: listeners, then a reset of every connection.
    CloseGate(StandbyReason),
    /// Close the listeners, drain connections for up to `drain`, then reset the rest.
    DrainGate { drain: Duration },
    /// Give the lock back; only with the gate closed.
    ReleaseLock(StandbyReason),
    /// Confirm the lock is still ours.
    Check,
    /// Start (or restart) the hold-off timer.
    StartHoldOff(HoldOff),
    /// Cancel the hold-off timer.
    CancelHoldOff,
}

/// The coordinator's whole state as the decision sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Machine {
    pub phase: Phase,
    /// The local broker answers its health check.
    pub healthy: bool,
    /// The term of the current or last holding; grows on every acquisition.
    pub term: u64,
}

/// The actions that follow one event, in order: at most four, so the pure function
/// allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Actions([Option<Action>; 4]);

impl Actions {
    fn of(list: &[Action]) -> Actions {
        debug_assert!(list.len() <= 4, "{list:?}");
        let mut a = Actions::default();
        for (slot, action) in a.0.iter_mut().zip(list) {
            *slot = Some(*action);
        }
        a
    }

    pub fn iter(&self) -> impl Iterator<Item = Action> + '_ {
        self.0.iter().map_while(|a| *a)
    }

    pub fn to_vec(&self) -> Vec<Action> {
        self.iter().collect()
    }
}

impl Machine {
    /// A coordinator that has not heard from its health check yet.
    pub fn new() -> Machine {
        Machine {
            phase: Phase::Idle,
            healthy: false,
            term: 0,
        }
    }

    /// Whether the lock is held (the gate is open or opening).
    pub fn holds(&self) -> bool {
        matches!(self.phase, Phase::Active { .. })
    }

    /// Whether the backend may report something the machine waits for.
    pub fn listens(&self) -> bool {
        matches!(self.phase, Phase::Contending | Phase::Active { .. })
    }

    /// Not holding, not stopped: contend if healthy, else idle.
    fn standby(self, actions: &[Action]) -> (Machine, Actions) {
        let mut list = Actions::of(actions);
        let phase = if self.healthy {
            if let Some(slot) = list.0.iter_mut().find(|a| a.is_none()) {
                *slot = Some(Action::Contend {
                    last_term: self.term,
                });
            }
            Phase::Contending
        } else {
            Phase::Idle
        };
        (Machine { phase, ..self }, list)
    }

    fn stay(self) -> (Machine, Actions) {
        (self, Actions::default())
    }

    fn to(self, phase: Phase, actions: &[Action]) -> (Machine, Actions) {
        (Machine { phase, ..self }, Actions::of(actions))
    }

    /// The decision: from this state and this event, the next state and what to do, in order.
    /// Every path that leaves `Active` closes the gate before it releases the lock.
    pub fn next(self, event: Event) -> (Machine, Actions) {
        use Action::*;
        use Phase::*;
        match (self.phase, event) {
            (Stopped, _) => self.stay(),
            (Active { .. }, Event::Shutdown) => self.to(
                Stopped,
                &[
                    CloseGate(StandbyReason::Shutdown),
                    ReleaseLock(StandbyReason::Shutdown),
                ],
            ),
            (Contending, Event::Shutdown) => self.to(Stopped, &[Withdraw]),
            (_, Event::Shutdown) => self.to(Stopped, &[]),

            (_, Event::Health(h)) if h == self.healthy => self.stay(),
            (Idle, Event::Health(h)) => Machine { healthy: h, ..self }.standby(&[]),
            (HoldingOff, Event::Health(h)) => (Machine { healthy: h, ..self }, Actions::default()),
            (Contending, Event::Health(_)) => Machine {
                healthy: false,
                ..self
            }
            .to(Idle, &[Withdraw]),
            (Active { .. }, Event::Health(_)) => Machine {
                healthy: false,
                ..self
            }
            .to(
                Idle,
                &[
                    CloseGate(StandbyReason::Health),
                    ReleaseLock(StandbyReason::Health),
                ],
            ),

            (Contending, Event::Acquired { term }) => {
                Machine { term, ..self }.to(Active { term }, &[OpenGate { term }])
            }
            // Arrived while nobody wanted it (the gate is closed): give it back now.
            (Idle | HoldingOff, Event::Acquired { .. }) => {
                (self, Actions::of(&[ReleaseLock(StandbyReason::Unwanted)]))
            }
            (Active { .. }, Event::Acquired { .. }) => self.stay(),

            (Contending, Event::AcquireFailed) => self.to(
                HoldingOff,
                &[
                    Withdraw,
                    StartHoldOff(HoldOff::Periods(ERROR_HOLD_OFF_PERIODS)),
                ],
            ),
            (_, Event::AcquireFailed) => self.stay(),

            (Active { .. }, Event::Lost { reason }) => self.standby(&[
                CloseGate(StandbyReason::Lost(reason)),
                ReleaseLock(StandbyReason::Lost(reason)),
            ]),
            (_, Event::Lost { .. }) => self.stay(),

            (Active { .. }, Event::OpenFailed) => self.to(
                HoldingOff,
                &[
                    CloseGate(StandbyReason::BindFailed),
                    ReleaseLock(StandbyReason::BindFailed),
                    StartHoldOff(HoldOff::Periods(BIND_FAILURE_HOLD_OFF_PERIODS)),
                ],
            ),
            (_, Event::OpenFailed) => self.stay(),

            (Active { .. }, Event::Tick) => (self, Actions::of(&[Check])),
            (_, Event::Tick) => self.stay(),

            (Active { .. }, Event::StepDown { drain, hold_off }) => self.to(
                HoldingOff,
                &[
                    DrainGate { drain },
                    ReleaseLock(StandbyReason::StepDown),
                    StartHoldOff(HoldOff::For(hold_off)),
                ],
            ),
            (Contending, Event::StepDown { hold_off, .. }) => self.to(
                HoldingOff,
                &[Withdraw, StartHoldOff(HoldOff::For(hold_off))],
            ),
            (_, Event::StepDown { hold_off, .. }) => {
                self.to(HoldingOff, &[StartHoldOff(HoldOff::For(hold_off))])
            }

            (HoldingOff, Event::HoldOffEnded) => self.standby(&[]),
            (HoldingOff, Event::Resume) => self.standby(&[CancelHoldOff]),
            (_, Event::HoldOffEnded | Event::Resume) => self.stay(),
        }
    }
}

impl Default for Machine {
    fn default() -> Self {
        Machine::new()
    }
}

#[cfg(test)]
mod tests {
    use super::Action::*;
    use super::*;

    const D: Duration = Duration::from_millis(100);
    const H: Duration = Duration::from_millis(5000);

    /// A machine in `phase` with term 3.
    fn at(phase: Phase, healthy: bool) -> Machine {
        Machine {
            phase,
            healthy,
            term: 3,
        }
    }

    /// Every (phase, event) pair that does something, with what it must do.
    #[test]
    fn transition_table() {
        use Phase::*;
        let active = Active { term: 3 };
        let table: Vec<(Machine, Event, Phase, Vec<Action>)> = vec![
            (
                at(Idle, false),
                Event::Health(true),
                Contending,
                vec![Contend { last_term: 3 }],
            ),
            (at(Idle, false), Event::Health(false), Idle, vec![]),
            (
                at(Contending, true),
                Event::Health(false),
                Idle,
                vec![Withdraw],
            ),
            (
                at(Contending, true),
                Event::Acquired { term: 4 },
                Active { term: 4 },
                vec![OpenGate { term: 4 }],
            ),
            (
                at(Contending, true),
                Event::AcquireFailed,
                HoldingOff,
                vec![Withdraw, StartHoldOff(HoldOff::Periods(1))],
            ),
            (
                at(active, true),
                Event::Health(false),
                Idle,
                vec![
                    CloseGate(StandbyReason::Health),
                    ReleaseLock(StandbyReason::Health),
                ],
            ),
            (
                at(active, true),
                Event::Lost {
                    reason: "lease_expired",
                },
                Contending,
                vec![
                    CloseGate(StandbyReason::Lost("lease_expired")),
                    ReleaseLock(StandbyReason::Lost("lease_expired")),
                    Contend { last_term: 3 },
                ],
            ),
            (
                at(active, true),
                Event::OpenFailed,
                HoldingOff,
                vec![
                    CloseGate(StandbyReason::BindFailed),
                    ReleaseLock(StandbyReason::BindFailed),
                    StartHoldOff(HoldOff::Periods(2)),
                ],
            ),
            (at(active, true), Event::Tick, active, vec![Check]),
            (
                at(active, true),
                Event::StepDown {
                    drain: D,
                    hold_off: H,
                },
                HoldingOff,
                vec![
                    DrainGate { drain: D },
                    ReleaseLock(StandbyReason::StepDown),
                    StartHoldOff(HoldOff::For(H)),
                ],
            ),
            (
                at(Contending, true),
                Event::StepDown {
                    drain: D,
                    hold_off: H,
                },
                HoldingOff,
                vec![Withdraw, StartHoldOff(HoldOff::For(H))],
            ),
            (
                at(Idle, false),
                Event::StepDown {
                    drain: D,
                    hold_off: H,
                },
                HoldingOff,
                vec![StartHoldOff(HoldOff::For(H))],
            ),
            (
                at(HoldingOff, true),
                Event::HoldOffEnded,
                Contending,
                vec![Contend { last_term: 3 }],
            ),
            (at(HoldingOff, false), Event::HoldOffEnded, Idle, vec![]),
            (
                at(HoldingOff, true),
                Event::Resume,
                Contending,
                vec![CancelHoldOff, Contend { last_term: 3 }],
            ),
            (
                at(HoldingOff, true),
                Event::Acquired { term: 9 },
                HoldingOff,
                vec![ReleaseLock(StandbyReason::Unwanted)],
            ),
            (
                at(Idle, false),
                Event::Acquired { term: 9 },
                Idle,
                vec![ReleaseLock(StandbyReason::Unwanted)],
            ),
            (
                at(active, true),
                Event::Shutdown,
                Stopped,
                vec![
                    CloseGate(StandbyReason::Shutdown),
                    ReleaseLock(StandbyReason::Shutdown),
                ],
            ),
            (
                at(Contending, true),
                Event::Shutdown,
                Stopped,
                vec![Withdraw],
            ),
            (at(HoldingOff, true), Event::Shutdown, Stopped, vec![]),
            (at(Stopped, true), Event::Health(false), Stopped, vec![]),
            (
                at(Contending, true),
                Event::Lost { reason: "x" },
                Contending,
                vec![],
            ),
        ];
        for (from, event, phase, actions) in table {
            let (to, got) = from.next(event);
            assert_eq!(
                (to.phase, got.to_vec()),
                (phase, actions),
                "{from:?} + {event:?}"
            );
        }
    }

    fn all_events() -> Vec<Event> {
        vec![
            Event::Health(true),
            Event::Health(false),
            Event::Acquired { term: 7 },
            Event::AcquireFailed,
            Event::Lost { reason: "x" },
            Event::OpenFailed,
            Event::Tick,
            Event::HoldOffEnded,
            Event::StepDown {
                drain: D,
                hold_off: H,
            },
            Event::Resume,
            Event::Shutdown,
        ]
    }

    /// In every phase and for every event: the gate is closed before the lock is released,
    /// nothing is released that is not held (except an unwanted arrival, gate closed), and
    /// leaving `Active` always closes the gate.
    #[test]
    fn release_only_after_close_for_every_pair() {
        use Phase::*;
        for phase in [Idle, HoldingOff, Contending, Active { term: 3 }, Stopped] {
            for healthy in [false, true] {
                for event in all_events() {
                    let from = at(phase, healthy);
                    let (to, actions) = from.next(event);
                    let list = actions.to_vec();
                    let close = list
                        .iter()
                        .position(|a| matches!(a, CloseGate(_) | DrainGate { .. }));
                    let release = list.iter().position(|a| matches!(a, ReleaseLock(_)));
                    if from.holds() && !to.holds() {
                        assert!(
                            close.is_some() && release.is_some(),
                            "{from:?} + {event:?}: {list:?}"
                        );
                    }
                    if let (Some(r), true) = (release, from.holds()) {
                        assert!(
                            close.is_some_and(|c| c < r),
                            "{from:?} + {event:?}: {list:?}"
                        );
                    }
                    assert!(
                        !list.contains(&Withdraw) || !from.holds(),
                        "{from:?} + {event:?}: withdraw while holding"
                    );
                }
            }
        }
    }
}
