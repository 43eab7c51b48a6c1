//! Takeover time of the HA pair, per backend and fault, measured from the fault to the first
//! accepted connection on the standby's client port, over many runs.
//!
//! Run: `cargo bench --bench takeover` (LOCKGATE_BENCH_RUNS=N to change the 50 runs per case,
//! LOCKGATE_BENCH_ONLY="broker death" for the cases whose fault names contain those words;
//! ZooKeeper SIGKILL cases, which wait for a session to expire, run a fifth as many). The
//! ZooKeeper cases need Debian's `zookeeper` package and are skipped without it. Prints a table
//! with Artemis's expected figure beside each case and writes `target/takeover.json`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::commands::admin_post;
use common::config_file::{env_or, file_spec, scratch, with_admin};
use common::*;

/// ZooKeeper timing for the bench: S = 2000 ms (the test server allows 1000..60000),
/// C = 800 ms, F = 25 % = 500 ms.
const ZK_SESSION_MS: u64 = 2000;
const ZK_TIMING: &str = "session-ms = 2000\nsession-percent = 25\nconnection-ms = 800";

#[derive(Clone, Copy)]
enum Fault {
    Sigkill,
    Sigterm,
    BrokerDeath,
    /// The broker dies, then a client connects to the holder (its connect upstream is
    /// refused): timed from that client's connect.
    BrokerDeathSeen,
    /// `POST /locks/clients-lock/step-down` on the holder's admin endpoint.
    StepDown,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Sigkill => "holder SIGKILL",
            Fault::Sigterm => "holder SIGTERM",
            Fault::BrokerDeath => "broker death",
            Fault::BrokerDeathSeen => "broker death+client",
            Fault::StepDown => "step-down",
        }
    }
}

struct Case {
    /// `None`: the file lock; `Some(connect string)`: ZooKeeper.
    zookeeper: Option<String>,
    fault: Fault,
    check_period_ms: u64,
    /// (interval-ms, rise, fall)
    health: Option<(u64, u32, u32)>,
}

impl Case {
    /// What Artemis would take: file lock, the standby's next check-period tick plus a 1 s
    /// tryLock; ZooKeeper, the session timeout plus a check-period. (Broker death: Artemis
    /// does not fail over while the broker's JVM lives; for a dead JVM it is as a kill.)
    fn artemis_ms(&self) -> u64 {
        match self.zookeeper {
            None => self.check_period_ms + 1000,
            Some(_) => ZK_SESSION_MS + self.check_period_ms,
        }
    }

    fn backend(&self) -> &'static str {
        if self.zookeeper.is_some() {
            "zookeeper"
        } else {
            "file"
        }
    }

    fn target(&self) -> String {
        match (self.fault, self.health, &self.zookeeper) {
            (Fault::BrokerDeath, Some((interval, _, fall)), _) => {
                format!("<= {} ms", interval * u64::from(fall) + 20)
            }
            (Fault::BrokerDeathSeen, _, _) => "median <= 50 ms".to_owned(),
            (Fault::Sigkill, _, Some(_)) => format!("bounded by the session, {ZK_SESSION_MS} ms"),
            (Fault::Sigterm, _, Some(_)) => "<= 100 ms".to_owned(),
            _ => "median <= 20 ms, p99 <= 100 ms".to_owned(),
        }
    }
}

/// One run: a fresh pair, node0 active, node1 standing by; inject the fault; time until
/// node1's client port accepts.
async fn run_once(case: &Case, run: usize) -> Duration {
    let (dir, locks) = scratch();
    let up = [Upstream::start().await, Upstream::start().await];
    let ports = [free_port(), free_port()];
    let admin = [free_port(), free_port()];
    let config = |i: usize, id| {
        let spec = NodeSpec {
            check_period_ms: case.check_period_ms,
            health: case.health,
            // A namespace per run: a killed holder's node outlives its run until it expires.
            zookeeper: case.zookeeper.as_ref().map(|cs| {
                format!(
                    "connect-string = \"{cs}\"\nnamespace = \"bench-{run}-{}\"\n{ZK_TIMING}",
                    std::process::id()
                )
            }),
            ..file_spec(id, &locks, ports[i], up[i].addr)
        };
        with_admin(spec.write(dir.path()), admin[i], "")
    };
    let (c0, c1) = (config(0, "node0"), config(1, "node1"));
    let mut node0 = Node::start("node0", &c0, dir.path()).await;
    node0.wait_active().await;
    let mut node1 = Node::start("node1", &c1, dir.path()).await;
    // The standby is contending (waiting on the lock) before the fault.
    node1.wait_standby("contending").await;
    if case.zookeeper.is_some() {
        // ... and its contender node exists (its log says so).
        node1.wait_log("contending for the lock", None).await;
    }
    let mut fault = Instant::now();
    match case.fault {
        Fault::Sigkill => node0.signal(libc::SIGKILL),
        Fault::Sigterm => node0.signal(libc::SIGTERM),
        Fault::BrokerDeath => up[0].stop_listening(),
        Fault::BrokerDeathSeen => {
            up[0].stop_listening();
            up[0].wait_refusing().await;
            // The first client after the death: node0 accepts it, its connect upstream fails.
            fault = Instant::now();
            if let Some(s) = try_connect(ports[0], Duration::from_millis(100)).await {
                abort(s);
            }
        }
        Fault::StepDown => {
            admin_post(admin[0], "/locks/clients-lock/step-down?hold-off-ms=60000").await;
        }
    }
    let deadline = fault + BOUND;
    loop {
        if let Some(s) = try_connect(ports[1], Duration::from_millis(100)).await {
            let took = fault.elapsed();
            abort(s);
            return took;
        }
        assert!(Instant::now() < deadline, "no takeover within {BOUND:?}");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = env_or("LOCKGATE_BENCH_RUNS", 50);
    let file = |fault, check_period_ms, health| Case {
        zookeeper: None,
        fault,
        check_period_ms,
        health,
    };
    let mut cases = vec![
        file(Fault::Sigkill, 1000, None),
        file(Fault::Sigkill, 5000, None),
        file(Fault::Sigterm, 1000, None),
        file(Fault::Sigterm, 5000, None),
        file(Fault::BrokerDeath, 1000, Some((200, 1, 2))),
        file(Fault::BrokerDeath, 5000, Some((200, 1, 2))),
        // The defaults (interval 1000 ms, fall 2; rise 1 only to start faster): a client's
        // failed connect against the active check alone.
        file(Fault::BrokerDeathSeen, 5000, Some((1000, 1, 2))),
        file(Fault::BrokerDeath, 5000, Some((1000, 1, 2))),
        file(Fault::StepDown, 5000, None),
    ];
    // One ZooKeeper server for every ZooKeeper case.
    let zk = if common::zk::available() {
        Some(common::zk::Ensemble::start(1).await)
    } else {
        println!("(ZooKeeper is not installed: its cases are skipped)");
        None
    };
    if let Some(zk) = &zk {
        let z = |fault, check_period_ms, health| Case {
            zookeeper: Some(zk.connect_string()),
            fault,
            check_period_ms,
            health,
        };
        cases.push(z(Fault::Sigterm, 1000, None));
        cases.push(z(Fault::Sigterm, 5000, None));
        cases.push(z(Fault::BrokerDeath, 5000, Some((200, 1, 2))));
        cases.push(z(Fault::BrokerDeathSeen, 5000, Some((1000, 1, 2))));
        cases.push(z(Fault::StepDown, 5000, None));
        cases.push(z(Fault::Sigkill, 1000, None));
        cases.push(z(Fault::Sigkill, 5000, None));
    }
    let machine = format!(
        "{} cores, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!("takeover time ({machine})\n");
    println!(
        "{:<10} {:<15} {:>6} {:>18} {:>4} {:>8} {:>8} {:>8} {:>8}  {:>8}  target",
        "backend", "fault", "period", "health", "runs", "min ms", "median", "p99", "max", "Artemis"
    );
    // LOCKGATE_BENCH_ONLY=WORDS: only the cases whose fault name contains it.
    if let Ok(only) = std::env::var("LOCKGATE_BENCH_ONLY") {
        cases.retain(|c| c.fault.name().contains(only.as_str()));
    }
    let mut json = format!("{{\n  \"machine\": \"{machine}\",\n  \"cases\": [\n");
    for (n, case) in cases.iter().enumerate() {
        let n_runs = match (&case.zookeeper, case.fault) {
            (Some(_), Fault::Sigkill) => (runs / 5).max(3),
            _ => runs,
        };
        let mut ms: Vec<f64> = Vec::with_capacity(n_runs);
        for run in 0..n_runs {
            ms.push(run_once(case, n * 1000 + run).await.as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        let (min, med, p99, max) = (
            ms[0],
            percentile(&ms, 0.5),
            percentile(&ms, 0.99),
            ms[ms.len() - 1],
        );
        let health = case
            .health
            .map_or("-".to_owned(), |(i, r, f)| format!("{i}ms rise{r} fall{f}"));
        println!(
            "{:<10} {:<15} {:>6} {:>18} {:>4} {:>8.1} {:>8.1} {:>8.1} {:>8.1}  {:>8}  {}",
            case.backend(),
            case.fault.name(),
            case.check_period_ms,
            health,
            n_runs,
            min,
            med,
            p99,
            max,
            case.artemis_ms(),
            case.target()
        );
        let _ = writeln!(
            json,
            "    {{\"backend\": \"{}\", \"fault\": \"{}\", \"check_period_ms\": {}, \"health\": \"{health}\", \"runs\": {n_runs}, \"min_ms\": {min:.2}, \"median_ms\": {med:.2}, \"p99_ms\": {p99:.2}, \"max_ms\": {max:.2}, \"artemis_ms\": {}}}{}",
            case.backend(),
            case.fault.name(),
            case.check_period_ms,
            case.artemis_ms(),
            if n + 1 < cases.len() { "," } else { "" }
        );
    }
    json.push_str("  ]\n}\n");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/takeover.json");
    match std::fs::write(&out, json) {
        Ok(()) => println!("\nwritten: {}", out.display()),
        Err(e) => eprintln!("cannot write {}: {e}", out.display()),
    }
}
