//! `/api/v1/uploads`: resumable uploads, in tus 1.0.0 or the IETF draft -05 on the same
//! resource; each request's headers say which (`Tus-Resumable` or `Upload-Draft-Interop-Version`).
//! The protocols themselves are in `crate::resumable`.

use axum::Extension;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use crate::error::{ApiError, Problem, Refusals, UploadRefusals};
use crate::resumable::{ietf, tus};
use crate::serve::ClientAddr;
use crate::state::AppState;

/// Which protocol a request speaks.
enum Protocol {
    Tus,
    Ietf,
}

/// A request whose protocol version this service does not speak.
enum UnknownProtocol {
    /// No `Tus-Resumable: 1.0.0` and no interop version.
    Tus,
    /// An interop version other than 6.
    Ietf(String),
}

impl IntoResponse for UnknownProtocol {
    fn into_response(self) -> Response {
        match self {
            UnknownProtocol::Tus => tus::unsupported_version(),
            UnknownProtocol::Ietf(version) => ietf::unsupported_version(&version),
        }
    }
}

/// The request's protocol.
fn protocol(headers: &HeaderMap) -> Result<Protocol, UnknownProtocol> {
    if let Some(version) = headers.get("upload-draft-interop-version") {
        let version = String::from_utf8_lossy(version.as_bytes());
        return if version.trim() == ietf::INTEROP_VERSION {
            Ok(Protocol::Ietf)
        } else {
            Err(UnknownProtocol::Ietf(version.into_owned()))
        };
    }
    match headers.get("tus-resumable").map(|value| value.as_bytes()) {
        Some(version) if version == tus::VERSION.as_bytes() => Ok(Protocol::Tus),
        _ => Err(UnknownProtocol::Tus),
    }
}

/// The upload id in the path; 404 for anything that is not a UUID.
fn upload_id(id: Result<Path<String>, PathRejection>) -> Result<Uuid, ApiError> {
    let Path(id) = id.map_err(|_| ApiError::task_not_found("(invalid id)"))?;
    Uuid::parse_str(&id).map_err(|_| ApiError::task_not_found(&id))
}

fn client(client: Option<Extension<ClientAddr>>) -> Option<std::net::IpAddr> {
    client.map(|Extension(ClientAddr(ip))| ip)
}

fn request_id(headers: &HeaderMap) -> Option<String> {
    super::request_id(headers).map(str::to_owned)
}

/// `POST /api/v1/uploads`.
#[utoipa::path(
    post,
    path = "/api/v1/uploads",
    operation_id = "create_upload",
    tag = "uploads",
    params(
        ("Tus-Resumable" = Option<String>, Header, description = "`1.0.0` for tus; or send Upload-Draft-Interop-Version"),
        ("Upload-Draft-Interop-Version" = Option<String>, Header, description = "`6` for the IETF draft -05"),
        ("Upload-Length" = Option<u64>, Header, description = "The file's length (tus: this or Upload-Defer-Length)"),
        ("Upload-Defer-Length" = Option<String>, Header, description = "tus: `1` to give the length later"),
        ("Upload-Metadata" = Option<String>, Header, description = "tus-style `key base64,…`; `filename` (or `name`) names the task"),
        ("Upload-Complete" = Option<String>, Header, description = "IETF: `?1` when the body is the whole file, `?0` otherwise"),
        ("Upload-Checksum" = Option<String>, Header, description = "tus: `sha1|md5|sha256 <base64>` of this request's body"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "Optional first bytes (tus: application/offset+octet-stream; IETF: any type)"),
    responses(
        (status = 201, description = "Created; `Location` is the upload (its id is its task's id)",
            headers(("Location" = String, description = "/api/v1/uploads/{id}"),
                ("Upload-Offset" = u64, description = "Bytes stored durably"),
                ("Upload-Expires" = String, description = "tus: when the upload expires without an append"),
                ("Upload-Limit" = String, description = "IETF: `max-size=…, max-age=…`"))),
        (status = 400, description = "Malformed or contradictory headers", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Neither `Tus-Resumable: 1.0.0` nor `Upload-Draft-Interop-Version: 6`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "tus: a body that is not application/offset+octet-stream", body = Problem, content_type = "application/problem+json"),
        (status = 460, description = "tus: the body does not match Upload-Checksum", body = Problem, content_type = "application/problem+json"),
        UploadRefusals, Refusals,
    ),
    security((), ("bearer" = []))
)]
pub async fn create_upload(
    State(state): State<AppState>,
    peer: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request_id = request_id(&headers);
    match protocol(&headers) {
        Ok(Protocol::Tus) => tus::create(&state, client(peer), &headers, body, request_id).await,
        Ok(Protocol::Ietf) => ietf::create(&state, client(peer), &headers, body, request_id).await,
        Err(refused) => refused.into_response(),
    }
}

/// `OPTIONS /api/v1/uploads`: what the server supports.
#[utoipa::path(
    options,
    path = "/api/v1/uploads",
    operation_id = "upload_options",
    tag = "uploads",
    responses((status = 204, description = "tus: Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm; IETF: Upload-Limit"), Refusals),
    security((), ("bearer" = []))
)]
pub async fn upload_options(State(state): State<AppState>, headers: HeaderMap) -> Response {
    options(&state, &headers)
}

fn options(state: &AppState, headers: &HeaderMap) -> Response {
    if headers.contains_key("upload-draft-interop-version") {
        ietf::options(state)
    } else {
        tus::options(state)
    }
}

/// `OPTIONS /api/v1/uploads/{id}`.
#[utoipa::path(
    options,
    path = "/api/v1/uploads/{id}",
    operation_id = "upload_resource_options",
    tag = "uploads",
    params(("id" = String, Path, description = "The upload's (and its task's) id")),
    responses((status = 204, description = "As `OPTIONS /api/v1/uploads`"), Refusals),
    security((), ("bearer" = []))
)]
pub async fn upload_resource_options(State(state): State<AppState>, headers: HeaderMap) -> Response {
    options(&state, &headers)
}

/// `HEAD /api/v1/uploads/{id}`: how many bytes are stored.
#[utoipa::path(
    head,
    path = "/api/v1/uploads/{id}",
    operation_id = "upload_offset",
    tag = "uploads",
    params(("id" = String, Path, description = "The upload's (and its task's) id")),
    responses(
        (status = 200, description = "tus: Upload-Offset, Upload-Length (or Upload-Defer-Length), Upload-Metadata, Upload-Expires"),
        (status = 204, description = "IETF: Upload-Offset, Upload-Complete, Upload-Length, Upload-Limit"),
        (status = 404, description = "No such upload (IETF: or it expired or was cancelled)"),
        (status = 410, description = "tus: the upload expired or was terminated"),
        Refusals,
    ),
    security((), ("bearer" = []))
)]
pub async fn upload_offset(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let id = match upload_id(id) {
        Ok(id) => id,
        Err(refused) => return refused.into_response(),
    };
    match protocol(&headers) {
        Ok(Protocol::Tus) => tus::head(&state, id).await,
        Ok(Protocol::Ietf) => ietf::head(&state, id).await,
        Err(refused) => refused.into_response(),
    }
}

/// `PATCH /api/v1/uploads/{id}`: appends the body at `Upload-Offset`.
#[utoipa::path(
    patch,
    path = "/api/v1/uploads/{id}",
    operation_id = "append_upload",
    tag = "uploads",
    params(
        ("id" = String, Path, description = "The upload's (and its task's) id"),
        ("Upload-Offset" = u64, Header, description = "Where this body starts: the offset HEAD gave"),
        ("Upload-Complete" = Option<String>, Header, description = "IETF: `?1` when this body ends the file"),
        ("Upload-Length" = Option<u64>, Header, description = "The length, if deferred until now"),
        ("Upload-Checksum" = Option<String>, Header, description = "tus: `sha1|md5|sha256 <base64>` of this body"),
    ),
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream",
        description = "The bytes (IETF: application/partial-upload)"),
    responses(
        (status = 204, description = "Appended; Upload-Offset is the new offset"),
        (status = 200, description = "IETF: the upload is complete; the body is its task", body = crate::routes::v1::TaskView),
        (status = 400, description = "Malformed headers, a contradictory length, or (IETF) an upload already complete", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such upload", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Upload-Offset is not the upload's (the problem's expected-offset is), or (tus) it is complete; IETF: another request is appending", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "tus: expired or terminated", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/offset+octet-stream (tus) or application/partial-upload (IETF)", body = Problem, content_type = "application/problem+json"),
        (status = 423, description = "tus: another request is appending to this upload", body = Problem, content_type = "application/problem+json"),
        (status = 460, description = "tus: the body does not match Upload-Checksum; nothing was appended", body = Problem, content_type = "application/problem+json"),
        UploadRefusals, Refusals,
    ),
    security((), ("bearer" = []))
)]
pub async fn append_upload(
    State(state): State<AppState>,
    peer: Option<Extension<ClientAddr>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let id = match upload_id(id) {
        Ok(id) => id,
        Err(refused) => return refused.into_response(),
    };
    let request_id = request_id(&headers);
    match protocol(&headers) {
        Ok(Protocol::Tus) => tus::patch(&state, id, client(peer), &headers, body, request_id).await,
        Ok(Protocol::Ietf) => ietf::patch(&state, id, client(peer), &headers, body, request_id).await,
        Err(refused) => refused.into_response(),
    }
}

/// `DELETE /api/v1/uploads/{id}`: terminates an unfinished upload (its task ends `cancelled`).
#[utoipa::path(
    delete,
    path = "/api/v1/uploads/{id}",
    operation_id = "terminate_upload",
    tag = "uploads",
    params(("id" = String, Path, description = "The upload's (and its task's) id")),
    responses(
        (status = 204, description = "Terminated: its file is removed, its task is `cancelled`"),
        (status = 400, description = "IETF: the upload is complete", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such upload", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "tus: the upload is complete; IETF: another request is appending", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "tus: already expired or terminated", body = Problem, content_type = "application/problem+json"),
        (status = 423, description = "tus: another request is appending", body = Problem, content_type = "application/problem+json"),
        Refusals,
    ),
    security((), ("bearer" = []))
)]
pub async fn terminate_upload(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let id = match upload_id(id) {
        Ok(id) => id,
        Err(refused) => return refused.into_response(),
    };
    match protocol(&headers) {
        Ok(Protocol::Tus) => tus::delete(&state, id).await,
        Ok(Protocol::Ietf) => ietf::delete(&state, id).await,
        Err(refused) => refused.into_response(),
    }
}
