//! The device watchers with the real `fleet-agent` binary, real `git daemon`s and the real
//! Docker engine: a fault is injected the way the device would show it (a thermal zone's
//! millidegrees, the firmware's throttled flags, a UPS's power-fail signal, a full tmpfs, a
//! controller whose clock differs), the agent detects it, holds the update back while it lasts
//! and reports it (status, `/metrics`, events), and the update goes through once it clears.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::images::{build_test_images, docker_available};
use support::lab::{idle_on, tail, AgentProc, Lab};
use support::standin;

/// Generous: the machine is shared and noisy. Timings are measured in benchmarks, not here.
const SETTLE: Duration = Duration::from_secs(90);

fn ready(test: &str) -> bool {
    if !support::git_daemon::git_available(test) || !docker_available(test) {
        return false;
    }
    build_test_images();
    true
}

/// A lab agent configuration with `/metrics` on a free port and `watch:` sampling every
/// second from the fake sysfs tree `<root>/sys`; `watch_extra` adds keys under `watch:`.
fn watched_config(lab: &Lab, name: &str, data: &Path, watch_extra: &str) -> (PathBuf, String) {
    watched_config_with(lab, name, data, "", watch_extra)
}

/// [`watched_config`] with top-level keys `top_extra` (e.g. `controller:`).
fn watched_config_with(
    lab: &Lab,
    name: &str,
    data: &Path,
    top_extra: &str,
    watch_extra: &str,
) -> (PathBuf, String) {
    let addr = format!("127.0.0.1:{}", support::git_daemon::free_port());
    let eps = [lab.primary.url("fleet.git"), lab.mirror.url("fleet.git")];
    let watch = format!(
        "{top_extra}watch:\n  interval: 1s\n  sysfs_root: {}\n{watch_extra}",
        sysfs(lab).display()
    );
    let config = lab.config_with(name, &eps, data, &watch);
    support::lab::listen_metrics(&config, &addr);
    (config, addr)
}

fn sysfs(lab: &Lab) -> PathBuf {
    lab.root.path().join("sys")
}

/// Replaces `path`'s content at once (temp + rename): a sysfs attribute is never read half
/// written, and neither is its stand-in.
fn write_whole(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).expect("write");
    fs::rename(&tmp, path).expect("rename");
}

/// Writes the thermal zone as the kernel does: millidegrees Celsius and a newline.
fn set_temperature(lab: &Lab, millidegrees: u32) {
    let zone = sysfs(lab).join("class/thermal/thermal_zone0");
    write_whole(&zone.join("type"), "cpu-thermal\n");
    write_whole(&zone.join("temp"), &format!("{millidegrees}\n"));
}

/// Writes the firmware's flags as the Pi's sysfs node does (hexadecimal, no `0x`).
fn set_throttled(lab: &Lab, hex: &str) {
    let f = sysfs(lab).join("devices/platform/soc/soc:firmware/get_throttled");
    write_whole(&f, &format!("{hex}\n"));
}

fn metrics(addr: &str) -> String {
    support::prometheus::http_get(addr, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// Waits until `/metrics` has every line of `want`.
fn wait_metrics(agent: &AgentProc, addr: &str, want: &[&str]) -> String {
    let deadline = Instant::now() + SETTLE;
    loop {
        let body = metrics(addr);
        if want.iter().all(|w| body.lines().any(|l| l == *w)) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {want:?} in /metrics:\n{body}\n--- agent log ---\n{}",
            tail(&agent.log_text(), 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the agent's log has a line with every one of `parts`.
fn wait_log(agent: &AgentProc, what: &str, parts: &[&str]) {
    let deadline = Instant::now() + SETTLE;
    while !agent
        .log_text()
        .lines()
        .any(|l| parts.iter().all(|p| l.contains(p)))
    {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n--- agent log ---\n{}",
            tail(&agent.log_text(), 60)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn problems(s: &serde_json::Value) -> Vec<String> {
    s["problems"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["problem"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn has_problem(s: &serde_json::Value, kind: &str) -> bool {
    problems(s).iter().any(|p| p == kind)
}

/// Every container of the lab runs, and `web` is release `release`'s (`side` never changes, so
/// it keeps the container of the release that created it).
fn healthy_on(lab: &Lab, release: &str) {
    let c = lab.containers();
    assert!(
        c.len() == 2 && c.iter().all(|c| c.4),
        "both services run: {c:?}"
    );
    assert!(
        c.iter().any(|c| c.0 == "web" && c.2 == release),
        "web runs release {release}: {c:?}"
    );
}

#[test]
fn heat_holds_an_update_until_the_cpu_cools_below_the_hysteresis() {
    if !ready("heat_holds_an_update_until_the_cpu_cools_below_the_hysteresis") {
        return;
    }
    let lab = Lab::new("watch-heat");
    set_temperature(&lab, 52_000);
    let r1 = lab.release("v1");
    let (config, addr) = watched_config(&lab, "heat", &lab.data_dir(), "");
    let agent = AgentProc::start(&config);
    agent.wait_for("release 1 running", SETTLE, |s| idle_on(s, &r1));
    wait_metrics(
        &agent,
        &addr,
        &[
            "fleet_agent_cpu_temperature_celsius 52",
            "fleet_agent_temperature_threshold_celsius 80",
            "fleet_agent_update_blocked{reason=\"thermal\"} 0",
        ],
    );

    // Inject: 85 °C, above the fleet's default 80 °C.
    set_temperature(&lab, 85_000);
    let s = agent.wait_for("overheating reported", SETTLE, |s| {
        has_problem(s, "overheating")
    });
    assert_eq!(s["current"], r1.as_str());
    wait_metrics(
        &agent,
        &addr,
        &[
            "fleet_agent_cpu_temperature_celsius 85",
            "fleet_agent_update_blocked{reason=\"thermal\"} 1",
            "fleet_agent_problem{problem=\"overheating\"} 1",
        ],
    );
    // A new release arrives while hot: the agent sees it and holds it back.
    let r2 = lab.release("v2");
    wait_log(
        &agent,
        "release 2 held back",
        &[
            "update held back by the device watchers",
            &r2[..12],
            "85.0 °C",
        ],
    );
    // Cooler, but not below 80 - 5 °C: still held.
    set_temperature(&lab, 77_000);
    wait_metrics(&agent, &addr, &["fleet_agent_cpu_temperature_celsius 77"]);
    let s = agent.status();
    assert!(idle_on(&s, &r1), "nothing started while hot: {s:#}");
    assert!(has_problem(&s, "overheating"), "{s:#}");
    assert_eq!(
        s["last_result"]["release"],
        r1.as_str(),
        "no update was even tried: {s:#}"
    );
    healthy_on(&lab, &r1);

    // Clear: 70 °C. The update goes through and the problem is over.
    set_temperature(&lab, 70_000);
    let s = agent.wait_for("release 2 running", SETTLE, |s| idle_on(s, &r2));
    assert_eq!(s["last_result"]["result"], "succeeded", "{s:#}");
    assert!(!has_problem(&s, "overheating"), "{s:#}");
    wait_metrics(
        &agent,
        &addr,
        &[
            "fleet_agent_update_blocked{reason=\"thermal\"} 0",
            "fleet_agent_problem{problem=\"overheating\"} 0",
        ],
    );
    healthy_on(&lab, &r2);
    let log = agent.log_text();
    assert_eq!(
        log.matches("update held back by the device watchers")
            .count(),
        2,
        "logged when held and when the reading changed the reason, not every pass:\n{}",
        tail(&log, 40)
    );
}

#[test]
fn under_voltage_holds_an_update_and_a_power_fail_abandons_one_before_the_swap() {
    if !ready("under_voltage_holds_an_update_and_a_power_fail_abandons_one_before_the_swap") {
        return;
    }
    let lab = Lab::new("watch-power");
    set_throttled(&lab, "0");
    // The UPS stand-in: a program, as `watch.power_fail_command` runs one. Armed by the test,
    // it reports a power failure the moment the agent is about to swap (the journal says
    // `pulling`: everything is staged, nothing running touched) and keeps reporting it until
    // the test restores power.
    let ups = lab.root.path().join("ups");
    fs::create_dir_all(&ups).expect("mkdir");
    let script = ups.join("on-battery");
    let journal = lab.data_dir().join("state.json");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nU={ups}\n[ -f $U/failing ] && exit 0\nif [ -f $U/armed ] && grep -Eq '\"phase\": *\"pulling\"' {journal}; then\n  rm -f $U/armed; touch $U/failing; exit 0\nfi\nexit 1\n",
            ups = ups.display(),
            journal = journal.display()
        ),
    )
    .expect("write script");
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let r1 = lab.release("v1");
    let (config, addr) = watched_config(
        &lab,
        "power",
        &lab.data_dir(),
        &format!("  power_fail_command: [{}]\n", script.display()),
    );
    let agent = AgentProc::start(&config);
    agent.wait_for("release 1 running", SETTLE, |s| idle_on(s, &r1));
    wait_metrics(
        &agent,
        &addr,
        &[
            "fleet_agent_throttled_flags 0",
            "fleet_agent_under_voltage 0",
        ],
    );

    // Inject: under-voltage now (bit 0), with throttling now and both since boot.
    set_throttled(&lab, "50005");
    agent.wait_for("under-voltage reported", SETTLE, |s| {
        has_problem(s, "under_voltage")
    });
    wait_metrics(
        &agent,
        &addr,
        &[
            "fleet_agent_throttled_flags 327685",
            "fleet_agent_under_voltage 1",
            "fleet_agent_throttled 1",
            "fleet_agent_update_blocked{reason=\"under_voltage\"} 1",
        ],
    );
    let r2 = lab.release("v2");
    wait_log(
        &agent,
        "release 2 held back",
        &[
            "update held back by the device watchers",
            &r2[..12],
            "under-voltage",
        ],
    );
    let s = agent.status();
    assert!(idle_on(&s, &r1), "nothing started under-voltage: {s:#}");
    healthy_on(&lab, &r1);

    // The supply recovers (only the since-boot bits stay); the UPS is armed: the update
    // starts, and the power fails just before its swap.
    fs::write(ups.join("armed"), "").expect("arm");
    set_throttled(&lab, "50000");
    let s = agent.wait_for("the update abandoned before the swap", SETTLE, |s| {
        s["last_result"]["result"] == "skipped"
    });
    let reason = s["last_result"]["reason"].as_str().unwrap_or_default();
    assert_eq!(
        reason, "abandoned before the swap: update held back: power failing",
        "{s:#}"
    );
    assert!(idle_on(&s, &r1), "nothing running was touched: {s:#}");
    assert!(
        s["bad_releases"].as_array().is_none_or(|b| b.is_empty()),
        "an abandoned release is not marked bad: {s:#}"
    );
    let s = agent.wait_for("power failing reported", SETTLE, |s| {
        has_problem(s, "power_failing") && !has_problem(s, "under_voltage")
    });
    let detail = s["problems"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["problem"] == "power_failing"))
        .and_then(|p| p["detail"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(detail.contains("data synced"), "{detail}");
    assert!(
        !detail.contains("sync failed"),
        "the data filesystem was synced: {detail}"
    );
    wait_metrics(
        &agent,
        &addr,
        &[
            "fleet_agent_power_failing 1",
            "fleet_agent_update_blocked{reason=\"power_fail\"} 1",
            "fleet_agent_update_blocked{reason=\"under_voltage\"} 0",
        ],
    );
    healthy_on(&lab, &r1);

    // Power is back: the staged release goes through.
    fs::remove_file(ups.join("failing")).expect("restore power");
    let s = agent.wait_for("release 2 running", SETTLE, |s| idle_on(s, &r2));
    assert_eq!(s["last_result"]["result"], "succeeded", "{s:#}");
    assert!(problems(&s).is_empty(), "{s:#}");
    wait_metrics(
        &agent,
        &addr,
        &[
            "fleet_agent_power_failing 0",
            "fleet_agent_update_blocked{reason=\"power_fail\"} 0",
        ],
    );
    healthy_on(&lab, &r2);
}

/// A tmpfs of `size` mounted at `dir` (root only), unmounted on drop; `None` (after a loud
/// skip message) when it cannot be mounted and `FLEET_REQUIRE_TMPFS` is not 1.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(test: &str, dir: &Path, size: &str) -> Option<Tmpfs> {
        fs::create_dir_all(dir).expect("mkdir");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var("FLEET_REQUIRE_TMPFS").as_deref() != Ok("1"),
                "cannot mount a {size} tmpfs (FLEET_REQUIRE_TMPFS=1)"
            );
            eprintln!("\n*** SKIP {test}: cannot mount a tmpfs (needs root) ***\n");
            return None;
        }
        Some(Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Free bytes on the filesystem holding `dir`, as `df` says.
fn free_bytes(dir: &Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df's answer")
}

#[test]
fn a_disk_filling_up_while_idle_is_pruned_and_holds_updates_until_freed() {
    const TEST: &str = "a_disk_filling_up_while_idle_is_pruned_and_holds_updates_until_freed";
    if !ready(TEST) {
        return;
    }
    let lab = Lab::new("watch-disk");
    let data = lab.root.path().join("small");
    let Some(_tmpfs) = Tmpfs::mount(TEST, &data, "32m") else {
        return;
    };
    let (config, addr) = watched_config(&lab, "disk", &data, "  disk_free_below: 8MB\n");
    // Keep more than rollback needs, so there is something to prune when the disk runs low.
    let text = fs::read_to_string(&config)
        .expect("read")
        .replace("keep_releases: 3", "keep_releases: 10");
    fs::write(&config, text).expect("write");
    let r1 = lab.release("v1");
    let agent = AgentProc::start(&config);
    agent.wait_for("release 1 running", SETTLE, |s| idle_on(s, &r1));
    let mut rs = vec![r1.clone()];
    for web in ["v2", "v1", "v2"] {
        let r = lab.release(web);
        agent.wait_for("the next release running", SETTLE, |s| idle_on(s, &r));
        rs.push(r);
    }
    let (r2, r3, r4) = (rs[1].clone(), rs[2].clone(), rs[3].clone());
    let releases = data.join("releases");
    assert!(
        releases.join(&r2).is_dir(),
        "keep_releases 10 keeps release 2"
    );
    wait_metrics(
        &agent,
        &addr,
        &[
            "fleet_agent_disk_free_threshold_bytes 8388608",
            "fleet_agent_update_blocked{reason=\"disk_low\"} 0",
        ],
    );
    // A Git cache set aside as corrupt earlier, as fleet-git names it.
    let corrupt = data.join("git-cache.git.corrupt-1764650000");
    fs::create_dir_all(corrupt.join("objects")).expect("mkdir");
    fs::write(corrupt.join("objects/pack"), vec![7u8; 1 << 20]).expect("write");

    // Inject: something else on the device fills the filesystem, leaving about 3 MiB.
    let filler = data.join("filler");
    let fill = free_bytes(&data).saturating_sub(3 << 20);
    {
        use std::io::Write;
        let mut f = fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 1 << 20];
        let mut left = fill;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n]).expect("fill");
            left -= n as u64;
        }
    }
    let s = agent.wait_for("low disk reported", SETTLE, |s| has_problem(s, "disk_low"));
    let detail = s["problems"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["problem"] == "disk_low"))
        .and_then(|p| p["detail"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(detail.contains("below 8 MiB (disk_free_below)"), "{detail}");
    // Acted on while idle: everything rollback does not need is pruned.
    wait_log(
        &agent,
        "pruning while idle",
        &["low on disk while idle: pruned"],
    );
    assert!(!releases.join(&r2).exists(), "release 2 pruned");
    assert!(
        releases.join(&r1).is_dir(),
        "release 1 kept: its `side` container still runs"
    );
    assert!(releases.join(&r3).is_dir(), "previous kept");
    assert!(releases.join(&r4).is_dir(), "current kept");
    assert!(!corrupt.exists(), "the corrupt Git cache removed");
    wait_metrics(
        &agent,
        &addr,
        &[
            "fleet_agent_update_blocked{reason=\"disk_low\"} 1",
            "fleet_agent_problem{problem=\"disk_low\"} 1",
        ],
    );
    // Still low after pruning: a new release is held back.
    let r5 = lab.release("v1");
    wait_log(
        &agent,
        "release 5 held back",
        &[
            "update held back by the device watchers",
            &r5[..12],
            "MiB free, below 8 MiB",
        ],
    );
    let s = agent.status();
    assert!(idle_on(&s, &r4), "{s:#}");
    healthy_on(&lab, &r4);

    // Freed: the problem clears and release 5 goes through.
    fs::remove_file(&filler).expect("free the disk");
    let s = agent.wait_for("release 5 running", SETTLE, |s| idle_on(s, &r5));
    assert_eq!(s["last_result"]["result"], "succeeded", "{s:#}");
    assert!(!has_problem(&s, "disk_low"), "{s:#}");
    wait_metrics(
        &agent,
        &addr,
        &["fleet_agent_update_blocked{reason=\"disk_low\"} 0"],
    );
    healthy_on(&lab, &r5);
}

/// The problem events (`raised`/`cleared`, kind) the stand-in received, in order.
fn problem_events(ctl: &standin::Controller) -> Vec<(String, String)> {
    use fleet_config::protocol::EventKind;
    ctl.with(|s| {
        s.events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::ProblemRaised { problem, .. } => {
                    Some(("raised".into(), problem.clone()))
                }
                EventKind::ProblemCleared { problem, .. } => {
                    Some(("cleared".into(), problem.clone()))
                }
                _ => None,
            })
            .collect()
    })
}

fn wait_until(what: &str, agent: &AgentProc, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !pred() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n--- agent log ---\n{}",
            tail(&agent.log_text(), 60)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The value of the unlabelled gauge `name` in `/metrics`.
fn gauge(addr: &str, name: &str) -> Option<f64> {
    metrics(addr).lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    })
}

/// A controller-mode agent configuration against `ctl`, with a device token already in place.
fn controller_config(lab: &Lab, ctl: &standin::Controller, name: &str) -> (PathBuf, String) {
    let token = lab.root.path().join(format!("{name}-token"));
    fs::write(&token, "device-token\n").expect("token");
    watched_config_with(
        lab,
        name,
        &lab.data_dir(),
        &format!(
            "controller:\n  url: {}\n  token_file: {}\n  long_poll: 0s\n",
            ctl.url,
            token.display()
        ),
        "  clock_skew_max: 1m\n",
    )
}

const THREE_YEARS: i64 = 3 * 365 * 86_400;

#[test]
fn a_controller_whose_clock_differs_by_years_is_reported_and_cleared() {
    if !ready("a_controller_whose_clock_differs_by_years_is_reported_and_cleared") {
        return;
    }
    let lab = Lab::new("watch-clock");
    let ctl = standin::Controller::start();
    ctl.with(|s| s.offset_secs = -THREE_YEARS);
    let (config, addr) = controller_config(&lab, &ctl, "clock");
    let agent = AgentProc::start(&config);
    let s = agent.wait_for("clock skew reported", SETTLE, |s| {
        has_problem(s, "clock_skew")
    });
    let detail = s["problems"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["problem"] == "clock_skew"))
        .and_then(|p| p["detail"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(
        detail.starts_with("the clock is 3y 0d ahead of the controller's"),
        "{detail}"
    );
    let skew = gauge(&addr, "fleet_agent_clock_skew_seconds").expect("skew gauge");
    assert!(
        (skew - THREE_YEARS as f64).abs() < 30.0,
        "about three years ahead: {skew}"
    );
    wait_until("the raised event reaches the controller", &agent, || {
        problem_events(&ctl).contains(&("raised".into(), "clock_skew".into()))
    });

    // The controller's clock is right again (or the device's was fixed): cleared.
    ctl.with(|s| s.offset_secs = 0);
    agent.wait_for("clock skew cleared", SETTLE, |s| {
        !has_problem(s, "clock_skew")
    });
    wait_until("the cleared event reaches the controller", &agent, || {
        problem_events(&ctl).contains(&("cleared".into(), "clock_skew".into()))
    });
    let skew = gauge(&addr, "fleet_agent_clock_skew_seconds").expect("skew gauge");
    assert!(skew.abs() < 30.0, "{skew}");
    let seqs: Vec<u64> = ctl.with(|s| s.events.iter().map(|e| e.seq).collect());
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
}

#[test]
fn the_agent_keeps_working_through_clock_jumps_of_decades_both_ways() {
    const TEST: &str = "the_agent_keeps_working_through_clock_jumps_of_decades_both_ways";
    if !ready(TEST) {
        return;
    }
    let Some(lib) = support::faketime::libfaketime(TEST) else {
        return;
    };
    let lab = Lab::new("watch-jump");
    let ctl = standin::Controller::start();
    let (config, addr) = controller_config(&lab, &ctl, "jump");
    // The agent's wall clock comes from this file, read at every call; its monotonic clock is
    // left alone, as a real clock jump leaves it.
    let clock = lab.root.path().join("faketime.rc");
    fs::write(&clock, "+0\n").expect("clock");
    let clock_s = clock.display().to_string();
    let agent = AgentProc::start_with_env(
        &config,
        &[
            ("LD_PRELOAD", lib),
            ("FAKETIME_TIMESTAMP_FILE", &clock_s),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    wait_until("check-ins", &agent, || ctl.with(|s| s.checkins) >= 2);
    assert!(gauge(&addr, "fleet_agent_clock_implausible") == Some(0.0));

    // Jump back 56 years: the board "booted in 1970". Then the controller is down for a
    // while: the agent's backoff must not wait decades.
    write_whole(&clock, "-56y\n");
    let s = agent.wait_for("an unset clock reported", SETTLE, |s| {
        has_problem(s, "clock_unset") && has_problem(s, "clock_skew")
    });
    assert_eq!(s["phase"], "idle", "{s:#}");
    let skew = gauge(&addr, "fleet_agent_clock_skew_seconds").expect("skew");
    assert!(skew < -(55.0 * 365.0 * 86_400.0), "decades behind: {skew}");
    ctl.with(|s| s.fail_next = 3);
    let before = ctl.with(|s| s.checkins);
    wait_until("check-ins resume after the outage", &agent, || {
        ctl.with(|s| s.fail_next == 0 && s.checkins >= before + 2)
    });
    wait_until("both problems reach the controller", &agent, || {
        let ev = problem_events(&ctl);
        ev.contains(&("raised".into(), "clock_unset".into()))
            && ev.contains(&("raised".into(), "clock_skew".into()))
    });

    // Jump forward 30 years past the real time.
    write_whole(&clock, "+30y\n");
    agent.wait_for("a plausible clock again", SETTLE, |s| {
        !has_problem(s, "clock_unset") && has_problem(s, "clock_skew")
    });
    wait_until("skew ahead", &agent, || {
        gauge(&addr, "fleet_agent_clock_skew_seconds").is_some_and(|v| v > 29.0 * 365.0 * 86_400.0)
    });
    let before = ctl.with(|s| s.checkins);
    wait_until("check-ins go on", &agent, || {
        ctl.with(|s| s.checkins) >= before + 2
    });

    // Set right (NTP answered): every problem clears, and the controller heard each change in
    // order, numbered without a gap whatever the clock said.
    write_whole(&clock, "+0\n");
    let s = agent.wait_for("clock problems cleared", SETTLE, |s| {
        !has_problem(s, "clock_unset") && !has_problem(s, "clock_skew")
    });
    assert_eq!(s["phase"], "idle", "{s:#}");
    wait_until("the last clear reaches the controller", &agent, || {
        problem_events(&ctl)
            .iter()
            .filter(|e| e.1 == "clock_skew" && e.0 == "cleared")
            .count()
            >= 1
    });
    let seqs: Vec<u64> = ctl.with(|s| s.events.iter().map(|e| e.seq).collect());
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "every event once, in order: {seqs:?}"
    );
    let clock_events: Vec<(String, String)> = problem_events(&ctl)
        .into_iter()
        .filter(|e| e.1.starts_with("clock"))
        .collect();
    let ev = |a: &str, b: &str| (a.to_string(), b.to_string());
    // Raised in 1970 (the watcher and the check-in each notice one, in either order), the
    // unset clock cleared by the jump forward, the skew once set right; each once.
    assert_eq!(clock_events.len(), 4, "{clock_events:?}");
    let mut raised = clock_events[..2].to_vec();
    raised.sort();
    assert_eq!(
        raised,
        [ev("raised", "clock_skew"), ev("raised", "clock_unset")],
        "{clock_events:?}"
    );
    assert_eq!(
        clock_events[2..],
        [ev("cleared", "clock_unset"), ev("cleared", "clock_skew")],
        "{clock_events:?}"
    );
    assert!(agent.log_text().contains("fleet-agent starting"));
}

/// The kinds of the events buffered in `data`'s `events/`, oldest first.
fn buffered_problem_events(data: &Path) -> Vec<(String, String)> {
    use fleet_config::protocol::{DeviceEvent, EventKind};
    let mut files: Vec<PathBuf> = fs::read_dir(data.join("events"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter_map(|p| fs::read(p).ok())
        .filter_map(|b| serde_json::from_slice::<DeviceEvent>(&b).ok())
        .filter_map(|e| match e.kind {
            EventKind::ProblemRaised { problem, .. } => Some(("raised".into(), problem)),
            EventKind::ProblemCleared { problem, .. } => Some(("cleared".into(), problem)),
            _ => None,
        })
        .collect()
}

/// How the agent ends while its check-in hangs.
enum Cut {
    /// SIGTERM, at once after the problem cleared.
    Stop,
    /// SIGKILL (a power cut), once the events are on disk, with the check-in still hanging.
    PowerCut,
}

/// A check-in held unanswered while the CPU overheats and cools down again; the agent ends
/// (`cut`) before the check-in gives up; both events must be on disk, and reach the controller
/// once the link is back.
fn problem_met_while_a_check_in_hangs(test: &str, cut: Cut) {
    if !ready(test) {
        return;
    }
    let lab = Lab::new("watch-hang");
    set_temperature(&lab, 50_000);
    let ctl = standin::Controller::start();
    let (config, _) = controller_config(&lab, &ctl, "hang");
    let text = fs::read_to_string(&config).expect("read").replace(
        "  long_poll: 0s\n",
        "  long_poll: 0s\n  request_timeout: 5m\n",
    );
    fs::write(&config, text).expect("write");
    let mut agent = AgentProc::start(&config);
    wait_until("a check-in", &agent, || ctl.with(|s| s.checkins) >= 1);

    // The link dies: the next check-in is never answered (it would time out in 5 minutes),
    // and meanwhile the CPU overheats and cools down again.
    ctl.with(|s| s.hang = true);
    wait_until("a check-in held", &agent, || ctl.with(|s| s.hanging) >= 1);
    set_temperature(&lab, 85_000);
    agent.wait_for("overheating reported", SETTLE, |s| {
        has_problem(s, "overheating")
    });
    set_temperature(&lab, 70_000);
    agent.wait_for("overheating cleared", SETTLE, |s| {
        !has_problem(s, "overheating")
    });
    let ev = |a: &str, b: &str| (a.to_string(), b.to_string());
    let both = [ev("raised", "overheating"), ev("cleared", "overheating")];
    match cut {
        Cut::Stop => agent.stop(),
        Cut::PowerCut => {
            wait_until("both events on disk during the check-in", &agent, || {
                buffered_problem_events(&lab.data_dir()) == both
            });
            assert!(ctl.with(|s| s.hanging) >= 1, "the check-in still hangs");
            agent.kill9();
        }
    }
    assert!(
        ctl.with(|s| s.hanging) >= 1,
        "ended before the check-in gave up"
    );
    assert_eq!(
        buffered_problem_events(&lab.data_dir()),
        both,
        "\n--- agent log ---\n{}",
        tail(&agent.log_text(), 30)
    );

    // The link is back: the next agent delivers them, once each, in order.
    ctl.with(|s| s.hang = false);
    let agent = AgentProc::start(&config);
    wait_until("both events reach the controller", &agent, || {
        problem_events(&ctl).len() >= 2
    });
    assert_eq!(problem_events(&ctl), both);
}

#[test]
fn a_problem_met_while_a_check_in_hangs_is_buffered_before_the_agent_stops() {
    problem_met_while_a_check_in_hangs(
        "a_problem_met_while_a_check_in_hangs_is_buffered_before_the_agent_stops",
        Cut::Stop,
    );
}

#[test]
fn a_problem_met_while_a_check_in_hangs_is_on_disk_before_the_check_in_gives_up() {
    problem_met_while_a_check_in_hangs(
        "a_problem_met_while_a_check_in_hangs_is_on_disk_before_the_check_in_gives_up",
        Cut::PowerCut,
    );
}
