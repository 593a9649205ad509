//! Rotation of the results log on SIGHUP (what logrotate's `postrotate` or an operator sends).
//! Rotation by size (`LOG_MAX_BYTES`) happens inside the appender itself.

use tokio_util::sync::CancellationToken;

use super::Service;
use crate::results_log::ResultsLog;

/// Rotates the results log whenever the process gets SIGHUP.
pub struct RotateOnHangup {
    /// The log to rotate.
    pub log: ResultsLog,
}

impl Service for RotateOnHangup {
    fn name(&self) -> &'static str {
        "log-rotation"
    }

    async fn run(self, stop: CancellationToken) {
        let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; the log rotates by LOG_MAX_BYTES only");
            return;
        };
        loop {
            tokio::select! {
                received = hangups.recv() => {
                    if received.is_none() {
                        return;
                    }
                    match self.log.rotate().await {
                        Ok(Some(_)) => {}
                        Ok(None) => tracing::info!("SIGHUP: the results log is empty; nothing to rotate"),
                        Err(err) => tracing::warn!(error = format!("{err:#}"), "SIGHUP: cannot rotate the results log"),
                    }
                }
                () = stop.cancelled() => return,
            }
        }
    }
}
