//! Starting the safe-mode stack the way the agent does: the same compose file (decoded by
//! `fleet-config`), the same runtime (`fleet-docker`), stack name, release label, directory
//! shape and secrets, so the containers are exactly the ones the agent's own safe mode makes
//! (same `fleet.config-hash`): when the agent comes back it keeps them or removes them, it
//! never finds strangers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fleet_config::compose::ComposeFile;
use fleet_docker::Runtime;

/// The safe-mode stack's name on the runtime (the agent's `update::safe_mode::SAFE_MODE_STACK`).
pub const SAFE_MODE_STACK: &str = "safe-mode";
/// The `fleet.release` label of safe-mode containers (the agent's too).
pub const SAFE_MODE_RELEASE: &str = "safe-mode";

/// Starting the safe stack failed.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// The compose file does not load; every problem is listed.
    #[error("the safe-mode stack {path} cannot be loaded:\n{problems}")]
    Load {
        /// The compose file.
        path: PathBuf,
        /// Its problems, one a line.
        problems: String,
    },
    /// The directory the runtime reads the stack from could not be prepared.
    #[error("cannot prepare the safe-mode stack directory {path}: {source}")]
    Directory {
        /// The link or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The secrets file is unreadable or malformed.
    #[error(transparent)]
    Secrets(#[from] fleet_docker::secrets::SecretsError),
    /// The engine refused.
    #[error(transparent)]
    Docker(#[from] fleet_docker::DockerError),
}

/// Where the safe stack comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafeStack {
    /// The installed compose file (never from Git).
    pub compose: PathBuf,
    /// `<secrets_dir>/safe-mode.env` fills its `${NAME}`s.
    pub secrets_dir: PathBuf,
    /// The agent's data directory (the stack is linked in as `safe-mode/stacks/safe-mode`).
    pub data_dir: PathBuf,
}

/// What [`ensure`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// Every service already had a running container: nothing was touched.
    AlreadyRunning,
    /// It was applied; these services' containers run now.
    Started(Vec<String>),
}

impl SafeStack {
    /// Decodes the compose file.
    pub fn load(&self) -> Result<ComposeFile, StackError> {
        let dir = self.stack_source();
        fleet_config::load::load_stack_dir(&dir, SAFE_MODE_STACK).map_err(|errors| {
            StackError::Load {
                path: self.compose.clone(),
                problems: errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
            }
        })
    }

    fn stack_source(&self) -> PathBuf {
        self.compose
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("/"))
    }

    /// `<data>/safe-mode`, shaped as the runtime expects a release: `stacks/safe-mode` links
    /// to the installed directory (as the agent makes it).
    fn release_root(&self) -> Result<PathBuf, StackError> {
        let root = self.data_dir.join("safe-mode");
        let stacks = root.join("stacks");
        let link = stacks.join(SAFE_MODE_STACK);
        let dir_err = |path: &Path| {
            let path = path.to_owned();
            move |source| StackError::Directory { path, source }
        };
        std::fs::create_dir_all(&stacks).map_err(dir_err(&stacks))?;
        let target = self.stack_source();
        if std::fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
            let tmp = stacks.join(format!(".{SAFE_MODE_STACK}.watchdog-tmp"));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&target, &tmp).map_err(dir_err(&tmp))?;
            std::fs::rename(&tmp, &link).map_err(dir_err(&link))?;
        }
        Ok(root)
    }
}

/// Makes the safe stack run on `runtime`: nothing when every service already runs, else the
/// agent's own apply (idempotent, so a crash halfway is repaired by the next call).
#[tracing::instrument(skip_all, fields(compose = %stack.compose.display()), err)]
pub async fn ensure(runtime: &Runtime, stack: &SafeStack) -> Result<Ensured, StackError> {
    let compose = stack.load()?;
    let health = runtime.health(SAFE_MODE_STACK, &compose).await?;
    let all_running = !health.services.is_empty() && health.services.values().all(|s| s.running);
    if all_running {
        tracing::debug!(state = ?health.state, "the safe stack already runs");
        return Ok(Ensured::AlreadyRunning);
    }
    let root = stack.release_root()?;
    let secrets: BTreeMap<String, String> =
        fleet_docker::secrets::load(&stack.secrets_dir, SAFE_MODE_STACK)?;
    let report = runtime
        .apply(
            SAFE_MODE_STACK,
            &compose,
            &root,
            SAFE_MODE_RELEASE,
            &secrets,
        )
        .await?;
    Ok(Ensured::Started(report.services.into_keys().collect()))
}
