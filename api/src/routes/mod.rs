//! The router: v1 API, compatibility routes, web page, health.

pub mod compat;
pub mod health;
pub mod life;
pub mod live;
pub mod lookup;
pub mod metrics;
pub mod uploads;
pub mod v1;
pub mod web;

use axum::Router;
use axum::extract::{Request, State};

use crate::client_id::{ClientId, Peer};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, Problem};
use crate::openapi::ApiDoc;
use crate::state::AppState;

/// The API's routes, each registered once with `routes!`, which adds the route and its
/// `#[utoipa::path]` description together: (those behind the API key, the open ones).
fn api_routes() -> (OpenApiRouter<AppState>, OpenApiRouter<AppState>) {
    let protected = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(v1::create_hash))
        .routes(routes!(v1::get_hash, life::forget_hash))
        .routes(routes!(life::cancel_hash))
        .routes(routes!(live::hash_events))
        .routes(routes!(lookup::find_by_digest))
        .routes(routes!(uploads::create_upload, uploads::upload_options))
        .routes(routes!(
            uploads::upload_offset,
            uploads::append_upload,
            uploads::terminate_upload,
            uploads::upload_resource_options
        ))
        .routes(routes!(compat::create_hash))
        .routes(routes!(compat::get_hash))
        .route(compat::ALIAS_WITHOUT_SLASH, post(compat::create_hash));
    let open = OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(metrics::metrics));
    (protected, open)
}

/// The OpenAPI document of the API routes, as [`router`] serves them.
pub fn api_document() -> utoipa::openapi::OpenApi {
    let (protected, open) = api_routes();
    protected.merge(open).split_for_parts().1
}

/// Every route of the service, and the OpenAPI document of the API routes, built from one list
/// ([`api_routes`]). Only the page (`/`, `/assets/…`) and the `POST /hashes` alias of
/// `POST /hashes/` are served without being documented as paths.
pub fn router(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    let (protected, open) = api_routes();
    let protected = protected.route_layer(middleware::from_fn_with_state(state.clone(), identify));
    let (router, openapi) = protected.merge(open).split_for_parts();
    let router = router
        .route("/", get(web::index))
        .route("/favicon.ico", get(web::favicon))
        .route("/assets/{file}", get(web::asset))
        .with_state(state);
    (router, openapi)
}

/// Before every API route: checks the key, and puts the request's client and scope into it.
pub async fn identify(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let extensions = request.extensions();
    let anonymous = match extensions.get::<Peer>() {
        Some(&Peer(peer)) => Some(ClientId::from_peer(crate::forwarded::client_address(
            peer,
            request.headers(),
            &state.config.trusted_proxies,
        ))),
        None => extensions.get::<ClientId>().copied(),
    };
    let caller = state.keys.authenticate(request.headers(), anonymous)?;
    if let Some(name) = &caller.key_name {
        tracing::Span::current().record("key", &**name);
    }
    let extensions = request.extensions_mut();
    match caller.client {
        Some(client) => extensions.insert(client),
        None => extensions.remove::<ClientId>(),
    };
    extensions.insert(caller.scope);
    Ok(next.run(request).await)
}

/// Gives every error response that has no body of its own (axum's 404 for an unknown route and
/// 405 for a wrong method, a layer's rejection) a problem+json body, keeping its headers.
pub async fn problem_for_bare_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    let detail = match status {
        StatusCode::NOT_FOUND => "no resource at this path".to_owned(),
        // axum's method router adds its `Allow` header after this middleware has run, so the
        // detail points at the header instead of copying a list it cannot see.
        StatusCode::METHOD_NOT_ALLOWED => {
            format!("method {method} is not allowed here; the Allow header lists the methods that are")
        }
        other => other.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let (mut parts, _) = response.into_parts();
    let problem = Problem {
        kind: format!("/problems/http-{}", status.as_u16()),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail,
        max_wait_seconds: None,
        quota: None,
        expected_offset: None,
        provided_offset: None,
    };
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// The Content-Security-Policy of every response: the page and Swagger UI load scripts, styles,
/// images and data from this origin only (Swagger UI's icons are `data:` images), and nothing
/// may frame them.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// The policy of `/docs`: as [`CONTENT_SECURITY_POLICY`], but Swagger UI applies inline styles
/// as it renders, so styles (never scripts) may be inline there.
pub const DOCS_CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Adds browser security headers to every response of `router` (a handler's own value wins).
pub fn with_security_headers(router: Router) -> Router {
    let header = |name: &'static str, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(HeaderName::from_static(name), HeaderValue::from_static(value))
    };
    router
        .layer(header("content-security-policy", CONTENT_SECURITY_POLICY))
        .layer(header("x-content-type-options", "nosniff"))
        .layer(header("x-frame-options", "DENY"))
        .layer(header("referrer-policy", "no-referrer"))
}

/// The task (or upload) id in the path; 404 for anything that is not a UUID, as for an unknown
/// id.
pub fn task_id_in_path(
    id: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<uuid::Uuid, ApiError> {
    let axum::extract::Path(id) = id.map_err(|_| ApiError::task_not_found("(invalid id)"))?;
    uuid::Uuid::parse_str(&id).map_err(|_| ApiError::task_not_found(&id))
}

/// The request id tower-http assigned (or the client sent), if it is printable.
pub fn request_id(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get("x-request-id").and_then(|value| value.to_str().ok()).filter(|id| id.len() <= 200)
}
