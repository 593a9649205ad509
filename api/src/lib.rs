//! `md5-api`: accepts uploads and hands out promise ids, serves results, the web page and health.
//!
//! It writes uploads to `UPLOAD_DIR`, rows to Postgres and jobs to the Redis stream; it never
//! reads the stream and never hashes: that is the worker's job.

pub mod config;
pub mod error;
pub mod notify;
pub mod openapi;
pub mod queue;
pub mod routes;
pub mod serve;
pub mod state;
pub mod upload;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::http::HeaderName;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use config::Config;
use state::AppState;

/// Serves the api on `listener` until `shutdown` completes, then lets in-flight requests finish
/// (at most `SHUTDOWN_GRACE_SECONDS`).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.storage.upload_dir)
        .with_context(|| format!("cannot create UPLOAD_DIR {}", config.storage.upload_dir.display()))?;
    shared::db::run_migrations_when_ready(&config.database, "md5-api").await?;
    let _ = shared::telemetry::metrics();
    let pool = shared::db::build_pool(&config.database, "md5-api")?;
    let queue = queue::JobQueue::new(&config.redis.redis_url, config.stream.jobs_stream.clone())?;
    let stop_listening = CancellationToken::new();
    let finished =
        notify::FinishedTasks::listen(config.database.database_url.clone(), stop_listening.clone());
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let state = AppState {
        upload_slots: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_uploads as usize)),
        config: Arc::new(config),
        pool,
        queue,
        finished,
    };
    let header_timeout = Duration::from_secs(state.config.header_timeout_seconds);
    let app = app(state);
    tracing::info!(addr = %listener.local_addr()?, "md5-api listening");
    serve::serve(listener, app, header_timeout, grace, shutdown).await;
    stop_listening.cancel();
    Ok(())
}

/// The router with its middleware: request ids, tracing, panic safety.
pub fn app(state: AppState) -> axum::Router {
    let request_id = HeaderName::from_static("x-request-id");
    routes::router(state)
        .merge(openapi::swagger_ui())
        .layer(axum::middleware::from_fn(routes::metrics::track_requests))
        .layer(CatchPanicLayer::new())
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
            let request_id = request
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            tracing::info_span!("request", method = %request.method(), uri = %request.uri(), request.id = request_id)
        }))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}
