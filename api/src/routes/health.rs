//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::state::AppState;

/// `GET /healthz`: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", body = Object, example = json!({"status": "ok"}))))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 when Postgres and Redis answer and `UPLOAD_DIR` takes a file, else 503
/// naming what is down.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Postgres and Redis answer, the upload volume is writable", body = Object,
            example = json!({"postgres": "ok", "redis": "ok", "upload_dir": "ok"})),
        (status = 503, description = "What is down, and why", body = Object,
            example = json!({"postgres": {"error": "connection refused"}, "redis": "ok", "upload_dir": "ok"})),
    ))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let postgres = state
        .db
        .run(async |conn| {
            use diesel_async::RunQueryDsl as _;
            diesel::sql_query("SELECT 1").execute(conn).await
        })
        .await
        .map(drop)
        .map_err(|err| format!("{:#}", anyhow::Error::new(err)));
    let redis = state.queue.ping().await.map_err(|err| err.to_string());
    let upload_dir = probe_upload_dir(state.config.storage.upload_dir.clone()).await;
    let check = |result: &Result<(), String>| match result {
        Ok(()) => json!("ok"),
        Err(err) => json!({ "error": err }),
    };
    let body =
        json!({ "postgres": check(&postgres), "redis": check(&redis), "upload_dir": check(&upload_dir) });
    let ready = postgres.is_ok() && redis.is_ok() && upload_dir.is_ok();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body))
}

/// Creates, writes and removes a small file in `UPLOAD_DIR`: a read-only or full volume, or one
/// the api may not write, is caught here instead of by the next upload.
async fn probe_upload_dir(upload_dir: std::path::PathBuf) -> Result<(), String> {
    let probe = upload_dir.join(format!(".readyz-{}.probe", uuid::Uuid::new_v4().simple()));
    let display = upload_dir.display().to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let result = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .and_then(|mut file| file.write_all(b"ok"));
        let _ = std::fs::remove_file(&probe);
        result
    })
    .await
    .map_err(|err| err.to_string())?
    .map_err(|err| format!("cannot write to {display}: {err}"))
}
