//! Resumable uploads (`/api/v1/uploads`, tus 1.0.0 and the IETF draft -05) against the real api,
//! Postgres, Redis and workers: chunks, checksums, offsets, expiry, termination, interrupted
//! appends, and two api processes appending to one upload at once.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use integration_tests::launcher::{Launch, free_port};
use integration_tests::{TestApp, TestOptions, eventually, md5_hex, random_bytes};
use reqwest::{Client, Response};
use serde_json::Value;
use sha1::Digest as _;

pub(crate) const TUS: (&str, &str) = ("Tus-Resumable", "1.0.0");
const IETF: (&str, &str) = ("Upload-Draft-Interop-Version", "6");

/// The task as the compatibility route shows it.
async fn compat_task(app: &TestApp, id: &str) -> Value {
    app.client.get(format!("{}/hashes/{id}", app.base_url)).send().await.unwrap().json().await.unwrap()
}

/// Creates a tus upload of `length` bytes named `name`; its absolute URL.
pub(crate) async fn create(client: &Client, base: &str, length: u64, name: &str) -> String {
    let metadata = format!("filename {}", base64::engine::general_purpose::STANDARD.encode(name));
    let response = client
        .post(format!("{base}/api/v1/uploads"))
        .header(TUS.0, TUS.1)
        .header("Upload-Length", length)
        .header("Upload-Metadata", metadata)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    assert_eq!(response.headers()["tus-resumable"], "1.0.0");
    assert!(response.headers().contains_key("upload-expires"));
    let location = response.headers()["location"].to_str().unwrap();
    assert!(location.starts_with("/api/v1/uploads/"), "{location}");
    format!("{base}{location}")
}

/// A tus `PATCH` of `bytes` at `offset`, with an `Upload-Checksum` when given.
pub(crate) async fn patch(
    client: &Client,
    url: &str,
    offset: u64,
    bytes: &[u8],
    checksum: Option<String>,
) -> Response {
    let mut request = client
        .patch(url)
        .header(TUS.0, TUS.1)
        .header("Upload-Offset", offset)
        .header("Content-Type", "application/offset+octet-stream")
        .body(bytes.to_vec());
    if let Some(checksum) = checksum {
        request = request.header("Upload-Checksum", checksum);
    }
    request.send().await.unwrap()
}

/// The tus `HEAD` of an upload.
async fn head(client: &Client, url: &str) -> Response {
    client.head(url).header(TUS.0, TUS.1).send().await.unwrap()
}

fn offset(response: &Response) -> u64 {
    response.headers()["upload-offset"].to_str().unwrap().parse().unwrap()
}

fn sha1_header(bytes: &[u8]) -> String {
    format!("sha1 {}", base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(bytes)))
}

pub(crate) fn task_id(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tus_upload_in_checksummed_chunks_becomes_one_task_with_the_right_md5() {
    let app = TestApp::spawn(TestOptions::default()).await.unwrap();
    let bytes = random_bytes(3 * 1024 * 1024 + 17, 1);
    let url = create(&app.client, &app.base_url, bytes.len() as u64, "chunks.bin").await;

    // The task exists from creation on, uploading.
    let task = app.task(task_id(&url), 0).await;
    assert_eq!(task["status"], "uploading");
    assert_eq!(task["bytes_received"], 0);
    assert_eq!(task["file_name"], "chunks.bin");
    let compat = compat_task(&app, task_id(&url)).await;
    assert_eq!(compat["status"], "PENDING");

    let chunk = 1024 * 1024;
    let first = &bytes[..chunk];
    let answer = patch(&app.client, &url, 0, first, Some(sha1_header(first))).await;
    assert_eq!(answer.status(), 204);
    assert_eq!(offset(&answer), chunk as u64);

    // A chunk whose checksum does not match is 460 and the offset does not move.
    let second = &bytes[chunk..2 * chunk];
    let mut corrupted = second.to_vec();
    corrupted[100] ^= 1;
    let refused = patch(&app.client, &url, chunk as u64, &corrupted, Some(sha1_header(second))).await;
    assert_eq!(refused.status().as_u16(), 460);
    assert_eq!(refused.headers()["content-type"], "application/problem+json");
    let now = head(&app.client, &url).await;
    assert_eq!(now.status(), 200);
    assert_eq!(offset(&now), chunk as u64, "a mismatching chunk is not appended");
    assert_eq!(now.headers()["upload-length"], bytes.len().to_string().as_str());
    assert_eq!(now.headers()["cache-control"], "no-store");
    assert_eq!(app.task(task_id(&url), 0).await["bytes_received"], chunk);

    // The next right chunk appends; md5 and sha256 checksums work too.
    let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(second));
    let answer = patch(&app.client, &url, chunk as u64, second, Some(format!("md5 {md5}"))).await;
    assert_eq!(answer.status(), 204);
    // A stale offset is 409 and says where the upload is.
    let stale = patch(&app.client, &url, chunk as u64, second, None).await;
    assert_eq!(stale.status(), 409);
    assert_eq!(offset(&stale), 2 * chunk as u64);
    // A client that waits for `100 Continue` is refused before it is told to send: the 409 is
    // its first answer.
    let path = url.strip_prefix(&app.base_url).expect("the upload's URL is on the api");
    let waiting = format!(
        "PATCH {path} HTTP/1.1\r\nHost: t\r\nTus-Resumable: 1.0.0\r\n\
         Content-Type: application/offset+octet-stream\r\nUpload-Offset: {chunk}\r\n\
         Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        second.len()
    );
    assert_eq!(crate::raw_http::send(&app.base_url, waiting.as_bytes()).await, 409);
    let rest = &bytes[2 * chunk..];
    let answer = patch(&app.client, &url, 2 * chunk as u64, rest, None).await;
    assert_eq!(answer.status(), 204);
    assert_eq!(offset(&answer), bytes.len() as u64);

    let done = app.wait_finished(task_id(&url), Duration::from_secs(30)).await;
    assert_eq!(done["status"], "done");
    assert_eq!(done["md5"], md5_hex(&bytes));
    assert_eq!(done["size_bytes"], bytes.len());
    let lines = app.log_lines();
    assert_eq!(lines.len(), 1, "one log line");
    assert_eq!(lines[0].task_id.to_string(), task_id(&url));
    // A complete upload answers HEAD with its full length; a further PATCH changes nothing.
    let complete = head(&app.client, &url).await;
    assert_eq!((offset(&complete), complete.status().as_u16()), (bytes.len() as u64, 200));
    assert_eq!(patch(&app.client, &url, 0, b"more", None).await.status(), 409);
    assert_eq!(app.log_lines().len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ietf_draft_upload_resumes_at_the_servers_offset_and_completes_with_upload_complete() {
    let app = TestApp::spawn(TestOptions::default()).await.unwrap();
    let bytes = random_bytes(2 * 1024 * 1024 + 5, 2);
    let half = bytes.len() / 2;
    let created = app
        .client
        .post(format!("{}/api/v1/uploads", app.base_url))
        .header(IETF.0, IETF.1)
        .header("Upload-Complete", "?0")
        .header("Upload-Length", bytes.len())
        .header("Content-Disposition", "attachment; filename=\"draft.bin\"")
        .body(bytes[..half].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(created.headers()["upload-complete"], "?0");
    assert_eq!(offset(&created), half as u64);
    let limit = created.headers()["upload-limit"].to_str().unwrap();
    assert!(limit.contains("max-size=") && limit.contains("max-age="), "{limit}");
    let url = format!("{}{}", app.base_url, created.headers()["location"].to_str().unwrap());

    let head = app.client.head(&url).header(IETF.0, IETF.1).send().await.unwrap();
    assert_eq!(head.status(), 204);
    assert_eq!(offset(&head), half as u64);
    assert_eq!(head.headers()["upload-complete"], "?0");

    let append = |offset: usize, body: &[u8], complete: &'static str| {
        app.client
            .patch(&url)
            .header(IETF.0, IETF.1)
            .header("Upload-Offset", offset)
            .header("Upload-Complete", complete)
            .header("Content-Type", "application/partial-upload")
            .body(body.to_vec())
            .send()
    };
    // A wrong offset: the draft's problem type, with both offsets.
    let conflict = append(half - 10, &bytes[half - 10..], "?1").await.unwrap();
    assert_eq!(conflict.status(), 409);
    assert_eq!(conflict.headers()["connection"], "close", "its unread body ends the connection");
    let problem: Value = conflict.json().await.unwrap();
    assert_eq!(problem["type"], "https://iana.org/assignments/http-problem-types#mismatching-upload-offset");
    assert_eq!(
        (problem["expected-offset"].as_u64(), problem["provided-offset"].as_u64()),
        (Some(half as u64), Some(half as u64 - 10))
    );
    // The wrong media type is 415 and stores nothing.
    let wrong_type = app
        .client
        .patch(&url)
        .header(IETF.0, IETF.1)
        .header("Upload-Offset", half)
        .header("Upload-Complete", "?1")
        .header("Content-Type", "application/octet-stream")
        .body(bytes[half..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), 415);
    assert_eq!(wrong_type.headers()["connection"], "close", "its unread body ends the connection");

    let finished = append(half, &bytes[half..], "?1").await.unwrap();
    assert_eq!(finished.status(), 200);
    assert_eq!(finished.headers()["upload-complete"], "?1");
    let task: Value = finished.json().await.unwrap();
    assert_eq!(task["status"], "queued");
    let done = app.wait_finished(task["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(done["md5"], md5_hex(&bytes));
    assert_eq!(done["file_name"], "draft.bin");
    // Appending to a completed upload: the draft's completed-upload problem.
    let again = append(bytes.len(), b"x", "?1").await.unwrap();
    assert_eq!(again.status(), 400);
    let problem: Value = again.json().await.unwrap();
    assert_eq!(problem["type"], "https://iana.org/assignments/http-problem-types#completed-upload");
    app.stop().await;
}

/// An append refused before its body is read ends its HTTP/1 connection, and the answer says so
/// with `Connection: close`. Without it (hyper closes such a connection, but says so only when it
/// noticed the unread body before writing the answer: a refusal made without waiting on anything,
/// like the 415, is written first) a client puts the connection back in its pool and its next
/// request can meet the closing socket: an "incomplete message" error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_append_says_its_connection_closes_and_the_same_client_goes_on_at_once() {
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let url = create(&app.client, &app.base_url, 4 * 1024 * 1024, "refused.bin").await;
    // A small refused body is read before the answer: its connection is kept.
    let small = patch(&app.client, &url, 5, b"tiny", None).await;
    assert_eq!(small.status(), 409);
    assert_eq!(small.headers().get("connection"), None, "a drained body keeps its connection");
    // A normal upload's answer keeps its connection too (its body was read to the end).
    let uploaded = app.upload("kept.bin", vec![1; 100_000]).await;
    assert_eq!(uploaded.status(), 202);
    assert_eq!(uploaded.headers().get("connection"), None, "an accepted upload keeps its connection");

    let large = vec![7u8; 1024 * 1024];
    for round in 0..20 {
        // A wrong offset (found after taking the upload's lock) and a wrong media type (found
        // from the headers alone), each with a body far larger than the api drains.
        let refused = if round % 2 == 0 {
            patch(&app.client, &url, 5, &large, None).await
        } else {
            app.client
                .patch(&url)
                .header(TUS.0, TUS.1)
                .header("Upload-Offset", 0)
                .header("Content-Type", "application/octet-stream")
                .body(large.clone())
                .send()
                .await
                .unwrap()
        };
        assert_eq!(refused.status(), if round % 2 == 0 { 409 } else { 415 }, "round {round}");
        assert_eq!(
            refused.headers().get("connection").map(|v| v.to_str().unwrap()),
            Some("close"),
            "round {round}"
        );
        // The same client's next request goes out at once, on a fresh connection, and is answered.
        let next = app
            .client
            .head(&url)
            .header(TUS.0, TUS.1)
            .send()
            .await
            .unwrap_or_else(|err| panic!("round {round}: the request after a refusal failed: {err:?}"));
        assert_eq!(offset(&next), 0, "round {round}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_protocol_requests_get_clear_errors_and_change_nothing() {
    let app = TestApp::spawn(TestOptions::default().no_workers().api(|c| c.max_upload_bytes = 1024 * 1024))
        .await
        .unwrap();
    let base = &app.base_url;
    let post = || app.client.post(format!("{base}/api/v1/uploads"));
    // No protocol: 400 naming both; another tus version: 412 with Tus-Version (as tus requires).
    let none = post().header("Upload-Length", 10).send().await.unwrap();
    assert_eq!(none.status(), 400);
    assert_eq!(none.headers()["tus-version"], "1.0.0");
    assert!(none.text().await.unwrap().contains("Upload-Draft-Interop-Version: 6"));
    let future = post().header("Tus-Resumable", "2.0.0").header("Upload-Length", 10).send().await.unwrap();
    assert_eq!(future.status(), 412);
    assert_eq!(future.headers()["tus-version"], "1.0.0");
    // Another interop version: 400.
    let old = post()
        .header("Upload-Draft-Interop-Version", "3")
        .header("Upload-Complete", "?0")
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 400);
    // tus: a length and a deferred length at once, or neither: 400; over the limit: 413.
    let both = post()
        .header(TUS.0, TUS.1)
        .header("Upload-Length", 10)
        .header("Upload-Defer-Length", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(both.status(), 400);
    assert_eq!(both.headers()["tus-resumable"], "1.0.0");
    assert_eq!(post().header(TUS.0, TUS.1).send().await.unwrap().status(), 400);
    let large = post().header(TUS.0, TUS.1).header("Upload-Length", 2 * 1024 * 1024).send().await.unwrap();
    assert_eq!(large.status(), 413);
    // IETF: no Upload-Complete is 400.
    assert_eq!(post().header(IETF.0, IETF.1).send().await.unwrap().status(), 400);
    let bad_metadata = post()
        .header(TUS.0, TUS.1)
        .header("Upload-Length", 1)
        .header("Upload-Metadata", "filename ***")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_metadata.status(), 400);
    assert_eq!(app.row_count().await, 0, "no refused creation left a task");
    assert!(app.upload_files().is_empty(), "no refused creation left a file");

    let url = create(&app.client, base, 100, "x").await;
    let cases: Vec<(reqwest::RequestBuilder, u16)> = vec![
        // Wrong content type.
        (
            app.client
                .patch(&url)
                .header(TUS.0, TUS.1)
                .header("Upload-Offset", 0)
                .header("Content-Type", "text/plain")
                .body("abc"),
            415,
        ),
        // No offset.
        (
            app.client
                .patch(&url)
                .header(TUS.0, TUS.1)
                .header("Content-Type", "application/offset+octet-stream")
                .body("abc"),
            400,
        ),
        // A negative or garbled offset.
        (
            app.client
                .patch(&url)
                .header(TUS.0, TUS.1)
                .header("Upload-Offset", "-1")
                .header("Content-Type", "application/offset+octet-stream")
                .body("abc"),
            400,
        ),
        // An offset ahead of the upload's.
        (
            app.client
                .patch(&url)
                .header(TUS.0, TUS.1)
                .header("Upload-Offset", 5)
                .header("Content-Type", "application/offset+octet-stream")
                .body("abc"),
            409,
        ),
        // A body past the declared length.
        (
            app.client
                .patch(&url)
                .header(TUS.0, TUS.1)
                .header("Upload-Offset", 0)
                .header("Content-Type", "application/offset+octet-stream")
                .body(vec![0u8; 101]),
            400,
        ),
        // An unknown checksum algorithm.
        (
            app.client
                .patch(&url)
                .header(TUS.0, TUS.1)
                .header("Upload-Offset", 0)
                .header("Upload-Checksum", "crc32 AAAAAA==")
                .header("Content-Type", "application/offset+octet-stream")
                .body("abc"),
            400,
        ),
        // A different length than declared.
        (
            app.client
                .patch(&url)
                .header(TUS.0, TUS.1)
                .header("Upload-Offset", 0)
                .header("Upload-Length", 99)
                .header("Content-Type", "application/offset+octet-stream")
                .body("abc"),
            400,
        ),
        // No Tus-Resumable.
        (
            app.client
                .patch(&url)
                .header("Upload-Offset", 0)
                .header("Content-Type", "application/offset+octet-stream")
                .body("abc"),
            400,
        ),
    ];
    for (request, status) in cases {
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status().as_u16(), status, "{:?}", answer.text().await);
        let now = head(&app.client, &url).await;
        assert_eq!(offset(&now), 0, "a refused append stores nothing");
    }
    let unknown = format!("{base}/api/v1/uploads/{}", uuid::Uuid::now_v7());
    assert_eq!(head(&app.client, &unknown).await.status(), 404);
    assert_eq!(head(&app.client, &format!("{base}/api/v1/uploads/not-a-uuid")).await.status(), 404);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_length_is_given_with_the_last_append_and_a_terminated_upload_is_gone() {
    let app = TestApp::spawn(TestOptions::default()).await.unwrap();
    let bytes = random_bytes(300_000, 3);
    let created = app
        .client
        .post(format!("{}/api/v1/uploads", app.base_url))
        .header(TUS.0, TUS.1)
        .header("Upload-Defer-Length", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let url = format!("{}{}", app.base_url, created.headers()["location"].to_str().unwrap());
    assert_eq!(head(&app.client, &url).await.headers()["upload-defer-length"], "1");
    assert_eq!(patch(&app.client, &url, 0, &bytes[..100_000], None).await.status(), 204);
    let last = app
        .client
        .patch(&url)
        .header(TUS.0, TUS.1)
        .header("Upload-Offset", 100_000)
        .header("Upload-Length", bytes.len())
        .header("Content-Type", "application/offset+octet-stream")
        .body(bytes[100_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(last.status(), 204);
    let done = app.wait_finished(task_id(&url), Duration::from_secs(30)).await;
    assert_eq!(done["md5"], md5_hex(&bytes));

    // Termination: 204, the task cancelled, the file gone, the upload gone (410), no log line.
    let doomed = create(&app.client, &app.base_url, 1000, "doomed").await;
    assert_eq!(patch(&app.client, &doomed, 0, &bytes[..500], None).await.status(), 204);
    let deleted = app.client.delete(&doomed).header(TUS.0, TUS.1).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(head(&app.client, &doomed).await.status(), 410);
    assert_eq!(patch(&app.client, &doomed, 500, &bytes[..500], None).await.status(), 410);
    let task = app.task(task_id(&doomed), 0).await;
    assert_eq!(task["status"], "cancelled");
    assert!(!app.upload_dir.join(task_id(&doomed)).exists());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.log_lines().len(), 1, "only the completed upload has a line");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_upload_expires_and_a_completed_one_is_never_touched() {
    let app = TestApp::spawn(TestOptions::default().no_workers().api(|c| c.upload_expiry_seconds = 3))
        .await
        .unwrap();
    let bytes = random_bytes(200_000, 4);
    let abandoned = create(&app.client, &app.base_url, bytes.len() as u64, "abandoned").await;
    assert_eq!(patch(&app.client, &abandoned, 0, &bytes[..100_000], None).await.status(), 204);
    let ietf = app
        .client
        .post(format!("{}/api/v1/uploads", app.base_url))
        .header(IETF.0, IETF.1)
        .header("Upload-Complete", "?0")
        .body(bytes[..1000].to_vec())
        .send()
        .await
        .unwrap();
    let ietf_url = format!("{}{}", app.base_url, ietf.headers()["location"].to_str().unwrap());
    let completed = create(&app.client, &app.base_url, bytes.len() as u64, "completed").await;
    assert_eq!(patch(&app.client, &completed, 0, &bytes, None).await.status(), 204);
    assert!(app.upload_dir.join(task_id(&abandoned)).exists());

    // Expired within the expiry plus the janitor's period (1 s here), with slack for a slow host.
    let expired = eventually(Duration::from_secs(20), "the abandoned upload to expire", || async {
        let task = app.task(task_id(&abandoned), 0).await;
        (task["status"] == "expired").then_some(task)
    })
    .await
    .unwrap();
    assert!(expired["error"].as_str().unwrap().contains("expired"));
    eventually(Duration::from_secs(10), "its file to go", || async {
        (!app.upload_dir.join(task_id(&abandoned)).exists()).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(head(&app.client, &abandoned).await.status(), 410);
    assert_eq!(patch(&app.client, &abandoned, 100_000, &bytes[100_000..], None).await.status(), 410);
    eventually(Duration::from_secs(10), "the draft upload to expire", || async {
        (app.client.head(&ietf_url).header(IETF.0, IETF.1).send().await.ok()?.status() == 404).then_some(())
    })
    .await
    .unwrap();
    let compat = compat_task(&app, task_id(&abandoned)).await;
    assert_eq!(compat["status"], "ERROR");

    // The completed upload (no workers run) keeps its file and stays queued.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(app.task(task_id(&completed), 0).await["status"], "queued");
    assert_eq!(std::fs::read(app.upload_dir.join(task_id(&completed))).unwrap(), bytes);
    assert!(app.log_lines().is_empty(), "an expired upload gets no log line");
    app.stop().await;
}

/// A body that sends `first`, then waits for `release` before sending `rest` (or fails the
/// request when `release` is dropped).
fn held_body(first: Bytes, rest: Bytes) -> (reqwest::Body, tokio::sync::oneshot::Sender<bool>) {
    let (release, released) = tokio::sync::oneshot::channel::<bool>();
    let stream =
        futures_util::stream::unfold((Some(first), Some((released, rest))), |(first, later)| async move {
            if let Some(first) = first {
                return Some((Ok::<Bytes, std::io::Error>(first), (None, later)));
            }
            let (released, rest) = later?;
            match released.await {
                Ok(true) => Some((Ok(rest), (None, None))),
                _ => Some((Err(std::io::Error::other("the client broke off")), (None, None))),
            }
        });
    (reqwest::Body::wrap_stream(stream), release)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_cut_off_mid_body_keeps_every_byte_that_arrived() {
    let app = TestApp::spawn(TestOptions::default()).await.unwrap();
    let bytes = random_bytes(1024 * 1024, 5);
    let url = create(&app.client, &app.base_url, bytes.len() as u64, "cut.bin").await;
    let cut = 400_000;
    let (body, release) = held_body(Bytes::copy_from_slice(&bytes[..cut]), Bytes::new());
    let request = app
        .client
        .patch(&url)
        .header(TUS.0, TUS.1)
        .header("Upload-Offset", 0)
        .header("Content-Type", "application/offset+octet-stream")
        .body(body)
        .send();
    let sending = tokio::spawn(request);
    // Once the server has the bytes (its task shows none until the append ends), the client dies.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(release);
    let _ = sending.await;
    let kept = eventually(Duration::from_secs(10), "the cut append to be recorded", || async {
        let now = offset(&head(&app.client, &url).await);
        (now > 0).then_some(now)
    })
    .await
    .unwrap();
    assert_eq!(kept, cut as u64, "every byte that arrived is kept");
    let answer = patch(&app.client, &url, kept, &bytes[cut..], None).await;
    assert_eq!(answer.status(), 204);
    let done = app.wait_finished(task_id(&url), Duration::from_secs(30)).await;
    assert_eq!(done["md5"], md5_hex(&bytes));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_processes_appending_to_one_upload_at_once_never_interleave() {
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    // A second api process on the same database, stream and volume.
    let mut config = app.api_config(&TestOptions::default());
    config.bind_addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let second_url = format!("http://{}", config.bind_addr);
    let mut second = Launch::api(&config).spawn().unwrap();
    eventually(Duration::from_secs(30), "the second api", || async {
        app.client.get(format!("{second_url}/healthz")).send().await.ok()?.status().is_success().then_some(())
    })
    .await
    .unwrap();

    let bytes = random_bytes(2 * 1024 * 1024, 6);
    let url = create(&app.client, &app.base_url, bytes.len() as u64, "shared.bin").await;
    let path = url.trim_start_matches(&app.base_url).to_owned();
    // Through the first api: half the file, then the body stalls (held open).
    let half = bytes.len() / 2;
    let (body, release) =
        held_body(Bytes::copy_from_slice(&bytes[..half]), Bytes::copy_from_slice(&bytes[half..]));
    let first = tokio::spawn(
        app.client
            .patch(&url)
            .header(TUS.0, TUS.1)
            .header("Upload-Offset", 0)
            .header("Content-Type", "application/offset+octet-stream")
            .body(body)
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Through the second api, at the same offset, with other bytes: refused, nothing written.
    // (Bodies under 64 KiB: a refused append's body is read that far, so the answer arrives
    // rather than a connection reset.)
    let rival = patch(&app.client, &format!("{second_url}{path}"), 0, &random_bytes(60_000, 7), None).await;
    assert_eq!(rival.status(), 423, "{:?}", rival.text().await);
    let rival_ietf = app
        .client
        .patch(format!("{second_url}{path}"))
        .header(IETF.0, IETF.1)
        .header("Upload-Offset", 0)
        .header("Upload-Complete", "?0")
        .header("Content-Type", "application/partial-upload")
        .body(vec![1u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(rival_ietf.status(), 409);
    // A termination through the second api while the first appends is refused as well.
    assert_eq!(
        app.client.delete(format!("{second_url}{path}")).header(TUS.0, TUS.1).send().await.unwrap().status(),
        423
    );
    release.send(true).unwrap();
    let won = first.await.unwrap().unwrap();
    assert_eq!(won.status(), 204);
    assert_eq!(offset(&won), bytes.len() as u64);
    let stored = std::fs::read(app.upload_dir.join(task_id(&url))).unwrap();
    assert!(stored == bytes, "the stored file is byte-identical to the source");
    assert_eq!(app.task(task_id(&url), 0).await["status"], "queued");
    integration_tests::stop_process(&mut second);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_creating_uploads_without_end_is_stopped_at_its_share_while_others_are_served() {
    let app = TestApp::spawn(TestOptions::default().api(|c| {
        c.max_open_uploads = 8;
        c.max_open_uploads_per_client = Some(5);
    }))
    .await
    .unwrap();
    let creation = |client: &Client| {
        client
            .post(format!("{}/api/v1/uploads", app.base_url))
            .header(TUS.0, TUS.1)
            .header("Upload-Length", 1000)
            .send()
    };
    // The hoarder (127.0.0.1) gets its share of five, then 429.
    let mut open = Vec::new();
    for n in 0..5 {
        open.push(create(&app.client, &app.base_url, 1000, &format!("hoard-{n}")).await);
    }
    let refused = creation(&app.client).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["tus-resumable"], "1.0.0");
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(problem["quota"], "open-uploads", "{problem}");
    // Another client (127.0.0.2) still creates uploads, up to the total of eight.
    let other = Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, 2])).build().unwrap();
    for _ in 0..3 {
        assert_eq!(creation(&other).await.unwrap().status(), 201);
    }
    let full = creation(&other).await.unwrap();
    assert_eq!(full.status(), 503);
    assert!(full.text().await.unwrap().contains("too many unfinished resumable uploads"));
    assert_eq!(app.upload_files().len(), 8, "no refused creation left a file");
    // A one-shot upload is still served, and a terminated upload frees its place.
    let bytes = random_bytes(10_000, 8);
    let answer = app.upload("normal.bin", bytes.clone()).await;
    assert_eq!(answer.status(), 202);
    let task: Value = answer.json().await.unwrap();
    assert_eq!(
        app.wait_finished(task["id"].as_str().unwrap(), Duration::from_secs(30)).await["md5"],
        md5_hex(&bytes)
    );
    assert_eq!(app.client.delete(&open[0]).header(TUS.0, TUS.1).send().await.unwrap().status(), 204);
    create(&app.client, &app.base_url, 1000, "after").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resumable_request_needs_the_api_key_when_one_is_set() {
    let app = TestApp::spawn(TestOptions::default().no_workers().api(|c| c.api_key = Some("s3cret".into())))
        .await
        .unwrap();
    let base = &app.base_url;
    let anonymous = app
        .client
        .post(format!("{base}/api/v1/uploads"))
        .header(TUS.0, TUS.1)
        .header("Upload-Length", 10)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let created = app
        .client
        .post(format!("{base}/api/v1/uploads"))
        .bearer_auth("s3cret")
        .header(TUS.0, TUS.1)
        .header("Upload-Length", 10)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let url = format!("{base}{}", created.headers()["location"].to_str().unwrap());
    let requests = [
        app.client.head(&url).header(TUS.0, TUS.1),
        app.client
            .patch(&url)
            .header(TUS.0, TUS.1)
            .header("Upload-Offset", 0)
            .header("Content-Type", "application/offset+octet-stream")
            .body("0123456789"),
        app.client.delete(&url).header(TUS.0, TUS.1),
    ];
    for request in requests {
        assert_eq!(request.send().await.unwrap().status(), 401);
    }
    let head = app.client.head(&url).bearer_auth("s3cret").header(TUS.0, TUS.1).send().await.unwrap();
    assert_eq!(offset(&head), 0, "nothing was appended without the key");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_left_half_ended_by_a_dead_api_does_not_stop_others_from_expiring() {
    use diesel_async::RunQueryDsl as _;
    let app = TestApp::spawn(TestOptions::default().no_workers().api(|c| c.upload_expiry_seconds = 3))
        .await
        .unwrap();
    // What an api killed between removing an expired upload's file and its row leaves behind.
    let orphan = create(&app.client, &app.base_url, 1000, "orphan").await;
    let id: uuid::Uuid = task_id(&orphan).parse().unwrap();
    diesel::sql_query("UPDATE md5_tasks SET status = 'expired', finished_at = now() WHERE task_id = $1")
        .bind::<diesel::sql_types::Uuid, _>(id)
        .execute(&mut app.db().await)
        .await
        .unwrap();
    std::fs::remove_file(app.upload_dir.join(task_id(&orphan))).unwrap();
    let later = create(&app.client, &app.base_url, 1000, "later").await;
    // The later upload's task ends `expired` before its file and row go: wait for all of it.
    eventually(Duration::from_secs(20), "the later upload to expire too, and both rows to go", || async {
        let expired = app.task(task_id(&later), 0).await["status"] == "expired";
        let rows: Vec<Count> = diesel::sql_query("SELECT count(*) AS n FROM md5_uploads")
            .load(&mut app.db().await)
            .await
            .ok()?;
        (expired && rows[0].n == 0 && app.upload_files().is_empty()).then_some(())
    })
    .await
    .unwrap();
    app.stop().await;
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_takes_an_upload_slot_and_a_stalled_one_is_cut_keeping_what_arrived() {
    let app = TestApp::spawn(TestOptions::default().no_workers().api(|c| {
        c.max_concurrent_uploads = 1;
        c.body_idle_timeout_seconds = 2;
    }))
    .await
    .unwrap();
    let bytes = random_bytes(300_000, 9);
    let first = create(&app.client, &app.base_url, bytes.len() as u64, "first").await;
    let second = create(&app.client, &app.base_url, bytes.len() as u64, "second").await;
    // An append that sends 100,000 bytes, then nothing: it holds the one upload slot.
    let (body, release) = held_body(Bytes::copy_from_slice(&bytes[..100_000]), Bytes::new());
    let stalled = tokio::spawn(
        app.client
            .patch(&first)
            .header(TUS.0, TUS.1)
            .header("Upload-Offset", 0)
            .header("Content-Type", "application/offset+octet-stream")
            .body(body)
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = patch(&app.client, &second, 0, &bytes[..1000], None).await;
    assert_eq!(refused.status(), 503, "the slot is taken: {:?}", refused.text().await);
    assert_eq!(offset(&head(&app.client, &second).await), 0);
    // The stalled body is cut after BODY_IDLE_TIMEOUT_SECONDS; what arrived is kept, and the
    // slot is free again.
    let cut = eventually(Duration::from_secs(15), "the stalled append to be cut and recorded", || async {
        let now = offset(&head(&app.client, &first).await);
        (now > 0).then_some(now)
    })
    .await
    .unwrap();
    assert_eq!(cut, 100_000);
    assert_eq!(patch(&app.client, &second, 0, &bytes, None).await.status(), 204);
    drop(release);
    let _ = stalled.await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_expired_uploads_is_drained_in_one_pass_not_a_batch_per_period() {
    use diesel_async::RunQueryDsl as _;
    const UPLOADS: usize = 1000;
    // A 40 s expiry: the janitor looks every 10 s. Ending 100 uploads a pass, a backlog of 1,000
    // took ten passes (90 s and more); drained, it goes in the first pass after it is due.
    let app = TestApp::spawn(TestOptions::default().no_workers().api(|c| c.upload_expiry_seconds = 40))
        .await
        .unwrap();
    let urls: Vec<String> = futures_util::stream::iter(0..UPLOADS)
        .map(|n| {
            let app = &app;
            async move { create(&app.client, &app.base_url, 10, &format!("backlog-{n}")).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    // All become due at once, as after an outage of the clients.
    diesel::sql_query("UPDATE md5_uploads SET expires_at = now() - interval '1 second'")
        .execute(&mut app.db().await)
        .await
        .unwrap();
    let due_at = std::time::Instant::now();
    eventually(Duration::from_secs(25), "every expired upload to be ended", || async {
        let left: Vec<_> = diesel::sql_query("SELECT task_id FROM md5_uploads")
            .load::<TaskIdRow>(&mut app.db().await)
            .await
            .ok()?;
        left.is_empty().then_some(())
    })
    .await
    .unwrap();
    let took = due_at.elapsed();
    assert!(took < Duration::from_secs(25), "{took:?}");
    // A normal client is still served, and every one of them is `expired`.
    for url in urls.iter().step_by(97) {
        assert_eq!(app.task(task_id(url), 0).await["status"], "expired");
    }
    app.stop().await;
}

#[derive(diesel::QueryableByName)]
struct TaskIdRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    #[expect(dead_code, reason = "only counted")]
    task_id: uuid::Uuid,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_creations_from_one_client_gets_exactly_its_share_on_two_api_replicas() {
    const BURST: usize = 400;
    const SHARE: u32 = 75;
    let app = TestApp::spawn(TestOptions::default().no_workers().api(|c| {
        c.max_open_uploads = 100;
        c.max_open_uploads_per_client = Some(SHARE);
    }))
    .await
    .unwrap();
    // A second api process on the same database: the limits hold across replicas.
    let mut config = app.api_config(&TestOptions::default());
    config.max_open_uploads = 100;
    config.max_open_uploads_per_client = Some(SHARE);
    config.bind_addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let replica_url = format!("http://{}", config.bind_addr);
    let mut replica = Launch::api(&config).spawn().unwrap();
    eventually(Duration::from_secs(30), "the replica to answer", || async {
        app.client
            .get(format!("{replica_url}/healthz"))
            .send()
            .await
            .ok()?
            .status()
            .is_success()
            .then_some(())
    })
    .await
    .unwrap();
    let statuses: Vec<u16> = futures_util::stream::iter(0..BURST)
        .map(|n| {
            let base = if n % 2 == 0 { app.base_url.clone() } else { replica_url.clone() };
            let client = app.client.clone();
            async move {
                let answer = client
                    .post(format!("{base}/api/v1/uploads"))
                    .header(TUS.0, TUS.1)
                    .header("Upload-Length", 1000)
                    .send()
                    .await
                    .unwrap();
                answer.status().as_u16()
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let created = statuses.iter().filter(|&&status| status == 201).count();
    assert_eq!(created, SHARE as usize, "created {created} of a share of {SHARE}: {statuses:?}");
    assert!(statuses.iter().all(|&status| status == 201 || status == 429), "{statuses:?}");
    // Another client is still served, up to the total.
    let other = Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, 2])).build().unwrap();
    let answer = other
        .post(format!("{}/api/v1/uploads", app.base_url))
        .header(TUS.0, TUS.1)
        .header("Upload-Length", 1000)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201);
    assert_eq!(app.upload_files().len(), SHARE as usize + 1, "no refused creation left a file");
    integration_tests::stop_process(&mut replica);
    app.stop().await;
}
