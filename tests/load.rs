//! Load: thousands of concurrent connections through one gated route, data checked end to
//! end; then the lock goes (a step-down): every connection is reset within a bound and the
//! listener refuses; the lock comes back (resume): new connections work. Resident memory is
//! reported before, during and after.
//!
//! The count is `LOCKGATE_LOAD_CONNECTIONS` (default 9,000): lockgate holds two descriptors per
//! connection, and these machines cap descriptors at a hard limit of 20,000 per process, so
//! 10,000 proxied connections cannot be held here. Raise `LimitNOFILE` (and this variable)
//! where the limit allows.

mod common;

use std::time::{Duration, Instant};

use common::commands::admin_post;
use common::config_file::env_or;
use common::solo::Solo;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_connections_are_served_then_reset_on_lock_loss() {
    let n: usize = env_or("LOCKGATE_LOAD_CONNECTIONS", 9_000);
    let mut solo = Solo::active("node0", "", |spec| NodeSpec {
        check_period_ms: 500,
        ..spec
    })
    .await;
    let (node, port, admin) = (&mut solo.node, solo.port, solo.admin);
    let idle = rss_kib(node.pid);

    // Open them all, each with its own message echoed back.
    let started = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s =
            tokio::time::timeout(BOUND, tokio::net::TcpStream::connect(("127.0.0.1", port)))
                .await
                .unwrap_or_else(|_| panic!("connect {i} timed out"))
                .unwrap_or_else(|e| panic!("connect {i}: {e}"));
        s.write_all(format!("m{i:08}\n").as_bytes()).await.unwrap();
        conns.push(s);
    }
    for (i, s) in conns.iter_mut().enumerate() {
        let mut buf = [0u8; 10];
        tokio::time::timeout(BOUND, s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            &buf[..],
            format!("m{i:08}\n").as_bytes(),
            "connection {i} got another's bytes"
        );
    }
    let busy = rss_kib(node.pid);
    eprintln!(
        "{n} connections open and checked in {:?}; lockgate RSS {idle} KiB idle, {busy} KiB with them ({:.1} KiB each)",
        started.elapsed(),
        busy.saturating_sub(idle) as f64 / n as f64
    );

    // The lock goes: every connection is reset, the listener refuses.
    let lost = Instant::now();
    admin_post(admin, "/locks/clients-lock/step-down?hold-off-ms=600000").await;
    node.wait_standby("released: step_down").await;
    assert!(
        try_connect(port, Duration::from_secs(1)).await.is_none(),
        "the listener still accepts"
    );
    for (i, s) in conns.iter_mut().enumerate() {
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(BOUND, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("connection {i} still open"));
        assert!(
            matches!(r, Ok(0) | Err(_)),
            "connection {i} got bytes after the lock went: {r:?}"
        );
    }
    eprintln!(
        "all {n} connections closed {:?} after the lock went",
        lost.elapsed()
    );
    drop(conns);

    // It comes back: new connections work.
    admin_post(admin, "/locks/clients-lock/resume").await;
    node.wait_active().await;
    wait_serving(port).await;
    let after = rss_kib(node.pid);
    eprintln!("lockgate RSS after: {after} KiB");
}
