//! The HA pair end to end: two lockgate processes share a locks folder, each fronting its own
//! echo "broker" on loopback; a failover client and a never-two sampler watch from outside.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PERIOD_MS: u64 = 500;

struct Pair {
    up0: Upstream,
    up1: Upstream,
    port0: u16,
    port1: u16,
    node0: Node,
    node1: Node,
    // Last: the nodes' logs live here, and are printed when a test fails.
    dir: tempfile::TempDir,
}

/// Starts node0, waits until it holds the lock, then node1, waits until it stands by.
async fn pair(health: Option<(u64, u32, u32)>) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let locks = dir.path().join("locks");
    std::fs::create_dir(&locks).unwrap();
    let (up0, up1) = (Upstream::start().await, Upstream::start().await);
    let (port0, port1) = (free_port(), free_port());
    let spec = |id, port, up: &Upstream| NodeSpec {
        node_id: id,
        locks: &locks,
        client_port: port,
        upstream: up.addr,
        check_period_ms: PERIOD_MS,
        health,
        extra: String::new(),
        zookeeper: None,
    };
    let c0 = spec("node0", port0, &up0).write(dir.path());
    let c1 = spec("node1", port1, &up1).write(dir.path());
    let mut node0 = Node::start("node0", &c0, dir.path()).await;
    node0.wait_active().await;
    // node0 holds the lock, so node1 stands by from its first attempt on.
    let node1 = Node::start("node1", &c1, dir.path()).await;
    Pair {
        dir,
        up0,
        up1,
        port0,
        port1,
        node0,
        node1,
    }
}

fn assert_never_two(r: &SamplerReport) {
    assert!(r.samples > 0, "the sampler took no sample: {r:?}");
    assert_eq!(r.both, 0, "both nodes served at once: {r:?}");
}

/// 1. The Artemis example flow: 30 messages through node0, SIGKILL node0 after 10, the client
/// fails over to node1 and finishes; every acknowledged message reached a broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_holder_fails_over_and_loses_nothing() {
    let mut p = pair(None).await;
    let mut sampler = Sampler::start(p.port0, p.port1);
    sampler.wait_for(|r| r.a_served > 0).await;
    let mut client = FailoverClient::new(&[p.port0, p.port1]);
    let mut served_by = Vec::new();
    for i in 1..=30 {
        if i == 11 {
            p.node0.signal(libc::SIGKILL);
            p.node0.wait_exit().await;
        }
        served_by.push(client.send(i).await);
    }
    p.node1.wait_active().await;
    sampler.wait_for(|r| r.b_served > 0).await;
    assert_never_two(&sampler.finish().await);
    assert!(
        served_by[..10].iter().all(|&port| port == p.port0),
        "{served_by:?}"
    );
    assert!(
        served_by[10..].iter().all(|&port| port == p.port1),
        "{served_by:?}"
    );
    let mut got: Vec<u32> = p.up0.messages();
    got.extend(p.up1.messages());
    for i in 1..=30 {
        assert!(
            got.contains(&i),
            "message {i} never reached a broker; got {got:?}"
        );
    }

    // `status` reads the owner record: node1 holds the lock now.
    let out = lockgate()
        .args(["status", "--config"])
        .arg(p.dir.path().join("node0.toml"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("held by node node1"), "{text}");
    assert!(text.contains("term 2"), "{text}");
}

/// 2. Broker death: node0's broker stops accepting; node0 releases, node1 takes over, and
/// node0's live client connection is reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_death_moves_the_lock_and_resets_clients() {
    let mut p = pair(Some((100, 1, 2))).await;
    let mut sampler = Sampler::start(p.port0, p.port1);
    sampler.wait_for(|r| r.a_served > 0).await;
    let mut live = try_connect(p.port0, BOUND).await.unwrap();
    live.write_all(b"m1\n").await.unwrap();
    let mut buf = [0u8; 3];
    live.read_exact(&mut buf).await.unwrap();

    p.up0.stop_listening();
    p.node0.wait_standby("released: health").await;
    p.node1.wait_active().await;
    sampler.wait_for(|r| r.b_served > 0).await;

    let err = live
        .read(&mut buf)
        .await
        .expect_err("the live connection must be reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert!(
        try_connect(p.port0, Duration::from_secs(1)).await.is_none(),
        "node0 still listens"
    );
    assert_never_two(&sampler.finish().await);
}

/// 3. The lock file is replaced under the holder (an operator error): the holder fences within
/// two check-periods, resets its connections, and its listener refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_lock_file_fences_the_holder() {
    let mut p = pair(None).await;
    let mut live = try_connect(p.port0, BOUND).await.unwrap();
    live.write_all(b"m1\n").await.unwrap();
    let mut buf = [0u8; 3];
    live.read_exact(&mut buf).await.unwrap();

    // The test takes the new file's lock itself, so neither node can have it afterwards.
    let lock_path = p.dir.path().join("locks/mirror-cluster-clients");
    let tmp = p.dir.path().join("locks/replacement");
    let replacement = std::fs::File::create(&tmp).unwrap();
    fs2::FileExt::try_lock_exclusive(&replacement).unwrap();
    std::fs::rename(&tmp, &lock_path).unwrap();

    let bound = Duration::from_millis(2 * PERIOD_MS) + Duration::from_secs(2);
    p.node0
        .wait_note_within(bound, |l| {
            l.starts_with("STATUS=lock clients-lock: standby (lost: inode_changed")
        })
        .await;
    let err = live
        .read(&mut buf)
        .await
        .expect_err("the live connection must be reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert!(
        try_connect(p.port0, Duration::from_secs(1)).await.is_none(),
        "node0 still listens"
    );
    assert!(!serves(p.port1).await, "node1 cannot hold the test's lock");
    assert!(p.node0.log_text().contains("lock lost"));
    drop(p.node1);
}

/// 5. The gated port is taken by another program: node0 takes the lock, cannot bind, releases,
/// and node1 serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_in_use_hands_the_lock_to_the_peer() {
    let dir = tempfile::tempdir().unwrap();
    let locks = dir.path().join("locks");
    std::fs::create_dir(&locks).unwrap();
    let (up0, up1) = (Upstream::start().await, Upstream::start().await);
    let (port0, port1) = (free_port(), free_port());
    // The squatter sets SO_REUSEPORT, as a second instance of some server might: a listener
    // that also set it would bind beside it and serve. lockgate must not.
    let squatter =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    squatter.set_reuse_port(true).unwrap();
    squatter
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], port0)).into())
        .unwrap();
    squatter.listen(128).unwrap();
    let spec = |id, port, up: &Upstream| NodeSpec {
        node_id: id,
        locks: &locks,
        client_port: port,
        upstream: up.addr,
        check_period_ms: PERIOD_MS,
        health: None,
        extra: String::new(),
        zookeeper: None,
    };
    let c0 = spec("node0", port0, &up0).write(dir.path());
    let c1 = spec("node1", port1, &up1).write(dir.path());
    let mut sampler = Sampler::start(port0, port1);
    let mut node0 = Node::start("node0", &c0, dir.path()).await;
    node0.wait_standby("released: bind_failed").await;
    let mut node1 = Node::start("node1", &c1, dir.path()).await;
    node1.wait_active().await;
    sampler.wait_for(|r| r.b_served > 0).await;
    assert!(!serves(port0).await);
    assert!(
        node0.log_text().contains("port already in use"),
        "{}",
        node0.log_text()
    );
    let report = sampler.finish().await;
    // The squatter never answers; node0 never forwarded a byte to its broker.
    assert!(
        up0.received().is_empty(),
        "node0 forwarded: {:?}",
        up0.received()
    );
    assert_eq!(report.a_served, 0, "{report:?}");
    assert_never_two(&report);
    drop(squatter);
}

/// 7. SIGTERM on the holder: it closes its client route and releases the lock, exits 0, and
/// the peer takes over at its next attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_over_and_exits_zero() {
    let mut p = pair(None).await;
    let mut sampler = Sampler::start(p.port0, p.port1);
    sampler.wait_for(|r| r.a_served > 0).await;
    p.node0.signal(libc::SIGTERM);
    let status = p.node0.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", p.node0.log_text());
    p.node0.wait_standby("released: shutdown").await;
    p.node1.wait_active().await;
    sampler.wait_for(|r| r.b_served > 0).await;
    assert_never_two(&sampler.finish().await);
    let _ = (&p.up0, &p.up1);
}
