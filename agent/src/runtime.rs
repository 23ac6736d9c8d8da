//! What the update transaction needs from a container runtime. The Docker implementation is in
//! `docker`; the transaction is written against this trait so its steps read like DESIGN.md.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use fleet_config::compose::{ComposeFile, ImageRef};

/// A runtime operation failed; the message names the stack, service or image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RuntimeError(pub String);

/// One stack as the runtime should run it.
#[derive(Debug, Clone)]
pub struct StackSpec<'a> {
    /// Stack name (its directory under `stacks/`).
    pub name: &'a str,
    /// The compose file.
    pub compose: &'a ComposeFile,
    /// The stack's directory inside the release (relative bind mounts resolve against it).
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
    async fn apply(&self, stack: &StackSpec<'_>) -> Result<(), RuntimeError>;
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
    /// Removes images no deployed container uses (to free disk).
    async fn prune_images(&self) -> Result<u64, RuntimeError>;
}
