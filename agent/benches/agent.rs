//! Agent benchmarks against the real binary, git daemons and Docker engine (see BENCHMARKS.md):
//!
//! - commit-to-running latency in standalone mode (push → new container running, and → the
//!   release committed after its health window);
//! - rollback time after a failed health window (the agent's own `rollback_ms`);
//! - `/metrics` scraped during a slow fetch (a release of about a megabyte over a 64 KiB/s link);
//! - idle RSS and CPU over `FLEET_BENCH_IDLE_SECS` (default 600), and peak RSS during updates;
//!   with `FLEET_BENCH_LOKI=1` the idle agent also pushes its logs to a Loki receiver
//!   (`logging.loki`), to measure what that costs.
//!
//! `cargo bench -p fleet-agent --bench agent`; the device build (BENCHMARKS.md):
//! `cargo build --profile device -p fleet-agent && FLEET_AGENT_BIN=target/device/fleet-agent
//! cargo bench -p fleet-agent --bench agent`

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::images::{build_test_images, docker_available};
use support::lab::{idle_on, AgentProc, Lab};

const SETTLE: Duration = Duration::from_secs(120);

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn proc_rss_kb(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn agent_pid(lab: &Lab) -> u32 {
    std::fs::read_to_string(lab.data_dir().join("update.lock"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .expect("the agent writes its pid into update.lock")
}

fn web_running(lab: &Lab, tag: &str) -> bool {
    let want = format!("fleet-test/app:{tag}");
    lab.containers()
        .iter()
        .any(|c| c.0 == "web" && c.1 == want && c.4)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !support::git_daemon::git_available("bench") || !docker_available("bench") {
        return;
    }
    build_test_images();
    let rounds: usize = std::env::var("FLEET_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let idle_secs: u64 = std::env::var("FLEET_BENCH_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);

    println!("agent binary: {}", support::agent_bin());
    let lab = Lab::new("bench");
    let r0 = lab.release("v1");
    let config = lab.config();
    let agent = AgentProc::start(&config);
    agent.wait_for("first release", SETTLE, |s| idle_on(s, &r0));
    let pid = agent_pid(&lab);

    // Commit to running, standalone (poll_interval 1 s, health_window 2 s in the lab).
    let mut to_running = Vec::new();
    let mut to_committed = Vec::new();
    let mut peak_rss = proc_rss_kb(pid).unwrap_or(0);
    for i in 0..rounds {
        let tag = if i % 2 == 0 { "v2" } else { "v1" };
        let sha = lab.release(tag);
        let t0 = Instant::now();
        let mut running = None;
        loop {
            peak_rss = peak_rss.max(proc_rss_kb(pid).unwrap_or(0));
            if running.is_none() && web_running(&lab, tag) {
                running = Some(t0.elapsed());
            }
            if idle_on(&agent.status(), &sha) {
                break;
            }
            assert!(t0.elapsed() < SETTLE, "release {i} did not converge");
            std::thread::sleep(Duration::from_millis(20));
        }
        let committed = t0.elapsed();
        to_running.push(running.unwrap_or(committed).as_secs_f64());
        to_committed.push(committed.as_secs_f64());
    }

    // Rollback after a failed health window: the agent measures from its verdict to the old
    // stack applied again.
    let before = agent.log_text().matches("rollback_ms").count();
    let mut rollback_ms = Vec::new();
    for i in 0..rounds.min(5) {
        let tag = if i % 2 == 0 { "broken" } else { "unhealthy" };
        let sha = lab.release(tag);
        agent.wait_for("rollback", SETTLE, |s| {
            s["last_result"]["release"] == sha.as_str() && s["phase"] == "idle"
        });
        peak_rss = peak_rss.max(proc_rss_kb(pid).unwrap_or(0));
    }
    for line in agent
        .log_text()
        .lines()
        .filter(|l| l.contains("rollback_ms"))
        .skip(before)
    {
        if let Some(ms) = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["fields"]["rollback_ms"].as_f64())
        {
            rollback_ms.push(ms);
        }
    }

    println!(
        "commit to new container running (s): median {:.2}, min {:.2}, max {:.2}, n={}",
        median(&mut to_running.clone()),
        to_running.iter().cloned().fold(f64::MAX, f64::min),
        to_running.iter().cloned().fold(0.0, f64::max),
        to_running.len()
    );
    println!(
        "commit to release committed after its 2 s health window (s): median {:.2}, n={}",
        median(&mut to_committed),
        to_committed.len()
    );
    if !rollback_ms.is_empty() {
        println!(
            "rollback after a failed health window (ms): median {:.0}, max {:.0}, n={}",
            median(&mut rollback_ms.clone()),
            rollback_ms.iter().cloned().fold(0.0, f64::max),
            rollback_ms.len()
        );
    }
    println!(
        "peak agent RSS during updates: {:.1} MB",
        peak_rss as f64 / 1024.0
    );

    // /metrics during a slow fetch: a 64 KiB/s link to the Git server and a release of about
    // a megabyte packed (some fifteen seconds of transfer); scraped every 200 ms until it runs.
    drop(agent);
    {
        let link = lab.cellular_link();
        let addr = format!("127.0.0.1:{}", support::git_daemon::free_port());
        let slow_cfg = lab.config_with("slow", &[link.url("fleet.git")], &lab.data_dir(), "");
        support::lab::listen_metrics(&slow_cfg, &addr);
        let slow = AgentProc::start(&slow_cfg);
        let head = lab.release("v1");
        slow.wait_for("slow-link agent settled", SETTLE, |s| idle_on(s, &head));
        let big = lab.big_release("v2");
        let before = link.passed();
        let t0 = Instant::now();
        let mut during = Vec::new();
        let mut worst = 0.0f64;
        loop {
            let fetching = link.passed() - before > 0 && link.passed() - before < 900_000;
            let s0 = Instant::now();
            let answered = support::prometheus::http_get(&addr, "/metrics").map(|r| r.0);
            let ms = s0.elapsed().as_secs_f64() * 1000.0;
            if fetching {
                assert_eq!(answered, Some(200), "/metrics during the fetch");
                during.push(ms);
                worst = worst.max(ms);
            }
            if idle_on(&slow.status(), &big) {
                break;
            }
            assert!(t0.elapsed() < SETTLE * 2, "the slow fetch did not finish");
            std::thread::sleep(Duration::from_millis(200));
        }
        println!(
            "/metrics scraped during a slow fetch ({:.0} KB over 64 KiB/s, {:.1} s to running): median {:.1} ms, max {:.1} ms, n={}",
            (link.passed() - before) as f64 / 1000.0,
            t0.elapsed().as_secs_f64(),
            median(&mut during.clone()),
            worst,
            during.len()
        );
    }

    // Idle: a fresh agent with the default 60 s poll interval, settled on a release. The
    // device watchers run at their default 15 s interval.
    let loki = (std::env::var("FLEET_BENCH_LOKI").as_deref() == Ok("1"))
        .then(fleet_testkit::loki::LokiReceiver::start);
    let logging = loki
        .as_ref()
        .map(|rx| format!("logging:\n  loki:\n    url: {}\n", rx.url()))
        .unwrap_or_default();
    let idle_cfg = lab.config_with(
        "idle",
        &[lab.primary.url("fleet.git"), lab.mirror.url("fleet.git")],
        &lab.data_dir(),
        &logging,
    );
    let text = std::fs::read_to_string(&idle_cfg)
        .expect("read")
        .replace("poll_interval: 1s", "poll_interval: 60s");
    std::fs::write(&idle_cfg, text).expect("write");
    let idle = AgentProc::start(&idle_cfg);
    let head = lab.release("v1");
    idle.wait_for("idle agent settled", SETTLE, |s| idle_on(s, &head));
    std::thread::sleep(Duration::from_secs(5));
    let pid = agent_pid(&lab);
    let t0 = Instant::now();
    let c0 = proc_cpu_ticks(pid).unwrap_or(0);
    let mut rss = Vec::new();
    while t0.elapsed() < Duration::from_secs(idle_secs) {
        rss.push(proc_rss_kb(pid).unwrap_or(0) as f64 / 1024.0);
        std::thread::sleep(Duration::from_secs(5));
    }
    let ticks = proc_cpu_ticks(pid).unwrap_or(0) - c0;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = ticks as f64 / 100.0 / secs * 100.0;
    println!(
        "idle over {:.0} s{}: RSS median {:.1} MB, max {:.1} MB; CPU {:.3}% of one core ({} ticks)",
        secs,
        loki.as_ref()
            .map(|rx| format!(" with logging.loki ({} lines pushed)", rx.lines().len()))
            .unwrap_or_default(),
        median(&mut rss.clone()),
        rss.iter().cloned().fold(0.0, f64::max),
        cpu,
        ticks
    );
}
