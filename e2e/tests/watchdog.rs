//! The safe-mode watchdog against the real agent: the real `fleet-agent` in standalone mode
//! (real `git daemon`s, the real Docker engine) and the real `fleet-safe-mode` beside it, with
//! thresholds of seconds. The agent is SIGKILLed and not restarted, or started and killed
//! again and again: the watchdog starts the safe stack, says why, and hands back once the agent
//! is alive again.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleet_config::liveness::{Heartbeat, WatchdogState, WatchdogStatus};
use support::images::{build_test_images, docker_available};
use support::lab::{idle_on, tail, AgentProc, Lab};

const SETTLE: Duration = Duration::from_secs(90);
/// The watchdog looks this often in these tests.
const POLL: &str = "200ms";

fn ready(test: &str) -> bool {
    if !support::git_daemon::git_available(test) || !docker_available(test) {
        return false;
    }
    build_test_images();
    true
}

/// A running `fleet-safe-mode`; killed on drop.
struct WatchdogProc {
    child: Child,
    log: PathBuf,
}

impl WatchdogProc {
    fn start(lab: &Lab, args: &[&str]) -> WatchdogProc {
        let log = lab.root.path().join("watchdog.log");
        let out = fs::File::create(&log).expect("watchdog log");
        let err = out.try_clone().expect("log");
        let child = Command::new(&support::bins::bins().safe_mode)
            .arg("--data-dir")
            .arg(lab.data_dir())
            .args(["--namespace", &lab.ns.name])
            .arg("--safe-mode-compose")
            .arg(lab.root.path().join("safe-mode/compose.yaml"))
            .arg("--secrets-dir")
            .arg(lab.root.path().join("secrets"))
            .args(["--poll", POLL])
            .args(args)
            // As Docker's tools: DOCKER_HOST, here the default socket spelled out.
            .env("DOCKER_HOST", "unix:///var/run/docker.sock")
            .env("RUST_LOG", "info,fleet_safe_mode=debug")
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start fleet-safe-mode");
        WatchdogProc { child, log }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WatchdogProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The namespace's safe-mode containers: (id, running).
fn safe_containers(lab: &Lab) -> Vec<(String, bool)> {
    let out = Command::new("docker")
        .args(["ps", "-a", "--filter", &lab.ns.filter()])
        .args(["--filter", "label=fleet.stack=safe-mode"])
        .args(["--format", "{{.ID}} {{.State}}"])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(id, state)| (id.to_owned(), state == "running"))
        .collect()
}

fn status(data: &Path) -> Option<WatchdogStatus> {
    let bytes = fs::read(data.join("safe-mode-watchdog.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn heartbeat(data: &Path) -> Option<Heartbeat> {
    let bytes = fs::read(data.join("heartbeat.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Waits until `pred` holds; panics naming `what` with both logs otherwise.
fn wait_until(
    what: &str,
    timeout: Duration,
    logs: &[&dyn Fn() -> String],
    pred: impl Fn() -> bool,
) -> Duration {
    let start = Instant::now();
    while !pred() {
        if start.elapsed() > timeout {
            let logs: Vec<String> = logs.iter().map(|l| tail(&l(), 40)).collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                logs.join("\n---\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// The watchdog does nothing for `for_` while the agent is fine.
fn assert_quiet(lab: &Lab, w: &WatchdogProc, for_: Duration) {
    let end = Instant::now() + for_;
    while Instant::now() < end {
        assert!(
            safe_containers(lab).is_empty(),
            "the watchdog acted while the agent was fine:\n{}",
            tail(&w.log_text(), 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        status(&lab.data_dir()).is_none_or(|s| s.episode == 0),
        "{:?}",
        status(&lab.data_dir())
    );
}

#[test]
fn the_watchdog_starts_the_safe_stack_when_the_agent_is_killed_and_not_restarted() {
    if !ready("the_watchdog_starts_the_safe_stack_when_the_agent_is_killed_and_not_restarted") {
        return;
    }
    let lab = Lab::new("watchdog-dead");
    let r1 = lab.release("v1");
    let mut agent = AgentProc::start(&lab.config());
    agent.wait_for("release 1 running", SETTLE, |s| idle_on(s, &r1));
    let dead_after = Duration::from_secs(3);
    let w = WatchdogProc::start(&lab, &["--dead-after", "3s", "--hung-grace", "3s"]);
    assert_quiet(&lab, &w, Duration::from_secs(3));
    let app_before = lab.containers();

    // Inject: SIGKILL, and nobody restarts it.
    agent.kill9();
    let data = lab.data_dir();
    let took = wait_until(
        "the safe stack running",
        Duration::from_secs(30),
        &[&|| w.log_text()],
        || {
            let c = safe_containers(&lab);
            !c.is_empty() && c.iter().all(|c| c.1)
        },
    );
    // Detection bound: dead_after after the last heartbeat (written every 2 s), plus a look,
    // plus starting a container on a busy machine.
    assert!(
        took <= dead_after + Duration::from_secs(10),
        "took {took:?}"
    );
    let s = status(&data).expect("status file written");
    assert_eq!(s.state, WatchdogState::SafeMode, "{s:?}");
    assert_eq!(s.episode, 1, "{s:?}");
    let reason = s.reason.clone().unwrap_or_default();
    assert!(reason.contains("dead"), "{reason}");
    assert!(w.log_text().contains("starting the safe-mode stack"));
    // Nothing of the app was removed.
    assert_eq!(
        lab.containers()
            .iter()
            .filter(|c| c.0 != "rescue")
            .cloned()
            .collect::<Vec<_>>(),
        app_before
    );

    // Idempotent: the next looks leave the running safe stack alone.
    let ids = safe_containers(&lab);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        safe_containers(&lab),
        ids,
        "the safe stack was touched again"
    );
    assert_eq!(status(&data).map(|s| s.episode), Some(1));

    // The agent comes back: it reports the episode once, and the watchdog hands back.
    let agent = AgentProc::start(&lab.config());
    wait_until(
        "the watchdog to hand back",
        SETTLE,
        &[&|| w.log_text(), &|| agent.log_text()],
        || status(&data).is_some_and(|s| s.state == WatchdogState::HandedBack),
    );
    wait_until(
        "the agent to report the watchdog's episode",
        SETTLE,
        &[&|| agent.log_text()],
        || {
            agent
                .log_text()
                .contains("the safe-mode watchdog started the safe stack")
        },
    );
    assert_eq!(
        fs::read_to_string(data.join("safe-mode-watchdog.ack"))
            .ok()
            .as_deref(),
        Some("1\n")
    );
    agent.wait_for("release 1 running again", SETTLE, |s| idle_on(s, &r1));
}

#[test]
fn the_watchdog_starts_the_safe_stack_when_the_agent_crash_loops() {
    if !ready("the_watchdog_starts_the_safe_stack_when_the_agent_crash_loops") {
        return;
    }
    let lab = Lab::new("watchdog-loop");
    let r1 = lab.release("v1");
    let data = lab.data_dir();
    // Dead detection far away: only the crash-loop rule can act within this test.
    let w = WatchdogProc::start(
        &lab,
        &[
            "--dead-after",
            "10m",
            "--max-restarts",
            "3",
            "--restart-window",
            "5m",
        ],
    );
    let mut agent = AgentProc::start(&lab.config());
    agent.wait_for("release 1 running", SETTLE, |s| idle_on(s, &r1));
    agent.kill9();

    // Inject: four restarts, each life killed once it has recorded its start.
    for life in 2..=5 {
        let mut agent = AgentProc::start(&lab.config());
        wait_until(
            &format!("life {life} to record its start"),
            SETTLE,
            &[&|| agent.log_text()],
            || heartbeat(&data).is_some_and(|h| h.starts_ms.len() == life),
        );
        agent.kill9();
        if life == 4 {
            // Three restarts are not more than three.
            assert_quiet(&lab, &w, Duration::from_secs(2));
        }
    }
    wait_until(
        "the safe stack running",
        Duration::from_secs(20),
        &[&|| w.log_text()],
        || {
            let c = safe_containers(&lab);
            !c.is_empty() && c.iter().all(|c| c.1)
        },
    );
    let s = status(&data).expect("status file written");
    assert_eq!(s.state, WatchdogState::SafeMode, "{s:?}");
    let reason = s.reason.unwrap_or_default();
    assert!(
        reason.contains("crash-looping: 4 restarts"),
        "{reason}\n{}",
        tail(&w.log_text(), 40)
    );
}
