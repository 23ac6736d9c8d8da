//! The real `fleet-controller` binary as a child process: configured by a YAML file,
//! provisioned through its own CLI (`users add`, `bootstrap-token create`), killed with
//! SIGKILL like a crashed or power-cut server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleet_config::units::format_duration;
use fleet_controller::config::ControllerConfig;

/// The controller binary of this test run (the including test crate says where it is).
pub fn binary() -> PathBuf {
    super::controller_bin()
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// The YAML the binary reads for `cfg`.
pub fn config_yaml(cfg: &ControllerConfig) -> String {
    let mut y = format!(
        "listen: \"{}\"\ndata_dir: \"{}\"\noffline_after: {}\ncheckin_interval: {}\npairing_ttl: {}\nreconcile_interval: {}\n",
        cfg.listen,
        cfg.data_dir.display(),
        format_duration(cfg.offline_after),
        format_duration(cfg.checkin_interval),
        format_duration(cfg.pairing_ttl),
        format_duration(cfg.reconcile_interval),
    );
    if cfg.leader_lease != ControllerConfig::default().leader_lease {
        y.push_str(&format!(
            "leader_lease: {}\n",
            format_duration(cfg.leader_lease)
        ));
    }
    if let Some(url) = &cfg.database_url {
        y.push_str(&format!("database_url: \"{url}\"\n"));
    }
    if cfg.long_poll != fleet_controller::config::LongPoll::default() {
        y.push_str(&format!(
            "long_poll: {{ max: {}, max_waiting: {} }}\n",
            format_duration(cfg.long_poll.max),
            cfg.long_poll.max_waiting
        ));
    }
    if let Some(token) = &cfg.metrics_token_file {
        y.push_str(&format!("metrics_token_file: \"{}\"\n", token.display()));
    }
    if let Some(secret) = &cfg.webhook_secret_file {
        y.push_str(&format!("webhook_secret_file: \"{}\"\n", secret.display()));
    }
    if let Some(g) = &cfg.git {
        y.push_str("git:\n  endpoints:\n");
        for e in &g.endpoints {
            y.push_str(&format!("    - \"{e}\"\n"));
        }
        y.push_str(&format!(
            "  branch: {}\n  poll_interval: {}\n  failover_timeout: {}\n",
            g.branch,
            format_duration(g.poll_interval),
            format_duration(g.failover_timeout)
        ));
    }
    y
}

/// A running `fleet-controller serve`.
pub struct ControllerProcess {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// API tokens by role, made with `fleet-controller users add`.
    pub admin: String,
    pub operator: String,
    pub viewer: String,
    /// The operator's password (dashboard logins).
    pub operator_password: String,
    /// Made with `fleet-controller bootstrap-token create`.
    pub bootstrap: String,
    config: PathBuf,
    log: PathBuf,
    child: Child,
    /// Started alone: ready once it leads. A replica among others (false): ready once it
    /// answers.
    pub alone: bool,
}

/// Runs the binary with `--config FILE` and `args`; its stdout, or a panic with its stderr.
pub fn run_cli(config: &Path, args: &[&str]) -> String {
    let out = Command::new(binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run fleet-controller");
    assert!(
        out.status.success(),
        "fleet-controller {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn value_of(stdout: &str, key: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} line in {stdout:?}"))
        .to_owned()
}

fn token_of(stdout: &str) -> String {
    value_of(stdout, "token=")
}

impl ControllerProcess {
    /// Writes the configuration next to the data directory, provisions users of every role and
    /// a bootstrap token through the CLI, and starts `serve`.
    pub async fn start(cfg: &ControllerConfig) -> ControllerProcess {
        Self::start_yaml(cfg, &config_yaml(cfg)).await
    }

    /// As [`ControllerProcess::start`], with the configuration file's text given.
    pub async fn start_yaml(cfg: &ControllerConfig, yaml: &str) -> ControllerProcess {
        std::fs::create_dir_all(&cfg.data_dir).expect("data dir");
        let config = cfg.data_dir.join("controller.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let token = |name: &str, role: &str| {
            token_of(&run_cli(&config, &["users", "add", name, "--role", role]))
        };
        let admin = token("admin", "admin");
        let added = run_cli(&config, &["users", "add", "operator", "--role", "operator"]);
        let operator = token_of(&added);
        let operator_password = value_of(&added, "password=");
        let viewer = token("viewer", "viewer");
        let bootstrap = run_cli(&config, &["bootstrap-token", "create"])
            .trim()
            .to_owned();
        let log = cfg.data_dir.join("controller.log");
        let child = spawn(&config, &log, 0);
        let mut p = ControllerProcess {
            base: format!("http://{}", cfg.listen),
            admin,
            operator,
            viewer,
            operator_password,
            bootstrap,
            config,
            log,
            child,
            alone: true,
        };
        p.wait_ready().await;
        p
    }

    /// Another replica on the store of `first` (same users and tokens, provisioned there), with
    /// its own configuration `cfg` (address, data directory, database URL); ready once it
    /// answers, leader or not.
    pub async fn start_replica(
        cfg: &ControllerConfig,
        first: &ControllerProcess,
    ) -> ControllerProcess {
        Self::start_replica_yaml(cfg, &config_yaml(cfg), first).await
    }

    /// As [`ControllerProcess::start_replica`], with the configuration file's text given.
    pub async fn start_replica_yaml(
        cfg: &ControllerConfig,
        yaml: &str,
        first: &ControllerProcess,
    ) -> ControllerProcess {
        std::fs::create_dir_all(&cfg.data_dir).expect("data dir");
        let config = cfg.data_dir.join("controller.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let log = cfg.data_dir.join("controller.log");
        let child = spawn(&config, &log, 0);
        let mut p = ControllerProcess {
            base: format!("http://{}", cfg.listen),
            admin: first.admin.clone(),
            operator: first.operator.clone(),
            operator_password: first.operator_password.clone(),
            viewer: first.viewer.clone(),
            bootstrap: first.bootstrap.clone(),
            config,
            log,
            child,
            alone: false,
        };
        p.wait_ready().await;
        p
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown handler runs, connections and locks die with the process.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the controller");
        let status = self.child.wait().expect("reap");
        assert!(!status.success(), "killed, so not a clean exit: {status}");
    }

    /// SIGTERM, and waits (up to 30 s) for the clean exit.
    pub async fn terminate(&mut self) {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed: {sent}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "a clean exit on SIGTERM: {status}\n{}",
                    self.log()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no exit 30 s after SIGTERM:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new process on the same configuration (same store, same address).
    pub async fn restart(&mut self, generation: u32) {
        self.child = spawn(&self.config, &self.log, generation);
        self.wait_ready().await;
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The process's log so far (JSON lines on stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = super::client();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "fleet-controller exited at start ({status}):\n{}",
                    self.log()
                );
            }
            // Ready once it answers and, if it is alone, leads: /api/v1/status says so.
            if let Ok(r) = client
                .get(self.url("/api/v1/status"))
                .bearer_auth(&self.viewer)
                .send()
                .await
            {
                if r.status().is_success() {
                    if let Ok(v) = r.json::<serde_json::Value>().await {
                        if v["leader"] == true || !self.alone {
                            return;
                        }
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "fleet-controller not ready after 60 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(config: &Path, log: &Path, generation: u32) -> Child {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    use std::io::Write;
    let mut g = &f;
    let _ = writeln!(g, "=== process {generation} ===");
    Command::new(binary())
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(f)
        .spawn()
        .expect("spawn fleet-controller serve")
}
