//! Takeover time of the HA pair, per backend and fault, measured from the fault to the first
//! accepted connection on the standby's client port, over many runs.
//!
//! Run: `cargo bench --bench takeover` (LOCKGATE_BENCH_RUNS=N to change the 50 runs per case).
//! Prints a table with Artemis's expected figure beside each case and writes
//! `target/takeover.json`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::*;

#[derive(Clone, Copy)]
enum Fault {
    Sigkill,
    Sigterm,
    BrokerDeath,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Sigkill => "holder SIGKILL",
            Fault::Sigterm => "holder SIGTERM",
            Fault::BrokerDeath => "broker death",
        }
    }
}

struct Case {
    fault: Fault,
    check_period_ms: u64,
    /// (interval-ms, rise, fall)
    health: Option<(u64, u32, u32)>,
}

impl Case {
    /// What Artemis's file lock coordinator would take: the standby notices at its next
    /// check-period tick plus a 1 s tryLock (broker death: Artemis does not fail over at all
    /// while the broker's JVM lives; for a dead JVM it is the same as a kill).
    fn artemis_ms(&self) -> u64 {
        self.check_period_ms + 1000
    }

    fn target(&self) -> String {
        match (self.fault, self.health) {
            (Fault::BrokerDeath, Some((interval, _, fall))) => {
                format!("<= {} ms", interval * u64::from(fall) + 20)
            }
            _ => "median <= 20 ms, p99 <= 100 ms".to_owned(),
        }
    }
}

/// One run: a fresh pair, node0 active, node1 standing by; inject the fault; time until
/// node1's client port accepts.
async fn run_once(case: &Case) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let locks = dir.path().join("locks");
    std::fs::create_dir(&locks).unwrap();
    let up = [Upstream::start().await, Upstream::start().await];
    let ports = [free_port(), free_port()];
    let config = |i: usize, id| {
        NodeSpec {
            node_id: id,
            locks: &locks,
            client_port: ports[i],
            upstream: up[i].addr,
            check_period_ms: case.check_period_ms,
            health: case.health,
            extra: String::new(),
            zookeeper: None,
        }
        .write(dir.path())
    };
    let (c0, c1) = (config(0, "node0"), config(1, "node1"));
    let mut node0 = Node::start("node0", &c0, dir.path()).await;
    node0.wait_active().await;
    let mut node1 = Node::start("node1", &c1, dir.path()).await;
    // The standby is contending (its waiter blocked on the lock) before the fault.
    node1.wait_standby("contending").await;
    let fault = Instant::now();
    match case.fault {
        Fault::Sigkill => node0.signal(libc::SIGKILL),
        Fault::Sigterm => node0.signal(libc::SIGTERM),
        Fault::BrokerDeath => up[0].stop_listening(),
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
    let runs: usize = std::env::var("LOCKGATE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let cases = [
        Case {
            fault: Fault::Sigkill,
            check_period_ms: 1000,
            health: None,
        },
        Case {
            fault: Fault::Sigkill,
            check_period_ms: 5000,
            health: None,
        },
        Case {
            fault: Fault::Sigterm,
            check_period_ms: 1000,
            health: None,
        },
        Case {
            fault: Fault::Sigterm,
            check_period_ms: 5000,
            health: None,
        },
        Case {
            fault: Fault::BrokerDeath,
            check_period_ms: 1000,
            health: Some((200, 1, 2)),
        },
        Case {
            fault: Fault::BrokerDeath,
            check_period_ms: 5000,
            health: Some((200, 1, 2)),
        },
    ];
    let machine = format!(
        "{} cores, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!("takeover time, file lock, {runs} runs per case ({machine})\n");
    println!(
        "{:<16} {:>8} {:>18} {:>9} {:>9} {:>9} {:>9}  {:>10}  target",
        "fault", "period", "health", "min ms", "median", "p99", "max", "Artemis ms"
    );
    let mut json = String::from("{\n  \"backend\": \"file\",\n");
    let _ = writeln!(
        json,
        "  \"machine\": \"{machine}\",\n  \"runs\": {runs},\n  \"cases\": ["
    );
    for (n, case) in cases.iter().enumerate() {
        let mut ms: Vec<f64> = Vec::with_capacity(runs);
        for _ in 0..runs {
            ms.push(run_once(case).await.as_secs_f64() * 1000.0);
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
            "{:<16} {:>8} {:>18} {:>9.1} {:>9.1} {:>9.1} {:>9.1}  {:>10}  {}",
            case.fault.name(),
            case.check_period_ms,
            health,
            min,
            med,
            p99,
            max,
            case.artemis_ms(),
            case.target()
        );
        let _ = writeln!(
            json,
            "    {{\"fault\": \"{}\", \"check_period_ms\": {}, \"health\": \"{health}\", \"min_ms\": {min:.2}, \"median_ms\": {med:.2}, \"p99_ms\": {p99:.2}, \"max_ms\": {max:.2}, \"artemis_ms\": {}}}{}",
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
