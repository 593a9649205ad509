//! A `COMMIT` that Postgres never answers: the upload gets 503 within the deadline, and the
//! outcome is settled either way, with no row without its file and no task lost: a committed
//! task keeps its file and is enqueued (a retry with the same key gets it), an uncommitted one
//! leaves no file (a retry uploads it anew).

use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use integration_tests::api_process::ApiProcess;
use integration_tests::eventually;
use integration_tests::pg_proxy::CommitStallingProxy;
use serde_json::Value;

const TIMEOUT_MS: u64 = 1500;

/// `POST /api/v1/hashes` of `bytes` as `name` with `Idempotency-Key: key`.
async fn upload(api: &ApiProcess, key: &str, name: &str, bytes: &[u8]) -> reqwest::Response {
    let part = reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(name.to_owned());
    let form = reqwest::multipart::Form::new().part("file", part);
    let url = format!("{}/api/v1/hashes", api.base_url);
    api.client.post(url).header("Idempotency-Key", key).multipart(form).send().await.unwrap()
}

/// Ids of the tasks named `name`.
async fn tasks_named(database_url: &str, name: &str) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
    }
    let mut conn = AsyncPgConnection::establish(database_url).await.unwrap();
    let ids: Vec<Id> = diesel::sql_query("SELECT task_id::text AS id FROM md5_tasks WHERE file_name = $1")
        .bind::<diesel::sql_types::Text, _>(name)
        .load(&mut conn)
        .await
        .unwrap();
    ids.into_iter().map(|row| row.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_commit_gets_503_in_time_and_is_settled_with_no_orphan_row_and_no_lost_task() {
    let proxy = CommitStallingProxy::start("127.0.0.1:5432".parse().unwrap()).await.unwrap();
    let mut direct_url = String::new();
    let api = ApiProcess::start(|c| {
        direct_url = c.database.database_url.clone();
        c.database.database_url = direct_url.replace("127.0.0.1:5432", &proxy.addr.to_string());
        c.database.db_timeout_ms = TIMEOUT_MS;
        // Only uploads commit here: the proxy holds "the next COMMIT", whoever sends it.
        c.task_retention_seconds = 0;
    })
    .await
    .unwrap();
    assert!(direct_url.contains("127.0.0.1:5432"), "the test database is on 127.0.0.1:5432: {direct_url}");

    // The COMMIT reaches Postgres and commits; its answer never comes.
    proxy.forward_next_commit_unanswered();
    let started = Instant::now();
    let answer = upload(&api, "key-committed", "committed.bin", b"committed").await;
    let took = started.elapsed();
    assert_eq!(answer.status(), 503, "{:?}", answer.text().await);
    assert!(took < Duration::from_millis(3 * TIMEOUT_MS + 1000), "answered after {took:?}");
    assert_eq!(proxy.stalled(), 1);
    let ids = tasks_named(&direct_url, "committed.bin").await;
    assert_eq!(ids.len(), 1, "the row committed");
    // Settled: it keeps its file, and the retry with the same key gets it.
    eventually(Duration::from_secs(20), "the committed task settled", || async {
        api.stderr().contains("task.exists=true").then_some(())
    })
    .await
    .unwrap();
    assert!(api.upload_dir.join(&ids[0]).exists(), "the committed task keeps its file");
    let retried = upload(&api, "key-committed", "committed.bin", b"committed").await;
    assert_eq!(retried.status(), 202);
    assert_eq!(retried.json::<Value>().await.unwrap()["id"], ids[0].as_str());

    // The COMMIT never reaches Postgres: the transaction rolls back once the api gives its
    // connection up.
    proxy.hold_next_commit();
    let answer = upload(&api, "key-held", "held.bin", b"held").await;
    assert_eq!(answer.status(), 503);
    eventually(Duration::from_secs(20), "the uncommitted task settled", || async {
        api.stderr().contains("task.exists=false").then_some(())
    })
    .await
    .unwrap();
    assert!(tasks_named(&direct_url, "held.bin").await.is_empty(), "no row");
    assert_eq!(api.upload_files().len(), 1, "only the committed task's file: {:?}", api.upload_files());
    let retried = upload(&api, "key-held", "held.bin", b"held").await;
    assert_eq!(retried.status(), 202, "uploaded anew");
    assert_eq!(tasks_named(&direct_url, "held.bin").await.len(), 1);
}
