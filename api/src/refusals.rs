//! The refusals routes share, described once for the OpenAPI document (`responses(…, Refusals)`),
//! so no route describes them differently.

use crate::error::Problem;

/// The refusals every `/api/` and `/hashes` route may answer, for the OpenAPI document
/// (`responses(…, Refusals)`): written once, so no route describes them differently.
#[derive(utoipa::IntoResponses)]
pub enum Refusals {
    /// The service has API keys and the bearer token is missing, wrong or revoked.
    #[response(status = 401, content_type = "application/problem+json",
        headers(("WWW-Authenticate" = String, description = "`Bearer`")))]
    Unauthorized(Problem),
    /// The client is at one of its quotas (the problem's `quota` names it: `uploads`,
    /// `open-uploads`, `open-upload-bytes`, `tasks-per-minute`, `event-streams`); nothing was
    /// stored.
    #[response(status = 429, content_type = "application/problem+json",
        headers(("Retry-After" = u64, description = "Seconds to wait")))]
    TooManyRequests(Problem),
    /// Postgres is unreachable, or (uploads, event streams) every slot is taken.
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
