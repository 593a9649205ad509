//! The one error type of every handler, rendered as `application/problem+json` (RFC 9457).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not `multipart/form-data`.
    #[error("the request body must be multipart/form-data with a part named \"file\"")]
    UnsupportedMediaType,
    /// Malformed multipart, an unexpected part, a bad query.
    #[error("{0}")]
    BadRequest(String),
    /// The form has no `file` part (or the request has no form at all).
    #[error("the form has no part named \"file\"")]
    MissingFilePart,
    /// The upload is larger than `MAX_UPLOAD_BYTES`.
    #[error("the upload is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// The body stalled, or arrived slower than the configured minimum rate.
    #[error("{0}")]
    RequestTimeout(String),
    /// Unknown task id, or not a UUID.
    #[error("task {0} was not found")]
    NotFound(String),
    /// `API_KEY` is set and the bearer token is missing or wrong.
    #[error("a valid `Authorization: Bearer <key>` header is required")]
    Unauthorized,
    /// Postgres cannot be reached, or the api is at its upload limit.
    #[error("{0}")]
    Unavailable(String),
    /// The upload volume is full.
    #[error("the upload volume is full")]
    InsufficientStorage,
    /// The `Idempotency-Key`'s first upload is still in progress.
    #[error("{0}")]
    Conflict(String),
    /// The `Idempotency-Key` was used for a different request.
    #[error("{0}")]
    Unprocessable(String),
    /// Anything unexpected; the cause is logged, never sent.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// Seconds a client is told to wait after a 503.
pub const RETRY_AFTER_SECONDS: u64 = 5;
/// Seconds a client is told to wait after a 409 (its key's first upload is still streaming).
pub const CONFLICT_RETRY_AFTER_SECONDS: u64 = 1;

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
}

/// The refusals every `/api/` and `/hashes` route may answer, for the OpenAPI document
/// (`responses(…, Refusals)`): written once, so no route describes them differently.
#[derive(utoipa::IntoResponses)]
pub enum Refusals {
    /// `API_KEY` is set and the bearer token is missing or wrong.
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(Problem),
    /// Postgres is unreachable, or (uploads) every upload slot, or this client's share, is taken.
    #[response(status = 503, content_type = "application/problem+json",
        headers(("Retry-After" = u64, description = "Seconds to wait")))]
    Unavailable(Problem),
}

/// The refusals of an upload body (both upload routes), for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
pub enum UploadRefusals {
    /// The body stalled for `BODY_IDLE_TIMEOUT_SECONDS`, or arrived slower than
    /// `MIN_UPLOAD_BYTES_PER_SECOND` over `UPLOAD_RATE_WINDOW_SECONDS`.
    #[response(status = 408, content_type = "application/problem+json")]
    RequestTimeout(Problem),
    /// Larger than `MAX_UPLOAD_BYTES` (from `Content-Length`, or while streaming).
    #[response(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(Problem),
    /// The upload volume is full (less than `MIN_FREE_BYTES` free).
    #[response(status = 507, content_type = "application/problem+json")]
    InsufficientStorage(Problem),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BadRequest(_) | ApiError::MissingFilePart => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            ApiError::UnsupportedMediaType => "unsupported-media-type",
            ApiError::BadRequest(_) | ApiError::MissingFilePart => "bad-request",
            ApiError::PayloadTooLarge { .. } => "payload-too-large",
            ApiError::RequestTimeout(_) => "request-timeout",
            ApiError::NotFound(_) => "not-found",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Unavailable(_) => "service-unavailable",
            ApiError::InsufficientStorage => "insufficient-storage",
            ApiError::Conflict(_) => "idempotency-key-in-use",
            ApiError::Unprocessable(_) => "idempotency-key-reused",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The problem document for this error.
    pub fn problem(&self) -> Problem {
        let status = self.status();
        Problem {
            kind: format!("/problems/{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
        }
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(err: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match err {
            Error::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                _,
            ) => ApiError::Unavailable("the database is unreachable; try again shortly".into()),
            other => ApiError::Internal(other.into()),
        }
    }
}

impl From<shared::db::PoolError> for ApiError {
    fn from(_: shared::db::PoolError) -> Self {
        ApiError::Unavailable("the database is unreachable; try again shortly".into())
    }
}

/// The cause of a failed request, carried in the response's extensions from
/// [`IntoResponse`] (which logs nothing) to [`log_failures`] (which logs it, once).
#[derive(Debug, Clone)]
pub struct FailureCause(pub String);

/// Logs every failed request once, inside its request span, at the level its status deserves:
/// 5xx at ERROR with the cause, 503 and 507 (an outage the operator may already know of, a full
/// volume) at WARN, 4xx at DEBUG (the client's mistake, not the service's).
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
        let problem = self.problem();
        let mut response = (self.status(), axum::Json(problem)).into_response();
        let cause = match &self {
            ApiError::Internal(cause) => format!("{cause:#}"),
            other => other.to_string(),
        };
        response.extensions_mut().insert(FailureCause(cause));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if matches!(self, ApiError::Unavailable(_)) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        if matches!(self, ApiError::Conflict(_)) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(CONFLICT_RETRY_AFTER_SECONDS));
        }
        if matches!(self, ApiError::Unauthorized) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
