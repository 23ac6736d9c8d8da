//! While idle: `current` keeps running (what stopped is started again, strays are removed), in
//! safe mode the safe-mode stack does, and a rollback asked for by hand goes through the same
//! transaction as an update.

use std::time::Duration;

use fleet_config::protocol::{EventKind, UpdatePhase, UpdateResult};

use super::Updater;
use crate::runtime::StackRuntime;

/// How often the loops look for a rollback request.
pub const REQUEST_CHECK: Duration = Duration::from_secs(1);

impl<R: StackRuntime> Updater<R> {
    /// `fleet-agent rollback`: back to `previous` by hand, with the same transaction.
    pub async fn rollback_by_hand(&mut self) -> UpdateResult {
        let Some(previous) = self.data.previous().release().cloned() else {
            return self.finish(UpdateResult::Skipped {
                reason: "there is no previous release to go back to".into(),
            });
        };
        let current = self.data.current().release().cloned();
        let staged = match self.load_staged(&previous) {
            Ok(s) => s,
            Err(e) => {
                return self.finish(UpdateResult::Skipped {
                    reason: format!("previous release is unusable: {e}"),
                })
            }
        };
        self.journal.bad_releases.retain(|b| b.release != previous);
        self.record(EventKind::UpdateStarted {
            release: previous.clone(),
        });
        let result = self.switch_and_verify(&staged, current.clone()).await;
        if let (UpdateResult::Succeeded { .. }, Some(cur)) = (&result, &current) {
            self.journal.mark_bad(cur, "rolled back by hand");
            if let Err(e) = self.save() {
                tracing::error!(error = %e, "cannot write the journal");
            }
        }
        result
    }

    /// Keeps `current` running while idle: re-applies it so a container that stopped (by hand,
    /// after an engine restart, or because a stop the agent asked for before a power cut
    /// completed after recovery) is started again and strays are removed. Cheap when nothing
    /// changed: one container listing per stack.
    pub async fn supervise(&mut self) {
        if self.journal.safe_mode.is_some() {
            // In safe mode the safe stack is what must keep running (retried until it does).
            self.keep_safe_stack_running().await;
            return;
        }
        if self.journal.phase != UpdatePhase::Idle {
            return;
        }
        let Some(current) = self.data.current().release().cloned() else {
            return;
        };
        if self.supervised.as_ref().map(|s| &s.id) != Some(&current) {
            match self.load_staged(&current) {
                Ok(staged) => self.supervised = Some(staged),
                Err(e) => {
                    tracing::warn!(release = %current.short(), error = %e, "cannot re-read the current release to supervise it");
                    return;
                }
            }
        }
        let Some(staged) = self.supervised.as_ref() else {
            return;
        };
        match self.apply_release(staged).await {
            Ok(()) => self.supervise_problem = None,
            Err(e) => {
                tracing::warn!(release = %current.short(), error = %e, "cannot keep the current release running");
                self.supervise_problem = Some(e.to_string());
            }
        }
    }

    /// Carries out a rollback asked for by `fleet-agent rollback` (a `rollback.request` file),
    /// if there is one.
    pub async fn handle_rollback_request(&mut self) -> Option<UpdateResult> {
        if !self.data.rollback_request().exists() {
            return None;
        }
        let _ = crate::fsutil::remove_file(&self.data.rollback_request());
        tracing::warn!("rollback requested by hand");
        let result = self.rollback_by_hand().await;
        tracing::info!(result = ?result, "manual rollback finished");
        Some(result)
    }
}
