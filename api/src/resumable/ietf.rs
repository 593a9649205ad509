//! The IETF draft "Resumable Uploads for HTTP", draft -05 (`Upload-Draft-Interop-Version: 6`),
//! on `/api/v1/uploads`: creation (`Upload-Complete`, `Upload-Length`), offset retrieval by
//! `HEAD`, append by `PATCH` with `application/partial-upload`, cancellation by `DELETE`, and
//! `Upload-Limit`. Problems use the draft's registered types.
//!
//! The draft's `104 (Upload Resumption Supported)` interim response is not sent: hyper 1.x has
//! no way for a server to send an informational response (hyperium/hyper#4114 is open). The
//! final answer to a creation carries the same `Location`, which is what clients that create an
//! upload explicitly (tus-js-client, Apple's `URLSession`) read.

use crate::client_id::ClientId;
use crate::digests::DigestsQuery;
use crate::keys::Requester;

use axum::Json;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::headers::{self, sf_boolean};
use super::{Append, Appended, Completion, NewUpload, UploadError, UploadState};
use crate::error::ApiError;
use crate::state::AppState;
use shared::task_view::TaskView;

/// The interop version of draft -05.
pub const INTEROP_VERSION: &str = "6";
/// The media type of an append's body.
pub const PARTIAL_UPLOAD: &str = "application/partial-upload";

const MISMATCHING_OFFSET: &str = "https://iana.org/assignments/http-problem-types#mismatching-upload-offset";
const COMPLETED_UPLOAD: &str = "https://iana.org/assignments/http-problem-types#completed-upload";
const INCONSISTENT_LENGTH: &str =
    "https://iana.org/assignments/http-problem-types#inconsistent-upload-length";

fn name(name: &'static str) -> HeaderName {
    HeaderName::from_static(name)
}

/// `Upload-Limit`: the largest upload, and how long the upload lives without an append.
fn upload_limit(state: &AppState, expires_at: Option<DateTime<Utc>>) -> HeaderValue {
    let max_age = match expires_at {
        Some(at) => (at - Utc::now()).num_seconds().max(0).unsigned_abs(),
        None => state.config.upload_expiry().idle.as_secs(),
    };
    HeaderValue::from_str(&format!("max-size={}, max-age={max_age}", state.config.max_upload_bytes))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Adds what every answer about an upload says: its offset, whether it is complete, its limits.
fn progress(
    state: &AppState,
    response: &mut Response,
    offset: u64,
    complete: bool,
    expires_at: Option<DateTime<Utc>>,
) {
    let headers = response.headers_mut();
    headers.insert(name("upload-offset"), HeaderValue::from(offset));
    headers.insert(name("upload-complete"), sf_boolean(complete));
    headers.insert(name("upload-limit"), upload_limit(state, expires_at));
}

/// 400 for an interop version other than 6.
pub fn unsupported_version(version: &str) -> Response {
    ApiError::bad_request(format!(
        "Upload-Draft-Interop-Version {:?} is not supported: this service speaks version 6 (draft -05)",
        version.chars().take(20).collect::<String>()
    ))
    .into_response()
}

/// `OPTIONS`: the limits.
pub fn options(state: &AppState) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(name("upload-limit"), upload_limit(state, None));
    response
}

fn refusal(err: UploadError) -> Response {
    match err {
        UploadError::NotFound | UploadError::Gone(_) => ApiError::upload_protocol(
            StatusCode::NOT_FOUND,
            "upload-not-found",
            match err {
                UploadError::Gone(status) => {
                    format!("the upload is {}: its bytes were removed", status.as_str())
                }
                _ => "no upload has this id".to_owned(),
            },
        ),
        UploadError::Busy => ApiError::upload_protocol(
            StatusCode::CONFLICT,
            "upload-locked",
            "another request is writing this upload; retry once it has ended",
        ),
        UploadError::OffsetMismatch { expected, provided } => ApiError::upload_protocol(
            StatusCode::CONFLICT,
            "mismatching-upload-offset",
            format!("the upload is at offset {expected}, not {provided}"),
        )
        .with_type_uri(MISMATCHING_OFFSET)
        .with_offsets(expected, provided),
        UploadError::Completed { length } => ApiError::upload_protocol(
            StatusCode::BAD_REQUEST,
            "completed-upload",
            format!("the upload is complete ({length} bytes); its task is queued"),
        )
        .with_type_uri(COMPLETED_UPLOAD),
        UploadError::InconsistentLength(detail) => {
            ApiError::upload_protocol(StatusCode::BAD_REQUEST, "inconsistent-upload-length", detail)
                .with_type_uri(INCONSISTENT_LENGTH)
        }
        UploadError::ChecksumMismatch => ApiError::bad_request("the body does not match its checksum"),
        UploadError::Api(err) => err,
    }
    .into_response()
}

fn upload_complete(headers: &HeaderMap) -> Result<bool, ApiError> {
    headers::boolean(headers, "upload-complete")?
        .ok_or_else(|| ApiError::bad_request("Upload-Complete is required (?1 or ?0)"))
}

/// The answer to an append (or creation) that completed the upload: the task.
fn completed(state: &AppState, status: StatusCode, appended: Appended, task_id: Uuid) -> Response {
    let offset = appended.offset;
    let mut response = match appended.completed {
        Some(task) => (status, Json(TaskView::from((task, None)))).into_response(),
        None => status.into_response(),
    };
    progress(state, &mut response, offset, true, None);
    response.headers_mut().insert(header::CONTENT_LOCATION, hash_location(task_id));
    response
}

fn hash_location(task_id: Uuid) -> HeaderValue {
    HeaderValue::from_str(&format!("/api/v1/hashes/{task_id}"))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `POST /api/v1/uploads` with `Upload-Complete`: creates an upload, appending the body if any.
pub async fn create(
    state: &AppState,
    who: Requester,
    headers: &HeaderMap,
    query: &DigestsQuery,
    body: Body,
    request_id: Option<String>,
) -> Response {
    let created = async {
        let complete = upload_complete(headers)?;
        let length = headers::number(headers, "upload-length")?;
        let (metadata, file_name) = headers::metadata(headers)?;
        let digests = crate::digests::requested(query, &state.config.digests.0, headers)?;
        let new = NewUpload { length, metadata, file_name, request_id: request_id.clone(), who, digests };
        let (task, upload, lock) = super::create(state, new).await?;
        let task_id = task.task_id;
        let location = super::tus::location(task_id);
        if !headers::has_body(headers) && !complete {
            let mut response = StatusCode::CREATED.into_response();
            response.headers_mut().insert(header::LOCATION, location);
            progress(state, &mut response, 0, false, Some(upload.expires_at));
            return Ok(response);
        }
        let append = Append {
            offset: 0,
            length,
            completion: Completion::Declared(complete),
            checksum: None,
            expects_continue: crate::body::expects_continue(headers),
            body,
            client: who.client,
            request_id,
        };
        let mut response = match super::append(state, task_id, Some(lock), append).await {
            Ok(appended) if appended.completed.is_some() => {
                completed(state, StatusCode::CREATED, appended, task_id)
            }
            Ok(appended) => {
                let mut response = StatusCode::CREATED.into_response();
                progress(state, &mut response, appended.offset, false, appended.expires_at);
                response
            }
            Err(err) => refusal(err),
        };
        response.headers_mut().insert(header::LOCATION, location);
        Ok::<_, UploadError>(response)
    };
    created.await.unwrap_or_else(refusal)
}

/// `HEAD /api/v1/uploads/{id}`: offset retrieval.
pub async fn head(state: &AppState, task_id: Uuid) -> Response {
    let mut response = match super::state(state, task_id).await {
        Ok(UploadState::Open { upload, .. }) => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            progress(
                state,
                &mut response,
                u64::try_from(upload.received_bytes).unwrap_or(0),
                false,
                Some(upload.expires_at),
            );
            if let Some(length) = upload.upload_length {
                response.headers_mut().insert(name("upload-length"), HeaderValue::from(length));
            }
            response
        }
        Ok(UploadState::Complete { task }) => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            let length = u64::try_from(task.size_bytes).unwrap_or(0);
            progress(state, &mut response, length, true, None);
            response.headers_mut().insert(name("upload-length"), HeaderValue::from(length));
            response
        }
        Err(err) => refusal(err),
    };
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `PATCH /api/v1/uploads/{id}`: appends the body at `Upload-Offset`.
pub async fn patch(
    state: &AppState,
    task_id: Uuid,
    client: Option<ClientId>,
    headers: &HeaderMap,
    body: Body,
    request_id: Option<String>,
) -> Response {
    let append = async {
        if headers::media_type(headers).as_deref() != Some(PARTIAL_UPLOAD) {
            return Err(ApiError::upload_protocol(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "an append's body must be application/partial-upload",
            )
            .into());
        }
        let offset = headers::number(headers, "upload-offset")?
            .ok_or_else(|| ApiError::bad_request("Upload-Offset is required"))?;
        let complete = upload_complete(headers)?;
        let length = headers::number(headers, "upload-length")?;
        let append = Append {
            offset,
            length,
            completion: Completion::Declared(complete),
            checksum: None,
            expects_continue: crate::body::expects_continue(headers),
            body,
            client,
            request_id,
        };
        super::append(state, task_id, None, append).await
    };
    match append.await {
        Ok(appended) if appended.completed.is_some() => completed(state, StatusCode::OK, appended, task_id),
        Ok(appended) => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            progress(state, &mut response, appended.offset, false, appended.expires_at);
            response
        }
        Err(err) => refusal(err),
    }
}

/// `DELETE /api/v1/uploads/{id}`: cancellation.
pub async fn delete(state: &AppState, task_id: Uuid) -> Response {
    match super::terminate(state, task_id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => refusal(err),
    }
}
