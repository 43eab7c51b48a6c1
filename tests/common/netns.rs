//! Separate "hosts" on one machine: one network namespace per host, each with a veth into a
//! bridge that lives in a hub namespace of its own, so every host reaches every other over a
//! private /24 and a cut (blackhole routes) is real: TCP sees its segments vanish.
//!
//! Names are unique per run (`lgt-<pid>-<n>-<host>`); everything is deleted when the [`Net`]
//! drops (panics included), and namespaces left by a killed earlier run (its pid is gone) are
//! deleted when the next one starts. Traffic never leaves the namespaces made here.
//!
//! Also: a timestamped connect-only sampler and a byte-counting echo upstream, both usable
//! inside a namespace or on loopback, whose times come from one clock (`Instant`).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// Whether this machine can make network namespaces (root, `ip` and `bridge` of iproute2).
/// Without them the namespace tests are skipped with a note, except under CI (CI=true).
pub fn available() -> bool {
    let root = rustix::process::geteuid().is_root();
    let tools = ["ip", "bridge"].iter().all(|t| {
        Command::new(t)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let ok = root && tools;
    if !ok {
        super::skip::skipped(
            "network namespaces need root and iproute2 (`ip`, `bridge`; apt-get install -y iproute2)",
        );
    }
    ok
}

/// Runs `ip ARGS`, panicking with its stderr on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

const PREFIX: &str = "lgt-";

/// Deletes namespaces of earlier runs whose process is gone (a SIGKILLed test leaves them).
fn sweep_orphans() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        let gone = rustix::process::Pid::from_raw(pid).is_some_and(|pid| {
            rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH)
        });
        if gone {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// A hub namespace with a bridge, and one namespace per host on it.
pub struct Net {
    hub: String,
    hosts: Vec<(String, String)>,
    subnet: [u8; 3],
}

impl Net {
    /// Makes the hub and one namespace per name in `hosts`; host `i` gets `<subnet>.(i+1)`.
    pub fn new(hosts: &[&str]) -> Net {
        static RUN: AtomicU32 = AtomicU32::new(0);
        sweep_orphans();
        let pid = std::process::id();
        let n = RUN.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{PREFIX}{pid}-{n}");
        // One private /24 per run: 10.(100..199).(0..249).0/24 from the pid and the count.
        let mix = pid.wrapping_mul(31).wrapping_add(n);
        let subnet = [10, 100 + (mix % 100) as u8, ((mix / 100) % 250) as u8];
        let mut net = Net {
            hub: format!("{tag}-hub"),
            hosts: Vec::new(),
            subnet,
        };
        // From here on, Drop deletes whatever was made, even if a later step fails.
        ip(&["netns", "add", &net.hub]);
        ip(&["-n", &net.hub, "link", "set", "lo", "up"]);
        ip(&["-n", &net.hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &net.hub, "link", "set", "br0", "up"]);
        for (i, h) in hosts.iter().enumerate() {
            let ns = format!("{tag}-{h}");
            ip(&["netns", "add", &ns]);
            net.hosts.push((h.to_string(), ns.clone()));
            let port = format!("v{i}");
            // The veth is made in the hub, its peer moved straight into the host: no name
            // ever exists in the root namespace.
            ip(&[
                "-n", &net.hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            ip(&["-n", &net.hub, "link", "set", &port, "master", "br0", "up"]);
            let addr = format!("{}/24", net.addr(h));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    fn index(&self, host: &str) -> usize {
        self.hosts
            .iter()
            .position(|(h, _)| h == host)
            .unwrap_or_else(|| panic!("no host {host}"))
    }

    /// The namespace of a host.
    pub fn ns(&self, host: &str) -> &str {
        &self.hosts[self.index(host)].1
    }

    pub fn addr(&self, host: &str) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, self.index(host) as u8 + 1)
    }

    /// From now on `from` drops every packet it would send to `to` (a blackhole route): a cut
    /// in one direction, instant, with every socket left open.
    pub fn blackhole(&self, from: &str, to: &str) {
        let dst = format!("{}/32", self.addr(to));
        ip(&["-n", self.ns(from), "route", "add", "blackhole", &dst]);
    }

    /// Cuts `a` and `b` apart in both directions.
    pub fn cut(&self, a: &str, b: &str) {
        self.blackhole(a, b);
        self.blackhole(b, a);
    }

    /// Runs `f` on a thread that lives in `host`'s namespace; sockets it creates stay there
    /// (and may then be used from any thread).
    pub fn within<T: Send>(&self, host: &str, f: impl FnOnce() -> T + Send) -> T {
        within_ns(Some(self.ns(host)), f)
    }

    /// Makes `cmd` run in `host`'s namespace. Keep the returned file until it has spawned.
    pub fn enter_on_spawn(&self, host: &str, cmd: &mut tokio::process::Command) -> File {
        let f = File::open(format!("/run/netns/{}", self.ns(host))).unwrap();
        // SAFETY: the hook only calls setns(2), a plain system call, safe between fork and exec.
        unsafe { cmd.pre_exec(enter_ns(&f)) };
        f
    }

    /// The same, for a std command.
    pub fn enter_on_spawn_std(&self, host: &str, cmd: &mut Command) -> File {
        use std::os::unix::process::CommandExt;
        let f = File::open(format!("/run/netns/{}", self.ns(host))).unwrap();
        // SAFETY: as above.
        unsafe { cmd.pre_exec(enter_ns(&f)) };
        f
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, and with it the peer in the hub.
        for (_, ns) in self
            .hosts
            .iter()
            .chain(std::iter::once(&(String::new(), self.hub.clone())))
        {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A `pre_exec` hook: the child enters the network namespace open as `ns` (the hook keeps
/// a duplicate of the descriptor of its own).
fn enter_ns(ns: &File) -> impl FnMut() -> std::io::Result<()> + Send + Sync + use<> {
    let ns = ns.try_clone().unwrap();
    move || {
        Ok(move_into_link_name_space(
            ns.as_fd(),
            Some(LinkNameSpaceType::Network),
        )?)
    }
}

/// Runs `f` on a thread in namespace `ns` (`None`: this process's namespace).
pub fn within_ns<T: Send>(ns: Option<&str>, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(ns) = ns {
                let file = File::open(format!("/run/netns/{ns}")).unwrap();
                move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
                    .unwrap_or_else(|e| panic!("setns {ns}: {e}"));
            }
            f()
        })
        .join()
        .unwrap()
    })
}

/// One connect-only probe of the sampler.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    /// 0 for the first address, 1 for the second.
    pub which: usize,
    pub start: Instant,
    pub end: Instant,
    pub ok: bool,
}

/// Probes two addresses alternately with TCP connects from one thread (in a namespace, or
/// here), pacing `pacing` between rounds, and keeps every probe with its start and end times.
/// A connect that succeeds means a listener accepted it at some moment in `[start, end]`.
pub struct TimedSampler {
    stop: Arc<AtomicBool>,
    probes: Arc<Mutex<Vec<Probe>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// At most this many probes per sampler (the loop is bounded even if the test is not).
const MAX_PROBES: usize = 400_000;

impl TimedSampler {
    pub fn start(ns: Option<String>, targets: [SocketAddr; 2], pacing: Duration) -> TimedSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let probes: Arc<Mutex<Vec<Probe>>> = Arc::default();
        let (s, p) = (stop.clone(), probes.clone());
        let thread = std::thread::spawn(move || {
            within_ns(ns.as_deref(), || {
                let mut n = 0usize;
                while !s.load(Ordering::Relaxed) && n < MAX_PROBES {
                    for (which, addr) in targets.iter().enumerate() {
                        let start = Instant::now();
                        let r =
                            std::net::TcpStream::connect_timeout(addr, Duration::from_millis(100));
                        let end = Instant::now();
                        let ok = match r {
                            Ok(c) => {
                                // RST, no TIME_WAIT left behind.
                                let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
                                true
                            }
                            Err(_) => false,
                        };
                        p.lock().unwrap().push(Probe {
                            which,
                            start,
                            end,
                            ok,
                        });
                        n += 1;
                    }
                    std::thread::sleep(pacing);
                }
            })
        });
        TimedSampler {
            stop,
            probes,
            thread: Some(thread),
        }
    }

    /// Waits (bounded) until some probe of `which` succeeded at or after `since`.
    pub async fn wait_ok(&self, which: usize, since: Instant) {
        let deadline = Instant::now() + super::BOUND;
        loop {
            if self.first_ok(which, since).is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sampler: target {which} never accepted"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The first successful probe of `which` started at or after `since`.
    pub fn first_ok(&self, which: usize, since: Instant) -> Option<Probe> {
        self.probes
            .lock()
            .unwrap()
            .iter()
            .find(|p| p.which == which && p.ok && p.start >= since)
            .copied()
    }

    /// The probes started at or after `since`, so far.
    pub fn snapshot(&self, since: Instant) -> Vec<Probe> {
        self.probes
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.start >= since)
            .copied()
            .collect()
    }

    pub fn finish(mut self) -> Vec<Probe> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.probes.lock().unwrap())
    }
}

impl Drop for TimedSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What the probes say about "never two": the last time the first target (the old holder)
/// accepted, and the first time the second (the new one) did, both after `since`.
#[derive(Debug)]
pub struct Handover {
    pub probes: usize,
    /// End of the last successful probe of the old holder after `since` (it accepted at or
    /// before this).
    pub old_last_ok: Option<Instant>,
    /// Start of the last successful probe of the old holder (it accepted at or after this).
    pub old_last_ok_start: Option<Instant>,
    /// First successful probe of the new holder: it accepted at or before its end.
    pub new_first_ok_end: Option<Instant>,
    pub new_first_ok_start: Option<Instant>,
    /// Successful probes of the old holder that began after the new one's first success
    /// ended: proof that both accepted at once.
    pub old_ok_after_new: usize,
    /// The largest gap between two probes of the same target after `since`.
    pub max_gap: Duration,
}

impl Handover {
    pub fn of(probes: &[Probe], since: Instant) -> Handover {
        let after: Vec<&Probe> = probes.iter().filter(|p| p.start >= since).collect();
        let old_last = after.iter().rev().find(|p| p.which == 0 && p.ok);
        let new_first = after.iter().find(|p| p.which == 1 && p.ok);
        let old_ok_after_new = match new_first {
            Some(nf) => after
                .iter()
                .filter(|p| p.which == 0 && p.ok && p.start > nf.end)
                .count(),
            None => 0,
        };
        let mut max_gap = Duration::ZERO;
        for which in 0..2 {
            let mut prev: Option<Instant> = None;
            for p in after.iter().filter(|p| p.which == which) {
                if let Some(t) = prev {
                    max_gap = max_gap.max(p.start.saturating_duration_since(t));
                }
                prev = Some(p.start);
            }
        }
        Handover {
            probes: after.len(),
            old_last_ok: old_last.map(|p| p.end),
            old_last_ok_start: old_last.map(|p| p.start),
            new_first_ok_end: new_first.map(|p| p.end),
            new_first_ok_start: new_first.map(|p| p.start),
            old_ok_after_new,
            max_gap,
        }
    }

    /// How long both accepted at once, at least (zero when they did not overlap).
    pub fn overlap(&self) -> Duration {
        match (self.old_last_ok_start, self.new_first_ok_end) {
            (Some(old), Some(new)) => old.saturating_duration_since(new),
            _ => Duration::ZERO,
        }
    }
}

/// What a counting upstream saw, by one clock.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub connections: u64,
    pub bytes: u64,
    pub first_accept: Option<Instant>,
    pub first_byte: Option<Instant>,
    pub last_byte: Option<Instant>,
    /// Bytes received at or after the instant set by [`CountingUpstream::mark`].
    pub bytes_after_mark: u64,
    /// First connection accepted at or after the mark.
    pub first_accept_after_mark: Option<Instant>,
    pub first_byte_after_mark: Option<Instant>,
}

/// An echo "broker" that counts every byte it receives and stamps the first and the last.
pub struct CountingUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<(Option<Instant>, Seen)>>,
    accept: JoinHandle<()>,
}

impl CountingUpstream {
    /// Listens on 127.0.0.1 inside `host` of `net` (or here, for `None`).
    pub async fn start(net: Option<(&Net, &str)>) -> CountingUpstream {
        let bind = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.set_nonblocking(true).unwrap();
            l
        };
        let std_listener = match net {
            Some((net, host)) => net.within(host, bind),
            None => bind(),
        };
        let addr = std_listener.local_addr().unwrap();
        let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        let seen: Arc<Mutex<(Option<Instant>, Seen)>> = Arc::default();
        let s = seen.clone();
        let accept = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut c, _)) = listener.accept().await {
                {
                    let now = Instant::now();
                    let mut g = s.lock().unwrap();
                    let mark = g.0;
                    let seen = &mut g.1;
                    seen.connections += 1;
                    seen.first_accept.get_or_insert(now);
                    if mark.is_some_and(|m| now >= m) {
                        seen.first_accept_after_mark.get_or_insert(now);
                    }
                }
                let s = s.clone();
                conns.spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match c.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        {
                            let now = Instant::now();
                            let mut g = s.lock().unwrap();
                            let mark = g.0;
                            let seen = &mut g.1;
                            seen.bytes += n as u64;
                            seen.first_byte.get_or_insert(now);
                            seen.last_byte = Some(now);
                            if mark.is_some_and(|m| now >= m) {
                                seen.bytes_after_mark += n as u64;
                                seen.first_byte_after_mark.get_or_insert(now);
                            }
                        }
                        if c.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                // Reap finished connections as we go.
                while conns.try_join_next().is_some() {}
            }
        });
        CountingUpstream { addr, seen, accept }
    }

    /// Counts bytes and connections separately from `at` on.
    pub fn mark(&self, at: Instant) {
        self.seen.lock().unwrap().0 = Some(at);
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap().1.clone()
    }
}

impl Drop for CountingUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A client that keeps traffic flowing through one address: connects (from `host`'s
/// namespace), writes a small chunk every `every` and reads its echo; on any failure it
/// connects again. Stops when dropped.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    task: JoinHandle<u64>,
}

impl Traffic {
    pub fn start(net: &Net, host: &str, to: SocketAddr, every: Duration) -> Traffic {
        let ns = net.ns(host).to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut echoed = 0u64;
            let chunk = [b'x'; 64];
            let mut buf = [0u8; 64];
            // Bounded: about BOUND × 4 of traffic at most.
            let deadline = Instant::now() + super::BOUND * 4;
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                let ns = ns.clone();
                let sock = within_ns(Some(&ns), || {
                    let s =
                        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                            .unwrap();
                    s.set_nonblocking(true).unwrap();
                    s
                });
                let sock = tokio::net::TcpSocket::from_std_stream(sock.into());
                let conn = tokio::time::timeout(Duration::from_millis(200), sock.connect(to)).await;
                let Ok(Ok(mut c)) = conn else {
                    tokio::time::sleep(every).await;
                    continue;
                };
                while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let ok = tokio::time::timeout(Duration::from_millis(500), async {
                        c.write_all(&chunk).await?;
                        c.read_exact(&mut buf).await?;
                        Ok::<(), std::io::Error>(())
                    })
                    .await
                    .is_ok_and(|r| r.is_ok());
                    if !ok {
                        break;
                    }
                    echoed += chunk.len() as u64;
                    tokio::time::sleep(every).await;
                }
                let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
            }
            echoed
        });
        Traffic { stop, task }
    }

    /// Stops; returns the bytes echoed back.
    pub async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// A ZooKeeper ensemble, one server per host of a [`Net`] (`zk1`, `zk2`, …), each on port
/// 2181 of its own address (ports cannot collide: every server has its own namespace).
/// `probe_from` is a host that reaches every server (for the four-letter words).
pub struct NsEnsemble {
    hosts: Vec<String>,
    addrs: Vec<Ipv4Addr>,
    logs: Vec<std::path::PathBuf>,
    children: Vec<Option<std::process::Child>>,
    probe_ns: String,
    _dir: tempfile::TempDir,
}

pub const ZK_PORT: u16 = 2181;

impl NsEnsemble {
    /// Starts one server on each of `hosts` with `zoo_cfg` (tickTime and the limits) and waits
    /// until each serves.
    pub async fn start(net: &Net, hosts: &[&str], probe_from: &str, zoo_cfg: &str) -> NsEnsemble {
        let dir = tempfile::tempdir().unwrap();
        let addrs: Vec<Ipv4Addr> = hosts.iter().map(|h| net.addr(h)).collect();
        let mut e = NsEnsemble {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            addrs: addrs.clone(),
            logs: Vec::new(),
            children: Vec::new(),
            probe_ns: net.ns(probe_from).to_owned(),
            _dir: dir,
        };
        for (i, h) in hosts.iter().enumerate() {
            let data = e._dir.path().join(format!("zk{i}"));
            std::fs::create_dir_all(&data).unwrap();
            std::fs::write(data.join("myid"), format!("{}\n", i + 1)).unwrap();
            let mut cfg = format!(
                "{zoo_cfg}\ndataDir={}\nclientPort={ZK_PORT}\nclientPortAddress={}\nminSessionTimeout=1000\nmaxSessionTimeout=60000\nadmin.enableServer=false\n4lw.commands.whitelist=*\n",
                data.display(),
                addrs[i]
            );
            for (j, a) in addrs.iter().enumerate() {
                cfg += &format!("server.{}={a}:2888:3888\n", j + 1);
            }
            let path = e._dir.path().join(format!("zoo{i}.cfg"));
            std::fs::write(&path, cfg).unwrap();
            let log_path = e._dir.path().join(format!("zk{i}.log"));
            let log = File::create(&log_path).unwrap();
            let mut cmd = Command::new("java");
            cmd.args(super::java::SMALL_JVM)
                .args(["-cp", &super::zk::JARS.join(":")])
                .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            let keep = net.enter_on_spawn_std(h, &mut cmd);
            e.children.push(Some(cmd.spawn().unwrap()));
            drop(keep);
            e.logs.push(log_path);
        }
        for i in 0..hosts.len() {
            e.wait_serving(i).await;
        }
        e
    }

    pub fn host(&self, i: usize) -> &str {
        &self.hosts[i]
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// `ip:2181` of server `i`.
    pub fn address(&self, i: usize) -> String {
        format!("{}:{ZK_PORT}", self.addrs[i])
    }

    /// Server `i`'s mode (`leader`, `follower`), from `srvr`; `None` if it does not serve.
    pub fn mode(&self, i: usize) -> Option<String> {
        let addr = SocketAddr::from((self.addrs[i], ZK_PORT));
        within_ns(Some(&self.probe_ns), move || super::zk::srvr_mode(addr))
    }

    pub async fn wait_serving(&self, i: usize) {
        let deadline = Instant::now() + super::BOUND;
        loop {
            if self.mode(i).is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ZooKeeper {} not serving within {:?}:\n{}",
                self.hosts[i],
                super::BOUND,
                self.log(i)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The leader's index; waits (bounded) until one of the servers says it leads.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + super::BOUND;
        loop {
            if let Some(i) = (0..self.len()).find(|&i| self.mode(i).as_deref() == Some("leader")) {
                return i;
            }
            assert!(Instant::now() < deadline, "no ZooKeeper leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.logs[i]).unwrap_or_default()
    }
}

impl Drop for NsEnsemble {
    fn drop(&mut self) {
        for c in self.children.iter_mut().filter_map(Option::take) {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
