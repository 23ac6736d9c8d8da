//! Boot recovery: after power loss at any instant the agent comes up on a complete, verified
//! release, or in safe mode when nothing valid can run.
//!
//! Interrupted checkouts and deletions are removed; an interrupted switch or health window goes
//! back to the journal's `from`; a corrupt journal is rebuilt from the symlinks. What to run is
//! decided by [`crate::recovery::plan`] (a pure function, tested by table); this file carries it
//! out, in an order a second cut cannot break: `current` is put back (durably) before the
//! journal says the device rests on it, so a cut in between only repeats this recovery. The
//! release to run is verified against its journaled digest first; one that fails falls back to
//! `previous`, and only when neither can run does the device enter safe mode. Before that, a
//! `current` whose files drifted is re-staged from the Git cache ([`super::drift`]). A runtime that
//! does not answer yet (Docker still starting after a power cut) is no reason for either: the
//! release is left in place and supervision starts it once the engine answers.

use fleet_config::protocol::{ReleaseId, UpdatePhase};

use super::{AgentError, Updater, SAFE_MODE_STACK};
use crate::fsutil::{remove_symlink, remove_tree, swap_symlink};
use crate::journal::Journal;
use crate::layout::DataDir;
use crate::problems::ProblemKind;
use crate::recovery::{self, Observed};
use crate::runtime::StackRuntime;

impl<R: StackRuntime> Updater<R> {
    /// Boot recovery: settles whatever an interrupted agent left, then makes the runtime run
    /// what `current` names (or the safe-mode stack when nothing valid can run).
    #[tracing::instrument(skip(self))]
    pub async fn recover(&mut self) -> Result<String, AgentError> {
        for leftover in self.data.staging_leftovers().unwrap_or_default() {
            tracing::info!(path = %leftover.display(), "removing an interrupted checkout or deletion");
            // Never trusted (only `releases/<sha>` is), so one that cannot go is reported, not
            // fatal: recovery goes on without it.
            let subject = leftover.display().to_string();
            match remove_tree(&leftover) {
                Ok(()) => self
                    .problems
                    .clear(ProblemKind::StagingStuck, Some(&subject)),
                Err(e) => self
                    .problems
                    .raise(ProblemKind::StagingStuck, Some(&subject), e),
            }
        }
        // Temporary files of a write the cut interrupted: never renamed into place, garbage.
        for dir in [self.data.root().to_path_buf(), self.data.releases()] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let is_temp = e
                    .file_name()
                    .to_str()
                    .is_some_and(crate::fsutil::is_temp_name);
                if is_temp && e.file_type().is_ok_and(|t| !t.is_dir()) {
                    let _ = crate::fsutil::remove_file(&e.path());
                }
            }
        }
        let journal = match Journal::load(&self.data.journal()) {
            Ok(j) => Ok(j),
            Err(e) => {
                tracing::warn!(error = %e, "journal unreadable; rebuilding it from the symlinks");
                Err(())
            }
        };
        let known = match &journal {
            Ok(Some(j)) => j.releases.clone(),
            _ => self.journal.releases.clone(),
        };
        let obs = Observed {
            journal,
            current: self.data.current(),
            previous: self.data.previous(),
            staged: self.data.staged_releases().unwrap_or_default(),
        };
        let plan = recovery::plan(&obs);
        tracing::info!(reason = %plan.reason, "boot recovery");
        // `current` first, durably; then the journal that rests on it.
        if let Some(target) = &plan.set_current {
            match target {
                Some(id) => swap_symlink(&self.data.current_link(), &DataDir::link_target(id))?,
                None => remove_symlink(&self.data.current_link())?,
            }
        }
        self.journal = plan.journal;
        if self.journal.releases.is_empty() {
            // A rebuilt journal keeps the digests the one in memory knew.
            self.journal.releases = known;
        }
        self.trust_unrecorded_releases();
        self.save()?;
        self.metrics
            .set_current(self.journal.from.as_ref().map(ReleaseId::as_str));
        if self.journal.phase == UpdatePhase::SafeMode {
            let why = self
                .journal
                .safe_mode
                .clone()
                .unwrap_or_else(|| plan.reason.clone());
            self.enter_safe_mode(&why).await;
            return Ok(plan.reason);
        }
        match plan.run {
            Some(id) => self.start_at_boot(id).await,
            None => self.remove_app_stacks().await,
        }
        Ok(plan.reason)
    }

    /// Releases on disk that the journal has no digest for were staged by an agent that did not
    /// record one: their digest as they are now is recorded, so from here on a change is seen.
    fn trust_unrecorded_releases(&mut self) {
        let links = [self.data.current(), self.data.previous()];
        for id in links.iter().filter_map(|l| l.release()) {
            if self.journal.staged_digest(id).is_some() {
                continue;
            }
            if let Ok(digest) = fleet_config::digest_dir(&self.data.release(id)) {
                tracing::info!(release = %id.short(), %digest, "recording the digest of a release staged before digests were journaled");
                self.journal.record_staged(id, digest);
            }
        }
    }

    /// Runs `id` at boot: verified first; if it cannot run, `previous`; if neither, safe mode.
    async fn start_at_boot(&mut self, id: ReleaseId) {
        // Files changed while the agent was down (or by the cut itself) are put back from the Git
        // cache first; a release that cannot be put back fails verification below.
        self.check_files(&id).await;
        self.next_drift_check =
            Some(tokio::time::Instant::now() + self.cfg.watch.drift_check_every);
        let problem = match self.load_staged(&id) {
            Err(e) => format!("release {} on disk is unusable: {e}", id.short()),
            Ok(staged) => match self.apply_release(&staged).await {
                Ok(_) => return,
                Err(e) if e.transient => {
                    tracing::warn!(release = %id.short(), error = %e, "the runtime does not answer yet: supervision starts the release when it does");
                    self.supervise_problem = Some(e.to_string());
                    return;
                }
                Err(e) => format!("cannot start release {} at boot: {e}", id.short()),
            },
        };
        tracing::error!(%problem, "falling back to the previous release");
        if let Some(previous) = self.data.previous().release().cloned() {
            if previous != id && !self.journal.is_bad(&previous) {
                if let Ok(staged) = self.load_staged(&previous) {
                    let swapped =
                        swap_symlink(&self.data.current_link(), &DataDir::link_target(&previous));
                    if swapped.is_ok() {
                        self.journal.from = Some(previous.clone());
                        if let Err(e) = self.save() {
                            tracing::error!(error = %e, "cannot write the journal");
                        }
                        self.metrics.set_current(Some(previous.as_str()));
                        match self.apply_release(&staged).await {
                            Ok(_) => return,
                            Err(e) if e.transient => {
                                self.supervise_problem = Some(e.to_string());
                                return;
                            }
                            Err(e) => {
                                let why = format!(
                                    "{problem}; the previous release {} cannot start either: {e}",
                                    previous.short()
                                );
                                self.enter_safe_mode(&why).await;
                                return;
                            }
                        }
                    }
                }
            }
        }
        self.enter_safe_mode(&format!("{problem}; no previous release to fall back to"))
            .await;
    }

    /// Nothing is installed (a first install was cut before its verdict): whatever it left
    /// running is removed, so no container runs that nothing supervises.
    async fn remove_app_stacks(&mut self) {
        let Ok(deployed) = self.runtime.deployed_stacks().await else {
            return;
        };
        for stack in deployed.iter().filter(|s| *s != SAFE_MODE_STACK) {
            tracing::warn!(%stack, "removing a stack no installed release runs");
            if let Err(e) = self.runtime.remove_stack(stack).await {
                tracing::error!(%stack, error = %e, "cannot remove it");
            }
        }
    }
}
