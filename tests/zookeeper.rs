//! The ZooKeeper lock against real ZooKeeper servers started here on loopback (Debian's
//! `zookeeper` package): takeover after the holder dies, fencing before the session can expire
//! (partition, frozen process, whole ensemble down), ensemble member loss without fencing, a
//! lock node deleted by hand, ZooKeeper unreachable at start.
//!
//! The servers are JVMs: these tests run one at a time.

mod common;

use std::time::{Duration, Instant};

use common::zk::{Ensemble, Relay, available};
use common::*;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// S = 4000 ms, F = 25 % = 1000 ms, C = 1500 ms: margin 1500 ms.
const FAST: &str =
    "session-ms = 4000\nsession-percent = 25\nconnection-ms = 1500\nretries = 2\nretries-ms = 200";
/// For ensembles, where a leader election takes about a second: S = 6000, F = 1980, C = 2000.
const ENSEMBLE: &str =
    "session-ms = 6000\nsession-percent = 33\nconnection-ms = 2000\nretries = 2\nretries-ms = 200";
const F_FAST: Duration = Duration::from_millis(1000);
const F_ENSEMBLE: Duration = Duration::from_millis(1980);
/// Scheduling slack granted on top of F in the "fences within F" bounds.
const SLACK: Duration = Duration::from_millis(1500);

/// node0 (holding) and node1 (standing by); each connects through its own connect string.
async fn pair(connect: [&str; 2], timing: &'static str) -> Pair {
    let connect = connect.map(str::to_owned);
    Pair::zookeeper_keys(move |i| zk_keys(&connect[i], timing))
        .start()
        .await
}

type OneAtATime = tokio::sync::MutexGuard<'static, ()>;

/// One at a time: one ZooKeeper server, or `None` without ZooKeeper.
async fn one_server() -> Option<(OneAtATime, Ensemble)> {
    let one = ONE_AT_A_TIME.lock().await;
    if !available() {
        return None;
    }
    Some((one, Ensemble::start(1).await))
}

/// One at a time: one ZooKeeper server and a pair on it, or `None` without ZooKeeper.
async fn single_server_pair() -> Option<(OneAtATime, Ensemble, String, Pair)> {
    let (one, zk) = one_server().await?;
    let cs = zk.connect_string();
    let p = Pair::zookeeper(&cs, FAST).start().await;
    Some((one, zk, cs, p))
}

/// The contender nodes under the lock's folder, once `pred` holds for them.
async fn children_when(
    client: &zookeeper_client::Client,
    what: &str,
    pred: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    eventually(BOUND, what, async || {
        let c = client.list_children(LOCK_DIR).await.unwrap();
        pred(&c).then_some(c)
    })
    .await
}

const LOCK_DIR: &str = "/lockgate-test/mirror-cluster-clients";

/// 1. Holder SIGKILL: the standby takes over once the server expires the holder's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_sigkill_fails_over_after_session_expiry() {
    let Some((_one, _zk, _cs, mut p)) = single_server_pair().await else {
        return;
    };
    let mut sampler = p.sampler().await;
    let fault = Instant::now();
    p.nodes[0].signal(libc::SIGKILL);
    p.nodes[0].wait_exit().await;
    p.nodes[1].wait_active().await;
    let took = fault.elapsed();
    eprintln!("ZooKeeper takeover after holder SIGKILL (session 4000 ms): {took:?}");
    sampler.wait_for(|r| r.b_served > 0).await;
    assert_never_two(&sampler.finish().await, &p.nodes);
    // `status` shows the holder from the owner record in its node.
    let text = cli_ok(&["status"], &p.configs[0]).await;
    assert!(text.contains("held by node node1"), "{text}");
}

/// SIGTERM: the holder deletes its node on the way out, so the standby takes over at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_sigterm_hands_over_at_once() {
    let Some((_one, _zk, _cs, mut p)) = single_server_pair().await else {
        return;
    };
    let sampler = p.sampler().await;
    let fault = Instant::now();
    p.nodes[0].signal(libc::SIGTERM);
    p.nodes[1].wait_active().await;
    eprintln!(
        "ZooKeeper takeover after holder SIGTERM: {:?}",
        fault.elapsed()
    );
    assert_eq!(p.nodes[0].wait_exit().await.code(), Some(0));
    // Well under the session timeout: the node was deleted, not expired.
    assert!(
        fault.elapsed() < Duration::from_millis(3000),
        "{:?}",
        fault.elapsed()
    );
    assert_never_two(&sampler.finish().await, &p.nodes);
}

/// 2. The holder is partitioned from ZooKeeper (its relay black-holes): it fences before the
/// server expires its session and the standby acquires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_holder_fences_before_the_standby_acquires() {
    let Some((_one, zk)) = one_server().await else {
        return;
    };
    let relay = Relay::start(zk.client_port(0)).await;
    let via_relay = format!("127.0.0.1:{}", relay.port);
    let direct = zk.connect_string();
    let mut p = pair([&via_relay, &direct], FAST).await;
    let mut sampler = p.sampler().await;

    let cut = std::time::Instant::now();
    relay.blackhole();
    p.nodes[0].wait_standby("lost:").await;
    p.nodes[1].wait_active().await;
    sampler.wait_for(|r| r.b_served > 0).await;
    // One clock for both: the sampler's last success through the holder and its first
    // through the standby (two sequential awaits would order themselves).
    let r = sampler.finish().await;
    assert_never_two(&r, &p.nodes);
    let (a_last, b_first) = (r.a_last.unwrap(), r.b_first.unwrap());
    let fenced = a_last.saturating_duration_since(cut);
    let acquired = b_first.saturating_duration_since(cut);
    eprintln!("partition: holder last served {fenced:?} after the cut, standby first {acquired:?}");
    assert!(
        a_last < b_first,
        "the standby served ({acquired:?} after the cut) before the holder stopped ({fenced:?})"
    );
    assert!(
        fenced <= F_FAST + SLACK,
        "the holder served until {fenced:?} after the cut, F is {F_FAST:?}"
    );
}

/// 5. The holder is frozen (SIGSTOP) past its session; the standby takes over; on SIGCONT the
/// old holder fences before forwarding another byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_holder_fences_on_wake() {
    let Some((_one, _zk, _cs, mut p)) = single_server_pair().await else {
        return;
    };
    let mut sampler = p.sampler().await;
    // A client connected through the holder before the freeze.
    let mut live = try_connect(p.ports[0], BOUND).await.unwrap();
    p.nodes[0].signal(libc::SIGSTOP);
    p.nodes[1].wait_active().await;
    sampler.wait_for(|r| r.b_served > 0).await;
    // The client writes while the holder is frozen; the bytes must not reach node0's broker.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    live.write_all(b"m999\n").await.unwrap();
    p.nodes[0].signal(libc::SIGCONT);
    p.nodes[0].wait_standby("lost:").await;
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(BOUND, live.read(&mut buf))
        .await
        .unwrap();
    assert!(
        !matches!(r, Ok(n) if n > 0),
        "the woken holder forwarded a reply: {r:?}"
    );
    assert!(
        !p.up[0].messages().contains(&999),
        "the woken holder forwarded stale bytes"
    );
    assert_never_two(&sampler.finish().await, &p.nodes);
}

/// 6. The holder's lock node is deleted by hand: it fences and contends again (behind the
/// standby, which now holds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_lock_node_fences_the_holder() {
    let Some((_one, _zk, cs, mut p)) = single_server_pair().await else {
        return;
    };
    let client = zookeeper_client::Client::connect(&cs).await.unwrap();
    // Both contender nodes exist (node1 creates its own just after it starts contending).
    let mut children = children_when(&client, "two contender nodes", |c| c.len() == 2).await;
    // Names are `lock-<session>-<sequence>`: order by the sequence.
    children.sort_by_key(|c| c.rsplit('-').next().and_then(|n| n.parse::<u64>().ok()));
    client
        .delete(&format!("{LOCK_DIR}/{}", children[0]), None)
        .await
        .unwrap();
    p.nodes[0].wait_standby("lost: node_deleted").await;
    p.nodes[1].wait_active().await;
    // node0 contends again: a new node of its own, queued behind node1's.
    p.nodes[0].wait_standby("contending").await;
    children_when(&client, "node0 contends again", |now| {
        now.len() == 2 && !now.contains(&children[0])
    })
    .await;
    assert!(!serves(p.ports[0]).await);
}

/// 3 and 4. A three-server ensemble: killing its leader moves the sessions without fencing or
/// failover; stopping all of it fences every node within F; when it returns, exactly one node
/// serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensemble_member_loss_and_whole_ensemble_down() {
    let _one = ONE_AT_A_TIME.lock().await;
    if !available() {
        return;
    }
    if common::zk::external().is_some() {
        eprintln!("skipped: the ensemble cases start and kill their own servers");
        return;
    }
    let mut zk = Ensemble::start(3).await;
    let cs = zk.connect_string();
    let mut p = Pair::zookeeper(&cs, ENSEMBLE).start().await;
    let sampler = p.sampler().await;

    // 3. The leader dies: the others elect a new one; sessions survive; nobody fences.
    let leader = zk.leader().await;
    zk.kill(leader);
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for &i in &others {
        zk.wait_serving(i).await;
    }
    // Watch for longer than F: node0 must keep serving, node1 must not take over.
    let before = [p.nodes[0].seen.len(), p.nodes[1].seen.len()];
    p.nodes[0].collect_for(F_ENSEMBLE * 2).await;
    p.nodes[1].collect_for(Duration::ZERO).await;
    for (i, node) in p.nodes.iter().enumerate() {
        let new = &node.seen[before[i]..];
        assert!(
            !new.iter()
                .any(|l| l.contains("lost:") || l.contains("active")),
            "{} changed state after one member died: {new:?}",
            node.name
        );
    }
    assert!(
        serves(p.ports[0]).await,
        "node0 stopped serving after one member died"
    );
    zk.restart(leader).await;
    zk.wait_serving(leader).await;

    // 4. The whole ensemble goes down (the kills return once the servers have exited):
    // node0 fences within F.
    for i in 0..3 {
        zk.kill(i);
    }
    let down = Instant::now();
    p.nodes[0].wait_standby("lost:").await;
    let fenced = down.elapsed();
    eprintln!("whole ensemble down: holder fenced after {fenced:?} (F = {F_ENSEMBLE:?})");
    assert!(fenced <= F_ENSEMBLE + SLACK, "fenced after {fenced:?}");
    assert!(!serves(p.ports[0]).await && !serves(p.ports[1]).await);

    // The ensemble returns: exactly one node serves again.
    for i in 0..3 {
        zk.restart(i).await;
    }
    for i in 0..3 {
        zk.wait_serving(i).await;
    }
    // Exactly one: the sampler (checked below) finds no moment when both serve.
    wait_any_serving(&p.ports, BOUND).await;
    assert_never_two(&sampler.finish().await, &p.nodes);
}

/// 7 (run time). ZooKeeper unreachable at start: lockgate starts, its open routes serve, it
/// says so, and `status` says the lock is unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_zookeeper_does_not_block_start() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let (gated, open) = (free_port(), free_port());
    let dead = format!("127.0.0.1:{}", free_port());
    let config = NodeSpec {
        locks: dir.path(),
        client_port: gated,
        upstream: up.addr,
        extra: format!(
            "\n[[route]]\nname = \"mirror\"\nlisten = \"127.0.0.1:{open}\"\nforward-to = \"{}\"\n",
            up.addr
        ),
        zookeeper: Some(zk_keys(&dead, FAST)),
        ..NodeSpec::default()
    }
    .write(dir.path());
    let node = Node::start("node0", &config, dir.path()).await;
    wait_serving(open).await;
    assert!(!serves(gated).await);
    let out = cli(&["status"], &config).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("unknown: ZooKeeper unreachable"), "{text}");
    node.wait_log("cannot reach ZooKeeper", None).await;
}

/// A contender recognises nodes named with its own session (left by a create whose answer was
/// lost with the connection) and deletes them instead of queueing behind itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contender_deletes_its_own_orphaned_nodes() {
    let Some((_one, zk)) = one_server().await else {
        return;
    };
    let cs = zk.connect_string();
    let client = zookeeper_client::Client::connect(&cs).await.unwrap();
    let dir = LOCK_DIR;
    let mkdir =
        zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
    client.mkdir(dir, &mkdir).await.unwrap();
    let ephemeral = zookeeper_client::CreateMode::EphemeralSequential
        .with_acls(zookeeper_client::Acls::anyone_all());
    // The test holds the lock first.
    let (_, held) = client
        .create(&format!("{dir}/lock-1-"), b"", &ephemeral)
        .await
        .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let port = free_port();
    let config = NodeSpec {
        node_id: "node1",
        locks: tmp.path(),
        client_port: port,
        upstream: up.addr,
        zookeeper: Some(zk_keys(&cs, FAST)),
        ..NodeSpec::default()
    }
    .write(tmp.path());
    let node = Node::start("node1", &config, tmp.path()).await;
    // Its node, behind the test's.
    let theirs = |c: &[String]| c.iter().any(|n| !n.starts_with("lock-1-"));
    let c = children_when(&client, "node1 creates a node", theirs).await;
    let own = c.into_iter().find(|n| !n.starts_with("lock-1-")).unwrap();
    // An orphan named as node1's session's would be.
    let tag = &own[..own.rfind('-').unwrap() + 1];
    let (_, orphan) = client
        .create(&format!("{dir}/{tag}"), b"", &ephemeral)
        .await
        .unwrap();
    let orphan = format!("{tag}{orphan}");
    // The lock frees: node1 evaluates the queue, deletes its orphan, and takes the lock.
    client
        .delete(&format!("{dir}/lock-1-{held}"), None)
        .await
        .unwrap();
    let mut node = node;
    node.wait_active().await;
    let left = client.list_children(dir).await.unwrap();
    assert!(
        !left.contains(&orphan),
        "the orphan is still there: {left:?}"
    );
    assert!(
        node.log_text()
            .contains("deleted an orphaned contender node"),
        "{}",
        node.log_text()
    );
}

/// Issue 15, bug 2: a holder blocked mid-write (its broker not reading) is frozen past its
/// session; the standby takes over; on SIGCONT the old holder must not move one more byte
/// into its old broker. Bytes already in the kernel's buffers at the freeze were written while
/// the lease was valid: they are drained (the holder is frozen, so nothing can add to them)
/// before the thaw, and only what arrives after it counts.
async fn frozen_mid_write(zero_copy: bool) {
    use tokio::io::AsyncWriteExt;
    let Some((_one, zk)) = one_server().await else {
        return;
    };
    let cs = zk.connect_string();
    // node0's broker: accepts, reads nothing until told.
    let stall = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut p = Pair::zookeeper(&cs, FAST)
        .upstream(0, stall.local_addr().unwrap())
        .extra(&format!("zero-copy = {zero_copy}\n"))
        .admin("")
        .start()
        .await;
    // A client pushes far more than the buffers hold through node0.
    let mut client = try_connect(p.ports[0], BOUND).await.unwrap();
    let (mut broker, _) = tokio::time::timeout(BOUND, stall.accept())
        .await
        .unwrap()
        .unwrap();
    let (pushed_tx, mut pushed) = tokio::sync::watch::channel(0u32);
    let pusher = tokio::spawn(async move {
        let chunk = vec![b'x'; 1 << 20];
        for i in 1..=256 {
            if client.write_all(&chunk).await.is_err() {
                break;
            }
            pushed_tx.send_replace(i);
        }
    });
    // node0 is moving bytes into its broker's buffers: they hold some, the client got 2 MiB in.
    tokio::time::timeout(BOUND, broker.peek(&mut [0u8; 1]))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(BOUND, pushed.wait_for(|n| *n >= 2))
        .await
        .unwrap()
        .unwrap();
    p.nodes[0].signal(libc::SIGSTOP);
    p.nodes[1].wait_active().await;
    // Drain what the kernel holds (written before the freeze): node0 is frozen, so once reads
    // stay dry for a while, nothing more is in flight.
    let before = drain(&mut broker, Duration::from_millis(300)).await;
    p.nodes[0].signal(libc::SIGCONT);
    p.nodes[0].wait_standby("lost:").await;
    // What node0 wrote after the thaw, by its own count of bytes handed to the kernel (a
    // reset may discard bytes the broker has not read yet, so the broker's count alone could
    // miss them).
    let after = drain(&mut broker, Duration::from_millis(500)).await;
    pusher.abort();
    let (code, scrape) = http(p.admin[0], "GET", "/metrics", &[]).await;
    assert_eq!(code, 200, "{scrape}");
    let written = sample(
        &scrape,
        "lockgate_forwarded_bytes_total{route=\"clients\",direction=\"to_upstream\"}",
    )
    .unwrap_or(0.0) as usize;
    eprintln!(
        "frozen mid-write (zero-copy = {zero_copy}): {before} B before the thaw, {after} B \
         read after it; node0 wrote {written} B in all"
    );
    assert!(before > 0, "node0 never forwarded anything");
    assert_eq!(
        after, 0,
        "node0 forwarded {after} B after its lease ran out"
    );
    assert_eq!(
        written,
        before,
        "node0 wrote {} B after its lease ran out",
        written - before
    );
    drop(zk);
}

/// Reads until the socket ends or stays dry for `quiet`; returns the bytes read.
async fn drain(s: &mut tokio::net::TcpStream, quiet: Duration) -> usize {
    use tokio::io::AsyncReadExt;
    let mut total = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(quiet, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return total,
            Ok(Ok(n)) => total += n,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_mid_write_moves_nothing_after_the_takeover_copy_path() {
    frozen_mid_write(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_mid_write_moves_nothing_after_the_takeover_splice_path() {
    frozen_mid_write(true).await;
}
