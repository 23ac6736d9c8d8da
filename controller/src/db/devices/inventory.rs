//! Which devices there are: reading them, and the inventory (labels, membership) that follows
//! the newest valid release's devices.yaml.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::desired::{pin_update, PIN_BY_REPOSITORY};
use super::{device_from, DeviceRow, DEVICE_COLUMNS};
use crate::db::{q, Db, DbError, Fenced};

/// Settings key of the newest valid release's devices.yaml (id → labels), as JSON.
pub(super) const INVENTORY_KEY: &str = "inventory";
/// Settings key of its pins (id → pin), as JSON, for devices that enroll later.
pub(super) const PINS_KEY: &str = "inventory_pins";

/// A pin from devices.yaml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoPin {
    /// The release (full sha).
    pub release: String,
    /// Why.
    pub reason: String,
}

/// A pin the sync set, changed or lifted: (device, the release it is pinned to now).
pub type PinChange = (String, Option<String>);

impl Db {
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

    /// Devices whose row changed at or after `since_ms` (any column: a check-in, an
    /// operator's act, the engine's own writes), for the engine's pass, which reads only what
    /// changed since the one before.
    pub async fn devices_changed_since(&self, since_ms: i64) -> Result<Vec<DeviceRow>, DbError> {
        sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE changed_ms >= $1"
        ))
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing changed devices"))?
        .iter()
        .map(device_from)
        .collect()
    }

    /// (id, last check-in) of the devices that checked in at or after `since_ms`: what the
    /// engine reads of the rows whose check-ins changed nothing else.
    pub async fn checkins_since(&self, since_ms: i64) -> Result<Vec<(String, i64)>, DbError> {
        let e = || q("listing recent check-ins");
        sqlx::query("SELECT id, last_seen_ms FROM devices WHERE last_seen_ms >= $1")
            .bind(since_ms)
            .fetch_all(&self.pool)
            .await
            .map_err(e())?
            .iter()
            .map(|r| {
                Ok((
                    sqlx::Row::try_get(r, "id").map_err(e())?,
                    sqlx::Row::try_get(r, "last_seen_ms").map_err(e())?,
                ))
            })
            .collect()
    }

    /// At most `limit` devices with an id after `after` (all from the start with `None`), by id:
    /// one page of the device list.
    pub async fn devices_page(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeviceRow>, DbError> {
        sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing devices"))?
        .iter()
        .map(device_from)
        .collect()
    }
}

impl Fenced {
    /// Copies labels from a release's devices.yaml; devices not in it are marked outside the
    /// inventory (and so left out of rollouts).
    ///
    /// Pins follow the file too: a device pinned in it is pinned (over an operator's pin), a
    /// pin the file set and no longer has is lifted, an operator's pin is left alone. Returns
    /// the pins it changed, for the audit log.
    pub async fn sync_inventory(
        &mut self,
        inventory: &BTreeMap<String, BTreeMap<String, String>>,
        pins: &BTreeMap<String, RepoPin>,
    ) -> Result<Vec<PinChange>, DbError> {
        let tx = &mut self.tx;
        let now = crate::db::now_ms();
        sqlx::query("UPDATE devices SET in_inventory = 0, changed_ms = $1")
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(q("syncing the inventory"))?;
        // Kept for devices that enroll later (see `enroll_device`).
        store_setting(tx, INVENTORY_KEY, &setting_text("inventory", inventory)?).await?;
        for (id, labels) in inventory {
            sqlx::query(
                "UPDATE devices SET in_inventory = 1, labels = $1, changed_ms = $3 WHERE id = $2",
            )
            .bind(serde_json::to_string(labels).unwrap_or_else(|_| "{}".into()))
            .bind(id)
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(q("syncing the inventory"))?;
        }
        store_setting(tx, PINS_KEY, &setting_text("inventory pins", pins)?).await?;
        let changes = sync_pins(tx, pins).await?;
        Ok(changes)
    }
}

fn setting_text<T: Serialize>(what: &'static str, value: &T) -> Result<String, DbError> {
    serde_json::to_string(value).map_err(|e| DbError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

/// The JSON setting `key` inside `tx` (`None`: not stored).
pub(super) async fn read_setting<T: serde::de::DeserializeOwned>(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    key: &str,
    what: &'static str,
) -> Result<Option<T>, DbError> {
    let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
        .bind(key)
        .fetch_optional(&mut **tx)
        .await
        .map_err(q("reading the inventory"))?;
    let Some(r) = row else { return Ok(None) };
    let text: String = r.try_get("value").map_err(q("reading the inventory"))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| DbError::Corrupt {
            what,
            detail: e.to_string(),
        })
}

async fn store_setting(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    key: &str,
    value: &str,
) -> Result<(), DbError> {
    sqlx::query("DELETE FROM settings WHERE key = $1")
        .bind(key)
        .execute(&mut **tx)
        .await
        .map_err(q("storing the inventory"))?;
    sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2)")
        .bind(key)
        .bind(value)
        .execute(&mut **tx)
        .await
        .map_err(q("storing the inventory"))?;
    Ok(())
}

/// Applies devices.yaml's pins to the enrolled devices; returns what changed.
async fn sync_pins(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    pins: &BTreeMap<String, RepoPin>,
) -> Result<Vec<PinChange>, DbError> {
    let rows = sqlx::query("SELECT id, pinned_release, pin_reason, pin_source FROM devices")
        .fetch_all(&mut **tx)
        .await
        .map_err(q("reading pins"))?;
    let mut changes = Vec::new();
    for r in rows {
        let id: String = r.try_get("id").map_err(q("reading pins"))?;
        let have: Option<String> = r.try_get("pinned_release").map_err(q("reading pins"))?;
        let reason: String = r.try_get("pin_reason").map_err(q("reading pins"))?;
        let source: String = r.try_get("pin_source").map_err(q("reading pins"))?;
        let want = match pins.get(&id) {
            Some(p) => Some(p),
            None if source == PIN_BY_REPOSITORY => None,
            None => continue,
        };
        let same = match want {
            Some(p) => {
                have.as_deref() == Some(p.release.as_str())
                    && reason == p.reason
                    && source == PIN_BY_REPOSITORY
            }
            None => have.is_none(),
        };
        if same {
            continue;
        }
        set_repo_pin(tx, &id, want).await?;
        changes.push((id, want.map(|p| p.release.clone())));
    }
    Ok(changes)
}

/// Sets (or lifts) a pin from devices.yaml on one device.
pub(crate) async fn set_repo_pin(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    pin: Option<&RepoPin>,
) -> Result<(), DbError> {
    let pin = pin.map(|p| (p.release.as_str(), p.reason.as_str()));
    pin_update(id, pin, PIN_BY_REPOSITORY)
        .execute(&mut **tx)
        .await
        .map_err(q("pinning a device"))?;
    Ok(())
}

/// The pin the newest release's devices.yaml gives `id`, for a device enrolling now.
pub(crate) async fn inventory_pin(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
) -> Result<Option<RepoPin>, DbError> {
    let pins: Option<BTreeMap<String, RepoPin>> =
        read_setting(tx, PINS_KEY, "inventory pins").await?;
    Ok(pins.and_then(|mut p| p.remove(id)))
}
