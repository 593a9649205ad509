//! Live tasks: progress on `GET`, event streams (`GET /api/v1/hashes/{id}/events`) and cancel
//! (`DELETE /api/v1/hashes/{id}`), against real Postgres, Redis and workers.

use std::net::IpAddr;
use std::time::Duration;

use futures_util::StreamExt as _;
use integration_tests::api_process::ApiProcess;
use integration_tests::{TestApp, TestOptions, eventually, random_bytes};
use serde_json::Value;

/// A big file: long enough to hash (seconds) that progress and a cancel happen mid-way.
pub(crate) const LARGE: u64 = 2 << 30;
const CHUNK: usize = 1 << 20;

/// One event of a stream.
#[derive(Debug)]
struct SseEvent {
    event: String,
    id: String,
    data: Value,
}

/// A Server-Sent Events reader over a response (parsed here, by the spec's line rules).
struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

impl EventStream {
    async fn open(client: &reqwest::Client, url: &str, last_event_id: Option<&str>) -> EventStream {
        let mut request = client.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("the api answers");
        assert_eq!(response.status(), 200, "{:?}", response.headers());
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        EventStream { response, buffer: String::new() }
    }

    /// The next event (comments skipped); `None` when the server ended the stream.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = (String::from("message"), String::new(), String::new());
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        event = value.trim_start().to_owned();
                    } else if let Some(value) = line.strip_prefix("id:") {
                        id = value.trim_start().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if !data.is_empty() {
                    return Some(SseEvent {
                        event,
                        id,
                        data: serde_json::from_str(&data).expect("JSON data"),
                    });
                }
            }
            let chunk = self.response.chunk().await.expect("the stream reads")?;
            self.buffer.push_str(std::str::from_utf8(&chunk).expect("UTF-8 events"));
        }
    }
}

impl EventStream {
    /// Reads for `during`, expecting no event; the keep-alive comments seen.
    async fn keep_alives_during(&mut self, during: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + during;
        let mut comments = 0;
        while let Ok(chunk) = tokio::time::timeout_at(deadline, self.response.chunk()).await {
            let chunk = chunk.expect("the stream reads").expect("the stream stays open");
            let text = std::str::from_utf8(&chunk).expect("UTF-8");
            assert!(!text.contains("data:"), "no event while the task waits: {text:?}");
            comments += text.lines().filter(|line| line.starts_with(':')).count();
        }
        comments
    }
}

/// Chunk `n` of the large test file: pseudo-random, distinct per chunk.
fn large_chunk(base: &[u8], n: u64) -> bytes::Bytes {
    let mut chunk = base.to_vec();
    chunk[..8].copy_from_slice(&n.to_le_bytes());
    bytes::Bytes::from(chunk)
}

/// The large file's MD5, computed here from the same chunks.
fn large_md5(size: u64) -> String {
    use md5::Digest as _;
    let base = random_bytes(CHUNK, 99);
    let mut md5 = md5::Md5::new();
    for n in 0..size / CHUNK as u64 {
        md5.update(large_chunk(&base, n));
    }
    hex::encode(md5.finalize())
}

/// Uploads the large file as a raw body streamed from memory chunks (never held whole); returns
/// the task's id.
pub(crate) async fn upload_large(client: &reqwest::Client, base_url: &str, size: u64) -> String {
    let base = random_bytes(CHUNK, 99);
    let chunks = futures_util::stream::iter(0..size / CHUNK as u64)
        .map(move |n| Ok::<_, std::io::Error>(large_chunk(&base, n)));
    let response = client
        .post(format!("{base_url}/api/v1/hashes"))
        .header("content-type", "application/octet-stream")
        .header("content-length", size.to_string())
        .header("content-disposition", "attachment; filename=\"large.bin\"")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("the api answers");
    assert_eq!(response.status(), 202);
    response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

/// Uploads up to 3 GiB, hashed once stored (not while they arrive), so that a large task stays
/// `processing` for its whole hash.
pub(crate) fn large_options() -> TestOptions {
    TestOptions::default().api(|c| {
        c.max_upload_bytes = 3 << 30;
        c.hash_while_uploading_above_bytes = 0;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_task_cancelled_is_never_hashed_or_logged_and_only_unfinished_tasks_cancel() {
    let mut app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let upload = |name: &'static str, seed: u64| {
        let app = &app;
        async move {
            let response = app.upload(name, random_bytes(100_000, seed)).await;
            assert_eq!(response.status(), 202);
            response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
        }
    };
    let (cancelled, kept) = (upload("cancel-me.bin", 1).await, upload("keep-me.bin", 2).await);
    assert_eq!(app.upload_files().len(), 2);
    let base_url = app.base_url.clone();
    let url = |id: &str| format!("{base_url}/api/v1/hashes/{id}/cancel");

    let response = app.client.post(url(&cancelled)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let task: Value = response.json().await.unwrap();
    assert_eq!(task["status"], "cancelled", "{task}");
    assert_eq!(task["md5"], Value::Null);
    assert_eq!(app.upload_files().len(), 1, "its file is removed at once");
    // Cancelling again answers the same; unknown and malformed ids are 404.
    let again = app.client.post(url(&cancelled)).send().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["status"], "cancelled");
    let unknown = app.client.post(url("019acb5e-4f3a-7c21-9d0e-5b6f7a8c9d01")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(app.client.post(url("not-a-uuid")).send().await.unwrap().status(), 404);

    // The workers start: the other task is hashed; the cancelled one never is.
    app.start_in_process_worker(2);
    let done = app.wait_finished(&kept, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "done");
    let refused = app.client.post(url(&kept)).send().await.unwrap();
    assert_eq!(refused.status(), 409);
    let problem: Value = refused.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("already done"), "{problem}");
    eventually(Duration::from_secs(20), "both stream entries acknowledged", || async {
        (app.pending_count().await.ok()? == 0 && app.log_lines().len() == 1).then_some(())
    })
    .await
    .unwrap();
    let task = app.task(&cancelled, 0).await;
    assert_eq!((task["status"].as_str(), task["attempts"].as_i64()), (Some("cancelled"), Some(0)), "{task}");
    let lines = app.log_lines();
    assert_eq!(lines.len(), 1, "one line, the done task's");
    assert_eq!(lines[0].task_id.to_string(), kept);
    assert!(app.upload_files().is_empty());
    app.stop().await;
}

/// A stream whose task waits (no worker) sends nothing but keep-alive comments, and those keep
/// it open through the api's idle timeout: every half `IDLE_TIMEOUT_SECONDS` when that is under
/// the 15 s default. The cancel then still reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_hold_a_waiting_stream_open_past_the_idle_timeout() {
    let app = TestApp::spawn(TestOptions::default().no_workers().api(|c| c.idle_timeout_seconds = 2))
        .await
        .unwrap();
    let response = app.upload("waits.bin", random_bytes(1000, 7)).await;
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let url = format!("{}/api/v1/hashes/{id}", app.base_url);
    let mut stream = EventStream::open(&app.client, &format!("{url}/events"), None).await;
    assert_eq!(stream.next().await.unwrap().data["status"], "queued");
    // Three idle timeouts long: a comment every second keeps the connection.
    let comments = stream.keep_alives_during(Duration::from_secs(6)).await;
    assert!((4..=8).contains(&comments), "{comments} keep-alive comments in 6 s at one a second");
    assert_eq!(app.client.post(format!("{url}/cancel")).send().await.unwrap().status(), 200);
    let cancelled = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("pushed");
    assert_eq!(cancelled.unwrap().data["status"], "cancelled");
    assert!(stream.next().await.is_none(), "the stream ends after the terminal event");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_hash_streams_progress_every_second_and_a_reconnecting_client_gets_the_terminal_event() {
    let app = TestApp::spawn(large_options()).await.unwrap();
    let expected = tokio::task::spawn_blocking(|| large_md5(LARGE));
    let id = upload_large(&app.client, &app.base_url, LARGE).await;
    let events_url = format!("{}/api/v1/hashes/{id}/events", app.base_url);

    // One client watches throughout; another leaves after the first progress event and comes
    // back with Last-Event-ID.
    let watcher = async {
        let mut stream = EventStream::open(&app.client, &events_url, None).await;
        let mut events = Vec::new();
        while let Some(event) = stream.next().await {
            events.push((tokio::time::Instant::now(), event));
        }
        events
    };
    let reconnecting = async {
        let mut stream = EventStream::open(&app.client, &events_url, None).await;
        let last_id = loop {
            let event = stream.next().await.expect("a progress event before the end");
            assert_ne!(event.data["status"], "done", "the hash ended before any progress: {event:?}");
            if event.event == "progress" {
                break event.id;
            }
        };
        drop(stream);
        let mut stream = EventStream::open(&app.client, &events_url, Some(&last_id)).await;
        let mut last = None;
        while let Some(event) = stream.next().await {
            last = Some(event);
        }
        last.expect("events after reconnecting")
    };
    let (events, terminal_after_reconnect) = tokio::join!(watcher, reconnecting);
    let expected = expected.await.unwrap();

    let (_, first) = &events[0];
    assert_eq!(first.event, "status");
    let (_, last) = events.last().unwrap();
    assert_eq!((last.event.as_str(), &last.data["status"]), ("status", &Value::from("done")), "{last:?}");
    assert_eq!(last.data["md5"], expected.as_str());
    assert_eq!(terminal_after_reconnect.data["status"], "done");
    assert_eq!(terminal_after_reconnect.data["md5"], expected.as_str());

    // Progress: at least one event per second of hashing, rising, never past the size.
    let progress: Vec<(tokio::time::Instant, u64)> = events
        .iter()
        .filter(|(_, event)| event.event == "progress")
        .map(|(at, event)| {
            assert_eq!(event.data["size_bytes"], LARGE);
            (*at, event.data["bytes_hashed"].as_u64().unwrap())
        })
        .collect();
    assert!(progress.windows(2).all(|pair| pair[0].1 < pair[1].1), "rising: {progress:?}");
    assert!(progress.iter().all(|(_, bytes)| *bytes <= LARGE));
    let started = events.iter().find(|(_, event)| event.data["status"] == "processing").map(|(at, _)| *at);
    let hashing = events.last().unwrap().0 - started.unwrap_or(events[0].0);
    println!(
        "{} progress events over {:.2} s of hashing, the largest gap {:?}",
        progress.len(),
        hashing.as_secs_f64(),
        progress.windows(2).map(|pair| pair[1].0 - pair[0].0).max()
    );
    assert!(
        progress.len() as f64 >= hashing.as_secs_f64().floor(),
        "{} progress events over {hashing:?}",
        progress.len()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_hash_frees_the_worker_cpu_within_a_second_and_leaves_nothing() {
    let mut app = TestApp::spawn(large_options().no_workers()).await.unwrap();
    app.start_worker_process(2).unwrap();
    let pid = app.worker_pids()[0];
    let id = upload_large(&app.client, &app.base_url, LARGE).await;
    let url = format!("{}/api/v1/hashes/{id}", app.base_url);
    // Running, with progress shown on GET.
    let hashed = eventually(Duration::from_secs(30), "the hash to be under way", || async {
        let task: Value = app.client.get(&url).send().await.ok()?.json().await.ok()?;
        let bytes = task["progress"]["bytes_hashed"].as_u64()?;
        (task["status"] == "processing" && bytes > 0).then_some(bytes)
    })
    .await
    .unwrap();
    assert!(hashed < LARGE, "caught mid-way");

    let response = app.client.post(format!("{url}/cancel")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["status"], "cancelled");
    let cancelled_at = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_a_second = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_seconds(pid) - after_a_second;
    println!("worker CPU in the second after the first since the cancel: {used:.2} s");
    assert!(used < 0.25, "the worker still uses {used:.2} s of CPU per second after the cancel");
    assert!(cancelled_at.elapsed() < Duration::from_secs(5));

    eventually(Duration::from_secs(20), "the entry acknowledged", || async {
        (app.pending_count().await.ok()? == 0).then_some(())
    })
    .await
    .unwrap();
    assert!(app.upload_files().is_empty(), "{:?}", app.upload_files());
    assert!(app.log_lines().is_empty(), "a cancelled task gets no log line");
    let task = app.task(&id, 0).await;
    assert_eq!(task["status"], "cancelled");
    assert!(task.get("progress").is_none(), "{task}");
    // The worker goes on with the next task.
    let response = app.upload("next.bin", random_bytes(1000, 3)).await;
    let next = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(app.wait_finished(&next, Duration::from_secs(30)).await["status"], "done");
    app.stop().await;
}

/// CPU time (user + system) of process `pid` so far, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    integration_tests::procfs::ProcessStat::of(pid).expect("the process runs").cpu_seconds()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_racing_completions_leave_each_task_done_with_one_line_or_cancelled_with_none() {
    const TASKS: usize = 200;
    let app = TestApp::spawn(TestOptions::default().worker(|c| c.worker_concurrency = 8)).await.unwrap();
    let outcomes: Vec<(String, u16)> = futures_util::stream::iter(0..TASKS)
        .map(|n| {
            let app = &app;
            async move {
                let response = app.upload(&format!("race-{n}.bin"), random_bytes(2000, n as u64)).await;
                assert_eq!(response.status(), 202);
                let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
                // Staggered, so that some cancels come before the hash and some after.
                tokio::time::sleep(Duration::from_millis((n % 8) as u64 * 2)).await;
                let status = app
                    .client
                    .post(format!("{}/api/v1/hashes/{id}/cancel", app.base_url))
                    .send()
                    .await
                    .unwrap()
                    .status();
                (id, status.as_u16())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    eventually(Duration::from_secs(60), "every entry acknowledged", || async {
        (app.pending_count().await.ok()? == 0).then_some(())
    })
    .await
    .unwrap();
    let lines = app.log_lines();
    let (mut done, mut cancelled) = (0, 0);
    for (id, status) in &outcomes {
        let task = app.task(id, 0).await;
        let logged = lines.iter().filter(|line| line.task_id.to_string() == *id).count();
        match (task["status"].as_str().unwrap(), *status) {
            ("done", 409) => {
                assert_eq!(logged, 1, "a done task has exactly one line: {task}");
                done += 1;
            }
            ("cancelled", 200) => {
                assert_eq!(logged, 0, "a cancelled task has no line: {task}");
                assert_eq!(task["md5"], Value::Null);
                cancelled += 1;
            }
            (other, code) => panic!("task {id} ended {other} after a cancel answered {code}: {task}"),
        }
    }
    println!("{done} done (cancel refused with 409), {cancelled} cancelled");
    assert_eq!(lines.len(), done, "no other lines");
    assert!(done > 0 && cancelled > 0, "the race had both outcomes: {done} done, {cancelled} cancelled");
    assert!(app.upload_files().is_empty(), "no file left: {:?}", app.upload_files());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_event_streams_fit_the_api_memory_budget_and_all_get_their_terminal_events() {
    const STREAMS: usize = 1000;
    const TASKS: usize = 50;
    integration_tests::procfs::raise_own_file_limit();
    let api = ApiProcess::start(|c| c.max_event_streams_per_client = Some(STREAMS as u32)).await.unwrap();
    let mut ids = Vec::new();
    for n in 0..TASKS {
        let response = integration_tests::post_file(
            &api.client,
            &format!("{}/api/v1/hashes", api.base_url),
            &format!("f{n}"),
            reqwest::multipart::Part::bytes(random_bytes(10_000, n as u64)),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), 202);
        ids.push(response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
    }
    // HTTP/1.1: one connection per stream, as browsers' EventSource holds them.
    let client = reqwest::Client::builder().http1_only().pool_max_idle_per_host(0).build().unwrap();
    let mut streams = Vec::with_capacity(STREAMS);
    for n in 0..STREAMS {
        let url = format!("{}/api/v1/hashes/{}/events", api.base_url, ids[n % TASKS]);
        let mut stream = EventStream::open(&client, &url, None).await;
        let first = stream.next().await.unwrap();
        assert_eq!(first.data["status"], "queued");
        streams.push(stream);
    }
    let rss = api.memory_mib("VmRSS");
    println!("{STREAMS} event streams open: api RSS {rss:.1} MiB");
    assert!(rss <= 64.0, "api RSS {rss:.1} MiB with {STREAMS} streams open");

    // A worker on the api's database and stream: every stream gets its task's terminal event.
    let mut worker = TestOptions::default().worker;
    worker.database.database_url = api.config.database.database_url.clone();
    worker.redis.redis_url = api.config.redis.redis_url.clone();
    worker.stream = api.config.stream.clone();
    worker.storage.upload_dir = api.upload_dir.clone();
    worker.log_file = api.root.join("log").join("md5.log");
    let stop = tokio_util::sync::CancellationToken::new();
    let worker_stop = stop.clone();
    let worker_task = tokio::spawn(worker::run(
        worker,
        async move { worker_stop.cancelled().await },
        worker::Hangups::listen(),
    ));
    let finished = futures_util::stream::iter(streams)
        .map(|mut stream| async move {
            let mut last = None;
            while let Some(event) = stream.next().await {
                last = Some(event);
            }
            last.map(|event| event.data["status"].as_str().unwrap_or("").to_owned())
        })
        .buffer_unordered(STREAMS)
        .filter(|status| std::future::ready(status.as_deref() == Some("done")))
        .count();
    let finished = tokio::time::timeout(Duration::from_secs(120), finished).await.expect("every stream ends");
    assert_eq!(finished, STREAMS, "every stream ended with its task's done event");
    println!("api peak RSS {:.1} MiB", api.peak_rss_mib());
    stop.cancel();
    let _ = worker_task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_through_one_api_reaches_a_stream_held_by_another() {
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    // A second api replica on the same database, stream and volume.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let replica = tokio::spawn(api::run(
        app.api_config(&TestOptions::default()),
        listener,
        stop.clone().cancelled_owned(),
    ));
    eventually(Duration::from_secs(30), "the second api to answer", || async {
        app.client.get(format!("{other}/healthz")).send().await.ok()?.status().is_success().then_some(())
    })
    .await
    .unwrap();
    let response = app.upload("f.bin", random_bytes(1000, 5)).await;
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let mut stream =
        EventStream::open(&app.client, &format!("{other}/api/v1/hashes/{id}/events"), None).await;
    assert_eq!(stream.next().await.unwrap().data["status"], "queued");
    let cancelled =
        app.client.post(format!("{}/api/v1/hashes/{id}/cancel", app.base_url)).send().await.unwrap();
    assert_eq!(cancelled.status(), 200);
    let event = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("pushed, not polled")
        .unwrap();
    assert_eq!((event.event.as_str(), event.data["status"].as_str()), ("status", Some("cancelled")));
    assert!(stream.next().await.is_none(), "the stream ends after the terminal event");
    stop.cancel();
    let _ = replica.await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_every_event_stream_and_another_is_still_served() {
    let api = ApiProcess::start(|c| {
        c.max_event_streams = 4;
        c.max_event_streams_per_client = Some(2);
    })
    .await
    .unwrap();
    let id = api.task_id_of_upload(1).await;
    let url = format!("{}/api/v1/hashes/{id}/events", api.base_url);
    let attacker = api.client_from("127.0.0.1".parse::<IpAddr>().unwrap());
    let held =
        [EventStream::open(&attacker, &url, None).await, EventStream::open(&attacker, &url, None).await];
    let refused = attacker.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let problem: Value = refused.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("this client"), "{problem}");
    // Another client address still gets a stream, and its first event at once.
    let other = api.client_from("127.0.0.2".parse::<IpAddr>().unwrap());
    let mut served = EventStream::open(&other, &url, None).await;
    assert_eq!(served.next().await.unwrap().data["status"], "queued");
    // A closed stream gives its slot back.
    drop(held);
    eventually(Duration::from_secs(10), "a slot given back", || async {
        (attacker.get(&url).send().await.ok()?.status() == 200).then_some(())
    })
    .await
    .unwrap();
}

/// The api's CPU time once it has settled (two readings 300 ms apart agree).
async fn settled_cpu_seconds(api: &ApiProcess) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = api.cpu_seconds();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = api.cpu_seconds();
        if now == last {
            return now;
        }
        assert!(std::time::Instant::now() < deadline, "the api did not settle within 60 s");
        last = now;
    }
}

/// The api's CPU seconds spent on `events` progress announcements of tasks nobody watches.
async fn cpu_for_events(api: &ApiProcess, events: u64) -> f64 {
    let mut conn = shared::db::establish(&api.config.database.database_url).await.unwrap();
    let before = settled_cpu_seconds(api).await;
    let task = uuid::Uuid::now_v7();
    for bytes in 0..events {
        shared::queries::announce_progress(&mut conn, task, bytes).await.unwrap();
    }
    settled_cpu_seconds(api).await - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_event_streams_on_other_tasks_do_not_add_to_the_cost_of_an_event() {
    const STREAMS: usize = 1500;
    const EVENTS: u64 = 3000;
    integration_tests::procfs::raise_own_file_limit();
    let api = ApiProcess::start(|c| c.max_event_streams_per_client = Some(STREAMS as u32)).await.unwrap();
    let mut ids = Vec::new();
    for n in 0..10 {
        let response = integration_tests::post_file(
            &api.client,
            &format!("{}/api/v1/hashes", api.base_url),
            &format!("f{n}"),
            reqwest::multipart::Part::bytes(random_bytes(1000, n)),
        )
        .await
        .unwrap();
        ids.push(response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
    }
    let alone = cpu_for_events(&api, EVENTS).await;
    // One client holds many streams on its own tasks (queued for good: no worker runs) and never
    // reads them.
    let client = reqwest::Client::builder().http1_only().pool_max_idle_per_host(0).build().unwrap();
    let mut streams = Vec::with_capacity(STREAMS);
    for n in 0..STREAMS {
        let url = format!("{}/api/v1/hashes/{}/events", api.base_url, ids[n % ids.len()]);
        let mut stream = EventStream::open(&client, &url, None).await;
        assert_eq!(stream.next().await.unwrap().data["status"], "queued");
        streams.push(stream);
    }
    let watched = cpu_for_events(&api, EVENTS).await;
    println!("api CPU for {EVENTS} events: {alone:.2} s alone, {watched:.2} s with {STREAMS} idle streams");
    // Each event reaches the watchers of its own task only: the idle streams cost it nothing.
    assert!(watched <= 2.0 * alone + 0.3, "{watched:.2} s with {STREAMS} idle streams, {alone:.2} s without");
    // A normal client is still served.
    assert_eq!(api.client.get(format!("{}/healthz", api.base_url)).send().await.unwrap().status(), 200);
    drop(streams);
}

/// Workers listen to the stop channel alone: the trigger announces there a task that ended
/// `cancelled` or `expired` (the changes that stop a hash) and nothing else, so a task ending
/// as it should wakes no worker, while every change still reaches the api's channel.
#[tokio::test]
async fn only_the_changes_that_stop_a_hash_reach_the_workers_channel() {
    use diesel_async::RunQueryDsl as _;
    use shared::db::{TASK_CHANGED_CHANNEL, TASK_STOPPED_CHANNEL};
    use shared::queries::{self, Completion, Outcome};
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let mut listener = shared::db::establish(&app.database_url).await.unwrap();
    for channel in [TASK_CHANGED_CHANNEL, TASK_STOPPED_CHANNEL] {
        diesel::sql_query(format!("LISTEN {channel}")).execute(&mut listener).await.unwrap();
    }
    let mut conn = app.db().await;
    let ids: [uuid::Uuid; 4] = std::array::from_fn(|_| uuid::Uuid::now_v7());
    let [done, failed, cancelled, expired] = ids;
    for id in ids {
        crate::batching::insert_plain_task(&mut conn, id).await;
    }
    let claimed = queries::claim_tasks(&mut conn, &ids, &[], "w1", Duration::from_secs(60)).await.unwrap();
    assert_eq!(claimed.len(), 4);
    let md5 = shared::Digests::md5_only("0a".repeat(16).parse().unwrap());
    let finished = [
        Completion::claimed(done, Outcome::Done { digests: md5 }),
        Completion::claimed(failed, Outcome::Failed { error: "unreadable".into() }),
    ];
    assert_eq!(queries::complete_tasks(&mut conn, "w1", &finished).await.unwrap().len(), 2);
    queries::cancel_task(&mut conn, cancelled).await.unwrap().expect("cancelled while processing");
    diesel::sql_query("UPDATE md5_tasks SET status = 'expired' WHERE task_id = $1")
        .bind::<diesel::sql_types::Uuid, _>(expired)
        .execute(&mut conn)
        .await
        .unwrap();

    // Notifications arrive in commit order: once a last one sent after all this has come, every
    // one before it has too.
    diesel::sql_query(format!("NOTIFY {TASK_STOPPED_CHANNEL}, 'last'")).execute(&mut conn).await.unwrap();
    let (mut changes, mut stops) = (0, Vec::new());
    let mut notifications = std::pin::pin!(listener.notifications_stream());
    while stops.last().is_none_or(|last| last != "last") {
        let notification = tokio::time::timeout(Duration::from_secs(10), notifications.next())
            .await
            .expect("every notification arrives")
            .unwrap()
            .unwrap();
        match notification.channel.as_str() {
            TASK_CHANGED_CHANNEL => changes += 1,
            _ => stops.push(notification.payload),
        }
    }
    assert_eq!(changes, 8, "four claims and four ends, each announced to the api");
    assert_eq!(stops, [format!("{cancelled} cancelled"), format!("{expired} expired"), "last".into()]);
    app.stop().await;
}
