//! A server that speaks the v1 API's shape but lies, for testing what `md5-client` trusts: it
//! takes every upload, then answers task requests as its [`Lie`] says, and counts them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// How the server answers `GET /api/v1/hashes/{id}`.
#[derive(Debug, Clone)]
pub enum Lie {
    /// A chunked body that never ends.
    EndlessBody,
    /// `done`, with this value as `md5`.
    Done(Value),
    /// `queued` at once, whatever `?wait=` asks.
    AlwaysQueued,
    /// 400 for any `wait` above this, saying so in `max_wait_seconds` (as the real api does),
    /// then `done` with a valid MD5.
    MaxWait(u64),
}

// The server's resumable uploads (`/api/v1/uploads`, tus 1.0.0) lie too: created at once, and
// every `PATCH` (whatever it carries) answered `204` with `Upload-Offset: 0`, as is every `HEAD`.

/// The running server.
pub struct LyingServer {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Task requests answered so far.
    pub task_requests: Arc<AtomicUsize>,
    /// The `wait` of every task request, in order (`None`: no `wait`).
    pub waits: Arc<std::sync::Mutex<Vec<Option<String>>>>,
    /// `PATCH`es of resumable uploads answered so far.
    pub appends: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    lie: Lie,
    task_requests: Arc<AtomicUsize>,
    waits: Arc<std::sync::Mutex<Vec<Option<String>>>>,
    appends: Arc<AtomicUsize>,
}

impl LyingServer {
    /// Starts the server on a free port of 127.0.0.1.
    pub async fn start(lie: Lie) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let shared =
            Shared { lie, task_requests: Arc::default(), waits: Arc::default(), appends: Arc::default() };
        let (task_requests, waits, appends) =
            (shared.task_requests.clone(), shared.waits.clone(), shared.appends.clone());
        let app = axum::Router::new()
            .route("/api/v1/hashes", axum::routing::post(upload))
            .route("/api/v1/hashes/{id}", axum::routing::get(task))
            .route("/api/v1/uploads", axum::routing::post(create_upload))
            .route("/api/v1/uploads/{id}", axum::routing::patch(append).head(offset))
            .with_state(shared);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(LyingServer { url, task_requests, waits, appends, server })
    }

    /// Task requests answered so far.
    pub fn task_requests(&self) -> usize {
        self.task_requests.load(Ordering::Relaxed)
    }
}

impl Drop for LyingServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn task_object(status: &str, md5: Value) -> Value {
    json!({"id": "01936f1e-0000-7000-8000-000000000001", "status": status, "md5": md5, "file_name": "a.txt",
           "size_bytes": 3, "error": null, "attempts": 1, "created_at": "2026-11-30T12:00:00.000Z",
           "started_at": null, "finished_at": null})
}

async fn upload(body: Body) -> Response {
    // Read and drop the form: the lie is in the answers, not here.
    let _ = axum::body::to_bytes(body, 64 << 20).await;
    (StatusCode::ACCEPTED, axum::Json(task_object("queued", Value::Null))).into_response()
}

async fn create_upload(body: Body) -> Response {
    let _ = axum::body::to_bytes(body, 64 << 20).await;
    let location = "/api/v1/uploads/01936f1e-0000-7000-8000-000000000001";
    (StatusCode::CREATED, [("location", location), ("tus-resumable", "1.0.0")]).into_response()
}

async fn append(State(shared): State<Shared>, body: Body) -> Response {
    shared.appends.fetch_add(1, Ordering::Relaxed);
    let _ = axum::body::to_bytes(body, 256 << 20).await;
    (StatusCode::NO_CONTENT, [("upload-offset", "0"), ("tus-resumable", "1.0.0")]).into_response()
}

async fn offset() -> Response {
    (StatusCode::OK, [("upload-offset", "0"), ("tus-resumable", "1.0.0")]).into_response()
}

async fn task(
    State(shared): State<Shared>,
    Path(_id): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    shared.task_requests.fetch_add(1, Ordering::Relaxed);
    let wait = query.get("wait").cloned();
    shared.waits.lock().expect("waits lock").push(wait.clone());
    match shared.lie {
        Lie::EndlessBody => {
            let chunk = bytes::Bytes::from(vec![b'{'; 64 * 1024]);
            let endless = futures_util::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
            Body::from_stream(endless).into_response()
        }
        Lie::Done(md5) => axum::Json(task_object("done", md5)).into_response(),
        Lie::AlwaysQueued => axum::Json(task_object("queued", Value::Null)).into_response(),
        Lie::MaxWait(max) => {
            let asked: f64 = wait.and_then(|wait| wait.parse().ok()).unwrap_or(0.0);
            if asked > max as f64 {
                let problem = json!({"type": "/problems/bad-request", "title": "Bad Request", "status": 400,
                    "detail": format!("wait must be a number of seconds from 0 to {max}"), "max_wait_seconds": max});
                return (StatusCode::BAD_REQUEST, axum::Json(problem)).into_response();
            }
            axum::Json(task_object("done", json!("900150983cd24fb0d6963f7d28e17f72"))).into_response()
        }
    }
}
