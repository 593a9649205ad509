//! `GET /metrics` (Prometheus text) and the middleware that counts requests.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

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

/// `GET /metrics`: the api's own counters plus tasks by status and the oldest queued task's age
/// (read from Postgres at most once per `task_counts::TASK_COUNTS_MAX_AGE`, whatever the number
/// of scrapers), the stream's length and the group's pending entries. Every metric, with its
/// labels: `deploy/monitoring/RUNBOOK.md`. Behind the API key when `METRICS_REQUIRE_AUTH` is set.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String),
        (status = 401, description = "`METRICS_REQUIRE_AUTH` and `API_KEY` are set and the bearer token is missing or wrong",
            body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security((), ("bearer" = []))
)]
pub async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if state.config.metrics_require_auth
        && let Err(refused) = state.keys.authenticate(&headers, None)
    {
        return refused.into_response();
    }
    if let Some(counts) = state.task_counts.current().await {
        for status in shared::TaskStatus::ALL {
            let n = counts.by_status.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n);
            metrics::gauge!("md5_tasks", "status" => status.as_str()).set(n as f64);
        }
        let age = counts
            .oldest_queued
            .map_or(0.0, |created| (chrono::Utc::now() - created).to_std().unwrap_or_default().as_secs_f64());
        metrics::gauge!("md5_oldest_queued_task_age_seconds").set(age);
    }
    if let Ok((length, pending)) = state.queue.stream_stats(&state.config.stream.jobs_group).await {
        metrics::gauge!("md5_stream_length").set(length as f64);
        metrics::gauge!("md5_stream_pending").set(pending as f64);
    }
    let body = shared::telemetry::metrics().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}
