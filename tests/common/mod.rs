//! Real parts for the integration tests: lockgate child processes that report READY/STATUS on a
//! notify socket the test owns, loopback echo upstreams that record every byte, a failover
//! client, and a sampler that checks two nodes never serve at once.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixDatagram};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub mod commands;
pub mod config_file;
pub mod java;
pub mod netns;
pub mod skip;
pub mod solo;
pub mod toml_text;
pub mod zk;

/// The bound on every wait in these tests: generous, only there so a broken build fails
/// instead of hanging.
pub const BOUND: Duration = Duration::from_secs(30);

/// A port below 32768 (outside the ephemeral range) that is free right now.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = 12_000u32;
    let seed = std::process::id().wrapping_mul(7919);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(n.wrapping_mul(37)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below 32768");
}

/// The bytes of one connection, shared with its task.
type ConnLog = Arc<Mutex<Vec<u8>>>;

/// An echo "broker" on loopback that records every byte it receives, per connection.
pub struct Upstream {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<ConnLog>>>,
    accept: JoinHandle<()>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<ConnLog>>> = Arc::default();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = Self::serve(listener, received.clone(), conns.clone());
        Upstream {
            addr,
            received,
            accept,
            conns,
        }
    }

    /// Listens again on the same address after `stop_listening`.
    pub async fn resume_listening(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.accept = Self::serve(listener, self.received.clone(), self.conns.clone());
    }

    fn serve(
        listener: TcpListener,
        r: Arc<Mutex<Vec<ConnLog>>>,
        c: Arc<Mutex<Vec<JoinHandle<()>>>>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let log = Arc::new(Mutex::new(Vec::new()));
                r.lock().unwrap().push(log.clone());
                c.lock().unwrap().push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                log.lock().unwrap().extend_from_slice(&buf[..n]);
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = s.shutdown().await;
                }));
            }
        })
    }

    /// Closes the listener (connects are refused from now on); live connections stay.
    pub fn stop_listening(&self) {
        self.accept.abort();
    }

    /// Waits until a stopped upstream refuses connects (its task drops the listener a moment
    /// after `stop_listening`).
    pub async fn wait_refusing(&self) {
        let deadline = Instant::now() + BOUND;
        while TcpStream::connect(self.addr).await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "the upstream never stopped listening"
            );
            tokio::task::yield_now().await;
        }
    }

    /// Every connection's bytes, joined.
    pub fn received(&self) -> Vec<u8> {
        let all = self.received.lock().unwrap();
        let mut out = Vec::new();
        for c in all.iter() {
            out.extend_from_slice(&c.lock().unwrap());
            out.push(b'\n');
        }
        out
    }

    /// The numbers of the `m<N>` messages received.
    pub fn messages(&self) -> Vec<u32> {
        String::from_utf8_lossy(&self.received())
            .lines()
            .filter_map(|l| l.strip_prefix('m')?.parse().ok())
            .collect()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.accept.abort();
        for c in self.conns.lock().unwrap().iter() {
            c.abort();
        }
    }
}

/// Settings of one test node's config.
pub struct NodeSpec<'a> {
    pub node_id: &'a str,
    pub locks: &'a Path,
    pub client_port: u16,
    pub upstream: SocketAddr,
    pub check_period_ms: u64,
    /// Health-check the upstream: (interval-ms, rise, fall).
    pub health: Option<(u64, u32, u32)>,
    /// Extra TOML appended at the end (more routes).
    pub extra: String,
    /// Use ZooKeeper instead of the file lock: the coordinator's TOML keys after `type`.
    pub zookeeper: Option<String>,
}

impl NodeSpec<'_> {
    pub fn write(&self, dir: &Path) -> PathBuf {
        let backend = match &self.zookeeper {
            Some(keys) => format!("type = \"zookeeper\"\n{keys}\n"),
            None => format!(
                "type = \"file\"\nlocks-folder = \"{}\"\n",
                self.locks.display()
            ),
        };
        let mut text = format!(
            r#"node-id = "{id}"
shutdown-grace-ms = 2000

[[lock-coordinator]]
name = "clients-lock"
lock-id = "mirror-cluster-clients"
check-period = {period}
{backend}"#,
            id = self.node_id,
            period = self.check_period_ms,
        );
        if let Some((interval, rise, fall)) = self.health {
            text += &format!(
                "\n[lock-coordinator.health-check]\naddress = \"{}\"\ninterval-ms = {interval}\ntimeout-ms = {interval}\nrise = {rise}\nfall = {fall}\n",
                self.upstream
            );
        }
        text += &format!(
            "\n[[route]]\nname = \"clients\"\nlisten = \"127.0.0.1:{}\"\nforward-to = \"{}\"\nlock-coordinator = \"clients-lock\"\n",
            self.client_port, self.upstream
        );
        text += &self.extra;
        let path = dir.join(format!("{}.toml", self.node_id));
        std::fs::write(&path, text).unwrap();
        path
    }
}

pub fn lockgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lockgate"))
}

/// A lockgate child process. Killed when dropped; its log is printed if the test failed.
pub struct Node {
    pub name: String,
    pub child: Child,
    pub pid: i32,
    log: PathBuf,
    notes: mpsc::UnboundedReceiver<String>,
    /// Lines received but not yet consumed by a wait (READY=1 is taken out of order).
    backlog: std::collections::VecDeque<String>,
    /// Every notify line consumed so far.
    pub seen: Vec<String>,
    _reader: JoinHandle<()>,
}

impl Node {
    /// Starts `lockgate run --config FILE` and waits for READY=1.
    pub async fn start(name: &str, config: &Path, dir: &Path) -> Node {
        Node::start_with_env(name, config, dir, &[]).await
    }

    /// As `start`, with extra environment variables.
    pub async fn start_with_env(
        name: &str,
        config: &Path,
        dir: &Path,
        env: &[(&str, &str)],
    ) -> Node {
        Node::start_prepared(name, config, dir, env, |_| None).await
    }

    /// As `start_with_env`; `prepare` may adjust the command before it spawns (e.g. to enter
    /// a network namespace) and return a file to keep open until then.
    pub async fn start_prepared(
        name: &str,
        config: &Path,
        dir: &Path,
        env: &[(&str, &str)],
        prepare: impl FnOnce(&mut Command) -> Option<std::fs::File>,
    ) -> Node {
        let sock_path = dir.join(format!("{name}.notify"));
        let _ = std::fs::remove_file(&sock_path);
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        let (tx, notes) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf).await {
                for line in String::from_utf8_lossy(&buf[..n]).lines() {
                    if tx.send(line.to_owned()).is_err() {
                        return;
                    }
                }
            }
        });
        let log = dir.join(format!("{name}.log"));
        let mut cmd = lockgate();
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .env("NOTIFY_SOCKET", &sock_path)
            .env("RUST_LOG", "lockgate=debug,info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true);
        let keep = prepare(&mut cmd);
        let child = cmd.spawn().unwrap();
        drop(keep);
        let pid = child.id().unwrap() as i32;
        let mut node = Node {
            name: name.to_owned(),
            child,
            pid,
            log,
            notes,
            backlog: Default::default(),
            seen: Vec::new(),
            _reader: reader,
        };
        // Wait for READY=1 without consuming the lines before it: a STATUS line may come
        // first, and tests wait for those too.
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            if let Some(i) = node.backlog.iter().position(|l| l == "READY=1") {
                node.backlog.remove(i);
                node.seen.push("READY=1".to_owned());
                break;
            }
            match tokio::time::timeout_at(deadline, node.notes.recv()).await {
                Ok(Some(line)) => node.backlog.push_back(line),
                _ => panic!("{name}: no READY=1 within {BOUND:?}\n{}", node.log_text()),
            }
        }
        node
    }

    /// Waits for a notify line matching `pred`; returns it.
    pub async fn wait_note(&mut self, pred: impl Fn(&str) -> bool) -> String {
        self.wait_note_within(BOUND, pred).await
    }

    pub async fn wait_note_within(
        &mut self,
        bound: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + bound;
        while let Some(line) = self.backlog.pop_front() {
            self.seen.push(line.clone());
            if pred(&line) {
                return line;
            }
        }
        loop {
            match tokio::time::timeout_at(deadline, self.notes.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Ok(None) => panic!(
                    "{}: notify socket closed; seen {:?}\n{}",
                    self.name,
                    self.seen,
                    self.log_text()
                ),
                Err(_) => panic!(
                    "{}: no matching notify line within {bound:?}; seen {:?}\n{}",
                    self.name,
                    self.seen,
                    self.log_text()
                ),
            }
        }
    }

    /// Collects notify lines for `d`, matching nothing (to observe that nothing happens).
    pub async fn collect_for(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        self.seen.extend(self.backlog.drain(..));
        while let Ok(Some(line)) = tokio::time::timeout_at(deadline, self.notes.recv()).await {
            self.seen.push(line);
        }
    }

    /// Waits (bounded) until this node's log contains `needle`; fails at once if it logs
    /// `never` first.
    pub async fn wait_log(&self, needle: &str, never: Option<&str>) {
        let deadline = tokio::time::Instant::now() + BOUND;
        while !self.log_text().contains(needle) {
            if let Some(never) = never {
                assert!(
                    !self.log_text().contains(never),
                    "{}: logged {never:?} while waiting for {needle:?}\n{}",
                    self.name,
                    self.log_text()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: no log line with {needle:?} within {BOUND:?}\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until this node reports it holds the lock.
    pub async fn wait_active(&mut self) -> String {
        self.wait_note(|l| l.starts_with("STATUS=lock clients-lock: active"))
            .await
    }

    pub async fn wait_standby(&mut self, why: &str) -> String {
        let want = format!("STATUS=lock clients-lock: standby ({why}");
        self.wait_note(move |l| l.starts_with(&want)).await
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid);
    }

    pub async fn wait_exit(&mut self) -> ExitStatus {
        tokio::time::timeout(BOUND, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} did not exit within {BOUND:?}\n{}",
                    self.name,
                    self.log_text()
                )
            })
            .unwrap()
    }

    /// Threads and open descriptors of the process, from /proc.
    pub fn threads_and_fds(&self) -> (usize, usize) {
        let count = |d: String| std::fs::read_dir(d).map(|r| r.count()).unwrap_or(0);
        (
            count(format!("/proc/{}/task", self.pid)),
            count(format!("/proc/{}/fd", self.pid)),
        )
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // On failure, or always with LOCKGATE_TEST_LOGS=1.
        if std::thread::panicking() || std::env::var_os("LOCKGATE_TEST_LOGS").is_some() {
            eprintln!("---- log of {} ----\n{}", self.name, self.log_text());
        }
    }
}

/// One HTTP/1.1 request on a fresh connection; returns the status code and the body.
pub async fn http(port: u16, method: &str, path: &str, headers: &[&str]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for h in headers {
        req += h;
        req += "\r\n";
    }
    req += "Content-Length: 0\r\n\r\n";
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(BOUND, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (code, body)
}

/// The value of one sample in a Prometheus text scrape (`name{labels}` exactly as rendered).
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Connects with a bound; `None` if refused or timed out.
pub async fn try_connect(port: u16, bound: Duration) -> Option<TcpStream> {
    match tokio::time::timeout(bound, TcpStream::connect(("127.0.0.1", port))).await {
        Ok(Ok(s)) => Some(s),
        _ => None,
    }
}

/// Resets a test-side connection so it leaves no TIME_WAIT behind.
pub fn abort(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

/// True if `port` serves: a round trip through the proxy to its echo upstream succeeds.
pub async fn serves(port: u16) -> bool {
    let Some(mut s) = try_connect(port, Duration::from_millis(300)).await else {
        return false;
    };
    let ok = tokio::time::timeout(Duration::from_millis(300), async {
        s.write_all(b"probe\n").await?;
        let mut buf = [0u8; 6];
        s.read_exact(&mut buf).await?;
        Ok::<bool, std::io::Error>(&buf == b"probe\n")
    })
    .await
    .is_ok_and(|r| r.is_ok_and(|ok| ok));
    abort(s);
    ok
}

/// Waits until `port` serves.
pub async fn wait_serving(port: u16) {
    let deadline = Instant::now() + BOUND;
    while !serves(port).await {
        assert!(
            Instant::now() < deadline,
            "port {port} did not serve within {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Probes two client ports in the pattern A, B, A: both A probes and the B probe serving
/// means both served at the moment of the B probe. Never two active must hold at every sample.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    progress: tokio::sync::watch::Receiver<SamplerReport>,
    task: JoinHandle<SamplerReport>,
}

#[derive(Clone, Copy)]
enum Probe {
    Echo,
    Connect,
}

impl Probe {
    async fn serves(self, port: u16) -> bool {
        match self {
            Probe::Echo => serves(port).await,
            Probe::Connect => match try_connect(port, Duration::from_millis(300)).await {
                Some(s) => {
                    abort(s);
                    true
                }
                None => false,
            },
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct SamplerReport {
    pub samples: u32,
    pub a_served: u32,
    pub b_served: u32,
    pub both: u32,
    /// When A last served (its second probe of a sample), and when B first served: one clock,
    /// so "A stopped before B started" is a comparison of two instants of the same sampler.
    pub a_last: Option<std::time::Instant>,
    pub b_first: Option<std::time::Instant>,
}

impl Sampler {
    /// Probes by a round trip through the proxy to its echo upstream.
    pub fn start(a: u16, b: u16) -> Sampler {
        Sampler::with_probe(a, b, Probe::Echo, Duration::from_millis(5))
    }

    /// For ports whose upstream is not an echo server: a port serves when a TCP connect to it
    /// succeeds. Right where only a gated listener can bind the port, as then a successful
    /// connect means exactly "this node serves clients".
    pub fn connect_only(a: u16, b: u16, pacing: Duration) -> Sampler {
        Sampler::with_probe(a, b, Probe::Connect, pacing)
    }

    fn with_probe(a: u16, b: u16, probe: Probe, pacing: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, progress) = tokio::sync::watch::channel(SamplerReport::default());
        let s = stop.clone();
        let task = tokio::spawn(async move {
            // Bounded in count as well as by the test.
            while !s.load(Ordering::Relaxed) && tx.borrow().samples < 100_000 {
                let a1 = probe.serves(a).await;
                let b1 = probe.serves(b).await;
                let b_at = std::time::Instant::now();
                let a2 = probe.serves(a).await;
                let a_at = std::time::Instant::now();
                tx.send_modify(|r| {
                    if a1 || a2 {
                        r.a_last = Some(a_at);
                    }
                    if b1 && r.b_first.is_none() {
                        r.b_first = Some(b_at);
                    }
                    r.samples += 1;
                    r.a_served += u32::from(a1 && a2);
                    r.b_served += u32::from(b1);
                    r.both += u32::from(a1 && b1 && a2);
                });
                tokio::time::sleep(pacing).await;
            }
            tx.borrow().clone()
        });
        Sampler {
            stop,
            progress,
            task,
        }
    }

    /// Waits until the sampler's counts satisfy `pred` (e.g. it has seen A serve).
    pub async fn wait_for(&mut self, pred: impl Fn(&SamplerReport) -> bool) {
        tokio::time::timeout(BOUND, self.progress.wait_for(|r| pred(r)))
            .await
            .expect("sampler condition not met in time")
            .expect("sampler stopped");
    }

    pub async fn finish(self) -> SamplerReport {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// A client with a failover list, like `failover:(tcp://a,tcp://b)`: sends `m<i>` lines and
/// waits for each echo; on any failure moves to the next address and resends the message.
pub struct FailoverClient {
    ports: Vec<u16>,
    current: usize,
    conn: Option<BufReader<TcpStream>>,
    pub reconnects: u32,
}

impl FailoverClient {
    pub fn new(ports: &[u16]) -> FailoverClient {
        FailoverClient {
            ports: ports.to_vec(),
            current: 0,
            conn: None,
            reconnects: 0,
        }
    }

    /// Sends message `i` until it is acknowledged; returns the port that acknowledged it.
    pub async fn send(&mut self, i: u32) -> u16 {
        let deadline = Instant::now() + BOUND;
        loop {
            assert!(
                Instant::now() < deadline,
                "message {i} not acknowledged within {BOUND:?}"
            );
            if self.conn.is_none() {
                let port = self.ports[self.current];
                match try_connect(port, Duration::from_millis(500)).await {
                    Some(s) => self.conn = Some(BufReader::new(s)),
                    None => {
                        self.current = (self.current + 1) % self.ports.len();
                        self.reconnects += 1;
                        // The failover transport's reconnect delay.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
            }
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            let msg = format!("m{i}\n");
            let ok = tokio::time::timeout(Duration::from_secs(2), async {
                conn.get_mut().write_all(msg.as_bytes()).await?;
                let mut line = String::new();
                conn.read_line(&mut line).await?;
                Ok::<bool, std::io::Error>(line == msg)
            })
            .await
            .is_ok_and(|r| r.is_ok_and(|ok| ok));
            if ok {
                return self.ports[self.current];
            }
            self.conn = None;
            self.current = (self.current + 1) % self.ports.len();
        }
    }
}
