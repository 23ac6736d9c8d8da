//! Safe mode: when nothing valid can run, the device runs the safe-mode stack installed with the
//! agent and no other stack; it leaves safe mode only through the update transaction.

use std::fs;
use std::path::PathBuf;

use fleet_config::compose::ComposeFile;
use fleet_config::protocol::{EventKind, UpdatePhase, UpdateResult};

use super::Updater;
use crate::fsutil::swap_symlink;
use crate::runtime::{StackRuntime, StackSpec};

/// Name of the safe-mode stack on the runtime.
pub const SAFE_MODE_STACK: &str = "safe-mode";

impl<R: StackRuntime> Updater<R> {
    /// Runs the safe-mode stack installed with the agent, removing every other stack.
    pub async fn enter_safe_mode(&mut self, reason: &str) {
        tracing::error!(%reason, "entering safe mode");
        self.journal.phase = UpdatePhase::SafeMode;
        self.journal.safe_mode = Some(reason.to_owned());
        if let Err(e) = self.save() {
            tracing::error!(error = %e, "cannot write the journal");
        }
        let path = &self.cfg.safe_mode_compose;
        let dir = path
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"));
        // The runtime reads a stack's files from `<root>/stacks/<name>/`: give the installed
        // safe-mode directory that shape with a symlink.
        let root = self.data.root().join("safe-mode");
        let link = root.join("stacks").join(SAFE_MODE_STACK);
        let linked = fs::create_dir_all(root.join("stacks"))
            .map_err(|e| e.to_string())
            .and_then(|()| swap_symlink(&link, &dir).map_err(|e| e.to_string()));
        if let Err(e) = linked {
            tracing::error!(error = %e, "cannot prepare the safe-mode stack directory");
        }
        let compose: ComposeFile = match fleet_config::load::load_stack_dir(&dir, SAFE_MODE_STACK) {
            Ok(c) => c,
            Err(errors) => {
                let first = errors.first().map(ToString::to_string).unwrap_or_default();
                tracing::error!(path = %path.display(), error = %first, "the safe-mode stack cannot be loaded");
                return;
            }
        };
        if let Ok(deployed) = self.runtime.deployed_stacks().await {
            for s in deployed.iter().filter(|s| *s != SAFE_MODE_STACK) {
                if let Err(e) = self.runtime.remove_stack(s).await {
                    tracing::error!(stack = %s, error = %e, "cannot remove a stack for safe mode");
                }
            }
        }
        let secrets =
            crate::secrets::load(&self.cfg.secrets_dir, SAFE_MODE_STACK).unwrap_or_default();
        let spec = StackSpec {
            name: SAFE_MODE_STACK,
            compose: &compose,
            dir: &root,
            release: "safe-mode",
            secrets: &secrets,
        };
        if let Err(e) = self.runtime.apply(&spec).await {
            tracing::error!(error = %e, "the safe-mode stack failed to start");
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
        self.switch_and_verify(&staged, Some(current)).await
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
