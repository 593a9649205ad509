//! A task's whole life: `DELETE` forgets a task (cancelling it first if unfinished) so that every
//! route answers its id as one that never existed, and retention forgets finished tasks on its
//! own, leaving the unfinished ones.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use integration_tests::{TestApp, TestOptions, eventually, md5_hex, random_bytes};

use crate::live::{LARGE, cpu_seconds, large_options, upload_large};

/// Every way to reach task `id` answers 404: v1, its events, the compatibility route, lookup by
/// its MD5 (empty), and a second `DELETE`.
async fn gone_everywhere(app: &TestApp, id: &str, md5: Option<&str>) {
    let base = &app.base_url;
    for url in [
        format!("{base}/api/v1/hashes/{id}"),
        format!("{base}/api/v1/hashes/{id}/events"),
        format!("{base}/hashes/{id}"),
    ] {
        assert_eq!(app.client.get(&url).send().await.unwrap().status(), 404, "{url}");
    }
    let again = app.client.delete(format!("{base}/api/v1/hashes/{id}")).send().await.unwrap();
    assert_eq!(again.status(), 404, "a second DELETE");
    let cancel = app.client.post(format!("{base}/api/v1/hashes/{id}/cancel")).send().await.unwrap();
    assert_eq!(cancel.status(), 404);
    if let Some(md5) = md5 {
        let page: Value = app
            .client
            .get(format!("{base}/api/v1/digests/md5/{md5}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(!page.to_string().contains(id), "lookup still finds it: {page}");
    }
    let mut conn = app.db().await;
    for table in ["md5_tasks", "md5_task_digests", "md5_idempotency_keys", "md5_uploads"] {
        let count: i64 = diesel_async::RunQueryDsl::get_result(
            diesel::sql_query(format!("SELECT count(*) AS n FROM {table} WHERE task_id = '{id}'")),
            &mut conn,
        )
        .await
        .map(|row: Count| row.n)
        .unwrap();
        assert_eq!(count, 0, "{table} still has a row of {id}");
    }
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Rows of each task-related table.
#[derive(diesel::QueryableByName)]
struct Rows {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    tasks: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    digests: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    keys: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    uploads: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    deliveries: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_forgets_a_queued_a_running_and_a_done_task_leaving_only_the_done_ones_log_line() {
    let mut app = TestApp::spawn(large_options().no_workers()).await.unwrap();
    let base = app.base_url.clone();
    let upload = |seed: u64, key: &'static str| {
        let form = reqwest::multipart::Form::new()
            .part("file", reqwest::multipart::Part::bytes(random_bytes(2000, seed)).file_name("f.bin"));
        app.client.post(format!("{base}/api/v1/hashes")).header("Idempotency-Key", key).multipart(form).send()
    };
    // Queued (no worker yet): forgotten, never hashed.
    let queued: Value = upload(1, "queued").await.unwrap().json().await.unwrap();
    let queued = queued["id"].as_str().unwrap().to_owned();
    let deleted = app.client.delete(format!("{base}/api/v1/hashes/{queued}")).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    gone_everywhere(&app, &queued, None).await;
    // Its Idempotency-Key went with it: the same key makes a new task.
    let again: Value = upload(1, "queued").await.unwrap().json().await.unwrap();
    assert_ne!(again["id"].as_str().unwrap(), queued);

    // Running: a 2 GiB hash, stopped within a second.
    app.start_worker_process(2).unwrap();
    let pid = app.worker_pids()[0];
    let running = upload_large(&app.client, &base, LARGE).await;
    let url = format!("{base}/api/v1/hashes/{running}");
    eventually(Duration::from_secs(30), "the hash to be under way", || async {
        let task: Value = app.client.get(&url).send().await.ok()?.json().await.ok()?;
        (task["status"] == "processing" && task["progress"]["bytes_hashed"].as_u64()? > 0).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(app.client.delete(&url).send().await.unwrap().status(), StatusCode::NO_CONTENT);
    let deleted_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_a_second = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_seconds(pid) - after_a_second;
    assert!(used < 0.25, "the worker still uses {used:.2} s of CPU per second after the DELETE");
    assert!(deleted_at.elapsed() < Duration::from_secs(5));
    gone_everywhere(&app, &running, None).await;

    // Done: forgotten, its log line kept.
    let bytes = random_bytes(2000, 3);
    let done: Value = app.upload("d.bin", bytes.clone()).await.json().await.unwrap();
    let done = done["id"].as_str().unwrap().to_owned();
    app.wait_finished(&done, Duration::from_secs(30)).await;
    eventually(Duration::from_secs(10), "its line to be written", || async {
        app.log_lines().iter().any(|line| line.task_id.to_string() == done).then_some(())
    })
    .await
    .unwrap();
    // Its line is on disk, but the worker records that only after acknowledging the job: until
    // then a DELETE is refused for a moment (409 with Retry-After), as documented.
    eventually(Duration::from_secs(10), "the DELETE of the done task", || async {
        let deleted = app.client.delete(format!("{base}/api/v1/hashes/{done}")).send().await.ok()?;
        match deleted.status() {
            StatusCode::NO_CONTENT => Some(()),
            StatusCode::CONFLICT => {
                assert!(deleted.headers().contains_key("retry-after"), "a 409 says when to retry");
                None
            }
            other => panic!("DELETE of a done task answered {other}"),
        }
    })
    .await
    .unwrap();
    gone_everywhere(&app, &done, Some(&md5_hex(&bytes))).await;

    eventually(Duration::from_secs(20), "the files gone and the entries acknowledged", || async {
        (app.upload_files().len() <= 1 && app.pending_count().await.ok()? == 0).then_some(())
    })
    .await
    .unwrap();
    let lines = app.log_lines();
    assert!(lines.iter().any(|line| line.task_id.to_string() == done), "the done task's line stays");
    assert!(
        !lines.iter().any(|line| line.task_id.to_string() == queued || line.task_id.to_string() == running)
    );
    assert!(!app.upload_files().iter().any(|file| {
        let name = file.to_string_lossy();
        name.contains(&queued) || name.contains(&running) || name.contains(&done)
    }));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_forgets_finished_tasks_on_time_keeps_unfinished_ones_and_keeps_the_tables_flat() {
    let app = TestApp::spawn(TestOptions::default().api(|c| {
        c.task_retention_seconds = 2;
        c.max_tasks_per_client_per_second = 0;
    }))
    .await
    .unwrap();
    let base = app.base_url.clone();
    // An unfinished resumable upload: never forgotten by retention.
    let unfinished = crate::partial_uploads::creation(&app.client, &base, 100).await;
    assert_eq!(unfinished.status(), 201);
    let unfinished_id =
        unfinished.headers()["location"].to_str().unwrap().rsplit('/').next().unwrap().to_owned();
    // Every ended task gets a webhook event; they are marked delivered as they come.
    let mut conn = app.db().await;
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query("INSERT INTO md5_webhook_endpoints (url) VALUES ('http://127.0.0.1:9/hook')"),
        &mut conn,
    )
    .await
    .unwrap();
    // A steady load of small uploads (every fourth with an Idempotency-Key, one resumable a batch,
    // whose md5_uploads row goes when it completes): what each task-related table holds stays
    // about retention × rate, from the first seconds to the last. 20 s in the test command (one
    // client uploading in turn: 169 of 1,260 uploads in the table at the most on a quiet
    // machine, but 147 of 420 in 15 s under the whole suite's load, where the uploads are slower
    // and the sweeps later: 2.9x, under the 3x below); `RETENTION_FLAT_SECONDS=300` runs it for minutes.
    let seconds: u64 =
        std::env::var("RETENTION_FLAT_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let started = Instant::now();
    let mut samples: Vec<(f64, u64, [i64; 5])> = Vec::new();
    let mut first = None;
    let mut uploaded = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        for n in 0..20u64 {
            let url = format!("{base}/api/v1/hashes");
            let form = reqwest::multipart::Form::new()
                .part("file", reqwest::multipart::Part::bytes(random_bytes(100, n)).file_name("s.bin"));
            let mut request = app.client.post(&url).multipart(form);
            if n % 4 == 0 {
                request = request.header("Idempotency-Key", format!("k-{uploaded}"));
            }
            let task: Value = request.send().await.unwrap().json().await.unwrap();
            first.get_or_insert(task["id"].as_str().unwrap().to_owned());
            uploaded += 1;
        }
        // And one resumable upload, created and sent whole.
        let created = crate::partial_uploads::creation(&app.client, &base, 100).await;
        let url = format!("{base}{}", created.headers()["location"].to_str().unwrap());
        let sent = crate::resumable::patch(&app.client, &url, 0, &random_bytes(100, uploaded), None).await;
        assert_eq!(sent.status(), 204);
        uploaded += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
        // Every delivery is marked delivered as it comes, as a receiver that answers would.
        let counted = diesel::sql_query(
            "WITH d AS (UPDATE md5_webhook_deliveries SET delivered_at = now() WHERE delivered_at IS NULL) \
             SELECT (SELECT count(*) FROM md5_tasks) AS tasks, (SELECT count(*) FROM md5_task_digests) AS digests, \
                    (SELECT count(*) FROM md5_idempotency_keys) AS keys, (SELECT count(*) FROM md5_uploads) AS uploads, \
                    (SELECT count(*) FROM md5_webhook_deliveries) AS deliveries",
        );
        let rows: Rows = diesel_async::RunQueryDsl::get_result(counted, &mut conn).await.unwrap();
        samples.push((
            started.elapsed().as_secs_f64(),
            uploaded,
            [rows.tasks, rows.digests, rows.keys, rows.uploads, rows.deliveries],
        ));
    }
    let first = first.unwrap();
    assert_eq!(app.client.get(format!("{base}/api/v1/hashes/{first}")).send().await.unwrap().status(), 404);
    // Kept for 2 s and looked for every second: a few seconds' worth at most, not all, from the
    // first seconds to the last. The rate moves with the machine's load (the suite's other tests
    // start and end meanwhile, and the sweeps run later under load), so each count is weighed
    // against the uploads of the [`RECENT`] seconds before it: from 10 s on, no table holds
    // more rows than those uploads. A table that kept every row would
    // hold all the uploads so far: 1.25 times as many 10 s in, 2.5 times at 20 s.
    const RECENT: f64 = 8.0;
    let recent = |at: f64, uploaded_then: u64| {
        let before = samples.iter().rev().find(|(t, _, _)| *t <= at - RECENT).map_or(0, |(_, n, _)| *n);
        uploaded_then.saturating_sub(before)
    };
    let names =
        ["md5_tasks", "md5_task_digests", "md5_idempotency_keys", "md5_uploads", "md5_webhook_deliveries"];
    for (i, name) in names.iter().enumerate() {
        let weighed: Vec<(f64, i64, u64)> = samples
            .iter()
            .filter(|(at, _, _)| *at >= RECENT + 2.0)
            .map(|(at, uploaded_then, rows)| (*at, rows[i], recent(*at, *uploaded_then)))
            .collect();
        let most = weighed
            .iter()
            .map(|(_, rows, recent)| *rows as f64 / (*recent).max(1) as f64)
            .fold(0.0, f64::max);
        let overall = samples.iter().map(|(_, _, rows)| rows[i]).max().unwrap_or(0);
        println!(
            "{name}: at most {overall} rows of {uploaded} uploads; at most {most:.2} rows per upload of the \
             {RECENT} s before"
        );
        assert!(overall < 500, "{name}: {overall} rows at once with a retention of 2 s");
        assert!(!weighed.is_empty(), "samples past the first {RECENT} s");
        for (at, rows, recent) in weighed {
            assert!(
                rows as u64 <= recent,
                "{name} grows: {rows} rows at {at:.1} s, {recent} uploads in the {RECENT} s before"
            );
        }
    }
    let most_tasks = samples.iter().map(|(_, _, rows)| rows[0]).max().unwrap_or(0);
    assert!(uploaded > 3 * most_tasks as u64, "{uploaded} uploaded: too few to show the bound");
    assert!(
        samples.iter().any(|(_, _, rows)| rows.iter().all(|n| *n > 0)),
        "every table had rows at some point: {:?}",
        samples.last()
    );
    let task = app.task(&unfinished_id, 0).await;
    assert_eq!(task["status"], "uploading", "an unfinished upload is never forgotten");
    app.stop().await;
}
