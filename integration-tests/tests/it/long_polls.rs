//! `?wait=` long-polls as an attacker uses them: as many as it can hold, each re-sent as soon as
//! it is answered, on a task that never finishes (no worker runs here).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use integration_tests::api_process::ApiProcess;
use integration_tests::eventually;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_past_the_clients_share_is_answered_at_once_and_another_client_still_waits() {
    let api = ApiProcess::start(|c| c.max_long_polls_per_client = 2).await.unwrap();
    let id = api.task_id_of_upload(1).await;
    let url = format!("{}/api/v1/hashes/{id}?wait=30", api.base_url);
    let attacker = api.client_from("127.0.0.1".parse::<IpAddr>().unwrap());
    let held: Vec<_> = (0..2).map(|_| tokio::spawn(attacker.get(&url).send())).collect();
    eventually(Duration::from_secs(10), "the two long-polls held", || async {
        let metrics =
            api.client.get(format!("{}/metrics", api.base_url)).send().await.ok()?.text().await.ok()?;
        metrics.lines().any(|line| line == "md5_long_polls_waiting 2").then_some(())
    })
    .await
    .unwrap();
    // Its third is answered at once, with the task as it is.
    let started = Instant::now();
    let response = attacker.get(&url).timeout(Duration::from_secs(5)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["status"], "queued");
    assert!(started.elapsed() < Duration::from_secs(1), "answered after {:?}", started.elapsed());
    // Another client's long-poll is held for the time it asked.
    let other = api.client_from("127.0.0.2".parse::<IpAddr>().unwrap());
    let started = Instant::now();
    let response = other.get(format!("{}/api/v1/hashes/{id}?wait=2", api.base_url)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(1900), "held {:?}", started.elapsed());
    assert!(held.iter().all(|poll| !poll.is_finished()), "the attacker's two are still held");
    for poll in held {
        poll.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_on_every_connection_do_not_lock_a_new_client_out() {
    const CONNECTIONS: usize = 20;
    // The per-client share is set above the connections: only making room can let anyone in.
    let api = ApiProcess::start(|c| {
        c.max_connections = CONNECTIONS as u32;
        c.max_long_polls_per_client = 1000;
    })
    .await
    .unwrap();
    let id = api.task_id_of_upload(1).await;
    let url = format!("{}/api/v1/hashes/{id}?wait=60", api.base_url);
    let waiting = Arc::new(AtomicUsize::new(0));
    let answered_early = Arc::new(AtomicUsize::new(0));
    // The attacker: one connection per loop, each long-poll re-sent as soon as it is answered.
    let attackers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (url, waiting, answered_early) = (url.clone(), waiting.clone(), answered_early.clone());
            let client = reqwest::Client::builder().http1_only().pool_max_idle_per_host(1).build().unwrap();
            tokio::spawn(async move {
                loop {
                    waiting.fetch_add(1, Ordering::SeqCst);
                    let answer = client.get(&url).send().await;
                    waiting.fetch_sub(1, Ordering::SeqCst);
                    if answer.is_ok_and(|response| response.status() == 200) {
                        answered_early.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    // Every connection holds a long-poll (none answered for a second).
    eventually(Duration::from_secs(20), "every connection long-polling", || async {
        let before = answered_early.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        (waiting.load(Ordering::SeqCst) == CONNECTIONS && answered_early.load(Ordering::SeqCst) == before)
            .then_some(())
    })
    .await
    .unwrap();
    // Another client, on new connections, is served within seconds, again and again.
    let other = api.client_from("127.0.0.2".parse::<IpAddr>().unwrap());
    for attempt in 0..3 {
        let fresh = reqwest::Client::builder()
            .local_address("127.0.0.2".parse::<IpAddr>().unwrap())
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let started = Instant::now();
        assert!(api.healthy(&fresh).await, "attempt {attempt}: /healthz within 5 s");
        println!("attempt {attempt}: /healthz answered in {:.2}s", started.elapsed().as_secs_f64());
    }
    assert!(api.healthy(&other).await);
    // The long-polls that made room were answered (200, the task as it was), not cut.
    assert!(answered_early.load(Ordering::SeqCst) >= 3, "{}", answered_early.load(Ordering::SeqCst));
    for attacker in attackers {
        attacker.abort();
    }
}
