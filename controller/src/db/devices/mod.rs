//! Devices: the stored row and its derived state, split by job: [`identity`] (enrollment,
//! tokens, revocation), [`checkin`] (the report and its events), [`inventory`] (which devices
//! there are and their labels), [`desired`] (what each should run, operators' overrides) and
//! [`events`] (reading the devices' events).

mod checkin;
mod desired;
mod events;
pub(crate) mod identity;
mod inventory;
pub mod problems;

pub use checkin::{CheckinIdentity, LastReport};
pub use desired::{PIN_BY_OPERATOR, PIN_BY_REPOSITORY};
pub use identity::Existing;
pub use inventory::{PinChange, RepoPin};
pub use problems::ProblemRow;

use std::collections::BTreeMap;

use fleet_config::protocol::{HealthState, ReleaseId, Telemetry, UpdatePhase, UpdateResult};
use serde::Serialize;
use sqlx::Row;

use super::{q, DbError};

/// A device's state as on-call sees it, derived from its last check-in.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Checking in, idle, healthy.
    Online,
    /// Silent for longer than the offline threshold (or never checked in).
    Offline,
    /// In the middle of an update.
    Updating,
    /// Unhealthy, or its last update failed.
    Failed,
    /// Running the safe-mode stack.
    SafeMode,
    /// Its token was revoked.
    Revoked,
}

impl DeviceState {
    /// Every state, for metrics and the dashboard.
    pub const ALL: [DeviceState; 6] = [
        DeviceState::Online,
        DeviceState::Offline,
        DeviceState::Updating,
        DeviceState::Failed,
        DeviceState::SafeMode,
        DeviceState::Revoked,
    ];

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Online => "online",
            DeviceState::Offline => "offline",
            DeviceState::Updating => "updating",
            DeviceState::Failed => "failed",
            DeviceState::SafeMode => "safe_mode",
            DeviceState::Revoked => "revoked",
        }
    }
}

/// A device as stored.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct DeviceRow {
    /// Id (as in devices.yaml).
    pub id: String,
    /// Host name given at enrollment.
    pub hostname: String,
    /// CPU architecture.
    pub arch: String,
    /// Agent version at the last check-in.
    pub agent_version: String,
    /// When its token was revoked.
    pub revoked_ms: Option<i64>,
    /// When it enrolled.
    pub enrolled_ms: i64,
    /// Last check-in.
    pub last_seen_ms: Option<i64>,
    /// Release `current` points at.
    pub current: Option<ReleaseId>,
    /// Release `previous` points at.
    pub previous: Option<ReleaseId>,
    /// Update phase.
    pub phase: UpdatePhase,
    /// Health.
    pub health: HealthState,
    /// Outcome of its last update.
    pub last_result: Option<UpdateResult>,
    /// Releases it refuses to retry.
    pub bad_releases: Vec<ReleaseId>,
    /// Resource summary.
    pub telemetry: Telemetry,
    /// Labels from devices.yaml of the newest valid release.
    pub labels: BTreeMap<String, String>,
    /// Listed in devices.yaml of the newest valid release (else left out of rollouts).
    pub in_inventory: bool,
    /// Pinned by an operator to this release: left out of rollouts.
    pub pinned_release: Option<ReleaseId>,
    /// Why it is pinned (empty when not pinned).
    pub pin_reason: String,
    /// Who pinned it: `operator` or `devices.yaml` (empty when not pinned).
    pub pin_source: String,
    /// What the controller wants it to run.
    pub desired_release: Option<ReleaseId>,
    /// That release's tree digest.
    pub desired_digest: Option<String>,
    /// When it was last told a new release (None while told to hold).
    pub desired_since_ms: Option<i64>,
    /// Safe mode requested by an operator.
    pub safe_mode_requested: bool,
}

impl DeviceRow {
    /// Its state, given the time and the offline threshold.
    pub fn state(&self, now_ms: i64, offline_after_ms: i64) -> DeviceState {
        derive_state(
            self.revoked_ms.is_some(),
            self.last_seen_ms,
            self.phase,
            self.health,
            self.last_result.as_ref(),
            self.current.as_ref(),
            now_ms,
            offline_after_ms,
        )
    }

    /// Whether it checked in recently.
    pub fn online(&self, now_ms: i64, offline_after_ms: i64) -> bool {
        self.revoked_ms.is_none()
            && self
                .last_seen_ms
                .is_some_and(|t| now_ms.saturating_sub(t) <= offline_after_ms)
    }
}

/// The state rule, apart from the row so it can be tested as a table.
#[allow(clippy::too_many_arguments)]
pub fn derive_state(
    revoked: bool,
    last_seen_ms: Option<i64>,
    phase: UpdatePhase,
    health: HealthState,
    last_result: Option<&UpdateResult>,
    current: Option<&ReleaseId>,
    now_ms: i64,
    offline_after_ms: i64,
) -> DeviceState {
    if revoked {
        return DeviceState::Revoked;
    }
    match last_seen_ms {
        Some(t) if now_ms.saturating_sub(t) <= offline_after_ms => {}
        _ => return DeviceState::Offline,
    }
    if phase == UpdatePhase::SafeMode {
        return DeviceState::SafeMode;
    }
    if phase != UpdatePhase::Idle {
        return DeviceState::Updating;
    }
    let last_failed = match last_result {
        Some(UpdateResult::RolledBack { .. } | UpdateResult::Rejected { .. }) => true,
        Some(UpdateResult::Succeeded { release }) => Some(release) != current,
        _ => false,
    };
    if health == HealthState::Unhealthy || last_failed {
        DeviceState::Failed
    } else {
        DeviceState::Online
    }
}

const DEVICE_COLUMNS: &str = "id, hostname, arch, agent_version, revoked_ms, enrolled_ms, last_seen_ms, \
     current_release, previous_release, phase, health, last_result, bad_releases, telemetry, labels, \
     in_inventory, pinned_release, pin_reason, pin_source, desired_release, desired_digest, desired_since_ms, \
     safe_mode_requested";

fn json<T: serde::de::DeserializeOwned>(what: &'static str, s: &str) -> Result<T, DbError> {
    serde_json::from_str(s).map_err(|e| DbError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

fn release(what: &'static str, s: Option<String>) -> Result<Option<ReleaseId>, DbError> {
    s.map(|s| {
        s.parse()
            .map_err(|e: fleet_config::protocol::BadReleaseId| DbError::Corrupt {
                what,
                detail: e.0,
            })
    })
    .transpose()
}

fn device_from(r: &sqlx::any::AnyRow) -> Result<DeviceRow, DbError> {
    let phase: String = r.try_get("phase").map_err(q("reading a device"))?;
    let health: String = r.try_get("health").map_err(q("reading a device"))?;
    let last_result: Option<String> = r.try_get("last_result").map_err(q("reading a device"))?;
    let bad: String = r.try_get("bad_releases").map_err(q("reading a device"))?;
    let telemetry: String = r.try_get("telemetry").map_err(q("reading a device"))?;
    let labels: String = r.try_get("labels").map_err(q("reading a device"))?;
    let in_inventory: i64 = r.try_get("in_inventory").map_err(q("reading a device"))?;
    let safe: i64 = r
        .try_get("safe_mode_requested")
        .map_err(q("reading a device"))?;
    Ok(DeviceRow {
        id: r.try_get("id").map_err(q("reading a device"))?,
        hostname: r.try_get("hostname").map_err(q("reading a device"))?,
        arch: r.try_get("arch").map_err(q("reading a device"))?,
        agent_version: r.try_get("agent_version").map_err(q("reading a device"))?,
        revoked_ms: r.try_get("revoked_ms").map_err(q("reading a device"))?,
        enrolled_ms: r.try_get("enrolled_ms").map_err(q("reading a device"))?,
        last_seen_ms: r.try_get("last_seen_ms").map_err(q("reading a device"))?,
        current: release(
            "current release",
            r.try_get("current_release")
                .map_err(q("reading a device"))?,
        )?,
        previous: release(
            "previous release",
            r.try_get("previous_release")
                .map_err(q("reading a device"))?,
        )?,
        phase: json("device phase", &format!("\"{phase}\""))?,
        health: json("device health", &format!("\"{health}\""))?,
        last_result: last_result
            .as_deref()
            .map(|s| json("last result", s))
            .transpose()?,
        bad_releases: json("bad releases", &bad)?,
        telemetry: json("telemetry", &telemetry)?,
        labels: json("labels", &labels)?,
        in_inventory: in_inventory != 0,
        pinned_release: release(
            "pinned release",
            r.try_get("pinned_release").map_err(q("reading a device"))?,
        )?,
        pin_reason: r.try_get("pin_reason").map_err(q("reading a device"))?,
        pin_source: r.try_get("pin_source").map_err(q("reading a device"))?,
        desired_release: release(
            "desired release",
            r.try_get("desired_release")
                .map_err(q("reading a device"))?,
        )?,
        desired_digest: r.try_get("desired_digest").map_err(q("reading a device"))?,
        desired_since_ms: r
            .try_get("desired_since_ms")
            .map_err(q("reading a device"))?,
        safe_mode_requested: safe != 0,
    })
}

/// The wire name of a serde unit enum value (`UpdatePhase::Idle` → `idle`).
pub(crate) fn wire_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A JSON column's text.
fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef01234567";
    const B: &str = "1123456789abcdef0123456789abcdef01234567";

    #[test]
    fn state_table() {
        let a: ReleaseId = A.parse().expect("sha");
        let b: ReleaseId = B.parse().expect("sha");
        let rb = UpdateResult::RolledBack {
            release: b.clone(),
            reason: "health".into(),
        };
        let ok_b = UpdateResult::Succeeded { release: b.clone() };
        let now = 1_000_000;
        let off = 180_000;
        type Case<'a> = (
            &'a str,
            bool,
            Option<i64>,
            UpdatePhase,
            HealthState,
            Option<&'a UpdateResult>,
            DeviceState,
        );
        let cases: Vec<Case> = vec![
            (
                "revoked wins",
                true,
                Some(now),
                UpdatePhase::Idle,
                HealthState::Healthy,
                None,
                DeviceState::Revoked,
            ),
            (
                "never seen",
                false,
                None,
                UpdatePhase::Idle,
                HealthState::Healthy,
                None,
                DeviceState::Offline,
            ),
            (
                "silent too long",
                false,
                Some(now - off - 1),
                UpdatePhase::Idle,
                HealthState::Healthy,
                None,
                DeviceState::Offline,
            ),
            (
                "just in time",
                false,
                Some(now - off),
                UpdatePhase::Idle,
                HealthState::Healthy,
                None,
                DeviceState::Online,
            ),
            (
                "safe mode",
                false,
                Some(now),
                UpdatePhase::SafeMode,
                HealthState::Unhealthy,
                None,
                DeviceState::SafeMode,
            ),
            (
                "updating",
                false,
                Some(now),
                UpdatePhase::Verifying,
                HealthState::Unknown,
                None,
                DeviceState::Updating,
            ),
            (
                "unhealthy",
                false,
                Some(now),
                UpdatePhase::Idle,
                HealthState::Unhealthy,
                None,
                DeviceState::Failed,
            ),
            (
                "rolled back",
                false,
                Some(now),
                UpdatePhase::Idle,
                HealthState::Healthy,
                Some(&rb),
                DeviceState::Failed,
            ),
            (
                "succeeded on current",
                false,
                Some(now),
                UpdatePhase::Idle,
                HealthState::Healthy,
                Some(&ok_b),
                DeviceState::Online,
            ),
        ];
        for (name, revoked, seen, phase, health, last, want) in cases {
            let current = if name == "succeeded on current" {
                &b
            } else {
                &a
            };
            assert_eq!(
                derive_state(revoked, seen, phase, health, last, Some(current), now, off),
                want,
                "{name}"
            );
        }
    }
}
