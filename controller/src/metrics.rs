//! The controller's own counters, rendered in the Prometheus text format with the fleet
//! gauges (devices by state, rollouts by state) computed at scrape time.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Check-in latency buckets, seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Counters updated on the request path (lock-free).
#[derive(Debug, Default)]
pub struct Metrics {
    checkin_buckets: [AtomicU64; BUCKETS.len()],
    checkin_count: AtomicU64,
    checkin_sum_us: AtomicU64,
    checkin_errors: AtomicU64,
    webhooks_rejected: AtomicU64,
    accept_failures: AtomicU64,
    connections_refused: AtomicU64,
    engine_passes: AtomicU64,
    engine_slow_passes: AtomicU64,
    engine_pass_last_us: AtomicU64,
    engine_pass_max_us: AtomicU64,
    engine_deferred_passes: AtomicU64,
}

impl Metrics {
    /// Records one check-in's latency.
    pub fn observe_checkin(&self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.checkin_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.checkin_count.fetch_add(1, Ordering::Relaxed);
        self.checkin_sum_us
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }

    /// Counts a refused check-in.
    pub fn checkin_error(&self) {
        self.checkin_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a webhook refused for its signature.
    pub fn webhook_rejected(&self) {
        self.webhooks_rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an `accept` that failed for want of descriptors or memory.
    pub fn accept_failed(&self) {
        self.accept_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed for being over the per-address cap.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one pass of the rollout engine; `slow`: longer than its interval.
    pub fn observe_pass(&self, secs: f64, slow: bool) {
        let us = (secs * 1e6) as u64;
        self.engine_passes.fetch_add(1, Ordering::Relaxed);
        self.engine_slow_passes
            .fetch_add(u64::from(slow), Ordering::Relaxed);
        self.engine_pass_last_us.store(us, Ordering::Relaxed);
        self.engine_pass_max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Counts a pass that left desired releases for the next one (its budget was spent).
    pub fn pass_deferred(&self) {
        self.engine_deferred_passes.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text, with the gauges given.
    pub fn render(
        &self,
        devices_by_state: &[(&str, u64)],
        rollouts_by_state: &[(String, u64)],
        emergency_stop: bool,
        leader: bool,
    ) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP fleet_devices Devices by state.\n# TYPE fleet_devices gauge"
        );
        for (s, n) in devices_by_state {
            let _ = writeln!(out, "fleet_devices{{state=\"{s}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP fleet_rollouts Rollouts by state.\n# TYPE fleet_rollouts gauge"
        );
        for (s, n) in rollouts_by_state {
            let _ = writeln!(out, "fleet_rollouts{{state=\"{s}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP fleet_emergency_stop 1 while the emergency stop holds.\n# TYPE fleet_emergency_stop gauge\nfleet_emergency_stop {}",
            u8::from(emergency_stop)
        );
        let _ = writeln!(
            out,
            "# HELP fleet_controller_leader 1 on the replica that drives rollouts.\n# TYPE fleet_controller_leader gauge\nfleet_controller_leader {}",
            u8::from(leader)
        );
        let _ = writeln!(out, "# HELP fleet_checkin_duration_seconds Check-in handling time.\n# TYPE fleet_checkin_duration_seconds histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "fleet_checkin_duration_seconds_bucket{{le=\"{b}\"}} {}",
                self.checkin_buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.checkin_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "fleet_checkin_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "fleet_checkin_duration_seconds_sum {}",
            self.checkin_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "fleet_checkin_duration_seconds_count {count}");
        let _ = writeln!(
            out,
            "# HELP fleet_checkin_errors_total Check-ins refused (bad token, bad body).\n# TYPE fleet_checkin_errors_total counter\nfleet_checkin_errors_total {}",
            self.checkin_errors.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP fleet_webhooks_rejected_total Webhooks refused for a bad signature.\n# TYPE fleet_webhooks_rejected_total counter\nfleet_webhooks_rejected_total {}",
            self.webhooks_rejected.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP fleet_accept_failures_total Connections not accepted for want of file descriptors or memory.\n# TYPE fleet_accept_failures_total counter\nfleet_accept_failures_total {}",
            self.accept_failures.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP fleet_connections_refused_total Connections closed at once: over limits.max_connections_per_ip.\n# TYPE fleet_connections_refused_total counter\nfleet_connections_refused_total {}",
            self.connections_refused.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP fleet_engine_passes_total Passes of the rollout engine (leader).
# TYPE fleet_engine_passes_total counter
fleet_engine_passes_total {}",
            self.engine_passes.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP fleet_engine_slow_passes_total Passes longer than reconcile_interval.
# TYPE fleet_engine_slow_passes_total counter
fleet_engine_slow_passes_total {}",
            self.engine_slow_passes.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP fleet_engine_pass_seconds The last pass's duration.
# TYPE fleet_engine_pass_seconds gauge
fleet_engine_pass_seconds {}",
            self.engine_pass_last_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP fleet_engine_pass_max_seconds The longest pass since the start.
# TYPE fleet_engine_pass_max_seconds gauge
fleet_engine_pass_max_seconds {}",
            self.engine_pass_max_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP fleet_engine_deferred_passes_total Passes that left desired releases for the next pass, having spent their budget (half of reconcile_interval) writing them.
# TYPE fleet_engine_deferred_passes_total counter
fleet_engine_deferred_passes_total {}",
            self.engine_deferred_passes.load(Ordering::Relaxed)
        );
        out
    }
}
