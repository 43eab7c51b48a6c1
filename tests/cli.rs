//! The command line as a script sees it: exit codes, `--json`, `check --quiet`, paths as the
//! daemon uses them, `--version`, step-down/resume refusing an unknown lock or another node's
//! daemon, log formats, and a fatal start error printed once.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};

use common::commands::{cli, text};
use common::config_file::{file_spec, scratch};
use common::*;
use serde_json::Value;

/// `lockgate ARGS --config CONFIG`; asserts that it exited with `code`.
async fn cli_exits(args: &[&str], config: &Path, code: i32) -> Output {
    let o = cli(args, config).await;
    assert_eq!(o.status.code(), Some(code), "{}", text(&o));
    o
}

/// Asserts that `o`'s stdout contains `needle`.
fn says(o: &Output, needle: &str) {
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(needle), "no {needle:?} in\n{}", text(o));
}

/// Asserts that `o`'s stderr contains `needle`.
fn warns(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(needle), "no {needle:?} in\n{}", text(o));
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(o)))
}

fn spec<'a>(id: &'a str, locks: &'a Path, up: std::net::SocketAddr, extra: String) -> NodeSpec<'a> {
    NodeSpec {
        check_period_ms: 500,
        extra,
        ..file_spec(id, locks, free_port(), up)
    }
}

#[tokio::test]
async fn status_exit_codes_and_json() {
    let (dir, locks) = scratch();
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let file = spec("node0", &locks, up, String::new()).write(dir.path());

    let out = cli_exits(&["status"], &file, 0).await;
    says(&out, "free (never held)");
    let out = cli_exits(&["status", "--json"], &file, 0).await;
    let v = json(&out);
    assert_eq!(v["all_known"], true, "{v}");
    assert_eq!(v["locks"][0]["lock"], "clients-lock", "{v}");
    assert_eq!(v["locks"][0]["state"], "free", "{v}");

    // A ZooKeeper nobody answers for: the state is unknown, exit 3, and the client library's
    // INFO chatter stays out of the output.
    let mut zk = spec("node1", &locks, up, String::new());
    let zk_keys = format!(
        "connect-string = \"127.0.0.1:{}\"\nnamespace = \"cli\"\nsession-ms = 4000\nconnection-ms = 1000",
        free_port()
    );
    zk.zookeeper = Some(zk_keys);
    let zk = zk.write(dir.path());
    let out = cli_exits(&["status"], &zk, 3).await;
    says(&out, "unknown: ZooKeeper unreachable");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("INFO"),
        "{}",
        text(&out)
    );
    let out = cli_exits(&["check"], &zk, 0).await;
    says(&out, "the negotiated session was not checked");
    let out = cli_exits(&["status", "--json"], &zk, 3).await;
    let v = json(&out);
    assert_eq!(v["all_known"], false, "{v}");
    assert_eq!(v["locks"][0]["state"], "unknown", "{v}");
    assert!(v["locks"][0]["error"].as_str().is_some(), "{v}");
}

#[tokio::test]
async fn check_quiet_json_paths_and_version() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("locks")).unwrap();
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    // A relative locks folder: check prints it absolute, as the daemon uses it.
    let config = spec("node0", Path::new("locks"), up, String::new()).write(dir.path());
    let want = dir.path().join("locks");

    let out = cli_exits(&["check", "--quiet"], &config, 0).await;
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "{}",
        text(&out)
    );

    let out = cli_exits(&["check"], &config, 0).await;
    let shown = format!("locks-folder = \"{}\"", want.display());
    says(&out, &shown);

    let out = cli_exits(&["check", "--json"], &config, 0).await;
    let v = json(&out);
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(
        v["locks"][0]["locks_folder"],
        want.display().to_string(),
        "{v}"
    );
    assert_eq!(v["locks"][0]["failover"]["holder_stops_ms"], 0, "{v}");

    // A bad config: exit 2, and with --json an object on stdout as well.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "node-id = 3\n").unwrap();
    for args in [&["check", "--quiet"][..], &["check", "--json"][..]] {
        let out = cli_exits(args, &bad, 2).await;
        warns(&out, "node-id");
    }
    let out = cli(&["check", "--json"], &bad).await;
    assert_eq!(json(&out)["valid"], false);

    let out = lockgate().arg("--version").output().await.unwrap();
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{v}");
    assert!(
        v.contains("(commit ") || v.contains("(unknown commit)"),
        "{v}"
    );
    // In a clone, the commit is named.
    if Path::new(env!("CARGO_MANIFEST_DIR")).join(".git").exists() {
        assert!(v.contains("(commit "), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_down_refuses_unknown_locks_and_other_nodes() {
    let (dir, locks) = scratch();
    let up = Upstream::start().await;
    let admin = free_port();
    let extra = format!("\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n");
    let mine = spec("node0", &locks, up.addr, extra.clone()).write(dir.path());
    let mut node = Node::start("node0", &mine, dir.path()).await;
    node.wait_active().await;

    // Unknown lock name: exit 2, the daemon is not asked.
    let out = cli_exits(&["step-down", "--lock", "no-such-lock"], &mine, 2).await;
    warns(&out, "no lock-coordinator named");

    // A config naming another node but the same admin port: exit 4, nothing stepped down.
    let other_dir = tempfile::tempdir().unwrap();
    let theirs = spec("node9", &locks, up.addr, extra).write(other_dir.path());
    let out = cli_exits(
        &["step-down", "--lock", "clients-lock", "--json"],
        &theirs,
        4,
    )
    .await;
    assert_eq!(json(&out)["error"], "wrong_daemon");
    warns(&out, "is node \"node0\", not \"node9\"");
    let (code, body) = http(admin, "GET", "/status", &[]).await;
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["locks"]["clients-lock"]["held"], true, "{v}");

    // The right node: words by default, JSON on request.
    let step_down = [
        "step-down",
        "--lock",
        "clients-lock",
        "--hold-off-ms",
        "60000",
    ];
    let out = cli_exits(&step_down, &mine, 0).await;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("lock clients-lock on node node0: stepped down"),
        "{said}"
    );
    node.wait_standby("released: step_down").await;
    let out = cli_exits(&["resume", "--lock", "clients-lock", "--json"], &mine, 0).await;
    let v = json(&out);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["node_id"], "node0", "{v}");
    node.wait_active().await;

    // No daemon: exit 1.
    drop(node);
    cli_exits(&["resume", "--lock", "clients-lock"], &mine, 1).await;
}

/// Starts `lockgate [pre] run --config FILE` with `env`, stopping it by PID at the end; returns
/// its stderr after the first line matching `until` (or after exit).
async fn run_logs(
    pre: &[&str],
    config: &Path,
    env: &[(&str, &str)],
    until: &str,
) -> (String, Option<i32>) {
    use tokio::io::AsyncBufReadExt;
    let mut child = lockgate()
        .args(pre)
        .arg("run")
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(l))) => {
                seen.push_str(&l);
                seen.push('\n');
                if l.contains(until) {
                    break;
                }
            }
            Ok(_) => break,
            Err(_) => panic!("no line with {until:?} within {BOUND:?}:\n{seen}"),
        }
    }
    let pid = child.id().map(|p| p as i32);
    if let Some(pid) = pid {
        terminate(pid);
    }
    let status = tokio::time::timeout(BOUND, child.wait())
        .await
        .unwrap()
        .unwrap();
    (seen, status.code())
}

fn terminate(pid: i32) {
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::TERM,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_formats_and_a_fatal_error_said_once() {
    let (dir, locks) = scratch();
    let up = Upstream::start().await;
    let config = spec("node0", &locks, up.addr, String::new()).write(dir.path());

    // JSON: every line is an object with a level and a message.
    let (log, _) = run_logs(&["--log-format", "json"], &config, &[], "lock acquired").await;
    for l in log.lines() {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{l}"
        );
        assert!(v["timestamp"].is_string(), "{l}");
    }
    // Under journald: no timestamps (journald stamps lines itself).
    let (log, _) = run_logs(
        &[],
        &config,
        &[("JOURNAL_STREAM", "8:1234")],
        "lock acquired",
    )
    .await;
    for l in log.lines() {
        let first = l.split_whitespace().next().unwrap_or("");
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&first),
            "timestamp (or no level first) under journald: {l}"
        );
    }
    let (log, _) = run_logs(
        &["--log-format", "json"],
        &config,
        &[("JOURNAL_STREAM", "8:1234")],
        "lock acquired",
    )
    .await;
    for l in log.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(v.get("timestamp").is_none(), "{l}");
    }

    // A fatal start error (an open route's port taken): exit 1, said once.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let extra = format!(
        "\n[[route]]\nname = \"mirror\"\nlisten = \"127.0.0.1:{port}\"\nforward-to = \"{}\"\n",
        up.addr
    );
    let bad = spec("node1", &locks, up.addr, extra).write(dir.path());
    let (log, code) = run_logs(&[], &bad, &[], "\u{0}never").await;
    assert_eq!(code, Some(1), "{log}");
    let needle = format!("127.0.0.1:{port}");
    let said = log
        .lines()
        .filter(|l| l.contains(&needle) && l.contains("ERROR"))
        .count();
    let plain = log.lines().filter(|l| l.starts_with("lockgate: ")).count();
    assert_eq!(
        said + plain,
        1,
        "the fatal error should be said once:\n{log}"
    );
}

/// Stops the quick-start ensemble (by the PIDs its script recorded) on every exit path.
struct Ensemble {
    script: std::path::PathBuf,
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Ensemble {
    fn command(&self, what: &str) -> std::process::Command {
        let mut c = std::process::Command::new("bash");
        c.arg(&self.script)
            .arg(what)
            .env("LOCKGATE_ZK_DIR", self.dir.path())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }

    /// Runs the script's `start` (off the runtime: it waits for the ensemble); asserts it
    /// succeeded.
    async fn start(&self) -> Output {
        let mut c = self.command("start");
        let out = tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        out
    }
}

impl Drop for Ensemble {
    fn drop(&mut self) {
        let _ = self.command("stop").output();
    }
}

/// The README's three-server ZooKeeper quick start: the script starts an ensemble from
/// Debian's package, and the ha-pair-zookeeper example (its connect-string moved to the
/// script's ports) reaches it: `lockgate status` exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zookeeper_quickstart_serves_the_example() {
    if !common::zk::available() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = root.join("config/examples/ha-pair-zookeeper");
    let ports: Vec<u16> = (0..9).map(|_| free_port()).collect();
    let list = |p: &[u16]| p.iter().map(u16::to_string).collect::<Vec<_>>().join(" ");
    let zk = Ensemble {
        script: example.join("zookeeper-quickstart.sh"),
        dir: tempfile::tempdir().unwrap(),
        env: vec![
            ("LOCKGATE_ZK_CLIENT_PORTS".into(), list(&ports[0..3])),
            ("LOCKGATE_ZK_QUORUM_PORTS".into(), list(&ports[3..6])),
            ("LOCKGATE_ZK_ELECTION_PORTS".into(), list(&ports[6..9])),
        ],
    };
    let out = zk.start().await;
    says(&out, "ensemble ready");

    let connect = ports[0..3]
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let original = std::fs::read_to_string(example.join("server0.toml")).unwrap();
    let moved = original.replace(
        "connect-string = \"127.0.0.1:2181,127.0.0.1:2182,127.0.0.1:2183\"",
        &format!("connect-string = \"{connect}\""),
    );
    assert_ne!(moved, original, "the example's connect-string moved");
    let config = zk.dir.path().join("server0.toml");
    std::fs::write(&config, moved).unwrap();
    let out = cli_exits(&["status"], &config, 0).await;
    says(&out, "clients-lock (zookeeper");
    let out = zk.command("status").output().unwrap();
    let modes = String::from_utf8_lossy(&out.stdout);
    assert_eq!(modes.matches("leader").count(), 1, "{modes}");
    assert_eq!(modes.matches("follower").count(), 2, "{modes}");
    // tickTime 2000: the 18 s session is granted, and check says so.
    let out = cli_exits(&["check"], &config, 0).await;
    says(&out, "the servers grant the session asked: S = 18000 ms");

    // tickTime 500: the servers cap sessions at 10 s; check warns, with the figures for 10 s.
    let out = zk.command("stop").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut zk = zk;
    zk.env.push(("LOCKGATE_ZK_TICK_MS".into(), "500".into()));
    zk.start().await;
    let out = cli_exits(&["check"], &config, 0).await;
    says(
        &out,
        "WARNING: the servers grant a session of 10000 ms, not the 18000 ms asked",
    );
    says(&out, "with S = 10000 ms");
    let out = cli(&["check", "--json"], &config).await;
    assert_eq!(json(&out)["locks"][0]["negotiated_session_ms"], 10000);
    // --quiet never asks ZooKeeper.
    let out = cli(&["check", "--quiet"], &config).await;
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "{}",
        text(&out)
    );
}
