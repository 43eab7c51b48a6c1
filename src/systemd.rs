//! systemd's notify protocol (sd_notify(3)): every message lockgate sends, and the watchdog
//! period it is asked for. A no-op without `NOTIFY_SOCKET`.
//!
//! - `READY=1`: started (config loaded, open routes bound), and again when a reload is done;
//! - `STATUS=…`: one line of state (a lock's transition, a failed reload, a shutdown drain);
//! - `RELOADING=1` with `MONOTONIC_USEC=`: a reload has begun. systemd ≥ 253 needs the time
//!   to match the message to its reload job (`Type=notify-reload`); older ones ignore it;
//! - `WATCHDOG=1`: the event loop is alive, every half `WATCHDOG_USEC`;
//! - `STOPPING=1`: shutdown has begun.
//!
//! Tests create a `NOTIFY_SOCKET` of their own and wait on these messages instead of sleeping.

use sd_notify::NotifyState;

fn send(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::debug!(error = %e, "cannot notify the service manager");
    }
}

/// Config loaded and open routes bound.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// One line of state, e.g. `lock clients-lock: active term 3`.
pub fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

/// Shutdown has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// A reload has begun (READY=1 follows when it is done).
pub fn reloading() {
    send(&reloading_message());
}

/// `RELOADING=1` and, when the clock answers, `MONOTONIC_USEC=` (CLOCK_MONOTONIC).
fn reloading_message() -> Vec<NotifyState<'static>> {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => vec![NotifyState::Reloading, now],
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the monotonic clock");
            vec![NotifyState::Reloading]
        }
    }
}

/// The event loop is alive.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// Half the watchdog period systemd asks for (`WATCHDOG_USEC`), if it asks. As in
/// sd_watchdog_enabled(3): when `WATCHDOG_PID` is set, only for that process.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    // A tiny WATCHDOG_USEC must not make a zero interval (tokio panics on one).
    (usec > 0).then(|| {
        std::time::Duration::from_micros(usec / 2).max(std::time::Duration::from_millis(1))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reloading_carries_the_monotonic_time() {
        let lines: Vec<String> = super::reloading_message()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(lines[0], "RELOADING=1");
        let usec = lines[1].strip_prefix("MONOTONIC_USEC=").unwrap();
        assert!(usec.parse::<u64>().unwrap() > 0, "{lines:?}");
    }
}
