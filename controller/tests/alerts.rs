//! The alert engine end to end, one test per failure mode: a controller with a real fleet
//! repository on `git daemon`, simulated devices speaking the real check-in protocol (their
//! faults reported as the agent reports them: problem events, phases, health, silence), and
//! the four notifiers delivering to real protocol peers on loopback (the generic webhook, a
//! Slack and a Telegram receiver that answer as those services do, a real SMTP server). Each
//! test injects the fault, waits for the alert to reach every notifier exactly once (one
//! message for all its devices), clears the fault and waits for the resolution, once.
//!
//! Timings are shortened in the controller's configuration and the fleet's `alerts:` so a
//! test takes seconds; the mean time to detection with the defaults is measured by the
//! `alert_detection` benchmark (BENCHMARKS.md).

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_client::sim::SimFleet;
use fleet_config::protocol::{EventKind, HealthState, ReleaseId, UpdatePhase};
use fleet_controller::config::{ControllerConfig, GitSource};
use fleet_testkit::receivers::{HttpReceiver, Recorded, Reply};
use fleet_testkit::smtp::{smtp_available, ReceivedMail, SmtpServer, SmtpTls};
use serde_json::{json, Value};
use support::fleet_repo::{device_ids, FleetRepo};
use support::{client, database_url, test_config, viewer_get, Store, TestController};

/// The fleet's thresholds in these tests (fleet.yaml `alerts:`).
const ALERTS: &str = "alerts:\n  offline_after: 3s\n  heartbeat_missed_after: 2s\n  update_stuck_after: 3s\n  git_fetch_failures: 3\n";
const DEVICES: usize = 4;
const TELEGRAM_OK: &str = r#"{"ok":true,"result":{"message_id":1}}"#;
const TOKEN: &str = "123456:ABC-test-token";
/// Longest a test waits for one thing.
const LIMIT: Duration = Duration::from_secs(90);

/// The four notifiers' receivers.
struct Receivers {
    hook: HttpReceiver,
    slack: HttpReceiver,
    telegram: HttpReceiver,
    smtp: SmtpServer,
    dir: tempfile::TempDir,
}

/// What one notifier said: (kind label as in the headline, alert name).
fn said(text: &str) -> Option<(String, String)> {
    // `[FIRING warning] DeviceOffline…`, whatever markup surrounds it.
    let start = text.find('[')?;
    let rest = &text[start + 1..];
    let end = rest.find(']')?;
    let kind = rest[..end].split_whitespace().next()?.to_owned();
    let name: String = rest[end + 1..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    Some((kind, name))
}

impl Receivers {
    fn start() -> Receivers {
        Receivers {
            hook: HttpReceiver::start(),
            slack: HttpReceiver::start(),
            telegram: HttpReceiver::with_replies(vec![Reply::ok(TELEGRAM_OK); 500]),
            smtp: SmtpServer::start(SmtpTls::None, None),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The `alerting:` section routing every severity to all four.
    fn yaml(&self) -> String {
        let slack_url = self.dir.path().join("slack-url");
        std::fs::write(&slack_url, self.slack.url("/services/T000/B000/XXXX")).expect("write");
        let tg = self.dir.path().join("tg-token");
        std::fs::write(&tg, TOKEN).expect("write");
        format!(
            "alerting:\n  runbook_url_base: https://git.example/fleet/runbooks/\n  notifiers:\n\
             \x20   - {{ name: pager, kind: webhook, url: \"{}\" }}\n\
             \x20   - {{ name: oncall-slack, kind: slack, url_file: {} }}\n\
             \x20   - {{ name: ops-telegram, kind: telegram, bot_token_file: {}, chat_id: '-100123', api_url: \"{}\" }}\n\
             \x20   - {{ name: oncall-mail, kind: email, smtp: \"{}\", security: none, from: fleet@example.com, to: oncall@example.com }}\n\
             \x20 routes:\n    - {{ notifiers: [pager, oncall-slack, ops-telegram, oncall-mail] }}\n",
            self.hook.url("/fleet"),
            slack_url.display(),
            tg.display(),
            self.telegram.url(""),
            self.smtp.addr()
        )
    }

    /// Every message each notifier delivered: (kind, alert, the webhook's body or the text).
    fn messages(&self) -> [Vec<(String, String, Value)>; 4] {
        let hook = self
            .hook
            .requests()
            .iter()
            .map(Recorded::json)
            .map(|v| {
                (
                    v["kind"].as_str().unwrap_or("").to_uppercase(),
                    v["alert"].as_str().unwrap_or("").to_owned(),
                    v,
                )
            })
            .collect();
        let text_of = |reqs: Vec<Recorded>| -> Vec<(String, String, Value)> {
            reqs.iter()
                .filter_map(|r| {
                    let v = r.json();
                    let (k, a) = said(v["text"].as_str()?)?;
                    Some((k, a, v))
                })
                .collect()
        };
        let slack = text_of(self.slack.requests());
        let telegram = text_of(self.telegram.requests());
        let mail = self
            .smtp
            .messages()
            .iter()
            .filter_map(|m: &ReceivedMail| {
                let (k, a) = said(m.header("subject")?)?;
                Some((
                    k,
                    a,
                    json!({"subject": m.header("subject"), "body": m.body}),
                ))
            })
            .collect();
        [hook, slack, telegram, mail]
    }

    /// How many messages of `kind` about `alert` each notifier delivered.
    fn count(&self, alert: &str, kind: &str) -> [usize; 4] {
        self.messages()
            .map(|m| m.iter().filter(|(k, a, _)| k == kind && a == alert).count())
    }
}

/// A controller with a converged fleet of simulated devices and the four notifiers.
struct Lab {
    _dir: tempfile::TempDir,
    repo: FleetRepo,
    rx: Receivers,
    c: TestController,
    fleet: SimFleet,
    /// Devices that do not check in.
    offline: BTreeSet<String>,
}

fn alerting(rx: &Receivers, cfg: &mut ControllerConfig) {
    let parsed = ControllerConfig::parse(&rx.yaml(), "controller.yaml").expect("alerting yaml");
    cfg.alerting = parsed.alerting;
    let a = &mut cfg.alerting;
    a.evaluate_every = Duration::from_millis(200);
    a.group_wait = Duration::from_millis(500);
    a.group_interval = Duration::from_secs(300);
    a.resolve_after = Duration::from_secs(1);
}

impl Lab {
    async fn new(test: &str, store: Store) -> Option<Lab> {
        Self::with(test, store, |_, _| {}).await
    }

    async fn with(
        test: &str,
        store: Store,
        tweak: impl FnOnce(&Receivers, &mut ControllerConfig),
    ) -> Option<Lab> {
        if !support::git_daemon::git_available(test) || !smtp_available(test) {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let url = database_url(store, dir.path(), test).await?;
        let repo = FleetRepo::new(dir.path(), DEVICES, 1, "200ms");
        let rx = Receivers::start();
        let mut cfg = test_config(
            &dir.path().join("controller"),
            &url,
            Some(GitSource {
                endpoints: vec![repo.url()],
                branch: "main".into(),
                poll_interval: Duration::from_millis(300),
                failover_timeout: Duration::from_secs(2),
            }),
        );
        alerting(&rx, &mut cfg);
        tweak(&rx, &mut cfg);
        let c = TestController::start(cfg).await;
        let fleet = SimFleet::enroll(&c.base, &c.bootstrap, &device_ids(DEVICES))
            .await
            .expect("enroll");
        let mut lab = Lab {
            _dir: dir,
            repo,
            rx,
            c,
            fleet,
            offline: BTreeSet::new(),
        };
        let v1 = lab.repo.release_with_fleet("v1", ALERTS);
        lab.until("every device on v1", |l| {
            l.fleet
                .devices
                .iter()
                .all(|d| d.current.as_ref().map(ReleaseId::as_str) == Some(v1.as_str()))
        })
        .await;
        Some(lab)
    }

    /// One check-in round of the devices not offline.
    async fn round(&mut self) {
        let errors = self.fleet.round(&self.offline, 8).await;
        assert!(errors.is_empty(), "check-ins failed: {:?}", errors.first());
    }

    /// Rounds every 150 ms until `done`.
    async fn until(&mut self, what: &str, mut done: impl FnMut(&Lab) -> bool) {
        let deadline = Instant::now() + LIMIT;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; delivered: {:?}",
                self.summary()
            );
            self.round().await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// Rounds for `d`.
    async fn during(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.round().await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    fn summary(&self) -> Vec<Vec<(String, String)>> {
        self.rx
            .messages()
            .iter()
            .map(|m| m.iter().map(|(k, a, _)| (k.clone(), a.clone())).collect())
            .collect()
    }

    /// Waits for `kind` about `alert` on every notifier, then checks for a while that each
    /// got it exactly once.
    async fn delivered_once(&mut self, alert: &str, kind: &str) {
        self.until(&format!("{kind} {alert} on every notifier"), |l| {
            l.rx.count(alert, kind).iter().all(|n| *n >= 1)
        })
        .await;
        self.during(Duration::from_secs(2)).await;
        assert_eq!(
            self.rx.count(alert, kind),
            [1, 1, 1, 1],
            "{kind} {alert} once per notifier (webhook, Slack, Telegram, e-mail): {:?}",
            self.summary()
        );
    }

    /// The webhook's body of the `kind` message about `alert`.
    fn hook_message(&self, alert: &str, kind: &str) -> Value {
        self.rx.messages()[0]
            .iter()
            .find(|(k, a, _)| k == kind && a == alert)
            .map(|(_, _, v)| v.clone())
            .expect("webhook message")
    }

    fn device(&mut self, i: usize) -> &mut fleet_client::sim::SimDevice {
        let id = device_ids(DEVICES)[i].clone();
        self.fleet
            .devices
            .iter_mut()
            .find(|d| d.id == id)
            .expect("device")
    }

    fn id(i: usize) -> String {
        device_ids(DEVICES)[i].clone()
    }

    async fn open_alerts(&self) -> Value {
        viewer_get(&self.c, "/api/v1/alerts").await
    }

    async fn stop(self) {
        self.c.stop().await;
    }
}

fn raised(problem: &str, subject: Option<&str>, detail: &str) -> EventKind {
    EventKind::ProblemRaised {
        problem: problem.into(),
        subject: subject.map(str::to_owned),
        detail: detail.into(),
    }
}

fn cleared(problem: &str, subject: Option<&str>) -> EventKind {
    EventKind::ProblemCleared {
        problem: problem.into(),
        subject: subject.map(str::to_owned),
    }
}

/// A device problem on two devices fires one alert naming both, then resolves once both clear.
async fn problem_on_two_devices(test: &str, problem: &str, subject: Option<&str>, alert: &str) {
    let Some(mut lab) = Lab::new(test, Store::Sqlite).await else {
        return;
    };
    for i in [1, 2] {
        lab.device(i)
            .push_event(raised(problem, subject, &format!("{problem} on purpose")));
    }
    lab.delivered_once(alert, "FIRING").await;
    let m = lab.hook_message(alert, "FIRING");
    let devices: BTreeSet<&str> = m["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        devices,
        [Lab::id(1).as_str(), Lab::id(2).as_str()].into(),
        "one message naming both devices: {m}"
    );
    assert_eq!(
        m["runbook_url"],
        format!("https://git.example/fleet/runbooks/{alert}.md")
    );
    assert!(
        m["description"]
            .as_str()
            .is_some_and(|d| d.contains(&format!("{problem} on purpose"))),
        "{m}"
    );
    let open = lab.open_alerts().await;
    assert_eq!(open.as_array().map(Vec::len), Some(1), "{open}");
    assert_eq!(open[0]["phase"], "firing");
    for i in [1, 2] {
        lab.device(i).push_event(cleared(problem, subject));
    }
    lab.delivered_once(alert, "RESOLVED").await;
    assert_eq!(lab.rx.count(alert, "FIRING"), [1, 1, 1, 1]);
    assert_eq!(lab.open_alerts().await, json!([]));
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_alerts_once_for_its_devices_and_resolves() {
    problem_on_two_devices(
        "a_crash_loop_alerts_once_for_its_devices_and_resolves",
        "crash_loop",
        Some("app/web"),
        "DeviceCrashLooping",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_disk_alerts_once_for_its_devices_and_resolves() {
    problem_on_two_devices(
        "low_disk_alerts_once_for_its_devices_and_resolves",
        "disk_low",
        None,
        "DeviceDiskLow",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overheating_alerts_once_for_its_devices_and_resolves() {
    problem_on_two_devices(
        "overheating_alerts_once_for_its_devices_and_resolves",
        "overheating",
        None,
        "DeviceOverheating",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_git_endpoint_on_devices_alerts_once_and_resolves() {
    problem_on_two_devices(
        "a_failing_git_endpoint_on_devices_alerts_once_and_resolves",
        "git_fetch_failing",
        Some("git://primary/fleet.git"),
        "DeviceGitFetchFailing",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_drift_that_cannot_be_repaired_alerts_once_and_resolves() {
    problem_on_two_devices(
        "config_drift_that_cannot_be_repaired_alerts_once_and_resolves",
        "drift_unrepaired",
        Some("0123456789abcdef0123456789abcdef01234567"),
        "DeviceConfigDrift",
    )
    .await;
}

async fn offline_devices(store: Store) {
    let test = format!("devices_that_go_silent_alert_once_as_a_group_{store:?}");
    let Some(mut lab) = Lab::new(&test, store).await else {
        return;
    };
    lab.offline = [Lab::id(1), Lab::id(2), Lab::id(3)].into();
    lab.delivered_once("DeviceOffline", "FIRING").await;
    let m = lab.hook_message("DeviceOffline", "FIRING");
    assert_eq!(m["devices_total"], 3, "one message for the three: {m}");
    assert_eq!(m["severity"], "warning");
    // A restart of the controller neither loses the alert nor says it again.
    let Lab {
        _dir,
        repo,
        rx,
        c,
        mut fleet,
        offline,
    } = lab;
    let c = c.restart().await;
    fleet.base = c.base.clone();
    let mut lab = Lab {
        _dir,
        repo,
        rx,
        c,
        fleet,
        offline,
    };
    lab.during(Duration::from_secs(3)).await;
    assert_eq!(lab.rx.count("DeviceOffline", "FIRING"), [1, 1, 1, 1]);
    // Back online: resolved, once.
    lab.offline.clear();
    lab.delivered_once("DeviceOffline", "RESOLVED").await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_that_go_silent_alert_once_as_a_group_on_sqlite() {
    offline_devices(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_that_go_silent_alert_once_as_a_group_on_postgres() {
    offline_devices(Store::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_stuck_in_a_phase_alerts_once_and_resolves() {
    let test = "an_update_stuck_in_a_phase_alerts_once_and_resolves";
    let Some(mut lab) = Lab::new(test, Store::Sqlite).await else {
        return;
    };
    // One device's agent says so itself; another only sits in `verifying` past
    // `alerts.update_stuck_after` (3 s here), which the controller notices on its own.
    lab.device(1).push_event(raised(
        "update_stuck",
        Some("pulling"),
        "no progress for 2m",
    ));
    lab.device(2).phase = UpdatePhase::Verifying;
    lab.delivered_once("DeviceUpdateStuck", "FIRING").await;
    // The agent's own report fires at once; the silent one joins once it held 3 s (its
    // message waits for group_interval, as an update would).
    let m = lab.hook_message("DeviceUpdateStuck", "FIRING");
    assert_eq!(m["devices"], json!([Lab::id(1)]), "{m}");
    let deadline = Instant::now() + LIMIT;
    loop {
        let open = lab.open_alerts().await;
        let members = &open[0]["members"];
        if members[Lab::id(2)]["firing"] == true && members[Lab::id(1)]["firing"] == true {
            assert!(
                members[Lab::id(2)]["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("verifying")),
                "{open}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the silent device never joined: {open}"
        );
        lab.round().await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    lab.device(1)
        .push_event(cleared("update_stuck", Some("pulling")));
    lab.device(2).phase = UpdatePhase::Idle;
    lab.delivered_once("DeviceUpdateStuck", "RESOLVED").await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_repaired_by_the_agent_alerts_once() {
    let test = "drift_repaired_by_the_agent_alerts_once";
    let Some(mut lab) = Lab::new(test, Store::Sqlite).await else {
        return;
    };
    let release: ReleaseId = lab.device(0).current.clone().expect("on v1");
    lab.device(0).push_event(EventKind::DriftDetected {
        release,
        files: vec!["stacks/app/compose.yaml".into()],
        more_files: 0,
        services: vec!["app/web".into()],
    });
    lab.delivered_once("DeviceConfigDrift", "FIRING").await;
    let m = lab.hook_message("DeviceConfigDrift", "FIRING");
    assert!(
        m["description"]
            .as_str()
            .is_some_and(|d| d.contains("stacks/app/compose.yaml") && d.contains("app/web")),
        "{m}"
    );
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_in_safe_mode_alerts_once_and_resolves_when_it_leaves() {
    let test = "a_device_in_safe_mode_alerts_once_and_resolves_when_it_leaves";
    let Some(mut lab) = Lab::new(test, Store::Sqlite).await else {
        return;
    };
    let d = lab.device(3);
    d.phase = UpdatePhase::SafeMode;
    d.push_event(EventKind::SafeModeEntered {
        reason: "crash loop of app/web long after its update".into(),
    });
    lab.delivered_once("DeviceInSafeMode", "FIRING").await;
    let m = lab.hook_message("DeviceInSafeMode", "FIRING");
    assert_eq!(m["severity"], "critical");
    assert!(
        m["description"]
            .as_str()
            .is_some_and(|d| d.contains("crash loop of app/web")),
        "{m}"
    );
    let d = lab.device(3);
    d.phase = UpdatePhase::Idle;
    d.push_event(EventKind::SafeModeExited);
    lab.delivered_once("DeviceInSafeMode", "RESOLVED").await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_rollout_alerts_once_and_resolves_when_a_good_release_supersedes_it() {
    let test = "a_halted_rollout_alerts_once_and_resolves_when_a_good_release_supersedes_it";
    let Some(mut lab) = Lab::new(test, Store::Sqlite).await else {
        return;
    };
    // v2 fails its health window on the canary: the rollout halts (bad config at the canary).
    let v2 = lab.repo.release_with_fleet("v2", ALERTS);
    let bad = v2.clone();
    lab.fleet.fails = Arc::new(move |_, r: &ReleaseId| r.as_str() == bad);
    lab.delivered_once("RolloutHalted", "FIRING").await;
    let m = lab.hook_message("RolloutHalted", "FIRING");
    assert_eq!(m["severity"], "critical");
    assert!(
        m["summary"]
            .as_str()
            .is_some_and(|s| s.contains(&format!("r-{}", &v2[..12]))),
        "{m}"
    );
    // A fixed release supersedes the halted rollout: resolved.
    lab.repo.release_with_fleet("v3", ALERTS);
    lab.delivered_once("RolloutHalted", "RESOLVED").await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_does_not_validate_alerts_once_and_resolves_with_a_valid_one() {
    let test = "a_commit_that_does_not_validate_alerts_once_and_resolves_with_a_valid_one";
    let Some(mut lab) = Lab::new(test, Store::Sqlite).await else {
        return;
    };
    let broken = lab.repo.broken();
    lab.delivered_once("ReleaseRejected", "FIRING").await;
    let m = lab.hook_message("ReleaseRejected", "FIRING");
    assert!(
        m["summary"]
            .as_str()
            .is_some_and(|s| s.contains(&broken[..12]) && s.contains("rolout")),
        "the summary names the commit and its first error: {m}"
    );
    lab.repo.release_with_fleet("v2", ALERTS);
    lab.delivered_once("ReleaseRejected", "RESOLVED").await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controllers_git_server_down_alerts_once_and_resolves() {
    let test = "the_controllers_git_server_down_alerts_once_and_resolves";
    let Some(mut lab) = Lab::new(test, Store::Sqlite).await else {
        return;
    };
    lab.repo.daemon.stop();
    lab.delivered_once("ControllerGitFetchFailing", "FIRING")
        .await;
    let m = lab.hook_message("ControllerGitFetchFailing", "FIRING");
    assert!(
        m["description"]
            .as_str()
            .is_some_and(|d| d.contains("fetches in a row failed")),
        "{m}"
    );
    let metrics = client()
        .get(lab.c.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("fleet_watcher_git_consecutive_failures{")
                && !l.ends_with(" 0")),
        "{metrics}"
    );
    lab.repo.daemon.restart();
    lab.delivered_once("ControllerGitFetchFailing", "RESOLVED")
        .await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_wide_failure_alerts_once_sets_the_stop_and_resolves() {
    let test = "a_fleet_wide_failure_alerts_once_sets_the_stop_and_resolves";
    let Some(mut lab) = Lab::new(test, Store::Sqlite).await else {
        return;
    };
    // Three of four degraded: above the fleet's 50% limit.
    for i in 0..3 {
        lab.device(i).health_override = Some(HealthState::Degraded);
    }
    lab.delivered_once("FleetWideFailure", "FIRING").await;
    let status = viewer_get(&lab.c, "/api/v1/status").await;
    assert!(!status["emergency_stop"].is_null(), "{status}");
    for i in 0..3 {
        lab.device(i).health_override = None;
    }
    lab.delivered_once("FleetWideFailure", "RESOLVED").await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_the_dead_mans_switch_refuses_alerts_monitoring_down() {
    let test = "a_heartbeat_the_dead_mans_switch_refuses_alerts_monitoring_down";
    let switch = HttpReceiver::with_replies(vec![Reply::new(503, "down"); 10_000]);
    let url = switch.url("/ping/5f0e");
    let Some(mut lab) = Lab::with(test, Store::Sqlite, |_, cfg| {
        cfg.alerting.heartbeat = Some(fleet_controller::notify::config::Heartbeat {
            url: url.parse().expect("url"),
            interval: Duration::from_millis(300),
            timeout: Duration::from_secs(2),
        });
    })
    .await
    else {
        return;
    };
    lab.delivered_once("MonitoringDown", "FIRING").await;
    assert!(
        switch
            .requests()
            .iter()
            .all(|r| r.method == "GET" && r.path == "/ping/5f0e"),
        "heartbeats are GETs of the configured URL"
    );
    switch.set_replies(Vec::new());
    lab.delivered_once("MonitoringDown", "RESOLVED").await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_that_keeps_failing_is_an_alert_sent_through_the_others() {
    let test = "a_notifier_that_keeps_failing_is_an_alert_sent_through_the_others";
    let Some(mut lab) = Lab::new(test, Store::Sqlite).await else {
        return;
    };
    lab.rx
        .hook
        .set_replies(vec![Reply::new(503, "maintenance"); 3]);
    lab.device(0)
        .push_event(raised("crash_loop", Some("app/web"), "5 restarts in 5m"));
    // The webhook refuses three times (retried after 5 s, then 10 s): NotifierFailing, to the
    // other three only.
    lab.until("NotifierFailing on the other notifiers", |l| {
        let n = l.rx.count("NotifierFailing", "FIRING");
        n[1] >= 1 && n[2] >= 1 && n[3] >= 1
    })
    .await;
    // The webhook answers again: the crash loop's message goes through (its fourth attempt),
    // and the NotifierFailing alert resolves.
    lab.until("the crash loop through the webhook", |l| {
        l.rx.count("DeviceCrashLooping", "FIRING")[0] == 4
    })
    .await;
    let open = lab.open_alerts().await;
    let crash = open
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["name"] == "DeviceCrashLooping")
        .expect("crash loop alert");
    let shown = viewer_get(
        &lab.c,
        &format!("/api/v1/alerts/{}", crash["id"].as_str().unwrap_or("")),
    )
    .await;
    let to_pager = shown["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["notifier"] == "pager")
        .expect("pager message");
    assert_eq!(to_pager["attempts"], 4, "{shown}");
    assert!(!to_pager["delivered_ms"].is_null(), "{shown}");
    lab.until("NotifierFailing resolved", |l| {
        l.rx.count("NotifierFailing", "RESOLVED")[1] >= 1
    })
    .await;
    let n = lab.rx.count("NotifierFailing", "FIRING");
    assert_eq!(n[0], 0, "not sent through the notifier that fails");
    let status = viewer_get(&lab.c, "/api/v1/alerting").await;
    let pager = status["notifiers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == "pager")
        .expect("pager");
    assert_eq!(pager["consecutive_failures"], 0, "{status}");
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_keeps_messages_back_and_an_ack_is_audited() {
    let test = "a_silence_keeps_messages_back_and_an_ack_is_audited";
    let Some(mut lab) = Lab::new(test, Store::Sqlite).await else {
        return;
    };
    let silence: Value = client()
        .post(lab.c.url("/api/v1/silences"))
        .bearer_auth(&lab.c.operator)
        .json(&json!({"alert": "DeviceDiskLow", "device": Lab::id(1), "duration": "1h", "reason": "card replaced tomorrow"}))
        .send()
        .await
        .expect("silence")
        .json()
        .await
        .expect("json");
    assert_eq!(silence["alert"], "DeviceDiskLow", "{silence}");
    lab.device(1)
        .push_event(raised("disk_low", None, "120MB free"));
    let deadline = Instant::now() + LIMIT;
    loop {
        let open = lab.open_alerts().await;
        if open[0]["phase"] == "firing" {
            break;
        }
        assert!(Instant::now() < deadline, "never fired: {open}");
        lab.round().await;
    }
    lab.during(Duration::from_secs(2)).await;
    assert_eq!(
        lab.rx.count("DeviceDiskLow", "FIRING"),
        [0, 0, 0, 0],
        "silenced"
    );
    // Another device is not silenced: said, naming it alone.
    lab.device(2)
        .push_event(raised("disk_low", None, "90MB free"));
    lab.delivered_once("DeviceDiskLow", "FIRING").await;
    let m = lab.hook_message("DeviceDiskLow", "FIRING");
    assert_eq!(m["devices"], json!([Lab::id(2)]), "{m}");
    // Acknowledged by an operator: audited, shown.
    let id = m["alert_id"].as_str().expect("id").to_owned();
    let r = client()
        .post(lab.c.url(&format!("/api/v1/alerts/{id}/ack")))
        .bearer_auth(&lab.c.operator)
        .json(&json!({"reason": "ordering cards"}))
        .send()
        .await
        .expect("ack");
    assert!(r.status().is_success(), "{:?}", r.text().await);
    let again = client()
        .post(lab.c.url(&format!("/api/v1/alerts/{id}/ack")))
        .bearer_auth(&lab.c.operator)
        .json(&json!({}))
        .send()
        .await
        .expect("ack");
    assert_eq!(again.status(), 400, "acknowledged already");
    let shown = viewer_get(&lab.c, &format!("/api/v1/alerts/{id}")).await;
    assert_eq!(shown["ack"]["by"], "operator", "{shown}");
    assert_eq!(shown["ack"]["reason"], "ordering cards");
    let audit = viewer_get(&lab.c, "/api/v1/audit?limit=20").await;
    let actions: Vec<&str> = audit
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"alert.ack") && actions.contains(&"alert.silence"),
        "{actions:?}"
    );
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_firing_alerts_and_links_a_device_to_grafana() {
    let test = "the_dashboard_shows_firing_alerts_and_links_a_device_to_grafana";
    let Some(mut lab) = Lab::with(test, Store::Sqlite, |_, cfg| {
        cfg.grafana_url = Some("https://grafana.example".into());
    })
    .await
    else {
        return;
    };
    lab.device(1)
        .push_event(raised("crash_loop", Some("app/web"), "5 restarts in 5m"));
    lab.delivered_once("DeviceCrashLooping", "FIRING").await;
    let cookie =
        support::dashboard::session_cookie(&lab.c.base, "operator", "a long test password").await;
    let page = |path: String| {
        let cookie = cookie.clone();
        async move {
            client()
                .get(path)
                .header("cookie", cookie)
                .send()
                .await
                .expect("page")
                .text()
                .await
                .expect("html")
        }
    };
    let overview = page(lab.c.url("/")).await;
    assert!(
        overview.contains("DeviceCrashLooping") && overview.contains("1 device crash-looping"),
        "the overview shows the firing alert"
    );
    let alerts = page(lab.c.url("/alerts")).await;
    assert!(
        alerts.contains("/ui/alerts/DeviceCrashLooping-"),
        "an ack form for operators"
    );
    let device = page(lab.c.url(&format!("/devices/{}", Lab::id(1)))).await;
    assert!(
        device.contains("id=\"device-alerts\""),
        "the device page names its alert"
    );
    assert!(
        device.contains(&format!(
            "https://grafana.example/d/fleet-device/fleet-device?var-device={}",
            Lab::id(1)
        )),
        "the device links to its Grafana view"
    );
    lab.stop().await;
}
