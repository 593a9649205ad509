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

/// `GET /readyz`: 200 when Postgres and Redis answer, else 503 naming what is down.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Postgres and Redis answer", body = Object, example = json!({"postgres": "ok", "redis": "ok"})),
        (status = 503, description = "What is down, and why", body = Object, example = json!({"postgres": {"error": "connection refused"}, "redis": "ok"})),
    ))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let postgres = match state.pool.get().await {
        Ok(mut conn) => {
            use diesel_async::RunQueryDsl as _;
            diesel::sql_query("SELECT 1").execute(&mut conn).await.map(drop).map_err(|e| e.to_string())
        }
        Err(err) => Err(err.to_string()),
    };
    let redis = state.queue.ping().await.map_err(|err| err.to_string());
    let check = |result: &Result<(), String>| match result {
        Ok(()) => json!("ok"),
        Err(err) => json!({ "error": err }),
    };
    let body = json!({ "postgres": check(&postgres), "redis": check(&redis) });
    let status =
        if postgres.is_ok() && redis.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body))
}
