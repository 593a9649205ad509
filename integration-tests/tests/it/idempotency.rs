//! `Idempotency-Key` on `POST /api/v1/hashes`: a repeat gets the original task and stores
//! nothing; a different request with the key is 422; a repeat during the first upload is 409;
//! a key past the retention window is free again.

use std::time::Duration;

use diesel_async::RunQueryDsl as _;
use futures_util::StreamExt as _;
use integration_tests::{TestApp, TestOptions, eventually, md5_hex, random_bytes};
use reqwest::multipart::{Form, Part};
use serde_json::Value;

/// The one request of these tests: `POST path` with `Idempotency-Key: key` and one `file`
/// part, `part` named `name`.
fn keyed_request(app: &TestApp, path: &str, key: &str, name: &str, part: Part) -> reqwest::RequestBuilder {
    let form = Form::new().part("file", part.file_name(name.to_owned()));
    app.client.post(format!("{}{path}", app.base_url)).header("Idempotency-Key", key).multipart(form)
}

/// A v1 upload of `bytes` under `key`.
async fn keyed(app: &TestApp, key: &str, name: &str, bytes: &[u8]) -> reqwest::Response {
    let request = keyed_request(app, "/api/v1/hashes", key, name, Part::bytes(bytes.to_vec()));
    request.send().await.expect("the api answers")
}

/// Waits until `md5_idempotency_keys` holds `rows` rows.
async fn wait_key_rows(app: &TestApp, rows: i64, what: &str) {
    eventually(Duration::from_secs(10), what, || async { (key_rows(app).await == rows).then_some(()) })
        .await
        .unwrap();
}

async fn key_rows(app: &TestApp) -> i64 {
    use diesel::QueryDsl as _;
    use shared::schema::md5_idempotency_keys::dsl::md5_idempotency_keys;
    md5_idempotency_keys.count().get_result(&mut app.db().await).await.expect("count keys")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_key_answers_with_the_original_task_and_stores_nothing() {
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let bytes = random_bytes(300 * 1024, 7);

    let first = keyed(&app, "k-1", "report.bin", &bytes).await;
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let location = first.headers()["location"].clone();
    let original: Value = first.json().await.unwrap();
    let files_after_first = app.upload_files();

    let repeat = keyed(&app, "k-1", "report.bin", &bytes).await;
    assert_eq!(repeat.status(), 202);
    assert_eq!(repeat.headers()["location"], location);
    assert_eq!(repeat.headers()["idempotent-replayed"], "true");
    let replayed: Value = repeat.json().await.unwrap();
    assert_eq!(replayed["id"], original["id"]);
    assert_eq!(replayed["created_at"], original["created_at"]);

    // The structured-field spelling of the same key is the same key.
    let quoted = keyed(&app, "\"k-1\"", "report.bin", &bytes).await;
    assert_eq!(quoted.json::<Value>().await.unwrap()["id"], original["id"]);

    assert_eq!(app.row_count().await, 1);
    assert_eq!(app.upload_files(), files_after_first, "a repeat must not store its body");

    // Each outcome is counted on /metrics, under a label from a closed set.
    let metrics =
        app.client.get(format!("{}/metrics", app.base_url)).send().await.unwrap().text().await.unwrap();
    for outcome in ["new", "repeat"] {
        let series = format!("md5_idempotency_keys_total{{outcome=\"{outcome}\"}}");
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }

    // Another key is another task.
    let other = keyed(&app, "k-2", "report.bin", &bytes).await;
    assert_eq!(other.status(), 202);
    assert_ne!(other.json::<Value>().await.unwrap()["id"], original["id"]);
    assert_eq!(app.row_count().await, 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_with_a_different_file_is_422_and_a_malformed_key_400() {
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    assert_eq!(keyed(&app, "k", "a.txt", b"hello").await.status(), 202);
    let files = app.upload_files();

    for (name, bytes) in [("a.txt", &b"hello!"[..]), ("b.txt", &b"hello"[..])] {
        let response = keyed(&app, "k", name, bytes).await;
        assert_eq!(response.status(), 422, "{name}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["type"], "/problems/idempotency-key-reused");
        assert!(problem["detail"].as_str().unwrap().contains("different upload"), "{problem}");
    }
    for bad in ["", "two words", &"k".repeat(256)] {
        let response = keyed(&app, bad, "a.txt", b"hello").await;
        assert_eq!(response.status(), 400, "key {bad:?}");
    }
    assert_eq!(app.row_count().await, 1);
    assert_eq!(app.upload_files(), files, "refused uploads leave no file");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_with_one_key_make_one_task() {
    let app = TestApp::spawn(TestOptions::default()).await.unwrap();
    let bytes = random_bytes(2 * 1024 * 1024, 11);
    let send =
        || keyed_request(&app, "/api/v1/hashes", "same", "twice.bin", Part::bytes(bytes.clone())).send();
    let answers = futures_util::future::join_all((0..8).map(|_| send())).await;
    let mut ids = Vec::new();
    for answer in answers {
        // A 409 is answered before the body is read, and the connection is then closed: a client
        // still writing its 2 MiB may see the close (broken pipe) instead of the answer. Only
        // a 409 can end a request early; a 202 reads the whole body first.
        let Ok(response) = answer else { continue };
        match response.status().as_u16() {
            202 => ids.push(response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()),
            409 => assert_eq!(response.headers()["retry-after"], "1"),
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(!ids.is_empty(), "one of the uploads must be accepted");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1, "every accepted answer names the same task: {ids:?}");
    assert_eq!(app.row_count().await, 1);
    assert_eq!(key_rows(&app).await, 1);
    let task = app.wait_finished(&ids[0], Duration::from_secs(30)).await;
    assert_eq!(task["md5"], md5_hex(&bytes).as_str());
    app.stop().await;
}

/// An upload under `key` whose body arrives when the test sends it: the first 1000 bytes are
/// sent at once, the rest by the caller, and dropping the sender ends the body.
struct SlowUpload {
    send: tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    answer: tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
}

impl SlowUpload {
    async fn start(app: &TestApp, key: &str, name: &str) -> SlowUpload {
        let (send, receive) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
        let body = reqwest::Body::wrap_stream(tokio_stream_from(receive));
        let request = keyed_request(app, "/api/v1/hashes", key, name, Part::stream(body));
        let answer = tokio::spawn(request.send());
        send.send(Ok(vec![b'a'; 1000])).await.unwrap();
        SlowUpload { send, answer }
    }

    /// Sends the last 1000 bytes and returns the answer.
    async fn finish(self) -> reqwest::Response {
        self.send.send(Ok(vec![b'a'; 1000])).await.unwrap();
        drop(self.send);
        self.answer.await.unwrap().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_while_the_first_upload_streams_is_409_then_the_original() {
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let first = SlowUpload::start(&app, "slow", "slow.bin").await;
    wait_key_rows(&app, 1, "the key to be reserved").await;

    let during = keyed(&app, "slow", "slow.bin", &[b'a'; 2000]).await;
    assert_eq!(during.status(), 409);
    assert_eq!(during.headers()["retry-after"], "1");
    assert_eq!(during.json::<Value>().await.unwrap()["type"], "/problems/idempotency-key-in-use");

    // While the body streams, the reservation is refreshed (every 5 s), so it never runs out
    // under a live upload however long that takes.
    let reserved_until = || async {
        use diesel::QueryDsl as _;
        use shared::schema::md5_idempotency_keys::dsl;
        dsl::md5_idempotency_keys
            .select(dsl::reserved_until)
            .first::<Option<chrono::DateTime<chrono::Utc>>>(&mut app.db().await)
            .await
            .unwrap()
            .expect("still reserved")
    };
    let before = reserved_until().await;
    eventually(Duration::from_secs(12), "the reservation to be refreshed", || async {
        (reserved_until().await > before).then_some(())
    })
    .await
    .unwrap();

    let first = first.finish().await;
    assert_eq!(first.status(), 202);
    let id = first.json::<Value>().await.unwrap()["id"].clone();
    let after = keyed(&app, "slow", "slow.bin", &[b'a'; 2000]).await;
    assert_eq!(after.status(), 202);
    assert_eq!(after.json::<Value>().await.unwrap()["id"], id);
    assert_eq!(app.row_count().await, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_reservation_ran_out_and_was_taken_over_commits_nothing() {
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let stalled = SlowUpload::start(&app, "k", "stalled.bin").await;
    wait_key_rows(&app, 1, "the key to be reserved").await;
    // As if its api had stopped refreshing the reservation: another upload may take the key.
    diesel::sql_query("UPDATE md5_idempotency_keys SET reserved_until = now() - interval '1 second'")
        .execute(&mut app.db().await)
        .await
        .unwrap();
    let taker = keyed(&app, "k", "taker.bin", b"hello").await;
    assert_eq!(taker.status(), 202);
    let taker_id = taker.json::<Value>().await.unwrap()["id"].clone();

    let late = stalled.finish().await;
    assert_eq!(late.status(), 409, "the key is no longer the stalled upload's");
    assert_eq!(app.row_count().await, 1, "only the taker's task exists");
    eventually(Duration::from_secs(10), "the stalled upload's file to be removed", || async {
        (app.upload_files().len() == 1).then_some(())
    })
    .await
    .unwrap();
    let repeat = keyed(&app, "k", "taker.bin", b"hello").await;
    assert_eq!(repeat.json::<Value>().await.unwrap()["id"], taker_id);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_past_the_retention_window_are_purged_and_live_ones_kept() {
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    assert_eq!(keyed(&app, "old", "a.bin", b"a").await.status(), 202);
    diesel::sql_query("UPDATE md5_idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(&mut app.db().await)
        .await
        .unwrap();
    assert_eq!(keyed(&app, "new", "b.bin", b"b").await.status(), 202);
    let streaming = SlowUpload::start(&app, "streaming", "c.bin").await;
    wait_key_rows(&app, 3, "the third key to be reserved").await;
    let purged =
        shared::queries::purge_keys(&mut app.db().await, Duration::from_secs(24 * 3600)).await.unwrap();
    assert_eq!(purged, 1);
    assert_eq!(key_rows(&app).await, 2, "the recent key and the live reservation stay");
    assert_eq!(streaming.finish().await.status(), 202);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_frees_its_key_and_an_expired_key_is_reusable() {
    let app =
        TestApp::spawn(TestOptions::default().no_workers().api(|c| c.max_upload_bytes = 1024)).await.unwrap();
    // Refused (413): the key is given up at once, so the retry is not a 409.
    assert_eq!(keyed(&app, "k", "big.bin", &[0; 4096]).await.status(), 413);
    wait_key_rows(&app, 0, "the reservation to be given up").await;
    let first = keyed(&app, "k", "small.bin", &[0; 100]).await;
    assert_eq!(first.status(), 202);
    let first_id = first.json::<Value>().await.unwrap()["id"].clone();

    // Past IDEMPOTENCY_TTL_SECONDS (default 24 h) the key names nothing: a new upload with it is
    // a new task, whatever its file.
    diesel::sql_query("UPDATE md5_idempotency_keys SET created_at = now() - interval '24 hours 1 second'")
        .execute(&mut app.db().await)
        .await
        .unwrap();
    let reused = keyed(&app, "k", "other.bin", &[1; 200]).await;
    assert_eq!(reused.status(), 202);
    assert!(reused.headers().get("idempotent-replayed").is_none());
    assert_ne!(reused.json::<Value>().await.unwrap()["id"], first_id);
    assert_eq!(app.row_count().await, 2);
    assert_eq!(key_rows(&app).await, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compatibility_upload_ignores_the_header_as_the_older_service_did() {
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let request = keyed_request(&app, "/hashes/", "compat", "same.txt", Part::bytes(b"same".to_vec()));
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        ids.push(response.json::<Value>().await.unwrap()["task_id"].clone());
    }
    assert_ne!(ids[0], ids[1]);
    assert_eq!((app.row_count().await, key_rows(&app).await), (2, 0));
    app.stop().await;
}

/// A stream over what the test sends into `receive`.
fn tokio_stream_from<T: Send + 'static>(
    receive: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(receive, |mut receive| async move {
        receive.recv().await.map(|item| (item, receive))
    })
    .boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_window_counts_from_the_uploads_completion_not_its_start() {
    let app = TestApp::spawn(TestOptions::default().no_workers().api(|c| c.idempotency_ttl_seconds = 3))
        .await
        .unwrap();
    let first = SlowUpload::start(&app, "long", "long.bin").await;
    wait_key_rows(&app, 1, "the key to be reserved").await;
    // The upload outlasts the whole retention window: this wait is what the test is about.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let first = first.finish().await;
    assert_eq!(first.status(), 202);
    let id = first.json::<Value>().await.unwrap()["id"].clone();
    // A retry at once (the client lost the answer) is within the window of the completed upload.
    let retry = keyed(&app, "long", "long.bin", &[b'a'; 2000]).await;
    assert_eq!(retry.status(), 202);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.json::<Value>().await.unwrap()["id"], id, "the retry names the same task");
    assert_eq!(app.row_count().await, 1, "no second task");
    app.stop().await;
}
