//! `fleet-safe-mode`: the watchdog systemd runs beside the agent. When the agent is dead, hung
//! or crash-looping it starts the safe-mode stack itself, through the Docker Engine API, so
//! on-call can still reach a device nobody can reach by hand; when the agent is healthy again it
//! hands back and touches nothing.
//!
//! Guarantees:
//! - Looking never disturbs the agent: the lock is read from `/proc/locks`, the heartbeat from
//!   its file; the watchdog never takes the agent's lock.
//! - It acts only on a verdict of [`judge`] (dead, hung, crash-looping), and while crash-looping
//!   at most once per agent life, so it never fights a running agent's own decision.
//! - Starting the safe stack is idempotent: a safe stack that runs is left alone, and the
//!   containers are the agent's own (same runtime, labels and config hash, see [`stack`]).
//! - It never removes anything: the app stack keeps running beside the safe stack; the agent
//!   decides what runs once it is back.
//! - Why it acted is written to the status file ([`WatchdogStatus`]) the agent reports on its
//!   next start, and logged.
//! - Docker not answering is retried at every look; the watchdog itself only ends on SIGTERM.

pub mod judge;
pub mod observe;
pub mod stack;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_config::liveness::{
    boot_clock_ms, boot_id, WatchdogState, WatchdogStatus, AGENT_LOCK_FILE, HEARTBEAT_FILE,
    WATCHDOG_STATUS_FILE,
};
use fleet_docker::{Namespace, Runtime};
use tokio_util::sync::CancellationToken;

use judge::{Action, Memory, Observation, Thresholds, Verdict};
use stack::{Ensured, SafeStack};

/// The watchdog's settings; the command line fills them (see `fleet-safe-mode --help`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The agent's data directory (its lock, its heartbeat, the status file).
    pub data_dir: PathBuf,
    /// The agent's label namespace, until its heartbeat names one.
    pub namespace: String,
    /// The safe-mode compose file, until the agent's heartbeat names one.
    pub safe_mode_compose: PathBuf,
    /// The secrets directory, until the agent's heartbeat names one.
    pub secrets_dir: PathBuf,
    /// The engine's address (`DOCKER_HOST` form).
    pub docker_host: String,
    /// How often to look.
    pub poll: Duration,
    /// When the agent counts as dead, hung or crash-looping.
    pub thresholds: Thresholds,
}

/// The watchdog could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// The boot clock (`/proc/uptime`) is unreadable: nothing could be judged.
    #[error("cannot read the boot clock (/proc/uptime); the watchdog needs Linux's /proc")]
    NoBootClock,
    /// A setting is unusable.
    #[error("invalid setting: {0}")]
    Invalid(String),
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Writes `status` as temp file + fsync + rename + fsync of the directory.
fn write_status(path: &Path, status: &WatchdogStatus) -> std::io::Result<()> {
    use std::io::Write;
    let bytes = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The watchdog's state between looks.
struct Watchdog {
    opts: Options,
    boot_id: String,
    watching_since_ms: u64,
    memory: Memory,
    status: WatchdogStatus,
    docker: Option<(Namespace, Runtime)>,
    last_verdict: Verdict,
}

impl Watchdog {
    fn status_path(&self) -> PathBuf {
        self.opts.data_dir.join(WATCHDOG_STATUS_FILE)
    }

    fn save(&mut self) {
        self.status.updated_at_unix_ms = unix_ms();
        let path = self.status_path();
        if let Err(e) = write_status(&path, &self.status) {
            tracing::error!(path = %path.display(), error = %e, "cannot write the watchdog status");
        }
    }

    fn observe(&self, now_ms: u64) -> Observation {
        let data = &self.opts.data_dir;
        Observation {
            now_ms,
            watching_since_ms: self.watching_since_ms,
            lock_holder: observe::lock_holder(&data.join(AGENT_LOCK_FILE)),
            heartbeat: observe::heartbeat(&data.join(HEARTBEAT_FILE), &self.boot_id),
        }
    }

    /// The engine connection for `namespace`, made on first need and kept.
    async fn runtime(&mut self, namespace: &str) -> Result<&Runtime, String> {
        let ns = Namespace::new(namespace).map_err(|e| e.to_string())?;
        if self.docker.as_ref().map(|(n, _)| n) != Some(&ns) {
            let rt = Runtime::connect_host(&self.opts.docker_host, ns.clone())
                .await
                .map_err(|e| format!("{e}: {}", error_chain(&e)))?;
            self.docker = Some((ns, rt));
        }
        self.docker
            .as_ref()
            .map(|(_, rt)| rt)
            .ok_or_else(|| "no engine connection".to_owned())
    }

    /// One look: observe, judge, decide, act.
    async fn look(&mut self) {
        let Some(now_ms) = boot_clock_ms() else {
            return;
        };
        let o = self.observe(now_ms);
        let verdict = judge::judge(&self.opts.thresholds, &o);
        if verdict != self.last_verdict
            && std::mem::discriminant(&verdict) != std::mem::discriminant(&self.last_verdict)
        {
            match &verdict {
                Verdict::Alive => tracing::info!(%verdict, "agent judged"),
                _ => tracing::error!(%verdict, "agent judged"),
            }
        }
        self.last_verdict = verdict.clone();
        let (action, memory) = judge::decide(&verdict, &o, &self.memory);
        match action {
            Action::Watch => {}
            Action::HandBack => {
                tracing::info!(
                    "the agent is alive again: handing back (the agent decides what runs)"
                );
                self.status.state = WatchdogState::HandedBack;
                self.status.error = None;
                self.save();
            }
            Action::EnsureSafeStack => {
                let first =
                    !self.memory.acting || memory.acted_for_start != self.memory.acted_for_start;
                self.ensure(&o, &verdict, first).await;
            }
        }
        self.memory = memory;
    }

    async fn ensure(&mut self, o: &Observation, verdict: &Verdict, new_episode: bool) {
        // What the agent last said it uses wins over the command line's defaults.
        let hb = o.heartbeat.as_ref();
        let namespace = hb.map_or(self.opts.namespace.clone(), |h| h.namespace.clone());
        let stack = SafeStack {
            compose: hb.map_or(self.opts.safe_mode_compose.clone(), |h| {
                h.safe_mode_compose.clone()
            }),
            secrets_dir: hb.map_or(self.opts.secrets_dir.clone(), |h| h.secrets_dir.clone()),
            data_dir: self.opts.data_dir.clone(),
        };
        let reason = verdict.to_string();
        if new_episode {
            self.status.episode += 1;
            self.status.state = WatchdogState::SafeMode;
            self.status.reason = Some(reason.clone());
            self.status.acted_at_unix_ms = Some(unix_ms());
            tracing::error!(%reason, episode = self.status.episode, "starting the safe-mode stack");
        }
        let result = match self.runtime(&namespace).await {
            Ok(rt) => stack::ensure(rt, &stack)
                .await
                .map_err(|e| format!("{e}: {}", error_chain(&e))),
            Err(e) => Err(e),
        };
        let changed = match result {
            Ok(Ensured::AlreadyRunning) => {
                let was_error = self.status.error.take().is_some();
                new_episode || was_error
            }
            Ok(Ensured::Started(services)) => {
                tracing::warn!(?services, %reason, "safe-mode stack started by the watchdog");
                self.status.error = None;
                true
            }
            Err(e) => {
                if self.status.error.as_deref() != Some(e.as_str()) {
                    tracing::error!(error = %e, "cannot start the safe-mode stack; retrying at the next look");
                    self.status.error = Some(e);
                    true
                } else {
                    new_episode
                }
            }
        };
        if changed {
            self.save();
        }
    }
}

/// Every `source()` below `e`, for one log line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

/// Watches until `shutdown` is cancelled.
pub async fn run(opts: Options, shutdown: CancellationToken) -> Result<(), WatchdogError> {
    if opts.poll.is_zero() {
        return Err(WatchdogError::Invalid("--poll must be more than 0".into()));
    }
    let watching_since_ms = boot_clock_ms().ok_or(WatchdogError::NoBootClock)?;
    let status_path = opts.data_dir.join(WATCHDOG_STATUS_FILE);
    // Keep the episode count across restarts of the watchdog, so the agent reports each once.
    let status = std::fs::read(&status_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<WatchdogStatus>(&b).ok())
        .unwrap_or(WatchdogStatus {
            state: WatchdogState::Watching,
            reason: None,
            episode: 0,
            acted_at_unix_ms: None,
            error: None,
            updated_at_unix_ms: 0,
        });
    tracing::info!(
        data_dir = %opts.data_dir.display(),
        docker_host = %opts.docker_host,
        poll_ms = opts.poll.as_millis() as u64,
        dead_after_ms = opts.thresholds.dead_after.as_millis() as u64,
        hung_grace_ms = opts.thresholds.hung_grace.as_millis() as u64,
        max_restarts = opts.thresholds.max_restarts,
        restart_window_ms = opts.thresholds.restart_window.as_millis() as u64,
        "fleet-safe-mode watching the agent"
    );
    let mut w = Watchdog {
        opts,
        boot_id: boot_id(),
        watching_since_ms,
        memory: Memory::default(),
        status,
        docker: None,
        last_verdict: Verdict::Alive,
    };
    loop {
        w.look().await;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(w.opts.poll) => {}
        }
    }
    tracing::info!("fleet-safe-mode stopped");
    Ok(())
}
