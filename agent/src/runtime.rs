//! What the update transaction needs from a container runtime. The Docker implementation is in
//! `docker`; the transaction is written against this trait so its steps read like DESIGN.md.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use fleet_config::compose::{ComposeFile, ImageRef};

pub use crate::docker::ApplyReport;

/// A runtime operation failed; the message names the stack, service or image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RuntimeError {
    /// What failed.
    pub message: String,
    /// The runtime did not answer at all (the engine is down or still starting): retrying the
    /// same thing later may work, so it says nothing about the release.
    pub transient: bool,
    /// An image pull stopped progressing (the registry stopped sending): a stuck update, not a
    /// refused one.
    pub stalled: bool,
}

impl RuntimeError {
    /// The runtime answered and refused (or the release cannot run as it is).
    pub fn failed(message: impl Into<String>) -> RuntimeError {
        RuntimeError {
            message: message.into(),
            transient: false,
            stalled: false,
        }
    }

    /// The runtime did not answer.
    pub fn unavailable(message: impl Into<String>) -> RuntimeError {
        RuntimeError {
            message: message.into(),
            transient: true,
            stalled: false,
        }
    }
}

impl From<crate::docker::DockerError> for RuntimeError {
    fn from(e: crate::docker::DockerError) -> RuntimeError {
        RuntimeError {
            transient: e.engine_unavailable(),
            stalled: matches!(e, crate::docker::DockerError::PullStalled { .. }),
            message: e.to_string(),
        }
    }
}

/// One stack as the runtime should run it.
#[derive(Debug, Clone)]
pub struct StackSpec<'a> {
    /// Stack name (its directory under `stacks/`).
    pub name: &'a str,
    /// The compose file.
    pub compose: &'a ComposeFile,
    /// The release's root directory; the stack's files are in `dir/stacks/<name>/`, where
    /// relative bind mounts and `env_file`s resolve.
    pub dir: &'a Path,
    /// The release it belongs to (for labels).
    pub release: &'a str,
    /// `${NAME}` values from the device's secrets file for this stack.
    pub secrets: &'a BTreeMap<String, String>,
}

/// The container runtime, as the update transaction uses it.
#[allow(async_fn_in_trait)]
pub trait StackRuntime {
    /// Makes every image available locally (pulling what is missing) before anything running
    /// is touched.
    async fn ensure_images(&self, images: &[ImageRef]) -> Result<(), RuntimeError>;
    /// Reconciles one stack: unchanged services keep running, changed ones are replaced.
    /// Returns what it did to each service (a runtime that cannot tell returns an empty
    /// report), from which supervision tells container drift ([`crate::drift`]).
    async fn apply(&self, stack: &StackSpec<'_>) -> Result<ApplyReport, RuntimeError>;
    /// Stops and removes a stack the release no longer runs.
    async fn remove_stack(&self, name: &str) -> Result<(), RuntimeError>;
    /// Names of the stacks currently deployed by this agent.
    async fn deployed_stacks(&self) -> Result<Vec<String>, RuntimeError>;
    /// Healthy only if every service of every stack stays healthy for the whole `window`;
    /// otherwise the reason, as early as it is known.
    async fn watch_health(
        &self,
        stacks: &[StackSpec<'_>],
        window: Duration,
    ) -> Result<(), RuntimeError>;
    /// Removes those of `images` that no container uses (to free disk); returns how many.
    async fn remove_images(&self, images: &[ImageRef]) -> usize;
    /// Releases whose directories running containers still bind-mount (never pruned).
    async fn releases_in_use(&self) -> Result<Vec<String>, RuntimeError>;
    /// Restarts the running containers that bind-mount `dir` or something under it (a release
    /// directory replaced under them: they see the new one once started again); returns their
    /// names. A runtime without bind mounts restarts none.
    async fn restart_mounting(&self, _dir: &Path) -> Result<Vec<String>, RuntimeError> {
        Ok(Vec::new())
    }
    /// Each service of `stacks` as it is now: its container, whether it runs, Docker's restart
    /// count (for [`crate::crash_loop`]). A runtime that cannot tell returns none.
    async fn restarts(
        &self,
        _stacks: &[StackSpec<'_>],
    ) -> Result<Vec<crate::crash_loop::ServiceRestarts>, RuntimeError> {
        Ok(Vec::new())
    }
    /// The newest `lines` log lines of each container of this agent (every stack, the
    /// safe-mode stack included) whose name `stack/service` `select` accepts, for a log
    /// request (see [`crate::logs`]). A runtime without containers has none.
    async fn container_logs(
        &self,
        _lines: u32,
        _select: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<fleet_config::protocol::logs::LogSource>, RuntimeError> {
        Ok(Vec::new())
    }
}

/// The Docker engine as the transaction's runtime.
pub struct DockerStacks {
    /// The engine connection, acting for one namespace.
    pub docker: crate::docker::Runtime,
    /// How often health is sampled during the window.
    pub health_poll: Duration,
}

impl StackRuntime for DockerStacks {
    async fn ensure_images(&self, images: &[ImageRef]) -> Result<(), RuntimeError> {
        self.docker
            .ensure_images(images)
            .await
            .map_err(RuntimeError::from)
    }

    async fn apply(&self, stack: &StackSpec<'_>) -> Result<ApplyReport, RuntimeError> {
        let report = self
            .docker
            .apply(
                stack.name,
                stack.compose,
                stack.dir,
                stack.release,
                stack.secrets,
            )
            .await
            .map_err(RuntimeError::from)?;
        tracing::info!(stack = stack.name, changes = ?report.services, removed = ?report.removed, "stack applied");
        Ok(report)
    }

    async fn remove_stack(&self, name: &str) -> Result<(), RuntimeError> {
        self.docker
            .remove_stack(name)
            .await
            .map(|_| ())
            .map_err(RuntimeError::from)
    }

    async fn deployed_stacks(&self) -> Result<Vec<String>, RuntimeError> {
        self.docker
            .stacks()
            .await
            .map(|s| s.into_iter().collect())
            .map_err(RuntimeError::from)
    }

    async fn watch_health(
        &self,
        stacks: &[StackSpec<'_>],
        window: Duration,
    ) -> Result<(), RuntimeError> {
        let watches = stacks.iter().map(|s| {
            self.docker
                .watch_health(s.name, s.compose, window, self.health_poll)
        });
        let results = futures_util::future::join_all(watches).await;
        let mut problems = Vec::new();
        for (spec, result) in stacks.iter().zip(results) {
            match result {
                Ok(h) if h.state == fleet_config::protocol::HealthState::Healthy => {}
                Ok(h) => problems.push(format!(
                    "stack `{}` is {:?}: {}",
                    spec.name,
                    h.state,
                    h.reason().unwrap_or_default()
                )),
                Err(e) => problems.push(format!("stack `{}`: {e}", spec.name)),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(RuntimeError::failed(problems.join("; ")))
        }
    }

    async fn remove_images(&self, images: &[ImageRef]) -> usize {
        self.docker.remove_images_if_unused(images).await.len()
    }

    async fn restarts(
        &self,
        stacks: &[StackSpec<'_>],
    ) -> Result<Vec<crate::crash_loop::ServiceRestarts>, RuntimeError> {
        let mut out = Vec::new();
        for s in stacks {
            let health = self.docker.health(s.name, s.compose).await?;
            for (service, h) in health.services {
                out.push(crate::crash_loop::ServiceRestarts {
                    service: format!("{}/{service}", s.name),
                    container_id: h.container_id,
                    running: h.running,
                    restart_count: h.restart_count,
                });
            }
        }
        Ok(out)
    }

    async fn restart_mounting(&self, dir: &Path) -> Result<Vec<String>, RuntimeError> {
        self.docker
            .restart_mounting(dir)
            .await
            .map_err(RuntimeError::from)
    }

    async fn container_logs(
        &self,
        lines: u32,
        select: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<fleet_config::protocol::logs::LogSource>, RuntimeError> {
        self.docker
            .container_logs(lines, select)
            .await
            .map_err(RuntimeError::from)
    }

    async fn releases_in_use(&self) -> Result<Vec<String>, RuntimeError> {
        self.docker
            .releases_in_use()
            .await
            .map(|s| s.into_iter().collect())
            .map_err(RuntimeError::from)
    }
}
