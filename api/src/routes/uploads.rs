//! `/api/v1/uploads`: resumable uploads, in tus 1.0.0 or the IETF draft -05 on the same
//! resource; each request's headers say which (`Tus-Resumable` or `Upload-Draft-Interop-Version`).
//! The protocols themselves are in `crate::resumable`.

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use crate::client_id::ClientId;
use crate::digests::{DigestsQuery, ExpectedDigests};
use crate::error::{ApiError, Problem};
use crate::keys::{Requester, Scope};
use crate::refusals::{Refusals, UploadRefusals};
use crate::resumable::{ietf, tus};
use crate::state::AppState;
use shared::queries;

/// The tus version a request names (`Tus-Resumable`), for the OpenAPI document.
#[derive(utoipa::ToSchema)]
pub enum TusVersion {
    /// tus 1.0.0.
    #[schema(rename = "1.0.0")]
    V1,
}

/// Which protocol a request speaks.
enum Protocol {
    Tus,
    Ietf,
}

/// A request whose protocol version this service does not speak.
enum UnknownProtocol {
    /// Neither `Tus-Resumable` nor an interop version: not a resumable-upload request.
    Missing,
    /// A `Tus-Resumable` other than 1.0.0.
    Tus,
    /// An interop version other than 6.
    Ietf(String),
}

impl IntoResponse for UnknownProtocol {
    fn into_response(self) -> Response {
        match self {
            UnknownProtocol::Missing => tus::missing_version(),
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
        Some(_) => Err(UnknownProtocol::Tus),
        None => Err(UnknownProtocol::Missing),
    }
}

/// The one dispatch of every route: runs `tus` or `ietf` on `args` (what only one of them may
/// take, such as the body), whichever protocol the request speaks; answers a request that
/// speaks neither as its protocol says.
async fn by_protocol<A, T, I>(
    headers: &HeaderMap,
    args: A,
    tus: impl FnOnce(A) -> T,
    ietf: impl FnOnce(A) -> I,
) -> Response
where
    T: Future<Output = Response>,
    I: Future<Output = Response>,
{
    match protocol(headers) {
        Ok(Protocol::Tus) => tus(args).await,
        Ok(Protocol::Ietf) => ietf(args).await,
        Err(refused) => refused.into_response(),
    }
}

/// The upload the path names, as `scope` may use it: another key's upload is answered as an id
/// that never existed (the nil id, which the protocol then answers 404 as it answers any unknown
/// one; the same one query either way). Without keys every upload is everyone's.
async fn visible_upload(
    state: &AppState,
    scope: Scope,
    id: Result<Path<String>, PathRejection>,
) -> Result<Uuid, ApiError> {
    let id = super::task_id_in_path(id)?;
    if !state.keys.required() || scope.sees_all {
        return Ok(id);
    }
    let found = state.db.run(async |conn| queries::find_task(conn, id).await).await?;
    Ok(if found.is_some_and(|task| scope.may_see(task.owner)) { id } else { Uuid::nil() })
}

fn request_id(headers: &HeaderMap) -> Option<String> {
    super::request_id(headers).map(str::to_owned)
}

/// The upload's id in a creation's answer: the last segment of its `Location`.
const UPLOAD_ID: &str = "$response.header.Location#regex:/api/v1/uploads/([0-9a-f-]+)$";

/// `POST /api/v1/uploads`.
///
/// Documented here in tus 1.0.0 terms (what `OPTIONS` advertises): `Upload-Length`, or
/// `Upload-Defer-Length: 1` to give it later; `Upload-Metadata` (`key base64,…`, `filename` or
/// `name` names the task); the first bytes may come in the body (`application/offset+octet-stream`,
/// creation-with-upload), checked by `Upload-Checksum` (`sha1|md5|sha256 <base64>`, 460 on a
/// mismatch). The IETF draft -05 creates on the same route: `Upload-Draft-Interop-Version: 6`
/// instead of `Tus-Resumable`, `Upload-Complete: ?0|?1`, optional `Upload-Length`, any body type.
#[utoipa::path(
    post,
    path = "/api/v1/uploads",
    operation_id = "create_upload",
    tag = "uploads",
    params(
        ("Tus-Resumable" = inline(TusVersion), Header, description = "`1.0.0` (the IETF draft sends `Upload-Draft-Interop-Version: 6` instead)"),
        ("Upload-Length" = u64, Header, description = "The file's length in bytes (at most MAX_UPLOAD_BYTES)", minimum = 0),
        DigestsQuery, ExpectedDigests,
    ),
    responses(
        (status = 201, description = "Created; `Location` is the upload (its id is its task's id)",
            headers(("Location" = String, description = "/api/v1/uploads/{id}"),
                ("Upload-Offset" = u64, description = "Bytes stored durably (when the request carried some)"),
                ("Upload-Expires" = String, description = "tus: when the upload expires without an append"),
                ("Upload-Limit" = String, description = "IETF: `max-size=…, max-age=…`")),
            // The id is the last segment of `Location`: Schemathesis's `#regex:` extractor (an
            // extension of OpenAPI's runtime expressions) takes it, so its stateful phase follows.
            links(("UploadOffset" = (operation_id = "upload_offset", parameters(("id" = UPLOAD_ID)),
                description = "How many bytes are stored")),
                ("AppendUpload" = (operation_id = "append_upload", parameters(("id" = UPLOAD_ID)),
                description = "Send the next bytes")),
                ("TerminateUpload" = (operation_id = "terminate_upload", parameters(("id" = UPLOAD_ID)),
                description = "Terminate it")),
                ("GetHash" = (operation_id = "get_hash_v1", parameters(("id" = UPLOAD_ID)),
                description = "Its task")))),
        (status = 400, description = "Malformed or contradictory headers (expected digests included), or an unknown name in `digests`", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "A `Tus-Resumable` other than 1.0.0 (`Tus-Version` says which this service speaks)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "tus: a body that is not application/offset+octet-stream", body = Problem, content_type = "application/problem+json"),
        (status = 460, description = "tus: the body does not match Upload-Checksum", body = Problem, content_type = "application/problem+json"),
        UploadRefusals, Refusals,
    ),
    security((), ("bearer" = []))
)]
pub async fn create_upload(
    State(state): State<AppState>,
    who: Requester,
    headers: HeaderMap,
    query: Result<Query<DigestsQuery>, QueryRejection>,
    body: Body,
) -> Response {
    let request_id = request_id(&headers);
    let query = match query {
        Ok(Query(query)) => query,
        Err(err) => return ApiError::bad_request(err.body_text()).into_response(),
    };
    by_protocol(
        &headers,
        (body, request_id),
        |(body, request_id)| tus::create(&state, who, &headers, &query, body, request_id),
        |(body, request_id)| ietf::create(&state, who, &headers, &query, body, request_id),
    )
    .await
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
    params(("id" = String, Path, description = "The upload's (and its task's) id"),
        ("Tus-Resumable" = inline(TusVersion), Header, description = "`1.0.0` (or the IETF draft's `Upload-Draft-Interop-Version: 6`)")),
    responses(
        (status = 200, description = "tus: Upload-Offset, Upload-Length (or Upload-Defer-Length), Upload-Metadata, Upload-Expires"),
        (status = 204, description = "IETF: Upload-Offset, Upload-Complete, Upload-Length, Upload-Limit"),
        (status = 404, description = "No such upload (IETF: or it expired or was cancelled)"),
        (status = 410, description = "tus: the upload expired or was terminated"),
        (status = 400, description = "Neither `Tus-Resumable` nor `Upload-Draft-Interop-Version` (no body: HEAD)"),
        (status = 412, description = "A `Tus-Resumable` other than 1.0.0 (`Tus-Version` says which this service speaks)"),
        Refusals,
    ),
    security((), ("bearer" = []))
)]
pub async fn upload_offset(
    State(state): State<AppState>,
    scope: Scope,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let id = match visible_upload(&state, scope, id).await {
        Ok(id) => id,
        Err(refused) => return refused.into_response(),
    };
    by_protocol(&headers, (), |()| tus::head(&state, id), |()| ietf::head(&state, id)).await
}

/// `PATCH /api/v1/uploads/{id}`: appends the body at `Upload-Offset`.
///
/// tus: `application/offset+octet-stream`, optional `Upload-Checksum` (`sha1|md5|sha256
/// <base64>` of this body; 460 and nothing appended on a mismatch), `Upload-Length` once for a
/// deferred length. IETF draft -05: `Upload-Draft-Interop-Version: 6`, `application/partial-upload`,
/// `Upload-Complete: ?1` on the last append.
#[utoipa::path(
    patch,
    path = "/api/v1/uploads/{id}",
    operation_id = "append_upload",
    tag = "uploads",
    params(
        ("id" = String, Path, description = "The upload's (and its task's) id"),
        ("Tus-Resumable" = inline(TusVersion), Header, description = "`1.0.0` (or the IETF draft's `Upload-Draft-Interop-Version: 6`)"),
        ("Upload-Offset" = u64, Header, description = "Where this body starts: the offset HEAD gave", minimum = 0),
    ),
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream",
        description = "The bytes (IETF: application/partial-upload)"),
    responses(
        (status = 204, description = "Appended; Upload-Offset is the new offset"),
        (status = 200, description = "IETF: the upload is complete; the body is its task", body = shared::task_view::TaskView),
        (status = 400, description = "Malformed headers (or neither protocol's), a contradictory length, or (IETF) an upload already complete", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such upload", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Upload-Offset is not the upload's (the problem's expected-offset is), or (tus) it is complete; IETF: another request is appending", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "tus: expired or terminated", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/offset+octet-stream (tus) or application/partial-upload (IETF)", body = Problem, content_type = "application/problem+json"),
        (status = 423, description = "tus: another request is appending to this upload", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "A `Tus-Resumable` other than 1.0.0", body = Problem, content_type = "application/problem+json"),
        (status = 460, description = "tus: the body does not match Upload-Checksum; nothing was appended", body = Problem, content_type = "application/problem+json"),
        UploadRefusals, Refusals,
    ),
    security((), ("bearer" = []))
)]
pub async fn append_upload(
    State(state): State<AppState>,
    client: Option<ClientId>,
    scope: Scope,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let id = match visible_upload(&state, scope, id).await {
        Ok(id) => id,
        Err(refused) => return refused.into_response(),
    };
    let request_id = request_id(&headers);
    by_protocol(
        &headers,
        (body, request_id),
        |(body, request_id)| tus::patch(&state, id, client, &headers, body, request_id),
        |(body, request_id)| ietf::patch(&state, id, client, &headers, body, request_id),
    )
    .await
}

/// `DELETE /api/v1/uploads/{id}`: terminates an unfinished upload (its task ends `cancelled`).
#[utoipa::path(
    delete,
    path = "/api/v1/uploads/{id}",
    operation_id = "terminate_upload",
    tag = "uploads",
    params(("id" = String, Path, description = "The upload's (and its task's) id"),
        ("Tus-Resumable" = inline(TusVersion), Header, description = "`1.0.0` (or the IETF draft's `Upload-Draft-Interop-Version: 6`)")),
    responses(
        (status = 204, description = "Terminated: its file is removed, its task is `cancelled`"),
        (status = 400, description = "Neither `Tus-Resumable` nor `Upload-Draft-Interop-Version`, or (IETF) the upload is complete", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "A `Tus-Resumable` other than 1.0.0", body = Problem, content_type = "application/problem+json"),
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
    scope: Scope,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let id = match visible_upload(&state, scope, id).await {
        Ok(id) => id,
        Err(refused) => return refused.into_response(),
    };
    by_protocol(&headers, (), |()| tus::delete(&state, id), |()| ietf::delete(&state, id)).await
}
