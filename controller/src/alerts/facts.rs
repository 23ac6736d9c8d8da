//! What holds now, as the alert engine's facts: each failure mode's condition read from what
//! the controller knows (device rows and their standing problems, rollouts, the newest
//! release, the watcher, the fleet-wide gate, the notifiers, the heartbeat), with the
//! thresholds of fleet.yaml `alerts:`. Pure: the runner gathers an [`Observation`], this says
//! which members of which alerts hold.

use std::collections::{BTreeMap, BTreeSet};

use fleet_config::alerts::AlertName;
use fleet_config::fleet::AlertThresholds;
use fleet_config::protocol::UpdatePhase;
use serde::{Deserialize, Serialize};

use super::engine::Fact;
use crate::db::problems::{DRIFT_DETECTED, SAFE_MODE};
use crate::db::{DeviceRow, ProblemRow};

/// How long a repaired config drift keeps its alert firing after it was seen.
pub const DRIFT_ALERT_FOR_MS: i64 = 60 * 60_000;

/// The fleet's alert settings, from fleet.yaml of the newest valid release (stored when the
/// watcher records it; the defaults before the first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetSettings {
    /// The fleet's name.
    pub fleet: String,
    /// `alerts.git_fetch_failures`.
    pub git_fetch_failures: u32,
    /// `alerts.crash_loop.restarts`.
    pub crash_loop_restarts: u32,
    /// `alerts.crash_loop.within`, ms.
    pub crash_loop_within_ms: i64,
    /// `alerts.disk_free_below`, bytes.
    pub disk_free_below: u64,
    /// `alerts.offline_after`, ms.
    pub offline_after_ms: i64,
    /// `alerts.temperature_above`, °C.
    pub temperature_above: f64,
    /// `alerts.update_stuck_after`, ms.
    pub update_stuck_after_ms: i64,
    /// `alerts.heartbeat_missed_after`, ms.
    pub heartbeat_missed_after_ms: i64,
    /// `rollout.fleet_unhealthy_stop`, basis points.
    pub fleet_unhealthy_stop_bp: u32,
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl FleetSettings {
    /// The settings of a fleet repository.
    pub fn of(repo: &fleet_config::FleetRepo) -> FleetSettings {
        let mut s = FleetSettings::from_thresholds(&repo.fleet.name, &repo.fleet.alerts);
        s.fleet_unhealthy_stop_bp = repo.fleet.rollout.fleet_unhealthy_stop.basis_points();
        s
    }

    /// The settings of `name` with `alerts:` thresholds `t` and the default rollout policy.
    pub fn from_thresholds(name: &str, t: &AlertThresholds) -> FleetSettings {
        FleetSettings {
            fleet: name.to_owned(),
            git_fetch_failures: t.git_fetch_failures,
            crash_loop_restarts: t.crash_loop_restarts,
            crash_loop_within_ms: ms(t.crash_loop_window),
            disk_free_below: t.disk_free_below,
            offline_after_ms: ms(t.offline_after),
            temperature_above: t.temperature_above,
            update_stuck_after_ms: ms(t.update_stuck_after),
            heartbeat_missed_after_ms: ms(t.heartbeat_missed_after),
            fleet_unhealthy_stop_bp: fleet_config::fleet::RolloutPolicy::default()
                .fleet_unhealthy_stop
                .basis_points(),
        }
    }
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings::from_thresholds("fleet", &AlertThresholds::default())
    }
}

/// A notifier that keeps failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailingNotifier {
    /// Its name.
    pub name: String,
    /// Attempts in a row that failed.
    pub streak: u32,
    /// The last error.
    pub error: String,
}

/// The heartbeat to the dead man's switch, failing since `since_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatFailing {
    /// Since when no heartbeat was accepted (the first failure after the last success).
    pub since_ms: i64,
    /// The last error.
    pub error: String,
}

/// Everything the facts are read from, gathered by the runner.
#[derive(Debug)]
pub struct Observation<'a> {
    /// Now, ms since the epoch.
    pub now_ms: i64,
    /// fleet.yaml's thresholds.
    pub settings: &'a FleetSettings,
    /// Every device row.
    pub devices: Vec<&'a DeviceRow>,
    /// What holds on the devices.
    pub problems: &'a [ProblemRow],
    /// Halted rollouts: (id, release, why).
    pub halted: &'a [(String, String, String)],
    /// The newest commit of the release branch, when it was rejected: (sha, errors).
    pub rejected: Option<(&'a str, &'a str)>,
    /// The watcher's endpoints at or past `git_fetch_failures` failures in a row:
    /// (endpoint, streak, last error).
    pub git_failing: &'a [(String, u32, String)],
    /// The fleet-wide gate's verdict, when the fleet is above its limit.
    pub fleet_failing: Option<&'a str>,
    /// Notifiers that keep failing.
    pub notifiers_failing: &'a [FailingNotifier],
    /// The heartbeat, when failing.
    pub heartbeat: Option<&'a HeartbeatFailing>,
}

/// Phases the controller itself watches for a stuck update: not the downloads (a slow link
/// is not stuck; the agent bounds them by silence and reports `update_stuck`).
fn watched_phase(p: UpdatePhase) -> bool {
    matches!(
        p,
        UpdatePhase::Staging
            | UpdatePhase::Switching
            | UpdatePhase::Verifying
            | UpdatePhase::RollingBack
    )
}

/// How a device problem maps to an alert.
fn problem_alert(problem: &str) -> Option<AlertName> {
    Some(match problem {
        "crash_loop" => AlertName::DeviceCrashLooping,
        "disk_low" => AlertName::DeviceDiskLow,
        "overheating" => AlertName::DeviceOverheating,
        "update_stuck" => AlertName::DeviceUpdateStuck,
        "git_fetch_failing" => AlertName::DeviceGitFetchFailing,
        "drift_unrepaired" | DRIFT_DETECTED => AlertName::DeviceConfigDrift,
        _ => return None,
    })
}

fn ago(ms: i64) -> String {
    fleet_config::units::format_duration(std::time::Duration::from_millis(
        u64::try_from(ms.max(0) / 1000 * 1000).unwrap_or(0),
    ))
}

/// The facts of an observation.
pub fn facts(o: &Observation<'_>) -> Vec<Fact> {
    let s = o.settings;
    let now = o.now_ms;
    let mut out = Vec::new();
    // Devices in the fleet (listed in devices.yaml, not revoked, heard from at least once).
    // One that is offline alerts as offline only: what it last said of itself is stale.
    let mut reporting: BTreeSet<&str> = BTreeSet::new();
    for d in &o.devices {
        let Some(seen) = d.last_seen_ms else { continue };
        if !d.in_inventory || d.revoked_ms.is_some() {
            continue;
        }
        let silent = now - seen;
        if silent > s.offline_after_ms {
            let site = d
                .labels
                .get("site")
                .map(|v| format!(", site {v}"))
                .unwrap_or_default();
            out.push(Fact {
                alert: AlertName::DeviceOffline,
                member: d.id.clone(),
                // Stable while it stays silent (a detail that changes is stored again).
                detail: format!("last check-in {}{site}", crate::timefmt::utc(seen)),
                hold_ms: 0,
            });
            continue;
        }
        reporting.insert(d.id.as_str());
        if d.phase == UpdatePhase::SafeMode {
            let why = o
                .problems
                .iter()
                .find(|p| p.device_id == d.id && p.problem == SAFE_MODE)
                .map_or_else(
                    || "in safe mode".to_owned(),
                    |p| format!("in safe mode: {}", p.detail),
                );
            out.push(Fact {
                alert: AlertName::DeviceInSafeMode,
                member: d.id.clone(),
                detail: why,
                hold_ms: 0,
            });
        }
        if watched_phase(d.phase) {
            out.push(Fact {
                alert: AlertName::DeviceUpdateStuck,
                member: d.id.clone(),
                detail: format!(
                    "in phase {} for more than {}",
                    crate::db::wire_name(&d.phase),
                    ago(s.update_stuck_after_ms)
                ),
                hold_ms: s.update_stuck_after_ms,
            });
        }
    }
    // Standing problems of reporting devices, one member per device (its problems joined).
    let mut by_device: BTreeMap<(AlertName, &str), Vec<String>> = BTreeMap::new();
    for p in o.problems {
        if !reporting.contains(p.device_id.as_str()) {
            continue;
        }
        let Some(alert) = problem_alert(&p.problem) else {
            continue;
        };
        if p.problem == DRIFT_DETECTED && now - p.raised_ms >= DRIFT_ALERT_FOR_MS {
            continue;
        }
        let what = if p.subject.is_empty() {
            p.detail.clone()
        } else {
            format!("{}: {}", p.subject, p.detail)
        };
        by_device
            .entry((alert, p.device_id.as_str()))
            .or_default()
            .push(what);
    }
    for ((alert, device), what) in by_device {
        out.push(Fact {
            alert,
            member: device.to_owned(),
            detail: what.join("; "),
            hold_ms: 0,
        });
    }
    for (id, release, why) in o.halted {
        out.push(Fact {
            alert: AlertName::RolloutHalted,
            member: id.clone(),
            detail: format!("rollout of {} halted: {why}", short(release)),
            hold_ms: 0,
        });
    }
    if let Some((sha, errors)) = o.rejected {
        let first = errors.lines().next().unwrap_or("");
        let more = errors.lines().count().saturating_sub(1);
        let more = if more > 0 {
            format!(" (and {more} more)")
        } else {
            String::new()
        };
        out.push(Fact {
            alert: AlertName::ReleaseRejected,
            member: sha.to_owned(),
            detail: format!("commit {} does not validate: {first}{more}", short(sha)),
            hold_ms: 0,
        });
    }
    for (endpoint, streak, error) in o.git_failing {
        if *streak >= s.git_fetch_failures.max(1) {
            out.push(Fact {
                alert: AlertName::ControllerGitFetchFailing,
                member: endpoint.clone(),
                detail: format!("{streak} fetches in a row failed: {error}"),
                hold_ms: 0,
            });
        }
    }
    if let Some(why) = o.fleet_failing {
        out.push(Fact {
            alert: AlertName::FleetWideFailure,
            member: "fleet".into(),
            detail: why.to_owned(),
            hold_ms: 0,
        });
    }
    for n in o.notifiers_failing {
        out.push(Fact {
            alert: AlertName::NotifierFailing,
            member: n.name.clone(),
            detail: format!("{} deliveries in a row failed: {}", n.streak, n.error),
            hold_ms: 0,
        });
    }
    if let Some(h) = o.heartbeat {
        out.push(Fact {
            alert: AlertName::MonitoringDown,
            member: "heartbeat".into(),
            detail: format!(
                "the dead man's switch has not accepted a heartbeat since {}: {}",
                crate::timefmt::utc(h.since_ms),
                h.error
            ),
            // It fires once no heartbeat went through for `heartbeat_missed_after` (counted
            // from the pass that first saw it fail, within `evaluate_every` of the failure).
            hold_ms: s.heartbeat_missed_after_ms,
        });
    }
    out
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_config::protocol::{HealthState, Telemetry};

    const NOW: i64 = 10_000_000;

    fn device(id: &str, seen_ago_ms: i64, phase: UpdatePhase) -> DeviceRow {
        DeviceRow {
            id: id.into(),
            hostname: String::new(),
            arch: String::new(),
            agent_version: String::new(),
            revoked_ms: None,
            enrolled_ms: 0,
            last_seen_ms: Some(NOW - seen_ago_ms),
            current: None,
            previous: None,
            phase,
            health: HealthState::Healthy,
            last_result: None,
            bad_releases: Vec::new(),
            telemetry: Telemetry::default(),
            labels: [("site".to_owned(), "berlin".to_owned())].into(),
            in_inventory: true,
            pinned_release: None,
            pin_reason: String::new(),
            pin_source: String::new(),
            desired_release: None,
            desired_digest: None,
            desired_since_ms: None,
            safe_mode_requested: false,
        }
    }

    fn problem(device: &str, problem: &str, raised_ago_ms: i64) -> ProblemRow {
        ProblemRow {
            device_id: device.into(),
            problem: problem.into(),
            subject: String::new(),
            detail: format!("{problem} detail"),
            raised_ms: NOW - raised_ago_ms,
        }
    }

    fn facts_of(devices: &[DeviceRow], problems: &[ProblemRow]) -> Vec<(AlertName, String, i64)> {
        let settings = FleetSettings::default();
        facts(&Observation {
            now_ms: NOW,
            settings: &settings,
            devices: devices.iter().collect(),
            problems,
            halted: &[],
            rejected: None,
            git_failing: &[],
            fleet_failing: None,
            notifiers_failing: &[],
            heartbeat: None,
        })
        .into_iter()
        .map(|f| (f.alert, f.member, f.hold_ms))
        .collect()
    }

    #[test]
    fn an_offline_device_alerts_as_offline_only_and_its_stale_problems_do_not() {
        let devices = [
            device("quiet", 3 * 60_000, UpdatePhase::Idle),
            device("hot", 10_000, UpdatePhase::Idle),
        ];
        let problems = [
            problem("quiet", "crash_loop", 0),
            problem("hot", "overheating", 0),
        ];
        let f = facts_of(&devices, &problems);
        assert_eq!(
            f,
            vec![
                (AlertName::DeviceOffline, "quiet".into(), 0),
                (AlertName::DeviceOverheating, "hot".into(), 0),
            ]
        );
    }

    #[test]
    fn the_offline_detail_does_not_change_while_the_device_stays_silent() {
        let settings = FleetSettings::default();
        let d = device("quiet", 3 * 60_000, UpdatePhase::Idle);
        let detail = |now: i64| {
            facts(&Observation {
                now_ms: now,
                settings: &settings,
                devices: vec![&d],
                problems: &[],
                halted: &[],
                rejected: None,
                git_failing: &[],
                fleet_failing: None,
                notifiers_failing: &[],
                heartbeat: None,
            })[0]
                .detail
                .clone()
        };
        assert_eq!(detail(NOW), detail(NOW + 60_000));
        assert!(detail(NOW).contains("site berlin"), "{}", detail(NOW));
    }

    #[test]
    fn a_repaired_drift_alerts_for_an_hour_and_a_watched_phase_must_hold() {
        let devices = [
            device("drifted", 1_000, UpdatePhase::Idle),
            device("old-drift", 1_000, UpdatePhase::Idle),
            device("verifying", 1_000, UpdatePhase::Verifying),
            device("pulling", 1_000, UpdatePhase::Pulling),
        ];
        let problems = [
            problem("drifted", DRIFT_DETECTED, 59 * 60_000),
            problem("old-drift", DRIFT_DETECTED, 61 * 60_000),
        ];
        let f = facts_of(&devices, &problems);
        let stuck_after = FleetSettings::default().update_stuck_after_ms;
        assert_eq!(
            f,
            vec![
                (
                    AlertName::DeviceUpdateStuck,
                    "verifying".into(),
                    stuck_after
                ),
                (AlertName::DeviceConfigDrift, "drifted".into(), 0),
            ],
            "a download (pulling) is bounded by the agent, not stuck by the clock"
        );
    }

    #[test]
    fn devices_outside_the_inventory_or_revoked_or_never_seen_do_not_alert() {
        let mut gone = device("gone", 3 * 60_000, UpdatePhase::Idle);
        gone.in_inventory = false;
        let mut revoked = device("revoked", 3 * 60_000, UpdatePhase::Idle);
        revoked.revoked_ms = Some(0);
        let mut new = device("new", 0, UpdatePhase::Idle);
        new.last_seen_ms = None;
        assert!(facts_of(&[gone, revoked, new], &[]).is_empty());
    }
}
