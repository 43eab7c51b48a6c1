//! Names the commit in `lockgate --version` and `lockgate_build_info{commit}`: `git
//! rev-parse --short=12 HEAD`, or "unknown" without git or a .git (a source tarball, a packaged build from an export).
//! `LOCKGATE_COMMIT` in the environment overrides both (for builds outside a clone).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=LOCKGATE_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
    let commit = match std::env::var("LOCKGATE_COMMIT") {
        Ok(c) if !c.is_empty() => c,
        _ => git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned()),
    };
    println!("cargo:rustc-env=LOCKGATE_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself (a checkout) and the branch it names (a commit).
    // Only paths that exist: a missing one would make every build rerun this script.
    let watch = |p: Option<String>| {
        if let Some(p) = p.filter(|p| std::path::Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={p}");
        }
    };
    watch(git(&["rev-parse", "--git-path", "HEAD"]));
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch(git(&["rev-parse", "--git-path", &branch]));
    }
    watch(git(&["rev-parse", "--git-path", "packed-refs"]));
}
