//! Hostile clients, careless operators and scarce resources (issue 14): real lockgate
//! processes, real client processes killed with real signals, real descriptor limits set with
//! `prlimit`, real reloads by SIGHUP.

mod common;

use std::time::{Duration, Instant};

use common::commands::{cli_within, lock_command_for};
use common::config_file::{file_spec, scratch, with_admin, with_admin_on};
use common::solo::Solo;
use common::toml_text::Toml;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One scrape of the admin endpoint.
async fn scrape(admin: u16) -> String {
    http(admin, "GET", "/metrics", &[]).await.1
}

/// A sample, 0 when absent.
fn value(scrape: &str, series: &str) -> f64 {
    sample(scrape, series).unwrap_or(0.0)
}

/// Waits (bounded) until `pred` holds, checking every 50 ms; returns how long it took.
async fn wait_until(what: &str, bound: Duration, mut pred: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if pred().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client process: bash writing zeros into a TCP connection to `port` until it blocks.
fn zero_writer(port: u16) -> std::process::Child {
    std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "exec 3<>/dev/tcp/127.0.0.1/{port} && exec cat /dev/zero >&3"
        ))
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// A loopback listener task that hands every connection it accepts to `take` and counts
/// them; stopped when dropped.
struct Counting {
    addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Counting {
    fn start(
        listener: tokio::net::TcpListener,
        mut take: impl FnMut(TcpStream) + Send + 'static,
    ) -> Counting {
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                take(s);
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        Counting {
            addr,
            accepted,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An upstream that accepts and never reads (a broker stuck in a GC pause, a consumer that
/// stopped reading): its small receive buffer fills and the proxy's writes block.
fn deaf_upstream() -> Counting {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(128).unwrap();
    socket.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(socket.into()).unwrap();
    let mut held = Vec::new();
    Counting::start(listener, move |s| held.push(s))
}

/// Item 6. Clients killed while their upstream never reads: without route timeouts each
/// connection stays open forever (both directions wait: one to write to the deaf upstream,
/// one for the upstream to speak). With `server-timeout-ms` they are closed (the server is
/// blamed, not the clients, which were not expected to move), counted, and their descriptors
/// freed; a connection with heartbeats through another route with the same timeouts outlives
/// them, and is closed once it goes quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_clients_of_a_deaf_upstream_are_closed_by_the_route_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let deaf = deaf_upstream();
    let echo = Upstream::start().await;
    let (admin, port, echo_port) = (free_port(), free_port(), free_port());
    let timeouts = "client-timeout-ms = 1500\nserver-timeout-ms = 1500\n";
    let config = Toml::node("node", "shutdown-grace-ms = 500\n")
        .admin(admin, "")
        .route(
            "deaf",
            port,
            deaf.addr,
            &format!("zero-copy = false\n{timeouts}"),
        )
        .route("heartbeat", echo_port, echo.addr, timeouts)
        .write(dir.path(), "node");
    let node = Node::start("node", &config, dir.path()).await;
    let (_, base_fds) = node.threads_and_fds();

    // A heartbeating client: a ping every 100 ms, echoed, for three timeouts.
    let heartbeat = tokio::spawn(async move {
        let mut s = TcpStream::connect(("127.0.0.1", echo_port)).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 5];
        while started.elapsed() < Duration::from_millis(2500) {
            s.write_all(b"ping\n").await.unwrap();
            s.read_exact(&mut buf).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        s
    });

    const CLIENTS: usize = 10;
    let mut clients: Vec<_> = (0..CLIENTS).map(|_| zero_writer(port)).collect();
    wait_until(
        "the deaf upstream accepted every client",
        BOUND,
        async || deaf.accepted() == CLIENTS,
    )
    .await;
    // Every client's bytes are stuck: the proxy's writes toward the deaf upstream stopped.
    let mut last = -1.0;
    let series = r#"lockgate_forwarded_bytes_total{route="deaf",direction="to_upstream"}"#;
    wait_until(
        "the forwarded byte count stopped moving",
        BOUND,
        async || {
            let now = value(&scrape(admin).await, series);
            let still = now > 0.0 && now == last;
            last = now;
            still
        },
    )
    .await;
    let (_, busy_fds) = node.threads_and_fds();
    assert!(
        busy_fds >= base_fds + 2 * CLIENTS,
        "{base_fds} -> {busy_fds}"
    );
    for c in &mut clients {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    // Normally the server is blamed (the clients were not expected to move while it did not
    // read); a connection whose last client bytes and FIN still fitted in the buffers is
    // idle on the client side instead. Either way each is closed and counted once.
    let count = |m: &str, reason: &str| {
        value(
            m,
            &format!(r#"lockgate_connections_timed_out_total{{route="deaf",reason="{reason}"}}"#),
        )
    };
    let closed = |m: &str| count(m, "server_inactive") + count(m, "client_inactive");
    // The descriptor bound leaves room for a connection still closing: wait for the count too.
    let mut m = String::new();
    let took = wait_until(
        "the dead clients' connections were closed and counted",
        Duration::from_secs(10),
        async || {
            m = scrape(admin).await;
            node.threads_and_fds().1 <= base_fds + 4 && closed(&m) >= CLIENTS as f64
        },
    )
    .await;
    eprintln!("{CLIENTS} dead clients' connections closed {took:?} after the kill");
    let by = |reason: &str| count(&m, reason);
    eprintln!(
        "closed: {} server_inactive, {} client_inactive",
        by("server_inactive"),
        by("client_inactive")
    );
    assert_eq!(closed(&m), CLIENTS as f64, "{m}");

    // The heartbeating connection outlived three timeouts, then goes quiet and is closed.
    let mut s = heartbeat.await.unwrap();
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "an idle connection stayed open: {r:?}"
    );
    let m = scrape(admin).await;
    assert_eq!(
        value(
            &m,
            r#"lockgate_connections_timed_out_total{route="heartbeat",reason="client_inactive"}"#
        ) + value(
            &m,
            r#"lockgate_connections_timed_out_total{route="heartbeat",reason="server_inactive"}"#
        ),
        1.0,
        "{m}"
    );
}

/// Sets the descriptor limit (soft:hard) of a running process with `prlimit(1)`.
fn prlimit_nofile(pid: i32, soft: u64, hard: u64) {
    let out = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={soft}:{hard}"),
        ])
        .output()
        .expect("prlimit (util-linux) is needed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Item 4. A holder limited to 64 descriptors (`prlimit`): a local process opening 200 idle
/// admin connections, then clients flooding the gated route until accepts fail, must not make
/// the health probe fail and move the lock. The admin endpoint serves at most
/// `max-connections` and closes the rest on arrival; a probe that cannot get a descriptor is a
/// local resource error that counts neither way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_floods_do_not_move_the_lock() {
    let Some(mut h) = limited_holder("max-connections = 8\n").await else {
        return;
    };
    let (node, port, admin) = (&mut h.node, h.port, h.admin);
    // 200 idle admin connections from one local process.
    let (idle, seen, fds) = admin_flood(node, admin, Duration::from_millis(1500)).await;
    eprintln!("with 200 admin connections offered: {fds} descriptors open");
    assert!(
        !seen.iter().any(|l| l.contains("standby")),
        "the lock moved during an admin flood: {seen:?}\n{}",
        node.log_text()
    );
    assert!(serves(port).await, "the gated route stopped serving");
    drop(idle);
    let m = wait_scrape(admin).await;
    assert!(
        value(
            &m,
            r#"lockgate_admin_connections_refused_total{reason="limit"}"#
        ) + value(
            &m,
            r#"lockgate_admin_connections_refused_total{reason="fd_reserve"}"#
        ) >= 150.0,
        "{m}"
    );

    // Then no descriptor at all: the soft limit drops to 3, below every descriptor open past
    // stdio, so every socket(), accept() and open() fails with EMFILE (a new descriptor must
    // be numbered below the limit). The health probe cannot run: a local resource error,
    // which must not count as a dead broker.
    prlimit_nofile(node.pid, 3, 64);
    let mark = node.seen.len();
    node.collect_for(Duration::from_millis(1500)).await;
    prlimit_nofile(node.pid, 64, 64);
    assert!(
        !node.seen[mark..].iter().any(|l| l.contains("standby")),
        "the lock moved while this node had no descriptor to spare: {:?}\n{}",
        &node.seen[mark..],
        node.log_text()
    );
    let log = node.log_text();
    assert!(!log.contains("local broker is down"), "{log}");
    assert!(log.contains("a local resource error"), "{log}");
    wait_serving(port).await;
    let m = wait_scrape(admin).await;
    assert!(
        value(
            &m,
            r#"lockgate_health_check_local_errors_total{lock="clients-lock"}"#
        ) >= 2.0,
        "{m}"
    );
}

/// A holder health-checking its upstream, with an admin endpoint (`admin_keys` in its table),
/// serving, and limited to 64 descriptors (`prlimit`). `None` (the test is skipped) without
/// `prlimit`.
async fn limited_holder(admin_keys: &str) -> Option<Solo> {
    if !have("prlimit", "util-linux") {
        return None;
    }
    let h = Solo::active("node", admin_keys, |spec| NodeSpec {
        health: Some((100, 1, 2)),
        ..spec
    })
    .await;
    wait_serving(h.port).await;
    prlimit_nofile(h.node.pid, 64, 64);
    Some(h)
}

/// Opens 200 idle connections to the admin endpoint (those refused at connect are left out),
/// then watches `node` for `watch`: the connections, the notify lines meanwhile, and the
/// descriptors the node has open after.
async fn admin_flood(
    node: &mut Node,
    admin: u16,
    watch: Duration,
) -> (Vec<TcpStream>, Vec<String>, usize) {
    let mut idle = Vec::new();
    for _ in 0..200 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", admin)).await {
            idle.push(s);
        }
    }
    let mark = node.seen.len();
    node.collect_for(watch).await;
    let (_, fds) = node.threads_and_fds();
    (idle, node.seen[mark..].to_vec(), fds)
}

/// Scrapes once the admin endpoint accepts again (its idle connections were just closed).
async fn wait_scrape(admin: u16) -> String {
    let mut out = String::new();
    wait_until(
        "the admin endpoint answered",
        BOUND,
        async || match try_get(admin, "/metrics").await {
            Some((200, body)) => {
                out = body;
                true
            }
            _ => false,
        },
    )
    .await;
    out
}

/// A GET that may be refused; `None` if the connection failed or was reset.
async fn try_get(port: u16, path: &str) -> Option<(u16, String)> {
    let s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    exchange(s, &req).await
}

/// Sends `req` on `s`, reads to the end: the status code and the body; `None` if the
/// connection failed or was reset.
async fn exchange(mut s: TcpStream, req: &str) -> Option<(u16, String)> {
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(BOUND, s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text.split(' ').nth(1)?.parse().ok()?;
    Some((code, text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned()))
}

/// Item 3, the admin side: a step-down whose hold-off would overflow the clock is refused
/// with 400, and the coordinator keeps running (before: the coordinator task panicked adding
/// the hold-off to `Instant::now()`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_step_down_durations_are_refused() {
    let mut h = Solo::active("node", "", |spec| spec).await;
    let (node, admin) = (&mut h.node, h.admin);
    for q in [
        "hold-off-ms=18446744073709551615",
        "drain-ms=18446744073709551615",
        "hold-off-ms=86400001",
    ] {
        let (code, body) = http(
            admin,
            "POST",
            &format!("/locks/clients-lock/step-down?{q}"),
            &[],
        )
        .await;
        assert_eq!(code, 400, "{q}: {body}");
    }
    // Still the holder, still answering commands.
    let (code, body) = http(
        admin,
        "POST",
        "/locks/clients-lock/step-down?hold-off-ms=100",
        &[],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    node.wait_standby("released: step_down").await;
    node.wait_active().await;
}

/// Item 2. A file-lock standby reloaded 300 times (real SIGHUPs, each changing its
/// coordinator's settings so the coordinator is stopped and re-created) keeps its thread and
/// descriptor counts flat: a stopped `FileLock` hands its blocked waiter to the next one
/// instead of leaving it behind (before: one more thread and descriptor per reload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_a_file_lock_standby_leaks_no_thread_and_no_descriptor() {
    let (dir, locks) = scratch();
    let up = [Upstream::start().await, Upstream::start().await];
    let ports = [free_port(), free_port()];
    let spec = |i: usize, id, period| NodeSpec {
        check_period_ms: period,
        ..file_spec(id, &locks, ports[i], up[i].addr)
    };
    let c0 = spec(0, "node0", 1000).write(dir.path());
    let mut holder = Node::start("node0", &c0, dir.path()).await;
    holder.wait_active().await;
    let c1 = spec(1, "node1", 1000).write(dir.path());
    let mut standby = Node::start("node1", &c1, dir.path()).await;
    standby.wait_standby("contending").await;

    const RELOADS: usize = 300;
    let mut at = Vec::new();
    for i in 0..RELOADS {
        // Alternate the check-period: the coordinator changed, so it is stopped and replaced.
        spec(1, "node1", 1000 + (i as u64 % 2) + 1).write(dir.path());
        standby.signal(libc::SIGHUP);
        standby.wait_note(|l| l == "RELOADING=1").await;
        // READY=1 and the new coordinator's "contending", in either order.
        let (mut ready, mut contending) = (false, false);
        while !(ready && contending) {
            let l = standby
                .wait_note(|l| l == "READY=1" || l.ends_with("standby (contending)"))
                .await;
            ready |= l == "READY=1";
            contending |= l != "READY=1";
        }
        if i == 9 || i == 99 || i == RELOADS - 1 {
            at.push(standby.threads_and_fds());
        }
    }
    eprintln!("standby threads and descriptors after 10, 100, {RELOADS} reloads: {at:?}");
    let (t10, f10) = at[0];
    for (threads, fds) in &at[1..] {
        assert!(*threads <= t10 + 2, "threads grew: {at:?}");
        assert!(*fds <= f10 + 2, "descriptors grew: {at:?}");
    }
    // Still a working standby: it takes over when the holder goes.
    holder.signal(libc::SIGKILL);
    standby.wait_active().await;
    wait_serving(ports[1]).await;
}

/// Item 7. 200 clients whose upstream refuses (a broker that just died): every refusal is
/// counted, but the log gets at most one line per second for that cause, with the count it
/// stands for (before: 200 WARN lines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_connects_log_one_line_per_second() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, port, dead) = (free_port(), free_port(), free_port());
    let config = Toml::node("node", "")
        .admin(admin, "")
        .route("r", port, format!("127.0.0.1:{dead}"), "")
        .write(dir.path(), "node");
    let node = Node::start("node", &config, dir.path()).await;
    const CLIENTS: usize = 200;
    let started = Instant::now();
    for _ in 0..CLIENTS {
        // The proxy resets the client once its upstream refused (the reset may already
        // be there when the connect completes).
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await {
            let mut buf = [0u8; 1];
            let r = tokio::time::timeout(BOUND, s.read(&mut buf)).await.unwrap();
            assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        }
    }
    let secs = started.elapsed().as_secs();
    let series = r#"lockgate_upstream_connect_errors_total{route="r",reason="refused"}"#;
    let mut m = String::new();
    wait_until("every refusal was counted", BOUND, async || {
        m = scrape(admin).await;
        value(&m, series) == CLIENTS as f64
    })
    .await;
    let log = node.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot connect to the upstream"))
        .collect();
    eprintln!(
        "{CLIENTS} refused connects in about {secs} s: {} log lines",
        lines.len()
    );
    assert!(
        !lines.is_empty() && lines.len() as u64 <= secs + 2,
        "{} lines for {CLIENTS} refusals in {secs} s:\n{}",
        lines.len(),
        lines.join("\n")
    );
}

/// A TCP relay to `target` that counts the connections it carried.
async fn counting_relay(target: u16) -> Counting {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Counting::start(listener, move |mut down| {
        tokio::spawn(async move {
            if let Ok(mut up) = TcpStream::connect(("127.0.0.1", target)).await {
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            }
        });
    })
}

/// This host's own non-loopback IPv4 address, if it has one (found by a UDP connect, which
/// sends nothing).
fn own_address() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// A GET from a given local address.
async fn get_from(from: std::net::IpAddr, port: u16, path: &str, headers: &str) -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(from, 0)).unwrap();
    let s = socket
        .connect(std::net::SocketAddr::new(from, port))
        .await
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n");
    exchange(s, &req).await.expect("no HTTP answer").0
}

/// Item 5. `GET /status` serves the coordinator's own view and opens no ZooKeeper session
/// (before: one per request); `?fresh=1` reads the ensemble at most once per second per lock,
/// and from beyond loopback only with the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_does_not_cost_the_ensemble() {
    if !common::zk::available() {
        return;
    }
    let zk = common::zk::Ensemble::start(1).await;
    let relay = counting_relay(zk.client_port(0)).await;
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let (admin, port) = (free_port(), free_port());
    let token = "0123456789abcdef-token";
    std::fs::write(dir.path().join("token"), token).unwrap();
    let spec = NodeSpec {
        check_period_ms: 500,
        zookeeper: Some(format!(
            "connect-string = \"127.0.0.1:{}\"\nnamespace = \"lockgate-test\"\nsession-ms = 4000\nsession-percent = 25\nconnection-ms = 1500",
            relay.addr.port()
        )),
        ..file_spec("node", dir.path(), port, up.addr)
    };
    let listen = format!("0.0.0.0:{admin}");
    let config = with_admin_on(spec.write(dir.path()), &listen, "token-file = \"token\"\n");
    let mut node = Node::start("node", &config, dir.path()).await;
    node.wait_active().await;
    // The STATUS line goes out just before the admin view is updated.
    wait_until("the admin view shows the lock held", BOUND, async || {
        http(admin, "GET", "/status", &[])
            .await
            .1
            .contains(r#""held":true"#)
    })
    .await;
    let before = relay.accepted();
    for _ in 0..100 {
        let (code, body) = http(admin, "GET", "/status", &[]).await;
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let lock = &v["locks"]["clients-lock"];
        assert_eq!(lock["held"], true, "{body}");
        assert_eq!(lock["holder"]["node_id"], "node", "{body}");
    }
    assert_eq!(
        relay.accepted(),
        before,
        "GET /status opened ZooKeeper sessions"
    );
    // Explicit fresh reads: at most one per second.
    let started = Instant::now();
    for _ in 0..20 {
        let (code, body) = http(admin, "GET", "/status?fresh=1", &[]).await;
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v["locks"]["clients-lock"]["observed"].is_object(), "{body}");
    }
    let reads = relay.accepted() - before;
    let secs = started.elapsed().as_secs() as usize;
    eprintln!("20 fresh status reads in about {secs} s: {reads} ZooKeeper sessions");
    assert!(
        reads >= 1 && reads <= secs + 1,
        "{reads} sessions in {secs} s"
    );
    // Beyond loopback, a fresh read needs the token; the plain view does not.
    match own_address() {
        Some(ip) => {
            assert_eq!(get_from(ip, admin, "/status?fresh=1", "").await, 401);
            assert_eq!(get_from(ip, admin, "/status", "").await, 200);
            let auth = format!("Authorization: Bearer {token}\r\n");
            assert_eq!(get_from(ip, admin, "/status?fresh=1", &auth).await, 200);
        }
        None => eprintln!("skipped the beyond-loopback part: this host has no other address"),
    }
    drop(zk);
}

/// Item 8. Storage that does not answer: the lock file is a FIFO nobody writes into, so every
/// read of it blocks in the kernel, as on a frozen FUSE or NFS mount. `GET /status?fresh=1`
/// answers within its bound ("storage not answering") and never has more than one read
/// outstanding; `lockgate status` answers within its bound; SIGTERM still ends the process
/// although a thread is stuck in the kernel (before: `status` never returned, and the daemon
/// logged "stopped" but did not exit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_storage_is_reported_and_does_not_hold_the_exit() {
    let (dir, locks) = scratch();
    mkfifo(&locks.join("stuck"));
    let up = Upstream::start().await;
    let (admin, port, open_port) = (free_port(), free_port(), free_port());
    let config = Toml::node("node", "shutdown-grace-ms = 500\n")
        .admin(admin, "")
        .file_lock("stuck-lock", "stuck", &locks, 500)
        .gated_route("gated", port, up.addr, "stuck-lock")
        .route("open", open_port, up.addr, "")
        .write(dir.path(), "node");
    let mut node = Node::start("node", &config, dir.path()).await;
    let started = Instant::now();
    let (code, body) = http(admin, "GET", "/status?fresh=1", &[]).await;
    let took = started.elapsed();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("storage not answering"), "{body}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    let (threads, _) = node.threads_and_fds();
    // Past the one-per-second window, the first read is still stuck: no second one starts.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..4 {
        let started = Instant::now();
        let (code, body) = http(admin, "GET", "/status?fresh=1", &[]).await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("still running"), "{body}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    let (after, _) = node.threads_and_fds();
    assert!(
        after <= threads,
        "threads {threads} -> {after}: reads piled up"
    );
    // The open route keeps serving meanwhile.
    assert!(serves(open_port).await);

    // `lockgate status` answers within its bound.
    let started = Instant::now();
    let out = cli_within(Duration::from_secs(10), &["status"], &config).await;
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("lockgate status took {took:?}: {stdout}");
    assert!(stdout.contains("storage not answering"), "{stdout}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // SIGTERM: the exit is not held by the thread stuck in the kernel.
    let started = Instant::now();
    node.signal(libc::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(5), node.child.wait())
        .await
        .unwrap_or_else(|_| panic!("no exit within 5 s of SIGTERM\n{}", node.log_text()))
        .unwrap();
    eprintln!("exit {status:?} {:?} after SIGTERM", started.elapsed());
    assert!(status.success(), "{status:?}");
}

/// Item 9. `lockgate step-down` and `resume` percent-encode the lock name, and the daemon
/// decodes it: a lock named with a space, a slash, `#` and `%` can be stepped down (before:
/// the request line was not even a valid URI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reaches_a_lock_whatever_its_name() {
    let (dir, locks) = scratch();
    let up = Upstream::start().await;
    let (admin, port) = (free_port(), free_port());
    let name = "clients lock/#1%";
    let config = Toml::node("node", "")
        .admin(admin, "")
        .file_lock(name, "odd", &locks, 500)
        .gated_route("gated", port, up.addr, name)
        .write(dir.path(), "node");
    let mut node = Node::start("node", &config, dir.path()).await;
    let active = format!("STATUS=lock {name}: active");
    node.wait_note(|l| l.starts_with(&active)).await;
    for (args, want) in [
        (
            vec!["step-down", "--hold-off-ms", "60000"],
            "released: step_down",
        ),
        (vec!["resume"], "active"),
    ] {
        lock_command_for(name, &config, &args).await;
        let prefix = format!("STATUS=lock {name}: ");
        node.wait_note(|l| l.starts_with(&prefix) && l.contains(want))
            .await;
    }
}

/// Item 10. A reload that changes what names a lock (here `lock-id`, on the standby) moves the
/// node to a lock its peer does not contend for: it takes it at once, and both nodes serve.
/// That must be loud: a WARN naming the change, and `lockgate_lock_identity_changes_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changing_a_locks_identity_is_loud() {
    let (dir, locks) = scratch();
    let up = [Upstream::start().await, Upstream::start().await];
    let ports = [free_port(), free_port()];
    let admin = free_port();
    let spec = |i: usize, id| NodeSpec {
        check_period_ms: 500,
        ..file_spec(id, &locks, ports[i], up[i].addr)
    };
    let c0 = spec(0, "node0").write(dir.path());
    let mut node0 = Node::start("node0", &c0, dir.path()).await;
    node0.wait_active().await;
    let c1 = with_admin(spec(1, "node1").write(dir.path()), admin, "");
    let mut node1 = Node::start("node1", &c1, dir.path()).await;
    node1.wait_standby("contending").await;
    let text = std::fs::read_to_string(&c1).unwrap();
    std::fs::write(
        &c1,
        text.replace(
            "lock-id = \"mirror-cluster-clients\"",
            "lock-id = \"renamed\"",
        ),
    )
    .unwrap();
    node1.signal(libc::SIGHUP);
    // The hazard itself: node1 takes the renamed (free) lock while node0 holds the old one.
    node1.wait_active().await;
    let log = node1.log_text();
    assert!(
        log.contains("reload changes the identity of this lock")
            && log.contains(r#"lock-id "mirror-cluster-clients" -> "renamed""#),
        "{log}"
    );
    let m = scrape(admin).await;
    assert_eq!(
        value(
            &m,
            r#"lockgate_lock_identity_changes_total{lock="clients-lock"}"#
        ),
        1.0,
        "{m}"
    );
    assert!(serves(ports[0]).await && serves(ports[1]).await);
}

/// Whether `tool` is installed here; without it a test is skipped with a note, except under CI.
fn have(tool: &str, package: &str) -> bool {
    common::skip::tool(tool, package).is_some()
}

/// Runs a command, panicking with its stderr if it fails.
fn run(cmd: &str) {
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two network namespaces joined by a veth pair: `a` (10.213.N.1) and `b` (10.213.N.2).
/// Deleted on drop, whatever happened.
struct Netns {
    a: String,
    b: String,
    a_ip: String,
    b_ip: String,
}

impl Netns {
    fn create() -> Netns {
        let id = std::process::id();
        let n = id % 250 + 1;
        let (a, b) = (format!("lgh{id}a"), format!("lgh{id}b"));
        let ns = Netns {
            a_ip: format!("10.213.{n}.1"),
            b_ip: format!("10.213.{n}.2"),
            a,
            b,
        };
        run(&format!("ip netns add {}", ns.a));
        run(&format!("ip netns add {}", ns.b));
        run(&format!(
            "ip -n {a} link add x type veth peer name y netns {b} && ip -n {a} addr add {ai}/24 dev x && ip -n {b} addr add {bi}/24 dev y && ip -n {a} link set x up && ip -n {b} link set y up && ip -n {a} link set lo up && ip -n {b} link set lo up",
            a = ns.a,
            b = ns.b,
            ai = ns.a_ip,
            bi = ns.b_ip
        ));
        ns
    }

    /// A fetch of an admin path from inside namespace `a`.
    fn get_in_a(&self, port: u16, path: &str) -> String {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.a, "/usr/bin/python3", "-c"])
            .arg(format!(
                "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=5).read().decode())"
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}

/// Makes a FIFO at `path` with `mkfifo(1)`.
fn mkfifo(path: &std::path::Path) {
    let made = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo {}", path.display());
}

/// Kills a child process (by its PID) on drop.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Item 6, the kernel's half: `tcp-user-timeout-ms` on the upstream leg. A client streams
/// through lockgate to an upstream in another network namespace; the link to it is cut (the
/// veth goes down: no FIN, no RST, bytes unacknowledged). With TCP_USER_TIMEOUT at 1 s the
/// kernel gives up on the leg and lockgate resets the client, counted as peer_unresponsive,
/// long before the inactivity timeouts (60 s) and the kernel's own retransmission limit
/// (about 15 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_to_the_upstream_is_found_by_tcp_user_timeout() {
    if !have("ip", "iproute2") || !have("/usr/bin/python3", "python3") {
        return;
    }
    let ns = Netns::create();
    let dir = tempfile::tempdir().unwrap();
    let (admin, port, up_port) = (free_port(), free_port(), 9000);
    let config = Toml::node("node", "shutdown-grace-ms = 200\n")
        .admin(admin, "")
        .route(
            "far",
            port,
            format!("{}:{up_port}", ns.b_ip),
            "client-timeout-ms = 60000\nserver-timeout-ms = 60000\ntcp-user-timeout-ms = 1000\n",
        )
        .write(dir.path(), "node");
    // The upstream, in namespace b: reads and discards everything.
    let _upstream = Reaped(
        std::process::Command::new("ip")
            .args(["netns", "exec", &ns.b, "/usr/bin/python3", "-c"])
            .arg(format!(
                "import socket\ns = socket.socket()\ns.bind(('{ip}', {up_port}))\ns.listen()\nc, _ = s.accept()\nwhile c.recv(65536): pass",
                ip = ns.b_ip
            ))
            .spawn()
            .unwrap(),
    );
    let log = dir.path().join("node.log");
    let _node = Reaped(
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.a,
                env!("CARGO_BIN_EXE_lockgate"),
                "run",
                "--config",
            ])
            .arg(&config)
            .env("RUST_LOG", "lockgate=debug,info")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("lockgate started in its namespace", BOUND, async || {
        log_text().contains("lockgate ready")
    })
    .await;
    // The client, in namespace a: streams zeros through the route.
    let mut client = Reaped(
        std::process::Command::new("ip")
            .args(["netns", "exec", &ns.a, "bash", "-c"])
            .arg(format!(
                "exec 3<>/dev/tcp/127.0.0.1/{port} && exec cat /dev/zero >&3"
            ))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let series = r#"lockgate_forwarded_bytes_total{route="far",direction="to_upstream"}"#;
    wait_until("bytes flowed to the far upstream", BOUND, async || {
        value(&ns.get_in_a(admin, "/metrics"), series) > 1e6
    })
    .await;
    run(&format!("ip -n {} link set y down", ns.b));
    let cut = Instant::now();
    wait_until(
        "the client's connection was reset",
        Duration::from_secs(10),
        async || client.0.try_wait().unwrap().is_some(),
    )
    .await;
    eprintln!("client reset {:?} after the link was cut", cut.elapsed());
    let m = ns.get_in_a(admin, "/metrics");
    assert_eq!(
        value(
            &m,
            r#"lockgate_connections_timed_out_total{route="far",reason="peer_unresponsive"}"#
        ),
        1.0,
        "{m}\n{}",
        log_text()
    );
}

/// Item 8, reload: the config file is a FIFO that answers once (at start) and then never, as
/// a config on a hung mount would. A SIGHUP's reload is bounded and off the event loop: it is
/// refused with "storage not answering" after its bound, a second one is refused at once
/// while the first read is still stuck (no second stuck thread), the routes and the admin
/// endpoint serve throughout, and SIGTERM still ends the process (before: the reload blocked
/// the task that also waits for SIGTERM, so the process never stopped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_from_hung_storage_is_bounded() {
    let (dir, locks) = scratch();
    let up = Upstream::start().await;
    let (admin, port) = (free_port(), free_port());
    let spec = NodeSpec {
        check_period_ms: 500,
        ..file_spec("node", &locks, port, up.addr)
    };
    let real = with_admin(spec.write(dir.path()), admin, "");
    let fifo = dir.path().join("fifo.toml");
    mkfifo(&fifo);
    // One writer, for the start-up read only.
    let _writer = Reaped(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cat '{}' > '{}'", real.display(), fifo.display()))
            .spawn()
            .unwrap(),
    );
    let mut node = Node::start("node", &fifo, dir.path()).await;
    node.wait_active().await;
    let started = Instant::now();
    node.signal(libc::SIGHUP);
    node.wait_note(|l| l == "RELOADING=1").await;
    // The event loop and the data path are not blocked by the stuck read.
    assert_eq!(http(admin, "GET", "/healthz", &[]).await.0, 200);
    assert!(serves(port).await);
    wait_until(
        "the reload was refused",
        Duration::from_secs(10),
        async || node.log_text().contains("storage not answering"),
    )
    .await;
    eprintln!("reload refused {:?} after SIGHUP", started.elapsed());
    // One thread is stuck in the FIFO's open now; a second reload must not add another.
    let (threads, _) = node.threads_and_fds();
    node.signal(libc::SIGHUP);
    wait_until(
        "the second reload was refused at once",
        Duration::from_secs(3),
        async || node.log_text().contains("still waiting"),
    )
    .await;
    let (after, _) = node.threads_and_fds();
    assert!(after <= threads, "threads {threads} -> {after}");
    assert!(serves(port).await);
    let started = Instant::now();
    node.signal(libc::SIGTERM);
    let status = node.wait_exit().await;
    eprintln!("exit {status:?} {:?} after SIGTERM", started.elapsed());
    assert!(status.success());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

/// Item 4, the reserve on its own: with the admin cap out of the way (`max-connections =
/// 1024`), a holder limited to 64 descriptors still keeps a quarter of them from the admin
/// endpoint, so 200 idle admin connections leave the gated route serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_leaves_a_descriptor_reserve() {
    let Some(mut h) = limited_holder("max-connections = 1024\n").await else {
        return;
    };
    let (node, port, admin) = (&mut h.node, h.port, h.admin);
    let (idle, seen, fds) = admin_flood(node, admin, Duration::from_millis(1000)).await;
    eprintln!("200 admin connections offered, no cap: {fds} descriptors open of 64");
    assert!(
        fds <= 64 - 16 + 2,
        "the admin endpoint ate into the reserve: {fds}"
    );
    assert!(serves(port).await, "the gated route stopped serving");
    assert!(!seen.iter().any(|l| l.contains("standby")));
    drop(idle);
    let m = wait_scrape(admin).await;
    assert!(
        value(
            &m,
            r#"lockgate_admin_connections_refused_total{reason="fd_reserve"}"#
        ) >= 100.0,
        "{m}"
    );
}
