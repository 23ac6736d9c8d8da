//! Who a device is: enrollment (a fresh token), the token lookup every check-in starts with,
//! and revocation.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use super::inventory::INVENTORY_KEY;
use super::{CheckinIdentity, LastReport};
use crate::db::{q, Db, DbError};
use crate::tokens;

/// A device already under an id, which an enrollment must not silently replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Existing {
    /// Enrolled, with a live token.
    Enrolled {
        /// When it last checked in.
        last_seen_ms: Option<i64>,
    },
    /// Revoked: it stays so until an operator approves a pairing code for it with `replace`.
    Revoked {
        /// When.
        revoked_ms: i64,
    },
}

impl Existing {
    /// What is stored under `id`, if anything.
    pub(crate) async fn of(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: &str,
    ) -> Result<Option<Existing>, DbError> {
        let row = sqlx::query("SELECT revoked_ms, last_seen_ms FROM devices WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(q("reading a device"))?;
        let Some(r) = row else { return Ok(None) };
        let revoked: Option<i64> = r.try_get("revoked_ms").map_err(q("reading a device"))?;
        Ok(Some(match revoked {
            Some(revoked_ms) => Existing::Revoked { revoked_ms },
            None => Existing::Enrolled {
                last_seen_ms: r.try_get("last_seen_ms").map_err(q("reading a device"))?,
            },
        }))
    }

    /// `enrolled` or `revoked`, as listings show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Existing::Enrolled { .. } => "enrolled",
            Existing::Revoked { .. } => "revoked",
        }
    }
}

/// The labels the newest release's devices.yaml gives `id` (`None`: not listed).
pub(crate) async fn inventory_labels(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
) -> Result<Option<BTreeMap<String, String>>, DbError> {
    let inventory: Option<BTreeMap<String, BTreeMap<String, String>>> =
        super::inventory::read_setting(tx, INVENTORY_KEY, "inventory").await?;
    Ok(inventory.and_then(|mut i| i.remove(id)))
}

/// Creates device `id` with a fresh token inside `tx`; returns the token (shown once), or
/// `None` when the id is taken (enrolled or revoked) and `replace` is false. With `replace`
/// (an operator approved a re-enrollment) the device keeps its history and gets a new token,
/// which ends the old one and lifts a revocation.
pub(crate) async fn enroll_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    hostname: &str,
    arch: &str,
    agent_version: &str,
    replace: bool,
) -> Result<Option<String>, DbError> {
    let token = tokens::generate(tokens::TokenKind::Device);
    let on_conflict = if replace {
        "ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, arch = excluded.arch, \
         agent_version = excluded.agent_version, token_hash = excluded.token_hash, \
         revoked_ms = NULL, enrolled_ms = excluded.enrolled_ms, acked_seq = 0, \
         changed_ms = excluded.changed_ms"
    } else {
        "ON CONFLICT (id) DO NOTHING"
    };
    let r = sqlx::query(&format!(
        "INSERT INTO devices (id, hostname, arch, agent_version, token_hash, enrolled_ms, changed_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $6) {on_conflict}"
    ))
    .bind(id)
    .bind(hostname)
    .bind(arch)
    .bind(agent_version)
    .bind(tokens::hash(&token))
    .bind(crate::db::now_ms())
    .execute(&mut **tx)
    .await
    .map_err(q("enrolling a device"))?;
    if r.rows_affected() == 0 {
        return Ok(None);
    }
    // A device that joins after the newest release takes its labels from that release's
    // devices.yaml now, not at the next release (or it would never be offered anything).
    if let Some(labels) = inventory_labels(tx, id).await? {
        sqlx::query(
            "UPDATE devices SET in_inventory = 1, labels = $1, changed_ms = $3 WHERE id = $2",
        )
        .bind(serde_json::to_string(&labels).unwrap_or_else(|_| "{}".into()))
        .bind(id)
        .bind(crate::db::now_ms())
        .execute(&mut **tx)
        .await
        .map_err(q("enrolling a device"))?;
        if let Some(pin) = super::inventory::inventory_pin(tx, id).await? {
            super::inventory::set_repo_pin(tx, id, Some(&pin)).await?;
        }
    }
    Ok(Some(token))
}

impl Db {
    /// Creates a new device with a fresh token; returns the token (shown once), or `None` if
    /// the id is enrolled or revoked already (never replaced here: see [`enroll_in`]).
    pub async fn enroll_device(
        &self,
        id: &str,
        hostname: &str,
        arch: &str,
        agent_version: &str,
    ) -> Result<Option<String>, DbError> {
        let _turn = self.write_turn().await;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(q("starting an enrollment"))?;
        let token = enroll_in(&mut tx, id, hostname, arch, agent_version, false).await?;
        tx.commit().await.map_err(q("committing an enrollment"))?;
        Ok(token)
    }

    /// Who a device token belongs to.
    pub async fn device_for_token(&self, token: &str) -> Result<Option<CheckinIdentity>, DbError> {
        // The pending log request comes with the row (a key lookup in a small table), so a
        // check-in still reads the store once.
        let row = sqlx::query(
            "SELECT id, revoked_ms, desired_release, desired_digest, acked_seq, safe_mode_requested, \
             last_seen_ms, current_release, phase, health, last_result, bad_releases, \
             telemetry_sampled_ms, (SELECT value FROM settings WHERE key = $1) AS emergency_stop, \
             l.request_id AS logs_id, l.request_lines AS logs_lines, \
             l.request_services AS logs_services \
             FROM devices LEFT JOIN device_logs l ON l.device_id = devices.id \
             AND l.pending = 1 AND l.requested_ms > $2 \
             WHERE token_hash = $3",
        )
        .bind(crate::db::settings::STOP_KEY)
        .bind(crate::db::now_ms() - crate::db::device_logs::LOG_REQUEST_TTL_MS)
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
            logs_request: crate::db::device_logs::pending_from(
                r.try_get("logs_id").map_err(q("reading a device"))?,
                r.try_get("logs_lines").map_err(q("reading a device"))?,
                r.try_get("logs_services").map_err(q("reading a device"))?,
            ),
        }))
    }

    /// Revokes a device's token; false if there is no such device.
    pub async fn revoke_device(&self, id: &str) -> Result<bool, DbError> {
        let r = sqlx::query(
            "UPDATE devices SET revoked_ms = $1, token_hash = NULL, changed_ms = $1 WHERE id = $2",
        )
        .bind(crate::db::now_ms())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(q("revoking a device"))?;
        Ok(r.rows_affected() > 0)
    }
}
