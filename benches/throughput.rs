//! The data path beside a direct connection, HAProxy and nginx, interleaved in one run.
//!
//! Run: `cargo bench --bench throughput` (`apt-get install iperf3 haproxy nginx
//! libnginx-mod-stream` first; without HAProxy or nginx their cells say `n/a`, without iperf3
//! the bulk rows use the bench's own client). Environment: `LOCKGATE_BENCH_ROUNDS` (default
//! 5), `LOCKGATE_BENCH_SECS` (seconds per throughput and conn/s window, default 2),
//! `LOCKGATE_BENCH_IDLE` (the larger idle count, default 9000; the smaller is 1000),
//! `LOCKGATE_BENCH_COPY=0` to leave out the `lockgate copy` column (a route with
//! `zero-copy = false` on the same process), `LOCKGATE_BENCH_ONLY=bulk,ping,conn,idle,inhouse`
//! (a comma list) to run only some rows (`inhouse`, off by default: the bulk rows again with the
//! bench's own in-process client and sink, which is what the bench used before iperf3 and
//! why its figures differed from an independent harness).
//!
//! Every round runs each measurement against every target in turn (the order rotates from
//! round to round), so the machine's noise lands on all of them alike; the table shows the
//! median over rounds, and each ratio is the median of the per-round ratios, never a ratio of
//! medians. Rows:
//! - bulk throughput, 1 and 8 streams: `iperf3 -c -t SECS -P N` (128 KiB writes) through the
//!   target to an `iperf3 -s`, both separate processes, received bits/s (Gbit/s);
//! - 64 B ping-pong over one connection: p50, p99, p99.9, and the added µs over direct;
//! - new connections per second with 1, 64 and 512 concurrent clients: each connects, sends
//!   1 B, reads the echo, reads the server's FIN, closes (the server is a child process of its
//!   own, so clients and server do not share a runtime); and the proxy's CPU µs per such
//!   connection at 64 clients;
//! - RSS of the proxy per idle connection at 1,000 and `LOCKGATE_BENCH_IDLE` connections: a
//!   fresh proxy process (all of its processes, for nginx), that many connections opened
//!   through it (each does one 1 B echo, then idles), RSS minus the RSS
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
const CONN_CLIENTS: [usize; 3] = [1, 64, 512];
const IDLE_SMALL: usize = 1000;
const BULK_CHUNK: usize = 256 * 1024;
const WARMUP: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Direct,
    Lockgate,
    LockgateCopy,
    Haproxy,
    Nginx,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Lockgate => "lockgate",
            Target::LockgateCopy => "lockgate copy",
            Target::Haproxy => "haproxy",
            Target::Nginx => "nginx",
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
    /// An `iperf3 -s` (or the sink again, without iperf3).
    Iperf = 4,
}

const SERVICES: [&str; 5] = ["sink", "ping", "conn", "idle", "iperf"];

/// Addresses of the five services through one target.
type Ports = [SocketAddr; 5];

// ---------------------------------------------------------------- upstream servers

struct Upstreams {
    addrs: Ports,
    sink_bytes: Arc<AtomicU64>,
    sink_open: Arc<AtomicU64>,
    /// The child process that holds the server ends of idle connections.
    idle: Proxy,
    _conn: Proxy,
    _iperf: Option<Proxy>,
}

fn listener() -> TcpListener {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.listen(4096).unwrap();
    s.into()
}

fn start_upstreams() -> Upstreams {
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

    let (conn, conn_addr) = child_server("conn-server");
    // The server ends of the idle connections live in a child process, so that neither this
    // process nor the proxy needs more than two descriptors per idle connection.
    let (idle, idle_addr) = child_server("idle-server");
    let iperf = iperf3_version().map(|_| start_iperf3_server());
    let iperf_addr = iperf.as_ref().map_or(sink_addr, |i| i.1);
    Upstreams {
        addrs: [sink_addr, ping_addr, conn_addr, idle_addr, iperf_addr],
        sink_bytes,
        sink_open,
        idle,
        _conn: conn,
        _iperf: iperf.map(|i| i.0),
    }
}

/// This bench run again as a server of the given role; returns it and its address.
fn child_server(role: &str) -> (Proxy, SocketAddr) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("LOCKGATE_BENCH_ROLE", role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr: SocketAddr = line.trim().parse().unwrap();
    let pid = child.id();
    (Proxy { child, pid }, addr)
}

/// The first line a tool prints for `arg` (its version) on stdout, or on stderr with
/// `on_stderr`; `None` if it does not run.
fn first_line(tool: &str, arg: &str, on_stderr: bool) -> Option<String> {
    let out = Command::new(tool).arg(arg).output().ok()?;
    let text = String::from_utf8_lossy(if on_stderr { &out.stderr } else { &out.stdout });
    text.lines().next().map(|l| l.trim().to_owned())
}

fn iperf3_version() -> Option<String> {
    first_line("iperf3", "--version", false)
}

fn start_iperf3_server() -> (Proxy, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new("iperf3");
    cmd.args(["-s", "-B", "127.0.0.1", "-p"])
        .arg(addr.port().to_string());
    let proxy = Proxy::spawn(&mut cmd, Stdio::null(), &[addr], "iperf3 -s");
    (proxy, addr)
}

/// Serves `listener()` in this process on a runtime of its own (a child process of the bench,
/// which prints its address first), with `handle` for each connection, on a task of its own.
fn serve_child<F, Fut>(handle: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
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
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(handle(s));
        }
    });
}

/// The connection-rate server, run as a child process of the bench: 1 B echo, then close.
fn conn_server() {
    serve_child(|mut s| async move {
        let mut b = [0u8; 1];
        if s.read_exact(&mut b).await.is_ok() {
            let _ = s.write_all(&b).await;
        }
        // Closing first: the TIME_WAIT stays here, not on the client's ports.
    });
}

/// The idle-connection echo server, run as a child process of the bench.
fn idle_server() {
    serve_child(|mut s| async move {
        let mut b = [0u8; 16];
        while let Ok(n) = s.read(&mut b).await {
            if n == 0 || s.write_all(&b[..n]).await.is_err() {
                break;
            }
        }
    });
}

// ---------------------------------------------------------------- proxies

/// A proxy child process in a process group of its own, the whole group (nginx's workers too)
/// killed when dropped.
struct Proxy {
    child: Child,
    pid: u32,
}

impl Proxy {
    /// Spawns `cmd` (stdin and stdout to /dev/null, stderr to `stderr`) and waits until it
    /// listens on every one of `addrs`.
    fn spawn(
        cmd: &mut Command,
        stderr: impl Into<Stdio>,
        addrs: &[SocketAddr],
        what: &str,
    ) -> Proxy {
        use std::os::unix::process::CommandExt as _;
        let mut child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        wait_listening(addrs, &mut child, what);
        let pid = child.id();
        Proxy { child, pid }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Killing only the child left nginx's workers running (reparented to init): the
        // proxies have a process group of their own, the bench's child servers do not.
        let group = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
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
    for (i, name) in SERVICES.iter().enumerate() {
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
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lockgate"));
    cmd.args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .env_remove("NOTIFY_SOCKET");
    let log = std::fs::File::create(dir.join("lockgate.log")).unwrap();
    (
        Proxy::spawn(&mut cmd, log, &splice, "lockgate"),
        splice,
        copy,
    )
}

fn haproxy_version() -> Option<String> {
    first_line("haproxy", "-v", false)
}

fn start_haproxy(dir: &Path, up: &Ports, cores: usize, maxconn: usize) -> (Proxy, Ports) {
    let front = ports();
    let mut text = format!(
        "global\n  nbthread {cores}\n  maxconn {maxconn}\n  maxpipes 200\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n  option splice-request\n  option splice-response\n"
    );
    for (i, name) in SERVICES.iter().enumerate() {
        let _ = write!(
            text,
            "\nlisten {name}\n  bind {}\n  server s {}\n",
            front[i], up[i]
        );
    }
    let config = dir.join("haproxy.cfg");
    std::fs::write(&config, text).unwrap();
    let mut cmd = Command::new("haproxy");
    cmd.args(["-db", "-f"]).arg(&config);
    let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
    (Proxy::spawn(&mut cmd, log, &front, "haproxy"), front)
}

fn nginx_version() -> Option<String> {
    let v = first_line("nginx", "-v", true)?;
    // The stream module is a package of its own.
    Path::new(NGINX_STREAM).exists().then_some(v)
}

const NGINX_STREAM: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// nginx `stream` (a userspace copy, no splice), `worker_processes auto`, otherwise defaults.
fn start_nginx(dir: &Path, up: &Ports, maxconn: usize) -> (Proxy, Ports) {
    let front = ports();
    let ndir = dir.join("nginx");
    let _ = std::fs::create_dir_all(&ndir);
    let mut text = format!(
        "load_module {NGINX_STREAM};\ndaemon off;\nmaster_process on;\nworker_processes auto;\nworker_rlimit_nofile {};\npid {}/nginx.pid;\nerror_log {}/error.log warn;\nevents {{ worker_connections {}; }}\nstream {{\n  proxy_timeout 1h;\n  proxy_connect_timeout 5s;\n",
        maxconn * 2 + 64,
        ndir.display(),
        ndir.display(),
        maxconn * 2 + 64
    );
    for (i, a) in front.iter().enumerate() {
        let _ = writeln!(text, "  server {{ listen {a}; proxy_pass {}; }}", up[i]);
    }
    text.push_str("}\n");
    let config = ndir.join("nginx.conf");
    std::fs::write(&config, text).unwrap();
    let mut cmd = Command::new("nginx");
    cmd.arg("-e")
        .arg(ndir.join("error.log"))
        .arg("-p")
        .arg(&ndir)
        .arg("-c")
        .arg(&config);
    let log = std::fs::File::create(ndir.join("stderr.log")).unwrap();
    (Proxy::spawn(&mut cmd, log, &front, "nginx"), front)
}

/// A process and its children (nginx's workers), as pids.
fn tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    out.extend(
        children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok()),
    );
    out
}

/// utime + stime of a process and its children, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    tree(pid).into_iter().map(cpu_seconds_of).sum()
}

/// utime + stime of a process, in seconds.
fn cpu_seconds_of(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

fn rss_bytes(pid: u32) -> u64 {
    tree(pid)
        .into_iter()
        .map(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        })
        .sum()
}

fn fd_count(pid: u32) -> usize {
    tree(pid)
        .into_iter()
        .map(|p| {
            std::fs::read_dir(format!("/proc/{p}/fd"))
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .sum()
}

/// Bulk through `to` with iperf3: received Gbit/s, the proxy's CPU seconds over the whole
/// run, and the bytes received.
fn bulk_iperf3(
    to: SocketAddr,
    streams: usize,
    window: Duration,
    pid: Option<u32>,
) -> (f64, f64, u64) {
    // The server takes a moment after each test before it accepts the next: it says "busy".
    let mut tries = 0;
    let (v, c0, c1) = loop {
        let c0 = pid.map_or(0.0, cpu_seconds);
        let out = Command::new("iperf3")
            .args(["-c", "127.0.0.1", "-J", "-p"])
            .arg(to.port().to_string())
            .arg("-t")
            .arg(format!("{}", window.as_secs_f64().max(1.0)))
            .arg("-P")
            .arg(streams.to_string())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let c1 = pid.map_or(0.0, cpu_seconds);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        tries += 1;
        let busy = v["error"].as_str().is_some_and(|e| e.contains("busy"));
        if !busy || tries >= 50 {
            break (v, c0, c1);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let sum = &v["end"]["sum_received"];
    let (bps, bytes) = (
        sum["bits_per_second"].as_f64().unwrap_or(f64::NAN),
        sum["bytes"].as_u64().unwrap_or(0),
    );
    if bytes == 0 {
        eprintln!("  iperf3 to {to} failed: {}", v["error"]);
    }
    (bps / 1e9, c1 - c0, bytes)
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
    clients: usize,
    window: Duration,
    pid: Option<u32>,
) -> (f64, f64, u64) {
    rt.block_on(async move {
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..clients)
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
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Row {
    Bulk1,
    Bulk8,
    CpuPerGb1,
    CpuPerGb8,
    InBulk1,
    InBulk8,
    P50,
    P99,
    P999,
    Added50,
    Added99,
    Added999,
    Conns1,
    Conns64,
    Conns512,
    CpuPerConn,
    IdleRssSmall,
    IdleRssLarge,
}

const ROWS: [Row; 18] = [
    Row::Bulk1,
    Row::Bulk8,
    Row::CpuPerGb1,
    Row::CpuPerGb8,
    Row::InBulk1,
    Row::InBulk8,
    Row::P50,
    Row::P99,
    Row::P999,
    Row::Added50,
    Row::Added99,
    Row::Added999,
    Row::Conns1,
    Row::Conns64,
    Row::Conns512,
    Row::CpuPerConn,
    Row::IdleRssSmall,
    Row::IdleRssLarge,
];

impl Row {
    fn label(self) -> &'static str {
        match self {
            Row::Bulk1 => "bulk 1 stream (iperf3), Gbit/s",
            Row::Bulk8 => "bulk 8 streams (iperf3), Gbit/s",
            Row::CpuPerGb1 => "proxy CPU s per GB, 1 stream",
            Row::CpuPerGb8 => "proxy CPU s per GB, 8 streams",
            Row::InBulk1 => "bulk 1 stream (in-house), Gbit/s",
            Row::InBulk8 => "bulk 8 streams (in-house)",
            Row::P50 => "64 B ping-pong p50, us",
            Row::P99 => "64 B ping-pong p99, us",
            Row::P999 => "64 B ping-pong p99.9, us",
            Row::Added50 => "added p50 vs direct, us",
            Row::Added99 => "added p99 vs direct, us",
            Row::Added999 => "added p99.9 vs direct, us",
            Row::Conns1 => "new connections/s, 1 client",
            Row::Conns64 => "new connections/s, 64 clients",
            Row::Conns512 => "new connections/s, 512 clients",
            Row::CpuPerConn => "proxy CPU us per conn (64 cl.)",
            Row::IdleRssSmall => "RSS per idle conn, KiB (1k)",
            Row::IdleRssLarge => "RSS per idle conn, KiB (large)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Row::Bulk1 => "bulk_1_stream_gbit_s",
            Row::Bulk8 => "bulk_8_streams_gbit_s",
            Row::CpuPerGb1 => "cpu_s_per_gb_1_stream",
            Row::CpuPerGb8 => "cpu_s_per_gb_8_streams",
            Row::InBulk1 => "inhouse_bulk_1_stream_gbit_s",
            Row::InBulk8 => "inhouse_bulk_8_streams_gbit_s",
            Row::P50 => "ping_p50_us",
            Row::P99 => "ping_p99_us",
            Row::P999 => "ping_p999_us",
            Row::Added50 => "added_p50_us",
            Row::Added99 => "added_p99_us",
            Row::Added999 => "added_p999_us",
            Row::Conns1 => "connections_per_s_1",
            Row::Conns64 => "connections_per_s_64",
            Row::Conns512 => "connections_per_s_512",
            Row::CpuPerConn => "cpu_us_per_connection",
            Row::IdleRssSmall => "rss_per_idle_connection_kib_1k",
            Row::IdleRssLarge => "rss_per_idle_connection_kib_large",
        }
    }

    /// Higher is better (else lower is).
    fn higher_is_better(self) -> bool {
        matches!(
            self,
            Row::Bulk1
                | Row::Bulk8
                | Row::InBulk1
                | Row::InBulk8
                | Row::Conns1
                | Row::Conns64
                | Row::Conns512
        )
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
    match std::env::var("LOCKGATE_BENCH_ROLE").as_deref() {
        Ok("idle-server") => return idle_server(),
        Ok("conn-server") => return conn_server(),
        _ => {}
    }
    let rounds = env_num("LOCKGATE_BENCH_ROUNDS", 5) as usize;
    let window = Duration::from_secs_f64(env_num("LOCKGATE_BENCH_SECS", 2) as f64);
    let asked_idle = env_num("LOCKGATE_BENCH_IDLE", 9_000);
    let with_copy = env_num("LOCKGATE_BENCH_COPY", 1) != 0;
    let only = std::env::var("LOCKGATE_BENCH_ONLY").unwrap_or_default();
    let want = |group: &str| {
        if only.is_empty() {
            group != "inhouse"
        } else {
            only.split(',').any(|g| g.trim() == group)
        }
    };
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
    let nginx = nginx_version();
    let iperf3 = iperf3_version();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let up = start_upstreams();
    let dir = tempfile::tempdir().unwrap();
    let (lg_proc, lg_ports, lg_copy_ports) = start_lockgate(dir.path(), &up.addrs, with_copy);
    let hap = haproxy
        .as_ref()
        .map(|_| start_haproxy(dir.path(), &up.addrs, cores, idle + 600));
    let ngx = nginx
        .as_ref()
        .map(|_| start_nginx(dir.path(), &up.addrs, idle + 600));

    let mut targets = vec![Target::Direct, Target::Lockgate];
    if with_copy {
        targets.push(Target::LockgateCopy);
    }
    if hap.is_some() {
        targets.push(Target::Haproxy);
    }
    if ngx.is_some() {
        targets.push(Target::Nginx);
    }
    let addr = |t: Target, s: Service| -> SocketAddr {
        match t {
            Target::Direct => up.addrs[s as usize],
            Target::Lockgate => lg_ports[s as usize],
            Target::LockgateCopy => lg_copy_ports[s as usize],
            Target::Haproxy => hap.as_ref().map(|h| h.1[s as usize]).unwrap(),
            Target::Nginx => ngx.as_ref().map(|h| h.1[s as usize]).unwrap(),
        }
    };
    let pid = |t: Target| -> Option<u32> {
        match t {
            Target::Direct => None,
            Target::Lockgate | Target::LockgateCopy => Some(lg_proc.pid),
            Target::Haproxy => hap.as_ref().map(|h| h.0.pid),
            Target::Nginx => ngx.as_ref().map(|h| h.0.pid),
        }
    };

    let machine = format!("{cores} cores, kernel {kernel}");
    println!(
        "lockgate data path vs direct, {} and {}: {rounds} rounds, {}s windows, {IDLE_SMALL} and {idle} idle connections, bulk by {} ({machine}, RLIMIT_NOFILE {})",
        haproxy
            .as_deref()
            .unwrap_or("HAProxy (absent: install `haproxy` for its column)"),
        nginx
            .as_deref()
            .unwrap_or("nginx (absent: install `nginx libnginx-mod-stream` for its column)"),
        window.as_secs_f64(),
        iperf3
            .as_deref()
            .unwrap_or("the in-house client (iperf3 absent)"),
        nofile.map_or("unlimited".to_owned(), |n| n.to_string()),
    );

    let mut res = Results {
        targets: targets.clone(),
        values: vec![vec![Vec::new(); targets.len()]; ROWS.len()],
    };
    let index = |t: Target| targets.iter().position(|x| *x == t).unwrap();
    for round in 0..rounds {
        let mut order = targets.clone();
        order.rotate_left(round % targets.len());
        eprintln!("round {}/{rounds}: order {:?}", round + 1, order);
        if want("bulk") {
            for (row, cpu_row, streams) in [
                (Row::Bulk1, Row::CpuPerGb1, 1),
                (Row::Bulk8, Row::CpuPerGb8, 8),
            ] {
                for &t in &order {
                    let (gbit, c, bytes) = if iperf3.is_some() {
                        bulk_iperf3(addr(t, Service::Iperf), streams, window, pid(t))
                    } else {
                        bulk(addr(t, Service::Sink), streams, window, &up, pid(t))
                    };
                    res.push(row, t, gbit);
                    let v = if pid(t).is_some() && bytes > 0 {
                        c / (bytes as f64 / 1e9)
                    } else {
                        f64::NAN
                    };
                    res.push(cpu_row, t, v);
                }
            }
        }
        if want("inhouse") {
            for (row, streams) in [(Row::InBulk1, 1), (Row::InBulk8, 8)] {
                for &t in &order {
                    let (gbit, _, _) = bulk(addr(t, Service::Sink), streams, window, &up, pid(t));
                    res.push(row, t, gbit);
                }
            }
        }
        if want("ping") {
            let mut p = vec![[0.0; 3]; targets.len()];
            for &t in &order {
                p[index(t)] = ping(addr(t, Service::Ping));
            }
            for (i, &t) in targets.iter().enumerate() {
                res.push(Row::P50, t, p[i][0]);
                res.push(Row::P99, t, p[i][1]);
                res.push(Row::P999, t, p[i][2]);
                res.push(Row::Added50, t, p[i][0] - p[0][0]);
                res.push(Row::Added99, t, p[i][1] - p[0][1]);
                res.push(Row::Added999, t, p[i][2] - p[0][2]);
            }
        }
        if want("conn") {
            for (row, clients) in [
                (Row::Conns1, CONN_CLIENTS[0]),
                (Row::Conns64, CONN_CLIENTS[1]),
                (Row::Conns512, CONN_CLIENTS[2]),
            ] {
                for &t in &order {
                    let (cps, cpu, failed) =
                        conns_per_sec(&rt, addr(t, Service::Conn), clients, window, pid(t));
                    if failed > 0 {
                        eprintln!(
                            "  {} ({clients} clients): {failed} connection cycles failed",
                            t.name()
                        );
                    }
                    res.push(row, t, cps);
                    if row == Row::Conns64 {
                        res.push(Row::CpuPerConn, t, cpu);
                    }
                }
            }
        }
        if want("idle") {
            for (row, count) in [
                (Row::IdleRssSmall, IDLE_SMALL.min(idle)),
                (Row::IdleRssLarge, idle),
            ] {
                for &t in &order {
                    // A fresh proxy each time: "idle RSS" is that of a proxy that has carried
                    // nothing yet, not one whose allocator kept what earlier rows used.
                    let v = match t {
                        Target::Direct => f64::NAN,
                        Target::Lockgate | Target::LockgateCopy => {
                            let (p, splice, copy) =
                                start_lockgate(dir.path(), &up.addrs, with_copy);
                            let to = if t == Target::Lockgate { splice } else { copy };
                            idle_rss(&rt, to[Service::Idle as usize], count, p.pid, &up) / 1024.0
                        }
                        Target::Haproxy => {
                            let (p, front) =
                                start_haproxy(dir.path(), &up.addrs, cores, idle + 600);
                            idle_rss(&rt, front[Service::Idle as usize], count, p.pid, &up) / 1024.0
                        }
                        Target::Nginx => {
                            let (p, front) = start_nginx(dir.path(), &up.addrs, idle + 600);
                            idle_rss(&rt, front[Service::Idle as usize], count, p.pid, &up) / 1024.0
                        }
                    };
                    res.push(row, t, v);
                }
            }
        }
    }

    // The table.
    let lg = Target::Lockgate;
    let hp = Target::Haproxy;
    let nx = Target::Nginx;
    let mut head = format!("\n{:<32}", "median of rounds");
    for t in &targets {
        let _ = write!(head, " {:>13}", t.name());
    }
    let _ = write!(
        head,
        " {:>10} {:>10} {:>10} {:>10}",
        "lg/direct", "hap/direct", "lg/hap", "lg/nginx"
    );
    println!("{head}");
    let mut json = format!(
        "{{\n  \"machine\": {{\"cores\": {cores}, \"kernel\": \"{kernel}\"}},\n  \"haproxy\": {},\n  \"nginx\": {},\n  \"iperf3\": {},\n  \"rounds\": {rounds},\n  \"window_s\": {},\n  \"idle_connections\": {idle},\n  \"rows\": {{\n",
        haproxy
            .as_ref()
            .map_or("null".to_owned(), |v| format!("\"{v}\"")),
        nginx
            .as_ref()
            .map_or("null".to_owned(), |v| format!("\"{v}\"")),
        iperf3
            .as_ref()
            .map_or("null".to_owned(), |v| format!("\"{v}\"")),
        window.as_secs_f64()
    );
    let rows: Vec<Row> = ROWS
        .iter()
        .copied()
        .filter(|&r| targets.iter().any(|&t| !res.get(r, t).is_empty()))
        .collect();
    for (n, &row) in rows.iter().enumerate() {
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
        let (lgd, hpd, lgh, lgn) = (
            vs_direct(lg),
            vs_direct(hp),
            res.ratio(row, lg, hp),
            res.ratio(row, lg, nx),
        );
        let _ = write!(
            line,
            " {:>10} {:>10} {:>10} {:>10}",
            cell(lgd),
            cell(hpd),
            cell(lgh),
            cell(lgn)
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
            ", \"lockgate_over_direct\": {}, \"haproxy_over_direct\": {}, \"lockgate_over_haproxy\": {}, \"lockgate_over_nginx\": {}, \"higher_is_better\": {}, \"rounds\": {{",
            json_num(lgd),
            json_num(hpd),
            json_num(lgh),
            json_num(lgn),
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
        let _ = writeln!(json, "}}}}{}", if n + 1 < rows.len() { "," } else { "" });
    }
    json.push_str("  }\n}\n");
    if haproxy.is_none() {
        println!(
            "\nHAProxy is not installed: its column and the lg/hap ratios are n/a (apt-get install haproxy)."
        );
    }
    if nginx.is_none() {
        println!(
            "\nnginx with its stream module is not installed: its column and lg/nginx are n/a (apt-get install nginx libnginx-mod-stream)."
        );
    }
    println!(
        "ratios are medians of per-round ratios; for latency, CPU and RSS lower is better; added-latency lg/hap is lockgate's added µs over HAProxy's."
    );
    let out: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/throughput.json");
    match std::fs::write(&out, json) {
        Ok(()) => println!("written: {}", out.display()),
        Err(e) => eprintln!("cannot write {}: {e}", out.display()),
    }
    drop(lg_proc);
    drop(hap);
    drop(ngx);
}
