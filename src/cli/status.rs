//! `lockgate status`: who holds each lock, read from the lock service (see
//! [`lockgate::status`]); exit 3 when some lock's state is unknown.

use std::process::ExitCode;

use lockgate::config::Config;

use super::{EXIT_UNKNOWN, runtime};

/// Prints every lock's holder, in words or as one JSON object.
pub fn run(config: &Config, json: bool) -> ExitCode {
    let runtime = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let locks = runtime.block_on(lockgate::status::observe_all(config));
    // A read stuck on a hung mount keeps its blocking thread: do not wait for it.
    runtime.shutdown_background();
    let all_known = locks.iter().all(|l| l.state != "unknown");
    if json {
        let v = serde_json::json!({
            "config": config.source.display().to_string(),
            "node_id": config.node_id,
            "all_known": all_known,
            "locks": locks,
        });
        outln!("{v}");
    } else {
        out!("{}", lockgate::status::render(&locks));
    }
    if all_known {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNKNOWN)
    }
}
