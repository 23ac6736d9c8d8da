//! The alerts' shared vocabulary: every alert's name, its severity and its runbook, in one place
//! so the controller's alert engine, the shipped Prometheus rules, the runbooks and the clients
//! cannot drift apart (DESIGN.md, "Alerts"). Each name is also the runbook's file name:
//! `runbooks/<AlertName>.md`.

use serde::{Deserialize, Serialize};

/// How urgent an alert is; routes in controller.yaml pick notifiers by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// For the record; nobody is woken.
    Info,
    /// Needs a person today.
    Warning,
    /// Needs a person now: re-sent until acknowledged, escalated when nobody does.
    Critical,
}

impl Severity {
    /// Every severity, least urgent first.
    pub const ALL: &'static [Severity] = &[Severity::Info, Severity::Warning, Severity::Critical];

    /// The wire and label name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Severity::ALL
            .iter()
            .copied()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown severity `{s}` (info, warning or critical)"))
    }
}

/// Every alert Fleet raises. The first ten are the failure modes of the roadmap; the others
/// say that the alerting itself, or the fleet, needs a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum AlertName {
    /// A device's Git endpoint failed `alerts.git_fetch_failures` fetches in a row.
    DeviceGitFetchFailing,
    /// The controller's Git watcher failed `alerts.git_fetch_failures` polls in a row: no new
    /// release can be seen.
    ControllerGitFetchFailing,
    /// A service on a device keeps restarting.
    DeviceCrashLooping,
    /// A device's free disk is below `alerts.disk_free_below`.
    DeviceDiskLow,
    /// A device has not checked in for `alerts.offline_after`.
    DeviceOffline,
    /// A rollout halted on its failure gate: the release is bad (canary or a later wave).
    RolloutHalted,
    /// A commit on the release branch does not validate: it is never rolled out.
    ReleaseRejected,
    /// A device is hotter than `alerts.temperature_above`.
    DeviceOverheating,
    /// An update on a device passed its bound (`alerts.update_stuck_after` or a phase's deadline).
    DeviceUpdateStuck,
    /// A device's running release drifted from what was staged (files or containers).
    DeviceConfigDrift,
    /// The alerting itself is blind: the alert engine or the heartbeat to the dead man's switch
    /// stopped for `alerts.heartbeat_missed_after`.
    MonitoringDown,
    /// More than `rollout.fleet_unhealthy_stop` of the fleet is failing: the emergency stop is set.
    FleetWideFailure,
    /// A device runs its safe-mode stack instead of the release.
    DeviceInSafeMode,
    /// A notifier keeps failing to deliver: alerts routed to it are not reaching anyone.
    NotifierFailing,
    /// Always firing while the alerting pipeline works (a dead man's switch for what watches it).
    Watchdog,
}

impl AlertName {
    /// Every alert, in the order above.
    pub const ALL: &'static [AlertName] = &[
        AlertName::DeviceGitFetchFailing,
        AlertName::ControllerGitFetchFailing,
        AlertName::DeviceCrashLooping,
        AlertName::DeviceDiskLow,
        AlertName::DeviceOffline,
        AlertName::RolloutHalted,
        AlertName::ReleaseRejected,
        AlertName::DeviceOverheating,
        AlertName::DeviceUpdateStuck,
        AlertName::DeviceConfigDrift,
        AlertName::MonitoringDown,
        AlertName::FleetWideFailure,
        AlertName::DeviceInSafeMode,
        AlertName::NotifierFailing,
        AlertName::Watchdog,
    ];

    /// The name as written everywhere (`DeviceOffline`): alert label, runbook file stem.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertName::DeviceGitFetchFailing => "DeviceGitFetchFailing",
            AlertName::ControllerGitFetchFailing => "ControllerGitFetchFailing",
            AlertName::DeviceCrashLooping => "DeviceCrashLooping",
            AlertName::DeviceDiskLow => "DeviceDiskLow",
            AlertName::DeviceOffline => "DeviceOffline",
            AlertName::RolloutHalted => "RolloutHalted",
            AlertName::ReleaseRejected => "ReleaseRejected",
            AlertName::DeviceOverheating => "DeviceOverheating",
            AlertName::DeviceUpdateStuck => "DeviceUpdateStuck",
            AlertName::DeviceConfigDrift => "DeviceConfigDrift",
            AlertName::MonitoringDown => "MonitoringDown",
            AlertName::FleetWideFailure => "FleetWideFailure",
            AlertName::DeviceInSafeMode => "DeviceInSafeMode",
            AlertName::NotifierFailing => "NotifierFailing",
            AlertName::Watchdog => "Watchdog",
        }
    }

    /// Its severity.
    pub fn severity(self) -> Severity {
        match self {
            AlertName::DeviceCrashLooping
            | AlertName::RolloutHalted
            | AlertName::MonitoringDown
            | AlertName::FleetWideFailure
            | AlertName::DeviceInSafeMode => Severity::Critical,
            AlertName::DeviceGitFetchFailing
            | AlertName::ControllerGitFetchFailing
            | AlertName::DeviceDiskLow
            | AlertName::DeviceOffline
            | AlertName::ReleaseRejected
            | AlertName::DeviceOverheating
            | AlertName::DeviceUpdateStuck
            | AlertName::DeviceConfigDrift
            | AlertName::NotifierFailing => Severity::Warning,
            AlertName::Watchdog => Severity::Info,
        }
    }

    /// The runbook's path in the repository: `runbooks/<AlertName>.md`.
    pub fn runbook_path(self) -> String {
        format!("runbooks/{}.md", self.as_str())
    }

    /// Whether it is about devices (its members are device ids) rather than the fleet or the
    /// controller.
    pub fn about_devices(self) -> bool {
        matches!(
            self,
            AlertName::DeviceGitFetchFailing
                | AlertName::DeviceCrashLooping
                | AlertName::DeviceDiskLow
                | AlertName::DeviceOffline
                | AlertName::DeviceOverheating
                | AlertName::DeviceUpdateStuck
                | AlertName::DeviceConfigDrift
                | AlertName::DeviceInSafeMode
        )
    }
}

impl std::fmt::Display for AlertName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AlertName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AlertName::ALL
            .iter()
            .copied()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = AlertName::ALL.iter().map(|a| a.as_str()).collect();
                format!("unknown alert `{s}`; the alerts are {}", names.join(", "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_reads_back_and_has_a_runbook_path() {
        for a in AlertName::ALL {
            assert_eq!(a.as_str().parse::<AlertName>(), Ok(*a));
            assert_eq!(a.runbook_path(), format!("runbooks/{a}.md"));
            let json = serde_json::to_string(a).expect("json");
            assert_eq!(json, format!("\"{a}\""));
        }
        assert!("DeviceOfline".parse::<AlertName>().is_err());
        for s in Severity::ALL {
            assert_eq!(s.as_str().parse::<Severity>(), Ok(*s));
        }
    }
}
