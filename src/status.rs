//! `lockgate status`: who holds each lock now, read from the owner record (and for ZooKeeper
//! the standbys queued behind it), whether or not a daemon runs here.

use std::fmt::Write as _;

use crate::config::Config;
use crate::lock::{self, Observed, OwnerRecord};

/// The bound on reading one lock's holder: a hung shared mount or an unreachable ensemble is
/// reported as "storage not answering" instead of hanging the command.
pub const OBSERVE_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

/// What `lockgate status` found for one lock.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LockStatus {
    pub lock: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub lock_id: String,
    /// "held", "free" or "unknown" (the lock service did not answer, or answered an error).
    pub state: &'static str,
    /// The holder (state "held") or the last holder (state "free"), when its record is readable.
    pub holder: Option<Holder>,
    /// ZooKeeper: the standbys queued behind the holder, in order.
    pub queue: Vec<Holder>,
    /// Why the state is "unknown".
    pub error: Option<String>,
}

/// An owner record, with the key style of every JSON lockgate prints (snake_case).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Holder {
    pub node_id: String,
    pub host: String,
    pub pid: u32,
    pub term: u64,
    pub since_unix_ms: u64,
}

impl From<&OwnerRecord> for Holder {
    fn from(r: &OwnerRecord) -> Holder {
        Holder {
            node_id: r.node_id.clone(),
            host: r.host.clone(),
            pid: r.pid,
            term: r.term,
            since_unix_ms: r.acquired_at_unix_ms,
        }
    }
}

/// Reads every lock, within [`OBSERVE_BOUND`] each. A read that overruns keeps its blocking
/// thread; the caller must not wait for it (the command exits without joining the runtime's
/// blocking threads).
pub async fn observe_all(config: &Config) -> Vec<LockStatus> {
    let mut out = Vec::new();
    for c in &config.coordinators {
        let mut s = LockStatus {
            lock: c.name.clone(),
            kind: c.backend.type_name(),
            lock_id: c.lock_id.clone(),
            state: "unknown",
            holder: None,
            queue: Vec::new(),
            error: None,
        };
        match tokio::time::timeout(OBSERVE_BOUND, lock::observe(c)).await {
            Err(_) => {
                s.error = Some(format!(
                    "storage not answering within {} ms",
                    OBSERVE_BOUND.as_millis()
                ))
            }
            Ok(Err(e)) => s.error = Some(e.to_string()),
            Ok(Ok((observed, queue))) => {
                s.queue = queue.iter().map(Holder::from).collect();
                let (state, record) = match observed {
                    Observed::Held(r) => ("held", r),
                    Observed::Free(r) => ("free", r),
                    Observed::Absent => ("free", None),
                };
                s.state = state;
                s.holder = record.as_ref().map(Holder::from);
            }
        }
        out.push(s);
    }
    out
}

/// One line per lock coordinator (plus one per queued standby).
pub fn render(locks: &[LockStatus]) -> String {
    let now = lock::unix_ms_now();
    let mut out = String::new();
    for s in locks {
        let line = match (s.state, &s.holder) {
            ("held", Some(h)) => format!("held by {}", describe(h, now)),
            ("held", None) => "held (owner record not readable yet)".to_owned(),
            ("free", Some(h)) => format!("free (last held by {})", describe(h, now)),
            ("free", None) => "free (never held)".to_owned(),
            _ => format!("unknown: {}", s.error.as_deref().unwrap_or("no answer")),
        };
        let _ = writeln!(out, "{} ({} lock-id {}): {line}", s.lock, s.kind, s.lock_id);
        for (i, r) in s.queue.iter().enumerate() {
            let _ = writeln!(
                out,
                "  standby {}: node {} (host {}, pid {})",
                i + 1,
                r.node_id,
                r.host,
                r.pid
            );
        }
    }
    out
}

/// The text report of [`observe_all`].
pub async fn report(config: &Config) -> String {
    render(&observe_all(config).await)
}

fn describe(r: &Holder, now_ms: u64) -> String {
    let ago = now_ms.saturating_sub(r.since_unix_ms) / 1000;
    format!(
        "node {} (host {}, pid {}), term {}, since {} ({ago} s ago)",
        r.node_id,
        r.host,
        r.pid,
        r.term,
        utc(r.since_unix_ms)
    )
}

/// RFC 3339 UTC time, to the second, of a Unix-epoch millisecond count (humantime); a count
/// beyond year 9999 (an owner record is read from shared storage) is shown as the count.
pub fn utc(unix_ms: u64) -> String {
    let mut out = String::new();
    let time = std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(unix_ms / 1000));
    match time {
        Some(t) if write!(out, "{}", humantime::format_rfc3339_seconds(t)).is_ok() => out,
        _ => format!("unix-ms {unix_ms}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(super::utc(1_795_392_000_999), "2026-11-23T00:00:00Z");
        assert_eq!(super::utc(253_402_300_799_000), "9999-12-31T23:59:59Z");
        assert_eq!(super::utc(u64::MAX), "unix-ms 18446744073709551615");
    }
}
