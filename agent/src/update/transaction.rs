//! The update transaction (DESIGN.md, steps 1–7): it ends with the device running either the
//! new release, healthy, or what it ran before.
//!
//! Guarantees, and the step that upholds each:
//! - Nothing running is touched before the release is staged complete, verified, validated and
//!   its images are present (steps 1–4): an unreachable Git, a bad digest, an invalid
//!   repository, a full disk or a failed pull leave the device exactly as it was.
//! - After power loss at any instant, `current` names a complete release: releases are
//!   published by renaming a fully written, read-only staging directory after its digest is
//!   journaled, and `current` only changes by an atomic symlink rename, with the journal written
//!   (temp + fsync + rename) before it. Recovery ([`crate::recovery`]) returns an interrupted
//!   switch to the journal's `from`.
//! - A release that fails its health window is rolled back and marked bad (the mark is durable
//!   before the rollback starts): it is not retried. One whose switch or health window is
//!   interrupted [`crate::recovery::MAX_ATTEMPTS`] times (the agent killed by a power cut, OOM,
//!   a panic) is marked bad by recovery: the count survives the restarts.

use std::time::Instant;

use fleet_config::protocol::{EventKind, ReleaseId, UpdatePhase, UpdateResult};
use fleet_config::TreeDigest;

use super::stuck::{self, StuckClock};
use super::{Prepare, Prepared, Updater};
use crate::fsutil::{remove_symlink, swap_symlink};
use crate::layout::DataDir;
use crate::runtime::{RuntimeError, StackRuntime};
use crate::stage::{self, Staged};
use fleet_git::GitError;

impl<R: StackRuntime> Updater<R> {
    /// The update transaction to `target` (steps 1–7). Returns how it ended; the device runs
    /// either the new release (succeeded) or what it ran before (every other result).
    pub async fn update_to(
        &mut self,
        target: &ReleaseId,
        expected: Option<TreeDigest>,
    ) -> UpdateResult {
        match self.prepare(target, expected).await {
            Prepare::Ready(prepared) => self.commit(prepared).await,
            Prepare::Done(result) => result,
        }
    }

    /// Steps 5–7 for a prepared release: swap, apply, health window, commit or roll back.
    #[tracing::instrument(skip_all, fields(release = %prepared.staged.id.short()))]
    pub async fn commit(&mut self, prepared: Box<Prepared>) -> UpdateResult {
        let result = self
            .switch_and_verify(&prepared.staged, prepared.from, prepared.clock)
            .await;
        self.metrics
            .set_last_update_seconds(prepared.started.elapsed().as_secs_f64());
        result
    }

    /// Gives up a prepared release before the swap (the emergency stop, or the controller
    /// names another release meanwhile): nothing running was touched, the release is not
    /// marked bad, and it stays staged for a later attempt.
    pub fn abandon(&mut self, prepared: Box<Prepared>, reason: String) -> UpdateResult {
        tracing::warn!(release = %prepared.staged.id.short(), %reason, "update abandoned before the swap");
        self.abort_before_swap(reason, false)
    }

    /// Steps 1–4 of the update transaction to `target`: disk, fetch, stage and verify (against
    /// `expected` if given), pull. Nothing running is touched; [`Updater::commit`] swaps.
    #[tracing::instrument(skip(self, expected), fields(release = %target.short()))]
    pub async fn prepare(&mut self, target: &ReleaseId, expected: Option<TreeDigest>) -> Prepare {
        let started = Instant::now();
        let current = self.data.current().release().cloned();
        if current.as_ref() == Some(target) && self.journal.safe_mode.is_none() {
            return Prepare::Done(UpdateResult::Succeeded {
                release: target.clone(),
            });
        }
        if self.journal.is_bad(target) {
            return Prepare::Done(UpdateResult::Skipped {
                reason: format!("release {} is marked bad on this device", target.short()),
            });
        }
        Prepare::from(self.prepare_steps(target, expected, current, started).await)
    }

    async fn prepare_steps(
        &mut self,
        target: &ReleaseId,
        expected: Option<TreeDigest>,
        current: Option<ReleaseId>,
        started: Instant,
    ) -> Result<Prepared, UpdateResult> {
        self.record(EventKind::UpdateStarted {
            release: target.clone(),
        });
        let mut clock = self.stuck_clock();
        // Step 1: disk.
        if let Err(reason) = self.ensure_disk(target).await {
            tracing::warn!(%reason, "update skipped");
            return Err(self.finish(UpdateResult::Skipped { reason }));
        }
        if self.journal.attempted.as_ref() != Some(target) {
            self.journal.attempts = 0;
            self.journal.attempted = None;
        }
        self.journal.from = current.clone();
        self.journal.to = Some(target.clone());
        self.journal.started_at_ms = Some(crate::journal::now_ms());
        // Step 2: fetch the pinned commit.
        self.journal.phase = UpdatePhase::Fetching;
        if let Err(e) = self.save() {
            return Err(self.abort_before_swap(format!("cannot write the journal: {e}"), false));
        }
        let fetched = {
            let (git, endpoints) = (self.git.clone(), self.endpoints.clone());
            let (sha, branch) = (target.as_str().to_owned(), self.cfg.git.branch.clone());
            let silence = self.cfg.git.failover_timeout;
            crate::blocking::run("the Git fetch", move || {
                git.fetch_commit(&endpoints, &sha, &branch, silence)
            })
            .await
        };
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(e) => return Err(self.abort_before_swap(e.to_string(), false)),
        };
        match fetched {
            Ok(outcome) => {
                if let Some(f) = outcome.fetched {
                    self.git_results(&f.failures, Some(&f.endpoint));
                }
            }
            Err(e) => {
                if let GitError::AllEndpointsFailed { attempts } = &e {
                    self.git_results(attempts, None);
                }
                return Err(
                    self.abort_before_swap(format!("cannot fetch {}: {e}", target.short()), false)
                );
            }
        }
        // Step 3: stage, verify, validate.
        self.journal.phase = UpdatePhase::Staging;
        if let Err(e) = self.save() {
            return Err(self.abort_before_swap(format!("cannot write the journal: {e}"), false));
        }
        let staging = Instant::now();
        let staged = {
            let (git, data) = (self.git.clone(), self.data.clone());
            let (id, device) = (target.clone(), self.cfg.device_id.clone());
            crate::blocking::run("staging the release", move || {
                stage::stage(&data, &id, expected, &device, |dst| {
                    git.checkout(id.as_str(), dst)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            })
            .await
        };
        let staged = match staged {
            Ok(staged) => staged,
            Err(e) => return Err(self.abort_before_swap(e.to_string(), false)),
        };
        let staged = match staged {
            Ok(s) => s,
            Err(e @ stage::StageError::Fs { .. }) | Err(e @ stage::StageError::Checkout { .. }) => {
                return Err(self.abort_before_swap(e.to_string(), false));
            }
            Err(e) => return Err(self.abort_before_swap(e.to_string(), true)),
        };
        // Local work on the blocking pool runs to its end (the systemd watchdog bounds a hung
        // disk); its time counts against the update's bound.
        clock.spend(staging.elapsed());
        // The digest is durable before the directory is published under the release's name, so
        // a release directory on disk is always one whose digest the journal knows.
        self.journal.record_staged(&staged.id, staged.digest);
        self.journal.phase = UpdatePhase::Staged;
        if let Err(e) = self.save() {
            return Err(self.abort_before_swap(format!("cannot write the journal: {e}"), false));
        }
        let published = {
            let data = self.data.clone();
            crate::blocking::run("publishing the release", move || {
                let published = stage::publish(&data, &staged);
                (staged, published)
            })
            .await
        };
        let staged = match published {
            Ok((staged, Ok(()))) => staged,
            Ok((_, Err(e))) => return Err(self.abort_before_swap(e.to_string(), false)),
            Err(e) => return Err(self.abort_before_swap(e.to_string(), false)),
        };
        // Step 4: images, before touching anything running.
        self.journal.phase = UpdatePhase::Pulling;
        if let Err(e) = self.save() {
            return Err(self.abort_before_swap(format!("cannot write the journal: {e}"), false));
        }
        let images: Vec<_> = staged
            .stacks
            .iter()
            .filter_map(|s| staged.repo.stacks.get(s))
            .flat_map(|c| c.services.values().map(|svc| svc.image.clone()))
            .collect();
        if let Err(e) = self.runtime.ensure_images(&images).await {
            let reason = format!("images for {} unavailable: {e}", target.short());
            if e.stalled {
                // Not the release's fault: tried again at the next check-in or poll.
                self.stuck(UpdatePhase::Pulling, &reason);
            }
            return Err(self.abort_before_swap(reason, false));
        }
        self.problems.clear(
            crate::problems::ProblemKind::UpdateStuck,
            Some(&crate::metrics::phase_name(UpdatePhase::Pulling)),
        );
        Ok(Prepared {
            staged,
            from: current,
            started,
            clock,
        })
    }

    /// A failure before the swap: nothing running was touched. `bad` marks the release so it is
    /// not retried (only for deterministic failures: digest, validation).
    fn abort_before_swap(&mut self, reason: String, bad: bool) -> UpdateResult {
        let release = self.journal.to.take();
        tracing::warn!(%reason, "update refused before the swap; the device keeps its release");
        self.journal.phase = UpdatePhase::Idle;
        self.journal.started_at_ms = None;
        match release {
            Some(release) if bad => {
                self.journal.mark_bad(&release, &reason);
                self.finish(UpdateResult::Rejected { release, reason })
            }
            _ => self.finish(UpdateResult::Skipped { reason }),
        }
    }

    /// Steps 5–7 for a staged release: journal, swap, apply, watch, commit or roll back.
    pub(super) async fn switch_and_verify(
        &mut self,
        staged: &Staged,
        from: Option<ReleaseId>,
        mut clock: StuckClock,
    ) -> UpdateResult {
        let target = staged.id.clone();
        self.journal.phase = UpdatePhase::Switching;
        self.journal.to = Some(target.clone());
        self.journal.from = from.clone();
        if self.journal.attempted.as_ref() != Some(&target) {
            self.journal.attempts = 0;
        }
        self.journal.attempted = Some(target.clone());
        self.journal.attempts += 1;
        if let Err(e) = self.save() {
            return self.abort_before_swap(format!("cannot write the journal: {e}"), false);
        }
        if let Err(e) = swap_symlink(&self.data.current_link(), &DataDir::link_target(&target)) {
            // The rename did not happen (or is undone below): the old release still runs.
            return self
                .roll_back(&target, from, format!("cannot swap `current`: {e}"))
                .await;
        }
        self.metrics.set_current(Some(target.as_str()));
        let bound = clock.bound(UpdatePhase::Switching);
        let t = Instant::now();
        match tokio::time::timeout(bound, self.apply_release(staged)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return self
                    .roll_back(&target, from, format!("applying the release failed: {e}"))
                    .await;
            }
            Err(_) => {
                let why = stuck::overran("applying the release", bound);
                self.stuck(
                    UpdatePhase::Switching,
                    &format!("{why} ({})", target.short()),
                );
                return self.roll_back(&target, from, format!("stuck: {why}")).await;
            }
        }
        clock.spend(t.elapsed());
        self.journal.phase = UpdatePhase::Verifying;
        if let Err(e) = self.save() {
            tracing::error!(error = %e, "cannot write the journal");
        }
        let bound = clock.bound(UpdatePhase::Verifying);
        match tokio::time::timeout(bound, self.watch(staged)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return self
                    .roll_back(&target, from, format!("health window failed: {e}"))
                    .await;
            }
            Err(_) => {
                let why = stuck::overran("the health window", bound);
                self.stuck(
                    UpdatePhase::Verifying,
                    &format!("{why} ({})", target.short()),
                );
                return self.roll_back(&target, from, format!("stuck: {why}")).await;
            }
        }
        // Step 7: commit.
        crate::fsops::mark(format!("healthy {target}"));
        if let Some(old) = &from {
            if old != &target {
                if let Err(e) = swap_symlink(&self.data.previous_link(), &DataDir::link_target(old))
                {
                    tracing::error!(error = %e, "cannot update `previous`");
                }
            }
        }
        self.journal.phase = UpdatePhase::Idle;
        self.journal.from = Some(target.clone());
        self.journal.to = None;
        self.journal.attempts = 0;
        self.journal.attempted = None;
        self.journal.started_at_ms = None;
        self.journal.safe_mode = None;
        let result = self.finish(UpdateResult::Succeeded {
            release: target.clone(),
        });
        self.committed_at = Some(tokio::time::Instant::now());
        // Whatever crash-looped before runs no more; an update went through.
        self.problems
            .clear_except(crate::problems::ProblemKind::CrashLoop, &[]);
        self.problems
            .clear_except(crate::problems::ProblemKind::UpdateStuck, &[]);
        self.collect_garbage(self.cfg.keep_releases, None).await;
        tracing::info!(release = %target.short(), "release is running and healthy");
        result
    }

    /// Returns to `from` after a failure past the swap and marks `target` bad.
    async fn roll_back(
        &mut self,
        target: &ReleaseId,
        from: Option<ReleaseId>,
        reason: String,
    ) -> UpdateResult {
        let started = Instant::now();
        tracing::error!(release = %target.short(), %reason, "rolling back");
        // The bad mark goes into the same durable write as `RollingBack`: a cut during the
        // rollback must not let the release be tried again.
        self.journal.mark_bad(target, &reason);
        self.journal.phase = UpdatePhase::RollingBack;
        if let Err(e) = self.save() {
            tracing::error!(error = %e, "cannot write the journal");
        }
        let restored = match &from {
            // Re-applying the running release failed (leaving safe mode): there is nothing
            // else to go back to.
            Some(old) if old == target => Err(format!(
                "release {} failed again and there is no other release to go back to",
                target.short()
            )),
            Some(old) => {
                let swapped = swap_symlink(&self.data.current_link(), &DataDir::link_target(old));
                match (swapped, self.load_staged(old)) {
                    (Ok(()), Ok(old_staged)) => {
                        let bound = UpdatePhase::RollingBack
                            .deadline(self.cfg.health_window)
                            .unwrap_or(std::time::Duration::MAX);
                        match tokio::time::timeout(bound, self.apply_release(&old_staged)).await {
                            Ok(applied) => applied.map(drop).map_err(|e| e.to_string()),
                            Err(_) => {
                                let why = stuck::overran("re-applying the previous release", bound);
                                self.stuck(UpdatePhase::RollingBack, &why);
                                Err(why)
                            }
                        }
                    }
                    (Err(e), _) => Err(e.to_string()),
                    (_, Err(e)) => Err(e.to_string()),
                }
            }
            None => remove_symlink(&self.data.current_link()).map_err(|e| e.to_string()),
        };
        self.metrics
            .set_current(from.as_ref().map(ReleaseId::as_str));
        self.journal.phase = UpdatePhase::Idle;
        self.journal.from = from.clone();
        self.journal.to = None;
        self.journal.attempts = 0;
        self.journal.attempted = None;
        self.journal.started_at_ms = None;
        let result = self.finish(UpdateResult::RolledBack {
            release: target.clone(),
            reason: reason.clone(),
        });
        match (restored, from) {
            (Ok(()), Some(old)) => tracing::info!(
                release = %old.short(),
                rollback_ms = started.elapsed().as_millis() as u64,
                "rolled back: the previous release runs again"
            ),
            (Ok(()), None) => {
                self.enter_safe_mode(&format!(
                    "the first release failed ({reason}) and there is nothing to go back to"
                ))
                .await
            }
            (Err(e), _) => self.enter_safe_mode(&format!("rollback failed: {e}")).await,
        }
        result
    }

    async fn watch(&self, staged: &Staged) -> Result<(), RuntimeError> {
        let secrets = self.secrets_for(staged)?;
        let dir = self.data.release(&staged.id);
        let specs = self.stack_specs(staged, &secrets, &dir);
        self.runtime
            .watch_health(&specs, self.cfg.health_window)
            .await
    }
}
