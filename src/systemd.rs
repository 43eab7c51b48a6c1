//! systemd's notify protocol: READY, STATUS, STOPPING. A no-op without `NOTIFY_SOCKET`.
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
    send(&[NotifyState::Reloading]);
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
