//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::readiness::Readiness;
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
    let readiness = Readiness::check(&state).await;
    let body: serde_json::Map<String, Value> = readiness
        .checks()
        .into_iter()
        .map(|(name, result)| {
            let value = match result {
                Ok(()) => json!("ok"),
                Err(err) => json!({ "error": err }),
            };
            (name.to_owned(), value)
        })
        .collect();
    let status = if readiness.ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Value::Object(body)))
}
