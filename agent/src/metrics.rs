//! The agent's Prometheus metrics (DESIGN.md, "Observability"), kept in atomics and rendered in
//! the text exposition format by `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fleet_config::protocol::UpdatePhase;

use crate::problems::ProblemKind;

/// All update phases, for the one-hot phase gauge.
const PHASES: &[UpdatePhase] = &[
    UpdatePhase::Idle,
    UpdatePhase::Fetching,
    UpdatePhase::Staging,
    UpdatePhase::Staged,
    UpdatePhase::Pulling,
    UpdatePhase::Switching,
    UpdatePhase::Verifying,
    UpdatePhase::RollingBack,
    UpdatePhase::SafeMode,
];

/// The phase as its label value (`rolling_back`).
pub(crate) fn phase_name(p: UpdatePhase) -> String {
    serde_json::to_value(p)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The agent's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    phase: Mutex<Option<UpdatePhase>>,
    current_release: Mutex<Option<String>>,
    /// Updates by result (`succeeded`, `rolled_back`, `rejected`, `skipped`).
    updates: Mutex<BTreeMap<String, u64>>,
    /// Git fetch failures by endpoint.
    git_failures: Mutex<BTreeMap<String, u64>>,
    /// Consecutive Git fetch failures by endpoint.
    git_streaks: Mutex<BTreeMap<String, u32>>,
    last_checkin_ms: AtomicU64,
    /// Failed check-ins (and enrollment requests) by reason.
    checkin_failures: Mutex<BTreeMap<String, u64>>,
    /// Buffered events dropped because the buffer was full.
    events_dropped: AtomicU64,
    last_update_seconds: Mutex<Option<f64>>,
    safe_mode: AtomicU64,
    /// The liveness signals the main loop and the phases feed (none in tests that do not
    /// attach one).
    liveness: Mutex<Option<crate::liveness::Liveness>>,
    /// Active problems by kind (see [`crate::problems`]).
    problems: Mutex<BTreeMap<ProblemKind, u64>>,
    /// The device watchers' gauges (see [`crate::watch`]).
    watch: Mutex<crate::watch::Gauges>,
    /// Restarts within the crash-loop window, by `stack/service`.
    restarts_in_window: Mutex<BTreeMap<String, u64>>,
    /// Crash loops acted on, by action (`rollback`, `safe_mode`).
    crash_loops: Mutex<BTreeMap<&'static str, u64>>,
    /// Config drift found and acted on, by kind (`files`, `services`).
    drift: Mutex<BTreeMap<&'static str, u64>>,
    /// Updates found stuck, by phase.
    stuck: Mutex<BTreeMap<String, u64>>,
    /// The Loki shipper's counters, with `logging.loki`.
    log_shipping: Mutex<Option<Arc<fleet_logging::ShipStats>>>,
}

/// The kinds of [`Metrics::count_drift`].
pub const DRIFT_KINDS: [&str; 2] = ["files", "services"];

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a metrics lock leaves plain data; keep serving it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    /// Records the transaction phase (and tells the liveness signals, so a long phase may
    /// keep the loop away until its deadline).
    pub fn set_phase(&self, p: UpdatePhase) {
        *lock(&self.phase) = Some(p);
        self.safe_mode
            .store(u64::from(p == UpdatePhase::SafeMode), Ordering::Relaxed);
        if let Some(l) = lock(&self.liveness).as_mut() {
            l.phase(p);
        }
    }
    /// Gives the process's liveness signals (heartbeat, sd_notify) to these metrics, which
    /// feed them from the loop's turns and the transaction's phases.
    pub fn attach_liveness(&self, liveness: crate::liveness::Liveness) {
        *lock(&self.liveness) = Some(liveness);
    }
    /// Runs `f` on the attached liveness signals, if any.
    pub fn with_liveness(&self, f: impl FnOnce(&mut crate::liveness::Liveness)) {
        if let Some(l) = lock(&self.liveness).as_mut() {
            f(l);
        }
    }
    /// The main loop came round: the one place the agent's liveness pings come from (see
    /// [`crate::liveness`]), so a hung loop stops them.
    pub fn loop_turn(&self) {
        self.with_liveness(crate::liveness::Liveness::beat);
    }
    /// Records the running release.
    pub fn set_current(&self, release: Option<&str>) {
        *lock(&self.current_release) = release.map(str::to_owned);
    }
    /// Counts an update by result.
    pub fn count_update(&self, result: &str) {
        *lock(&self.updates).entry(result.to_owned()).or_default() += 1;
    }
    /// Counts a Git fetch failure.
    pub fn count_git_failure(&self, endpoint: &str) {
        *lock(&self.git_failures)
            .entry(endpoint.to_owned())
            .or_default() += 1;
    }
    /// Every endpoint's consecutive fetch failures ([`crate::git_health`]).
    pub fn set_git_streaks(&self, streaks: BTreeMap<String, u32>) {
        *lock(&self.git_streaks) = streaks;
    }
    /// Records a successful check-in with the controller.
    pub fn set_last_checkin_ms(&self, ms: u64) {
        self.last_checkin_ms.store(ms, Ordering::Relaxed);
    }
    /// Counts a failed request to the controller; `reason` is a
    /// [`crate::controller::ControllerError::kind`].
    pub fn count_checkin_failure(&self, reason: &str) {
        *lock(&self.checkin_failures)
            .entry(reason.to_owned())
            .or_default() += 1;
    }
    /// Records how many buffered events were dropped (buffer full) since start.
    pub fn set_events_dropped(&self, n: u64) {
        self.events_dropped.store(n, Ordering::Relaxed);
    }
    /// Records how many problems of each kind are active (kinds absent: none).
    pub fn set_problems(&self, counts: &BTreeMap<ProblemKind, u64>) {
        *lock(&self.problems) = counts.clone();
    }
    /// Records the device watchers' last readings.
    pub fn set_watch(&self, gauges: crate::watch::Gauges) {
        *lock(&self.watch) = gauges;
    }
    /// Records each service's restarts within the crash-loop window.
    pub fn set_restarts_in_window(&self, by_service: BTreeMap<String, u64>) {
        *lock(&self.restarts_in_window) = by_service;
    }
    /// Counts a crash loop acted on (`rollback` or `safe_mode`).
    pub fn count_crash_loop(&self, action: &'static str) {
        *lock(&self.crash_loops).entry(action).or_default() += 1;
    }
    /// Counts config drift found and acted on: `files` under `current`, or `services` whose
    /// container had to be put back.
    pub fn count_drift(&self, kind: &'static str) {
        *lock(&self.drift).entry(kind).or_default() += 1;
    }
    /// Counts an update stuck in `phase`.
    pub fn count_stuck(&self, phase: &str) {
        *lock(&self.stuck).entry(phase.to_owned()).or_default() += 1;
    }
    /// Records how long the last update took.
    pub fn set_last_update_seconds(&self, s: f64) {
        *lock(&self.last_update_seconds) = Some(s);
    }
    /// Exports the Loki shipper's counters (lines sent, lines dropped).
    pub fn attach_log_shipping(&self, stats: Arc<fleet_logging::ShipStats>) {
        *lock(&self.log_shipping) = Some(stats);
    }

    /// The text exposition format, with the host's resource gauges read now.
    pub fn render(&self, host: &crate::host::HostStats) -> String {
        let mut out = String::with_capacity(2048);
        let phase = *lock(&self.phase);
        let _ = writeln!(out, "# HELP fleet_agent_update_phase The update transaction's phase (1 for the current one).\n# TYPE fleet_agent_update_phase gauge");
        for p in PHASES {
            let _ = writeln!(
                out,
                "fleet_agent_update_phase{{phase=\"{}\"}} {}",
                phase_name(*p),
                u8::from(phase == Some(*p))
            );
        }
        let _ = writeln!(out, "# HELP fleet_agent_current_release_info The release `current` points at.\n# TYPE fleet_agent_current_release_info gauge");
        if let Some(r) = lock(&self.current_release).as_deref() {
            let _ = writeln!(out, "fleet_agent_current_release_info{{release=\"{r}\"}} 1");
        }
        let _ = writeln!(out, "# HELP fleet_agent_updates_total Update attempts by result.\n# TYPE fleet_agent_updates_total counter");
        for result in ["succeeded", "rolled_back", "rejected", "skipped"] {
            let n = lock(&self.updates).get(result).copied().unwrap_or(0);
            let _ = writeln!(out, "fleet_agent_updates_total{{result=\"{result}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP fleet_agent_git_fetch_failures_total Git fetch failures by endpoint.\n# TYPE fleet_agent_git_fetch_failures_total counter");
        for (endpoint, n) in lock(&self.git_failures).iter() {
            let e = label_value(endpoint);
            let _ = writeln!(
                out,
                "fleet_agent_git_fetch_failures_total{{endpoint=\"{e}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# HELP fleet_agent_git_consecutive_failures Git fetch failures in a row by endpoint (0 after it served one).\n# TYPE fleet_agent_git_consecutive_failures gauge");
        for (endpoint, n) in lock(&self.git_streaks).iter() {
            let e = label_value(endpoint);
            let _ = writeln!(
                out,
                "fleet_agent_git_consecutive_failures{{endpoint=\"{e}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# HELP fleet_agent_safe_mode 1 while the device runs the safe-mode stack.\n# TYPE fleet_agent_safe_mode gauge\nfleet_agent_safe_mode {}", self.safe_mode.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP fleet_agent_last_checkin_timestamp_seconds Last successful check-in with the controller.\n# TYPE fleet_agent_last_checkin_timestamp_seconds gauge\nfleet_agent_last_checkin_timestamp_seconds {}", self.last_checkin_ms.load(Ordering::Relaxed) as f64 / 1000.0);
        let _ = writeln!(out, "# HELP fleet_agent_checkin_failures_total Failed requests to the controller (check-in, enrollment) by reason.\n# TYPE fleet_agent_checkin_failures_total counter");
        {
            let failures = lock(&self.checkin_failures);
            for reason in crate::controller::ControllerError::KINDS {
                let n = failures.get(*reason).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "fleet_agent_checkin_failures_total{{reason=\"{reason}\"}} {n}"
                );
            }
        }
        let _ = writeln!(out, "# HELP fleet_agent_events_dropped_total Events dropped from the full offline buffer since the agent started.\n# TYPE fleet_agent_events_dropped_total counter\nfleet_agent_events_dropped_total {}", self.events_dropped.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP fleet_agent_problem Problems the agent keeps running with and retries (full or read-only disk, Docker not answering, an unreadable credential), by kind: how many are active.\n# TYPE fleet_agent_problem gauge");
        {
            let problems = lock(&self.problems);
            for kind in ProblemKind::ALL {
                let n = problems.get(kind).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "fleet_agent_problem{{problem=\"{}\"}} {n}",
                    kind.as_str()
                );
            }
        }
        if let Some(s) = *lock(&self.last_update_seconds) {
            let _ = writeln!(out, "# HELP fleet_agent_last_update_duration_seconds How long the last update took.\n# TYPE fleet_agent_last_update_duration_seconds gauge\nfleet_agent_last_update_duration_seconds {s}");
        }
        lock(&self.watch).render(&mut out);
        let _ = writeln!(out, "# HELP fleet_agent_crash_loops_total Crash loops of the running release acted on, by action.\n# TYPE fleet_agent_crash_loops_total counter");
        for action in ["rollback", "safe_mode"] {
            let n = lock(&self.crash_loops).get(action).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "fleet_agent_crash_loops_total{{action=\"{action}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# HELP fleet_agent_drift_detected_total Config drift of the running release found and repaired, by kind (files under current, services whose container was put back).\n# TYPE fleet_agent_drift_detected_total counter");
        for kind in DRIFT_KINDS {
            let n = lock(&self.drift).get(kind).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "fleet_agent_drift_detected_total{{kind=\"{kind}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# HELP fleet_agent_updates_stuck_total Updates given up (before the swap) or rolled back (after it) because a phase passed its bound, by phase.\n# TYPE fleet_agent_updates_stuck_total counter");
        {
            let stuck = lock(&self.stuck);
            for phase in [
                "staging",
                "pulling",
                "switching",
                "verifying",
                "rolling_back",
            ] {
                let n = stuck.get(phase).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "fleet_agent_updates_stuck_total{{phase=\"{phase}\"}} {n}"
                );
            }
        }
        let _ = writeln!(out, "# HELP fleet_agent_service_restarts_in_window Restarts of each service of the running release within alerts.crash_loop.within (Docker's and the agent's own).\n# TYPE fleet_agent_service_restarts_in_window gauge");
        for (service, n) in lock(&self.restarts_in_window).iter() {
            let s = label_value(service);
            let _ = writeln!(
                out,
                "fleet_agent_service_restarts_in_window{{service=\"{s}\"}} {n}"
            );
        }
        if let Some(stats) = lock(&self.log_shipping).as_ref() {
            let _ = writeln!(out, "# HELP fleet_agent_loki_sent_total Log lines Loki accepted (logging.loki).\n# TYPE fleet_agent_loki_sent_total counter\nfleet_agent_loki_sent_total {}", stats.sent_total());
            let _ = writeln!(out, "# HELP fleet_agent_loki_dropped_total Log lines dropped instead of pushed to Loki: its queue was full, Loki refused or did not answer their push, or the shutdown deadline passed.\n# TYPE fleet_agent_loki_dropped_total counter\nfleet_agent_loki_dropped_total {}", stats.dropped_total());
        }
        host.render(&mut out);
        out
    }
}

/// `v` escaped for a label value of the text exposition format.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_in_metrics_are_rendered() {
        let m = Metrics::default();
        m.set_last_checkin_ms(1_700_000_000_500);
        m.count_checkin_failure("unreachable");
        m.count_checkin_failure("unreachable");
        m.count_checkin_failure("unauthorized");
        m.set_events_dropped(3);
        m.count_drift("files");
        m.count_drift("files");
        let text = m.render(&crate::host::HostStats::default());
        for line in [
            "fleet_agent_last_checkin_timestamp_seconds 1700000000.5",
            "# TYPE fleet_agent_checkin_failures_total counter",
            "fleet_agent_checkin_failures_total{reason=\"unreachable\"} 2",
            "fleet_agent_checkin_failures_total{reason=\"unauthorized\"} 1",
            "fleet_agent_checkin_failures_total{reason=\"server\"} 0",
            "fleet_agent_events_dropped_total 3",
            "# TYPE fleet_agent_drift_detected_total counter",
            "fleet_agent_drift_detected_total{kind=\"files\"} 2",
            "fleet_agent_drift_detected_total{kind=\"services\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
    }

    #[test]
    fn loki_counters_are_exported_only_with_loki() {
        let m = Metrics::default();
        let text = m.render(&crate::host::HostStats::default());
        assert!(!text.contains("fleet_agent_loki_"), "{text}");
        m.attach_log_shipping(Arc::new(fleet_logging::ShipStats::default()));
        let text = m.render(&crate::host::HostStats::default());
        for line in [
            "# TYPE fleet_agent_loki_sent_total counter",
            "fleet_agent_loki_sent_total 0",
            "# TYPE fleet_agent_loki_dropped_total counter",
            "fleet_agent_loki_dropped_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
    }
}
