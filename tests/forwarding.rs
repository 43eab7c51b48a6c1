//! The data path through a real lockgate process on an open route: bytes both ways, checked;
//! half-close; many connections at once; upstream refusal and reset; draining on SIGTERM.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Deterministic pseudo-random bytes (xorshift), so a failure can be replayed.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Proxy {
    _dir: tempfile::TempDir,
    node: Node,
    port: u16,
}

async fn open_route_to(upstream: &str) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("open.toml");
    std::fs::write(
        &config,
        format!(
            "shutdown-grace-ms = 10000\n[[route]]\nname = \"mirror\"\nlisten = \"127.0.0.1:{port}\"\nforward-to = \"{upstream}\"\nconnect-timeout-ms = 1000\n"
        ),
    )
    .unwrap();
    let node = Node::start("open", &config, dir.path()).await;
    Proxy {
        _dir: dir,
        node,
        port,
    }
}

/// Sends `data`, shuts the write side, and reads the whole echo back.
async fn round_trip(port: u16, data: &[u8]) -> Vec<u8> {
    let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let sent = data.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
        w
    });
    let mut back = Vec::with_capacity(data.len());
    tokio::time::timeout(BOUND, r.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_arrive_intact_both_ways_with_half_close() {
    let up = Upstream::start().await;
    let p = open_route_to(&up.addr.to_string()).await;
    for (len, seed) in [(0usize, 1u64), (1, 2), (65_537, 3), (8 << 20, 4)] {
        let data = payload(len, seed);
        let back = round_trip(p.port, &data).await;
        assert_eq!(back.len(), data.len(), "length of the echo of {len} bytes");
        assert!(back == data, "the echo of {len} bytes differs");
    }
    // Everything the upstream received is what was sent, in order.
    let mut want = Vec::new();
    for (len, seed) in [(0usize, 1u64), (1, 2), (65_537, 3), (8 << 20, 4)] {
        want.extend(payload(len, seed));
        want.push(b'\n');
    }
    assert!(up.received() == want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_at_once() {
    let up = Upstream::start().await;
    let p = open_route_to(&up.addr.to_string()).await;
    let port = p.port;
    let tasks: Vec<_> = (0..64u64)
        .map(|i| {
            tokio::spawn(async move {
                let data = payload(200_000 + i as usize * 1000, i + 10);
                let back = round_trip(port, &data).await;
                back == data
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert!(t.await.unwrap(), "connection {i} got a different echo");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_closes_the_client_and_is_survived() {
    // A port nobody listens on: bind one, note it, close it.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let p = open_route_to(&dead.to_string()).await;
    for _ in 0..3 {
        // The reset may arrive before the client's connect completes.
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", p.port)).await else {
            continue;
        };
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(BOUND, s.read(&mut buf)).await.unwrap();
        assert!(
            matches!(r, Ok(0) | Err(_)),
            "expected the connection closed, got {r:?}"
        );
    }
    assert!(
        p.node.log_text().contains("cannot connect to the upstream"),
        "{}",
        p.node.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_mid_stream_resets_the_client() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let p = open_route_to(&addr.to_string()).await;
    let mut client = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    let (mut upstream, _) = listener.accept().await.unwrap();
    client.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    upstream.read_exact(&mut buf).await.unwrap();
    abort(upstream);
    let mut rest = Vec::new();
    let r = tokio::time::timeout(BOUND, client.read_to_end(&mut rest))
        .await
        .unwrap();
    let err = r.expect_err("the client must see a reset, not an orderly close");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_routes_then_exits_zero() {
    let up = Upstream::start().await;
    let mut p = open_route_to(&up.addr.to_string()).await;
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    let mut buf = [0u8; 3];
    s.write_all(b"m1\n").await.unwrap();
    s.read_exact(&mut buf).await.unwrap();

    p.node.signal(libc::SIGTERM);
    p.node
        .wait_note(|l| l == "STATUS=draining 1 connections of open routes")
        .await;
    // The listener is closed, but the live connection still flows during the grace.
    assert!(
        try_connect(p.port, Duration::from_secs(1)).await.is_none(),
        "listener still open"
    );
    s.write_all(b"m2\n").await.unwrap();
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"m2\n");
    drop(s);
    let status = p.node.wait_exit().await;
    assert_eq!(status.code(), Some(0));
}
