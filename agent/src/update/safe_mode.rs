//! Safe mode: when nothing valid can run, the device runs the safe-mode stack installed with the
//! agent and no other stack; it leaves safe mode only through the update transaction.
//!
//! Guarantee: entering safe mode never leaves the device with nothing running. The safe stack
//! is started first (its images present, its containers created and started) and only then are
//! the other stacks removed; a safe stack that does not start is retried on every supervision
//! pass until it runs, and whatever ran before keeps running meanwhile.

use std::path::PathBuf;

use fleet_config::compose::ComposeFile;
use fleet_config::protocol::{EventKind, UpdatePhase, UpdateResult};

use super::Updater;
use crate::fsutil::{create_dir_all, swap_symlink};
use crate::runtime::{StackRuntime, StackSpec};

/// Name of the safe-mode stack on the runtime.
pub const SAFE_MODE_STACK: &str = "safe-mode";

impl<R: StackRuntime> Updater<R> {
    /// Enters safe mode: journals it, starts the safe-mode stack installed with the agent, and
    /// once that runs removes every other stack.
    pub async fn enter_safe_mode(&mut self, reason: &str) {
        tracing::error!(%reason, "entering safe mode");
        self.journal.phase = UpdatePhase::SafeMode;
        self.journal.safe_mode = Some(reason.to_owned());
        if let Err(e) = self.save() {
            tracing::error!(error = %e, "cannot write the journal");
        }
        self.keep_safe_stack_running().await;
    }

    /// Starts (or keeps running) the safe-mode stack and, once it runs, removes every other
    /// stack. Returns whether it runs; when it does not, nothing else was removed and the
    /// problem is reported through [`Updater::supervise_problem`].
    pub(super) async fn keep_safe_stack_running(&mut self) -> bool {
        match self.start_safe_stack().await {
            Ok(()) => {
                match self.runtime.deployed_stacks().await {
                    Ok(deployed) => {
                        for s in deployed.iter().filter(|s| *s != SAFE_MODE_STACK) {
                            if let Err(e) = self.runtime.remove_stack(s).await {
                                tracing::error!(stack = %s, error = %e, "cannot remove a stack for safe mode");
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot list the stacks to remove for safe mode")
                    }
                }
                self.supervise_problem = None;
                true
            }
            Err(e) => {
                let problem = format!("the safe-mode stack does not run yet (retrying): {e}");
                tracing::error!(%problem);
                self.supervise_problem = Some(problem);
                false
            }
        }
    }

    /// Applies the safe-mode stack: its directory given the runtime's shape, its compose file
    /// loaded, its images present, its containers started.
    async fn start_safe_stack(&self) -> Result<(), String> {
        let path = &self.cfg.safe_mode_compose;
        let dir = path
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"));
        // The runtime reads a stack's files from `<root>/stacks/<name>/`: give the installed
        // safe-mode directory that shape with a symlink.
        let root = self.data.root().join("safe-mode");
        let link = root.join("stacks").join(SAFE_MODE_STACK);
        create_dir_all(&root.join("stacks"))
            .and_then(|()| swap_symlink(&link, &dir))
            .map_err(|e| format!("cannot prepare the safe-mode stack directory: {e}"))?;
        let compose: ComposeFile = fleet_config::load::load_stack_dir(&dir, SAFE_MODE_STACK)
            .map_err(|errors| {
                let first = errors.first().map(ToString::to_string).unwrap_or_default();
                format!("{} cannot be loaded: {first}", path.display())
            })?;
        let images: Vec<_> = compose.services.values().map(|s| s.image.clone()).collect();
        self.runtime
            .ensure_images(&images)
            .await
            .map_err(|e| format!("its images are not available: {e}"))?;
        let secrets =
            crate::secrets::load(&self.cfg.secrets_dir, SAFE_MODE_STACK).unwrap_or_default();
        let spec = StackSpec {
            name: SAFE_MODE_STACK,
            compose: &compose,
            dir: &root,
            release: "safe-mode",
            secrets: &secrets,
        };
        self.runtime
            .apply(&spec)
            .await
            .map_err(|e| format!("it failed to start: {e}"))?;
        let deployed = self
            .runtime
            .deployed_stacks()
            .await
            .map_err(|e| format!("cannot confirm it runs: {e}"))?;
        if deployed.iter().any(|s| s == SAFE_MODE_STACK) {
            Ok(())
        } else {
            Err("it was applied but the runtime does not list it".into())
        }
    }

    /// Leaves safe mode by applying `current` again through steps 5–7 (swap to itself, apply,
    /// health window). Healthy: safe mode is over. Not healthy: `current` is marked bad and
    /// the device stays in safe mode, now on its own account.
    pub async fn reapply_current(&mut self) -> UpdateResult {
        let Some(current) = self.data.current().release().cloned() else {
            return self.finish(UpdateResult::Skipped {
                reason: "there is no current release to leave safe mode with".into(),
            });
        };
        let staged = match self.load_staged(&current) {
            Ok(s) => s,
            Err(e) => {
                return self.finish(UpdateResult::Skipped {
                    reason: format!("current release is unusable: {e}"),
                })
            }
        };
        tracing::info!(release = %current.short(), "leaving safe mode: applying the current release again");
        self.record(EventKind::UpdateStarted {
            release: current.clone(),
        });
        let clock = self.stuck_clock();
        self.switch_and_verify(&staged, Some(current), clock).await
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn the_shipped_safe_mode_stack_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../safe-mode");
        let compose = fleet_config::load::load_stack_dir(&dir, super::SAFE_MODE_STACK)
            .unwrap_or_else(|e| panic!("{e:#?}"));
        let names: Vec<&str> = compose.services.keys().map(String::as_str).collect();
        assert_eq!(names, vec!["exporter", "logship", "sshd"]);
    }
}
