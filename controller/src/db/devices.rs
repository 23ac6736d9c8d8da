//! Devices: identity and token, what each last reported, what each should run.

use std::collections::BTreeMap;

use fleet_config::protocol::{
    CheckinRequest, DeviceEvent, HealthState, ReleaseId, Telemetry, UpdatePhase, UpdateResult,
};
use serde::Serialize;
use sqlx::Row;

use super::{q, Db, DbError};
use crate::tokens;

/// A device's state as on-call sees it, derived from its last check-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// What the controller wants it to run.
    pub desired_release: Option<ReleaseId>,
    /// That release's tree digest.
    pub desired_digest: Option<String>,
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
     in_inventory, pinned_release, desired_release, desired_digest, safe_mode_requested";

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
        desired_release: release(
            "desired release",
            r.try_get("desired_release")
                .map_err(q("reading a device"))?,
        )?,
        desired_digest: r.try_get("desired_digest").map_err(q("reading a device"))?,
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

/// What a check-in needs from the device's row.
#[derive(Debug, Clone)]
pub struct CheckinIdentity {
    /// The device the token belongs to.
    pub id: String,
    /// Its token was revoked.
    pub revoked: bool,
    /// What it should run.
    pub desired_release: Option<String>,
    /// The digest of that release.
    pub desired_digest: Option<String>,
    /// Events stored up to here.
    pub acked_seq: i64,
    /// Safe mode requested.
    pub safe_mode_requested: bool,
    /// Its last check-in as stored (`None`: it never checked in).
    pub last_report: Option<LastReport>,
    /// The emergency stop, read in the same query (every check-in sees the store's).
    pub emergency_stop: Option<super::EmergencyStop>,
    /// When its telemetry was last kept as a sample (see [`super::telemetry`]).
    pub telemetry_sampled_ms: Option<i64>,
}

/// What a device's last check-in stored of what the rollout engine looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastReport {
    /// When.
    pub last_seen_ms: i64,
    /// `current_release`.
    pub current: Option<String>,
    /// Phase, wire name.
    pub phase: String,
    /// Health, wire name.
    pub health: String,
    /// Last result, JSON.
    pub last_result: Option<String>,
    /// Bad releases, JSON.
    pub bad_releases: String,
}

impl CheckinIdentity {
    /// Whether storing `req` at `now_ms` changes what the rollout engine sees of the device:
    /// its first check-in, back from offline, or a new release, phase, health, last result or
    /// list of bad releases. Routine check-ins change none of these, so they need not wake
    /// the engine (its periodic pass still runs).
    pub fn changes_rollout_view(
        &self,
        req: &CheckinRequest,
        now_ms: i64,
        offline_after_ms: i64,
    ) -> bool {
        let Some(last) = &self.last_report else {
            return true;
        };
        now_ms.saturating_sub(last.last_seen_ms) > offline_after_ms
            || last.current.as_deref() != req.current.as_ref().map(ReleaseId::as_str)
            || last.phase != wire_name(&req.phase)
            || last.health != wire_name(&req.health)
            || last.last_result != req.last_result.as_ref().map(to_json)
            || last.bad_releases != to_json(&req.bad_releases)
    }
}

/// Settings key of the newest valid release's devices.yaml (id → labels), as JSON.
const INVENTORY_KEY: &str = "inventory";

impl Db {
    /// Creates a device with a fresh token; returns the token (shown once). An existing
    /// device of that id gets a new token (re-enrollment after a re-flash) and is un-revoked.
    pub async fn enroll_device(
        &self,
        id: &str,
        hostname: &str,
        arch: &str,
        agent_version: &str,
    ) -> Result<String, DbError> {
        let token = tokens::generate(tokens::TokenKind::Device);
        let _turn = self.write_turn().await;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(q("starting an enrollment"))?;
        sqlx::query(
            "INSERT INTO devices (id, hostname, arch, agent_version, token_hash, enrolled_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, arch = excluded.arch, \
             agent_version = excluded.agent_version, token_hash = excluded.token_hash, \
             revoked_ms = NULL, enrolled_ms = excluded.enrolled_ms, acked_seq = 0",
        )
        .bind(id)
        .bind(hostname)
        .bind(arch)
        .bind(agent_version)
        .bind(tokens::hash(&token))
        .bind(super::now_ms())
        .execute(&mut *tx)
        .await
        .map_err(q("enrolling a device"))?;
        // A device that joins after the newest release takes its labels from that release's
        // devices.yaml now, not at the next release (or it would never be offered anything).
        let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(INVENTORY_KEY)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("reading the inventory"))?;
        if let Some(r) = row {
            let text: String = r.try_get("value").map_err(q("reading the inventory"))?;
            let inventory: BTreeMap<String, BTreeMap<String, String>> = serde_json::from_str(&text)
                .map_err(|e| DbError::Corrupt {
                    what: "inventory",
                    detail: e.to_string(),
                })?;
            if let Some(labels) = inventory.get(id) {
                sqlx::query("UPDATE devices SET in_inventory = 1, labels = $1 WHERE id = $2")
                    .bind(serde_json::to_string(labels).unwrap_or_else(|_| "{}".into()))
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("enrolling a device"))?;
            }
        }
        tx.commit().await.map_err(q("committing an enrollment"))?;
        Ok(token)
    }

    /// Who a device token belongs to.
    pub async fn device_for_token(&self, token: &str) -> Result<Option<CheckinIdentity>, DbError> {
        let row = sqlx::query(
            "SELECT id, revoked_ms, desired_release, desired_digest, acked_seq, safe_mode_requested, \
             last_seen_ms, current_release, phase, health, last_result, bad_releases, \
             telemetry_sampled_ms, (SELECT value FROM settings WHERE key = $1) AS emergency_stop \
             FROM devices WHERE token_hash = $2",
        )
        .bind(super::settings::STOP_KEY)
        .bind(tokens::hash(token))
        .fetch_optional(&self.pool)
        .await
        .map_err(q("checking a device token"))?;
        let Some(r) = row else { return Ok(None) };
        let revoked: Option<i64> = r.try_get("revoked_ms").map_err(q("reading a device"))?;
        let safe: i64 = r
            .try_get("safe_mode_requested")
            .map_err(q("reading a device"))?;
        let stop: Option<String> = r
            .try_get("emergency_stop")
            .map_err(q("reading the emergency stop"))?;
        let last_seen: Option<i64> = r.try_get("last_seen_ms").map_err(q("reading a device"))?;
        let last_report = match last_seen {
            None => None,
            Some(last_seen_ms) => Some(LastReport {
                last_seen_ms,
                current: r
                    .try_get("current_release")
                    .map_err(q("reading a device"))?,
                phase: r.try_get("phase").map_err(q("reading a device"))?,
                health: r.try_get("health").map_err(q("reading a device"))?,
                last_result: r.try_get("last_result").map_err(q("reading a device"))?,
                bad_releases: r.try_get("bad_releases").map_err(q("reading a device"))?,
            }),
        };
        Ok(Some(CheckinIdentity {
            id: r.try_get("id").map_err(q("reading a device"))?,
            revoked: revoked.is_some(),
            desired_release: r
                .try_get("desired_release")
                .map_err(q("reading a device"))?,
            desired_digest: r.try_get("desired_digest").map_err(q("reading a device"))?,
            acked_seq: r.try_get("acked_seq").map_err(q("reading a device"))?,
            safe_mode_requested: safe != 0,
            last_report,
            emergency_stop: stop
                .as_deref()
                .map(super::settings::parse_stop)
                .transpose()?,
            telemetry_sampled_ms: r
                .try_get("telemetry_sampled_ms")
                .map_err(q("reading a device"))?,
        }))
    }

    /// Stores a check-in: the report, and its events (each `seq` once). Returns the highest
    /// event sequence number stored for the device.
    ///
    /// One statement for the events (if any), then one for the report, each its own
    /// transaction: on SQLite every statement is a round trip to the connection's thread made
    /// while holding the one write lock, so fewer statements is more check-ins per second. The
    /// order keeps it safe without a transaction: events are stored before `acked_seq` says so,
    /// and a device whose check-in failed half-way sends them again (stored once by `seq`).
    pub async fn record_checkin(
        &self,
        who: &CheckinIdentity,
        req: &CheckinRequest,
        now_ms: i64,
    ) -> Result<i64, DbError> {
        let _turn = self.write_turn().await;
        let mut acked = who.acked_seq;
        let mut events: Vec<(i64, &DeviceEvent)> = req
            .events
            .iter()
            .filter_map(|e| i64::try_from(e.seq).ok().map(|seq| (seq, e)))
            .collect();
        events.sort_by_key(|(seq, _)| *seq);
        events.dedup_by_key(|(seq, _)| *seq);
        // 6 parameters a row; 500 rows stay far below both engines' parameter limits.
        for chunk in events.chunks(500) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let p = i * 6;
                    format!(
                        "(${}, ${}, ${}, ${}, ${}, ${})",
                        p + 1,
                        p + 2,
                        p + 3,
                        p + 4,
                        p + 5,
                        p + 6
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO device_events (device_id, seq, at_ms, kind, body, stored_ms) \
                 VALUES {} ON CONFLICT (device_id, seq) DO NOTHING",
                rows.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for (seq, e) in chunk {
                let body = serde_json::to_value(e).unwrap_or(serde_json::Value::Null);
                let kind = body["event"].as_str().unwrap_or("unknown").to_owned();
                query = query
                    .bind(&who.id)
                    .bind(*seq)
                    .bind(i64::try_from(e.at_ms).unwrap_or(i64::MAX))
                    .bind(kind)
                    .bind(body.to_string())
                    .bind(now_ms);
                acked = acked.max(*seq);
            }
            query
                .execute(&self.pool)
                .await
                .map_err(q("storing device events"))?;
        }
        let sampled_ms = if super::telemetry::sample_due(who.telemetry_sampled_ms, now_ms) {
            self.insert_telemetry_sample(&who.id, now_ms, &req.telemetry)
                .await?;
            Some(now_ms)
        } else {
            who.telemetry_sampled_ms
        };
        sqlx::query(
            "UPDATE devices SET last_seen_ms = $1, agent_version = $2, current_release = $3, \
             previous_release = $4, phase = $5, health = $6, last_result = $7, bad_releases = $8, \
             telemetry = $9, acked_seq = $10, telemetry_sampled_ms = $11 WHERE id = $12",
        )
        .bind(now_ms)
        .bind(&req.agent_version)
        .bind(req.current.as_ref().map(|r| r.as_str().to_owned()))
        .bind(req.previous.as_ref().map(|r| r.as_str().to_owned()))
        .bind(wire_name(&req.phase))
        .bind(wire_name(&req.health))
        .bind(req.last_result.as_ref().map(to_json))
        .bind(to_json(&req.bad_releases))
        .bind(to_json(&req.telemetry))
        .bind(acked)
        .bind(sampled_ms)
        .bind(&who.id)
        .execute(&self.pool)
        .await
        .map_err(q("storing a check-in"))?;
        Ok(acked)
    }

    /// One device.
    pub async fn device(&self, id: &str) -> Result<Option<DeviceRow>, DbError> {
        let row = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(q("reading a device"))?;
        row.as_ref().map(device_from).transpose()
    }

    /// Every device, by id.
    pub async fn devices(&self) -> Result<Vec<DeviceRow>, DbError> {
        sqlx::query(&format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY id"))
            .fetch_all(&self.pool)
            .await
            .map_err(q("listing devices"))?
            .iter()
            .map(device_from)
            .collect()
    }

    /// Revokes a device's token; false if there is no such device.
    pub async fn revoke_device(&self, id: &str) -> Result<bool, DbError> {
        let r = sqlx::query("UPDATE devices SET revoked_ms = $1, token_hash = NULL WHERE id = $2")
            .bind(super::now_ms())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q("revoking a device"))?;
        Ok(r.rows_affected() > 0)
    }

    /// Pins a device to a release (or unpins with `None`); false if there is no such device.
    pub async fn pin_device(&self, id: &str, release: Option<&ReleaseId>) -> Result<bool, DbError> {
        let r = sqlx::query("UPDATE devices SET pinned_release = $1 WHERE id = $2")
            .bind(release.map(|r| r.as_str().to_owned()))
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q("pinning a device"))?;
        Ok(r.rows_affected() > 0)
    }

    /// Asks a device to enter (or leave) safe mode; false if there is no such device.
    pub async fn request_safe_mode(&self, id: &str, on: bool) -> Result<bool, DbError> {
        let r = sqlx::query("UPDATE devices SET safe_mode_requested = $1 WHERE id = $2")
            .bind(i64::from(on))
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q("requesting safe mode"))?;
        Ok(r.rows_affected() > 0)
    }

    /// Sets what devices should run: `(device, Some((release, digest)))`, or `None` to hold.
    pub async fn set_desired(
        &self,
        changes: &[(String, Option<(String, String)>)],
    ) -> Result<(), DbError> {
        if changes.is_empty() {
            return Ok(());
        }
        let _turn = self.write_turn().await;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(q("starting a desired update"))?;
        for (id, target) in changes {
            let (rel, dig) = match target {
                Some((r, d)) => (Some(r.clone()), Some(d.clone())),
                None => (None, None),
            };
            sqlx::query(
                "UPDATE devices SET desired_release = $1, desired_digest = $2 WHERE id = $3",
            )
            .bind(rel)
            .bind(dig)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(q("setting desired releases"))?;
        }
        tx.commit()
            .await
            .map_err(q("committing desired releases"))?;
        Ok(())
    }

    /// Copies labels from a release's devices.yaml; devices not in it are marked outside the
    /// inventory (and so left out of rollouts).
    pub async fn sync_inventory(
        &self,
        inventory: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<(), DbError> {
        let _turn = self.write_turn().await;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(q("starting an inventory sync"))?;
        sqlx::query("UPDATE devices SET in_inventory = 0")
            .execute(&mut *tx)
            .await
            .map_err(q("syncing the inventory"))?;
        // Kept for devices that enroll later (see `enroll_device`).
        let text = serde_json::to_string(inventory).map_err(|e| DbError::Corrupt {
            what: "inventory",
            detail: e.to_string(),
        })?;
        sqlx::query("DELETE FROM settings WHERE key = $1")
            .bind(INVENTORY_KEY)
            .execute(&mut *tx)
            .await
            .map_err(q("storing the inventory"))?;
        sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2)")
            .bind(INVENTORY_KEY)
            .bind(text)
            .execute(&mut *tx)
            .await
            .map_err(q("storing the inventory"))?;
        for (id, labels) in inventory {
            sqlx::query("UPDATE devices SET in_inventory = 1, labels = $1 WHERE id = $2")
                .bind(serde_json::to_string(labels).unwrap_or_else(|_| "{}".into()))
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(q("syncing the inventory"))?;
        }
        tx.commit()
            .await
            .map_err(q("committing an inventory sync"))?;
        Ok(())
    }

    /// The newest events of a device, newest first.
    pub async fn device_events(
        &self,
        id: &str,
        limit: i64,
    ) -> Result<Vec<serde_json::Value>, DbError> {
        let rows = sqlx::query(
            "SELECT body FROM device_events WHERE device_id = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading device events"))?;
        rows.iter()
            .map(|r| {
                let body: String = r.try_get("body").map_err(q("reading device events"))?;
                json("device event", &body)
            })
            .collect()
    }
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
    fn only_check_ins_that_change_the_rollout_view_wake_the_engine() {
        let a: ReleaseId = A.parse().expect("sha");
        let req = CheckinRequest {
            device_id: "d".into(),
            agent_version: "1".into(),
            current: Some(a.clone()),
            previous: None,
            phase: UpdatePhase::Idle,
            health: HealthState::Healthy,
            last_result: Some(UpdateResult::Succeeded { release: a.clone() }),
            bad_releases: Vec::new(),
            telemetry: Telemetry::default(),
            events: Vec::new(),
        };
        let stored = LastReport {
            last_seen_ms: 1_000,
            current: Some(A.into()),
            phase: "idle".into(),
            health: "healthy".into(),
            last_result: req.last_result.as_ref().map(to_json),
            bad_releases: "[]".into(),
        };
        let who = |last: Option<LastReport>| CheckinIdentity {
            id: "d".into(),
            revoked: false,
            desired_release: None,
            desired_digest: None,
            acked_seq: 0,
            safe_mode_requested: false,
            last_report: last,
            emergency_stop: None,
            telemetry_sampled_ms: None,
        };
        let off = 180_000;
        let same = who(Some(stored.clone()));
        assert!(
            !same.changes_rollout_view(&req, 61_000, off),
            "routine check-in"
        );
        assert!(
            who(None).changes_rollout_view(&req, 61_000, off),
            "first check-in"
        );
        assert!(
            same.changes_rollout_view(&req, 1_000 + off + 1, off),
            "back from offline"
        );
        let mut r = req.clone();
        r.phase = UpdatePhase::Fetching;
        assert!(same.changes_rollout_view(&r, 61_000, off), "phase");
        let mut r = req.clone();
        r.health = HealthState::Unhealthy;
        assert!(same.changes_rollout_view(&r, 61_000, off), "health");
        let mut r = req.clone();
        r.current = None;
        assert!(same.changes_rollout_view(&r, 61_000, off), "release");
        let mut r = req.clone();
        r.bad_releases = vec![a.clone()];
        assert!(same.changes_rollout_view(&r, 61_000, off), "bad releases");
        let mut r = req.clone();
        r.last_result = None;
        assert!(same.changes_rollout_view(&r, 61_000, off), "last result");
        let mut r = req.clone();
        r.telemetry.cpu_percent = Some(99.0);
        assert!(
            !same.changes_rollout_view(&r, 61_000, off),
            "telemetry only"
        );
    }

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
