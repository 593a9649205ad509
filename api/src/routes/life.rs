//! The end of a task's life, by its client: `POST …/cancel` stops it and keeps it (`cancelled`),
//! `DELETE` forgets it (cancelled first if unfinished). Retention (`crate::retention`) forgets
//! finished tasks the same way once they are old enough.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::v1::load;
use crate::error::{ApiError, Problem};
use crate::keys::Scope;
use crate::refusals::Refusals;
use crate::resumable::UploadError;
use crate::state::AppState;
use shared::task_view::TaskView;
use shared::{Task, TaskStatus, queries};

/// `POST /api/v1/hashes/{id}/cancel`: cancels a queued or processing task.
#[utoipa::path(
    post,
    path = "/api/v1/hashes/{id}/cancel",
    operation_id = "cancel_hash_v1",
    tag = "v1",
    params(("id" = String, Path, description = "The promise id (a UUID)", example = "019acb5e-4f3a-7c21-9d0e-5b6f7a8c9d01")),
    responses(
        (status = 200, description = "The task, now `cancelled` (also when it already was): its file is removed, \
            a running hash stops within a second wherever it runs, and it gets no line in the results log, \
            which records results only", body = TaskView),
        (status = 404, description = "No task has this id, or it is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The task is already `done`, `failed` or `expired`, or is a resumable upload \
            still `uploading` (terminate it with `DELETE` on its upload URL, or forget it with `DELETE` on the task)", body = Problem, content_type = "application/problem+json"),
        Refusals,
    ),
    security((), ("bearer" = []))
)]
pub async fn cancel_hash(
    State(state): State<AppState>,
    scope: Scope,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let task_id = super::task_id_in_path(id)?;
    if state.keys.required() && !scope.sees_all {
        // Another key's task is cancelled by no one but its own client (or an admin).
        load(&state, scope, task_id).await?;
    }
    let task = match cancel(&state, task_id).await? {
        Some(task) => task,
        None => {
            let (task, _) = load(&state, scope, task_id).await?;
            match task.status {
                TaskStatus::Cancelled => task,
                TaskStatus::Uploading => {
                    return Err(ApiError::conflict(
                        "task-not-cancellable",
                        "the task is a resumable upload still receiving bytes: terminate it with DELETE on its upload URL",
                    ));
                }
                status => {
                    return Err(ApiError::conflict(
                        "task-not-cancellable",
                        format!("the task is already {} and cannot be cancelled", status.as_str()),
                    ));
                }
            }
        }
    };
    Ok((StatusCode::OK, Json(TaskView::from(task))).into_response())
}

/// Cancels `task_id` if it is `queued` or `processing` (its file removed, its hash stopped by
/// the worker within a second); the task as it is now, `None` if it was in another state.
async fn cancel(state: &AppState, task_id: Uuid) -> Result<Option<Task>, ApiError> {
    let cancelled = state.db.write(async |conn| queries::cancel_task(conn, task_id).await).await?;
    if cancelled.is_some() {
        metrics::counter!("md5_tasks_cancelled_total").increment(1);
        tracing::info!(task.id = %task_id, "task cancelled");
        // The worker holding it may still read its open file; nothing else will.
        state.storage.remove_cancelled(task_id).await;
    }
    Ok(cancelled)
}

/// `DELETE /api/v1/hashes/{id}`: forgets a task.
#[utoipa::path(
    delete,
    path = "/api/v1/hashes/{id}",
    operation_id = "forget_hash_v1",
    tag = "v1",
    params(("id" = String, Path, description = "The promise id (a UUID)", example = "019acb5e-4f3a-7c21-9d0e-5b6f7a8c9d01")),
    responses(
        (status = 204, description = "The task is forgotten: its row, digests, idempotency key and stored file are \
            gone, and every route answers its id as one that never existed. An unfinished task is cancelled first \
            (a resumable upload terminated): its hash stops within a second and it gets no log line. A result \
            already in the results log stays there, and a webhook event already written is still delivered"),
        (status = 404, description = "No task has this id (or it was forgotten), or it is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The task's result is being written to the results log, or an append to its \
            upload is running: try again shortly", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        Refusals,
    ),
    security((), ("bearer" = []))
)]
pub async fn forget_hash(
    State(state): State<AppState>,
    scope: Scope,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let task_id = super::task_id_in_path(id)?;
    let (task, _) = load(&state, scope, task_id).await?;
    let busy = |detail: &'static str| {
        ApiError::conflict("task-busy", detail).with_response_header(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from(FORGET_RETRY_AFTER.as_secs()),
        )
    };
    match task.status {
        TaskStatus::Uploading => match crate::resumable::terminate(&state, task_id).await {
            Ok(()) | Err(UploadError::Gone(_) | UploadError::NotFound) => {}
            Err(UploadError::Busy) => {
                return Err(busy("an append to this upload is running; try again shortly"));
            }
            Err(UploadError::Api(err)) => return Err(err),
            Err(other) => {
                return Err(ApiError::internal(anyhow::anyhow!(
                    "terminating an upload to forget it: {other:?}"
                )));
            }
        },
        TaskStatus::Queued | TaskStatus::Processing => {
            cancel(&state, task_id).await?;
        }
        _ => {}
    }
    let forgotten = state.db.write(async |conn| queries::forget_tasks(conn, &[task_id]).await).await?;
    if forgotten.is_empty() {
        // It was found a moment ago: it finished meanwhile, and its line is not written yet (or
        // another DELETE forgot it first, which the retry answers 404).
        return Err(busy("the task's result is being written to the results log; try again shortly"));
    }
    state.storage.remove_cancelled(task_id).await;
    metrics::counter!("md5_tasks_forgotten_total", "by" => "client").increment(1);
    tracing::info!(task.id = %task_id, "task forgotten");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// What a `DELETE` refused for a moment tells its client to wait.
const FORGET_RETRY_AFTER: Duration = Duration::from_secs(1);
