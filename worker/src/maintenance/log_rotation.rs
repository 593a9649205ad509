//! Rotation of the results log on SIGHUP (what logrotate's `postrotate` or an operator sends).
//! Rotation by size (`LOG_MAX_BYTES`) happens inside the appender itself.

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::Service;
use crate::results_log::ResultsLog;

/// The process's SIGHUP listener. Made first thing in `main`: from then on SIGHUP no longer
/// takes its default action (ending the process), so a logrotate that signals a worker still
/// starting (waiting for Postgres, say) does not kill it; the rotation happens once it runs.
pub struct Hangups(Option<Signal>);

impl Hangups {
    /// Starts listening for SIGHUP.
    pub fn listen() -> Self {
        Hangups(signal(SignalKind::hangup()).ok())
    }
}

/// Rotates the results log whenever the process gets SIGHUP.
pub struct RotateOnHangup {
    /// The log to rotate.
    pub log: ResultsLog,
    /// SIGHUPs since `Hangups::listen`.
    pub hangups: Hangups,
}

impl Service for RotateOnHangup {
    fn name(&self) -> &'static str {
        "log-rotation"
    }

    async fn run(self, stop: CancellationToken) {
        let Some(mut hangups) = self.hangups.0 else {
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
