//! The data path through a real lockgate process on an open route.
//!
//! The correctness suite runs twice, once per data path, forced by the route's `zero-copy`
//! key (`splice::*` and `copy::*`), and each run checks from lockgate's log that its path
//! really moved the bytes: payloads from 0 B to 64 MiB both ways at once, verified byte for
//! byte; many connections at once; half-close each way; a reset from either side mid-stream
//! reaches the other; a reader that does not read holds the sender back without lockgate
//! buffering; the PROXY protocol v2 header arrives first. Then, once: a refused upstream and
//! draining on SIGTERM.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ------------------------------------------------------------------ payloads

/// Length of the random table payloads are cut from: a prime, so that a stream that lost or
/// repeated bytes cannot line up with itself again.
const TABLE: usize = 1_048_573;

fn table() -> &'static [u8] {
    static T: OnceLock<Vec<u8>> = OnceLock::new();
    T.get_or_init(|| {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..TABLE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    })
}

/// The bytes of stream `seed` from position `pos`, at most `max` of them (one slice of the
/// table; the stream wraps around it).
fn stream_at(seed: u64, pos: u64, max: usize) -> &'static [u8] {
    let start = ((seed.wrapping_mul(7919) + pos) % TABLE as u64) as usize;
    let t = table();
    &t[start..(start + max).min(TABLE)]
}

/// Writes `len` bytes of stream `seed`, then shuts the write side.
async fn send_stream(w: &mut (impl AsyncWrite + Unpin), seed: u64, len: u64) {
    let mut pos = 0u64;
    while pos < len {
        let chunk = stream_at(seed, pos, (len - pos).min(256 * 1024) as usize);
        w.write_all(chunk).await.unwrap();
        pos += chunk.len() as u64;
    }
    w.shutdown().await.unwrap();
}

/// Reads to the end and checks it is exactly `len` bytes of stream `seed`.
async fn expect_stream(r: &mut (impl AsyncRead + Unpin), seed: u64, len: u64, what: &str) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut pos = 0u64;
    loop {
        let n = tokio::time::timeout(BOUND, r.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{what}: stalled at byte {pos} of {len}"))
            .unwrap_or_else(|e| panic!("{what}: read failed at byte {pos} of {len}: {e}"));
        if n == 0 {
            break;
        }
        assert!(
            pos + n as u64 <= len,
            "{what}: more than the {len} bytes sent"
        );
        let mut got = &buf[..n];
        while !got.is_empty() {
            let want = stream_at(seed, pos, got.len());
            assert!(
                &got[..want.len()] == want,
                "{what}: bytes differ within [{pos}, {})",
                pos + want.len() as u64
            );
            got = &got[want.len()..];
            pos += want.len() as u64;
        }
    }
    assert_eq!(pos, len, "{what}: stream ended early");
}

// ------------------------------------------------------------------ the proxy

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataPath {
    Splice,
    Copy,
}

struct Proxy {
    _dir: tempfile::TempDir,
    node: Node,
    port: u16,
}

impl Proxy {
    /// Waits until lockgate has logged `n` orderly closed connections; returns the bytes it
    /// says splice moved in them.
    async fn spliced_after(&self, n: usize) -> u64 {
        let deadline = Instant::now() + BOUND;
        loop {
            let log = self.node.log_text();
            let closed: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("connection closed"))
                .collect();
            if closed.len() >= n {
                return closed
                    .iter()
                    .filter_map(|l| {
                        l.split("spliced=")
                            .nth(1)?
                            .split(' ')
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .sum();
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} connections closed\n{log}",
                closed.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Resident memory of the lockgate process, bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.node.pid)).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap();
        kb * 1024
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(("127.0.0.1", self.port)).await.unwrap()
    }
}

/// An open route to `upstream` on the given data path; `extra` is more TOML for the route.
async fn open_route(upstream: &str, path: DataPath, extra: &str) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("open.toml");
    std::fs::write(
        &config,
        format!(
            "shutdown-grace-ms = 10000\n[[route]]\nname = \"mirror\"\nlisten = \"127.0.0.1:{port}\"\nforward-to = \"{upstream}\"\nconnect-timeout-ms = 1000\nzero-copy = {}\n{extra}",
            path == DataPath::Splice
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

/// A proxy in front of a listener the test accepts from itself.
async fn proxy_and_upstream(path: DataPath, extra: &str) -> (Proxy, TcpListener) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = open_route(&listener.local_addr().unwrap().to_string(), path, extra).await;
    (p, listener)
}

async fn accept(l: &TcpListener) -> TcpStream {
    tokio::time::timeout(BOUND, l.accept())
        .await
        .expect("lockgate did not connect upstream")
        .unwrap()
        .0
}

/// Checks the path that moved the bytes: on the splice path, bulk goes by splice (the start
/// of each burst, and small bursts, are copied); with `zero-copy = false`, nothing does.
fn assert_path(path: DataPath, spliced: u64, total: u64) {
    eprintln!("{path:?}: {spliced} of {total} bytes spliced");
    match path {
        DataPath::Splice => assert!(
            spliced > 0 && spliced <= total,
            "splice moved {spliced} of {total} bytes"
        ),
        DataPath::Copy => assert_eq!(spliced, 0, "zero-copy = false must not splice"),
    }
}

// ------------------------------------------------------------------ the suite, per path

/// Both streams at once, each side half-closing when done; sizes from 0 B to 64 MiB.
async fn payloads_both_ways(path: DataPath) {
    let (p, upstream) = proxy_and_upstream(path, "").await;
    let cases: [(u64, u64); 7] = [
        (0, 0),
        (1, 0),
        (0, 1),
        (1_000, 65_537),
        (65_537, 1 << 20),
        ((3 << 20) + 5, 8 << 20),
        (64 << 20, 64 << 20),
    ];
    let mut total = 0;
    for (i, &(up_len, down_len)) in cases.iter().enumerate() {
        let seed = i as u64 * 2;
        let client = p.connect().await;
        let server = accept(&upstream).await;
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        tokio::join!(
            send_stream(&mut cw, seed, up_len),
            expect_stream(&mut sr, seed, up_len, "to upstream"),
            send_stream(&mut sw, seed + 1, down_len),
            expect_stream(&mut cr, seed + 1, down_len, "to downstream"),
        );
        total += up_len + down_len;
    }
    let spliced = p.spliced_after(cases.len()).await;
    assert_path(path, spliced, total);
    if path == DataPath::Splice {
        assert!(
            spliced >= total / 2,
            "only {spliced} of {total} bytes spliced"
        );
    }
}

/// 64 connections at once, each with its own streams both ways.
async fn many_connections_at_once(path: DataPath) {
    const N: u64 = 64;
    let (p, upstream) = proxy_and_upstream(path, "").await;
    let len = |seed: u64| 100_000 + seed * 3_001;
    // The upstream learns each connection's seed from its first 8 bytes.
    let server = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..N {
            let s = accept(&upstream).await;
            tasks.push(tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let seed = r.read_u64().await.unwrap();
                tokio::join!(
                    expect_stream(&mut r, seed, len(seed), "to upstream"),
                    send_stream(&mut w, seed + 1000, len(seed + 1000)),
                );
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let clients: Vec<_> = (0..N)
        .map(|seed| {
            let port = p.port;
            tokio::spawn(async move {
                let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                let (mut r, mut w) = s.into_split();
                w.write_u64(seed).await.unwrap();
                tokio::join!(
                    send_stream(&mut w, seed, len(seed)),
                    expect_stream(&mut r, seed + 1000, len(seed + 1000), "to downstream"),
                );
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    server.await.unwrap();
    let total: u64 = (0..N).map(|s| 8 + len(s) + len(s + 1000)).sum();
    assert_path(path, p.spliced_after(N as usize).await, total);
}

/// The client shuts its write side first; the upstream answers only after that FIN and still
/// gets its whole reply through.
async fn client_half_close_gets_the_whole_reply(path: DataPath) {
    let (p, upstream) = proxy_and_upstream(path, "").await;
    let client = p.connect().await;
    let server = accept(&upstream).await;
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    send_stream(&mut cw, 1, 100_000).await;
    expect_stream(&mut sr, 1, 100_000, "request").await;
    send_stream(&mut sw, 2, 3 << 20).await;
    expect_stream(&mut cr, 2, 3 << 20, "reply after the client's FIN").await;
    assert_path(path, p.spliced_after(1).await, 100_000 + (3 << 20));
}

/// The upstream shuts its write side first; the client sees the end and keeps sending.
async fn upstream_half_close_keeps_the_client_sending(path: DataPath) {
    let (p, upstream) = proxy_and_upstream(path, "").await;
    let client = p.connect().await;
    let server = accept(&upstream).await;
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    send_stream(&mut sw, 3, 50_000).await;
    expect_stream(&mut cr, 3, 50_000, "greeting before the upstream's FIN").await;
    send_stream(&mut cw, 4, 3 << 20).await;
    expect_stream(
        &mut sr,
        4,
        3 << 20,
        "client's bytes after the upstream's FIN",
    )
    .await;
    assert_path(path, p.spliced_after(1).await, 50_000 + (3 << 20));
}

/// Reads until the stream fails; the error must be a reset, not an orderly end.
async fn expect_reset(s: &mut TcpStream, what: &str) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(BOUND, s.read(&mut buf)).await {
            Err(_) => panic!("{what}: neither reset nor closed within {BOUND:?}"),
            Ok(Ok(0)) => panic!("{what}: an orderly close instead of a reset"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{what}: {e}");
                return;
            }
        }
    }
}

/// Bytes are flowing both ways when the upstream resets: the client sees a reset too.
async fn upstream_reset_mid_stream_resets_the_client(path: DataPath) {
    let (p, upstream) = proxy_and_upstream(path, "").await;
    let mut client = p.connect().await;
    let mut server = accept(&upstream).await;
    let chunk = stream_at(5, 0, 200_000);
    client.write_all(chunk).await.unwrap();
    server.write_all(chunk).await.unwrap();
    let mut buf = vec![0u8; chunk.len()];
    server.read_exact(&mut buf).await.unwrap();
    client.read_exact(&mut buf[..1000]).await.unwrap();
    abort(server);
    expect_reset(&mut client, "client after the upstream's reset").await;
}

/// And the other way: a client that resets mid-stream resets the upstream leg.
async fn client_reset_mid_stream_resets_the_upstream(path: DataPath) {
    let (p, upstream) = proxy_and_upstream(path, "").await;
    let mut client = p.connect().await;
    let mut server = accept(&upstream).await;
    let chunk = stream_at(6, 0, 200_000);
    server.write_all(chunk).await.unwrap();
    client.write_all(chunk).await.unwrap();
    let mut buf = vec![0u8; chunk.len()];
    client.read_exact(&mut buf).await.unwrap();
    server.read_exact(&mut buf[..1000]).await.unwrap();
    abort(client);
    expect_reset(&mut server, "upstream after the client's reset").await;
}

/// A client that does not read: the upstream's writes stall (backpressure) instead of
/// lockgate taking the bytes into its memory; once the client reads, every byte arrives.
async fn slow_reader_holds_the_sender_back(path: DataPath) {
    const LEN: u64 = 64 << 20;
    let (p, upstream) = proxy_and_upstream(path, "").await;
    let rss_before = p.rss();
    let client = p.connect().await;
    let mut server = accept(&upstream).await;
    // Nobody reads: the 64 MiB cannot all be written. The bound only ends the attempt; it is
    // not a timing assertion (a slow machine writes less, never more).
    let mut sent = 0u64;
    let stalled = tokio::time::timeout(Duration::from_secs(2), async {
        while sent < LEN {
            let chunk = stream_at(7, sent, (LEN - sent).min(64 * 1024) as usize);
            let n = server.write(chunk).await.unwrap();
            sent += n as u64;
        }
    })
    .await
    .is_err();
    let grew = p.rss().saturating_sub(rss_before);
    assert!(
        stalled,
        "all {LEN} bytes were taken although nobody read them"
    );
    assert!(
        sent < 40 << 20,
        "{sent} bytes were taken although nobody read them"
    );
    assert!(
        grew < 16 << 20,
        "lockgate's memory grew by {grew} bytes while the client did not read"
    );
    // Now the client reads, and gets every byte.
    let (mut r, _w) = client.into_split();
    let rest = tokio::spawn(async move {
        while sent < LEN {
            let chunk = stream_at(7, sent, (LEN - sent).min(256 * 1024) as usize);
            server.write_all(chunk).await.unwrap();
            sent += chunk.len() as u64;
        }
        server.shutdown().await.unwrap();
        server
    });
    expect_stream(&mut r, 7, LEN, "slow reader").await;
    let _server = rest.await.unwrap();
}

/// With `proxy-protocol = "v2"` the upstream reads the client's address first.
async fn proxy_protocol_v2_header_comes_first(path: DataPath) {
    let (p, upstream) = proxy_and_upstream(path, "proxy-protocol = \"v2\"\n").await;
    let mut client = p.connect().await;
    let mut server = accept(&upstream).await;
    client.write_all(b"hello").await.unwrap();
    let mut h = [0u8; 16];
    server.read_exact(&mut h).await.unwrap();
    assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n", "v2 signature");
    assert_eq!(h[12], 0x21, "version 2, command PROXY");
    assert_eq!(h[13], 0x11, "TCP over IPv4");
    let len = u16::from_be_bytes([h[14], h[15]]) as usize;
    assert_eq!(len, 12);
    let mut a = [0u8; 12];
    server.read_exact(&mut a).await.unwrap();
    let src =
        std::net::SocketAddr::from(([a[0], a[1], a[2], a[3]], u16::from_be_bytes([a[8], a[9]])));
    let dst =
        std::net::SocketAddr::from(([a[4], a[5], a[6], a[7]], u16::from_be_bytes([a[10], a[11]])));
    assert_eq!(src, client.local_addr().unwrap(), "source: the client");
    assert_eq!(
        dst,
        client.peer_addr().unwrap(),
        "destination: lockgate's listener"
    );
    let mut hello = [0u8; 5];
    server.read_exact(&mut hello).await.unwrap();
    assert_eq!(&hello, b"hello");
    server.write_all(b"world").await.unwrap();
    client.read_exact(&mut hello).await.unwrap();
    assert_eq!(&hello, b"world");
}

/// Runs each named suite function once per data path.
macro_rules! for_both_paths {
    ($($name:ident),* $(,)?) => {
        mod splice {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::DataPath::Splice).await
                }
            )*
        }
        mod copy {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::DataPath::Copy).await
                }
            )*
        }
    };
}

for_both_paths!(
    payloads_both_ways,
    many_connections_at_once,
    client_half_close_gets_the_whole_reply,
    upstream_half_close_keeps_the_client_sending,
    upstream_reset_mid_stream_resets_the_client,
    client_reset_mid_stream_resets_the_upstream,
    slow_reader_holds_the_sender_back,
    proxy_protocol_v2_header_comes_first,
);

// ------------------------------------------------------------------ once

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_closes_the_client_and_is_survived() {
    // A port nobody listens on: bind one, note it, close it.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let p = open_route(&dead.to_string(), DataPath::Splice, "").await;
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
async fn sigterm_drains_open_routes_then_exits_zero() {
    let up = Upstream::start().await;
    let mut p = open_route(&up.addr.to_string(), DataPath::Splice, "").await;
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

/// A reset by the upstream mid-connection counts one forward error on the upstream side
/// (`lockgate_forward_errors_total{side="upstream"}`), none on the client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_counts_as_an_upstream_forward_error() {
    let admin = free_port();
    let extra = format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n");
    let (p, upstream) = proxy_and_upstream(DataPath::Splice, &extra).await;
    let mut client = p.connect().await;
    let mut server = accept(&upstream).await;
    client.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    server.read_exact(&mut buf).await.unwrap();
    abort(server);
    expect_reset(&mut client, "client after the upstream's reset").await;
    let series =
        |side: &str| format!(r#"lockgate_forward_errors_total{{route="mirror",side="{side}"}}"#);
    let deadline = Instant::now() + BOUND;
    loop {
        let m = http(admin, "GET", "/metrics", &[]).await.1;
        if sample(&m, &series("upstream")) == Some(1.0) {
            assert_eq!(sample(&m, &series("client")), Some(0.0), "{m}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the upstream's reset was not counted:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
