//! How cost grows: `lockgate check` and start-up with 1,000 routes, and the time to close a
//! gate that carries 9,000 live connections (all reset).
//!
//! Run: `cargo bench --bench scale` (`LOCKGATE_BENCH_RUNS=N`, default 5 runs per case;
//! `LOCKGATE_BENCH_LIVE=N` live connections, default 9000). Prints the median, min and max of
//! each case. Loopback only.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::commands::{admin_post, cli, text};
use common::config_file::{env_or, write_config};
use common::solo::Solo;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUTES: usize = 1000;

fn raise_nofile(want: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    if cur.current.is_some_and(|c| c >= want) {
        return;
    }
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want),
            maximum: Some(cur.maximum.map_or(want, |m| m.max(want))),
        },
    );
}

/// A config of `ROUTES` open routes to one upstream.
fn many_routes(dir: &std::path::Path, upstream: std::net::SocketAddr) -> std::path::PathBuf {
    let mut text = String::from("node-id = \"scale\"\nshutdown-grace-ms = 100\n");
    for i in 0..ROUTES {
        let _ = write!(
            text,
            "\n[[route]]\nname = \"r{i}\"\nlisten = \"127.0.0.1:{}\"\nforward-to = \"{upstream}\"\n",
            free_port()
        );
    }
    write_config(dir, "routes", &text)
}

fn stats(mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    format!(
        "median {:>8.1} ms   min {:>8.1}   max {:>8.1}   ({} runs)",
        ms[ms.len() / 2],
        ms[0],
        ms[ms.len() - 1],
        ms.len()
    )
}

/// One node holding a gated route that carries `live` connections (each has done one echo);
/// then a step-down: time until every client has seen its connection end.
async fn gate_close(live: usize) -> (f64, f64) {
    let solo = Solo::active("node0", "", |spec| NodeSpec {
        check_period_ms: 5000,
        ..spec
    })
    .await;
    let (node, port, admin) = (&solo.node, solo.port, solo.admin);
    let mut conns = Vec::with_capacity(live);
    for _ in 0..live {
        let mut s = try_connect(port, Duration::from_secs(5))
            .await
            .expect("connect through the gate");
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        conns.push(s);
    }
    let rss_kib = match rss_kib(node.pid) {
        0 => f64::NAN,
        kib => kib as f64,
    };
    let mut ends = tokio::task::JoinSet::new();
    for mut s in conns {
        ends.spawn(async move {
            let mut b = [0u8; 16];
            // Ends with 0 (FIN) or an error (RST): either way the connection is gone.
            let _ = tokio::time::timeout(BOUND, s.read(&mut b)).await;
        });
    }
    let t0 = Instant::now();
    admin_post(admin, "/locks/clients-lock/step-down?hold-off-ms=60000").await;
    while ends.join_next().await.is_some() {}
    let took = t0.elapsed().as_secs_f64() * 1000.0;
    (took, rss_kib)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = env_or("LOCKGATE_BENCH_RUNS", 5);
    let live: usize = env_or("LOCKGATE_BENCH_LIVE", 9000);
    raise_nofile(live as u64 * 4 + 4096);
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = many_routes(dir.path(), up.addr);

    let mut check = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let out = cli(&["check"], &config).await;
        check.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(out.status.success(), "{}", text(&out));
    }
    println!("lockgate check, {ROUTES} routes:        {}", stats(check));

    let mut start = Vec::new();
    for run in 0..runs {
        let t = Instant::now();
        let mut node = Node::start(&format!("start{run}"), &config, dir.path()).await;
        start.push(t.elapsed().as_secs_f64() * 1000.0);
        // Killed and reaped: its listeners are closed before the next start binds them.
        let _ = node.child.kill().await;
    }
    println!("start-up to READY=1, {ROUTES} routes:   {}", stats(start));

    let mut close = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..runs {
        let (ms, kib) = gate_close(live).await;
        close.push(ms);
        rss.push(kib);
    }
    println!("gate close, {live} live connections: {}", stats(close));
    rss.sort_by(f64::total_cmp);
    println!(
        "  (lockgate RSS with {live} live connections: median {:.1} MiB)",
        rss[rss.len() / 2] / 1024.0
    );
}
