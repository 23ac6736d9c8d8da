//! The product's processes: the controller, the agents and the simulator, each a child with
//! its log in the demo directory, stopped on drop; and the removal of every container the
//! demo's agents made.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::{self, CmdError};

/// Something in the stack failed.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// A binary is not where it should be.
    #[error("{0} is missing; build everything first: cargo build --workspace (make demo does)")]
    MissingBinary(String),
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A process could not start.
    #[error("cannot start {name}: {source}")]
    Spawn {
        /// Which.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// A CLI step failed.
    #[error(transparent)]
    Cmd(#[from] CmdError),
    /// The controller did not come up.
    #[error("the controller did not become ready at {url} within 60 s; see {log}")]
    NotReady {
        /// Its URL.
        url: String,
        /// Its log.
        log: String,
    },
    /// The CLI printed something unexpected.
    #[error("unexpected output of `{command}`: {output}")]
    Output {
        /// The command.
        command: String,
        /// What it printed.
        output: String,
    },
}

/// A free loopback port (free a moment ago).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// The product's binaries, next to `fleet-demo` itself.
#[derive(Debug, Clone)]
pub struct Bins {
    /// fleet-agent.
    pub agent: PathBuf,
    /// fleet-controller.
    pub controller: PathBuf,
    /// fleet-sim.
    pub sim: PathBuf,
    /// fleetctl.
    pub fleetctl: PathBuf,
}

impl Bins {
    /// Finds them in the directory of the running executable.
    pub fn beside_me() -> Result<Bins, StackError> {
        let exe = std::env::current_exe()
            .map_err(|e| StackError::MissingBinary(format!("the demo's own path ({e})")))?;
        let dir = exe
            .parent()
            .ok_or_else(|| StackError::MissingBinary("the demo's directory".into()))?;
        let find = |name: &str| {
            let p = dir.join(name);
            if p.exists() {
                Ok(p)
            } else {
                Err(StackError::MissingBinary(p.display().to_string()))
            }
        };
        Ok(Bins {
            agent: find("fleet-agent")?,
            controller: find("fleet-controller")?,
            sim: find("fleet-sim")?,
            fleetctl: find("fleetctl")?,
        })
    }
}

/// A child process with a log file; SIGTERM then SIGKILL on drop.
pub struct Proc {
    /// A name for messages.
    pub name: String,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// Starts `cmd` with its output appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc, StackError> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| StackError::Io {
                path: log.display().to_string(),
                source,
            })?;
        let err = out.try_clone().map_err(|source| StackError::Io {
            path: log.display().to_string(),
            source,
        })?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|source| StackError::Spawn {
                name: name.to_owned(),
                source,
            })?;
        Ok(Proc {
            name: name.to_owned(),
            log: log.to_owned(),
            child,
        })
    }

    /// Whether it has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

fn write(path: &Path, text: &str) -> Result<(), StackError> {
    std::fs::write(path, text).map_err(|source| StackError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// The controller and the credentials the demo made for it.
pub struct Controller {
    /// The process.
    pub proc: Proc,
    /// `https://ADDRESS`.
    pub url: String,
    /// The demo's lab CA (PEM): what the agents, the simulator and fleetctl trust.
    pub ca_file: PathBuf,
    /// SHA-256 of the server key's SubjectPublicKeyInfo, base64 (Chromium's
    /// `--ignore-certificate-errors-spki-list`).
    pub spki: String,
    /// The admin's password (for the dashboard).
    pub admin_password: String,
    /// The admin's API token (for fleetctl).
    pub admin_token: String,
    /// A file holding a bootstrap token.
    pub bootstrap_file: PathBuf,
}

fn kv<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

impl Controller {
    /// Writes its configuration (SQLite in `dir`), adds the admin, makes a bootstrap token,
    /// starts it on `listen` and waits until it answers and leads.
    pub async fn start(
        bins: &Bins,
        dir: &Path,
        listen: SocketAddr,
        endpoints: &[String],
    ) -> Result<Controller, StackError> {
        let data = dir.join("controller");
        std::fs::create_dir_all(&data).map_err(|source| StackError::Io {
            path: data.display().to_string(),
            source,
        })?;
        let eps: String = endpoints
            .iter()
            .map(|e| format!("    - \"{e}\"\n"))
            .collect();
        // HTTPS with a lab CA made now: the demo talks to its controller as production does.
        let tls_dir = dir.join("tls");
        std::fs::create_dir_all(&tls_dir).map_err(|source| StackError::Io {
            path: tls_dir.display().to_string(),
            source,
        })?;
        let ca = fleet_testkit::tls::LabCa::new(&tls_dir, "fleet-demo");
        let cert = ca.server_cert(&tls_dir, "controller");
        let config = data.join("controller.yaml");
        write(
            &config,
            &format!(
                "# Written by fleet-demo.\nlisten: \"{listen}\"\ndata_dir: \"{}\"\ncheckin_interval: 2s\nreconcile_interval: 500ms\noffline_after: 30s\ntls:\n  cert_file: \"{}\"\n  key_file: \"{}\"\ngit:\n  endpoints:\n{eps}  branch: main\n  poll_interval: 2s\n  failover_timeout: 5s\n",
                data.display(),
                cert.cert_file.display(),
                cert.key_file.display()
            ),
        )?;
        let ctl = bins.controller.display().to_string();
        let cfg = config.display().to_string();
        let out = cmd::run(
            &ctl,
            &["--config", &cfg, "users", "add", "admin", "--role", "admin"],
        )?;
        let (Some(password), Some(token)) = (kv(&out, "password"), kv(&out, "token")) else {
            return Err(StackError::Output {
                command: "fleet-controller users add admin".into(),
                output: out,
            });
        };
        let (admin_password, admin_token) = (password.to_owned(), token.to_owned());
        let bootstrap = cmd::run(&ctl, &["--config", &cfg, "bootstrap-token", "create"])?;
        let bootstrap_file = data.join("bootstrap-token");
        write(&bootstrap_file, bootstrap.trim())?;
        let mut c = Command::new(&bins.controller);
        c.arg("--config").arg(&config).arg("serve");
        let proc = Proc::spawn("fleet-controller", c, &dir.join("controller.log"))?;
        let url = format!("https://{listen}");
        let mut ctl = Controller {
            proc,
            url,
            ca_file: ca.cert_file.clone(),
            spki: cert.spki_sha256_base64.clone(),
            admin_password,
            admin_token,
            bootstrap_file,
        };
        ctl.wait_ready().await?;
        Ok(ctl)
    }

    async fn wait_ready(&mut self) -> Result<(), StackError> {
        let client = client_trusting(&self.ca_file);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline && self.proc.exited().is_none() {
            let r = client
                .get(format!("{}/api/v1/status", self.url))
                .bearer_auth(&self.admin_token)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if let Ok(r) = r {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    if v["leader"] == true {
                        return Ok(());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(StackError::NotReady {
            url: self.url.clone(),
            log: self.proc.log.display().to_string(),
        })
    }
}

/// An HTTP client that trusts only the demo's lab CA in `ca_file`.
pub fn client_trusting(ca_file: &Path) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .tls_built_in_root_certs(false);
    if let Ok(pem) = std::fs::read(ca_file) {
        for c in reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default() {
            b = b.add_root_certificate(c);
        }
    }
    b.build().unwrap_or_default()
}

/// The Docker label namespace of a demo agent's containers (`instance` tells concurrent demos
/// apart).
pub fn namespace_of(instance: &str, device: &str) -> String {
    format!("fleet-{instance}-{device}")
}

/// Starts a real agent for `device` in controller mode, with its own data directory and
/// Docker label namespace.
pub fn start_agent(
    bins: &Bins,
    dir: &Path,
    namespace: &str,
    device: &str,
    endpoints: &[String],
    ctl: &Controller,
) -> Result<Proc, StackError> {
    let home = dir.join("devices").join(device);
    let secrets = home.join("secrets");
    std::fs::create_dir_all(&secrets).map_err(|source| StackError::Io {
        path: secrets.display().to_string(),
        source,
    })?;
    write(&secrets.join("app.env"), "APP_API_TOKEN=demo-only-token\n")?;
    let safe = home.join("safe-mode.yaml");
    write(
        &safe,
        "# The demo's safe-mode stand-in (a real device ships safe-mode/compose.yaml).\nservices:\n  rescue:\n    image: fleet-demo/safe-mode:1.0.0\n    restart: always\n",
    )?;
    let eps: String = endpoints
        .iter()
        .map(|u| format!("    - url: {u}\n"))
        .collect();
    let config = home.join("agent.yaml");
    write(
        &config,
        &format!(
            "# Written by fleet-demo.\ndevice_id: {device}\ndata_dir: {data}\ngit:\n  endpoints:\n{eps}  branch: main\n  failover_timeout: 5s\npoll_interval: 5s\nhealth_window: 5s\nmin_free_disk: 50MB\nkeep_releases: 3\nmetrics_listen: null\ndocker_namespace: {ns}\nsecrets_dir: {secrets}\nsafe_mode_compose: {safe}\ncontroller:\n  url: {url}\n  token_file: {token}\n  bootstrap_token_file: {bootstrap}\n  request_timeout: 10s\n  ca_file: {ca}\n",
            data = home.join("data").display(),
            ns = namespace,
            secrets = secrets.display(),
            safe = safe.display(),
            url = ctl.url,
            ca = ctl.ca_file.display(),
            token = home.join("device-token").display(),
            bootstrap = ctl.bootstrap_file.display(),
        ),
    )?;
    let mut c = Command::new(&bins.agent);
    c.arg("run").arg("--config").arg(&config);
    Proc::spawn(
        &format!("fleet-agent {device}"),
        c,
        &dir.join(format!("agent-{device}.log")),
    )
}

/// Starts the simulator with `n` devices `sim-001…`.
pub fn start_sim(bins: &Bins, dir: &Path, ctl: &Controller, n: usize) -> Result<Proc, StackError> {
    let mut c = Command::new(&bins.sim);
    c.arg("--url")
        .arg(&ctl.url)
        .arg("--ca-file")
        .arg(&ctl.ca_file)
        .arg("--bootstrap-token-file")
        .arg(&ctl.bootstrap_file)
        .arg("--devices")
        .arg(n.to_string())
        .arg("--interval")
        .arg("2s");
    Proc::spawn("fleet-sim", c, &dir.join("fleet-sim.log"))
}

/// Removes every container, network and volume carrying one of `namespaces`; returns how many
/// containers there were.
pub fn remove_namespaces(namespaces: &[String]) -> usize {
    let mut removed = 0;
    for ns in namespaces {
        let filter = format!("label=fleet.namespace={ns}");
        let ids = |args: &[&str]| -> Vec<String> {
            cmd::run("docker", args)
                .map(|o| o.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let containers = ids(&["ps", "-aq", "--filter", &filter]);
        removed += containers.len();
        if !containers.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(containers.iter().map(String::as_str));
            let _ = cmd::run("docker", &args);
        }
        let networks = ids(&["network", "ls", "-q", "--filter", &filter]);
        if !networks.is_empty() {
            let mut args = vec!["network", "rm"];
            args.extend(networks.iter().map(String::as_str));
            let _ = cmd::run("docker", &args);
        }
        let volumes = ids(&["volume", "ls", "-q", "--filter", &filter]);
        if !volumes.is_empty() {
            let mut args = vec!["volume", "rm", "-f"];
            args.extend(volumes.iter().map(String::as_str));
            let _ = cmd::run("docker", &args);
        }
    }
    removed
}
