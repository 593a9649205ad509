//! The HTTP server loop: hyper with bounds on everything a connection can hold, and graceful
//! shutdown with a bounded grace period.
//!
//! - At most `MAX_CONNECTIONS` connections are open (one more is accepted and waits for room);
//!   more wait in the listen backlog.
//! - A connection must complete its first request head within `HEADER_TIMEOUT_SECONDS` of being
//!   accepted, whatever it sends (nothing, half a request line, an HTTP/2 preface); hyper's own
//!   header timeout then covers every later request on an HTTP/1 connection, and HTTP/2 pings
//!   close a connection whose peer stops answering.
//! - Read buffers and HTTP/2 flow-control windows are small, so a connection that sends faster
//!   than its upload is written holds at most a few hundred KiB; what hyper buffers for a stream
//!   whose peer does not read is capped too ([`H2_MAX_SEND_BUFFER_BYTES`]).
//! - An HTTP/1 answer to a request whose body the handler did not read to its end carries
//!   `Connection: close`: hyper will close that connection rather than read the rest, and a
//!   client told so does not send its next request into the closing socket.
//! - A connection the api closes first keeps reading (and dropping) what its client still sends
//!   for up to [`LINGER`], so that its last answer is not destroyed by a reset.
//! - A connection idle for `IDLE_TIMEOUT_SECONDS` is closed (HTTP/1 keep-alive and HTTP/2 alike;
//!   pings are not activity), and when every connection slot is taken and a new connection
//!   waits, the longest-idle connection, or else one that only long-polls, is closed to let it in
//!   (see [`crate::connections`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tower::ServiceExt as _;

use crate::client_id::{ClientId, Peer};
use crate::connections::{Connections, RequestBody, TrackedBody};

/// Largest HTTP/1 read buffer: request heads must fit, and body chunks are at most this big.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;
/// HTTP/2 per-stream flow-control window: what a client may send ahead of the upload's writes.
pub const H2_STREAM_WINDOW_BYTES: u32 = 256 * 1024;
/// HTTP/2 per-connection flow-control window.
pub const H2_CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;
/// Most concurrent HTTP/2 streams on one connection: plenty for a page and its assets, and what
/// a peer that never reads its responses can pin (a few KiB a stream) is halved from 32.
pub const H2_MAX_STREAMS: u32 = 16;
/// Largest HTTP/2 header list.
pub const H2_MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;
/// Most response bytes hyper buffers for one HTTP/2 stream beyond what the peer's window takes.
pub const H2_MAX_SEND_BUFFER_BYTES: usize = 64 * 1024;
/// While every connection slot is taken, how often a waiting new connection looks again for
/// one that can make room.
const MAKE_ROOM_EVERY: Duration = Duration::from_secs(1);
/// How long a connection chosen to make room has to send its long-polls' answers.
const CLOSING_GRACE: Duration = Duration::from_secs(1);
/// File descriptors kept free for everything but client connections (files, Postgres, Redis).
const RESERVED_FDS: u64 = 256;

/// What [`serve`] needs to know.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Time a new connection has to complete its first request head; also hyper's header timeout.
    pub header_timeout: Duration,
    /// Time in-flight requests get after shutdown begins.
    pub grace: Duration,
    /// Most open connections.
    pub max_connections: u32,
    /// A connection with no running handler and no body progress for this long is closed.
    pub idle_timeout: Duration,
}

/// Serves `app` until `shutdown` completes, then waits up to `options.grace` for open connections.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let max_connections = fit_to_open_file_limit(options.max_connections);
    metrics::gauge!("md5_connections_max").set(f64::from(max_connections));
    let connections = Arc::new(Semaphore::new(max_connections as usize));
    let header_timeout = options.header_timeout;
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(READ_BUFFER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(H2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(H2_CONNECTION_WINDOW_BYTES)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST_BYTES)
        .max_send_buf_size(H2_MAX_SEND_BUFFER_BYTES)
        .keep_alive_interval(Some(header_timeout))
        .keep_alive_timeout(header_timeout);
    let graceful = GracefulShutdown::new();
    let open_connections = Arc::new(Connections::default());
    let idle_timeout = options.idle_timeout;
    let mut accept_backoff = Duration::from_millis(10);
    tokio::pin!(shutdown);
    'accept: loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, backoff_ms = accept_backoff.as_millis() as u64, "accept failed");
                    tokio::time::sleep(accept_backoff).await;
                    accept_backoff = (accept_backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        accept_backoff = Duration::from_millis(10);
        // Full: a connection makes room (see `crate::connections`), or the next one to end does;
        // what can make room is looked for again every second while this one waits.
        let permit = loop {
            if let Ok(permit) = connections.clone().try_acquire_owned() {
                break permit;
            }
            open_connections.make_room();
            tokio::select! {
                permit = connections.clone().acquire_owned() => break permit.expect("the connection semaphore is never closed"),
                () = tokio::time::sleep(MAKE_ROOM_EVERY) => {}
                () = &mut shutdown => break 'accept,
            }
        };
        let _ = stream.set_nodelay(true);
        let client = ClientId::from_peer(peer.ip());
        let request_seen = Arc::new(RequestSeen::default());
        let open = open_connections.open(Some(client));
        let service = {
            let request_seen = request_seen.clone();
            let app = app.clone();
            let activity = open.activity.clone();
            hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                request_seen.mark();
                request.extensions_mut().insert(client);
                request.extensions_mut().insert(Peer(peer.ip()));
                request.extensions_mut().insert(activity.clone());
                let running = activity.handler_running();
                let (app, activity) = (app.clone(), activity.clone());
                let http1 = request.version() < axum::http::Version::HTTP_2;
                let (parts, incoming) = request.into_parts();
                let (body, body_end) = RequestBody::new(incoming);
                let request = hyper::Request::from_parts(parts, Body::new(body));
                async move {
                    let mut response = app.oneshot(request).await?;
                    drop(running);
                    // hyper will close this connection rather than read the rest of the body, or
                    // it was chosen to close to make room: say so.
                    if http1 && (body_end.unread() || activity.is_closing()) {
                        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    Ok::<_, std::convert::Infallible>(
                        response.map(|body| Body::new(TrackedBody::new(body, activity))),
                    )
                }
            })
        };
        let io = ProblemOnRefusal::new(LingeringClose::new(stream), request_seen.clone());
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _permit = permit;
            let activity = open.activity.clone();
            let _open = open;
            let first_head = async {
                if tokio::time::timeout(header_timeout, request_seen.notify.notified()).await.is_ok() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                result = connection => if let Err(err) = result {
                    tracing::debug!(error = %err, "connection closed with an error");
                },
                () = first_head => {
                    tracing::debug!(client = %client, "closed a connection that sent no request head in time");
                }
                () = async {
                    activity.closing().await;
                    tokio::time::sleep(CLOSING_GRACE).await;
                } => {
                    tracing::debug!(client = %client, "closed a long-polling connection to make room");
                }
                () = activity.idle_timeout(idle_timeout) => {
                    metrics::counter!("md5_idle_connections_closed_total").increment(1);
                    tracing::debug!(client = %client, "closed an idle connection");
                }
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: finishing in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(options.grace) => {
            tracing::warn!(grace_seconds = options.grace.as_secs(), "in-flight requests outlived the grace period");
        }
    }
}

/// Raises the soft open-file limit to the hard one, and lowers `wanted` so that the connections
/// and [`RESERVED_FDS`] fit under it: the api then never reaches `EMFILE` on accept.
fn fit_to_open_file_limit(wanted: u32) -> u32 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit = getrlimit(Resource::Nofile),
            Err(err) => tracing::warn!(error = %err, "cannot raise the open-file limit"),
        }
    }
    let Some(current) = limit.current else { return wanted };
    let fits = current.saturating_sub(RESERVED_FDS).max(16);
    if u64::from(wanted) > fits {
        tracing::warn!(
            connections.wanted = wanted,
            connections.max = fits,
            open_files.limit = current,
            "MAX_CONNECTIONS lowered to fit the open-file limit"
        );
        return fits as u32;
    }
    wanted
}

/// Whether a connection has delivered a request head to the service yet.
#[derive(Debug, Default)]
struct RequestSeen {
    seen: AtomicBool,
    notify: Notify,
}

impl RequestSeen {
    fn mark(&self) {
        self.seen.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

/// The connection's socket, except that the bare error response hyper writes by itself when it
/// refuses a request before any reached the service (a request line it cannot parse, a head
/// larger than [`READ_BUFFER_BYTES`], a URI past its limit) goes out as problem+json, like
/// every other error of the api. hyper closes the connection after such a response.
struct ProblemOnRefusal {
    inner: LingeringClose,
    request_seen: Arc<RequestSeen>,
    /// The problem response being written in place of hyper's, and how much of it is out.
    replacement: Option<(Vec<u8>, usize)>,
    /// The replacement is out: whatever hyper still writes of its own response is dropped.
    replaced: bool,
}

impl ProblemOnRefusal {
    fn new(inner: LingeringClose, request_seen: Arc<RequestSeen>) -> Self {
        ProblemOnRefusal { inner, request_seen, replacement: None, replaced: false }
    }

    /// hyper's status line, if `buf` starts an error response of its own.
    fn refusal_status(&self, buf: &[u8]) -> Option<axum::http::StatusCode> {
        if self.request_seen.seen.load(Ordering::Acquire) || !buf.starts_with(b"HTTP/1.") {
            return None;
        }
        let code = std::str::from_utf8(buf.get(9..12)?).ok()?.parse().ok()?;
        axum::http::StatusCode::from_u16(code)
            .ok()
            .filter(|status| status.is_client_error() || status.is_server_error())
    }
}

fn problem_response(status: axum::http::StatusCode) -> Vec<u8> {
    let problem = crate::error::Problem {
        kind: format!("/problems/http-{}", status.as_u16()),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail: "the request could not be read: its head is malformed or too large".to_owned(),
        max_wait_seconds: None,
        quota: None,
        expected_offset: None,
        provided_offset: None,
    };
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    let mut response = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        problem.title,
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    response
}

impl AsyncRead for ProblemOnRefusal {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ProblemOnRefusal {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replaced {
            return Poll::Ready(Ok(buf.len()));
        }
        if this.replacement.is_none()
            && let Some(status) = this.refusal_status(buf)
        {
            this.replacement = Some((problem_response(status), 0));
        }
        let Some((bytes, written)) = this.replacement.as_mut() else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        while *written < bytes.len() {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        this.replacement = None;
        this.replaced = true;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Longest a closing connection keeps reading what its client still sends.
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes a closing connection reads and drops.
const LINGER_MAX_BYTES: usize = 64 * 1024 * 1024;

/// The client's socket, closed the way RFC 9112 (section 9.6) asks of a server that closes
/// first: the write half, then reading and dropping what the client still sends until it closes
/// too, for at most [`LINGER`] and [`LINGER_MAX_BYTES`] (a "lingering close", as nginx and Apache
/// do). A socket closed with unread bytes is reset, and the reset can destroy the answer before
/// the client reads it, or fail the client's write of a body the api refused without reading.
struct LingeringClose {
    inner: TcpStream,
    /// The write half is closed: until when, and how much was read since.
    linger: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
}

impl LingeringClose {
    fn new(inner: TcpStream) -> Self {
        LingeringClose { inner, linger: None }
    }
}

impl AsyncRead for LingeringClose {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for LingeringClose {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let (until, read) = match &mut this.linger {
            Some(linger) => linger,
            None => {
                ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
                this.linger.insert((Box::pin(tokio::time::sleep(LINGER)), 0))
            }
        };
        let mut scratch = [0u8; 8 * 1024];
        loop {
            if until.as_mut().poll(cx).is_ready() || *read > LINGER_MAX_BYTES {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf)) {
                Ok(()) if !buf.filled().is_empty() => *read += buf.filled().len(),
                // The client closed its half (or the connection broke): done.
                _ => return Poll::Ready(Ok(())),
            }
        }
    }
}
