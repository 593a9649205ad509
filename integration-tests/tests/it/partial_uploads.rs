//! Unfinished resumable uploads as a hoarder uses them: declared large, fed slowly or never
//! finished. What one client may hold is bounded by bytes as well as by count, an idle upload
//! goes after `UPLOAD_IDLE_SECONDS`, and appends cannot keep one past `UPLOAD_EXPIRY_SECONDS`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use integration_tests::{TestApp, TestOptions};
use reqwest::{Client, Response};

use crate::resumable::{TUS, patch};

const MIB: u64 = 1024 * 1024;

/// A tus creation declaring `length` bytes.
pub(crate) async fn creation(client: &Client, base: &str, length: u64) -> Response {
    client
        .post(format!("{base}/api/v1/uploads"))
        .header(TUS.0, TUS.1)
        .header("Upload-Length", length)
        .send()
        .await
        .unwrap()
}

/// The absolute URL of a created upload.
fn location(base: &str, created: &Response) -> String {
    assert_eq!(created.status(), 201);
    format!("{base}{}", created.headers()["location"].to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_unfinished_uploads_are_bounded_by_their_declared_bytes_while_another_creates() {
    let app = TestApp::spawn(TestOptions::default().no_workers().api(|c| {
        c.max_open_upload_bytes_per_client = Some(3 * MIB);
    }))
    .await
    .unwrap();
    let base = &app.base_url;
    let hoarder = &app.client;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(location(base, &creation(hoarder, base, MIB).await));
    }
    // A fourth MiB would pass its 3 MiB: 429 with Retry-After naming the quota, and no file.
    let refused = creation(hoarder, base, MIB).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let detail = refused.text().await.unwrap();
    assert!(detail.contains("3145728 of its 3145728 bytes"), "{detail}");
    // A length that alone passes the share can never fit: 413. So does a deferred length, which
    // counts as MAX_UPLOAD_BYTES.
    assert_eq!(creation(hoarder, base, 4 * MIB).await.status(), 413);
    let deferred = hoarder
        .post(format!("{base}/api/v1/uploads"))
        .header(TUS.0, TUS.1)
        .header("Upload-Defer-Length", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(deferred.status(), 413);
    assert_eq!(app.upload_files().len(), 3, "no refused creation left a file");
    // Another client creates as usual.
    let other = Client::builder().local_address("127.0.0.2".parse::<IpAddr>().unwrap()).build().unwrap();
    location(base, &creation(&other, base, 2 * MIB).await);
    // A terminated upload gives its bytes back.
    let terminated = hoarder.delete(&held[0]).header(TUS.0, TUS.1).send().await.unwrap();
    assert_eq!(terminated.status(), 204);
    location(base, &creation(hoarder, base, MIB).await);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_upload_expires_after_the_idle_limit_and_appends_cannot_keep_one_past_its_lifetime() {
    let app = TestApp::spawn(TestOptions::default().no_workers().api(|c| {
        c.upload_idle_seconds = 2;
        c.upload_expiry_seconds = 8;
    }))
    .await
    .unwrap();
    let base = &app.base_url;
    let started = Instant::now();
    let idle = location(base, &creation(&app.client, base, MIB).await);
    let fed = location(base, &creation(&app.client, base, MIB).await);
    assert_eq!(patch(&app.client, &idle, 0, &[1u8; 1000], None).await.status(), 204);
    // The idle one goes within its idle limit and the janitor's period (1 s here), with slack.
    let mut offset = 0;
    let idle_expired = loop {
        // Meanwhile one byte a second keeps the other alive past the idle limit.
        let answer = patch(&app.client, &fed, offset, &[2u8], None).await;
        assert_eq!(answer.status(), 204, "fed at {:?}", started.elapsed());
        offset += 1;
        let head = app.client.head(&idle).header(TUS.0, TUS.1).send().await.unwrap();
        if head.status() == 410 {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(6), "the idle upload outlived 6 s");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    println!("idle upload expired after {idle_expired:?}");
    // The fed one expires at its lifetime, though a byte keeps coming every second.
    let fed_expired = loop {
        let answer = patch(&app.client, &fed, offset, &[2u8], None).await;
        match answer.status().as_u16() {
            204 => offset += 1,
            410 => break started.elapsed(),
            other => panic!("append answered {other}"),
        }
        assert!(started.elapsed() < Duration::from_secs(25), "the fed upload outlived its lifetime");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    println!("fed upload expired after {fed_expired:?}");
    assert!(fed_expired >= Duration::from_secs(8), "not before its lifetime: {fed_expired:?}");
    assert!(app.upload_files().is_empty(), "both files removed: {:?}", app.upload_files());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_that_fills_the_volume_gives_its_space_back_at_once() {
    use integration_tests::api_process::ApiProcess;
    // The api's UPLOAD_DIR is a 24 MiB tmpfs of its own (a mount namespace: `unshare`, from
    // util-linux, with user namespaces or root).
    let mount = r#"mount -t tmpfs -o size=24m tmpfs "$UPLOAD_DIR" && exec "$@""#;
    let wrapper = ["unshare", "--mount", "--map-root-user", "sh", "-c", mount, "sh"];
    let api = ApiProcess::start_wrapped(&wrapper, |c| {
        c.min_free_bytes = MIB;
        // Not the bound under test (a quarter of this volume would refuse the creation).
        c.max_open_upload_bytes_per_client = Some(1024 * MIB);
    })
    .await
    .unwrap();
    let base = &api.base_url;
    let url = location(base, &creation(&api.client, base, 64 * MIB).await);
    // 40 MiB into 24: the disk fills mid-append.
    let answer = patch(&api.client, &url, 0, &vec![7u8; 40 * MIB as usize], None).await;
    assert_eq!(answer.status(), 507, "{:?}", answer.text().await);
    let head = api.client.head(&url).header(TUS.0, TUS.1).send().await.unwrap();
    assert_eq!(head.headers()["upload-offset"], "0", "nothing was durable");
    // The bytes that counted for nothing are gone: another client's 8 MiB upload is stored.
    let other = api.client_from("127.0.0.2".parse::<IpAddr>().unwrap());
    assert_eq!(api.upload_with(&other, "other.bin", vec![1u8; 8 * MIB as usize]).await, 202);
}
