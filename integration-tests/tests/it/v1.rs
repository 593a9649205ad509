//! The v1 flow.

use std::time::Duration;

use integration_tests::{TestApp, TestOptions, md5_hex, random_bytes};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_megabyte_upload_is_hashed_logged_once_and_its_file_deleted() {
    let app = TestApp::spawn(TestOptions::default()).await.unwrap();
    let bytes = random_bytes(12 * 1024 * 1024 + 17, 42);
    let expected = md5_hex(&bytes);

    let response = app.upload("../../etc/big report.bin", bytes).await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/v1/hashes/{id}"));
    assert_eq!(created["status"], "queued");
    assert_eq!(created["file_name"], "big report.bin");
    assert_eq!(created["size_bytes"], 12 * 1024 * 1024 + 17);
    assert!(uuid::Uuid::parse_str(&id).is_ok());

    let task = app.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(task["status"], "done", "{task}");
    assert_eq!(task["md5"], expected.as_str());
    assert_eq!(task["attempts"], 1);
    assert!(task["finished_at"].as_str().unwrap().ends_with('Z'));

    // The row is committed before the log line is written: wait for the line.
    let lines = integration_tests::eventually(Duration::from_secs(10), "the log line", || async {
        let lines = app.log_lines();
        (!lines.is_empty()).then_some(lines)
    })
    .await
    .unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].task_id.to_string(), id);
    assert_eq!(lines[0].digests.as_ref().map(|digests| digests.md5.as_str()), Some(expected.as_str()));
    integration_tests::eventually(Duration::from_secs(10), "the upload to be deleted", || async {
        app.upload_files().is_empty().then_some(())
    })
    .await
    .unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_file_hashes_to_the_md5_of_nothing() {
    let app = TestApp::spawn(TestOptions::default()).await.unwrap();
    let response = app.upload("empty.txt", Vec::new()).await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let task = app.wait_finished(&id, Duration::from_secs(30)).await;
    assert_eq!(task["md5"], "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(task["size_bytes"], 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_answers_as_soon_as_the_task_finishes() {
    // No worker yet: the task stays queued, so `wait` must hold the request.
    let mut app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let response = app.upload("a.txt", b"hello".to_vec()).await;
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();

    let started = std::time::Instant::now();
    let task = app.task(&id, 1).await;
    assert_eq!(task["status"], "queued");
    assert!(started.elapsed() >= Duration::from_millis(900), "wait=1 held the request about a second");

    let waiting = {
        let client = app.client.clone();
        let url = format!("{}/api/v1/hashes/{id}?wait=30", app.base_url);
        tokio::spawn(async move {
            let task: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            (task, std::time::Instant::now())
        })
    };
    app.start_in_process_worker(1);
    let (task, answered) = waiting.await.unwrap();
    assert_eq!(task["status"], "done");
    assert_eq!(task["md5"], "5d41402abc4b2a76b9719d911017c592");
    let elapsed = answered.duration_since(started);
    assert!(elapsed < Duration::from_secs(20), "answered on completion, not at the 30 s limit: {elapsed:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_deleted_before_its_job_runs_ends_failed_without_looping() {
    let mut app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let response = app.upload("gone.bin", b"soon gone".to_vec()).await;
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    for file in app.upload_files() {
        std::fs::remove_file(file).unwrap();
    }
    app.start_in_process_worker(1);
    let task = app.wait_finished(&id, Duration::from_secs(30)).await;
    assert_eq!(task["status"], "failed");
    assert!(task["error"].as_str().unwrap().contains("missing"), "{task}");
    assert_eq!(task["attempts"], 1);
    integration_tests::eventually(Duration::from_secs(10), "the entry to be acknowledged", || async {
        (app.pending_count().await.ok()? == 0).then_some(())
    })
    .await
    .unwrap();
    let lines = app.log_lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].status, shared::TaskStatus::Failed);

    let compat: Value =
        app.client.get(format!("{}/hashes/{id}", app.base_url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(compat["status"], "ERROR");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_body_upload_is_stored_without_a_form_and_named_by_content_disposition() {
    let app = integration_tests::TestApp::spawn(
        integration_tests::TestOptions::default().api(|c| c.max_upload_bytes = 1024 * 1024),
    )
    .await
    .unwrap();
    let bytes = integration_tests::random_bytes(700_000, 21);
    let answer = app
        .client
        .post(format!("{}/api/v1/hashes", app.base_url))
        .header("Content-Type", "application/octet-stream")
        .header("Content-Disposition", "attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.bin")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let task: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(task["file_name"], "résumé.bin");
    let done = app.wait_finished(task["id"].as_str().unwrap(), std::time::Duration::from_secs(30)).await;
    assert_eq!(done["md5"], integration_tests::md5_hex(&bytes));
    // Without a name it is `upload`; an empty body is a file of 0 bytes.
    let empty = app
        .client
        .post(format!("{}/api/v1/hashes", app.base_url))
        .header("Content-Type", "application/octet-stream")
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 202);
    let task: serde_json::Value = empty.json().await.unwrap();
    assert_eq!((task["file_name"].as_str(), task["size_bytes"].as_u64()), (Some("upload"), Some(0)));
    // Over the limit: 413 from Content-Length, and while streaming without one; nothing left.
    let large = app
        .client
        .post(format!("{}/api/v1/hashes", app.base_url))
        .header("Content-Type", "application/octet-stream")
        .body(vec![0u8; 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(large.status(), 413);
    let chunks = futures_util::stream::iter(
        (0..20).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![1u8; 64 * 1024]))),
    );
    let streamed = app
        .client
        .post(format!("{}/api/v1/hashes", app.base_url))
        .header("Content-Type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 413);
    // Another type: 415 naming both accepted forms; the compatibility route takes forms only.
    let text = app
        .client
        .post(format!("{}/api/v1/hashes", app.base_url))
        .header("Content-Type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(text.status(), 415);
    assert!(text.text().await.unwrap().contains("application/octet-stream"));
    let compat = app
        .client
        .post(format!("{}/hashes/", app.base_url))
        .header("Content-Type", "application/octet-stream")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_ne!(compat.status(), 200);
    integration_tests::eventually(
        std::time::Duration::from_secs(10),
        "refused uploads to leave no file",
        || async {
            app.upload_files().iter().all(|file| !file.to_string_lossy().contains(".part")).then_some(())
        },
    )
    .await
    .unwrap();
    app.stop().await;
}
