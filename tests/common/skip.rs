//! A test that cannot run here (a tool it needs is missing) says so where a person sees it.
//!
//! `eprintln!` from a passing test is captured by the test harness and shown only with
//! `--nocapture`, so a skipped test would read `ok`. [`skipped`] writes to the stderr stream
//! itself (the harness captures only the print macros), so the line shows in the normal
//! `cargo test` output, and appends it to `target/tmp/skipped-tests.txt`, which `.ci/run`
//! counts in its summary. Under `CI` (set, and not "", "0" or "false") it fails the test
//! instead: CI must run everything.
#![allow(dead_code)]

use std::io::Write as _;

/// Whether this is CI, where a missing tool is a failure.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// Reports the current test as skipped because of `why` (e.g. "promtool is not installed
/// (apt-get install -y prometheus)"); panics under CI.
pub fn skipped(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("(unnamed)")
        .to_owned();
    let target = env!("CARGO_CRATE_NAME");
    assert!(!ci(), "{target}::{test}: {why}, and CI requires this test");
    let line = format!("SKIPPED {target}::{test}: {why}");
    let _ = writeln!(std::io::stderr().lock(), "\n{line}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("skipped-tests.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// `tool`'s path: found on PATH, or `tool` itself when it is a path to a file. Missing, the
/// test is reported skipped ("<tool> is not installed (apt-get install -y <package>)"), and
/// `None`.
pub fn tool(tool: &str, package: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        skipped(&format!(
            "{tool} is not installed (apt-get install -y {package})"
        ));
    }
    found
}
