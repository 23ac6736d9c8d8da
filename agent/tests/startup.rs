//! Start-up problems never end the agent (DESIGN.md, "Agent: the update transaction"): the real
//! `fleet-agent` binary started on a full data filesystem, on a read-only one, before the Docker
//! engine answers, and with an unreadable credential. Each time it keeps running, says why in
//! `fleet-agent status` (and `/metrics`), and recovers when the cause goes away.
//!
//! The filesystems are small tmpfs mounts (root only; `FLEET_REQUIRE_TMPFS=1` turns a missing
//! mount into a failure instead of a skip).

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::images::{build_test_images, docker_available};
use support::lab::{idle_on, tail, AgentProc, Lab};

/// Generous: the machine is shared and noisy.
const SETTLE: Duration = Duration::from_secs(90);
/// How long an agent must stay up, reporting, before the cause is taken away. Longer than a
/// few start-up retries, so an agent that gives up after some of them is caught.
const STAYS_UP: Duration = Duration::from_secs(8);

fn ready(test: &str) -> bool {
    if !support::git_daemon::git_available(test) || !docker_available(test) {
        return false;
    }
    build_test_images();
    true
}

/// A tmpfs mounted for one test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `dir`; `None` (a skip) when that is impossible and
    /// FLEET_REQUIRE_TMPFS is not 1.
    fn mount(dir: &Path, size: &str, test: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).expect("mkdir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var("FLEET_REQUIRE_TMPFS").as_deref() != Ok("1"),
                "cannot mount a tmpfs (FLEET_REQUIRE_TMPFS=1)"
            );
            eprintln!("\n*** SKIP {test}: cannot mount a tmpfs (needs root) ***\n");
            return None;
        }
        Some(Tmpfs(dir.to_owned()))
    }

    fn remount(&self, mode: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {mode} {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` to the last byte with `dir/filler`; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("create filler");
    let chunk = vec![0xa5u8; 1 << 20];
    loop {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let small = [0u8; 512];
    while f.write(&small).is_ok_and(|n| n > 0) {}
    let _ = f.sync_all();
    // Nothing more fits, not even a small file.
    assert!(
        std::fs::write(dir.join("probe"), b"x").is_err(),
        "the filesystem is not full"
    );
    let _ = std::fs::remove_file(dir.join("probe"));
    path
}

/// The problems `fleet-agent status` shows, as "kind: detail" lines.
fn problems(s: &serde_json::Value) -> Vec<String> {
    s["problems"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    format!(
                        "{}: {}",
                        p["problem"].as_str().unwrap_or_default(),
                        p["detail"].as_str().unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `status` shows a problem of `kind` whose detail contains `says`, checking all
/// along that the agent runs; returns the status.
fn wait_for_problem(agent: &mut AgentProc, kind: &str, says: &str) -> serde_json::Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        assert_alive(agent, &format!("waiting for problem {kind}"));
        let s = agent.status();
        if problems(&s)
            .iter()
            .any(|p| p.starts_with(&format!("{kind}: ")) && p.contains(says))
        {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "no problem {kind} saying {says:?}; last status: {s:#}\n--- agent log ---\n{}",
            tail(&agent.log_text(), 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn assert_alive(agent: &mut AgentProc, when: &str) {
    if let Some(status) = agent.exited() {
        panic!(
            "the agent exited ({status}) {when}\n--- agent log ---\n{}",
            tail(&agent.log_text(), 40)
        );
    }
}

/// Keeps checking for `d` that the agent runs and still reports `kind`.
fn stays_up_reporting(agent: &mut AgentProc, kind: &str, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        assert_alive(agent, &format!("while reporting {kind}"));
        std::thread::sleep(Duration::from_millis(250));
    }
    let s = agent.status();
    assert!(
        problems(&s).iter().any(|p| p.starts_with(kind)),
        "{kind} is still reported: {s:#}"
    );
}

/// The text form of `fleet-agent status`.
fn status_text(config: &Path) -> String {
    let out = Command::new(support::lab::agent_bin())
        .args(["status", "--config"])
        .arg(config)
        .output()
        .expect("fleet-agent status");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// These filesystems are far smaller than the fleet's default `disk_free_below` (500 MiB): the
/// idle disk watcher is off here (its own test is in `watchers.rs`), so the problems seen are
/// the start-up ones under test.
const IDLE_DISK_WATCHER_OFF: &str = "watch:\n  disk_free_below: 0\n";

fn no_problems(s: &serde_json::Value) -> bool {
    s["problems"].as_array().is_some_and(Vec::is_empty) && s["starting"] == false
}

#[test]
fn an_agent_started_on_a_full_data_filesystem_waits_prunes_nothing_it_needs_and_recovers() {
    let test =
        "an_agent_started_on_a_full_data_filesystem_waits_prunes_nothing_it_needs_and_recovers";
    if !ready(test) {
        return;
    }
    let lab = Lab::new("full-fs");
    let Some(fs) = Tmpfs::mount(&lab.root.path().join("small"), "32m", test) else {
        return;
    };
    let data = fs.0.join("fleet");
    let eps = [lab.primary.url("fleet.git")];
    let config = lab.config_with("full", &eps, &data, IDLE_DISK_WATCHER_OFF);
    let r1 = lab.release("v1");
    let mut agent = AgentProc::start(&config);
    agent.wait_for("release 1 running", SETTLE, |s| idle_on(s, &r1));

    // Power cut; the disk fills up meanwhile; the device boots again.
    agent.kill9();
    let filler = fill(&fs.0);
    let mut agent = AgentProc::start(&config);
    let s = wait_for_problem(&mut agent, "journal_unwritable", "No space left on device");
    assert_eq!(s["starting"], true, "{s:#}");
    stays_up_reporting(&mut agent, "journal_unwritable", STAYS_UP);
    let text = status_text(&config);
    assert!(
        text.contains("problem:    journal_unwritable:")
            && text.contains("No space left on device"),
        "{text}"
    );
    assert!(
        lab.containers().iter().any(|c| c.0 == "web" && c.4),
        "release 1 keeps running meanwhile: {:?}",
        lab.containers()
    );

    // Space comes back: recovery writes the journal and the agent goes on.
    let freed_at = now_ms();
    std::fs::remove_file(&filler).expect("free space");
    let s = agent.wait_for("recovered on release 1", SETTLE, |s| {
        idle_on(s, &r1) && no_problems(s)
    });
    let journal: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("state.json")).expect("journal"))
            .expect("journal json");
    assert!(
        journal["updated_at_ms"].as_u64().unwrap_or(0) >= freed_at,
        "the journal was written after space came back: {journal:#}\n{s:#}"
    );
    let r2 = lab.release("v2");
    agent.wait_for("release 2 running", SETTLE, |s| idle_on(s, &r2));
    assert!(agent.log_text().contains("\"problem resolved\""));

    // The disk fills up again while the agent runs, and a release comes: it cannot be fetched
    // (nor journalled); the agent stays on what it runs and takes it once there is room.
    let filler = fill(&fs.0);
    let r3 = lab.release("v1");
    let until = Instant::now() + STAYS_UP;
    while Instant::now() < until {
        assert_alive(&mut agent, "with the disk full again");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(idle_on(&agent.status(), &r2), "{:#}", agent.status());
    std::fs::remove_file(&filler).expect("free space");
    agent.wait_for("release 3 running", SETTLE, |s| {
        idle_on(s, &r3) && no_problems(s)
    });
}

#[test]
fn a_full_data_filesystem_is_pruned_before_the_journal_is_written() {
    let test = "a_full_data_filesystem_is_pruned_before_the_journal_is_written";
    if !ready(test) {
        return;
    }
    let lab = Lab::new("full-fs-prune");
    let Some(fs) = Tmpfs::mount(&lab.root.path().join("small"), "32m", test) else {
        return;
    };
    let data = fs.0.join("fleet");
    let eps = [lab.primary.url("fleet.git")];
    let config = lab.config_with("prune", &eps, &data, IDLE_DISK_WATCHER_OFF);
    let text = std::fs::read_to_string(&config)
        .expect("read")
        .replace("keep_releases: 3", "keep_releases: 10");
    std::fs::write(&config, text).expect("write");
    let mut agent = AgentProc::start(&config);
    // Four releases staged: `side` still runs from 1's apply, 3 is previous, 4 current; only
    // release 2 may go.
    let mut shas = Vec::new();
    for web in ["v1", "v2", "v1", "v2"] {
        let sha = lab.release(web);
        agent.wait_for("the release running", SETTLE, |s| idle_on(s, &sha));
        shas.push(sha);
    }
    agent.kill9();
    let _filler = fill(&fs.0);
    let restarted = now_ms();
    let agent = AgentProc::start(&config);
    let journal_at = || -> u64 {
        std::fs::read(data.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|j| j["updated_at_ms"].as_u64())
            .unwrap_or(0)
    };
    // Recovery writes the journal: only once pruning made room for it.
    agent.wait_for("recovered on release 4 without help", SETTLE, |s| {
        idle_on(s, &shas[3]) && no_problems(s) && journal_at() >= restarted
    });
    assert!(
        !data.join("releases").join(&shas[1]).exists(),
        "release 2 was pruned\n{}",
        tail(&agent.log_text(), 30)
    );
    for kept in [&shas[0], &shas[2], &shas[3]] {
        assert!(data.join("releases").join(kept).exists(), "{kept} kept");
    }
    let log = agent.log_text();
    assert!(
        log.contains("journal_unwritable") && log.contains("pruning old releases"),
        "{}",
        tail(&log, 40)
    );
}

#[test]
fn an_agent_started_on_a_read_only_data_filesystem_waits_and_recovers_when_it_is_writable() {
    let test =
        "an_agent_started_on_a_read_only_data_filesystem_waits_and_recovers_when_it_is_writable";
    if !ready(test) {
        return;
    }
    let lab = Lab::new("ro-fs");
    let Some(fs) = Tmpfs::mount(&lab.root.path().join("ro"), "64m", test) else {
        return;
    };
    let data = fs.0.join("fleet");
    let eps = [lab.primary.url("fleet.git")];
    let config = lab.config_with("ro", &eps, &data, IDLE_DISK_WATCHER_OFF);
    let r1 = lab.release("v1");
    let mut agent = AgentProc::start(&config);
    agent.wait_for("release 1 running", SETTLE, |s| idle_on(s, &r1));

    // The filesystem comes up read-only after a power cut (an fsck that found errors).
    agent.kill9();
    fs.remount("ro");
    let mut agent = AgentProc::start(&config);
    let s = wait_for_problem(&mut agent, "lock_unavailable", "Read-only file system");
    assert_eq!(
        s["current"],
        r1.as_str(),
        "status still reads the device: {s:#}"
    );
    stays_up_reporting(&mut agent, "lock_unavailable", STAYS_UP);
    assert!(
        lab.containers().iter().any(|c| c.0 == "web" && c.4),
        "release 1 keeps running meanwhile: {:?}",
        lab.containers()
    );

    fs.remount("rw");
    agent.wait_for("recovered on release 1", SETTLE, |s| {
        idle_on(s, &r1) && no_problems(s)
    });
    let r2 = lab.release("v2");
    agent.wait_for("release 2 running", SETTLE, |s| idle_on(s, &r2));
}

#[test]
fn an_agent_started_before_the_docker_engine_answers_waits_for_it_and_applies_its_release() {
    let test =
        "an_agent_started_before_the_docker_engine_answers_waits_for_it_and_applies_its_release";
    if !ready(test) {
        return;
    }
    let lab = Lab::new("no-engine");
    let r1 = lab.release("v1");
    // DOCKER_HOST names a socket nobody listens on yet: the engine is still starting.
    let socket = lab.root.path().join("docker.sock");
    let port = support::git_daemon::free_port();
    let addr = format!("127.0.0.1:{port}");
    let eps = [lab.primary.url("fleet.git"), lab.mirror.url("fleet.git")];
    let config = lab.config_with("no-engine", &eps, &lab.data_dir(), "");
    support::lab::listen_metrics(&config, &addr);
    let host = format!("unix://{}", socket.display());
    let mut agent = AgentProc::start_with_env(&config, &[("DOCKER_HOST", &host)]);
    let s = wait_for_problem(&mut agent, "docker_unreachable", &host);
    assert!(s["current"].is_null(), "{s:#}");
    stays_up_reporting(&mut agent, "docker_unreachable", STAYS_UP);
    let text = status_text(&config);
    assert!(
        text.contains("agent:      starting")
            && text.contains(&format!(
                "problem:    docker_unreachable: cannot reach the Docker engine at {host}"
            )),
        "{text}"
    );
    // /metrics answers while the agent waits, and says why.
    let (code, body) = support::prometheus::http_get(&addr, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200);
    assert!(
        body.lines()
            .any(|l| l == "fleet_agent_problem{problem=\"docker_unreachable\"} 1"),
        "{body}"
    );
    assert!(
        body.lines()
            .any(|l| l == "fleet_agent_problem{problem=\"journal_unwritable\"} 0"),
        "{body}"
    );
    if support::prometheus::prometheus_available(test) {
        support::prometheus::promtool_check(&body)
            .unwrap_or_else(|e| panic!("promtool: {e}\n{body}"));
    }
    assert!(lab.containers().is_empty());

    // The engine answers at that address now.
    std::os::unix::fs::symlink("/var/run/docker.sock", &socket).expect("symlink the socket");
    agent.wait_for("release 1 running", SETTLE, |s| {
        idle_on(s, &r1) && no_problems(s)
    });
    assert!(
        lab.containers().iter().any(|c| c.0 == "web" && c.4),
        "{:?}",
        lab.containers()
    );
    let (_, body) = support::prometheus::http_get(&addr, "/metrics").expect("GET /metrics");
    assert!(
        body.lines()
            .any(|l| l == "fleet_agent_problem{problem=\"docker_unreachable\"} 0"),
        "{body}"
    );
}

#[test]
fn an_unreadable_credential_disables_only_its_endpoint() {
    let test = "an_unreadable_credential_disables_only_its_endpoint";
    if !ready(test) {
        return;
    }
    let lab = Lab::new("credential");
    let token = lab.root.path().join("secrets/primary-token");
    let primary = lab.primary.url("fleet.git");
    let eps = [primary.clone(), lab.mirror.url("fleet.git")];
    let config = lab.config_with("credential", &eps, &lab.data_dir(), "");
    // The primary's token file was never provisioned.
    let text = std::fs::read_to_string(&config).expect("read").replace(
        &format!("    - url: {primary}\n"),
        &format!(
            "    - url: {primary}\n      token_file: {}\n",
            token.display()
        ),
    );
    std::fs::write(&config, text).expect("write");
    let r1 = lab.release("v1");
    let mut agent = AgentProc::start(&config);
    // The mirror serves the release.
    let s = agent.wait_for("release 1 from the mirror", SETTLE, |s| idle_on(s, &r1));
    assert_alive(&mut agent, "with one endpoint disabled");
    let listed = problems(&s);
    assert_eq!(listed.len(), 1, "{s:#}");
    assert!(
        listed[0].starts_with(&format!(
            "git_endpoint_disabled: Git endpoint {primary} disabled: cannot read Git token file {}",
            token.display()
        )),
        "{listed:?}"
    );
    assert_eq!(s["problems"][0]["subject"], primary.as_str());

    // The token is provisioned: the primary is used again (a release only it has arrives).
    std::fs::write(&token, "s3cret\n").expect("write token");
    let r2 = lab.commit("v2");
    lab.push_primary();
    agent.wait_for("release 2 from the primary", SETTLE, |s| {
        idle_on(s, &r2) && no_problems(s)
    });
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
