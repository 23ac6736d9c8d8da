//! The controller's metrics, kept in a `prometheus-client` registry and rendered in the
//! Prometheus text format (0.0.4). Counters and the check-in histogram move on the request
//! path; the fleet gauges (devices by state, rollouts by state, the stop, leadership) are set
//! at scrape time from what the scrape reads; the watcher, the fleet-wide gate, the alert
//! engine, the notifiers and the heartbeat set theirs as they work (on the leader; a follower
//! shows none of the alert series).

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Check-in latency buckets, seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// A gauge of seconds or a ratio.
type FloatGauge = Gauge<f64, AtomicU64>;

/// `{state}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// `{endpoint}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

/// `{alertname, severity}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    alertname: String,
    severity: String,
}

/// `{alertname}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertNameLabel {
    alertname: String,
}

/// `{notifier}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotifierLabel {
    notifier: String,
}

/// `{notifier, kind, result}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabels {
    notifier: String,
    kind: String,
    result: String,
}

/// Every metric of the controller.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    checkin: Histogram,
    checkin_errors: Counter,
    webhooks_rejected: Counter,
    accept_failures: Counter,
    connections_refused: Counter,
    engine_passes: Counter,
    engine_slow_passes: Counter,
    engine_deferred_passes: Counter,
    engine_pass_last: FloatGauge,
    engine_pass_max: FloatGauge,
    engine_pass_max_us: AtomicU64,
    devices: Family<StateLabel, Gauge>,
    rollouts: Family<StateLabel, Gauge>,
    emergency_stop: Gauge,
    leader: Gauge,
    watcher_failures: Family<EndpointLabel, Counter>,
    watcher_consecutive: Family<EndpointLabel, Gauge>,
    watcher_last_success: FloatGauge,
    release_rejected: Gauge,
    unhealthy_ratio: FloatGauge,
    unhealthy_stop_ratio: FloatGauge,
    alerts_firing: Family<AlertLabels, Gauge>,
    alert_devices: Family<AlertNameLabel, Gauge>,
    alert_evaluations: Counter,
    alert_last_evaluation: FloatGauge,
    notifications: Family<NotificationLabels, Counter>,
    notifier_consecutive: Family<NotifierLabel, Gauge>,
    notifier_queue: Gauge,
    heartbeat_last_success: FloatGauge,
    heartbeat_failures: Counter,
    watchdog: Gauge,
    loki: std::sync::OnceLock<std::sync::Arc<fleet_logging::ShipStats>>,
    loki_sent: Counter,
    loki_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let checkin = Histogram::new(BUCKETS);
        registry.register(
            "fleet_checkin_duration_seconds",
            "Check-in handling time",
            checkin.clone(),
        );
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let checkin_errors = counter(
            &mut registry,
            "fleet_checkin_errors",
            "Check-ins refused (bad token, bad body)",
        );
        let webhooks_rejected = counter(
            &mut registry,
            "fleet_webhooks_rejected",
            "Webhooks refused for a bad signature",
        );
        let accept_failures = counter(
            &mut registry,
            "fleet_accept_failures",
            "Connections not accepted for want of file descriptors or memory",
        );
        let connections_refused = counter(
            &mut registry,
            "fleet_connections_refused",
            "Connections closed at once: over limits.max_connections_per_ip",
        );
        let engine_passes = counter(
            &mut registry,
            "fleet_engine_passes",
            "Passes of the rollout engine (leader)",
        );
        let engine_slow_passes = counter(
            &mut registry,
            "fleet_engine_slow_passes",
            "Passes longer than reconcile_interval",
        );
        let engine_deferred_passes = counter(
            &mut registry,
            "fleet_engine_deferred_passes",
            "Passes that left desired releases for the next pass, having spent their budget (half of reconcile_interval) writing them",
        );
        let float = |r: &mut Registry, name: &str, help: &str| {
            let g = FloatGauge::default();
            r.register(name, help, g.clone());
            g
        };
        let int = |r: &mut Registry, name: &str, help: &str| {
            let g = Gauge::<i64>::default();
            r.register(name, help, g.clone());
            g
        };
        let engine_pass_last = float(
            &mut registry,
            "fleet_engine_pass_seconds",
            "The last pass's duration",
        );
        let engine_pass_max = float(
            &mut registry,
            "fleet_engine_pass_max_seconds",
            "The longest pass since the start",
        );
        let devices = Family::<StateLabel, Gauge>::default();
        registry.register("fleet_devices", "Devices by state", devices.clone());
        let rollouts = Family::<StateLabel, Gauge>::default();
        registry.register("fleet_rollouts", "Rollouts by state", rollouts.clone());
        let emergency_stop = int(
            &mut registry,
            "fleet_emergency_stop",
            "1 while the emergency stop holds",
        );
        let leader = int(
            &mut registry,
            "fleet_controller_leader",
            "1 on the replica that drives rollouts",
        );
        let watcher_failures = Family::<EndpointLabel, Counter>::default();
        registry.register(
            "fleet_watcher_git_fetch_failures",
            "Fetches of the fleet repository that failed, by Git endpoint (leader's watcher)",
            watcher_failures.clone(),
        );
        let watcher_consecutive = Family::<EndpointLabel, Gauge>::default();
        registry.register(
            "fleet_watcher_git_consecutive_failures",
            "Fetches in a row that failed, by Git endpoint (0 after one that served)",
            watcher_consecutive.clone(),
        );
        let watcher_last_success = float(
            &mut registry,
            "fleet_watcher_last_success_timestamp_seconds",
            "When the watcher last read the release branch (Unix time)",
        );
        let release_rejected = int(
            &mut registry,
            "fleet_release_rejected",
            "1 while the newest commit on the release branch does not validate (it is not rolled out)",
        );
        let unhealthy_ratio = float(
            &mut registry,
            "fleet_unhealthy_ratio",
            "Share of the fleet the fleet-wide gate counts as failing (0-1)",
        );
        let unhealthy_stop_ratio = float(
            &mut registry,
            "fleet_unhealthy_stop_ratio",
            "The fleet-wide gate's limit, rollout.fleet_unhealthy_stop (0-1)",
        );
        let alerts_firing = Family::<AlertLabels, Gauge>::default();
        registry.register(
            "fleet_alerts_firing",
            "1 for each alert firing (leader)",
            alerts_firing.clone(),
        );
        let alert_devices = Family::<AlertNameLabel, Gauge>::default();
        registry.register(
            "fleet_alert_devices",
            "Devices concerned by each firing alert (leader)",
            alert_devices.clone(),
        );
        let alert_evaluations = counter(
            &mut registry,
            "fleet_alert_evaluations",
            "Passes of the alert engine (leader)",
        );
        let alert_last_evaluation = float(
            &mut registry,
            "fleet_alert_engine_last_evaluation_timestamp_seconds",
            "When the alert engine last evaluated (Unix time; the leader's, as stored, on every replica)",
        );
        let notifications = Family::<NotificationLabels, Counter>::default();
        registry.register(
            "fleet_alert_notifications",
            "Alert messages by notifier, kind and result (sent, failed: an attempt failed, dropped: given up)",
            notifications.clone(),
        );
        let notifier_consecutive = Family::<NotifierLabel, Gauge>::default();
        registry.register(
            "fleet_notifier_consecutive_failures",
            "Delivery attempts in a row that failed, by notifier (0 after one that worked)",
            notifier_consecutive.clone(),
        );
        let notifier_queue = int(
            &mut registry,
            "fleet_notifier_queue",
            "Alert messages waiting to be delivered",
        );
        let heartbeat_last_success = float(
            &mut registry,
            "fleet_heartbeat_last_success_timestamp_seconds",
            "When the dead man's switch last accepted a heartbeat (Unix time)",
        );
        let heartbeat_failures = counter(
            &mut registry,
            "fleet_heartbeat_failures",
            "Heartbeats to alerting.heartbeat.url that failed",
        );
        let watchdog = int(
            &mut registry,
            "fleet_watchdog",
            "Always 1: an always-firing series for a dead man's switch on what scrapes this controller",
        );
        watchdog.set(1);
        let loki_sent = counter(
            &mut registry,
            "fleet_controller_loki_sent",
            "Log lines pushed to Loki (logging.loki; 0 without it)",
        );
        let loki_dropped = counter(
            &mut registry,
            "fleet_controller_loki_dropped",
            "Log lines dropped instead of pushed to Loki: its queue full, or Loki refusing or not answering",
        );
        Metrics {
            registry,
            checkin,
            checkin_errors,
            webhooks_rejected,
            accept_failures,
            connections_refused,
            engine_passes,
            engine_slow_passes,
            engine_deferred_passes,
            engine_pass_last,
            engine_pass_max,
            engine_pass_max_us: AtomicU64::new(0),
            devices,
            rollouts,
            emergency_stop,
            leader,
            watcher_failures,
            watcher_consecutive,
            watcher_last_success,
            release_rejected,
            unhealthy_ratio,
            unhealthy_stop_ratio,
            alerts_firing,
            alert_devices,
            alert_evaluations,
            alert_last_evaluation,
            notifications,
            notifier_consecutive,
            notifier_queue,
            heartbeat_last_success,
            heartbeat_failures,
            watchdog,
            loki: std::sync::OnceLock::new(),
            loki_sent,
            loki_dropped,
        }
    }
}

/// Seconds since the epoch of `ms`, for timestamp gauges.
fn unix_secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

impl Metrics {
    /// Records one check-in's latency.
    pub fn observe_checkin(&self, secs: f64) {
        self.checkin.observe(secs);
    }

    /// Counts a refused check-in.
    pub fn checkin_error(&self) {
        self.checkin_errors.inc();
    }

    /// Counts a webhook refused for its signature.
    pub fn webhook_rejected(&self) {
        self.webhooks_rejected.inc();
    }

    /// Counts an `accept` that failed for want of descriptors or memory.
    pub fn accept_failed(&self) {
        self.accept_failures.inc();
    }

    /// Counts a connection closed for being over the per-address cap.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// Records one pass of the rollout engine; `slow`: longer than its interval.
    pub fn observe_pass(&self, secs: f64, slow: bool) {
        let us = (secs * 1e6) as u64;
        self.engine_passes.inc();
        if slow {
            self.engine_slow_passes.inc();
        }
        self.engine_pass_last.set(secs);
        let max = self
            .engine_pass_max_us
            .fetch_max(us, Ordering::Relaxed)
            .max(us);
        self.engine_pass_max.set(max as f64 / 1e6);
    }

    /// Counts a pass that left desired releases for the next one (its budget was spent).
    pub fn pass_deferred(&self) {
        self.engine_deferred_passes.inc();
    }

    /// One fetch of the fleet repository by the watcher: per endpoint tried, whether it
    /// served (`true`) or failed, and the streak of failures in a row it is at now.
    pub fn watcher_fetch(&self, endpoint: &str, failed: bool, streak: u32, now_ms: i64) {
        let label = EndpointLabel {
            endpoint: endpoint.to_owned(),
        };
        if failed {
            self.watcher_failures.get_or_create(&label).inc();
        } else {
            self.watcher_last_success.set(unix_secs(now_ms));
        }
        self.watcher_consecutive
            .get_or_create(&label)
            .set(i64::from(streak));
    }

    /// Whether the newest commit on the release branch was rejected.
    pub fn set_release_rejected(&self, rejected: bool) {
        self.release_rejected.set(i64::from(rejected));
    }

    /// The fleet-wide gate's reading: the failing share and its limit, both 0–1.
    pub fn set_unhealthy(&self, ratio: f64, limit: f64) {
        self.unhealthy_ratio.set(ratio);
        self.unhealthy_stop_ratio.set(limit);
    }

    /// The alerts firing now (name, severity, devices concerned), replacing the last set.
    pub fn set_alerts(&self, firing: &[(&str, &str, u64)]) {
        self.alerts_firing.clear();
        self.alert_devices.clear();
        for (name, severity, devices) in firing {
            self.alerts_firing
                .get_or_create(&AlertLabels {
                    alertname: (*name).to_owned(),
                    severity: (*severity).to_owned(),
                })
                .set(1);
            self.alert_devices
                .get_or_create(&AlertNameLabel {
                    alertname: (*name).to_owned(),
                })
                .set(i64::try_from(*devices).unwrap_or(i64::MAX));
        }
    }

    /// One pass of the alert engine, ended at `now_ms`.
    pub fn alert_evaluated(&self, now_ms: i64) {
        self.alert_evaluations.inc();
        self.alert_last_evaluation.set(unix_secs(now_ms));
    }

    /// The leader's last evaluation as stored, as seen by a follower.
    pub fn set_alert_last_evaluation(&self, at_ms: i64) {
        self.alert_last_evaluation.set(unix_secs(at_ms));
    }

    /// One delivery attempt of a message of `kind` through `notifier`; `result`: `sent`,
    /// `failed` or `dropped`; `streak`: the notifier's failures in a row after it.
    pub fn notification(&self, notifier: &str, kind: &str, result: &str, streak: u32) {
        self.notifications
            .get_or_create(&NotificationLabels {
                notifier: notifier.to_owned(),
                kind: kind.to_owned(),
                result: result.to_owned(),
            })
            .inc();
        self.notifier_consecutive
            .get_or_create(&NotifierLabel {
                notifier: notifier.to_owned(),
            })
            .set(i64::from(streak));
    }

    /// Makes a notifier's series exist at zero (before its first message).
    pub fn notifier_known(&self, notifier: &str) {
        let _ = self.notifier_consecutive.get_or_create(&NotifierLabel {
            notifier: notifier.to_owned(),
        });
    }

    /// Messages waiting for delivery.
    pub fn set_notifier_queue(&self, n: u64) {
        self.notifier_queue
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A heartbeat to the dead man's switch: accepted at `now_ms`, or failed.
    pub fn heartbeat(&self, ok: bool, now_ms: i64) {
        if ok {
            self.heartbeat_last_success.set(unix_secs(now_ms));
        } else {
            self.heartbeat_failures.inc();
        }
    }

    /// The Loki shipper's counts, shown from now on (`serve` with `logging.loki`).
    pub fn set_loki(&self, stats: std::sync::Arc<fleet_logging::ShipStats>) {
        let _ = self.loki.set(stats);
    }

    /// The exposition text, with the scrape-time gauges given.
    pub fn render(
        &self,
        devices_by_state: &[(&str, u64)],
        rollouts_by_state: &[(String, u64)],
        emergency_stop: bool,
        leader: bool,
    ) -> String {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for (s, count) in devices_by_state {
            self.devices
                .get_or_create(&StateLabel {
                    state: (*s).to_owned(),
                })
                .set(n(*count));
        }
        // Rollout states come and go (a quarantined one may be deleted): only the ones read.
        self.rollouts.clear();
        for (s, count) in rollouts_by_state {
            self.rollouts
                .get_or_create(&StateLabel { state: s.clone() })
                .set(n(*count));
        }
        self.emergency_stop.set(i64::from(emergency_stop));
        self.leader.set(i64::from(leader));
        self.watchdog.set(1);
        if let Some(l) = self.loki.get() {
            // Counters follow the shipper's own totals.
            let catch_up = |c: &Counter, total: u64| {
                let seen = c.get();
                if total > seen {
                    c.inc_by(total - seen);
                }
            };
            catch_up(&self.loki_sent, l.sent_total());
            catch_up(&self.loki_dropped, l.dropped_total());
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_every_family_with_help_and_type() {
        let m = Metrics::default();
        m.observe_checkin(0.003);
        m.observe_checkin(0.2);
        m.checkin_error();
        m.observe_pass(0.5, false);
        m.observe_pass(0.2, false);
        m.watcher_fetch("git://a/fleet.git", true, 2, 1_000);
        m.set_alerts(&[("DeviceOffline", "warning", 40)]);
        m.notification("pager", "firing", "sent", 0);
        let text = m.render(
            &[("online", 3), ("offline", 1)],
            &[("running".into(), 1)],
            true,
            false,
        );
        for line in [
            "# TYPE fleet_checkin_duration_seconds histogram",
            "fleet_checkin_duration_seconds_bucket{le=\"0.005\"} 1",
            "fleet_checkin_duration_seconds_bucket{le=\"+Inf\"} 2",
            "fleet_checkin_duration_seconds_count 2",
            "fleet_checkin_errors_total 1",
            "fleet_devices{state=\"online\"} 3",
            "fleet_devices{state=\"offline\"} 1",
            "fleet_rollouts{state=\"running\"} 1",
            "fleet_emergency_stop 1",
            "fleet_controller_leader 0",
            "fleet_engine_pass_seconds 0.2",
            "fleet_engine_pass_max_seconds 0.5",
            "fleet_watcher_git_fetch_failures_total{endpoint=\"git://a/fleet.git\"} 1",
            "fleet_watcher_git_consecutive_failures{endpoint=\"git://a/fleet.git\"} 2",
            "fleet_alerts_firing{alertname=\"DeviceOffline\",severity=\"warning\"} 1",
            "fleet_alert_devices{alertname=\"DeviceOffline\"} 40",
            "fleet_alert_notifications_total{notifier=\"pager\",kind=\"firing\",result=\"sent\"} 1",
            "fleet_watchdog 1",
            "# HELP fleet_unhealthy_ratio",
        ] {
            assert!(text.contains(line), "missing `{line}` in:\n{text}");
        }
        m.set_alerts(&[]);
        let text = m.render(&[], &[], false, true);
        assert!(!text.contains("fleet_alerts_firing{"), "{text}");
    }
}
