//! Real parts for the integration tests: lockgate child processes that report READY/STATUS on a
//! notify socket the test owns (every line timestamped on arrival), loopback echo upstreams that
//! record every byte with its arrival time, a failover client, a `Pair` (or three) of nodes on
//! one lock, and the never-two assertion: a sampler that probes both client ports, checked
//! together with the nodes' own timestamped reports.
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
pub mod never_two;
pub mod pair;
pub mod skip;
pub mod solo;
pub mod toml_text;
pub mod zk;

// The harness's main names at `common::`; a test target uses some of them.
#[allow(unused_imports)]
pub use commands::{cli, cli_ok};
#[allow(unused_imports)]
pub use config_file::{NodeSpec, zk_keys};
#[allow(unused_imports)]
pub use never_two::{SIGNAL_SENT, Sampler, SamplerReport, assert_never_two};
#[allow(unused_imports)]
pub use pair::{Pair, PairBuilder};

/// The bound on every wait in these tests: generous, only there so a broken build fails
/// instead of hanging.
pub const BOUND: Duration = Duration::from_secs(30);

/// The pause between two polls of a condition that has no event to wait on.
pub const POLL: Duration = Duration::from_millis(10);

/// Polls `f` until it returns `Some`, failing after `bound` with "`what` within …".
pub async fn eventually<T>(
    bound: Duration,
    what: &str,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not: {what} within {bound:?}");
        tokio::time::sleep(POLL).await;
    }
}

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

/// One connection's chunks, each timestamped on arrival (one clock: this process's).
type ConnLog = Arc<Mutex<Vec<(Instant, Vec<u8>)>>>;

/// An echo "broker" on loopback that records every chunk it receives, per connection.
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

    /// Listens again on the same address after `stop_listening` or `kill`.
    pub async fn resume_listening(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.accept = Self::serve(listener, self.received.clone(), self.conns.clone());
    }

    fn serve(
        listener: TcpListener,
        received: Arc<Mutex<Vec<ConnLog>>>,
        conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let log = ConnLog::default();
                received.lock().unwrap().push(log.clone());
                conns.lock().unwrap().push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                log.lock()
                                    .unwrap()
                                    .push((Instant::now(), buf[..n].to_vec()));
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

    /// The broker dies: its listener closes and every connection drops.
    pub fn kill(&self) {
        self.accept.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Waits until a stopped upstream refuses connects (its task drops the listener a moment
    /// after `stop_listening`).
    pub async fn wait_refusing(&self) {
        eventually(BOUND, "the upstream stops listening", async || {
            TcpStream::connect(self.addr).await.is_err().then_some(())
        })
        .await;
    }

    /// Every connection's bytes, joined.
    pub fn received(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for c in self.received.lock().unwrap().iter() {
            for (_, chunk) in c.lock().unwrap().iter() {
                out.extend_from_slice(chunk);
            }
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

    /// (first chunk, last chunk, lines) of every connection that carried bytes.
    pub fn intervals(&self) -> Vec<(Instant, Instant, Vec<String>)> {
        let all = self.received.lock().unwrap();
        all.iter()
            .filter_map(|c| {
                let c = c.lock().unwrap();
                let (first, last) = (c.first()?.0, c.last()?.0);
                let bytes: Vec<u8> = c.iter().flat_map(|(_, b)| b.iter().copied()).collect();
                let lines = String::from_utf8_lossy(&bytes)
                    .lines()
                    .map(str::to_owned)
                    .collect();
                Some((first, last, lines))
            })
            .collect()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn lockgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lockgate"))
}

/// A notify line, or a signal the test sent, and when: one clock for every node of a test, so
/// "A stopped being active before B became active" compares instants, not arrival order.
#[derive(Clone, Debug)]
pub struct Note {
    pub at: Instant,
    pub line: String,
}

/// A lockgate child process. Killed when dropped; its log is printed if the test failed.
pub struct Node {
    pub name: String,
    pub child: Child,
    pub pid: i32,
    log: PathBuf,
    notes: mpsc::UnboundedReceiver<Note>,
    /// Lines received but not yet consumed by a wait (READY=1 is taken out of order).
    backlog: std::collections::VecDeque<Note>,
    /// Every notify line consumed so far.
    pub seen: Vec<String>,
    /// Every notify line received (consumed or not) and every signal sent, timestamped.
    history: Arc<Mutex<Vec<Note>>>,
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
        let history: Arc<Mutex<Vec<Note>>> = Arc::default();
        let record = history.clone();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf).await {
                let at = Instant::now();
                for line in String::from_utf8_lossy(&buf[..n]).lines() {
                    let note = Note {
                        at,
                        line: line.to_owned(),
                    };
                    record.lock().unwrap().push(note.clone());
                    if tx.send(note).is_err() {
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
            history,
            _reader: reader,
        };
        // Wait for READY=1 without consuming the lines before it: a STATUS line may come
        // first, and tests wait for those too.
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            if let Some(i) = node.backlog.iter().position(|n| n.line == "READY=1") {
                node.backlog.remove(i);
                node.seen.push("READY=1".to_owned());
                break;
            }
            match tokio::time::timeout_at(deadline, node.notes.recv()).await {
                Ok(Some(note)) => node.backlog.push_back(note),
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
        self.wait_timed_note(bound, pred).await.line
    }

    /// As `wait_note_within`, with the instant the line arrived.
    pub async fn wait_timed_note(&mut self, bound: Duration, pred: impl Fn(&str) -> bool) -> Note {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let next = match self.backlog.pop_front() {
                Some(note) => note,
                None => match tokio::time::timeout_at(deadline, self.notes.recv()).await {
                    Ok(Some(note)) => note,
                    closed_or_late => {
                        let why = match closed_or_late {
                            Ok(_) => "the notify socket closed",
                            Err(_) => "no matching notify line",
                        };
                        let (name, log) = (&self.name, self.log_text());
                        panic!(
                            "{name}: {why} within {bound:?}; seen {:?}\n{log}",
                            self.seen
                        )
                    }
                },
            };
            self.seen.push(next.line.clone());
            if pred(&next.line) {
                return next;
            }
        }
    }

    /// Collects notify lines for `d`, matching nothing (to observe that nothing happens).
    pub async fn collect_for(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        self.seen.extend(self.backlog.drain(..).map(|n| n.line));
        while let Ok(Some(note)) = tokio::time::timeout_at(deadline, self.notes.recv()).await {
            self.seen.push(note.line);
        }
    }

    /// Every notify line received so far and every signal sent, in order, timestamped.
    pub fn history(&self) -> Vec<Note> {
        self.history.lock().unwrap().clone()
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
            tokio::time::sleep(POLL).await;
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

    /// Sends `sig` (a `libc::SIG*` number) to the process; recorded in its history.
    pub fn signal(&self, sig: i32) {
        let pid = rustix::process::Pid::from_raw(self.pid).expect("a child's pid is positive");
        let signal = rustix::process::Signal::from_named_raw(sig).expect("a named signal");
        self.history.lock().unwrap().push(Note {
            at: Instant::now(),
            line: format!("{SIGNAL_SENT}{sig}"),
        });
        rustix::process::kill_process(pid, signal)
            .unwrap_or_else(|e| panic!("kill({}, {sig}) failed: {e}", self.pid));
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
    http_exchange(&mut s, &req).await
}

/// Writes `request` on `s` and reads the response to its end: its status code (0 if it has
/// none) and its body.
pub async fn http_exchange(s: &mut TcpStream, request: &str) -> (u16, String) {
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(BOUND, s.read_to_end(&mut out)).await;
    read.expect("no response within BOUND").unwrap();
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
    wait_any_serving(&[port], BOUND).await;
}

/// The first of `ports` that serves now, if any.
pub async fn serving(ports: &[u16]) -> Option<usize> {
    for (i, p) in ports.iter().enumerate() {
        if serves(*p).await {
            return Some(i);
        }
    }
    None
}

/// Waits until one of `ports` serves; returns which.
pub async fn wait_any_serving(ports: &[u16], bound: Duration) -> usize {
    eventually(bound, &format!("one of {ports:?} serves"), async || {
        serving(ports).await
    })
    .await
}

/// A connection through `port` that has carried one echoed message: the proxy forwards it.
pub async fn live_connection(port: u16) -> TcpStream {
    let mut live = try_connect(port, BOUND).await.unwrap();
    live.write_all(b"m1\n").await.unwrap();
    let mut buf = [0u8; 3];
    live.read_exact(&mut buf).await.unwrap();
    live
}

/// The node behind `port` fenced: `live` (a connection through it) is reset, and the port
/// refuses new connects.
pub async fn assert_fenced(live: &mut TcpStream, port: u16) {
    let err = live
        .read(&mut [0u8; 8])
        .await
        .expect_err("the live connection must be reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert!(
        try_connect(port, Duration::from_secs(1)).await.is_none(),
        "port {port} still listens"
    );
}

/// A client with a failover list, like `failover:(tcp://a,tcp://b)`: sends a line and waits for
/// its echo; on any failure moves to the next address and resends.
pub struct FailoverClient {
    ports: Vec<u16>,
    current: usize,
    conn: Option<BufReader<TcpStream>>,
    connect_timeout: Duration,
    reply_timeout: Duration,
    pub reconnects: u32,
}

impl FailoverClient {
    pub fn new(ports: &[u16]) -> FailoverClient {
        FailoverClient {
            ports: ports.to_vec(),
            current: 0,
            conn: None,
            connect_timeout: Duration::from_millis(500),
            reply_timeout: Duration::from_secs(2),
            reconnects: 0,
        }
    }

    /// How long a connect and an echo may take before the client moves on.
    pub fn timeouts(mut self, connect: Duration, reply: Duration) -> FailoverClient {
        self.connect_timeout = connect;
        self.reply_timeout = reply;
        self
    }

    /// Sends `m<i>` until it is acknowledged; returns the port that acknowledged it.
    pub async fn send(&mut self, i: u32) -> u16 {
        let msg = format!("m{i}");
        eventually(BOUND, &format!("message {i} acknowledged"), async || {
            self.try_send(&msg).await
        })
        .await
    }

    /// One attempt: connects if it must, sends `msg` and a newline, waits for the echo. The
    /// port that acknowledged it, or `None` having moved to the next address.
    pub async fn try_send(&mut self, msg: &str) -> Option<u16> {
        let port = self.ports[self.current];
        let conn = match self.conn.as_mut() {
            Some(conn) => conn,
            None => match try_connect(port, self.connect_timeout).await {
                Some(s) => self.conn.insert(BufReader::new(s)),
                None => {
                    self.next();
                    self.reconnects += 1;
                    // The failover transport's reconnect delay.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    return None;
                }
            },
        };
        let msg = format!("{msg}\n");
        let ok = tokio::time::timeout(self.reply_timeout, async {
            conn.get_mut().write_all(msg.as_bytes()).await?;
            let mut line = String::new();
            conn.read_line(&mut line).await?;
            Ok::<bool, std::io::Error>(line == msg)
        })
        .await
        .is_ok_and(|r| r.is_ok_and(|ok| ok));
        if ok {
            return Some(port);
        }
        if let Some(c) = self.conn.take() {
            abort(c.into_inner());
        }
        self.next();
        None
    }

    fn next(&mut self) {
        self.current = (self.current + 1) % self.ports.len();
    }
}
