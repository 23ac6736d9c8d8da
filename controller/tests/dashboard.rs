//! The dashboard in a real headless Chromium over WebDriver: log in, see the fleet, press the
//! emergency stop and see check-ins answer hold, resume, watch a device change state without a
//! reload, and a viewer who gets no stop button. Screenshots of every page are saved under
//! `target/test-artifacts/dashboard_in_a_real_browser/`.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use fleet_client::sim::SimFleet;
use fleet_config::protocol::{Desired, Telemetry, UpdatePhase};
use fleet_controller::config::GitSource;
use fleet_controller::db::now_ms;
use reqwest::StatusCode;
use serde_json::Value;
use support::browser::Browser;
use support::fleet_repo::{device_ids, FleetRepo};
use support::{client, test_config, TestController};

const DEVICES: usize = 20;
const PASSWORD: &str = "a long test password";
const WAIT: Duration = Duration::from_secs(20);

async fn login(b: &Browser, base: &str, user: &str) {
    b.client
        .goto(&format!("{base}/login"))
        .await
        .expect("login page");
    b.type_into("#name", user).await;
    b.type_into("#password", PASSWORD).await;
    b.click("#login-submit").await;
    b.wait_text("header .who", WAIT, "the logged-in header", |t| {
        t.contains(user)
    })
    .await;
}

async fn round(fleet: &mut SimFleet) {
    let errors = fleet.round(&BTreeSet::new(), 8).await;
    assert!(errors.is_empty(), "check-ins failed: {:?}", errors.first());
}

async fn fleet_status(c: &TestController) -> Value {
    support::viewer_get(c, "/api/v1/status").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser() {
    let test = "dashboard_in_a_real_browser";
    if !support::git_daemon::git_available(test) {
        return;
    }
    let Some(b) = Browser::start(test).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = FleetRepo::new(dir.path(), DEVICES, 2, "1h");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("fleet.db").display()
    );
    let c = TestController::start(test_config(
        &dir.path().join("controller"),
        &url,
        Some(GitSource {
            endpoints: vec![repo.url()],
            branch: "main".into(),
            poll_interval: Duration::from_millis(300),
            failover_timeout: Duration::from_secs(5),
        }),
    ))
    .await;
    let mut fleet = SimFleet::enroll(&c.base, &c.bootstrap, &device_ids(DEVICES))
        .await
        .expect("enroll");
    round(&mut fleet).await;

    // A release: the canaries take it and bake (1 h), so the rollout stays active in wave 1.
    let sha = repo.release("v1");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        round(&mut fleet).await;
        let on = fleet
            .devices
            .iter()
            .filter(|d| d.current.as_ref().is_some_and(|r| r.as_str() == sha))
            .count();
        if on == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the canaries never took {sha}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    round(&mut fleet).await;
    // Telemetry history for the device page's sparklines.
    let now = now_ms();
    for (i, cpu) in [12.0, 40.0, 25.0, 70.0].iter().enumerate() {
        let t = Telemetry {
            cpu_percent: Some(*cpu),
            mem_used_bytes: Some((200 + 50 * i as u64) << 20),
            mem_total_bytes: Some(1 << 30),
            disk_free_bytes: Some(8 << 30),
            temperature_c: Some(45.0 + i as f64),
            load1: Some(0.1 * i as f64),
            uptime_secs: None,
        };
        c.db()
            .add_telemetry_sample("dev-000", now - (4 - i as i64) * 600_000, &t)
            .await
            .expect("sample");
    }

    // Not logged in: every page sends to the login form, and a wrong password is refused.
    b.client.goto(&c.url("/devices")).await.expect("devices");
    let here = b.client.current_url().await.expect("url");
    assert_eq!(
        here.path(),
        "/login",
        "anonymous users go to the login page"
    );
    b.type_into("#name", "operator").await;
    b.type_into("#password", "wrong").await;
    b.click("#login-submit").await;
    b.wait_text(".flash", WAIT, "the refusal", |t| {
        t.contains("wrong password")
    })
    .await;

    // The operator logs in and sees the fleet.
    login(&b, &c.base, "operator").await;
    assert_eq!(b.text("#device-count").await, DEVICES.to_string());
    assert_eq!(b.text("#card-health .n").await, "100.0 %");
    let waves = b.text(".waves").await;
    assert!(
        waves.contains("canary") && waves.contains("2 healthy"),
        "{waves}"
    );
    assert!(b.exists(".chart rect").await, "the version chart is drawn");
    b.screenshot("01-overview").await;

    // Emergency stop: one click, a reason, a confirmation; then the banner.
    assert!(!b.displayed("#stop-banner").await);
    b.click("#estop-open").await;
    b.type_into("#estop-reason", "canaries reboot in a loop")
        .await;
    b.screenshot("02-stop-confirmation").await;
    b.click("#estop-confirm").await;
    let banner = b
        .wait_text("#stop-banner", WAIT, "the stop banner", |t| {
            t.contains("canaries reboot in a loop")
        })
        .await;
    assert!(
        banner.contains("EMERGENCY STOP") && banner.contains("operator"),
        "{banner}"
    );
    b.screenshot("03-stop-banner").await;
    // Through the API: the stop is stored and every check-in now answers hold.
    let s = fleet_status(&c).await;
    assert_eq!(s["emergency_stop"]["reason"], "canaries reboot in a loop");
    let http = client();
    for i in [0, 7, 19] {
        let fails = fleet.fails.clone();
        let answer = fleet.devices[i]
            .checkin(&http, &c.base, &fails)
            .await
            .expect("check-in");
        assert!(answer.emergency_stop, "device {i} is told about the stop");
        assert_eq!(answer.desired, Desired::Hold, "device {i} must hold");
    }
    // The banner is on every page.
    b.client.goto(&c.url("/audit")).await.expect("audit");
    assert!(b
        .text("#stop-banner")
        .await
        .contains("canaries reboot in a loop"));
    assert!(b.text("#audit").await.contains("emergency_stop"));

    // Resume from the banner.
    b.click("#resume").await;
    b.wait_text(".flash", WAIT, "the resume message", |t| {
        t.contains("cleared")
    })
    .await;
    assert!(!b.displayed("#stop-banner").await);
    assert!(fleet_status(&c).await["emergency_stop"].is_null());
    b.client.goto(&c.url("/audit")).await.expect("audit");
    assert!(b.text("#audit").await.contains("emergency_stop.resume"));
    b.screenshot("04-audit").await;

    // A device changing state updates the open page without a reload.
    b.client
        .goto(&c.url("/devices?q=dev-01&sort=id"))
        .await
        .expect("devices");
    assert_eq!(b.text("#match-count").await, "10 of 20 devices match");
    b.wait_text("body", WAIT, "the live connection", |_| true)
        .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let live = b
            .client
            .execute(
                "return document.body.getAttribute('data-live-status');",
                vec![],
            )
            .await
            .expect("script");
        if live == "connected" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the event stream never connected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.client
        .execute("window.__notReloaded = true;", vec![])
        .await
        .expect("mark");
    let badge = r#"[data-device-state="dev-012"]"#;
    assert_eq!(b.text(badge).await, "online");
    let k = fleet
        .devices
        .iter()
        .position(|d| d.id == "dev-012")
        .expect("dev-012");
    fleet.devices[k].phase = UpdatePhase::Fetching;
    let fails = fleet.fails.clone();
    fleet.devices[k]
        .checkin(&http, &c.base, &fails)
        .await
        .expect("check-in");
    b.wait_text(badge, WAIT, "dev-012 to show updating", |t| t == "updating")
        .await;
    let same_page = b
        .client
        .execute("return window.__notReloaded === true;", vec![])
        .await
        .expect("script");
    assert_eq!(same_page, Value::Bool(true), "the page was not reloaded");
    b.screenshot("05-devices").await;

    // Device detail: releases, sparklines, events and update history.
    b.client
        .goto(&c.url("/devices/dev-000"))
        .await
        .expect("device");
    let facts = b.text("dl.facts").await;
    assert!(facts.contains(&sha[..12]), "{facts}");
    assert!(
        b.exists(r#"figure[data-metric="CPU"] polyline"#).await,
        "a CPU sparkline from the samples"
    );
    assert!(b.text("main").await.contains("update_finished"));
    assert!(
        b.text("#reach-ssh").await.contains("ssh sim-dev-000"),
        "the SSH command from the host name the device reported"
    );
    b.screenshot("06-device").await;

    // Logs: the operator fetches them from the page; the device's tail, with a line holding
    // `<script>`, shows as text and runs nothing (an alert would fail every later command).
    b.click("#logs-fetch").await;
    b.wait_text(".flash", WAIT, "the request's message", |t| {
        t.contains("Logs requested")
    })
    .await;
    let d = fleet
        .devices
        .iter()
        .find(|d| d.id == "dev-000")
        .expect("dev-000")
        .clone();
    let request = checkin_as(&c, &d, |_| {})
        .await
        .logs
        .expect("asked for its logs");
    let tail = fleet_config::protocol::LogTail {
        request_id: request.id,
        collected_ms: now_ms() as u64,
        sources: vec![fleet_config::protocol::logs::LogSource {
            name: "app/web".into(),
            container: Some("dev-000-app-web".into()),
            status: fleet_config::protocol::logs::LogStatus::Ok,
            detail: None,
            lines: vec![fleet_config::protocol::logs::LogLine {
                at_ms: Some(now_ms() as u64),
                stream: Some(fleet_config::protocol::logs::LogStream::Stderr),
                text: "<script>alert('from the device')</script><img src=x onerror=alert(2)>"
                    .into(),
            }],
            omitted: 0,
        }],
        truncated: false,
    };
    checkin_as(&c, &d, |r| {
        r.logs = Some(fleet_config::protocol::Tolerant::Read(tail))
    })
    .await;
    b.client
        .goto(&c.url("/devices/dev-000"))
        .await
        .expect("device");
    b.wait_text("#logs", WAIT, "the tail", |t| {
        t.contains("<script>alert('from the device')</script><img src=x onerror=alert(2)>")
    })
    .await;
    let injected = b
        .client
        .execute(
            "return document.querySelectorAll('#logs script, #logs img').length;",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(
        injected,
        Value::from(0),
        "no element from the device's text"
    );
    b.screenshot("06b-device-logs").await;

    // Rollouts: the list and the active one with its waves and the operator's actions.
    b.client.goto(&c.url("/rollouts")).await.expect("rollouts");
    let id = format!("r-{}", &sha[..12]);
    assert!(b.text("#rollouts").await.contains(&id));
    b.screenshot("07-rollouts").await;
    b.client
        .goto(&c.url(&format!("/rollouts/{id}")))
        .await
        .expect("rollout");
    assert!(b.exists("#rollout-actions button[value=pause]").await);
    b.screenshot("08-rollout").await;
    b.click("#rollout-actions button[value=pause]").await;
    b.wait_text("#rollout-state", WAIT, "the rollout to pause", |t| {
        t == "paused"
    })
    .await;

    // A viewer sees the fleet but no stop button, no resume, no rollout actions.
    b.click("header form[action='/logout'] button").await;
    b.wait_text("h1", WAIT, "the login page", |t| t == "Fleet")
        .await;
    login(&b, &c.base, "viewer").await;
    assert_eq!(b.text("#device-count").await, DEVICES.to_string());
    assert!(
        !b.exists("#estop-open").await,
        "a viewer has no stop button"
    );
    assert!(!b.exists("#resume").await);
    b.client
        .goto(&c.url(&format!("/rollouts/{id}")))
        .await
        .expect("rollout");
    assert!(!b.exists("#rollout-actions").await);
    b.screenshot("09-viewer-overview").await;
    b.close().await;

    // And the server refuses a viewer's stop even if the form is forged.
    let http = reqwest::Client::new();
    let cookie = support::dashboard::session_cookie(&c.base, "viewer", PASSWORD).await;
    let page = http
        .get(c.url("/"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("overview")
        .text()
        .await
        .expect("html");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("csrf in the page")
        .to_owned();
    let r = http
        .post(c.url("/ui/stop"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str()), ("reason", "forged")])
        .send()
        .await
        .expect("stop");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(fleet_status(&c).await["emergency_stop"].is_null());
    c.stop().await;
}

/// A client that shows redirects instead of following them, with an optional session cookie.
struct Plain {
    http: reqwest::Client,
    cookie: Option<String>,
}

impl Plain {
    fn new() -> Plain {
        Plain {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            cookie: None,
        }
    }

    async fn get(&self, c: &TestController, path: &str) -> (StatusCode, String, String) {
        let mut req = self.http.get(c.url(path));
        if let Some(k) = &self.cookie {
            req = req.header("cookie", k);
        }
        let r = req.send().await.expect("get");
        let loc = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (r.status(), loc, r.text().await.unwrap_or_default())
    }

    async fn post(&self, c: &TestController, path: &str, form: &[(&str, &str)]) -> StatusCode {
        let mut req = self.http.post(c.url(path)).form(form);
        if let Some(k) = &self.cookie {
            req = req.header("cookie", k);
        }
        req.send().await.expect("post").status()
    }

    async fn login(&mut self, c: &TestController, user: &str, password: &str) -> StatusCode {
        let (csrf, login_cookie) = support::dashboard::login_form(&self.http, &c.base).await;
        let r = self
            .http
            .post(c.url("/login"))
            .header("cookie", login_cookie)
            .form(&[
                ("name", user),
                ("password", password),
                ("next", "/devices"),
                ("csrf", &csrf),
            ])
            .send()
            .await
            .expect("login");
        self.cookie = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .find(|c| c.starts_with("fleet_session="))
            .map(str::to_owned);
        r.status()
    }
}

/// Without a browser (no JavaScript): every page renders for a viewer, anonymous visitors go
/// to the login form, bad input gets a 4xx naming the problem, and forms need the CSRF token.
async fn pages_without_javascript(store: support::Store, test: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(url) = support::database_url(store, dir.path(), test).await else {
        return;
    };
    let c = TestController::start(test_config(&dir.path().join("controller"), &url, None)).await;
    let mut fleet = SimFleet::enroll(&c.base, &c.bootstrap, &device_ids(5))
        .await
        .expect("enroll");
    round(&mut fleet).await;
    let mut p = Plain::new();

    let (status, loc, _) = p.get(&c, "/devices?state=failed").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(loc, "/login?next=%2Fdevices%3Fstate%3Dfailed");
    let (status, _, _) = p.get(&c, "/ui/events").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        p.login(&c, "viewer", "not the password").await,
        StatusCode::UNAUTHORIZED
    );
    assert!(p.cookie.is_none());
    assert_eq!(p.login(&c, "viewer", PASSWORD).await, StatusCode::SEE_OTHER);

    for path in ["/", "/devices", "/devices/dev-003", "/rollouts", "/audit"] {
        let (status, _, body) = p.get(&c, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(
            body.contains("viewer (viewer)"),
            "{path}: the header names the user"
        );
        assert!(
            !body.contains("estop-open"),
            "{path}: no stop button for a viewer"
        );
    }
    let (_, _, body) = p.get(&c, "/").await;
    assert!(
        body.contains(r#"id="device-count" data-live="total">5<"#),
        "{body}"
    );
    let r = p
        .http
        .get(c.url("/"))
        .header("cookie", p.cookie.clone().unwrap_or_default())
        .send()
        .await
        .expect("overview");
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(header("content-security-policy").contains("frame-ancestors 'none'"));
    assert_eq!(
        header("x-frame-options"),
        "DENY",
        "no site may frame the stop button"
    );
    let (_, _, body) = p
        .get(&c, "/devices?q=dev-00&state=online&sort=id&dir=desc")
        .await;
    let first = body.find("dev-004").expect("dev-004 listed");
    let last = body.find("dev-000").expect("dev-000 listed");
    assert!(first < last, "sorted descending");
    assert!(body.contains("5 of 5 devices match"));

    let (status, _, body) = p.get(&c, "/devices/no-such-device").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("There is no device `no-such-device`"));
    let (status, _, _) = p.get(&c, "/rollouts/r-nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, body) = p.get(&c, "/devices?page=abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("page"), "{body}");

    // An operator's form without the right CSRF token changes nothing.
    let mut op = Plain::new();
    assert_eq!(
        op.login(&c, "operator", PASSWORD).await,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        op.post(&c, "/ui/stop", &[("csrf", "forged"), ("reason", "x")])
            .await,
        StatusCode::FORBIDDEN
    );
    assert!(fleet_status(&c).await["emergency_stop"].is_null());
    let (_, _, body) = op.get(&c, "/").await;
    assert!(body.contains("estop-open"), "operators get the stop button");
    let csrf = body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("csrf")
        .to_owned();
    // A blank reason is refused with a message; nothing is stopped.
    assert_eq!(
        op.post(
            &c,
            "/ui/stop",
            &[("csrf", &csrf), ("reason", "  "), ("next", "/")]
        )
        .await,
        StatusCode::SEE_OTHER
    );
    assert!(fleet_status(&c).await["emergency_stop"].is_null());
    // With a reason, the stop holds; the viewer's pages show the banner.
    op.post(
        &c,
        "/ui/stop",
        &[
            ("csrf", &csrf),
            ("reason", "drill"),
            ("next", "//evil.example/"),
        ],
    )
    .await;
    assert_eq!(fleet_status(&c).await["emergency_stop"]["reason"], "drill");
    let (_, _, body) = p.get(&c, "/devices").await;
    assert!(body.contains("EMERGENCY STOP") && body.contains("drill"));
    assert!(!body.contains("id=\"resume\""), "a viewer cannot resume");
    // Logging out ends the session (the form carries the CSRF token).
    assert_eq!(op.post(&c, "/logout", &[]).await, StatusCode::FORBIDDEN);
    assert_eq!(
        op.post(&c, "/logout", &[("csrf", &csrf)]).await,
        StatusCode::SEE_OTHER
    );
    let (status, _, _) = op.get(&c, "/").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_without_javascript_on_sqlite() {
    pages_without_javascript(support::Store::Sqlite, "pages_without_javascript_on_sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_without_javascript_on_postgres() {
    pages_without_javascript(
        support::Store::Postgres,
        "pages_without_javascript_on_postgres",
    )
    .await;
}

/// The csrf value of a page's forms.
fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("csrf in the page")
        .to_owned()
}

/// The HTML of the element with `id` (up to the next `</div>`, enough for the panels here).
fn panel<'a>(page: &'a str, id: &str) -> &'a str {
    let start = page
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    let rest = &page[start..];
    &rest[..rest.find("</div>").unwrap_or(rest.len())]
}

/// One check-in of simulated device `d` as it is, changed by `f`.
async fn checkin_as(
    c: &TestController,
    d: &fleet_client::sim::SimDevice,
    f: impl FnOnce(&mut fleet_config::protocol::CheckinRequest),
) -> fleet_config::protocol::CheckinResponse {
    let mut req = d.request();
    f(&mut req);
    let r = client()
        .post(c.url("/api/v1/checkin"))
        .bearer_auth(&d.token)
        .json(&req)
        .send()
        .await
        .expect("check-in");
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.expect("answer")
}

/// The device page without JavaScript: the SSH commands from the device's inventory labels
/// (the safe-mode stack's first while it is in safe mode), the "fetch logs" form for
/// operators only, and the newest tail as text: a line holding `<script>` is shown, escaped,
/// never run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_page_shows_its_logs_as_text_and_how_to_reach_it() {
    use fleet_config::protocol::logs::{LogLine, LogSource, LogStatus, LogStream, LogTail};
    let test = "the_device_page_shows_its_logs_as_text_and_how_to_reach_it";
    if !support::git_daemon::git_available(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut repo = FleetRepo::new(dir.path(), 2, 1, "1h");
    repo.add_labels(
        "dev-000",
        "ssh_host: pi-17.lab, ssh_user: pi, ssh_port: 2222, safe_mode_ssh_port: 2200",
    );
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("fleet.db").display()
    );
    let c = TestController::start(test_config(
        &dir.path().join("controller"),
        &url,
        Some(GitSource {
            endpoints: vec![repo.url()],
            branch: "main".into(),
            poll_interval: Duration::from_millis(300),
            failover_timeout: Duration::from_secs(5),
        }),
    ))
    .await;
    let mut fleet = SimFleet::enroll(&c.base, &c.bootstrap, &device_ids(2))
        .await
        .expect("enroll");
    round(&mut fleet).await;
    repo.release("v1");
    // The release's devices.yaml gives the device its labels.
    let deadline = Instant::now() + WAIT;
    while support::viewer_get(&c, "/api/v1/devices/dev-000").await["device"]["labels"]["ssh_host"]
        != "pi-17.lab"
    {
        assert!(Instant::now() < deadline, "the labels never arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut p = Plain::new();
    assert_eq!(
        p.login(&c, "operator", PASSWORD).await,
        StatusCode::SEE_OTHER
    );
    let (status, _, page) = p.get(&c, "/devices/dev-000").await;
    assert_eq!(status, StatusCode::OK);
    let reach = panel(&page, "reach");
    let ssh = reach.find("ssh -p 2222 pi@pi-17.lab").expect(reach);
    let safe = reach.find("ssh -p 2200 root@pi-17.lab").expect(reach);
    assert!(
        ssh < safe,
        "not in safe mode: the device's own sshd first: {reach}"
    );
    assert!(
        reach.contains("/etc/fleet/safe-mode/authorized_keys"),
        "{reach}"
    );
    assert!(panel(&page, "logs").contains("Never asked for its logs."));
    assert!(page.contains("id=\"logs-form\""), "an operator's form");

    // The operator fetches logs through the form.
    let csrf = csrf_of(&page);
    let r = p
        .http
        .post(c.url("/ui/devices/dev-000/logs"))
        .header("cookie", p.cookie.clone().expect("session"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("lines", "20"),
            ("services", "web, agent"),
            ("next", "/devices/dev-000"),
        ])
        .send()
        .await
        .expect("fetch logs");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let back = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        back.starts_with("/devices/dev-000?msg=Logs%20requested"),
        "{back}"
    );
    let asked = support::viewer_get(&c, "/api/v1/devices/dev-000/logs").await;
    assert_eq!(asked["request"]["lines"], 20, "{asked}");
    assert_eq!(
        asked["request"]["services"],
        serde_json::json!(["web", "agent"])
    );
    assert_eq!(asked["request"]["requested_by"], "operator");
    let (_, _, page) = p.get(&c, &back).await;
    assert!(
        panel(&page, "logs-status").contains("waiting for the device"),
        "{}",
        panel(&page, "logs-status")
    );

    // The device is asked at its next check-in and answers with the one after.
    let d = fleet.devices[0].clone();
    let answer = checkin_as(&c, &d, |_| {}).await;
    let request = answer.logs.expect("asked for its logs");
    let at = 1_796_000_000_042u64;
    let tail = LogTail {
        request_id: request.id,
        collected_ms: at,
        sources: vec![
            LogSource {
                name: "agent".into(),
                container: None,
                status: LogStatus::Ok,
                detail: None,
                lines: vec![LogLine {
                    at_ms: Some(at),
                    stream: None,
                    text: "INFO  fleet_agent: checked in & well".into(),
                }],
                omitted: 0,
            },
            LogSource {
                name: "app/web".into(),
                container: Some("dev-000-app-web".into()),
                status: LogStatus::Ok,
                detail: None,
                lines: vec![LogLine {
                    at_ms: Some(at + 1),
                    stream: Some(LogStream::Stderr),
                    text: "<script>alert(1)</script> <b>bold</b>".into(),
                }],
                omitted: 12,
            },
        ],
        truncated: false,
    };
    let answer = checkin_as(&c, &d, |r| {
        r.logs = Some(fleet_config::protocol::Tolerant::Read(tail))
    })
    .await;
    assert_eq!(answer.logs, None);
    let (_, _, page) = p.get(&c, "/devices/dev-000").await;
    let logs = panel(&page, "logs");
    assert!(
        logs.contains("&lt;script&gt;alert(1)&lt;/script&gt; &lt;b&gt;bold&lt;/b&gt;"),
        "{logs}"
    );
    assert!(
        !page.contains("<script>alert(1)"),
        "nothing from the device is HTML"
    );
    assert!(!page.contains("<b>bold"));
    assert!(logs.contains("checked in &amp; well"), "{logs}");
    assert!(
        logs.contains("2026-11-30 00:53:20.042"),
        "the line's time: {logs}"
    );
    assert!(
        logs.contains("stderr") && logs.contains("dev-000-app-web"),
        "{logs}"
    );
    assert!(logs.contains("12 older lines not shown"), "{logs}");
    assert!(panel(&page, "logs-status").contains("answered"));

    // In safe mode the safe-mode stack's SSH comes first.
    checkin_as(&c, &d, |r| r.phase = UpdatePhase::SafeMode).await;
    let (_, _, page) = p.get(&c, "/devices/dev-000").await;
    let reach = panel(&page, "reach");
    let safe = reach.find("ssh -p 2200 root@pi-17.lab").expect(reach);
    let ssh = reach.find("ssh -p 2222 pi@pi-17.lab").expect(reach);
    assert!(safe < ssh, "in safe mode, its SSH first: {reach}");
    assert!(reach.contains("Safe mode SSH"), "{reach}");

    // A viewer reads the logs, has no form, and a forged one is refused.
    let mut v = Plain::new();
    assert_eq!(v.login(&c, "viewer", PASSWORD).await, StatusCode::SEE_OTHER);
    let (_, _, page) = v.get(&c, "/devices/dev-000").await;
    assert!(panel(&page, "logs").contains("&lt;script&gt;"));
    assert!(!page.contains("id=\"logs-form\""), "no form for a viewer");
    let csrf = csrf_of(&page);
    let status = v
        .post(
            &c,
            "/ui/devices/dev-000/logs",
            &[("csrf", csrf.as_str()), ("next", "/devices/dev-000")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    c.stop().await;
}
