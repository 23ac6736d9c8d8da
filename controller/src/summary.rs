//! The fleet at a glance, derived from the stored devices: counts by state, health, versions.
//! One computation for the status API, `/metrics`, the dashboard and its live updates.

use std::collections::BTreeMap;

use crate::db::{DeviceRow, DeviceState};

/// Devices by state, health and versions.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSummary {
    /// All devices, revoked included.
    pub total: u64,
    /// Count per state, in [`DeviceState::ALL`] order.
    pub by_state: [u64; DeviceState::ALL.len()],
    /// Online and healthy, as a share of the devices not revoked.
    pub healthy_percent: f64,
    /// Short release id (or `none`) → devices, most common first.
    pub versions: Vec<(String, u64)>,
}

impl FleetSummary {
    /// Devices in `s`.
    pub fn count(&self, s: DeviceState) -> u64 {
        DeviceState::ALL
            .iter()
            .position(|x| *x == s)
            .map_or(0, |i| self.by_state[i])
    }
}

/// Summarizes `devices` at `now_ms`.
pub fn summarize(devices: &[DeviceRow], now_ms: i64, offline_after_ms: i64) -> FleetSummary {
    let mut by_state = [0u64; DeviceState::ALL.len()];
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    for d in devices {
        let s = d.state(now_ms, offline_after_ms);
        if let Some(i) = DeviceState::ALL.iter().position(|x| *x == s) {
            by_state[i] += 1;
        }
        if s != DeviceState::Revoked {
            let v = d
                .current
                .as_ref()
                .map_or_else(|| "none".to_owned(), |r| r.short().to_owned());
            *versions.entry(v).or_default() += 1;
        }
    }
    let total = devices.len() as u64;
    let mut summary = FleetSummary {
        total,
        by_state,
        healthy_percent: 100.0,
        versions: Vec::new(),
    };
    let counted = total - summary.count(DeviceState::Revoked);
    if counted > 0 {
        summary.healthy_percent =
            summary.count(DeviceState::Online) as f64 * 100.0 / counted as f64;
    }
    let mut versions: Vec<(String, u64)> = versions.into_iter().collect();
    versions.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    summary.versions = versions;
    summary
}
