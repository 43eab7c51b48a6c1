//! Apache Artemis in the loop: an unmodified Artemis 2.40.0 pair behind lockgate with the Qpid
//! JMS failover client (the seed example, on the file lock and on ZooKeeper), and lockgate's file
//! lock against Java's own (`FileChannel.lock`, what Artemis's file lock is).
//!
//! Needs a JDK and what `.ci/run` resolves into ~/.m2 (tests/artemis/pom.xml); without them the
//! tests are skipped with a note, except under CI=true, where they fail. The Artemis cases run
//! one at a time (a mutex): each starts three JVMs on a 2-core machine.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::commands::lock_command;
use common::config_file::{file_spec, scratch};
use common::java::{self, Jvm};
use common::zk;
use common::*;

/// The `LockHolder` cases' start: a scratch folder with a locks folder, the path of the lock
/// file lockgate's node (lock-id `mirror-cluster-clients`) uses there, and `LockHolder`
/// compiled. `None` (skipped) without a JDK.
struct LockHolderCase {
    locks: PathBuf,
    lock_file: String,
    classes: String,
    dir: tempfile::TempDir,
}

impl LockHolderCase {
    fn begin() -> Option<LockHolderCase> {
        if !java::jdk_available() {
            return None;
        }
        let (dir, locks) = scratch();
        let lock_file = locks.join("mirror-cluster-clients").display().to_string();
        let classes = dir.path().join("classes");
        std::fs::create_dir_all(&classes).unwrap();
        let classes = java::compile(&classes, "LockHolder", ".")
            .display()
            .to_string();
        Some(LockHolderCase {
            locks,
            lock_file,
            classes,
            dir,
        })
    }

    /// `LockHolder <args>` in a JVM of its own.
    fn java(&self, name: &str, args: &[&str]) -> Jvm {
        Jvm::java(name, &self.classes, "LockHolder", args, self.dir.path())
    }

    /// A lockgate node on the file lock, fronting an echo upstream on `port`.
    async fn node(&self, port: u16, up: &Upstream) -> Node {
        let cfg = file_spec("node0", &self.locks, port, up.addr).write(self.dir.path());
        Node::start("node0", &cfg, self.dir.path()).await
    }
}

/// 4. A JVM holds `FileChannel.lock()` on `<locks-folder>/<lock-id>` (as a native Artemis
/// broker's file lock does): lockgate stands by and its gated route stays shut; when the JVM
/// releases, lockgate takes the lock and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jvm_holding_the_lock_file_keeps_lockgate_standing_by() {
    let Some(case) = LockHolderCase::begin() else {
        return;
    };
    let mut holder = case.java("java-lock-holder", &["hold", &case.lock_file]);
    holder.wait_line("LOCKED").await;

    let up = Upstream::start().await;
    let port = free_port();
    let mut node = case.node(port, &up).await;
    // The node is blocked on the JVM's fcntl lock, and serves nothing meanwhile.
    node.wait_log(
        "locked with fcntl by another process",
        Some("lock acquired"),
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
    let Some(case) = LockHolderCase::begin() else {
        return;
    };
    let up = Upstream::start().await;
    let port = free_port();
    let mut node = case.node(port, &up).await;
    node.wait_active().await;
    wait_serving(port).await;

    let mut try1 = case.java("java-try", &["try", &case.lock_file]);
    let answer = try1.wait_line("TRY").await;
    assert_eq!(answer, "TRY null", "a JVM locked the file lockgate holds");

    node.signal(libc::SIGTERM);
    assert!(node.wait_exit().await.success());
    let mut try2 = case.java("java-try", &["try", &case.lock_file]);
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

/// `artemis create` of an instance under `dir`, with `xml` as its broker.xml.
async fn create_instance_with(
    home: &Path,
    dir: &Path,
    server: &str,
    xml: &str,
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

/// The broker cases' start, one case at a time (`SERIAL`): a scratch folder with a locks
/// folder, `MirrorClient` compiled against the Qpid JMS client, and the test ports.
struct BrokerCase {
    art: &'static java::Artifacts,
    ports: Ports,
    locks: PathBuf,
    /// The client's classpath: `MirrorClient` and the Qpid JMS client.
    classpath: String,
    dir: tempfile::TempDir,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl BrokerCase {
    async fn begin(art: &'static java::Artifacts) -> BrokerCase {
        let serial = SERIAL.lock().await;
        let (dir, locks) = scratch();
        let classes = dir.path().join("classes");
        std::fs::create_dir(&classes).unwrap();
        java::compile(&classes, "MirrorClient", &art.qpid_classpath);
        BrokerCase {
            art,
            ports: Ports::new(),
            locks,
            classpath: format!("{}:{}", classes.display(), art.qpid_classpath),
            dir,
            _serial: serial,
        }
    }

    /// The example's broker.xml for server `i`, on the test ports.
    fn example_xml(&self, i: usize) -> String {
        self.ports
            .substitute(&example_file(&format!("server{i}-broker.xml")))
    }

    /// server0 and server1, `artemis create`d with these broker.xml texts, started.
    async fn brokers(&self, xml: [String; 2]) -> (Jvm, Jvm) {
        let (home, dir) = (&self.art.artemis_home, self.dir.path());
        let (i0, i1) = tokio::join!(
            create_instance_with(home, dir, "server0", &xml[0]),
            create_instance_with(home, dir, "server1", &xml[1]),
        );
        tokio::join!(
            start_broker(&i0, "server0", dir),
            start_broker(&i1, "server1", dir),
        )
    }

    /// A `MirrorClient` on `url`.
    fn client(&self, name: &str, url: &str) -> Jvm {
        Jvm::java(
            name,
            &self.classpath,
            "MirrorClient",
            &[url],
            self.dir.path(),
        )
    }

    /// The failover URL over both client ports.
    fn failover_url(&self) -> String {
        let (p0, p1) = (self.ports.get(61616), self.ports.get(61617));
        format!(
            "failover:(amqp://127.0.0.1:{p0},amqp://127.0.0.1:{p1})?failover.maxReconnectAttempts=-1"
        )
    }
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
    let case = BrokerCase::begin(art).await;
    let (ports, locks, dir) = (&case.ports, &case.locks, &case.dir);
    let ensemble = match backend {
        Backend::ZooKeeper => Some(zk::Ensemble::start(3).await),
        Backend::File => None,
    };
    let (mut broker0, _broker1) = case
        .brokers([case.example_xml(0), case.example_xml(1)])
        .await;
    let cs = ensemble.as_ref().map(|e| e.connect_string());
    let c0 = lockgate_config("server0", ports, locks, cs.as_deref(), dir.path());
    let c1 = lockgate_config("server1", ports, locks, cs.as_deref(), dir.path());
    let mut node0 = Node::start("lockgate0", &c0, dir.path()).await;
    node0.wait_active().await;
    let mut node1 = Node::start("lockgate1", &c1, dir.path()).await;
    let contending = match backend {
        Backend::File => "standing by, waiting on the lock",
        Backend::ZooKeeper => "contending for the lock",
    };
    node1.wait_log(contending, Some("lock acquired")).await;

    let (p0, p1) = (ports.get(61616), ports.get(61617));
    let mut sampler = Sampler::connect_only(p0, p1, Duration::from_millis(20));
    sampler.wait_for(|r| r.a_served > 0).await;

    let mut client = case.client("client", &case.failover_url());
    let connected = client.wait_line("CONNECTED").await;
    assert!(connected.ends_with(&format!(":{p0}")), "{connected}");
    client.send_line(&format!("send orders m {MESSAGES}")).await;
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

    client
        .send_line(&format!("receive orders {MESSAGES} 30000"))
        .await;
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

/// One test per backend and kill: `example_flow` with them.
macro_rules! example_flow_tests {
    ($($name:ident: $backend:ident, $kill:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            example_flow(Backend::$backend, Kill::$kill).await;
        }
    )*};
}

example_flow_tests! {
    file_lock_broker_killed_all_30_consumed_from_server1: File, Broker;
    file_lock_host_killed_all_30_consumed_from_server1: File, BrokerAndLockgate;
    zookeeper_broker_killed_all_30_consumed_from_server1: ZooKeeper, Broker;
    zookeeper_host_killed_all_30_consumed_from_server1: ZooKeeper, BrokerAndLockgate;
}

/// The messages of a client's `GOT` lines since `from` (an index into `seen`): (texts, ports).
fn got_since(client: &Jvm, from: usize) -> Vec<(String, String)> {
    client.seen[from..]
        .iter()
        .filter_map(|l| {
            let mut w = l.strip_prefix("GOT ")?.split(' ');
            let text = w.next()?.to_owned();
            let port = w.next()?.rsplit(':').next()?.to_owned();
            Some((text, port))
        })
        .collect()
}

/// 2. Broker connections that pause: each broker's outbound mirror goes through a *gated*
/// route of its own node (the star topology of Artemis's Lock Coordinator doc), so only the
/// active broker mirrors out. While server0's node stands by, a message put straight into
/// server0 does not reach server1; when the lock comes back it does (the unmodified broker kept
/// it in its mirror queue and replays it on reconnect). Duplicates across the two handovers are
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gated_outbound_mirror_pauses_while_standby_and_resumes() {
    let Some(art) = java::artifacts() else {
        return;
    };
    let case = BrokerCase::begin(art).await;
    let (ports, locks, dir) = (&case.ports, &case.locks, &case.dir);
    // Per node: admin port, and the gated egress route its broker's mirror goes out through.
    let (admin, egress) = ([free_port(), free_port()], [free_port(), free_port()]);
    let open_route = [ports.get(61001), ports.get(61002)];
    let xml = [0, 1].map(|i| {
        let peer_open = open_route[1 - i];
        let text = case
            .example_xml(i)
            .replace(
                &format!("uri=\"tcp://127.0.0.1:{peer_open}\""),
                &format!("uri=\"tcp://127.0.0.1:{}\"", egress[i]),
            )
            // A configured queue (an auto-created one would be auto-deleted, and the deletion
            // mirrored).
            .replace(
                "</addresses>",
                "   <address name=\"paused\"><anycast><queue name=\"paused\"/></anycast></address>\n      </addresses>",
            );
        assert!(text.contains(&format!(":{}\"", egress[i])), "{text}");
        text
    });
    let (_broker0, _broker1) = case.brokers(xml).await;
    let mut cfgs = Vec::new();
    for i in 0..2 {
        let base = lockgate_config(&format!("server{i}"), ports, locks, None, dir.path());
        let mut text = std::fs::read_to_string(&base).unwrap();
        // The egress route before the client route: opened first, closed last.
        let clients = "[[route]]\nname = \"clients\"";
        assert!(text.contains(clients));
        text = text.replace(
            clients,
            &format!(
                "# Gated: this broker's outbound mirror, to the peer's open route.\n[[route]]\nname = \"mirror-out\"\nlisten = \"127.0.0.1:{}\"\nforward-to = \"127.0.0.1:{}\"\nlock-coordinator = \"clients-lock\"\n\n{clients}",
                egress[i],
                open_route[1 - i]
            ),
        );
        text += &format!("\n[admin]\nlisten = \"127.0.0.1:{}\"\n", admin[i]);
        std::fs::write(&base, text).unwrap();
        cfgs.push(base);
    }
    let mut node0 = Node::start("lockgate0", &cfgs[0], dir.path()).await;
    node0.wait_active().await;
    let mut node1 = Node::start("lockgate1", &cfgs[1], dir.path()).await;
    node1
        .wait_log("standing by, waiting on the lock", Some("lock acquired"))
        .await;

    let (p0, p1) = (ports.get(61616), ports.get(61617));
    let mut client = case.client("client", &case.failover_url());
    client.wait_line("CONNECTED").await;
    client.send_line("send orders m 10").await;
    let sent = client.wait_line("SENT").await;
    assert!(sent.ends_with(&format!(":{p0}")), "{sent}");

    // Handover 1: node0 steps down, node1 takes the lock; server0's egress closes.
    lock_command(&cfgs[0], &["step-down", "--hold-off-ms", "600000"]).await;
    node0.wait_standby("released: step_down").await;
    node1.wait_active().await;

    // Straight into server0 (its internal acceptor, not through lockgate) while it stands by.
    let c0 = format!("amqp://127.0.0.1:{}", ports.get(61626));
    let mut direct0 = case.client("direct0", &c0);
    direct0.wait_line("CONNECTED").await;
    // server0's mirror is sync="true": with its egress shut, the send waits for the mirror.
    direct0.send_line("send paused s 5").await;
    // Nothing of it reaches server1 while server0's node stands by.
    let mark = client.seen.len();
    client.send_line("receive paused 5 3000").await;
    let none = client.wait_line("RECEIVED").await;
    assert_eq!(
        none,
        "RECEIVED 0 0",
        "server0 mirrored out while its node stood by: {:?}",
        got_since(&client, mark)
    );
    // The client failed over to server1 and finds the 10 there; it sends 10 more.
    let mark = client.seen.len();
    client.send_line("receive orders 10 30000").await;
    client.wait_line("RECEIVED").await;
    let first_tenure = got_since(&client, mark);
    client.send_line("send orders n 10").await;
    let sent = client.wait_line("SENT").await;
    assert!(sent.ends_with(&format!(":{p1}")), "{sent}");

    // Handover 2: back to node0; server0's egress opens and its mirror replays.
    lock_command(&cfgs[1], &["step-down", "--hold-off-ms", "600000"]).await;
    node1.wait_standby("released: step_down").await;
    // Straight into server1, to see when server0's mirror arrives.
    let c1 = format!("amqp://127.0.0.1:{}", ports.get(61627));
    let mut direct1 = case.client("direct1", &c1);
    direct1.wait_line("CONNECTED").await;
    lock_command(&cfgs[0], &["resume"]).await;
    node0.wait_active().await;
    let back = Instant::now();
    direct1.send_line("receive paused 5 30000").await;
    direct1.wait_line("GOT").await;
    let resumed = back.elapsed();
    let replayed = direct1.wait_line("RECEIVED").await;
    // The producer on server0 was held until its mirror came back.
    assert!(
        !direct0.seen.iter().any(|l| l.starts_with("SENT")),
        "{:?}",
        direct0.seen
    );
    direct0.wait_line("SENT 5").await;

    // The client, back on server0: the 10 sent on server1, and none of the 10 consumed there.
    let mark = client.seen.len();
    client.send_line("receive orders 10 30000").await;
    client.wait_line("RECEIVED").await;
    let second_tenure = got_since(&client, mark);
    client.send_line("quit").await;
    client.wait_line("BYE").await;

    let on = |v: &[(String, String)], port: u16| v.iter().all(|(_, p)| *p == port.to_string());
    assert!(on(&first_tenure, p1), "{first_tenure:?}");
    assert!(on(&second_tenure, p0), "{second_tenure:?}");
    let count = |v: &[(String, String)], prefix: char| {
        v.iter().filter(|(t, _)| t.starts_with(prefix)).count()
    };
    let distinct = |v: &[(String, String)], prefix: char| {
        let mut t: Vec<&str> = v
            .iter()
            .filter(|(t, _)| t.starts_with(prefix))
            .map(|(t, _)| t.as_str())
            .collect();
        t.sort_unstable();
        t.dedup();
        t.len()
    };
    let m_again = count(&second_tenure, 'm');
    let dups = first_tenure.len() - distinct(&first_tenure, 'm')
        + (count(&second_tenure, 'n') - distinct(&second_tenure, 'n'))
        + m_again;
    eprintln!(
        "artemis gated egress: paused while standby (0 of 5 reached server1), {replayed} on server1 \
         {} ms after the lock came back; server1 gave {}/10 of the first 10, server0 then gave {}/10 \
         of the next 10; duplicates across the handovers {dups} ({m_again} already-consumed messages again)",
        resumed.as_millis(),
        distinct(&first_tenure, 'm'),
        distinct(&second_tenure, 'n'),
    );
    assert_eq!(replayed, "RECEIVED 5 5", "the paused mirror did not replay");
    assert_eq!(distinct(&first_tenure, 'm'), 10, "{first_tenure:?}");
    assert_eq!(distinct(&second_tenure, 'n'), 10, "{second_tenure:?}");
}
