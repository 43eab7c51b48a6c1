//! Validation of `[lock-coordinator.health-check]`: the broker's address, the probe interval
//! and timeout, rise and fall, and the fast interval of the confirming probes.

use toml::Spanned;

use super::super::error::{KeyError, key_error};
use super::super::raw::RawHealth;
use super::super::{
    DEFAULT_HEALTH_FALL, DEFAULT_HEALTH_FAST_INTERVAL_MS, DEFAULT_HEALTH_INTERVAL_MS,
    DEFAULT_HEALTH_RISE, DEFAULT_HEALTH_TIMEOUT_MS, HealthConfig, MAX_PERIOD_MS,
};
use super::{bounded_ms, count, host_port, required};

pub(super) fn validate_health(raw: Spanned<RawHealth>) -> Result<HealthConfig, KeyError> {
    let table_span = raw.span();
    let h = raw.into_inner();
    let address = required(
        h.address,
        &table_span,
        "[lock-coordinator.health-check]",
        "address",
    )?;
    let address = host_port(address, "address", "127.0.0.1:61626")?;
    let interval = bounded_ms(
        h.interval_ms,
        "interval-ms",
        DEFAULT_HEALTH_INTERVAL_MS,
        MAX_PERIOD_MS,
    )?;
    let timeout_span = h.timeout_ms.as_ref().map(|t| t.span());
    let timeout = bounded_ms(
        h.timeout_ms,
        "timeout-ms",
        DEFAULT_HEALTH_TIMEOUT_MS,
        MAX_PERIOD_MS,
    )?;
    if timeout > interval {
        return Err(key_error(
            timeout_span.unwrap_or(0..0),
            "timeout-ms",
            format!(
                "a probe's timeout ({} ms) must not exceed the interval between probes ({} ms)",
                timeout.as_millis(),
                interval.as_millis()
            ),
        ));
    }
    let fast_span = h.fast_interval_ms.as_ref().map(|t| t.span());
    let fast_given = h.fast_interval_ms.is_some();
    let fast_interval = bounded_ms(
        h.fast_interval_ms,
        "fast-interval-ms",
        DEFAULT_HEALTH_FAST_INTERVAL_MS,
        MAX_PERIOD_MS,
    )?;
    // The default never exceeds a shorter interval.
    let fast_interval = if fast_given {
        fast_interval
    } else {
        fast_interval.min(interval)
    };
    if fast_interval.is_zero() || fast_interval > interval {
        return Err(key_error(
            fast_span.unwrap_or(0..0),
            "fast-interval-ms",
            format!(
                "must be from 1 ms to the interval between probes ({} ms)",
                interval.as_millis()
            ),
        ));
    }
    Ok(HealthConfig {
        address,
        interval,
        timeout,
        rise: count(h.rise, "rise", DEFAULT_HEALTH_RISE)?,
        fall: count(h.fall, "fall", DEFAULT_HEALTH_FALL)?,
        observe_connects: h.observe_connects.unwrap_or(true),
        fast_interval,
    })
}
