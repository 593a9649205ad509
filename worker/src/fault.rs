//! Fault-injection points for the fault tests. Compiled to nothing unless the
//! `fault-injection` feature is on, which release images never enable.

use crate::config::Config;

/// Aborts the process here, with no cleanup (as `kill -9` would), when `FAULT_CRASH_AT` names `step`.
#[cfg(feature = "fault-injection")]
pub fn point(config: &Config, step: &str) {
    if config.fault_crash_at.as_deref() == Some(step) {
        eprintln!("fault injection: aborting at {step}");
        std::process::abort();
    }
}

/// No-op without the `fault-injection` feature.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_config: &Config, _step: &str) {}

/// Waits `FAULT_PAUSE_AFTER_COMMIT_MS` here, if set.
#[cfg(feature = "fault-injection")]
pub async fn pause_after_commit(config: &Config) {
    if let Some(ms) = config.fault_pause_after_commit_ms {
        eprintln!("fault injection: pausing {ms} ms after the commit");
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

/// No-op without the `fault-injection` feature.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub async fn pause_after_commit(_config: &Config) {}
