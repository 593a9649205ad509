//! tus 1.0.0 (<https://tus.io/protocols/resumable-upload>) on `/api/v1/uploads`: core, creation,
//! creation-with-upload, creation-defer-length, expiration, checksum (sha1, md5, sha256) and
//! termination. Every answer carries `Tus-Resumable: 1.0.0`; errors are problem+json (tus does
//! not fix their bodies).

use crate::client_id::ClientId;
use crate::digests::DigestsQuery;
use crate::keys::Requester;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::checksum::{Checksum, ChecksumAlgorithm};
use super::headers::{self, http_date};
use super::{Append, Appended, Completion, NewUpload, UploadError, UploadState};
use crate::error::ApiError;
use crate::state::AppState;

/// The protocol version this service speaks.
pub const VERSION: &str = "1.0.0";
/// The extensions it implements.
pub const EXTENSIONS: &str =
    "creation,creation-with-upload,creation-defer-length,expiration,checksum,termination";
/// The media type of an append's body.
pub const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";

fn name(name: &'static str) -> HeaderName {
    HeaderName::from_static(name)
}

/// Adds `Tus-Resumable` to an answer.
fn tus(mut response: Response) -> Response {
    response.headers_mut().insert(name("tus-resumable"), HeaderValue::from_static(VERSION));
    response
}

fn number(value: u64) -> HeaderValue {
    HeaderValue::from(value)
}

/// `OPTIONS`: what this server supports.
pub fn options(state: &AppState) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(name("tus-version"), HeaderValue::from_static(VERSION));
    headers.insert(name("tus-extension"), HeaderValue::from_static(EXTENSIONS));
    headers.insert(name("tus-max-size"), number(state.config.max_upload_bytes));
    headers.insert(name("tus-checksum-algorithm"), HeaderValue::from_static(ChecksumAlgorithm::NAMES));
    tus(response)
}

/// 412 for a `Tus-Resumable` other than 1.0.0 (as tus requires).
pub fn unsupported_version() -> Response {
    let err = ApiError::upload_protocol(
        StatusCode::PRECONDITION_FAILED,
        "unsupported-protocol-version",
        "this service speaks tus 1.0.0 (Tus-Resumable: 1.0.0) and the IETF draft -05 (Upload-Draft-Interop-Version: 6)",
    )
    .with_response_header(name("tus-version"), HeaderValue::from_static(VERSION));
    tus(err.into_response())
}

/// 400 for a request that names neither protocol.
pub fn missing_version() -> Response {
    let err = ApiError::bad_request(
        "a resumable upload request names its protocol: send Tus-Resumable: 1.0.0 (tus) or \
         Upload-Draft-Interop-Version: 6 (the IETF draft -05)",
    )
    .with_response_header(name("tus-version"), HeaderValue::from_static(VERSION));
    tus(err.into_response())
}

/// The answer to a refused tus request.
fn refusal(err: UploadError) -> Response {
    let err = match err {
        UploadError::NotFound => {
            ApiError::upload_protocol(StatusCode::NOT_FOUND, "upload-not-found", "no upload has this id")
        }
        UploadError::Gone(status) => ApiError::upload_protocol(
            StatusCode::GONE,
            "upload-gone",
            format!("the upload is {}: its bytes were removed", status.as_str()),
        ),
        UploadError::Busy => ApiError::upload_protocol(
            StatusCode::LOCKED,
            "upload-locked",
            "another request is writing this upload; retry once it has ended",
        ),
        UploadError::OffsetMismatch { expected, provided } => ApiError::upload_protocol(
            StatusCode::CONFLICT,
            "mismatching-upload-offset",
            format!("the upload is at offset {expected}, not {provided}"),
        )
        .with_offsets(expected, provided)
        .with_response_header(name("upload-offset"), number(expected)),
        UploadError::Completed { length } => ApiError::upload_protocol(
            StatusCode::CONFLICT,
            "completed-upload",
            format!("the upload is complete ({length} bytes); its task is queued"),
        )
        .with_response_header(name("upload-offset"), number(length)),
        UploadError::InconsistentLength(detail) => {
            ApiError::upload_protocol(StatusCode::BAD_REQUEST, "inconsistent-upload-length", detail)
        }
        UploadError::ChecksumMismatch => ApiError::upload_protocol(
            StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST),
            "checksum-mismatch",
            "the body does not match its Upload-Checksum; nothing of it was kept",
        ),
        UploadError::Api(err) => err,
    };
    tus(err.into_response())
}

/// `POST /api/v1/uploads`: creates an upload (and, with a body, appends its first bytes).
pub async fn create(
    state: &AppState,
    who: Requester,
    headers: &HeaderMap,
    query: &DigestsQuery,
    body: Body,
    request_id: Option<String>,
) -> Response {
    match try_create(state, who, headers, query, body, request_id).await {
        Ok(response) => tus(response),
        Err(err) => refusal(err),
    }
}

async fn try_create(
    state: &AppState,
    who: Requester,
    headers: &HeaderMap,
    query: &DigestsQuery,
    body: Body,
    request_id: Option<String>,
) -> Result<Response, UploadError> {
    let length = headers::number(headers, "upload-length")?;
    let deferred = match headers.get("upload-defer-length").map(|value| value.as_bytes()) {
        None => false,
        Some(b"1") => true,
        Some(_) => return Err(ApiError::bad_request("Upload-Defer-Length must be 1").into()),
    };
    if length.is_some() == deferred {
        return Err(ApiError::bad_request("send either Upload-Length or Upload-Defer-Length: 1").into());
    }
    let with_body = headers::has_body(headers);
    if with_body && headers::media_type(headers).as_deref() != Some(OFFSET_OCTET_STREAM) {
        return Err(unsupported_media_type().into());
    }
    let checksum = checksum(headers)?;
    let (metadata, file_name) = headers::metadata(headers)?;
    let digests = crate::digests::requested(query, &state.config.digests.0, headers)?;
    let new = NewUpload { length, metadata, file_name, request_id: request_id.clone(), who, digests };
    let (task, upload, lock) = super::create(state, new).await?;
    let location = location(task.task_id);
    let mut response = StatusCode::CREATED.into_response();
    response.headers_mut().insert(header::LOCATION, location.clone());
    if !with_body && length != Some(0) {
        response.headers_mut().insert(name("upload-expires"), http_date(upload.expires_at));
        return Ok(response);
    }
    let append = Append {
        offset: 0,
        length,
        completion: Completion::AtLength,
        checksum,
        expects_continue: crate::body::expects_continue(headers),
        body,
        client: who.client,
        request_id,
    };
    match super::append(state, task.task_id, Some(lock), append).await {
        Ok(appended) => {
            add_progress(response.headers_mut(), &appended);
            Ok(response)
        }
        // The upload exists: say where, so the client can resume it.
        Err(err) => {
            let mut refused = refusal(err);
            refused.headers_mut().insert(header::LOCATION, location);
            Ok(refused)
        }
    }
}

fn unsupported_media_type() -> ApiError {
    ApiError::upload_protocol(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
        "a tus append's body must be application/offset+octet-stream",
    )
}

fn checksum(headers: &HeaderMap) -> Result<Option<Checksum>, ApiError> {
    let Some(value) = headers.get("upload-checksum") else { return Ok(None) };
    let value = value.to_str().map_err(|_| ApiError::bad_request("Upload-Checksum must be ASCII"))?;
    Checksum::parse(value).map(Some).map_err(ApiError::bad_request)
}

/// The upload's URL.
pub fn location(task_id: Uuid) -> HeaderValue {
    HeaderValue::from_str(&format!("/api/v1/uploads/{task_id}"))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn add_progress(headers: &mut HeaderMap, appended: &Appended) {
    headers.insert(name("upload-offset"), number(appended.offset));
    if let Some(expires_at) = appended.expires_at {
        headers.insert(name("upload-expires"), http_date(expires_at));
    }
}

/// `HEAD /api/v1/uploads/{id}`: the offset, length and metadata.
pub async fn head(state: &AppState, task_id: Uuid) -> Response {
    let mut response = match super::state(state, task_id).await {
        Ok(UploadState::Open { upload, .. }) => {
            let mut response = StatusCode::OK.into_response();
            let headers = response.headers_mut();
            headers.insert(name("upload-offset"), number(u64::try_from(upload.received_bytes).unwrap_or(0)));
            match upload.upload_length {
                Some(length) => {
                    headers.insert(name("upload-length"), number(u64::try_from(length).unwrap_or(0)))
                }
                None => headers.insert(name("upload-defer-length"), HeaderValue::from_static("1")),
            };
            if let Some(metadata) = upload.metadata.and_then(|raw| HeaderValue::from_str(&raw).ok()) {
                headers.insert(name("upload-metadata"), metadata);
            }
            headers.insert(name("upload-expires"), http_date(upload.expires_at));
            tus(response)
        }
        Ok(UploadState::Complete { task }) => {
            let mut response = StatusCode::OK.into_response();
            let length = number(u64::try_from(task.size_bytes).unwrap_or(0));
            response.headers_mut().insert(name("upload-offset"), length.clone());
            response.headers_mut().insert(name("upload-length"), length);
            tus(response)
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
        if headers::media_type(headers).as_deref() != Some(OFFSET_OCTET_STREAM) {
            return Err(unsupported_media_type().into());
        }
        let offset = headers::number(headers, "upload-offset")?
            .ok_or_else(|| ApiError::bad_request("Upload-Offset is required"))?;
        let length = headers::number(headers, "upload-length")?;
        let checksum = checksum(headers)?;
        let append = Append {
            offset,
            length,
            completion: Completion::AtLength,
            checksum,
            expects_continue: crate::body::expects_continue(headers),
            body,
            client,
            request_id,
        };
        super::append(state, task_id, None, append).await
    };
    match append.await {
        Ok(appended) => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            add_progress(response.headers_mut(), &appended);
            tus(response)
        }
        Err(err) => refusal(err),
    }
}

/// `DELETE /api/v1/uploads/{id}` (termination).
pub async fn delete(state: &AppState, task_id: Uuid) -> Response {
    match super::terminate(state, task_id).await {
        Ok(()) => tus(StatusCode::NO_CONTENT.into_response()),
        Err(err) => refusal(err),
    }
}
