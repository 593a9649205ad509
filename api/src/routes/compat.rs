//! The older Python service's interface, kept byte-compatible for its existing clients.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;
use crate::upload;
use shared::{TaskStatus, queries};

/// `{"task_id": "<id>"}`.
#[derive(Debug, Serialize)]
pub struct CreatedTask {
    /// The promise id.
    pub task_id: Uuid,
}

/// `{"status": "PENDING"|"SUCCESS"|"ERROR", "result": <md5, error text, or null>}`.
#[derive(Debug, Serialize)]
pub struct TaskResult {
    /// Celery-style state.
    pub status: &'static str,
    /// The MD5, the error text, or null while pending.
    pub result: Option<String>,
}

/// `POST /hashes/`: 200 `{"task_id": ...}`.
pub async fn create_hash(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<CreatedTask>, ApiError> {
    let task = upload::receive(&state, &headers, body, super::request_id(&headers)).await?;
    Ok(Json(CreatedTask {
        task_id: task.task_id,
    }))
}

/// `GET /hashes/{task_id}`: 200 with the Celery-style result, or 404 `{"detail": ...}`.
pub async fn get_hash(
    State(state): State<AppState>,
    Path(task_id): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || {
        let body = json!({ "detail": format!("Task {task_id} was not found") });
        (StatusCode::NOT_FOUND, Json(body)).into_response()
    };
    let Ok(id) = Uuid::parse_str(&task_id) else {
        return Ok(not_found());
    };
    let mut conn = state.pool.get().await?;
    let Some(task) = queries::find_task(&mut conn, id).await? else {
        return Ok(not_found());
    };
    let result = match task.status {
        TaskStatus::Queued | TaskStatus::Processing => TaskResult {
            status: "PENDING",
            result: None,
        },
        TaskStatus::Done => TaskResult {
            status: "SUCCESS",
            result: task.result,
        },
        TaskStatus::Failed => TaskResult {
            status: "ERROR",
            result: task.error,
        },
    };
    Ok(Json(result).into_response())
}
