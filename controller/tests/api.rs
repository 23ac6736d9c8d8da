//! The HTTP API over a real socket and a real SQLite file: enrollment, check-in, security
//! (tokens, roles, pairing codes, rate limits, webhook signatures), bad input, the emergency
//! stop, metrics and the OpenAPI document.

mod support;

use std::time::Duration;

use fleet_config::protocol::{
    CheckinRequest, CheckinResponse, ClaimResponse, Desired, DeviceEvent, EnrollResponse, EventKind,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{client, test_config, viewer_get, TestController};

async fn start() -> (tempfile::TempDir, TestController) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("fleet.db").display()
    );
    let c = TestController::start(test_config(dir.path(), &url, None)).await;
    (dir, c)
}

fn enroll_body(id: &str) -> Value {
    json!({"device_id": id, "hostname": format!("host-{id}"), "arch": "aarch64", "agent_version": "0.1.0"})
}

fn checkin_body(id: &str, events: Vec<DeviceEvent>) -> CheckinRequest {
    CheckinRequest {
        events,
        ..support::checkin_request(id)
    }
}

async fn bootstrap(c: &TestController, id: &str) -> String {
    let r: EnrollResponse = client()
        .post(c.url("/api/v1/enroll"))
        .bearer_auth(&c.bootstrap)
        .json(&enroll_body(id))
        .send()
        .await
        .expect("enroll")
        .json()
        .await
        .expect("json");
    match r {
        EnrollResponse::Enrolled { token, device_id } => {
            assert_eq!(device_id, id);
            token
        }
        other => panic!("expected a token, got {other:?}"),
    }
}

async fn checkin(c: &TestController, token: &str, body: &CheckinRequest) -> reqwest::Response {
    client()
        .post(c.url("/api/v1/checkin"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("checkin")
}

async fn error_of(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let body: Value = resp.json().await.expect("error bodies are JSON");
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

async fn post_as(c: &TestController, token: &str, path: &str, body: Value) -> reqwest::Response {
    client()
        .post(c.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("post")
}

#[tokio::test]
async fn pairing_code_enrollment_is_approved_once_and_claimed_once() {
    let (_dir, c) = start().await;
    let http = client();
    let r: EnrollResponse = http
        .post(c.url("/api/v1/enroll"))
        .json(&enroll_body("pi-1"))
        .send()
        .await
        .expect("enroll")
        .json()
        .await
        .expect("json");
    let EnrollResponse::Pending {
        pairing_code,
        claim_secret,
        expires_in_secs,
    } = r
    else {
        panic!("expected a pairing code, got {r:?}");
    };
    assert_eq!(pairing_code.len(), 8);
    assert_eq!(expires_in_secs, 900);
    let claim = |secret: String| {
        let http = http.clone();
        let url = c.url("/api/v1/enroll/claim");
        async move {
            http.post(url)
                .json(&json!({"claim_secret": secret}))
                .send()
                .await
                .expect("claim")
        }
    };
    let pending: ClaimResponse = claim(claim_secret.clone())
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(pending, ClaimResponse::Pending);

    // A viewer cannot approve; an operator can, once, in lower case with a dash too.
    let typed = format!("{}-{}", &pairing_code[..4], &pairing_code[4..]).to_lowercase();
    let (s, msg) = error_of(
        post_as(
            &c,
            &c.viewer,
            "/api/v1/devices/approve",
            json!({"code": typed}),
        )
        .await,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{msg}");
    assert!(msg.contains("viewer"), "{msg}");
    let ok = post_as(
        &c,
        &c.operator,
        "/api/v1/devices/approve",
        json!({"code": typed}),
    )
    .await;
    assert_eq!(ok.status(), StatusCode::OK);
    let (s, msg) = error_of(
        post_as(
            &c,
            &c.operator,
            "/api/v1/devices/approve",
            json!({"code": pairing_code}),
        )
        .await,
    )
    .await;
    assert_eq!(s, StatusCode::GONE, "a used code is refused: {msg}");

    let enrolled: ClaimResponse = claim(claim_secret.clone())
        .await
        .json()
        .await
        .expect("json");
    let ClaimResponse::Enrolled { device_id, token } = enrolled else {
        panic!("expected the token, got {enrolled:?}");
    };
    assert_eq!(device_id, "pi-1");
    assert!(token.starts_with("fleetdev_") && token.len() == 73);
    let (s, _) = error_of(claim(claim_secret).await).await;
    assert_eq!(s, StatusCode::GONE, "the token is handed out once");
    let resp = checkin(&c, &token, &checkin_body("pi-1", vec![])).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let audit: Value = client()
        .get(c.url("/api/v1/audit"))
        .bearer_auth(&c.viewer)
        .send()
        .await
        .expect("audit")
        .json()
        .await
        .expect("json");
    let approve = audit
        .as_array()
        .and_then(|a| a.iter().find(|e| e["action"] == "device.approve"))
        .expect("approval audited");
    assert_eq!(approve["actor"], "operator");
    assert_eq!(approve["target"], "pi-1");
    c.stop().await;
}

#[tokio::test]
async fn expired_codes_are_refused_and_guessing_is_rate_limited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("fleet.db").display()
    );
    let mut cfg = test_config(dir.path(), &url, None);
    cfg.pairing_ttl = Duration::from_millis(300);
    let c = TestController::start(cfg).await;
    let r: EnrollResponse = client()
        .post(c.url("/api/v1/enroll"))
        .json(&enroll_body("pi-2"))
        .send()
        .await
        .expect("enroll")
        .json()
        .await
        .expect("json");
    let EnrollResponse::Pending {
        pairing_code,
        claim_secret,
        ..
    } = r
    else {
        panic!("expected a code");
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (s, msg) = error_of(
        post_as(
            &c,
            &c.operator,
            "/api/v1/devices/approve",
            json!({"code": pairing_code}),
        )
        .await,
    )
    .await;
    assert_eq!(s, StatusCode::GONE, "{msg}");
    assert!(msg.contains("expired"), "{msg}");
    let resp = client()
        .post(c.url("/api/v1/enroll/claim"))
        .json(&json!({"claim_secret": claim_secret}))
        .send()
        .await
        .expect("claim");
    assert_eq!(resp.status(), StatusCode::GONE);

    // Guessing: 10 approval attempts a minute per user (the expired one above was the first),
    // then 429 with Retry-After.
    let mut statuses = Vec::new();
    for i in 0..12 {
        let r = post_as(
            &c,
            &c.operator,
            "/api/v1/devices/approve",
            json!({"code": format!("ZZZZZZ{:02}", i)}),
        )
        .await;
        statuses.push(r.status());
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry: u64 = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .expect("Retry-After header");
            assert!((1..=60).contains(&retry), "{retry}");
        }
    }
    assert_eq!(statuses[..9], [StatusCode::NOT_FOUND; 9]);
    assert_eq!(statuses[9..], [StatusCode::TOO_MANY_REQUESTS; 3]);
    c.stop().await;
}

#[tokio::test]
async fn device_tokens_are_bound_to_their_device_and_revocation_is_immediate() {
    let (_dir, c) = start().await;
    let a = bootstrap(&c, "dev-a").await;
    let _b = bootstrap(&c, "dev-b").await;
    assert_eq!(
        checkin(&c, &a, &checkin_body("dev-a", vec![]))
            .await
            .status(),
        StatusCode::OK
    );
    let (s, msg) = error_of(checkin(&c, &a, &checkin_body("dev-b", vec![])).await).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{msg}");
    assert!(msg.contains("dev-a") && msg.contains("dev-b"), "{msg}");
    let (s, _) = error_of(checkin(&c, "fleetdev_0000", &checkin_body("dev-a", vec![])).await).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let bad_boot = client()
        .post(c.url("/api/v1/enroll"))
        .bearer_auth("fleetboot_nope")
        .json(&enroll_body("dev-c"))
        .send()
        .await
        .expect("enroll");
    assert_eq!(bad_boot.status(), StatusCode::UNAUTHORIZED);

    let (s, _) = error_of(
        post_as(
            &c,
            &c.viewer,
            "/api/v1/devices/dev-a/revoke",
            json!({"reason": "x"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let r = post_as(
        &c,
        &c.operator,
        "/api/v1/devices/dev-a/revoke",
        json!({"reason": "stolen"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let (s, _) = error_of(checkin(&c, &a, &checkin_body("dev-a", vec![])).await).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "revoked on the next request");
    let (s, _) =
        error_of(post_as(&c, &c.operator, "/api/v1/devices/nope/revoke", json!({})).await).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    c.stop().await;
}

#[tokio::test]
async fn replayed_events_are_stored_once_in_order() {
    let (_dir, c) = start().await;
    let t = bootstrap(&c, "dev-e").await;
    let ev = |seq: u64| DeviceEvent {
        seq,
        at_ms: 1_000 + seq,
        kind: EventKind::AgentStarted {
            version: format!("v{seq}"),
        },
    };
    let r: CheckinResponse = checkin(&c, &t, &checkin_body("dev-e", vec![ev(1), ev(2), ev(3)]))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(r.acked_seq, 3);
    // The ack was lost: the agent replays 1..3 with 4 and 5, out of order.
    let r: CheckinResponse = checkin(
        &c,
        &t,
        &checkin_body("dev-e", vec![ev(5), ev(1), ev(2), ev(3), ev(4)]),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(r.acked_seq, 5);
    let events = c.db().device_events("dev-e", 100).await.expect("events");
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, vec![5, 4, 3, 2, 1], "each once, newest first");
    c.stop().await;
}

#[tokio::test]
async fn the_emergency_stop_holds_every_checkin_until_resume() {
    let (_dir, c) = start().await;
    let t = bootstrap(&c, "dev-s").await;
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let digest = format!("sha256:{}", "ab".repeat(32));
    // A known release, the device in the inventory and pinned to it: the reconciler names it.
    let mut tx = c.as_leader().await;
    tx.record_release(sha, Some(&digest), None, "test")
        .await
        .expect("release");
    let inventory = std::collections::BTreeMap::from([("dev-s".to_owned(), Default::default())]);
    tx.sync_inventory(&inventory, &std::collections::BTreeMap::new())
        .await
        .expect("inventory");
    tx.commit().await.expect("commit");
    c.db()
        .pin_device(
            "dev-s",
            Some((&sha.parse().expect("sha"), "test")),
            fleet_controller::db::PIN_BY_OPERATOR,
        )
        .await
        .expect("pin");
    for _ in 0..100 {
        let d = c.db().device("dev-s").await.expect("q").expect("device");
        if d.desired_release.is_some() {
            break;
        }
        c.state.reconcile.notify_one();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r: CheckinResponse = checkin(&c, &t, &checkin_body("dev-s", vec![]))
        .await
        .json()
        .await
        .expect("json");
    assert!(matches!(r.desired, Desired::Release { .. }), "{r:?}");
    assert!(!r.emergency_stop);

    for who in [&c.viewer] {
        let (s, _) = error_of(post_as(&c, who, "/api/v1/stop", json!({"reason": "x"})).await).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "a viewer cannot stop");
    }
    let (s, msg) =
        error_of(post_as(&c, &c.operator, "/api/v1/stop", json!({"reason": "  "})).await).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{msg}");
    let r = post_as(
        &c,
        &c.operator,
        "/api/v1/stop",
        json!({"reason": "canaries on fire"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r: CheckinResponse = checkin(&c, &t, &checkin_body("dev-s", vec![]))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(r.desired, Desired::Hold);
    assert!(r.emergency_stop);
    let (s, _) = error_of(post_as(&c, &c.viewer, "/api/v1/resume", json!({})).await).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a viewer cannot resume");
    let r: CheckinResponse = checkin(&c, &t, &checkin_body("dev-s", vec![]))
        .await
        .json()
        .await
        .expect("json");
    assert!(r.emergency_stop, "still held after the viewer's attempt");
    let r = post_as(
        &c,
        &c.operator,
        "/api/v1/resume",
        json!({"reason": "fixed"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r: CheckinResponse = checkin(&c, &t, &checkin_body("dev-s", vec![]))
        .await
        .json()
        .await
        .expect("json");
    assert!(!r.emergency_stop);
    assert!(matches!(r.desired, Desired::Release { .. }));
    let status: Value = client()
        .get(c.url("/api/v1/status"))
        .bearer_auth(&c.viewer)
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(status["devices"], 1);
    assert!(status["emergency_stop"].is_null());
    c.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_never_a_5xx() {
    let (_dir, c) = start().await;
    let t = bootstrap(&c, "dev-x").await;
    let http = client();
    /// (name, path, token, body, status, text the message must contain)
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        Vec<u8>,
        StatusCode,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            "/api/v1/checkin",
            Some(&t),
            b"{\"device_id\": ".to_vec(),
            StatusCode::BAD_REQUEST,
            "line 1",
        ),
        (
            "wrong type",
            "/api/v1/checkin",
            Some(&t),
            br#"{"device_id": 5}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid type",
        ),
        (
            "empty body",
            "/api/v1/checkin",
            Some(&t),
            vec![],
            StatusCode::BAD_REQUEST,
            "empty",
        ),
        (
            "oversized",
            "/api/v1/checkin",
            Some(&t),
            vec![b' '; 2 * 1024 * 1024],
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than",
        ),
        (
            "no token",
            "/api/v1/checkin",
            None,
            b"{}".to_vec(),
            StatusCode::UNAUTHORIZED,
            "Authorization",
        ),
        (
            "bad device id",
            "/api/v1/enroll",
            None,
            br#"{"device_id":"../x","hostname":"h","arch":"a","agent_version":"v"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "device_id",
        ),
        (
            "approve unknown code",
            "/api/v1/devices/approve",
            Some(&c.operator),
            br#"{"code":"ABCDEFGH"}"#.to_vec(),
            StatusCode::NOT_FOUND,
            "ABCDEFGH",
        ),
        (
            "unknown route",
            "/api/v1/nothing",
            Some(&c.admin),
            b"{}".to_vec(),
            StatusCode::NOT_FOUND,
            "no route",
        ),
        (
            "bad API token",
            "/api/v1/stop",
            Some("fleetapi_x"),
            br#"{"reason":"r"}"#.to_vec(),
            StatusCode::UNAUTHORIZED,
            "API token",
        ),
        (
            "unknown rollout",
            "/api/v1/rollouts/nope/pause",
            Some(&c.operator),
            vec![],
            StatusCode::NOT_FOUND,
            "nope",
        ),
    ];
    for (name, path, token, body, want, needle) in cases {
        let mut req = http
            .post(c.url(path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let (status, msg) = error_of(req.send().await.expect("request")).await;
        assert_eq!(status, want, "{name}: {msg}");
        assert!(
            msg.contains(needle),
            "{name}: `{msg}` should mention `{needle}`"
        );
    }
    for path in ["/api/v1/devices/nope", "/api/v1/rollouts/nope"] {
        let r = http
            .get(c.url(path))
            .bearer_auth(&c.viewer)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    c.stop().await;
}

#[tokio::test]
async fn a_webhook_with_a_bad_signature_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("fleet.db").display()
    );
    let c = TestController::start_with_secret(test_config(dir.path(), &url, None), Some("s3cret"))
        .await;
    let audit_before = c.db().audit_log(1000).await.expect("audit").len();
    let body = br#"{"ref":"refs/heads/main"}"#;
    let http = client();
    for (header, value) in [
        ("x-hub-signature-256", "sha256=0000".to_owned()),
        ("x-gitea-signature", "ab".repeat(32)),
        ("x-other", "x".to_owned()),
    ] {
        let r = http
            .post(c.url("/api/v1/webhook"))
            .header(header, value)
            .body(body.to_vec())
            .send()
            .await
            .expect("webhook");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{header}");
    }
    assert_eq!(
        c.db().audit_log(1000).await.expect("audit").len(),
        audit_before
    );
    assert!(c.db().releases(10).await.expect("releases").is_empty());
    let metrics = http
        .get(c.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("fleet_webhooks_rejected_total 3"),
        "{metrics}"
    );
    // A good GitHub-style signature is accepted.
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").expect("key");
    mac.update(body);
    let sig = hex::encode(mac.finalize().into_bytes());
    let r = http
        .post(c.url("/api/v1/webhook"))
        .header("x-hub-signature-256", format!("sha256={sig}"))
        .body(body.to_vec())
        .send()
        .await
        .expect("webhook");
    assert_eq!(r.status(), StatusCode::OK);
    c.stop().await;
}

#[tokio::test]
async fn openapi_describes_every_route_and_metrics_are_prometheus_text() {
    let (_dir, c) = start().await;
    let http = client();
    let doc: Value = http
        .get(c.url("/api/openapi.json"))
        .send()
        .await
        .expect("doc")
        .json()
        .await
        .expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    for r in fleet_controller::routes::table() {
        let op = &doc["paths"][r.path][r.method.to_lowercase()];
        assert!(
            op.is_object(),
            "{} {} missing from the document",
            r.method,
            r.path
        );
        // Every documented route exists: the fallback's "no route" never answers it.
        let path = r.path.replace("{id}", "x").replace("{action}", "pause");
        let resp = http
            .request(r.method.parse().expect("method"), c.url(&path))
            .send()
            .await
            .expect("request");
        if resp.status() == StatusCode::NOT_FOUND {
            let body = resp.text().await.unwrap_or_default();
            assert!(
                !body.contains("no route"),
                "{} {path} is documented but not routed",
                r.method
            );
        }
    }
    let t = bootstrap(&c, "dev-m").await;
    checkin(&c, &t, &checkin_body("dev-m", vec![])).await;
    // The device counts are read at most once a second, however often /metrics is scraped
    // (the routes above scraped it a moment ago): the check-in shows within that second.
    let mut text = String::new();
    for _ in 0..50 {
        text = http
            .get(c.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        if text.contains("fleet_devices{state=\"online\"} 1") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(text.contains("fleet_devices{state=\"online\"} 1"), "{text}");
    assert!(
        text.contains("fleet_checkin_duration_seconds_count 1"),
        "{text}"
    );
    // The leader's rollout passes are timed: at least the one the check-in woke.
    let passes: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("fleet_engine_passes_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no fleet_engine_passes_total in {text}"));
    assert!(passes >= 1.0, "{text}");
    assert!(text.contains("fleet_engine_pass_max_seconds "), "{text}");
    if let Ok(out) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(text.as_bytes())?;
            }
            child.wait_with_output()
        })
    {
        assert!(
            out.status.success(),
            "promtool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else if std::env::var("FLEET_REQUIRE_PROMETHEUS").as_deref() == Ok("1") {
        panic!("promtool is required");
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_list_comes_in_pages_by_id() {
    let (_dir, c) = start().await;
    for i in 0..5 {
        let id = format!("page-{i}");
        let t = bootstrap(&c, &id).await;
        checkin(&c, &t, &checkin_body(&id, vec![])).await;
    }
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("a list: {v}"))
            .iter()
            .filter_map(|d| d["id"].as_str().map(str::to_owned))
            .collect()
    };
    let all = ids(&viewer_get(&c, "/api/v1/devices").await);
    assert_eq!(all.len(), 5, "no paging asked: every device");
    // Pages of two, each after the last id of the one before, cover the list once, in order.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page = ids(&viewer_get(&c, &format!("/api/v1/devices?limit=2&after={after}")).await);
        assert!(page.len() <= 2, "{page:?}");
        let Some(last) = page.last().cloned() else {
            break;
        };
        seen.extend(page);
        after = last;
    }
    assert_eq!(seen, all);
    // A filtered page can be empty and not the last: the header says where the next starts.
    let r = client()
        .get(c.url("/api/v1/devices?state=offline&limit=2"))
        .bearer_auth(&c.viewer)
        .send()
        .await
        .expect("get");
    assert_eq!(
        r.headers()
            .get("fleet-next-after")
            .and_then(|v| v.to_str().ok()),
        Some("page-1"),
        "a full page names its last id"
    );
    assert_eq!(ids(&r.json().await.expect("json")), Vec::<String>::new());
    // fleetctl's client follows the pages (of two here) to the end, filtered or not.
    let api = fleet_client::api::Api::new(fleet_client::api::Target {
        url: c.url(""),
        token: c.viewer.clone(),
        ca_file: None,
    })
    .expect("client");
    let listed = api.get_all("/api/v1/devices", 2).await.expect("pages");
    assert_eq!(ids(&listed), all);
    let online = api
        .get_all("/api/v1/devices?state=online", 2)
        .await
        .expect("pages");
    assert_eq!(ids(&online), all);
    let last = client()
        .get(c.url("/api/v1/devices?limit=2&after=page-3"))
        .bearer_auth(&c.viewer)
        .send()
        .await
        .expect("get");
    assert!(
        last.headers().get("fleet-next-after").is_none(),
        "the last page (one device) has no next"
    );
    for bad in ["0", "10001", "-1", "many"] {
        let r = client()
            .get(c.url(&format!("/api/v1/devices?limit={bad}")))
            .bearer_auth(&c.viewer)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), 400, "limit={bad}");
    }
    c.stop().await;
}
