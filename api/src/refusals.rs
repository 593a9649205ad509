//! The refusals routes share, described once for the OpenAPI document (`responses(…, Refusals)`),
//! so no route describes them differently.

use crate::error::Problem;

/// The refusals every `/api/` and `/hashes` route may answer, for the OpenAPI document
/// (`responses(…, Refusals)`): written once, so no route describes them differently.
#[derive(utoipa::IntoResponses)]
pub enum Refusals {
    /// `API_KEY` is set and the bearer token is missing or wrong.
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(Problem),
    /// Postgres is unreachable, or (uploads, event streams) every slot, or this client's share,
    /// is taken.
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
    /// A creation: the client creates tasks faster than `MAX_TASKS_PER_CLIENT_PER_SECOND`.
    #[response(status = 429, content_type = "application/problem+json",
        headers(("Retry-After" = u64, description = "Seconds until the client may create another task")))]
    TooManyRequests(Problem),
    /// The upload volume is full (less than `MIN_FREE_BYTES` free).
    #[response(status = 507, content_type = "application/problem+json")]
    InsufficientStorage(Problem),
}
