//! Alerts from real agents: two real `fleet-agent`s (controller mode, on the Docker engine,
//! each with a fake thermal zone) and the real `fleet-controller` with a webhook notifier, at
//! the default intervals (check-in every 60 s, alert engine every 5 s, group_wait 10 s). A
//! problem the agent raises goes to the controller at once, not at its next check-in a minute
//! away: one agent does not long-poll (its next check-in would be up to 66 s away), the other
//! does (its held check-in is cut short). The alert then reaches the webhook once, naming both
//! devices, and resolves once both cool down.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use fleet_controller::config::GitSource;
use fleet_testkit::receivers::HttpReceiver;
use serde_json::Value;
use support::fleet::{Device, Repo};
use support::git_daemon::git_available;
use support::images::{build_test_images, docker_available};
use support::lab::{idle_on, tail};
use support::process::{config_yaml, free_addr, ControllerProcess};

const SETTLE: Duration = Duration::from_secs(120);
const FLEET: &str = "name: alerts\nrelease_branch: main\nrollout:\n  waves:\n    - { name: canary, select: { ring: canary } }\n    - { name: all, percent: 100 }\n  bake: 1s\n  health_timeout: 90s\n";
const INVENTORY: &str = "devices:\n  - id: dev-1\n    labels: { ring: canary }\n  - id: dev-2\n    labels: { ring: main }\nstacks:\n  - { name: app, select: {} }\n";

fn set_temperature(sys: &Path, millidegrees: u32) {
    let zone = sys.join("class/thermal/thermal_zone0");
    std::fs::create_dir_all(&zone).expect("mkdir");
    std::fs::write(zone.join("type"), "cpu-thermal\n").expect("type");
    let tmp = zone.join("temp.tmp");
    std::fs::write(&tmp, format!("{millidegrees}\n")).expect("write");
    std::fs::rename(&tmp, zone.join("temp")).expect("rename");
}

/// Whether the controller has stored `device`'s `problem_raised` of `problem`.
async fn controller_has(c: &ControllerProcess, device: &str, event: &str, problem: &str) -> bool {
    let d: Value = match support::client()
        .get(c.url(&format!("/api/v1/devices/{device}")))
        .bearer_auth(&c.viewer)
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => return false,
    };
    d["events"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["event"] == event && e["problem"] == problem)
}

fn hook_messages(hook: &HttpReceiver, alert: &str, kind: &str) -> Vec<Value> {
    hook.requests()
        .iter()
        .map(fleet_testkit::receivers::Recorded::json)
        .filter(|m| m["alert"] == alert && m["kind"] == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_agents_problem_reaches_the_controller_at_once_and_alerts_once() {
    let test = "a_real_agents_problem_reaches_the_controller_at_once_and_alerts_once";
    if !git_available(test) || !docker_available(test) {
        return;
    }
    build_test_images();
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::new(root.path(), FLEET, INVENTORY);
    let v1 = repo.release("v1");
    let hook = HttpReceiver::start();
    let mut cfg = fleet_controller::config::ControllerConfig {
        listen: free_addr(),
        data_dir: root.path().join("controller"),
        git: Some(GitSource {
            endpoints: repo.endpoints(),
            branch: "main".into(),
            poll_interval: Duration::from_millis(500),
            failover_timeout: Duration::from_secs(5),
        }),
        ..Default::default()
    };
    // Defaults that matter here: check-ins every 60 s, the engine every 5 s, group_wait 10 s.
    // Only the resolution is shortened (resolve_after 5s instead of 2m), to keep the test short.
    cfg.reconcile_interval = Duration::from_millis(200);
    let yaml = format!(
        "{}alerting:\n  notifiers:\n    - {{ name: pager, kind: webhook, url: \"{}\" }}\n  routes:\n    - {{ notifiers: [pager] }}\n  resolve_after: 5s\n",
        config_yaml(&cfg),
        hook.url("/fleet")
    );
    let controller = ControllerProcess::start_yaml(&cfg, &yaml).await;
    let bootstrap = root.path().join("bootstrap-token");
    std::fs::write(&bootstrap, &controller.bootstrap).expect("bootstrap");
    let mut devices = Vec::new();
    for (id, long_poll) in [("dev-1", "0s"), ("dev-2", "25s")] {
        let sys = root.path().join(format!("sys-{id}"));
        set_temperature(&sys, 50_000);
        let device = Device::start_with(
            root.path(),
            id,
            &repo,
            &controller.base,
            &bootstrap,
            &format!("  request_timeout: 10s\n  long_poll: {long_poll}\n"),
            &format!("watch:\n  interval: 1s\n  sysfs_root: {}\n", sys.display()),
        );
        devices.push((device, sys));
    }
    let deadline = Instant::now() + SETTLE;
    while !devices.iter().all(|(d, _)| idle_on(&d.status(), &v1)) {
        for (d, _) in &mut devices {
            if let Some(status) = d.agent.exited() {
                panic!(
                    "{} exited ({status}):\n{}",
                    d.id,
                    tail(&d.agent.log_text(), 40)
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "the devices never ran v1\n--- controller\n{}",
            tail(&controller.log(), 40)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Both just checked in: the next check-in of dev-1 is a minute away, dev-2's is held.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let hot = Instant::now();
    for (_, sys) in &devices {
        set_temperature(sys, 90_000);
    }
    let mut reached = [None, None];
    while reached.iter().any(Option::is_none) {
        for (i, (d, _)) in devices.iter().enumerate() {
            if reached[i].is_none()
                && controller_has(&controller, d.id, "problem_raised", "overheating").await
            {
                reached[i] = Some(hot.elapsed());
            }
        }
        assert!(
            hot.elapsed() < SETTLE,
            "the problem never reached the controller: {reached:?}\n--- dev-1\n{}",
            tail(&devices[0].0.agent.log_text(), 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("overheating reached the controller after {reached:?} (dev-1 without long poll, dev-2 with)");
    for (i, r) in reached.iter().enumerate() {
        let r = r.unwrap_or_default();
        // Sampled every second, reported at once: seconds, where the next check-in is up to
        // 66 s (dev-1) or the held long poll up to 25 s (dev-2) away.
        assert!(
            r < Duration::from_secs(15),
            "{} reported its problem only after {r:?}",
            devices[i].0.id
        );
    }
    // One alert naming both, through the webhook, once.
    let deadline = Instant::now() + SETTLE;
    while hook_messages(&hook, "DeviceOverheating", "firing").is_empty() {
        assert!(
            Instant::now() < deadline,
            "DeviceOverheating never reached the webhook: {:?}\n--- controller\n{}",
            hook.requests(),
            tail(&controller.log(), 40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let detected = hot.elapsed();
    eprintln!(
        "DeviceOverheating delivered {:.1} s after both zones read 90 °C",
        detected.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(12)).await;
    let fired = hook_messages(&hook, "DeviceOverheating", "firing");
    assert_eq!(fired.len(), 1, "once: {fired:?}");
    let mut named: Vec<&str> = fired[0]["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    named.sort_unstable();
    assert_eq!(named, ["dev-1", "dev-2"], "{}", fired[0]);
    assert!(detected < Duration::from_secs(180), "{detected:?}");

    // Both cool down (below the limit less the hysteresis): resolved, once.
    for (_, sys) in &devices {
        set_temperature(sys, 40_000);
    }
    let deadline = Instant::now() + SETTLE + Duration::from_secs(60);
    while hook_messages(&hook, "DeviceOverheating", "resolved").is_empty() {
        assert!(
            Instant::now() < deadline,
            "DeviceOverheating never resolved: {:?}",
            hook.requests()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        hook_messages(&hook, "DeviceOverheating", "resolved").len(),
        1
    );
}
