//! Device logs on request, end to end (issue 16): a real `fleet-agent` in controller mode on the
//! real Docker engine runs a release whose container writes known lines to stdout and stderr;
//! `fleetctl devices logs` asks the real `fleet-controller` for them and prints those lines and
//! the agent's own within seconds (the agent long-polls, so the request reaches it at once and
//! the tail comes with its next check-in). In safe mode the device answers too, with its
//! safe-mode stack's containers. The controller never connects to the device.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use fleet_controller::config::GitSource;
use support::fleet::{Device, Repo};
use support::git_daemon::git_available;
use support::images::{build_test_images, docker_available};
use support::lab::{idle_on, tail};
use support::process::{free_addr, ControllerProcess};

const FLEET: &str = "name: e2e\nrelease_branch: main\nrollout:\n  waves:\n    - { name: canary, select: { ring: canary } }\n    - { name: all, percent: 100 }\n  bake: 1s\n  health_timeout: 90s\n  max_failure_rate: 5%\n  fleet_unhealthy_stop: 50%\n";
const INVENTORY: &str = "devices:\n  - id: dev-1\n    labels: { ring: canary }\nstacks:\n  - { name: app, select: {} }\n";
/// The app's `web` writes one line to each stream, then serves (healthy) as the test image does.
const APP: &str = "services:\n  web:\n    image: fleet-test/app:v1\n    command: [\"/bin/sh\", \"-c\", \"echo e2e-hello-on-stdout; echo e2e-oops-on-stderr >&2; exec /bin/httpd -f -p 8080 -h /www\"]\n    restart: unless-stopped\n    stop_grace_period: 1s\n";
/// The device's safe-mode stack for this test: one service that says so.
const SAFE: &str = "services:\n  rescue:\n    image: fleet-test/app:v1\n    command: [\"/bin/sh\", \"-c\", \"echo e2e-rescue-here; exec /bin/sleep 3600\"]\n    restart: always\n";
const LIMIT: Duration = Duration::from_secs(120);

/// `fleetctl ARGS` as the operator: (exit code, stdout, stderr, how long it took).
fn fleetctl(c: &ControllerProcess, args: &[&str]) -> (i32, String, String, Duration) {
    let t = Instant::now();
    let out = Command::new(&support::bins::bins().fleetctl)
        .args(["--url", &c.base, "--token", &c.operator])
        .args(args)
        .output()
        .expect("run fleetctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t.elapsed(),
    )
}

fn wait_status(
    d: &mut Device,
    c: &ControllerProcess,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) {
    let start = Instant::now();
    loop {
        if let Some(status) = d.agent.exited() {
            panic!(
                "the agent exited ({status}):\n{}",
                tail(&d.agent.log_text(), 60)
            );
        }
        let s = d.status();
        if pred(&s) {
            return;
        }
        assert!(
            start.elapsed() < LIMIT,
            "timed out waiting for {what}: {s:#}\n{}\n--- controller\n{}",
            tail(&d.agent.log_text(), 40),
            tail(&c.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetctl_devices_logs_prints_a_real_agents_and_its_containers_lines_within_seconds() {
    let test = "fleetctl_devices_logs_prints_a_real_agents_and_its_containers_lines_within_seconds";
    if !git_available(test) || !docker_available(test) {
        return;
    }
    build_test_images();
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::new(root.path(), FLEET, INVENTORY);
    let v1 = repo.release_compose("a chatty web", APP);
    // The defaults a fleet runs with: a 60 s check-in interval, long polls on.
    let cfg = fleet_controller::config::ControllerConfig {
        listen: free_addr(),
        data_dir: root.path().join("controller"),
        database_url: None,
        git: Some(GitSource {
            endpoints: repo.endpoints(),
            branch: "main".into(),
            poll_interval: Duration::from_millis(500),
            failover_timeout: Duration::from_secs(5),
        }),
        ..Default::default()
    };
    assert_eq!(cfg.checkin_interval, Duration::from_secs(60));
    let controller = ControllerProcess::start(&cfg).await;
    let bootstrap = root.path().join("bootstrap-token");
    std::fs::write(&bootstrap, &controller.bootstrap).expect("bootstrap token file");
    let mut d = Device::start(root.path(), "dev-1", &repo, &controller.base, &bootstrap);
    std::fs::write(d.safe_mode_compose(), SAFE).expect("safe-mode stack");
    wait_status(&mut d, &controller, "dev-1 on v1", |s| idle_on(s, &v1));
    // Its check-in is held again (it checks in at once after an update).
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (code, out, err, took) = fleetctl(
        &controller,
        &["devices", "logs", "dev-1", "--lines", "50", "--wait", "30s"],
    );
    assert_eq!(code, 0, "fleetctl devices logs: {err}\n{out}");
    println!("fleetctl devices logs: {:.2} s\n{out}", took.as_secs_f64());
    let container = format!("{}-app-web", d.ns.name);
    assert!(
        out.contains(&format!("== app/web (container {container}) ==")),
        "{out}"
    );
    assert!(out.contains(" stdout e2e-hello-on-stdout\n"), "{out}");
    assert!(out.contains(" stderr e2e-oops-on-stderr\n"), "{out}");
    // The agent's own lines, from its ring: it logged the update it made.
    let agent = out
        .split("== agent")
        .nth(1)
        .and_then(|s| s.split("\n== ").next())
        .unwrap_or_else(|| panic!("no agent section: {out}"));
    assert!(
        agent.contains("INFO  fleet_agent")
            && agent.contains("the controller asks for the device's logs"),
        "{agent}"
    );
    assert!(
        took < Duration::from_secs(15),
        "in seconds through the long poll, not the 60 s interval: {took:?}"
    );

    // Only one source, as JSON.
    let (code, out, err, _) = fleetctl(
        &controller,
        &[
            "--output",
            "json",
            "devices",
            "logs",
            "dev-1",
            "--service",
            "web",
            "--lines",
            "1",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let sources = v["tail"]["sources"].as_array().expect("sources");
    assert_eq!(sources.len(), 1, "{v:#}");
    assert_eq!(sources[0]["name"], "app/web");
    assert_eq!(
        sources[0]["lines"].as_array().map(Vec::len),
        Some(1),
        "{v:#}"
    );
    assert_eq!(v["request"]["state"], "answered");

    // In safe mode the device answers too, with its safe-mode stack's containers.
    let (code, _, err, _) = fleetctl(
        &controller,
        &["safe-mode", "dev-1", "on", "--reason", "e2e logs"],
    );
    assert_eq!(code, 0, "{err}");
    wait_status(&mut d, &controller, "dev-1 in safe mode", |s| {
        s["phase"] == "safe_mode" && !s["safe_mode"].is_null()
    });
    let deadline = Instant::now() + LIMIT;
    loop {
        let (code, out, err, _) = fleetctl(
            &controller,
            &[
                "devices",
                "logs",
                "dev-1",
                "--service",
                "safe-mode",
                "--wait",
                "30s",
            ],
        );
        assert_eq!(code, 0, "{err}\n{out}");
        if out.contains("e2e-rescue-here") {
            assert!(out.contains("== safe-mode/rescue (container"), "{out}");
            assert!(!out.contains("app/web"), "only what was asked: {out}");
            break;
        }
        // The rescue container may not have written its line yet.
        assert!(
            Instant::now() < deadline,
            "no rescue line: {out}\ncontainers: {:?}\n{}",
            d.containers(),
            tail(&d.agent.log_text(), 40)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (code, _, err, _) = fleetctl(&controller, &["safe-mode", "dev-1", "off"]);
    assert_eq!(code, 0, "{err}");
    d.agent.stop();
}
