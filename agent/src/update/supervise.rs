//! While idle: `current` keeps running (what stopped is started again, strays are removed), in
//! safe mode the safe-mode stack does, and a rollback asked for by hand goes through the same
//! transaction as an update.
//!
//! Each pass is also where config drift is found ([`super::drift`]): every
//! `watch.drift_check_every` the files of `current` are digested again (and re-staged from the
//! Git cache when they changed), and containers the pass had to replace or create are reported.
//!
//! Starting what stopped would hide a crash loop, so each pass first counts every service's
//! restarts ([`crate::crash_loop`]: Docker's `RestartCount` and the ones supervision makes).
//! At `alerts.crash_loop.restarts` within `alerts.crash_loop.within` (fleet.yaml): soon after an
//! update this agent made (`watch.crash_loop_rollback_within`) it rolls back to `previous` and
//! marks the release bad; otherwise it enters safe mode, and does not re-apply that release on
//! its own (a new release or an operator takes the device out).

use std::time::Duration;

use fleet_config::protocol::{EventKind, ReleaseId, UpdatePhase, UpdateResult};

use super::drift::FileCheck;
use super::Updater;
use crate::crash_loop::{respond, CrashLoop, Response};
use crate::problems::ProblemKind;
use crate::runtime::StackRuntime;
use crate::stage::Staged;

/// How every crash-loop safe-mode reason starts (standalone mode does not re-apply a release
/// that went to safe mode this way).
pub const CRASH_LOOP: &str = "crash loop:";

/// How often the loops look for a rollback request.
pub const REQUEST_CHECK: Duration = Duration::from_secs(1);

impl<R: StackRuntime> Updater<R> {
    /// `fleet-agent rollback`: back to `previous` by hand, with the same transaction.
    pub async fn rollback_by_hand(&mut self) -> UpdateResult {
        self.roll_back_to_previous("rolled back by hand").await
    }

    /// Back to `previous` with the update transaction; when that succeeds, the release it left
    /// is marked bad with `why`.
    async fn roll_back_to_previous(&mut self, why: &str) -> UpdateResult {
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
        let clock = self.stuck_clock();
        let result = self
            .switch_and_verify(&staged, current.clone(), clock)
            .await;
        if let (UpdateResult::Succeeded { .. }, Some(cur)) = (&result, &current) {
            self.journal.mark_bad(cur, why);
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
        if self.drift_check_due() {
            if let FileCheck::Repaired = self.check_files(&current).await {
                // Re-read (and re-verify) the restored tree before it is applied.
                self.supervised = None;
            }
        }
        if self.supervised.as_ref().map(|s| &s.id) != Some(&current) {
            match self.load_staged(&current) {
                Ok(staged) => self.supervised = Some(staged),
                Err(e) => {
                    tracing::warn!(release = %current.short(), error = %e, "cannot re-read the current release to supervise it");
                    return;
                }
            }
        }
        let Some(staged) = self.supervised.clone() else {
            return;
        };
        if self.crash_loop_check(&staged).await {
            return;
        }
        // Only a release known to run as staged can have drifted: after a pass that could not
        // apply it (Docker down at boot), creating its containers is catching up, not drift.
        let was_running = self.supervise_problem.is_none();
        match self.apply_release(&staged).await {
            Ok(put_back) => {
                self.supervise_problem = None;
                for service in &put_back {
                    // Drift, not a crash: the new container is not a restart.
                    self.crash_loops.rebase(service);
                }
                if was_running && !put_back.is_empty() {
                    self.report_service_drift(&current, put_back);
                }
            }
            Err(e) => {
                tracing::warn!(release = %current.short(), error = %e, "cannot keep the current release running");
                self.supervise_problem = Some(e.to_string());
            }
        }
    }

    /// True in safe mode entered because of a crash loop: the release that looped is not
    /// re-applied on its own.
    pub fn in_crash_loop_safe_mode(&self) -> bool {
        self.journal
            .safe_mode
            .as_deref()
            .is_some_and(|r| r.starts_with(CRASH_LOOP))
    }

    /// Counts the restarts of `staged`'s services (it is `current`) and acts on a crash loop;
    /// true when it did (the pass is over).
    async fn crash_loop_check(&mut self, staged: &Staged) -> bool {
        if self.crash_loops_of.as_ref() != Some(&staged.id) {
            // Another release runs (the rollback's, or a new one): what looped is gone.
            self.crash_loops.reset();
            self.crash_loops_of = Some(staged.id.clone());
            self.problems.clear_except(ProblemKind::CrashLoop, &[]);
        }
        let Ok(secrets) = self.secrets_for(staged) else {
            return false;
        };
        let dir = self.data.release(&staged.id);
        let specs = self.stack_specs(staged, &secrets, &dir);
        let seen = match self.runtime.restarts(&specs).await {
            Ok(seen) => seen,
            Err(e) => {
                tracing::debug!(error = %e, "cannot count restarts");
                return false;
            }
        };
        let (t, _) = self.watch.thresholds();
        let now = tokio::time::Instant::now();
        let loops =
            self.crash_loops
                .observe(&seen, now, t.crash_loop_window, t.crash_loop_restarts);
        self.metrics.set_restarts_in_window(
            seen.iter()
                .map(|s| {
                    (
                        s.service.clone(),
                        self.crash_loops.restarts(&s.service) as u64,
                    )
                })
                .collect(),
        );
        if loops.is_empty() {
            return false;
        }
        self.on_crash_loop(&staged.id, &loops, t.crash_loop_window, now)
            .await;
        true
    }

    async fn on_crash_loop(
        &mut self,
        release: &ReleaseId,
        loops: &[CrashLoop],
        window: Duration,
        now: tokio::time::Instant,
    ) {
        let what: Vec<String> = loops
            .iter()
            .map(|l| format!("`{}` restarted {} times", l.service, l.restarts))
            .collect();
        let reason = format!(
            "{CRASH_LOOP} {} within {} (alerts.crash_loop) in release {}",
            what.join(", "),
            fleet_config::units::format_duration(window),
            release.short()
        );
        for l in loops {
            self.problems
                .raise(ProblemKind::CrashLoop, Some(&l.service), &reason);
        }
        self.flush_problem_events();
        let previous = self.data.previous().release().cloned();
        let response = respond(
            self.committed_at,
            now,
            self.cfg.watch.crash_loop_rollback_within,
            previous.is_some(),
        );
        self.metrics.count_crash_loop(match response {
            Response::RollBack => "rollback",
            Response::SafeMode => "safe_mode",
        });
        match response {
            Response::RollBack => {
                tracing::error!(release = %release.short(), %reason, "crash loop soon after an update: rolling back");
                let result = self.roll_back_to_previous(&reason).await;
                tracing::info!(result = ?result, "crash-loop rollback finished");
            }
            Response::SafeMode => self.enter_safe_mode(&reason).await,
        }
        // The problem stays until another release runs (in safe mode, until it is left).
        self.crash_loops.reset();
        self.flush_problem_events();
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
