//! A network partition of 24 hours, compressed in time (issue 15, "Network partition"): the real
//! `fleet-controller`, a real `fleet-agent` running a release on the real Docker engine, and
//! between them a loopback TCP proxy that the test freezes (every connection accepted, nothing
//! answered, nothing closed: a dead link, not a refused port).
//!
//! The agent runs through the partition under Debian's libfaketime at `SPEED` times the real
//! rate, its wall and monotonic clocks both: Tokio's timers (the backoff, the request timeout,
//! the check-in interval, the watchers' sampling) run on the sped-up monotonic clock, and
//! libfaketime shortens `epoll_wait`'s timeouts by the same factor, so a faked day passes in a
//! minute. Meanwhile the device makes events the way it does in the field: its CPU overheats
//! and cools down again (a fake thermal zone the watcher samples) a few hundred times, and the
//! agent is restarted (SIGTERM, started again on the same faked clock) three times: more
//! events than one check-in carries.
//!
//! Healed, the agent must deliver every event exactly once and in order (the controller's
//! stored sequence numbers run without a gap or a repeat, the kinds in the order the test made
//! them happen), its buffer drains, the device is online and healthy on its release at the
//! controller, its containers never stopped, every failed check-in was counted, and no retry
//! waited longer than the backoff's 5-minute cap.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleet_controller::config::{ControllerConfig, GitSource};
use fleet_controller::db::Db;
use serde_json::Value;
use support::fleet::{Device, Repo};
use support::git_daemon::git_available;
use support::images::{build_test_images, docker_available};
use support::lab::{idle_on, tail, AgentProc};
use support::partition::Partition;
use support::process::{free_addr, ControllerProcess};

const FLEET: &str = "name: e2e\nrelease_branch: main\nrollout:\n  waves:\n    - { name: canary, select: { ring: canary } }\n    - { name: all, percent: 100 }\n  bake: 1s\n  health_timeout: 90s\n";
const INVENTORY: &str =
    "devices:\n  - id: dev-1\n    labels: { ring: canary }\nstacks:\n  - { name: app, select: {} }\n";
const DEVICE: &str = "dev-1";

/// How much faster than real time the agent's clocks run during the partition.
const SPEED: u32 = 1440;
/// The partition, in the agent's (faked) time.
const DAY: Duration = Duration::from_secs(24 * 3600);
/// Hot/cool cycles of the CPU during the partition: two events each.
const CYCLES: usize = 260;
/// After these cycles the agent is restarted (at about 6, 12 and 18 hours).
const RESTART_AFTER: [usize; 3] = [65, 130, 195];
/// The agent's request timeout (the most it allows): 208 ms of real time at `SPEED`, which a
/// check-in carrying 500 events to a controller on a busy machine needs.
const REQUEST_TIMEOUT_S: u64 = 300;
/// The backoff's cap (`agent/src/controller/backoff.rs`).
const BACKOFF_CAP_MS: u64 = 5 * 60 * 1000;
/// Any wait for something that takes a few seconds at most.
const SETTLE: Duration = Duration::from_secs(60);

/// Real time the faked day takes.
fn partition_real() -> Duration {
    DAY / SPEED
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

async fn get(c: &ControllerProcess, path: &str) -> Value {
    client()
        .get(c.url(path))
        .bearer_auth(&c.viewer)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json")
}

async fn metrics(addr: &str) -> String {
    match client().get(format!("http://{addr}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The value of the series `series` (name and labels, as rendered) in `/metrics`.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Writes the thermal zone as the kernel does (millidegrees), replacing the file at once.
fn set_temperature(sysfs: &Path, millidegrees: u32) {
    let zone = sysfs.join("class/thermal/thermal_zone0");
    std::fs::create_dir_all(&zone).expect("mkdir");
    for (name, text) in [
        ("type", "cpu-thermal\n".to_owned()),
        ("temp", format!("{millidegrees}\n")),
    ] {
        let tmp = zone.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, zone.join(name)).expect("rename");
    }
}

/// Waits until the agent's `/metrics` has `series` at `value`.
async fn wait_metric(agent: &AgentProc, addr: &str, series: &str, value: f64) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let body = metrics(addr).await;
        if sample(&body, series) == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {series} {value}:\n{body}\n--- agent log ---\n{}",
            tail(&agent.log_text(), 60)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every event the controller stored for the device, oldest first, read from its store.
async fn stored_events(db: &Db) -> Vec<Value> {
    let mut events = db
        .device_events(DEVICE, 100_000)
        .await
        .expect("read the stored events");
    events.reverse();
    events
}

/// A short name of a stored event: its kind, and the problem for problem events.
fn kind_of(e: &Value) -> String {
    match e["event"].as_str().unwrap_or("?") {
        k @ ("problem_raised" | "problem_cleared") => {
            format!("{k}:{}", e["problem"].as_str().unwrap_or("?"))
        }
        k => k.to_owned(),
    }
}

/// Events still buffered on the device (files in `events/`, the counter aside).
fn buffered(data: &Path) -> usize {
    std::fs::read_dir(data.join("events"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

/// Where two lists of event kinds part: the index and a few on each side.
fn difference(got: &[String], want: &[String]) -> String {
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let window = |v: &[String]| v[at.saturating_sub(3)..(at + 4).min(v.len())].to_vec();
    format!(
        "{} events, {} expected; from index {at}: got {:?}, expected {:?}",
        got.len(),
        want.len(),
        window(got),
        window(want)
    )
}

/// The kinds of the events buffered on the device, oldest first.
fn buffered_kinds(data: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data.join("events"))
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
        .filter_map(|p| std::fs::read(p).ok())
        .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
        .map(|e| kind_of(&e))
        .collect()
}

/// The agent's environment for libfaketime: its clocks start `offset` ahead of the real time
/// and run `SPEED` times as fast.
fn faked(lib: &str, offset: Duration) -> Vec<(&'static str, String)> {
    vec![
        ("LD_PRELOAD", lib.to_owned()),
        ("FAKETIME", format!("+{}s x{SPEED}", offset.as_secs())),
    ]
}

fn start_agent(config: &Path, env: &[(&'static str, String)]) -> AgentProc {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    AgentProc::start_with_env(config, &env)
}

/// Waits until the device's record at the controller satisfies `pred`.
async fn wait_device(
    c: &ControllerProcess,
    d: &Device,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let v = get(c, &format!("/api/v1/devices/{DEVICE}")).await;
        if pred(&v["device"]) {
            return v["device"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {v:#}\n--- agent log ---\n{}\n--- controller log ---\n{}",
            tail(&d.agent.log_text(), 40),
            tail(&c.log(), 20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every retry delay the agent logged for a failed request to the controller, in ms (a
/// failure is logged at WARN with `retry_in_s` once per kind and every 5 minutes, else at DEBUG
/// with `retry_in_ms`).
fn logged_retry_delays_ms(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            let f = &v["fields"];
            f["retry_in_ms"]
                .as_u64()
                .or_else(|| f["retry_in_s"].as_u64().map(|s| s * 1000))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_long_partition_loses_and_repeats_no_event_and_the_device_resyncs_healthy() {
    const TEST: &str =
        "a_day_long_partition_loses_and_repeats_no_event_and_the_device_resyncs_healthy";
    if !git_available(TEST) || !docker_available(TEST) {
        return;
    }
    let Some(lib) = support::faketime::libfaketime(TEST) else {
        return;
    };
    build_test_images();
    let started = Instant::now();
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::new(root.path(), FLEET, INVENTORY);
    let v1 = repo.release("v1");

    // The controller: devices silent for 20 s are offline; they are told to check in every
    // 10 minutes (0.4 s of the sped-up agent's time).
    let mut cfg = ControllerConfig {
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
    cfg.checkin_interval = Duration::from_secs(600);
    cfg.offline_after = Duration::from_secs(20);
    cfg.reconcile_interval = Duration::from_millis(200);
    let controller = ControllerProcess::start(&cfg).await;
    let db = Db::open(&cfg.database_url()).await.expect("open the store");
    let link = Partition::start(cfg.listen).await;
    let bootstrap = root.path().join("bootstrap-token");
    std::fs::write(&bootstrap, &controller.bootstrap).expect("bootstrap token file");

    // The device, through the link, with its watchers on a fake sysfs tree. Its faked clock
    // runs a day ahead of the controller's by the end: that is the compression, not a skew
    // of the device's clock, so the skew check is widened past it.
    let sysfs = root.path().join("sys");
    set_temperature(&sysfs, 50_000);
    let metrics_addr = format!("127.0.0.1:{}", free_addr().port());
    let mut device = Device::start_with(
        root.path(),
        DEVICE,
        &repo,
        &link.http_url(),
        &bootstrap,
        &format!("  request_timeout: {REQUEST_TIMEOUT_S}s\n  long_poll: 25s\n"),
        &format!(
            "metrics_listen: {metrics_addr}\nwatch:\n  interval: 30s\n  sysfs_root: {}\n  clock_skew_max: 30d\n",
            sysfs.display()
        ),
    );
    let data = device.data_dir();
    // Enrolled, on release 1, healthy at the controller, every event so far stored.
    device
        .agent
        .wait_for("release 1 running", SETTLE, |s| idle_on(s, &v1));
    wait_device(
        &controller,
        &device,
        "the device healthy on release 1",
        |d| d["current"] == v1.as_str() && d["health"] == "healthy" && d["state"] == "online",
    )
    .await;
    let deadline = Instant::now() + SETTLE;
    while buffered(&data) > 0 {
        assert!(Instant::now() < deadline, "the first events never drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = stored_events(&db).await;
    let last_before = before
        .last()
        .and_then(|e| e["seq"].as_u64())
        .expect("events before the partition");
    let containers = device.containers();
    assert!(
        containers.len() == 2 && containers.iter().all(|c| c.3 && c.2 == v1),
        "{containers:?}"
    );

    println!(
        "release 1 running and reported: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Cut the link, and start the day: the agent restarted on the sped-up clock.
    link.freeze();
    let cut_at = Instant::now();
    let accepted_at_cut = link.accepted();
    let faked_now = |at: Instant| (at - cut_at) * SPEED;
    device.agent.stop();
    // A held check-in waits on the controller's (real) clock, longer than the sped-up agent's
    // request timeout: the compressed agent does not long-poll.
    let text = std::fs::read_to_string(&device.config).expect("read the agent's config");
    std::fs::write(
        &device.config,
        text.replace("  long_poll: 25s\n", "  long_poll: 0s\n"),
    )
    .expect("write the agent's config");
    device.agent = start_agent(&device.config, &faked(lib, Duration::ZERO));
    let mut expected: Vec<String> = vec!["agent_started".into()];
    let overheating = "fleet_agent_problem{problem=\"overheating\"}";
    wait_metric(&device.agent, &metrics_addr, overheating, 0.0).await;
    let slot = partition_real() / CYCLES as u32;
    for cycle in 0..CYCLES {
        let due = cut_at + slot * cycle as u32 + slot / 4;
        tokio::time::sleep_until(due.into()).await;
        set_temperature(&sysfs, 85_000);
        wait_metric(&device.agent, &metrics_addr, overheating, 1.0).await;
        expected.push("problem_raised:overheating".into());
        set_temperature(&sysfs, 70_000);
        wait_metric(&device.agent, &metrics_addr, overheating, 0.0).await;
        expected.push("problem_cleared:overheating".into());
        if RESTART_AFTER.contains(&cycle) {
            device.agent.stop();
            let offset = faked_now(Instant::now());
            device.agent = start_agent(&device.config, &faked(lib, offset));
            expected.push("agent_started".into());
            wait_metric(&device.agent, &metrics_addr, overheating, 0.0).await;
        }
    }
    tokio::time::sleep_until((cut_at + partition_real()).into()).await;
    assert!(
        expected.len() > 500,
        "more events than one check-in carries"
    );

    println!(
        "the faked day over: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The end of the day, still cut off: the agent kept trying, counted and reported it.
    let series = "fleet_agent_checkin_failures_total{reason=\"unreachable\"}";
    let deadline = Instant::now() + SETTLE;
    let mut body = metrics(&metrics_addr).await;
    while sample(&body, series).is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        body = metrics(&metrics_addr).await;
    }
    let failed_here = sample(&body, series).unwrap_or(0.0);
    assert!(
        failed_here >= 1.0,
        "check-in failures counted:\n{body}\nagent exited: {:?}\n--- agent log ---\n{}",
        device.agent.exited(),
        tail(&device.agent.log_text(), 30)
    );
    let checkin: Value =
        serde_json::from_slice(&std::fs::read(data.join("checkin.json")).expect("checkin.json"))
            .expect("checkin.json is JSON");
    let consecutive = checkin["consecutive_failures"].as_u64().unwrap_or(0);
    let attempts = link.accepted() - accepted_at_cut;
    // The log of every agent process, appended.
    let delays = logged_retry_delays_ms(&device.agent.log_text());
    println!(
        "partition: {} events made, {consecutive} check-ins failed in a row ({failed_here} by the last agent), {attempts} connections tried, longest retry delay {} s",
        expected.len(),
        delays.iter().max().copied().unwrap_or(0) / 1000
    );
    assert!(
        checkin["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("unreachable")),
        "{checkin:#}"
    );
    assert!(
        consecutive as f64 >= failed_here,
        "checkin.json counts across restarts: {checkin:#}"
    );
    // Every failure was retried within the cap, and the backoff reached it: each attempt
    // waited at most the request timeout plus 5 minutes, so a day holds at least this many.
    assert!(
        delays.len() as u64 >= consecutive,
        "each failure logged with its delay: {} < {consecutive}",
        delays.len()
    );
    assert!(
        delays.iter().all(|d| *d < BACKOFF_CAP_MS),
        "a retry delay above the 5-minute cap: {delays:?}"
    );
    assert!(
        delays.iter().any(|d| *d > BACKOFF_CAP_MS / 4),
        "the backoff grew towards its cap: {delays:?}"
    );
    let at_least = DAY.as_secs() / (REQUEST_TIMEOUT_S + BACKOFF_CAP_MS / 1000) / 2;
    assert!(
        consecutive >= at_least,
        "{consecutive} check-ins in a faked day, fewer than {at_least}"
    );
    assert!(
        attempts >= consecutive / 2,
        "each check-in opened a connection to the dead link: {attempts} for {consecutive}"
    );
    // The controller noticed: silent, so offline; it stored nothing new.
    let d = get(&controller, &format!("/api/v1/devices/{DEVICE}")).await;
    assert_eq!(d["device"]["state"], "offline", "{d:#}");
    assert_eq!(stored_events(&db).await.len(), before.len());
    // Every event made is buffered on disk, in order. At this speed the Docker engine, on
    // real time, looks 1440 times slower to the agent: a restarted agent's first question to
    // it may outlast the 15 s it allows (10 ms of real time), a real `docker_unreachable`
    // raised and cleared at once. Such pairs are allowed among the events the test made.
    // (The last clear goes to disk within a second of the agent's time of being met.)
    let not_docker = |kinds: &[String]| -> Vec<String> {
        kinds
            .iter()
            .filter(|k| !k.ends_with(":docker_unreachable"))
            .cloned()
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while not_docker(&buffered_kinds(&data)) != expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let on_disk = buffered_kinds(&data);
    let made = not_docker(&on_disk);
    assert!(
        made == expected,
        "every event buffered on disk, in order: {}",
        difference(&made, &expected)
    );
    let docker_slow = on_disk.len() - made.len();
    let raised_docker = on_disk
        .iter()
        .filter(|k| *k == "problem_raised:docker_unreachable")
        .count();
    assert_eq!(docker_slow, 2 * raised_docker, "each raised, then cleared");
    let containers = device.containers();
    assert!(
        containers.len() == 2 && containers.iter().all(|c| c.3 && c.2 == v1),
        "the release kept running through the partition: {containers:?}"
    );

    // Heal. The device resyncs: everything delivered, the buffer drained.
    link.heal();
    let healed_at = Instant::now();
    let want = before.len() + on_disk.len();
    let deadline = Instant::now() + SETTLE;
    loop {
        let n = stored_events(&db).await.len();
        if n >= want && buffered(&data) == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not drained: {n} of {want} stored, {} buffered\n--- agent log ---\n{}",
            buffered(&data),
            tail(&device.agent.log_text(), 40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained_in = healed_at.elapsed();
    let all = stored_events(&db).await;
    let seqs: Vec<u64> = all.iter().filter_map(|e| e["seq"].as_u64()).collect();
    let want_seqs: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, want_seqs, "every event once, numbered without a gap");
    let during: Vec<&Value> = all
        .iter()
        .filter(|e| e["seq"].as_u64().is_some_and(|s| s > last_before))
        .collect();
    let kinds: Vec<String> = during.iter().map(|e| kind_of(e)).collect();
    assert!(
        kinds == on_disk,
        "the kinds in the order they happened: {}",
        difference(&kinds, &on_disk)
    );
    let at: Vec<u64> = during.iter().filter_map(|e| e["at_ms"].as_u64()).collect();
    assert!(
        at.windows(2).all(|w| w[0] <= w[1]),
        "recorded in order on the device's clock"
    );
    let span_h = (at[at.len() - 1] - at[0]) as f64 / 3_600_000.0;
    assert!(
        span_h > 20.0,
        "the events spread over the faked day: {span_h:.1} h"
    );

    // The device is back: online and healthy on its release, and it says it caught up.
    wait_device(
        &controller,
        &device,
        "the device online and healthy again",
        |d| d["current"] == v1.as_str() && d["health"] == "healthy" && d["state"] == "online",
    )
    .await;
    let s = device.status();
    assert!(idle_on(&s, &v1), "{s:#}");
    let checkin: Value =
        serde_json::from_slice(&std::fs::read(data.join("checkin.json")).expect("checkin.json"))
            .expect("checkin.json is JSON");
    assert_eq!(checkin["consecutive_failures"], 0, "{checkin:#}");
    let containers = device.containers();
    assert!(
        containers.len() == 2 && containers.iter().all(|c| c.3 && c.2 == v1),
        "{containers:?}"
    );
    assert!(device.agent.exited().is_none(), "the agent still runs");
    println!(
        "healed: {} events delivered ({docker_slow} of them a Docker engine slow for the sped-up clock) in {:.1} s; whole test {:.0} s",
        on_disk.len(),
        drained_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    device.agent.stop();
}
