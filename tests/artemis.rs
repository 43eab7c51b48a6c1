//! Apache Artemis in the loop: an unmodified Artemis 2.40.0 pair behind lockgate with the Qpid
//! JMS failover client (the seed example, on the file lock and on ZooKeeper), and lockgate's file
//! lock against Java's own (`FileChannel.lock`, what Artemis's file lock is).
//!
//! Needs a JDK and what `.ci/run` resolves into ~/.m2 (tests/artemis/pom.xml); without them the
//! tests are skipped with a note, except under CI=true, where they fail. The Artemis cases run
//! one at a time (a mutex): each starts three JVMs on a 2-core machine.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::java::{self, Jvm};
use common::*;

/// Waits until `node`'s log contains `needle`; fails at once if it says `never` first.
async fn wait_log(node: &Node, needle: &str, never: &str) {
    let deadline = Instant::now() + BOUND;
    while !node.log_text().contains(needle) {
        assert!(
            !node.log_text().contains(never),
            "{}: logged {never:?} while waiting for {needle:?}\n{}",
            node.name,
            node.log_text()
        );
        assert!(
            Instant::now() < deadline,
            "{}: no log line with {needle:?} within {BOUND:?}\n{}",
            node.name,
            node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn lock_holder_classes(dir: &Path) -> String {
    let classes = dir.join("classes");
    std::fs::create_dir_all(&classes).unwrap();
    java::compile(&classes, "LockHolder", ".")
        .display()
        .to_string()
}

/// One node on the file lock in `locks`, fronting an echo upstream.
fn file_node_spec<'a>(locks: &'a Path, port: u16, up: &Upstream) -> NodeSpec<'a> {
    NodeSpec {
        node_id: "node0",
        locks,
        client_port: port,
        upstream: up.addr,
        check_period_ms: 1000,
        health: None,
        extra: String::new(),
        zookeeper: None,
    }
}

/// 4. A JVM holds `FileChannel.lock()` on `<locks-folder>/<lock-id>` (as a native Artemis
/// broker's file lock does): lockgate stands by and its gated route stays shut; when the JVM
/// releases, lockgate takes the lock and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jvm_holding_the_lock_file_keeps_lockgate_standing_by() {
    if !java::jdk_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let locks = dir.path().join("locks");
    std::fs::create_dir(&locks).unwrap();
    let lock_file = locks.join("mirror-cluster-clients");
    let classes = lock_holder_classes(dir.path());
    let mut holder = Jvm::java(
        "java-lock-holder",
        &classes,
        "LockHolder",
        &["hold", &lock_file.display().to_string()],
        dir.path(),
    );
    holder.wait_line("LOCKED").await;

    let up = Upstream::start().await;
    let port = free_port();
    let cfg = file_node_spec(&locks, port, &up).write(dir.path());
    let mut node = Node::start("node0", &cfg, dir.path()).await;
    // The node is blocked on the JVM's fcntl lock, and serves nothing meanwhile.
    wait_log(
        &node,
        "locked with fcntl by another process",
        "lock acquired",
    )
    .await;
    node.collect_for(Duration::from_millis(1500)).await;
    assert!(
        !node.seen.iter().any(|l| l.contains("clients-lock: active")),
        "lockgate went active while a JVM held the lock file: {:?}",
        node.seen
    );
    assert!(
        try_connect(port, Duration::from_millis(300))
            .await
            .is_none(),
        "the gated route accepted a connection while a JVM held the lock file"
    );

    let released = Instant::now();
    holder.send_line("release").await;
    holder.wait_line("RELEASED").await;
    node.wait_active().await;
    wait_serving(port).await;
    eprintln!(
        "lockgate took the lock {:?} after the JVM released it",
        released.elapsed()
    );
}

/// 4, the converse: while lockgate holds the lock, a JVM's `tryLock()` on the same file returns
/// null (another process holds it); after lockgate stops, it gets the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockgate_holding_the_lock_file_excludes_a_jvm() {
    if !java::jdk_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let locks = dir.path().join("locks");
    std::fs::create_dir(&locks).unwrap();
    let lock_file = locks.join("mirror-cluster-clients").display().to_string();
    let classes = lock_holder_classes(dir.path());
    let up = Upstream::start().await;
    let port = free_port();
    let cfg = file_node_spec(&locks, port, &up).write(dir.path());
    let mut node = Node::start("node0", &cfg, dir.path()).await;
    node.wait_active().await;
    wait_serving(port).await;

    let mut try1 = Jvm::java(
        "java-try",
        &classes,
        "LockHolder",
        &["try", &lock_file],
        dir.path(),
    );
    let answer = try1.wait_line("TRY").await;
    assert_eq!(answer, "TRY null", "a JVM locked the file lockgate holds");

    node.signal(libc::SIGTERM);
    assert!(node.wait_exit().await.success());
    let mut try2 = Jvm::java(
        "java-try",
        &classes,
        "LockHolder",
        &["try", &lock_file],
        dir.path(),
    );
    assert_eq!(try2.wait_line("TRY").await, "TRY locked");
}
