//! The service's edge: OpenAPI, Swagger UI, metrics, open and protected routes, slow clients.

use std::time::{Duration, Instant};

use integration_tests::launcher::free_port;
use integration_tests::{TestApp, TestOptions, eventually};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::raw_http;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_covers_every_route_and_swagger_ui_is_served_offline() {
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let doc: Value =
        app.client.get(format!("{}/openapi.json", app.base_url)).send().await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    for path in [
        "/api/v1/hashes",
        "/api/v1/hashes/{id}",
        "/hashes/",
        "/hashes/{task_id}",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    let upload = &doc["paths"]["/api/v1/hashes"]["post"];
    for status in ["202", "400", "401", "413", "415", "503", "507"] {
        assert!(upload["responses"][status].is_object(), "POST /api/v1/hashes documents {status}");
    }
    assert!(upload["requestBody"]["content"]["multipart/form-data"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // The flows are declared (schemathesis' stateful phase follows them), operation ids unique.
    let link = &upload["responses"]["202"]["links"]["GetHash"];
    assert_eq!(link["operationId"], "get_hash_v1", "{link}");
    assert_eq!(link["parameters"]["id"], "$response.body#/id", "{link}");
    let compat = &doc["paths"]["/hashes/"]["post"]["responses"]["200"]["links"]["GetHash"];
    assert_eq!(compat["parameters"]["task_id"], "$response.body#/task_id", "{compat}");
    let ids: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values().map(|op| op["operationId"].as_str().unwrap()))
        .collect();
    let unique: std::collections::HashSet<&&str> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "operation ids are unique: {ids:?}");
    // Every documented operation is served: no router 404 ("no resource at this path") or 405.
    let id = uuid::Uuid::now_v7().to_string();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let url = format!("{}{}", app.base_url, path.replace("{id}", &id).replace("{task_id}", &id));
        for method in item.as_object().unwrap().keys() {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = app.client.request(method.clone(), &url).send().await.unwrap();
            let status = response.status();
            let body = response.text().await.unwrap();
            assert!(
                status != 405 && !body.contains("no resource at this path"),
                "{method} {path} is documented but not served: {status} {body}"
            );
        }
    }

    let page = app.client.get(format!("{}/docs/", app.base_url)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "Swagger UI page");
    assert!(!html.contains("https://"), "no asset is fetched from the internet");
    let bundle = app.client.get(format!("{}/docs/swagger-ui-bundle.js", app.base_url)).send().await.unwrap();
    assert_eq!(bundle.status(), 200, "the Swagger UI bundle is served from the binary");
    let config =
        app.client.get(format!("{}/docs/swagger-initializer.js", app.base_url)).send().await.unwrap();
    assert!(config.text().await.unwrap().contains("/openapi.json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_uploads_requests_tasks_and_the_stream_in_api_and_worker() {
    let metrics_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let app =
        TestApp::spawn(TestOptions::default().worker(|c| c.metrics_addr = Some(metrics_addr))).await.unwrap();
    let response = app.upload("m.txt", b"metrics".to_vec()).await;
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    app.wait_finished(&id, Duration::from_secs(30)).await;
    let text =
        app.client.get(format!("{}/metrics", app.base_url)).send().await.unwrap().text().await.unwrap();
    for name in [
        "md5_uploads_total",
        "md5_upload_bytes_total",
        "md5_http_requests_total",
        "md5_tasks{status=\"done\"}",
        "md5_stream_length",
        "md5_stream_pending",
        "md5_http_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(name), "api /metrics has {name}");
    }
    assert!(text.contains("route=\"/api/v1/hashes\""), "requests are labelled by route template");
    let worker_text = eventually(Duration::from_secs(10), "the worker's metrics", || async {
        let text = reqwest::get(format!("http://{metrics_addr}/metrics")).await.ok()?.text().await.ok()?;
        text.contains("md5_tasks_finished_total").then_some(text)
    })
    .await
    .unwrap();
    for name in
        ["md5_hash_duration_seconds_bucket", "md5_upload_to_done_seconds_bucket", "md5_hashed_bytes_total"]
    {
        assert!(worker_text.contains(name), "worker /metrics has {name}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_api_key_the_page_docs_health_and_metrics_stay_open() {
    let app = TestApp::spawn(TestOptions::default().no_workers().api(|c| c.api_key = Some("k".into())))
        .await
        .unwrap();
    for path in ["/", "/docs/", "/openapi.json", "/healthz", "/readyz", "/metrics"] {
        let status = app.client.get(format!("{}{path}", app.base_url)).send().await.unwrap().status();
        assert_eq!(status, 200, "{path} is open");
    }
    let url = format!("{}/api/v1/hashes/{}", app.base_url, uuid::Uuid::new_v4());
    assert_eq!(app.client.get(&url).header("authorization", "Bearer k2").send().await.unwrap().status(), 401);
    assert_eq!(
        app.client.get(&url).header("authorization", "Basic aw==").send().await.unwrap().status(),
        401
    );
    assert_eq!(app.client.get(&url).header("authorization", "Bearer k").send().await.unwrap().status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut_off_while_others_are_served() {
    let app = TestApp::spawn(TestOptions::default().no_workers().api(|c| c.header_timeout_seconds = 1))
        .await
        .unwrap();
    let mut slow = raw_http::connect(&app.base_url).await;
    slow.write_all(b"POST /api/v1/hashes HTTP/1.1\r\nHost: t\r\nContent-Ty").await.unwrap();
    let started = Instant::now();
    // Meanwhile normal requests are served.
    for _ in 0..5 {
        let status = app.client.get(format!("{}/healthz", app.base_url)).send().await.unwrap().status();
        assert_eq!(status, 200);
    }
    let mut buffer = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match slow.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue, // a 408 answer before the close is fine
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection was closed");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(5), "closed after about the 1 s header timeout, not {elapsed:?}");
    assert!(app.upload_files().is_empty());
}

#[test]
fn help_documents_every_setting_and_bad_settings_fail_naming_the_variable() {
    let api = integration_tests::sibling_binary("md5-api").unwrap();
    let worker = integration_tests::sibling_binary("md5-worker").unwrap();
    let help = std::process::Command::new(&api).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for variable in [
        "DATABASE_URL",
        "REDIS_URL",
        "BIND_ADDR",
        "UPLOAD_DIR",
        "JOBS_STREAM",
        "JOBS_GROUP",
        "MAX_UPLOAD_BYTES",
        "API_KEY",
        "RUST_LOG",
        "LOG_FORMAT",
        "MIN_FREE_BYTES",
        "HEADER_TIMEOUT_SECONDS",
        "BODY_IDLE_TIMEOUT_SECONDS",
        "MAX_CONCURRENT_UPLOADS",
        "MAX_UPLOADS_PER_CLIENT",
        "MIN_UPLOAD_BYTES_PER_SECOND",
        "UPLOAD_RATE_WINDOW_SECONDS",
        "MAX_CONNECTIONS",
        "MAX_EVENT_STREAMS",
        "MAX_EVENT_STREAMS_PER_CLIENT",
    ] {
        assert!(help.contains(&format!("[env: {variable}")), "md5-api --help documents {variable}");
    }
    // A worker's setting only: the api never deletes an upload.
    assert!(!help.contains("KEEP_UPLOADS"), "md5-api --help offers KEEP_UPLOADS, which it ignores");
    let help = std::process::Command::new(&worker).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for variable in [
        "DATABASE_URL",
        "REDIS_URL",
        "UPLOAD_DIR",
        "LOG_FILE",
        "LOG_MAX_BYTES",
        "JOBS_STREAM",
        "JOBS_GROUP",
        "WORKER_CONCURRENCY",
        "KEEP_UPLOADS",
        "CLAIM_IDLE_MS",
        "MAX_DELIVERIES",
        "SWEEP_INTERVAL_MS",
        "METRICS_ADDR",
        "WEBHOOK_URLS",
        "WEBHOOK_SECRET",
        "WEBHOOK_RETRY_SCHEDULE",
        "RUST_LOG",
        "LOG_FORMAT",
    ] {
        assert!(help.contains(&format!("[env: {variable}")), "md5-worker --help documents {variable}");
    }
    for (binary, variable, value) in [
        (&api, "MAX_UPLOAD_BYTES", "ten"),
        (&api, "BIND_ADDR", "nowhere"),
        (&worker, "WORKER_CONCURRENCY", "0"),
        (&worker, "LOG_FORMAT", "xml"),
        (&worker, "WEBHOOK_URLS", "https://hooks.example/x"),
        (&worker, "WEBHOOK_URLS", "ftp://hooks.example/x"),
        (&worker, "WEBHOOK_SECRET", "not-a-secret"),
        (&worker, "WEBHOOK_RETRY_SCHEDULE", "5,soon"),
    ] {
        let output = std::process::Command::new(binary).env(variable, value).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{variable}={value} is refused at start");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(variable), "the error names {variable}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_request_is_logged_once_and_a_refused_one_not_above_debug() {
    use diesel_async::{AsyncConnection as _, RunQueryDsl as _};
    let api = integration_tests::api_process::ApiProcess::start(|c| {
        c.telemetry.log_format = shared::config::LogFormat::Json;
        c.telemetry.log_filter = "info".into();
    })
    .await
    .unwrap();
    let count = |level: &str| {
        api.stderr().lines().filter(|line| line.contains(&format!("\"level\":\"{level}\""))).count()
    };
    let (errors, warnings) = (count("ERROR"), count("WARN"));
    let url = |path: &str| format!("{}{path}", api.base_url);
    // Refused requests: an unknown id, an unknown path, a wrong method.
    let id = uuid::Uuid::new_v4();
    assert_eq!(api.client.get(url(&format!("/api/v1/hashes/{id}"))).send().await.unwrap().status(), 404);
    assert_eq!(api.client.get(url("/nowhere")).send().await.unwrap().status(), 404);
    let response = api.client.delete(url("/api/v1/hashes")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    let allow = response.headers().get("allow").and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(allow.as_deref(), Some("POST"), "a 405 names what is allowed");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        problem["detail"], "method DELETE is not allowed here; the Allow header lists the methods that are",
        "the detail does not promise a list it leaves empty"
    );
    // A request that fails inside: its table is gone.
    let mut conn = diesel_async::AsyncPgConnection::establish(api.database_url()).await.unwrap();
    diesel::sql_query("DROP TABLE md5_tasks CASCADE").execute(&mut conn).await.unwrap();
    let response = api.client.get(url(&format!("/api/v1/hashes/{id}"))).send().await.unwrap();
    assert_eq!(response.status(), 500);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["detail"], "internal error", "the cause is logged, never sent");
    let logged = eventually(Duration::from_secs(5), "the failure to be logged", || async {
        (count("ERROR") > errors).then_some(())
    })
    .await;
    assert!(logged.is_ok(), "{}", api.stderr());
    let new_errors: Vec<String> = api
        .stderr()
        .lines()
        .filter(|line| line.contains("\"level\":\"ERROR\""))
        .skip(errors)
        .map(str::to_owned)
        .collect();
    assert_eq!(new_errors.len(), 1, "one ERROR line for one 500: {new_errors:#?}");
    assert!(new_errors[0].contains("md5_tasks"), "it carries the cause: {}", new_errors[0]);
    assert_eq!(count("WARN"), warnings, "refused requests log nothing above DEBUG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_for_an_unreachable_database_is_logged_once_with_the_driver_message() {
    use diesel_async::{AsyncConnection as _, RunQueryDsl as _};
    let api = integration_tests::api_process::ApiProcess::start(|c| {
        c.telemetry.log_format = shared::config::LogFormat::Json;
        c.telemetry.log_filter = "info".into();
    })
    .await
    .unwrap();
    let failures = || -> Vec<Value> {
        api.stderr()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["message"] == "request failed")
            .collect()
    };
    // The database goes away under the running api: every pooled connection is cut, and a new
    // one is refused by the server.
    let name = api.database_url().rsplit('/').next().unwrap().split('?').next().unwrap().to_owned();
    let mut admin =
        diesel_async::AsyncPgConnection::establish(&integration_tests::admin_database_url()).await.unwrap();
    diesel::sql_query(format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut admin).await.unwrap();
    let id = uuid::Uuid::new_v4();
    let response = api.client.get(format!("{}/api/v1/hashes/{id}", api.base_url)).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["detail"], "the database is unreachable; try again shortly", "the cause is not sent");
    let logged = eventually(Duration::from_secs(5), "the refusal to be logged", || async {
        (!failures().is_empty()).then_some(())
    })
    .await;
    assert!(logged.is_ok(), "{}", api.stderr());
    let failures = failures();
    assert_eq!(failures.len(), 1, "one line for one 503: {failures:#?}");
    assert_eq!(failures[0]["level"], "WARN");
    let error = failures[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("the database is unreachable; try again shortly: ") && error.contains(&name),
        "the line carries the driver's message after the problem's detail: {error}"
    );
}
