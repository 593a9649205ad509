//! The older service's client flow, unchanged.

use std::time::Duration;

use integration_tests::{TestApp, TestOptions, eventually, md5_hex, random_bytes};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_clients_get_404_for_unknown_ids_and_success_with_the_md5() {
    let app = TestApp::spawn(TestOptions::default()).await.unwrap();

    let response = app.client.get(format!("{}/hashes/0", app.base_url)).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.text().await.unwrap(), r#"{"detail":"Task 0 was not found"}"#);

    let bytes = random_bytes(100 * 1024, 7);
    let expected = md5_hex(&bytes);
    let response = app.upload_to("/hashes/", "report.pdf", bytes).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let task_id = body["task_id"].as_str().expect("task_id").to_owned();
    assert_eq!(body.as_object().unwrap().len(), 1, "only task_id: {body}");

    let url = format!("{}/hashes/{task_id}", app.base_url);
    let result = eventually(Duration::from_secs(30), "SUCCESS", || async {
        let body: Value = app.client.get(&url).send().await.ok()?.json().await.ok()?;
        (body["status"] != "PENDING").then_some(body)
    })
    .await
    .unwrap();
    assert_eq!(result, json!({ "status": "SUCCESS", "result": expected }));

    // Without the trailing slash too.
    let response = app.upload_to("/hashes", "a.txt", b"abc".to_vec()).await;
    assert_eq!(response.status(), 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_clients_get_fastapis_422_bodies_for_what_fastapi_refused() {
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let missing_file =
        r#"{"detail":[{"loc":["body","file"],"msg":"field required","type":"value_error.missing"}]}"#;
    let url = format!("{}/hashes/", app.base_url);
    // A form without `file`, a request without a body, a body that is not a form.
    let form = reqwest::multipart::Form::new().text("other", "x");
    let requests = [
        app.client.post(&url).multipart(form),
        app.client.post(&url),
        app.client.post(&url).header("content-type", "application/json").body("{}"),
    ];
    for request in requests {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 422);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.text().await.unwrap(), missing_file);
    }
    let response = app.client.get(format!("{}/hashes/not-an-id", app.base_url)).send().await.unwrap();
    assert_eq!(response.status(), 422);
    assert_eq!(
        response.text().await.unwrap(),
        r#"{"detail":[{"loc":["path","task_id"],"msg":"value is not a valid uuid","type":"type_error.uuid"}]}"#
    );
    let response = app.client.get(format!("{}/hashes/12345", app.base_url)).send().await.unwrap();
    assert_eq!(response.status(), 404, "an integer id, as the older service issued, is just unknown");
    assert_eq!(response.text().await.unwrap(), r#"{"detail":"Task 12345 was not found"}"#);
    assert_eq!(app.row_count().await, 0);
    assert!(app.upload_files().is_empty());
}
