//! Boot recovery: after power loss at any instant the agent comes up on a complete release, or
//! in safe mode when nothing valid can run.
//!
//! An interrupted checkout is removed; an interrupted switch or health window goes back to the
//! journal's `from`; a corrupt journal is rebuilt from the symlinks. What to run is decided by
//! [`crate::recovery::plan`] (a pure function, tested by table); this file carries it out.

use std::fs;

use fleet_config::protocol::{ReleaseId, UpdatePhase};

use super::{AgentError, Updater};
use crate::fsutil::{ctx, remove_symlink, swap_symlink};
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
            tracing::info!(path = %leftover.display(), "removing an interrupted checkout");
            // Never trusted (only `releases/<sha>` is), so one that cannot go is reported, not
            // fatal: recovery goes on without it.
            let subject = leftover.display().to_string();
            match fs::remove_dir_all(&leftover).map_err(ctx("remove staging", &leftover)) {
                Ok(()) => self
                    .problems
                    .clear(ProblemKind::StagingStuck, Some(&subject)),
                Err(e) => self
                    .problems
                    .raise(ProblemKind::StagingStuck, Some(&subject), e),
            }
        }
        let journal = match Journal::load(&self.data.journal()) {
            Ok(j) => Ok(j),
            Err(e) => {
                tracing::warn!(error = %e, "journal unreadable; rebuilding it from the symlinks");
                Err(())
            }
        };
        let obs = Observed {
            journal,
            current: self.data.current(),
            previous: self.data.previous(),
            staged: self.data.staged_releases().unwrap_or_default(),
        };
        let plan = recovery::plan(&obs);
        tracing::info!(reason = %plan.reason, "boot recovery");
        self.journal = plan.journal;
        self.save()?;
        if let Some(target) = &plan.set_current {
            match target {
                Some(id) => swap_symlink(&self.data.current_link(), &DataDir::link_target(id))?,
                None => remove_symlink(&self.data.current_link())?,
            }
        }
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
        if let Some(id) = plan.run {
            match self.load_staged(&id) {
                Ok(staged) => {
                    if let Err(e) = self.apply_release(&staged).await {
                        let why = format!("cannot start release {} at boot: {e}", id.short());
                        self.enter_safe_mode(&why).await;
                    }
                }
                Err(e) => {
                    let why = format!("release {} on disk is unusable: {e}", id.short());
                    self.enter_safe_mode(&why).await;
                }
            }
        }
        Ok(plan.reason)
    }
}
