//! `md5-client` (the real binary) against servers that lie: an endless answer, a digest that is
//! not one, a server that ignores `?wait=`, and a service whose longest wait is shorter than the
//! client's. The client must stay bounded, print nothing it cannot vouch for, and say which
//! server misbehaved.

use std::time::{Duration, Instant};

use integration_tests::lying_server::{Lie, LyingServer};
use integration_tests::{TestApp, TestOptions, sibling_binary};
use serde_json::json;

/// Runs `md5-client --url url hash a.txt` (a 3-byte file) in a fresh folder, with `extra` flags
/// first; returns its output and how long it ran. Killed after 30 s.
async fn hash_a_file(url: &str, extra: &[&str]) -> (std::process::Output, Duration) {
    let dir = std::env::temp_dir().join(format!("md5-distrust-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.txt"), b"abc").unwrap();
    let args: Vec<&str> = extra.iter().copied().chain(["hash", "--progress", "lines", "a.txt"]).collect();
    let answer = client_in(&dir, url, &args).await;
    let _ = std::fs::remove_dir_all(&dir);
    answer
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_answer_is_read_no_further_than_64_kib() {
    let server = LyingServer::start(Lie::EndlessBody).await.unwrap();
    let (output, took) = hash_a_file(&server.url, &[]).await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(output.stdout.is_empty(), "no line for a file without a result");
    assert!(
        stderr(&output).contains("larger than 64 KiB") && stderr(&output).contains(&server.url),
        "{}",
        stderr(&output)
    );
    assert!(took < Duration::from_secs(10), "gave up in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_done_task_without_a_valid_md5_prints_nothing_and_fails() {
    for md5 in [
        json!("deadbeef\n0123456789abcdef0123456789abcdef  /etc/shadow"),
        json!(null),
        json!("D41D8CD98F00B204E9800998ECF8427E"),
        json!("d41d8cd98f00b204e9800998ecf8427"),
    ] {
        let server = LyingServer::start(Lie::Done(md5.clone())).await.unwrap();
        let (output, _) = hash_a_file(&server.url, &[]).await;
        assert_eq!(output.status.code(), Some(1), "md5 {md5}: {}", stderr(&output));
        assert!(output.stdout.is_empty(), "md5 {md5}: printed {:?}", String::from_utf8_lossy(&output.stdout));
        assert!(stderr(&output).contains("without a valid MD5") && stderr(&output).contains(&server.url));
        assert!(
            !stderr(&output).contains("\n0123"),
            "the server's text is shown escaped: {}",
            stderr(&output)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_ignores_wait_is_polled_with_growing_pauses_until_the_timeout() {
    let server = LyingServer::start(Lie::AlwaysQueued).await.unwrap();
    let (output, took) = hash_a_file(&server.url, &["--timeout", "4"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("not finished after 4 s"), "{}", stderr(&output));
    assert!((Duration::from_secs(4)..Duration::from_secs(12)).contains(&took), "ran {took:?}");
    let asked = server.task_requests();
    assert!(asked <= 12, "{asked} task requests in {took:?} (pauses of 0.25 s growing to 5 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_asks_for_the_longest_wait_the_service_allows() {
    let server = LyingServer::start(Lie::MaxWait(5)).await.unwrap();
    let (output, _) = hash_a_file(&server.url, &[]).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "900150983cd24fb0d6963f7d28e17f72  a.txt\n");
    let waits = server.waits.lock().unwrap().clone();
    assert_eq!(waits, [Some("30".to_owned()), Some("5".to_owned())], "asked 30, told 5, asked 5");

    // And against the real service with MAX_WAIT_SECONDS below 30.
    let app = TestApp::spawn(TestOptions::default().api(|c| c.max_wait_seconds = 5)).await.unwrap();
    let (output, _) = hash_a_file(&app.base_url, &[]).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "900150983cd24fb0d6963f7d28e17f72  a.txt\n");
    app.stop().await;
}

/// Runs `md5-client --url url <args>` in `dir`, killed after 30 s.
async fn client_in(dir: &std::path::Path, url: &str, args: &[&str]) -> (std::process::Output, Duration) {
    let mut command = tokio::process::Command::new(sibling_binary("md5-client").unwrap());
    command.current_dir(dir).env_remove("MD5_API_KEY").arg("--url").arg(url).args(args).kill_on_drop(true);
    let started = Instant::now();
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("md5-client ended within 30 s")
        .unwrap();
    (output, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_ok_only_for_a_digest_it_compared_and_never_for_a_service_that_ignores_it() {
    let dir = std::env::temp_dir().join(format!("md5-distrust-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.txt"), b"abc").unwrap();
    // The sums of "abc"; the file is then tampered with, as sha256sum -c would report.
    std::fs::write(
        dir.join("sums.sha256"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  a.txt\n",
    )
    .unwrap();
    std::fs::write(dir.join("sums.md5"), "900150983cd24fb0d6963f7d28e17f72  a.txt\n").unwrap();
    std::fs::write(dir.join("a.txt"), b"abd").unwrap();
    // A service that ignores Repr-Digest and ?digests= (an older one, or a proxy stripping the
    // header): `done`, an MD5 of its own, no other digest.
    let server = LyingServer::start(Lie::Done(json!("d41d8cd98f00b204e9800998ecf8427e"))).await.unwrap();
    let (output, _) = client_in(&dir, &server.url, &["check", "sums.sha256"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "a.txt: FAILED\n");
    assert!(stderr(&output).contains("could not be checked: the service's answer carries no sha-256 digest"));
    // An MD5 it does carry, but not the expected one: FAILED, as md5sum -c says.
    let (output, _) = client_in(&dir, &server.url, &["check", "sums.md5"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "a.txt: FAILED\n");
    assert!(stderr(&output).contains("1 computed checksum did NOT match"), "{}", stderr(&output));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_offset_never_advances_gets_the_file_at_most_retries_plus_one_times() {
    let dir = std::env::temp_dir().join(format!("md5-distrust-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("big.bin"), vec![7u8; 2 << 20]).unwrap();
    let server = LyingServer::start(Lie::AlwaysQueued).await.unwrap();
    let (output, took) = client_in(
        &dir,
        &server.url,
        &["--retries", "1", "--timeout", "20", "hash", "--resume-threshold", "1024", "big.bin"],
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("none was kept"), "{}", stderr(&output));
    // One try and one retry, not a loop.
    assert_eq!(server.appends.load(std::sync::atomic::Ordering::Relaxed), 2, "{}", stderr(&output));
    assert!(took < Duration::from_secs(15), "gave up after {took:?}");

    // --timeout bounds the whole file: with endless retries the upload still stops there.
    let (output, took) = client_in(
        &dir,
        &server.url,
        &["--retries", "1000", "--timeout", "3", "hash", "--resume-threshold", "1024", "big.bin"],
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("did not complete within --timeout"), "{}", stderr(&output));
    assert!(took < Duration::from_secs(10), "gave up after {took:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
