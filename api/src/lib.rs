//! `md5-api`: accepts uploads and hands out promise ids, serves results, the web page and health.
//!
//! It writes uploads to `UPLOAD_DIR`, rows to Postgres and jobs to the Redis stream; it never
//! reads the stream and never hashes: that is the worker's job.

pub mod body;
pub mod commits;
pub mod config;
pub mod connections;
pub mod database;
pub mod digests;
pub mod error;
pub mod form;
pub mod idempotency;
pub mod intake;
pub mod openapi;
pub mod queue;
pub mod resumable;
pub mod routes;
pub mod serve;
pub mod slots;
pub mod state;
pub mod storage;
pub mod task_counts;
pub mod task_feed;
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
use shared::maintenance::Maintenance;
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
    if config.api_key.as_deref() == Some("") {
        tracing::warn!("API_KEY is set but empty: authentication is off (unset it, or give it a value)");
    }
    // The shutdown signal is watched from the start: a SIGTERM while Postgres is not up yet
    // ends the start-up, too.
    let stop = shared::telemetry::watch_shutdown(shutdown);
    if !shared::db::run_migrations_unless_stopped(&config.database, "md5-api", &stop).await? {
        return Ok(());
    }
    let _ = shared::telemetry::metrics();
    let db = database::Database::new(
        shared::db::build_pool(&config.database, "md5-api")?,
        config.database.timeout(),
    );
    let queue = queue::JobQueue::new(&config.redis.redis_url, config.stream.jobs_stream.clone())?;
    // The maintenance services outlive the listener: the feed still wakes `?wait=` requests
    // while in-flight requests drain; they are stopped (and waited for) after `serve` returns.
    let mut maintenance = Maintenance::new(CancellationToken::new());
    let (feed, feed_service) = task_feed::TaskFeed::listen(config.database.database_url.clone());
    maintenance.start(feed_service);
    maintenance
        .start(storage::janitor::Janitor::new(config.storage.upload_dir.clone(), config.body_bounds().idle));
    maintenance.start(idempotency::PurgeKeys { db: db.clone(), ttl: config.idempotency_ttl() });
    let options = serve::ServeOptions {
        header_timeout: Duration::from_secs(config.header_timeout_seconds),
        grace: Duration::from_secs(config.shutdown_grace_seconds),
        max_connections: config.max_connections,
        idle_timeout: Duration::from_secs(config.idle_timeout_seconds),
    };
    let commits = commits::Commits::spawn(&db);
    let storage = storage::Storage::new(&config.storage.upload_dir, config.min_free_bytes);
    let state = AppState {
        upload_slots: slots::ClientSlots::new(config.max_concurrent_uploads, config.uploads_per_client()),
        event_streams: slots::ClientSlots::new(config.max_event_streams, config.event_streams_per_client()),
        config: Arc::new(config),
        task_counts: task_counts::TaskCounts::new(db.clone()),
        storage,
        commits,
        db,
        queue,
        feed,
    };
    maintenance.start(resumable::expiry::ExpireUploads { state: state.clone() });
    let app = app(state);
    tracing::info!(addr = %listener.local_addr()?, "md5-api listening");
    serve::serve(listener, app, options, stop.cancelled_owned()).await;
    maintenance.stop().await;
    Ok(())
}

/// The router with its middleware: request ids, tracing, panic safety, problem+json for every
/// error, browser security headers.
pub fn app(state: AppState) -> axum::Router {
    let request_id = HeaderName::from_static("x-request-id");
    let (max_wait_seconds, max_upload_bytes) = (state.config.max_wait_seconds, state.config.max_upload_bytes);
    let (router, document) = routes::router(state);
    let router = router
        .merge(openapi::docs_router(&openapi::document(document, max_wait_seconds, max_upload_bytes)).layer(
            tower_http::set_header::SetResponseHeaderLayer::overriding(
                axum::http::header::CONTENT_SECURITY_POLICY,
                axum::http::HeaderValue::from_static(routes::DOCS_CONTENT_SECURITY_POLICY),
            ),
        ))
        .layer(axum::middleware::from_fn(routes::problem_for_bare_errors));
    routes::with_security_headers(router)
        .layer(axum::middleware::from_fn(routes::metrics::track_requests))
        .layer(CatchPanicLayer::new())
        .layer(axum::middleware::from_fn(error::log_failures))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        // Failures are logged once, by `error::log_failures`, not again by the trace layer.
        .layer(TraceLayer::new_for_http().on_failure(()).make_span_with(|request: &axum::http::Request<_>| {
            let request_id = request
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            tracing::info_span!("request", method = %request.method(), uri = %request.uri(), request.id = request_id)
        }))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}
