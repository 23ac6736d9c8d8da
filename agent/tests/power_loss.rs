//! Power loss: the agent is killed with SIGKILL at random instants during updates, at least 100
//! times, and on every other of them killed again while it recovers from that cut (a second
//! power cut during boot). After each restart `current` is the old or the new release, never
//! anything else, the journal is consistent, and once recovered the running containers match
//! `current`.
//!
//! The cuts are shared by two devices (two labs, two agents) cut at the same time by two test
//! threads, so the hundred cuts take about half as long. The instants come from a seeded
//! generator; the run's seed is printed, and `FLEET_POWER_LOSS_SEED=<seed>` replays it.
//! `FLEET_POWER_LOSS_ITERATIONS` changes the total count (`--test-threads=1` runs the devices one
//! after the other).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::git_daemon::free_port;
use support::images::{build_test_images, docker_available};
use support::lab::{idle_on, tail, AgentProc, Lab};

const SETTLE: Duration = Duration::from_secs(120);
/// How long the recovered agent may take to bring the containers in line with `current`.
const CONVERGE: Duration = Duration::from_secs(30);

/// xorshift64*: small, seeded, good enough to spread kill instants.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn read_phase(lab: &Lab) -> String {
    std::fs::read(lab.data_dir().join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["phase"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "none".into())
}

fn wait_log(agent: &AgentProc, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !agent.log_text().contains(needle) {
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for `{needle}` in the agent log:\n{}",
                tail(&agent.log_text(), 60)
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

// The cuts are shared by two devices, each with its own lab and seed, cut at once: two test
// threads, so the run takes about half as long as one device cut a hundred times.
#[test]
fn power_loss_at_random_instants_never_leaves_a_broken_device() {
    power_loss_run("power-loss-a", 0);
}

#[test]
fn power_loss_at_random_instants_never_leaves_a_second_device_broken() {
    power_loss_run("power-loss-b", 1);
}

/// `FLEET_POWER_LOSS_ITERATIONS` cuts in all (default 100), shared by the two devices.
fn power_loss_run(name: &str, device: u64) {
    if !support::git_daemon::git_available(name) || !docker_available(name) {
        return;
    }
    build_test_images();
    // One base seed for the run; each device draws from its own (base + device).
    let base: u64 = std::env::var("FLEET_POWER_LOSS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            // The same base for both test threads of this run: the process start time.
            static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
            *BASE.get_or_init(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
                    | 1
            })
        });
    let seed = base.wrapping_add(device);
    let total: usize = std::env::var("FLEET_POWER_LOSS_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    // Device 0 takes the odd one out.
    let iterations = total / 2 + if device == 0 { total % 2 } else { 0 };
    eprintln!("power-loss test, {name}: {iterations} of {total} kills, seed {seed}; replay the run with FLEET_POWER_LOSS_SEED={base}");
    let mut rng = Rng(seed);

    let lab = Lab::new(name);
    let good = lab.config();
    let mut tags: HashMap<String, &str> = HashMap::new();
    let first = lab.release("v1");
    tags.insert(first.clone(), "v1");
    let mut agent = AgentProc::start(&good);
    agent.wait_for("the first release", SETTLE, |s| idle_on(s, &first));
    let mut current = first;
    let mut hits: BTreeMap<String, usize> = BTreeMap::new();
    // Kills of a recovering agent: before it logged that it had recovered, and after.
    let (mut cut_in_recovery, mut cut_after_recovery) = (0usize, 0usize);
    let dead_endpoint = format!("git://127.0.0.1:{}/fleet.git", free_port());

    for i in 0..iterations {
        let tag = if i % 2 == 0 { "v2" } else { "v1" };
        let new = lab.release(tag);
        tags.insert(new.clone(), tag);
        // Polling is every second, the update then takes a few seconds: cut anywhere in it.
        let delay = Duration::from_millis(rng.below(4500));
        thread::sleep(delay);
        agent.kill9();
        let phase_at_cut = read_phase(&lab);
        *hits.entry(phase_at_cut.clone()).or_default() += 1;

        // Restart with Git unreachable, so the device only recovers and stays where recovery
        // put it while we look.
        let offline = lab.config_with(
            &format!("offline-{i}"),
            std::slice::from_ref(&dead_endpoint),
            &lab.data_dir(),
            "",
        );
        if rng.below(2) == 0 {
            // A second cut, while the agent recovers from the first.
            let mut again = AgentProc::start(&offline);
            thread::sleep(Duration::from_millis(rng.below(600)));
            let recovered = again.log_text().contains("\"recovered\"");
            again.kill9();
            if recovered {
                cut_after_recovery += 1;
            } else {
                cut_in_recovery += 1;
            }
        }
        let recovering = AgentProc::start(&offline);
        wait_log(&recovering, "\"recovered\"", SETTLE);
        let s = recovering.wait_for("the recovered device to be idle", SETTLE, |s| {
            s["phase"] == "idle"
        });
        let now = s["current"].as_str().unwrap_or_default().to_owned();
        let context = format!(
            "iteration {i}, seed {seed}, cut after {delay:?} in phase {phase_at_cut}: status {s:#}\n--- log ---\n{}",
            tail(&recovering.log_text(), 40)
        );
        assert!(
            now == current || now == new,
            "current must be the old or the new release; {context}"
        );
        assert!(
            s["installing"].is_null(),
            "nothing left in flight; {context}"
        );
        assert!(
            s["link_problems"].as_array().is_some_and(|p| p.is_empty()),
            "{context}"
        );
        assert!(s["journal_problem"].is_null(), "{context}");
        assert!(s["safe_mode"].is_null(), "{context}");
        let staging: Vec<_> = std::fs::read_dir(lab.data_dir().join("releases"))
            .expect("releases dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".staging-"))
            .collect();
        assert!(staging.is_empty(), "no staging left; {context}");
        // The engine may still be finishing a request the killed agent made (a stop with its
        // grace period, a create): the recovered agent supervises `current` and converges.
        let want = format!("fleet-test/app:{}", tags[&now]);
        let matches = |containers: &[(String, String, String, String, bool)]| {
            let web: Vec<_> = containers.iter().filter(|c| c.0 == "web").collect();
            let side: Vec<_> = containers.iter().filter(|c| c.0 == "side").collect();
            web.len() == 1 && web[0].1 == want && web[0].4 && side.len() == 1 && side[0].4
        };
        let deadline = Instant::now() + CONVERGE;
        let mut containers = lab.containers();
        while !matches(&containers) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(250));
            containers = lab.containers();
        }
        assert!(
            matches(&containers),
            "running containers must match `current` ({want}) within {CONVERGE:?}: {containers:?}; {context}"
        );
        drop(recovering);

        // Back online: the device converges on the newest release.
        agent = AgentProc::start(&good);
        agent.wait_for(&format!("release of iteration {i}"), SETTLE, |s| {
            idle_on(s, &new)
        });
        current = new;
    }
    eprintln!("power-loss test: journal phase at each cut: {hits:?}");
    eprintln!(
        "power-loss test: {cut_in_recovery} more cuts during boot recovery, {cut_after_recovery} just after it"
    );
    assert!(
        cut_in_recovery > 0 || iterations < 20,
        "no second cut landed during boot recovery; the test did not test it"
    );
    let past_swap =
        hits.get("switching").copied().unwrap_or(0) + hits.get("verifying").copied().unwrap_or(0);
    assert!(
        past_swap > 0,
        "no cut landed between the swap and the verdict ({hits:?}); the test did not test much"
    );
}
