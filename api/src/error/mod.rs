//! The one error type of every handler, rendered as `application/problem+json` (RFC 9457).
//!
//! Each meaning has its own constructor, which decides the problem's type URI, status and extra
//! headers where the error is made; the underlying error (diesel, IO, a batch) stays attached as
//! the `source()` and is logged once, with its whole chain, by [`log_failures`].

use std::borrow::Cow;
use std::io;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::commits::InsertError;
use crate::database::{DbError, is_connection_lost};
use crate::quotas::Quota;
use crate::storage::StorageError;

/// Seconds a client is told to wait after a 503.
pub const RETRY_AFTER_SECONDS: u64 = 5;
/// Seconds a client is told to wait after a 409 (its key's first upload is still streaming).
pub const CONFLICT_RETRY_AFTER_SECONDS: u64 = 1;

/// What the database's unavailability tells the client.
const DATABASE_UNREACHABLE: &str = "the database is unreachable; try again shortly";

/// Everything a request can fail with: a problem (type, status, detail, extra headers) and the
/// error that caused it, if any.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    /// The last segment of the problem's type URI (`/problems/<slug>`).
    slug: &'static str,
    detail: Cow<'static, str>,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The problem's `max_wait_seconds` member, for a `wait` out of range.
    max_wait_seconds: Option<u64>,
    /// What a resumable-upload problem adds (boxed: most errors have none).
    upload: Option<Box<UploadProblem>>,
    /// True for the two ways a request has no `file` field at all (the compatibility routes
    /// answer those as FastAPI did).
    no_file_field: bool,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// The members a resumable-upload problem, or a 429, may add.
#[derive(Debug, Default)]
struct UploadProblem {
    /// The quota a 429 names.
    quota: Option<&'static str>,
    /// An absolute problem type URI (an IANA-registered type) instead of `/problems/<slug>`.
    type_uri: Option<&'static str>,
    /// The `expected-offset` and `provided-offset` members of a mismatching upload offset.
    offsets: Option<(u64, u64)>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|source| source as &(dyn std::error::Error + 'static))
    }
}

impl ApiError {
    fn new(status: StatusCode, slug: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            status,
            slug,
            detail: detail.into(),
            headers: Vec::new(),
            max_wait_seconds: None,
            upload: None,
            no_file_field: false,
            source: None,
        }
    }

    /// A refusal of a resumable-upload protocol: the status and problem slug it fixes.
    pub fn upload_protocol(
        status: StatusCode,
        slug: &'static str,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        ApiError::new(status, slug, detail)
    }

    /// The same problem under a registered type URI.
    pub fn with_type_uri(mut self, uri: &'static str) -> Self {
        self.upload.get_or_insert_default().type_uri = Some(uri);
        self
    }

    /// The same problem with `expected-offset` and `provided-offset` members.
    pub fn with_offsets(mut self, expected: u64, provided: u64) -> Self {
        self.upload.get_or_insert_default().offsets = Some((expected, provided));
        self
    }

    /// The same problem with one more response header.
    pub fn with_response_header(self, name: HeaderName, value: HeaderValue) -> Self {
        self.with_header(name, value)
    }

    fn with_source(mut self, source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        self.source = Some(source.into());
        self
    }

    fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// 415: the body is not `multipart/form-data`.
    pub fn unsupported_media_type() -> Self {
        let mut err = ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "the request body must be multipart/form-data with a part named \"file\"",
        );
        err.no_file_field = true;
        err
    }

    /// 415: `POST /api/v1/hashes` with a body that is neither a form nor a bare file.
    pub fn unsupported_upload_media_type() -> Self {
        let mut err = ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "the request body must be multipart/form-data with a part named \"file\", or the file itself \
             as application/octet-stream (its name in a Content-Disposition header)",
        );
        err.no_file_field = true;
        err
    }

    /// 400: malformed multipart, an unexpected part, a bad header or query.
    pub fn bad_request(detail: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    /// 400: the form has no `file` part (or the request has no form at all).
    pub fn missing_file_part() -> Self {
        let mut err = ApiError::bad_request("the form has no part named \"file\"");
        err.no_file_field = true;
        err
    }

    /// 400: the body ended before the form did (the client went away or broke the stream).
    pub fn upload_interrupted(cause: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        let cause = cause.into();
        ApiError::bad_request(format!("the upload was interrupted: {cause}")).with_source(cause)
    }

    /// 400: `?wait=` is not a number of seconds from 0 to `max` (the problem says `max`).
    pub fn wait_out_of_range(max: u64) -> Self {
        let mut err = ApiError::bad_request(format!("wait must be a number of seconds from 0 to {max}"));
        err.max_wait_seconds = Some(max);
        err
    }

    /// 413: the upload is larger than `MAX_UPLOAD_BYTES`.
    pub fn payload_too_large(limit: u64) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!("the upload is larger than the limit of {limit} bytes"),
        )
    }

    /// 413: a resumable upload counting more bytes than one client may hold in unfinished uploads.
    pub fn payload_too_large_for_client(length: u64, limit: u64) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!(
                "this upload counts {length} bytes (its declared length, or MAX_UPLOAD_BYTES while \
                 deferred), more than the {limit} bytes one client may hold in unfinished uploads"
            ),
        )
    }

    /// 408: the body stalled, or arrived slower than the configured minimum rate.
    pub fn request_timeout(detail: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(StatusCode::REQUEST_TIMEOUT, "request-timeout", detail)
    }

    /// 404: no task has this id (`id` is how the request spelled it).
    pub fn task_not_found(id: impl std::fmt::Display) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not-found", format!("task {id} was not found"))
    }

    /// 404: the path names nothing that can exist, for the reason `detail` gives.
    pub fn not_found(detail: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    /// 401: `API_KEY` is set and the bearer token is missing or wrong.
    pub fn unauthorized() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid `Authorization: Bearer <key>` header is required",
        )
        .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    /// 503 with `Retry-After`: the service cannot take this request now (`detail` says why).
    pub fn unavailable(detail: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "service-unavailable", detail)
            .with_header(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS))
    }

    /// 503 with `Retry-After`: Postgres did not confirm the commit of the upload's row in time.
    /// The upload is settled either way (its task exists with its file, or neither does); a
    /// retry with the same `Idempotency-Key` gets whichever it was.
    pub fn commit_unknown(cause: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        ApiError::unavailable(
            "the database did not confirm the upload in time; it may have been recorded: retry \
             with the same Idempotency-Key to get its task, or to upload it again if it was not",
        )
        .with_source(cause)
    }

    /// 429 with `Retry-After`: the client is at its `quota` (`detail` says how); counted on
    /// `/metrics` as `md5_quota_refusals_total{quota}`.
    pub fn over_quota(
        quota: Quota,
        detail: impl Into<Cow<'static, str>>,
        retry_after: std::time::Duration,
    ) -> Self {
        metrics::counter!("md5_quota_refusals_total", "quota" => quota.name()).increment(1);
        let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
        let mut err = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota-exceeded", detail)
            .with_header(header::RETRY_AFTER, HeaderValue::from(seconds));
        err.upload.get_or_insert_default().quota = Some(quota.name());
        err
    }

    /// 503 with `Retry-After`: Postgres cannot be reached (`cause` is logged, not sent).
    pub fn database_unavailable(
        cause: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        ApiError::unavailable(DATABASE_UNREACHABLE).with_source(cause)
    }

    /// 507: the upload volume is full.
    pub fn insufficient_storage() -> Self {
        ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "insufficient-storage", "the upload volume is full")
    }

    /// 409: the request conflicts with the resource's state (`kind` names how, `detail` says why).
    pub fn conflict(kind: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(StatusCode::CONFLICT, kind, detail)
    }

    /// 409 with `Retry-After`: the `Idempotency-Key`'s first upload is still in progress.
    pub fn idempotency_key_in_use() -> Self {
        ApiError::idempotency_conflict(
            "an upload with this Idempotency-Key is still in progress; try again when it has finished",
        )
    }

    /// 409 with `Retry-After`: this upload's `Idempotency-Key` reservation ran out while it was
    /// stalled, and another upload with the key took it over.
    pub fn idempotency_key_taken_over() -> Self {
        ApiError::idempotency_conflict(
            "another upload with this Idempotency-Key took it over while this one was stalled",
        )
    }

    fn idempotency_conflict(detail: &'static str) -> Self {
        ApiError::new(StatusCode::CONFLICT, "idempotency-key-in-use", detail)
            .with_header(header::RETRY_AFTER, HeaderValue::from(CONFLICT_RETRY_AFTER_SECONDS))
    }

    /// 422: the `Idempotency-Key` was used for a different request (`detail` says how it differs).
    pub fn idempotency_key_reused(detail: String) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused", detail)
    }

    /// 500: anything unexpected; the cause is logged, never sent.
    pub fn internal(cause: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error").with_source(cause)
    }

    /// A failed Postgres statement: 503 when the connection is gone (the database is down or
    /// unreachable), 500 for anything else.
    pub fn database(err: diesel::result::Error) -> Self {
        if is_connection_lost(&err) { ApiError::database_unavailable(err) } else { ApiError::internal(err) }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The problem's detail: what went wrong, for the client.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// True when the request had no `file` field at all: not a form, or a form without it.
    pub fn is_missing_file_field(&self) -> bool {
        self.no_file_field
    }

    /// The problem document for this error.
    pub fn problem(&self) -> Problem {
        let upload = self.upload.as_deref();
        let offsets = upload.and_then(|upload| upload.offsets);
        Problem {
            kind: upload
                .and_then(|upload| upload.type_uri)
                .map_or_else(|| format!("/problems/{}", self.slug), str::to_owned),
            title: self
                .status
                .canonical_reason()
                .unwrap_or(match self.status.as_u16() {
                    460 => "Checksum Mismatch",
                    _ => "Error",
                })
                .to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.to_string(),
            max_wait_seconds: self.max_wait_seconds,
            quota: upload.and_then(|upload| upload.quota),
            expected_offset: offsets.map(|(expected, _)| expected),
            provided_offset: offsets.map(|(_, provided)| provided),
        }
    }

    /// What the log line says: the detail, then every cause in its chain (a cause whose text
    /// its wrapper already quoted is not repeated).
    fn cause_chain(&self) -> String {
        let mut chain = self.detail.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !chain.ends_with(&text) {
                chain.push_str(": ");
                chain.push_str(&text);
            }
            source = cause.source();
        }
        chain
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(err: diesel::result::Error) -> Self {
        ApiError::database(err)
    }
}

impl From<shared::db::PoolError> for ApiError {
    fn from(err: shared::db::PoolError) -> Self {
        ApiError::database_unavailable(err)
    }
}

impl From<StorageError> for ApiError {
    fn from(err: StorageError) -> Self {
        match err.kind() {
            io::ErrorKind::StorageFull => ApiError::insufficient_storage().with_source(err),
            io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::PermissionDenied => {
                ApiError::unavailable(format!("the upload volume is not writable: {}", err.io_error()))
                    .with_source(err)
            }
            _ => ApiError::internal(err),
        }
    }
}

impl From<DbError> for ApiError {
    fn from(err: DbError) -> Self {
        if is_unavailable(&err) { ApiError::database_unavailable(err) } else { ApiError::internal(err) }
    }
}

/// True when the database could not be reached (or answered too late), as opposed to a statement
/// that failed on a working connection.
fn is_unavailable(err: &DbError) -> bool {
    match err {
        DbError::Pool(_) | DbError::TimedOut(_) | DbError::CommitUnknown(_) => true,
        DbError::Query(query) => is_connection_lost(query),
    }
}

impl From<InsertError> for ApiError {
    fn from(err: InsertError) -> Self {
        match err {
            InsertError::Database(ref db) if matches!(**db, DbError::CommitUnknown(_)) => {
                ApiError::commit_unknown(err)
            }
            InsertError::Database(ref db) if is_unavailable(db) => ApiError::database_unavailable(err),
            InsertError::KeyTakenOver => ApiError::idempotency_key_taken_over(),
            InsertError::Database(_) | InsertError::RowMissing | InsertError::Batch(_) => {
                ApiError::internal(err)
            }
        }
    }
}

/// RFC 9457 problem details.
#[derive(Debug, Serialize, Clone, utoipa::ToSchema)]
#[schema(example = json!({"type": "/problems/payload-too-large", "title": "Payload Too Large", "status": 413, "detail": "the upload is larger than the limit of 1000 bytes"}))]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What happened in this request.
    pub detail: String,
    /// For a `wait` out of range: the longest wait this service accepts, so a client can ask
    /// again with it (an RFC 9457 extension member).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_wait_seconds: Option<u64>,
    /// For a 429: the quota the client is at (`uploads`, `open-uploads`, `open-upload-bytes`,
    /// `tasks-per-minute`, `event-streams`, `long-polls`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<&'static str>,
    /// For a resumable upload's mismatching offset: the offset the upload is at.
    #[serde(rename = "expected-offset", skip_serializing_if = "Option::is_none")]
    pub expected_offset: Option<u64>,
    /// For a resumable upload's mismatching offset: the offset the request gave.
    #[serde(rename = "provided-offset", skip_serializing_if = "Option::is_none")]
    pub provided_offset: Option<u64>,
}

/// The cause of a failed request, carried in the response's extensions from
/// [`IntoResponse`] (which logs nothing) to [`log_failures`] (which logs it, once).
#[derive(Debug, Clone)]
pub struct FailureCause(pub String);

/// Logs every failed request once, inside its request span, at the level its status deserves:
/// 5xx at ERROR with the cause, 503 and 507 (an outage the operator may already know of, a full
/// volume) at WARN, 4xx at DEBUG (the client's mistake, not the service's). The cause is the
/// problem's detail followed by the error chain behind it (a diesel or IO message, say).
pub async fn log_failures(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let cause = response.extensions().get::<FailureCause>().map_or("", |cause| cause.0.as_str());
    match status {
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::INSUFFICIENT_STORAGE => {
            tracing::warn!(http.status = status.as_u16(), error = cause, "request failed");
        }
        status if status.is_server_error() => {
            tracing::error!(http.status = status.as_u16(), error = cause, "request failed");
        }
        status if status.is_client_error() => {
            tracing::debug!(http.status = status.as_u16(), error = cause, "request refused");
        }
        _ => {}
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.problem())).into_response();
        response.extensions_mut().insert(FailureCause(self.cause_chain()));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response
    }
}

#[cfg(test)]
mod tests;
