//! `lockgate status`: who holds each lock now, read from the owner record (and for ZooKeeper
//! the standbys queued behind it), whether or not a daemon runs here.

use std::fmt::Write as _;

use crate::config::Config;
use crate::lock::{self, Observed, OwnerRecord};

/// The bound on reading one lock's holder: a hung shared mount or an unreachable ensemble is
/// reported as "storage not answering" instead of hanging the command.
pub const OBSERVE_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

/// One line per lock coordinator (plus one per queued standby), within [`OBSERVE_BOUND`] per
/// lock. A read that overruns keeps its blocking thread; the caller must not wait for it (the
/// command exits without joining the runtime's blocking threads).
pub async fn report(config: &Config) -> String {
    let now = lock::unix_ms_now();
    let mut out = String::new();
    for c in &config.coordinators {
        let observed = match tokio::time::timeout(OBSERVE_BOUND, lock::observe(c)).await {
            Ok(r) => r,
            Err(_) => {
                let _ = writeln!(
                    out,
                    "{} ({} lock-id {}): unknown: storage not answering within {} ms",
                    c.name,
                    c.backend.type_name(),
                    c.lock_id,
                    OBSERVE_BOUND.as_millis()
                );
                continue;
            }
        };
        let (line, queue) = match observed {
            Ok((Observed::Held(Some(r)), q)) => (format!("held by {}", describe(&r, now)), q),
            Ok((Observed::Held(None), q)) => ("held (owner record not readable yet)".to_owned(), q),
            Ok((Observed::Free(Some(r)), q)) => {
                (format!("free (last held by {})", describe(&r, now)), q)
            }
            Ok((Observed::Free(None), q)) | Ok((Observed::Absent, q)) => {
                ("free (never held)".to_owned(), q)
            }
            Err(e) => (format!("unknown: {e}"), Vec::new()),
        };
        let _ = writeln!(
            out,
            "{} ({} lock-id {}): {line}",
            c.name,
            c.backend.type_name(),
            c.lock_id
        );
        for (i, r) in queue.iter().enumerate() {
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

fn describe(r: &OwnerRecord, now_ms: u64) -> String {
    let ago = now_ms.saturating_sub(r.acquired_at_unix_ms) / 1000;
    format!(
        "node {} (host {}, pid {}), term {}, since {} ({ago} s ago)",
        r.node_id,
        r.host,
        r.pid,
        r.term,
        utc(r.acquired_at_unix_ms)
    )
}

/// RFC 3339 UTC time of a Unix-epoch millisecond count (civil-from-days, no time crate).
pub fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(super::utc(1_795_392_000_000), "2026-11-23T00:00:00Z");
    }
}
