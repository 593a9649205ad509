//! `/api/v1/hashes`: what the web page and new clients use.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use crate::client_id::ClientId;
use crate::connections::Activity;
use crate::digests::{self, DigestsQuery, ExpectedDigests};
use crate::error::{ApiError, Problem};
use crate::idempotency::IdempotencyKey;
use crate::keys::Scope;
use crate::refusals::{Refusals, UploadRefusals};
use crate::state::AppState;
use crate::upload;
use shared::events::TaskEvent;
use shared::models::UploadRow;
pub use shared::task_view::TaskView;
use shared::{Task, uploads};

/// Set on the answer to a repeated `Idempotency-Key`: the task is the original request's.
pub const REPLAYED: &str = "idempotent-replayed";

/// How often a waiting request re-reads its row even without a notification.
const WAIT_RECHECK: Duration = Duration::from_secs(1);

/// The multipart form every upload route takes: exactly one part, named `file`.
#[derive(Debug, utoipa::ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadForm {
    /// The file to hash; streamed to disk, never held in memory.
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}

/// `POST /api/v1/hashes`: 202 with the queued task and its `Location`.
#[utoipa::path(
    post,
    path = "/api/v1/hashes",
    operation_id = "create_hash_v1",
    tag = "v1",
    params(("Idempotency-Key" = Option<String>, Header, max_length = 255, pattern = "^[!-~]{1,255}$",
        example = "0f8c5c2e-3c1b-4f5e-9a59-2a4d1c7e8b90",
        description = "Makes a retry safe: a repeat with the same key and the same file name and size \
            within IDEMPOTENCY_TTL_SECONDS (default 24 h) answers with the original task and stores nothing"),
        DigestsQuery, ExpectedDigests),
    request_body(content(
        (UploadForm = "multipart/form-data"),
        (Vec<u8> = "application/octet-stream", example = json!("hello")),
    ), description = "The file: a form's `file` part, or the whole body as application/octet-stream \
        (its name from a `Content-Disposition: attachment; filename=…` header; no form parsed)"),
    responses(
        (status = 202, description = "Stored and queued (or, for a repeated Idempotency-Key, the original task); \
            the body is the task, `Location` its URL. An expected digest that differs from the file's ends the task \
            `failed` (`error` names the algorithm, the expected and the computed value)", body = TaskView,
            headers(("Location" = String, description = "/api/v1/hashes/{id}"),
                ("Idempotent-Replayed" = String, description = "`true` when the answer is a repeated key's original task")),
            links(("GetHash" = (operation_id = "get_hash_v1", parameters(("id" = "$response.body#/id")),
                description = "The task this upload created")),
                ("CancelHash" = (operation_id = "cancel_hash_v1", parameters(("id" = "$response.body#/id")),
                description = "Cancel it")),
                ("ForgetHash" = (operation_id = "forget_hash_v1", parameters(("id" = "$response.body#/id")),
                description = "Forget it")))),
        (status = 400, description = "No `file` part, malformed multipart, a malformed Idempotency-Key, an unknown \
            name in `digests` (the detail lists the known ones), or a malformed, unknown or contradictory expected digest", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The Idempotency-Key's first upload is still in progress", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 415, description = "Not multipart/form-data", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The Idempotency-Key was used for a different file name or size", body = Problem, content_type = "application/problem+json"),
        UploadRefusals, Refusals,
    ),
    security((), ("bearer" = []))
)]
pub async fn create_hash(
    State(state): State<AppState>,
    client: Option<ClientId>,
    scope: Scope,
    headers: HeaderMap,
    query: Result<Query<DigestsQuery>, QueryRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|err| ApiError::bad_request(err.body_text()))?;
    let digests = digests::requested(&query, &state.config.digests.0, &headers)?;
    let key = IdempotencyKey::from_headers(&headers)?;
    let request = upload::UploadRequest {
        headers: &headers,
        body,
        raw: true,
        request_id: super::request_id(&headers),
        client,
        parts: upload::Parts::Strict,
        key,
        digests,
        owner: scope.owner,
    };
    let upload = upload::receive(&state, request).await?;
    let location = format!("/api/v1/hashes/{}", upload.task.task_id);
    let mut response = (StatusCode::ACCEPTED, Json(TaskView::from(upload.task))).into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_str(&location).map_err(ApiError::internal)?);
    if upload.replayed {
        headers.insert(REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Query of `GET /api/v1/hashes/{id}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Seconds (0–60, decimals allowed) to hold the request until the task is finished.
    #[param(value_type = Option<f64>, minimum = 0, maximum = 60, example = 0.5)]
    pub wait: Option<String>,
}

/// `GET /api/v1/hashes/{id}[?wait=S]`.
#[utoipa::path(
    get,
    path = "/api/v1/hashes/{id}",
    operation_id = "get_hash_v1",
    tag = "v1",
    params(("id" = String, Path, description = "The promise id (a UUID)", example = "019acb5e-4f3a-7c21-9d0e-5b6f7a8c9d01"), WaitQuery),
    responses(
        (status = 200, description = "The task", body = TaskView,
            headers(("File-Digest" = String, description = "Once `done`, the file's sha-256 and sha-512 digests \
                (those it has) in RFC 9530 `Repr-Digest` syntax, e.g. `sha-256=:LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=:`. \
                Not `Repr-Digest`, which would claim them for this JSON answer")),
            links(("CancelHash" = (operation_id = "cancel_hash_v1", parameters(("id" = "$response.body#/id")),
                description = "Cancel it")),
                ("ForgetHash" = (operation_id = "forget_hash_v1", parameters(("id" = "$response.body#/id")),
                description = "Forget it")))),
        (status = 400, description = "`wait` out of range", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No task has this id, or it is not a UUID", body = Problem, content_type = "application/problem+json"),
        Refusals,
    ),
    security((), ("bearer" = []))
)]
pub async fn get_hash(
    State(state): State<AppState>,
    client: Option<ClientId>,
    scope: Scope,
    connection: Option<Extension<Arc<Activity>>>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<WaitQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    // A path that is not even text cannot name a task: 404, like any other unknown id.
    let task_id = super::task_id_in_path(id)?;
    let Query(query) = query.map_err(|err| ApiError::bad_request(err.body_text()))?;
    let wait = parse_wait(query.wait.as_deref(), state.config.max_wait_seconds)?;
    // Past the client's share of long-polls, answered at once, as without `?wait=`.
    let quota = state.keys.quotas(client).long_polls;
    let long_poll = (!wait.is_zero()).then(|| state.long_polls.try_acquire(client, quota).ok()).flatten();
    let task = match long_poll {
        None => load(&state, scope, task_id).await?,
        Some(_held) => {
            let connection = connection.map(|Extension(activity)| activity);
            let _polling = connection.as_ref().map(|activity| activity.long_polling());
            let closing = async {
                match &connection {
                    Some(activity) => activity.closing().await,
                    None => std::future::pending().await,
                }
            };
            wait_for_finish(&state, scope, task_id, wait, closing).await?
        }
    };
    let progress = state.feed.progress(task.0.task_id);
    let view = TaskView::from(task).with_progress(progress);
    let file_digest = view.digests.as_ref().and_then(digests::file_digest_header);
    let mut response = Json(view).into_response();
    if let Some(value) = file_digest {
        response.headers_mut().insert(HeaderName::from_static("file-digest"), value);
    }
    Ok(response)
}

fn parse_wait(raw: Option<&str>, max_seconds: u64) -> Result<Duration, ApiError> {
    let Some(raw) = raw else {
        return Ok(Duration::ZERO);
    };
    let seconds: f64 = raw
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s <= max_seconds as f64)
        .ok_or_else(|| ApiError::wait_out_of_range(max_seconds))?;
    Ok(Duration::from_secs_f64(seconds))
}

/// Loads a task (with its upload row while it is `uploading`) or fails with 404, as for an id
/// that never existed when `scope` may not see it (the same query either way).
pub async fn load(
    state: &AppState,
    scope: Scope,
    task_id: Uuid,
) -> Result<(Task, Option<UploadRow>), ApiError> {
    let task = state.db.run(async |conn| uploads::find_shown(conn, task_id).await).await?;
    task.filter(|(task, _)| scope.may_see(task.owner)).ok_or_else(|| ApiError::task_not_found(task_id))
}

/// Answers as soon as the task is finished (woken by its notification), after `wait`, or when
/// `closing` completes (the connection was chosen to make room), with the task as it is then.
async fn wait_for_finish(
    state: &AppState,
    scope: Scope,
    task_id: Uuid,
    wait: Duration,
    closing: impl Future<Output = ()>,
) -> Result<(Task, Option<UploadRow>), ApiError> {
    // Subscribe before the first read, so a finish between the read and the wait is not missed.
    let mut events = state.feed.watch(task_id);
    let deadline = tokio::time::Instant::now() + wait;
    tokio::pin!(closing);
    let mut closed = false;
    // A task this process inserted and no event has changed since is `queued` as far as a read
    // could tell: wait for its event without the read (every answer is still a fresh read).
    let mut read_first = match state.feed.unchanged_since_inserted(task_id) {
        Some(owner) if !scope.may_see(owner) => return Err(ApiError::task_not_found(task_id)),
        Some(_) => false,
        None => true,
    };
    loop {
        if std::mem::replace(&mut read_first, true) {
            let task = load(state, scope, task_id).await?;
            if closed || task.0.status.is_finished() || tokio::time::Instant::now() >= deadline {
                return Ok(task);
            }
        }
        let recheck_at = deadline.min(tokio::time::Instant::now() + WAIT_RECHECK);
        loop {
            let received = tokio::select! {
                received = tokio::time::timeout_at(recheck_at, events.recv()) => received,
                () = &mut closing => {
                    closed = true;
                    break;
                }
            };
            match received {
                Ok(Ok(TaskEvent::Changed(id, status))) if id == task_id && status.is_finished() => break,
                Ok(Ok(TaskEvent::Changed(..) | TaskEvent::Progress(..))) => continue,
                // We may have missed ours (a reconnection, or we lagged behind), or it is time
                // to look again.
                Ok(Ok(TaskEvent::Resync)) | Ok(Err(RecvError::Lagged(_))) | Err(_) => break,
                Ok(Err(RecvError::Closed)) => {
                    tokio::time::sleep_until(recheck_at).await;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_accepts_seconds_within_the_limit_only() {
        assert_eq!(parse_wait(None, 60).unwrap(), Duration::ZERO);
        assert_eq!(parse_wait(Some("2.5"), 60).unwrap(), Duration::from_millis(2500));
        assert!(parse_wait(Some("61"), 60).is_err());
        assert!(parse_wait(Some("-1"), 60).is_err());
        assert!(parse_wait(Some("NaN"), 60).is_err());
        assert!(parse_wait(Some("soon"), 60).is_err());
    }
}
