//! Webhooks (Standard Webhooks 1.0) from real worker processes to a receiver in this test that
//! fails at random, goes down, asks for patience or says its endpoint is gone. Signatures are
//! verified by the `standardwebhooks` Python package (scripts/test-tools.txt; the test command
//! installs it into .tools/venv).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::StreamExt as _;
use integration_tests::launcher::free_port;
use integration_tests::{TestApp, TestOptions, eventually, random_bytes};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The receiver's secret (32 bytes), as an operator would set it.
fn secret() -> String {
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode([42u8; 32]))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A quarter of the requests fail (500), at random. (With half, five failures in a row
    /// come so often that the breaker's cool-downs, not the deliveries, set the test's length.)
    Flaky,
    /// 503 with `Retry-After: 3` to the first request, 2xx after.
    RetryAfterOnce,
    /// 410 Gone to everything.
    Gone,
    /// The first request is never answered (its handler waits 25 s); 2xx after.
    HangOnce,
    /// 2xx to everything.
    Accept,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
    accepted: bool,
    at: Instant,
}

#[derive(Clone)]
struct Receiver {
    state: Arc<Mutex<(Mode, u64, Vec<Received>)>>,
}

impl Receiver {
    fn new(mode: Mode) -> Self {
        Receiver { state: Arc::new(Mutex::new((mode, 0x2545_F491_4F6C_DD1D, Vec::new()))) }
    }

    fn requests(&self) -> Vec<Received> {
        self.state.lock().unwrap().2.clone()
    }

    /// Serves on `addr` until [`Serving::stop`].
    fn serve(&self, addr: SocketAddr) -> Serving {
        let stop = CancellationToken::new();
        let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(self.clone());
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let listener = tokio::net::TcpListener::bind(addr).await.expect("the receiver's port");
                axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await.unwrap();
            }
        });
        Serving { stop, task }
    }

    /// A receiver in `mode` serving on a free port, and its URL.
    fn start(mode: Mode) -> (Receiver, SocketAddr, Serving) {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let receiver = Receiver::new(mode);
        let serving = receiver.serve(addr);
        (receiver, addr, serving)
    }
}

/// A receiver serving.
struct Serving {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Serving {
    /// Stops serving (the port is closed when this returns).
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn hook(State(receiver): State<Receiver>, headers: HeaderMap, body: String) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let hangs = {
        let mut state = receiver.state.lock().unwrap();
        let hangs = state.0 == Mode::HangOnce && state.2.is_empty();
        if hangs {
            state.2.push(Received {
                id: header("webhook-id"),
                timestamp: header("webhook-timestamp"),
                signature: header("webhook-signature"),
                body: body.clone(),
                accepted: false,
                at: Instant::now(),
            });
        }
        hangs
    };
    if hangs {
        tokio::time::sleep(Duration::from_secs(25)).await;
        return StatusCode::NO_CONTENT.into_response();
    }
    let mut state = receiver.state.lock().unwrap();
    let (mode, rng, requests) = &mut *state;
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let answer = match mode {
        Mode::Flaky if *rng % 4 == 0 => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Mode::Flaky => StatusCode::NO_CONTENT.into_response(),
        Mode::RetryAfterOnce if requests.is_empty() => {
            (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "3")]).into_response()
        }
        Mode::RetryAfterOnce => StatusCode::OK.into_response(),
        Mode::Gone => StatusCode::GONE.into_response(),
        Mode::HangOnce | Mode::Accept => StatusCode::NO_CONTENT.into_response(),
    };
    requests.push(Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body,
        accepted: answer.status().is_success(),
        at: Instant::now(),
    });
    answer
}

/// The worker's environment for webhooks to `url`, retrying every second `retries` times.
fn webhook_env(url: &str, retries: usize) -> Vec<(String, String)> {
    vec![
        ("WEBHOOK_URLS".into(), url.into()),
        ("WEBHOOK_SECRET".into(), secret()),
        ("WEBHOOK_RETRY_SCHEDULE".into(), vec!["1"; retries].join(",")),
    ]
}

fn start_worker(app: &mut TestApp, env: &[(String, String)]) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    app.start_worker_process_with(8, &env).unwrap();
}

/// Sends `signal` to each of these processes.
fn signal_all(pids: &[u32], signal: rustix::process::Signal) {
    for &pid in pids {
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("a process id is positive");
        rustix::process::kill_process(pid, signal).expect("signal a worker");
    }
}

/// Waits until `endpoints` webhook endpoints are registered.
async fn endpoints_registered(app: &TestApp, endpoints: i64) {
    use diesel_async::RunQueryDsl as _;
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    eventually(Duration::from_secs(30), "the worker to register its webhook endpoints", || async {
        let mut conn = app.db().await;
        let count: Count = diesel::sql_query("SELECT count(*) AS n FROM md5_webhook_endpoints")
            .get_result(&mut conn)
            .await
            .ok()?;
        (count.n == endpoints).then_some(())
    })
    .await
    .unwrap();
}

/// The api and one worker process delivering to the receiver at `addr`, retrying every second
/// `retries` times, its endpoint registered.
async fn app_with_webhooks(addr: SocketAddr, retries: usize) -> TestApp {
    let mut app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    start_worker(&mut app, &webhook_env(&format!("http://{addr}/hook"), retries));
    endpoints_registered(&app, 1).await;
    app
}

/// Uploads a small file and waits for it to be done; its id.
async fn upload_done(app: &TestApp, seed: u64) -> String {
    let response = app.upload("f.bin", random_bytes(100, seed)).await;
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(app.wait_finished(&id, Duration::from_secs(30)).await["status"], "done");
    id
}

/// The Python interpreter of the project's tool environment (scripts/test.sh makes it).
fn tools_python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test.sh once, or python3 -m venv .tools/venv && .tools/venv/bin/pip install -r scripts/test-tools.txt",
        python.display()
    );
    python
}

/// Verifies every request's signature with the `standardwebhooks` package; panics on any that
/// does not verify.
fn verify_independently(requests: &[Received]) {
    let file = std::env::temp_dir().join(format!("md5-webhooks-{}.json", uuid::Uuid::new_v4()));
    let list: Vec<Value> = requests
        .iter()
        .map(|r| serde_json::json!({"id": r.id, "timestamp": r.timestamp, "signature": r.signature, "body": r.body}))
        .collect();
    std::fs::write(&file, serde_json::to_vec(&list).unwrap()).unwrap();
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
hook = Webhook(sys.argv[1])
requests = json.load(open(sys.argv[2]))
for r in requests:
    hook.verify(r["body"], {"webhook-id": r["id"], "webhook-timestamp": r["timestamp"], "webhook-signature": r["signature"]})
print(f"verified {len(requests)}")
"#;
    let output = std::process::Command::new(tools_python())
        .args(["-c", script, &secret(), file.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "standardwebhooks refused a signature: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.trim(), format!("verified {}", requests.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_terminal_event_reaches_a_flaky_receiver_that_goes_down_signed_and_under_one_id() {
    const TASKS: usize = 500;
    const CANCELS: usize = 40;
    const FAILS: usize = 20;
    let (receiver, addr, serving) = Receiver::start(Mode::Flaky);

    let mut app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut env = webhook_env(&format!("http://{addr}/hook"), 60);
    env.push(("METRICS_ADDR".into(), metrics.clone()));
    start_worker(&mut app, &env);
    start_worker(&mut app, &webhook_env(&format!("http://{addr}/hook"), 60));
    endpoints_registered(&app, 1).await;

    // The receiver goes down for 10 s once a quarter of the events are in: long enough for the
    // breaker to open and a probe to fail.
    let outage = tokio::spawn({
        let receiver = receiver.clone();
        async move {
            eventually(Duration::from_secs(120), "a quarter of the events", || async {
                (receiver.requests().iter().filter(|r| r.accepted).count() >= TASKS / 4).then_some(())
            })
            .await
            .unwrap();
            serving.stop().await;
            let down_at = Instant::now();
            tokio::time::sleep(Duration::from_secs(10)).await;
            (down_at, receiver.serve(addr))
        }
    });

    let app_ref = &app;
    let upload = move |n: usize| async move {
        let url = format!("{}/api/v1/hashes", app_ref.base_url);
        let mut request = app_ref.client.post(&url).body(random_bytes(1000, n as u64));
        if n < FAILS {
            // An expected MD5 that is not the file's: the task ends failed.
            request = request.header("content-md5", "AAAAAAAAAAAAAAAAAAAAAA==");
        }
        let response = request.header("content-type", "application/octet-stream").send().await.unwrap();
        assert_eq!(response.status(), 202);
        let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
        if (FAILS..FAILS + CANCELS).contains(&n) {
            app_ref.client.post(format!("{url}/{id}/cancel")).send().await.unwrap();
        }
        id
    };
    // The tasks to cancel are sent while the workers are paused (`SIGSTOP`): a worker hashes a
    // 1 KB task in well under a millisecond, and on a fast host every cancel lost that race.
    let workers = app.worker_pids();
    signal_all(&workers, rustix::process::Signal::STOP);
    let mut ids: Vec<String> =
        futures_util::stream::iter(FAILS..FAILS + CANCELS).map(upload).buffer_unordered(16).collect().await;
    signal_all(&workers, rustix::process::Signal::CONT);
    let others: Vec<String> = futures_util::stream::iter((0..FAILS).chain(FAILS + CANCELS..TASKS))
        .map(upload)
        .buffer_unordered(16)
        .collect()
        .await;
    ids.extend(others);

    // Every task ends; its one event is expected under `msg_<task>_<status>`.
    let mut expected = HashMap::new();
    for id in &ids {
        let task = eventually(Duration::from_secs(60), "the task to end", || async {
            let task = app.task(id, 5).await;
            matches!(task["status"].as_str(), Some("done" | "failed" | "cancelled")).then_some(task)
        })
        .await
        .unwrap();
        let status = task["status"].as_str().unwrap().to_owned();
        expected.insert(format!("msg_{}_{status}", id.replace('-', "")), (id.clone(), status));
    }
    let statuses: HashSet<&str> = expected.values().map(|(_, status)| status.as_str()).collect();
    assert_eq!(statuses, HashSet::from(["done", "failed", "cancelled"]), "all three events occur");

    let (down_at, back) = outage.await.unwrap();
    eventually(Duration::from_secs(180), "every event delivered", || async {
        let delivered: HashSet<String> =
            receiver.requests().into_iter().filter(|r| r.accepted).map(|r| r.id).collect();
        (delivered.len() >= expected.len()).then_some(())
    })
    .await
    .unwrap();
    let requests = receiver.requests();
    let delivered: HashSet<&str> = requests.iter().filter(|r| r.accepted).map(|r| r.id.as_str()).collect();
    assert_eq!(
        delivered,
        expected.keys().map(String::as_str).collect(),
        "exactly the terminal events, each delivered"
    );

    // One id per task, the same bytes on every attempt, the body naming its task and status.
    let mut ids_of_task: HashMap<String, HashSet<&str>> = HashMap::new();
    let mut body_of_id: HashMap<&str, &str> = HashMap::new();
    for request in &requests {
        let body: Value = serde_json::from_str(&request.body).unwrap();
        let (task, status) = &expected[&request.id];
        assert_eq!(body["data"]["id"], task.as_str());
        assert_eq!(body["type"], format!("task.{status}"));
        assert_eq!(body["data"]["status"], status.as_str());
        ids_of_task.entry(task.clone()).or_default().insert(&request.id);
        assert_eq!(
            *body_of_id.entry(&request.id).or_insert(&request.body),
            request.body,
            "a retry sends the same body"
        );
    }
    assert!(ids_of_task.values().all(|ids| ids.len() == 1), "a task's event under one id only");
    let retried = requests.len() - delivered.len();
    let after_outage = requests.iter().filter(|r| r.at > down_at).count();
    println!(
        "{} requests for {} events ({retried} failed and retried), {after_outage} after the outage began",
        requests.len(),
        delivered.len()
    );
    assert!(retried > 0 && after_outage > 0);

    verify_independently(&requests);
    let text = reqwest::get(format!("http://{metrics}/metrics")).await.unwrap().text().await.unwrap();
    assert!(text.contains("md5_webhook_attempts_total{outcome=\"delivered\"}"), "{text}");
    assert!(text.contains("md5_webhook_attempts_total{outcome=\"failed\"}"), "{text}");
    back.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_and_a_410_disables_the_endpoint() {
    let (receiver, addr, serving) = Receiver::start(Mode::RetryAfterOnce);
    let app = app_with_webhooks(addr, 5).await;
    upload_done(&app, 1).await;
    eventually(Duration::from_secs(30), "the event delivered after its 503", || async {
        (receiver.requests().iter().any(|r| r.accepted)).then_some(())
    })
    .await
    .unwrap();
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    let gap = requests[1].at - requests[0].at;
    assert!(gap >= Duration::from_millis(2900), "Retry-After: 3 honoured over a 1 s schedule: {gap:?}");
    assert_eq!(requests[0].id, requests[1].id);

    // 410 Gone: the endpoint is disabled; later events are not sent to it.
    receiver.state.lock().unwrap().0 = Mode::Gone;
    upload_done(&app, 2).await;
    eventually(Duration::from_secs(30), "the 410", || async {
        (receiver.requests().len() == 3).then_some(())
    })
    .await
    .unwrap();
    upload_done(&app, 3).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.requests().len(), 3, "nothing more was sent to a gone endpoint");
    serving.stop().await;
    app.stop().await;
}

/// A receiver that takes a request and never answers holds that delivery for the 15 s timeout
/// and no longer, and holds up no other: the events of tasks finished meanwhile are delivered at
/// once, the unanswered attempt counts as failed and its retry, under the same id, is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_holds_one_delivery_for_15_seconds_and_no_other() {
    let (receiver, addr, serving) = Receiver::start(Mode::HangOnce);
    let app = app_with_webhooks(addr, 3).await;
    let id = upload_done(&app, 9).await;
    let hung = format!("msg_{}_done", id.replace('-', ""));
    eventually(Duration::from_secs(30), "the first request, left unanswered", || async {
        (receiver.requests().len() == 1).then_some(())
    })
    .await
    .unwrap();
    let mut others = HashSet::new();
    for seed in 10..15 {
        others.insert(format!("msg_{}_done", upload_done(&app, seed).await.replace('-', "")));
    }
    eventually(Duration::from_secs(40), "every event delivered", || async {
        let delivered: HashSet<String> =
            receiver.requests().into_iter().filter(|r| r.accepted).map(|r| r.id).collect();
        (delivered.len() == 6).then_some(())
    })
    .await
    .unwrap();
    let requests = receiver.requests();
    assert_eq!(requests.len(), 7, "{requests:?}");
    let (first, retry) = (&requests[0], requests.last().unwrap());
    assert_eq!((first.id.as_str(), first.accepted), (hung.as_str(), false));
    assert_eq!((retry.id.as_str(), retry.accepted), (hung.as_str(), true), "the retry is the last request");
    let gap = retry.at - first.at;
    let others_after =
        requests.iter().filter(|r| others.contains(&r.id)).map(|r| r.at - first.at).max().unwrap();
    eprintln!("the other events were in {others_after:?} after the unanswered request, its retry {gap:?}");
    assert!(others_after < Duration::from_secs(10), "the other events waited {others_after:?}");
    // 15 s of timeout, then the schedule's 1 s step (and the delivery loop's poll).
    assert!(
        gap >= Duration::from_secs(15) && gap < Duration::from_secs(22),
        "the retry came {gap:?} after the unanswered request"
    );
    serving.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_events_data_is_the_tasks_get_answer_for_done_failed_cancelled_and_terminated() {
    use diesel_async::RunQueryDsl as _;
    let (receiver, addr, serving) = Receiver::start(Mode::RetryAfterOnce);
    let url = format!("http://{addr}/hook");
    let mut app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    // The endpoint exists before any worker runs, so that a task cancelled while queued (no
    // worker can take it yet) has its event written; the worker then registers the same URL.
    diesel::sql_query("INSERT INTO md5_webhook_endpoints (url) VALUES ($1)")
        .bind::<diesel::sql_types::Text, _>(&url)
        .execute(&mut app.db().await)
        .await
        .unwrap();
    let hashes = format!("{}/api/v1/hashes", app.base_url);
    let post = |bytes: Vec<u8>, header: Option<(&'static str, &'static str)>, query: &'static str| {
        let mut request = app
            .client
            .post(format!("{hashes}{query}"))
            .header("content-type", "application/octet-stream")
            .header("content-disposition", "attachment; filename=\"event.bin\"")
            .body(bytes);
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 202);
            response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
        }
    };
    let cancelled = post(random_bytes(300, 1), None, "").await;
    let answer = app.client.post(format!("{hashes}/{cancelled}/cancel")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    // A resumable upload terminated by its client ends `cancelled` too, and says so.
    let upload_url = crate::resumable::create(&app.client, &app.base_url, 1000, "terminated.bin").await;
    let appended = crate::resumable::patch(&app.client, &upload_url, 0, &random_bytes(500, 4), None).await;
    assert_eq!(appended.status(), 204);
    let tus = crate::resumable::TUS;
    assert_eq!(app.client.delete(&upload_url).header(tus.0, tus.1).send().await.unwrap().status(), 204);
    let terminated = crate::resumable::task_id(&upload_url).to_owned();
    let done = post(random_bytes(300, 2), None, "?digests=sha-256,crc32c").await;
    let failed = post(random_bytes(300, 3), Some(("content-md5", "AAAAAAAAAAAAAAAAAAAAAA==")), "").await;
    start_worker(&mut app, &webhook_env(&url, 5));

    for (id, status) in
        [(&done, "done"), (&failed, "failed"), (&cancelled, "cancelled"), (&terminated, "cancelled")]
    {
        let answer = eventually(Duration::from_secs(30), "the task to end", || async {
            let answer = app.task(id, 5).await;
            (answer["status"] == status).then_some(answer)
        })
        .await
        .unwrap();
        let event_id = format!("msg_{}_{status}", id.replace('-', ""));
        let body = eventually(Duration::from_secs(30), "the event to be delivered", || async {
            receiver.requests().into_iter().find(|r| r.accepted && r.id == event_id).map(|r| r.body)
        })
        .await
        .unwrap();
        let event: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(event["type"], format!("task.{status}"), "{event}");
        assert_eq!(event["timestamp"], answer["finished_at"], "{event}");
        // Field for field, nothing more and nothing less.
        assert_eq!(event["data"], answer, "the event's data differs from GET's answer");
        if status == "done" {
            assert_eq!(answer["digests"].as_object().unwrap().len(), 3, "{answer}");
        }
    }
    serving.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_removed_from_the_workers_configuration_receives_no_more_events() {
    let (retired, retired_addr, retired_serving) = Receiver::start(Mode::Accept);
    let (kept, kept_addr, kept_serving) = Receiver::start(Mode::Accept);
    let (retired_url, kept_url) = (format!("http://{retired_addr}/hook"), format!("http://{kept_addr}/hook"));
    let mut app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    start_worker(&mut app, &webhook_env(&format!("{retired_url},{kept_url}"), 3));
    endpoints_registered(&app, 2).await;
    let first = upload_done(&app, 1).await;
    let delivered_to = |receiver: &Receiver, id: &str| {
        let id = format!("msg_{}_done", id.replace('-', ""));
        receiver.requests().iter().any(|r| r.accepted && r.id == id)
    };
    eventually(Duration::from_secs(30), "the first event at both receivers", || async {
        (delivered_to(&retired, &first) && delivered_to(&kept, &first)).then_some(())
    })
    .await
    .unwrap();

    // The operator retires a receiver (say, a compromised one) by configuration alone: the
    // workers restart without it.
    app.stop_worker_processes();
    start_worker(&mut app, &webhook_env(&kept_url, 3));
    let later: Vec<String> = [upload_done(&app, 2).await, upload_done(&app, 3).await].into();
    eventually(Duration::from_secs(30), "the later events at the kept receiver", || async {
        later.iter().all(|id| delivered_to(&kept, id)).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(retired.requests().len(), 1, "the retired receiver got {:?}", retired.requests());
    retired_serving.stop().await;
    kept_serving.stop().await;
    app.stop().await;
}

/// A receiver that accepts connections and never answers (nor reads); how many it accepted.
fn start_hanging_receiver() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>, tokio::task::JoinHandle<()>)
{
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let task = tokio::spawn({
        let accepted = accepted.clone();
        async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(socket);
            }
        }
    });
    (addr, accepted, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_does_not_slow_another_endpoints_deliveries() {
    const TASKS: u64 = 100;
    let (hanging_addr, hanging_accepted, hanging) = start_hanging_receiver();
    let (healthy, healthy_addr, healthy_serving) = Receiver::start(Mode::Accept);
    let mut app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let urls = format!("http://{hanging_addr}/hook,http://{healthy_addr}/hook");
    start_worker(&mut app, &webhook_env(&urls, 3));
    endpoints_registered(&app, 2).await;
    let mut ids = Vec::new();
    for seed in 0..TASKS {
        let response = app.upload("f.bin", random_bytes(100, 1000 + seed)).await;
        ids.push(response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        assert_eq!(app.wait_finished(id, Duration::from_secs(60)).await["status"], "done");
    }
    let finished = Instant::now();
    let wanted: HashSet<String> = ids.iter().map(|id| format!("msg_{}_done", id.replace('-', ""))).collect();
    // Each is delivered as its task finishes; 5 s is slack for a slow host (sharing the attempts
    // with the hanging receiver, the last came 15 s after: its attempts' timeout).
    eventually(Duration::from_secs(5), "every event at the healthy receiver", || async {
        let delivered: HashSet<String> =
            healthy.requests().into_iter().filter(|r| r.accepted).map(|r| r.id).collect();
        wanted.is_subset(&delivered).then_some(())
    })
    .await
    .unwrap_or_else(|_| {
        let delivered = healthy.requests().iter().filter(|r| r.accepted).count();
        panic!("{delivered} of {TASKS} events reached the healthy receiver in 5 s")
    });
    println!(
        "{TASKS} events at the healthy receiver {:.2}s after the last task finished; the hanging one took {} connections",
        finished.elapsed().as_secs_f64(),
        hanging_accepted.load(std::sync::atomic::Ordering::SeqCst)
    );
    hanging.abort();
    healthy_serving.stop().await;
    app.stop().await;
}
