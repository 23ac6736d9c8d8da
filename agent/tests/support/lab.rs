//! A lab for end-to-end agent tests: a primary and a mirror `git daemon` serving the fleet
//! repository, a working repository to build releases in, a device data directory, and the real
//! `fleet-agent` binary started and killed as a process.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::docker_guard::NamespaceGuard;
use super::git_daemon::{init_bare, Entry, GitDaemon, WorkRepo};

/// The device every lab agent is.
pub const DEVICE: &str = "dev-1";

const FLEET: &str = "name: lab\nrollout:\n  waves:\n    - { name: canary, select: { ring: canary } }\n    - { name: all, percent: 100 }\n";
const DEVICES: &str = "devices:\n  - id: dev-1\n    labels: { ring: canary }\n  - id: dev-2\nstacks:\n  - { name: app, select: {} }\n";

/// A compose file with a `web` service on `fleet-test/app:<web>` and a `side` service on
/// `fleet-test/app:v1` that never changes (so its container must survive every release).
pub fn app_compose(web: &str) -> String {
    format!(
        "services:\n  web:\n    image: fleet-test/app:{web}\n    restart: unless-stopped\n    stop_grace_period: 1s\n  side:\n    image: fleet-test/app:v1\n    restart: unless-stopped\n    stop_grace_period: 1s\n"
    )
}

/// The lab. Dropping it stops the daemons, the agents and removes the test's containers.
pub struct Lab {
    /// Temporary root of everything.
    pub root: tempfile::TempDir,
    /// The primary Git server.
    pub primary: GitDaemon,
    /// The mirror.
    pub mirror: GitDaemon,
    primary_bare: PathBuf,
    mirror_bare: PathBuf,
    work: WorkRepo,
    /// The test's Docker label namespace (removed on drop).
    pub ns: NamespaceGuard,
}

impl Lab {
    /// A fresh lab for `test`.
    pub fn new(test: &str) -> Lab {
        let root = tempfile::tempdir().expect("tempdir");
        let pbase = root.path().join("primary");
        let mbase = root.path().join("mirror");
        fs::create_dir_all(&pbase).expect("mkdir");
        fs::create_dir_all(&mbase).expect("mkdir");
        let primary_bare = init_bare(&pbase, "fleet.git");
        let mirror_bare = init_bare(&mbase, "fleet.git");
        let primary = GitDaemon::start(&pbase);
        let mirror = GitDaemon::start(&mbase);
        let work = WorkRepo::init(&root.path().join("work"));
        let safe = root.path().join("safe-mode");
        fs::create_dir_all(&safe).expect("mkdir");
        fs::write(
            safe.join("compose.yaml"),
            "services:\n  rescue:\n    image: fleet-test/app:v1\n    restart: always\n",
        )
        .expect("write safe-mode stack");
        fs::create_dir_all(root.path().join("secrets")).expect("mkdir");
        Lab {
            root,
            primary,
            mirror,
            primary_bare,
            mirror_bare,
            work,
            ns: NamespaceGuard::new(test),
        }
    }

    /// Commits a release whose `web` service runs `fleet-test/app:<web>`, pushes it to both
    /// servers, and returns its sha.
    pub fn release(&self, web: &str) -> String {
        let sha = self.commit(web);
        self.push_primary();
        self.push_mirror();
        sha
    }

    /// Commits a release without pushing it.
    pub fn commit(&self, web: &str) -> String {
        self.commit_with(web, &[])
    }

    /// Commits a release whose files are the usual ones with `overrides` written over them
    /// (e.g. a broken `fleet.yaml`), without pushing it.
    pub fn commit_with(&self, web: &str, overrides: &[(&str, &str)]) -> String {
        let compose = app_compose(web);
        let mut files: Vec<(&str, Entry<'_>)> = vec![
            ("fleet.yaml", Entry::File(FLEET.as_bytes())),
            ("devices.yaml", Entry::File(DEVICES.as_bytes())),
            ("stacks/app/compose.yaml", Entry::File(compose.as_bytes())),
        ];
        for (path, content) in overrides {
            files.retain(|(p, _)| p != path);
            files.push((path, Entry::File(content.as_bytes())));
        }
        self.work.commit(&format!("release with web {web}"), &files)
    }

    /// Commits and pushes (to both servers) a release with `overrides`.
    pub fn release_with(&self, web: &str, overrides: &[(&str, &str)]) -> String {
        let sha = self.commit_with(web, overrides);
        self.push_primary();
        self.push_mirror();
        sha
    }

    /// Pushes `main` to the primary.
    pub fn push_primary(&self) {
        self.work.push(&self.primary_bare, "main");
    }

    /// Pushes `main` to the mirror.
    pub fn push_mirror(&self) {
        self.work.push(&self.mirror_bare, "main");
    }

    /// The device's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// Writes an agent configuration; `extra` is appended (YAML top-level keys). `endpoints`
    /// lists the Git URLs in order.
    pub fn config_with(
        &self,
        name: &str,
        endpoints: &[String],
        data_dir: &Path,
        extra: &str,
    ) -> PathBuf {
        let eps: String = endpoints
            .iter()
            .map(|u| format!("    - url: {u}\n"))
            .collect();
        let text = format!(
            "device_id: {DEVICE}\ndata_dir: {}\ngit:\n  endpoints:\n{eps}  branch: main\n  failover_timeout: 3s\npoll_interval: 1s\nhealth_window: 2s\nmin_free_disk: 1MB\nkeep_releases: 3\nmetrics_listen: null\ndocker_namespace: {}\nrun_dir: {}\nsecrets_dir: {}\nsafe_mode_compose: {}\n{extra}",
            data_dir.display(),
            self.ns.name,
            self.root.path().join(format!("run-{name}")).display(),
            self.root.path().join("secrets").display(),
            self.root.path().join("safe-mode/compose.yaml").display(),
        );
        let path = self.root.path().join(format!("{name}.yaml"));
        fs::write(&path, text).expect("write agent config");
        path
    }

    /// The usual configuration: primary then mirror, the lab's data directory.
    pub fn config(&self) -> PathBuf {
        let eps = [self.primary.url("fleet.git"), self.mirror.url("fleet.git")];
        self.config_with("agent", &eps, &self.data_dir(), "")
    }

    /// Containers of the namespace: (service, image, release label, container id, running).
    pub fn containers(&self) -> Vec<(String, String, String, String, bool)> {
        let out = Command::new("docker")
            .args(["ps", "-a", "--filter", &self.ns.filter(), "--format"])
            .arg("{{.Label \"fleet.service\"}}|{{.Image}}|{{.Label \"fleet.release\"}}|{{.ID}}|{{.State}}")
            .output()
            .expect("docker ps");
        let mut v: Vec<_> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let p: Vec<&str> = l.split('|').collect();
                (p.len() == 5).then(|| {
                    (
                        p[0].to_owned(),
                        p[1].to_owned(),
                        p[2].to_owned(),
                        p[3].to_owned(),
                        p[4] == "running",
                    )
                })
            })
            .collect();
        v.sort();
        v
    }
}

/// A running `fleet-agent run` process; killed on drop.
pub struct AgentProc {
    child: Option<Child>,
    config: PathBuf,
    /// Its combined log.
    pub log: PathBuf,
}

/// The agent binary of this test run (the including test crate says where it is).
pub fn agent_bin() -> &'static str {
    super::agent_bin()
}

impl AgentProc {
    /// Starts the agent with `config`, logging to `<config>.log` (appended).
    pub fn start(config: &Path) -> AgentProc {
        AgentProc::start_with_env(config, &[])
    }

    /// [`AgentProc::start`] with extra environment variables (e.g. systemd's `NOTIFY_SOCKET`).
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> AgentProc {
        let log = config.with_extension("log");
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(agent_bin())
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info,fleet_agent=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start fleet-agent");
        AgentProc {
            child: Some(child),
            config: config.to_owned(),
            log,
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: a power cut, as far as the agent can tell.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (a clean stop).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The exit status if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// `fleet-agent status --output json` for this agent's configuration.
    pub fn status(&self) -> serde_json::Value {
        status(&self.config)
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `pred(status)` holds; panics with the last status and the log otherwise.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; last status: {s:#}\n--- agent log ---\n{}",
                    tail(&self.log_text(), 60)
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `fleet-agent status --output json --config <config>`.
pub fn status(config: &Path) -> serde_json::Value {
    let out = Command::new(agent_bin())
        .args(["status", "--output", "json", "--config"])
        .arg(config)
        .output()
        .expect("fleet-agent status");
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// True when the status says the device is idle on `sha`.
pub fn idle_on(s: &serde_json::Value, sha: &str) -> bool {
    s["current"] == sha && s["phase"] == "idle" && s["installing"].is_null()
}

/// Hex digits of a xorshift64 stream: about 4 bits of entropy per byte, so Git's compression
/// leaves the pack at roughly half the text's size.
pub fn noise_hex(len: usize) -> String {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b"0123456789abcdef"[(x >> 60) as usize])
        })
        .collect()
}

/// Turns `/metrics` on in the agent configuration `config`, listening on `addr`.
pub fn listen_metrics(config: &Path, addr: &str) {
    let text = fs::read_to_string(config)
        .expect("read agent config")
        .replace("metrics_listen: null", &format!("metrics_listen: {addr}"));
    fs::write(config, text).expect("write agent config");
}

impl Lab {
    /// A cellular link in front of the primary: 64 KiB/s from the Git server, never stalling.
    pub fn cellular_link(&self) -> fleet_testkit::slow_link::SlowLink {
        fleet_testkit::slow_link::SlowLink::start(
            ([127, 0, 0, 1], self.primary.port()).into(),
            fleet_testkit::slow_link::LinkShape {
                bytes_per_second: 64 * 1024,
                stall_after: None,
            },
        )
    }

    /// Commits and pushes a release with a 2 MB file of noise: a pack of about a megabyte,
    /// some fifteen seconds over [`Lab::cellular_link`].
    pub fn big_release(&self, web: &str) -> String {
        self.release_with(web, &[("stacks/app/blob.txt", &noise_hex(2_000_000))])
    }
}
