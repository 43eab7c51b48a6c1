//! Real ZooKeeper servers (Debian's `zookeeper` package) on loopback, started and stopped by
//! the tests by PID, and a relay that can black-hole a node's link to ZooKeeper.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{BOUND, free_port};

pub const JARS: [&str; 2] = [
    "/usr/share/java/zookeeper.jar",
    "/usr/share/java/slf4j-simple.jar",
];

/// Whether ZooKeeper and Java are installed. Without them the ZooKeeper tests are skipped
/// with a note, except under CI (CI=true), where they fail.
pub fn available() -> bool {
    if external().is_some() {
        return true;
    }
    let ok = JARS.iter().all(|j| Path::new(j).exists())
        && Command::new("java")
            .arg("-version")
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        super::skip::skipped(
            "ZooKeeper is not installed (apt-get install -y --no-install-recommends zookeeper libslf4j-java)",
        );
    }
    ok
}

struct Server {
    cfg: PathBuf,
    log: PathBuf,
    client_port: u16,
    child: Option<Child>,
}

/// One or three ZooKeeper servers, or (for one) an existing server named by
/// `LOCKGATE_TEST_ZOOKEEPER=host:port`.
pub struct Ensemble {
    _dir: tempfile::TempDir,
    servers: Vec<Server>,
    external: Option<String>,
}

/// The existing server to test against, if one is named.
pub fn external() -> Option<String> {
    std::env::var("LOCKGATE_TEST_ZOOKEEPER")
        .ok()
        .filter(|s| !s.is_empty())
}

impl Ensemble {
    pub async fn start(n: usize) -> Ensemble {
        Ensemble::start_with(n, "").await
    }

    /// As `start`, with extra zoo.cfg lines (e.g. `forceSync=no`).
    pub async fn start_with(n: usize, extra_cfg: &str) -> Ensemble {
        let dir = tempfile::tempdir().unwrap();
        if let Some(cs) = external().filter(|_| n == 1) {
            return Ensemble {
                _dir: dir,
                servers: Vec::new(),
                external: Some(cs),
            };
        }
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let mut servers = Vec::new();
        for (i, (client, quorum, election)) in ports.iter().enumerate() {
            let data = dir.path().join(format!("zk{i}"));
            std::fs::create_dir_all(&data).unwrap();
            let mut cfg = format!(
                "tickTime=500\ninitLimit=20\nsyncLimit=10\ndataDir={}\nclientPort={client}\nclientPortAddress=127.0.0.1\nminSessionTimeout=1000\nmaxSessionTimeout=60000\nadmin.enableServer=false\n4lw.commands.whitelist=*\n",
                data.display()
            );
            cfg += extra_cfg;
            if n > 1 {
                std::fs::write(data.join("myid"), format!("{}\n", i + 1)).unwrap();
                for (j, (_, q, e)) in ports.iter().enumerate() {
                    cfg += &format!("server.{}=127.0.0.1:{q}:{e}\n", j + 1);
                }
            }
            let _ = (quorum, election);
            let path = dir.path().join(format!("zoo{i}.cfg"));
            std::fs::write(&path, cfg).unwrap();
            servers.push(Server {
                cfg: path,
                log: dir.path().join(format!("zk{i}.log")),
                client_port: *client,
                child: None,
            });
        }
        let mut e = Ensemble {
            _dir: dir,
            servers,
            external: None,
        };
        for i in 0..n {
            e.spawn(i);
        }
        for i in 0..n {
            e.wait_serving(i).await;
        }
        e
    }

    fn spawn(&mut self, i: usize) {
        let s = &mut self.servers[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log)
            .unwrap();
        let child = Command::new("java")
            .args(["-Xmx256m", "-XX:+UseSerialGC", "-cp", &JARS.join(":")])
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(&s.cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        s.child = Some(child);
    }

    pub fn connect_string(&self) -> String {
        if let Some(cs) = &self.external {
            return cs.clone();
        }
        self.servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn client_port(&self, i: usize) -> u16 {
        if let Some(cs) = &self.external {
            return cs
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("LOCKGATE_TEST_ZOOKEEPER is host:port");
        }
        self.servers[i].client_port
    }

    /// SIGKILLs server `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn restart(&mut self, i: usize) {
        self.spawn(i);
    }

    /// The index of the leader (or the standalone server).
    pub async fn leader(&self) -> usize {
        for (i, s) in self.servers.iter().enumerate() {
            if s.child.is_some()
                && mode(s.client_port).is_some_and(|m| m == "leader" || m == "standalone")
            {
                return i;
            }
        }
        panic!("no leader found");
    }

    /// Waits until server `i` serves clients (it reports a mode: standalone, leader, follower).
    pub async fn wait_serving(&self, i: usize) {
        let port = self.servers[i].client_port;
        let deadline = Instant::now() + BOUND;
        loop {
            let m = tokio::task::spawn_blocking(move || mode(port))
                .await
                .unwrap();
            if m.is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ZooKeeper {i} not serving within {BOUND:?}:\n{}",
                std::fs::read_to_string(&self.servers[i].log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Ensemble {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}

/// `srvr` four-letter word: the mode of the server on loopback port `port`, if it serves.
fn mode(port: u16) -> Option<String> {
    srvr_mode(([127, 0, 0, 1], port).into())
}

/// `srvr` four-letter word: the mode of the server at `addr`, if it serves.
pub fn srvr_mode(addr: std::net::SocketAddr) -> Option<String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(b"srvr").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines()
        .find_map(|l| l.strip_prefix("Mode: ").map(str::to_owned))
}

/// A TCP relay between one lockgate node and ZooKeeper that can black-hole: bytes stop
/// flowing both ways while every socket stays open, as in a network partition.
pub struct Relay {
    pub port: u16,
    blackhole: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let blackhole = Arc::new(AtomicBool::new(false));
        let b = blackhole.clone();
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let b = b.clone();
                tokio::spawn(async move {
                    if b.load(Ordering::SeqCst) {
                        // Partitioned: hold the connection, pass nothing.
                        let _held = down;
                        return std::future::pending::<()>().await;
                    }
                    let Ok(up) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    let (b1, b2) = (b.clone(), b);
                    let a = tokio::spawn(pipe(dr, uw, b1));
                    let c = tokio::spawn(pipe(ur, dw, b2));
                    let _ = tokio::join!(a, c);
                });
            }
        });
        Relay {
            port,
            blackhole,
            task,
        }
    }

    pub fn blackhole(&self) {
        self.blackhole.store(true, Ordering::SeqCst);
    }

    /// New connections pass again (the black-holed ones stay stuck, as after a partition).
    pub fn heal(&self) {
        self.blackhole.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    blackhole: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if blackhole.load(Ordering::SeqCst) {
            // Keep both sockets open and pass nothing, ever.
            let _hold = (r, w);
            std::future::pending::<()>().await;
            return;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
