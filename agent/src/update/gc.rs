//! Disk: an update starts only with `min_free_disk` free, and pruning never removes `current`,
//! `previous`, the release being installed or one a running container still mounts.
//!
//! Of a pruned release's images, only those no kept release and not the safe-mode stack need are
//! removed. Which releases to prune is decided by [`crate::gc`] (by staging order, never by
//! clock); this file carries it out. A release is deleted by renaming it aside first, so a cut
//! in the middle never leaves a half-deleted tree under the release's name.

use fleet_config::protocol::ReleaseId;

use super::{Updater, SAFE_MODE_STACK};
use crate::fsutil::{remove_dir_aside, remove_tree};
use crate::gc::{available_space, releases_to_prune, StagedRelease};
use crate::runtime::StackRuntime;

impl<R: StackRuntime> Updater<R> {
    /// Step 1's disk check: prune old releases and unused images when short; `Err(reason)` when
    /// still short.
    pub(super) async fn ensure_disk(&mut self, target: &ReleaseId) -> Result<(), String> {
        let need = self.cfg.min_free_disk;
        let free = available_space(self.data.root())
            .map_err(|e| format!("cannot read free disk space: {e}"))?;
        if free >= need {
            return Ok(());
        }
        tracing::warn!(
            free,
            need,
            "low on disk: pruning old releases and unused images"
        );
        self.collect_garbage(0, Some(target)).await;
        let free = available_space(self.data.root())
            .map_err(|e| format!("cannot read free disk space: {e}"))?;
        if free >= need {
            return Ok(());
        }
        Err(format!(
            "only {} MB free in {} after pruning, {} MB needed (min_free_disk): update skipped",
            free >> 20,
            self.data.root().display(),
            need >> 20
        ))
    }

    /// The disk is low while idle (the watcher says so): prunes every release but `current`,
    /// `previous` and those in use (rollback needs no more), their unused images, and the
    /// leftovers of a Git cache set aside as corrupt (`git-cache.git.corrupt-*`).
    pub(super) async fn relieve_disk(&mut self) {
        let before = available_space(self.data.root()).ok();
        self.collect_garbage(0, None).await;
        let cache = self.data.git_cache();
        let prefix = format!(
            "{}.corrupt-",
            cache
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        if let Ok(entries) = std::fs::read_dir(self.data.root()) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    match remove_tree(&e.path()) {
                        Ok(()) => {
                            tracing::info!(path = %e.path().display(), "removed a corrupt Git cache set aside earlier")
                        }
                        Err(err) => {
                            tracing::warn!(path = %e.path().display(), error = %err, "cannot remove a corrupt Git cache set aside earlier")
                        }
                    }
                }
            }
        }
        let after = available_space(self.data.root()).ok();
        tracing::info!(
            free_before = before,
            free_after = after,
            "low on disk while idle: pruned"
        );
    }

    /// The releases never pruned: `current`, `previous`, the one being installed, and those
    /// whose directories running containers still bind-mount.
    async fn protected_releases(&self, target: Option<&ReleaseId>) -> Vec<ReleaseId> {
        let mut out: Vec<ReleaseId> = target.into_iter().cloned().collect();
        out.extend(self.data.current().release().cloned());
        out.extend(self.data.previous().release().cloned());
        match self.runtime.releases_in_use().await {
            Ok(in_use) => out.extend(in_use.iter().filter_map(|r| r.parse().ok())),
            Err(e) => {
                // Without knowing, keep everything a container might use.
                tracing::warn!(error = %e, "cannot list releases in use; pruning nothing");
                out.extend(self.data.staged_releases().unwrap_or_default());
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Deletes staged releases beyond `keep` (protected ones always stay); returns, for each
    /// release deleted, the images it used.
    fn prune_releases(
        &mut self,
        keep: usize,
        protected: &[ReleaseId],
    ) -> Vec<Vec<fleet_config::compose::ImageRef>> {
        let staged: Vec<StagedRelease> = self
            .data
            .staged_releases()
            .unwrap_or_default()
            .into_iter()
            .map(|id| StagedRelease {
                // Unknown to the journal (staged before it kept an order): oldest.
                order: self.journal.releases.get(&id).map_or(0, |r| r.seq),
                id,
            })
            .collect();
        let protected: Vec<&ReleaseId> = protected.iter().collect();
        let mut all_images = Vec::new();
        for id in releases_to_prune(&staged, keep, &protected) {
            let images = self.release_images(&id);
            tracing::info!(release = %id.short(), "removing an old release");
            let aside = self.data.trash(&id);
            let removed = remove_tree(&aside)
                .and_then(|()| remove_dir_aside(&self.data.release(&id), &aside));
            match removed {
                Ok(()) => {
                    self.journal.releases.remove(&id);
                    all_images.push(images);
                }
                Err(e) => {
                    tracing::warn!(release = %id.short(), error = %e, "cannot remove an old release")
                }
            }
        }
        if !all_images.is_empty() {
            if let Err(e) = self.save() {
                tracing::warn!(error = %e, "cannot write the journal after pruning");
            }
        }
        all_images
    }

    /// The images a staged release's stacks use on this device (empty if unreadable).
    fn release_images(&self, id: &ReleaseId) -> Vec<fleet_config::compose::ImageRef> {
        match self.load_staged(id) {
            Ok(staged) => staged
                .stacks
                .iter()
                .filter_map(|s| staged.repo.stacks.get(s))
                .flat_map(|c| c.services.values().map(|svc| svc.image.clone()))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The safe-mode stack's images: loaded at provisioning, never removed.
    fn safe_mode_images(&self) -> Vec<fleet_config::compose::ImageRef> {
        self.cfg
            .safe_mode_compose
            .parent()
            .and_then(|dir| fleet_config::load::load_stack_dir(dir, SAFE_MODE_STACK).ok())
            .map(|c| c.services.values().map(|s| s.image.clone()).collect())
            .unwrap_or_default()
    }

    /// Keeps at most `keep` staged releases (protected ones always, `target` among them) and
    /// removes the images of the deleted ones that no kept release nor safe mode needs.
    pub(super) async fn collect_garbage(&mut self, keep: usize, target: Option<&ReleaseId>) {
        let protected = self.protected_releases(target).await;
        let pruned = self.prune_releases(keep, &protected);
        if pruned.is_empty() {
            return;
        }
        let needed: std::collections::BTreeSet<String> = protected
            .iter()
            .flat_map(|id| self.release_images(id))
            .chain(self.safe_mode_images())
            .map(|i| i.to_string())
            .collect();
        let candidates: Vec<_> = pruned
            .into_iter()
            .flatten()
            .filter(|i| !needed.contains(&i.to_string()))
            .collect();
        let removed = self.runtime.remove_images(&candidates).await;
        tracing::info!(removed, "removed images of pruned releases");
    }
}
