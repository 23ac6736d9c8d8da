//! The shipped monitoring on the real path: a real `fleet-agent` (controller mode, on the real
//! Docker engine, its `watch.sysfs_root` a fake thermal zone) enrolled with the real
//! `fleet-controller` (its `/metrics` behind a bearer token), scraped by a real Prometheus
//! (Debian's) that loads the shipped `prometheus.yml` and `fleet-rules.yml`, evaluates them and
//! sends to a real Alertmanager (Debian's) running the shipped `alertmanager.yml`, which
//! delivers to a local webhook receiver.
//!
//! What a fast test changes in the shipped files, and nothing else: every rule's `for:` is 3 s;
//! the scrape, evaluation and file-discovery intervals are 1 s; Prometheus resends firing
//! alerts after 2 s (`--rules.alert.resend-delay`, default 1 m); Alertmanager's group waits and
//! intervals are 1 s; the addresses are the test's (controller, Alertmanager, Prometheus itself, the
//! receiver); the commented bearer-token block is uncommented with the test's token file; and
//! `runbook_base` is another base, to show that one line moves every runbook link.
//!
//! The fault: the device's CPU at 90 °C (its limit is 80 °C). Expect `DeviceOverheating` at the
//! warning receiver with the device's labels and every annotation, nothing else but the
//! Watchdog at the dead man's switch, and the alert resolved once the zone is back at 40 °C.
//! Meanwhile every Grafana panel's query runs against the same Prometheus without an error.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleet_controller::config::GitSource;
use serde_json::Value;
use support::alertmanager::{alertmanager_available, Alertmanager, Received, WebhookReceiver};
use support::fleet::{Device, Repo};
use support::git_daemon::{free_port, git_available};
use support::images::{build_test_images, docker_available};
use support::lab::{idle_on, tail};
use support::monitoring::{
    alertmanager_test_config, panel_queries, read, replace, rules, rules_with_for,
    substitute_variables, used_metrics, variable_queries, DEADMANS_PATH,
};
use support::process::{free_addr, ControllerProcess};
use support::prometheus::{prometheus_available, Prometheus};

/// Generous: the machine is shared. Detection times are printed, not asserted.
const SETTLE: Duration = Duration::from_secs(120);
const DEVICE: &str = "dev-1";
const RUNBOOK_BASE: &str = "https://git.test.invalid/acme/fleet/blob/main";

const FLEET: &str = "name: monitoring\nrelease_branch: main\nrollout:\n  waves:\n    - { name: canary, select: { ring: canary } }\n    - { name: all, percent: 100 }\n  bake: 1s\n  health_timeout: 90s\n";
const INVENTORY: &str =
    "devices:\n  - id: dev-1\n    labels: { ring: canary }\nstacks:\n  - { name: app, select: {} }\n";

/// Metrics that exist only in some situations, and why none of them is one here.
const SITUATIONAL: &[(&str, &str)] = &[
    (
        "fleet_agent_git_fetch_failures_total",
        "a series per endpoint once it has failed a fetch; every fetch succeeds here",
    ),
    (
    "fleet_agent_service_restarts_in_window",
        "rendered after the agent's first supervision pass of the release (every 30 s in controller mode)",
    ),
    (
        "fleet_watcher_git_fetch_failures_total",
        "a series per Git endpoint once the controller's watcher failed a fetch",
    ),
    (
        "fleet_alerts_firing",
        "a series per alert while the controller's alert engine has it firing",
    ),
    (
        "fleet_alert_devices",
        "a series per alert while the controller's alert engine has it firing",
    ),
    (
        "fleet_notifier_consecutive_failures",
        "a series per notifier configured in alerting.notifiers (none here)",
    ),
    (
        "fleet_alert_notifications_total",
        "a series per notifier once it was sent a message (none configured here)",
    ),
];

/// Replaces a thermal zone's value at once, as the kernel shows it (millidegrees).
fn set_temperature(sys: &Path, millidegrees: u32) {
    let zone = sys.join("class/thermal/thermal_zone0");
    std::fs::create_dir_all(&zone).expect("mkdir");
    std::fs::write(zone.join("type"), "cpu-thermal\n").expect("type");
    let tmp = zone.join("temp.tmp");
    std::fs::write(&tmp, format!("{millidegrees}\n")).expect("write");
    std::fs::rename(&tmp, zone.join("temp")).expect("rename");
}

/// Prometheus's HTTP API: `GET /api/v1/<path>` with `params`; the JSON answer (an error's
/// answer too). While Prometheus starts it answers plain text, or nothing: then
/// `{"status": "unavailable", "error": ...}`.
async fn api(prom: &Prometheus, path: &str, params: &[(&str, &str)]) -> Value {
    // One client for the hundreds of queries (a new one each time costs its TLS set-up).
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let answer = CLIENT
        .get_or_init(support::client)
        .get(format!("http://{}/api/v1/{path}", prom.addr))
        .query(params)
        .send()
        .await;
    let text = match answer {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => return serde_json::json!({ "status": "unavailable", "error": e.to_string() }),
    };
    serde_json::from_str(&text)
        .unwrap_or_else(|_| serde_json::json!({ "status": "unavailable", "error": text }))
}

async fn instant(prom: &Prometheus, query: &str) -> Value {
    api(prom, "query", &[("query", query)]).await
}

/// Waits until `query` returns a sample; panics with Prometheus's targets and log otherwise.
async fn wait_query(prom: &Prometheus, query: &str) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let v = instant(prom, query).await;
        if v["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
        {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "Prometheus never returned `{query}` ({v}); targets: {:#}\n--- prometheus log\n{}",
                api(prom, "targets", &[]).await["data"]["activeTargets"],
                tail(&prom.log_text(), 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until every rule has been evaluated; panics on any rule's evaluation error.
async fn wait_rules_evaluated(prom: &Prometheus, expected: usize) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let v = api(prom, "rules", &[("type", "alert")]).await;
        let rules: Vec<Value> = v["data"]["groups"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        for r in &rules {
            assert_ne!(
                r["health"], "err",
                "rule {} failed to evaluate on real data: {}",
                r["name"], r["lastError"]
            );
        }
        if rules.len() == expected && rules.iter().all(|r| r["health"] == "ok") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "rules not all evaluated: {v:#}\n{}",
            tail(&prom.log_text(), 30)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The test's Prometheus directory: the shipped prometheus.yml with the test's addresses and
/// intervals, the shipped rules with short `for:`, and the agent as a file_sd target.
fn prometheus_dir(
    dir: &Path,
    prom_port: u16,
    controller: &str,
    alertmanager: &str,
    agent: &str,
    token_file: &Path,
) -> PathBuf {
    std::fs::create_dir_all(dir.join("targets/agents")).expect("mkdir");
    std::fs::write(dir.join("fleet-rules.yml"), rules_with_for("3s")).expect("rules");
    std::fs::write(
        dir.join("targets/agents/lab.yml"),
        format!("- targets: ['{agent}']\n  labels:\n    device: {DEVICE}\n    site: lab\n"),
    )
    .expect("targets");
    let mut config = read("prometheus/prometheus.yml");
    for (from, to) in [
        ("scrape_interval: 15s", "scrape_interval: 1s".to_owned()),
        ("evaluation_interval: 15s", "evaluation_interval: 1s".to_owned()),
        ("scrape_interval: 30s", "scrape_interval: 1s".to_owned()),
        ("refresh_interval: 1m", "refresh_interval: 1s".to_owned()),
        ("127.0.0.1:8080", controller.to_owned()),
        ("127.0.0.1:9093", alertmanager.to_owned()),
        ("127.0.0.1:9090", format!("127.0.0.1:{prom_port}")),
        (
            "runbook_base: https://git.example.com/fleet/blob/main",
            format!("runbook_base: {RUNBOOK_BASE}"),
        ),
        (
            "    # authorization:\n    #   type: Bearer\n    #   credentials_file: /etc/prometheus/secrets/fleet-metrics-token",
            format!(
                "    authorization:\n      type: Bearer\n      credentials_file: {}",
                token_file.display()
            ),
        ),
    ] {
        config = replace(&config, from, &to);
    }
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, config).expect("prometheus.yml");
    file
}

fn alertnames(r: &Received) -> BTreeSet<String> {
    r.alerts()
        .iter()
        .map(|a| {
            a["labels"]["alertname"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

fn is_overheating(r: &Received, status: &str) -> bool {
    r.body["status"] == status
        && r.alerts().iter().any(|a| {
            a["labels"]["alertname"] == "DeviceOverheating" && a["labels"]["device"] == DEVICE
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_alerts_through_a_real_alertmanager_and_every_dashboard_query_runs() {
    let test =
        "a_real_prometheus_alerts_through_a_real_alertmanager_and_every_dashboard_query_runs";
    if !git_available(test)
        || !docker_available(test)
        || !prometheus_available(test)
        || !alertmanager_available(test)
    {
        return;
    }
    let began = Instant::now();
    let step = |what: &str| eprintln!("[{:6.1} s] {what}", began.elapsed().as_secs_f64());
    build_test_images();
    step("test images built");
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::new(root.path(), FLEET, INVENTORY);
    let v1 = repo.release("v1");

    // The controller, its /metrics behind a token (metrics_token_file).
    let token_file = root.path().join("metrics-token");
    std::fs::write(&token_file, "monitoring-test-metrics-token\n").expect("token");
    let mut cfg = fleet_controller::config::ControllerConfig {
        listen: free_addr(),
        data_dir: root.path().join("controller"),
        git: Some(GitSource {
            endpoints: repo.endpoints(),
            branch: "main".into(),
            poll_interval: Duration::from_millis(500),
            failover_timeout: Duration::from_secs(5),
        }),
        metrics_token_file: Some(token_file.clone()),
        ..Default::default()
    };
    cfg.checkin_interval = Duration::from_secs(1);
    cfg.reconcile_interval = Duration::from_millis(200);
    let controller = ControllerProcess::start(&cfg).await;
    let bootstrap = root.path().join("bootstrap-token");
    std::fs::write(&bootstrap, &controller.bootstrap).expect("bootstrap token file");
    step("controller started");

    // The device: a cool CPU, the firmware's throttled flags clear.
    let sys = root.path().join("sys");
    set_temperature(&sys, 50_000);
    let throttled = sys.join("devices/platform/soc/soc:firmware/get_throttled");
    std::fs::create_dir_all(throttled.parent().expect("parent")).expect("mkdir");
    std::fs::write(&throttled, "0\n").expect("throttled");
    let agent_addr = format!("127.0.0.1:{}", free_port());
    let mut device = Device::start_with(
        root.path(),
        DEVICE,
        &repo,
        &controller.base,
        &bootstrap,
        "  request_timeout: 10s\n",
        &format!(
            "metrics_listen: {agent_addr}\nwatch:\n  interval: 1s\n  sysfs_root: {}\n",
            sys.display()
        ),
    );
    let deadline = Instant::now() + SETTLE;
    while !idle_on(&device.status(), &v1) {
        if let Some(status) = device.agent.exited() {
            panic!(
                "the agent exited ({status}):\n{}",
                tail(&device.agent.log_text(), 60)
            );
        }
        assert!(
            Instant::now() < deadline,
            "the device never ran v1: {:#}\n{}\n--- controller\n{}",
            device.status(),
            tail(&device.agent.log_text(), 40),
            tail(&controller.log(), 40)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    step("the device runs v1");
    // Alertmanager with the shipped configuration, delivering to the local receiver.
    let receiver = WebhookReceiver::start();
    let am = Alertmanager::start(
        &root.path().join("alertmanager"),
        &alertmanager_test_config(&receiver.base()),
    );
    // Prometheus with the shipped configuration and rules.
    let prom_port = free_port();
    let prom_dir = root.path().join("prometheus");
    let config = prometheus_dir(
        &prom_dir,
        prom_port,
        &cfg.listen.to_string(),
        &am.addr,
        &agent_addr,
        &token_file,
    );
    // Alerts evaluated before Prometheus has discovered Alertmanager (its first seconds) are
    // dropped and count as sent, so the Watchdog would wait for the resend delay (1 minute).
    let prom = Prometheus::start_config(
        &prom_dir,
        &config,
        prom_port,
        &["--rules.alert.resend-delay=2s"],
    );
    let context = || {
        format!(
            "--- alertmanager log\n{}\n--- prometheus log\n{}",
            tail(&am.log_text(), 20),
            tail(&prom.log_text(), 20)
        )
    };
    wait_query(
        &prom,
        &format!("up{{job=\"fleet-agent\",device=\"{DEVICE}\"}} == 1"),
    )
    .await;
    wait_query(&prom, "up{job=\"fleet-controller\"} == 1").await;
    wait_query(&prom, "fleet_agent_temperature_threshold_celsius == 80").await;
    wait_rules_evaluated(&prom, rules().len()).await;
    step("Prometheus scrapes both and has evaluated every rule");

    // The dead man's switch hears the Watchdog.
    let watchdog = receiver.wait_for(
        "the Watchdog at the dead man's switch",
        SETTLE,
        |r| r.path == DEADMANS_PATH && alertnames(r).contains("Watchdog"),
        context,
    );
    assert_eq!(watchdog.body["receiver"], "deadmansswitch");
    step("the Watchdog reached the dead man's switch");

    // The fault: 90 °C.
    let heat_at = Instant::now();
    set_temperature(&sys, 90_000);
    let fired = receiver.wait_for(
        "DeviceOverheating firing at the warning receiver",
        SETTLE,
        |r| is_overheating(r, "firing"),
        context,
    );
    eprintln!(
        "DeviceOverheating delivered {:.1} s after the thermal zone read 90 °C (for: 3s, 1 s intervals)",
        heat_at.elapsed().as_secs_f64()
    );
    step("DeviceOverheating delivered");
    assert_eq!(fired.path, "/fleet/warning");
    assert_eq!(fired.body["receiver"], "fleet-warning");
    assert_eq!(fired.body["version"], "4");
    assert_eq!(fired.body["groupLabels"]["alertname"], "DeviceOverheating");
    assert!(fired.content_type.starts_with("application/json"));
    assert!(
        fired.user_agent.starts_with("Alertmanager/"),
        "{}",
        fired.user_agent
    );
    let alerts = fired.alerts();
    assert_eq!(alerts.len(), 1, "{:#}", fired.body);
    let a = &alerts[0];
    let labels = &a["labels"];
    assert_eq!(labels["alertname"], "DeviceOverheating");
    assert_eq!(labels["severity"], "warning");
    assert_eq!(labels["device"], DEVICE);
    assert_eq!(labels["site"], "lab");
    assert_eq!(labels["job"], "fleet-agent");
    assert_eq!(labels["instance"], agent_addr.as_str());
    assert_eq!(labels["runbook_base"], RUNBOOK_BASE, "the external label");
    let annotations = &a["annotations"];
    assert_eq!(
        annotations["summary"],
        format!("Device {DEVICE} is overheating: 90.0 °C")
    );
    let description = annotations["description"].as_str().unwrap_or_default();
    assert!(
        description.starts_with(&format!(
            "Device {DEVICE} is at 90.0 °C, above its limit of 80 °C. The agent starts no update"
        )),
        "{description}"
    );
    assert!(description.contains(&format!("`fleetctl devices show {DEVICE}`")));
    assert_eq!(
        annotations["runbook_url"],
        format!("{RUNBOOK_BASE}/runbooks/DeviceOverheating.md")
    );
    assert!(a["generatorURL"]
        .as_str()
        .is_some_and(|u| u.contains(&format!(":{prom_port}/graph"))));

    // While it fires: every dashboard query against this Prometheus.
    check_dashboard_queries(&prom).await;
    step("every dashboard query ran");

    // The fault clears: 40 °C, below the limit minus the hysteresis.
    let cool_at = Instant::now();
    set_temperature(&sys, 40_000);
    let resolved = receiver.wait_for(
        "DeviceOverheating resolved at the warning receiver",
        SETTLE,
        |r| is_overheating(r, "resolved"),
        context,
    );
    eprintln!(
        "DeviceOverheating resolved {:.1} s after the zone read 40 °C",
        cool_at.elapsed().as_secs_f64()
    );
    assert_eq!(resolved.path, "/fleet/warning");
    assert_eq!(resolved.alerts()[0]["status"], "resolved");
    assert_ne!(resolved.alerts()[0]["endsAt"], "0001-01-01T00:00:00Z");

    // A healthy fleet raised nothing else: no false alarm from any other rule.
    let delivered: BTreeSet<String> = receiver.received().iter().flat_map(alertnames).collect();
    assert_eq!(
        delivered,
        BTreeSet::from(["DeviceOverheating".to_owned(), "Watchdog".to_owned()]),
        "{}",
        context()
    );
    let firing = api(&prom, "alerts", &[]).await;
    let names: BTreeSet<String> = firing["data"]["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|a| {
            a["labels"]["alertname"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(names, BTreeSet::from(["Watchdog".to_owned()]), "{firing:#}");
    step("done");
    drop(device);
}

/// Runs every Prometheus query of every shipped dashboard (instant and over the last two
/// minutes, the variables substituted) and every variable's query: none may fail. Writes
/// which return no data to `target/test-artifacts/monitoring/panel-queries.txt`, and checks
/// that every metric they and the rules name exists in this Prometheus, but for those the
/// controller does not export yet and the situational ones.
async fn check_dashboard_queries(prom: &Prometheus) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let (start, end) = ((now - 120).to_string(), now.to_string());
    let mut errors = Vec::new();
    let mut report = Vec::new();
    for q in panel_queries() {
        let head = format!("{} / {} / {}", q.dashboard, q.panel, q.ref_id);
        if q.datasource != "fleet-prometheus" {
            report.push(format!(
                "SKIP   {head}: {} query `{}` (Loki is not run here)",
                q.datasource, q.expr
            ));
            continue;
        }
        let expr = substitute_variables(&q.expr, DEVICE);
        let v = instant(prom, &expr).await;
        let r = api(
            prom,
            "query_range",
            &[
                ("query", &expr),
                ("start", &start),
                ("end", &end),
                ("step", "5"),
            ],
        )
        .await;
        for (kind, v) in [("instant", &v), ("range", &r)] {
            if v["status"] != "success" {
                errors.push(format!(
                    "{head} ({kind}): `{expr}`: {} {}",
                    v["errorType"], v["error"]
                ));
            }
        }
        let empty = v["data"]["result"].as_array().is_none_or(Vec::is_empty)
            && r["data"]["result"].as_array().is_none_or(Vec::is_empty);
        report.push(format!(
            "{} {head}: {expr}",
            if empty { "EMPTY " } else { "data  " }
        ));
    }
    for (file, name, q) in variable_queries() {
        // label_values(METRIC, LABEL): Grafana asks for LABEL's values among METRIC's series.
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{file}: variable {name}: `{q}` is not label_values(...)"));
        let (metric, label) = inner.rsplit_once(',').expect("label_values(metric, label)");
        let v = api(
            prom,
            &format!("label/{}/values", label.trim()),
            &[("match[]", metric.trim())],
        )
        .await;
        assert_eq!(v["status"], "success", "{file}: variable {name}: {v}");
        assert!(
            v["data"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| x == DEVICE)),
            "{file}: variable {name} does not list {DEVICE}: {v}"
        );
    }
    let dir = support::monitoring::artifacts_dir("monitoring");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    std::fs::write(dir.join("panel-queries.txt"), report.join("\n") + "\n").expect("report");
    eprintln!("panel queries ({}):\n{}", dir.display(), report.join("\n"));
    assert!(
        errors.is_empty(),
        "dashboard queries failed:\n{}",
        errors.join("\n")
    );

    // Every metric named is one Prometheus has (a misspelt name gives no data, not an error).
    let names = api(prom, "label/__name__/values", &[]).await;
    let present: BTreeSet<String> = names["data"]
        .as_array()
        .expect("names")
        .iter()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect();
    let mut missing = Vec::new();
    for (metric, used_in) in used_metrics() {
        if present.contains(&metric) {
            continue;
        }
        if let Some((_, why)) = SITUATIONAL.iter().find(|(m, _)| *m == metric) {
            eprintln!("situational: {metric} ({used_in}): {why}");
        } else {
            missing.push(format!("{metric} ({used_in})"));
        }
    }
    assert!(
        missing.is_empty(),
        "metrics the rules and dashboards use that nothing exports:\n{}",
        missing.join("\n")
    );
}
