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
//!
//! In controller mode the updater also records what happens as [`EventKind`]s in the on-disk
//! [`EventLog`] (`events/`), which the check-in sends and the controller acknowledges: agent
//! start, update start and end, every journal phase change, Git endpoint failures, safe mode
//! entered and left. Standalone mode records none: nobody would acknowledge them, and a buffer
//! nobody drains would only wear the flash.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_config::compose::ComposeFile;
use fleet_config::protocol::{EventKind, ReleaseId, UpdatePhase, UpdateResult};
use fleet_config::TreeDigest;

use crate::config::{AgentConfig, GitAuth};
use crate::controller::client::ControllerError;
use crate::events::EventLog;
use crate::fsutil::{ctx, remove_symlink, swap_symlink, FsError};
use crate::gc::{available_space, releases_to_prune, StagedRelease};
use crate::journal::{Journal, JournalError};
use crate::layout::DataDir;
use crate::lock::{LockError, UpdateLock};
use crate::metrics::Metrics;
use crate::recovery::{self, Observed};
use crate::runtime::{RuntimeError, StackRuntime, StackSpec};
use crate::stage::{self, Staged};
use fleet_git::{Auth, Endpoint, GitCache, GitError};

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
    /// Controller mode could not start (the HTTP client could not be set up).
    #[error(transparent)]
    Controller(#[from] ControllerError),
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

/// A release through steps 1–4 (staged, verified, images present), ready to swap. Nothing
/// running was touched; the journal says `pulling`. Either [`Updater::commit`] or
/// [`Updater::abandon`] it.
#[derive(Debug)]
pub struct Prepared {
    staged: Staged,
    from: Option<ReleaseId>,
    started: Instant,
}

impl Prepared {
    /// The release.
    pub fn release(&self) -> &ReleaseId {
        &self.staged.id
    }
}

/// What [`Updater::prepare`] came to.
#[derive(Debug)]
pub enum Prepare {
    /// Ready to swap.
    Ready(Box<Prepared>),
    /// Nothing to swap: already running it, refused, or failed before the swap.
    Done(UpdateResult),
}

impl From<Result<Prepared, UpdateResult>> for Prepare {
    fn from(r: Result<Prepared, UpdateResult>) -> Prepare {
        match r {
            Ok(p) => Prepare::Ready(Box::new(p)),
            Err(result) => Prepare::Done(result),
        }
    }
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
    /// The release last checked by [`Updater::supervise`], so it is not re-verified each pass.
    supervised: Option<Staged>,
    /// Why the last [`Updater::supervise`] could not keep `current` running, if it could not.
    supervise_problem: Option<String>,
    /// Controller mode: events waiting for the controller's acknowledgement.
    events: Option<EventLog>,
    /// The phase and safe-mode reason last recorded as events, to record changes only.
    recorded_phase: UpdatePhase,
    recorded_safe_mode: Option<String>,
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
        let events = if cfg.standalone() {
            None
        } else {
            Some(EventLog::open(data.events_dir())?)
        };
        Ok(Updater {
            cfg,
            data,
            git,
            endpoints,
            runtime,
            metrics,
            recorded_phase: journal.phase,
            recorded_safe_mode: journal.safe_mode.clone(),
            journal,
            supervised: None,
            supervise_problem: None,
            events,
            _lock: lock,
        })
    }

    /// Records an event for the controller (controller mode; a no-op standalone). An event
    /// that cannot be written is logged and lost: events are for people, updates go on.
    pub fn record(&mut self, kind: EventKind) {
        let Some(log) = self.events.as_mut() else {
            return;
        };
        if let Err(e) = log.append(kind) {
            tracing::warn!(error = %e, "cannot record an event for the controller");
        }
        self.metrics.set_events_dropped(log.dropped());
    }

    /// The event buffer (controller mode).
    pub fn events(&self) -> Option<&EventLog> {
        self.events.as_ref()
    }

    /// Drops the buffered events up to `seq`, which the controller stored.
    pub fn ack_events(&mut self, seq: u64) {
        if let Some(log) = self.events.as_mut() {
            if let Err(e) = log.ack(seq) {
                tracing::warn!(error = %e, seq, "cannot drop acknowledged events");
            }
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Why the last supervision could not keep `current` running, if it could not.
    pub fn supervise_problem(&self) -> Option<&str> {
        self.supervise_problem.as_deref()
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
        self.record_changes();
        Ok(())
    }

    /// Records the phase change and safe-mode change the journal just made durable, if any.
    fn record_changes(&mut self) {
        if self.journal.phase != self.recorded_phase {
            self.recorded_phase = self.journal.phase;
            let release = self
                .journal
                .to
                .clone()
                .or_else(|| self.journal.from.clone());
            self.record(EventKind::PhaseChanged {
                phase: self.journal.phase,
                release,
            });
        }
        if self.journal.safe_mode != self.recorded_safe_mode {
            self.recorded_safe_mode = self.journal.safe_mode.clone();
            match self.journal.safe_mode.clone() {
                Some(reason) => self.record(EventKind::SafeModeEntered { reason }),
                None => self.record(EventKind::SafeModeExited),
            }
        }
    }

    fn finish(&mut self, result: UpdateResult) -> UpdateResult {
        self.metrics.count_update(result_name(&result));
        self.journal.last_result = Some(result.clone());
        if let Err(e) = self.save() {
            tracing::error!(error = %e, "cannot write the journal after an update");
        }
        // After the journal's last phase change, so the controller reads them in that order.
        self.record(EventKind::UpdateFinished {
            result: result.clone(),
        });
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
            .switch_and_verify(&prepared.staged, prepared.from)
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
        // Step 1: disk.
        if let Err(reason) = self.ensure_disk(target).await {
            tracing::warn!(%reason, "update skipped");
            return Err(self.finish(UpdateResult::Skipped { reason }));
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
            return Err(self.abort_before_swap(format!("cannot write the journal: {e}"), false));
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
                        self.git_failed(&failure.endpoint, &failure.error);
                    }
                }
            }
            Err(e) => {
                if let GitError::AllEndpointsFailed { attempts, .. } = &e {
                    for a in attempts {
                        self.git_failed(&a.endpoint, &a.error);
                    }
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
        let git = &self.git;
        let staged = match stage::stage(&self.data, target, expected, &self.cfg.device_id, |dst| {
            git.checkout(target.as_str(), dst)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }) {
            Ok(s) => s,
            Err(e @ stage::StageError::Fs { .. }) | Err(e @ stage::StageError::Checkout { .. }) => {
                return Err(self.abort_before_swap(e.to_string(), false));
            }
            Err(e) => return Err(self.abort_before_swap(e.to_string(), true)),
        };
        self.journal.phase = UpdatePhase::Staged;
        if let Err(e) = self.save() {
            return Err(self.abort_before_swap(format!("cannot write the journal: {e}"), false));
        }
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
            return Err(self.abort_before_swap(
                format!("images for {} unavailable: {e}", target.short()),
                false,
            ));
        }
        Ok(Prepared {
            staged,
            from: current,
            started,
        })
    }

    /// Counts and records one endpoint's failure to serve a fetch.
    fn git_failed(&mut self, endpoint: &str, error: &GitError) {
        self.metrics.count_git_failure(endpoint);
        self.record(EventKind::GitFetchFailed {
            endpoint: endpoint.to_owned(),
            error: error.to_string(),
        });
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
            // Re-applying the running release failed (leaving safe mode): there is nothing
            // else to go back to.
            Some(old) if old == target => Err(format!(
                "release {} failed again and there is no other release to go back to",
                target.short()
            )),
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
        if self.journal.phase != UpdatePhase::Idle || self.journal.safe_mode.is_some() {
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

    /// Carries out a rollback asked for by `fleet-agent rollback` (a `rollback.request` file),
    /// if there is one.
    pub async fn handle_rollback_request(&mut self) -> Option<UpdateResult> {
        if !self.data.rollback_request().exists() {
            return None;
        }
        let _ = fs::remove_file(self.data.rollback_request());
        tracing::warn!("rollback requested by hand");
        let result = self.rollback_by_hand().await;
        tracing::info!(result = ?result, "manual rollback finished");
        Some(result)
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
            self.handle_rollback_request().await;
            if tokio::time::Instant::now() >= next_poll {
                self.supervise().await;
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

/// How often the loops look for a rollback request.
pub const REQUEST_CHECK: Duration = Duration::from_secs(1);

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

    use super::*;
    use crate::testing::{config, NoRuntime};

    fn kinds(u: &Updater<NoRuntime>) -> Vec<(u64, EventKind)> {
        u.events()
            .expect("controller mode keeps events")
            .pending(100)
            .expect("pending")
            .into_iter()
            .map(|e| (e.seq, e.kind))
            .collect()
    }

    #[tokio::test]
    async fn controller_mode_records_what_happens_as_events() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let mut u = Updater::open(config(&data, true), NoRuntime, Arc::default()).expect("open");
        u.record(EventKind::AgentStarted {
            version: "0.1.0".into(),
        });
        u.recover().await.expect("recover");
        u.enter_safe_mode(crate::controller::mode::OPERATOR_SAFE_MODE)
            .await;
        let left = u.reapply_current().await;
        assert!(matches!(left, UpdateResult::Skipped { .. }), "{left:?}");
        assert_eq!(
            kinds(&u),
            vec![
                (
                    1,
                    EventKind::AgentStarted {
                        version: "0.1.0".into()
                    }
                ),
                (
                    2,
                    EventKind::PhaseChanged {
                        phase: UpdatePhase::SafeMode,
                        release: None
                    }
                ),
                (
                    3,
                    EventKind::SafeModeEntered {
                        reason: crate::controller::mode::OPERATOR_SAFE_MODE.into()
                    }
                ),
                (4, EventKind::UpdateFinished { result: left }),
            ]
        );
        u.ack_events(3);
        assert_eq!(kinds(&u).first().map(|k| k.0), Some(4));
        // A restart in safe mode announces nothing new: the state did not change.
        drop(u);
        let mut u = Updater::open(config(&data, true), NoRuntime, Arc::default()).expect("reopen");
        u.recover().await.expect("recover");
        assert_eq!(kinds(&u).len(), 1, "{:?}", kinds(&u));
    }

    #[tokio::test]
    async fn standalone_mode_records_no_events() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut u = Updater::open(
            config(&tmp.path().join("data"), false),
            NoRuntime,
            Arc::default(),
        )
        .expect("open");
        u.record(EventKind::SafeModeExited);
        assert!(u.events().is_none());
    }

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
