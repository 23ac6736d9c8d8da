//! Which devices there are: reading them, and the inventory (labels, membership) that follows
//! the newest valid release's devices.yaml.

use std::collections::BTreeMap;

use super::{device_from, DeviceRow, DEVICE_COLUMNS};
use crate::db::{q, Db, DbError, Fenced};

/// Settings key of the newest valid release's devices.yaml (id → labels), as JSON.
pub(super) const INVENTORY_KEY: &str = "inventory";

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
}

impl Fenced {
    /// Copies labels from a release's devices.yaml; devices not in it are marked outside the
    /// inventory (and so left out of rollouts).
    pub async fn sync_inventory(
        &mut self,
        inventory: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<(), DbError> {
        let tx = &mut self.tx;
        sqlx::query("UPDATE devices SET in_inventory = 0")
            .execute(&mut **tx)
            .await
            .map_err(q("syncing the inventory"))?;
        // Kept for devices that enroll later (see `enroll_device`).
        let text = serde_json::to_string(inventory).map_err(|e| DbError::Corrupt {
            what: "inventory",
            detail: e.to_string(),
        })?;
        sqlx::query("DELETE FROM settings WHERE key = $1")
            .bind(INVENTORY_KEY)
            .execute(&mut **tx)
            .await
            .map_err(q("storing the inventory"))?;
        sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2)")
            .bind(INVENTORY_KEY)
            .bind(text)
            .execute(&mut **tx)
            .await
            .map_err(q("storing the inventory"))?;
        for (id, labels) in inventory {
            sqlx::query("UPDATE devices SET in_inventory = 1, labels = $1 WHERE id = $2")
                .bind(serde_json::to_string(labels).unwrap_or_else(|_| "{}".into()))
                .bind(id)
                .execute(&mut **tx)
                .await
                .map_err(q("syncing the inventory"))?;
        }
        Ok(())
    }
}
