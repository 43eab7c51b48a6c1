//! Fuzzing the config parser and validator (proptest): mutated valid configs and arbitrary
//! text never panic, and every refusal names the file, a line and a key.

#[path = "common/toml_text.rs"]
mod toml_text;

use std::path::Path;
use std::sync::LazyLock;

use lockgate::config::{Config, ConfigError};
use proptest::prelude::*;
use toml_text::Toml;

/// The base config every case mutates: both backends, a health check, an admin endpoint, a
/// gated and an open route.
static VALID: LazyLock<String> = LazyLock::new(|| {
    Toml::node("server0", "shutdown-grace-ms = 5000\n")
        .admin_on("127.0.0.1:9464", "")
        .file_lock("clients-lock", "mirror-cluster-clients", Path::new("."), 1000)
        .health_check("127.0.0.1:61626", (500, 250, 2, 2))
        .coordinator(
            "zk-lock",
            "zookeeper",
            "other",
            "connect-string = \"127.0.0.1:2181,127.0.0.1:2182\"\nnamespace = \"lockgate\"\nsession-ms = 18000\n",
        )
        .route_on(
            "clients",
            "0.0.0.0:61616",
            "127.0.0.1:61626",
            "lock-coordinator = \"clients-lock\"\n",
        )
        .route_on("mirror", "0.0.0.0:61001", "127.0.0.1:61011", "")
        .into_text()
});

/// Every numeric key of the base config (and the optional ones), with the values that broke
/// `lockgate check` before every number had an upper bound.
const NUMERIC_KEYS: &[&str] = &[
    "shutdown-grace-ms",
    "check-period",
    "interval-ms",
    "timeout-ms",
    "rise",
    "fall",
    "session-ms",
];

const EXTREMES: &[&str] = &[
    "9223372036854775807",
    "4294967295",
    "4294967296",
    "3600001",
    "604800001",
    "1001",
    "0",
];

/// The case and its neighbours, through the real binary: `lockgate check` exits 0 or
/// 2 (file:line:key), never 101 (a panic).
#[test]
fn lockgate_check_never_panics_on_extreme_integers() {
    let dir = tempfile::tempdir().unwrap();
    let base = VALID.replace(
        "locks-folder = \".\"",
        &format!("locks-folder = \"{}\"", dir.path().display()),
    );
    let mut cases: Vec<String> = Vec::new();
    // The config: interval-ms = i64::MAX with fall = 4000.
    cases.push(
        base.replace("interval-ms = 500", "interval-ms = 9223372036854775807")
            .replace("fall = 2", "fall = 4000")
            .replace("timeout-ms = 250", "timeout-ms = 9223372036854775807"),
    );
    for key in NUMERIC_KEYS {
        for v in EXTREMES {
            let prefix = format!("{key} = ");
            let text: Vec<String> = base
                .lines()
                .map(|l| {
                    if l.starts_with(&prefix) {
                        format!("{prefix}{v}")
                    } else {
                        l.to_owned()
                    }
                })
                .collect();
            cases.push(text.join("\n"));
        }
    }
    // The route keys, added to the first route.
    for key in [
        "connect-timeout-ms",
        "half-close-timeout-ms",
        "client-timeout-ms",
        "server-timeout-ms",
        "tunnel-timeout-ms",
        "tcp-user-timeout-ms",
    ] {
        for v in EXTREMES {
            cases.push(base.replace(
                "lock-coordinator = \"clients-lock\"\n",
                &format!("lock-coordinator = \"clients-lock\"\n{key} = {v}\n"),
            ));
        }
    }
    for v in EXTREMES {
        cases.push(base.replace(
            "listen = \"127.0.0.1:9464\"",
            &format!("listen = \"127.0.0.1:9464\"\nmax-connections = {v}"),
        ));
        cases.push(base.replace(
            "session-ms = 18000",
            &format!("session-ms = 18000\nretries = {v}\nretries-ms = {v}\nconnection-ms = {v}"),
        ));
    }
    let path = dir.path().join("extreme.toml");
    let (mut valid, mut refused) = (0, 0);
    for text in &cases {
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lockgate"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => valid += 1,
            Some(2) => {
                refused += 1;
                let located = format!("{}:", path.display());
                assert!(
                    stderr.contains(&located) && stderr.contains("key `"),
                    "{stderr}\n{text}"
                );
            }
            other => panic!("lockgate check exited {other:?}: {stderr}\n{text}"),
        }
    }
    eprintln!(
        "{} extreme configs: {valid} valid, {refused} refused with file:line:key",
        cases.len()
    );
    assert!(
        refused > cases.len() / 2,
        "{valid} valid, {refused} refused"
    );
}

fn check(text: &str) {
    let path = Path::new("/tmp/fuzz/lockgate.toml");
    match Config::from_str(text, path) {
        Ok(c) => {
            // Everything `lockgate check` computes from a valid config is computable.
            for coordinator in &c.coordinators {
                let _ = coordinator.failover_bounds();
                assert!(!coordinator.explain_failover().is_empty());
            }
            // A valid config renders to a valid config.
            let again = Config::from_str(&c.render(), path);
            assert!(
                again.is_ok(),
                "render of a valid config is invalid: {again:?}\n{}",
                c.render()
            );
        }
        Err(ConfigError::Invalid {
            path: p,
            line,
            column,
            key,
            message,
            ..
        }) => {
            assert_eq!(p, "/tmp/fuzz/lockgate.toml");
            let lines = text.lines().count().max(1);
            assert!(
                line >= 1 && line <= lines + 1,
                "line {line} of {lines}: {message}"
            );
            assert!(column >= 1);
            assert!(!key.is_empty(), "no key named: {message}");
            assert!(!message.is_empty());
        }
        Err(e @ ConfigError::Read { .. }) => panic!("unexpected {e}"),
    }
}

#[test]
fn the_valid_base_config_is_valid() {
    Config::from_str(&VALID, Path::new("/tmp/lockgate.toml")).unwrap();
}

/// Values that stress the validators.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("18446744073709551615".to_owned()),
        // Extreme integers: TOML's largest and smallest, the u32 edges, the bounds and one
        // past them.
        Just("9223372036854775807".to_owned()),
        Just("-9223372036854775808".to_owned()),
        Just("4294967295".to_owned()),
        Just("4294967296".to_owned()),
        Just("3600000".to_owned()),
        Just("3600001".to_owned()),
        Just("604800001".to_owned()),
        Just("1001".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("\"\"".to_owned()),
        Just("\"../x\"".to_owned()),
        Just("\"zookeeper\"".to_owned()),
        Just("\"[::1]:0\"".to_owned()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        any::<u32>().prop_map(|n| n.to_string()),
        "\"[a-z0-9:.\\[\\]/-]{0,20}\"",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_changed_value_never_panics(line in 0usize..60, v in value()) {
        let mut lines: Vec<String> = VALID.lines().map(str::to_owned).collect();
        let i = line % lines.len();
        if let Some((k, _)) = lines[i].split_once(" = ") {
            lines[i] = format!("{k} = {v}");
        }
        check(&lines.join("\n"));
    }

    #[test]
    fn dropped_or_duplicated_lines_never_panic(line in 0usize..60, dup in any::<bool>()) {
        let mut lines: Vec<&str> = VALID.lines().collect();
        let i = line % lines.len();
        if dup { lines.insert(i, lines[i]); } else { lines.remove(i); }
        check(&lines.join("\n"));
    }

    #[test]
    fn truncated_configs_never_panic(at in 0usize..2000) {
        let at = at.min(VALID.len());
        if VALID.is_char_boundary(at) {
            check(&VALID[..at]);
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        check(&text);
    }

    #[test]
    fn arbitrary_toml_shapes_never_panic(text in "(\\[\\[?[a-z-]{1,16}\\]\\]?\n|[a-z-]{1,16} = (\"[a-z0-9.:]{0,12}\"|[0-9]{1,6}|true)\n){0,12}") {
        check(&text);
    }
}
