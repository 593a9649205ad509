//! HTTP/2 clients that hold a connection without using it: one that sent a request and now only
//! answers pings (as h2 client libraries do by themselves), and one that announces a zero
//! flow-control window and opens streams whose answers can never be sent. Shared by the
//! hostile-client tests and the benchmark's hostile scenario.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;

use crate::attacks::connect;

/// An HTTP/2 connection held open by its client; the driver task answers the server's pings.
pub struct HeldConnection {
    _requests: h2::client::SendRequest<Bytes>,
    _streams: Vec<h2::client::ResponseFuture>,
    driver: JoinHandle<()>,
}

impl HeldConnection {
    /// True when the server has closed the connection (or does within `timeout`).
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, &mut self.driver).await.is_ok()
    }

    /// Streams it holds open.
    pub fn streams(&self) -> usize {
        self._streams.len()
    }

    /// True when the server has closed the connection already.
    pub fn is_closed(&self) -> bool {
        self.driver.is_finished()
    }
}

async fn handshake(
    base_url: &str,
    local: Option<IpAddr>,
    builder: &h2::client::Builder,
) -> anyhow::Result<(h2::client::SendRequest<Bytes>, JoinHandle<()>)> {
    let tcp = connect(base_url, local).await?;
    let (requests, connection) = builder.handshake::<_, Bytes>(tcp).await?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((requests, driver))
}

fn get(base_url: &str, path: &str) -> anyhow::Result<http::Request<()>> {
    Ok(http::Request::get(format!("{base_url}{path}")).body(())?)
}

/// Attack 8: an h2c connection (prior knowledge) that sends one `GET /healthz`, reads its
/// answer, then sits idle answering pings.
pub async fn idle_connection(base_url: &str, local: Option<IpAddr>) -> anyhow::Result<HeldConnection> {
    let (requests, driver) = handshake(base_url, local, &h2::client::Builder::new()).await?;
    let mut requests = requests.ready().await?;
    let (response, _) = requests.send_request(get(base_url, "/healthz")?, true)?;
    let mut body = response.await?.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Ok(HeldConnection { _requests: requests, _streams: Vec::new(), driver })
}

/// Attack 9: an h2c connection whose `SETTINGS_INITIAL_WINDOW_SIZE` is 0, with up to `streams`
/// concurrent `GET path` whose responses the server can start but never send (as many as the
/// server's `SETTINGS_MAX_CONCURRENT_STREAMS` lets it open).
pub async fn zero_window_connection(
    base_url: &str,
    local: Option<IpAddr>,
    path: &str,
    streams: usize,
) -> anyhow::Result<HeldConnection> {
    let mut builder = h2::client::Builder::new();
    builder.initial_window_size(0);
    let tcp = connect(base_url, local).await?;
    let (requests, mut connection) = builder.handshake::<_, Bytes>(tcp).await?;
    // Drive the connection until the server's SETTINGS are in, to learn its stream limit.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while connection.max_concurrent_send_streams() == usize::MAX && tokio::time::Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(5), &mut connection).await;
    }
    let streams = streams.min(connection.max_concurrent_send_streams());
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut requests = requests.ready().await?;
    let mut pending = Vec::with_capacity(streams);
    for _ in 0..streams {
        requests = requests.ready().await?;
        let (response, _) = requests.send_request(get(base_url, path)?, true)?;
        pending.push(response);
    }
    Ok(HeldConnection { _requests: requests, _streams: pending, driver })
}
