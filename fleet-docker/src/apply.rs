//! `apply`: reconcile one stack to its compose file, in this order, so that a failure leaves
//! as much running as possible and nothing half-made:
//!
//! 1. Build the whole desired state ([`super::spec`]): missing secrets, unreadable files and
//!    malformed fields fail here, before anything is touched.
//! 2. Make the images local.
//! 3. Observe the stack's containers and decide ([`super::plan`]): keep, create, remove.
//! 4. Stop and remove changed and obsolete containers, dependents first, each with its own
//!    stop signal and grace period.
//! 5. Create missing networks and volumes (a network whose definition changed is recreated).
//! 6. Create and start containers in dependency order, waiting for `service_healthy` and
//!    `service_completed_successfully` dependencies up to a bounded time.
//! 7. Remove the stack's networks that are no longer used.
//!
//! Running `apply` again with the same input changes nothing, so a crash at any step is
//! repaired by the next apply.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use bollard::models::{HealthStatusEnum, NetworkConnectRequest};
use bollard::query_parameters::{CreateContainerOptionsBuilder, ListNetworksOptionsBuilder};
use fleet_config::compose::{ComposeFile, DependsCondition, ImageRef};

use super::containers;
use super::error::{is_not_found, DockerError};
use super::labels::LABEL_CONFIG_HASH;
use super::plan;
use super::spec::{self, NetworkSpec, ServiceSpec, VolumeSpec};
use super::Runtime;

/// What `apply` did to one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceChange {
    /// Its container was unchanged and stays (started again if it had stopped).
    Kept {
        /// The container's id.
        container_id: String,
    },
    /// It had no container; one was created.
    Created {
        /// The new container's id.
        container_id: String,
    },
    /// Its definition changed: the old container was stopped and removed, a new one created.
    Replaced {
        /// The removed container's id.
        old_container_id: String,
        /// The new container's id.
        container_id: String,
    },
}

impl ServiceChange {
    /// The id of the container the service runs in now.
    pub fn container_id(&self) -> &str {
        match self {
            ServiceChange::Kept { container_id }
            | ServiceChange::Created { container_id }
            | ServiceChange::Replaced { container_id, .. } => container_id,
        }
    }
}

/// What `apply` did to a stack.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApplyReport {
    /// Every service of the compose file.
    pub services: BTreeMap<String, ServiceChange>,
    /// Names of containers removed because their service left the file.
    pub removed: Vec<String>,
}

impl Runtime {
    /// Reconciles stack `stack` to `compose`, as the module docs describe.
    ///
    /// `release_dir` is the release checkout (relative bind sources and `env_file`s resolve
    /// against `release_dir/stacks/<stack>/`); `release` is its id, written into the
    /// `fleet.release` label of containers this call creates; `secrets` fill `${NAME}`
    /// references in `environment`. A missing secret fails before anything is touched.
    ///
    /// On success every service has a started container whose `depends_on` conditions held
    /// when it started; whether it stays healthy is [`Runtime::watch_health`]'s question.
    #[tracing::instrument(skip(self, compose, secrets), fields(namespace = %self.namespace), err)]
    pub async fn apply(
        &self,
        stack: &str,
        compose: &ComposeFile,
        release_dir: &Path,
        release: &str,
        secrets: &BTreeMap<String, String>,
    ) -> Result<ApplyReport, DockerError> {
        let spec = spec::build(
            &self.namespace,
            stack,
            compose,
            release_dir,
            release,
            secrets,
        )?;
        let images: Vec<ImageRef> = compose.services.values().map(|s| s.image.clone()).collect();
        self.ensure_images(&images).await?;

        let observed: Vec<plan::Observed> =
            containers::list(&self.docker, &self.namespace, Some(stack))
                .await?
                .iter()
                .map(containers::observed)
                .collect();
        let desired: BTreeMap<String, String> = spec
            .services
            .iter()
            .map(|(n, s)| (n.clone(), s.config_hash.clone()))
            .collect();
        let mut plan = plan::plan(&desired, &observed);

        // Dependents before what they depend on; services no longer in the file first.
        let rank = |o: &plan::Observed| {
            o.service
                .as_ref()
                .and_then(|s| spec.order.iter().position(|n| n == s))
                .map_or(usize::MAX, |p| p + 1)
        };
        plan.remove.sort_by_key(|o| std::cmp::Reverse(rank(o)));
        let mut report = ApplyReport::default();
        let mut replaced: HashMap<String, String> = HashMap::new();
        for old in &plan.remove {
            containers::stop_and_remove(&self.docker, &old.id, &old.name).await?;
            match old.service.as_ref().filter(|s| desired.contains_key(*s)) {
                Some(s) => {
                    replaced.insert(s.clone(), old.id.clone());
                }
                None => report.removed.push(old.name.clone()),
            }
        }

        let unused_networks = self.ensure_networks(stack, &spec.networks).await?;
        self.ensure_volumes(&spec.volumes).await?;

        let mut ids: BTreeMap<String, String> = BTreeMap::new();
        for name in &spec.order {
            let Some(svc) = spec.services.get(name) else {
                continue;
            };
            self.wait_for_dependencies(stack, name, svc, &ids).await?;
            let change = match plan.keep.get(name) {
                Some((id, needs_start)) => {
                    if *needs_start {
                        tracing::info!(service = %name, "starting kept container");
                        containers::start(&self.docker, id, &svc.container_name).await?;
                        self.note_started(id);
                    } else {
                        tracing::debug!(service = %name, "container unchanged");
                    }
                    ServiceChange::Kept {
                        container_id: id.clone(),
                    }
                }
                None => {
                    let id = self.create_and_start(stack, name, svc).await?;
                    match replaced.remove(name) {
                        Some(old) => ServiceChange::Replaced {
                            old_container_id: old,
                            container_id: id,
                        },
                        None => ServiceChange::Created { container_id: id },
                    }
                }
            };
            ids.insert(name.clone(), change.container_id().to_owned());
            report.services.insert(name.clone(), change);
        }

        for network in unused_networks {
            match self.docker.remove_network(&network).await {
                Ok(()) => tracing::info!(%network, "removed unused network"),
                Err(e) if is_not_found(&e) => {}
                // Something outside the stack still uses it: harmless, try next time.
                Err(e) => tracing::warn!(%network, error = %e, "cannot remove unused network"),
            }
        }
        Ok(report)
    }

    #[tracing::instrument(skip(self, svc), fields(container = %svc.container_name, image = %svc.image), err)]
    async fn create_and_start(
        &self,
        stack: &str,
        service: &str,
        svc: &ServiceSpec,
    ) -> Result<String, DockerError> {
        let container_err = |action: String| {
            let container = svc.container_name.clone();
            move |source| DockerError::Container {
                action,
                container,
                source,
            }
        };
        let options = CreateContainerOptionsBuilder::new()
            .name(&svc.container_name)
            .build();
        let created = self
            .docker
            .create_container(Some(options), svc.body.clone())
            .await
            .map_err(container_err("create".into()))?;
        for warning in &created.warnings {
            tracing::warn!(%warning, "engine warning on create");
        }
        for (network, endpoint) in &svc.extra_networks {
            let request = NetworkConnectRequest {
                container: created.id.clone(),
                endpoint_config: Some(endpoint.clone()),
            };
            self.docker
                .connect_network(network, request)
                .await
                .map_err(container_err(format!("connect to network `{network}`")))?;
        }
        containers::start(&self.docker, &created.id, &svc.container_name).await?;
        self.note_started(&created.id);
        tracing::info!(id = %created.id, "container started");
        Ok(created.id)
    }

    /// Creates the stack's networks that are missing, recreates its own networks whose
    /// definition changed, and returns the names of its own networks no longer wanted.
    async fn ensure_networks(
        &self,
        stack: &str,
        wanted: &BTreeMap<String, NetworkSpec>,
    ) -> Result<Vec<String>, DockerError> {
        let options = ListNetworksOptionsBuilder::new()
            .filters(&self.namespace.filters(Some(stack)))
            .build();
        let ours = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(|source| DockerError::List {
                what: "networks",
                scope: self.namespace.scope(Some(stack)),
                source,
            })?;
        let ours: HashMap<String, Option<String>> = ours
            .into_iter()
            .filter_map(|n| {
                let hash = n
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_CONFIG_HASH))
                    .cloned();
                n.name.map(|name| (name, hash))
            })
            .collect();
        for (name, net) in wanted {
            if net.external {
                continue;
            }
            match ours.get(name) {
                Some(Some(hash)) if *hash == net.config_hash => continue,
                Some(_) => {
                    tracing::info!(network = %name, "network definition changed; recreating");
                    self.docker.remove_network(name).await.map_err(|source| {
                        DockerError::Network {
                            action: "remove",
                            network: name.clone(),
                            source,
                        }
                    })?;
                }
                None => {
                    // Not ours: an explicitly named network someone else made is used as is.
                    match self.docker.inspect_network(name, None).await {
                        Ok(_) => continue,
                        Err(e) if is_not_found(&e) => {}
                        Err(source) => {
                            return Err(DockerError::Network {
                                action: "inspect",
                                network: name.clone(),
                                source,
                            })
                        }
                    }
                }
            }
            self.docker
                .create_network(net.request.clone())
                .await
                .map_err(|source| DockerError::Network {
                    action: "create",
                    network: name.clone(),
                    source,
                })?;
            tracing::info!(network = %name, "network created");
        }
        Ok(ours
            .into_keys()
            .filter(|n| !wanted.contains_key(n))
            .collect())
    }

    /// Creates the stack's named volumes that do not exist yet. Existing volumes are never
    /// recreated: they hold data.
    async fn ensure_volumes(
        &self,
        wanted: &BTreeMap<String, VolumeSpec>,
    ) -> Result<(), DockerError> {
        for (name, vol) in wanted {
            if vol.external {
                continue;
            }
            match self.docker.inspect_volume(name).await {
                Ok(_) => continue,
                Err(e) if is_not_found(&e) => {}
                Err(source) => {
                    return Err(DockerError::Volume {
                        action: "inspect",
                        volume: name.clone(),
                        source,
                    })
                }
            }
            self.docker
                .create_volume(vol.request.clone())
                .await
                .map_err(|source| DockerError::Volume {
                    action: "create",
                    volume: name.clone(),
                    source,
                })?;
            tracing::info!(volume = %name, "volume created");
        }
        Ok(())
    }

    /// Waits until every `depends_on` condition of `svc` holds, at most
    /// [`super::RuntimeOptions::dependency_timeout`] for each.
    async fn wait_for_dependencies(
        &self,
        stack: &str,
        service: &str,
        svc: &ServiceSpec,
        ids: &BTreeMap<String, String>,
    ) -> Result<(), DockerError> {
        for (dep, condition) in &svc.depends_on {
            let what = match condition {
                DependsCondition::Started => continue,
                DependsCondition::Healthy => "healthy",
                DependsCondition::CompletedSuccessfully => "completed successfully",
            };
            let failed = |reason: String| DockerError::DependencyFailed {
                stack: stack.to_owned(),
                service: service.to_owned(),
                dependency: dep.clone(),
                reason,
            };
            let Some(id) = ids.get(dep) else {
                return Err(failed("has no container".into()));
            };
            tracing::info!(service, dependency = %dep, condition = what, "waiting for dependency");
            let started = Instant::now();
            loop {
                let Some(info) = containers::inspect(&self.docker, id).await? else {
                    return Err(failed("disappeared".into()));
                };
                let state = info.state.unwrap_or_default();
                let running = state.running.unwrap_or(false);
                let exit = state.exit_code.unwrap_or(0);
                match condition {
                    DependsCondition::Healthy => match state.health.and_then(|h| h.status) {
                        Some(HealthStatusEnum::HEALTHY) => break,
                        Some(HealthStatusEnum::UNHEALTHY) => {
                            return Err(failed("is unhealthy".into()))
                        }
                        Some(HealthStatusEnum::STARTING) if running => {}
                        _ if !running => {
                            return Err(failed(format!("exited with code {exit}")));
                        }
                        _ => return Err(failed("has no healthcheck to be healthy by".into())),
                    },
                    _ => {
                        if !running && state.status.is_some_and(|s| s.to_string() == "exited") {
                            if exit == 0 {
                                break;
                            }
                            return Err(failed(format!("exited with code {exit}")));
                        }
                    }
                }
                if started.elapsed() >= self.options.dependency_timeout {
                    return Err(DockerError::DependencyTimeout {
                        stack: stack.to_owned(),
                        service: service.to_owned(),
                        dependency: dep.clone(),
                        condition: what,
                        waited: started.elapsed(),
                    });
                }
                tokio::time::sleep(self.options.dependency_poll).await;
            }
        }
        Ok(())
    }
}
