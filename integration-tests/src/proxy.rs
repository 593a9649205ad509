//! A TCP proxy in front of the api that loses the answers to uploads: the request reaches the
//! api (which commits it), the answer never reaches the client, whose connection is closed.
//! This is the failure `Idempotency-Key` exists for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// The running proxy; it stops when dropped.
pub struct AnswerLosingProxy {
    /// `http://127.0.0.1:<port>`: point the client here.
    pub url: String,
    to_cut: Arc<AtomicUsize>,
    cut: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl AnswerLosingProxy {
    /// Forwards to `upstream`, cutting the connection instead of forwarding the answer of the
    /// next `answers` requests that start `POST /api/v1/hashes`.
    pub async fn start(upstream: SocketAddr, answers: usize) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (to_cut, cut) = (Arc::new(AtomicUsize::new(answers)), Arc::new(AtomicUsize::new(0)));
        let (task_to_cut, task_cut) = (to_cut.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (to_cut, cut) = (task_to_cut.clone(), task_cut.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, to_cut, cut).await;
                    }
                });
            }
        });
        Ok(AnswerLosingProxy { url, to_cut, cut, task })
    }

    /// How many answers it has lost so far.
    pub fn answers_lost(&self) -> usize {
        self.cut.load(Ordering::SeqCst)
    }

    /// How many it has still to lose.
    pub fn answers_to_lose(&self) -> usize {
        self.to_cut.load(Ordering::SeqCst)
    }
}

impl Drop for AnswerLosingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, to_cut: Arc<AtomicUsize>, cut: Arc<AtomicUsize>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Set when the latest request on this connection is an upload.
    let uploading = Arc::new(AtomicBool::new(false));
    let request_uploading = uploading.clone();
    let requests = async move {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(n @ 1..) = client_read.read(&mut buffer).await {
            if buffer[..n].starts_with(b"POST /api/v1/hashes") {
                request_uploading.store(true, Ordering::SeqCst);
            }
            if server_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
    };
    let answers = async move {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(n @ 1..) = server_read.read(&mut buffer).await {
            if uploading.swap(false, Ordering::SeqCst)
                && to_cut.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1)).is_ok()
            {
                cut.fetch_add(1, Ordering::SeqCst);
                return;
            }
            if client_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
    };
    // Whichever side ends first ends the connection: dropping both halves closes both sockets.
    tokio::select! {
        () = requests => {}
        () = answers => {}
    }
}

/// A TCP proxy in front of the api that counts the bytes clients send through it.
pub struct CountingProxy {
    /// `http://127.0.0.1:<port>`: point the client here.
    pub url: String,
    sent: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    /// Forwards to `upstream` (refusing clients, by closing, while it is down).
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = sent.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let requests = async move {
                        let mut buffer = vec![0; 64 * 1024];
                        while let Ok(n @ 1..) = client_read.read(&mut buffer).await {
                            if server_write.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                            counter.fetch_add(n as u64, Ordering::SeqCst);
                        }
                    };
                    let answers = async move {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                    };
                    tokio::select! {
                        () = requests => {}
                        () = answers => {}
                    }
                });
            }
        });
        Ok(CountingProxy { url, sent, task })
    }

    /// Bytes clients have sent through it so far (written to the api's socket).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
