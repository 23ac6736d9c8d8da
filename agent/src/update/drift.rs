//! Config drift of the running release: found, put back and reported, never at the cost of a
//! working device.
//!
//! **Files.** Every `watch.drift_check_every` while idle, and at boot before `current` is
//! applied, the tree of `releases/<current>` is digested again and compared with the digest the
//! journal recorded when it was staged. On a mismatch the same commit is checked out of the Git
//! cache into `releases/.staging-<sha>` and verified against that recorded digest; the files
//! that differ are listed ([`crate::drift::differing_files`]); the fresh copy takes the
//! release's name by an atomic exchange ([`crate::stage::replace`]), so a power cut at any
//! instant leaves `current` naming a complete tree (the drifted one is then re-checked at boot,
//! the leftover removed by recovery). The containers that bind-mount the release are restarted
//! (they still saw the drifted copy) and supervision re-applies the release. The repair is
//! reported: a `drift_detected` event (controller mode), `fleet_agent_drift_detected_total
//! {kind="files"}`, and a warning naming the files.
//!
//! When the commit is not in the Git cache, or re-staging fails, nothing is touched: the
//! release keeps running as it is, the `drift_unrepaired` problem is raised, and the next
//! check tries again. (At boot such a release is not started: boot recovery falls back to
//! `previous`, as for any release whose digest no longer checks.)
//!
//! **Containers.** When supervision's apply of a release that was running had to replace a
//! container (its `fleet.config-hash` no longer matched) or create one (it was missing), that
//! is drift too: reported with those services and `{kind="services"}`. A container that merely
//! stopped or crashed is started again and kept: that is for crash-loop counting, not drift.

use fleet_config::protocol::{EventKind, ReleaseId};
use fleet_config::{digest_dir, TreeDigest};
use fleet_git::{GitCache, GitError};

use super::Updater;
use crate::blocking::BlockingError;
use crate::drift::{differing_files, FileDiff};
use crate::layout::DataDir;
use crate::problems::ProblemKind;
use crate::runtime::StackRuntime;
use crate::stage::{self, StageError};

/// Why drifted files could not be put back.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    /// The commit is not in the Git cache (pruned, or a cache rebuilt since).
    #[error("release {sha} is not in the Git cache; it is fetched with the next update")]
    NotInCache {
        /// The release.
        sha: ReleaseId,
    },
    /// The Git cache could not be read.
    #[error("reading the Git cache: {0}")]
    Git(#[from] GitError),
    /// The fresh checkout could not be staged, or its digest is not the recorded one.
    #[error(transparent)]
    Stage(#[from] StageError),
    /// The work did not complete on its worker thread.
    #[error(transparent)]
    Worker(#[from] BlockingError),
}

/// What a file check came to.
#[derive(Debug)]
pub(super) enum FileCheck {
    /// The tree has its recorded digest (or none is recorded to compare with).
    Clean,
    /// The tree had drifted and was replaced by a fresh checkout (reported).
    Repaired,
    /// The tree had drifted and could not be put back (the problem is raised).
    Unrepaired,
}

impl<R: StackRuntime> Updater<R> {
    /// True when the periodic file check is due; schedules the next one.
    pub(super) fn drift_check_due(&mut self) -> bool {
        let every = self.cfg.watch.drift_check_every;
        if every.is_zero() {
            return false;
        }
        let now = tokio::time::Instant::now();
        if self.next_drift_check.is_some_and(|at| now < at) {
            return false;
        }
        self.next_drift_check = Some(now + every);
        true
    }

    /// Digests `releases/<id>` again and, when it differs from the recorded digest, puts a
    /// fresh checkout in its place and reports what differed.
    pub(super) async fn check_files(&mut self, id: &ReleaseId) -> FileCheck {
        let Some(recorded) = self.journal.staged_digest(id) else {
            return FileCheck::Clean;
        };
        let dir = self.data.release(id);
        let digest =
            crate::blocking::run("digesting the running release", move || digest_dir(&dir)).await;
        match digest {
            Ok(Ok(d)) if d == recorded => {
                // Also one raised for a release boot recovery has since left.
                self.problems
                    .clear_except(ProblemKind::DriftUnrepaired, &[]);
                self.flush_problem_events();
                return FileCheck::Clean;
            }
            // Changed, or unreadable (a file made unreadable is drift too).
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "drift check did not complete");
                return FileCheck::Clean;
            }
        }
        tracing::warn!(release = %id.short(), %recorded, "the running release's files no longer have their recorded digest: re-staging it from the Git cache");
        let (git, data) = (self.git.clone(), self.data.clone());
        let (sha, device) = (id.clone(), self.cfg.device_id.clone());
        let repaired = crate::blocking::run("re-staging the drifted release", move || {
            restage(&data, &git, &sha, recorded, &device)
        })
        .await
        .map_err(DriftError::from)
        .and_then(|r| r);
        let diff = match repaired {
            Ok(diff) => diff,
            Err(e) => {
                tracing::error!(release = %id.short(), error = %e, "cannot put the drifted release back; it keeps running as it is, retried at the next drift check");
                self.problems.raise(
                    ProblemKind::DriftUnrepaired,
                    Some(id.as_str()),
                    format!(
                        "files of release {} differ from the release and cannot be re-staged: {}",
                        id.short(),
                        crate::problems::chain(&e)
                    ),
                );
                self.flush_problem_events();
                return FileCheck::Unrepaired;
            }
        };
        self.problems
            .clear_except(ProblemKind::DriftUnrepaired, &[]);
        let more = if diff.more > 0 {
            format!(" and {} more", diff.more)
        } else {
            String::new()
        };
        tracing::warn!(release = %id.short(), files = %format!("{}{more}", diff.listed.join(", ")), "config drift: files under `current` differed from the release; restored them from the Git cache");
        match self.runtime.restart_mounting(&self.data.release(id)).await {
            Ok(restarted) if !restarted.is_empty() => {
                tracing::info!(containers = ?restarted, "restarted the containers that bind-mount the restored release")
            }
            Ok(_) => {}
            // Supervision's apply keeps them running; the mount is refreshed at their next start.
            Err(e) => {
                tracing::warn!(error = %e, "cannot restart the containers that bind-mount the restored release")
            }
        }
        self.metrics.count_drift("files");
        self.record(EventKind::DriftDetected {
            release: id.clone(),
            files: diff.listed.clone(),
            more_files: diff.more,
            services: Vec::new(),
        });
        FileCheck::Repaired
    }

    /// Reports services that supervision's apply of the running release had to put back.
    pub(super) fn report_service_drift(&mut self, id: &ReleaseId, services: Vec<String>) {
        tracing::warn!(release = %id.short(), services = %services.join(", "), "config drift: containers differed from the release or were missing; replaced them");
        self.metrics.count_drift("services");
        self.record(EventKind::DriftDetected {
            release: id.clone(),
            files: Vec::new(),
            more_files: 0,
            services,
        });
    }
}

/// Checks `id` out of the cache into its staging directory, verified against `recorded`, lists
/// what differs from the published copy, and exchanges the two.
fn restage(
    data: &DataDir,
    git: &GitCache,
    id: &ReleaseId,
    recorded: TreeDigest,
    device: &str,
) -> Result<FileDiff, DriftError> {
    if !git.has_commit(id.as_str())? {
        return Err(DriftError::NotInCache { sha: id.clone() });
    }
    let fresh = stage::stage(data, id, Some(recorded), device, |dst| {
        git.checkout(id.as_str(), dst)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })?;
    let diff = match differing_files(&data.release(id), &data.staging(id)) {
        Ok(diff) => diff,
        Err(e) => {
            // Still repaired: what differed is only unknown.
            tracing::warn!(error = %e, "cannot list the files that differ");
            FileDiff::default()
        }
    };
    stage::replace(data, &fresh)?;
    Ok(diff)
}
