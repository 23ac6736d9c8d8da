//! A fleet for end-to-end tests: the fleet repository (a working copy pushed to a primary and a
//! mirror `git daemon`) and devices, each a real `fleet-agent` process in controller mode with
//! its own data directory and Docker label namespace.

use std::path::{Path, PathBuf};

use super::docker_guard::NamespaceGuard;
use super::git_daemon::{init_bare, Entry, GitDaemon, WorkRepo};
use super::lab::{app_compose, AgentProc};
use serde_json::Value;

/// The fleet repository: a working copy pushed to a primary and a mirror.
pub struct Repo {
    work: WorkRepo,
    pub primary: GitDaemon,
    pub mirror: GitDaemon,
    primary_bare: PathBuf,
    mirror_bare: PathBuf,
    fleet: String,
    inventory: String,
}

impl Repo {
    /// A repository under `root` whose releases carry `fleet` (fleet.yaml) and `inventory`
    /// (devices.yaml).
    pub fn new(root: &Path, fleet: &str, inventory: &str) -> Repo {
        let pbase = root.join("primary");
        let mbase = root.join("mirror");
        std::fs::create_dir_all(&pbase).expect("mkdir");
        std::fs::create_dir_all(&mbase).expect("mkdir");
        let primary_bare = init_bare(&pbase, "fleet.git");
        let mirror_bare = init_bare(&mbase, "fleet.git");
        Repo {
            work: WorkRepo::init(&root.join("work")),
            primary: GitDaemon::start(&pbase),
            mirror: GitDaemon::start(&mbase),
            primary_bare,
            mirror_bare,
            fleet: fleet.to_owned(),
            inventory: inventory.to_owned(),
        }
    }

    /// The Git URLs, primary first.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.primary.url("fleet.git"), self.mirror.url("fleet.git")]
    }

    /// Commits a release whose `web` runs `fleet-test/app:<web>` and pushes it to both.
    pub fn release(&self, web: &str) -> String {
        self.release_compose(&format!("release web {web}"), &app_compose(web))
    }

    /// Commits a release whose stack `app` is `compose`, with `message`, and pushes it to both.
    pub fn release_compose(&self, message: &str, compose: &str) -> String {
        let sha = self.work.commit(
            message,
            &[
                ("fleet.yaml", Entry::File(self.fleet.as_bytes())),
                ("devices.yaml", Entry::File(self.inventory.as_bytes())),
                ("stacks/app/compose.yaml", Entry::File(compose.as_bytes())),
            ],
        );
        self.work.push(&self.primary_bare, "main");
        self.work.push(&self.mirror_bare, "main");
        sha
    }
}

/// One device: its data directory, its own Docker label namespace, its agent process.
pub struct Device {
    pub id: &'static str,
    pub config: PathBuf,
    pub ns: NamespaceGuard,
    pub agent: AgentProc,
}

impl Device {
    /// Writes the device's configuration (enrolling with the bootstrap token in `bootstrap`
    /// against `controller`) and starts its agent.
    pub fn start(
        root: &Path,
        id: &'static str,
        repo: &Repo,
        controller: &str,
        bootstrap: &Path,
    ) -> Device {
        Device::start_with(
            root,
            id,
            repo,
            controller,
            bootstrap,
            "  request_timeout: 10s\n",
            "",
        )
    }

    /// [`Device::start`] with `controller_extra` added under `controller:` and `extra` at the
    /// top level (YAML lines, e.g. `watch:`; `metrics_listen:` there replaces `null`).
    pub fn start_with(
        root: &Path,
        id: &'static str,
        repo: &Repo,
        controller: &str,
        bootstrap: &Path,
        controller_extra: &str,
        extra: &str,
    ) -> Device {
        let dir = root.join(id);
        std::fs::create_dir_all(dir.join("secrets")).expect("mkdir");
        // The agent loads the safe-mode stack as `compose.yaml` of its directory.
        std::fs::create_dir_all(dir.join("safe-mode")).expect("mkdir");
        std::fs::write(
            dir.join("safe-mode").join("compose.yaml"),
            "services:\n  rescue:\n    image: fleet-test/app:v1\n    restart: always\n",
        )
        .expect("safe-mode stack");
        let ns = NamespaceGuard::new(&format!("e2e-{id}"));
        let eps: String = repo
            .endpoints()
            .iter()
            .map(|u| format!("    - url: {u}\n"))
            .collect();
        let text = format!(
            "device_id: {id}\ndata_dir: {data}\ngit:\n  endpoints:\n{eps}  branch: main\n  failover_timeout: 3s\npoll_interval: 1s\nhealth_window: 2s\nmin_free_disk: 1MB\nkeep_releases: 3\n{metrics}docker_namespace: {ns}\nrun_dir: {run}\nsecrets_dir: {secrets}\nsafe_mode_compose: {safe}\ncontroller:\n  url: {controller}\n  token_file: {token}\n  bootstrap_token_file: {bootstrap}\n{controller_extra}{extra}",
            metrics = if extra.contains("metrics_listen:") {
                ""
            } else {
                "metrics_listen: null\n"
            },
            data = dir.join("data").display(),
            ns = ns.name,
            run = dir.join("run").display(),
            secrets = dir.join("secrets").display(),
            safe = dir.join("safe-mode").join("compose.yaml").display(),
            token = dir.join("device-token").display(),
            bootstrap = bootstrap.display(),
        );
        let config = dir.join("agent.yaml");
        std::fs::write(&config, text).expect("agent config");
        let agent = AgentProc::start(&config);
        Device {
            id,
            config,
            ns,
            agent,
        }
    }

    /// The device's safe-mode stack (its compose file; read when it enters safe mode).
    pub fn safe_mode_compose(&self) -> PathBuf {
        self.config.with_file_name("safe-mode").join("compose.yaml")
    }

    /// The device's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.config.with_file_name("data")
    }

    /// `web` containers of this device: (image, release label, running).
    pub fn web(&self) -> Vec<(String, String, bool)> {
        self.containers()
            .into_iter()
            .filter(|(service, ..)| service == "web")
            .map(|(_, image, release, running)| (image, release, running))
            .collect()
    }

    /// Every container of this device: (service, image, release label, running), sorted.
    pub fn containers(&self) -> Vec<(String, String, String, bool)> {
        let out = std::process::Command::new("docker")
            .args(["ps", "-a", "--filter", &self.ns.filter(), "--format"])
            .arg("{{.Label \"fleet.service\"}}|{{.Image}}|{{.Label \"fleet.release\"}}|{{.State}}")
            .output()
            .expect("docker ps");
        let mut v: Vec<_> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let p: Vec<&str> = l.split('|').collect();
                (p.len() == 4).then(|| {
                    (
                        p[0].to_owned(),
                        p[1].to_owned(),
                        p[2].to_owned(),
                        p[3] == "running",
                    )
                })
            })
            .collect();
        v.sort();
        v
    }

    /// `fleet-agent status --output json`.
    pub fn status(&self) -> Value {
        self.agent.status()
    }
}
