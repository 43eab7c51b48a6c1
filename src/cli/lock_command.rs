//! `lockgate step-down` and `lockgate resume`: a POST to the daemon's admin endpoint (hyper's
//! HTTP/1.1 client), once `GET /status` shows that the daemon there is the node the config
//! names.

use std::process::ExitCode;

use lockgate::config::Config;

use super::{EXIT_CONFIG, EXIT_RUNTIME, EXIT_WRONG_DAEMON, runtime};

/// Asks the daemon to hand `lock` to its peer: `--hold-off-ms`, `--drain-ms` as the query.
pub fn step_down(
    config: &Config,
    lock: &str,
    hold_off_ms: Option<u64>,
    drain_ms: Option<u64>,
    json: bool,
) -> ExitCode {
    let mut query = Vec::new();
    if let Some(v) = hold_off_ms {
        query.push(format!("hold-off-ms={v}"));
    }
    if let Some(v) = drain_ms {
        query.push(format!("drain-ms={v}"));
    }
    let path = format!("/locks/{}/step-down?{}", encode(lock), query.join("&"));
    lock_command(config, lock, &path, json)
}

/// Asks the daemon to contend for `lock` again.
pub fn resume(config: &Config, lock: &str, json: bool) -> ExitCode {
    let path = format!("/locks/{}/resume", encode(lock));
    lock_command(config, lock, &path, json)
}

/// Percent-encodes a lock name for one path segment: every byte but RFC 3986's unreserved
/// ones, so a name with a space, `/`, `?`, `#` or `%` reaches the daemon intact.
fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One step-down or resume: the lock must be in the config (else exit 2), and the daemon on
/// the admin port must be the node the config names (else exit 4); then the POST, and the
/// daemon's answer in words (or JSON).
fn lock_command(config: &Config, lock: &str, path: &str, json: bool) -> ExitCode {
    let fail = |code: u8, kind: &str, message: String| {
        super::failed(json, code, ("lock", lock.into()), kind, message)
    };
    if config.coordinator(lock).is_none() {
        let names: Vec<&str> = config
            .coordinators
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        return fail(
            EXIT_CONFIG,
            "unknown_lock",
            format!(
                "{} has no lock-coordinator named \"{lock}\" (it has: {})",
                config.source.display(),
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ),
        );
    }
    let Some(admin) = &config.admin else {
        return fail(
            EXIT_CONFIG,
            "no_admin",
            format!(
                "{} has no [admin] section, so the daemon cannot be asked",
                config.source.display()
            ),
        );
    };
    let mut addr = admin.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let runtime = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let request = |method, path: &str| {
        runtime.block_on(admin_request(addr, admin.token.as_deref(), method, path))
    };
    // Is the daemon there the node this config names?
    let status = match request(hyper::Method::GET, "/status") {
        Ok((200, body)) => body,
        Ok((code, body)) => {
            return fail(
                EXIT_RUNTIME,
                "daemon_refused",
                format!("the admin endpoint at {addr} answered GET /status with {code}: {body}"),
            );
        }
        Err(e) => {
            return fail(
                EXIT_RUNTIME,
                "daemon_unreachable",
                format!("cannot reach the daemon's admin endpoint at {addr}: {e:#}"),
            );
        }
    };
    let node = serde_json::from_str::<serde_json::Value>(&status)
        .ok()
        .and_then(|v| v.get("node_id").and_then(|n| n.as_str()).map(str::to_owned));
    match node {
        Some(n) if n == config.node_id => {}
        Some(n) => {
            return fail(
                EXIT_WRONG_DAEMON,
                "wrong_daemon",
                format!(
                    "the daemon at {addr} is node \"{n}\", not \"{}\" as {} names: nothing was \
                        asked of it",
                    config.node_id,
                    config.source.display()
                ),
            );
        }
        None => {
            return fail(
                EXIT_WRONG_DAEMON,
                "wrong_daemon",
                format!(
                    "what answers at {addr} is not a lockgate admin endpoint (GET /status has \
                        no node_id)"
                ),
            );
        }
    }
    match request(hyper::Method::POST, path) {
        Ok((200, body)) => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let result = v.get("result").and_then(|r| r.as_str()).unwrap_or(&body);
            if json {
                outln!(
                    "{}",
                    serde_json::json!({
                        "ok": true,
                        "lock": lock,
                        "node_id": config.node_id,
                        "result": result,
                    })
                );
            } else {
                outln!("lock {lock} on node {}: {result}", config.node_id);
            }
            ExitCode::SUCCESS
        }
        Ok((code, body)) => fail(
            EXIT_RUNTIME,
            "daemon_refused",
            format!("the daemon answered {code}: {body}"),
        ),
        Err(e) => fail(
            EXIT_RUNTIME,
            "daemon_unreachable",
            format!("cannot reach the daemon's admin endpoint at {addr}: {e:#}"),
        ),
    }
}

/// How long the admin endpoint may take to accept a connection.
const CONNECT_BOUND: std::time::Duration = std::time::Duration::from_secs(5);
/// How long it may take to answer: a step-down answers once its drain is over.
const ANSWER_BOUND: std::time::Duration = std::time::Duration::from_secs(120);
/// The largest answer read (the admin endpoint's are small).
const MAX_ANSWER: usize = 4 << 20;

/// One HTTP/1.1 request to the admin endpoint (hyper's client, one connection per request):
/// (status code, body).
async fn admin_request(
    addr: std::net::SocketAddr,
    token: Option<&str>,
    method: hyper::Method,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    use http_body_util::{BodyExt as _, Empty, Limited};
    use hyper::header::{AUTHORIZATION, CONNECTION, HOST};
    let stream = tokio::time::timeout(CONNECT_BOUND, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("no connection within {} s", CONNECT_BOUND.as_secs()))??;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    let driver = tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr.to_string())
        .header(CONNECTION, "close");
    if let Some(t) = token {
        request = request.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    let request = request.body(Empty::<hyper::body::Bytes>::new())?;
    let answer = async {
        let response = sender.send_request(request).await.map_err(|e| {
            if e.is_parse() {
                anyhow::anyhow!("not an HTTP answer ({e})")
            } else {
                e.into()
            }
        })?;
        let code = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
            .to_bytes();
        anyhow::Ok((code, String::from_utf8_lossy(&body).trim().to_owned()))
    };
    let result = tokio::time::timeout(ANSWER_BOUND, answer)
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "no answer within {} s",
                ANSWER_BOUND.as_secs()
            ))
        });
    driver.abort();
    result
}
