//! A `Pair` (or three) of lockgate nodes on one lock, each in front of its own echo upstream,
//! built from `NodeSpec::default()` and started in order (node0 active, the others contending).

use super::*;

/// Two (or more) nodes on one lock, each in front of its own echo upstream, in one temporary
/// folder: node `i` is named `node<i>` and serves on `ports[i]`.
pub struct Pair {
    pub up: Vec<Upstream>,
    pub ports: Vec<u16>,
    /// The admin ports; empty unless the builder asked for `admin`.
    pub admin: Vec<u16>,
    pub configs: Vec<PathBuf>,
    pub nodes: Vec<Node>,
    // Last: the nodes' logs live here, and are printed when a test fails.
    pub dir: tempfile::TempDir,
}

/// The ZooKeeper coordinator keys of node `i`.
type ZkKeys = Box<dyn Fn(usize) -> String>;

/// How a `Pair` is configured: see `Pair::file` and `Pair::zookeeper`.
pub struct PairBuilder {
    nodes: usize,
    check_period_ms: u64,
    health: Option<(u64, u32, u32)>,
    extra: String,
    admin: Option<String>,
    zookeeper: Option<ZkKeys>,
    upstreams: Vec<(usize, SocketAddr)>,
}

impl Pair {
    /// Two nodes on the file lock in `<dir>/locks`, check-period 500 ms, no health check.
    pub fn file() -> PairBuilder {
        PairBuilder {
            nodes: 2,
            check_period_ms: 500,
            health: None,
            extra: String::new(),
            admin: None,
            zookeeper: None,
            upstreams: Vec::new(),
        }
    }

    /// As `file`, on ZooKeeper at `connect` with the `timing` keys, namespace `lockgate-test`.
    pub fn zookeeper(connect: &str, timing: &str) -> PairBuilder {
        let keys = zk_keys(connect, timing);
        Pair::zookeeper_keys(move |_| keys.clone())
    }

    /// As `file`, on ZooKeeper: `keys(i)` are node i's coordinator keys after `type`.
    pub fn zookeeper_keys(keys: impl Fn(usize) -> String + 'static) -> PairBuilder {
        PairBuilder {
            zookeeper: Some(Box::new(keys)),
            ..Pair::file()
        }
    }

    /// Starts node `i` (again) and waits for its READY=1.
    pub async fn spawn(&self, i: usize) -> Node {
        Node::start(&format!("node{i}"), &self.configs[i], self.dir.path()).await
    }

    /// A sampler on node0's and node1's ports that has seen node0 serve.
    pub async fn sampler(&self) -> Sampler {
        let mut sampler = Sampler::start(self.ports[0], self.ports[1]);
        sampler.wait_for(|r| r.a_served > 0).await;
        sampler
    }

    /// The shared lock file (of the file lock).
    pub fn lock_file(&self) -> PathBuf {
        self.dir.path().join("locks/mirror-cluster-clients")
    }
}

impl PairBuilder {
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    pub fn check_period_ms(mut self, ms: u64) -> Self {
        self.check_period_ms = ms;
        self
    }

    /// Health-check each node's upstream: (interval-ms, rise, fall).
    pub fn health(mut self, health: (u64, u32, u32)) -> Self {
        self.health = Some(health);
        self
    }

    /// TOML appended after the clients route (its keys, or more tables).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra += toml;
        self
    }

    /// An admin endpoint on a free port per node, with `keys` in its table.
    pub fn admin(mut self, keys: &str) -> Self {
        self.admin = Some(keys.to_owned());
        self
    }

    /// Node `i` forwards to `addr` instead of its echo upstream.
    pub fn upstream(mut self, i: usize, addr: SocketAddr) -> Self {
        self.upstreams.push((i, addr));
        self
    }

    /// Writes the configs and starts the upstreams; starts no node.
    pub async fn build(self) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        std::fs::create_dir(&locks).unwrap();
        let mut up = Vec::new();
        for _ in 0..self.nodes {
            up.push(Upstream::start().await);
        }
        let ports: Vec<u16> = (0..self.nodes).map(|_| free_port()).collect();
        let admin: Vec<u16> = match self.admin {
            Some(_) => (0..self.nodes).map(|_| free_port()).collect(),
            None => Vec::new(),
        };
        let configs = (0..self.nodes)
            .map(|i| {
                let mut extra = self.extra.clone();
                if let Some(keys) = &self.admin {
                    // A table after the arrays of tables is still a top-level table.
                    extra += &format!("\n[admin]\nlisten = \"127.0.0.1:{}\"\n{keys}\n", admin[i]);
                }
                let upstream = self.upstreams.iter().rev().find(|(n, _)| *n == i);
                NodeSpec {
                    node_id: &format!("node{i}"),
                    locks: &locks,
                    client_port: ports[i],
                    upstream: upstream.map_or(up[i].addr, |(_, a)| *a),
                    check_period_ms: self.check_period_ms,
                    health: self.health,
                    extra,
                    zookeeper: self.zookeeper.as_ref().map(|keys| keys(i)),
                }
                .write(dir.path())
            })
            .collect();
        Pair {
            up,
            ports,
            admin,
            configs,
            nodes: Vec::new(),
            dir,
        }
    }

    /// `build`, then node0 until it holds the lock, then the others until they contend.
    pub async fn start(self) -> Pair {
        let mut p = self.build().await;
        for i in 0..p.configs.len() {
            let mut node = p.spawn(i).await;
            if i == 0 {
                node.wait_active().await;
            } else {
                node.wait_standby("contending").await;
            }
            p.nodes.push(node);
        }
        p
    }
}
