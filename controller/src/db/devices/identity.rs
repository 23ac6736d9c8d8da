//! Who a device is: enrollment (a fresh token), the token lookup every check-in starts with,
//! and revocation.

use std::collections::BTreeMap;

use sqlx::Row;

use super::inventory::INVENTORY_KEY;
use super::{CheckinIdentity, LastReport};
use crate::db::{q, Db, DbError};
use crate::tokens;

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
        .bind(crate::db::now_ms())
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
        .bind(crate::db::settings::STOP_KEY)
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
                .map(crate::db::settings::parse_stop)
                .transpose()?,
            telemetry_sampled_ms: r
                .try_get("telemetry_sampled_ms")
                .map_err(q("reading a device"))?,
        }))
    }

    /// Revokes a device's token; false if there is no such device.
    pub async fn revoke_device(&self, id: &str) -> Result<bool, DbError> {
        let r = sqlx::query("UPDATE devices SET revoked_ms = $1, token_hash = NULL WHERE id = $2")
            .bind(crate::db::now_ms())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q("revoking a device"))?;
        Ok(r.rows_affected() > 0)
    }
}
