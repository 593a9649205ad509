//! Stalls: peers that hold a connection without using it (idle HTTP/2, zero flow-control
//! windows), bodies in one-byte chunks, scrapers that pile up, and a Postgres or Redis that
//! stops answering. Each test performs the attack on a real `md5-api` process and checks the
//! bound that stops it while a normal client (from another loopback address) is still served.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use integration_tests::api_process::ApiProcess;
use integration_tests::h2_attacks;

fn normal_address() -> IpAddr {
    "127.0.0.2".parse().expect("an address")
}

fn attacker_address() -> IpAddr {
    "127.0.0.3".parse().expect("an address")
}

/// Time for a normal client's `/healthz` on a new connection.
async fn healthz_takes(api: &ApiProcess) -> Duration {
    let client = api.client_from(normal_address());
    let started = Instant::now();
    let answered =
        tokio::time::timeout(Duration::from_secs(20), client.get(format!("{}/healthz", api.base_url)).send())
            .await;
    assert!(
        matches!(answered, Ok(Ok(ref response)) if response.status() == 200),
        "/healthz answered: {answered:?}"
    );
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_cannot_lock_new_clients_out_and_are_closed() {
    let api = ApiProcess::start(|c| {
        c.max_connections = 40;
        c.idle_timeout_seconds = 4;
    })
    .await
    .unwrap();
    // Every connection slot taken by an h2 client that answers pings and does nothing else.
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(h2_attacks::idle_connection(&api.base_url, Some(attacker_address())).await.unwrap());
    }
    // A new client gets in at once: the longest-idle connection makes room (after its first
    // second of idleness), instead of everyone waiting for one to end.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let took = healthz_takes(&api).await;
    assert!(
        took < Duration::from_secs(3),
        "a new client was served in {took:?} while 40 idle h2 connections held every slot"
    );
    // The others are closed once idle for IDLE_TIMEOUT_SECONDS, pings notwithstanding.
    for (i, connection) in idle.iter_mut().enumerate() {
        assert!(connection.closed_within(Duration::from_secs(10)).await, "idle h2 connection {i} was closed");
    }
    let closed: f64 = api_metric(&api, "md5_idle_connections_closed_total").await;
    assert!(closed >= 40.0, "the closings are counted: {closed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_to_a_zero_window_peer_hold_little_memory_and_not_for_long() {
    let api = ApiProcess::start(|c| c.idle_timeout_seconds = 5).await.unwrap();
    let before = api.memory_mib("VmRSS");
    let mut held = Vec::new();
    for _ in 0..300 {
        let connection =
            h2_attacks::zero_window_connection(&api.base_url, Some(attacker_address()), "/openapi.json", 32)
                .await
                .unwrap();
        held.push(connection);
    }
    let streams: usize = held.iter().map(h2_attacks::HeldConnection::streams).sum();
    assert_eq!(streams, 300 * 16, "the api lets a connection open 16 streams at once");
    // Give the api time to start every response.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = api.memory_mib("VmRSS");
    println!("api RSS {before:.1} MiB before, {during:.1} MiB with 300 zero-window connections × 16 streams");
    assert!(
        healthz_takes(&api).await < Duration::from_secs(3),
        "a normal client is served during the attack"
    );
    assert!(
        during - before < 24.0,
        "4,800 unread /openapi.json responses grew the api by {:.1} MiB ({before:.1} → {during:.1})",
        during - before
    );
    for (i, connection) in held.iter_mut().enumerate() {
        assert!(
            connection.closed_within(Duration::from_secs(15)).await,
            "zero-window connection {i} was closed"
        );
    }
    assert!(api.peak_rss_mib() <= 64.0, "api peak RSS {:.1} MiB", api.peak_rss_mib());
}

/// The value of an unlabelled counter or gauge on `/metrics`.
async fn api_metric(api: &ApiProcess, name: &str) -> f64 {
    let text =
        api.client.get(format!("{}/metrics", api.base_url)).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_postgres_gets_503_within_the_db_timeout_and_everything_recovers() {
    use integration_tests::fault::FaultEnv;
    let env = FaultEnv::start(|c| c.api.database.db_timeout_ms = 1000).await.unwrap();
    let before = env.upload("before", b"before".to_vec()).await.expect("202 before the stall");
    let get = |id: String| {
        let (client, url) = (env.client.clone(), format!("{}/api/v1/hashes/{id}", env.api_url));
        async move {
            let started = Instant::now();
            let response = client.get(url).send().await.unwrap();
            (response.status().as_u16(), response.headers().get("retry-after").is_some(), started.elapsed())
        }
    };
    // Warm the pool: several connections are open and idle when the server stops.
    let warm = futures_util::future::join_all((0..6).map(|_| get(before.clone()))).await;
    assert!(warm.iter().all(|(status, _, _)| *status == 200), "{warm:?}");

    env.pg.pause().unwrap();
    let started = Instant::now();
    let ready = async {
        let response = env.client.get(format!("{}/readyz", env.api_url)).send().await.unwrap();
        (response.status().as_u16(), started.elapsed())
    };
    let upload = async {
        let status = env.upload("during", b"during".to_vec()).await;
        (status, started.elapsed())
    };
    let (gets, (ready_status, ready_took), (upload_id, upload_took)) =
        tokio::join!(futures_util::future::join_all((0..6).map(|_| get(before.clone()))), ready, upload);
    let bound = Duration::from_millis(1000 + 1500);
    for (status, retry_after, took) in &gets {
        assert_eq!((*status, *retry_after), (503, true), "a read during the stall");
        assert!(*took < bound, "a read answered in {took:?} (DB_TIMEOUT_MS 1000)");
    }
    assert_eq!(ready_status, 503);
    assert!(ready_took < bound, "/readyz answered in {ready_took:?}");
    assert_eq!(upload_id, None, "an upload during the stall is refused with 503");
    assert!(upload_took < bound, "the upload was answered in {upload_took:?}");

    env.pg.resume().unwrap();
    let after =
        integration_tests::eventually(Duration::from_secs(20), "uploads to be taken again", || async {
            env.upload("after", b"after".to_vec()).await
        })
        .await
        .unwrap();
    let (status, _, _) = get(after).await;
    assert_eq!(status, 200);
    let ready = env.client.get(format!("{}/readyz", env.api_url)).send().await.unwrap();
    assert_eq!(ready.status(), 200, "ready again");
    // The refused upload left nothing: its transaction was never committed, its file is gone.
    assert_eq!(env.row_count().await, Some(2), "only the uploads answered 202 have rows");
    assert_eq!(integration_tests::list_files(&env.upload_dir).len(), 2, "only their files are stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_scrapers_of_metrics_cost_one_count_of_the_table_per_interval() {
    let api = ApiProcess::start(|_| {}).await.unwrap();
    let scrape = || async {
        let response = api.client.get(format!("{}/metrics", api.base_url)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    };
    let first = scrape().await;
    assert!(first.contains("md5_tasks{status=\"queued\"}"), "the first scrape has the counts");
    let pages = futures_util::future::join_all((0..64).map(|_| scrape())).await;
    assert!(
        pages.iter().all(|page| page.contains("md5_tasks{status=\"done\"}")),
        "every scrape shows the counts"
    );
    let queries = api_metric(&api, "md5_task_counts_queries_total").await;
    assert!((1.0..=2.0).contains(&queries), "66 scrapes within 15 s counted the table {queries} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_put_behind_the_api_key_and_are_open_by_default() {
    let url = |api: &ApiProcess| format!("{}/metrics", api.base_url);
    let open = ApiProcess::start(|c| c.api_key = Some("secret".into())).await.unwrap();
    assert_eq!(
        open.client.get(url(&open)).send().await.unwrap().status(),
        200,
        "open by default, as scrapers expect"
    );
    let closed = ApiProcess::start(|c| {
        c.api_key = Some("secret".into());
        c.metrics_require_auth = true;
    })
    .await
    .unwrap();
    let refused = closed.client.get(url(&closed)).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["content-type"], "application/problem+json");
    let wrong = closed.client.get(url(&closed)).bearer_auth("guess").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let allowed = closed.client.get(url(&closed)).bearer_auth("secret").send().await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert!(allowed.text().await.unwrap().contains("md5_http_requests_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_in_one_byte_chunks_is_cut_before_it_costs_much_cpu() {
    let api = ApiProcess::start(|_| {}).await.unwrap();
    let before = api.cpu_seconds();
    let status =
        integration_tests::attacks::tiny_chunks_upload(&api.base_url, Some(attacker_address()), 1 << 20)
            .await;
    let spent = api.cpu_seconds() - before;
    assert_eq!(status, 400, "1 MiB in 1-byte chunks is refused");
    assert!(spent < 0.3, "the attack cost the api {spent:.2} s of CPU");
    assert!(healthz_takes(&api).await < Duration::from_secs(3), "a normal client is served");
    // The same form in ordinary chunks goes through.
    let status = integration_tests::attacks::chunked_upload(
        &api.base_url,
        b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"ok.bin\"\r\n\r\n",
        1 << 20,
        b"\r\n--B--\r\n",
    )
    .await;
    assert_eq!(status, 202, "64 KiB chunks are an ordinary upload");
    assert!(
        api.upload_files().iter().all(|path| !path.to_string_lossy().ends_with(".part")),
        "nothing partial is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_delays_no_upload_and_readyz_says_so_in_time() {
    use integration_tests::fault::FaultEnv;
    let env = FaultEnv::start(|_| {}).await.unwrap();
    env.upload("before", b"before".to_vec()).await.expect("202 before the stall");
    env.redis.pause();
    let started = Instant::now();
    let ready = env.client.get(format!("{}/readyz", env.api_url)).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(4), "/readyz answered in {:?}", started.elapsed());
    let started = Instant::now();
    let during = env.upload("during", b"during".to_vec()).await;
    assert!(during.is_some(), "the row is committed: 202, and the sweeper enqueues it later");
    assert!(started.elapsed() < Duration::from_secs(4), "the upload was answered in {:?}", started.elapsed());
    env.redis.resume();
    env.spawn_worker(&[]).unwrap();
    let done = integration_tests::eventually(Duration::from_secs(30), "both tasks to be done", || async {
        (env.done_count().await == Some(2)).then_some(())
    })
    .await;
    assert!(done.is_ok(), "the task uploaded during the stall was enqueued and hashed");
}
