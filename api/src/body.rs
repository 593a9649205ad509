//! The request body as the upload path reads it: a stream that enforces, byte by byte, every bound
//! a client could otherwise stretch without limit.
//!
//! - **Idle**: no byte for `BODY_IDLE_TIMEOUT_SECONDS` ends the body.
//! - **Rate**: fewer than `MIN_UPLOAD_BYTES_PER_SECOND` × `UPLOAD_RATE_WINDOW_SECONDS` bytes in any
//!   window ends the body, so a trickle cannot hold an upload slot for long.
//! - **Chunk size**: every [`CHUNK_WINDOW`] chunks must bring at least `MIN_UPLOAD_CHUNK_BYTES`
//!   each on average, so the cost of an upload is bounded per byte whatever its framing (a body
//!   sent in 1-byte HTTP/1.1 chunks or DATA frames costs the api ~200× the CPU per byte of a
//!   normal one); the bad window is cut after [`CHUNK_WINDOW`] chunks, a few milliseconds of work.
//! - **Form head**: while the multipart parser looks for the next part (the preamble before the
//!   first boundary, a part's headers), it may pull at most [`FormHead`]'s budget; multer buffers
//!   everything it pulls in that state, so without this bound a body that never shows a boundary
//!   or never ends a header block would be held in memory whole.
//!
//! Every error is an `io::Error` carrying a [`BodyLimit`], which the upload path turns into the
//! right status.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use tokio::time::Instant;

/// Why the body stream was cut.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyLimit {
    /// Nothing arrived for the idle timeout.
    #[error("no data for {0} s")]
    Idle(u64),
    /// Less than the minimum rate over a whole window.
    #[error(
        "the upload sent {received} bytes in {window_seconds} s, below the minimum of {min_per_second} bytes/s"
    )]
    TooSlow {
        /// Bytes received in the window.
        received: u64,
        /// The window.
        window_seconds: u64,
        /// The configured floor.
        min_per_second: u64,
    },
    /// The chunks are too small on average.
    #[error(
        "the upload sent {bytes} bytes in {chunks} chunks, below the minimum average of {min_average} bytes per chunk"
    )]
    Fragmented {
        /// Chunks in the window.
        chunks: u64,
        /// Bytes they carried.
        bytes: u64,
        /// The configured floor.
        min_average: u64,
    },
    /// The preamble or a part's headers are larger than the budget.
    #[error("the multipart preamble or part headers exceed {0} bytes")]
    FormHeadTooLarge(u64),
}

impl BodyLimit {
    /// Finds the limit inside an error chain produced by [`guard`], if that is what it is.
    pub fn find<'e>(err: &'e (dyn std::error::Error + 'static)) -> Option<&'e BodyLimit> {
        let mut current: Option<&'e (dyn std::error::Error + 'static)> = Some(err);
        while let Some(err) = current {
            if let Some(limit) = err.downcast_ref::<BodyLimit>() {
                return Some(limit);
            }
            if let Some(io) = err.downcast_ref::<io::Error>()
                && let Some(inner) = io.get_ref()
                && let Some(limit) = inner.downcast_ref::<BodyLimit>()
            {
                return Some(limit);
            }
            current = err.source();
        }
        None
    }
}

/// The bounds of one body.
#[derive(Debug, Clone, Copy)]
pub struct BodyBounds {
    /// Longest gap between two chunks.
    pub idle: Duration,
    /// Minimum bytes per second, averaged over `rate_window` (0 disables the check).
    pub min_bytes_per_second: u64,
    /// The window the rate is measured over.
    pub rate_window: Duration,
    /// Minimum average bytes per chunk over each [`CHUNK_WINDOW`] chunks (0 disables the check).
    pub min_chunk_bytes: u64,
}

/// Chunks over which the average chunk size is measured.
pub const CHUNK_WINDOW: u64 = 1024;

/// Shared between the upload path and the body stream: how many more bytes the multipart
/// parser may pull before it has found the next part. The upload path opens the budget before
/// asking for the next part and closes it when a part is returned.
#[derive(Debug, Clone)]
pub struct FormHead {
    budget: u64,
    /// Total bytes pulled from the body so far.
    pulled: Arc<AtomicU64>,
    /// `pulled` may not pass this; `u64::MAX` while a part's data is streaming.
    ceiling: Arc<AtomicU64>,
}

impl FormHead {
    /// A budget of `budget` bytes per search for the next part; starts open (the preamble).
    pub fn new(budget: u64) -> Self {
        FormHead { budget, pulled: Arc::new(AtomicU64::new(0)), ceiling: Arc::new(AtomicU64::new(budget)) }
    }

    /// The parser is about to look for the next part: it may pull `budget` more bytes.
    pub fn open(&self) {
        let pulled = self.pulled.load(Ordering::Acquire);
        self.ceiling.store(pulled.saturating_add(self.budget), Ordering::Release);
    }

    /// A part was found: its data is bounded by the upload limit instead.
    pub fn close(&self) {
        self.ceiling.store(u64::MAX, Ordering::Release);
    }

    /// Counts a chunk; an error when it passes the budget.
    fn count(&self, len: usize) -> Result<(), BodyLimit> {
        let pulled = self.pulled.fetch_add(len as u64, Ordering::AcqRel) + len as u64;
        if pulled > self.ceiling.load(Ordering::Acquire) {
            return Err(BodyLimit::FormHeadTooLarge(self.budget));
        }
        Ok(())
    }
}

/// Reads and drops up to `max` more bytes of a body being refused, for at most a second, so that
/// what the client already sent is read rather than left in the socket: closing a socket with
/// unread bytes resets the connection, and the reset can destroy the answer before the client
/// reads it. Bounded in bytes and time like everything a request can make the api do.
pub async fn drain<S, E>(stream: S, max: usize)
where
    S: Stream<Item = Result<Bytes, E>>,
{
    let mut stream = std::pin::pin!(stream);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut read = 0;
        while read <= max {
            match stream.next().await {
                Some(Ok(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
    })
    .await;
}

/// Whether the client waits to be told to send its body (`Expect: 100-continue`, which curl
/// sends with every body over 1 MiB).
pub fn expects_continue(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::EXPECT)
        .is_some_and(|expect| expect.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Refuses a body that was not read yet. A client waiting for `100 Continue` has sent none of
/// it, and the server sends `100 Continue` only once the body is first read: so its body is
/// left unread, the refusal is its first answer, and it sends nothing (RFC 9110, 10.1.1; the
/// connection then closes). Any other client's body is [drained](drain) up to `max` bytes.
pub async fn refuse(body: axum::body::Body, expects_continue: bool, max: usize) {
    if !expects_continue {
        drain(body.into_data_stream(), max).await;
    }
}

/// Wraps `body` with the idle, rate and form-head bounds. The stream ends after its first error.
pub fn guard(
    body: impl Stream<Item = Result<Bytes, axum::Error>> + Send + Unpin + 'static,
    bounds: BodyBounds,
    head: FormHead,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    let state = Guard {
        body,
        bounds,
        head,
        window_started: Instant::now(),
        window_bytes: 0,
        chunks: 0,
        chunk_bytes: 0,
    };
    futures_util::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        match state.next().await {
            Ok(Some(bytes)) => Some((Ok(bytes), Some(state))),
            Ok(None) => None,
            Err(err) => Some((Err(err), None)),
        }
    })
}

struct Guard<S> {
    body: S,
    bounds: BodyBounds,
    head: FormHead,
    window_started: Instant,
    window_bytes: u64,
    /// Chunks, and their bytes, in the current chunk window.
    chunks: u64,
    chunk_bytes: u64,
}

impl<S> Guard<S>
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    async fn next(&mut self) -> Result<Option<Bytes>, io::Error> {
        let limit = |limit: BodyLimit| {
            let kind = match limit {
                BodyLimit::FormHeadTooLarge(_) | BodyLimit::Fragmented { .. } => io::ErrorKind::InvalidData,
                _ => io::ErrorKind::TimedOut,
            };
            io::Error::new(kind, limit)
        };
        let idle_deadline = Instant::now() + self.bounds.idle;
        loop {
            let rate_deadline = self.window_started + self.bounds.rate_window;
            let checks_rate = self.bounds.min_bytes_per_second > 0;
            let deadline = if checks_rate { idle_deadline.min(rate_deadline) } else { idle_deadline };
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(bytes))) => {
                    self.head.count(bytes.len()).map_err(limit)?;
                    self.window_bytes += bytes.len() as u64;
                    self.check_chunk_size(bytes.len()).map_err(limit)?;
                    self.check_rate().map_err(limit)?;
                    return Ok(Some(bytes));
                }
                Ok(Some(Err(err))) => return Err(io::Error::other(err)),
                Ok(None) => return Ok(None),
                Err(_) if Instant::now() >= idle_deadline => {
                    return Err(limit(BodyLimit::Idle(self.bounds.idle.as_secs())));
                }
                Err(_) => self.check_rate().map_err(limit)?,
            }
        }
    }

    /// Every [`CHUNK_WINDOW`] chunks, their average size must reach the floor.
    fn check_chunk_size(&mut self, len: usize) -> Result<(), BodyLimit> {
        let min_average = self.bounds.min_chunk_bytes;
        if min_average == 0 {
            return Ok(());
        }
        self.chunks += 1;
        self.chunk_bytes += len as u64;
        if self.chunks < CHUNK_WINDOW {
            return Ok(());
        }
        let (chunks, bytes) = (self.chunks, self.chunk_bytes);
        (self.chunks, self.chunk_bytes) = (0, 0);
        if bytes < chunks.saturating_mul(min_average) {
            return Err(BodyLimit::Fragmented { chunks, bytes, min_average });
        }
        Ok(())
    }

    /// At the end of each window, the bytes received in it must reach the floor.
    fn check_rate(&mut self) -> Result<(), BodyLimit> {
        let min = self.bounds.min_bytes_per_second;
        let window = self.bounds.rate_window;
        if min == 0 || self.window_started.elapsed() < window {
            return Ok(());
        }
        let needed = min.saturating_mul(window.as_secs().max(1));
        if self.window_bytes < needed {
            return Err(BodyLimit::TooSlow {
                received: self.window_bytes,
                window_seconds: window.as_secs(),
                min_per_second: min,
            });
        }
        self.window_started = Instant::now();
        self.window_bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(sizes: &[usize]) -> impl Stream<Item = Result<Bytes, axum::Error>> + Send + Unpin + 'static {
        let items: Vec<_> = sizes.iter().map(|&n| Ok(Bytes::from(vec![b'x'; n]))).collect();
        futures_util::stream::iter(items)
    }

    fn bounds() -> BodyBounds {
        BodyBounds {
            idle: Duration::from_secs(5),
            min_bytes_per_second: 0,
            rate_window: Duration::from_secs(5),
            min_chunk_bytes: 0,
        }
    }

    #[tokio::test]
    async fn the_form_head_budget_stops_the_parser_only_while_it_searches_for_a_part() {
        let head = FormHead::new(100);
        let mut body = Box::pin(guard(chunks(&[60, 30, 1000, 50, 60]), bounds(), head.clone()));
        assert_eq!(body.next().await.unwrap().unwrap().len(), 60);
        assert_eq!(body.next().await.unwrap().unwrap().len(), 30);
        head.close();
        assert_eq!(body.next().await.unwrap().unwrap().len(), 1000, "part data is not counted");
        head.open();
        assert_eq!(body.next().await.unwrap().unwrap().len(), 50);
        let err = body.next().await.unwrap().unwrap_err();
        assert_eq!(BodyLimit::find(&err), Some(&BodyLimit::FormHeadTooLarge(100)));
        assert!(body.next().await.is_none(), "the stream ends after its error");
    }

    #[tokio::test]
    async fn a_trickle_below_the_floor_is_cut_at_the_end_of_the_window() {
        let trickle = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Some((Ok(Bytes::from_static(b"x")), ()))
        });
        let bounds = BodyBounds {
            idle: Duration::from_secs(30),
            min_bytes_per_second: 100,
            rate_window: Duration::from_secs(1),
            min_chunk_bytes: 0,
        };
        let mut body = Box::pin(guard(Box::pin(trickle), bounds, FormHead::new(u64::MAX)));
        let started = Instant::now();
        let mut received = 0;
        let err = loop {
            match body.next().await.unwrap() {
                Ok(bytes) => received += bytes.len(),
                Err(err) => break err,
            }
        };
        assert!(received <= 6, "{received}");
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(3), "{elapsed:?}");
        assert!(matches!(BodyLimit::find(&err), Some(BodyLimit::TooSlow { .. })), "{err}");
    }

    #[tokio::test]
    async fn a_body_that_goes_silent_is_cut_after_the_idle_timeout() {
        let silent = futures_util::stream::pending::<Result<Bytes, axum::Error>>();
        let bounds = BodyBounds {
            idle: Duration::from_secs(1),
            min_bytes_per_second: 0,
            rate_window: Duration::from_secs(1),
            min_chunk_bytes: 0,
        };
        let mut body = Box::pin(guard(silent, bounds, FormHead::new(10)));
        let err = body.next().await.unwrap().unwrap_err();
        assert_eq!(BodyLimit::find(&err), Some(&BodyLimit::Idle(1)));
    }

    #[tokio::test]
    async fn a_body_of_tiny_chunks_is_cut_after_one_window_and_large_chunks_pass() {
        let bounds = BodyBounds { min_chunk_bytes: 256, ..bounds() };
        let tiny = futures_util::stream::iter((0..10 * CHUNK_WINDOW).map(|_| Ok(Bytes::from_static(b"x"))));
        let mut body = Box::pin(guard(Box::pin(tiny), bounds, FormHead::new(u64::MAX)));
        let mut passed = 0;
        let err = loop {
            match body.next().await {
                Some(Ok(_)) => passed += 1,
                Some(Err(err)) => break err,
                None => panic!("the tiny chunks were not cut"),
            }
        };
        assert_eq!(passed, CHUNK_WINDOW - 1, "cut at the end of the first window");
        assert!(matches!(BodyLimit::find(&err), Some(BodyLimit::Fragmented { chunks: CHUNK_WINDOW, .. })));
        let large =
            futures_util::stream::iter((0..3 * CHUNK_WINDOW).map(|_| Ok(Bytes::from(vec![0u8; 300]))));
        let body = guard(Box::pin(large), bounds, FormHead::new(u64::MAX));
        assert_eq!(
            body.filter(|chunk| std::future::ready(chunk.is_ok())).count().await as u64,
            3 * CHUNK_WINDOW
        );
    }
}
