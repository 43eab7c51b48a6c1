//! The data path beside a direct connection and HAProxy, interleaved in one run.
//!
//! Run: `cargo bench --bench throughput` (`apt-get install haproxy` first for the HAProxy
//! column; without it those cells say `n/a`). Environment: `LOCKGATE_BENCH_ROUNDS` (default
//! 5), `LOCKGATE_BENCH_SECS` (seconds per throughput and conn/s window, default 2),
//! `LOCKGATE_BENCH_IDLE` (idle connections, default 10000), `LOCKGATE_BENCH_COPY=0` to leave
//! out the `lockgate copy` column (a route with `zero-copy = false` on the same process),
//! `LOCKGATE_BENCH_ONLY=bulk,ping,conn,idle` (a comma list) to run only some rows.
//!
//! Every round runs each measurement against every target in turn (the order rotates from
//! round to round), so the machine's noise lands on all of them alike; the table shows the
//! median over rounds, and each ratio is the median of the per-round ratios, never a ratio of
//! medians. Rows:
//! - bulk throughput, 1 and 8 streams, client -> sink, counted at the sink (Gbit/s);
//! - 64 B ping-pong over one connection: p50, p99, p99.9, and the added µs over direct;
//! - new connections per second: 64 concurrent clients each connect, send 1 B, read the
//!   echo, read the server's FIN, close; and the proxy's CPU µs per such connection;
//! - RSS of the proxy per idle connection: a fresh proxy process, `LOCKGATE_BENCH_IDLE`
//!   connections opened through it (each does one 1 B echo, then idles), RSS minus the RSS
//!   before, divided by the count (fewer connections when RLIMIT_NOFILE cannot be raised to
//!   two descriptors per connection, as in an unprivileged container: the bench says so);
//! - CPU seconds of the proxy process (utime + stime) per GB forwarded in the bulk rows.
//!
//! Writes `target/throughput.json`. Loopback only.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PING_BYTES: usize = 64;
const PING_WARMUP: usize = 2_000;
const PING_COUNT: usize = 20_000;
const CONN_CLIENTS: usize = 64;
const BULK_CHUNK: usize = 256 * 1024;
const WARMUP: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Direct,
    Lockgate,
    LockgateCopy,
    Haproxy,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Lockgate => "lockgate",
            Target::LockgateCopy => "lockgate copy",
            Target::Haproxy => "haproxy",
        }
    }
}

/// The four services the upstream side offers.
#[derive(Clone, Copy)]
enum Service {
    /// Reads and discards, counting bytes.
    Sink = 0,
    /// Echoes 64 B messages, one thread per connection.
    Ping = 1,
    /// Echoes 1 B, then closes.
    Conn = 2,
    /// Echoes until the client closes.
    Idle = 3,
}

/// Addresses of the four services through one target.
type Ports = [SocketAddr; 4];

// ---------------------------------------------------------------- upstream servers

struct Upstreams {
    addrs: Ports,
    sink_bytes: Arc<AtomicU64>,
    sink_open: Arc<AtomicU64>,
    /// The child process that holds the server ends of idle connections.
    idle: Proxy,
}

fn listener() -> TcpListener {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.listen(4096).unwrap();
    s.into()
}

fn start_upstreams(rt: &tokio::runtime::Runtime) -> Upstreams {
    let sink_bytes = Arc::new(AtomicU64::new(0));
    let sink_open = Arc::new(AtomicU64::new(0));

    let sink = listener();
    let sink_addr = sink.local_addr().unwrap();
    let (bytes, open) = (sink_bytes.clone(), sink_open.clone());
    std::thread::spawn(move || {
        for s in sink.incoming() {
            let Ok(mut s) = s else { continue };
            let (bytes, open) = (bytes.clone(), open.clone());
            open.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; BULK_CHUNK];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });

    let ping = listener();
    let ping_addr = ping.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in ping.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut buf = [0u8; PING_BYTES];
                while s.read_exact(&mut buf).is_ok() {
                    if s.write_all(&buf).is_err() {
                        break;
                    }
                }
            });
        }
    });

    let conn = listener();
    conn.set_nonblocking(true).unwrap();
    let conn_addr = conn.local_addr().unwrap();
    rt.spawn(async move {
        let conn = tokio::net::TcpListener::from_std(conn).unwrap();
        loop {
            let Ok((mut s, _)) = conn.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut b = [0u8; 1];
                if s.read_exact(&mut b).await.is_ok() {
                    let _ = s.write_all(&b).await;
                }
                // Closing first: the TIME_WAIT stays here, not on the client's ports.
            });
        }
    });
    // The server ends of the idle connections live in a child process, so that neither this
    // process nor the proxy needs more than two descriptors per idle connection.
    let mut idle = Command::new(std::env::current_exe().unwrap())
        .env("LOCKGATE_BENCH_ROLE", "idle-server")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(idle.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let idle_addr: SocketAddr = line.trim().parse().unwrap();
    let idle_pid = idle.id();
    Upstreams {
        addrs: [sink_addr, ping_addr, conn_addr, idle_addr],
        sink_bytes,
        sink_open,
        idle: Proxy {
            pid: idle_pid,
            child: idle,
        },
    }
}

/// The idle-connection echo server, run as a child process of the bench.
fn idle_server() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let l = listener();
        l.set_nonblocking(true).unwrap();
        println!("{}", l.local_addr().unwrap());
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut b = [0u8; 16];
                while let Ok(n) = s.read(&mut b).await {
                    if n == 0 || s.write_all(&b[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

// ---------------------------------------------------------------- proxies

/// A proxy child process, killed when dropped.
struct Proxy {
    child: Child,
    pid: u32,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    // Ports below the ephemeral range, so no outgoing connection takes one first.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 21_000 + ((std::process::id() as u64 * 31 + n * 7) % 10_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn ports() -> Ports {
    std::array::from_fn(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
}

fn wait_listening(addrs: &[SocketAddr], child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for a in addrs {
        while TcpStream::connect_timeout(a, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{what} exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "{what} did not listen on {a}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn start_lockgate(dir: &Path, up: &Ports, with_copy: bool) -> (Proxy, Ports, Ports) {
    let splice = ports();
    let copy = ports();
    let mut text = String::from("shutdown-grace-ms = 100\n");
    let names = ["sink", "ping", "conn", "idle"];
    for (i, name) in names.iter().enumerate() {
        let _ = write!(
            text,
            "\n[[route]]\nname = \"{name}\"\nlisten = \"{}\"\nforward-to = \"{}\"\n",
            splice[i], up[i]
        );
        if with_copy {
            let _ = write!(
                text,
                "\n[[route]]\nname = \"{name}-copy\"\nlisten = \"{}\"\nforward-to = \"{}\"\nzero-copy = false\n",
                copy[i], up[i]
            );
        }
    }
    let config = dir.join("lockgate.toml");
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lockgate"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("lockgate.log")).unwrap())
        .spawn()
        .unwrap();
    wait_listening(&splice, &mut child, "lockgate");
    let pid = child.id();
    (Proxy { child, pid }, splice, copy)
}

fn haproxy_version() -> Option<String> {
    let out = Command::new("haproxy").arg("-v").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(|l| l.trim().to_owned())
}

fn start_haproxy(dir: &Path, up: &Ports, cores: usize, maxconn: usize) -> (Proxy, Ports) {
    let front = ports();
    let mut text = format!(
        "global\n  nbthread {cores}\n  maxconn {maxconn}\n  maxpipes 200\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n  option splice-request\n  option splice-response\n"
    );
    let names = ["sink", "ping", "conn", "idle"];
    for (i, name) in names.iter().enumerate() {
        let _ = write!(
            text,
            "\nlisten {name}\n  bind {}\n  server s {}\n",
            front[i], up[i]
        );
    }
    let config = dir.join("haproxy.cfg");
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("haproxy.log")).unwrap())
        .spawn()
        .unwrap();
    wait_listening(&front, &mut child, "haproxy");
    let pid = child.id();
    (Proxy { child, pid }, front)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

// ---------------------------------------------------------------- measurements

/// Gbit/s at the sink over the window, and the proxy's CPU seconds in it.
fn bulk(
    to: SocketAddr,
    streams: usize,
    window: Duration,
    up: &Upstreams,
    pid: Option<u32>,
) -> (f64, f64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..streams)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(to).unwrap();
                let buf = vec![0x5au8; BULK_CHUNK];
                while !stop.load(Ordering::Relaxed) {
                    if s.write_all(&buf).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(WARMUP);
    let (b0, c0, t0) = (
        up.sink_bytes.load(Ordering::SeqCst),
        pid.map_or(0.0, cpu_seconds),
        Instant::now(),
    );
    std::thread::sleep(window);
    let (b1, c1, t1) = (
        up.sink_bytes.load(Ordering::SeqCst),
        pid.map_or(0.0, cpu_seconds),
        Instant::now(),
    );
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.sink_open.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let bytes = b1 - b0;
    (
        bytes as f64 * 8.0 / (t1 - t0).as_secs_f64() / 1e9,
        c1 - c0,
        bytes,
    )
}

/// p50, p99, p99.9 of a 64 B round trip, µs.
fn ping(to: SocketAddr) -> [f64; 3] {
    let mut s = TcpStream::connect(to).unwrap();
    s.set_nodelay(true).unwrap();
    let mut msg = [7u8; PING_BYTES];
    let mut took = Vec::with_capacity(PING_COUNT);
    for i in 0..PING_WARMUP + PING_COUNT {
        let t = Instant::now();
        s.write_all(&msg).unwrap();
        s.read_exact(&mut msg).unwrap();
        if i >= PING_WARMUP {
            took.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    took.sort_by(f64::total_cmp);
    [
        percentile(&took, 0.50),
        percentile(&took, 0.99),
        percentile(&took, 0.999),
    ]
}

/// Completed connect / 1 B echo / close cycles per second, the proxy's CPU µs per cycle, and
/// the failures seen.
fn conns_per_sec(
    rt: &tokio::runtime::Runtime,
    to: SocketAddr,
    window: Duration,
    pid: Option<u32>,
) -> (f64, f64, u64) {
    rt.block_on(async move {
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..CONN_CLIENTS)
            .map(|_| {
                let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let ok = async {
                            let mut s = tokio::net::TcpStream::connect(to).await?;
                            s.set_nodelay(true)?;
                            s.write_all(b"x").await?;
                            let mut b = [0u8; 2];
                            s.read_exact(&mut b[..1]).await?;
                            // The server's FIN, forwarded.
                            let n = s.read(&mut b).await?;
                            Ok::<bool, std::io::Error>(n == 0)
                        }
                        .await;
                        match ok {
                            Ok(true) => done.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        tokio::time::sleep(WARMUP).await;
        let (d0, f0, c0, t0) = (
            done.load(Ordering::SeqCst),
            failed.load(Ordering::SeqCst),
            pid.map_or(f64::NAN, cpu_seconds),
            Instant::now(),
        );
        tokio::time::sleep(window).await;
        let (d1, f1, c1, t1) = (
            done.load(Ordering::SeqCst),
            failed.load(Ordering::SeqCst),
            pid.map_or(f64::NAN, cpu_seconds),
            Instant::now(),
        );
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            let _ = t.await;
        }
        let n = (d1 - d0) as f64;
        (n / (t1 - t0).as_secs_f64(), (c1 - c0) * 1e6 / n, f1 - f0)
    })
}

/// Bytes of proxy RSS per idle connection (each has done one 1 B echo).
fn idle_rss(
    rt: &tokio::runtime::Runtime,
    to: SocketAddr,
    count: usize,
    pid: u32,
    up: &Upstreams,
) -> f64 {
    let fds_before = fd_count(pid);
    let server_fds_before = fd_count(up.idle.pid);
    let before = rss_bytes(pid);
    let conns = rt.block_on(async move {
        let next = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let next = next.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    while next.fetch_add(1, Ordering::SeqCst) < count as u64 {
                        let mut s = tokio::net::TcpStream::connect(to).await.unwrap();
                        s.write_all(b"i").await.unwrap();
                        let mut b = [0u8; 1];
                        s.read_exact(&mut b).await.unwrap();
                        mine.push(s);
                    }
                    mine
                })
            })
            .collect();
        let mut all = Vec::with_capacity(count);
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    assert_eq!(conns.len(), count);
    // Let the proxy settle (buffers given back after the echo).
    std::thread::sleep(Duration::from_millis(200));
    let after = rss_bytes(pid);
    rt.block_on(async move {
        for s in conns {
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            drop(s);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while (fd_count(up.idle.pid) > server_fds_before || fd_count(pid) > fds_before + 16)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    (after as f64 - before as f64) / count as f64
}

// ---------------------------------------------------------------- statistics and report

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The rows of the table; each holds one value per round per target (NaN where it does not
/// apply).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Row {
    Bulk1,
    Bulk8,
    P50,
    P99,
    P999,
    Added50,
    Added99,
    Added999,
    ConnsPerSec,
    CpuPerConn,
    IdleRss,
    CpuPerGb,
}

const ROWS: [Row; 12] = [
    Row::Bulk1,
    Row::Bulk8,
    Row::P50,
    Row::P99,
    Row::P999,
    Row::Added50,
    Row::Added99,
    Row::Added999,
    Row::ConnsPerSec,
    Row::CpuPerConn,
    Row::IdleRss,
    Row::CpuPerGb,
];

impl Row {
    fn label(self) -> &'static str {
        match self {
            Row::Bulk1 => "bulk 1 stream, Gbit/s",
            Row::Bulk8 => "bulk 8 streams, Gbit/s",
            Row::P50 => "64 B ping-pong p50, us",
            Row::P99 => "64 B ping-pong p99, us",
            Row::P999 => "64 B ping-pong p99.9, us",
            Row::Added50 => "added p50 vs direct, us",
            Row::Added99 => "added p99 vs direct, us",
            Row::Added999 => "added p99.9 vs direct, us",
            Row::ConnsPerSec => "new connections/s (64 clients)",
            Row::CpuPerConn => "proxy CPU us per connection",
            Row::IdleRss => "RSS per idle connection, KiB",
            Row::CpuPerGb => "proxy CPU s per GB",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Row::Bulk1 => "bulk_1_stream_gbit_s",
            Row::Bulk8 => "bulk_8_streams_gbit_s",
            Row::P50 => "ping_p50_us",
            Row::P99 => "ping_p99_us",
            Row::P999 => "ping_p999_us",
            Row::Added50 => "added_p50_us",
            Row::Added99 => "added_p99_us",
            Row::Added999 => "added_p999_us",
            Row::ConnsPerSec => "connections_per_s",
            Row::CpuPerConn => "cpu_us_per_connection",
            Row::IdleRss => "rss_per_idle_connection_kib",
            Row::CpuPerGb => "cpu_s_per_gb",
        }
    }

    /// Higher is better (else lower is).
    fn higher_is_better(self) -> bool {
        matches!(self, Row::Bulk1 | Row::Bulk8 | Row::ConnsPerSec)
    }
}

struct Results {
    targets: Vec<Target>,
    /// values[row][target] = one value per round.
    values: Vec<Vec<Vec<f64>>>,
}

impl Results {
    fn push(&mut self, row: Row, t: Target, v: f64) {
        let ti = self.targets.iter().position(|x| *x == t).unwrap();
        self.values[row as usize][ti].push(v);
    }

    fn get(&self, row: Row, t: Target) -> &[f64] {
        match self.targets.iter().position(|x| *x == t) {
            Some(ti) => &self.values[row as usize][ti],
            None => &[],
        }
    }

    fn median(&self, row: Row, t: Target) -> Option<f64> {
        median(self.get(row, t))
    }

    /// Median over rounds of a/b, round by round.
    fn ratio(&self, row: Row, a: Target, b: Target) -> Option<f64> {
        let (x, y) = (self.get(row, a), self.get(row, b));
        let r: Vec<f64> = x.iter().zip(y).map(|(x, y)| x / y).collect();
        median(&r)
    }
}

fn cell(v: Option<f64>) -> String {
    match v {
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
        None => "n/a".to_owned(),
    }
}

fn json_num(v: Option<f64>) -> String {
    v.map_or("null".to_owned(), |v| format!("{v:.4}"))
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn raise_nofile(want: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    if cur.current.is_some_and(|c| c >= want) {
        return;
    }
    let max = cur.maximum.map(|m| m.max(want));
    if setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want),
            maximum: max,
        },
    )
    .is_err()
    {
        // Not privileged to raise the hard limit: take what it allows.
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: cur.maximum,
                maximum: cur.maximum,
            },
        );
    }
}

fn main() {
    if std::env::var("LOCKGATE_BENCH_ROLE").as_deref() == Ok("idle-server") {
        return idle_server();
    }
    let rounds = env_num("LOCKGATE_BENCH_ROUNDS", 5) as usize;
    let window = Duration::from_secs_f64(env_num("LOCKGATE_BENCH_SECS", 2) as f64);
    let asked_idle = env_num("LOCKGATE_BENCH_IDLE", 10_000);
    let with_copy = env_num("LOCKGATE_BENCH_COPY", 1) != 0;
    let only = std::env::var("LOCKGATE_BENCH_ONLY").unwrap_or_default();
    let want = |group: &str| only.is_empty() || only.split(',').any(|g| g.trim() == group);
    // Client and server ends of every idle connection live here, and the proxies inherit it.
    // The proxies inherit the limit; each idle connection costs a proxy two descriptors.
    raise_nofile(asked_idle * 2 + 1024);
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let idle = match nofile {
        Some(n) if n < asked_idle * 2 + 600 => {
            let fit = (n.saturating_sub(600) / 2) as usize;
            eprintln!(
                "RLIMIT_NOFILE is {n} and cannot be raised here: {fit} idle connections instead of {asked_idle}"
            );
            fit
        }
        _ => asked_idle as usize,
    };

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let haproxy = haproxy_version();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let up = start_upstreams(&rt);
    let dir = tempfile::tempdir().unwrap();
    let (lg_proc, lg_ports, lg_copy_ports) = start_lockgate(dir.path(), &up.addrs, with_copy);
    let hap = haproxy
        .as_ref()
        .map(|_| start_haproxy(dir.path(), &up.addrs, cores, idle + 50));

    let mut targets = vec![Target::Direct, Target::Lockgate];
    if with_copy {
        targets.push(Target::LockgateCopy);
    }
    if hap.is_some() {
        targets.push(Target::Haproxy);
    }
    let addr = |t: Target, s: Service| -> SocketAddr {
        match t {
            Target::Direct => up.addrs[s as usize],
            Target::Lockgate => lg_ports[s as usize],
            Target::LockgateCopy => lg_copy_ports[s as usize],
            Target::Haproxy => hap.as_ref().map(|h| h.1[s as usize]).unwrap(),
        }
    };
    let pid = |t: Target| -> Option<u32> {
        match t {
            Target::Direct => None,
            Target::Lockgate | Target::LockgateCopy => Some(lg_proc.pid),
            Target::Haproxy => hap.as_ref().map(|h| h.0.pid),
        }
    };

    let machine = format!("{cores} cores, kernel {kernel}");
    println!(
        "lockgate data path vs direct and {}: {rounds} rounds, {}s windows, {idle} idle connections ({machine}, RLIMIT_NOFILE {})",
        haproxy
            .as_deref()
            .unwrap_or("HAProxy (absent: install `haproxy` for its column)"),
        window.as_secs_f64(),
        nofile.map_or("unlimited".to_owned(), |n| n.to_string()),
    );

    let mut res = Results {
        targets: targets.clone(),
        values: vec![vec![Vec::new(); targets.len()]; ROWS.len()],
    };
    for round in 0..rounds {
        let mut order = targets.clone();
        order.rotate_left(round % targets.len());
        eprintln!("round {}/{rounds}: order {:?}", round + 1, order);
        let mut cpu: Vec<(f64, u64)> = vec![(0.0, 0); targets.len()];
        let bulks = if want("bulk") {
            &[(Row::Bulk1, 1), (Row::Bulk8, 8)][..]
        } else {
            &[]
        };
        for &(row, streams) in bulks {
            for &t in &order {
                let (gbit, c, bytes) = bulk(addr(t, Service::Sink), streams, window, &up, pid(t));
                res.push(row, t, gbit);
                let i = targets.iter().position(|x| *x == t).unwrap();
                cpu[i].0 += c;
                cpu[i].1 += bytes;
            }
        }
        for (i, &t) in targets.iter().enumerate() {
            if !want("bulk") {
                break;
            }
            let v = if pid(t).is_some() {
                cpu[i].0 / (cpu[i].1 as f64 / 1e9)
            } else {
                f64::NAN
            };
            res.push(Row::CpuPerGb, t, v);
        }
        let mut p = vec![[0.0; 3]; targets.len()];
        for &t in &order {
            if !want("ping") {
                break;
            }
            let i = targets.iter().position(|x| *x == t).unwrap();
            p[i] = ping(addr(t, Service::Ping));
        }
        for (i, &t) in targets.iter().enumerate() {
            if !want("ping") {
                break;
            }
            res.push(Row::P50, t, p[i][0]);
            res.push(Row::P99, t, p[i][1]);
            res.push(Row::P999, t, p[i][2]);
            res.push(Row::Added50, t, p[i][0] - p[0][0]);
            res.push(Row::Added99, t, p[i][1] - p[0][1]);
            res.push(Row::Added999, t, p[i][2] - p[0][2]);
        }
        for &t in &order {
            if !want("conn") {
                break;
            }
            let (cps, cpu, failed) = conns_per_sec(&rt, addr(t, Service::Conn), window, pid(t));
            if failed > 0 {
                eprintln!("  {}: {failed} connection cycles failed", t.name());
            }
            res.push(Row::ConnsPerSec, t, cps);
            res.push(Row::CpuPerConn, t, cpu);
        }
        for &t in &order {
            if !want("idle") {
                break;
            }
            // A fresh proxy each time: "idle RSS" is that of a proxy that has carried nothing
            // yet, not one whose allocator kept what earlier rows used.
            let v = match t {
                Target::Direct => f64::NAN,
                Target::Lockgate | Target::LockgateCopy => {
                    let (p, splice, copy) = start_lockgate(dir.path(), &up.addrs, with_copy);
                    let to = if t == Target::Lockgate { splice } else { copy };
                    idle_rss(&rt, to[Service::Idle as usize], idle, p.pid, &up) / 1024.0
                }
                Target::Haproxy => {
                    let (p, front) = start_haproxy(dir.path(), &up.addrs, cores, idle + 50);
                    idle_rss(&rt, front[Service::Idle as usize], idle, p.pid, &up) / 1024.0
                }
            };
            res.push(Row::IdleRss, t, v);
        }
    }

    // The table.
    let lg = Target::Lockgate;
    let hp = Target::Haproxy;
    let mut head = format!("\n{:<32}", "median of rounds");
    for t in &targets {
        let _ = write!(head, " {:>13}", t.name());
    }
    let _ = write!(
        head,
        " {:>10} {:>10} {:>10}",
        "lg/direct", "hap/direct", "lg/hap"
    );
    println!("{head}");
    let mut json = format!(
        "{{\n  \"machine\": {{\"cores\": {cores}, \"kernel\": \"{kernel}\"}},\n  \"haproxy\": {},\n  \"rounds\": {rounds},\n  \"window_s\": {},\n  \"idle_connections\": {idle},\n  \"rows\": {{\n",
        haproxy
            .as_ref()
            .map_or("null".to_owned(), |v| format!("\"{v}\"")),
        window.as_secs_f64()
    );
    for (n, &row) in ROWS.iter().enumerate() {
        let mut line = format!("{:<32}", row.label());
        for &t in &targets {
            let _ = write!(line, " {:>13}", cell(res.median(row, t)));
        }
        let added = matches!(row, Row::Added50 | Row::Added99 | Row::Added999);
        let vs_direct = |t| {
            if added {
                None
            } else {
                res.ratio(row, t, Target::Direct)
            }
        };
        let (lgd, hpd, lgh) = (vs_direct(lg), vs_direct(hp), res.ratio(row, lg, hp));
        let _ = write!(
            line,
            " {:>10} {:>10} {:>10}",
            cell(lgd),
            cell(hpd),
            cell(lgh)
        );
        println!("{line}");
        let _ = write!(json, "    \"{}\": {{", row.key());
        for (i, &t) in targets.iter().enumerate() {
            let _ = write!(
                json,
                "{}\"{}\": {}",
                if i > 0 { ", " } else { "" },
                t.name().replace(' ', "_"),
                json_num(res.median(row, t))
            );
        }
        let _ = write!(
            json,
            ", \"lockgate_over_direct\": {}, \"haproxy_over_direct\": {}, \"lockgate_over_haproxy\": {}, \"higher_is_better\": {}, \"rounds\": {{",
            json_num(lgd),
            json_num(hpd),
            json_num(lgh),
            row.higher_is_better()
        );
        for (i, &t) in targets.iter().enumerate() {
            let vals: Vec<String> = res
                .get(row, t)
                .iter()
                .map(|v| json_num(v.is_finite().then_some(*v)))
                .collect();
            let _ = write!(
                json,
                "{}\"{}\": [{}]",
                if i > 0 { ", " } else { "" },
                t.name().replace(' ', "_"),
                vals.join(", ")
            );
        }
        let _ = writeln!(json, "}}}}{}", if n + 1 < ROWS.len() { "," } else { "" });
    }
    json.push_str("  }\n}\n");
    if haproxy.is_none() {
        println!(
            "\nHAProxy is not installed: its column and the lg/hap ratios are n/a (apt-get install haproxy)."
        );
    }
    println!(
        "ratios are medians of per-round ratios; for latency and CPU lower is better; added-latency lg/hap is lockgate's added µs over HAProxy's."
    );
    let out: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/throughput.json");
    match std::fs::write(&out, json) {
        Ok(()) => println!("written: {}", out.display()),
        Err(e) => eprintln!("cannot write {}: {e}", out.display()),
    }
    drop(lg_proc);
    drop(hap);
}
