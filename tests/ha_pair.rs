//! The HA pair end to end: two lockgate processes share a locks folder, each fronting its own
//! echo "broker" on loopback; a failover client and a never-two sampler watch from outside.

mod common;

use std::time::Duration;

use common::*;

const PERIOD_MS: u64 = 500;

/// 1. The Artemis example flow: 30 messages through node0, SIGKILL node0 after 10, the client
/// fails over to node1 and finishes; every acknowledged message reached a broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_holder_fails_over_and_loses_nothing() {
    let mut p = Pair::file().start().await;
    let mut sampler = p.sampler().await;
    let mut client = FailoverClient::new(&p.ports);
    let mut served_by = Vec::new();
    for i in 1..=30 {
        if i == 11 {
            p.nodes[0].signal(libc::SIGKILL);
            p.nodes[0].wait_exit().await;
        }
        served_by.push(client.send(i).await);
    }
    p.nodes[1].wait_active().await;
    sampler.wait_for(|r| r.b_served > 0).await;
    assert_never_two(&sampler.finish().await, &p.nodes);
    assert!(
        served_by[..10].iter().all(|&port| port == p.ports[0]),
        "{served_by:?}"
    );
    assert!(
        served_by[10..].iter().all(|&port| port == p.ports[1]),
        "{served_by:?}"
    );
    let mut got: Vec<u32> = p.up[0].messages();
    got.extend(p.up[1].messages());
    for i in 1..=30 {
        assert!(
            got.contains(&i),
            "message {i} never reached a broker; got {got:?}"
        );
    }

    // `status` reads the owner record: node1 holds the lock now.
    let text = cli_ok(&["status"], &p.configs[0]).await;
    assert!(text.contains("held by node node1"), "{text}");
    assert!(text.contains("term 2"), "{text}");
}

/// 2. Broker death: node0's broker stops accepting; node0 releases, node1 takes over, and
/// node0's live client connection is reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_death_moves_the_lock_and_resets_clients() {
    let mut p = Pair::file().health((100, 1, 2)).start().await;
    let mut sampler = p.sampler().await;
    let mut live = live_connection(p.ports[0]).await;

    p.up[0].stop_listening();
    p.nodes[0].wait_standby("released: health").await;
    p.nodes[1].wait_active().await;
    sampler.wait_for(|r| r.b_served > 0).await;

    assert_fenced(&mut live, p.ports[0]).await;
    assert_never_two(&sampler.finish().await, &p.nodes);
}

/// 3. The lock file is replaced under the holder (an operator error): the holder fences within
/// two check-periods, resets its connections, and its listener refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_lock_file_fences_the_holder() {
    let mut p = Pair::file().start().await;
    let mut live = live_connection(p.ports[0]).await;

    // The test takes the new file's lock itself, so neither node can have it afterwards.
    let tmp = p.dir.path().join("locks/replacement");
    let replacement = std::fs::File::create(&tmp).unwrap();
    fs2::FileExt::try_lock_exclusive(&replacement).unwrap();
    std::fs::rename(&tmp, p.lock_file()).unwrap();

    let bound = Duration::from_millis(2 * PERIOD_MS) + Duration::from_secs(2);
    p.nodes[0]
        .wait_note_within(bound, |l| {
            l.starts_with("STATUS=lock clients-lock: standby (lost: inode_changed")
        })
        .await;
    assert_fenced(&mut live, p.ports[0]).await;
    assert!(
        !serves(p.ports[1]).await,
        "node1 cannot hold the test's lock"
    );
    assert!(p.nodes[0].log_text().contains("lock lost"));
}

/// 5. The gated port is taken by another program: node0 takes the lock, cannot bind, releases,
/// and node1 serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_in_use_hands_the_lock_to_the_peer() {
    let mut p = Pair::file().build().await;
    // The squatter sets SO_REUSEPORT, as a second instance of some server might: a listener
    // that also set it would bind beside it and serve. lockgate must not.
    let squatter =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    squatter.set_reuse_port(true).unwrap();
    squatter
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], p.ports[0])).into())
        .unwrap();
    squatter.listen(128).unwrap();
    let mut sampler = Sampler::start(p.ports[0], p.ports[1]);
    p.nodes.push(p.spawn(0).await);
    p.nodes[0].wait_standby("released: bind_failed").await;
    p.nodes.push(p.spawn(1).await);
    p.nodes[1].wait_active().await;
    sampler.wait_for(|r| r.b_served > 0).await;
    assert!(!serves(p.ports[0]).await);
    let log = p.nodes[0].log_text();
    assert!(log.contains("port already in use"), "{log}");
    let report = sampler.finish().await;
    // The squatter never answers; node0 never forwarded a byte to its broker.
    let forwarded = p.up[0].received();
    assert!(forwarded.is_empty(), "node0 forwarded: {forwarded:?}");
    assert_eq!(report.a_served, 0, "{report:?}");
    assert_never_two(&report, &p.nodes);
    drop(squatter);
}

/// 7. SIGTERM on the holder: it closes its client route and releases the lock, exits 0, and
/// the peer takes over at its next attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_over_and_exits_zero() {
    let mut p = Pair::file().start().await;
    let mut sampler = p.sampler().await;
    p.nodes[0].signal(libc::SIGTERM);
    let status = p.nodes[0].wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", p.nodes[0].log_text());
    p.nodes[0].wait_standby("released: shutdown").await;
    p.nodes[1].wait_active().await;
    sampler.wait_for(|r| r.b_served > 0).await;
    assert_never_two(&sampler.finish().await, &p.nodes);
}
