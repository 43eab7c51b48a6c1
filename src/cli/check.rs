//! `lockgate check`: the validated config with defaults filled in and, per lock, the failover
//! arithmetic, plus for a ZooKeeper lock the session its servers grant (asked within a bound).

use std::process::ExitCode;

use lockgate::config::Config;

use super::runtime;

/// Prints the report (or JSON, or nothing with `--quiet`); the config was valid to get here.
pub fn run(config: &Config, quiet: bool, json: bool) -> ExitCode {
    // --quiet (ExecStartPre=) never waits on ZooKeeper.
    let sessions = if quiet {
        Vec::new()
    } else {
        negotiated_sessions(config)
    };
    if json {
        outln!("{}", check_json(config, &sessions));
    } else if !quiet {
        out!("{}", check_report(config, &sessions));
    }
    ExitCode::SUCCESS
}

/// How long `check` waits for each ZooKeeper ensemble to grant a session.
const NEGOTIATE_BOUND: std::time::Duration = std::time::Duration::from_secs(3);

/// Per lock: the ZooKeeper session timeout granted, or why it is not known.
type Sessions = Vec<(String, Result<std::time::Duration, String>)>;

/// Per ZooKeeper lock: the session timeout its servers grant (they cap it at their
/// maxSessionTimeout, 20 x tickTime by default), or why it is not known. Bounded by
/// [`NEGOTIATE_BOUND`] per lock.
fn negotiated_sessions(config: &Config) -> Sessions {
    use lockgate::config::BackendConfig;
    let zk: Vec<_> = config
        .coordinators
        .iter()
        .filter_map(|c| match &c.backend {
            BackendConfig::ZooKeeper(z) => Some((c.name.clone(), z.clone())),
            BackendConfig::File { .. } => None,
        })
        .collect();
    if zk.is_empty() {
        return Vec::new();
    }
    let runtime = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(r) => r,
        Err(_) => return Vec::new(),
    };
    let out = runtime.block_on(async {
        let mut out = Vec::new();
        for (name, z) in zk {
            let connect = zookeeper_client::Client::connector()
                .with_session_timeout(z.session)
                .with_connection_timeout(z.connection.min(NEGOTIATE_BOUND))
                .with_fail_eagerly()
                .connect(&z.connect_string);
            let r = match tokio::time::timeout(NEGOTIATE_BOUND, connect).await {
                Ok(Ok(client)) => Ok(client.session_timeout()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "no answer within {} ms",
                    NEGOTIATE_BOUND.as_millis()
                )),
            };
            out.push((name, r));
        }
        out
    });
    runtime.shutdown_background();
    out
}

/// The words `check` adds for a ZooKeeper lock about the session its servers grant.
fn session_lines(c: &lockgate::config::CoordinatorConfig, sessions: &Sessions) -> Vec<String> {
    let lockgate::config::BackendConfig::ZooKeeper(z) = &c.backend else {
        return Vec::new();
    };
    let Some((_, r)) = sessions.iter().find(|(n, _)| *n == c.name) else {
        return Vec::new();
    };
    let ms = |d: std::time::Duration| d.as_millis();
    match r {
        Err(e) => vec![format!(
            "the negotiated session was not checked: ZooKeeper {} not reachable from here ({e})",
            z.connect_string
        )],
        Ok(n) if *n >= z.session => vec![format!(
            "the servers grant the session asked: S = {} ms",
            ms(*n)
        )],
        Ok(n) => {
            let f = z.fencing(*n);
            let mut v = vec![
                format!(
                    "WARNING: the servers grant a session of {} ms, not the {} ms asked (their \
                        maxSessionTimeout, 20 x tickTime by default; raise it, or lower \
                        session-ms)",
                    ms(*n),
                    ms(z.session)
                ),
                format!(
                    "with S = {} ms: a dead holder's lock passes after {} ms; a holder cut off \
                        fences after F = {} ms; margin S - C - F = {} ms (C = {} ms)",
                    ms(*n),
                    ms(*n),
                    ms(f.fence_after),
                    ms(f.margin),
                    ms(f.connection)
                ),
            ];
            if !f.is_safe() {
                v.push(
                    "with that session no safe fencing margin is left: the daemon fences at \
                    once on any disconnection"
                        .to_owned(),
                );
            }
            v
        }
    }
}

fn check_report(config: &Config, sessions: &Sessions) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "# {}: valid\n# effective configuration (defaults filled in):\n\n{}",
        config.source.display(),
        config.render()
    );
    for c in &config.coordinators {
        let _ = writeln!(out, "\n# failover arithmetic for lock \"{}\":", c.name);
        for line in c.explain_failover() {
            let _ = writeln!(out, "#   {line}");
        }
        for line in session_lines(c, sessions) {
            let _ = writeln!(out, "#   {line}");
        }
    }
    out
}

/// `check --json`: the validated config, per lock its paths and failover figures.
fn check_json(config: &Config, sessions: &Sessions) -> serde_json::Value {
    use lockgate::config::BackendConfig;
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let locks: Vec<serde_json::Value> = config
        .coordinators
        .iter()
        .map(|c| {
            let b = c.failover_bounds();
            let mut v = serde_json::json!({
                "name": c.name,
                "type": c.backend.type_name(),
                "lock_id": c.lock_id,
                "check_period_ms": ms(c.check_period),
                "failover": {
                    "holder_dies_ms": ms(b.holder_dies),
                    "holder_stops_ms": ms(b.holder_stops),
                    "broker_dies_ms": b.broker_dies.map(ms),
                    "fence_within_ms": ms(b.fence_within),
                },
                "explain": c.explain_failover(),
            });
            if let (Some(o), Some((_, r))) = (
                v.as_object_mut(),
                sessions.iter().find(|(n, _)| *n == c.name),
            ) {
                o.insert(
                    "negotiated_session_ms".into(),
                    r.as_ref().ok().map(|d| ms(*d)).into(),
                );
                o.insert("session_lines".into(), session_lines(c, sessions).into());
            }
            if let (Some(o), BackendConfig::File { locks_folder }) = (v.as_object_mut(), &c.backend)
            {
                o.insert(
                    "locks_folder".into(),
                    locks_folder.display().to_string().into(),
                );
                o.insert(
                    "lock_file".into(),
                    locks_folder.join(&c.lock_id).display().to_string().into(),
                );
            }
            v
        })
        .collect();
    let routes: Vec<serde_json::Value> = config
        .routes
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "listen": r.listen.to_string(),
                "forward_to": r.forward_to,
                "lock": r.lock,
            })
        })
        .collect();
    serde_json::json!({
        "ok": true,
        "valid": true,
        "config": config.source.display().to_string(),
        "node_id": config.node_id,
        "admin": config.admin.as_ref().map(|a| a.listen.to_string()),
        "locks": locks,
        "routes": routes,
        "effective": config.render(),
    })
}
