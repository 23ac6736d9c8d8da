//! Making sure a stack's images are in the engine's local store: present ones are used as
//! they are, missing ones are pulled with throttled progress logs.

use std::time::{Duration, Instant};

use bollard::query_parameters::CreateImageOptionsBuilder;
use bollard::Docker;
use fleet_config::compose::ImageRef;
use futures_util::StreamExt;

use super::error::{is_not_found, DockerError};

/// At most one progress line per image this often while it is pulled.
pub const PULL_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// True when `image` is in the local store.
pub(crate) async fn is_present(docker: &Docker, image: &str) -> Result<bool, DockerError> {
    match docker.inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(source) => Err(DockerError::InspectImage {
            image: image.to_owned(),
            source,
        }),
    }
}

/// Pulls `image`, logging the engine's status lines at most every [`PULL_LOG_INTERVAL`]. Fails
/// when the engine sends nothing for `stall` (the engine reports progress as bytes arrive, so
/// silence means the registry stopped sending); dropping the request cancels the engine's pull.
#[tracing::instrument(skip(docker), fields(image = %image), err)]
pub(crate) async fn pull(
    docker: &Docker,
    image: &ImageRef,
    stall: Duration,
) -> Result<(), DockerError> {
    let name = image.to_string();
    let repo = match &image.domain {
        Some(d) => format!("{d}/{}", image.path),
        None => image.path.clone(),
    };
    // The API takes a tag or a digest; a digest pins the content, so it wins.
    let tag = image
        .digest
        .clone()
        .or_else(|| image.tag.clone())
        .unwrap_or_else(|| "latest".to_owned());
    let options = CreateImageOptionsBuilder::new()
        .from_image(&repo)
        .tag(&tag)
        .build();
    tracing::info!("pulling image");
    let mut stream = docker.create_image(Some(options), None, None);
    let mut last_log: Option<Instant> = None;
    let mut last_status = String::new();
    loop {
        let Ok(next) = tokio::time::timeout(stall, stream.next()).await else {
            tracing::warn!(
                stall_s = stall.as_secs_f64(),
                last = %last_status,
                "image pull stalled; giving up"
            );
            return Err(DockerError::PullStalled {
                image: name,
                after: stall,
            });
        };
        let Some(item) = next else { break };
        let info = item.map_err(|source| DockerError::Pull {
            image: name.clone(),
            source,
        })?;
        let Some(status) = info.status else { continue };
        let due = last_log.is_none_or(|t| t.elapsed() >= PULL_LOG_INTERVAL);
        if due && status != last_status {
            tracing::info!(layer = info.id.as_deref().unwrap_or(""), %status, "pull progress");
            last_log = Some(Instant::now());
            last_status = status;
        }
    }
    tracing::info!("image pulled");
    Ok(())
}

impl super::Runtime {
    /// Makes every image local. An image already in the engine's store is used as it is
    /// (never re-pulled, so a device without network keeps working); a missing one is pulled.
    /// Fails on the first image that cannot be pulled, naming it.
    #[tracing::instrument(skip_all, fields(namespace = %self.namespace, images = images.len()), err)]
    pub async fn ensure_images(&self, images: &[ImageRef]) -> Result<(), DockerError> {
        let mut done: Vec<String> = Vec::new();
        for image in images {
            let name = image.to_string();
            if done.contains(&name) {
                continue;
            }
            if is_present(&self.docker, &name).await? {
                tracing::debug!(image = %name, "image present");
            } else {
                pull(&self.docker, image, self.options.pull_stall).await?;
                if !is_present(&self.docker, &name).await? {
                    return Err(DockerError::Pull {
                        image: name,
                        source: bollard::errors::Error::DockerResponseServerError {
                            status_code: 404,
                            message: "the pull finished but the image is not in the local store"
                                .into(),
                        },
                    });
                }
            }
            done.push(name);
        }
        Ok(())
    }
}
