//! An exhaustive model check of the coordinator, composed with models of the lock services.
//!
//! Each node runs production's [`Machine::next`], the very function the coordinator task
//! drives; its actions are executed one per step, so the lock service, the other nodes, the
//! clock and the faults interleave with them as they do for real. The lock services are
//! models:
//! - **file**: the kernel's `flock`: one holder; a waiter gets it the instant it is free; a
//!   frozen holder keeps it; a killed one loses it with its sockets.
//! - **ZooKeeper**: a quorum with sessions that expire S ticks after the last contact that
//!   reached it, ephemeral-sequential contender nodes (lowest holds), and one server that can
//!   be cut from the quorum while a client still reaches it: as a **stale follower** (answers
//!   reads from its old state, forwards nothing) or a **stale leader** (also answers `sync`).
//!   The holder renews its lease with [`zookeeper::CONFIRM`], production's choice; the lease
//!   runs F from when the renewal was sent, F from production's fencing arithmetic.
//!   Faults: the cut, the stale server dropping its clients, a client's link going down, a
//!   lost answer, a frozen process (SIGSTOP), broker health flips, a shutdown.
//!
//! Every reachable state is visited (breadth first, so a counterexample is a shortest one).
//! Invariants in every state: at most one node can forward (gate open, not frozen, mid-write
//! with a valid lease), and a node that can forward is the one the lock service says holds
//! the lock. Liveness, from a sample of reachable states: once faults heal, a node with a
//! healthy broker opens within a bounded number of fair steps. The test prints the states
//! explored.

use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use lockgate::config::ZkConfig;
use lockgate::coordinator::{Action, Event, Machine, Phase};
use lockgate::lock::zookeeper::{self, Confirm};

/// Ticks until the model's clock stops (ZooKeeper; the file lock needs few: it has no lease).
const T_MAX: u8 = 6;
const T_MAX_FILE: u8 = 2;
/// A session expires this many ticks after its last contact with the quorum.
const S_TICKS: u8 = 4;

/// F in ticks, from production's arithmetic with one tick = one second.
fn fence_ticks() -> u8 {
    let cfg = ZkConfig {
        connect_string: String::new(),
        namespace: "m".into(),
        session: Duration::from_secs(S_TICKS.into()),
        session_percent: 50,
        connection: Duration::from_millis(1000),
        retries: 0,
        retries_wait: Duration::ZERO,
    };
    let f = cfg.fencing(cfg.session);
    assert!(f.is_safe(), "{f:?}");
    u8::try_from(f.fence_after.as_secs()).unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Backend {
    File,
    ZooKeeper,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum StaleKind {
    Follower,
    Leader,
}

/// What the model explores.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    backend: Backend,
    nodes: usize,
    stale: Option<StaleKind>,
    freezes: u8,
    health_flips: u8,
    link_cuts: u8,
    lost_answers: u8,
    shutdowns: u8,
    kills: u8,
    /// The renewal the ZooKeeper holder uses.
    confirm: Confirm,
    /// The data path checks the lease before every write (production) or once per burst.
    lease_every_write: bool,
    /// Where the clock stops.
    t_max: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Mail {
    Acquired {
        term: u64,
        generation: u8,
    },
    Failed {
        generation: u8,
    },
    Lost {
        reason: &'static str,
        generation: u8,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Node {
    m: Machine,
    pending: VecDeque<Action>,
    gate: bool,
    frozen: bool,
    /// The process still runs (not exited after a shutdown, not killed).
    alive: bool,
    /// The broker's real health (what the next health event says).
    broker_up: bool,
    /// A hold-off timer runs since this tick; it ends at a later tick.
    hold_off: Option<u8>,
    mailbox: VecDeque<Mail>,
    // The lock client, as the coordinator sees it.
    want: bool,
    generation: u8,
    /// The coordinator took an acquisition and has not released it.
    held: bool,
    // The lock client's own state.
    holding: bool,
    /// Valid while `t < lease` (ZooKeeper); the file lock's is unlimited.
    lease: u8,
    /// ZooKeeper: our contender node (its generation), as the client believes.
    znode: Option<u8>,
    session_alive: bool,
    last_touch: u8,
    connected: bool,
    via_stale: bool,
    link_up: bool,
    /// A renewal in flight: when sent, and whether its answer confirms.
    inflight: Option<(u8, bool)>,
    /// A renewal was sent in this tick (one per tick at most, as one per F/4).
    renewed: bool,
    failed_for: Option<u8>,
    fenced_for: Option<u8>,
    /// The data path is in the middle of a write burst.
    writing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct World {
    t: u8,
    nodes: Vec<Node>,
    /// ZooKeeper's contender nodes in sequence order: (node, generation, seq).
    queue: Vec<(u8, u8, u8)>,
    next_seq: u8,
    /// The stale server's view of the queue, once cut.
    stale_view: Option<Vec<(u8, u8, u8)>>,
    /// The file lock's holder.
    flock: Option<u8>,
    /// A node moved bytes after its lease ran out (a write in progress when it was frozen,
    /// resumed on waking before anything else ran).
    late_write: Option<u8>,
    faults: [u8; 7],
}

const F_FREEZE: usize = 0;
const F_HEALTH: usize = 1;
const F_LINK: usize = 2;
const F_LOST: usize = 3;
const F_SHUTDOWN: usize = 4;
const F_KILL: usize = 5;
const F_CUT: usize = 6;

struct Model {
    sc: Scenario,
    f: u8,
}

impl Model {
    fn initial(&self) -> World {
        let node = Node {
            m: Machine::new(),
            pending: VecDeque::new(),
            gate: false,
            frozen: false,
            alive: true,
            broker_up: true,
            hold_off: None,
            mailbox: VecDeque::new(),
            want: false,
            generation: 0,
            held: false,
            holding: false,
            lease: 0,
            znode: None,
            session_alive: true,
            last_touch: 0,
            connected: true,
            via_stale: false,
            link_up: true,
            inflight: None,
            renewed: false,
            failed_for: None,
            fenced_for: None,
            writing: false,
        };
        let mut nodes = vec![node; self.sc.nodes];
        if self.sc.stale.is_some() {
            nodes[0].via_stale = true;
        }
        World {
            t: 0,
            nodes,
            queue: Vec::new(),
            next_seq: 0,
            stale_view: None,
            flock: None,
            late_write: None,
            faults: [0; 7],
        }
    }

    fn budget(&self, i: usize) -> u8 {
        let s = &self.sc;
        [
            s.freezes,
            s.health_flips,
            s.link_cuts,
            s.lost_answers,
            s.shutdowns,
            s.kills,
            u8::from(s.stale.is_some()),
        ][i]
    }

    fn lease_valid(&self, w: &World, n: &Node) -> bool {
        match self.sc.backend {
            Backend::File => true,
            Backend::ZooKeeper => w.t < n.lease,
        }
    }

    /// Whether node `i` moves bytes now.
    fn forwards(&self, w: &World, i: usize) -> bool {
        let n = &w.nodes[i];
        let started = n.writing || self.sc.lease_every_write;
        n.alive
            && !n.frozen
            && n.gate
            && started
            && (!self.sc.lease_every_write || self.lease_valid(w, n))
    }

    /// Who the lock service says holds the lock.
    fn service_holder(&self, w: &World) -> Option<usize> {
        match self.sc.backend {
            Backend::File => w.flock.map(usize::from),
            Backend::ZooKeeper => w.queue.first().map(|q| usize::from(q.0)),
        }
    }

    fn check_safety(&self, w: &World) -> Result<(), String> {
        if let Some(i) = w.late_write {
            return Err(format!("node {i} wrote after its lease ran out"));
        }
        let forwarding: Vec<usize> = (0..w.nodes.len())
            .filter(|i| self.forwards(w, *i))
            .collect();
        if forwarding.len() > 1 {
            return Err(format!("two nodes forward at once: {forwarding:?}"));
        }
        // A frozen process cannot serve (its kernel may still complete handshakes on its
        // listener: a documented limit); every other open gate counts.
        let open: Vec<usize> = (0..w.nodes.len())
            .filter(|i| {
                let n = &w.nodes[*i];
                n.alive && !n.frozen && n.gate
            })
            .collect();
        if open.len() > 1 {
            return Err(format!("two gates open at once: {open:?}"));
        }
        if let Some(&i) = forwarding.first()
            && self.service_holder(w) != Some(i)
        {
            return Err(format!(
                "node {i} forwards but the lock service's holder is {:?}",
                self.service_holder(w)
            ));
        }
        Ok(())
    }

    /// Feeds an event to node `i`'s machine; its actions queue up.
    fn feed(n: &mut Node, e: Event) {
        let (m, actions) = n.m.next(e);
        n.m = m;
        n.pending.extend(actions.iter());
    }

    fn contend(&self, n: &mut Node) {
        if n.held {
            return;
        }
        if !n.want {
            n.want = true;
            n.generation += 1;
        }
    }

    fn withdraw(&self, w: &mut World, i: usize) {
        let n = &mut w.nodes[i];
        if n.held {
            return; // production: a held lock stays until released
        }
        n.want = false;
        if self.sc.backend == Backend::File {
            // An arrived, untaken lock is dropped at once.
            let had = n.mailbox.iter().any(|m| matches!(m, Mail::Acquired { .. }));
            n.mailbox.retain(|m| !matches!(m, Mail::Acquired { .. }));
            if had && w.flock == Some(i as u8) {
                w.flock = None;
                w.nodes[i].holding = false;
            }
        }
    }

    fn release(&self, w: &mut World, i: usize) {
        let n = &mut w.nodes[i];
        n.held = false;
        n.want = false;
        n.lease = 0;
        if self.sc.backend == Backend::File {
            if w.flock == Some(i as u8) && n.holding {
                w.flock = None;
            }
            n.holding = false;
        } else {
            n.holding = false;
        }
    }

    /// Executes node `i`'s next action.
    fn execute(&self, w: &mut World, i: usize) {
        let Some(a) = w.nodes[i].pending.pop_front() else {
            return;
        };
        match a {
            Action::Contend { .. } => {
                let n = &mut w.nodes[i];
                self.contend(n);
            }
            Action::Withdraw => self.withdraw(w, i),
            Action::OpenGate { .. } => {
                // Production's driver: an acquisition whose lease already ran out is a loss.
                if self.lease_valid(w, &w.nodes[i]) {
                    w.nodes[i].gate = true;
                } else {
                    Self::feed(
                        &mut w.nodes[i],
                        Event::Lost {
                            reason: "lease_expired",
                        },
                    );
                }
            }
            Action::CloseGate(_) | Action::DrainGate { .. } => {
                let n = &mut w.nodes[i];
                n.gate = false;
                n.writing = false;
            }
            Action::ReleaseLock(_) => self.release(w, i),
            Action::Check => {
                let valid = self.lease_valid(w, &w.nodes[i]);
                if !valid {
                    Self::feed(
                        &mut w.nodes[i],
                        Event::Lost {
                            reason: "lease_expired",
                        },
                    );
                }
            }
            Action::StartHoldOff(_) => w.nodes[i].hold_off = Some(w.t),
            Action::CancelHoldOff => w.nodes[i].hold_off = None,
        }
    }

    /// Every step from `w`: (label, next world). `adversary`: include faults.
    fn steps(&self, w: &World, adversary: bool, t_max: u8) -> Vec<(String, World)> {
        let mut out = Vec::new();
        let n_nodes = w.nodes.len();
        for i in 0..n_nodes {
            let n = &w.nodes[i];
            if !n.alive || n.frozen {
                continue;
            }
            // The coordinator task: its next action, else its next event.
            if !n.pending.is_empty() {
                let mut v = w.clone();
                let label = format!("node {i} does {:?}", n.pending[0]);
                self.execute(&mut v, i);
                out.push((label, v));
            } else if n.m.phase != Phase::Stopped {
                self.coordinator_events(w, i, &mut out);
            }
            self.client_steps(w, i, &mut out);
            // The data path: bursts matter only where the lease is checked once per burst
            // (elsewhere a node with its gate open forwards whenever its lease is valid).
            if !self.sc.lease_every_write && n.gate && !n.writing && self.lease_valid(w, n) {
                let mut v = w.clone();
                v.nodes[i].writing = true;
                out.push((format!("node {i} starts a write"), v));
            }
            if n.writing {
                let mut v = w.clone();
                v.nodes[i].writing = false;
                out.push((format!("node {i} ends its write"), v));
            }
        }
        // A running process does what it has to do now before time passes (only a frozen one
        // lags): its queued actions, and fencing once its lease has run out.
        let urgent = w.nodes.iter().any(|n| {
            n.alive
                && !n.frozen
                && (!n.pending.is_empty() || (n.m.holds() && !self.lease_valid(w, n)))
        });
        if w.t < t_max && !urgent {
            let mut v = w.clone();
            v.t += 1;
            let t = v.t;
            let cut = v.stale_view.is_some();
            for n in &mut v.nodes {
                n.renewed = false;
                if n.alive && !n.frozen && n.connected && !(n.via_stale && cut) && n.session_alive {
                    n.last_touch = t;
                }
            }
            // The quorum expires a session the moment its timeout has passed (the earliest it
            // may: the worst case for the old holder's peer).
            if self.sc.backend == Backend::ZooKeeper {
                for i in 0..v.nodes.len() {
                    let n = &v.nodes[i];
                    if n.session_alive && t >= n.last_touch.saturating_add(S_TICKS) {
                        v.nodes[i].session_alive = false;
                        v.queue.retain(|q| usize::from(q.0) != i);
                    }
                }
            }
            out.push((format!("time {t}"), v));
        }
        if adversary {
            self.faults(w, &mut out);
        }
        out
    }

    fn coordinator_events(&self, w: &World, i: usize, out: &mut Vec<(String, World)>) {
        let n = &w.nodes[i];
        let mut push = |label: String, v: World| out.push((label, v));
        if n.m.listens()
            && let Some(mail) = n.mailbox.front()
        {
            let mut v = w.clone();
            let node = &mut v.nodes[i];
            let mail = mail.clone();
            node.mailbox.pop_front();
            let current = node.generation;
            let event = match mail {
                Mail::Acquired { term, generation } if generation == current => {
                    node.held = true;
                    Some(Event::Acquired { term })
                }
                Mail::Failed { generation } if generation == current && !node.held => {
                    Some(Event::AcquireFailed)
                }
                Mail::Lost { reason, generation } if generation == current && node.held => {
                    Some(Event::Lost { reason })
                }
                _ => None,
            };
            if let Some(e) = event {
                Self::feed(node, e);
            }
            push(format!("node {i} reads {mail:?}"), v);
        }
        if n.m.holds() && !self.lease_valid(w, n) {
            let mut v = w.clone();
            Self::feed(
                &mut v.nodes[i],
                Event::Lost {
                    reason: "lease_expired",
                },
            );
            push(format!("node {i}'s lease timer fires"), v);
        }
        if n.broker_up != n.m.healthy {
            let mut v = w.clone();
            let up = n.broker_up;
            Self::feed(&mut v.nodes[i], Event::Health(up));
            push(format!("node {i} sees health {up}"), v);
        }
        // The check-period tick is left out: in these models its liveness check (file: the
        // same file, I/O answers; ZooKeeper: the lease) adds nothing to the lease timer above.
        if n.hold_off.is_some_and(|since| w.t > since) && n.m.phase == Phase::HoldingOff {
            let mut v = w.clone();
            v.nodes[i].hold_off = None;
            Self::feed(&mut v.nodes[i], Event::HoldOffEnded);
            push(format!("node {i}'s hold-off ends"), v);
        }
    }

    /// The lock client of node `i` (the flock waiter, or the ZooKeeper session task).
    fn client_steps(&self, w: &World, i: usize, out: &mut Vec<(String, World)>) {
        let n = &w.nodes[i];
        let me = i as u8;
        match self.sc.backend {
            Backend::File => {
                if n.want && !n.holding && w.flock.is_none() {
                    let mut v = w.clone();
                    v.flock = Some(me);
                    let node = &mut v.nodes[i];
                    node.holding = true;
                    let term = node.m.term + 1;
                    let generation = node.generation;
                    node.mailbox.push_back(Mail::Acquired { term, generation });
                    out.push((format!("node {i} gets the flock"), v));
                }
                if n.holding && !n.want && !n.held {
                    // Arrived unwanted: the waiter gives it back itself.
                    let mut v = w.clone();
                    v.flock = None;
                    v.nodes[i].holding = false;
                    v.nodes[i]
                        .mailbox
                        .retain(|m| !matches!(m, Mail::Acquired { .. }));
                    out.push((format!("node {i}'s waiter drops an unwanted flock"), v));
                }
            }
            Backend::ZooKeeper => self.zk_client_steps(w, i, out),
        }
    }

    fn zk_client_steps(&self, w: &World, i: usize, out: &mut Vec<(String, World)>) {
        let n = &w.nodes[i];
        let me = i as u8;
        let cut = n.via_stale && w.stale_view.is_some();
        let quorum = n.connected && !cut && n.session_alive;
        let stale = n.connected && cut && n.session_alive;
        let f = self.f;
        let ours = |q: &(u8, u8, u8), g: u8| q.0 == me && q.1 == g;
        if quorum {
            if n.want && n.znode.is_none() && n.fenced_for != Some(n.generation) {
                let mut v = w.clone();
                let g = v.nodes[i].generation;
                v.queue.push((me, g, v.next_seq));
                v.next_seq += 1;
                v.nodes[i].znode = Some(g);
                out.push((format!("node {i} creates its contender node"), v));
            }
            if n.want && n.znode.is_some_and(|g| g != n.generation) {
                let mut v = w.clone();
                let (old, g) = (n.znode.unwrap_or(0), n.generation);
                for q in &mut v.queue {
                    if q.0 == me && q.1 == old {
                        q.1 = g;
                    }
                }
                let node = &mut v.nodes[i];
                node.znode = Some(g);
                node.holding = false;
                node.lease = 0;
                out.push((format!("node {i} keeps its node for a new contention"), v));
            }
            let g = n.generation;
            if n.want
                && n.znode == Some(g)
                && !n.holding
                && n.fenced_for != Some(g)
                && w.queue.first().is_some_and(|q| ours(q, g))
            {
                let mut v = w.clone();
                let seq = u64::from(w.queue[0].2);
                let node = &mut v.nodes[i];
                node.holding = true;
                node.lease = w.t.saturating_add(f);
                let term = node.m.term.max(seq) + 1;
                node.mailbox.push_back(Mail::Acquired {
                    term,
                    generation: g,
                });
                node.last_touch = w.t;
                out.push((format!("node {i} is lowest and writes its owner record"), v));
            }
            if !n.want && n.znode.is_some() {
                let mut v = w.clone();
                let old = n.znode.unwrap_or(0);
                v.queue.retain(|q| !ours(q, old));
                let node = &mut v.nodes[i];
                node.znode = None;
                node.holding = false;
                node.lease = 0;
                out.push((format!("node {i} deletes its contender node"), v));
            }
        }
        if stale && n.want && n.znode.is_none() && n.failed_for != Some(n.generation) {
            // Creates go nowhere through a cut server: the contention fails.
            let mut v = w.clone();
            let g = n.generation;
            v.nodes[i].failed_for = Some(g);
            v.nodes[i].mailbox.push_back(Mail::Failed { generation: g });
            out.push((format!("node {i} cannot create its node (stale server)"), v));
        }
        if !n.connected && n.want && n.failed_for != Some(n.generation) && !n.holding {
            let mut v = w.clone();
            let g = n.generation;
            v.nodes[i].failed_for = Some(g);
            v.nodes[i].mailbox.push_back(Mail::Failed { generation: g });
            out.push((format!("node {i} cannot reach ZooKeeper"), v));
        }
        // Renewals.
        if n.holding && n.connected && n.inflight.is_none() && n.session_alive && !n.renewed {
            let mut v = w.clone();
            let g = n.generation;
            let in_quorum = w.queue.iter().any(|q| ours(q, g));
            let in_view = w
                .stale_view
                .as_ref()
                .is_some_and(|view| view.iter().any(|q| ours(q, g)));
            let ok = if !cut {
                in_quorum
            } else {
                match (self.sc.confirm, self.sc.stale) {
                    (Confirm::Read, _) => in_view,
                    (Confirm::SyncRead, Some(StaleKind::Leader)) => in_view,
                    _ => false,
                }
            };
            if !cut {
                v.nodes[i].last_touch = w.t;
            }
            v.nodes[i].renewed = true;
            if self.sc.lost_answers == 0 {
                // Without lost answers to explore, the answer comes with the request.
                let node = &mut v.nodes[i];
                if ok {
                    node.lease = w.t.saturating_add(f);
                }
            } else {
                v.nodes[i].inflight = Some((w.t, ok));
            }
            out.push((
                format!("node {i} sends a renewal ({:?})", self.sc.confirm),
                v,
            ));
        }
        if let Some((sent, ok)) = n.inflight
            && n.connected
        {
            let mut v = w.clone();
            let node = &mut v.nodes[i];
            node.inflight = None;
            if ok && node.holding {
                node.lease = sent.saturating_add(f);
            }
            out.push((format!("node {i} gets its renewal's answer (ok={ok})"), v));
        }
        // Fencing inside the session task: disconnected past the lease.
        if n.holding && !n.connected && !self.lease_valid(w, n) {
            let mut v = w.clone();
            let node = &mut v.nodes[i];
            node.holding = false;
            node.lease = 0;
            node.fenced_for = Some(node.generation);
            let generation = node.generation;
            node.mailbox.push_back(Mail::Lost {
                reason: "lease_expired",
                generation,
            });
            out.push((format!("node {i}'s session task fences"), v));
        }
        // Reconnecting to a server of the quorum.
        if !n.connected && n.link_up {
            let mut v = w.clone();
            let t = w.t;
            let node = &mut v.nodes[i];
            node.connected = true;
            node.via_stale = false;
            node.inflight = None;
            if node.session_alive {
                node.last_touch = t;
                out.push((format!("node {i} reconnects, session alive"), v));
            } else {
                if node.holding {
                    let generation = node.generation;
                    node.mailbox.push_back(Mail::Lost {
                        reason: "session_ended",
                        generation,
                    });
                }
                node.holding = false;
                node.lease = 0;
                node.znode = None;
                node.session_alive = true;
                node.last_touch = t;
                out.push((
                    format!("node {i} reconnects: session expired, a new one"),
                    v,
                ));
            }
        }
    }

    fn faults(&self, w: &World, out: &mut Vec<(String, World)>) {
        let can = |k: usize| w.faults[k] < self.budget(k);
        for i in 0..w.nodes.len() {
            let n = &w.nodes[i];
            if !n.alive {
                continue;
            }
            if n.frozen {
                let mut v = w.clone();
                v.nodes[i].frozen = false;
                // A write in progress at the freeze resumes as the process wakes, alongside its
                // coordinator: it moves bytes only if the data path does not check the lease
                // before every write.
                if n.writing && n.gate && !self.lease_valid(w, n) && !self.sc.lease_every_write {
                    v.late_write = Some(i as u8);
                }
                // Waking, it fences before anything else if its lease ran out (its listener
                // stayed open in the kernel while frozen: the documented limit, exempt above).
                if !self.lease_valid(&v, &v.nodes[i]) {
                    if v.nodes[i].m.holds() {
                        Self::feed(
                            &mut v.nodes[i],
                            Event::Lost {
                                reason: "lease_expired",
                            },
                        );
                    }
                    while v.nodes[i].gate && !v.nodes[i].pending.is_empty() {
                        self.execute(&mut v, i);
                    }
                }
                out.push((
                    format!("node {i} is thawed (SIGCONT) and fences if it must"),
                    v,
                ));
            } else if can(F_FREEZE) && n.gate {
                let mut v = w.clone();
                v.nodes[i].frozen = true;
                v.faults[F_FREEZE] += 1;
                out.push((format!("node {i} is frozen (SIGSTOP)"), v));
            }
            if can(F_HEALTH) {
                let mut v = w.clone();
                v.nodes[i].broker_up = !n.broker_up;
                v.faults[F_HEALTH] += 1;
                out.push((
                    format!(
                        "node {i}'s broker goes {}",
                        if n.broker_up { "down" } else { "up" }
                    ),
                    v,
                ));
            }
            if self.sc.backend == Backend::ZooKeeper {
                if n.link_up && can(F_LINK) {
                    let mut v = w.clone();
                    let t = w.t;
                    let f = self.f;
                    let node = &mut v.nodes[i];
                    node.link_up = false;
                    node.connected = false;
                    node.inflight = None;
                    if node.holding {
                        node.lease = node.lease.min(t.saturating_add(f));
                    }
                    v.faults[F_LINK] += 1;
                    out.push((format!("node {i}'s link to ZooKeeper is cut"), v));
                }
                if !n.link_up {
                    let mut v = w.clone();
                    v.nodes[i].link_up = true;
                    out.push((format!("node {i}'s link heals"), v));
                }
                if n.inflight.is_some() && can(F_LOST) {
                    let mut v = w.clone();
                    v.nodes[i].inflight = None;
                    v.faults[F_LOST] += 1;
                    out.push((format!("node {i}'s renewal answer is lost"), v));
                }
            }
            if can(F_SHUTDOWN) && n.m.phase != Phase::Stopped {
                let mut v = w.clone();
                Self::feed(&mut v.nodes[i], Event::Shutdown);
                v.faults[F_SHUTDOWN] += 1;
                out.push((format!("node {i} is told to shut down (SIGTERM)"), v));
            }
            if n.m.phase == Phase::Stopped && n.pending.is_empty() {
                // The process exits once its last action is done.
                let mut v = w.clone();
                self.exit(&mut v, i);
                out.push((format!("node {i} exits"), v));
            }
            if can(F_KILL) {
                let mut v = w.clone();
                self.exit(&mut v, i);
                v.faults[F_KILL] += 1;
                out.push((format!("node {i} is killed (SIGKILL)"), v));
            }
        }
        if self.sc.stale.is_some() {
            if can(F_CUT) && w.nodes[0].holding {
                let mut v = w.clone();
                v.stale_view = Some(w.queue.clone());
                v.faults[F_CUT] += 1;
                out.push(("node 0's server is cut from the quorum".to_owned(), v));
            }
            if w.stale_view.is_some() && w.nodes[0].via_stale && w.nodes[0].connected {
                let mut v = w.clone();
                let (t, f) = (w.t, self.f);
                let node = &mut v.nodes[0];
                node.connected = false;
                node.inflight = None;
                if node.holding {
                    node.lease = node.lease.min(t.saturating_add(f));
                }
                out.push(("the stale server drops its clients".to_owned(), v));
            }
        }
    }

    /// A process ends: the kernel closes its sockets and frees its flock.
    fn exit(&self, w: &mut World, i: usize) {
        let n = &mut w.nodes[i];
        n.alive = false;
        n.gate = false;
        n.writing = false;
        n.pending.clear();
        n.connected = false;
        n.link_up = false;
        if w.flock == Some(i as u8) {
            w.flock = None;
        }
    }

    /// Liveness from `w`: heal every fault, then run fair, fault-free steps; some node with a
    /// healthy broker must open within the bound.
    fn live(&self, w: &World) -> Result<(), String> {
        let mut v = w.clone();
        let candidates = v
            .nodes
            .iter()
            .any(|n| n.alive && n.broker_up && n.m.phase != Phase::Stopped);
        if !candidates {
            return Ok(());
        }
        let cut = v.stale_view.is_some();
        for n in &mut v.nodes {
            n.frozen = false;
            if n.alive {
                n.link_up = true;
            }
            if n.via_stale && cut && n.connected {
                n.connected = false; // the stale server drops it; it reconnects elsewhere
                n.inflight = None;
            }
        }
        for step in 0..LIVENESS_STEPS {
            if (0..v.nodes.len()).any(|i| {
                let n = &v.nodes[i];
                n.alive && n.gate && self.lease_valid(&v, n)
            }) {
                return Ok(());
            }
            let mut next = self.steps(&v, false, u8::MAX - 16);
            // Fair and deterministic: anything but the clock first, in a rotating order; the
            // clock only when nothing else can happen.
            let others: Vec<usize> = (0..next.len())
                .filter(|k| {
                    let label = &next[*k].0;
                    !label.starts_with("time")
                        && !label.ends_with("starts a write")
                        && !label.ends_with("ends its write")
                })
                .collect();
            let pick = if others.is_empty() {
                next.iter().position(|s| s.0.starts_with("time"))
            } else {
                Some(others[step % others.len()])
            };
            let Some(k) = pick else {
                break;
            };
            if std::env::var("MODEL_DEBUG").is_ok() {
                eprintln!("live step {step}: {}", next[k].0);
            }
            v = next.swap_remove(k).1;
        }
        Err(format!(
            "no node with a healthy broker opened within {LIVENESS_STEPS} fair steps"
        ))
    }
}

/// The bound of a liveness run.
const LIVENESS_STEPS: usize = 150;
/// One reachable state in this many is the start of a liveness run (a stuck lock stays stuck
/// in every state after it, so a sample finds it).
const LIVENESS_SAMPLE: usize = 101;

/// Explores every reachable state; on a violation, panics with the shortest trace. Visited
/// states are kept as 64-bit fingerprints (as TLC does); a trace is rebuilt by replaying the
/// recorded step numbers from the start.
fn explore(sc: Scenario) -> usize {
    let model = Model {
        sc,
        f: fence_ticks(),
    };
    let t_max = sc.t_max;
    let fingerprint = |w: &World| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        w.hash(&mut h);
        h.finish()
    };
    let start = model.initial();
    let mut seen: HashSet<u64> = HashSet::new();
    // For each state: its parent and the number of the step that led to it.
    let mut trail: Vec<(u32, u16)> = vec![(0, 0)];
    let mut frontier: VecDeque<(u32, World)> = VecDeque::new();
    seen.insert(fingerprint(&start));
    frontier.push_back((0, start.clone()));
    let trace = |trail: &Vec<(u32, u16)>, mut at: u32| -> String {
        let mut path = Vec::new();
        while at != 0 {
            path.push(trail[at as usize].1);
            at = trail[at as usize].0;
        }
        path.reverse();
        let mut w = start.clone();
        let mut lines = Vec::new();
        for k in path {
            let (label, next) = model.steps(&w, true, t_max).swap_remove(usize::from(k));
            lines.push(label);
            w = next;
        }
        lines.join("\n  ")
    };
    while let Some((at, w)) = frontier.pop_front() {
        if let Err(e) = model.check_safety(&w) {
            panic!(
                "[{}] invariant broken: {e}\ntrace:\n  {}",
                sc.name,
                trace(&trail, at)
            );
        }
        if (at as usize).is_multiple_of(LIVENESS_SAMPLE)
            && let Err(e) = model.live(&w)
        {
            panic!(
                "[{}] liveness broken: {e}\ntrace:\n  {}",
                sc.name,
                trace(&trail, at)
            );
        }
        for (k, (_, next)) in model.steps(&w, true, t_max).into_iter().enumerate() {
            if !seen.insert(fingerprint(&next)) {
                continue;
            }
            let id = u32::try_from(trail.len()).unwrap();
            trail.push((at, u16::try_from(k).unwrap()));
            frontier.push_back((id, next));
        }
        assert!(
            trail.len() < 5_000_000,
            "[{}] state space too large",
            sc.name
        );
        if trail.len().is_multiple_of(250_000) {
            eprintln!("[{}] {} states, now at time {}", sc.name, trail.len(), w.t);
            if std::env::var("MODEL_DEBUG").is_ok() {
                eprintln!("{w:?}");
            }
        }
    }
    println!(
        "[{}] {} states explored, invariants hold",
        sc.name,
        trail.len()
    );
    trail.len()
}

fn base(name: &'static str, backend: Backend, nodes: usize) -> Scenario {
    Scenario {
        name,
        backend,
        nodes,
        stale: None,
        freezes: 0,
        health_flips: 0,
        link_cuts: 0,
        lost_answers: 0,
        shutdowns: 0,
        kills: 0,
        confirm: zookeeper::CONFIRM,
        lease_every_write: true,
        t_max: match backend {
            Backend::File => T_MAX_FILE,
            Backend::ZooKeeper => T_MAX,
        },
    }
}

#[test]
fn file_lock_two_nodes() {
    explore(Scenario {
        health_flips: 2,
        freezes: 1,
        shutdowns: 1,
        kills: 1,
        ..base("file, 2 nodes", Backend::File, 2)
    });
}

#[test]
fn file_lock_three_nodes() {
    explore(Scenario {
        health_flips: 1,
        shutdowns: 1,
        kills: 1,
        ..base("file, 3 nodes", Backend::File, 3)
    });
}

#[test]
fn zookeeper_stale_follower() {
    explore(Scenario {
        stale: Some(StaleKind::Follower),
        ..base("zookeeper, 2 nodes, stale follower", Backend::ZooKeeper, 2)
    });
}

#[test]
fn zookeeper_stale_leader() {
    explore(Scenario {
        stale: Some(StaleKind::Leader),
        ..base("zookeeper, 2 nodes, stale leader", Backend::ZooKeeper, 2)
    });
}

#[test]
fn zookeeper_frozen_holder() {
    explore(Scenario {
        freezes: 1,
        ..base("zookeeper, 2 nodes, frozen holder", Backend::ZooKeeper, 2)
    });
}

#[test]
fn zookeeper_lost_answer() {
    explore(Scenario {
        lost_answers: 1,
        t_max: 5,
        ..base(
            "zookeeper, 2 nodes, lost renewal answer",
            Backend::ZooKeeper,
            2,
        )
    });
}

/// A contention that fails (link cut) and a broker that goes down meanwhile: bug 4's ground.
#[test]
fn zookeeper_link_cut_and_health() {
    explore(Scenario {
        link_cuts: 1,
        health_flips: 1,
        t_max: 4,
        ..base(
            "zookeeper, 2 nodes, link cut, health",
            Backend::ZooKeeper,
            2,
        )
    });
}

#[test]
fn zookeeper_shutdown_and_health() {
    explore(Scenario {
        shutdowns: 1,
        health_flips: 1,
        ..base(
            "zookeeper, 2 nodes, shutdown, health",
            Backend::ZooKeeper,
            2,
        )
    });
}

#[test]
fn zookeeper_three_nodes() {
    explore(Scenario {
        kills: 1,
        ..base("zookeeper, 3 nodes, kill", Backend::ZooKeeper, 3)
    });
}

/// The checker itself can fail: the renewals production does not use break the invariant
/// against a stale server, and so does a data path that checks its lease once per burst.
#[test]
fn the_checker_finds_known_bugs() {
    let cases = [
        Scenario {
            stale: Some(StaleKind::Follower),
            confirm: Confirm::Read,
            ..base(
                "bug 1: renewal by read, stale follower",
                Backend::ZooKeeper,
                2,
            )
        },
        Scenario {
            stale: Some(StaleKind::Leader),
            confirm: Confirm::SyncRead,
            ..base(
                "bug 1: renewal by sync+read, stale leader",
                Backend::ZooKeeper,
                2,
            )
        },
        Scenario {
            freezes: 1,
            lease_every_write: false,
            ..base(
                "bug 2: lease checked once per burst, frozen holder",
                Backend::ZooKeeper,
                2,
            )
        },
    ];
    for sc in cases {
        let found = std::panic::catch_unwind(|| explore(sc));
        let message = match &found {
            Err(p) => p.downcast_ref::<String>().cloned().unwrap_or_default(),
            Ok(n) => panic!("[{}] no counterexample in {n} states", sc.name),
        };
        assert!(message.contains("invariant broken"), "{message}");
        println!(
            "{}",
            message.lines().take(40).collect::<Vec<_>>().join("\n")
        );
    }
}
