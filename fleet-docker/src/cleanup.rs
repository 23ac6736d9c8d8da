//! Taking things away: one stack (`remove_stack`), or everything of a namespace
//! (`remove_all`, for tests and for switching a device to safe mode).

use std::collections::BTreeSet;

use bollard::query_parameters::{
    ListNetworksOptionsBuilder, ListVolumesOptionsBuilder, RemoveVolumeOptionsBuilder,
};

use super::containers;
use super::error::{is_not_found, DockerError};
use super::labels::{Namespace, LABEL_RELEASE, LABEL_STACK};
use super::Runtime;

/// What a removal took away, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// Containers.
    pub containers: Vec<String>,
    /// Networks.
    pub networks: Vec<String>,
    /// Volumes.
    pub volumes: Vec<String>,
}

impl Runtime {
    /// The stacks that have containers in this runtime's namespace, e.g. to remove those no
    /// longer in the desired set.
    pub async fn stacks(&self) -> Result<BTreeSet<String>, DockerError> {
        let listed = containers::list(&self.docker, &self.namespace, None).await?;
        Ok(listed
            .iter()
            .filter_map(|c| c.labels.as_ref().and_then(|l| l.get(LABEL_STACK)).cloned())
            .collect())
    }

    /// The releases named by the `fleet.release` label of this namespace's containers: the
    /// release directories their bind mounts may point into, which must not be pruned.
    pub async fn releases_in_use(&self) -> Result<BTreeSet<String>, DockerError> {
        let listed = containers::list(&self.docker, &self.namespace, None).await?;
        Ok(listed
            .iter()
            .filter_map(|c| {
                c.labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_RELEASE))
                    .cloned()
            })
            .collect())
    }

    /// Stops (honouring each service's stop signal and grace period) and removes every
    /// container of stack `stack`, and removes its networks. Named volumes are kept: they hold
    /// the stack's data, and a stack that comes back finds it again.
    #[tracing::instrument(skip(self), fields(namespace = %self.namespace), err)]
    pub async fn remove_stack(&self, stack: &str) -> Result<Removed, DockerError> {
        let mut removed = Removed {
            containers: self.remove_containers(&self.namespace, Some(stack)).await?,
            ..Default::default()
        };
        removed.networks = self.remove_networks(&self.namespace, Some(stack)).await?;
        Ok(removed)
    }

    /// Stops and removes every container, network and volume carrying
    /// `fleet.namespace=<namespace>`, of every stack. Afterwards the engine holds nothing of
    /// that namespace (unless another client creates something meanwhile).
    #[tracing::instrument(skip(self), err)]
    pub async fn remove_all(&self, namespace: &Namespace) -> Result<Removed, DockerError> {
        let containers = self.remove_containers(namespace, None).await?;
        let networks = self.remove_networks(namespace, None).await?;
        let options = ListVolumesOptionsBuilder::new()
            .filters(&namespace.filters(None))
            .build();
        let listed = self
            .docker
            .list_volumes(Some(options))
            .await
            .map_err(|source| DockerError::List {
                what: "volumes",
                scope: namespace.scope(None),
                source,
            })?;
        let mut volumes = Vec::new();
        for v in listed.volumes.unwrap_or_default() {
            let options = RemoveVolumeOptionsBuilder::new().force(true).build();
            match self.docker.remove_volume(&v.name, Some(options)).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(source) => {
                    return Err(DockerError::Volume {
                        action: "remove",
                        volume: v.name,
                        source,
                    })
                }
            }
            volumes.push(v.name);
        }
        tracing::info!(
            containers = containers.len(),
            networks = networks.len(),
            volumes = volumes.len(),
            "namespace removed"
        );
        Ok(Removed {
            containers,
            networks,
            volumes,
        })
    }

    async fn remove_containers(
        &self,
        ns: &Namespace,
        stack: Option<&str>,
    ) -> Result<Vec<String>, DockerError> {
        let mut names = Vec::new();
        for c in containers::list(&self.docker, ns, stack).await? {
            let name = containers::display_name(&c);
            if let Some(id) = &c.id {
                containers::stop_and_remove(&self.docker, id, &name).await?;
            }
            names.push(name);
        }
        Ok(names)
    }

    async fn remove_networks(
        &self,
        ns: &Namespace,
        stack: Option<&str>,
    ) -> Result<Vec<String>, DockerError> {
        let options = ListNetworksOptionsBuilder::new()
            .filters(&ns.filters(stack))
            .build();
        let listed = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(|source| DockerError::List {
                what: "networks",
                scope: ns.scope(stack),
                source,
            })?;
        let mut names = Vec::new();
        for n in listed {
            let Some(name) = n.name else { continue };
            match self.docker.remove_network(&name).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(source) => {
                    return Err(DockerError::Network {
                        action: "remove",
                        network: name,
                        source,
                    })
                }
            }
            names.push(name);
        }
        Ok(names)
    }
}

impl Runtime {
    /// Removes each of `images` that no container (of any namespace) uses, to free disk; an
    /// image in use, or already gone, is left alone. Never forced: an image a stopped
    /// container still needs stays. Returns the references removed.
    #[tracing::instrument(skip(self, images), fields(namespace = %self.namespace))]
    pub async fn remove_images_if_unused(
        &self,
        images: &[fleet_config::compose::ImageRef],
    ) -> Vec<String> {
        let mut removed = Vec::new();
        for image in images {
            let reference = image.to_string();
            match self
                .docker
                .remove_image(
                    &reference,
                    None::<bollard::query_parameters::RemoveImageOptions>,
                    None,
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(image = %reference, "removed an image no release needs");
                    removed.push(reference);
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    tracing::debug!(image = %reference, error = %e, "image kept (in use or not removable)")
                }
            }
        }
        removed
    }
}
