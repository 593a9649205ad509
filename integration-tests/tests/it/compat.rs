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
