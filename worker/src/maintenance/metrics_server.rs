//! The worker's `GET /metrics` (Prometheus text) on `METRICS_ADDR`.

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::Service;

/// Serves `/metrics` on a listener bound before the worker starts (a busy address fails the start).
pub struct MetricsServer {
    listener: tokio::net::TcpListener,
}

impl MetricsServer {
    /// Binds `addr`.
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on METRICS_ADDR {addr}"))?;
        Ok(MetricsServer { listener })
    }
}

impl Service for MetricsServer {
    fn name(&self) -> &'static str {
        "metrics-server"
    }

    async fn run(self, stop: CancellationToken) {
        let handle = shared::telemetry::metrics();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let handle = handle.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                        handle.render(),
                    )
                }
            }),
        );
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(err) = served {
            tracing::warn!(error = %err, "metrics listener failed");
        }
    }
}
