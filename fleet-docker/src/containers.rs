//! Engine calls on containers shared by apply, health and cleanup: listing a namespace's
//! containers, and stopping one the way its service asked (signal, grace period).

use std::time::Duration;

use bollard::models::{ContainerInspectResponse, ContainerSummary, ContainerSummaryStateEnum};
use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::Docker;

use super::error::{is_not_found, is_not_modified, DockerError};
use super::labels::{Namespace, LABEL_CONFIG_HASH, LABEL_SERVICE};
use super::plan::Observed;
use super::spec::DEFAULT_STOP_GRACE;

/// Extra time the client waits for a stop beyond the container's own grace period.
const STOP_CLIENT_SLACK: Duration = Duration::from_secs(30);

/// Every container (running or not) of the namespace, of one stack if given.
pub(crate) async fn list(
    docker: &Docker,
    ns: &Namespace,
    stack: Option<&str>,
) -> Result<Vec<ContainerSummary>, DockerError> {
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&ns.filters(stack))
        .build();
    docker
        .list_containers(Some(options))
        .await
        .map_err(|source| DockerError::List {
            what: "containers",
            scope: ns.scope(stack),
            source,
        })
}

/// A listed container as the planner sees it.
pub(crate) fn observed(c: &ContainerSummary) -> Observed {
    let label = |k: &str| c.labels.as_ref().and_then(|l| l.get(k)).cloned();
    Observed {
        id: c.id.clone().unwrap_or_default(),
        name: display_name(c),
        service: label(LABEL_SERVICE),
        config_hash: label(LABEL_CONFIG_HASH),
        running: matches!(
            c.state,
            Some(ContainerSummaryStateEnum::RUNNING | ContainerSummaryStateEnum::RESTARTING)
        ),
    }
}

/// The container's name without the leading `/`, else its id.
pub(crate) fn display_name(c: &ContainerSummary) -> String {
    c.names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_owned())
        .or_else(|| c.id.clone())
        .unwrap_or_default()
}

/// Inspects a container; `Ok(None)` when it does not exist.
pub(crate) async fn inspect(
    docker: &Docker,
    id: &str,
) -> Result<Option<ContainerInspectResponse>, DockerError> {
    match docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
    {
        Ok(c) => Ok(Some(c)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(source) => Err(DockerError::Container {
            action: "inspect".into(),
            container: id.to_owned(),
            source,
        }),
    }
}

/// Starts a container; starting a running one is not an error.
pub(crate) async fn start(docker: &Docker, id: &str, name: &str) -> Result<(), DockerError> {
    match docker.start_container(id, None).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_modified(&e) => Ok(()),
        Err(source) => Err(DockerError::Container {
            action: "start".into(),
            container: name.to_owned(),
            source,
        }),
    }
}

/// Stops a container with the stop signal and grace period it was created with (its
/// service's `stop_signal` and `stop_grace_period`, 10 s by default): the engine sends the
/// signal, waits the grace period, then kills. Then removes it with its anonymous volumes.
/// A container that is already gone is not an error.
#[tracing::instrument(skip(docker), err)]
pub(crate) async fn stop_and_remove(
    docker: &Docker,
    id: &str,
    container: &str,
) -> Result<(), DockerError> {
    let Some(info) = inspect(docker, id).await? else {
        return Ok(());
    };
    let grace = info
        .config
        .as_ref()
        .and_then(|c| c.stop_timeout)
        .and_then(|t| u64::try_from(t).ok())
        .map_or(DEFAULT_STOP_GRACE, Duration::from_secs);
    let running = info.state.as_ref().and_then(|s| s.running).unwrap_or(false);
    if running {
        tracing::info!(grace_secs = grace.as_secs(), "stopping container");
        // The request lasts as long as the grace period: give the client longer than that.
        let patient = docker.clone().with_timeout(grace + STOP_CLIENT_SLACK);
        let options = StopContainerOptionsBuilder::new()
            .t(i32::try_from(grace.as_secs()).unwrap_or(i32::MAX))
            .build();
        match patient.stop_container(id, Some(options)).await {
            Ok(()) => {}
            Err(e) if is_not_modified(&e) || is_not_found(&e) => {}
            Err(source) => {
                return Err(DockerError::Container {
                    action: "stop".into(),
                    container: container.to_owned(),
                    source,
                })
            }
        }
    }
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => {}
        Err(e) if is_not_found(&e) => {}
        Err(source) => {
            return Err(DockerError::Container {
                action: "remove".into(),
                container: container.to_owned(),
                source,
            })
        }
    }
    tracing::info!("container removed");
    Ok(())
}
