//! The device updater: one update at a time per data directory, the `update.lock` taken by
//! [`Updater::open`] and held for the agent's life.
//!
//! Each of the updater's jobs has its own file, which opens with the guarantee it keeps:
//! - `transaction.rs`: the update transaction (DESIGN.md, steps 1–7): prepare, swap, verify,
//!   commit or roll back, abandon.
//! - `boot.rs`: boot recovery.
//! - `safe_mode.rs`: entering and leaving safe mode.
//! - `gc.rs`: free disk before an update, pruning of old releases and their images after one.
//! - `supervise.rs`: keeping `current` running while idle, and rollback by hand.
//! - `drift.rs`: config drift: `current`'s files re-digested while idle and at boot, re-staged
//!   from the Git cache when they changed; containers that supervision had to put back.
//! - `standalone.rs`: the standalone loop (no controller).
//!
//! This file holds the updater itself and what every job shares: the journal's writes, running a
//! staged release on the runtime, and the record of events.
//!
//! In controller mode the updater also records what happens as [`EventKind`]s in the on-disk
//! [`EventLog`] (`events/`), which the check-in sends and the controller acknowledges: agent
//! start, update start and end, every journal phase change, Git endpoint failures, safe mode
//! entered and left. Standalone mode records none: nobody would acknowledge them, and a buffer
//! nobody drains would only wear the flash.

mod boot;
mod drift;
#[cfg(test)]
mod failure_tests;
mod gc;
mod safe_mode;
mod standalone;
mod stuck;
mod supervise;
#[cfg(test)]
mod tests;
mod transaction;

pub use safe_mode::SAFE_MODE_STACK;
pub use standalone::jittered;
pub use supervise::REQUEST_CHECK;

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use fleet_config::protocol::{EventKind, ReleaseId, UpdatePhase, UpdateResult};

use crate::config::{AgentConfig, GitAuth};
use crate::controller::client::ControllerError;
use crate::events::EventLog;
use crate::fsutil::FsError;
use crate::journal::{Journal, JournalError};
use crate::layout::DataDir;
use crate::lock::{LockError, UpdateLock};
use crate::metrics::Metrics;
use crate::problems::{ProblemKind, Problems};
use crate::runtime::{RuntimeError, StackRuntime, StackSpec};
use crate::stage::{self, Staged};
use fleet_git::{Auth, Endpoint, GitCache, GitError};

/// Each stack's name with its device-local secrets.
type StackSecrets = Vec<(String, std::collections::BTreeMap<String, String>)>;

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
    /// What is left of the update's bound (see `stuck.rs`).
    clock: stuck::StuckClock,
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
    /// The problems the agent keeps running with (shared with the service).
    problems: Arc<Problems>,
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
    /// The device watchers (heat, power, disk, clock), sampled by their own task.
    watch: Arc<crate::watch::DeviceWatch>,
    /// Restarts of the running release's services, for crash loops (see `supervise.rs`).
    crash_loops: crate::crash_loop::Detector,
    /// The release `crash_loops` counts for.
    crash_loops_of: Option<ReleaseId>,
    /// When this agent last committed an update (monotonic; `None` since it started).
    committed_at: Option<tokio::time::Instant>,
    /// When supervision next digests `current` for config drift (`None`: at its next pass).
    next_drift_check: Option<tokio::time::Instant>,
    /// Consecutive fetch failures of each Git endpoint ([`crate::git_health`]).
    git_streaks: crate::git_health::FailureStreaks,
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

/// The configured Git endpoints, with their credentials read.
#[derive(Debug, Default)]
pub struct Endpoints {
    /// The endpoints the agent fetches from, in the configured order.
    pub usable: Vec<Endpoint>,
    /// The endpoints left out because a credential file could not be read: URL and why.
    pub disabled: Vec<(String, AgentError)>,
}

/// Turns the configured endpoints into Git endpoints, reading credential files. An endpoint
/// whose credential cannot be read is disabled, not fatal: the others still serve.
pub fn endpoints(cfg: &AgentConfig) -> Endpoints {
    let mut out = Endpoints::default();
    for e in &cfg.git.endpoints {
        let auth = match &e.auth {
            GitAuth::None => Ok(Auth::None),
            GitAuth::TokenFile { path, username } => {
                read_secret("Git token file", path).map(|token| Auth::HttpsToken {
                    username: username.clone(),
                    token,
                })
            }
            GitAuth::SshKey {
                path,
                passphrase_file,
            } => passphrase_file
                .as_deref()
                .map(|p| read_secret("SSH key passphrase file", p))
                .transpose()
                .map(|passphrase| Auth::SshKey {
                    username: None,
                    private_key: path.clone(),
                    passphrase,
                }),
        };
        match auth {
            Ok(auth) => out
                .usable
                .push(Endpoint::new(e.url.clone()).with_auth(auth)),
            Err(err) => out.disabled.push((e.url.clone(), err)),
        }
    }
    out
}

/// What [`open_stores`] opens in a locked data directory.
#[derive(Debug)]
pub struct Stores {
    /// The Git cache.
    pub git: GitCache,
    /// Controller mode: the event buffer.
    pub events: Option<EventLog>,
}

/// Creates the layout of the locked data directory and opens its Git cache and (controller
/// mode) event buffer.
pub fn open_stores(cfg: &AgentConfig, data: &DataDir) -> Result<Stores, AgentError> {
    data.create()?;
    let git = GitCache::open_or_init(data.git_cache())?;
    let events = if cfg.standalone() {
        None
    } else {
        Some(EventLog::open(data.events_dir())?)
    };
    Ok(Stores { git, events })
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
    /// the layout and opens the Git cache, failing on the first problem; the running agent
    /// uses [`crate::startup`] instead, which waits them out. Call [`Updater::recover`] next.
    pub fn open(cfg: AgentConfig, runtime: R, metrics: Arc<Metrics>) -> Result<Self, AgentError> {
        let data = DataDir::new(&cfg.data_dir);
        crate::fsutil::create_dir_all(data.root())?;
        let lock = UpdateLock::acquire(&data.lock())?;
        let stores = open_stores(&cfg, &data)?;
        let problems = Arc::new(Problems::new(metrics.clone(), None));
        Ok(Self::from_parts(
            cfg, runtime, metrics, problems, lock, stores,
        ))
    }

    /// The updater over a data directory already locked and opened. Endpoints whose
    /// credentials cannot be read are disabled and reported to `problems`.
    pub fn from_parts(
        cfg: AgentConfig,
        runtime: R,
        metrics: Arc<Metrics>,
        problems: Arc<Problems>,
        lock: UpdateLock,
        stores: Stores,
    ) -> Self {
        let data = DataDir::new(&cfg.data_dir);
        let journal = Journal::load(&data.journal())
            .ok()
            .flatten()
            .unwrap_or_else(|| Journal::idle(None));
        let watch = Arc::new(crate::watch::DeviceWatch::new(
            cfg.watch.clone(),
            data.clone(),
            problems.clone(),
            metrics.clone(),
        ));
        let mut updater = Updater {
            watch,
            cfg,
            data,
            git: stores.git,
            endpoints: Vec::new(),
            runtime,
            metrics,
            problems,
            recorded_phase: journal.phase,
            recorded_safe_mode: journal.safe_mode.clone(),
            journal,
            supervised: None,
            supervise_problem: None,
            crash_loops: Default::default(),
            crash_loops_of: None,
            committed_at: None,
            next_drift_check: None,
            git_streaks: Default::default(),
            events: stores.events,
            _lock: lock,
        };
        updater.load_endpoints();
        updater
    }

    /// Reads the endpoints' credentials again (a fixed or rotated credential file takes
    /// effect), disabling those that cannot be read and reporting them.
    pub fn refresh_endpoints(&mut self) {
        self.load_endpoints();
        self.flush_problem_events();
    }

    fn load_endpoints(&mut self) {
        let Endpoints { usable, disabled } = endpoints(&self.cfg);
        for (url, err) in &disabled {
            self.problems.raise(
                ProblemKind::GitEndpointDisabled,
                Some(url),
                format!(
                    "Git endpoint {url} disabled: {}",
                    crate::problems::chain(err)
                ),
            );
        }
        let still: Vec<&str> = disabled.iter().map(|(u, _)| u.as_str()).collect();
        self.problems
            .clear_except(ProblemKind::GitEndpointDisabled, &still);
        self.endpoints = usable;
    }

    /// What one fetch said of the endpoints: each failure is counted and recorded (a
    /// `git_fetch_failed` event), and an endpoint failing `alerts.git_fetch_failures` times in a
    /// row raises `git_fetch_failing` about it, which `served_by`'s next success clears
    /// ([`crate::git_health`]).
    fn git_results(&mut self, failures: &[fleet_git::EndpointFailure], served_by: Option<&str>) {
        use crate::git_health::Streak;
        let threshold = self.watch.thresholds().0.git_fetch_failures;
        for f in failures {
            self.metrics.count_git_failure(&f.endpoint);
            self.record(EventKind::GitFetchFailed {
                endpoint: f.endpoint.clone(),
                error: f.error.to_string(),
            });
            if let Streak::Failed {
                in_a_row,
                failing: true,
            } = self.git_streaks.failed(&f.endpoint, threshold)
            {
                self.problems.raise(
                    ProblemKind::GitFetchFailing,
                    Some(&f.endpoint),
                    format!(
                        "{in_a_row} fetches in a row from {} failed (alerts.git_fetch_failures: {threshold}); last: {}",
                        f.endpoint,
                        crate::problems::chain(&f.error)
                    ),
                );
            }
        }
        if let Some(endpoint) = served_by {
            if let Streak::Served { was } = self.git_streaks.served(endpoint) {
                if was > 0 {
                    tracing::info!(
                        endpoint,
                        failures_before = was,
                        "the Git endpoint serves again"
                    );
                }
            }
            self.problems
                .clear(ProblemKind::GitFetchFailing, Some(endpoint));
        }
        self.metrics
            .set_git_streaks(self.git_streaks.current().clone());
        self.flush_problem_events();
    }

    /// The device watchers; [`crate::watch::DeviceWatch::run`] samples them.
    pub fn watchers(&self) -> &Arc<crate::watch::DeviceWatch> {
        &self.watch
    }

    /// What the watchers ask of the update loop: pruning while the disk is low. Cheap when
    /// nothing is asked; called on every turn of the loops.
    pub async fn watch_turn(&mut self) {
        if self.watch.take_prune() {
            self.relieve_disk().await;
            self.watch.sample().await;
        }
        self.flush_problem_events();
    }

    /// The problems this updater reports to.
    pub fn problems(&self) -> &Arc<Problems> {
        &self.problems
    }

    /// Writes a throw-away file next to the journal, as the journal is written (temp, fsync,
    /// rename), to learn whether the journal can be written at all.
    pub fn probe_journal(&self) -> Result<(), FsError> {
        let probe = self.data.root().join(".write-probe");
        crate::fsutil::write_atomic(&probe, b"probe\n")?;
        crate::fsutil::remove_file(&probe)
    }

    /// Frees disk for the journal: prunes every release but `current`, `previous` and those in
    /// use, and their unused images.
    pub async fn free_disk(&mut self) {
        self.collect_garbage(0, None).await;
    }

    /// Hands the problems' queued events to the event buffer (controller mode).
    pub fn flush_problem_events(&mut self) {
        let Some(log) = self.events.as_mut() else {
            // Standalone: nobody would acknowledge them.
            drop(self.problems.take_events());
            return;
        };
        let mut queued = self.problems.take_events().into_iter();
        while let Some(kind) = queued.next() {
            if let Err(e) = log.append(kind.clone()) {
                tracing::warn!(error = %e, "cannot record a problem event for the controller; kept for later");
                let mut rest = vec![kind];
                rest.extend(queued);
                self.problems.requeue_events(rest);
                break;
            }
        }
        self.metrics.set_events_dropped(log.dropped());
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
        // After it, so a problem that this event's action raised follows it.
        self.flush_problem_events();
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
        if let Err(e) = self.journal.save(&self.data.journal()) {
            // Reported and survived: the transaction refuses to go on without its journal, the
            // agent does not end (a full disk is pruned by the next update's disk check).
            self.problems
                .raise(ProblemKind::JournalUnwritable, None, &e);
            return Err(e.into());
        }
        self.problems.clear(ProblemKind::JournalUnwritable, None);
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

    /// Re-reads a staged release from `releases/<sha>`: its tree must still have the digest
    /// the journal recorded when it was staged (a release staged by an agent that recorded none
    /// is checked on validation alone), it must validate and name this device. Called before
    /// every apply of a release read back from disk and at boot.
    fn load_staged(&self, id: &ReleaseId) -> Result<Staged, stage::StageError> {
        stage::verify(
            &self.data.release(id),
            id,
            self.journal.staged_digest(id),
            &self.cfg.device_id,
        )
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
                    .map_err(|e| RuntimeError::failed(e.to_string()))
            })
            .collect()
    }

    /// Applies every stack of a staged release and removes stacks it no longer runs. Returns
    /// the services (`stack/service`) whose container had to be replaced or created
    /// ([`crate::drift::drifted_services`]): drift when the release already ran.
    async fn apply_release(&self, staged: &Staged) -> Result<Vec<String>, RuntimeError> {
        let secrets = self.secrets_for(staged)?;
        let dir = self.data.release(&staged.id);
        let specs = self.stack_specs(staged, &secrets, &dir);
        let mut put_back = Vec::new();
        for spec in &specs {
            let report = self.runtime.apply(spec).await?;
            put_back.extend(crate::drift::drifted_services(spec.name, &report.services));
        }
        for deployed in self.runtime.deployed_stacks().await? {
            if !staged.stacks.contains(&deployed) {
                tracing::info!(stack = %deployed, "removing a stack the release no longer runs");
                self.runtime.remove_stack(&deployed).await?;
            }
        }
        Ok(put_back)
    }
}
