//! Crash loops with the real `fleet-agent`, `git daemon`s and Docker engine: a release that
//! passes its health window and starts crash-looping a while later (its `web` service exits
//! once a flag file appears, and Docker's restart policy keeps restarting it) is rolled back
//! and marked bad when the loop starts soon after the update, and sends the device to safe mode
//! when it starts later; a new release takes the device out, healthy.

mod support;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use support::images::{build_test_images, docker_available, APP_PORT};
use support::lab::{idle_on, tail, AgentProc, Lab};

/// Generous: the machine is shared and noisy. Timings are measured in benchmarks, not here.
const SETTLE: Duration = Duration::from_secs(120);

fn ready(test: &str) -> bool {
    if !support::git_daemon::git_available(test) || !docker_available(test) {
        return false;
    }
    build_test_images();
    true
}

/// A release whose `web` serves (and passes its healthcheck) until `<flags>/crash` exists, then
/// exits 1 at every start; `side` as usual.
fn crashing_compose(flags: &Path) -> String {
    format!(
        "services:\n  web:\n    image: fleet-test/app:v1\n    command: [\"/bin/sh\", \"-c\", \"/bin/httpd -p {APP_PORT} -h /www; while [ ! -f /flags/crash ]; do sleep 1; done; echo crashing; exit 1\"]\n    restart: unless-stopped\n    stop_grace_period: 1s\n    volumes:\n      - {}:/flags\n  side:\n    image: fleet-test/app:v1\n    restart: unless-stopped\n    stop_grace_period: 1s\n",
        flags.display()
    )
}

fn config(lab: &Lab, name: &str, addr: &str, watch: &str) -> std::path::PathBuf {
    let eps = [lab.primary.url("fleet.git"), lab.mirror.url("fleet.git")];
    let config = lab.config_with(name, &eps, &lab.data_dir(), watch);
    support::lab::listen_metrics(&config, addr);
    config
}

fn wait_metric(agent: &AgentProc, addr: &str, line: &str) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let body = support::prometheus::http_get(addr, "/metrics")
            .map(|r| r.1)
            .unwrap_or_default();
        if body.lines().any(|l| l == line) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for `{line}`:\n{body}\n--- agent log ---\n{}",
            tail(&agent.log_text(), 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn web_running_on(lab: &Lab, release: &str) -> bool {
    lab.containers()
        .iter()
        .any(|c| c.0 == "web" && c.2 == release && c.4)
}

/// fleet.yaml with a crash-loop threshold of 3 restarts in 2 minutes.
const FLEET: &str = "name: lab\nrollout:\n  waves:\n    - { name: canary, select: { ring: canary } }\n    - { name: all, percent: 100 }\nalerts:\n  crash_loop: { restarts: 3, within: 2m }\n";

#[test]
fn a_crash_loop_soon_after_an_update_rolls_back_and_marks_the_release_bad() {
    if !ready("a_crash_loop_soon_after_an_update_rolls_back_and_marks_the_release_bad") {
        return;
    }
    let lab = Lab::new("crash-loop-rollback");
    let flags = lab.root.path().join("flags");
    fs::create_dir_all(&flags).expect("mkdir");
    let addr = format!("127.0.0.1:{}", support::git_daemon::free_port());
    let r1 = lab.release_with("v1", &[("fleet.yaml", FLEET)]);
    let agent = AgentProc::start(&config(&lab, "rollback", &addr, ""));
    agent.wait_for("release 1 running", SETTLE, |s| idle_on(s, &r1));
    let compose = crashing_compose(&flags);
    let r2 = lab.release_with(
        "v1",
        &[("fleet.yaml", FLEET), ("stacks/app/compose.yaml", &compose)],
    );
    let s = agent.wait_for("release 2 running and healthy", SETTLE, |s| idle_on(s, &r2));
    assert_eq!(s["last_result"]["result"], "succeeded", "{s:#}");
    assert!(web_running_on(&lab, &r2));

    // Inject: the release starts crash-looping after its health window passed.
    fs::write(flags.join("crash"), "").expect("flag");
    let s = agent.wait_for("rolled back to release 1", SETTLE, |s| {
        idle_on(s, &r1)
            && s["bad_releases"]
                .as_array()
                .is_some_and(|b| b.iter().any(|b| b["release"] == r2.as_str()))
    });
    let bad = s["bad_releases"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["release"] == r2.as_str()))
        .and_then(|b| b["reason"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(
        bad.starts_with("crash loop: `app/web` restarted") && bad.contains("within 2m"),
        "{bad}"
    );
    assert_eq!(s["safe_mode"], serde_json::Value::Null, "{s:#}");
    wait_metric(
        &agent,
        &addr,
        "fleet_agent_crash_loops_total{action=\"rollback\"} 1",
    );
    wait_metric(
        &agent,
        &addr,
        "fleet_agent_problem{problem=\"crash_loop\"} 0",
    );
    assert!(
        agent
            .log_text()
            .contains("crash loop soon after an update: rolling back"),
        "{}",
        tail(&agent.log_text(), 40)
    );
    let deadline = Instant::now() + SETTLE;
    while !web_running_on(&lab, &r1) {
        assert!(Instant::now() < deadline, "{:?}", lab.containers());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Not retried: the device stays on release 1 while the branch still names release 2.
    let s = agent.status();
    assert!(idle_on(&s, &r1), "{s:#}");
    assert_eq!(
        agent
            .log_text()
            .matches("crash loop soon after an update")
            .count(),
        1,
        "acted on once"
    );
    // A fixed release goes through.
    let r3 = lab.release_with("v2", &[("fleet.yaml", FLEET)]);
    agent.wait_for("release 3 running", SETTLE, |s| idle_on(s, &r3));
    assert!(
        lab.containers().iter().all(|c| c.4),
        "{:?}",
        lab.containers()
    );
}

#[test]
fn a_crash_loop_long_after_an_update_enters_safe_mode_until_a_new_release() {
    if !ready("a_crash_loop_long_after_an_update_enters_safe_mode_until_a_new_release") {
        return;
    }
    let lab = Lab::new("crash-loop-safe");
    let flags = lab.root.path().join("flags");
    fs::create_dir_all(&flags).expect("mkdir");
    let addr = format!("127.0.0.1:{}", support::git_daemon::free_port());
    let r1 = lab.release_with("v1", &[("fleet.yaml", FLEET)]);
    // "Long after" made short: a loop more than 1 s after the update is no longer blamed on it.
    let cfg = config(
        &lab,
        "safe",
        &addr,
        "watch:\n  interval: 1s\n  crash_loop_rollback_within: 1s\n",
    );
    let agent = AgentProc::start(&cfg);
    agent.wait_for("release 1 running", SETTLE, |s| idle_on(s, &r1));
    let compose = crashing_compose(&flags);
    let r2 = lab.release_with(
        "v1",
        &[("fleet.yaml", FLEET), ("stacks/app/compose.yaml", &compose)],
    );
    agent.wait_for("release 2 running", SETTLE, |s| idle_on(s, &r2));
    std::thread::sleep(Duration::from_secs(2));

    fs::write(flags.join("crash"), "").expect("flag");
    let s = agent.wait_for("safe mode", SETTLE, |s| {
        s["safe_mode"]
            .as_str()
            .is_some_and(|r| r.starts_with("crash loop: `app/web`"))
    });
    assert_eq!(s["current"], r2.as_str(), "{s:#}");
    assert!(
        s["bad_releases"].as_array().is_none_or(|b| b.is_empty()),
        "not marked bad: it ran well before: {s:#}"
    );
    let problems: Vec<String> = s["problems"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| format!("{}/{}", p["problem"], p["subject"]))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        problems.iter().any(|p| p == "\"crash_loop\"/\"app/web\""),
        "{problems:?}"
    );
    wait_metric(
        &agent,
        &addr,
        "fleet_agent_crash_loops_total{action=\"safe_mode\"} 1",
    );
    wait_metric(&agent, &addr, "fleet_agent_safe_mode 1");
    let deadline = Instant::now() + SETTLE;
    while !lab.containers().iter().any(|c| c.0 == "rescue" && c.4) {
        assert!(Instant::now() < deadline, "{:?}", lab.containers());
        std::thread::sleep(Duration::from_millis(200));
    }
    // The looping release is not re-applied on its own.
    let deadline = Instant::now() + SETTLE;
    while !agent
        .log_text()
        .contains("in safe mode after this release's crash loop")
    {
        assert!(Instant::now() < deadline, "{}", tail(&agent.log_text(), 40));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(agent.status()["safe_mode"].is_string());

    // A new release takes the device out of safe mode, healthy.
    fs::remove_file(flags.join("crash")).expect("unflag");
    let r3 = lab.release_with("v2", &[("fleet.yaml", FLEET)]);
    let s = agent.wait_for("release 3 running", SETTLE, |s| {
        idle_on(s, &r3) && s["safe_mode"].is_null()
    });
    assert!(!s["problems"]
        .as_array()
        .is_some_and(|a| a.iter().any(|p| p["problem"] == "crash_loop")));
    let deadline = Instant::now() + SETTLE;
    while !(web_running_on(&lab, &r3) && lab.containers().iter().all(|c| c.0 != "rescue")) {
        assert!(Instant::now() < deadline, "{:?}", lab.containers());
        std::thread::sleep(Duration::from_millis(200));
    }
}
