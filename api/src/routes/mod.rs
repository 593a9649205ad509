//! The router: v1 API, compatibility routes, web page, health.

pub mod compat;
pub mod health;
pub mod metrics;
pub mod v1;
pub mod web;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use subtle::ConstantTimeEq as _;

use crate::error::ApiError;
use crate::state::AppState;

/// Every route of the service.
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/api/v1/hashes", post(v1::create_hash))
        .route("/api/v1/hashes/{id}", get(v1::get_hash))
        .route("/hashes", post(compat::create_hash))
        .route("/hashes/", post(compat::create_hash))
        .route("/hashes/{task_id}", get(compat::get_hash))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_api_key));
    Router::new()
        .merge(protected)
        .route("/", get(web::index))
        .route("/assets/{file}", get(web::asset))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .with_state(state)
}

/// When `API_KEY` is set, lets a request through only with `Authorization: Bearer <key>`,
/// comparing in constant time.
async fn require_api_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(expected) = &state.config.api_key {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or("");
        let matches: bool = presented.as_bytes().ct_eq(expected.as_bytes()).into();
        if !matches {
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(next.run(request).await)
}

/// The request id tower-http assigned (or the client sent), if it is printable.
pub fn request_id(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get("x-request-id").and_then(|value| value.to_str().ok()).filter(|id| id.len() <= 200)
}
