//! Restarting the containers that bind-mount a directory, so they see what is there now.
//!
//! A bind mount pins the directory (or file) it resolved when its container started: after the
//! agent puts a fresh copy of a release directory in place of a drifted one, the containers
//! still see the drifted copy until they start again. A restart (the container's own stop
//! signal and grace period, then start) resolves the mounts anew; the container, its id and
//! its configuration stay.

use std::path::Path;
use std::time::Duration;

use bollard::models::ContainerSummaryStateEnum;
use bollard::query_parameters::RestartContainerOptionsBuilder;

use super::containers;
use super::error::DockerError;
use super::spec::DEFAULT_STOP_GRACE;
use super::Runtime;

/// Extra time the client waits for a restart beyond the container's own grace period.
const RESTART_CLIENT_SLACK: Duration = Duration::from_secs(30);

impl Runtime {
    /// Restarts every running container of this namespace with a bind mount whose source is
    /// `dir` or under it; returns their names.
    #[tracing::instrument(skip(self), fields(namespace = %self.namespace), err)]
    pub async fn restart_mounting(&self, dir: &Path) -> Result<Vec<String>, DockerError> {
        let listed = containers::list(&self.docker, &self.namespace, None).await?;
        let mut restarted = Vec::new();
        for c in &listed {
            let running = matches!(
                c.state,
                Some(ContainerSummaryStateEnum::RUNNING | ContainerSummaryStateEnum::RESTARTING)
            );
            let mounts_dir = c.mounts.iter().flatten().any(|m| {
                m.typ.as_deref() == Some("bind")
                    && m.source
                        .as_deref()
                        .is_some_and(|s| Path::new(s).starts_with(dir))
            });
            let Some(id) = c.id.as_deref() else {
                continue;
            };
            if !running || !mounts_dir {
                continue;
            }
            let name = containers::display_name(c);
            let grace = containers::inspect(&self.docker, id)
                .await?
                .and_then(|i| i.config.and_then(|c| c.stop_timeout))
                .and_then(|t| u64::try_from(t).ok())
                .map_or(DEFAULT_STOP_GRACE, Duration::from_secs);
            let options = RestartContainerOptionsBuilder::new()
                .t(i32::try_from(grace.as_secs()).unwrap_or(i32::MAX))
                .build();
            tracing::info!(container = %name, "restarting: a directory it bind-mounts was replaced");
            self.docker
                .clone()
                .with_timeout(grace + RESTART_CLIENT_SLACK)
                .restart_container(id, Some(options))
                .await
                .map_err(|source| DockerError::Container {
                    action: "restart".into(),
                    container: name.clone(),
                    source,
                })?;
            self.note_started(id);
            restarted.push(name);
        }
        Ok(restarted)
    }
}
