//! Real brokers end to end: two unmodified mosquitto brokers behind two lockgate nodes, and a
//! real MQTT client library (paho-mqtt, driven through `tests/brokers/mqtt_client.py`) with a
//! failover list, across a SIGKILL of the active lockgate and a SIGKILL of the active broker.
//!
//! ```text
//!  publisher, subscriber: failover list [client0, client1]   (paho; the list is app code)
//!        |                                   :
//!   node0 client0 (gated) --> broker A       node1 client1 (gated) --> broker B
//!                              |  bridge "both #" (one TCP connection, both directions)
//!                              +--------> node1 mirror (open) --> broker B
//! ```
//!
//! **Where the bridge runs.** Broker A alone has a bridge (`connection`, `topic # both 1`,
//! `cleansession false`, `try_private true`); it connects through node1's always-open `mirror`
//! route to broker B. One mosquitto bridge carries both directions, so one is enough, and it
//! never passes through node0: killing node0 (fault 1) leaves the bridge up. While the bridge
//! is down, A queues what it must forward (`cleansession false`), and B keeps a session for the
//! bridge's client id.
//!
//! **Where the subscriber's sessions live.** A mosquitto bridge copies messages, not sessions:
//! a message reaches the subscriber after a failover only if the broker it reconnects to already
//! holds its persistent session, subscribed, while the message arrives. So the subscriber's
//! session (clean_session False, one fixed client id) is provisioned on **both** brokers before
//! the run, through lockgate as an application would see it: node1 serves first and the
//! subscriber connects through the failover list (session on B); a planned switchover
//! (`lockgate step-down` on node1) hands the lock to node0 and it connects again (session on
//! A); `lockgate resume` puts node1 back in line. From then on every message published on
//! either broker is delivered to, or queued for, the subscriber on both, and a failover
//! re-delivers what the other broker queued since the subscriber last left it: many
//! duplicates, which at-least-once allows. `max_queued_messages 0` lifts mosquitto's default
//! cap of 1000 queued messages per offline session, which would otherwise drop messages.
//!
//! **What is asserted.** Every message the publisher saw PUBACKed is delivered to the
//! subscriber at least once, with its payload intact; nothing is delivered that was never
//! published; the publisher's acks come through node0, then node1, then node0 again, and the
//! subscriber reconnects each time with its session present; the lock reaches term 4 (node1,
//! node0, node1, node0); and the two client ports are never bound at once (a connect-only
//! sampler: a gated listener is bound only while its node holds the lock, so a TCP connect
//! that succeeds means that node serves).
//!
//! **Why a broker SIGKILL loses nothing acked.** mosquitto acknowledges a QoS 1 PUBLISH from
//! memory, but (as its log shows) it writes the message to its subscribers' connections and the
//! bridge's before it sends the PUBACK. On loopback that puts the bytes in the peer's receive
//! buffer, so a SIGKILL after the PUBACK does not take the message with it: lockgate forwards
//! those bytes, and the message has reached the subscriber, or crossed the bridge (through
//! node1's mirror route) into the session queued on A. That holds while those connections'
//! in-flight windows (20) have room, as at this pace.
//!
//! Needs Debian's `mosquitto` and `python3-paho-mqtt`; without them the test is skipped with a
//! note, except under `CI`, where it fails. `.ci/run` installs them.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use common::commands::lock_command;
use common::config_file::scratch;
use common::toml_text::{Toml, loopback};
use common::*;
use tokio::sync::watch;

/// The bridge's client id on broker B; also names its state topic on broker A.
const BRIDGE_ID: &str = "lockgate-e2e-bridge";
/// Acks to see through each node before the next step.
const PER_PHASE: usize = 200;

/// Where the real programs are.
struct Tools {
    mosquitto: PathBuf,
    python: PathBuf,
}

/// mosquitto and a Python with paho-mqtt, or `None` (skipped with a note; a failure under CI).
fn tools() -> Option<Tools> {
    let mosquitto = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    // Debian's paho lives in the system Python's dist-packages, which another python3 first on
    // PATH (pyenv, a venv) does not see.
    let python = ["/usr/bin/python3", "python3"]
        .iter()
        .map(PathBuf::from)
        .find(|p| {
            Command::new(p)
                .args(["-c", "import paho.mqtt.client"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    match (mosquitto, python) {
        (Some(mosquitto), Some(python)) => Some(Tools { mosquitto, python }),
        _ => {
            common::skip::skipped(
                "mosquitto or python3-paho-mqtt is not installed \
                 (apt-get install -y --no-install-recommends mosquitto python3-paho-mqtt)",
            );
            None
        }
    }
}

/// A mosquitto broker: a child process with its own config and log in the test's temp dir.
/// SIGKILLed and reaped when dropped; its log is printed if the test failed.
struct Broker {
    name: String,
    port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Broker {
    /// Starts mosquitto on 127.0.0.1:`port`; with `bridge_to`, a bridge to that address.
    /// Readiness is not awaited here: the broker's lockgate node contends only once its health
    /// check passes, and the test waits for that.
    fn start(tools: &Tools, dir: &Path, name: &str, port: u16, bridge_to: Option<u16>) -> Broker {
        let log = dir.join(format!("{name}.log"));
        let mut conf = format!(
            "# As root mosquitto switches to user mosquitto unless told otherwise.
user root
listener {port} 127.0.0.1
allow_anonymous true
persistence false
# Offline persistent sessions: keep every queued message (the default cap is 1000).
max_queued_messages 0
# mosquitto logs nothing to a stdout that is not a terminal.
log_dest file {log}
log_type error
log_type warning
log_type notice
log_type information
",
            log = log.display()
        );
        if let Some(peer) = bridge_to {
            conf += &format!(
                "
connection lockgate-e2e
address 127.0.0.1:{peer}
remote_clientid {BRIDGE_ID}
topic # both 1
try_private true
cleansession false
restart_timeout 1 2
"
            );
        }
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, conf).unwrap();
        let child = Command::new(&tools.mosquitto)
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.stderr"))).unwrap())
            .spawn()
            .unwrap();
        Broker {
            name: name.to_owned(),
            port,
            child: Some(child),
            log,
        }
    }

    /// SIGKILL, then wait for the child (not `kill -0`: it can look alive here for a while).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("---- last lines of {} (port {}) ----", self.name, self.port);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// One line a client script printed, with when the test read it.
type Line = (Instant, String);

/// An MQTT client process (`tests/brokers/mqtt_client.py`): its stdout lines are collected
/// as they come. Killed and reaped when dropped.
struct Client {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: watch::Receiver<Vec<Line>>,
    stderr: PathBuf,
}

impl Client {
    fn start(tools: &Tools, dir: &Path, name: &str, args: &[String]) -> Client {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/brokers/mqtt_client.py");
        let stderr = dir.join(format!("{name}.stderr"));
        let mut child = Command::new(&tools.python)
            .arg("-u")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = watch::channel(Vec::new());
        // A plain thread: the read blocks. It ends (and closes the channel) at the child's exit.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                tx.send_modify(|v| v.push((Instant::now(), line)));
            }
        });
        Client {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        }
    }

    /// Waits until the lines so far satisfy `pred`.
    async fn wait(&mut self, what: &str, pred: impl Fn(&[Line]) -> bool) {
        let r = tokio::time::timeout(BOUND, self.lines.wait_for(|v| pred(v)))
            .await
            .map(|r| r.is_ok());
        if r != Ok(true) {
            panic!(
                "{}: {what}: not within {BOUND:?} (or it exited)\n{}",
                self.name,
                self.describe()
            );
        }
    }

    fn lines(&self) -> Vec<Line> {
        self.lines.borrow().clone()
    }

    /// Asks the client to stop (a line on stdin), and waits for it to say `done` and exit.
    async fn stop(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.write_all(b"stop\n");
        }
        self.wait("done", |v| v.iter().any(|(_, l)| l == "done"))
            .await;
        // `done` is its last line: wait for its stdout to close, then reap it.
        let closed = tokio::time::timeout(BOUND, self.lines.wait_for(|_| false))
            .await
            .is_ok();
        assert!(closed, "{} did not exit", self.name);
        let status = tokio::task::block_in_place(|| self.child.wait()).unwrap();
        assert!(
            status.success(),
            "{}: {status}\n{}",
            self.name,
            self.describe()
        );
    }

    fn describe(&self) -> String {
        let lines = self.lines();
        let tail: Vec<&str> = lines
            .iter()
            .rev()
            .take(30)
            .map(|(_, l)| l.as_str())
            .collect();
        format!(
            "last lines: {:?}\nstderr:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `ack ID PORT` lines: (id, port, when read).
fn acks(lines: &[Line]) -> Vec<(u32, u16, Instant)> {
    lines
        .iter()
        .filter_map(|(t, l)| {
            let mut w = l.strip_prefix("ack ")?.split(' ');
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?, *t))
        })
        .collect()
}

/// The ids of the `msg ID PORT` lines, in order, duplicates included.
fn delivered(lines: &[Line]) -> Vec<u32> {
    lines
        .iter()
        .filter_map(|(_, l)| l.strip_prefix("msg ")?.split(' ').next()?.parse().ok())
        .collect()
}

/// The `msg ID PORT` lines: (id, the port it came through).
fn delivered_via(lines: &[Line]) -> Vec<(u32, u16)> {
    lines
        .iter()
        .filter_map(|(_, l)| {
            let mut w = l.strip_prefix("msg ")?.split(' ');
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect()
}

/// The `connected PORT SESSION_PRESENT` lines: (port, session present, when read).
fn connects(lines: &[Line]) -> Vec<(u16, bool, Instant)> {
    lines
        .iter()
        .filter_map(|(t, l)| {
            let mut w = l.strip_prefix("connected ")?.split(' ');
            Some((w.next()?.parse().ok()?, w.next()? == "1", *t))
        })
        .collect()
}

/// Runs of the same port in a sequence of acks: [(port, how many)].
fn phases(acks: &[(u32, u16, Instant)]) -> Vec<(u16, usize)> {
    let mut out: Vec<(u16, usize)> = Vec::new();
    for &(_, port, _) in acks {
        match out.last_mut() {
            Some((p, n)) if *p == port => *n += 1,
            _ => out.push((port, 1)),
        }
    }
    out
}

/// A node's config: the client route gated by `clients-lock` and health-checked on the local
/// broker, an admin endpoint (for step-down and resume), and with `mirror`, the always-open
/// route the peer broker's bridge comes in through.
fn node_config(
    dir: &Path,
    id: &str,
    locks: &Path,
    admin: u16,
    client: u16,
    broker: u16,
    mirror: Option<u16>,
) -> PathBuf {
    let broker = loopback(broker);
    let mut toml = Toml::node(id, "shutdown-grace-ms = 200\n")
        .admin(admin, "")
        .file_lock("clients-lock", "mqtt-clients", locks, 200)
        .health_check(broker, (100, 100, 1, 2))
        .gated_route("clients", client, broker, "clients-lock");
    if let Some(m) = mirror {
        toml = toml.route("mirror", m, broker, "");
    }
    toml.write(dir, id)
}

/// Creates the subscriber's persistent session and subscription on the broker whose node
/// serves now, through the failover list; returns the port it was made through.
async fn provision(tools: &Tools, dir: &Path, name: &str, list: &str) -> u16 {
    let mut c = Client::start(
        tools,
        dir,
        name,
        &["sub".into(), list.into(), "--provision".into()],
    );
    c.wait("provisioned", |v| {
        v.iter().any(|(_, l)| l.starts_with("provisioned "))
    })
    .await;
    let lines = c.lines();
    let line = lines
        .iter()
        .find_map(|(_, l)| l.strip_prefix("provisioned "))
        .unwrap();
    // A fresh session: nobody connected with this client id to this broker before.
    let (port, present) = line.split_once(' ').unwrap();
    assert_eq!(present, "0", "{name}: the session existed already");
    c.wait("done", |v| v.iter().any(|(_, l)| l == "done")).await;
    port.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pair_fails_over_without_losing_acked_messages() {
    let Some(tools) = tools() else {
        return;
    };
    let started = Instant::now();
    // First, so it is dropped last: logs live here until the end.
    let (dir, locks) = scratch();
    let d = dir.path();
    let [port_a, port_b, client0, client1, mirror1, admin0, admin1] = [(); 7].map(|_| free_port());
    let list = format!("{client0},{client1}");

    let mut broker_b = Broker::start(&tools, d, "broker-b", port_b, None);
    let mut broker_a = Broker::start(&tools, d, "broker-a", port_a, Some(mirror1));
    let c0 = node_config(d, "node0", &locks, admin0, client0, port_a, None);
    let c1 = node_config(d, "node1", &locks, admin1, client1, port_b, Some(mirror1));

    // Setup: the subscriber's session on B (node1 serves), then on A (node0 serves).
    let mut node1 = Node::start("node1", &c1, d).await;
    node1.wait_active().await;
    assert_eq!(provision(&tools, d, "provision-b", &list).await, client1);
    let mut node0 = Node::start("node0", &c0, d).await;
    node0.wait_standby("contending").await;
    lock_command(&c1, &["step-down", "--hold-off-ms", "60000"]).await;
    node1.wait_standby("released: step_down").await;
    node0.wait_active().await;
    assert_eq!(provision(&tools, d, "provision-a", &list).await, client0);
    lock_command(&c1, &["resume"]).await;
    node1.wait_standby("contending").await;
    let setup = started.elapsed();

    // The run: a subscriber and a publisher on the failover list, a sampler watching.
    let mut sampler = // Connect-only: the upstreams are MQTT brokers, not echo servers; paced, as every probe
    // is a connection to a real broker through lockgate.
    Sampler::connect_only(client0, client1, Duration::from_millis(10));
    sampler.wait_for(|r| r.a_served > 0).await;
    let mut sub = Client::start(&tools, d, "subscriber", &["sub".into(), list.clone()]);
    let want = format!("connected {client0} 1");
    sub.wait(&want, |v| v.iter().any(|(_, l)| *l == want)).await;
    let mut publ = Client::start(
        &tools,
        d,
        "publisher",
        &[
            "pub".into(),
            list.clone(),
            "--interval-ms".into(),
            "5".into(),
            "--wait-bridge".into(),
            BRIDGE_ID.into(),
        ],
    );
    publ.wait("the bridge up", |v| v.iter().any(|(_, l)| l == "bridge up"))
        .await;
    publ.wait("acks through node0", |v| {
        phases(&acks(v))
            .first()
            .is_some_and(|&(p, n)| p == client0 && n >= PER_PHASE)
    })
    .await;

    // Fault 1: SIGKILL the active lockgate while publishing.
    let fault1 = Instant::now();
    node0.signal(libc::SIGKILL);
    node0.wait_exit().await;
    node1.wait_active().await;
    publ.wait("acks through node1", |v| {
        phases(&acks(v))
            .get(1)
            .is_some_and(|&(p, n)| p == client1 && n >= PER_PHASE)
    })
    .await;
    let want = format!("connected {client1} 1");
    sub.wait(&want, |v| v.iter().any(|(_, l)| *l == want)).await;

    // node0 comes back and stands by behind node1.
    let mut node0 = Node::start("node0-restarted", &c0, d).await;
    node0.wait_standby("contending").await;

    // Fault 2: SIGKILL the active broker while publishing; node1's health check fails.
    let fault2 = Instant::now();
    broker_b.kill();
    node1.wait_standby("released: health").await;
    node0.wait_active().await;
    publ.wait("acks through node0 again", |v| {
        phases(&acks(v))
            .get(2)
            .is_some_and(|&(p, n)| p == client0 && n >= PER_PHASE)
    })
    .await;
    let want = format!("connected {client0} 1");
    sub.wait(&want, |v| v.iter().filter(|(_, l)| *l == want).count() == 2)
        .await;

    // Stop publishing; every acked message must reach the subscriber.
    publ.stop().await;
    let pub_lines = publ.lines();
    let acked = acks(&pub_lines);
    let acked_ids: BTreeSet<u32> = acked.iter().map(|a| a.0).collect();
    let last = acked.last().unwrap().0;
    assert_eq!(
        acked_ids,
        (1..=last).collect::<BTreeSet<u32>>(),
        "the publisher moves on only after an ack"
    );
    sub.wait("every acked message", |v| {
        let got: BTreeSet<u32> = delivered(v).into_iter().collect();
        acked_ids.is_subset(&got)
    })
    .await;
    sub.stop().await;
    let report = sampler.finish().await;

    // The checks.
    let sub_lines = sub.lines();
    let all = delivered(&sub_lines);
    let distinct: BTreeSet<u32> = all.iter().copied().collect();
    let corrupt: Vec<&String> = sub_lines
        .iter()
        .map(|(_, l)| l)
        .filter(|l| l.starts_with("corrupt"))
        .collect();
    assert!(
        corrupt.is_empty(),
        "payloads changed on the way: {corrupt:?}"
    );
    // At most one message was in flight, unacked, when the publisher stopped.
    let strays: Vec<u32> = distinct.iter().copied().filter(|&i| i > last + 1).collect();
    assert!(strays.is_empty(), "never published: {strays:?}");
    let lost: Vec<u32> = acked_ids.difference(&distinct).copied().collect();
    assert!(lost.is_empty(), "acked but never delivered: {lost:?}");
    let ph = phases(&acked);
    assert_eq!(
        ph.iter().map(|p| p.0).collect::<Vec<_>>(),
        [client0, client1, client0],
        "acks through node0, node1, node0: {ph:?}"
    );
    // The bridge carried messages both ways: some published on A came to the subscriber from
    // B, and some published on B came from A.
    let acked_via: std::collections::BTreeMap<u32, u16> =
        acked.iter().map(|&(i, p, _)| (i, p)).collect();
    let crossed = |from: u16, to: u16| {
        delivered_via(&sub_lines)
            .iter()
            .filter(|&&(i, p)| p == to && acked_via.get(&i) == Some(&from))
            .count()
    };
    let (a_to_b, b_to_a) = (crossed(client0, client1), crossed(client1, client0));
    assert!(
        a_to_b > 0 && b_to_a > 0,
        "bridge: A->B {a_to_b}, B->A {b_to_a}"
    );
    let sub_connects = connects(&sub_lines);
    assert_eq!(
        sub_connects
            .iter()
            .map(|&(p, present, _)| (p, present))
            .collect::<Vec<_>>(),
        [(client0, true), (client1, true), (client0, true)],
        "the subscriber found its session on each broker"
    );
    assert!(report.samples > 0, "{report:?}");
    assert!(report.a_served > 0 && report.b_served > 0, "{report:?}");
    assert_eq!(
        report.both, 0,
        "both client ports were bound at once: {report:?}"
    );
    let terms: Vec<&String> = node0
        .seen
        .iter()
        .chain(&node1.seen)
        .filter(|l| l.contains(": active term"))
        .collect();
    assert!(
        terms.iter().any(|l| l.ends_with("active term 4")),
        "the lock went node1, node0, node1, node0: {terms:?}"
    );

    // Measured: from the fault to the first ack through the other node, and to the
    // subscriber's reconnect.
    let first_ack_after = |t: Instant, port: u16| {
        acked
            .iter()
            .find(|&&(_, p, at)| at > t && p == port)
            .map(|&(_, _, at)| at - t)
            .unwrap()
    };
    let sub_after = |t: Instant, port: u16| {
        sub_connects
            .iter()
            .find(|&&(p, _, at)| at > t && p == port)
            .map(|&(_, _, at)| at - t)
            .unwrap()
    };
    eprintln!(
        "brokers e2e: setup {setup:?}; published {} (acked {}), delivered {} ({} distinct, {} duplicates; \
         through the bridge A->B {a_to_b}, B->A {b_to_a}); \
         lockgate SIGKILL -> publisher acked via node1 after {:?}, subscriber back after {:?}; \
         broker SIGKILL -> publisher acked via node0 after {:?}, subscriber back after {:?}; \
         sampler {report:?}; total {:?}",
        last + u32::from(distinct.contains(&(last + 1))),
        acked_ids.len(),
        all.len(),
        distinct.len(),
        all.len() - distinct.len(),
        first_ack_after(fault1, client1),
        sub_after(fault1, client1),
        first_ack_after(fault2, client0),
        sub_after(fault2, client0),
        started.elapsed(),
    );

    // Clean up in order: lockgate nodes (SIGTERM, exit 0), then the broker, then the dir.
    for n in [&mut node0, &mut node1] {
        n.signal(libc::SIGTERM);
        let status = n.wait_exit().await;
        assert_eq!(status.code(), Some(0), "{}", n.log_text());
    }
    broker_a.kill();
}
