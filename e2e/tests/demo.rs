//! The demo, scripted headless: `fleet-demo run` (git daemons, the controller, three real
//! agents on Docker as the canaries, 200 simulated devices), then
//! - its second release converges on all 203 devices through the waves;
//! - a release whose health check fails fails on the canaries, the rollout halts, the canaries
//!   run the previous release again, and no other device ever receives it;
//! - an emergency stop holds every device (a new release reaches nobody) until resume;
//! - Ctrl-C stops everything and removes every container the demo created.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::bins::bins;
use support::git_daemon::git_available;
use support::images::docker_available;
use support::lab::status as agent_status;
use support::process::free_addr;

const SIMULATED: usize = 200;
const REAL: [&str; 3] = ["pi-lab-01", "pi-lab-02", "pi-lab-03"];
const TOTAL: usize = SIMULATED + REAL.len();
const LIMIT: Duration = Duration::from_secs(300);

/// The running demo: its process, its output lines, what it announced.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    dir: PathBuf,
    url: String,
    token: String,
    password: String,
    namespaces: Vec<String>,
    /// The demo's lab CA: the controller serves HTTPS.
    ca: PathBuf,
    client: reqwest::Client,
}

/// A client that trusts only the demo's lab CA and follows no redirect.
fn trusting(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).expect("the demo's CA");
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .tls_built_in_root_certs(false);
    for c in reqwest::Certificate::from_pem_bundle(&pem).expect("PEM") {
        b = b.add_root_certificate(c);
    }
    b.build().expect("client")
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

impl Demo {
    fn start(dir: &Path) -> Demo {
        let listen = free_addr();
        let mut child = Command::new(&bins().demo)
            .args(["run", "--headless", "--simulated"])
            .arg(SIMULATED.to_string())
            .args(["--bake", "2s", "--listen"])
            .arg(listen.to_string())
            .arg("--dir")
            .arg(dir)
            .arg("--instance")
            .arg(format!("e2e{}", std::process::id()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fleet-demo");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut demo = Demo {
            child,
            lines: rx,
            seen: Vec::new(),
            dir: dir.to_owned(),
            url: String::new(),
            token: String::new(),
            password: String::new(),
            namespaces: Vec::new(),
            ca: PathBuf::new(),
            client: support::client(),
        };
        let ready = demo.wait_line("FLEET_DEMO ready");
        demo.url = field(&ready, "url").expect("url").to_owned();
        demo.token = field(&ready, "token").expect("token").to_owned();
        demo.password = field(&ready, "password").expect("password").to_owned();
        demo.namespaces = field(&ready, "namespaces")
            .expect("namespaces")
            .split(',')
            .map(str::to_owned)
            .collect();
        demo.ca = PathBuf::from(field(&ready, "ca").expect("ca"));
        assert!(
            demo.url.starts_with("https://"),
            "the demo serves HTTPS: {ready}"
        );
        demo.client = trusting(&demo.ca);
        demo
    }

    /// The dashboard's overview page, logged in as admin with the printed password.
    async fn dashboard_overview(&self) -> String {
        let http = trusting(&self.ca);
        let cookie =
            support::dashboard::session_cookie_with(&http, &self.url, "admin", &self.password)
                .await;
        http.get(format!("{}/", self.url))
            .header("cookie", cookie)
            .send()
            .await
            .expect("overview")
            .text()
            .await
            .expect("html")
    }

    /// Waits for an output line starting with `prefix`.
    fn wait_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.min(Duration::from_secs(1))) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("fleet-demo ended before `{prefix}`:\n{}", self.tail())
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.drain();
                panic!(
                    "fleet-demo exited ({status}) before `{prefix}`:\n{}",
                    self.tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no `{prefix}` from fleet-demo:\n{}",
                self.tail()
            );
        }
    }

    fn drain(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
    }

    fn tail(&mut self) -> String {
        self.drain();
        let n = self.seen.len();
        self.seen[n.saturating_sub(40)..].join("\n")
    }

    async fn get(&self, path: &str) -> Value {
        self.client
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json")
    }

    async fn rollout(&self, sha: &str) -> Value {
        self.get(&format!("/api/v1/rollouts/r-{}", &sha[..12]))
            .await
    }

    /// Waits until the rollout of `sha` is in `state`.
    async fn wait_rollout(&mut self, sha: &str, state: &str) -> Value {
        let deadline = Instant::now() + LIMIT;
        loop {
            self.drain();
            let r = self.rollout(sha).await;
            if r["state"] == state {
                return r;
            }
            if Instant::now() > deadline {
                panic!(
                    "rollout of {sha} never {state}: {r:#}\n--- demo output\n{}",
                    self.tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Devices by the release they run, from the controller.
    async fn running(&self) -> BTreeMap<String, String> {
        self.get("/api/v1/devices")
            .await
            .as_array()
            .expect("devices")
            .iter()
            .map(|d| {
                (
                    d["id"].as_str().unwrap_or("?").to_owned(),
                    d["current"].as_str().unwrap_or("none").to_owned(),
                )
            })
            .collect()
    }

    async fn wait_all_on(&mut self, sha: &str) {
        let deadline = Instant::now() + LIMIT;
        loop {
            let running = self.running().await;
            let on = running.values().filter(|r| *r == sha).count();
            if running.len() == TOTAL && on == TOTAL {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{on} of {} devices on {sha}\n--- demo output\n{}",
                    running.len(),
                    self.tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// `fleet-demo release --dir DIR [--bad]`: the new release's sha.
    fn release(&self, bad: bool) -> String {
        let mut c = Command::new(&bins().demo);
        c.arg("release").arg("--dir").arg(&self.dir);
        if bad {
            c.arg("--bad");
        }
        let out = c.output().expect("fleet-demo release");
        assert!(
            out.status.success(),
            "fleet-demo release: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .nth(2)
            .unwrap_or_else(|| panic!("no sha in {text:?}"))
            .to_owned()
    }

    fn fleetctl(&self, args: &[&str]) -> String {
        let out = Command::new(&bins().fleetctl)
            .args(args)
            .env("FLEET_URL", &self.url)
            .env("FLEET_TOKEN", &self.token)
            .env("FLEET_CA_FILE", &self.ca)
            .output()
            .expect("fleetctl");
        assert!(
            out.status.success(),
            "fleetctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `fleet-agent status` of a real device.
    fn agent(&self, id: &str) -> Value {
        agent_status(&self.dir.join("devices").join(id).join("agent.yaml"))
    }

    /// Every release any device ever reported starting or finishing, by device.
    async fn releases_ever_touched(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for id in self.running().await.keys() {
            let d = self.get(&format!("/api/v1/devices/{id}")).await;
            out.insert(id.clone(), d["events"].to_string());
        }
        out
    }

    fn containers(&self, ns: &str) -> Vec<String> {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=fleet.namespace={ns}"))
            .output()
            .expect("docker ps");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // A failed test still cleans up: the demo's own Ctrl-C path, then force.
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .arg("-INT")
                .arg(self.child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(90);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_rolls_out_halts_a_bad_release_and_holds_on_the_emergency_stop() {
    let test = "the_demo_rolls_out_halts_a_bad_release_and_holds_on_the_emergency_stop";
    if !git_available(test) || !docker_available(test) {
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let mut demo = Demo::start(&root.path().join("demo"));

    // 0. HTTPS: fleetctl trusting the lab CA works (every fleetctl call below); without it the
    // certificate is refused, and the message says so.
    let out = Command::new(&bins().fleetctl)
        .arg("status")
        .env("FLEET_URL", &demo.url)
        .env("FLEET_TOKEN", &demo.token)
        .env_remove("FLEET_CA_FILE")
        .output()
        .expect("fleetctl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "an untrusted certificate was accepted"
    );
    assert!(
        err.contains("does not verify") && err.contains("--ca-file"),
        "{err}"
    );
    assert!(demo.fleetctl(&["status"]).contains("devices:"));

    // 1. The demo's own second release reaches all 203 devices through the waves.
    let released = demo.wait_line("FLEET_DEMO released");
    let good = field(&released, "sha").expect("sha").to_owned();
    let r = demo.wait_rollout(&good, "completed").await;
    demo.wait_all_on(&good).await;
    let names: Vec<&str> = r["waves"]
        .as_array()
        .expect("waves")
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(names, ["canary", "five-percent", "quarter", "all"], "{r:#}");
    let canaries: BTreeSet<String> = r["devices"]
        .as_object()
        .expect("devices")
        .iter()
        .filter(|(_, d)| d["wave"] == 0)
        .map(|(id, _)| id.clone())
        .collect();
    let real: BTreeSet<String> = REAL.iter().map(|s| s.to_string()).collect();
    assert_eq!(canaries, real, "the real agents are the canary wave");
    for id in REAL {
        let s = demo.agent(id);
        assert_eq!(s["current"], good.as_str(), "{id}: {s:#}");
    }
    // The dashboard the demo points to: admin logs in with the printed password.
    let overview = demo.dashboard_overview().await;
    assert!(
        overview.contains(&format!(r#"data-live="total">{TOTAL}<"#)),
        "the dashboard counts every device"
    );
    assert!(
        overview.contains("estop-open"),
        "admin gets the stop button"
    );

    // 2. A release whose health check fails: the canaries fail it, the rollout halts, the
    //    canaries run the good release again, nobody else ever gets it.
    let bad = demo.release(true);
    let r = demo.wait_rollout(&bad, "halted").await;
    assert!(r["waves"][0]["failed"].as_u64().unwrap_or(0) >= 1, "{r:#}");
    let deadline = Instant::now() + LIMIT;
    loop {
        let states: Vec<Value> = REAL.iter().map(|id| demo.agent(id)).collect();
        let back = states
            .iter()
            .all(|s| s["current"] == good.as_str() && s["phase"] == "idle");
        if back {
            let refused = states
                .iter()
                .filter(|s| {
                    s["bad_releases"]
                        .as_array()
                        .is_some_and(|b| b.iter().any(|x| x["release"] == bad.as_str()))
                })
                .count();
            assert!(refused >= 1, "a canary marked it bad: {states:#?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the canaries are not back on the good release: {states:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let r = demo.rollout(&bad).await;
    for (id, d) in r["devices"].as_object().expect("devices") {
        if d["wave"] != 0 {
            assert_eq!(d["outcome"], "waiting", "{id} was never told: {d:#}");
        }
    }
    let touched = demo.releases_ever_touched().await;
    for (id, events) in &touched {
        if !real.contains(id) {
            assert!(
                !events.contains(&bad),
                "{id} never received the bad release: {events}"
            );
        }
    }
    assert!(
        demo.running().await.values().all(|r| *r == good),
        "everyone runs the good release"
    );

    // 3. Emergency stop: a new release reaches nobody until resume.
    demo.fleetctl(&["rollouts", "abort", "active", "--reason", "e2e: bad build"]);
    demo.fleetctl(&["stop", "--reason", "e2e: stop the fleet"]);
    let next = demo.release(false);
    let deadline = Instant::now() + LIMIT;
    while !demo
        .get("/api/v1/releases")
        .await
        .to_string()
        .contains(&next)
    {
        assert!(Instant::now() < deadline, "the controller never saw {next}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Several check-in intervals (2 s) of every device.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let status = demo.get("/api/v1/status").await;
    assert_eq!(
        status["emergency_stop"]["reason"], "e2e: stop the fleet",
        "{status:#}"
    );
    assert!(
        demo.running().await.values().all(|r| *r == good),
        "nobody moved while stopped"
    );
    for (id, events) in demo.releases_ever_touched().await {
        assert!(!events.contains(&next), "{id} started {next} while stopped");
    }
    for id in REAL {
        assert_eq!(demo.agent(id)["current"], good.as_str());
    }
    demo.fleetctl(&["resume", "--reason", "e2e: all clear"]);
    demo.wait_rollout(&next, "completed").await;
    demo.wait_all_on(&next).await;

    // 4. Ctrl-C: everything stops, every container the demo made is gone.
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(demo.child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Ok(Some(s)) = demo.child.try_wait() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "fleet-demo did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.success(),
        "fleet-demo exit: {status}\n{}",
        demo.tail()
    );
    let out = demo.tail();
    assert!(out.contains("removed"), "{out}");
    for ns in demo.namespaces.clone() {
        assert!(demo.containers(&ns).is_empty(), "containers left in {ns}");
    }
    assert!(
        reqwest::get(format!("{}/healthz", demo.url)).await.is_err(),
        "the controller is gone"
    );
    let left = processes_mentioning(&demo.dir);
    assert!(
        left.is_empty(),
        "processes of the demo still running: {left:?}"
    );
}

/// Command lines of running processes that name `dir` (the demo's git daemons, agents, …).
fn processes_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|cmd| cmd.contains(&needle))
        .collect()
}
