//! Fault injection: three lockgate nodes contend for one file lock, each in front of its own
//! witness upstream, while failover clients send sequence-numbered messages and a seeded
//! random schedule injects faults: SIGKILL and restart, SIGSTOP/SIGCONT, the active node's
//! broker dying and coming back (health gating), a step-down through the admin endpoint, and
//! the node's file descriptors running out.
//!
//! The upstreams (`common::Upstream`) are the witnesses: they timestamp every chunk they receive
//! on one clock (this process's), per connection. The checker asserts:
//! 1. no two nodes forwarded at the same time: the byte intervals of connections that came
//!    through different nodes never overlap (beyond `TOLERANCE`, which absorbs this test's own
//!    scheduling delay between a byte's arrival and its timestamp);
//! 2. every message acknowledged to a client arrived, exactly as sent, at some upstream;
//! 3. after every fault some node serves again within the bound `lockgate check` computes
//!    for this config (plus `SLACK`).
//!
//! Short in CI (`LOCKGATE_FAULTS`, default 20 faults); a long run: `LOCKGATE_FAULTS=500
//! cargo test --release --test faults -- --nocapture`; a soak: `LOCKGATE_SOAK_SECS=3600` (it
//! reports faults injected, failovers and the distribution of recovery times). The seed is printed (and taken from
//! `LOCKGATE_FAULT_SEED`), with the timeline on failure, so a run can be replayed.

mod common;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use lockgate::config::FailoverBounds;
use tokio::task::JoinHandle;

const NODES: usize = 3;
const TOLERANCE: Duration = Duration::from_millis(25);
const SLACK: Duration = Duration::from_secs(3);

/// xorshift64*: small, seeded, replayable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Failover clients: send `c<id>-<seq>`, wait for the echo, move down the list on failure.
fn start_clients(
    ports: &[u16],
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) -> Vec<JoinHandle<()>> {
    (0..4)
        .map(|id| {
            let (stop, acked) = (stop.clone(), acked.clone());
            // Client `id` starts on node `id % NODES`.
            let mut order = ports.to_vec();
            order.rotate_left(id % ports.len());
            let mut client = FailoverClient::new(&order)
                .timeouts(Duration::from_millis(300), Duration::from_millis(500));
            tokio::spawn(async move {
                let mut seq = 1u64;
                while !stop.load(Ordering::Relaxed) {
                    let msg = format!("c{id}-{seq}");
                    if client.try_send(&msg).await.is_some() {
                        acked.lock().unwrap().push(msg);
                        seq += 1;
                        // The clients' pace (not a wait on anything): a message per 5 ms each.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            })
        })
        .collect()
}

/// Three nodes, their witnesses and configs; the faults every backend shares.
struct Cluster {
    p: Pair,
    bounds: FailoverBounds,
}

impl Cluster {
    /// On the shared file lock, or with `zookeeper(i)` node i's ZooKeeper keys.
    async fn start(pair: PairBuilder) -> Cluster {
        let mut p = pair
            .nodes(NODES)
            .check_period_ms(300)
            .health((100, 1, 2))
            .admin("")
            .build()
            .await;
        let bounds = lockgate::config::Config::load(&p.configs[0])
            .unwrap()
            .coordinators[0]
            .failover_bounds();
        for i in 0..NODES {
            let node = p.spawn(i).await;
            p.nodes.push(node);
        }
        wait_any_serving(&p.ports, BOUND).await;
        Cluster { p, bounds }
    }

    async fn kill_and_restart(&mut self, i: usize, bound: Duration) {
        self.p.nodes[i].signal(libc::SIGKILL);
        self.p.nodes[i].wait_exit().await;
        wait_any_serving(&self.p.ports, bound + SLACK).await;
        self.p.nodes[i] = self.p.spawn(i).await;
    }

    async fn stop_and_continue(&mut self, i: usize, ms: u64) {
        self.p.nodes[i].signal(libc::SIGSTOP);
        // The fault itself: the process stays frozen for `ms`.
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.p.nodes[i].signal(libc::SIGCONT);
        wait_any_serving(&self.p.ports, SLACK).await;
    }

    async fn broker_dies(&mut self, i: usize, bound: Duration) {
        self.p.up[i].kill();
        wait_any_serving(&self.p.ports, bound + SLACK).await;
        self.p.up[i].resume_listening().await;
    }

    async fn step_down(&self, i: usize, bound: Duration) {
        let path = "/locks/clients-lock/step-down?hold-off-ms=300";
        let (code, body) = http(self.p.admin[i], "POST", path, &[]).await;
        assert_eq!(code, 200, "{body}");
        wait_any_serving(&self.p.ports, bound + SLACK).await;
    }

    /// Lowers node i's descriptor limit to what it has open plus a few, opens more
    /// connections than that, then restores the limit: it must keep serving.
    async fn out_of_descriptors(&self, i: usize, bound: Duration) {
        let node = &self.p.nodes[i];
        let (_, fds) = node.threads_and_fds();
        // Only the soft limit changes; the hard one stays, so it can be restored.
        let set = |n: usize| {
            std::process::Command::new("prlimit")
                .arg(format!("--pid={}", node.pid))
                .arg(format!("--nofile={n}:"))
                .status()
                .is_ok_and(|s| s.success())
        };
        assert!(set(fds + 4), "prlimit (util-linux) cannot lower the limit");
        let mut held = Vec::new();
        for _ in 0..16 {
            if let Some(s) = try_connect(self.p.ports[i], Duration::from_millis(100)).await {
                held.push(s);
            }
        }
        node.wait_log("out of file descriptors", None).await;
        drop(held);
        assert!(set(20000), "cannot restore the descriptor limit");
        wait_any_serving(&self.p.ports, bound + SLACK).await;
    }
}

/// The clients, the timeline and the recovery times of one run.
struct Run {
    seed: u64,
    rng: Rng,
    t0: Instant,
    timeline: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    clients: Vec<JoinHandle<()>>,
    recoveries: Vec<Duration>,
    failovers: usize,
    /// Windows in which an operator error (the lock file replaced) is known to let two nodes
    /// serve until the holder's next check: overlaps wholly inside one are reported, not failed.
    excused: Vec<(Instant, Instant)>,
}

impl Run {
    fn start(ports: &[u16]) -> Run {
        let seed = seed();
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<String>>> = Arc::default();
        let clients = start_clients(ports, stop.clone(), acked.clone());
        Run {
            seed,
            rng: Rng(seed),
            t0: Instant::now(),
            timeline: String::new(),
            stop,
            acked,
            clients,
            recoveries: Vec::new(),
            failovers: 0,
            excused: Vec::new(),
        }
    }

    fn log(&mut self, what: String) {
        let _ = writeln!(
            self.timeline,
            "{:>8.3}s  {what}",
            self.t0.elapsed().as_secs_f64()
        );
    }

    /// Records one fault's recovery.
    async fn recovered(
        &mut self,
        ports: &[u16],
        active_before: Option<usize>,
        injected: Instant,
        bound: Duration,
    ) {
        let took = injected.elapsed();
        let now = serving(ports).await;
        if now.is_some() && now != active_before {
            self.failovers += 1;
        }
        self.recoveries.push(took);
        self.log(format!(
            "  served again after {took:?} (bound {bound:?} + slack)"
        ));
    }

    /// Stops the clients, reports, and runs the checker.
    async fn finish(self, witnesses: &[Upstream]) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.await.unwrap();
        }
        report(&self.recoveries, self.failovers);
        check(
            witnesses,
            &self.acked,
            &self.excused,
            self.t0,
            self.seed,
            self.recoveries.len(),
            &self.timeline,
        );
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillAndRestart,
    /// SIGSTOP for this many ms, then SIGCONT (shorter than F on ZooKeeper: nothing changes).
    StopAndContinue(u64),
    BrokerDies,
    StepDown,
    OutOfDescriptors,
    /// An operator error: the lock file is replaced (or deleted) under the holder.
    ReplaceLockFile(bool),
    /// Longer than the session: the standby takes over; the woken holder fences.
    FrozenPastSession,
    ZkMemberDies,
    EnsembleDown,
    Partition,
}

/// Draws one fault (and its parameters) of a schedule.
type Pick = fn(&mut Rng) -> Fault;

const FILE_FAULTS: [Pick; 6] = [
    |_| Fault::KillAndRestart,
    |r| Fault::StopAndContinue(50 + r.below(250)),
    |_| Fault::BrokerDies,
    |_| Fault::StepDown,
    |r| Fault::ReplaceLockFile(r.below(2) == 0),
    |_| Fault::OutOfDescriptors,
];

const ZK_FAULTS: [Pick; 8] = [
    |_| Fault::KillAndRestart,
    |r| Fault::StopAndContinue(50 + r.below(250)),
    |_| Fault::FrozenPastSession,
    |_| Fault::BrokerDies,
    |_| Fault::StepDown,
    |_| Fault::ZkMemberDies,
    |_| Fault::EnsembleDown,
    |_| Fault::Partition,
];

impl Run {
    /// Draws fault `n` of `menu` and its target (the serving node, else any): (serving, fault,
    /// target).
    async fn next_fault(
        &mut self,
        n: usize,
        ports: &[u16],
        menu: &[Pick],
    ) -> (Option<usize>, Fault, usize) {
        let active = serving(ports).await;
        let fault = menu[self.rng.below(menu.len() as u64) as usize](&mut self.rng);
        let target = active.unwrap_or(self.rng.below(NODES as u64) as usize);
        self.log(format!(
            "fault {n}: {fault:?} on node{target} (active: {active:?})"
        ));
        (active, fault, target)
    }
}

impl Cluster {
    /// The faults every backend shares.
    async fn inject(&mut self, fault: Fault, target: usize, bound: Duration) {
        match fault {
            Fault::KillAndRestart => self.kill_and_restart(target, bound).await,
            Fault::StopAndContinue(ms) => self.stop_and_continue(target, ms).await,
            Fault::BrokerDies => self.broker_dies(target, bound).await,
            Fault::StepDown => self.step_down(target, bound).await,
            Fault::OutOfDescriptors => self.out_of_descriptors(target, bound).await,
            other => unreachable!("{other:?} needs its test's own set-up"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_two_active_and_nothing_lost_under_random_faults() {
    let faults = env_usize("LOCKGATE_FAULTS", 20);
    // Soak mode: keep injecting until LOCKGATE_SOAK_SECS have passed.
    let soak = Duration::from_secs(env_usize("LOCKGATE_SOAK_SECS", 0) as u64);
    let mut c = Cluster::start(Pair::file()).await;
    let mut run = Run::start(&c.p.ports);
    eprintln!(
        "fault injection: {faults} faults, seed {} (replay: LOCKGATE_FAULT_SEED={})",
        run.seed, run.seed
    );
    let mut n = 0;
    while n < faults || run.t0.elapsed() < soak {
        n += 1;
        let (active, fault, target) = run.next_fault(n, &c.p.ports, &FILE_FAULTS).await;
        let bound = match fault {
            Fault::StopAndContinue(ms) => Duration::from_millis(ms),
            Fault::BrokerDies => c.bounds.broker_dies.unwrap_or_default(),
            Fault::ReplaceLockFile(_) => c.bounds.fence_within,
            _ => c.bounds.holder_stops,
        };
        let injected = Instant::now();
        match fault {
            Fault::ReplaceLockFile(delete) => {
                // Until the holder's next check a standby may lock the new file while the
                // holder still serves: the documented window, excused in the checker.
                let window = bound + Duration::from_secs(1);
                run.excused.push((injected, injected + window));
                if delete {
                    let _ = std::fs::remove_file(c.p.lock_file());
                } else {
                    let tmp = c.p.dir.path().join("locks/replacement");
                    std::fs::write(&tmp, b"").unwrap();
                    std::fs::rename(&tmp, c.p.lock_file()).unwrap();
                }
                wait_any_serving(&c.p.ports, bound + SLACK).await;
                // Let the window close before the next fault, so no later overlap hides in it.
                tokio::time::sleep_until((injected + window).into()).await;
            }
            other => c.inject(other, target, bound).await,
        }
        run.recovered(&c.p.ports, active, injected, bound).await;
    }
    run.finish(&c.p.up).await;
}

/// The same witness and checker with a three-server ZooKeeper ensemble; each node reaches it
/// through relays that can partition it. `LOCKGATE_ZK_FAULTS` faults (default 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_never_two_active_and_nothing_lost_under_random_faults() {
    use common::zk::{Ensemble, Relay, available, external};
    if !available() || external().is_some() {
        return;
    }
    let faults = env_usize("LOCKGATE_ZK_FAULTS", 6);
    let mut zk = Ensemble::start(3).await;
    // Relays: node i reaches ZooKeeper member j through relays[i][j].
    let mut relays: Vec<Vec<Relay>> = Vec::new();
    for _ in 0..NODES {
        let mut r = Vec::new();
        for j in 0..3 {
            r.push(Relay::start(zk.client_port(j)).await);
        }
        relays.push(r);
    }
    let connect: Vec<String> = relays
        .iter()
        .map(|r| {
            r.iter()
                .map(|r| format!("127.0.0.1:{}", r.port))
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let mut c = Cluster::start(Pair::zookeeper_keys(move |i| {
        format!(
            "connect-string = \"{}\"\nnamespace = \"faults\"\nsession-ms = 4000\nsession-percent = 33\nconnection-ms = 1500",
            connect[i]
        )
    }))
    .await;
    let session = c.bounds.holder_dies;
    let mut run = Run::start(&c.p.ports);
    eprintln!(
        "ZooKeeper fault injection: {faults} faults, seed {} (replay: LOCKGATE_FAULT_SEED={})",
        run.seed, run.seed
    );
    for n in 0..faults {
        let (active, fault, target) = run.next_fault(n, &c.p.ports, &ZK_FAULTS).await;
        let injected = Instant::now();
        let bound = match fault {
            Fault::KillAndRestart
            | Fault::FrozenPastSession
            | Fault::Partition
            | Fault::EnsembleDown => session,
            Fault::StopAndContinue(ms) => Duration::from_millis(ms),
            Fault::BrokerDies => c.bounds.broker_dies.unwrap_or_default(),
            _ => c.bounds.holder_stops,
        };
        match fault {
            Fault::FrozenPastSession => {
                c.p.nodes[target].signal(libc::SIGSTOP);
                wait_any_serving(&c.p.ports, bound + SLACK).await;
                c.p.nodes[target].signal(libc::SIGCONT);
            }
            Fault::ZkMemberDies => {
                let member = run.rng.below(3) as usize;
                zk.kill(member);
                wait_any_serving(&c.p.ports, SLACK).await;
                zk.restart(member).await;
                zk.wait_serving(member).await;
            }
            Fault::EnsembleDown => {
                for j in 0..3 {
                    zk.kill(j);
                }
                // Every node fences within F; then nobody serves until the ensemble returns.
                let what = "every node fences with the ensemble down";
                eventually(c.bounds.fence_within + SLACK, what, async || {
                    serving(&c.p.ports).await.is_none().then_some(())
                })
                .await;
                for j in 0..3 {
                    zk.restart(j).await;
                }
                for j in 0..3 {
                    zk.wait_serving(j).await;
                }
                wait_any_serving(&c.p.ports, bound + SLACK).await;
            }
            Fault::Partition => {
                for r in &relays[target] {
                    r.blackhole();
                }
                // Another node serves once the partitioned holder's session is gone.
                let what = format!("another node serves after node{target} was partitioned");
                eventually(bound + SLACK, &what, async || {
                    serving(&c.p.ports).await.filter(|i| *i != target)
                })
                .await;
                for r in &relays[target] {
                    r.heal();
                }
            }
            other => c.inject(other, target, bound).await,
        }
        run.recovered(&c.p.ports, active, injected, bound).await;
    }
    run.finish(&c.p.up).await;
}

/// The checker: no overlap between nodes, no acknowledged message lost.
fn check(
    witnesses: &[Upstream],
    acked: &Mutex<Vec<String>>,
    excused: &[(Instant, Instant)],
    t0: Instant,
    seed: u64,
    faults: usize,
    timeline: &str,
) {
    let mut problems = Vec::new();
    let per_node: Vec<_> = witnesses.iter().map(Upstream::intervals).collect();
    for a in 0..NODES {
        for b in (a + 1)..NODES {
            for (fa, la, _) in &per_node[a] {
                for (fb, lb, _) in &per_node[b] {
                    let overlap_start = (*fa).max(*fb);
                    let overlap_end = (*la).min(*lb);
                    let within_excuse = excused
                        .iter()
                        .any(|(from, to)| *from <= overlap_start && overlap_end <= *to);
                    if within_excuse && overlap_end > overlap_start {
                        eprintln!(
                            "excused (lock file replaced): node{a} and node{b} overlapped {:?} .. {:?}",
                            overlap_start - t0,
                            overlap_end - t0
                        );
                    } else if overlap_end > overlap_start && overlap_end - overlap_start > TOLERANCE
                    {
                        problems.push(format!(
                            "node{a} and node{b} forwarded at the same time: {:?} .. {:?}",
                            overlap_start - t0,
                            overlap_end - t0
                        ));
                    }
                }
            }
        }
    }
    let received: HashSet<String> = per_node
        .iter()
        .flatten()
        .flat_map(|(_, _, lines)| lines.iter().cloned())
        .collect();
    let acked = acked.lock().unwrap().clone();
    let lost: Vec<&String> = acked.iter().filter(|m| !received.contains(*m)).collect();
    if !lost.is_empty() {
        problems.push(format!(
            "{} acknowledged messages never reached an upstream: {:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        ));
    }
    eprintln!(
        "fault injection: {faults} faults in {:?}, {} messages acknowledged, {} upstream connections",
        t0.elapsed(),
        acked.len(),
        per_node.iter().map(Vec::len).sum::<usize>()
    );
    eprintln!("{timeline}");
    assert!(
        acked.len() > faults,
        "the clients hardly got through: {} acknowledged",
        acked.len()
    );
    assert!(
        problems.is_empty(),
        "seed {seed}:\n{}\ntimeline:\n{timeline}",
        problems.join("\n")
    );
}

fn seed() -> u64 {
    std::env::var("LOCKGATE_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        })
}

/// The soak report: faults injected, failovers, and the distribution of recovery times.
fn report(recoveries: &[Duration], failovers: usize) {
    let mut all: Vec<Duration> = recoveries.to_vec();
    all.sort();
    let pct = |p: f64| {
        all.get(((p * all.len() as f64).ceil() as usize).clamp(1, all.len().max(1)) - 1)
            .copied()
            .unwrap_or_default()
    };
    eprintln!(
        "soak report: {} faults, {failovers} failovers; time to serve again: min {:?}, median {:?}, p99 {:?}, max {:?}",
        all.len(),
        all.first().copied().unwrap_or_default(),
        pct(0.5),
        pct(0.99),
        all.last().copied().unwrap_or_default()
    );
}
