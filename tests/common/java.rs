//! Java in the loop: compiling the small Java programs of tests/artemis/, running them as child
//! processes whose stdout lines are events, and finding the Apache Artemis distribution and the
//! Qpid JMS client that `.ci/run` resolved into ~/.m2 (tests/artemis/pom.xml).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::BOUND;

/// The folder of the Java sources and the pom.
pub fn sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/artemis")
}

/// The options of every test JVM but Artemis's brokers: a small heap, the serial collector,
/// C1 only (2 cores, shared).
pub const SMALL_JVM: [&str; 3] = ["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"];

fn missing(what: &str, hint: &str) -> bool {
    super::skip::skipped(&format!("{what} is missing ({hint})"));
    false
}

/// Whether `java` and `javac` run. Without them the tests are skipped with a note, except
/// under CI (CI=true), where they fail.
pub fn jdk_available() -> bool {
    let runs = |cmd: &str| {
        std::process::Command::new(cmd)
            .arg("-version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    runs("java") && runs("javac")
        || missing(
            "a JDK (java, javac)",
            "apt-get install default-jdk-headless",
        )
}

/// Compiles `tests/artemis/<class>.java` into `dir` with `classpath`; returns `dir`.
pub fn compile(dir: &Path, class: &str, classpath: &str) -> PathBuf {
    let out = std::process::Command::new("javac")
        .args(["-nowarn", "-d"])
        .arg(dir)
        .args(["-cp", classpath])
        .arg(sources().join(format!("{class}.java")))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "javac {class}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.to_owned()
}

/// What Maven resolved for tests/artemis/pom.xml.
pub struct Artifacts {
    /// An unpacked, unmodified Apache Artemis 2.40.0 (`bin/artemis`, `lib/`).
    pub artemis_home: PathBuf,
    /// The Qpid JMS client and its dependencies, `:`-joined.
    pub qpid_classpath: String,
}

/// The artifacts, read offline from ~/.m2 once per test binary; the distribution is unpacked
/// once into the target folder. `None` (skipped, or a failure under CI) when they are missing.
pub fn artifacts() -> Option<&'static Artifacts> {
    static ONCE: OnceLock<Option<Artifacts>> = OnceLock::new();
    ONCE.get_or_init(resolve).as_ref()
}

fn resolve() -> Option<Artifacts> {
    if !jdk_available() {
        return None;
    }
    let hint = "run: mvn -f tests/artemis/pom.xml dependency:resolve";
    let cp_file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("artemis-classpath.txt");
    let status = std::process::Command::new("mvn")
        .args(["-o", "-q", "-B", "-f"])
        .arg(sources().join("pom.xml"))
        .arg("dependency:build-classpath")
        .arg(format!("-Dmdep.outputFile={}", cp_file.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !status.is_ok_and(|s| s.success()) {
        missing(
            "Apache Artemis 2.40.0 or the Qpid JMS client in ~/.m2",
            hint,
        );
        return None;
    }
    let cp = std::fs::read_to_string(&cp_file).unwrap();
    let (tarballs, jars): (Vec<&str>, Vec<&str>) =
        cp.trim().split(':').partition(|p| p.ends_with(".tar.gz"));
    let tarball = tarballs
        .first()
        .expect("the Artemis distribution on the classpath");
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("apache-artemis-2.40.0");
    if !home.join("bin/artemis").exists() {
        // Unpack beside, then rename: a half-unpacked tree never has the final name.
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("artemis-unpack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        let ok = std::process::Command::new("tar")
            .arg("xzf")
            .arg(tarball)
            .arg("-C")
            .arg(&tmp)
            .status()
            .unwrap()
            .success();
        assert!(ok, "could not unpack {tarball}");
        if std::fs::rename(tmp.join("apache-artemis-2.40.0"), &home).is_err() {
            assert!(
                home.join("bin/artemis").exists(),
                "could not place {}",
                home.display()
            );
        }
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Some(Artifacts {
        artemis_home: home,
        qpid_classpath: jars.join(":"),
    })
}

/// A Java child process: stdout lines arrive as events, stdin takes commands. Killed
/// (SIGKILL) when dropped; its output is printed if the test failed.
pub struct Jvm {
    pub name: String,
    pub child: Child,
    pub pid: i32,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every stdout line consumed so far.
    pub seen: Vec<String>,
    log: PathBuf,
    _reader: JoinHandle<()>,
}

impl Jvm {
    /// Starts `cmd` with piped stdin/stdout; stderr goes to `<dir>/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Jvm {
        let log = dir.join(format!("{name}.log"));
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap() as i32;
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut r = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = r.next_line().await {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Jvm {
            name: name.to_owned(),
            child,
            pid,
            stdin,
            lines,
            seen: Vec::new(),
            log,
            _reader: reader,
        }
    }

    /// `java SMALL_JVM -cp CP CLASS ARGS...`.
    pub fn java(name: &str, classpath: &str, class: &str, args: &[&str], dir: &Path) -> Jvm {
        let mut cmd = Command::new("java");
        cmd.args(SMALL_JVM)
            .arg("-cp")
            .arg(classpath)
            .arg(class)
            .args(args);
        Jvm::spawn(name, cmd, dir)
    }

    pub async fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Waits (up to `bound`) for a stdout line containing `prefix`; returns it.
    pub async fn wait_line_within(&mut self, bound: Duration, prefix: &str) -> String {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if line.contains(prefix) {
                        return line;
                    }
                }
                Ok(None) => panic!(
                    "{}: exited before printing {prefix:?}; printed {:?}\n{}",
                    self.name,
                    self.seen,
                    self.log_text()
                ),
                Err(_) => panic!(
                    "{}: no {prefix:?} within {bound:?}; printed {:?}\n{}",
                    self.name,
                    self.seen,
                    self.log_text()
                ),
            }
        }
    }

    pub async fn wait_line(&mut self, prefix: &str) -> String {
        self.wait_line_within(BOUND, prefix).await
    }

    /// SIGKILL, and reap.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(BOUND, self.child.wait()).await;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Jvm {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("LOCKGATE_TEST_LOGS").is_some() {
            eprintln!(
                "---- {} printed ----\n{}\n---- stderr of {} ----\n{}",
                self.name,
                self.seen.join("\n"),
                self.name,
                self.log_text()
            );
        }
    }
}
