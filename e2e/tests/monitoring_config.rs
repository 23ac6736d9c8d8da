//! The shipped monitoring files (`deploy/prometheus`, `deploy/alertmanager`, `deploy/grafana`,
//! `deploy/monitoring`) checked by the real tools that read them: `promtool check` and
//! `promtool test rules`, `amtool check-config` and its routing tests, a real Alertmanager
//! grouping and inhibiting real alerts, and `docker compose config`. Fast: no agent, no
//! controller (e2e/tests/monitoring.rs runs them against a real Prometheus).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fleet_config::alerts::{AlertName, Severity};
use serde_json::{json, Value};
use support::alertmanager::{alertmanager_available, Alertmanager, WebhookReceiver};
use support::monitoring::{
    alertmanager_test_config, compose_command, dashboards, deploy, expected_receiver, metric_names,
    panel_queries, panels, read, repo_root, rules, run, used_metrics, variable_queries, yaml,
    DEADMANS_PATH,
};
use support::prometheus::prometheus_available;
use yaml_rust2::{Yaml, YamlLoader};

fn path(rel: &str) -> String {
    deploy(rel).to_string_lossy().into_owned()
}

#[test]
fn promtool_checks_the_rules_and_the_scrape_configuration_and_runs_the_rule_unit_tests() {
    let test =
        "promtool_checks_the_rules_and_the_scrape_configuration_and_runs_the_rule_unit_tests";
    if !prometheus_available(test) {
        return;
    }
    // Lint included (duplicate rules fail).
    let out = run(
        "promtool",
        &["check", "rules", &path("prometheus/fleet-rules.yml")],
    );
    assert!(out.contains("SUCCESS: 19 rules found"), "{out}");
    let out = run(
        "promtool",
        &["check", "config", &path("prometheus/prometheus.yml")],
    );
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run(
        "promtool",
        &["test", "rules", &path("prometheus/fleet-rules.test.yml")],
    );
    assert!(out.contains("SUCCESS") && !out.contains("FAILED"), "{out}");
}

#[test]
fn every_alert_name_has_rules_with_its_severity_annotations_and_runbook() {
    let rules = rules();
    let names: BTreeSet<&str> = rules.iter().map(|r| r.alert.as_str()).collect();
    let all: BTreeSet<&str> = AlertName::ALL.iter().map(|a| a.as_str()).collect();
    assert_eq!(
        names, all,
        "fleet-rules.yml must have exactly the alerts of fleet-config's AlertName"
    );
    for r in &rules {
        let a: AlertName = r.alert.parse().expect("an AlertName");
        assert_eq!(
            r.label("severity"),
            Some(a.severity().as_str()),
            "{}: severity",
            r.alert
        );
        for key in ["summary", "description"] {
            let text = r.annotation(key).unwrap_or_default();
            assert!(text.len() > 20, "{}: annotation {key} is missing", r.alert);
        }
        let runbook = r.annotation("runbook_url").unwrap_or_default();
        assert_eq!(
            runbook,
            format!(
                "{{{{ or $externalLabels.runbook_base \"https://git.example.com/fleet/blob/main\" }}}}/{}",
                a.runbook_path()
            ),
            "{}: runbook_url is <runbook_base>/runbooks/<AlertName>.md",
            r.alert
        );
        // Every rule says how long it waits, even when it does not (0s).
        assert!(
            r.for_.is_some() || a == AlertName::Watchdog,
            "{}: no `for:`",
            r.alert
        );
        // A device alert carries the device it is about.
        if a.about_devices() {
            assert!(
                r.annotation("summary")
                    .unwrap_or_default()
                    .contains("$labels.device"),
                "{}: the summary names the device",
                r.alert
            );
        }
    }
    // Rules sharing a name differ by `cause`, so Alertmanager never merges two of them.
    let mut seen = BTreeSet::new();
    for r in &rules {
        assert!(
            seen.insert((r.alert.clone(), r.label("cause").map(str::to_owned))),
            "{} has two rules with the same labels",
            r.alert
        );
    }
}

/// (alertname, cause) of each alert a `promtool test rules` case expects to fire, and the
/// alert names some case expects quiet.
fn unit_test_coverage() -> (BTreeSet<(String, Option<String>)>, BTreeSet<String>) {
    let doc = yaml("prometheus/fleet-rules.test.yml");
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for t in doc["tests"].as_vec().expect("tests") {
        for case in t["alert_rule_test"].as_vec().cloned().unwrap_or_default() {
            let name = case["alertname"].as_str().expect("alertname").to_owned();
            let exp = case["exp_alerts"].as_vec().cloned().unwrap_or_default();
            if exp.is_empty() {
                quiet.insert(name.clone());
            }
            for e in exp {
                let cause = e["exp_labels"]["cause"].as_str().map(str::to_owned);
                firing.insert((name.clone(), cause));
            }
        }
    }
    (firing, quiet)
}

#[test]
fn every_rule_has_a_unit_test_that_sees_it_fire_and_one_that_sees_it_quiet() {
    let (firing, quiet) = unit_test_coverage();
    for r in rules() {
        let key = (r.alert.clone(), r.label("cause").map(str::to_owned));
        assert!(
            firing.contains(&key),
            "no promtool test sees {key:?} fire (fleet-rules.test.yml)"
        );
        if r.alert != "Watchdog" {
            assert!(
                quiet.contains(&r.alert),
                "no promtool test sees {} quiet",
                r.alert
            );
        }
    }
}

#[test]
fn the_metric_names_found_in_queries_are_metric_names() {
    let names = metric_names(
        "max(fleet_unhealthy_ratio) > rollout.fleet_unhealthy_stop and `fleet_agent_x_total`{a=\"b\"}",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["fleet_agent_x_total", "fleet_unhealthy_ratio"]
    );
}

/// Every `.rs` file under `dir`, concatenated.
fn sources(dir: &std::path::Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    out
}

fn contains_word(haystack: &str, word: &str) -> bool {
    haystack.match_indices(word).any(|(i, _)| {
        let after = haystack.as_bytes().get(i + word.len());
        !after.is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
    })
}

/// The agent keeps its hand-rendered metrics, so every agent metric the rules and dashboards
/// name must be in its source as written (a typo returns no data, never an error). The
/// controller's names are checked against its live /metrics in e2e/tests/monitoring.rs.
#[test]
fn every_agent_metric_the_rules_and_dashboards_use_is_one_the_agent_exports() {
    let agent = sources(&repo_root().join("agent/src"));
    let mut missing = Vec::new();
    for (metric, used_in) in used_metrics() {
        if (metric.starts_with("fleet_agent_") || metric.starts_with("fleet_host_"))
            && !contains_word(&agent, &metric)
        {
            missing.push(format!("{metric} ({used_in})"));
        }
    }
    assert!(
        missing.is_empty(),
        "not exported by the agent:\n{}",
        missing.join("\n")
    );
}

#[test]
fn amtool_checks_the_alertmanager_configuration_and_routes_every_alert_by_severity() {
    let test = "amtool_checks_the_alertmanager_configuration_and_routes_every_alert_by_severity";
    if !alertmanager_available(test) {
        return;
    }
    let config = path("alertmanager/alertmanager.yml");
    let out = run("amtool", &["check-config", &config]);
    assert!(
        out.contains("SUCCESS") && out.contains("3 inhibit rules"),
        "{out}"
    );
    for a in AlertName::ALL {
        let receiver = expected_receiver(*a);
        let out = run(
            "amtool",
            &[
                "config",
                "routes",
                "test",
                &format!("--config.file={config}"),
                &format!("--verify.receivers={receiver}"),
                &format!("alertname={a}"),
                &format!("severity={}", a.severity()),
            ],
        );
        assert_eq!(out.trim(), receiver, "{a}");
    }
    // The Slack and e-mail equivalents in comments are valid configuration once uncommented.
    let uncommented: String = read("alertmanager/alertmanager.yml")
        .lines()
        .map(|l| {
            for prefix in ["    # slack_configs", "    # email_configs", "    #   "] {
                if l.starts_with(prefix) {
                    return l.replacen("    # ", "    ", 1) + "\n";
                }
            }
            l.to_owned() + "\n"
        })
        .collect();
    assert!(uncommented.contains("\n    slack_configs:\n"));
    assert!(uncommented.contains("\n    email_configs:\n"));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("alertmanager.yml");
    std::fs::write(&file, uncommented).expect("write");
    let out = run("amtool", &["check-config", &file.to_string_lossy()]);
    assert!(out.contains("SUCCESS"), "{out}");
}

fn alert(name: &str, severity: Severity, device: Option<&str>) -> Value {
    let mut labels = json!({
        "alertname": name,
        "severity": severity.as_str(),
        "job": if device.is_some() { "fleet-agent" } else { "fleet-controller" },
    });
    if let Some(d) = device {
        labels["device"] = json!(d);
        labels["instance"] = json!(format!("{d}.vpn:9101"));
    }
    json!({ "labels": labels, "annotations": { "summary": format!("{name} {}", device.unwrap_or("fleet")) } })
}

async fn post_alerts(am: &Alertmanager, alerts: &[Value]) {
    let r = support::client()
        .post(format!("{}/api/v2/alerts", am.url()))
        .json(&alerts)
        .send()
        .await
        .expect("post alerts");
    assert!(r.status().is_success(), "{:?}", r.text().await);
}

/// Alertmanager's view of its alerts: (alertname, device) -> inhibited by anything.
async fn inhibited(am: &Alertmanager) -> BTreeMap<(String, String), bool> {
    let alerts: Vec<Value> = support::client()
        .get(format!("{}/api/v2/alerts", am.url()))
        .send()
        .await
        .expect("get alerts")
        .json()
        .await
        .expect("json");
    alerts
        .iter()
        .map(|a| {
            (
                (
                    a["labels"]["alertname"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    a["labels"]["device"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                ),
                a["status"]["inhibitedBy"]
                    .as_array()
                    .is_some_and(|v| !v.is_empty()),
            )
        })
        .collect()
}

fn devices_of(r: &support::alertmanager::Received) -> BTreeSet<String> {
    r.alerts()
        .iter()
        .map(|a| {
            a["labels"]["device"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// The shipped routes, grouping and inhibitions in a real Alertmanager, fed through its API:
/// two devices overheating are one notification to the warning receiver; a device offline
/// silences its own other alerts and nobody else's; safe mode silences the crash loop that
/// caused it; a fleet-wide failure silences every device warning; the Watchdog reaches the
/// dead man's switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_alertmanager_configuration_groups_routes_and_inhibits_real_alerts() {
    let test = "the_shipped_alertmanager_configuration_groups_routes_and_inhibits_real_alerts";
    if !alertmanager_available(test) {
        return;
    }
    let receiver = WebhookReceiver::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let am = Alertmanager::start(dir.path(), &alertmanager_test_config(&receiver.base()));
    let context = || format!("--- alertmanager log\n{}", am.log_text());
    let wait = Duration::from_secs(30);

    post_alerts(
        &am,
        &[
            alert("DeviceOverheating", Severity::Warning, Some("pi-1")),
            alert("DeviceOverheating", Severity::Warning, Some("pi-2")),
            alert("DeviceOffline", Severity::Warning, Some("pi-3")),
            alert("DeviceDiskLow", Severity::Warning, Some("pi-3")),
            alert("DeviceDiskLow", Severity::Warning, Some("pi-4")),
            alert("DeviceInSafeMode", Severity::Critical, Some("pi-5")),
            alert("DeviceCrashLooping", Severity::Critical, Some("pi-5")),
            alert("DeviceCrashLooping", Severity::Critical, Some("pi-6")),
            alert("Watchdog", Severity::Info, None),
        ],
    )
    .await;

    // Grouped by alert name: both devices in one message, to the warning receiver.
    let heat = receiver.wait_for(
        "DeviceOverheating for pi-1 and pi-2 in one notification",
        wait,
        |r| r.body["groupLabels"]["alertname"] == "DeviceOverheating" && r.alerts().len() == 2,
        context,
    );
    assert_eq!(heat.path, "/fleet/warning");
    assert_eq!(heat.body["receiver"], "fleet-warning");
    assert_eq!(heat.body["version"], "4");
    assert_eq!(heat.body["status"], "firing");
    assert_eq!(
        devices_of(&heat),
        BTreeSet::from(["pi-1".into(), "pi-2".into()])
    );
    assert!(
        heat.content_type.starts_with("application/json"),
        "{}",
        heat.content_type
    );
    assert!(
        heat.user_agent.starts_with("Alertmanager/"),
        "{}",
        heat.user_agent
    );

    // pi-3 is offline: its disk alert is inhibited, pi-4's is not.
    let disk = receiver.wait_for(
        "DeviceDiskLow",
        wait,
        |r| r.body["groupLabels"]["alertname"] == "DeviceDiskLow",
        context,
    );
    assert_eq!(devices_of(&disk), BTreeSet::from(["pi-4".into()]));
    // pi-5 entered safe mode because of its crash loop: one page, as safe mode.
    let looping = receiver.wait_for(
        "DeviceCrashLooping",
        wait,
        |r| r.body["groupLabels"]["alertname"] == "DeviceCrashLooping",
        context,
    );
    assert_eq!(looping.path, "/fleet/critical");
    assert_eq!(devices_of(&looping), BTreeSet::from(["pi-6".into()]));
    let safe = receiver.wait_for(
        "DeviceInSafeMode",
        wait,
        |r| r.body["groupLabels"]["alertname"] == "DeviceInSafeMode",
        context,
    );
    assert_eq!(safe.path, "/fleet/critical");
    let watchdog = receiver.wait_for(
        "Watchdog",
        wait,
        |r| r.body["groupLabels"]["alertname"] == "Watchdog",
        context,
    );
    assert_eq!(watchdog.path, DEADMANS_PATH);
    assert_eq!(watchdog.body["receiver"], "deadmansswitch");
    // Nothing else was sent: not the inhibited alerts, not the Watchdog elsewhere.
    for r in receiver.received() {
        for a in r.alerts() {
            let key = (
                a["labels"]["alertname"].as_str().unwrap_or_default(),
                a["labels"]["device"].as_str().unwrap_or_default(),
            );
            assert!(
                key != ("DeviceDiskLow", "pi-3") && key != ("DeviceCrashLooping", "pi-5"),
                "{key:?} was inhibited but delivered to {}",
                r.path
            );
            if key.0 == "Watchdog" {
                assert_eq!(r.path, DEADMANS_PATH);
            }
        }
    }
    let state = inhibited(&am).await;
    assert_eq!(
        state.get(&("DeviceOverheating".into(), "pi-1".into())),
        Some(&false)
    );
    assert_eq!(
        state.get(&("DeviceDiskLow".into(), "pi-3".into())),
        Some(&true)
    );
    assert_eq!(
        state.get(&("DeviceDiskLow".into(), "pi-4".into())),
        Some(&false)
    );
    assert_eq!(
        state.get(&("DeviceCrashLooping".into(), "pi-5".into())),
        Some(&true)
    );

    // A fleet-wide failure: every device warning is inhibited; the critical ones are not.
    post_alerts(&am, &[alert("FleetWideFailure", Severity::Critical, None)]).await;
    let fleet = receiver.wait_for(
        "FleetWideFailure",
        wait,
        |r| r.body["groupLabels"]["alertname"] == "FleetWideFailure",
        context,
    );
    assert_eq!(fleet.path, "/fleet/critical");
    let state = inhibited(&am).await;
    for (key, inhibited) in &state {
        let expect = match key.0.as_str() {
            "DeviceOverheating" | "DeviceDiskLow" | "DeviceOffline" => true,
            "DeviceCrashLooping" => key.1 == "pi-5",
            _ => false,
        };
        assert_eq!(*inhibited, expect, "{key:?} inhibited: {state:?}");
    }
}

#[test]
fn the_dashboards_have_stable_uids_a_device_variable_and_provisioned_datasources() {
    let ds = yaml("grafana/provisioning/datasources/fleet.yml");
    let uids: BTreeSet<String> = ds["datasources"]
        .as_vec()
        .expect("datasources")
        .iter()
        .map(|d| d["uid"].as_str().expect("uid").to_owned())
        .collect();
    assert_eq!(
        uids,
        BTreeSet::from(["fleet-prometheus".to_owned(), "fleet-loki".to_owned()])
    );
    let dashboards = dashboards();
    let by_uid: BTreeMap<String, Value> = dashboards
        .iter()
        .map(|(_, d)| (d["uid"].as_str().expect("uid").to_owned(), d.clone()))
        .collect();
    assert_eq!(
        by_uid.keys().cloned().collect::<Vec<_>>(),
        ["fleet-device", "fleet-overview", "fleet-rollouts"]
    );
    for (file, d) in &dashboards {
        assert_eq!(
            format!("{}.json", d["uid"].as_str().unwrap_or_default()),
            *file
        );
        let mut ids = BTreeSet::new();
        for p in panels(d) {
            let title = p["title"].as_str().unwrap_or_default();
            assert!(
                ids.insert(p["id"].as_u64().expect("panel id")),
                "{file}: duplicate id"
            );
            let g = &p["gridPos"];
            assert!(
                g["x"].as_u64().unwrap_or(99) + g["w"].as_u64().unwrap_or(99) <= 24,
                "{file} / {title}: wider than the grid"
            );
            if p["type"] == "row" {
                continue;
            }
            assert!(
                p["description"].as_str().is_some_and(|s| !s.is_empty()),
                "{file} / {title}: no description"
            );
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            assert!(!targets.is_empty(), "{file} / {title}: no query");
            for t in targets {
                let uid = t["datasource"]["uid"].as_str().unwrap_or_default();
                assert!(uids.contains(uid), "{file} / {title}: datasource {uid}");
                assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()));
            }
        }
    }
    // The device dashboard opens on one device by URL: /d/fleet-device/fleet-device?var-device=ID.
    let device = &by_uid["fleet-device"];
    let vars = device["templating"]["list"].as_array().expect("variables");
    assert!(vars
        .iter()
        .any(|v| v["name"] == "device" && v["type"] == "query"));
    let prom_queries = panel_queries()
        .into_iter()
        .filter(|q| q.dashboard == "fleet-device.json" && q.datasource == "fleet-prometheus");
    for q in prom_queries {
        assert!(
            q.expr.contains("device=\"$device\""),
            "{} / {}: not about $device",
            q.dashboard,
            q.panel
        );
    }
    // The overview and the rollouts link devices to it.
    for uid in ["fleet-overview", "fleet-rollouts"] {
        let text = by_uid[uid].to_string();
        assert!(
            text.contains("/d/fleet-device/fleet-device?var-device=${__value.raw}"),
            "{uid} links no device to its dashboard"
        );
    }
    assert!(variable_queries()
        .iter()
        .any(|(f, n, q)| f == "fleet-device.json" && n == "device" && q.contains("label_values(")));
    // The provisioning reads the directory compose mounts the dashboards on.
    let prov = yaml("grafana/provisioning/dashboards/fleet.yml");
    let path = prov["providers"][0]["options"]["path"]
        .as_str()
        .expect("path");
    assert!(
        read("monitoring/compose.yaml").contains(&format!("../grafana/dashboards:{path}:ro")),
        "compose mounts the dashboards on {path}"
    );
}

fn yaml_str(y: &Yaml) -> String {
    match y {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        _ => String::new(),
    }
}

/// `docker compose config` accepts the file; every port it publishes is on 127.0.0.1, and a
/// service on the host's network is told to listen on 127.0.0.1; every file it mounts is in
/// the repository (read-only); every image is pinned; data goes to named volumes.
#[test]
fn the_monitoring_compose_file_is_valid_binds_only_loopback_and_mounts_shipped_files() {
    let test = "the_monitoring_compose_file_is_valid_binds_only_loopback_and_mounts_shipped_files";
    let Some(compose) = compose_command(test) else {
        return;
    };
    let file = path("monitoring/compose.yaml");
    let mut args: Vec<&str> = compose.iter().skip(1).map(String::as_str).collect();
    args.extend(["-f", &file, "config"]);
    let out = run(&compose[0], &args);
    let doc = YamlLoader::load_from_str(&out)
        .expect("compose config prints YAML")
        .remove(0);
    let services = doc["services"].as_hash().expect("services");
    let names: BTreeSet<String> = services.keys().map(yaml_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["alertmanager", "grafana", "loki", "prometheus"].map(String::from))
    );
    let named_volumes: BTreeSet<String> = doc["volumes"]
        .as_hash()
        .map(|h| h.keys().map(yaml_str).collect())
        .unwrap_or_default();
    let deploy_dir = deploy("").canonicalize().expect("deploy/");
    for (name, s) in services {
        let name = yaml_str(name);
        let image = s["image"].as_str().expect("image");
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            tag.chars().any(|c| c.is_ascii_digit()) && tag != "latest",
            "{name}: image {image} is not pinned to a version"
        );
        let host_network = s["network_mode"].as_str() == Some("host");
        let ports = s["ports"].as_vec().cloned().unwrap_or_default();
        if host_network {
            assert!(ports.is_empty(), "{name}: host network and ports");
            // Its own listen address must be loopback.
            let command: Vec<String> = s["command"]
                .as_vec()
                .map(|v| v.iter().map(yaml_str).collect())
                .unwrap_or_default();
            let env = &s["environment"];
            let listens_on_loopback = command
                .iter()
                .any(|c| c.starts_with("--web.listen-address=127.0.0.1:"))
                || yaml_str(&env["GF_SERVER_HTTP_ADDR"]) == "127.0.0.1";
            assert!(
                listens_on_loopback,
                "{name}: on the host's network but not told to listen on 127.0.0.1"
            );
        }
        for p in &ports {
            // docker-compose 1.29 prints `127.0.0.1:9093:9093/tcp`; compose v2 a mapping.
            let host_ip = match p {
                Yaml::String(s) => s.split(':').next().unwrap_or_default().to_owned(),
                _ => yaml_str(&p["host_ip"]),
            };
            assert_eq!(
                host_ip, "127.0.0.1",
                "{name}: port {p:?} is not bound to 127.0.0.1"
            );
        }
        for v in s["volumes"].as_vec().cloned().unwrap_or_default() {
            let (source, read_only) = match &v {
                Yaml::String(s) => {
                    let parts: Vec<&str> = s.split(':').collect();
                    (parts[0].to_owned(), parts.get(2) == Some(&"ro"))
                }
                _ => (
                    yaml_str(&v["source"]),
                    v["read_only"].as_bool() == Some(true),
                ),
            };
            if source.starts_with('/') {
                let p = std::path::Path::new(&source);
                assert!(
                    p.exists(),
                    "{name}: mounts {source}, which is not in the repository"
                );
                let real = p.canonicalize().expect("canonicalize");
                assert!(
                    real.starts_with(&deploy_dir),
                    "{name}: mounts {source} from outside deploy/"
                );
                assert!(read_only, "{name}: {source} is not mounted read-only");
            } else {
                assert!(
                    named_volumes.contains(&source),
                    "{name}: volume {source} is not declared"
                );
            }
        }
    }
}
