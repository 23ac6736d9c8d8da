//! Device takeover, tried as an attacker who holds the bootstrap token (it is on every
//! provisioned device) or can reach the enrollment route: re-keying an enrolled device,
//! bringing a revoked one back, and a pairing code asked for under an enrolled id. Each fails
//! with a clear 4xx and an audit entry, and the real device keeps checking in. On SQLite and
//! PostgreSQL.

mod support;

use fleet_config::protocol::{CheckinRequest, ClaimResponse, EnrollResponse, HealthState};
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{client, database_url, test_config, Store, TestController};

async fn start(store: Store, test: &str) -> Option<(tempfile::TempDir, TestController)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = database_url(store, dir.path(), test).await?;
    let c = TestController::start(test_config(dir.path(), &url, None)).await;
    Some((dir, c))
}

fn enroll_body(id: &str, host: &str) -> Value {
    json!({"device_id": id, "hostname": host, "arch": "aarch64", "agent_version": "0.1.0"})
}

fn checkin_body(id: &str) -> CheckinRequest {
    CheckinRequest {
        health: HealthState::Healthy,
        ..support::checkin_request(id)
    }
}

async fn enroll(
    c: &TestController,
    bootstrap: Option<&str>,
    id: &str,
    host: &str,
) -> reqwest::Response {
    let mut req = client()
        .post(c.url("/api/v1/enroll"))
        .json(&enroll_body(id, host));
    if let Some(t) = bootstrap {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("enroll")
}

async fn enrolled_token(c: &TestController, id: &str) -> String {
    let r = enroll(c, Some(&c.bootstrap), id, "the-real-device").await;
    assert_eq!(r.status(), StatusCode::OK);
    match r.json::<EnrollResponse>().await.expect("json") {
        EnrollResponse::Enrolled { token, .. } => token,
        other => panic!("expected a token, got {other:?}"),
    }
}

async fn checkin_status(c: &TestController, token: &str, id: &str) -> StatusCode {
    client()
        .post(c.url("/api/v1/checkin"))
        .bearer_auth(token)
        .json(&checkin_body(id))
        .send()
        .await
        .expect("checkin")
        .status()
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

/// The audit entries with `action` about `target`.
async fn audited(c: &TestController, action: &str, target: &str) -> Vec<Value> {
    let log: Value = client()
        .get(c.url("/api/v1/audit?limit=1000"))
        .bearer_auth(&c.viewer)
        .send()
        .await
        .expect("audit")
        .json()
        .await
        .expect("json");
    log.as_array()
        .expect("a list")
        .iter()
        .filter(|e| e["action"] == action && e["target"] == target)
        .cloned()
        .collect()
}

async fn bootstrap_cannot_rekey_an_enrolled_device(store: Store) {
    let Some((_dir, c)) = start(store, "bootstrap_rekey").await else {
        return;
    };
    let real = enrolled_token(&c, "pi-1").await;
    assert_eq!(checkin_status(&c, &real, "pi-1").await, StatusCode::OK);

    // The attacker read the bootstrap token off another device and enrolls as pi-1.
    let (status, msg) = error_of(enroll(&c, Some(&c.bootstrap), "pi-1", "attacker").await).await;
    assert_eq!(status, StatusCode::CONFLICT, "{msg}");
    assert!(
        msg.contains("pi-1") && msg.contains("enrolled already") && msg.contains("operator"),
        "{msg}"
    );
    let refused = audited(&c, "device.enroll_refused", "pi-1").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("attacker"),
        "{refused:?}"
    );

    // The real device is untouched: same token, same host name.
    assert_eq!(checkin_status(&c, &real, "pi-1").await, StatusCode::OK);
    let d = c.db().device("pi-1").await.expect("q").expect("row");
    assert_eq!(d.hostname, "the-real-device");
    c.stop().await;
}

async fn a_revoked_device_stays_revoked(store: Store) {
    let Some((_dir, c)) = start(store, "revoked_stays").await else {
        return;
    };
    let old = enrolled_token(&c, "pi-2").await;
    let r = post_as(
        &c,
        &c.operator,
        "/api/v1/devices/pi-2/revoke",
        json!({"reason": "stolen"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);

    // The thief re-enrolls the stolen device with the bootstrap token on it.
    let (status, msg) = error_of(enroll(&c, Some(&c.bootstrap), "pi-2", "thief").await).await;
    assert_eq!(status, StatusCode::CONFLICT, "{msg}");
    assert!(msg.contains("pi-2") && msg.contains("revoked"), "{msg}");
    assert_eq!(audited(&c, "device.enroll_refused", "pi-2").await.len(), 1);
    let d = c.db().device("pi-2").await.expect("q").expect("row");
    assert!(d.revoked_ms.is_some(), "still revoked: {d:?}");
    assert_eq!(
        checkin_status(&c, &old, "pi-2").await,
        StatusCode::UNAUTHORIZED
    );

    // Through a pairing code, an operator must say so explicitly.
    let pending: EnrollResponse = enroll(&c, None, "pi-2", "thief")
        .await
        .json()
        .await
        .expect("json");
    let EnrollResponse::Pending { pairing_code, .. } = pending else {
        panic!("a pairing code: {pending:?}");
    };
    let (status, msg) = error_of(
        post_as(
            &c,
            &c.operator,
            "/api/v1/devices/approve",
            json!({"code": pairing_code}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{msg}");
    assert!(msg.contains("revoked") && msg.contains("replace"), "{msg}");
    assert_eq!(audited(&c, "device.approve_refused", "pi-2").await.len(), 1);
    assert!(c
        .db()
        .device("pi-2")
        .await
        .expect("q")
        .expect("row")
        .revoked_ms
        .is_some());
    c.stop().await;
}

async fn a_pairing_code_for_an_enrolled_id_needs_an_explicit_replace(store: Store) {
    let Some((_dir, c)) = start(store, "pairing_hijack").await else {
        return;
    };
    let real = enrolled_token(&c, "pi-3").await;

    // Anyone on the network asks for a pairing code under the enrolled id.
    let pending: EnrollResponse = enroll(&c, None, "pi-3", "attacker")
        .await
        .json()
        .await
        .expect("json");
    let EnrollResponse::Pending {
        pairing_code,
        claim_secret,
        ..
    } = pending
    else {
        panic!("a pairing code: {pending:?}");
    };
    // The operator sees that it would replace an enrolled device.
    let status: Value = client()
        .get(c.url("/api/v1/status"))
        .bearer_auth(&c.viewer)
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    let p = &status["pending_pairings"][0];
    assert_eq!(p["device_id"], "pi-3", "{status}");
    assert_eq!(p["replaces"], "enrolled", "{status}");

    // Approving it as if it were a new device is refused and audited.
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
    assert_eq!(s, StatusCode::CONFLICT, "{msg}");
    assert!(
        msg.contains("pi-3") && msg.contains("enrolled") && msg.contains("replace"),
        "{msg}"
    );
    assert_eq!(audited(&c, "device.approve_refused", "pi-3").await.len(), 1);
    let claim: ClaimResponse = post_as(
        &c,
        "x",
        "/api/v1/enroll/claim",
        json!({"claim_secret": claim_secret}),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(claim, ClaimResponse::Pending, "not approved");
    assert_eq!(checkin_status(&c, &real, "pi-3").await, StatusCode::OK);

    // A re-flashed device: the operator says it replaces pi-3; the old token stops working.
    let r = post_as(
        &c,
        &c.operator,
        "/api/v1/devices/approve",
        json!({"code": pairing_code, "replace": true}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let claim: ClaimResponse = post_as(
        &c,
        "x",
        "/api/v1/enroll/claim",
        json!({"claim_secret": claim_secret}),
    )
    .await
    .json()
    .await
    .expect("json");
    let ClaimResponse::Enrolled { token, .. } = claim else {
        panic!("enrolled: {claim:?}");
    };
    assert_eq!(checkin_status(&c, &token, "pi-3").await, StatusCode::OK);
    assert_eq!(
        checkin_status(&c, &real, "pi-3").await,
        StatusCode::UNAUTHORIZED
    );
    let replaced = audited(&c, "device.reenroll", "pi-3").await;
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    assert_eq!(replaced[0]["actor"], "operator");
    c.stop().await;
}

#[tokio::test]
async fn bootstrap_cannot_rekey_an_enrolled_device_on_sqlite() {
    bootstrap_cannot_rekey_an_enrolled_device(Store::Sqlite).await;
}

#[tokio::test]
async fn bootstrap_cannot_rekey_an_enrolled_device_on_postgres() {
    bootstrap_cannot_rekey_an_enrolled_device(Store::Postgres).await;
}

#[tokio::test]
async fn a_revoked_device_stays_revoked_on_sqlite() {
    a_revoked_device_stays_revoked(Store::Sqlite).await;
}

#[tokio::test]
async fn a_revoked_device_stays_revoked_on_postgres() {
    a_revoked_device_stays_revoked(Store::Postgres).await;
}

#[tokio::test]
async fn a_pairing_hijack_needs_an_explicit_replace_on_sqlite() {
    a_pairing_code_for_an_enrolled_id_needs_an_explicit_replace(Store::Sqlite).await;
}

#[tokio::test]
async fn a_pairing_hijack_needs_an_explicit_replace_on_postgres() {
    a_pairing_code_for_an_enrolled_id_needs_an_explicit_replace(Store::Postgres).await;
}

/// A bootstrap token's life: it enrolls only new ids its selector matches, as many as its use
/// count allows, until it expires or is revoked; operators list and revoke, admins create.
async fn bootstrap_tokens_expire_count_select_and_revoke(store: Store) {
    let Some((_dir, c)) = start(store, "bootstrap_life").await else {
        return;
    };
    let inventory = std::collections::BTreeMap::from([
        (
            "north-1".to_owned(),
            [("site".to_owned(), "north".to_owned())].into(),
        ),
        (
            "north-2".to_owned(),
            [("site".to_owned(), "north".to_owned())].into(),
        ),
        (
            "south-1".to_owned(),
            [("site".to_owned(), "south".to_owned())].into(),
        ),
    ]);
    let mut tx = c.as_leader().await;
    tx.sync_inventory(&inventory, &std::collections::BTreeMap::new())
        .await
        .expect("inventory");
    tx.commit().await.expect("commit");

    let body = json!({"note": "north batch", "expires_in": "2h", "max_uses": 1, "selector": {"site": "north"}});
    let (s, msg) =
        error_of(post_as(&c, &c.operator, "/api/v1/bootstrap-tokens", body.clone()).await).await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "operators do not create bootstrap tokens: {msg}"
    );
    let (s, msg) = error_of(
        post_as(
            &c,
            &c.admin,
            "/api/v1/bootstrap-tokens",
            json!({"expires_in": "400d"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{msg}");
    assert!(msg.contains("90 days"), "{msg}");
    let created: Value = post_as(&c, &c.admin, "/api/v1/bootstrap-tokens", body)
        .await
        .json()
        .await
        .expect("json");
    let secret = created["token"].as_str().expect("the secret").to_owned();
    let id = created["id"].as_str().expect("an id").to_owned();
    assert!(secret.starts_with("fleetboot_"), "{created}");

    // Outside the selector: refused, audited.
    let (s, msg) = error_of(enroll(&c, Some(&secret), "south-1", "h").await).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{msg}");
    assert!(msg.contains("site=north") && msg.contains("south"), "{msg}");
    let (s, msg) = error_of(enroll(&c, Some(&secret), "elsewhere", "h").await).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{msg}");
    assert!(msg.contains("not in the newest release"), "{msg}");
    assert_eq!(
        audited(&c, "device.enroll_refused", "south-1").await.len(),
        1
    );

    // One use: the first north device enrolls, the second is refused and nothing is created.
    assert_eq!(
        enroll(&c, Some(&secret), "north-1", "h").await.status(),
        StatusCode::OK
    );
    let (s, msg) = error_of(enroll(&c, Some(&secret), "north-2", "h").await).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{msg}");
    assert!(msg.contains(&id) && msg.contains("limit"), "{msg}");
    assert!(c.db().device("north-2").await.expect("q").is_none());

    let list: Value = client()
        .get(c.url("/api/v1/bootstrap-tokens"))
        .bearer_auth(&c.operator)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let mine = list
        .as_array()
        .expect("list")
        .iter()
        .find(|t| t["id"] == id.as_str())
        .expect("listed");
    assert_eq!(mine["status"], "used_up", "{mine}");
    assert_eq!(mine["uses"], 1);
    assert!(
        mine.get("token").is_none() && mine.get("token_hash").is_none(),
        "{mine}"
    );
    let viewer = client()
        .get(c.url("/api/v1/bootstrap-tokens"))
        .bearer_auth(&c.viewer)
        .send()
        .await
        .expect("list");
    assert_eq!(viewer.status(), StatusCode::FORBIDDEN);

    // Revoked: the test's own token stops enrolling at once.
    let test_token = c.db().bootstrap_tokens().await.expect("list");
    let test_id = test_token
        .iter()
        .find(|t| t.note == "tests")
        .map(|t| t.id.clone())
        .expect("the test controller's token");
    let r = post_as(
        &c,
        &c.operator,
        &format!("/api/v1/bootstrap-tokens/{test_id}/revoke"),
        json!({"reason": "left on a returned device"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let (s, msg) = error_of(enroll(&c, Some(&c.bootstrap), "fresh", "h").await).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{msg}");
    assert!(msg.contains("revoked"), "{msg}");
    assert_eq!(
        audited(&c, "bootstrap_token.revoke", &test_id).await.len(),
        1
    );
    let (s, _) = error_of(
        post_as(
            &c,
            &c.operator,
            "/api/v1/bootstrap-tokens/nope/revoke",
            json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Expired: made an hour ago with a minute to live.
    let (old, _) = c
        .db()
        .create_bootstrap_token(
            "test",
            &fleet_controller::db::NewBootstrapToken {
                ttl_ms: 60_000,
                ..Default::default()
            },
            fleet_controller::db::now_ms() - 3_600_000,
        )
        .await
        .expect("token");
    let (s, msg) = error_of(enroll(&c, Some(&old), "fresh", "h").await).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{msg}");
    assert!(msg.contains("expired"), "{msg}");
    assert!(c.db().device("fresh").await.expect("q").is_none());
    c.stop().await;
}

#[tokio::test]
async fn bootstrap_tokens_expire_count_select_and_revoke_on_sqlite() {
    bootstrap_tokens_expire_count_select_and_revoke(Store::Sqlite).await;
}

#[tokio::test]
async fn bootstrap_tokens_expire_count_select_and_revoke_on_postgres() {
    bootstrap_tokens_expire_count_select_and_revoke(Store::Postgres).await;
}

/// `fleet-controller bootstrap-token create|list|revoke`, the real binary on a real store.
#[tokio::test]
async fn the_bootstrap_token_cli_creates_lists_and_revokes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("controller.yaml");
    std::fs::write(
        &config,
        format!("data_dir: \"{}\"\n", dir.path().join("data").display()),
    )
    .expect("config");
    let run = |args: &[&str]| {
        std::process::Command::new(support::controller_bin())
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .expect("run fleet-controller")
    };
    let out = run(&[
        "bootstrap-token",
        "create",
        "--expires-in",
        "3d",
        "--max-uses",
        "50",
        "--selector",
        "site=north",
        "--note",
        "rack 4",
    ]);
    assert!(out.status.success(), "{out:?}");
    let secret = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        secret.starts_with("fleetboot_") && !secret.contains('\n'),
        "{secret}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("max uses 50") && stderr.contains("site=north"),
        "{stderr}"
    );
    let list = String::from_utf8_lossy(&run(&["bootstrap-token", "list"]).stdout).into_owned();
    let line = list.lines().nth(1).expect("one token");
    let id = line.split('\t').next().expect("id").to_owned();
    assert!(
        line.contains("live") && line.contains("0/50") && line.contains("rack 4"),
        "{list}"
    );
    assert!(!list.contains(&secret[10..]), "never the secret: {list}");
    let out = run(&["bootstrap-token", "revoke", &id, "--reason", "batch done"]);
    assert!(out.status.success(), "{out:?}");
    let list = String::from_utf8_lossy(&run(&["bootstrap-token", "list"]).stdout).into_owned();
    assert!(list.contains("revoked"), "{list}");
    let out = run(&["bootstrap-token", "create", "--expires-in", "365d"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("90 days"),
        "{out:?}"
    );
    let out = run(&["bootstrap-token", "revoke", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no bootstrap token `nope`"),
        "{out:?}"
    );
}
