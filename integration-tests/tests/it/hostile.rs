//! Hostile and clumsy clients: each test performs one attack on a real `md5-api` process and
//! checks the bound that stops it, while a normal client (from another loopback address) is
//! still served and the api's peak memory stays ≤ 64 MiB.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use integration_tests::api_process::ApiProcess;
use integration_tests::{TestApp, TestOptions, attacks, eventually, random_bytes};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::raw_http;

/// The bound on the api's resident memory under every attack here.
const MAX_RSS_MIB: f64 = 64.0;

fn normal_address() -> IpAddr {
    "127.0.0.2".parse().expect("an address")
}

fn assert_memory_bounded(api: &ApiProcess) {
    let peak = api.peak_rss_mib();
    assert!(peak > 0.0 && peak <= MAX_RSS_MIB, "api peak RSS {peak:.1} MiB (bound {MAX_RSS_MIB} MiB)");
}

fn no_partial_files(api: &ApiProcess) -> bool {
    api.upload_files().iter().all(|path| !path.to_string_lossy().ends_with(".part"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preamble_or_part_header_that_never_ends_is_refused_without_being_held() {
    let api = ApiProcess::start(|_| {}).await.unwrap();
    let normal = api.client_from(normal_address());
    for what in ["a long preamble", "an endless part header"] {
        let attack = tokio::spawn({
            let base_url = api.base_url.clone();
            async move {
                // 96 MiB: every body byte counts, and the parser may hold only a small part of it.
                match what {
                    "a long preamble" => attacks::long_preamble(&base_url, 96 << 20).await,
                    _ => attacks::endless_part_header(&base_url, 96 << 20).await,
                }
            }
        });
        assert_eq!(api.upload_with(&normal, "normal.txt", b"normal".to_vec()).await, 202, "during {what}");
        assert!(api.healthy(&normal).await, "/healthz during {what}");
        assert_eq!(attack.await.unwrap(), 400, "{what} is refused");
    }
    assert_memory_bounded(&api);
    assert!(no_partial_files(&api), "{:?}", api.upload_files());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_body_counts_against_the_upload_limit() {
    let api = ApiProcess::start(|c| c.max_upload_bytes = 1_048_576).await.unwrap();
    // 4 MiB of preamble before a tiny valid part, on an api that takes 1 MiB.
    let status = attacks::long_preamble(&api.base_url, 4 << 20).await;
    assert!(status == 400 || status == 413, "got {status}");
    // A part larger than the limit, sent without Content-Length.
    let head = b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.bin\"\r\n\r\n";
    assert_eq!(attacks::chunked_upload(&api.base_url, head, 2 << 20, b"\r\n--B--\r\n").await, 413);
    eventually(Duration::from_secs(10), "no file left", || async {
        api.upload_files().is_empty().then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_large_uploads_in_flight_keep_the_api_under_64_mib() {
    let api = ApiProcess::start(|c| c.max_uploads_per_client = Some(64)).await.unwrap();
    let normal = api.client_from(normal_address());
    let data = bytes::Bytes::from(random_bytes(16 * 1024 * 1024, 7));
    let uploads: Vec<_> = (0..64)
        .map(|i| {
            let (client, url, data) =
                (api.client.clone(), format!("{}/api/v1/hashes", api.base_url), data.clone());
            tokio::spawn(async move {
                let part = reqwest::multipart::Part::stream(data);
                let sent = integration_tests::post_file(&client, &url, &format!("big-{i}.bin"), part).await;
                sent.map_or(0, |r| r.status().as_u16())
            })
        })
        .collect();
    assert!(api.healthy(&normal).await, "/healthz while 64 uploads stream");
    for upload in uploads {
        assert_eq!(upload.await.unwrap(), 202);
    }
    assert_memory_bounded(&api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_add_no_metric_series_and_get_problem_json() {
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let mut methods: Vec<String> = (0..300).map(|i| format!("ZQ{i:06}")).collect();
    methods.extend((0..10).map(|i| format!("LONG{i}{}", "M".repeat(20_000))));
    for method in &methods {
        assert_eq!(attacks::made_up_method(&app.base_url, method).await, 405, "{}", &method[..10]);
    }
    let response = app
        .client
        .request(reqwest::Method::from_bytes(b"ZQFAKE").unwrap(), format!("{}/api/v1/hashes", app.base_url));
    let response = response.send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let text =
        app.client.get(format!("{}/metrics", app.base_url)).send().await.unwrap().text().await.unwrap();
    assert!(!text.contains("ZQ0") && !text.contains("LONG"), "no label carries a client's method");
    assert!(text.contains("method=\"other\""), "made-up methods are counted as other");
    assert!(text.len() < 256 * 1024, "/metrics stays small: {} bytes", text.len());
}

fn soft_open_file_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_capped_while_others_are_served() {
    integration_tests::procfs::raise_own_file_limit();
    let api = ApiProcess::start_wrapped(&["prlimit", "--nofile=512:4096", "--"], |c| {
        c.header_timeout_seconds = 2;
        c.max_connections = 200;
    })
    .await
    .unwrap();
    assert_eq!(
        soft_open_file_limit(api.pid()),
        Some(4096),
        "the soft open-file limit is raised to the hard one"
    );
    let normal = api.client_from(normal_address());
    let baseline_fds = api.open_fds();
    // 400 connections that send nothing, a quarter of them after the HTTP/2 preface.
    let mut attackers = attacks::silent_connections(&api.base_url, 400).await;
    assert_eq!(attackers.len(), 400);
    let started = Instant::now();
    assert!(
        api.open_fds() <= baseline_fds + 200 + 16,
        "at most MAX_CONNECTIONS are open: {}",
        api.open_fds()
    );
    let served = eventually(Duration::from_secs(12), "/healthz to answer during the attack", || async {
        api.healthy(&normal).await.then_some(())
    })
    .await;
    assert!(served.is_ok(), "a normal client is served while 400 connections stay silent");
    for (i, stream) in attackers.iter_mut().enumerate() {
        assert!(
            attacks::closed_within(stream, Duration::from_secs(15)).await,
            "silent connection {i} was closed"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(20), "all closed within a few header timeouts");
    assert!(
        api.open_fds() <= baseline_fds + 8,
        "descriptors are given back: {} vs {baseline_fds}",
        api.open_fds()
    );
    assert_memory_bounded(&api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickle_uploads_are_cut_and_cannot_take_every_slot() {
    let api = ApiProcess::start(|c| {
        c.max_concurrent_uploads = 8;
        c.max_uploads_per_client = Some(6);
        c.min_upload_bytes_per_second = 1000;
        c.upload_rate_window_seconds = 3;
    })
    .await
    .unwrap();
    let normal = api.client_from(normal_address());
    let trickles: Vec<_> = (0..8)
        .map(|_| {
            let base_url = api.base_url.clone();
            tokio::spawn(
                async move { attacks::trickle_upload(&base_url, None, Duration::from_millis(300)).await },
            )
        })
        .collect();
    // Six trickles hold their client's share of the slots (the other two were refused).
    eventually(Duration::from_secs(10), "six slots in use", || async {
        let text =
            api.client.get(format!("{}/metrics", api.base_url)).send().await.ok()?.text().await.ok()?;
        text.lines().any(|line| line == "md5_upload_slots_in_use 6").then_some(())
    })
    .await
    .unwrap();
    let started = Instant::now();
    assert_eq!(
        api.upload_with(&normal, "normal.txt", b"normal".to_vec()).await,
        202,
        "another client gets a slot"
    );
    assert!(started.elapsed() < Duration::from_secs(2), "at once, not after the trickles");
    assert!(api.healthy(&normal).await);
    let mut statuses = Vec::new();
    for trickle in trickles {
        statuses.push(trickle.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [408, 408, 408, 408, 408, 408, 429, 429],
        "six cut for their rate, two refused past the client's quota of slots"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "cut within about one rate window");
    eventually(Duration::from_secs(10), "only the normal upload's file to remain", || async {
        (api.upload_files().len() == 1 && no_partial_files(&api)).then_some(())
    })
    .await
    .unwrap_or_else(|err| panic!("{err}: {:?}", api.upload_files()));
    assert_memory_bounded(&api);
}

/// Makes `dir` refuse writes for as long as the value lives: a read-only bind mount when
/// running as root (root ignores permission bits), else mode 0555.
struct ReadOnly(std::path::PathBuf, bool);

impl ReadOnly {
    fn make(dir: &std::path::Path) -> ReadOnly {
        let run = |args: &[&str]| {
            std::process::Command::new(args[0]).args(&args[1..]).status().is_ok_and(|s| s.success())
        };
        let path = dir.to_str().unwrap();
        if rustix::process::geteuid().is_root() {
            assert!(run(&["mount", "--bind", path, path]), "mount --bind (needs root)");
            assert!(run(&["mount", "-o", "remount,ro,bind", path]), "remount read-only");
            ReadOnly(dir.to_owned(), true)
        } else {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
            ReadOnly(dir.to_owned(), false)
        }
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        if self.1 {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        } else {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o755));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_upload_volume_makes_the_api_unready_and_uploads_503() {
    let api = ApiProcess::start(|_| {}).await.unwrap();
    let readyz = || async { api.client.get(format!("{}/readyz", api.base_url)).send().await.unwrap() };
    assert_eq!(readyz().await.status(), 200);
    {
        let _read_only = ReadOnly::make(&api.upload_dir);
        let response = readyz().await;
        assert_eq!(response.status(), 503);
        let body: Value = response.json().await.unwrap();
        assert!(body["upload_dir"]["error"].is_string(), "{body}");
        assert_eq!(body["postgres"], "ok");
        let url = format!("{}/api/v1/hashes", api.base_url);
        let part = reqwest::multipart::Part::bytes(b"x".to_vec());
        let response = integration_tests::post_file(&api.client, &url, "x.txt", part).await.unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let problem: Value = response.json().await.unwrap();
        assert!(problem["detail"].as_str().unwrap().contains("not writable"), "{problem}");
    }
    assert_eq!(readyz().await.status(), 200, "ready again once the volume is writable");
}

fn backdate(path: &std::path::Path, by: Duration) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_modified(std::time::SystemTime::now() - by).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_files_of_a_killed_api_are_removed_and_live_ones_kept() {
    // BODY_IDLE_TIMEOUT_SECONDS=1: a partial file untouched for 12 s belongs to a dead upload.
    let mut api = ApiProcess::start(|c| c.body_idle_timeout_seconds = 1).await.unwrap();
    // An upload in progress when the api is killed.
    let mut stream = raw_http::connect(&api.base_url).await;
    let head = "POST /api/v1/hashes HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=B\r\n\
                Content-Length: 50000000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(raw_http::multipart_head("B").as_bytes()).await.unwrap();
    stream.write_all(&vec![9u8; 4 * 1024 * 1024]).await.unwrap();
    let part = eventually(Duration::from_secs(10), "the partial file", || async {
        api.upload_files().into_iter().find(|p| p.to_string_lossy().ends_with(".part"))
    })
    .await
    .unwrap();
    api.kill();
    drop(stream);
    assert!(part.exists(), "kill -9 leaves the partial file");
    backdate(&part, Duration::from_secs(600));
    let fresh = api.upload_dir.join(format!(".{}.part", uuid::Uuid::now_v7()));
    std::fs::write(&fresh, b"an upload of another api, alive").unwrap();
    api.restart().await.unwrap();
    eventually(Duration::from_secs(10), "the dead upload's partial file to go at start", || async {
        (!part.exists()).then_some(())
    })
    .await
    .unwrap();
    assert!(fresh.exists(), "a live upload's partial file is kept");
    // And periodically, not only at start.
    backdate(&fresh, Duration::from_secs(600));
    eventually(Duration::from_secs(20), "a stale partial file to go while the api runs", || async {
        (!fresh.exists()).then_some(())
    })
    .await
    .unwrap();
}

/// What an api killed between an upload's rename (or a resumable upload's creation) and its row
/// leaves behind: a file named by a task id that no row has. Made here by hand, as the kill
/// cannot be timed into that window reliably.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_no_task_owns_is_removed_once_an_hour_old_and_every_other_file_kept() {
    let mut api = ApiProcess::start(|_| {}).await.unwrap();
    let owned = api.upload_dir.join(api.task_id_of_upload(7).await);
    assert!(owned.exists(), "a queued task's file (no worker runs)");
    let orphan = api.upload_dir.join(uuid::Uuid::now_v7().to_string());
    let young = api.upload_dir.join(uuid::Uuid::now_v7().to_string());
    let not_an_id = api.upload_dir.join("notes.txt");
    for path in [&orphan, &young, &not_an_id] {
        std::fs::write(path, b"x").unwrap();
    }
    let hours_ago = Duration::from_secs(2 * 3600);
    for path in [&orphan, &owned, &not_an_id] {
        backdate(path, hours_ago);
    }
    api.restart().await.unwrap();
    eventually(Duration::from_secs(10), "the hour-old file no task owns to go at start", || async {
        (!orphan.exists()).then_some(())
    })
    .await
    .unwrap();
    assert!(owned.exists(), "a task's file is kept, however old");
    assert!(young.exists(), "a file younger than an hour is kept: its row may still be coming");
    assert!(not_an_id.exists(), "a name that is no task id is not the api's to remove");
    assert!(api.stderr().contains("removed files that no task owns"), "{}", api.stderr());
    let metrics =
        api.client.get(format!("{}/metrics", api.base_url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|line| line == "md5_orphan_files_removed_total 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_api_key_means_no_authentication_and_is_warned_about() {
    let api = ApiProcess::start(|c| c.api_key = Some(String::new())).await.unwrap();
    assert!(api.stderr().contains("API_KEY is set but empty"), "{}", api.stderr());
    assert_eq!(api.upload_with(&api.client, "a.txt", b"a".to_vec()).await, 202);
    let url = format!("{}/api/v1/hashes/{}", api.base_url, uuid::Uuid::new_v4());
    let status = api.client.get(&url).header("authorization", "Bearer x").send().await.unwrap().status();
    assert_eq!(status, 404, "any token or none: authentication is off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_matched_in_any_case() {
    let app = TestApp::spawn(TestOptions::default().no_workers().api(|c| c.api_key = Some("secret".into())))
        .await
        .unwrap();
    let url = format!("{}/api/v1/hashes/{}", app.base_url, uuid::Uuid::new_v4());
    for value in ["Bearer secret", "bearer secret", "BEARER secret", "bEaReR   secret"] {
        let status = app.client.get(&url).header("authorization", value).send().await.unwrap().status();
        assert_eq!(status, 404, "{value:?} is accepted");
    }
    for value in ["Bearer secre", "Basic secret", "secret", "Bearersecret"] {
        let status = app.client.get(&url).header("authorization", value).send().await.unwrap().status();
        assert_eq!(status, 401, "{value:?} is refused");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_names_are_stored_without_invisible_characters_and_rfc_5987_names_are_honoured() {
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let cases: [(&str, &str); 4] = [
        ("form-data; name=\"file\"; filename=\"invoice\u{202E}fdp.exe\"", "invoicefdp.exe"),
        ("form-data; name=\"file\"; filename=\"a\u{200B}b\u{FEFF}c\u{2028}.txt\"", "abc.txt"),
        (
            "form-data; name=\"file\"; filename=\"x.txt\"; filename*=UTF-8''%E2%82%AC%20r%C3%A9sum%C3%A9.txt",
            "€ résumé.txt",
        ),
        ("form-data; NAME=\"file\"; FILENAME=\"upper.txt\"", "upper.txt"),
    ];
    for (disposition, expected) in cases {
        let body = format!("--B\r\nContent-Disposition: {disposition}\r\n\r\nhello\r\n--B--\r\n");
        let response = app
            .client
            .post(format!("{}/api/v1/hashes", app.base_url))
            .header("content-type", "multipart/form-data; boundary=B")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{disposition}");
        let task: Value = response.json().await.unwrap();
        assert_eq!(task["file_name"], expected, "{disposition}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_url_that_cannot_work_fails_at_once_and_a_refused_one_names_the_server() {
    let binary = integration_tests::sibling_binary("md5-api").unwrap();
    let admin = integration_tests::admin_database_url();
    let (base, _) = admin.rsplit_once('/').unwrap();
    for url in [
        format!("{base}/md5_no_such_database"),
        "postgres://no_such_role@127.0.0.1:5432/md5".to_owned(),
        "not a url".to_owned(),
    ] {
        let started = Instant::now();
        let output = tokio::process::Command::new(&binary)
            .env("DATABASE_URL", &url)
            .env("UPLOAD_DIR", std::env::temp_dir().join("md5-unused-uploads"))
            .env("BIND_ADDR", "127.0.0.1:0")
            .output();
        let output = tokio::time::timeout(Duration::from_secs(20), output).await.expect("exits").unwrap();
        assert!(!output.status.success(), "{url}");
        assert!(started.elapsed() < Duration::from_secs(10), "{url}: failed after {:?}", started.elapsed());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("DATABASE_URL"), "{url}: {stderr}");
    }
    let port = integration_tests::launcher::free_port();
    let mut child = tokio::process::Command::new(&binary)
        .env("DATABASE_URL", format!("postgres://postgres@127.0.0.1:{port}/md5"))
        .env("UPLOAD_DIR", std::env::temp_dir().join("md5-unused-uploads"))
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let named = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buffer[..n]);
            if String::from_utf8_lossy(&seen).contains(&format!("127.0.0.1:{port}")) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(named.ok(), Some(true), "the retry names the server: {}", String::from_utf8_lossy(&seen));
    let _ = child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_the_api_sends_is_problem_json() {
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let id = uuid::Uuid::new_v4();
    let requests = [
        (reqwest::Method::GET, format!("/api/v1/hashes/{id}/"), 404),
        (reqwest::Method::GET, "/no/such/page".to_owned(), 404),
        (reqwest::Method::OPTIONS, "/api/v1/hashes".to_owned(), 405),
        (reqwest::Method::PUT, format!("/api/v1/hashes/{id}"), 405),
        (reqwest::Method::DELETE, format!("/api/v1/hashes/{id}"), 404),
        (reqwest::Method::GET, format!("/api/v1/hashes/{id}/events"), 404),
    ];
    for (method, path, status) in requests {
        let response =
            app.client.request(method.clone(), format!("{}{path}", app.base_url)).send().await.unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
        assert_eq!(response.headers()["content-type"], "application/problem+json", "{method} {path}");
        if status == 405 {
            assert!(response.headers().contains_key("allow"), "{method} {path} says what is allowed");
        }
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["status"], status, "{method} {path}");
    }
    // Requests hyper refuses before routing: a 70,000-character id, a garbled request line.
    let long = format!("GET /api/v1/hashes/{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(70_000));
    for request in [long.as_bytes(), b"GARBLED\r\n\r\n".as_slice()] {
        let mut stream = raw_http::connect(&app.base_url).await;
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        let status: u16 = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        assert!((400..500).contains(&status), "{}", &answer[..answer.len().min(200)]);
        assert!(answer.to_ascii_lowercase().contains("content-type: application/problem+json"), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
        let problem: Value = serde_json::from_str(body).unwrap_or_else(|err| panic!("{err}: {body:?}"));
        assert_eq!(problem["status"], status);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_docs_and_api_carry_browser_security_headers() {
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    for path in [
        "/",
        "/docs/",
        "/assets/app.js",
        "/openapi.json",
        &format!("/api/v1/hashes/{}", uuid::Uuid::new_v4()),
    ] {
        let response = app.client.get(format!("{}{path}", app.base_url)).send().await.unwrap();
        let headers = response.headers();
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_whose_client_leaves_after_the_last_byte_end_done_or_leave_nothing() {
    let app = TestApp::spawn(TestOptions::default().worker(|c| c.worker_concurrency = 8)).await.unwrap();
    // Warm the pool, so the waves race the commit, not the first connections.
    assert_eq!(app.upload("warm.txt", b"warm".to_vec()).await.status(), 202);
    // Waves of 20, each client leaving 0 to 38 ms after its last byte without reading the
    // answer: the api may be anywhere between reading the body and the 202.
    for wave in 0..15 {
        let uploads: Vec<_> = (0..20)
            .map(|i| {
                let base_url = app.base_url.clone();
                tokio::spawn(async move {
                    let body = format!(
                        "--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"gone-{wave}-{i}.txt\"\r\n\r\n\
                         file {wave} {i}\r\n--B--\r\n"
                    );
                    let request = format!(
                        "POST /api/v1/hashes HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=B\r\n\
                         Content-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let mut stream = raw_http::connect(&base_url).await;
                    let _ = stream.write_all(request.as_bytes()).await;
                    tokio::time::sleep(Duration::from_millis(2 * i)).await;
                    drop(stream);
                })
            })
            .collect();
        for upload in uploads {
            upload.await.unwrap();
        }
    }
    use diesel::{ExpressionMethods as _, QueryDsl as _};
    use diesel_async::RunQueryDsl as _;
    use shared::schema::md5_tasks::dsl;
    let unfinished = || async {
        let mut conn = app.db().await;
        let open: i64 = dsl::md5_tasks
            .filter(dsl::status.eq_any([shared::TaskStatus::Queued, shared::TaskStatus::Processing]))
            .count()
            .get_result(&mut conn)
            .await
            .unwrap();
        open
    };
    eventually(Duration::from_secs(60), "every stored task to finish", || async {
        (unfinished().await == 0 && app.upload_files().is_empty() && app.pending_count().await.ok()? == 0)
            .then_some(())
    })
    .await
    .unwrap_or_else(|err| panic!("{err}: files {:?}", app.upload_files()));
    let mut conn = app.db().await;
    let failed: Vec<Option<String>> = dsl::md5_tasks
        .filter(dsl::status.eq(shared::TaskStatus::Failed))
        .select(dsl::error)
        .load(&mut conn)
        .await
        .unwrap();
    assert!(failed.is_empty(), "no task fails for a client that left: {failed:?}");
    let rows = app.row_count().await as usize;
    eprintln!("{} of 300 uploads were stored before their client left", rows - 1);
    assert!(rows > 1, "some uploads were stored: {rows}");
    assert_eq!(app.log_lines().len(), rows, "one log line per stored task");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_creating_tasks_as_fast_as_it_can_gets_its_rate_and_429s_while_another_creates() {
    const RATE: u32 = 5;
    let api = ApiProcess::start(|c| c.max_tasks_per_client_per_second = RATE).await.unwrap();
    let attacker = api.client_from("127.0.0.1".parse().unwrap());
    let started = Instant::now();
    let (mut accepted, mut refused) = (0u32, 0u32);
    while started.elapsed() < Duration::from_secs(2) {
        let response = integration_tests::post_file(
            &attacker,
            &format!("{}/api/v1/hashes", api.base_url),
            "empty",
            reqwest::multipart::Part::bytes(Vec::new()),
        )
        .await
        .unwrap();
        match response.status().as_u16() {
            202 => accepted += 1,
            429 => {
                let wait: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=2).contains(&wait), "Retry-After {wait}");
                refused += 1;
            }
            other => panic!("answered {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("{accepted} created and {refused} refused in {elapsed:.2}s at {RATE}/s");
    // A second's worth at once, then the rate.
    assert!(
        f64::from(accepted) <= f64::from(RATE) * (1.0 + elapsed) + 1.0,
        "{accepted} created in {elapsed:.2}s"
    );
    assert!(refused > 0);
    // Another client creates at once.
    let normal = api.client_from(normal_address());
    assert_eq!(api.upload_with(&normal, "normal.bin", vec![1u8; 100]).await, 202);
}
