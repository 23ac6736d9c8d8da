//! Problems the agent keeps running with instead of exiting (DESIGN.md: start-up problems never
//! end the agent): a full or read-only data filesystem, Docker not answering, an unreadable
//! credential. Each one is
//! - logged once when it starts (again only if its cause changes) and once when it ends,
//! - a gauge in `/metrics`: `fleet_agent_problem{problem="..."}`, the number active of each kind,
//! - in `fleet-agent status`, through `<run_dir>/agent.json`: outside the data directory (on
//!   tmpfs), so a data filesystem that is full or read-only can still be reported,
//! - in controller mode, a `problem_raised` / `problem_cleared` event, queued here until the
//!   event buffer can take it (it lives in the data directory, which may be the problem).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use fleet_config::protocol::EventKind;
use serde::{Deserialize, Serialize};

use crate::fsutil::{write_replace, FsError};
use crate::journal::now_ms;
use crate::metrics::Metrics;

/// Events queued for the controller at most; older ones are dropped (the gauge and the status
/// file still tell the current state).
pub const MAX_QUEUED_EVENTS: usize = 64;

/// The file in `run_dir` where the running agent publishes its problems.
pub const STATE_FILE: &str = "agent.json";

/// What kind of problem: one label value of the gauge each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The data directory or its layout cannot be created.
    DataDirUnusable,
    /// The lock file cannot be opened or created (not another agent holding it: that one ends
    /// the agent).
    LockUnavailable,
    /// The journal cannot be written: updates wait.
    JournalUnwritable,
    /// A leftover checkout cannot be removed.
    StagingStuck,
    /// The Git cache cannot be opened or created.
    GitCacheUnusable,
    /// The Docker engine does not answer.
    DockerUnreachable,
    /// A Git endpoint is disabled because its credential file cannot be read.
    GitEndpointDisabled,
    /// Boot recovery failed; it is retried.
    RecoveryFailed,
    /// The CPU is hotter than `temperature_above`: no update starts ([`crate::watch`]).
    Overheating,
    /// The firmware reports under-voltage now: no update starts.
    UnderVoltage,
    /// The power-fail signal is present: data synced, no update starts.
    PowerFailing,
    /// Free disk below `disk_free_below`: the agent prunes, no update starts.
    DiskLow,
    /// The clock is far from the controller's.
    ClockSkew,
    /// The clock is before any plausible date (never set).
    ClockUnset,
    /// A service of the running release keeps restarting (subject: `stack/service`).
    CrashLoop,
    /// `current`'s files drifted from its release and could not be put back (the commit is not
    /// in the Git cache, or re-staging failed): it keeps running as it is, retried at the next
    /// drift check (subject: the release).
    DriftUnrepaired,
    /// A Git endpoint failed `alerts.git_fetch_failures` fetches in a row (subject: its URL).
    GitFetchFailing,
    /// A phase of an update passed its bound (subject: the phase); see `update/stuck.rs`.
    UpdateStuck,
}

impl ProblemKind {
    /// Every kind, for a gauge that starts at zero.
    pub const ALL: &'static [ProblemKind] = &[
        ProblemKind::DataDirUnusable,
        ProblemKind::LockUnavailable,
        ProblemKind::JournalUnwritable,
        ProblemKind::StagingStuck,
        ProblemKind::GitCacheUnusable,
        ProblemKind::DockerUnreachable,
        ProblemKind::GitEndpointDisabled,
        ProblemKind::RecoveryFailed,
        ProblemKind::Overheating,
        ProblemKind::UnderVoltage,
        ProblemKind::PowerFailing,
        ProblemKind::DiskLow,
        ProblemKind::ClockSkew,
        ProblemKind::ClockUnset,
        ProblemKind::CrashLoop,
        ProblemKind::DriftUnrepaired,
        ProblemKind::GitFetchFailing,
        ProblemKind::UpdateStuck,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::DataDirUnusable => "data_dir_unusable",
            ProblemKind::LockUnavailable => "lock_unavailable",
            ProblemKind::JournalUnwritable => "journal_unwritable",
            ProblemKind::StagingStuck => "staging_stuck",
            ProblemKind::GitCacheUnusable => "git_cache_unusable",
            ProblemKind::DockerUnreachable => "docker_unreachable",
            ProblemKind::GitEndpointDisabled => "git_endpoint_disabled",
            ProblemKind::RecoveryFailed => "recovery_failed",
            ProblemKind::Overheating => "overheating",
            ProblemKind::UnderVoltage => "under_voltage",
            ProblemKind::PowerFailing => "power_failing",
            ProblemKind::DiskLow => "disk_low",
            ProblemKind::ClockSkew => "clock_skew",
            ProblemKind::ClockUnset => "clock_unset",
            ProblemKind::CrashLoop => "crash_loop",
            ProblemKind::DriftUnrepaired => "drift_unrepaired",
            ProblemKind::GitFetchFailing => "git_fetch_failing",
            ProblemKind::UpdateStuck => "update_stuck",
        }
    }
}

/// One active problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Its kind.
    pub problem: ProblemKind,
    /// What it concerns when a kind can have several (a Git endpoint's URL, a path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// What failed and why, e.g. "create data directory layout /var/lib/fleet: Read-only file
    /// system (os error 30)".
    pub detail: String,
    /// Since when, ms since the epoch.
    pub since_ms: u64,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.problem.as_str(), self.detail)
    }
}

/// What the running agent publishes in `<run_dir>/agent.json` for `fleet-agent status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedState {
    /// The agent's pid (a file left by a dead agent is ignored).
    pub pid: u32,
    /// When it was written, ms since the epoch.
    pub updated_ms: u64,
    /// True while the agent is still starting (waiting for its data directory or Docker).
    pub starting: bool,
    /// The active problems.
    pub problems: Vec<Problem>,
}

impl PublishedState {
    /// The state a live agent published in `run_dir`; `None` when there is none or its agent is
    /// gone.
    pub fn load(run_dir: &Path) -> Option<PublishedState> {
        let bytes = std::fs::read(run_dir.join(STATE_FILE)).ok()?;
        let state: PublishedState = serde_json::from_slice(&bytes).ok()?;
        Path::new(&format!("/proc/{}", state.pid))
            .exists()
            .then_some(state)
    }
}

/// `e` with its sources, "what: why: deeper why" (a source its parent already quotes is not
/// repeated), for a problem's detail.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[derive(Debug, Default)]
struct State {
    active: BTreeMap<(ProblemKind, Option<String>), Problem>,
    events: Vec<EventKind>,
    starting: bool,
    /// The last write of the state file failed (logged once).
    publish_failed: bool,
}

/// The agent's active problems, shared by every part of it.
#[derive(Debug)]
pub struct Problems {
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    /// `<run_dir>/agent.json`, when the agent publishes its state.
    publish: Option<PathBuf>,
    /// Woken when an event is queued ([`Problems::event_queued`]).
    queued: tokio::sync::Notify,
}

impl Problems {
    /// Problems reported to `metrics` and, with `run_dir`, published for `fleet-agent status`.
    pub fn new(metrics: Arc<Metrics>, run_dir: Option<&Path>) -> Problems {
        Problems {
            state: Mutex::new(State::default()),
            metrics,
            publish: run_dir.map(|d| d.join(STATE_FILE)),
            queued: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data; keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reports `kind` (about `subject`) with `detail`. Logged when new or when the detail
    /// changes; not again on every retry.
    pub fn raise(&self, kind: ProblemKind, subject: Option<&str>, detail: impl std::fmt::Display) {
        let detail = detail.to_string();
        let mut st = self.lock();
        let key = (kind, subject.map(str::to_owned));
        if st.active.get(&key).is_some_and(|p| p.detail == detail) {
            return;
        }
        tracing::error!(problem = kind.as_str(), subject, %detail, "problem: the agent keeps running and retries");
        let since_ms = st.active.get(&key).map_or_else(now_ms, |p| p.since_ms);
        st.active.insert(
            key,
            Problem {
                problem: kind,
                subject: subject.map(str::to_owned),
                detail: detail.clone(),
                since_ms,
            },
        );
        push_event(
            &mut st,
            EventKind::ProblemRaised {
                problem: kind.as_str().to_owned(),
                subject: subject.map(str::to_owned),
                detail,
            },
        );
        self.changed(&mut st);
        self.queued.notify_one();
    }

    /// `kind` (about `subject`) is over, if it was active.
    pub fn clear(&self, kind: ProblemKind, subject: Option<&str>) {
        let mut st = self.lock();
        if st
            .active
            .remove(&(kind, subject.map(str::to_owned)))
            .is_none()
        {
            return;
        }
        tracing::info!(problem = kind.as_str(), subject, "problem resolved");
        push_event(
            &mut st,
            EventKind::ProblemCleared {
                problem: kind.as_str().to_owned(),
                subject: subject.map(str::to_owned),
            },
        );
        self.changed(&mut st);
        self.queued.notify_one();
    }

    /// Clears every problem of `kind` whose subject is not in `keep`.
    pub fn clear_except(&self, kind: ProblemKind, keep: &[&str]) {
        let stale: Vec<Option<String>> = self
            .lock()
            .active
            .keys()
            .filter(|(k, s)| *k == kind && !s.as_deref().is_some_and(|s| keep.contains(&s)))
            .map(|(_, s)| s.clone())
            .collect();
        for subject in stale {
            self.clear(kind, subject.as_deref());
        }
    }

    /// True while `kind` is active (about any subject).
    pub fn is_active(&self, kind: ProblemKind) -> bool {
        self.lock().active.keys().any(|(k, _)| *k == kind)
    }

    /// The active problems, by kind.
    pub fn active(&self) -> Vec<Problem> {
        self.lock().active.values().cloned().collect()
    }

    /// Says whether the agent is still starting (published with the problems).
    pub fn set_starting(&self, starting: bool) {
        let mut st = self.lock();
        if st.starting != starting {
            st.starting = starting;
            self.changed(&mut st);
        }
    }

    /// Returns once an event was queued since the last call returned (at once if one was
    /// queued meanwhile): the controller loop hands it to the buffer on disk then, also while
    /// a check-in is out.
    pub async fn event_queued(&self) {
        self.queued.notified().await;
    }

    /// The events not yet handed to the event buffer, oldest first.
    pub fn take_events(&self) -> Vec<EventKind> {
        std::mem::take(&mut self.lock().events)
    }

    /// Puts back events the buffer could not take (at the front, in order).
    pub fn requeue_events(&self, mut events: Vec<EventKind>) {
        let mut st = self.lock();
        events.append(&mut st.events);
        st.events = events;
        let excess = st.events.len().saturating_sub(MAX_QUEUED_EVENTS);
        st.events.drain(..excess);
    }

    /// Removes the published state (a clean stop).
    pub fn withdraw(&self) {
        if let Some(path) = &self.publish {
            let _ = std::fs::remove_file(path);
        }
    }

    fn changed(&self, st: &mut State) {
        let mut counts: BTreeMap<ProblemKind, u64> = BTreeMap::new();
        for (kind, _) in st.active.keys() {
            *counts.entry(*kind).or_default() += 1;
        }
        self.metrics.set_problems(&counts);
        if let Some(path) = &self.publish {
            let state = PublishedState {
                pid: std::process::id(),
                updated_ms: now_ms(),
                starting: st.starting,
                problems: st.active.values().cloned().collect(),
            };
            match publish(path, &state) {
                Ok(()) => st.publish_failed = false,
                Err(e) if !st.publish_failed => {
                    st.publish_failed = true;
                    tracing::warn!(error = %e, "cannot publish the agent's problems for `fleet-agent status`");
                }
                Err(_) => {}
            }
        }
    }
}

fn push_event(st: &mut State, event: EventKind) {
    st.events.push(event);
    let excess = st.events.len().saturating_sub(MAX_QUEUED_EVENTS);
    st.events.drain(..excess);
}

fn publish(path: &Path, state: &PublishedState) -> Result<(), FsError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(crate::fsutil::ctx("create", dir))?;
    }
    let bytes = serde_json::to_vec_pretty(state).unwrap_or_default();
    write_replace(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raised_and_cleared_problems_are_counted_published_and_queued_once() {
        let run = tempfile::tempdir().expect("tempdir");
        let metrics = Arc::new(Metrics::default());
        let p = Problems::new(metrics.clone(), Some(run.path()));
        p.raise(ProblemKind::DockerUnreachable, None, "refused");
        p.raise(ProblemKind::DockerUnreachable, None, "refused");
        p.raise(
            ProblemKind::GitEndpointDisabled,
            Some("git://a"),
            "no token",
        );
        p.raise(
            ProblemKind::GitEndpointDisabled,
            Some("git://b"),
            "no token",
        );
        let text = metrics.render(&crate::host::HostStats::default());
        for line in [
            "fleet_agent_problem{problem=\"docker_unreachable\"} 1",
            "fleet_agent_problem{problem=\"git_endpoint_disabled\"} 2",
            "fleet_agent_problem{problem=\"journal_unwritable\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
        let published = PublishedState::load(run.path()).expect("published");
        assert_eq!(published.pid, std::process::id());
        assert_eq!(published.problems.len(), 3);
        assert_eq!(
            published.problems[0].to_string(),
            "docker_unreachable: refused"
        );
        p.clear(ProblemKind::DockerUnreachable, None);
        p.clear(ProblemKind::DockerUnreachable, None);
        p.clear_except(ProblemKind::GitEndpointDisabled, &["git://b"]);
        let events = p.take_events();
        let names: Vec<String> = events
            .iter()
            .map(|e| serde_json::to_value(e).expect("json")["event"].to_string())
            .collect();
        assert_eq!(
            names,
            [
                "\"problem_raised\"",
                "\"problem_raised\"",
                "\"problem_raised\"",
                "\"problem_cleared\"",
                "\"problem_cleared\""
            ],
            "each change once"
        );
        assert!(p.take_events().is_empty());
        let published = PublishedState::load(run.path()).expect("published");
        assert_eq!(published.problems.len(), 1);
        assert_eq!(published.problems[0].subject.as_deref(), Some("git://b"));
        p.withdraw();
        assert!(PublishedState::load(run.path()).is_none());
    }

    #[test]
    fn a_state_file_of_a_dead_agent_is_ignored() {
        let run = tempfile::tempdir().expect("tempdir");
        let state = PublishedState {
            // Above any pid_max.
            pid: u32::MAX,
            updated_ms: 1,
            starting: true,
            problems: Vec::new(),
        };
        publish(&run.path().join(STATE_FILE), &state).expect("write");
        assert!(PublishedState::load(run.path()).is_none());
    }
}
