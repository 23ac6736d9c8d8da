//! Devices' logs on request (issue 16), against the real controller on SQLite and PostgreSQL:
//! an operator's request rides on the answer to the device's next check-in, the tail on the one
//! after, and the API returns it; a held long-poll check-in is answered by the request (also
//! when it is made on another replica); a tail over the protocol's bounds is cut, and one that
//! does not read is dropped, never a failed check-in; a request nobody answers expires; who may
//! ask and read.

mod support;

use std::time::{Duration, Instant};

use fleet_config::protocol::logs::{
    LogLine, LogRequest, LogSource, LogStatus, LogStream, LogTail, Tolerant, MAX_LOG_LINES,
    MAX_LOG_LINE_BYTES, MAX_LOG_TAIL_BYTES,
};
use fleet_config::protocol::{CheckinRequest, CheckinResponse, EnrollResponse};
use fleet_controller::config::ControllerConfig;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::process::{free_addr, ControllerProcess};
use support::{client, database_url, test_config, Store, TestController};

async fn enroll(base: &str, bootstrap: &str, id: &str) -> String {
    let r: EnrollResponse = client()
        .post(format!("{base}/api/v1/enroll"))
        .bearer_auth(bootstrap)
        .json(
            &json!({"device_id": id, "hostname": id, "arch": "aarch64", "agent_version": "0.1.0"}),
        )
        .send()
        .await
        .expect("enroll")
        .json()
        .await
        .expect("json");
    match r {
        EnrollResponse::Enrolled { token, .. } => token,
        other => panic!("{other:?}"),
    }
}

async fn checkin(base: &str, token: &str, req: &CheckinRequest) -> CheckinResponse {
    let r = client()
        .post(format!("{base}/api/v1/checkin"))
        .bearer_auth(token)
        .json(req)
        .send()
        .await
        .expect("check-in");
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert!(status.is_success(), "check-in: {status} {text}");
    serde_json::from_str(&text).expect("answer")
}

async fn post(base: &str, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
    let r = client()
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("post");
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

async fn get(base: &str, token: &str, path: &str) -> (StatusCode, Value) {
    let r = client()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("get");
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

fn with_tail(id: &str, tail: LogTail) -> CheckinRequest {
    CheckinRequest {
        logs: Some(Tolerant::Read(tail)),
        ..support::checkin_request(id)
    }
}

fn line(text: &str, at_ms: u64, stream: Option<LogStream>) -> LogLine {
    LogLine {
        at_ms: Some(at_ms),
        stream,
        text: text.to_owned(),
    }
}

/// What an agent sends for request `id`.
fn a_tail(id: u64) -> LogTail {
    LogTail {
        request_id: id,
        collected_ms: 1_700_000_000_000,
        sources: vec![
            LogSource {
                name: "agent".into(),
                container: None,
                status: LogStatus::Ok,
                detail: None,
                lines: vec![line(
                    "INFO  fleet_agent::controller::mode: checked in",
                    1_700_000_000_001,
                    None,
                )],
                omitted: 3,
            },
            LogSource {
                name: "app/web".into(),
                container: Some("ns-app-web".into()),
                status: LogStatus::Ok,
                detail: None,
                lines: vec![
                    line(
                        "GET /healthz 200",
                        1_700_000_000_002,
                        Some(LogStream::Stdout),
                    ),
                    line(
                        "<script>alert(1)</script>",
                        1_700_000_000_003,
                        Some(LogStream::Stderr),
                    ),
                ],
                omitted: 0,
            },
            LogSource::empty("app/side", LogStatus::NoLogs, None),
        ],
        truncated: false,
    }
}

async fn round_trip(store: Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(url) = database_url(store, dir.path(), "logs_round_trip").await else {
        return;
    };
    let c = TestController::start(test_config(dir.path(), &url, None)).await;
    let token = enroll(&c.base, &c.bootstrap, "pi-1").await;
    let plain = support::checkin_request("pi-1");
    assert_eq!(
        checkin(&c.base, &token, &plain).await.logs,
        None,
        "nothing asked yet"
    );
    let (s, v) = get(&c.base, &c.viewer, "/api/v1/devices/pi-1/logs").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["request"], Value::Null);
    assert_eq!(v["tail"], Value::Null);
    assert!(v["last_seen_ms"].is_i64(), "{v}");

    // An operator asks; the next check-in's answer carries the request, and the ones after it
    // too until the tail comes.
    let (s, asked) = post(
        &c.base,
        &c.operator,
        "/api/v1/devices/pi-1/logs",
        json!({"lines": 5, "services": ["web", " agent "]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{asked}");
    let id = asked["request"]["id"].as_u64().expect("request id");
    assert_eq!(asked["request"]["state"], "pending");
    assert_eq!(asked["request"]["requested_by"], "operator");
    let want = LogRequest {
        id,
        lines: 5,
        services: vec!["web".into(), "agent".into()],
    };
    for _ in 0..2 {
        assert_eq!(
            checkin(&c.base, &token, &plain).await.logs,
            Some(want.clone())
        );
    }
    let (_, v) = get(&c.base, &c.viewer, "/api/v1/devices/pi-1/logs").await;
    assert_eq!(v["request"]["state"], "pending", "{v}");
    assert_eq!(v["tail"], Value::Null);

    // The check-in with the tail: stored, and not asked again.
    let sent = a_tail(id);
    let answer = checkin(&c.base, &token, &with_tail("pi-1", sent.clone())).await;
    assert_eq!(answer.logs, None, "answered: not asked again");
    assert_eq!(checkin(&c.base, &token, &plain).await.logs, None);
    let (s, v) = get(&c.base, &c.viewer, "/api/v1/devices/pi-1/logs").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["request"]["state"], "answered", "{v}");
    let got: LogTail = serde_json::from_value(v["tail"].clone()).expect("a tail");
    assert_eq!(got, sent);
    assert!(v["received_ms"].as_i64().unwrap_or(0) > 0, "{v}");

    // A newer request gets a larger id; a late tail of the older request is stored again but
    // does not answer the newer one.
    let (_, again) = post(&c.base, &c.operator, "/api/v1/devices/pi-1/logs", json!({})).await;
    let id2 = again["request"]["id"].as_u64().expect("id");
    assert!(id2 > id, "{id2} > {id}");
    assert_eq!(again["request"]["lines"], 100, "the default");
    let answer = checkin(&c.base, &token, &with_tail("pi-1", a_tail(id))).await;
    assert_eq!(
        answer.logs.map(|r| r.id),
        Some(id2),
        "still asked for the newer one"
    );
    // A tail for a request never made is dropped.
    checkin(&c.base, &token, &with_tail("pi-1", a_tail(id2 + 1000))).await;
    let (_, v) = get(&c.base, &c.viewer, "/api/v1/devices/pi-1/logs").await;
    assert_eq!(v["tail"]["request_id"].as_u64(), Some(id), "{v}");
    assert_eq!(v["request"]["state"], "pending");

    // The audit log names who asked.
    let (_, audit) = get(&c.base, &c.viewer, "/api/v1/audit").await;
    let asked: Vec<&Value> = audit
        .as_array()
        .expect("audit")
        .iter()
        .filter(|e| e["action"] == "device.logs_requested")
        .collect();
    assert_eq!(asked.len(), 2, "{audit:#}");
    assert_eq!(asked[1]["actor"], "operator");
    assert_eq!(asked[1]["target"], "pi-1");
    assert!(
        asked[1]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("web, agent"),
        "{:?}",
        asked[1]
    );

    // Who may: viewers read, operators ask; unknown devices are named.
    let (s, _) = post(&c.base, &c.viewer, "/api/v1/devices/pi-1/logs", json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = post(
        &c.base,
        &c.operator,
        "/api/v1/devices/nobody/logs",
        json!({}),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["error"], "no device `nobody`");
    let (s, _) = get(&c.base, &c.viewer, "/api/v1/devices/nobody/logs").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = get(&c.base, &token, "/api/v1/devices/pi-1/logs").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a device token reads no logs");
    let (s, v) = post(
        &c.base,
        &c.operator,
        "/api/v1/devices/pi-1/logs",
        json!({"lines": 0}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap_or("").contains("`lines`"), "{v}");
    let (s, v) = post(
        &c.base,
        &c.operator,
        "/api/v1/devices/pi-1/logs",
        json!({"services": ["a b"]}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // A device that never checked in: asked all the same, and the answer says it never did.
    enroll(&c.base, &c.bootstrap, "pi-silent").await;
    let (s, v) = post(
        &c.base,
        &c.operator,
        "/api/v1/devices/pi-silent/logs",
        json!({}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["last_seen_ms"], Value::Null);
    c.stop().await;
}

#[tokio::test]
async fn a_request_rides_on_a_check_in_and_the_tail_on_the_next_on_sqlite() {
    round_trip(Store::Sqlite).await;
}

#[tokio::test]
async fn a_request_rides_on_a_check_in_and_the_tail_on_the_next_on_postgres() {
    round_trip(Store::Postgres).await;
}

async fn bounds(store: Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(url) = database_url(store, dir.path(), "logs_bounds").await else {
        return;
    };
    let c = TestController::start(test_config(dir.path(), &url, None)).await;
    let token = enroll(&c.base, &c.bootstrap, "pi-1").await;
    let (_, asked) = post(&c.base, &c.operator, "/api/v1/devices/pi-1/logs", json!({})).await;
    let id = asked["request"]["id"].as_u64().expect("id");

    // A tail that does not read: the check-in is stored, the request stays pending.
    let body = json!({"device_id": "pi-1", "agent_version": "9", "current": null, "previous": null,
        "phase": "idle", "health": "healthy", "last_result": null,
        "logs": {"request_id": "seven", "sources": 3}});
    let r = client()
        .post(c.url("/api/v1/checkin"))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .expect("check-in");
    assert_eq!(r.status(), StatusCode::OK);
    let answer: CheckinResponse = r.json().await.expect("answer");
    assert_eq!(answer.logs.map(|r| r.id), Some(id), "asked again");
    let (_, v) = get(&c.base, &c.viewer, "/api/v1/devices/pi-1").await;
    assert_eq!(
        v["device"]["agent_version"], "9",
        "the check-in itself was stored"
    );

    // A tail far over the bounds (but under the body limit): more lines than a source may
    // carry, lines longer than a line may be, more bytes than a tail may hold. Cut, stored.
    let long = "é".repeat(MAX_LOG_LINE_BYTES); // twice the line bound, two bytes a character
    let mut lines: Vec<LogLine> = (0..MAX_LOG_LINES + 200)
        .map(|i| line(&format!("{i:05} {}", "x".repeat(300)), u64::from(i), None))
        .collect();
    lines.push(line(&long, 9, Some(LogStream::Stdout)));
    let big = LogTail {
        request_id: id,
        collected_ms: 1,
        sources: vec![LogSource {
            name: "app/chatty".into(),
            container: Some("c".into()),
            status: LogStatus::Ok,
            detail: None,
            lines,
            omitted: 0,
        }],
        truncated: false,
    };
    assert!(big.cost() > MAX_LOG_TAIL_BYTES);
    let answer = checkin(&c.base, &token, &with_tail("pi-1", big)).await;
    assert_eq!(answer.logs, None, "answered");
    let (_, v) = get(&c.base, &c.viewer, "/api/v1/devices/pi-1/logs").await;
    let got: LogTail = serde_json::from_value(v["tail"].clone()).expect("a tail");
    assert!(got.truncated);
    assert!(got.cost() <= MAX_LOG_TAIL_BYTES, "{}", got.cost());
    let s = &got.sources[0];
    assert!(
        s.lines.len() < MAX_LOG_LINES as usize && s.omitted > 200,
        "{}",
        s.omitted
    );
    assert_eq!(
        s.lines.len() as u64 + s.omitted,
        u64::from(MAX_LOG_LINES) + 201
    );
    let last = s.lines.last().expect("the newest line kept");
    assert!(last.text.len() <= MAX_LOG_LINE_BYTES && last.text.ends_with('…'));
    assert!(last.text.starts_with("éé"), "cut between characters");
    c.stop().await;
}

#[tokio::test]
async fn a_tail_over_the_bounds_is_cut_and_one_that_does_not_read_is_dropped_on_sqlite() {
    bounds(Store::Sqlite).await;
}

#[tokio::test]
async fn a_tail_over_the_bounds_is_cut_and_one_that_does_not_read_is_dropped_on_postgres() {
    bounds(Store::Postgres).await;
}

#[tokio::test]
async fn a_request_nobody_answers_expires_and_is_no_longer_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(url) = database_url(Store::Sqlite, dir.path(), "logs_expire").await else {
        return;
    };
    let c = TestController::start(test_config(dir.path(), &url, None)).await;
    let token = enroll(&c.base, &c.bootstrap, "pi-old").await;
    let (_, asked) = post(
        &c.base,
        &c.operator,
        "/api/v1/devices/pi-old/logs",
        json!({}),
    )
    .await;
    assert!(asked["request"]["id"].is_u64());
    let plain = support::checkin_request("pi-old");
    assert!(checkin(&c.base, &token, &plain).await.logs.is_some());
    // An agent older than logs on request never answers: 15 minutes on, it is not asked.
    sqlx::query("UPDATE device_logs SET requested_ms = requested_ms - $1")
        .bind(fleet_controller::db::LOG_REQUEST_TTL_MS)
        .execute(c.db().pool())
        .await
        .expect("age the request");
    assert_eq!(checkin(&c.base, &token, &plain).await.logs, None);
    let (_, v) = get(&c.base, &c.viewer, "/api/v1/devices/pi-old/logs").await;
    assert_eq!(v["request"]["state"], "expired", "{v}");
    c.stop().await;
}

fn long_poll_config(dir: &std::path::Path, url: &str) -> ControllerConfig {
    let mut cfg = test_config(dir, url, None);
    cfg.checkin_interval = Duration::from_secs(60);
    cfg.long_poll.max = Duration::from_secs(40);
    cfg
}

fn long_poll(id: &str) -> CheckinRequest {
    CheckinRequest {
        long_poll_secs: 40,
        ..support::checkin_request(id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_check_in_is_answered_as_soon_as_logs_are_requested() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(url) = database_url(Store::Sqlite, dir.path(), "logs_long_poll").await else {
        return;
    };
    let c = TestController::start(long_poll_config(dir.path(), &url)).await;
    let token = enroll(&c.base, &c.bootstrap, "lp-1").await;
    let base = c.base.clone();
    let held = tokio::spawn(async move {
        let t = Instant::now();
        let a = checkin(&base, &token, &long_poll("lp-1")).await;
        (a, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!held.is_finished(), "nothing to tell: held");
    let asked_at = Instant::now();
    let (_, asked) = post(
        &c.base,
        &c.operator,
        "/api/v1/devices/lp-1/logs",
        json!({"lines": 7}),
    )
    .await;
    let (a, _) = held.await.expect("held check-in");
    let waited = asked_at.elapsed();
    assert_eq!(
        a.logs.map(|r| (r.id, r.lines)),
        Some((asked["request"]["id"].as_u64().expect("id"), 7))
    );
    assert!(
        waited < Duration::from_secs(2),
        "woken at once, not at the 40 s bound: {waited:?}"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_in_held_on_a_follower_is_answered_by_a_request_made_on_the_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(url) = database_url(Store::Postgres, dir.path(), "logs_long_poll_follower").await
    else {
        return;
    };
    let mut a_cfg = long_poll_config(&dir.path().join("a"), &url);
    a_cfg.listen = free_addr();
    let leader = ControllerProcess::start(&a_cfg).await;
    let mut b_cfg = long_poll_config(&dir.path().join("b"), &url);
    b_cfg.listen = free_addr();
    let follower = ControllerProcess::start_replica(&b_cfg, &leader).await;
    let token = enroll(&leader.base, &leader.bootstrap, "lp-f").await;
    let base = follower.base.clone();
    let held = tokio::spawn(async move { checkin(&base, &token, &long_poll("lp-f")).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!held.is_finished());
    let asked_at = Instant::now();
    let (s, asked) = post(
        &leader.base,
        &leader.operator,
        "/api/v1/devices/lp-f/logs",
        json!({}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{asked}");
    let a = held.await.expect("held check-in");
    assert_eq!(a.logs.map(|r| r.id), asked["request"]["id"].as_u64());
    let waited = asked_at.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "the follower's poller found it (twice a second), not the 40 s bound: {waited:?}"
    );
}

fn fleetctl_api(c: &TestController) -> fleet_client::api::Api {
    fleet_client::api::Api::new(fleet_client::api::Target {
        url: c.base.clone(),
        token: c.operator.clone(),
        ca_file: None,
    })
    .expect("client")
}

fn ask(id: &str, wait: Duration) -> fleet_client::logs::Ask {
    fleet_client::logs::Ask {
        id: id.to_owned(),
        lines: Some(10),
        services: Vec::new(),
        wait,
        json: false,
    }
}

/// `fleetctl devices logs`'s client against the real controller: it waits for the tail that
/// answers its request (a device answering a second later), says when the device is unknown or
/// never checked in, and past its wait prints the older tail it has and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetctl_waits_for_the_answer_and_says_what_is_wrong_when_none_comes() {
    use fleet_client::api::CtlError;
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(url) = database_url(Store::Sqlite, dir.path(), "logs_fleetctl").await else {
        return;
    };
    let c = TestController::start(test_config(dir.path(), &url, None)).await;
    let api = fleetctl_api(&c);

    match fleet_client::logs::fetch(&api, &ask("nobody", Duration::from_secs(5))).await {
        Err(CtlError::Local(m)) => assert!(m.starts_with("no device `nobody`"), "{m}"),
        other => panic!("{other:?}"),
    }
    enroll(&c.base, &c.bootstrap, "pi-new").await;
    match fleet_client::logs::fetch(&api, &ask("pi-new", Duration::from_secs(5))).await {
        Err(CtlError::Local(m)) => assert!(m.contains("never checked in"), "{m}"),
        other => panic!("{other:?}"),
    }

    // A device that answers: its check-ins (as an agent makes them) after the request.
    let token = enroll(&c.base, &c.bootstrap, "pi-1").await;
    checkin(&c.base, &token, &support::checkin_request("pi-1")).await;
    let (base, t) = (c.base.clone(), token.clone());
    let device = tokio::spawn(async move {
        let plain = support::checkin_request("pi-1");
        for _ in 0..40 {
            if let Some(r) = checkin(&base, &t, &plain).await.logs {
                tokio::time::sleep(Duration::from_millis(300)).await;
                checkin(&base, &t, &with_tail("pi-1", a_tail(r.id))).await;
                return r.lines;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("never asked");
    });
    let out = fleet_client::logs::fetch(&api, &ask("pi-1", Duration::from_secs(20)))
        .await
        .expect("the logs");
    assert_eq!(device.await.expect("device"), 10, "the lines asked for");
    assert!(
        out.contains("== app/web (container ns-app-web) =="),
        "{out}"
    );
    assert!(out.contains("stderr <script>alert(1)</script>"), "{out}");
    assert!(
        out.contains("== agent (3 older lines not shown) =="),
        "{out}"
    );
    assert!(out.contains("== app/side: no logs =="), "{out}");

    // Nobody answers now: the older tail is printed, with the failure.
    let t = Instant::now();
    match fleet_client::logs::fetch(&api, &ask("pi-1", Duration::from_secs(2))).await {
        Err(CtlError::Partial { output, message }) => {
            assert!(output.contains("GET /healthz 200"), "{output}");
            assert!(message.contains("has not answered within 2 s"), "{message}");
            assert!(message.contains("the logs shown are older"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(6), "bounded by --wait");
    c.stop().await;
}
