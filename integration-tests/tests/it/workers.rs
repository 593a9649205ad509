//! Several worker processes sharing one group and one log.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt as _;
use integration_tests::{TestApp, TestOptions, eventually, md5_hex, random_bytes};
use serde_json::Value;

const UPLOADS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_worker_processes_finish_every_upload_with_exactly_one_log_line_each() {
    let mut app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    for _ in 0..3 {
        app.start_worker_process(4).unwrap();
    }
    let expected: HashMap<String, String> = futures_util::stream::iter(0..UPLOADS)
        .map(|n| {
            let app = &app;
            async move {
                let bytes = random_bytes(512 + n, n as u64);
                let md5 = md5_hex(&bytes);
                let response = app.upload(&format!("f{n}.bin"), bytes).await;
                assert_eq!(response.status(), 202);
                let task: Value = response.json().await.unwrap();
                (task["id"].as_str().unwrap().to_owned(), md5)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert_eq!(expected.len(), UPLOADS);

    eventually(Duration::from_secs(120), "every task logged", || async {
        (app.log_lines().len() >= UPLOADS).then_some(())
    })
    .await
    .unwrap();
    let lines = app.log_lines();
    assert_eq!(lines.len(), UPLOADS, "exactly one line per task");
    let logged: HashSet<String> = lines.iter().map(|line| line.task_id.to_string()).collect();
    assert_eq!(logged.len(), UPLOADS, "no task logged twice");
    for line in &lines {
        let id = line.task_id.to_string();
        assert_eq!(
            line.digests.as_ref().map(|digests| digests.md5.as_str()),
            Some(expected[&id].as_str()),
            "md5 of {id}"
        );
    }
    for (id, md5) in expected.iter().take(50) {
        let task = app.task(id, 0).await;
        assert_eq!(task["status"], "done");
        assert_eq!(task["md5"], md5.as_str());
    }
    eventually(Duration::from_secs(10), "no pending entries and no upload files", || async {
        (app.pending_count().await.ok()? == 0 && app.upload_files().is_empty()).then_some(())
    })
    .await
    .unwrap();
    let workers: HashSet<&str> = lines.iter().map(|line| line.worker.as_str()).collect();
    println!("{UPLOADS} tasks done by {} worker processes", workers.len());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_log_keeps_the_job_unacknowledged_until_it_can_be_written() {
    let app = TestApp::spawn(TestOptions::default()).await.unwrap();
    // A folder where the log file should be: every append fails.
    std::fs::create_dir_all(&app.log_file).unwrap();
    let response = app.upload("a.txt", b"abc".to_vec()).await;
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let task = app.wait_finished(&id, Duration::from_secs(30)).await;
    assert_eq!(task["md5"], "900150983cd24fb0d6963f7d28e17f72");
    // The result is recorded, but nothing is acknowledged while the line cannot be written.
    eventually(Duration::from_secs(10), "a failed append to be retried", || async {
        (app.pending_count().await.ok()? == 1).then_some(())
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.pending_count().await.unwrap(), 1, "still unacknowledged");
    std::fs::remove_dir(&app.log_file).unwrap();
    eventually(Duration::from_secs(30), "the line written and the job acknowledged", || async {
        (app.log_lines().len() == 1 && app.pending_count().await.ok()? == 0).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(app.log_lines()[0].task_id.to_string(), id);
    app.stop().await;
}
