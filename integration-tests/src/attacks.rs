//! What hostile and clumsy clients do, as raw HTTP/1.1 over TCP (curl and reqwest will not send
//! most of it): shared by the hostile-client tests and the benchmark's hostile scenario.

use std::net::IpAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

/// The HTTP/2 connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Opens a connection to `base_url` (`http://host:port`), from `local` when given.
pub async fn connect(base_url: &str, local: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let addr = base_url.trim_start_matches("http://").parse().map_err(std::io::Error::other)?;
    let socket = TcpSocket::new_v4()?;
    if let Some(local) = local {
        socket.bind((local, 0).into())?;
    }
    socket.connect(addr).await
}

/// Reads until the status line is in, the connection closes, or `timeout` passes; the status
/// code, or 0 if none came.
pub async fn read_status(stream: &mut (impl tokio::io::AsyncRead + Unpin), timeout: Duration) -> u16 {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let _ = tokio::time::timeout(timeout, async {
        while !answer.windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&answer).split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
}

/// A chunked `multipart/form-data` upload (boundary `B`) whose body is `prefix`, then
/// `filler_bytes` of `a` in 64 KiB chunks, then `suffix`. Returns the answer's status (0: none).
pub async fn chunked_upload(base_url: &str, prefix: &[u8], filler_bytes: usize, suffix: &[u8]) -> u16 {
    let Ok(stream) = connect(base_url, None).await else { return 0 };
    let (mut reader, mut writer) = stream.into_split();
    let (prefix, suffix) = (prefix.to_vec(), suffix.to_vec());
    let writing = tokio::spawn(async move {
        let head = "POST /api/v1/hashes HTTP/1.1\r\nHost: t\r\n\
                    Content-Type: multipart/form-data; boundary=B\r\nTransfer-Encoding: chunked\r\n\r\n";
        writer.write_all(head.as_bytes()).await?;
        let chunk = |data: &[u8]| {
            let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
            framed.extend_from_slice(data);
            framed.extend_from_slice(b"\r\n");
            framed
        };
        if !prefix.is_empty() {
            writer.write_all(&chunk(&prefix)).await?;
        }
        let filler = chunk(&vec![b'a'; 64 * 1024]);
        for _ in 0..filler_bytes / (64 * 1024) {
            writer.write_all(&filler).await?;
        }
        if !suffix.is_empty() {
            writer.write_all(&chunk(&suffix)).await?;
        }
        writer.write_all(b"0\r\n\r\n").await?;
        Ok::<_, std::io::Error>(writer)
    });
    let status = read_status(&mut reader, Duration::from_secs(60)).await;
    writing.abort();
    status
}

/// Attack 10: a valid upload form whose `payload_bytes`-byte file part goes in 1-byte HTTP/1.1
/// chunks (6 bytes on the wire each), from `local`; returns the answer's status (0: none).
pub async fn tiny_chunks_upload(base_url: &str, local: Option<IpAddr>, payload_bytes: usize) -> u16 {
    let Ok(stream) = connect(base_url, local).await else { return 0 };
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        let head = "POST /api/v1/hashes HTTP/1.1\r\nHost: t\r\n\
                    Content-Type: multipart/form-data; boundary=B\r\nTransfer-Encoding: chunked\r\n\r\n";
        writer.write_all(head.as_bytes()).await?;
        let form_head =
            b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"tiny.bin\"\r\n\r\n";
        writer.write_all(format!("{:x}\r\n", form_head.len()).as_bytes()).await?;
        writer.write_all(form_head).await?;
        writer.write_all(b"\r\n").await?;
        let chunks = b"1\r\na\r\n".repeat(64 * 1024);
        for _ in 0..payload_bytes.div_ceil(64 * 1024) {
            writer.write_all(&chunks).await?;
        }
        writer.write_all(b"8\r\n\r\n--B--\r\n\r\n0\r\n\r\n").await?;
        Ok::<_, std::io::Error>(writer)
    });
    let status = read_status(&mut reader, Duration::from_secs(60)).await;
    writing.abort();
    status
}

/// A valid last part, after an attack's filler: the body ends as a well-formed form would.
pub const VALID_LAST_PART: &[u8] =
    b"\r\n--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.bin\"\r\n\r\nhello\r\n--B--\r\n";

/// Attack 1: a preamble of `bytes` before the first boundary, then a valid part.
pub async fn long_preamble(base_url: &str, bytes: usize) -> u16 {
    chunked_upload(base_url, b"", bytes, VALID_LAST_PART).await
}

/// Attack 1: a part whose header never ends (`bytes` of one header value).
pub async fn endless_part_header(base_url: &str, bytes: usize) -> u16 {
    let head = b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.bin\"\r\nX-Filler: ";
    chunked_upload(base_url, head, bytes, b"\r\n\r\nhello\r\n--B--\r\n").await
}

/// Attack 3: one request with a made-up method; returns the status.
pub async fn made_up_method(base_url: &str, method: &str) -> u16 {
    let Ok(mut stream) = connect(base_url, None).await else { return 0 };
    let request = format!("{method} /api/v1/hashes HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return 0;
    }
    read_status(&mut stream, Duration::from_secs(20)).await
}

/// Attack 4: `count` connections that send nothing; every fourth sends the HTTP/2 preface first.
pub async fn silent_connections(base_url: &str, count: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(count);
    for i in 0..count {
        let Ok(mut stream) = connect(base_url, None).await else { continue };
        if i % 4 == 0 && stream.write_all(H2_PREFACE).await.is_err() {
            continue;
        }
        streams.push(stream);
    }
    streams
}

/// True when the server closes `stream` within `timeout` (whatever it sends before).
pub async fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    tokio::time::timeout(timeout, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

/// Attack 5: an upload that sends its head, then one byte every `every`, from `local`; returns
/// the status the api ends it with (0: none within 60 s).
pub async fn trickle_upload(base_url: &str, local: Option<IpAddr>, every: Duration) -> u16 {
    let Ok(mut stream) = connect(base_url, local).await else { return 0 };
    let head = "POST /api/v1/hashes HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=B\r\n\
                Content-Length: 1000000\r\n\r\n--B\r\nContent-Disposition: form-data; name=\"file\"; \
                filename=\"slow.bin\"\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return 0;
    }
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        while writer.write_all(b"x").await.is_ok() {
            tokio::time::sleep(every).await;
        }
    });
    let status = read_status(&mut reader, Duration::from_secs(60)).await;
    writing.abort();
    status
}
