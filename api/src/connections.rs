//! What each open connection is doing, so that an idle one is closed and, when every connection
//! slot is taken, the longest-idle one gives its slot to a new client.
//!
//! A connection is *idle* when no request handler of it is running and nothing moved in any of
//! its request or response bodies for a while. HTTP/2 pings and SETTINGS do not count: an h2
//! client library that answers pings by itself, or a peer that keeps a zero flow-control window
//! so that its responses never drain, holds its connection only [`IDLE_TIMEOUT_SECONDS`]
//! (`IDLE_TIMEOUT_SECONDS`), and not at all once the server is full and someone else knocks.
//! A handler that legitimately waits (`?wait=`, an upload) is not idle: its own bounds apply.
//!
//! When every slot is taken and a new connection waits, room is made: the longest-idle
//! connection (idle for at least a second) is closed; failing that, a connection whose every
//! running handler is a long-poll (`?wait=`) is: its long-polls are answered at once with the
//! task as it is, with `Connection: close`, and the connection is closed a second later. The
//! long-polling connection chosen is one of the client that holds the most connections, so one
//! client's long-polls cannot push out everyone else's.
//!
//! [`IDLE_TIMEOUT_SECONDS`]: crate::config::Config::idle_timeout_seconds

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Body as _, Frame, Incoming};
use tokio::sync::Notify;

use crate::client_id::ClientId;

/// A connection idle for less than this is never evicted for a new one (a keep-alive client
/// between two requests).
const EVICTION_MIN_IDLE: Duration = Duration::from_secs(1);

/// What one connection is doing.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    client: Option<ClientId>,
    handlers: AtomicUsize,
    /// Running handlers that are long-polls, waiting for a task to finish.
    long_polls: AtomicUsize,
    last_progress_ms: AtomicU64,
    evict: Notify,
    /// Chosen to make room while long-polling: its long-polls answer now, and it closes.
    closing: AtomicBool,
    closing_notify: Notify,
}

impl Activity {
    fn new(client: Option<ClientId>) -> Self {
        Activity {
            opened: Instant::now(),
            client,
            handlers: AtomicUsize::new(0),
            long_polls: AtomicUsize::new(0),
            last_progress_ms: AtomicU64::new(0),
            evict: Notify::new(),
            closing: AtomicBool::new(false),
            closing_notify: Notify::new(),
        }
    }

    /// Marks a running handler as a long-poll until the guard is dropped.
    pub fn long_polling(self: &Arc<Self>) -> LongPolling {
        self.long_polls.fetch_add(1, Ordering::AcqRel);
        LongPolling(self.clone())
    }

    /// Whether every running handler is a long-poll (and at least one runs).
    fn only_long_polling(&self) -> bool {
        let handlers = self.handlers.load(Ordering::Acquire);
        handlers > 0 && self.long_polls.load(Ordering::Acquire) >= handlers
    }

    /// Whether the connection was chosen to close to make room.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Completes once the connection is chosen to close to make room.
    pub async fn closing(&self) {
        loop {
            let notified = self.closing_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closing() {
                return;
            }
            notified.await;
        }
    }

    /// Something moved: a request began or ended, a body chunk went in or out.
    pub fn touch(&self) {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_progress_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// How long the connection has been idle; `None` while a handler runs.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.handlers.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_progress_ms.load(Ordering::Relaxed));
        Some(self.opened.elapsed().saturating_sub(last))
    }

    /// Marks a handler as running until the guard is dropped.
    pub fn handler_running(self: &Arc<Self>) -> HandlerRunning {
        self.handlers.fetch_add(1, Ordering::AcqRel);
        self.touch();
        HandlerRunning(self.clone())
    }

    /// Completes when the connection has been idle for `timeout`, or was chosen for eviction
    /// while idle.
    pub async fn idle_timeout(&self, timeout: Duration) {
        loop {
            let wait = match self.idle_for() {
                Some(idle) if idle >= timeout => return,
                Some(idle) => timeout - idle,
                None => timeout,
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.evict.notified() => {
                    if self.idle_for().is_some_and(|idle| idle >= EVICTION_MIN_IDLE) {
                        return;
                    }
                }
            }
        }
    }
}

/// A long-poll of a connection; dropping it ends its count.
pub struct LongPolling(Arc<Activity>);

impl Drop for LongPolling {
    fn drop(&mut self) {
        self.0.long_polls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A running handler of a connection; dropping it (the handler finished or was cancelled)
/// counts as progress.
pub struct HandlerRunning(Arc<Activity>);

impl Drop for HandlerRunning {
    fn drop(&mut self) {
        self.0.touch();
        self.0.handlers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every open connection's [`Activity`].
#[derive(Debug, Default)]
pub struct Connections {
    open: Mutex<HashMap<u64, Arc<Activity>>>,
    next_id: AtomicU64,
}

impl Connections {
    /// Registers a new connection of `client` until the returned handle is dropped.
    pub fn open(self: &Arc<Self>, client: Option<ClientId>) -> OpenConnection {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new(client));
        let mut open = self.open.lock().expect("connections lock");
        open.insert(id, activity.clone());
        metrics::gauge!("md5_connections_open").set(open.len() as f64);
        drop(open);
        OpenConnection { id, activity, connections: self.clone() }
    }

    /// Asks the longest-idle connection (idle for at least a second) to close; true if one was asked.
    fn evict_longest_idle(&self) -> bool {
        let open = self.open.lock().expect("connections lock");
        let longest = open
            .values()
            .filter_map(|activity| Some((activity.idle_for()?, activity)))
            .filter(|(idle, _)| *idle >= EVICTION_MIN_IDLE)
            .max_by_key(|(idle, _)| *idle);
        match longest {
            Some((_, activity)) => {
                activity.evict.notify_one();
                true
            }
            None => false,
        }
    }

    /// Makes room for a new connection: asks the longest-idle one to close, or else closes a
    /// connection that only long-polls, of the client with the most connections (its oldest).
    /// True if a connection was asked.
    pub fn make_room(&self) -> bool {
        if self.evict_longest_idle() {
            return true;
        }
        let open = self.open.lock().expect("connections lock");
        let mut held: HashMap<Option<ClientId>, usize> = HashMap::new();
        for activity in open.values() {
            *held.entry(activity.client).or_default() += 1;
        }
        let chosen = open
            .values()
            .filter(|activity| activity.only_long_polling() && !activity.is_closing())
            .max_by_key(|activity| (held[&activity.client], activity.opened.elapsed()));
        match chosen {
            Some(activity) => {
                activity.closing.store(true, Ordering::Release);
                activity.closing_notify.notify_waiters();
                metrics::counter!("md5_long_poll_connections_closed_total").increment(1);
                true
            }
            None => false,
        }
    }
}

/// A registered connection; unregistered on drop.
pub struct OpenConnection {
    id: u64,
    /// What it is doing.
    pub activity: Arc<Activity>,
    connections: Arc<Connections>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let mut open = self.connections.open.lock().expect("connections lock");
        open.remove(&self.id);
        metrics::gauge!("md5_connections_open").set(open.len() as f64);
    }
}

/// A response body that counts each chunk it hands to hyper as progress of its connection.
pub struct TrackedBody {
    inner: Body,
    activity: Arc<Activity>,
}

impl TrackedBody {
    /// Wraps `inner`.
    pub fn new(inner: Body, activity: Arc<Activity>) -> Self {
        TrackedBody { inner, activity }
    }
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(Some(Ok(_)))) {
            self.activity.touch();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that records whether it was read to its end.
///
/// A handler may answer before reading a body it refuses (a wrong offset, a wrong media type, a
/// full server); hyper then closes the HTTP/1 connection after the response rather than read the
/// rest, but says nothing of it, so a client that puts the connection back in its pool sends its
/// next request into a closing socket. [`RequestBody::unread`] tells the server loop to say so
/// with `Connection: close`.
pub struct RequestBody {
    inner: Incoming,
    ended: Arc<AtomicBool>,
}

/// Whether a [`RequestBody`] was read to its end, kept after the body itself is dropped.
#[derive(Clone)]
pub struct BodyEnd(Arc<AtomicBool>);

impl BodyEnd {
    /// True when the body has bytes (or an end) the handler never read.
    pub fn unread(&self) -> bool {
        !self.0.load(Ordering::Acquire)
    }
}

impl RequestBody {
    /// Wraps `inner`; the handle answers whether it was read to its end.
    pub fn new(inner: Incoming) -> (Self, BodyEnd) {
        let ended = Arc::new(AtomicBool::new(inner.is_end_stream()));
        (RequestBody { inner, ended: ended.clone() }, BodyEnd(ended))
    }
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // An error ends it too: hyper has nothing more to read for it.
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) || self.inner.is_end_stream() {
            self.ended.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_idle_only_while_no_handler_runs() {
        let connections = Arc::new(Connections::default());
        let open = connections.open(None);
        let activity = open.activity.clone();
        let running = activity.handler_running();
        assert_eq!(activity.idle_for(), None);
        assert!(!connections.evict_longest_idle(), "a connection with a running handler is not evicted");
        drop(running);
        assert!(activity.idle_for().is_some());
    }

    #[tokio::test]
    async fn room_is_made_from_the_long_polls_of_the_client_holding_most_connections() {
        let connections = Arc::new(Connections::default());
        let (a, b) = (
            ClientId::from_peer("10.0.0.1".parse().unwrap()),
            ClientId::from_peer("10.0.0.2".parse().unwrap()),
        );
        let polling = |client| {
            let open = connections.open(Some(client));
            let running = open.activity.handler_running();
            let polling = open.activity.long_polling();
            (open, running, polling)
        };
        let own = polling(b);
        let theirs: Vec<_> = (0..3).map(|_| polling(a)).collect();
        // A connection with a handler that is not a long-poll (an upload) is never chosen.
        let uploading = connections.open(Some(a));
        let _upload = uploading.activity.handler_running();
        for _ in 0..3 {
            assert!(connections.make_room());
        }
        assert!(
            theirs.iter().all(|(open, ..)| open.activity.is_closing()),
            "the client with four connections"
        );
        assert!(!own.0.activity.is_closing() && !uploading.activity.is_closing());
        // Then the next: the other client's (each client now holds its last), then none.
        tokio::time::timeout(Duration::from_secs(1), theirs[0].0.activity.closing()).await.unwrap();
        assert!(connections.make_room());
        assert!(own.0.activity.is_closing());
        assert!(!connections.make_room(), "the upload is left alone");
    }
}
