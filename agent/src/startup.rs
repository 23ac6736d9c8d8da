//! Start-up: the agent comes up whatever state the device is in, because a device whose agent
//! exits is a truck ride.
//!
//! Guarantees:
//! - The one start-up problem that ends the agent is another agent holding the data
//!   directory's lock: two agents must never run on one data directory. A lock *file* that
//!   cannot be opened (a read-only or full filesystem) is not another agent; it is retried.
//! - Every other problem (the data directory, its layout or the Git cache cannot be created, the
//!   journal cannot be written, the Docker engine does not answer yet, recovery fails) is
//!   reported through [`Problems`] and retried with exponential backoff and full jitter
//!   ([`RETRY_BASE`] doubling to [`RETRY_CAP`]), so a fleet that lost power at once does not
//!   retry in lockstep. Shutdown interrupts every wait.
//! - On a full disk (the journal cannot be written: no space) old releases and their images are
//!   pruned before the next try.
//! - Boot recovery starts only once the lock is held, the journal is writable and the engine
//!   answers: it never runs half-blind, and never enters safe mode because of a start-up
//!   problem (only when nothing valid can run).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use fleet_config::protocol::EventKind;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::controller::backoff::{Backoff, Rng};
use crate::events::EventLog;
use crate::fsutil::FsError;
use crate::layout::DataDir;
use crate::liveness::{self, Liveness};
use crate::lock::{LockError, UpdateLock};
use crate::metrics::Metrics;
use crate::problems::{chain, ProblemKind, Problems};
use crate::runtime::StackRuntime;
use crate::update::{Stores, Updater};
use fleet_git::GitCache;

/// First retry ceiling of start-up.
pub const RETRY_BASE: Duration = Duration::from_secs(1);
/// Largest retry ceiling: a device waiting for its disk or its engine tries at least this often.
pub const RETRY_CAP: Duration = Duration::from_secs(30);
/// Longest one attempt to reach the Docker engine may take.
pub const DOCKER_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Start-up did not complete.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Another agent runs on this data directory: the one start-up problem that ends the agent.
    #[error(transparent)]
    AnotherAgent(LockError),
    /// Shutdown was asked for before start-up completed.
    #[error("stopped during start-up")]
    Shutdown,
}

/// A started agent: its updater, recovered.
pub struct Started<R> {
    /// The updater, holding the lock.
    pub updater: Updater<R>,
    /// What boot recovery found.
    pub recovered: String,
}

/// Brings the agent up: the lock, the data directory, the Git cache, the engine (through
/// `connect`), a writable journal, then boot recovery, waiting out every problem but another
/// agent (see the module's guarantees).
pub async fn start<R, C, Fut>(
    cfg: &AgentConfig,
    metrics: Arc<Metrics>,
    problems: Arc<Problems>,
    mut connect: C,
    shutdown: &CancellationToken,
) -> Result<Started<R>, StartupError>
where
    R: StackRuntime,
    C: FnMut() -> Fut,
    Fut: Future<Output = Result<R, String>>,
{
    problems.set_starting(true);
    let data = DataDir::new(&cfg.data_dir);
    let mut backoff = Backoff::new(RETRY_BASE, RETRY_CAP, Rng::from_entropy());
    let mut lock = None;
    let mut stores = None;
    let mut runtime = None;
    // The data directory and the engine are independent: each pass tries whatever is not
    // ready yet, so every problem is reported at once, not one after the other.
    let (lock, stores, runtime) = loop {
        // A turn of this loop is the agent's main loop turning (systemd's watchdog is pinged).
        metrics.loop_turn();
        if lock.is_none() {
            lock = take_lock(&data, &problems)?;
            if lock.is_some() {
                // With the lock held: record this start where the safe-mode watchdog counts
                // restarts.
                metrics.attach_liveness(Liveness::start(cfg));
            }
        }
        if lock.is_some() && stores.is_none() {
            stores = open_stores(cfg, &data, &problems);
        }
        if runtime.is_none() {
            runtime = connect_engine(&mut connect, &problems, shutdown).await?;
        }
        if lock.is_some() && stores.is_some() && runtime.is_some() {
            if let (Some(l), Some(s), Some(r)) = (lock.take(), stores.take(), runtime.take()) {
                break (l, s, r);
            }
        }
        wait(&mut backoff, shutdown).await?;
    };
    let mut updater = Updater::from_parts(
        cfg.clone(),
        runtime,
        metrics,
        problems.clone(),
        lock,
        stores,
    );
    // First in the buffer, then the problems start-up met.
    updater.record(EventKind::AgentStarted {
        version: env!("CARGO_PKG_VERSION").to_owned(),
    });
    report_watchdog(&mut updater, cfg);
    backoff.reset();
    let recovered = loop {
        updater.metrics().loop_turn();
        match updater.probe_journal() {
            Ok(()) => problems.clear(ProblemKind::JournalUnwritable, None),
            Err(e) => {
                problems.raise(ProblemKind::JournalUnwritable, None, chain(&e));
                if is_full(&e) {
                    tracing::warn!("the data filesystem is full: pruning old releases and images");
                    updater.free_disk().await;
                    if updater.probe_journal().is_ok() {
                        continue;
                    }
                }
                wait(&mut backoff, shutdown).await?;
                continue;
            }
        }
        match updater.recover().await {
            Ok(reason) => {
                problems.clear(ProblemKind::RecoveryFailed, None);
                break reason;
            }
            Err(e) => {
                problems.raise(ProblemKind::RecoveryFailed, None, chain(&e));
                wait(&mut backoff, shutdown).await?;
            }
        }
    };
    updater.flush_problem_events();
    problems.set_starting(false);
    Ok(Started { updater, recovered })
}

/// Reports, once, that the safe-mode watchdog started the safe stack while this agent was
/// down, hung or crash-looping (an event for the controller and a log line).
fn report_watchdog<R: StackRuntime>(updater: &mut Updater<R>, cfg: &AgentConfig) {
    let Some(episode) = liveness::unreported_watchdog_episode(&cfg.data_dir) else {
        return;
    };
    tracing::warn!(episode = episode.episode, reason = %episode.reason, "the safe-mode watchdog started the safe stack while the agent was not running properly");
    updater.record(EventKind::SafeModeEntered {
        reason: format!("fleet-safe-mode watchdog: {}", episode.reason),
    });
    if let Err(e) = liveness::acknowledge_watchdog_episode(&cfg.data_dir, episode.episode) {
        tracing::warn!(error = %e, "cannot record that the watchdog episode was reported");
    }
}

/// Creates the data directory and takes its lock; `Ok(None)` to retry.
fn take_lock(data: &DataDir, problems: &Problems) -> Result<Option<UpdateLock>, StartupError> {
    if let Err(e) = std::fs::create_dir_all(data.root()) {
        let e = crate::fsutil::ctx("create data directory", data.root())(e);
        problems.raise(ProblemKind::DataDirUnusable, None, chain(&e));
        return Ok(None);
    }
    match UpdateLock::acquire(&data.lock()) {
        Ok(lock) => {
            problems.clear(ProblemKind::LockUnavailable, None);
            Ok(Some(lock))
        }
        Err(e @ LockError::Held { .. }) => Err(StartupError::AnotherAgent(e)),
        Err(e @ LockError::Open { .. }) => {
            problems.raise(ProblemKind::LockUnavailable, None, chain(&e));
            Ok(None)
        }
    }
}

/// Creates the layout and opens the Git cache and the event buffer; `None` to retry.
fn open_stores(cfg: &AgentConfig, data: &DataDir, problems: &Problems) -> Option<Stores> {
    if let Err(e) = data.create() {
        problems.raise(ProblemKind::DataDirUnusable, None, chain(&e));
        return None;
    }
    let events = if cfg.standalone() {
        None
    } else {
        match EventLog::open(data.events_dir()) {
            Ok(log) => Some(log),
            Err(e) => {
                problems.raise(ProblemKind::DataDirUnusable, None, chain(&e));
                return None;
            }
        }
    };
    problems.clear(ProblemKind::DataDirUnusable, None);
    match GitCache::open_or_init(data.git_cache()) {
        Ok(git) => {
            problems.clear(ProblemKind::GitCacheUnusable, None);
            Some(Stores { git, events })
        }
        Err(e) => {
            problems.raise(ProblemKind::GitCacheUnusable, None, chain(&e));
            None
        }
    }
}

/// One attempt to reach the engine, bounded by [`DOCKER_CONNECT_TIMEOUT`]; `Ok(None)` to retry.
async fn connect_engine<R, C, Fut>(
    connect: &mut C,
    problems: &Problems,
    shutdown: &CancellationToken,
) -> Result<Option<R>, StartupError>
where
    C: FnMut() -> Fut,
    Fut: Future<Output = Result<R, String>>,
{
    let attempt = tokio::select! {
        _ = shutdown.cancelled() => return Err(StartupError::Shutdown),
        a = tokio::time::timeout(DOCKER_CONNECT_TIMEOUT, connect()) => a,
    };
    match attempt {
        Ok(Ok(runtime)) => {
            problems.clear(ProblemKind::DockerUnreachable, None);
            Ok(Some(runtime))
        }
        Ok(Err(e)) => {
            problems.raise(ProblemKind::DockerUnreachable, None, e);
            Ok(None)
        }
        Err(_) => {
            problems.raise(
                ProblemKind::DockerUnreachable,
                None,
                format!(
                    "the Docker engine did not answer within {} s",
                    DOCKER_CONNECT_TIMEOUT.as_secs()
                ),
            );
            Ok(None)
        }
    }
}

/// Sleeps the next backoff delay, or returns `Shutdown`.
async fn wait(backoff: &mut Backoff, shutdown: &CancellationToken) -> Result<(), StartupError> {
    let delay = backoff.next_delay();
    tracing::debug!(?delay, "start-up: retrying after");
    tokio::select! {
        _ = shutdown.cancelled() => Err(StartupError::Shutdown),
        _ = tokio::time::sleep(delay) => Ok(()),
    }
}

/// True when `e` says the filesystem is out of space (or over quota).
fn is_full(e: &FsError) -> bool {
    matches!(
        e.source.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{config, NoRuntime};

    #[tokio::test(start_paused = true)]
    async fn waits_for_the_engine_reporting_it_then_recovers() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let run = tmp.path().join("run");
        let metrics = Arc::new(Metrics::default());
        let problems = Arc::new(Problems::new(metrics.clone(), Some(&run)));
        let attempts = std::cell::Cell::new(0u32);
        let shutdown = CancellationToken::new();
        let cfg = config(&tmp.path().join("data"), false);
        let started = start(
            &cfg,
            metrics.clone(),
            problems.clone(),
            || {
                attempts.set(attempts.get() + 1);
                let n = attempts.get();
                async move {
                    if n < 4 {
                        Err("connection refused".to_owned())
                    } else {
                        Ok(NoRuntime)
                    }
                }
            },
            &shutdown,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(attempts.get(), 4);
        assert!(started.recovered.contains("no journal") || !started.recovered.is_empty());
        assert!(problems.active().is_empty(), "{:?}", problems.active());
        let published = crate::problems::PublishedState::load(&run).expect("published");
        assert!(!published.starting);
        let events: Vec<String> = problems
            .take_events()
            .iter()
            .map(|e| serde_json::to_value(e).expect("json")["event"].to_string())
            .collect();
        assert!(events.is_empty(), "standalone records none: {events:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn controller_mode_records_the_problems_met_as_events_after_agent_started() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let metrics = Arc::new(Metrics::default());
        let problems = Arc::new(Problems::new(metrics.clone(), None));
        let attempts = std::cell::Cell::new(0u32);
        let cfg = config(&tmp.path().join("data"), true);
        let started = start(
            &cfg,
            metrics,
            problems,
            || {
                attempts.set(attempts.get() + 1);
                let n = attempts.get();
                async move {
                    if n < 3 {
                        Err("cannot reach the Docker engine at unix:///x: refused".to_owned())
                    } else {
                        Ok(NoRuntime)
                    }
                }
            },
            &CancellationToken::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let pending = started
            .updater
            .events()
            .expect("controller mode")
            .pending(10)
            .expect("pending");
        let kinds: Vec<serde_json::Value> = pending
            .iter()
            .map(|e| serde_json::to_value(&e.kind).expect("json"))
            .collect();
        assert_eq!(kinds[0]["event"], "agent_started", "{kinds:#?}");
        assert_eq!(
            kinds[1],
            serde_json::json!({
                "event": "problem_raised",
                "problem": "docker_unreachable",
                "detail": "cannot reach the Docker engine at unix:///x: refused"
            })
        );
        assert_eq!(
            kinds[2],
            serde_json::json!({"event": "problem_cleared", "problem": "docker_unreachable"})
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait_and_another_agent_ends_the_start() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let metrics = Arc::new(Metrics::default());
        let problems = Arc::new(Problems::new(metrics.clone(), None));
        let cfg = config(&tmp.path().join("data"), false);
        let shutdown = CancellationToken::new();
        let stopper = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(120)).await;
            stopper.cancel();
        });
        let never = || async { Err::<NoRuntime, _>("no engine".to_owned()) };
        let r = start(&cfg, metrics.clone(), problems.clone(), never, &shutdown).await;
        assert!(matches!(r, Err(StartupError::Shutdown)));
        assert!(problems.is_active(ProblemKind::DockerUnreachable));

        let _held = UpdateLock::acquire(&DataDir::new(&cfg.data_dir).lock()).expect("lock");
        let r = start(
            &cfg,
            metrics,
            problems,
            || async { Ok(NoRuntime) },
            &CancellationToken::new(),
        )
        .await;
        match r {
            Err(StartupError::AnotherAgent(e)) => {
                assert!(e.to_string().contains("already running"), "{e}")
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("started beside another agent"),
        }
    }
}
