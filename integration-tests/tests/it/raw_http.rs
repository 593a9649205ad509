//! A raw TCP HTTP/1.1 client for requests reqwest will not send: bodies that stop half way,
//! lying `Content-Length`s, chunked bodies without a length.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Sends `request` as is and returns the status code of the answer.
pub async fn send(base_url: &str, request: &[u8]) -> u16 {
    let mut stream = connect(base_url).await;
    stream.write_all(request).await.expect("write request");
    status_of(&mut stream).await
}

/// Opens a connection to the api.
pub async fn connect(base_url: &str) -> TcpStream {
    let addr = base_url.trim_start_matches("http://");
    TcpStream::connect(addr).await.expect("connect to the api")
}

/// Reads the answer's status line.
pub async fn status_of(stream: &mut TcpStream) -> u16 {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !buffer.windows(2).any(|w| w == b"\r\n") {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("an answer within 20 s")
            .expect("read the answer");
        assert!(read > 0, "connection closed without an answer");
        buffer.extend_from_slice(&chunk[..read]);
    }
    let line = String::from_utf8_lossy(&buffer);
    line.split_whitespace().nth(1).and_then(|code| code.parse().ok()).expect("a status line")
}

/// Start of a multipart body with one `file` part.
pub fn multipart_head(boundary: &str) -> String {
    format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
}
