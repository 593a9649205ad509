//! Every row of the SPEC error table; each checks that no file and no row is left behind.

use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use integration_tests::{TestApp, TestOptions, admin_database_url, eventually};
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

use crate::raw_http;

async fn no_api_app(options: TestOptions) -> TestApp {
    TestApp::spawn(options.no_workers()).await.unwrap()
}

async fn assert_nothing_left(app: &TestApp) {
    eventually(Duration::from_secs(10), "partial files to be removed", || async {
        app.upload_files().is_empty().then_some(())
    })
    .await
    .unwrap_or_else(|err| panic!("{err}: {:?}", app.upload_files()));
    assert_eq!(app.row_count().await, 0, "no row for a rejected upload");
}

async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["status"], status);
    assert!(problem["title"].is_string() && problem["detail"].is_string() && problem["type"].is_string());
    problem
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_multipart_gets_415_and_leaves_nothing() {
    let app = no_api_app(TestOptions::default()).await;
    let response = app
        .client
        .post(format!("{}/api/v1/hashes", app.base_url))
        .header("content-type", "application/json")
        .body(r#"{"file": "abc"}"#)
        .send()
        .await
        .unwrap();
    assert_problem(response, 415).await;
    let response = app.client.post(format!("{}/api/v1/hashes", app.base_url)).body("x").send().await.unwrap();
    assert_problem(response, 415).await;
    assert_nothing_left(&app).await;
}

/// A client that goes on sending a body the api refused (here 32 MiB that are not a form) gets
/// its answer whole and can finish its write: the api closes the connection only after reading
/// (and dropping) what is still coming, for a bounded time. Closing at once would reset the
/// connection under the client's write and could destroy the answer before it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_sending_a_refused_body_gets_its_answer_and_no_reset() {
    use tokio::io::AsyncReadExt as _;
    const BODY: usize = 32 * 1024 * 1024;
    let app = no_api_app(TestOptions::default()).await;
    let stream = raw_http::connect(&app.base_url).await;
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST /api/v1/hashes HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {BODY}\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..BODY / chunk.len() {
            write.write_all(&chunk).await?;
        }
        write.shutdown().await
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), read.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        matches!(read, Ok(Ok(_))),
        "the answer is read to the api's close, not reset: {read:?} ({answer})"
    );
    assert!(answer.starts_with("HTTP/1.1 415 "), "{answer}");
    assert!(answer.contains("connection: close") && answer.contains("application/problem+json"), "{answer}");
    let written =
        tokio::time::timeout(Duration::from_secs(20), writer).await.expect("the write ends").unwrap();
    assert!(written.is_ok(), "the whole body was taken, without a reset: {written:?}");
    assert_nothing_left(&app).await;
}

/// The lingering close is bounded: a client that never stops sending a refused body (it
/// declares 10 GiB) is cut off after at most 64 MiB more (or 2 s), and another client is served
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_stops_sending_a_refused_body_is_cut_off() {
    const DECLARED: u64 = 10 << 30;
    let app = no_api_app(TestOptions::default()).await;
    let mut stream = raw_http::connect(&app.base_url).await;
    let head = format!(
        "POST /api/v1/hashes HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {DECLARED}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let chunk = vec![b' '; 256 * 1024];
    let mut written: u64 = 0;
    let cut = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.write_all(&chunk).await {
                Ok(()) => written += chunk.len() as u64,
                Err(err) => return err,
            }
        }
    })
    .await
    .expect("the api cut the connection");
    eprintln!("cut after {} MiB in {:?}: {cut}", written >> 20, started.elapsed());
    assert!(written < 100 << 20, "{} MiB were taken", written >> 20);
    assert!(started.elapsed() < Duration::from_secs(10), "cut after {:?}", started.elapsed());
    // A trickle (1 KiB every 100 ms) is cut by time instead: 2 s of lingering after the answer
    // (and at most the refusal's own 1 s drain before it).
    let mut stream = raw_http::connect(&app.base_url).await;
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let cut = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Err(err) = stream.write_all(&chunk[..1024]).await {
                return err;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the api cut the trickle");
    eprintln!("trickle cut in {:?}: {cut}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(8), "trickle cut after {:?}", started.elapsed());
    let served = app.client.get(format!("{}/healthz", app.base_url)).send().await.unwrap();
    assert_eq!(served.status(), 200);
    assert_nothing_left(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_without_a_file_part_or_malformed_gets_400_and_leaves_nothing() {
    let app = no_api_app(TestOptions::default()).await;
    let form = reqwest::multipart::Form::new().text("other", "value");
    let response =
        app.client.post(format!("{}/api/v1/hashes", app.base_url)).multipart(form).send().await.unwrap();
    let problem = assert_problem(response, 400).await;
    assert!(problem["detail"].as_str().unwrap().contains("file"));

    let response = app
        .client
        .post(format!("{}/api/v1/hashes", app.base_url))
        .header("content-type", "multipart/form-data; boundary=XYZ")
        .body("--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nunterminated")
        .send()
        .await
        .unwrap();
    assert_problem(response, 400).await;
    assert_nothing_left(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_larger_than_the_limit_gets_413_early_and_while_streaming_and_leaves_nothing() {
    let app = no_api_app(TestOptions::default().api(|c| c.max_upload_bytes = 1000)).await;
    // From Content-Length, before any body byte is sent.
    let head = "POST /api/v1/hashes HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=B\r\n\
                Content-Length: 10000000000\r\n\r\n";
    assert_eq!(raw_http::send(&app.base_url, head.as_bytes()).await, 413);
    // A client that waits for `100 Continue` (as curl does for any body over 1 MiB) is refused
    // before it is told to send: the 413 is its first answer, not a `100 Continue`.
    let waiting = "POST /api/v1/hashes HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n\
                   Expect: 100-continue\r\nContent-Length: 10000000000\r\n\r\n";
    assert_eq!(raw_http::send(&app.base_url, waiting.as_bytes()).await, 413);

    // While streaming: a chunked body gives no length up front.
    let mut body = raw_http::multipart_head("B").into_bytes();
    body.extend_from_slice(&[b'a'; 5000]);
    body.extend_from_slice(b"\r\n--B--\r\n");
    let mut request =
        b"POST /api/v1/hashes HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=B\r\n\
                        Transfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    request.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
    request.extend_from_slice(&body);
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_eq!(raw_http::send(&app.base_url, &request).await, 413);

    let response = app.upload("big.bin", vec![1u8; 1001]).await;
    let problem = assert_problem(response, 413).await;
    assert!(problem["detail"].as_str().unwrap().contains("1000"), "{problem}");
    // Exactly at the limit is fine.
    assert_eq!(app.upload("ok.bin", vec![1u8; 1000]).await.status(), 202);
    assert_eq!(app.row_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_malformed_ids_get_404() {
    let app = no_api_app(TestOptions::default()).await;
    for id in [uuid::Uuid::new_v4().to_string(), "42".to_owned(), "not-a-uuid".to_owned()] {
        let response = app.client.get(format!("{}/api/v1/hashes/{id}", app.base_url)).send().await.unwrap();
        assert_problem(response, 404).await;
    }
    // The compatibility route: unknown ids, a UUID or an integer as the older service issued;
    // what FastAPI could not parse is its 422 (compat::older_clients_get_fastapis_422_bodies…).
    for id in [uuid::Uuid::new_v4().to_string(), "42".to_owned()] {
        let response = app.client.get(format!("{}/hashes/{id}", app.base_url)).send().await.unwrap();
        assert_eq!(response.status(), 404);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["detail"], format!("Task {id} was not found"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_api_key_requests_without_the_right_bearer_get_401() {
    let app = no_api_app(TestOptions::default().api(|c| c.api_key = Some("s3cret".into()))).await;
    let url = format!("{}/api/v1/hashes/{}", app.base_url, uuid::Uuid::new_v4());
    assert_problem(app.client.get(&url).send().await.unwrap(), 401).await;
    assert_problem(app.client.get(&url).bearer_auth("wrong").send().await.unwrap(), 401).await;
    assert_eq!(app.client.get(&url).bearer_auth("s3cret").send().await.unwrap().status(), 404);
    assert_eq!(app.upload_to("/hashes/", "a", b"a".to_vec()).await.status(), 401);
    assert_eq!(app.client.get(format!("{}/hashes/x", app.base_url)).send().await.unwrap().status(), 401);
    // The page and health stay open.
    assert_eq!(app.client.get(format!("{}/healthz", app.base_url)).send().await.unwrap().status(), 200);
    assert_eq!(app.client.get(format!("{}/", app.base_url)).send().await.unwrap().status(), 200);
    assert_nothing_left(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_upload_volume_gets_507_and_leaves_nothing() {
    // A reserve larger than any disk: the volume counts as full.
    let app = no_api_app(TestOptions::default().api(|c| c.min_free_bytes = u64::MAX)).await;
    assert_problem(app.upload("a.bin", vec![0u8; 10]).await, 507).await;
    assert_nothing_left(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_gets_503_with_retry_after_within_5_seconds() {
    let app = no_api_app(TestOptions::default()).await;
    // Take the database away under the running api.
    let mut admin = AsyncPgConnection::establish(&admin_database_url()).await.unwrap();
    let name = app.database_url.rsplit('/').next().unwrap().split('?').next().unwrap().to_owned();
    diesel::sql_query(format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut admin).await.unwrap();

    let started = Instant::now();
    let response = app.upload("a.bin", vec![0u8; 1000]).await;
    assert!(started.elapsed() < Duration::from_secs(5), "answered in {:?}", started.elapsed());
    assert_eq!(response.headers()["retry-after"], "5");
    assert_problem(response, 503).await;
    let response = app
        .client
        .get(format!("{}/api/v1/hashes/{}", app.base_url, uuid::Uuid::new_v4()))
        .send()
        .await
        .unwrap();
    assert_problem(response, 503).await;
    let ready = app.client.get(format!("{}/readyz", app.base_url)).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert!(ready["postgres"]["error"].is_string() && ready["redis"] == "ok", "{ready}");
    assert!(app.upload_files().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_body_leaves_no_file_and_no_row() {
    let app = no_api_app(TestOptions::default()).await;
    let mut stream = raw_http::connect(&app.base_url).await;
    let head = "POST /api/v1/hashes HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=B\r\n\
                Content-Length: 50000000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(raw_http::multipart_head("B").as_bytes()).await.unwrap();
    stream.write_all(&vec![7u8; 2 * 1024 * 1024]).await.unwrap();
    eventually(Duration::from_secs(10), "the partial file to appear", || async {
        (!app.upload_files().is_empty()).then_some(())
    })
    .await
    .unwrap();
    drop(stream);
    assert_nothing_left(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_is_cut_off_and_leaves_nothing() {
    let app = no_api_app(TestOptions::default().api(|c| c.body_idle_timeout_seconds = 1)).await;
    let mut stream = raw_http::connect(&app.base_url).await;
    let head = "POST /api/v1/hashes HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=B\r\n\
                Content-Length: 5000000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(raw_http::multipart_head("B").as_bytes()).await.unwrap();
    stream.write_all(&[7u8; 1000]).await.unwrap();
    let status = raw_http::status_of(&mut stream).await;
    assert_eq!(status, 408);
    assert_nothing_left(&app).await;
}
