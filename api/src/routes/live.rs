//! A task while it lives: its event stream (`GET /api/v1/hashes/{id}/events`, Server-Sent
//! Events).
//!
//! It works across api replicas and workers through Postgres: a cancel is one conditional
//! update (`routes::life`) whose status change every api (event streams) and every worker (the hash stops)
//! hears as a notification (`shared::events`).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::v1::load;
use crate::client_id::ClientId;
use crate::error::{ApiError, Problem};
use crate::keys::Scope;
use crate::quotas::Quota;
use crate::refusals::Refusals;
use crate::slots::{ClientSlot, SlotRefusal};
use crate::state::AppState;
use crate::task_feed::TaskWatch;
use shared::TaskStatus;
use shared::events::TaskEvent;
use shared::task_view::{HashingProgress, TaskView};

/// A stream re-reads its task this often even without a notification (a lost one only delays
/// an event).
const RECHECK: Duration = Duration::from_secs(30);

/// Keep-alive comments, so proxies and the api's own idle timeout see a live connection: every
/// 15 s, or every half `IDLE_TIMEOUT_SECONDS` where that is shorter (a stream waiting for a
/// long hash is never closed as idle).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The keep-alive interval under `idle_timeout`.
fn keep_alive_every(idle_timeout: Duration) -> Duration {
    KEEP_ALIVE.min(idle_timeout / 2)
}

/// What a client's `EventSource` waits before reconnecting after the stream breaks.
const RECONNECT_MS: u64 = 2000;

/// `GET /api/v1/hashes/{id}/events`: the task's state now, then every change, as Server-Sent
/// Events; ends after the terminal state.
#[utoipa::path(
    get,
    path = "/api/v1/hashes/{id}/events",
    operation_id = "hash_events_v1",
    tag = "v1",
    params(("id" = String, Path, description = "The promise id (a UUID)", example = "019acb5e-4f3a-7c21-9d0e-5b6f7a8c9d01"),
        ("Last-Event-ID" = Option<String>, Header, description = "Accepted and not needed: every stream starts with \
            the task's current state, so a client that reconnects after missing events (the terminal one included) \
            gets the state they led to")),
    responses(
        (status = 200, description = "`text/event-stream`. Event `status` (id `status-<status>-<attempts>`): the task \
            object as `GET /api/v1/hashes/{id}` shows it, sent at once and at every change (queued → processing → \
            done, failed or cancelled); the stream ends after a terminal one. Event `progress` (id \
            `progress-<attempts>-<bytes>`): `{\"id\", \"bytes_hashed\", \"size_bytes\"}` about every half second while \
            the file hashes. Keep-alive comments every 15 s (or half `IDLE_TIMEOUT_SECONDS` if shorter); `retry: 2000`. Works through any api replica, whichever \
            replica or worker made the change", content_type = "text/event-stream", body = TaskStreamEvent),
        (status = 404, description = "No task has this id, or it is not a UUID", body = Problem, content_type = "application/problem+json"),
        Refusals,
    ),
    security((), ("bearer" = []))
)]
pub async fn hash_events(
    State(state): State<AppState>,
    client: Option<ClientId>,
    scope: Scope,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let task_id = super::task_id_in_path(id)?;
    let quota = state.keys.quotas(client).event_streams;
    let slot = state.event_streams.try_acquire(client, quota).map_err(|refusal| match refusal {
        SlotRefusal::Full => ApiError::unavailable(
            "too many event streams are open; poll GET /api/v1/hashes/{id} or try again shortly",
        ),
        SlotRefusal::ClientFull => ApiError::over_quota(
            Quota::EventStreams,
            format!("this client has {quota} event streams open, its quota; close one, then try again"),
            Duration::from_secs(crate::error::RETRY_AFTER_SECONDS),
        ),
    })?;
    // Subscribe before the first read: a change between the read and the subscription is not
    // missed.
    let events = state.feed.watch(task_id);
    let (task, upload) = load(&state, scope, task_id).await?;
    let mut watch =
        Watch { state, task_id, events, sent: None, bytes_sent: 0, size_bytes: 0, ended: false, _slot: slot };
    let first = watch.status_event(TaskView::from((task, upload)));
    let keep_alive = keep_alive_every(Duration::from_secs(watch.state.config.idle_timeout_seconds));
    let stream = futures_util::stream::unfold((Some(first), watch), |(first, mut watch)| async move {
        if let Some(event) = first {
            return Some((
                Ok::<Event, Infallible>(event.retry(Duration::from_millis(RECONNECT_MS))),
                (None, watch),
            ));
        }
        let event = watch.next().await?;
        Some((Ok(event), (None, watch)))
    });
    metrics::counter!("md5_event_streams_opened_total").increment(1);
    let mut response = Sse::new(stream).keep_alive(KeepAlive::new().interval(keep_alive)).into_response();
    // Proxies that buffer responses (nginx) would hold the events back.
    response.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// One event of a task's stream, field by field, for the OpenAPI document (a client's
/// `EventSource` or SSE parser gives these).
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "describes the wire format; the events are written by axum's `Event`")]
pub struct TaskStreamEvent {
    /// `status` (data: the task object) or `progress` (data: `{"id", "bytes_hashed", "size_bytes"}`).
    #[schema(pattern = "^(status|progress)$", example = "status")]
    event: String,
    /// `status-<status>-<attempts>` or `progress-<attempts>-<bytes hashed>`.
    #[schema(example = "status-done-1")]
    id: String,
    /// The event's JSON.
    data: String,
    /// On the first event: milliseconds a client waits before reconnecting.
    #[schema(example = 2000)]
    retry: Option<u64>,
}

/// One open event stream.
struct Watch {
    state: AppState,
    task_id: Uuid,
    events: TaskWatch,
    /// The status and attempt of the last status event sent.
    sent: Option<(TaskStatus, i32)>,
    /// Bytes hashed in the last progress event sent, for the attempt in `sent`.
    bytes_sent: u64,
    /// The file's size, from the last status event.
    size_bytes: i64,
    ended: bool,
    _slot: ClientSlot,
}

impl Watch {
    /// The next event, or `None` once the terminal one was sent (or the task cannot be read).
    async fn next(&mut self) -> Option<Event> {
        if self.ended {
            return None;
        }
        loop {
            let reload = match tokio::time::timeout(RECHECK, self.events.recv()).await {
                Ok(Ok(TaskEvent::Changed(id, _))) => id == self.task_id,
                Ok(Ok(TaskEvent::Progress(id, bytes))) if id == self.task_id => {
                    if let Some(event) = self.progress_event(bytes) {
                        return Some(event);
                    }
                    false
                }
                Ok(Ok(TaskEvent::Progress(..))) => false,
                Ok(Ok(TaskEvent::Resync)) | Ok(Err(RecvError::Lagged(_))) | Err(_) => true,
                Ok(Err(RecvError::Closed)) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    true
                }
            };
            if reload {
                // Postgres unreachable: end the stream; the client reconnects (after `retry`).
                let (task, upload) = load(&self.state, Scope::EVERY, self.task_id).await.ok()?;
                if self.sent != Some((task.status, task.attempts)) {
                    return Some(self.status_event(TaskView::from((task, upload))));
                }
            }
        }
    }

    fn status_event(&mut self, view: TaskView) -> Event {
        let progress = self.state.feed.progress(view.id);
        let view = view.with_progress(progress);
        if self.sent.is_none_or(|(_, attempts)| attempts != view.attempts) {
            self.bytes_sent = 0;
        }
        self.sent = Some((view.status, view.attempts));
        self.size_bytes = view.size_bytes;
        self.ended = view.status.is_finished();
        if let Some(progress) = view.progress {
            self.bytes_sent = self.bytes_sent.max(progress.bytes_hashed);
        }
        Event::default()
            .event("status")
            .id(format!("status-{}-{}", view.status.as_str(), view.attempts))
            .json_data(&view)
            .expect("a task view serializes")
    }

    fn progress_event(&mut self, bytes: u64) -> Option<Event> {
        let (status, attempts) = self.sent?;
        if status != TaskStatus::Processing || bytes <= self.bytes_sent {
            return None;
        }
        self.bytes_sent = bytes;
        let size_bytes = self.size_bytes;
        let progress = ProgressEvent {
            id: self.task_id,
            progress: HashingProgress { bytes_hashed: bytes.min(size_bytes.max(0) as u64), size_bytes },
        };
        Some(
            Event::default()
                .event("progress")
                .id(format!("progress-{attempts}-{bytes}"))
                .json_data(&progress)
                .expect("a progress event serializes"),
        )
    }
}

/// The data of a `progress` event.
#[derive(serde::Serialize)]
struct ProgressEvent {
    id: Uuid,
    #[serde(flatten)]
    progress: HashingProgress,
}
