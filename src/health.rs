//! Health of the local broker: a TCP connect every `interval`, with HAProxy-style rise/fall.
//!
//! The coordinator contends only while the broker is up, so a dead broker behind a live
//! lockgate still fails over.

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::HealthConfig;
use crate::metrics as m;

/// Consecutive-result counting: up after `rise` successes in a row, down after `fall`
/// failures in a row. Starts down: a broker must prove itself before we contend.
#[derive(Debug, Clone)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    up: bool,
    streak: u32,
}

impl RiseFall {
    pub fn new(rise: u32, fall: u32) -> RiseFall {
        RiseFall {
            rise,
            fall,
            up: false,
            streak: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one probe; returns the new state when it flips.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if ok { self.rise } else { self.fall };
        if self.streak >= needed {
            self.up = ok;
            self.streak = 0;
            Some(ok)
        } else {
            None
        }
    }
}

/// Starts probing; the receiver holds `true` while the broker is up. Without a health check
/// the broker always counts as up.
pub fn spawn(
    lock: &str,
    cfg: Option<HealthConfig>,
    cancel: CancellationToken,
) -> watch::Receiver<bool> {
    let Some(cfg) = cfg else {
        let (tx, rx) = watch::channel(true);
        // Keep the sender alive as long as anyone listens, so `changed()` never errors out.
        tokio::spawn(async move { tx.closed().await });
        return rx;
    };
    let (tx, rx) = watch::channel(false);
    let lock = lock.to_owned();
    tokio::spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = probe_loop(&lock, &cfg, &tx) => {}
        }
    });
    rx
}

async fn probe_loop(lock: &str, cfg: &HealthConfig, tx: &watch::Sender<bool>) {
    let up_gauge = metrics::gauge!(m::HEALTH_CHECK_UP, "lock" => lock.to_owned());
    let failures = metrics::counter!(m::HEALTH_CHECK_FAILURES, "lock" => lock.to_owned());
    up_gauge.set(0.0);
    info!(lock, address = %cfg.address, rise = cfg.rise, "waiting for the local broker's health check before contending for the lock");
    let mut state = RiseFall::new(cfg.rise, cfg.fall);
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    loop {
        ticker.tick().await;
        let result = match tokio::time::timeout(cfg.timeout, TcpStream::connect(&cfg.address)).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", cfg.timeout.as_millis())),
        };
        if let Err(e) = &result {
            failures.increment(1);
            if last_error.as_deref() != Some(e) {
                warn!(lock, address = %cfg.address, error = %e, "health probe of the local broker failed");
                last_error = Some(e.clone());
            }
        } else {
            last_error = None;
        }
        if let Some(up) = state.observe(result.is_ok()) {
            up_gauge.set(if up { 1.0 } else { 0.0 });
            if up {
                info!(lock, address = %cfg.address, "local broker is up: contending for the lock");
            } else {
                warn!(lock, address = %cfg.address, fall = cfg.fall, "local broker is down: giving up the lock");
            }
            tx.send_replace(up);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RiseFall;

    #[test]
    fn rise_and_fall_need_streaks() {
        let mut s = RiseFall::new(2, 3);
        assert_eq!(s.observe(true), None);
        assert_eq!(s.observe(false), None); // streak broken
        assert_eq!(s.observe(true), None);
        assert_eq!(s.observe(true), Some(true));
        assert!(s.is_up());
        assert_eq!(s.observe(false), None);
        assert_eq!(s.observe(false), None);
        assert_eq!(s.observe(true), None); // streak broken
        assert_eq!(s.observe(false), None);
        assert_eq!(s.observe(false), None);
        assert_eq!(s.observe(false), Some(false));
        assert!(!s.is_up());
    }

    #[test]
    fn rise_of_one_flips_at_once() {
        let mut s = RiseFall::new(1, 1);
        assert_eq!(s.observe(true), Some(true));
        assert_eq!(s.observe(false), Some(false));
    }
}
