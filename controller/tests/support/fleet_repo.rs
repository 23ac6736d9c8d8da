//! A fleet repository served by a real `git daemon`, for the controller's tests.

use std::path::Path;

use super::git_daemon::{init_bare, Entry, GitDaemon, WorkRepo};

/// A served fleet repository.
pub struct FleetRepo {
    /// The daemon (killed on drop).
    pub daemon: GitDaemon,
    /// Where commits are made.
    pub work: WorkRepo,
    bare: std::path::PathBuf,
    devices: usize,
    canaries: usize,
    bake: String,
    /// More labels of some devices: (id, `key: value, …` as in a YAML flow mapping).
    labels: Vec<(String, String)>,
}

/// Device ids of a test fleet.
pub fn device_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("dev-{i:03}")).collect()
}

impl FleetRepo {
    /// An empty repository for a fleet of `devices` (the first `canaries` in the canary ring).
    pub fn new(dir: &Path, devices: usize, canaries: usize, bake: &str) -> FleetRepo {
        let base = dir.join("git");
        std::fs::create_dir_all(&base).expect("git base");
        let bare = init_bare(&base, "fleet.git");
        let daemon = GitDaemon::start(&base);
        let work = WorkRepo::init(&dir.join("work"));
        FleetRepo {
            daemon,
            work,
            bare,
            devices,
            canaries,
            bake: bake.to_owned(),
            labels: Vec::new(),
        }
    }

    /// The bake of the releases committed from now on (`1s`, `500ms`).
    pub fn set_bake(&mut self, bake: &str) {
        self.bake = bake.to_owned();
    }

    /// Device `id` gets the labels `extra` (`key: value, …`) in the releases committed from now
    /// on, beside its ring.
    pub fn add_labels(&mut self, id: &str, extra: &str) {
        self.labels.push((id.to_owned(), extra.to_owned()));
    }

    /// The URL to watch.
    pub fn url(&self) -> String {
        self.daemon.url("fleet.git")
    }

    /// Commits a release running image tag `tag` and pushes it; returns the sha.
    pub fn release(&self, tag: &str) -> String {
        self.release_with_pins(tag, &[])
    }

    /// As [`FleetRepo::release`], with devices.yaml pinning devices: (id, release, reason).
    pub fn release_with_pins(&self, tag: &str, pins: &[(&str, &str, &str)]) -> String {
        self.release_with(tag, pins, "")
    }

    /// As [`FleetRepo::release`], with `fleet_extra` appended to fleet.yaml (an `alerts:`
    /// section, say).
    pub fn release_with_fleet(&self, tag: &str, fleet_extra: &str) -> String {
        self.release_with(tag, &[], fleet_extra)
    }

    fn release_with(&self, tag: &str, pins: &[(&str, &str, &str)], fleet_extra: &str) -> String {
        let mut fleet = format!(
            "name: test-fleet\nrelease_branch: main\nrollout:\n  waves:\n    - {{ name: canary, select: {{ ring: canary }} }}\n    - {{ name: five-percent, percent: 5 }}\n    - {{ name: quarter, percent: 25 }}\n    - {{ name: all, percent: 100 }}\n  bake: {}\n  health_timeout: 60s\n  max_failure_rate: 5%\n  fleet_unhealthy_stop: 50%\n",
            self.bake
        );
        fleet.push_str(fleet_extra);
        let mut devices = String::from("devices:\n");
        for (i, id) in device_ids(self.devices).iter().enumerate() {
            let ring = if i < self.canaries { "canary" } else { "main" };
            let extra: String = self
                .labels
                .iter()
                .filter(|(d, _)| d == id)
                .map(|(_, l)| format!(", {l}"))
                .collect();
            devices.push_str(&format!(
                "  - id: {id}\n    labels: {{ ring: {ring}{extra} }}\n"
            ));
            if let Some((_, release, reason)) = pins.iter().find(|p| p.0 == id) {
                devices.push_str(&format!(
                    "    pin: {{ release: {release}, reason: \"{reason}\" }}\n"
                ));
            }
        }
        devices.push_str("stacks:\n  - name: app\n    select: {}\n");
        let compose = format!(
            "services:\n  web:\n    image: fleet-test/app:{tag}\n    restart: unless-stopped\n"
        );
        let sha = self.work.commit(
            &format!("release {tag}"),
            &[
                ("fleet.yaml", Entry::File(fleet.as_bytes())),
                ("devices.yaml", Entry::File(devices.as_bytes())),
                ("stacks/app/compose.yaml", Entry::File(compose.as_bytes())),
            ],
        );
        self.work.push(&self.bare, "main");
        sha
    }

    /// Commits something that does not validate and pushes it; returns the sha.
    pub fn broken(&self) -> String {
        let sha = self.work.commit(
            "broken",
            &[("fleet.yaml", Entry::File(b"name: test-fleet\nrolout: {}\n"))],
        );
        self.work.push(&self.bare, "main");
        sha
    }
}
