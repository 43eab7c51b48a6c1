//! Takeover waits on the lock, not on a timer: with `check-period = 5000` a standby serves
//! long before the next tick, after the holder dies or its broker does. The figures live in
//! `benches/takeover.rs`; these tests only bound them.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Far longer than any takeover here should take: the bound the tests assert.
const SLOW_PERIOD_MS: u64 = 5000;
const WELL_BEFORE_A_TICK: Duration = Duration::from_millis(2500);

/// node0 holding, node1 contending, with a check-period far longer than any takeover.
async fn slow_pair(health: Option<(u64, u32, u32)>) -> Pair {
    let pair = Pair::file().check_period_ms(SLOW_PERIOD_MS);
    match health {
        Some(h) => pair.health(h),
        None => pair,
    }
    .start()
    .await
}

/// Injects `fault`, waits until node1 serves, bounds the time and checks never-two.
async fn takeover_after(p: &mut Pair, what: &str, fault: impl FnOnce(&mut Pair)) {
    let mut sampler = p.sampler().await;
    let started = Instant::now();
    fault(p);
    wait_serving(p.ports[1]).await;
    let took = started.elapsed();
    eprintln!("{what} takeover with check-period {SLOW_PERIOD_MS} ms: {took:?}");
    assert!(took < WELL_BEFORE_A_TICK, "took {took:?}");
    p.nodes[1].wait_active().await;
    sampler.wait_for(|r| r.b_served > 0).await;
    assert_never_two(&sampler.finish().await, &p.nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_takeover_does_not_wait_for_the_check_period() {
    let mut p = slow_pair(None).await;
    takeover_after(&mut p, "SIGKILL", |p| p.nodes[0].signal(libc::SIGKILL)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_death_takeover_does_not_wait_for_the_check_period() {
    let mut p = slow_pair(Some((100, 1, 2))).await;
    let what = "broker-death (interval 100 ms, fall 2)";
    takeover_after(&mut p, what, |p| p.up[0].stop_listening()).await;
    p.nodes[0].wait_standby("released: health").await;
}

/// The lock moves back and forth as each broker in turn goes down and comes back; neither
/// process gains threads or descriptors per cycle (a standby's waiter thread is reused, and a
/// lock that arrives unwanted is released).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_cycles_leak_no_thread_and_no_descriptor() {
    let mut p = slow_pair(Some((50, 1, 1))).await;
    let mut baseline = None;
    for cycle in 0..8 {
        let (from, to) = (cycle % 2, 1 - cycle % 2);
        p.up[from].stop_listening();
        p.nodes[from].wait_standby("released: health").await;
        p.nodes[to].wait_active().await;
        p.up[from].resume_listening().await;
        p.nodes[from].wait_standby("contending").await;
        // The standby's own broker blinks: it withdraws (its waiter stays blocked) and
        // contends again (reusing that waiter).
        p.up[from].stop_listening();
        p.nodes[from].wait_standby("broker down").await;
        p.up[from].resume_listening().await;
        p.nodes[from].wait_standby("contending").await;
        if cycle == 1 {
            baseline = Some([p.nodes[0].threads_and_fds(), p.nodes[1].threads_and_fds()]);
        }
    }
    let base = baseline.unwrap();
    for (i, node) in p.nodes.iter().enumerate() {
        let (threads, fds) = node.threads_and_fds();
        let (t0, f0) = base[i];
        assert!(threads > 0 && fds > 0, "cannot read /proc of {}", node.name);
        assert!(
            threads <= t0 + 2,
            "{}: threads grew from {t0} to {threads}",
            node.name
        );
        assert!(
            fds <= f0 + 2,
            "{}: descriptors grew from {f0} to {fds}",
            node.name
        );
    }
}

/// node0 serves while its upstream refuses connects: a client's connect through node0 meets
/// the refusal. Returns when the client's connect was made.
async fn refuse_one_connect(p: &mut Pair) -> Instant {
    wait_serving(p.ports[0]).await;
    p.up[0].stop_listening();
    p.up[0].wait_refusing().await;
    let at = Instant::now();
    if let Some(c) = try_connect(p.ports[0], Duration::from_millis(300)).await {
        abort(c);
    }
    at
}

/// A client's connect that the dead broker refuses starts the health check at once
/// (observe-connects): the holder confirms with `fall` fast probes and releases, so takeover
/// takes milliseconds, not `interval-ms` × `fall` (2 s here, the defaults).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_connect_confirms_broker_death_in_milliseconds() {
    const INTERVAL_MS: u64 = 1000;
    const FALL: u32 = 2;
    let mut p = slow_pair(Some((INTERVAL_MS, 1, FALL))).await;
    // The first client after the broker died: accepted by node0, whose connect upstream is
    // refused.
    let fault = refuse_one_connect(&mut p).await;
    wait_serving(p.ports[1]).await;
    let took = fault.elapsed();
    let slow_path = Duration::from_millis(INTERVAL_MS * u64::from(FALL));
    eprintln!(
        "broker death seen by a client's connect (interval {INTERVAL_MS} ms, fall {FALL}): takeover in {took:?}"
    );
    assert!(
        took < slow_path / 4,
        "took {took:?}: the failed connect did not speed up the check ({slow_path:?} by the interval alone)"
    );
    p.nodes[0].wait_standby("released: health").await;
}

/// One refused connect while the broker is fine (it listens again before the probe) moves
/// nothing: the probe decides, and it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_flaky_connect_does_not_move_the_lock() {
    // fall 10: the broker is back long before nine fast probes (10 ms apart) could fail.
    let mut p = slow_pair(Some((1000, 1, 10))).await;
    // A connect the upstream refuses, then it listens again at once.
    refuse_one_connect(&mut p).await;
    p.nodes[0]
        .wait_log("cannot connect to the upstream", None)
        .await;
    p.up[0].resume_listening().await;
    // Well past what a confirmed death takes (see above), node0 still serves and node1 does not.
    let until = Instant::now() + Duration::from_millis(400);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(serves(p.ports[0]).await, "node0 stopped serving");
        assert!(!serves(p.ports[1]).await, "node1 serves: the lock moved");
    }
    assert!(!p.nodes[0].log_text().contains("withdrawing from the lock"));
}
