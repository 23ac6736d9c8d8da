//! Smaller doors: the webhook with an empty secret file, an oversized webhook body, and
//! `/metrics` behind a token.

mod support;

use reqwest::StatusCode;
use support::{client, test_config, TestController};

fn sqlite(dir: &std::path::Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("fleet.db").display())
}

#[tokio::test]
async fn an_empty_webhook_secret_file_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("webhook.secret");
    std::fs::write(&secret, " \n").expect("write");
    let mut cfg = test_config(dir.path(), &sqlite(dir.path()), None);
    cfg.webhook_secret_file = Some(secret.clone());
    let err = match fleet_controller::server::prepare(cfg).await {
        Ok(_) => panic!("an empty webhook secret would accept bodies signed with the empty key"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("empty") && err.contains(&secret.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn an_oversized_webhook_body_gets_413() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = TestController::start_with_secret(
        test_config(dir.path(), &sqlite(dir.path()), None),
        Some("s3cret"),
    )
    .await;
    let r = client()
        .post(c.url("/api/v1/webhook"))
        .header("x-hub-signature-256", "sha256=00")
        .body(vec![b'a'; 2 * 1024 * 1024])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = r.json().await.expect("json");
    assert!(
        body["error"].as_str().unwrap_or("").contains("larger than"),
        "{body}"
    );
    c.stop().await;
}

#[tokio::test]
async fn metrics_can_require_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("metrics.token");
    std::fs::write(&token_file, "prometheus-scrape-token\n").expect("write");
    let mut cfg = test_config(dir.path(), &sqlite(dir.path()), None);
    cfg.metrics_token_file = Some(token_file);
    let c = TestController::start(cfg).await;
    let r = client().get(c.url("/metrics")).send().await.expect("get");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = r.json().await.expect("json");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("metrics_token_file"),
        "{body}"
    );
    for wrong in ["prometheus-scrape-toke", "x", &c.viewer] {
        let r = client()
            .get(c.url("/metrics"))
            .bearer_auth(wrong)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{wrong}");
    }
    let r = client()
        .get(c.url("/metrics"))
        .bearer_auth("prometheus-scrape-token")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.expect("text").contains("fleet_devices"));
    c.stop().await;
}
