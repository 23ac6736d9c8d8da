//! The Git watcher: polls the fleet repository (primary, then mirrors) and wakes at once on a
//! signed push webhook. A new head commit is checked out, validated and digested exactly as an
//! agent will; a valid one becomes a release (and, by policy, a rollout), an invalid one is
//! recorded as rejected with its errors and never rolled out. Only the leader watches, and
//! what it records is fenced by its lease epoch; a webhook that reaches a follower is handed to
//! the leader through the store ([`Db::request_watch`](crate::db::Db::request_watch)).

use std::path::PathBuf;
use std::time::Duration;

use fleet_config::protocol::ReleaseId;
use fleet_config::{digest_dir, validate_dir, FleetRepo, Severity, TreeDigest};
use fleet_git::{Endpoint, GitCache, GitError};
use tokio_util::sync::CancellationToken;

use crate::config::GitSource;
use crate::db::{DbError, Fence};
use crate::git_health::FetchReport;
use crate::state::AppState;

/// Errors of one watcher pass.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// Git failed on every endpoint, or the cache is unusable.
    #[error("{0}")]
    Git(#[from] GitError),
    /// Reading the checked-out tree failed.
    #[error("cannot read release {sha}: {reason}")]
    Tree {
        /// Commit.
        sha: String,
        /// Why.
        reason: String,
    },
    /// The store failed.
    #[error("{0}")]
    Db(#[from] DbError),
    /// The release's rollout could not be started (the release is not recorded, so the
    /// next pass tries again).
    #[error("cannot start the rollout of the new release: {0}")]
    Engine(#[from] crate::engine::EngineError),
    /// The blocking Git task died.
    #[error("the Git task failed: {0}")]
    Task(String),
}

/// A commit checked like an agent would.
pub enum Checked {
    /// Valid: a release.
    Valid {
        /// Commit.
        release: ReleaseId,
        /// Tree digest.
        digest: TreeDigest,
        /// The parsed repository.
        repo: Box<FleetRepo>,
    },
    /// Invalid: the errors, one per line, `FILE:LINE:COL: error: …`.
    Rejected {
        /// Commit.
        release: ReleaseId,
        /// Errors.
        errors: String,
    },
}

/// Fetches the branch head (failover across endpoints) and checks it; also says which
/// endpoints served and failed (for [`crate::git_health`]), whatever the outcome.
pub fn check_head(
    cache_dir: &std::path::Path,
    git: &GitSource,
) -> (FetchReport, Result<Checked, WatchError>) {
    let mut report = FetchReport::default();
    let checked = fetch_and_check(cache_dir, git, &mut report);
    (report, checked)
}

fn fetch_and_check(
    cache_dir: &std::path::Path,
    git: &GitSource,
    report: &mut FetchReport,
) -> Result<Checked, WatchError> {
    let cache = GitCache::open_or_init(cache_dir)?;
    let endpoints: Vec<Endpoint> = git.endpoints.iter().map(Endpoint::new).collect();
    let outcome = match cache.fetch(&endpoints, &git.branch, git.failover_timeout) {
        Ok(o) => o,
        Err(e) => {
            if let GitError::AllEndpointsFailed { attempts } = &e {
                report.failed = attempts
                    .iter()
                    .map(|a| (a.endpoint.clone(), a.error.to_string()))
                    .collect();
            }
            return Err(e.into());
        }
    };
    for f in &outcome.failures {
        tracing::warn!(endpoint = %f.endpoint, error = %f.error, "Git endpoint failed; used the next one");
    }
    report.failed = outcome
        .failures
        .iter()
        .map(|f| (f.endpoint.clone(), f.error.to_string()))
        .collect();
    report.served = Some(outcome.endpoint.clone());
    let release: ReleaseId =
        outcome
            .head
            .parse()
            .map_err(|e: fleet_config::protocol::BadReleaseId| WatchError::Tree {
                sha: outcome.head.clone(),
                reason: e.0,
            })?;
    check_commit(&cache, &release)
}

/// Checks out `release` from the cache into a scratch directory, digests and validates it.
pub fn check_commit(cache: &GitCache, release: &ReleaseId) -> Result<Checked, WatchError> {
    let tree_err = |reason: String| WatchError::Tree {
        sha: release.as_str().to_owned(),
        reason,
    };
    let scratch = tempfile::tempdir().map_err(|e| tree_err(e.to_string()))?;
    let dest = scratch.path().join("tree");
    cache.checkout(release.as_str(), &dest)?;
    let digest = digest_dir(&dest).map_err(|e| tree_err(e.to_string()))?;
    let validation = validate_dir(&dest).map_err(|e| tree_err(e.to_string()))?;
    Ok(match validation.repo {
        Some(repo) => Checked::Valid {
            release: release.clone(),
            digest,
            repo: Box::new(repo),
        },
        None => Checked::Rejected {
            release: release.clone(),
            errors: validation
                .diagnostics
                .sorted()
                .into_iter()
                .filter(|d| d.severity == Severity::Error)
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        },
    })
}

/// One pass (leader only): look at the head; record and act on it if it is new. Returns the
/// head (`None` on a follower or without Git).
pub async fn pass(state: &AppState, source: &str) -> Result<Option<ReleaseId>, WatchError> {
    let Some(fence) = state.leadership.fence() else {
        return Ok(None);
    };
    let r = fenced_pass(state, &fence, source).await;
    if matches!(r, Err(WatchError::Db(DbError::Fenced { .. }))) {
        state.leadership.fenced_out(&fence);
    }
    r
}

/// Records `release` under `fence`; false if it was recorded before.
async fn record(
    state: &AppState,
    fence: &Fence,
    release: &ReleaseId,
    digest: Option<&str>,
    errors: Option<&str>,
    source: &str,
) -> Result<bool, DbError> {
    let mut tx = state.db.fenced(fence).await?;
    let new = tx
        .record_release(release.as_str(), digest, errors, source)
        .await?;
    tx.commit().await?;
    Ok(new)
}

async fn fenced_pass(
    state: &AppState,
    fence: &Fence,
    source: &str,
) -> Result<Option<ReleaseId>, WatchError> {
    let Some(git) = state.cfg.git.clone() else {
        return Ok(None);
    };
    let cache_dir: PathBuf = state.cfg.data_dir.join("git-cache");
    let (report, checked) = tokio::task::spawn_blocking(move || check_head(&cache_dir, &git))
        .await
        .map_err(|e| WatchError::Task(e.to_string()))?;
    let metrics = state.metrics.clone();
    state
        .git_health
        .record(&report, crate::db::now_ms(), |e, failed, streak| {
            metrics.watcher_fetch(e, failed, streak, crate::db::now_ms())
        });
    let checked = checked?;
    match checked {
        Checked::Valid {
            release,
            digest,
            repo,
        } => {
            state.metrics.set_release_rejected(false);
            let digest_hex = digest.to_string();
            // The release row is written last, as the commit point: a crash (or an error)
            // before it leaves the commit unrecorded, so the next pass does it all again
            // (inventory, rollout) instead of losing the release's rollout for good.
            if state.db.release(release.as_str()).await?.is_none() {
                crate::engine::new_release(state, fence, &release, digest, &repo).await?;
                if record(state, fence, &release, Some(&digest_hex), None, source).await? {
                    tracing::info!(release = %release.short(), %source, "new release");
                    state
                        .db
                        .audit(
                            "controller",
                            "release.new",
                            release.as_str(),
                            "",
                            &format!("digest {digest_hex}, via {source}"),
                        )
                        .await?;
                }
                // Desired releases need the release's digest, recorded just now.
                state.reconcile.notify_one();
            }
            Ok(Some(release))
        }
        Checked::Rejected { release, errors } => {
            state.metrics.set_release_rejected(true);
            if record(state, fence, &release, None, Some(&errors), source).await? {
                tracing::error!(release = %release.short(), %errors, "commit rejected: it does not validate; it will not be rolled out");
                state
                    .db
                    .audit(
                        "controller",
                        "release.rejected",
                        release.as_str(),
                        "validation failed",
                        &errors,
                    )
                    .await?;
            }
            Ok(Some(release))
        }
    }
}

/// On the leader, runs passes every `poll_interval`, whenever the webhook wakes it and when a
/// follower asks through the store; until `shutdown`. A replica that becomes leader looks at
/// once.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let Some(git) = state.cfg.git.clone() else {
        tracing::info!("no Git source configured; the watcher is off");
        return;
    };
    let poll = git.poll_interval.max(Duration::from_millis(200));
    // How often the leader looks for a follower's request (a webhook it received).
    let look = poll.min(Duration::from_secs(1));
    let mut failures = 0u32;
    let mut next_poll = tokio::time::Instant::now();
    let mut requested: Option<i64> = None;
    let mut woken = true;
    loop {
        if state.is_leader() {
            let asked = match state.db.watch_requested().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read followers' requests for a Git look");
                    None
                }
            };
            let fresh_request = asked.is_some() && asked != requested;
            requested = asked.or(requested);
            if woken || fresh_request || tokio::time::Instant::now() >= next_poll {
                next_poll = tokio::time::Instant::now() + poll;
                match pass(&state, "poll").await {
                    Ok(_) => failures = 0,
                    Err(e) => {
                        failures += 1;
                        // Every failure is logged, but not at error level each time on a long outage.
                        if failures == 1 || failures % 10 == 0 {
                            tracing::error!(error = %e, failures, "Git watcher pass failed; releases stay as they are");
                        } else {
                            tracing::warn!(error = %e, failures, "Git watcher pass failed");
                        }
                    }
                }
            }
        } else {
            // Look at once on becoming leader.
            next_poll = tokio::time::Instant::now();
        }
        woken = false;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = state.watch.notified() => woken = true,
            _ = tokio::time::sleep(look) => {}
        }
    }
}
