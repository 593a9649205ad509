//! Multi-buffer MD5 through the whole service: a real `md5-worker` process forced onto each
//! path this CPU has (`MD5_SIMD`) drains files of mixed sizes, more of them than it has lanes.

use std::time::Duration;

use integration_tests::launcher::free_port;
use integration_tests::{TestApp, TestOptions, eventually, md5_hex, random_bytes, sibling_binary};
use serde_json::Value;
use worker::lanes::Engine;

/// Sizes around the lanes' chunk (64 KiB) and the single-thread limit (256 KiB), small to 3 MiB.
fn sizes(count: usize) -> Vec<usize> {
    let chunk = worker::lanes::CHUNK_BYTES;
    let edges = [0, 1, 55, 4 * chunk, 4 * chunk + 1, 5 * chunk - 1, 5 * chunk, 7 * chunk + 63, 3 << 20];
    (0..count).map(|i| edges[i % edges.len()] + (i / edges.len()) * 70_001).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_forced_onto_each_path_hashes_more_files_than_lanes_and_reports_them() {
    let engines = Engine::available();
    println!("paths: {:?}", engines.iter().map(|engine| engine.path().name()).collect::<Vec<_>>());
    for engine in engines {
        let name = engine.path().name();
        let mut app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
        // Stored before the worker starts: they all wait at once, more than two threads' lanes.
        let count = 2 * 2 * engine.width() + 7;
        let mut expected = Vec::new();
        let mut large_bytes = 0u64;
        for (n, size) in sizes(count).into_iter().enumerate() {
            let bytes = random_bytes(size, n as u64 + 7);
            if size > 256 * 1024 {
                large_bytes += size as u64;
            }
            let md5 = md5_hex(&bytes);
            let response = app.upload(&format!("f{n}"), bytes).await;
            assert_eq!(response.status(), 202);
            expected.push((response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned(), md5));
        }
        let metrics = format!("127.0.0.1:{}", free_port());
        app.start_worker_process_with(
            (count + 4) as u32,
            &[("MD5_SIMD", name), ("METRICS_ADDR", &metrics), ("RUST_LOG", "warn")],
        )
        .unwrap();
        for (id, md5) in &expected {
            let task = app.wait_finished(id, Duration::from_secs(60)).await;
            assert_eq!(task["status"], "done", "{name}: {task}");
            assert_eq!(task["md5"], md5.as_str(), "{name}: {task}");
        }
        let lanes = format!("md5_lanes{{path=\"{name}\"}} {}", engine.lanes());
        let text = eventually(Duration::from_secs(10), "the worker's metrics", || async {
            let text = reqwest::get(format!("http://{metrics}/metrics")).await.ok()?.text().await.ok()?;
            text.contains(&lanes).then_some(text)
        })
        .await
        .unwrap_or_else(|err| panic!("{err}: /metrics has no {lanes}"));
        assert!(text.contains("md5_lanes_in_use 0"), "{name}: every lane free once all is done:\n{text}");
        let hashed: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix("md5_hashed_bytes_total "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0);
        assert!(
            hashed >= large_bytes as f64,
            "{name}: {hashed} bytes counted, {large_bytes} went through lanes"
        );
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_path_the_cpu_lacks_stops_the_worker_at_start_with_the_reason() {
    let available: Vec<&str> = Engine::available().iter().map(|engine| engine.path().name()).collect();
    for (path, reason) in [("avx512", "this CPU has no AVX-512"), ("avx2", "this CPU has no AVX2")] {
        if available.contains(&path) {
            continue;
        }
        let output = std::process::Command::new(sibling_binary("md5-worker").unwrap())
            .env("MD5_SIMD", path)
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{path}: {stderr}");
        assert!(stderr.contains(reason), "{path}: {stderr}");
    }
    let output = std::process::Command::new(sibling_binary("md5-worker").unwrap())
        .env("MD5_SIMD", "sse9")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid value 'sse9'") && stderr.contains("auto, avx512, avx2, scalar"),
        "{stderr}"
    );
}
