//! Fault injection: three lockgate nodes contend for one file lock, each in front of its own
//! witness upstream, while failover clients send sequence-numbered messages and a seeded
//! random schedule injects faults: SIGKILL and restart, SIGSTOP/SIGCONT, the active node's
//! broker dying and coming back (health gating), a step-down through the admin endpoint, and
//! the node's file descriptors running out.
//!
//! The witness upstreams timestamp every chunk they receive on one clock (this process's), per
//! connection. The checker asserts:
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
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use lockgate::config::FailoverBounds;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
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

/// One connection's chunks, timestamped on arrival.
#[derive(Default)]
struct ConnLog {
    chunks: Vec<(Instant, Vec<u8>)>,
}

/// An echo upstream that timestamps what it receives, and can die and come back.
struct Witness {
    addr: std::net::SocketAddr,
    conns: Arc<Mutex<Vec<Arc<Mutex<ConnLog>>>>>,
    accept: Option<JoinHandle<()>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Witness {
    async fn start() -> Witness {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut w = Witness {
            addr: l.local_addr().unwrap(),
            conns: Arc::default(),
            accept: None,
            tasks: Arc::default(),
        };
        w.serve(l);
        w
    }

    fn serve(&mut self, l: TcpListener) {
        let (conns, tasks) = (self.conns.clone(), self.tasks.clone());
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let log = Arc::new(Mutex::new(ConnLog::default()));
                conns.lock().unwrap().push(log.clone());
                tasks.lock().unwrap().push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                log.lock()
                                    .unwrap()
                                    .chunks
                                    .push((Instant::now(), buf[..n].to_vec()));
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }));
            }
        }));
    }

    /// The broker dies: listener closed, every connection dropped.
    fn kill(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    async fn restart(&mut self) {
        let l = TcpListener::bind(self.addr).await.unwrap();
        self.serve(l);
    }

    /// (first, last, lines) of every connection that carried bytes.
    fn intervals(&self) -> Vec<(Instant, Instant, Vec<String>)> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .filter_map(|c| {
                let c = c.lock().unwrap();
                let first = c.chunks.first()?.0;
                let last = c.chunks.last()?.0;
                let bytes: Vec<u8> = c
                    .chunks
                    .iter()
                    .flat_map(|(_, b)| b.iter().copied())
                    .collect();
                let lines = String::from_utf8_lossy(&bytes)
                    .lines()
                    .map(str::to_owned)
                    .collect();
                Some((first, last, lines))
            })
            .collect()
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Failover clients: send `c<id>-<seq>`, wait for the echo, move down the list on failure.
fn start_clients(
    ports: [u16; NODES],
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) -> Vec<JoinHandle<()>> {
    (0..4)
        .map(|id| {
            let (stop, acked) = (stop.clone(), acked.clone());
            tokio::spawn(async move {
                let mut current = id % NODES;
                let mut conn: Option<BufReader<TcpStream>> = None;
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if conn.is_none() {
                        match try_connect(ports[current], Duration::from_millis(300)).await {
                            Some(s) => conn = Some(BufReader::new(s)),
                            None => {
                                current = (current + 1) % NODES;
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        }
                    }
                    let Some(c) = conn.as_mut() else { continue };
                    seq += 1;
                    let msg = format!("c{id}-{seq}\n");
                    let ok = tokio::time::timeout(Duration::from_millis(500), async {
                        c.get_mut().write_all(msg.as_bytes()).await?;
                        let mut line = String::new();
                        c.read_line(&mut line).await?;
                        Ok::<bool, std::io::Error>(line == msg)
                    })
                    .await
                    .is_ok_and(|r| r.is_ok_and(|ok| ok));
                    if ok {
                        acked.lock().unwrap().push(msg.trim_end().to_owned());
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    } else {
                        if let Some(c) = conn.take() {
                            abort(c.into_inner());
                        }
                        current = (current + 1) % NODES;
                    }
                }
            })
        })
        .collect()
}

async fn serving(ports: &[u16; NODES]) -> Option<usize> {
    for (i, p) in ports.iter().enumerate() {
        if serves(*p).await {
            return Some(i);
        }
    }
    None
}

/// Three nodes, their witnesses and configs; the faults every backend shares.
struct Cluster {
    witnesses: Vec<Witness>,
    ports: [u16; NODES],
    admin: [u16; NODES],
    configs: Vec<PathBuf>,
    nodes: Vec<Node>,
    bounds: FailoverBounds,
    // Last: the nodes' logs live here.
    dir: tempfile::TempDir,
}

impl Cluster {
    /// `zookeeper(i)`: node i's ZooKeeper keys, or `None` for the shared file lock.
    async fn start(zookeeper: impl Fn(usize) -> Option<String>) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        std::fs::create_dir(&locks).unwrap();
        let mut witnesses = Vec::new();
        for _ in 0..NODES {
            witnesses.push(Witness::start().await);
        }
        let ports: [u16; NODES] = [free_port(), free_port(), free_port()];
        let admin: [u16; NODES] = [free_port(), free_port(), free_port()];
        let configs: Vec<PathBuf> = (0..NODES)
            .map(|i| {
                NodeSpec {
                    node_id: &format!("node{i}"),
                    locks: &locks,
                    client_port: ports[i],
                    upstream: witnesses[i].addr,
                    check_period_ms: 300,
                    health: Some((100, 1, 2)),
                    extra: format!("\n[admin]\nlisten = \"127.0.0.1:{}\"\n", admin[i]),
                    zookeeper: zookeeper(i),
                }
                .write(dir.path())
            })
            .collect();
        let bounds = lockgate::config::Config::load(&configs[0])
            .unwrap()
            .coordinators[0]
            .failover_bounds();
        let mut nodes = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            nodes.push(Node::start(&format!("node{i}"), c, dir.path()).await);
        }
        wait_until_serving(&ports, BOUND).await;
        Cluster {
            witnesses,
            ports,
            admin,
            configs,
            nodes,
            bounds,
            dir,
        }
    }

    async fn kill_and_restart(&mut self, i: usize, bound: Duration) {
        self.nodes[i].signal(libc::SIGKILL);
        self.nodes[i].wait_exit().await;
        wait_until_serving(&self.ports, bound + SLACK).await;
        self.nodes[i] = Node::start(&format!("node{i}"), &self.configs[i], self.dir.path()).await;
    }

    async fn stop_and_continue(&mut self, i: usize, ms: u64) {
        self.nodes[i].signal(libc::SIGSTOP);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.nodes[i].signal(libc::SIGCONT);
        wait_until_serving(&self.ports, SLACK).await;
    }

    async fn broker_dies(&mut self, i: usize, bound: Duration) {
        self.witnesses[i].kill();
        wait_until_serving(&self.ports, bound + SLACK).await;
        self.witnesses[i].restart().await;
    }

    async fn step_down(&self, i: usize, bound: Duration) {
        let (code, body) = http(
            self.admin[i],
            "POST",
            "/locks/clients-lock/step-down?hold-off-ms=300",
            &[],
        )
        .await;
        assert_eq!(code, 200, "{body}");
        wait_until_serving(&self.ports, bound + SLACK).await;
    }

    /// Lowers node i's descriptor limit to what it has open plus a few, opens more
    /// connections than that, then restores the limit: it must keep serving.
    async fn out_of_descriptors(&self, i: usize, bound: Duration) {
        let (_, fds) = self.nodes[i].threads_and_fds();
        // Only the soft limit changes; the hard one stays, so it can be restored.
        let set = |n: usize, pid: i32| {
            std::process::Command::new("prlimit")
                .arg(format!("--pid={pid}"))
                .arg(format!("--nofile={n}:"))
                .status()
                .is_ok_and(|s| s.success())
        };
        assert!(
            set(fds + 4, self.nodes[i].pid),
            "prlimit (util-linux) cannot lower the limit"
        );
        let mut held = Vec::new();
        for _ in 0..16 {
            if let Some(s) = try_connect(self.ports[i], Duration::from_millis(100)).await {
                held.push(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(held);
        assert!(
            set(20000, self.nodes[i].pid),
            "cannot restore the descriptor limit"
        );
        assert!(
            self.nodes[i].log_text().contains("out of file descriptors"),
            "node{i} never ran out of descriptors:\n{}",
            self.nodes[i].log_text()
        );
        wait_until_serving(&self.ports, bound + SLACK).await;
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
    fn start(ports: [u16; NODES]) -> Run {
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
        ports: &[u16; NODES],
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
    async fn finish(self, witnesses: &[Witness]) {
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
    StopAndContinue(u64),
    BrokerDies,
    StepDown,
    OutOfDescriptors,
    /// An operator error: the lock file is replaced (or deleted) under the holder.
    ReplaceLockFile(bool),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_two_active_and_nothing_lost_under_random_faults() {
    let faults = env_usize("LOCKGATE_FAULTS", 20);
    // Soak mode: keep injecting until LOCKGATE_SOAK_SECS have passed.
    let soak = Duration::from_secs(env_usize("LOCKGATE_SOAK_SECS", 0) as u64);
    let mut c = Cluster::start(|_| None).await;
    let mut run = Run::start(c.ports);
    eprintln!(
        "fault injection: {faults} faults, seed {} (replay: LOCKGATE_FAULT_SEED={})",
        run.seed, run.seed
    );
    let mut n = 0;
    while n < faults || run.t0.elapsed() < soak {
        n += 1;
        let active = serving(&c.ports).await;
        let fault = match run.rng.below(6) {
            0 => Fault::KillAndRestart,
            1 => Fault::StopAndContinue(50 + run.rng.below(250)),
            2 => Fault::BrokerDies,
            3 => Fault::StepDown,
            4 => Fault::ReplaceLockFile(run.rng.below(2) == 0),
            _ => Fault::OutOfDescriptors,
        };
        let target = active.unwrap_or(run.rng.below(NODES as u64) as usize);
        run.log(format!(
            "fault {n}: {fault:?} on node{target} (active: {active:?})"
        ));
        let bound = match fault {
            Fault::KillAndRestart | Fault::StepDown | Fault::OutOfDescriptors => {
                c.bounds.holder_stops
            }
            Fault::StopAndContinue(ms) => Duration::from_millis(ms),
            Fault::BrokerDies => c.bounds.broker_dies.unwrap_or_default(),
            Fault::ReplaceLockFile(_) => c.bounds.fence_within,
        };
        let injected = Instant::now();
        match fault {
            Fault::KillAndRestart => c.kill_and_restart(target, bound).await,
            Fault::StopAndContinue(ms) => c.stop_and_continue(target, ms).await,
            Fault::BrokerDies => c.broker_dies(target, bound).await,
            Fault::StepDown => c.step_down(target, bound).await,
            Fault::OutOfDescriptors => c.out_of_descriptors(target, bound).await,
            Fault::ReplaceLockFile(delete) => {
                // Until the holder's next check a standby may lock the new file while the
                // holder still serves: the documented window, excused in the checker.
                let window = bound + Duration::from_secs(1);
                run.excused.push((injected, injected + window));
                let path = c.dir.path().join("locks/mirror-cluster-clients");
                if delete {
                    let _ = std::fs::remove_file(&path);
                } else {
                    let tmp = c.dir.path().join("locks/replacement");
                    std::fs::write(&tmp, b"").unwrap();
                    std::fs::rename(&tmp, &path).unwrap();
                }
                wait_until_serving(&c.ports, bound + SLACK).await;
                // Let the window close before the next fault, so no later overlap hides in it.
                tokio::time::sleep_until((injected + window).into()).await;
            }
        }
        run.recovered(&c.ports, active, injected, bound).await;
    }
    run.finish(&c.witnesses).await;
}

#[derive(Clone, Copy, Debug)]
enum ZkFault {
    KillAndRestart,
    /// Shorter than F: nothing should change.
    ShortStop(u64),
    /// Longer than the session: the standby takes over; the woken holder fences.
    FrozenPastSession,
    BrokerDies,
    StepDown,
    ZkMemberDies,
    EnsembleDown,
    Partition,
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
    let mut c = Cluster::start(|i| {
        Some(format!(
            "connect-string = \"{}\"\nnamespace = \"faults\"\nsession-ms = 4000\nsession-percent = 33\nconnection-ms = 1500",
            connect[i]
        ))
    })
    .await;
    let session = c.bounds.holder_dies;
    let mut run = Run::start(c.ports);
    eprintln!(
        "ZooKeeper fault injection: {faults} faults, seed {} (replay: LOCKGATE_FAULT_SEED={})",
        run.seed, run.seed
    );
    for n in 0..faults {
        let active = serving(&c.ports).await;
        let fault = match run.rng.below(8) {
            0 => ZkFault::KillAndRestart,
            1 => ZkFault::ShortStop(50 + run.rng.below(250)),
            2 => ZkFault::FrozenPastSession,
            3 => ZkFault::BrokerDies,
            4 => ZkFault::StepDown,
            5 => ZkFault::ZkMemberDies,
            6 => ZkFault::EnsembleDown,
            _ => ZkFault::Partition,
        };
        let target = active.unwrap_or(run.rng.below(NODES as u64) as usize);
        run.log(format!(
            "fault {n}: {fault:?} on node{target} (active: {active:?})"
        ));
        let injected = Instant::now();
        let bound = match fault {
            ZkFault::KillAndRestart
            | ZkFault::FrozenPastSession
            | ZkFault::Partition
            | ZkFault::EnsembleDown => session,
            ZkFault::ShortStop(ms) => Duration::from_millis(ms),
            ZkFault::BrokerDies => c.bounds.broker_dies.unwrap_or_default(),
            ZkFault::StepDown | ZkFault::ZkMemberDies => c.bounds.holder_stops,
        };
        match fault {
            ZkFault::KillAndRestart => c.kill_and_restart(target, bound).await,
            ZkFault::ShortStop(ms) => c.stop_and_continue(target, ms).await,
            ZkFault::FrozenPastSession => {
                c.nodes[target].signal(libc::SIGSTOP);
                wait_until_serving(&c.ports, bound + SLACK).await;
                c.nodes[target].signal(libc::SIGCONT);
            }
            ZkFault::BrokerDies => c.broker_dies(target, bound).await,
            ZkFault::StepDown => c.step_down(target, bound).await,
            ZkFault::ZkMemberDies => {
                let member = run.rng.below(3) as usize;
                zk.kill(member);
                wait_until_serving(&c.ports, SLACK).await;
                zk.restart(member).await;
                zk.wait_serving(member).await;
            }
            ZkFault::EnsembleDown => {
                for j in 0..3 {
                    zk.kill(j);
                }
                // Every node fences within F; then nobody serves until the ensemble returns.
                let fenced_by = Instant::now() + c.bounds.fence_within + SLACK;
                while serving(&c.ports).await.is_some() {
                    assert!(
                        Instant::now() < fenced_by,
                        "a node still serves with the ensemble down"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                for j in 0..3 {
                    zk.restart(j).await;
                }
                for j in 0..3 {
                    zk.wait_serving(j).await;
                }
                wait_until_serving(&c.ports, bound + SLACK).await;
            }
            ZkFault::Partition => {
                for r in &relays[target] {
                    r.blackhole();
                }
                // Another node serves once the partitioned holder's session is gone.
                let deadline = Instant::now() + bound + SLACK;
                loop {
                    if serving(&c.ports).await.is_some_and(|i| i != target) {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "no other node served after node{target} was partitioned"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                for r in &relays[target] {
                    r.heal();
                }
            }
        }
        run.recovered(&c.ports, active, injected, bound).await;
    }
    run.finish(&c.witnesses).await;
}

/// Waits until one node serves (a probe round trip), failing after `bound`.
async fn wait_until_serving(ports: &[u16; NODES], bound: Duration) {
    let deadline = Instant::now() + bound;
    loop {
        if serving(ports).await.is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "no node served within {bound:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The checker: no overlap between nodes, no acknowledged message lost.
fn check(
    witnesses: &[Witness],
    acked: &Mutex<Vec<String>>,
    excused: &[(Instant, Instant)],
    t0: Instant,
    seed: u64,
    faults: usize,
    timeline: &str,
) {
    let mut problems = Vec::new();
    let per_node: Vec<_> = witnesses.iter().map(Witness::intervals).collect();
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
