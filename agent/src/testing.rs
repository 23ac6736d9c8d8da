//! Test fixtures shared by the unit tests: a runtime that runs nothing, a fault-injecting
//! runtime that fails exactly where a test says (so every failure path of the transaction runs
//! without Docker, on any machine), and a fleet repository served from a local bare repository.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fleet_config::compose::ImageRef;

use crate::config::AgentConfig;
use crate::runtime::{ApplyReport, RuntimeError, StackRuntime, StackSpec};

/// A runtime that accepts everything and runs nothing.
pub struct NoRuntime;

impl StackRuntime for NoRuntime {
    async fn ensure_images(&self, _: &[ImageRef]) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn apply(&self, _: &StackSpec<'_>) -> Result<ApplyReport, RuntimeError> {
        Ok(ApplyReport::default())
    }
    async fn remove_stack(&self, _: &str) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn deployed_stacks(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(Vec::new())
    }
    async fn watch_health(&self, _: &[StackSpec<'_>], _: Duration) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn remove_images(&self, _: &[ImageRef]) -> usize {
        0
    }
    async fn releases_in_use(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(Vec::new())
    }
}

/// A valid configuration with data directory `data`, the shipped safe-mode stack, an
/// unreachable Git endpoint and, if `controller`, an unreachable controller whose token file is
/// `data/token`.
pub fn config(data: &Path, controller: bool) -> AgentConfig {
    let safe_mode = Path::new(env!("CARGO_MANIFEST_DIR")).join("../safe-mode/compose.yaml");
    let mut text = format!(
        "device_id: pi-01\ndata_dir: {}\nsafe_mode_compose: {}\ngit:\n  endpoints:\n    - url: git://127.0.0.1:1/fleet.git\n",
        data.display(),
        safe_mode.display()
    );
    if controller {
        text.push_str(&format!(
            "controller:\n  url: http://127.0.0.1:1\n  token_file: {}\n",
            data.join("token").display()
        ));
    }
    AgentConfig::parse(&text, "agent.yaml").expect("valid")
}

/// Where [`FaultRuntime`] fails, set by the test and changed as it goes.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Every operation answers as an engine that is not there (transient).
    pub docker_gone: bool,
    /// `ensure_images` fails (a pull that cannot complete).
    pub pull_fails: bool,
    /// `apply` fails for stacks of these releases (`"safe-mode"` for the safe-mode stack).
    pub apply_fails: Vec<String>,
    /// `remove_stack` fails.
    pub remove_fails: bool,
    /// `watch_health` reports these releases unhealthy.
    pub unhealthy: Vec<String>,
    /// `watch_health` of these releases never returns: the agent dies during the window.
    pub hang_in_window: Vec<String>,
    /// `apply` of these releases never returns: the agent dies while applying.
    pub hang_in_apply: Vec<String>,
}

/// What [`FaultRuntime`] saw and runs.
#[derive(Debug, Default)]
pub struct FaultState {
    /// The faults in force.
    pub faults: Faults,
    /// Deployed stacks: name → release.
    pub deployed: BTreeMap<String, String>,
    /// Every successful apply, in order: (stack, release).
    pub applied: Vec<(String, String)>,
    /// Every health window watched, by release.
    pub watched: Vec<String>,
}

/// A runtime whose faults the test chooses. Clones share one state, so a test keeps a handle
/// after moving one into an [`crate::update::Updater`].
#[derive(Debug, Default, Clone)]
pub struct FaultRuntime(Arc<Mutex<FaultState>>);

impl FaultRuntime {
    /// The shared state (faults to change, what happened to read).
    pub fn state(&self) -> MutexGuard<'_, FaultState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many times stacks of `release` were applied.
    pub fn applies_of(&self, release: &str) -> usize {
        self.state()
            .applied
            .iter()
            .filter(|(_, r)| r == release)
            .count()
    }

    fn gone(&self) -> Result<(), RuntimeError> {
        if self.state().faults.docker_gone {
            Err(RuntimeError::unavailable(
                "cannot reach the Docker engine (fault injected)",
            ))
        } else {
            Ok(())
        }
    }
}

impl StackRuntime for FaultRuntime {
    async fn ensure_images(&self, _: &[ImageRef]) -> Result<(), RuntimeError> {
        self.gone()?;
        if self.state().faults.pull_fails {
            return Err(RuntimeError::failed("pull failed (fault injected)"));
        }
        Ok(())
    }
    async fn apply(&self, stack: &StackSpec<'_>) -> Result<ApplyReport, RuntimeError> {
        self.gone()?;
        let hang = self
            .state()
            .faults
            .hang_in_apply
            .iter()
            .any(|r| r == stack.release);
        if hang {
            std::future::pending::<()>().await;
        }
        let mut st = self.state();
        if st.faults.apply_fails.iter().any(|r| r == stack.release) {
            return Err(RuntimeError::failed(format!(
                "stack `{}` of {} failed to start (fault injected)",
                stack.name, stack.release
            )));
        }
        st.deployed
            .insert(stack.name.to_owned(), stack.release.to_owned());
        st.applied
            .push((stack.name.to_owned(), stack.release.to_owned()));
        Ok(ApplyReport::default())
    }
    async fn remove_stack(&self, name: &str) -> Result<(), RuntimeError> {
        self.gone()?;
        let mut st = self.state();
        if st.faults.remove_fails {
            return Err(RuntimeError::failed(format!(
                "cannot stop stack `{name}` (fault injected)"
            )));
        }
        st.deployed.remove(name);
        Ok(())
    }
    async fn deployed_stacks(&self) -> Result<Vec<String>, RuntimeError> {
        self.gone()?;
        Ok(self.state().deployed.keys().cloned().collect())
    }
    async fn watch_health(
        &self,
        stacks: &[StackSpec<'_>],
        _: Duration,
    ) -> Result<(), RuntimeError> {
        self.gone()?;
        let release = stacks
            .first()
            .map(|s| s.release.to_owned())
            .unwrap_or_default();
        self.state().watched.push(release.clone());
        if self.state().faults.hang_in_window.contains(&release) {
            std::future::pending::<()>().await;
        }
        if self.state().faults.unhealthy.contains(&release) {
            return Err(RuntimeError::failed(format!(
                "{release} is unhealthy (fault injected)"
            )));
        }
        Ok(())
    }
    async fn remove_images(&self, _: &[ImageRef]) -> usize {
        0
    }
    async fn releases_in_use(&self) -> Result<Vec<String>, RuntimeError> {
        self.gone()?;
        Ok(self.state().deployed.values().cloned().collect())
    }
}

/// A fleet repository (a copy of `examples/fleet-repo`) in a local bare repository the agent
/// fetches from over `file://`, with a work tree to commit releases in.
pub struct LocalFleet {
    /// The bare repository.
    pub bare: PathBuf,
    /// The work tree.
    pub work: fleet_testkit::git_daemon::WorkRepo,
}

impl LocalFleet {
    /// The example repository, committed and pushed to `main` of a new bare repository under
    /// `dir`. Returns `None` (after a loud SKIP) when `git` is missing.
    pub fn new(dir: &Path, test: &str) -> Option<LocalFleet> {
        if !fleet_testkit::git_daemon::git_available(test) {
            return None;
        }
        let bare = fleet_testkit::git_daemon::init_bare(dir, "fleet.git");
        let work = fleet_testkit::git_daemon::WorkRepo::init(&dir.join("work"));
        copy_tree(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet-repo"),
            work.dir(),
        );
        let fleet = LocalFleet { bare, work };
        fleet.release("first release");
        Some(fleet)
    }

    /// Commits a new release (a changed `release-notes` file) and pushes it; returns its sha.
    pub fn release(&self, message: &str) -> fleet_config::protocol::ReleaseId {
        let sha = self.work.commit(
            message,
            &[(
                "release-notes",
                fleet_testkit::git_daemon::Entry::File(message.as_bytes()),
            )],
        );
        self.work.push(&self.bare, "main");
        sha.parse().expect("a sha")
    }

    /// An agent configuration (device `pi-lab-01` of the example inventory) with its data in
    /// `data`, fetching from this repository, with the shipped safe-mode stack.
    pub fn config(&self, data: &Path, controller: bool) -> AgentConfig {
        let safe_mode = Path::new(env!("CARGO_MANIFEST_DIR")).join("../safe-mode/compose.yaml");
        let mut text = format!(
            "device_id: pi-lab-01\ndata_dir: {}\nsafe_mode_compose: {}\nkeep_releases: 3\nmin_free_disk: 1MB\ngit:\n  endpoints:\n    - url: file://{}\n",
            data.display(),
            safe_mode.display(),
            self.bare.display()
        );
        if controller {
            text.push_str(&format!(
                "controller:\n  url: http://127.0.0.1:1\n  token_file: {}\n",
                data.join("token").display()
            ));
        }
        AgentConfig::parse(&text, "agent.yaml").expect("valid")
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read example") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).expect("copy");
        }
    }
}
