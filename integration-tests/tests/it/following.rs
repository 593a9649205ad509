//! Hashing while uploading (`shared::follow`), against real processes: a worker hashes a large
//! upload's bytes while the client still holds its last part back, and the result, the log line
//! and the clean-up are those of any task; a cut-off upload, a worker killed with `kill -9` or
//! told to stop while following, a resumable upload paused between appends or terminated while
//! followed, and an expected digest that differs each end as they must.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use integration_tests::eventually;
use integration_tests::fault::{Expect, FaultEnv};
use integration_tests::{md5_hex, random_bytes};
use tokio::sync::mpsc;

const MIB: usize = 1024 * 1024;
/// The upload: above the 32 MiB from which uploads are followed.
const SIZE: usize = 48 * MIB;
/// What the client holds back until the worker has hashed the rest.
const HELD_BACK: usize = 8 * MIB;
const SETTLE: Duration = Duration::from_secs(60);

type Feed = mpsc::Sender<Result<Bytes, std::io::Error>>;

/// Starts a raw upload of `length` bytes whose body the test feeds; the answer to come.
fn raw_upload(
    env: &FaultEnv,
    length: usize,
    headers: &[(&str, &str)],
) -> (Feed, tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>) {
    let (feed, mut body) = mpsc::channel(2);
    let stream = futures_util::stream::poll_fn(move |cx| body.poll_recv(cx));
    let mut request = env
        .client
        .post(format!("{}/api/v1/hashes", env.api_url))
        .header("Content-Type", "application/octet-stream")
        .header("Content-Length", length);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(reqwest::Body::wrap_stream(stream));
    (feed, tokio::spawn(request.send()))
}

type Answer = tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>;

/// Services with one worker, and a raw upload of [`SIZE`] bytes (from `seed`) whose first `sent`
/// bytes are sent: the services, the bytes, the rest of the body to feed and the answer to come.
async fn start_upload(seed: u64, sent: usize) -> (FaultEnv, Vec<u8>, Feed, Answer) {
    start_upload_with(seed, sent, &[]).await
}

/// [`start_upload`] with these request headers.
async fn start_upload_with(
    seed: u64,
    sent: usize,
    headers: &[(&str, &str)],
) -> (FaultEnv, Vec<u8>, Feed, Answer) {
    let env = FaultEnv::start(|_| {}).await.unwrap();
    env.spawn_worker(&[]).unwrap();
    let bytes = random_bytes(SIZE, seed);
    let (feed, answer) = raw_upload(&env, SIZE, headers);
    send(&feed, &bytes[..sent]).await;
    (env, bytes, feed, answer)
}

async fn send(feed: &Feed, bytes: &[u8]) {
    for chunk in bytes.chunks(MIB) {
        feed.send(Ok(Bytes::copy_from_slice(chunk))).await.expect("the request reads its body");
    }
}

async fn redis(env: &FaultEnv) -> redis::aio::MultiplexedConnection {
    redis::Client::open(env.redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// The one upload being followed: its keys' `hashed` and `requested` fields, once it has keys.
async fn followed(env: &FaultEnv) -> Option<(u64, String)> {
    let mut conn = redis(env).await;
    let pattern = format!("{}:follow:*", env.config.worker.stream.jobs_stream);
    let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(&mut conn).await.ok()?;
    let meta = keys.into_iter().find(|key| !key.ends_with(":bytes"))?;
    let (hashed, requested): (Option<u64>, Option<String>) =
        redis::cmd("HMGET").arg(&meta).arg("hashed").arg("requested").query_async(&mut conn).await.ok()?;
    Some((hashed.unwrap_or(0), requested.unwrap_or_default()))
}

/// The task as `GET` answers it, if it answers.
async fn task_json(env: &FaultEnv, id: &str) -> Option<serde_json::Value> {
    let url = format!("{}/api/v1/hashes/{id}", env.api_url);
    env.client.get(url).send().await.ok()?.json().await.ok()
}

/// Waits until the worker has hashed at least `bytes` of the upload.
async fn hashed_at_least(env: &FaultEnv, bytes: usize) {
    eventually(SETTLE, "the worker to hash the bytes sent so far", || async {
        followed(env).await.filter(|(hashed, _)| *hashed >= bytes as u64).map(drop)
    })
    .await
    .unwrap();
}

async fn accepted(answer: Answer) -> String {
    let response = answer.await.unwrap().expect("an answer");
    assert_eq!(response.status(), 202);
    let task: serde_json::Value = response.json().await.unwrap();
    task["id"].as_str().unwrap().to_owned()
}

/// Creates a resumable upload of [`SIZE`] bytes: its URL and its task's id.
async fn create_resumable(env: &FaultEnv) -> (String, String) {
    let created = env
        .client
        .post(format!("{}/api/v1/uploads", env.api_url))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", SIZE)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let url = format!("{}{}", env.api_url, created.headers()["location"].to_str().unwrap());
    let id = url.rsplit('/').next().unwrap().to_owned();
    (url, id)
}

/// Appends `part` at `offset` to the resumable upload at `url`.
fn append(
    env: &FaultEnv,
    url: &str,
    offset: usize,
    part: &[u8],
) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> + use<> {
    env.client
        .patch(url)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", offset)
        .header("Content-Type", "application/offset+octet-stream")
        .body(part.to_vec())
        .send()
}

fn worker_logs(env: &FaultEnv, count: usize) -> String {
    (0..count).map(|index| env.worker_output(index)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_is_hashed_while_it_arrives_and_ends_as_any_task() {
    let (env, bytes, feed, answer) = start_upload(35, SIZE - HELD_BACK).await;
    // Every byte the client has sent is hashed before the upload ends: the api flushed and
    // announced them (at the latest when the body paused), the worker read them.
    hashed_at_least(&env, SIZE - HELD_BACK).await;
    send(&feed, &bytes[SIZE - HELD_BACK..]).await;
    drop(feed);
    let id = accepted(answer).await;
    let report = env
        .check("hashed while uploading", &HashMap::from([(id, Expect::Done(md5_hex(&bytes)))]), SETTLE)
        .await;
    assert!(report.is_clean(), "{report:?}");
    let log = worker_logs(&env, 1);
    assert!(log.contains("hash.while_uploading_bytes"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_upload_cut_off_leaves_no_row_no_line_no_file_and_nothing_pending() {
    let (env, _, feed, answer) = start_upload(36, SIZE / 2 + 8 * MIB).await;
    hashed_at_least(&env, SIZE / 2 - 8 * MIB).await;
    feed.send(Err(std::io::Error::other("the client goes away"))).await.unwrap();
    drop(feed);
    assert!(answer.await.unwrap().is_err(), "the cut-off upload got an answer");
    // No task: nothing pending (the follower let go), no file, no line, no row.
    let report = env.check("cut off while followed", &HashMap::new(), SETTLE).await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(env.row_count().await, Some(0));
    let log = worker_logs(&env, 1);
    assert!(log.contains("the upload ended without a task"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_following_is_taken_over_and_the_task_logged_once() {
    let (env, bytes, feed, answer) = start_upload(37, SIZE - HELD_BACK).await;
    hashed_at_least(&env, 16 * MIB).await;
    env.kill_worker(0);
    env.spawn_worker(&[]).unwrap();
    send(&feed, &bytes[SIZE - HELD_BACK..]).await;
    drop(feed);
    let id = accepted(answer).await;
    let report = env
        .check("kill -9 while following", &HashMap::from([(id, Expect::Done(md5_hex(&bytes)))]), SETTLE)
        .await;
    assert!(report.is_clean(), "{report:?}");
    assert!(worker_logs(&env, 2).contains("took over idle jobs"), "the follow job was taken over");
}

/// A worker told to stop (`SIGTERM`) while it follows an upload lets the upload go at once
/// rather than leave its entry to a takeover after `CLAIM_IDLE_MS`: with that set to two
/// minutes, another worker has the task done, logged once, well within them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_while_following_lets_the_upload_go_for_another_at_once() {
    let env = FaultEnv::start(|config| config.worker.claim_idle_ms = 120_000).await.unwrap();
    env.spawn_worker(&[]).unwrap();
    let bytes = random_bytes(SIZE, 44);
    let (feed, answer) = raw_upload(&env, SIZE, &[]);
    send(&feed, &bytes[..SIZE - HELD_BACK]).await;
    hashed_at_least(&env, 16 * MIB).await;
    env.signal_worker(0, rustix::process::Signal::TERM);
    env.wait_worker_exit(0, Duration::from_secs(30)).await.unwrap();
    env.spawn_worker(&[]).unwrap();
    send(&feed, &bytes[SIZE - HELD_BACK..]).await;
    drop(feed);
    let id = accepted(answer).await;
    let report = env
        .check(
            "stopped while following",
            &HashMap::from([(id, Expect::Done(md5_hex(&bytes)))]),
            Duration::from_secs(30),
        )
        .await;
    assert!(report.is_clean(), "{report:?}");
    let log = worker_logs(&env, 2);
    assert!(log.contains("the upload still arriving is let go"), "{log}");
    assert!(!log.contains("took over idle jobs"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_resumable_upload_is_let_go_and_hashed_when_it_completes() {
    let env = FaultEnv::start(|_| {}).await.unwrap();
    env.spawn_worker(&[]).unwrap();
    let bytes = random_bytes(SIZE, 38);
    let (url, id) = create_resumable(&env).await;
    let patch = |offset: usize, part: &[u8]| append(&env, &url, offset, part);
    let first = SIZE - HELD_BACK;
    assert_eq!(patch(0, &bytes[..first]).await.unwrap().status(), 204);
    hashed_at_least(&env, first).await;
    // While uploading, the task shows the bytes received and the bytes hashed.
    let task = task_json(&env, &id).await.unwrap();
    assert_eq!(task["status"], "uploading");
    assert_eq!(task["bytes_received"], first as u64);
    eventually(SETTLE, "the task to show the bytes hashed", || async {
        (task_json(&env, &id).await?["progress"]["bytes_hashed"] == first as u64).then_some(())
    })
    .await
    .unwrap();
    // The pause outlasts the follower's patience: it lets go, and holds no entry.
    eventually(SETTLE, "the worker to let the paused upload go", || async {
        followed(&env).await.filter(|(_, requested)| requested == "0").map(drop)
    })
    .await
    .unwrap();
    eventually(SETTLE, "nothing pending", || async { (env.pending().await.ok()? == 0).then_some(()) })
        .await
        .unwrap();
    let answer = patch(first, &bytes[first..]).await.unwrap();
    assert_eq!(answer.status(), 204);
    let report =
        env.check("resumed upload", &HashMap::from([(id, Expect::Done(md5_hex(&bytes)))]), SETTLE).await;
    assert!(report.is_clean(), "{report:?}");
    let log = worker_logs(&env, 1);
    assert!(log.contains("letting go"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_still_arriving_hold_at_most_half_the_job_slots_and_a_small_job_is_served() {
    // Two job slots: one may follow an upload, the other stays for jobs that are ready.
    let env = FaultEnv::start(|c| c.worker.worker_concurrency = 2).await.unwrap();
    env.spawn_worker(&[]).unwrap();
    let large: Vec<Vec<u8>> = (0..2).map(|n| random_bytes(SIZE, 40 + n)).collect();
    let mut uploads = Vec::new();
    for bytes in &large {
        let (feed, answer) = raw_upload(&env, SIZE, &[]);
        send(&feed, &bytes[..SIZE - HELD_BACK]).await;
        uploads.push((feed, answer));
    }
    // Both clients go on sending slowly, 256 KiB every 600 ms for ~19 s: every piece is
    // announced, so a follower never runs out of news and never lets go.
    let trickle = async {
        for piece in (SIZE - HELD_BACK..SIZE).step_by(256 * 1024) {
            for ((feed, _), bytes) in uploads.iter().zip(&large) {
                feed.send(Ok(Bytes::copy_from_slice(&bytes[piece..piece + 256 * 1024]))).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
    };
    let small = async {
        let bytes = random_bytes(10_000, 42);
        let id = env.upload("small.bin", bytes.clone()).await.expect("202");
        eventually(Duration::from_secs(10), "the small job to be done beside the uploads", || async {
            (env.task(&id).await?.status == shared::TaskStatus::Done).then_some(())
        })
        .await
        .unwrap();
        (id, md5_hex(&bytes))
    };
    let ((small_id, small_md5), ()) = tokio::join!(small, trickle);
    let mut expected = HashMap::from([(small_id, Expect::Done(small_md5))]);
    for ((feed, answer), bytes) in uploads.into_iter().zip(&large) {
        drop(feed);
        expected.insert(accepted(answer).await, Expect::Done(md5_hex(bytes)));
    }
    let report = env.check("followers capped", &expected, SETTLE).await;
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_killed_mid_upload_leaves_no_task_and_its_follower_lets_go() {
    // A body idle for 1 s is dead, so the restarted api's janitor removes the partial file
    // once it is 2 × (1 + 5) s old.
    let mut env = FaultEnv::start(|c| c.api.body_idle_timeout_seconds = 1).await.unwrap();
    env.spawn_worker(&[]).unwrap();
    let bytes = random_bytes(SIZE, 39);
    let (feed, answer) = raw_upload(&env, SIZE, &[]);
    send(&feed, &bytes[..SIZE - HELD_BACK]).await;
    hashed_at_least(&env, 16 * MIB).await;
    let mut api = env.api.take().expect("the api runs");
    api.kill().unwrap();
    api.wait().unwrap();
    drop(feed);
    assert!(answer.await.unwrap().is_err(), "an upload cut by the api's death got an answer");
    env.start_api().unwrap();
    // No row, no line, nothing pending (the follower let go), and no file once the janitor ran.
    let report = env.check("api killed while followed", &HashMap::new(), SETTLE).await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(env.row_count().await, Some(0));
    assert!(worker_logs(&env, 1).contains("letting go"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expected_digest_is_checked_on_a_followed_upload_and_a_mismatch_fails_it() {
    use base64::Engine as _;
    use sha2::Digest as _;
    // The client expects the SHA-256 of other bytes: the worker computes SHA-256 beside MD5 while
    // the upload arrives, and the task fails naming both values, with its one line.
    let other = random_bytes(1024, 40);
    let wrong = sha2::Sha256::digest(&other);
    let header = format!("sha-256=:{}:", base64::engine::general_purpose::STANDARD.encode(wrong));
    let (env, bytes, feed, answer) =
        start_upload_with(41, SIZE - HELD_BACK, &[("Repr-Digest", &header)]).await;
    hashed_at_least(&env, SIZE - HELD_BACK).await;
    send(&feed, &bytes[SIZE - HELD_BACK..]).await;
    drop(feed);
    let id = accepted(answer).await;
    let computed = hex::encode(sha2::Sha256::digest(&bytes));
    let error = format!("sha-256 mismatch: expected {}, computed {computed}", hex::encode(wrong));
    let report =
        env.check("a followed upload's digest", &HashMap::from([(id, Expect::Failed(error))]), SETTLE).await;
    assert!(report.is_clean(), "{report:?}");
    assert!(worker_logs(&env, 1).contains("hash.while_uploading_bytes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumable_upload_terminated_while_followed_ends_cancelled_and_its_follower_stops() {
    let env = FaultEnv::start(|_| {}).await.unwrap();
    env.spawn_worker(&[]).unwrap();
    let bytes = random_bytes(SIZE, 42);
    let (url, id) = create_resumable(&env).await;
    let first = SIZE - HELD_BACK;
    assert_eq!(append(&env, &url, 0, &bytes[..first]).await.unwrap().status(), 204);
    hashed_at_least(&env, first).await;
    // The client gives up on it while the worker follows it (before the 5 s it waits for news).
    let terminated = env.client.delete(&url).header("Tus-Resumable", "1.0.0").send().await.unwrap();
    assert_eq!(terminated.status(), 204);
    assert_eq!(env.task(&id).await.unwrap().status, shared::TaskStatus::Cancelled);
    // Stopped by the cancel (the running-hash registry) or by the upload's end, whichever the
    // worker sees first; its entry acknowledged either way.
    eventually(SETTLE, "the follower to stop and nothing to be pending", || async {
        let log = worker_logs(&env, 1);
        let stopped = log.contains("stopped its hash") || log.contains("the upload ended without a task");
        (stopped && env.pending().await.ok()? == 0).then_some(())
    })
    .await
    .unwrap_or_else(|err| panic!("{err}: {}", worker_logs(&env, 1)));
    assert!(!worker_logs(&env, 1).contains("letting go"), "stopped by the end, not by the pause");
    assert!(integration_tests::read_log(&env.log_file).unwrap().is_empty(), "no log line");
    assert!(integration_tests::list_files(&env.upload_dir).is_empty(), "no file left");
    assert_eq!(env.task(&id).await.unwrap().status, shared::TaskStatus::Cancelled);
}

/// A large upload's whole blocks pass beside the page cache both ways: the api writes them and
/// the worker reads them directly (`api::storage::direct`, `worker::direct_read`), so a large
/// upload neither pays for the copy into the cache nor evicts what the host caches for others
/// (Postgres' pages). After a followed upload, with the file kept, at most its last blocks are
/// resident. Needs `fincore` (util-linux: `apt-get install util-linux`). Where the upload folder
/// is not a local disk (tmpfs, a network filesystem), bytes go through the cache by design, so
/// there only the result is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_uploads_bytes_pass_beside_the_page_cache_and_hash_right() {
    let env = FaultEnv::start(|config| config.worker.keep_uploads = true).await.unwrap();
    env.spawn_worker(&[]).unwrap();
    let bytes = random_bytes(SIZE, 41);
    let (feed, answer) = raw_upload(&env, SIZE, &[]);
    send(&feed, &bytes).await;
    drop(feed);
    let id = accepted(answer).await;
    let task = eventually(SETTLE, "the task to be done", || async {
        task_json(&env, &id).await.filter(|task| task["status"] == "done")
    })
    .await
    .unwrap();
    assert_eq!(task["md5"], md5_hex(&bytes).as_str());

    let stored = shared::config::upload_path(&env.upload_dir, id.parse().unwrap());
    if !shared::filesystems::on_local_disk(std::fs::File::open(&stored).unwrap()) {
        return;
    }
    let output = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(&stored)
        .output()
        .expect("fincore runs (util-linux)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let resident: u64 = String::from_utf8_lossy(&output.stdout).trim().parse().unwrap();
    assert!(
        resident <= 4 * MIB as u64,
        "{resident} bytes of the {SIZE}-byte upload are in the page cache: its blocks were not written or read directly\n{}",
        worker_logs(&env, 1)
    );
}
