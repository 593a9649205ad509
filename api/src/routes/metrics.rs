//! `GET /metrics` (Prometheus text) and the middleware that counts requests.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;
use shared::queries;

/// The method as a label from a closed set: a client that invents methods cannot add series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Counts every request by route template (or `unmatched`), method (or `other`) and status,
/// and times it. Every label comes from a closed set, whatever the client sends.
pub async fn track_requests(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(request.method());
    let response = next.run(request).await;
    let labels =
        [("route", route), ("method", method.to_owned()), ("status", response.status().as_u16().to_string())];
    metrics::counter!("md5_http_requests_total", &labels).increment(1);
    metrics::histogram!("md5_http_request_duration_seconds", &labels).record(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`: the api's own counters plus, read at scrape time, tasks by status, the
/// stream's length and the group's pending entries.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String))
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    if let Ok(mut conn) = state.pool.get().await
        && let Ok(counts) = queries::count_by_status(&mut conn).await
    {
        for status in [
            shared::TaskStatus::Queued,
            shared::TaskStatus::Processing,
            shared::TaskStatus::Done,
            shared::TaskStatus::Failed,
        ] {
            let n = counts.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n);
            metrics::gauge!("md5_tasks", "status" => status.as_str()).set(n as f64);
        }
    }
    if let Ok((length, pending)) = state.queue.stream_stats(&state.config.stream.jobs_group).await {
        metrics::gauge!("md5_stream_length").set(length as f64);
        metrics::gauge!("md5_stream_pending").set(pending as f64);
    }
    let body = shared::telemetry::metrics().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}
