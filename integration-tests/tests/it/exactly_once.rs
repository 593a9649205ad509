//! The holes in exactly-once that the fault suite does not reach: a dead worker's entry behind
//! many live ones, a flush that fails after the write, a dead letter written twice.

use std::time::{Duration, Instant};

use integration_tests::{TestApp, TestOptions, eventually};
use serde_json::Value;

/// Plays a live worker holding `ids`: re-claims them to itself every 200 ms (what a heartbeat
/// does), so they never look idle.
fn keep_alive(
    redis_url: String,
    stream: String,
    group: String,
    ids: Vec<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = redis::Client::open(redis_url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        loop {
            let mut cmd = redis::cmd("XCLAIM");
            cmd.arg(&stream).arg(&group).arg("live-worker").arg(0);
            for id in &ids {
                cmd.arg(id);
            }
            let _: redis::Value = cmd.arg("JUSTID").query_async(&mut conn).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_entry_behind_many_live_ones_is_taken_over_within_three_idle_times() {
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let client = redis::Client::open(app.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&app.stream)
        .arg(&app.group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    // 150 entries a live worker holds, ahead of the dead worker's in the pending list.
    let mut live = Vec::new();
    for _ in 0..150 {
        let id: String = redis::cmd("XADD")
            .arg(&app.stream)
            .arg("*")
            .arg("task_id")
            .arg(uuid::Uuid::new_v4().to_string())
            .query_async(&mut conn)
            .await
            .unwrap();
        live.push(id);
    }
    let read = |consumer: &'static str, count: usize| {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&app.group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(&app.stream)
            .arg(">");
        cmd
    };
    let _: redis::Value = read("live-worker", 150).query_async(&mut conn).await.unwrap();
    let alive = keep_alive(app.redis_url.clone(), app.stream.clone(), app.group.clone(), live);
    // The dead worker read the real task's entry and died.
    let response = app.upload("orphan.txt", b"taken over".to_vec()).await;
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let _: redis::Value = read("dead-worker", 1).query_async(&mut conn).await.unwrap();

    let claim_idle = Duration::from_millis(1000);
    let mut config = app.worker_config(2);
    config.claim_idle_ms = claim_idle.as_millis() as u64;
    let started = Instant::now();
    let mut app = app;
    app.start_worker_with(config);
    let task = app.wait_finished(&id, Duration::from_secs(30)).await;
    let took = started.elapsed();
    assert_eq!(task["status"], "done");
    assert!(took <= 3 * claim_idle, "taken over after {took:?}, more than 3 × CLAIM_IDLE_MS");
    alive.abort();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_that_fails_after_the_write_still_leaves_one_line() {
    use integration_tests::fault::{Expect, FaultEnv};
    let env = FaultEnv::start(|_| {}).await.unwrap();
    // The worker's first flush fails after its write went through; the job retries its append.
    env.spawn_worker(&[("FAULT_FAIL_FLUSH_ONCE", "true")]).unwrap();
    let mut expected = std::collections::HashMap::new();
    for i in 0..20 {
        let bytes = format!("flush {i}").into_bytes();
        let md5 = integration_tests::md5_hex(&bytes);
        expected.insert(env.upload(&format!("f{i}.txt"), bytes).await.expect("202"), Expect::Done(md5));
    }
    let report = env.check("a failed flush", &expected, Duration::from_secs(60)).await;
    assert!(report.is_clean(), "one line per task though a flush failed after its write: {report:?}");
    assert!(
        env.worker_output(0).contains("the flush failed after the write"),
        "the fault fired: {}",
        env.worker_output(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stalled_between_its_commit_and_its_log_line_adds_none_after_a_redelivery_logged_it() {
    use integration_tests::eventually;
    use integration_tests::fault::{Expect, FaultEnv};
    let env = FaultEnv::start(|_| {}).await.unwrap();
    // Worker 0 commits the result, then stalls for 8 s before appending the line. Worker 1
    // takes the idle entry over (CLAIM_IDLE_MS 1.5 s), finds the result committed and no line,
    // and logs it; worker 0 then appends without searching, as a first delivery does.
    env.spawn_worker(&[("FAULT_PAUSE_AFTER_COMMIT_MS", "8000")]).unwrap();
    let bytes = b"stalled after its commit".to_vec();
    let md5 = integration_tests::md5_hex(&bytes);
    let id = env.upload("stalled.txt", bytes).await.expect("202");
    eventually(Duration::from_secs(30), "the result committed", || async {
        env.task(&id).await.filter(|task| task.status == shared::TaskStatus::Done).map(|_| ())
    })
    .await
    .unwrap();
    env.spawn_worker(&[]).unwrap();
    let expected = std::collections::HashMap::from([(id.clone(), Expect::Done(md5))]);
    let report = env.check("a stall between commit and log", &expected, Duration::from_secs(60)).await;
    assert!(report.is_clean(), "one line, written by the redelivery: {report:?}");
    eventually(Duration::from_secs(30), "worker 0 to resume and find the line", || async {
        env.worker_output(0).contains("the task's log line was already written").then_some(())
    })
    .await
    .unwrap_or_else(|_| panic!("worker 0 resumed: {}", env.worker_output(0)));
    let report = env.check("after worker 0 resumed", &expected, Duration::from_secs(10)).await;
    assert!(report.is_clean(), "still one line after worker 0's append: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_given_up_then_crashed_on_is_dead_lettered_once() {
    use integration_tests::fault::{Expect, FaultEnv};
    let env = FaultEnv::start(|c| {
        c.worker.max_deliveries = 2;
        c.worker.worker_concurrency = 1;
    })
    .await
    .unwrap();
    let id = env.upload("poison", b"poison".to_vec()).await.expect("202");
    // Attempts 1 and 2 crash after hashing; attempt 3 is past MAX_DELIVERIES, copies the job to
    // the dead-letter stream and crashes before recording the result; attempt 4 runs clean.
    for attempt in 1..=3 {
        let worker = env.spawn_worker(&[("FAULT_CRASH_AT", "after_hash")]).unwrap();
        let code = env.wait_worker_exit(worker, Duration::from_secs(30)).await.unwrap();
        assert_ne!(code, Some(0), "attempt {attempt} crashed");
    }
    env.spawn_worker(&[]).unwrap();
    let expected =
        std::collections::HashMap::from([(id.clone(), Expect::Failed("given up after 2 attempts".into()))]);
    let report = env.check("dead letter once", &expected, Duration::from_secs(60)).await;
    assert!(report.is_clean(), "{report:?}");
    let client = redis::Client::open(env.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let dead: usize = redis::cmd("XLEN").arg("md5:jobs:dead").query_async(&mut conn).await.unwrap();
    assert_eq!(dead, 1, "one dead letter, though the job was given up twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_size_and_by_sighup_during_kills_keeps_one_line_per_task_across_files() {
    use integration_tests::fault::FaultEnv;
    use rustix::process::Signal;
    // A line is ~200 bytes: a rotation every ~20 lines.
    let env = FaultEnv::start(|c| c.worker.log_max_bytes = Some(4096)).await.unwrap();
    env.spawn_worker(&[]).unwrap();
    env.spawn_worker(&[]).unwrap();
    let uploads = env.upload_many(300, 8, 5);
    tokio::pin!(uploads);
    let faults = async {
        for (at, fault) in [(60, "kill"), (120, "hup"), (180, "kill"), (240, "hup")] {
            tokio::time::timeout(Duration::from_secs(60), env.accepted(at))
                .await
                .expect("uploads before the fault");
            match fault {
                "kill" => {
                    let workers = env.workers.lock().unwrap().len();
                    env.kill_worker(workers - 2);
                    let spawned = env.spawn_worker(&[]).unwrap();
                    // The next fault's SIGHUP goes to this worker: let it get as far as `main`.
                    eventually(Duration::from_secs(60), "the new worker to start", || async {
                        env.worker_output(spawned).contains("md5-worker started").then_some(())
                    })
                    .await
                    .unwrap();
                }
                _ => {
                    let workers = env.workers.lock().unwrap().len();
                    env.signal_worker(workers - 1, Signal::HUP);
                }
            }
        }
    };
    let (expected, ()) = tokio::join!(&mut uploads, faults);
    let report = env.check("rotation during kills", &expected, Duration::from_secs(90)).await;
    assert!(report.is_clean(), "{report:?}");
    let dir = env.log_file.parent().unwrap();
    let rotated =
        std::fs::read_dir(dir).unwrap().filter(|e| e.as_ref().unwrap().file_name() != "md5.log").count();
    assert!(rotated >= 5, "the log rotated ({rotated} earlier files)");
}
