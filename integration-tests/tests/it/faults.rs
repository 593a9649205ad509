//! Fault tests: private Postgres and Redis on free ports, real worker and api processes, real
//! signals. Every scenario ends with the checker: each accepted upload `done` with the right MD5
//! (or `failed` where the scenario demands), exactly one well-formed log line per task, nothing
//! pending, nothing `queued` or `processing`, no upload file left.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use integration_tests::eventually;
use integration_tests::fault::{Expect, FaultEnv};
use integration_tests::{md5_hex, random_bytes};
use rustix::process::Signal;
use shared::TaskStatus;

const SETTLE: Duration = Duration::from_secs(90);
const BIG: usize = 256 * 1024 * 1024;

async fn wait_status(env: &FaultEnv, id: &str, status: TaskStatus) {
    eventually(Duration::from_secs(60), "the task's status", || async {
        (env.task(id).await?.status == status).then_some(())
    })
    .await
    .unwrap();
}

async fn upload_big(env: &FaultEnv) -> (String, Expect) {
    let bytes = random_bytes(BIG, 99);
    let md5 = md5_hex(&bytes);
    (env.upload("big.bin", bytes).await.expect("202"), Expect::Done(md5))
}

/// One job at a time, and a large upload hashed once stored (not while it arrives), so its
/// task stays `processing` for the whole hash.
fn one_worker_hashing_after_upload(config: &mut integration_tests::launcher::ServiceConfig) {
    config.worker.worker_concurrency = 1;
    config.api.hash_while_uploading_above_bytes = 0;
}

fn assert_clean(report: &integration_tests::fault::Report) {
    assert!(report.is_clean(), "the checker found problems: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_hash_has_its_job_finished_by_another() {
    let env = FaultEnv::start(one_worker_hashing_after_upload).await.unwrap();
    env.spawn_worker(&[]).unwrap();
    let (id, expect) = upload_big(&env).await;
    wait_status(&env, &id, TaskStatus::Processing).await;
    env.kill_worker(0);
    assert_eq!(env.task(&id).await.unwrap().status, TaskStatus::Processing, "killed mid-hash");
    env.spawn_worker(&[]).unwrap();
    let report = env.check("kill -9 mid-hash", &HashMap::from([(id.clone(), expect)]), SETTLE).await;
    assert_clean(&report);
    assert_eq!(env.task(&id).await.unwrap().attempts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_at_any_step_boundary_leaves_one_result_and_one_line() {
    let env = FaultEnv::start(|c| c.worker.worker_concurrency = 1).await.unwrap();
    let mut expected = HashMap::new();
    for (n, step) in ["after_claim", "after_hash", "after_commit", "after_log", "before_ack", "before_mark"]
        .iter()
        .enumerate()
    {
        let worker = env.spawn_worker(&[("FAULT_CRASH_AT", step)]).unwrap();
        let bytes = random_bytes(10_000 + n, n as u64);
        let id = env.upload(step, bytes.clone()).await.expect("202");
        let code = env.wait_worker_exit(worker, Duration::from_secs(30)).await.unwrap();
        assert_eq!(code, None, "the worker aborted at {step}");
        assert!(env.worker_output(worker).contains(&format!("aborting at {step}")));
        expected.insert(id, Expect::Done(md5_hex(&bytes)));
    }
    env.spawn_worker(&[]).unwrap();
    let report = env.check("kill -9 at each step boundary", &expected, SETTLE).await;
    assert_clean(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_worker_that_wakes_after_a_takeover_records_nothing() {
    let env = FaultEnv::start(one_worker_hashing_after_upload).await.unwrap();
    env.spawn_worker(&[]).unwrap();
    let (id, expect) = upload_big(&env).await;
    wait_status(&env, &id, TaskStatus::Processing).await;
    env.signal_worker(0, Signal::STOP);
    env.spawn_worker(&[]).unwrap();
    wait_status(&env, &id, TaskStatus::Done).await;
    env.signal_worker(0, Signal::CONT);
    eventually(Duration::from_secs(30), "the stalled worker to notice it lost the lease", || async {
        env.worker_output(0).contains("lease lost").then_some(())
    })
    .await
    .unwrap();
    let report = env
        .check("SIGSTOP past the lease, then SIGCONT", &HashMap::from([(id.clone(), expect)]), SETTLE)
        .await;
    assert_clean(&report);
    let task = env.task(&id).await.unwrap();
    assert_eq!(task.attempts, 2);
    let lines = integration_tests::read_log(&env.log_file).unwrap();
    assert_eq!(lines[0].worker, task.worker.unwrap(), "the line is the new owner's");
}

/// Uploads `count` files in the background while `fault` runs once `trigger` of them were accepted.
async fn load_with_fault<F, Fut>(
    env: &FaultEnv,
    count: usize,
    trigger: usize,
    fault: F,
) -> HashMap<String, Expect>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let uploads = env.upload_many(count, 8, 1);
    tokio::pin!(uploads);
    let trigger = tokio::time::timeout(Duration::from_secs(60), env.accepted(trigger));
    tokio::select! {
        expected = &mut uploads => panic!("the load ended before the fault ({} accepted)", expected.len()),
        waited = trigger => waited.expect("uploads accepted before the fault"),
    }
    fault().await;
    uploads.await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flushall_in_the_middle_of_a_load_loses_nothing() {
    let env = FaultEnv::start(|_| {}).await.unwrap();
    env.spawn_worker(&[]).unwrap();
    env.spawn_worker(&[]).unwrap();
    let expected = load_with_fault(&env, 300, 100, || async { env.redis.flushall().await.unwrap() }).await;
    assert_clean(&env.check("Redis FLUSHALL mid-load", &expected, SETTLE).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_without_persistence_mid_load_loses_nothing() {
    let env = FaultEnv::start(|_| {}).await.unwrap();
    env.spawn_worker(&[]).unwrap();
    env.spawn_worker(&[]).unwrap();
    let expected = load_with_fault(&env, 300, 100, || async {
        env.redis.kill();
        env.redis.start().unwrap();
    })
    .await;
    assert_clean(&env.check("Redis restart without persistence", &expected, SETTLE).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_while_redis_is_down_get_202_and_run_once_it_is_back() {
    let env = FaultEnv::start(|_| {}).await.unwrap();
    env.spawn_worker(&[]).unwrap();
    env.redis.kill();
    let expected = env.upload_many(30, 4, 2).await;
    assert_eq!(expected.len(), 30, "every upload accepted while Redis is down");
    env.redis.start().unwrap();
    assert_clean(&env.check("Redis down during uploads", &expected, SETTLE).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashing_mid_load_loses_no_accepted_upload() {
    let env = FaultEnv::start(|_| {}).await.unwrap();
    env.spawn_worker(&[]).unwrap();
    env.spawn_worker(&[]).unwrap();
    let expected = load_with_fault(&env, 300, 100, || async {
        env.pg.stop_immediate().unwrap();
        // While it is down, uploads are refused with 503, promptly.
        let started = Instant::now();
        assert_eq!(env.upload("refused", b"x".to_vec()).await, None);
        assert!(started.elapsed() < Duration::from_secs(5));
        env.pg.start().unwrap();
    })
    .await;
    assert!(expected.len() >= 100);
    assert_clean(&env.check("Postgres stopped mid-load", &expected, SETTLE).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_crashes_every_worker_is_failed_after_max_deliveries_and_dead_lettered() {
    let env = FaultEnv::start(|c| {
        c.worker.max_deliveries = 2;
        c.worker.worker_concurrency = 1;
    })
    .await
    .unwrap();
    let id = env.upload("poison", b"poison".to_vec()).await.expect("202");
    // Act as a supervisor that restarts crashing workers, until the task is given up.
    let mut crashes = 0;
    loop {
        let worker = env.spawn_worker(&[("FAULT_CRASH_AT", "after_claim")]).unwrap();
        let exited = tokio::select! {
            code = env.wait_worker_exit(worker, Duration::from_secs(30)) => Some(code.unwrap()),
            () = wait_status(&env, &id, TaskStatus::Failed) => None,
        };
        match exited {
            Some(_) => crashes += 1,
            None => break,
        }
        assert!(crashes <= 2, "the job kept being retried");
    }
    assert_eq!(crashes, 2);
    let expected = HashMap::from([(id.clone(), Expect::Failed("given up after 2 attempts".into()))]);
    assert_clean(&env.check("poison job", &expected, SETTLE).await);
    let client = redis::Client::open(env.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let dead: usize = redis::cmd("XLEN").arg("md5:jobs:dead").query_async(&mut conn).await.unwrap();
    assert_eq!(dead, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_load_loses_no_job_and_exits_0() {
    let env = FaultEnv::start(|_| {}).await.unwrap();
    env.spawn_worker(&[]).unwrap();
    env.spawn_worker(&[]).unwrap();
    let expected = load_with_fault(&env, 200, 50, || async { env.signal_worker(0, Signal::TERM) }).await;
    assert_eq!(env.wait_worker_exit(0, Duration::from_secs(30)).await.unwrap(), Some(0));
    assert_clean(&env.check("SIGTERM mid-load", &expected, SETTLE).await);
    let mut env = env;
    let api = env.api.as_mut().unwrap();
    rustix::process::kill_process(rustix::process::Pid::from_child(api), Signal::TERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = api.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the api did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_under_random_kills_redis_loss_and_postgres_crashes_loses_nothing() {
    // The log also rotates every ~300 lines, and every replacement worker's first flush fails
    // after its write.
    let env = FaultEnv::start(|c| c.worker.log_max_bytes = Some(65536)).await.unwrap();
    env.spawn_worker(&[]).unwrap();
    env.spawn_worker(&[]).unwrap();
    // At least 2,000 uploads, and as many more as it takes for two full rounds of faults.
    let faults_applied = std::sync::atomic::AtomicUsize::new(0);
    let uploads = async {
        let mut expected = HashMap::new();
        let mut batch = 0;
        while expected.len() < 2000 || faults_applied.load(std::sync::atomic::Ordering::SeqCst) < 6 {
            expected.extend(env.upload_many(250, 16, 100 + batch).await);
            batch += 1;
        }
        expected
    };
    tokio::pin!(uploads);
    let mut rng_state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut recoveries: Vec<(&str, Duration)> = Vec::new();
    let mut round: Vec<u64> = Vec::new();
    let expected = loop {
        tokio::select! {
            expected = &mut uploads => break expected,
            () = tokio::time::sleep(Duration::from_millis(1000)) => {}
        }
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        let before = env.done_count().await.unwrap_or(0);
        let started = Instant::now();
        // Every fault comes once per round of three, in a random order.
        if round.is_empty() {
            round = vec![0, 1, 2];
            round.swap(0, (rng_state % 3) as usize);
            round.swap(1, 1 + (rng_state / 3 % 2) as usize);
        }
        let fault = match round.pop().expect("refilled above") {
            0 => {
                let victim = env.workers.lock().unwrap().len() - 1 - (rng_state as usize / 3) % 2;
                env.kill_worker(victim);
                env.spawn_worker(&[("FAULT_FAIL_FLUSH_ONCE", "true")]).unwrap();
                "kill -9 a worker"
            }
            1 => {
                env.redis.flushall().await.unwrap();
                "Redis FLUSHALL"
            }
            _ => {
                env.pg.stop_immediate().unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
                env.pg.start().unwrap();
                "Postgres crash"
            }
        };
        let recovered = eventually(Duration::from_secs(30), "progress after the fault", || async {
            (env.done_count().await? > before).then_some(())
        })
        .await;
        if recovered.is_ok() {
            recoveries.push((fault, started.elapsed()));
        }
        faults_applied.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    };
    let report = env.check("soak with chaos", &expected, Duration::from_secs(120)).await;
    for (fault, took) in &recoveries {
        println!("[soak] {fault}: progress again after {:.2}s", took.as_secs_f64());
    }
    println!(
        "[soak] accepted={} faults={} lost={} duplicated={} stuck={}",
        expected.len(),
        recoveries.len(),
        report.lost,
        report.duplicated,
        report.stuck
    );
    assert!(recoveries.len() >= 6, "every kind of fault was applied twice, and progress resumed after each");
    assert_clean(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_postgres_is_not_up_yet_stops_api_and_worker_with_status_0() {
    use integration_tests::launcher::{Launch, ServiceConfig, free_port};
    let root = std::env::temp_dir().join(format!("md5-startup-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&root).unwrap();
    // Nothing listens on this port: the processes wait for Postgres, as in any start order.
    let database_url = format!("postgres://postgres@127.0.0.1:{}/md5", free_port());
    let config = ServiceConfig::new(&database_url, &integration_tests::redis_url(), &root, free_port());
    let (api_log, worker_log) = (root.join("api.log"), root.join("worker.log"));
    let mut processes = [
        (Launch::api(&config.api).stderr_to(&api_log).spawn().unwrap(), api_log),
        (Launch::worker(&config.worker).stderr_to(&worker_log).spawn().unwrap(), worker_log),
    ];
    for (_, log) in &processes {
        let waiting = integration_tests::eventually(
            Duration::from_secs(20),
            "the process to wait for Postgres",
            || async { std::fs::read_to_string(log).ok()?.contains("not ready; retrying").then_some(()) },
        )
        .await;
        assert!(waiting.is_ok(), "{}", std::fs::read_to_string(log).unwrap_or_default());
    }
    for (child, _) in &processes {
        rustix::process::kill_process(rustix::process::Pid::from_child(child), Signal::TERM).unwrap();
    }
    for (child, log) in &mut processes {
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "still running 10 s after SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            status.code(),
            Some(0),
            "stopped, not killed: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_while_the_worker_waits_for_postgres_rotates_once_it_runs_instead_of_killing_it() {
    // logrotate's `postrotate` signals every worker, also one still starting.
    let env = FaultEnv::start(|_| {}).await.unwrap();
    env.pg.stop_immediate().unwrap();
    let worker = env.spawn_worker(&[]).unwrap();
    let waiting = eventually(Duration::from_secs(20), "the worker to wait for Postgres", || async {
        env.worker_output(worker).contains("not ready; retrying").then_some(())
    })
    .await;
    assert!(waiting.is_ok(), "{}", env.worker_output(worker));
    env.signal_worker(worker, Signal::HUP);
    env.pg.start().unwrap();
    let bytes = b"after a hangup".to_vec();
    let id = env.upload("hup.txt", bytes.clone()).await.expect("202");
    let exited = env.workers.lock().unwrap()[worker].child.try_wait().unwrap();
    assert_eq!(exited, None, "the worker is alive: {}", env.worker_output(worker));
    let report = env
        .check("SIGHUP during start-up", &HashMap::from([(id, Expect::Done(md5_hex(&bytes)))]), SETTLE)
        .await;
    assert_clean(&report);
    // The hangup heard during start-up was kept: the log rotated (or was found empty) once the
    // worker ran, whichever came first of that and the task's line.
    let dir = env.log_file.parent().unwrap();
    eventually(Duration::from_secs(20), "the start-up's SIGHUP to be acted on", || async {
        let rotated =
            std::fs::read_dir(dir).ok()?.filter(|e| e.as_ref().unwrap().file_name() != "md5.log").count();
        (rotated > 0 || env.worker_output(worker).contains("nothing to rotate")).then_some(())
    })
    .await
    .unwrap_or_else(|err| panic!("{err}: {}", env.worker_output(worker)));
}
