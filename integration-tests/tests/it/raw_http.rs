//! A raw TCP HTTP/1.1 client for requests reqwest will not send: bodies that stop half way,
//! lying `Content-Length`s, chunked bodies without a length.

use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// Sends `request` as is and returns the status code of the answer.
pub async fn send(base_url: &str, request: &[u8]) -> u16 {
    let mut stream = connect(base_url).await;
    stream.write_all(request).await.expect("write request");
    status_of(&mut stream).await
}

/// Opens a connection to the api.
pub async fn connect(base_url: &str) -> TcpStream {
    integration_tests::attacks::connect(base_url, None).await.expect("connect to the api")
}

/// Reads the answer's status line (within 20 s).
pub async fn status_of(stream: &mut TcpStream) -> u16 {
    let status = integration_tests::attacks::read_status(stream, Duration::from_secs(20)).await;
    assert_ne!(status, 0, "an answer with a status line within 20 s");
    status
}

/// Start of a multipart body with one `file` part.
pub fn multipart_head(boundary: &str) -> String {
    format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
}
