//! The update transaction (DESIGN.md, steps 1–7), boot recovery and manual rollback.
//!
//! Guarantees, and the step that upholds each:
//! - One update at a time per data directory: the `update.lock` held for the agent's life.
//! - Nothing running is touched before the release is staged complete, verified, validated and
//!   its images are present (steps 1–4): an unreachable Git, a bad digest, an invalid
//!   repository, a full disk or a failed pull leave the device exactly as it was.
//! - After power loss at any instant, `current` names a complete release: releases are
//!   published by renaming a fully written staging directory, and `current` only changes by an
//!   atomic symlink rename, with the journal written (temp + fsync + rename) before it.
//!   Recovery ([`crate::recovery`]) returns an interrupted switch to the journal's `from`.
//! - A release that fails its health window is rolled back and marked bad: it is not retried.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_config::compose::ComposeFile;
use fleet_config::protocol::{ReleaseId, UpdatePhase, UpdateResult};
use fleet_config::TreeDigest;

use crate::config::{AgentConfig, GitAuth};
use crate::fsutil::{ctx, remove_symlink, swap_symlink, FsError};
use crate::gc::{available_space, releases_to_prune, StagedRelease};
use crate::git::{Auth, Endpoint, GitCache, GitError};
use crate::journal::{Journal, JournalError};
use crate::layout::DataDir;
use crate::lock::{LockError, UpdateLock};
use crate::metrics::Metrics;
use crate::recovery::{self, Observed};
use crate::runtime::{RuntimeError, StackRuntime, StackSpec};
use crate::stage::{self, Staged};

/// Each stack's name with its device-local secrets.
type StackSecrets = Vec<(String, std::collections::BTreeMap<String, String>)>;

/// Name of the safe-mode stack on the runtime.
pub const SAFE_MODE_STACK: &str = "safe-mode";

/// The agent could not start or keep going (not an update failure: those are results).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Another agent runs on this data directory.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The data directory is unusable.
    #[error("data directory: {0}")]
    Fs(#[from] FsError),
    /// The journal could not be written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The Git cache could not be opened.
    #[error(transparent)]
    Git(#[from] GitError),
    /// This build cannot talk to a controller yet.
    #[error("controller mode is not available in this build of fleet-agent; remove `controller:` from the configuration to run standalone")]
    ControllerModeUnavailable,
    /// A credential file named in the configuration could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Credential {
        /// Which credential.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The device updater: owns the data directory (and its lock), the Git cache and the runtime.
pub struct Updater<R> {
    cfg: AgentConfig,
    data: DataDir,
    git: GitCache,
    endpoints: Vec<Endpoint>,
    runtime: R,
    metrics: Arc<Metrics>,
    journal: Journal,
    _lock: UpdateLock,
}

fn read_secret(what: &'static str, path: &std::path::Path) -> Result<String, AgentError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| AgentError::Credential {
            what,
            path: path.to_owned(),
            source,
        })
}

/// Turns the configured endpoints into Git endpoints, reading credential files.
pub fn endpoints(cfg: &AgentConfig) -> Result<Vec<Endpoint>, AgentError> {
    cfg.git
        .endpoints
        .iter()
        .map(|e| {
            let auth = match &e.auth {
                GitAuth::None => Auth::None,
                GitAuth::TokenFile { path, username } => Auth::HttpsToken {
                    username: username.clone(),
                    token: read_secret("Git token file", path)?,
                },
                GitAuth::SshKey {
                    path,
                    passphrase_file,
                } => Auth::SshKey {
                    username: None,
                    private_key: path.clone(),
                    passphrase: passphrase_file
                        .as_deref()
                        .map(|p| read_secret("SSH key passphrase file", p))
                        .transpose()?,
                },
            };
            Ok(Endpoint::new(e.url.clone()).with_auth(auth))
        })
        .collect()
}

fn result_name(r: &UpdateResult) -> &'static str {
    match r {
        UpdateResult::Succeeded { .. } => "succeeded",
        UpdateResult::RolledBack { .. } => "rolled_back",
        UpdateResult::Rejected { .. } => "rejected",
        UpdateResult::Skipped { .. } => "skipped",
    }
}

impl<R: StackRuntime> Updater<R> {
    /// Takes the data directory's lock (failing at once if another agent holds it), creates
    /// the layout and opens the Git cache. Call [`Updater::recover`] next.
    pub fn open(cfg: AgentConfig, runtime: R, metrics: Arc<Metrics>) -> Result<Self, AgentError> {
        let data = DataDir::new(&cfg.data_dir);
        fs::create_dir_all(data.root()).map_err(ctx("create data directory", data.root()))?;
        let lock = UpdateLock::acquire(&data.lock())?;
        data.create()
            .map_err(ctx("create data directory layout", data.root()))?;
        let git = GitCache::open_or_init(data.git_cache())?;
        let endpoints = endpoints(&cfg)?;
        let journal = Journal::load(&data.journal())
            .ok()
            .flatten()
            .unwrap_or_else(|| Journal::idle(None));
        Ok(Updater {
            cfg,
            data,
            git,
            endpoints,
            runtime,
            metrics,
            journal,
            _lock: lock,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    /// The data directory.
    pub fn data(&self) -> &DataDir {
        &self.data
    }

    /// The journal as last written.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The runtime.
    pub fn runtime(&self) -> &R {
        &self.runtime
    }

    fn save(&mut self) -> Result<(), AgentError> {
        self.journal.save(&self.data.journal())?;
        self.metrics.set_phase(self.journal.phase);
        Ok(())
    }

    fn finish(&mut self, result: UpdateResult) -> UpdateResult {
        self.metrics.count_update(result_name(&result));
        self.journal.last_result = Some(result.clone());
        if let Err(e) = self.save() {
            tracing::error!(error = %e, "cannot write the journal after an update");
        }
        result
    }

    /// Boot recovery: settles whatever an interrupted agent left, then makes the runtime run
    /// what `current` names (or the safe-mode stack when nothing valid can run).
    #[tracing::instrument(skip(self))]
    pub async fn recover(&mut self) -> Result<String, AgentError> {
        for leftover in self.data.staging_leftovers().unwrap_or_default() {
            tracing::info!(path = %leftover.display(), "removing an interrupted checkout");
            fs::remove_dir_all(&leftover).map_err(ctx("remove staging", &leftover))?;
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

    /// Re-reads a staged release from `releases/<sha>` (digest, validation, stacks).
    fn load_staged(&self, id: &ReleaseId) -> Result<Staged, stage::StageError> {
        stage::verify(&self.data.release(id), id, None, &self.cfg.device_id)
    }

    fn stack_specs<'a>(
        &self,
        staged: &'a Staged,
        secrets: &'a StackSecrets,
        dir: &'a std::path::Path,
    ) -> Vec<StackSpec<'a>> {
        secrets
            .iter()
            .filter_map(|(name, secrets)| {
                staged.repo.stacks.get(name).map(|compose| StackSpec {
                    name,
                    compose,
                    dir,
                    release: staged.id.as_str(),
                    secrets,
                })
            })
            .collect()
    }

    fn secrets_for(&self, staged: &Staged) -> Result<StackSecrets, RuntimeError> {
        staged
            .stacks
            .iter()
            .map(|s| {
                crate::secrets::load(&self.cfg.secrets_dir, s)
                    .map(|m| (s.clone(), m))
                    .map_err(|e| RuntimeError(e.to_string()))
            })
            .collect()
    }

    /// Applies every stack of a staged release and removes stacks it no longer runs.
    async fn apply_release(&self, staged: &Staged) -> Result<(), RuntimeError> {
        let secrets = self.secrets_for(staged)?;
        let dir = self.data.release(&staged.id);
        let specs = self.stack_specs(staged, &secrets, &dir);
        for spec in &specs {
            self.runtime.apply(spec).await?;
        }
        for deployed in self.runtime.deployed_stacks().await? {
            if !staged.stacks.contains(&deployed) {
                tracing::info!(stack = %deployed, "removing a stack the release no longer runs");
                self.runtime.remove_stack(&deployed).await?;
            }
        }
        Ok(())
    }

    async fn watch(&self, staged: &Staged) -> Result<(), RuntimeError> {
        let secrets = self.secrets_for(staged)?;
        let dir = self.data.release(&staged.id);
        let specs = self.stack_specs(staged, &secrets, &dir);
        self.runtime
            .watch_health(&specs, self.cfg.health_window)
            .await
    }

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

    /// Step 1's disk check: prune old releases and unused images when short; `Err(reason)` when
    /// still short.
    async fn ensure_disk(&mut self, target: &ReleaseId) -> Result<(), String> {
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
        &self,
        keep: usize,
        protected: &[ReleaseId],
    ) -> Vec<Vec<fleet_config::compose::ImageRef>> {
        let staged: Vec<StagedRelease> = self
            .data
            .staged_releases()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|id| {
                let staged_at = fs::metadata(self.data.release(&id))
                    .and_then(|m| m.modified())
                    .ok()?;
                Some(StagedRelease { id, staged_at })
            })
            .collect();
        let protected: Vec<&ReleaseId> = protected.iter().collect();
        releases_to_prune(&staged, keep, &protected)
            .into_iter()
            .map(|id| {
                let images = self.release_images(&id);
                tracing::info!(release = %id.short(), "removing an old release");
                if let Err(e) = fs::remove_dir_all(self.data.release(&id)) {
                    tracing::warn!(release = %id.short(), error = %e, "cannot remove an old release");
                }
                images
            })
            .collect()
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
    async fn collect_garbage(&self, keep: usize, target: Option<&ReleaseId>) {
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

    /// Standalone mode: the branch head, from the first endpoint that answers.
    pub fn branch_head(&self) -> Result<ReleaseId, String> {
        let outcome = self
            .git
            .fetch(
                &self.endpoints,
                &self.cfg.git.branch,
                self.cfg.git.failover_timeout,
            )
            .map_err(|e| {
                if let GitError::AllEndpointsFailed { attempts, .. } = &e {
                    for a in attempts {
                        self.metrics.count_git_failure(&a.endpoint);
                    }
                }
                e.to_string()
            })?;
        for f in &outcome.failures {
            self.metrics.count_git_failure(&f.endpoint);
        }
        outcome
            .head
            .parse()
            .map_err(|e: fleet_config::protocol::BadReleaseId| e.to_string())
    }

    /// The update transaction to `target` (steps 1–7). Returns how it ended; the device runs
    /// either the new release (succeeded) or what it ran before (every other result).
    #[tracing::instrument(skip(self, expected), fields(release = %target.short()))]
    pub async fn update_to(
        &mut self,
        target: &ReleaseId,
        expected: Option<TreeDigest>,
    ) -> UpdateResult {
        let started = Instant::now();
        let current = self.data.current().release().cloned();
        if current.as_ref() == Some(target) && self.journal.safe_mode.is_none() {
            return UpdateResult::Succeeded {
                release: target.clone(),
            };
        }
        if self.journal.is_bad(target) {
            return UpdateResult::Skipped {
                reason: format!("release {} is marked bad on this device", target.short()),
            };
        }
        // Step 1: disk.
        if let Err(reason) = self.ensure_disk(target).await {
            tracing::warn!(%reason, "update skipped");
            return self.finish(UpdateResult::Skipped { reason });
        }
        if self.journal.to.as_ref() != Some(target) {
            self.journal.attempts = 0;
        }
        self.journal.from = current.clone();
        self.journal.to = Some(target.clone());
        self.journal.started_at_ms = Some(crate::journal::now_ms());
        // Step 2: fetch the pinned commit.
        self.journal.phase = UpdatePhase::Fetching;
        if let Err(e) = self.save() {
            return self.abort_before_swap(format!("cannot write the journal: {e}"), false);
        }
        let fetched = self.git.fetch_commit(
            &self.endpoints,
            target.as_str(),
            &self.cfg.git.branch,
            self.cfg.git.failover_timeout,
        );
        match fetched {
            Ok(outcome) => {
                if let Some(f) = outcome.fetched {
                    for failure in &f.failures {
                        self.metrics.count_git_failure(&failure.endpoint);
                    }
                }
            }
            Err(e) => {
                if let GitError::AllEndpointsFailed { attempts, .. } = &e {
                    for a in attempts {
                        self.metrics.count_git_failure(&a.endpoint);
                    }
                }
                return self
                    .abort_before_swap(format!("cannot fetch {}: {e}", target.short()), false);
            }
        }
        // Step 3: stage, verify, validate.
        self.journal.phase = UpdatePhase::Staging;
        if let Err(e) = self.save() {
            return self.abort_before_swap(format!("cannot write the journal: {e}"), false);
        }
        let git = &self.git;
        let staged = match stage::stage(&self.data, target, expected, &self.cfg.device_id, |dst| {
            git.checkout(target.as_str(), dst)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }) {
            Ok(s) => s,
            Err(e @ stage::StageError::Fs { .. }) | Err(e @ stage::StageError::Checkout { .. }) => {
                return self.abort_before_swap(e.to_string(), false);
            }
            Err(e) => return self.abort_before_swap(e.to_string(), true),
        };
        self.journal.phase = UpdatePhase::Staged;
        if let Err(e) = self.save() {
            return self.abort_before_swap(format!("cannot write the journal: {e}"), false);
        }
        // Step 4: images, before touching anything running.
        self.journal.phase = UpdatePhase::Pulling;
        if let Err(e) = self.save() {
            return self.abort_before_swap(format!("cannot write the journal: {e}"), false);
        }
        let images: Vec<_> = staged
            .stacks
            .iter()
            .filter_map(|s| staged.repo.stacks.get(s))
            .flat_map(|c| c.services.values().map(|svc| svc.image.clone()))
            .collect();
        if let Err(e) = self.runtime.ensure_images(&images).await {
            return self.abort_before_swap(
                format!("images for {} unavailable: {e}", target.short()),
                false,
            );
        }
        // Steps 5–7.
        let result = self.switch_and_verify(&staged, current).await;
        self.metrics
            .set_last_update_seconds(started.elapsed().as_secs_f64());
        result
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
    async fn switch_and_verify(
        &mut self,
        staged: &Staged,
        from: Option<ReleaseId>,
    ) -> UpdateResult {
        let target = staged.id.clone();
        self.journal.phase = UpdatePhase::Switching;
        self.journal.to = Some(target.clone());
        self.journal.from = from.clone();
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
        if let Err(e) = self.apply_release(staged).await {
            return self
                .roll_back(&target, from, format!("applying the release failed: {e}"))
                .await;
        }
        self.journal.phase = UpdatePhase::Verifying;
        if let Err(e) = self.save() {
            tracing::error!(error = %e, "cannot write the journal");
        }
        if let Err(e) = self.watch(staged).await {
            return self
                .roll_back(&target, from, format!("health window failed: {e}"))
                .await;
        }
        // Step 7: commit.
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
        self.journal.started_at_ms = None;
        self.journal.safe_mode = None;
        let result = self.finish(UpdateResult::Succeeded {
            release: target.clone(),
        });
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
        self.journal.phase = UpdatePhase::RollingBack;
        if let Err(e) = self.save() {
            tracing::error!(error = %e, "cannot write the journal");
        }
        self.journal.mark_bad(target, &reason);
        let restored = match &from {
            Some(old) => {
                let swapped = swap_symlink(&self.data.current_link(), &DataDir::link_target(old));
                match (swapped, self.load_staged(old)) {
                    (Ok(()), Ok(old_staged)) => self
                        .apply_release(&old_staged)
                        .await
                        .map_err(|e| e.to_string()),
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
        let result = self.switch_and_verify(&staged, current.clone()).await;
        if let (UpdateResult::Succeeded { .. }, Some(cur)) = (&result, &current) {
            self.journal.mark_bad(cur, "rolled back by hand");
            if let Err(e) = self.save() {
                tracing::error!(error = %e, "cannot write the journal");
            }
        }
        result
    }

    /// One standalone pass: fetch the branch head and update to it if it is new.
    pub async fn poll_once(&mut self) -> Option<UpdateResult> {
        let head = match self.branch_head() {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the branch head; keeping the current release");
                return None;
            }
        };
        let current = self.data.current().release().cloned();
        if current.as_ref() == Some(&head) && self.journal.safe_mode.is_none() {
            return None;
        }
        if self.journal.is_bad(&head) {
            tracing::debug!(release = %head.short(), "branch head is marked bad; waiting for a newer commit");
            return None;
        }
        Some(self.update_to(&head, None).await)
    }

    /// Standalone mode: poll the branch every `poll_interval` (with jitter) until `shutdown`;
    /// a rollback requested by `fleet-agent rollback` is carried out within a second.
    pub async fn run_standalone(&mut self, shutdown: tokio_util::sync::CancellationToken) {
        let mut next_poll = tokio::time::Instant::now();
        loop {
            if self.data.rollback_request().exists() {
                let _ = fs::remove_file(self.data.rollback_request());
                tracing::warn!("rollback requested by hand");
                let result = self.rollback_by_hand().await;
                tracing::info!(result = ?result, "manual rollback finished");
            }
            if tokio::time::Instant::now() >= next_poll {
                if let Some(result) = self.poll_once().await {
                    tracing::info!(result = ?result, "update finished");
                }
                next_poll = tokio::time::Instant::now() + jittered(self.cfg.poll_interval);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(REQUEST_CHECK.min(next_poll.saturating_duration_since(tokio::time::Instant::now()))) => {}
            }
        }
        tracing::info!("standalone loop stopped");
    }
}

/// How often the loop looks for a rollback request.
const REQUEST_CHECK: Duration = Duration::from_secs(1);

/// `base` plus up to 10% random jitter, so a fleet does not poll in lockstep.
pub fn jittered(base: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(crate::journal::now_ms());
    let frac = (h.finish() % 1000) as f64 / 10_000.0;
    base + base.mul_f64(frac)
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

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let j = super::jittered(std::time::Duration::from_secs(60));
            assert!(
                j >= std::time::Duration::from_secs(60) && j <= std::time::Duration::from_secs(66)
            );
        }
    }
}
