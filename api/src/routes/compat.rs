//! The older Python service's interface, as its existing clients see it: the same routes, the
//! same success, pending, error and unknown-id bodies, and FastAPI's 422 for a request its
//! validation would refuse. Where the two differ (ids are UUID strings, not integers; limits,
//! auth and outages answer problem+json) the README says so.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use uuid::Uuid;

use crate::client_id::ClientId;
use crate::error::{ApiError, Problem};
use crate::keys::Scope;
use crate::refusals::{Refusals, UploadRefusals};
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

/// FastAPI's validation error: `{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ValidationErrors {
    /// One entry per invalid input.
    pub detail: Vec<ValidationError>,
}

/// One invalid input, as FastAPI (pydantic 1) describes it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ValidationError {
    /// Where: `["body", "file"]`, `["path", "task_id"]`.
    pub loc: Vec<&'static str>,
    /// What is wrong.
    pub msg: &'static str,
    /// The pydantic error type.
    #[serde(rename = "type")]
    pub kind: &'static str,
}

fn unprocessable(loc: [&'static str; 2], msg: &'static str, kind: &'static str) -> Response {
    let body = ValidationErrors { detail: vec![ValidationError { loc: loc.to_vec(), msg, kind }] };
    (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
}

/// The form of the compatibility upload: a part named `file`; other parts are skipped, as the
/// older service's FastAPI did.
#[derive(Debug, utoipa::ToSchema, serde::Deserialize)]
pub struct CompatUploadForm {
    /// The file to hash; streamed to disk, never held in memory.
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}

/// The older service also took `POST /hashes` (no trailing slash): the same handler.
pub const ALIAS_WITHOUT_SLASH: &str = "/hashes";

/// `POST /hashes/`: 200 `{"task_id": ...}`.
#[utoipa::path(
    post,
    path = "/hashes/",
    operation_id = "create_hash_compat",
    tag = "compatibility",
    request_body(content = CompatUploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Stored and queued", body = CreatedTask,
            links(("GetHash" = (operation_id = "get_hash_compat", parameters(("task_id" = "$response.body#/task_id")),
                description = "The task this upload created")))),
        (status = 400, description = "Malformed multipart, or a part other than `file`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No `file` part, no form at all (as FastAPI answered)", body = ValidationErrors,
            example = json!({"detail": [{"loc": ["body", "file"], "msg": "field required", "type": "value_error.missing"}]})),
        UploadRefusals, Refusals,
    ),
    security((), ("bearer" = []))
)]
pub async fn create_hash(
    State(state): State<AppState>,
    client: Option<ClientId>,
    scope: Scope,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request_id = super::request_id(&headers);
    // The older service knew no Idempotency-Key nor expected digests: those headers are
    // ignored here. Its tasks compute the server's DIGESTS, so they can be found by content.
    let request = upload::UploadRequest {
        headers: &headers,
        body,
        raw: false,
        request_id,
        client,
        parts: upload::Parts::Lenient,
        key: None,
        digests: shared::DigestRequest { algorithms: state.config.digests.0.clone(), ..Default::default() },
        owner: scope.owner,
    };
    match upload::receive(&state, request).await {
        Ok(upload) => Ok(Json(CreatedTask { task_id: upload.task.task_id }).into_response()),
        // FastAPI reads a form only from a form body: anything else, or a form without the
        // field, is a missing `file`.
        Err(err) if err.is_missing_file_field() => {
            Ok(unprocessable(["body", "file"], "field required", "value_error.missing"))
        }
        Err(err) => Err(err),
    }
}

/// `GET /hashes/{task_id}`: 200 with the Celery-style result, or 404 `{"detail": ...}`.
#[utoipa::path(
    get,
    path = "/hashes/{task_id}",
    operation_id = "get_hash_compat",
    tag = "compatibility",
    params(("task_id" = String, Path, description = "The task id: a UUID (or an integer, as the older service's ids were)",
        example = "019acb5e-4f3a-7c21-9d0e-5b6f7a8c9d01",
        pattern = r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}|-?[0-9]{1,18})$")),
    responses(
        (status = 200, description = "PENDING while queued or processing, then SUCCESS with the MD5 or ERROR with the error", body = TaskResult),
        (status = 404, description = "Unknown id (a UUID, or an integer as the older service's ids were)", body = NotFoundDetail),
        (status = 422, description = "An id that is neither a UUID nor an integer (as FastAPI answered)", body = ValidationErrors,
            example = json!({"detail": [{"loc": ["path", "task_id"], "msg": "value is not a valid uuid", "type": "type_error.uuid"}]})),
        Refusals,
    ),
    security((), ("bearer" = []))
)]
pub async fn get_hash(
    State(state): State<AppState>,
    scope: Scope,
    task_id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let task_id = task_id.map(|Path(id)| id).unwrap_or_else(|_| "(invalid id)".to_owned());
    let not_found = || {
        let body = NotFoundDetail { detail: format!("Task {task_id} was not found") };
        (StatusCode::NOT_FOUND, Json(body)).into_response()
    };
    let Ok(id) = Uuid::parse_str(&task_id) else {
        // The older service's ids were integers: one of those names no task here.
        if task_id.parse::<i64>().is_ok() {
            return Ok(not_found());
        }
        return Ok(unprocessable(["path", "task_id"], "value is not a valid uuid", "type_error.uuid"));
    };
    let found = state.db.run(async |conn| queries::find_task(conn, id).await).await?;
    let Some(task) = found.filter(|task| scope.may_see(task.owner)) else {
        return Ok(not_found());
    };
    let result = match task.status {
        TaskStatus::Uploading | TaskStatus::Queued | TaskStatus::Processing => {
            TaskResult { status: "PENDING", result: None }
        }
        TaskStatus::Done => TaskResult { status: "SUCCESS", result: task.result.map(String::from) },
        TaskStatus::Failed | TaskStatus::Expired => TaskResult { status: "ERROR", result: task.error },
        TaskStatus::Cancelled => TaskResult { status: "ERROR", result: Some("cancelled".to_owned()) },
    };
    Ok(Json(result).into_response())
}
