//! Maintenance services: the loops each binary runs beside its main work for the life of the
//! process (River's `internal/maintenance` and `startstop` are the model), in one shape for
//! `md5-api` and `md5-worker` alike.
//!
//! Each lives in a file of its own: a [`Service`] built (and, where it must, checked) before the
//! process starts serving, then run by [`Maintenance::start`] until the one shutdown token the
//! process shares is cancelled; [`Maintenance::stop`] waits for them all, with a deadline.
//! A binary's `lib.rs` only wires them.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long [`Maintenance::stop`] waits for the services to return before it aborts them.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A loop that runs until the worker stops.
pub trait Service: Send + 'static {
    /// Its name, in logs.
    fn name(&self) -> &'static str;

    /// Runs until `stop` is cancelled, then returns promptly.
    fn run(self, stop: CancellationToken) -> impl Future<Output = ()> + Send;
}

/// The running services, and the shutdown token they watch.
pub struct Maintenance {
    services: JoinSet<()>,
    stop: CancellationToken,
}

impl Maintenance {
    /// No services yet; each will run until `stop`.
    pub fn new(stop: CancellationToken) -> Self {
        Maintenance { services: JoinSet::new(), stop }
    }

    /// Starts `service` on a task of its own.
    pub fn start(&mut self, service: impl Service) {
        tracing::debug!(service = service.name(), "maintenance service started");
        self.services.spawn(service.run(self.stop.clone()));
    }

    /// Waits for every service to return after the shutdown token was cancelled (cancelling it
    /// here if it was not); aborts those still running after [`STOP_TIMEOUT`].
    pub async fn stop(mut self) {
        self.stop.cancel();
        let drained =
            tokio::time::timeout(STOP_TIMEOUT, async { while self.services.join_next().await.is_some() {} })
                .await;
        if drained.is_err() {
            tracing::warn!(
                services = self.services.len(),
                "maintenance services did not stop in time; aborted"
            );
            self.services.abort_all();
        }
    }
}
