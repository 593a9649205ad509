//! `md5-api`: accepts uploads and hands out promise ids, serves results, the web page and health.
//!
//! It writes uploads to `UPLOAD_DIR`, rows to Postgres and jobs to the Redis stream; it never
//! reads the stream and never hashes: that is the worker's job.
//!
//! # An upload, from the client to the log line
//!
//! 1. `serve.rs` accepts the connection (if fewer than `MAX_CONNECTIONS` are open) and gives it
//!    `HEADER_TIMEOUT_SECONDS` to deliver a request head. `POST /api/v1/hashes` reaches
//!    `routes::v1::create_hash` → `upload::receive`: the content type must be `multipart/form-data`
//!    or the bare file (else 415), `Content-Length` must not exceed the limit (413); `intake::admit`
//!    takes an upload slot for the api and for this client address (503) and checks that the volume
//!    has `MIN_FREE_BYTES` (507); a Postgres connection must be available (503).
//! 2. A UUIDv7 is drawn. With an `Idempotency-Key`, the key is reserved for it (`idempotency::begin`):
//!    a key still reserved by another upload is 409 at once; a completed key makes this a repeat,
//!    whose `file` part is only counted (not stored) and answered with the original task, or 422
//!    when its file name or size differ. The body is read through `body::guard` (idle, rate and form-head bounds)
//!    by multer (whole-stream limit); the `file` part is gathered into 64 KiB buffers, each written
//!    to `UPLOAD_DIR/.<id>.part` on a blocking thread while the next fills (a small file is created,
//!    written and `fdatasync`ed in one blocking call; `storage::PartWriter`), counted against
//!    `MAX_UPLOAD_BYTES`. Any failure, or the client going away (the handler future is dropped),
//!    removes the files through `storage::PartFile`'s `Drop`, after any write still running on a
//!    blocking thread.
//! 3. The body is complete and durable: the rest (`intake::commit_one_shot`) runs in a task of its own, so a client that
//!    disconnects now cannot leave a row without its file. Rename to `UPLOAD_DIR/<id>`, `fsync` of
//!    the folder, `queries::insert_tasks` commits the row `queued` (with `queries::complete_keys`
//!    in the same transaction when the upload has a key); the `PartFile` is kept;
//!    `JobQueue::enqueue` XADDs `{task_id, request_id}` (a failure is logged, the sweeper retries);
//!    202 with `Location`. Each of the three is group-committed with the uploads finishing at the
//!    same time (`storage::Storage::promote`, `commits.rs`, `queue.rs`): one blocking call renames
//!    them all and `fsync`s the folder once, one multi-row INSERT commits their rows, one pipeline
//!    adds their jobs.
//! 4. A worker's `XREADGROUP` returns the entry; `job::handle` claims, hashes, commits the result,
//!    appends the line, deletes the file, acknowledges (XACK + XDEL) and records `logged_at`. The status trigger `NOTIFY`s
//!    `md5_task_changed`; the api's listener (`task_feed.rs`) wakes any `?wait=` request and event
//!    stream for that id.

pub mod body;
pub mod client_id;
pub mod commits;
pub mod config;
pub mod connections;
pub mod creation_rate;
pub mod database;
pub mod digests;
pub mod error;
pub mod follow;
pub mod form;
pub mod forwarded;
pub mod idempotency;
pub mod intake;
pub mod keys;
pub mod openapi;
pub mod orphans;
pub mod queue;
pub mod quotas;
pub mod readiness;
pub mod refusals;
pub mod resumable;
pub mod retention;
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
    // Counters the dashboard and the alerts watch, shown from the start at zero.
    for quota in quotas::Quota::ALL {
        metrics::counter!("md5_quota_refusals_total", "quota" => quota.name()).absolute(0);
    }
    for counter in ["md5_uploads_total", "md5_upload_bytes_total", "md5_orphan_files_removed_total"] {
        metrics::counter!(counter).absolute(0);
    }
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
    maintenance.start(orphans::Orphans { upload_dir: config.storage.upload_dir.clone(), db: db.clone() });
    maintenance.start(idempotency::PurgeKeys { db: db.clone(), ttl: config.idempotency_ttl() });
    if config.task_retention_seconds > 0 {
        let keep = Duration::from_secs(config.task_retention_seconds);
        maintenance.start(retention::Retention { db: db.clone(), keep });
    }
    let options = serve::ServeOptions {
        header_timeout: Duration::from_secs(config.header_timeout_seconds),
        grace: Duration::from_secs(config.shutdown_grace_seconds),
        max_connections: config.max_connections,
        idle_timeout: Duration::from_secs(config.idle_timeout_seconds),
    };
    let commits = commits::Commits::spawn(&db);
    let storage = storage::Storage::new(&config.storage.upload_dir, config.min_free_bytes);
    let keys = keys::Keys::new(config.api_key.clone(), config.quotas(storage.volume_bytes()));
    keys.load(&db).await.context("cannot read the API keys")?;
    maintenance.start(keys::KeyRefresh { keys: keys.clone(), db: db.clone() });
    let state = AppState::new(state::Shared {
        keys,
        upload_slots: slots::ClientSlots::new("md5_upload_slots_in_use", config.max_concurrent_uploads),
        event_streams: slots::ClientSlots::new("md5_event_streams_open", config.max_event_streams),
        creation_rate: Arc::new(creation_rate::CreationRate::default()),
        long_polls: slots::ClientSlots::new("md5_long_polls_waiting", u32::MAX),
        config: Arc::new(config),
        task_counts: task_counts::TaskCounts::new(db.clone()),
        storage,
        commits,
        db,
        queue,
        feed,
    });
    maintenance.start(resumable::expiry::ExpireUploads { state: state.clone() });
    maintenance.start(readiness::ReadinessGauges { state: state.clone() });
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
            tracing::info_span!("request", method = %request.method(), uri = %request.uri(), request.id = request_id, key = tracing::field::Empty)
        }))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}
