//! The older Python service's interface, kept byte-compatible for its existing clients.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use uuid::Uuid;

use crate::error::{ApiError, Problem};
use crate::serve::ClientAddr;
use crate::state::AppState;
use crate::upload;
use shared::{TaskStatus, queries};

/// `{"task_id": "<id>"}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedTask {
    /// The promise id.
    pub task_id: Uuid,
}

/// `{"status": "PENDING"|"SUCCESS"|"ERROR", "result": <md5, error text, or null>}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskResult {
    /// Celery-style state.
    #[schema(value_type = String, pattern = "^(PENDING|SUCCESS|ERROR)$")]
    pub status: &'static str,
    /// The MD5, the error text, or null while pending.
    pub result: Option<String>,
}

/// `{"detail": "Task <id> was not found"}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NotFoundDetail {
    /// What was not found.
    pub detail: String,
}

/// `POST /hashes/`: 200 `{"task_id": ...}`.
#[utoipa::path(
    post,
    path = "/hashes/",
    tag = "compatibility",
    request_body(content = crate::openapi::UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Stored and queued", body = CreatedTask),
        (status = 400, description = "No `file` part, or malformed multipart", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "API key missing or wrong", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body stalled for BODY_IDLE_TIMEOUT_SECONDS or arrived slower than MIN_UPLOAD_BYTES_PER_SECOND", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than MAX_UPLOAD_BYTES", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not multipart/form-data", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unreachable or too many uploads in progress", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "The upload volume is full", body = Problem, content_type = "application/problem+json"),
    ),
    security((), ("bearer" = []))
)]
pub async fn create_hash(
    State(state): State<AppState>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<CreatedTask>, ApiError> {
    let task = upload::receive(
        &state,
        &headers,
        body,
        super::request_id(&headers),
        client.map(|Extension(ClientAddr(ip))| ip),
    )
    .await?;
    Ok(Json(CreatedTask { task_id: task.task_id }))
}

/// `GET /hashes/{task_id}`: 200 with the Celery-style result, or 404 `{"detail": ...}`.
#[utoipa::path(
    get,
    path = "/hashes/{task_id}",
    tag = "compatibility",
    params(("task_id" = String, Path, description = "The task id")),
    responses(
        (status = 200, description = "PENDING while queued or processing, then SUCCESS with the MD5 or ERROR with the error", body = TaskResult),
        (status = 401, description = "API key missing or wrong", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown or malformed id", body = NotFoundDetail),
        (status = 503, description = "Postgres unreachable", body = Problem, content_type = "application/problem+json"),
    ),
    security((), ("bearer" = []))
)]
pub async fn get_hash(
    State(state): State<AppState>,
    task_id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let task_id = task_id.map(|Path(id)| id).unwrap_or_else(|_| "(invalid id)".to_owned());
    let not_found = || {
        let body = NotFoundDetail { detail: format!("Task {task_id} was not found") };
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
        TaskStatus::Queued | TaskStatus::Processing => TaskResult { status: "PENDING", result: None },
        TaskStatus::Done => TaskResult { status: "SUCCESS", result: task.result },
        TaskStatus::Failed => TaskResult { status: "ERROR", result: task.error },
    };
    Ok(Json(result).into_response())
}
