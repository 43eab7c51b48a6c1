//! `lockgate check` on the shipped configs (valid) and on a corpus of bad ones (each names
//! the file, the line, the key and its table, and exits 2).

use std::path::{Path, PathBuf};

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn check(path: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_lockgate"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn bad_configs_name_file_line_and_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = toml_files(&root.join("tests/bad-configs"));
    assert!(
        files.len() >= 12,
        "the bad-config corpus has only {} files",
        files.len()
    );
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        // Each file ends with `# expect: LINE KEY [TABLE]` (no table: a top-level key, or a
        // syntax error, which has no key path).
        let expect = text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", file.display()));
        let mut expect = expect.split(' ');
        let (line, key) = (expect.next().unwrap(), expect.next().unwrap());
        let named = match expect.next() {
            Some(table) => format!("key `{key}` in {table}: "),
            None => format!("key `{key}`: "),
        };
        let out = check(&file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", file.display());
        let located = format!("{}:{line}:", file.display());
        assert!(
            stderr.contains(&located),
            "{}: no `{located}` in: {stderr}",
            file.display()
        );
        assert!(
            stderr.contains(&named),
            "{}: no `{named}` in: {stderr}",
            file.display()
        );
        assert!(
            out.stdout.is_empty(),
            "{}: printed a config",
            file.display()
        );
    }
}

#[test]
fn shipped_configs_are_valid_and_explain_failover() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("config/lockgate.toml")];
    files.extend(toml_files(&root.join("config/examples/ha-pair")));
    files.extend(toml_files(&root.join("config/examples/ha-pair-zookeeper")));
    files.extend(toml_files(&root.join("config/examples/artemis-ha-mirror")));
    assert!(files.len() >= 7, "{files:?}");
    for file in files {
        let out = check(&file);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("check-period = "), "{stdout}");
        assert!(stdout.contains("failover arithmetic"), "{stdout}");
        assert!(
            stdout.contains("holder's broker dies: the holder releases within"),
            "{stdout}"
        );
    }
}

#[test]
fn a_missing_config_file_is_named() {
    let out = check(Path::new("no/such/lockgate.toml"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/lockgate.toml"));
}

/// The reference config says it sets every key to its default: its effective configuration
/// equals that of a config with only its required keys.
#[test]
fn the_reference_config_sets_every_key_to_its_default() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let minimal = include_str!("configs/minimal.toml");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("locks")).unwrap();
    let path = dir.path().join("minimal.toml");
    std::fs::write(&path, minimal).unwrap();
    let effective = |p: &Path| -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lockgate"))
            .args(["check", "--json", "--config"])
            .arg(p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        // The locks folder is the same relative path, made absolute from two places.
        v["effective"]
            .as_str()
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("locks-folder = "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let reference = effective(&root.join("config/lockgate.toml"));
    assert_eq!(
        reference,
        effective(&path),
        "config/lockgate.toml sets a key to a value other than its default"
    );
}
