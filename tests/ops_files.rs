//! The operations files shipped beside the binary: the systemd units in `systemd/` and the
//! Grafana dashboard in `config/grafana/`.
//!
//! - Units: `systemd-analyze verify` is clean and `systemd-analyze security --offline=true`
//!   rates each unit at most 2.0 ("OK"); their command lines are the binary's real CLI. Without
//!   `systemd-analyze` the two systemd-analyze tests print a note and pass, except under `CI`,
//!   where they fail.
//! - Dashboard: valid JSON, enough panels laid out without overlap, every query balanced, and
//!   every `lockgate_*` name it queries declared in `src/metrics.rs`. With `promtool` on the
//!   machine every query is also parsed by Prometheus's own parser.
//! - Alert rules (`config/prometheus/`): the six alerts the issue names are there, query only
//!   declared metrics, pass `promtool check rules` and their unit tests
//!   (`promtool test rules lockgate-alerts.test.yml`). Without promtool: skipped, visibly.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

#[path = "common/skip.rs"]
mod skip;

/// Bound on each external command: generous, only there so a wedged tool fails the test.
const BOUND: Duration = Duration::from_secs(60);

const UNITS: [&str; 2] = ["lockgate.service", "lockgate@.service"];
/// The instance the template is verified as.
const INSTANCE: &str = "server0";
/// The binary path the units name.
const INSTALLED_BIN: &str = "/usr/local/bin/lockgate";
/// Highest acceptable `systemd-analyze security` exposure ("OK" or better).
const MAX_EXPOSURE: f64 = 2.0;
/// Label names the dashboard may use: lockgate's, Prometheus's target labels, histogram `le`.
const LABELS: [&str; 10] = [
    "lock",
    "route",
    "reason",
    "direction",
    "to",
    "version",
    "commit",
    "instance",
    "job",
    "le",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs a command with a time bound; kills it past the bound.
fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(BOUND) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{shown}: {e}")),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("{shown} did not finish within {BOUND:?}");
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// systemd units

/// `systemd-analyze`, or `None` (with a note) when it is not installed; under `CI` its absence
/// fails the test.
fn systemd_analyze() -> Option<PathBuf> {
    skip::tool("systemd-analyze", "systemd")
}

/// The units copied into a temporary folder with their binary path pointing at the binary this
/// test run built, as `systemd-analyze verify` requires every Exec*= command to exist.
struct StagedUnits {
    dir: tempfile::TempDir,
}

impl StagedUnits {
    fn new() -> StagedUnits {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let exe = bin.join("lockgate");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_lockgate"), &exe).unwrap();
        let exe = exe.to_str().unwrap();
        assert!(!exe.contains(char::is_whitespace), "temp path {exe:?}");
        for unit in UNITS {
            let body = read(&format!("systemd/{unit}"));
            assert!(
                body.contains(INSTALLED_BIN),
                "{unit} does not run {INSTALLED_BIN}"
            );
            std::fs::write(dir.path().join(unit), body.replace(INSTALLED_BIN, exe)).unwrap();
        }
        StagedUnits { dir }
    }

    /// What to hand to systemd-analyze for each unit: the plain unit, and the template as an
    /// instance (systemd loads `lockgate@.service` for it).
    fn targets(&self) -> Vec<PathBuf> {
        vec![
            self.dir.path().join("lockgate.service"),
            self.dir.path().join(format!("lockgate@{INSTANCE}.service")),
        ]
    }
}

fn analyze(tool: &Path) -> Command {
    let mut cmd = Command::new(tool);
    cmd.env("SYSTEMD_LOG_COLOR", "0")
        .env("SYSTEMD_PAGER", "cat")
        .env("SYSTEMD_LOG_LEVEL", "info");
    cmd
}

#[test]
fn systemd_units_verify_clean() {
    let Some(tool) = systemd_analyze() else {
        return;
    };
    let staged = StagedUnits::new();
    for target in staged.targets() {
        // --man=no: no man pages in a container; --generators=no: nothing on the host matters.
        let out = run(analyze(&tool)
            .args(["verify", "--man=no", "--generators=no", "--no-pager"])
            .arg(&target));
        let all = text(&out);
        eprintln!(
            "$ systemd-analyze verify --man=no --generators=no --no-pager {}\n{all}",
            target.display()
        );
        // verify exits 0 on most warnings; the warnings themselves are the failure. Lines about
        // other units (the host's targets) are not ours to fix.
        let ours: Vec<&str> = all.lines().filter(|l| l.contains("lockgate")).collect();
        assert!(
            out.status.success() && ours.is_empty(),
            "systemd-analyze verify {} is not clean ({}):\n{}",
            target.display(),
            out.status,
            ours.join("\n")
        );
    }
}

/// "→ Overall exposure level for lockgate.service: 1.3 OK 🙂" → 1.3
fn overall_exposure(output: &str) -> Option<f64> {
    let line = output
        .lines()
        .find(|l| l.contains("Overall exposure level for"))?;
    line.rsplit(": ")
        .next()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn overall_exposure_is_parsed() {
    let sample = "✗ UMask= ...  0.1\n\n→ Overall exposure level for lockgate.service: 1.3 OK 🙂\n";
    assert_eq!(overall_exposure(sample), Some(1.3));
    assert_eq!(
        overall_exposure("Overall exposure level for a@b.service: 9.6 UNSAFE"),
        Some(9.6)
    );
    assert_eq!(overall_exposure("nothing here"), None);
}

#[test]
fn systemd_units_are_hardened() {
    let Some(tool) = systemd_analyze() else {
        return;
    };
    let staged = StagedUnits::new();
    for target in staged.targets() {
        let out = run(analyze(&tool)
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&target));
        let all = text(&out);
        let exposure = overall_exposure(&all).unwrap_or_else(|| {
            panic!(
                "no overall exposure level from systemd-analyze security {} ({}):\n{all}",
                target.display(),
                out.status
            )
        });
        eprintln!(
            "systemd-analyze security --offline=true {}: exposure {exposure}",
            target.display()
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("lockgate")).collect();
        assert!(
            warnings.is_empty(),
            "unit warnings while rating {}:\n{}",
            target.display(),
            warnings.join("\n")
        );
        assert!(
            exposure <= MAX_EXPOSURE,
            "{} is rated {exposure} (> {MAX_EXPOSURE}):\n{all}",
            target.display()
        );
    }
}

/// `Key=value` lines of a unit (the last one wins where the key is repeated, as for most keys).
fn directives(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(['#', ';', '[']))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn values<'a>(d: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    d.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The units say what issue 5 asks of them, and their command lines are the binary's real CLI:
/// `check` accepts a good config and exits 2 on a bad one (what RestartPreventExitStatus= and
/// the ExecStartPre= gate rely on). Needs no systemd.
#[test]
fn systemd_units_match_the_cli() {
    let bin = env!("CARGO_BIN_EXE_lockgate");
    for (unit, config) in [
        ("lockgate.service", "/etc/lockgate/lockgate.toml"),
        ("lockgate@.service", "/etc/lockgate/%i.toml"),
    ] {
        let d = directives(&read(&format!("systemd/{unit}")));
        let one = |key: &str| -> &str {
            let v = values(&d, key);
            assert!(!v.is_empty(), "{unit}: no {key}=");
            v[v.len() - 1]
        };
        assert_eq!(one("Type"), "notify", "{unit}");
        assert_eq!(one("Restart"), "on-failure", "{unit}");
        assert_eq!(one("RestartPreventExitStatus"), "2", "{unit}");
        assert_eq!(one("User"), "lockgate", "{unit}");
        assert_eq!(one("NoNewPrivileges"), "yes", "{unit}");
        assert_eq!(one("ProtectSystem"), "strict", "{unit}");
        assert_eq!(
            one("CapabilityBoundingSet"),
            "CAP_NET_BIND_SERVICE",
            "{unit}"
        );
        assert_eq!(
            one("RestrictAddressFamilies"),
            "AF_INET AF_INET6 AF_UNIX",
            "{unit}"
        );
        assert!(
            one("WatchdogSec")
                .trim_end_matches('s')
                .parse::<u32>()
                .is_ok(),
            "{unit}: WatchdogSec"
        );
        let nofile: u64 = one("LimitNOFILE").parse().unwrap();
        assert!(nofile >= 6 * 10_000, "{unit}: LimitNOFILE {nofile}");
        assert!(values(&d, "IPAddressDeny").is_empty(), "{unit}");

        assert_eq!(
            one("ExecStart"),
            format!("{INSTALLED_BIN} run --config {config}")
        );
        let check = format!("{INSTALLED_BIN} check --quiet --config {config}");
        assert_eq!(values(&d, "ExecStartPre"), [check.as_str()], "{unit}");
        assert_eq!(
            values(&d, "ExecReload"),
            [check.as_str(), "/bin/kill -HUP $MAINPID"],
            "{unit}"
        );

        // The check command, pointed at the repository's configs.
        let good = if unit.contains('@') {
            format!("config/examples/ha-pair/{INSTANCE}.toml")
        } else {
            "config/lockgate.toml".to_owned()
        };
        let argv: Vec<&str> = check.split_whitespace().skip(1).collect();
        assert_eq!(argv[..3], ["check", "--quiet", "--config"]);
        let out = run(Command::new(bin).args(&argv[..3]).arg(root().join(&good)));
        assert!(
            out.status.success(),
            "{unit}: check {good}:\n{}",
            text(&out)
        );
        // Quiet: nothing for the journal when the config is valid.
        assert!(
            out.stdout.is_empty() && out.stderr.is_empty(),
            "{unit}: {}",
            text(&out)
        );
        let bad = root().join("tests/bad-configs/07-zero-check-period.toml");
        let out = run(Command::new(bin).args(&argv[..3]).arg(&bad));
        assert_eq!(out.status.code(), Some(2), "{unit}: {}", text(&out));
        assert!(
            !out.stderr.is_empty(),
            "{unit}: the reason goes to the journal"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Grafana dashboard

const DASHBOARD: &str = "config/grafana/lockgate.json";

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// Every panel that shows data, including those nested in collapsed rows.
fn data_panels(d: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a [Value], out: &mut Vec<&'a Value>) {
        for p in panels {
            if p["type"] == "row" {
                walk(p["panels"].as_array().map_or(&[], Vec::as_slice), out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(d["panels"].as_array().expect("panels"), &mut out);
    out
}

/// Every PromQL expression: panel targets and annotations (any `expr` key), and the selectors
/// inside the template variables' `label_values(...)` queries.
fn queries(d: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(d, &mut out);
    for var in d["templating"]["list"].as_array().expect("templating") {
        if var["type"] == "query" {
            let q = var["definition"].as_str().expect("variable definition");
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|r| r.rsplit_once(','))
                .map(|(sel, _label)| sel.trim().to_owned())
                .unwrap_or_else(|| {
                    panic!("variable query {q:?} is not label_values(selector, label)")
                });
            out.push(inner);
        }
    }
    out
}

/// Brackets balanced and properly nested, outside string literals.
fn balanced(expr: &str) -> Result<(), String> {
    let mut stack = Vec::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in expr.char_indices() {
        if let Some(q) = quote {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                _ if c == q => quote = None,
                _ => {}
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let want = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(want) {
                    return Err(format!("unmatched {c:?} at byte {i}"));
                }
            }
            _ => {}
        }
    }
    match (quote, stack.last()) {
        (Some(q), _) => Err(format!("unterminated {q} string")),
        (None, Some(open)) => Err(format!("unclosed {open:?}")),
        (None, None) => Ok(()),
    }
}

/// The expression with every string literal emptied (`"a,b"` -> `""`).
fn without_strings(expr: &str) -> String {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in expr.chars() {
        match quote {
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(q) if c == q => {
                quote = None;
                out.push(c);
            }
            Some(_) => {}
            None => {
                if matches!(c, '"' | '\'' | '`') {
                    quote = Some(c);
                }
                out.push(c);
            }
        }
    }
    out
}

/// `lockgate_*` identifiers outside string literals.
fn metric_names(expr: &str) -> BTreeSet<String> {
    without_strings(expr)
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("lockgate_"))
        .map(str::to_owned)
        .collect()
}

/// Label names in `by (...)`/`without (...)` and in `{name="..."}` matchers.
fn label_names(expr: &str) -> BTreeSet<String> {
    let expr = without_strings(expr);
    let expr = expr.as_str();
    let mut out = BTreeSet::new();
    for kw in ["by", "without"] {
        let mut rest = expr;
        while let Some(at) = rest.find(kw) {
            let before_ok = rest[..at]
                .chars()
                .last()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
            let after = rest[at + kw.len()..].trim_start();
            if before_ok && let Some(list) = after.strip_prefix('(') {
                let list = &list[..list.find(')').unwrap_or(list.len())];
                out.extend(
                    list.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned),
                );
            }
            rest = &rest[at + kw.len()..];
        }
    }
    let mut rest = expr;
    while let Some(open) = rest.find('{') {
        let body = &rest[open + 1..];
        let close = body.find('}').unwrap_or(body.len());
        for matcher in body[..close].split(',') {
            let name: String = matcher
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
        rest = &body[close..];
    }
    out
}

/// Metric names declared in `src/metrics.rs` as `pub const NAME: &str = "lockgate_...";`.
fn declared_metrics() -> BTreeSet<String> {
    let src = read("src/metrics.rs");
    let mut out = BTreeSet::new();
    for line in src.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("pub const ")
            && rest.contains(": &str")
            && let Some((_, value)) = rest.split_once('"')
            && let Some((name, _)) = value.split_once('"')
            && name.starts_with("lockgate_")
        {
            out.insert(name.to_owned());
        }
    }
    assert!(!out.is_empty(), "no metric names found in src/metrics.rs");
    out
}

fn without_histogram_suffix(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

#[test]
fn dashboard_is_a_grafana_dashboard() {
    let d = dashboard();
    assert_eq!(d["title"], "lockgate");
    assert_eq!(d["uid"], "lockgate");
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");

    let vars = d["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    let ds = var("DS_PROMETHEUS").expect("a DS_PROMETHEUS variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    assert_eq!(
        var("instance").expect("an instance variable")["type"],
        "query"
    );

    let panels = data_panels(&d);
    assert!(panels.len() >= 8, "only {} panels", panels.len());
    let mut ids = HashSet::new();
    for p in &panels {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} used twice");
    }
    // No collapsed rows, so every top-level panel's box is where it is drawn: none may overlap.
    let mut boxes: Vec<(&str, [u64; 4])> = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        let title = p["title"].as_str().expect("panel title");
        assert!(p["collapsed"] != true, "row {title:?} is collapsed");
        let g = &p["gridPos"];
        let b = ["x", "y", "w", "h"].map(|k| g[k].as_u64().expect("gridPos"));
        assert!(
            b[0] + b[2] <= 24 && b[2] > 0 && b[3] > 0,
            "{title}: gridPos {g}"
        );
        if let Some((other, _)) = boxes.iter().find(|(_, o)| {
            b[0] < o[0] + o[2] && o[0] < b[0] + b[2] && b[1] < o[1] + o[3] && o[1] < b[1] + b[3]
        }) {
            panic!("panels {title:?} and {other:?} overlap");
        }
        boxes.push((title, b));
    }
    for p in &panels {
        let title = p["title"].as_str().unwrap();
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{title}"
            );
        }
    }
}

#[test]
fn dashboard_queries_are_well_formed() {
    let d = dashboard();
    let qs = queries(&d);
    assert!(qs.len() >= 8, "only {} queries", qs.len());
    let mut problems = Vec::new();
    for q in &qs {
        if let Err(e) = balanced(q) {
            problems.push(format!("{e}: {q}"));
        }
        if metric_names(q).is_empty() {
            problems.push(format!("no lockgate_* metric: {q}"));
        }
        for label in label_names(q) {
            if !LABELS.contains(&label.as_str()) {
                problems.push(format!("unknown label {label:?}: {q}"));
            }
        }
    }
    // A histogram has no series under its bare name: only _bucket, _sum and _count.
    let histograms: BTreeSet<String> = qs
        .iter()
        .flat_map(|q| metric_names(q))
        .filter_map(|n| n.strip_suffix("_bucket").map(str::to_owned))
        .collect();
    for q in &qs {
        for name in metric_names(q) {
            if histograms.contains(&name) {
                problems.push(format!("histogram {name} queried without a suffix: {q}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn dashboard_queries_use_declared_metrics() {
    let declared = declared_metrics();
    let used: BTreeSet<String> = queries(&dashboard())
        .iter()
        .flat_map(|q| metric_names(q))
        .map(|n| without_histogram_suffix(&n).to_owned())
        .collect();
    let missing: Vec<&String> = used.difference(&declared).collect();
    assert!(
        missing.is_empty(),
        "{DASHBOARD} queries metrics not declared in src/metrics.rs: {}",
        missing
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Every query through Prometheus's own parser, as recording rules for `promtool check rules`,
/// with Grafana's variables given concrete values. Skipped without promtool.
#[test]
fn dashboard_queries_parse_with_promtool() {
    let Some(promtool) = promtool() else {
        return;
    };
    let rules: Vec<Value> = queries(&dashboard())
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let expr = q
                .replace("$__rate_interval", "5m")
                .replace("$__range", "6h")
                .replace("$__interval", "1m")
                .replace("$instance", ".*")
                .replace("$lock", ".*")
                .replace("$route", ".*");
            serde_json::json!({ "record": format!("dashboard:query_{i}"), "expr": expr })
        })
        .collect();
    let file = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let dir = tempfile::tempdir().unwrap();
    // JSON is YAML.
    let path = dir.path().join("dashboard-rules.yml");
    std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    let out = run(Command::new(promtool)
        .args(["check", "rules", "--lint=none"])
        .arg(&path));
    assert!(out.status.success(), "promtool:\n{}", text(&out));
}

#[test]
fn query_helpers() {
    assert!(balanced(r#"sum by (a) (rate(x{a=~"(("}[5m]))"#).is_ok());
    assert!(balanced("sum(rate(x[5m])").is_err());
    assert!(balanced("x{a=\"b\"]").is_err());
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.5, sum by (le) (rate(lockgate_a_bucket{x="lockgate_no"}[5m]))) / lockgate_b"#
        ),
        BTreeSet::from(["lockgate_a_bucket".to_owned(), "lockgate_b".to_owned()])
    );
    assert_eq!(
        label_names(r#"sum by (instance, lock) (x{route=~"a,b", to="active"}) / ignoring_by"#),
        BTreeSet::from(["instance", "lock", "route", "to"].map(str::to_owned))
    );
    assert_eq!(
        without_histogram_suffix("lockgate_failover_seconds_bucket"),
        "lockgate_failover_seconds"
    );
}

// ---------------------------------------------------------------------------------------------
// Alert rules

const ALERTS: &str = "config/prometheus/lockgate-alerts.yml";
const ALERT_TESTS: &str = "config/prometheus/lockgate-alerts.test.yml";

/// `promtool` on PATH, or `None` after a visible "skipped" (a failure under CI).
fn promtool() -> Option<PathBuf> {
    skip::tool("promtool", "prometheus")
}

/// (alert name, expression) of every rule, read line by line (the file is ours: `- alert:`
/// then `expr:`, either inline or as a `>-` block).
fn alert_rules() -> Vec<(String, String)> {
    let text = read(ALERTS);
    let mut out: Vec<(String, String)> = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("- alert:") {
            out.push((name.trim().to_owned(), String::new()));
        } else if let Some(expr) = t.strip_prefix("expr:") {
            let expr = expr.trim();
            let mut full = String::new();
            if expr == ">-" {
                let indent = line.len() - line.trim_start().len();
                while let Some(next) = lines.peek() {
                    if next.len() - next.trim_start().len() <= indent {
                        break;
                    }
                    full.push_str(next.trim());
                    full.push(' ');
                    lines.next();
                }
            } else {
                full.push_str(expr);
            }
            if let Some(last) = out.last_mut() {
                last.1 = full.trim().to_owned();
            }
        }
    }
    out
}

#[test]
fn alert_rules_cover_the_failures_and_use_declared_metrics() {
    let rules = alert_rules();
    let names: BTreeSet<&str> = rules.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "LockgateSplitBrain",
        "LockgateNoActiveNode",
        "LockgateFlapping",
        "LockgateLockBackendDown",
        "LockgateConfigReloadFailed",
        "LockgateUpstreamDown",
    ] {
        assert!(
            names.contains(want),
            "{ALERTS} has no alert {want}: {names:?}"
        );
    }
    let declared = declared_metrics();
    for (name, expr) in &rules {
        assert!(!expr.is_empty(), "{name}: no expr");
        balanced(expr).unwrap_or_else(|e| panic!("{name}: {e}: {expr}"));
        for m in metric_names(expr) {
            let base = without_histogram_suffix(&m);
            assert!(
                declared.contains(base),
                "{name} queries {m}, not in src/metrics.rs"
            );
        }
        for l in label_names(expr) {
            assert!(
                LABELS.contains(&l.as_str()),
                "{name} uses label {l}: {expr}"
            );
        }
    }
    // Every alert has a unit test that expects it to fire.
    let tests = read(ALERT_TESTS);
    for name in names {
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "{ALERT_TESTS} does not test {name}"
        );
    }
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = promtool() else {
        return;
    };
    let out = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(root().join(ALERTS)));
    assert!(
        out.status.success(),
        "promtool check rules:\n{}",
        text(&out)
    );
    let out = run(Command::new(&promtool)
        .args(["test", "rules"])
        .arg(root().join(ALERT_TESTS)));
    assert!(out.status.success(), "promtool test rules:\n{}", text(&out));
    assert!(text(&out).contains("SUCCESS"), "{}", text(&out));
}

// ---------------------------------------------------------------------------------------------
// The installed configuration

const INSTALLED_CONFIG: &str = "config/installed/lockgate.toml";
const INSTALLED_LOCKS: &str = "/var/lib/lockgate/locks";

/// What the installed config names is what the install creates: its locks folder is made by
/// lockgate.tmpfiles and is the unit's StateDirectory, and it listens on loopback only.
#[test]
fn the_installed_config_names_what_the_install_creates() {
    let config = read(INSTALLED_CONFIG);
    assert!(
        config.contains(&format!("locks-folder = \"{INSTALLED_LOCKS}\"")),
        "{config}"
    );
    let tmpfiles = read("systemd/lockgate.tmpfiles");
    assert!(
        tmpfiles
            .lines()
            .any(|l| l.starts_with(&format!("d {INSTALLED_LOCKS} 0700 lockgate lockgate"))),
        "{tmpfiles}"
    );
    let unit_text = read("systemd/lockgate.service");
    let unit = directives(&unit_text);
    let state = values(&unit, "StateDirectory").join(" ");
    assert!(
        state.split_whitespace().any(|d| d == "lockgate/locks"),
        "{state}"
    );
    let mut listens = 0;
    for line in config.lines().filter(|l| l.starts_with("listen = ")) {
        let addr: std::net::SocketAddr = line
            .trim_start_matches("listen = ")
            .trim_matches('"')
            .parse()
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(addr.ip().is_loopback(), "{INSTALLED_CONFIG}: {line}");
        listens += 1;
    }
    assert_eq!(listens, 3, "admin and two routes");
}

/// A fresh install into a scratch root: `systemd-sysusers` and `systemd-tmpfiles --create`
/// with the shipped files, then `lockgate check` on the installed config (its locks folder
/// moved under that root) passes, prints nothing with --quiet, and every address it listens
/// on is loopback.
#[test]
fn the_installed_config_passes_check_on_a_fresh_install() {
    let tools = ["systemd-sysusers", "systemd-tmpfiles"].map(|t| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(t))
                .find(|p| p.is_file())
        })
    });
    let [Some(sysusers), Some(tmpfiles)] = tools else {
        skip::skipped(
            "systemd-sysusers or systemd-tmpfiles is missing (apt-get install -y systemd)",
        );
        return;
    };
    let root_dir = tempfile::tempdir().unwrap();
    let r = root_dir.path();
    for (from, to) in [
        (
            "systemd/lockgate.sysusers",
            "usr/lib/sysusers.d/lockgate.conf",
        ),
        (
            "systemd/lockgate.tmpfiles",
            "usr/lib/tmpfiles.d/lockgate.conf",
        ),
        (INSTALLED_CONFIG, "etc/lockgate/lockgate.toml"),
    ] {
        let to = r.join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(root().join(from), &to).unwrap();
    }
    let root_arg = format!("--root={}", r.display());
    let out = run(Command::new(&sysusers).arg(&root_arg));
    assert!(out.status.success(), "systemd-sysusers: {}", text(&out));
    let out = run(Command::new(&tmpfiles).args(["--create", &root_arg]));
    assert!(out.status.success(), "systemd-tmpfiles: {}", text(&out));
    let locks = r.join(INSTALLED_LOCKS.trim_start_matches('/'));
    assert!(locks.is_dir(), "{} not created", locks.display());

    let installed = r.join("etc/lockgate/lockgate.toml");
    let moved = std::fs::read_to_string(&installed).unwrap().replace(
        &format!("\"{INSTALLED_LOCKS}\""),
        &format!("\"{}\"", locks.display()),
    );
    std::fs::write(&installed, moved).unwrap();
    let bin = env!("CARGO_BIN_EXE_lockgate");
    let out = run(Command::new(bin)
        .args(["check", "--quiet", "--config"])
        .arg(&installed));
    assert!(out.status.success(), "check: {}", text(&out));
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "{}",
        text(&out)
    );
    let out = run(Command::new(bin)
        .args(["check", "--json", "--config"])
        .arg(&installed));
    assert!(out.status.success(), "check: {}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut addrs: Vec<String> = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["listen"].as_str().unwrap().to_owned())
        .collect();
    addrs.push(v["admin"].as_str().unwrap().to_owned());
    for a in &addrs {
        let a: std::net::SocketAddr = a.parse().unwrap();
        assert!(a.ip().is_loopback(), "{a}");
    }
    assert_eq!(
        v["locks"][0]["locks_folder"],
        locks.display().to_string(),
        "{v}"
    );
}
