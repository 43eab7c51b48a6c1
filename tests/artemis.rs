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
use common::zk;
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

/// JVM options of every broker: a small heap and the serial collector (2 cores, shared).
const BROKER_JAVA_ARGS: &str = "-Xms32m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dlog4j2.disableJmx=true --add-opens java.base/jdk.internal.misc=ALL-UNNAMED";

const MESSAGES: u32 = 30;

/// One Artemis case at a time: each runs three JVMs.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kill {
    /// SIGKILL of server0's broker; its lockgate stays up and gives the lock up on health.
    Broker,
    /// SIGKILL of server0's broker and its lockgate together, as when the host dies.
    BrokerAndLockgate,
}

/// The test ports standing in for the example's fixed ones.
struct Ports {
    /// (example port, test port)
    map: Vec<(u16, u16)>,
}

impl Ports {
    fn new() -> Ports {
        let example = [61616, 61617, 61626, 61627, 61001, 61002, 61011, 61012];
        Ports {
            map: example.iter().map(|&p| (p, free_port())).collect(),
        }
    }

    fn get(&self, example: u16) -> u16 {
        self.map.iter().find(|(e, _)| *e == example).unwrap().1
    }

    /// A shipped example file with every `127.0.0.1:<example port>` replaced.
    fn substitute(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (e, t) in &self.map {
            out = out.replace(&format!("127.0.0.1:{e}"), &format!("127.0.0.1:{t}"));
        }
        out
    }
}

fn example_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/examples/artemis-ha-mirror")
        .join(name);
    std::fs::read_to_string(&path).unwrap()
}

/// `artemis create` of an instance under `dir`, with the example's broker.xml for `server`.
async fn create_instance(
    home: &Path,
    dir: &Path,
    server: &str,
    ports: &Ports,
) -> std::path::PathBuf {
    let instance = dir.join(server);
    let out = tokio::process::Command::new(home.join("bin/artemis"))
        .args([
            "create",
            "--silent",
            "--force",
            "--user",
            "admin",
            "--password",
            "admin",
            "--allow-anonymous",
            "--no-web",
            "--no-autotune",
            "--nio",
        ])
        .arg(&instance)
        .env("JAVA_ARGS", BROKER_JAVA_ARGS)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "artemis create {server}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let xml = ports.substitute(&example_file(&format!("{server}-broker.xml")));
    std::fs::write(instance.join("etc/broker.xml"), xml).unwrap();
    instance
}

/// `<instance>/bin/artemis run` (the script execs the JVM: the pid is the broker's); waits
/// until the broker says it is active.
async fn start_broker(instance: &Path, server: &str, dir: &Path) -> Jvm {
    let mut cmd = tokio::process::Command::new(instance.join("bin/artemis"));
    cmd.arg("run").env("JAVA_ARGS", BROKER_JAVA_ARGS);
    let mut jvm = Jvm::spawn(server, cmd, dir);
    jvm.wait_line("AMQ221007: Server is now active").await;
    jvm
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    File,
    ZooKeeper,
}

/// The example's lockgate config for `server`, on the test ports, on the file lock in
/// `locks` or on ZooKeeper.
fn lockgate_config(
    server: &str,
    ports: &Ports,
    locks: &Path,
    zk: Option<&str>,
    dir: &Path,
) -> std::path::PathBuf {
    let mut text = ports.substitute(&example_file(&format!("{server}.toml")));
    let folder = "locks-folder = \"locks\"";
    assert!(text.contains(folder) && text.contains("type = \"file\""));
    text = match zk {
        None => text.replace(folder, &format!("locks-folder = \"{}\"", locks.display())),
        Some(cs) => text.replace("type = \"file\"", "type = \"zookeeper\"").replace(
            folder,
            &format!(
                "connect-string = \"{cs}\"\nnamespace = \"artemis-test\"\nsession-ms = 4000\nsession-percent = 25\nconnection-ms = 1500"
            ),
        ),
    };
    let path = dir.join(format!("{server}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The seed example with real brokers: 30 messages sent through server0, server0 killed,
/// server1's node takes the lock, the Qpid JMS failover client consumes all 30 from server1,
/// and a sampler never sees both client ports open.
async fn example_flow(backend: Backend, kill: Kill) {
    let Some(art) = java::artifacts() else {
        return;
    };
    if matches!(backend, Backend::ZooKeeper) && !zk::available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let ensemble = match backend {
        Backend::ZooKeeper => Some(zk::Ensemble::start(3).await),
        Backend::File => None,
    };
    let dir = tempfile::tempdir().unwrap();
    let locks = dir.path().join("locks");
    std::fs::create_dir(&locks).unwrap();
    let classes = dir.path().join("classes");
    std::fs::create_dir(&classes).unwrap();
    java::compile(&classes, "MirrorClient", &art.qpid_classpath);
    let ports = Ports::new();
    let (i0, i1) = tokio::join!(
        create_instance(&art.artemis_home, dir.path(), "server0", &ports),
        create_instance(&art.artemis_home, dir.path(), "server1", &ports),
    );
    let (mut broker0, _broker1) = tokio::join!(
        start_broker(&i0, "server0", dir.path()),
        start_broker(&i1, "server1", dir.path()),
    );
    let cs = ensemble.as_ref().map(|e| e.connect_string());
    let c0 = lockgate_config("server0", &ports, &locks, cs.as_deref(), dir.path());
    let c1 = lockgate_config("server1", &ports, &locks, cs.as_deref(), dir.path());
    let mut node0 = Node::start("lockgate0", &c0, dir.path()).await;
    node0.wait_active().await;
    let mut node1 = Node::start("lockgate1", &c1, dir.path()).await;
    let contending = match backend {
        Backend::File => "standing by, waiting on the lock",
        Backend::ZooKeeper => "contending for the lock",
    };
    wait_log(&node1, contending, "lock acquired").await;

    let (p0, p1) = (ports.get(61616), ports.get(61617));
    let mut sampler = Sampler::connect_only(p0, p1, Duration::from_millis(20));
    sampler.wait_for(|r| r.a_served > 0).await;

    let url = format!(
        "failover:(amqp://127.0.0.1:{p0},amqp://127.0.0.1:{p1})?failover.maxReconnectAttempts=-1"
    );
    let cp = format!("{}:{}", classes.display(), art.qpid_classpath);
    let mut client = Jvm::java("client", &cp, "MirrorClient", &[&url], dir.path());
    let connected = client.wait_line("CONNECTED").await;
    assert!(connected.ends_with(&format!(":{p0}")), "{connected}");
    client.send_line(&format!("send {MESSAGES}")).await;
    let sent = client.wait_line("SENT").await;
    assert!(sent.starts_with(&format!("SENT {MESSAGES} ")), "{sent}");

    // The kill.
    let killed = Instant::now();
    broker0.kill().await;
    if kill == Kill::BrokerAndLockgate {
        node0.signal(libc::SIGKILL);
        node0.wait_exit().await;
    }
    node1.wait_active().await;
    let takeover = killed.elapsed();

    client.send_line(&format!("receive {MESSAGES}")).await;
    let first = client
        .wait_line_within(Duration::from_secs(60), "GOT")
        .await;
    let client_back = killed.elapsed();
    let summary = client
        .wait_line_within(Duration::from_secs(90), "RECEIVED")
        .await;
    let got: Vec<String> = client
        .seen
        .iter()
        .filter(|l| l.starts_with("GOT "))
        .cloned()
        .collect();
    assert!(got.contains(&first));
    for l in &got {
        assert!(
            l.ends_with(&format!(":{p1}")),
            "consumed from elsewhere than server1: {l}"
        );
    }
    let mut texts: Vec<&str> = got.iter().filter_map(|l| l.split(' ').nth(1)).collect();
    let received = texts.len();
    texts.sort_unstable();
    texts.dedup();
    let delivered = texts.len();
    assert_eq!(
        summary,
        format!("RECEIVED {received} {delivered}"),
        "the client's own count"
    );
    client.send_line("quit").await;
    client.wait_line("BYE").await;

    let report = sampler.finish().await;
    assert!(report.samples > 0 && report.b_served > 0, "{report:?}");
    assert_eq!(report.both, 0, "both client ports open at once: {report:?}");
    eprintln!(
        "artemis {backend:?} kill={kill:?}: delivered {delivered}/{MESSAGES}, duplicates {}, \
         lock taken over {} ms after the kill, first message consumed from server1 after {} ms; \
         sampler {report:?}",
        received - delivered,
        takeover.as_millis(),
        client_back.as_millis()
    );
    assert_eq!(
        delivered, MESSAGES as usize,
        "messages lost: {:?}",
        client.seen
    );
    drop(node1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_lock_broker_killed_all_30_consumed_from_server1() {
    example_flow(Backend::File, Kill::Broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_lock_host_killed_all_30_consumed_from_server1() {
    example_flow(Backend::File, Kill::BrokerAndLockgate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_broker_killed_all_30_consumed_from_server1() {
    example_flow(Backend::ZooKeeper, Kill::Broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_host_killed_all_30_consumed_from_server1() {
    example_flow(Backend::ZooKeeper, Kill::BrokerAndLockgate).await;
}
