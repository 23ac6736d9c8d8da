//! Controller check-in benchmark (BENCHMARKS.md, issue 4), against the real `fleet-controller`
//! binary as shipped (the release build Cargo makes for `cargo bench`) on SQLite, or on
//! PostgreSQL with `FLEET_BENCH_STORE=postgres` (a fresh database on the server of
//! `FLEET_TEST_POSTGRES_URL`, as the tests use: `scripts/test-postgres start`):
//!
//! - enrolls `FLEET_BENCH_DEVICES` (default 10,000) simulated devices with a bootstrap token,
//!   then brings every one of them onto a release through a real rollout (fleet repository on a
//!   loopback `git daemon`, signed push webhook), so the measured check-ins are the steady state
//!   of a fleet in production: the answer names the release the device runs;
//! - while the rollout starts its waves, check-ins at `FLEET_BENCH_RATE` for
//!   `FLEET_BENCH_ROLLOUT_SECS` (default 120), with the engine's pass times over that while;
//!   then as fast as possible until every device runs the release;
//! - drives full check-ins (each device's own token and request; one in 20 carries two events)
//!   (a) open loop at `FLEET_BENCH_RATE` per second (default 1,667: 100,000 devices every 60 s),
//!   spread round-robin over the devices, and (b) as fast as possible with
//!   `FLEET_BENCH_CONCURRENCY` (default 64) requests in flight; each for `FLEET_BENCH_SECS`
//!   (default 60), `FLEET_BENCH_RUNS` times (default 3), medians reported;
//! - latency is per request as the device sees it: request built and sent, answer read.
//!
//! The load generator runs on the same machine as the controller and takes CPU from it; its
//! own CPU use is printed. It is a benchmark, not a test: nothing is asserted about speed, but
//! any failed request (error status, refused connection, timeout) fails it loudly.
//!
//! `cargo bench -p fleet-controller --bench checkin`

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_client::sim::{FailureRule, SimDevice};
use fleet_config::protocol::{EventKind, UpdatePhase};
use fleet_controller::config::{ControllerConfig, GitSource};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use support::fleet_repo::{device_ids, FleetRepo};
use support::process::{binary, config_yaml, free_addr, run_cli};

fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("{name}={s} is not a valid value")),
        Err(_) => default,
    }
}

/// `/proc/PID/status` VmRSS, kB.
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// utime + stime of a process (`self` or a pid), in clock ticks.
fn cpu_ticks(pid: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some((_, after)) = stat.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// Busy clock ticks of the whole machine, all CPUs (`/proc/stat`).
fn machine_busy_ticks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_owned();
            let f: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal
            Some(f.iter().take(8).sum::<u64>() - f.get(3)? - f.get(4)?)
        })
        .unwrap_or(0)
}

fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The controller process; killed on drop.
struct Controller {
    child: Child,
    pid: u32,
    base: String,
    log: PathBuf,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Controller {
    fn start(config: &Path, base: String, log: PathBuf) -> Controller {
        let f = std::fs::File::create(&log).expect("controller log file");
        let child = Command::new(binary())
            .arg("--config")
            .arg(config)
            .arg("serve")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("spawn fleet-controller serve");
        let pid = child.id();
        Controller {
            child,
            pid,
            base,
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn metrics(&self, client: &reqwest::Client) -> Option<String> {
        let r = client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.text().await.ok()
    }

    /// Waits until it answers and leads (it is alone).
    async fn wait_leader(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "fleet-controller exited at start ({status}):\n{}",
                    self.log_text()
                );
            }
            if let Some(m) = self.metrics(client).await {
                if m.contains("\nfleet_controller_leader 1") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "fleet-controller not ready after 60 s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A metric's value in Prometheus text (first sample whose line starts with `name`).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The devices and what every check-in needs.
struct Fleet {
    devices: Vec<tokio::sync::Mutex<SimDevice>>,
    client: reqwest::Client,
    base: String,
    fails: FailureRule,
    /// Check-ins so far (one in 20 carries events).
    count: AtomicU64,
    /// The next device for the round-robin of the fixed-rate mode.
    cursor: AtomicUsize,
    events: bool,
}

/// Latencies (µs) and errors of one run.
#[derive(Default)]
struct Recorder {
    micros: Mutex<Vec<u64>>,
    errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

impl Recorder {
    fn record(&self, r: Result<Duration, String>) {
        match r {
            Ok(d) => self
                .micros
                .lock()
                .expect("recorder lock")
                .push(d.as_micros() as u64),
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_errors.lock().expect("recorder lock");
                if first.len() < 5 {
                    first.push(e);
                }
            }
        }
    }
}

impl Fleet {
    /// One full check-in of device `i`; its latency as the device sees it.
    async fn checkin(&self, i: usize) -> Result<Duration, String> {
        let mut d = self.devices[i].lock().await;
        let k = self.count.fetch_add(1, Ordering::Relaxed);
        if self.events && k % 20 == 19 {
            d.push_event(EventKind::GitFetchFailed {
                endpoint: "git://mirror.fleet.invalid/fleet.git".into(),
                error: "connection timed out after 10s".into(),
            });
            let current = d.current.clone();
            d.push_event(EventKind::PhaseChanged {
                phase: UpdatePhase::Idle,
                release: current,
            });
        }
        let t = Instant::now();
        d.checkin(&self.client, &self.base, &self.fails)
            .await
            .map_err(|e| format!("{}: {e}", d.id))?;
        Ok(t.elapsed())
    }
}

/// What one run measured.
struct Run {
    secs: f64,
    micros: Vec<u64>,
    errors: u64,
    first_errors: Vec<String>,
    /// Controller and load generator CPU, in cores (1.0 = one core busy all the time).
    controller_cores: f64,
    generator_cores: f64,
    /// Everything else on the machine (other people's builds), in cores.
    other_cores: f64,
    /// Fixed-rate mode: the most the generator fell behind its schedule, ms.
    max_lag_ms: f64,
    /// Controller-side mean handling time (its own histogram), ms.
    server_mean_ms: f64,
}

impl Run {
    fn rps(&self) -> f64 {
        self.micros.len() as f64 / self.secs
    }
    fn pct(&self, p: f64) -> f64 {
        if self.micros.is_empty() {
            return 0.0;
        }
        let i = ((p * self.micros.len() as f64).ceil() as usize).clamp(1, self.micros.len()) - 1;
        self.micros[i] as f64 / 1000.0
    }
    fn max(&self) -> f64 {
        self.micros.last().copied().unwrap_or(0) as f64 / 1000.0
    }
}

struct Probe {
    pid: u32,
    tck: f64,
}

impl Probe {
    async fn measure<F, Fut>(&self, ctrl: &Controller, fleet: &Fleet, body: F) -> Run
    where
        F: FnOnce(Arc<Recorder>) -> Fut,
        Fut: std::future::Future<Output = (f64, f64)>,
    {
        let before = ctrl.metrics(&fleet.client).await.unwrap_or_default();
        let rec = Arc::new(Recorder::default());
        let c0 = cpu_ticks(&self.pid.to_string());
        let g0 = cpu_ticks("self");
        let m0 = machine_busy_ticks();
        let t0 = Instant::now();
        let (secs, max_lag_ms) = body(rec.clone()).await;
        let wall = t0.elapsed().as_secs_f64();
        let c1 = cpu_ticks(&self.pid.to_string());
        let g1 = cpu_ticks("self");
        let m1 = machine_busy_ticks();
        let after = ctrl.metrics(&fleet.client).await.unwrap_or_default();
        let n = metric(&after, "fleet_checkin_duration_seconds_count")
            - metric(&before, "fleet_checkin_duration_seconds_count");
        let s = metric(&after, "fleet_checkin_duration_seconds_sum")
            - metric(&before, "fleet_checkin_duration_seconds_sum");
        let mut micros = std::mem::take(&mut *rec.micros.lock().expect("recorder lock"));
        micros.sort_unstable();
        let first_errors = rec.first_errors.lock().expect("recorder lock").clone();
        Run {
            secs,
            micros,
            errors: rec.errors.load(Ordering::Relaxed),
            first_errors,
            controller_cores: (c1 - c0) as f64 / self.tck / wall,
            generator_cores: (g1 - g0) as f64 / self.tck / wall,
            other_cores: (m1.saturating_sub(m0) as f64 - (c1 - c0) as f64 - (g1 - g0) as f64)
                .max(0.0)
                / self.tck
                / wall,
            max_lag_ms,
            server_mean_ms: if n > 0.0 { s / n * 1000.0 } else { 0.0 },
        }
    }
}

/// Open loop: `rate` check-ins per second for `secs`, each device in turn, not waiting for
/// answers. Returns the time until the last answer (s) and the generator's worst lag behind schedule (ms).
async fn fixed_rate(fleet: Arc<Fleet>, rec: Arc<Recorder>, rate: f64, secs: f64) -> (f64, f64) {
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let start = Instant::now();
    let mut issued: u64 = 0;
    let mut max_lag: f64 = 0.0;
    loop {
        tick.tick().await;
        let elapsed = start.elapsed().as_secs_f64();
        if elapsed >= secs {
            break;
        }
        let due = (elapsed * rate) as u64;
        if due > issued {
            // The oldest request due now was due at issued/rate.
            max_lag = max_lag.max((elapsed - issued as f64 / rate) * 1000.0);
        }
        while issued < due {
            let i = fleet.cursor.fetch_add(1, Ordering::Relaxed) % fleet.devices.len();
            let (f, r) = (fleet.clone(), rec.clone());
            tasks.spawn(async move { r.record(f.checkin(i).await) });
            issued += 1;
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    // Answers still arriving after the window count, over the time they took.
    (start.elapsed().as_secs_f64(), max_lag)
}

/// Closed loop: `concurrency` workers, each sending the next device's check-in as soon as its
/// last one is answered, for `secs` (or, with `once`, until every device checked in once).
async fn flat_out(
    fleet: Arc<Fleet>,
    rec: Arc<Recorder>,
    concurrency: usize,
    secs: f64,
    once: bool,
) -> (f64, f64) {
    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (f, r, next, stop) = (fleet.clone(), rec.clone(), next.clone(), stop.clone());
        workers.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if once && k >= f.devices.len() {
                    break;
                }
                if !once && start.elapsed().as_secs_f64() >= secs {
                    break;
                }
                r.record(f.checkin(k % f.devices.len()).await);
            }
        });
    }
    while workers.join_next().await.is_some() {}
    stop.store(true, Ordering::Relaxed);
    (start.elapsed().as_secs_f64(), 0.0)
}

fn webhook_signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC key");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn print_run(label: &str, i: usize, r: &Run) {
    println!(
        "{label:<22} {:>3} {:>8.0} {:>7.2} {:>7.2} {:>7.2} {:>8.1} {:>7} {:>8.2} {:>9.2} {:>8.2} {:>9.2} {:>8.1}",
        i + 1,
        r.rps(),
        r.pct(0.50),
        r.pct(0.90),
        r.pct(0.99),
        r.max(),
        r.errors,
        r.server_mean_ms,
        r.controller_cores,
        r.generator_cores,
        r.other_cores,
        r.max_lag_ms,
    );
}

fn print_median(label: &str, runs: &[Run]) {
    let m = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
    println!(
        "{label:<22} med {:>8.0} {:>7.2} {:>7.2} {:>7.2} {:>8.1} {:>7} {:>8.2} {:>9.2} {:>8.2} {:>9.2} {:>8.1}",
        m(&|r| r.rps()),
        m(&|r| r.pct(0.50)),
        m(&|r| r.pct(0.90)),
        m(&|r| r.pct(0.99)),
        runs.iter().map(Run::max).fold(0.0, f64::max),
        runs.iter().map(|r| r.errors).sum::<u64>(),
        m(&|r| r.server_mean_ms),
        m(&|r| r.controller_cores),
        m(&|r| r.generator_cores),
        m(&|r| r.other_cores),
        runs.iter().map(|r| r.max_lag_ms).fold(0.0, f64::max),
    );
}

/// What the controller warned about so far, each kind once with how often (the first 60
/// characters of its message after the level).
fn print_warnings(ctrl: &Controller) {
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for l in ctrl.log_text().lines() {
        if let Some(i) = l.find(" WARN ").or_else(|| l.find(" ERROR ")) {
            let msg: String = l[i..].chars().take(120).collect();
            *kinds.entry(msg).or_default() += 1;
        }
    }
    for (k, n) in kinds.iter().take(20) {
        println!("  controller log: {n} x {k}");
    }
}

fn fail_on_errors(what: &str, runs: &[&Run]) {
    let errors: u64 = runs.iter().map(|r| r.errors).sum();
    if errors > 0 {
        let firsts: Vec<&String> = runs.iter().flat_map(|r| &r.first_errors).collect();
        panic!("{what}: {errors} check-ins failed; first ones: {firsts:#?}");
    }
}

fn main() {
    // `cargo test --all-targets` runs this too (without `--bench`): nothing to do then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if !support::git_daemon::git_available("checkin bench") {
        return;
    }
    let devices: usize = knob("FLEET_BENCH_DEVICES", 10_000);
    let secs: f64 = knob("FLEET_BENCH_SECS", 60.0);
    let runs: usize = knob("FLEET_BENCH_RUNS", 3);
    let rate: f64 = knob("FLEET_BENCH_RATE", 100_000.0 / 60.0);
    let concurrency: usize = knob("FLEET_BENCH_CONCURRENCY", 64);
    let rollout_secs: f64 = knob("FLEET_BENCH_ROLLOUT_SECS", 120.0);
    let store: String = knob("FLEET_BENCH_STORE", "sqlite".to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(bench(Knobs {
        devices,
        secs,
        runs,
        rate,
        concurrency,
        rollout_secs,
        store,
    }));
}

struct Knobs {
    devices: usize,
    secs: f64,
    runs: usize,
    rate: f64,
    concurrency: usize,
    rollout_secs: f64,
    store: String,
}

async fn bench(k: Knobs) {
    let Knobs {
        devices,
        secs,
        runs,
        rate,
        concurrency,
        rollout_secs,
        store,
    } = k;
    let dir = tempfile::Builder::new()
        .prefix("checkin-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");
    let repo = FleetRepo::new(dir.path(), devices, (devices / 100).max(1), "0s");
    let secret = b"checkin bench webhook secret";
    let data_dir = dir.path().join("controller");
    std::fs::create_dir_all(&data_dir).expect("data dir");
    let secret_file = data_dir.join("webhook.secret");
    std::fs::write(&secret_file, secret).expect("webhook secret");
    let database_url = match store.as_str() {
        "sqlite" => None,
        "postgres" => Some(
            support::postgres::fresh_database("checkin_bench")
                .await
                .unwrap_or_else(|| {
                    panic!("FLEET_BENCH_STORE=postgres needs FLEET_TEST_POSTGRES_URL")
                }),
        ),
        other => panic!("FLEET_BENCH_STORE={other}: sqlite or postgres"),
    };
    // Production defaults (60 s check-in interval, 1 s reconcile, 30 s Git poll), loopback only.
    let cfg = ControllerConfig {
        database_url: database_url.clone(),
        listen: free_addr(),
        data_dir: data_dir.clone(),
        git: Some(GitSource {
            endpoints: vec![repo.url()],
            branch: "main".into(),
            poll_interval: Duration::from_secs(30),
            failover_timeout: Duration::from_secs(10),
        }),
        ..ControllerConfig::default()
    };
    assert!(cfg.listen.ip().is_loopback());
    let config = data_dir.join("controller.yaml");
    std::fs::write(
        &config,
        format!(
            // Every simulated device shares 127.0.0.1, where in production each has its own
            // address: the per-address cap is raised to the whole connection cap, or the
            // open-loop generator's connections are refused whenever answers fall behind.
            "{}webhook_secret_file: \"{}\"\nlimits:\n  max_connections_per_ip: 4096\n",
            config_yaml(&cfg),
            secret_file.display()
        ),
    )
    .expect("write config");
    let bootstrap = run_cli(&config, &["bootstrap-token", "create"])
        .trim()
        .to_owned();
    let base = format!("http://{}", cfg.listen);
    let mut ctrl = Controller::start(&config, base.clone(), data_dir.join("controller.log"));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client");
    ctrl.wait_leader(&client).await;
    let tck = clock_ticks_per_sec();
    let probe = Probe { pid: ctrl.pid, tck };

    // RSS sampled every 250 ms for the whole benchmark.
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, on, pid) = (peak_rss.clone(), sampling.clone(), ctrl.pid);
        tokio::spawn(async move {
            while on.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kb(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let rss_idle = rss_kb(ctrl.pid);

    println!(
        "fleet-controller check-in benchmark: {} ({}), {}, {devices} devices, \
         load generator in this process on the same machine ({} CPUs)",
        binary().display(),
        std::env::consts::ARCH,
        match &database_url {
            Some(u) => format!("PostgreSQL at {u}"),
            None => format!("SQLite in {}", data_dir.display()),
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    // Enrollment with the bootstrap token, `concurrency` at a time.
    let ids = device_ids(devices);
    let t = Instant::now();
    let c0 = cpu_ticks(&ctrl.pid.to_string());
    let enrolled: Vec<SimDevice> = {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        stream::iter(ids.iter().map(|id| {
            let (client, base, bootstrap) = (&client, &base, &bootstrap);
            async move {
                let mut d = SimDevice::enroll(client, base, bootstrap, id).await?;
                d.update_steps = 1;
                Ok::<_, fleet_client::sim::SimError>(d)
            }
        }))
        .buffer_unordered(concurrency)
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("enrollment failed: {e}"))
    };
    let enroll_secs = t.elapsed().as_secs_f64();
    let enroll_cores = (cpu_ticks(&ctrl.pid.to_string()) - c0) as f64 / tck / enroll_secs.max(1e-9);
    println!(
        "enrollment: {devices} devices in {enroll_secs:.1} s ({:.0}/s, {concurrency} at a time; controller {enroll_cores:.2} cores)",
        devices as f64 / enroll_secs
    );
    let rss_enrolled = rss_kb(ctrl.pid);

    let fleet = Arc::new(Fleet {
        devices: enrolled.into_iter().map(tokio::sync::Mutex::new).collect(),
        client: client.clone(),
        base: base.clone(),
        fails: Arc::new(|_, _| false),
        count: AtomicU64::new(0),
        cursor: AtomicUsize::new(0),
        events: true,
    });

    // A fleet in production checks in before a release comes: one round of every device
    // (its first check-in after enrolling: telemetry sampled, events stored), not measured.
    let warm = probe
        .measure(&ctrl, &fleet, |rec| {
            flat_out(fleet.clone(), rec, concurrency, 0.0, true)
        })
        .await;
    println!(
        "first check-in of every device: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
        warm.rps(),
        warm.pct(0.50),
        warm.pct(0.99),
        warm.errors
    );
    fail_on_errors("first check-ins", &[&warm]);

    // A release, announced by a signed webhook, rolled out (waves: 1 % canaries, 5 %, 25 %,
    // 100 %, no bake) by rounds of check-ins until every device runs it.
    let sha = repo.release("v1");
    let body = br#"{"ref":"refs/heads/main"}"#;
    let r = client
        .post(format!("{base}/api/v1/webhook"))
        .header(
            "X-Hub-Signature-256",
            format!("sha256={}", webhook_signature(secret, body)),
        )
        .header("Content-Type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .expect("webhook");
    assert!(r.status().is_success(), "webhook refused: {}", r.status());
    let t = Instant::now();
    let engine = |m: &str| {
        format!(
            "{:.0} passes, last {:.1} ms, longest {:.1} ms, {:.0} longer than reconcile_interval",
            metric(m, "fleet_engine_passes_total"),
            metric(m, "fleet_engine_pass_seconds") * 1e3,
            metric(m, "fleet_engine_pass_max_seconds") * 1e3,
            metric(m, "fleet_engine_slow_passes_total")
        )
    };
    // The production load while the rollout starts its waves: the devices check in at the
    // fixed rate and take the release as they are told.
    if rollout_secs > 0.0 {
        let run = probe
            .measure(&ctrl, &fleet, |rec| {
                fixed_rate(fleet.clone(), rec, rate, rollout_secs)
            })
            .await;
        println!(
            "\nmode                   run    req/s  p50 ms  p90 ms  p99 ms   max ms  errors  srv ms  ctrl cpu  gen cpu  other cpu  lag ms"
        );
        print_run(&format!("(r) {rate:.0}/s in rollout"), 0, &run);
        let mut on_release = 0;
        for d in &fleet.devices {
            if d.lock().await.current.as_ref().map(|r| r.as_str()) == Some(sha.as_str()) {
                on_release += 1;
            }
        }
        let m = ctrl.metrics(&client).await.unwrap_or_default();
        println!(
            "during the rollout ({rollout_secs:.0} s at {rate:.0}/s): {on_release} of {devices} devices on the release; engine: {}; RSS {:.1} MB",
            engine(&m),
            rss_kb(ctrl.pid) as f64 / 1024.0
        );
        print_warnings(&ctrl);
        // Reported, not fatal: the rollout goes on below either way.
        if run.errors > 0 {
            println!(
                "check-ins during the rollout: {} failed; first ones: {:#?}",
                run.errors, run.first_errors
            );
        }
    }
    let mut rounds = 0;
    let mut rollout_checkins = 0;
    loop {
        let run = probe
            .measure(&ctrl, &fleet, |rec| {
                flat_out(fleet.clone(), rec, concurrency, 0.0, true)
            })
            .await;
        fail_on_errors("rollout", &[&run]);
        rounds += 1;
        rollout_checkins += run.micros.len();
        let mut on_release = 0;
        for d in &fleet.devices {
            if d.lock().await.current.as_ref().map(|r| r.as_str()) == Some(sha.as_str()) {
                on_release += 1;
            }
        }
        let m = ctrl.metrics(&client).await.unwrap_or_default();
        let completed = metric(&m, "fleet_rollouts{state=\"completed\"}") >= 1.0;
        if on_release == devices && completed {
            break;
        }
        assert!(
            rounds < 40,
            "the rollout did not finish in 40 rounds ({on_release} of {devices} devices on {sha}):\n{}",
            ctrl.log_text()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    println!(
        "rollout of {} to {devices} devices: {rounds} rounds, {rollout_checkins} check-ins in {:.1} s",
        &sha[..12],
        t.elapsed().as_secs_f64()
    );
    let rss_rolled_out = rss_kb(ctrl.pid);
    let m = ctrl.metrics(&client).await.unwrap_or_default();
    println!("rollout engine during the rollout: {}", engine(&m));

    println!(
        "\nmode                   run    req/s  p50 ms  p90 ms  p99 ms   max ms  errors  srv ms  ctrl cpu  gen cpu  other cpu  lag ms"
    );
    let mut results: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
    let rate_label = format!("(a) fixed {rate:.0}/s");
    let flat_label = format!("(b) flat out, {concurrency}");
    for i in 0..runs {
        let run = probe
            .measure(&ctrl, &fleet, |rec| {
                fixed_rate(fleet.clone(), rec, rate, secs)
            })
            .await;
        print_run(&rate_label, i, &run);
        results.entry("a").or_default().push(run);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let run = probe
            .measure(&ctrl, &fleet, |rec| {
                flat_out(fleet.clone(), rec, concurrency, secs, false)
            })
            .await;
        print_run(&flat_label, i, &run);
        results.entry("b").or_default().push(run);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // No check-ins: what is left is the engine's periodic pass over every device.
    let idle_secs = 15.0;
    let c0 = cpu_ticks(&ctrl.pid.to_string());
    tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
    let idle_cores = (cpu_ticks(&ctrl.pid.to_string()) - c0) as f64 / tck / idle_secs;
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let a = results.remove("a").unwrap_or_default();
    let b = results.remove("b").unwrap_or_default();
    print_median(&rate_label, &a);
    print_median(&flat_label, &b);
    println!(
        "(medians over {runs} runs of {secs:.0} s; max and errors over all runs; srv ms: the \
         controller's own mean handling time; cpu in cores: the controller, this load generator, \
         everything else on the machine; lag: the generator's worst delay behind its schedule)"
    );
    println!(
        "controller RSS: {:.1} MB idle, {:.1} MB after enrollment, {:.1} MB after the rollout, \
         {:.1} MB at the end, {:.1} MB peak",
        rss_idle as f64 / 1024.0,
        rss_enrolled as f64 / 1024.0,
        rss_rolled_out as f64 / 1024.0,
        rss_kb(ctrl.pid) as f64 / 1024.0,
        peak_rss.load(Ordering::Relaxed) as f64 / 1024.0
    );
    println!(
        "controller CPU with {devices} devices and no check-ins ({idle_secs:.0} s): {idle_cores:.3} cores"
    );
    let m = ctrl.metrics(&client).await.unwrap_or_default();
    println!("rollout engine at the end: {}", engine(&m));
    let all: Vec<&Run> = a.iter().chain(b.iter()).collect();
    fail_on_errors("benchmark", &all);
}
