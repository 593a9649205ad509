//! A TCP proxy in front of Postgres that, once armed, leaves the next `COMMIT` unanswered: it
//! either forwards the `COMMIT` (the transaction commits, its client never hears so) or holds it
//! back (the transaction stays open until its client gives the connection up, then rolls back).
//! Either way its connection hears nothing more. Every other message passes through.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Not armed.
const IDLE: u8 = 0;
/// The next `COMMIT` is forwarded and its answer held back.
const FORWARD: u8 = 1;
/// The next `COMMIT` is held back.
const HOLD: u8 = 2;

/// The running proxy; it stops when dropped.
pub struct CommitStallingProxy {
    /// Its `host:port`.
    pub addr: SocketAddr,
    armed: Arc<AtomicU8>,
    stalled: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CommitStallingProxy {
    /// Forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (armed, stalled) = (Arc::new(AtomicU8::new(IDLE)), Arc::new(AtomicUsize::new(0)));
        let task = tokio::spawn({
            let (armed, stalled) = (armed.clone(), stalled.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let (armed, stalled) = (armed.clone(), stalled.clone());
                    tokio::spawn(async move {
                        if let Ok(server) = TcpStream::connect(upstream).await {
                            relay(client, server, armed, stalled).await;
                        }
                    });
                }
            }
        });
        Ok(CommitStallingProxy { addr, armed, stalled, task })
    }

    /// The next `COMMIT` reaches Postgres (and commits); its answer never comes back.
    pub fn forward_next_commit_unanswered(&self) {
        self.armed.store(FORWARD, Ordering::SeqCst);
    }

    /// The next `COMMIT` never reaches Postgres; nor does anything come back.
    pub fn hold_next_commit(&self) {
        self.armed.store(HOLD, Ordering::SeqCst);
    }

    /// `COMMIT`s left unanswered so far.
    pub fn stalled(&self) -> usize {
        self.stalled.load(Ordering::SeqCst)
    }
}

impl Drop for CommitStallingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays one connection until either side closes, watching the client's messages.
async fn relay(mut client: TcpStream, server: TcpStream, armed: Arc<AtomicU8>, stalled: Arc<AtomicUsize>) {
    let (mut from_client, mut to_client) = client.split();
    let (mut from_server, mut to_server) = server.into_split();
    let quiet = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answers = {
        let quiet = quiet.clone();
        async move {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let n = match from_server.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if quiet.load(Ordering::SeqCst) {
                    continue;
                }
                if to_client.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
        }
    };
    let requests = async {
        let mut pending: Vec<u8> = Vec::new();
        let mut buffer = vec![0u8; 64 * 1024];
        // The startup message (and an SSL or GSS request before it) carries no type byte.
        let mut untyped = true;
        loop {
            let n = match from_client.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buffer[..n]);
            loop {
                let header = if untyped { 4 } else { 5 };
                if pending.len() < header {
                    break;
                }
                let at = header - 4;
                let length = u32::from_be_bytes(pending[at..at + 4].try_into().expect("4 bytes")) as usize;
                let total = at + length;
                if pending.len() < total {
                    break;
                }
                let message: Vec<u8> = pending.drain(..total).collect();
                if untyped {
                    // 80877103: SSLRequest; 80877104: GSSENCRequest. Another untyped one follows.
                    let code = message.get(4..8).map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")));
                    untyped = matches!(code, Some(80_877_103 | 80_877_104));
                } else if message[0] == b'Q' && message[5..].starts_with(b"COMMIT") {
                    let mode = armed.swap(IDLE, Ordering::SeqCst);
                    if mode != IDLE {
                        stalled.fetch_add(1, Ordering::SeqCst);
                        quiet.store(true, Ordering::SeqCst);
                        if mode == FORWARD && to_server.write_all(&message).await.is_err() {
                            return;
                        }
                        continue;
                    }
                }
                // Nothing else goes through once the connection is stalled.
                if quiet.load(Ordering::SeqCst) {
                    continue;
                }
                if to_server.write_all(&message).await.is_err() {
                    return;
                }
            }
        }
    };
    // The client giving up ends both directions: the server sees its connection close.
    tokio::select! {
        () = requests => {}
        () = answers => {}
    }
}
