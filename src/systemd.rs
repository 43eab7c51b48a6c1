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
