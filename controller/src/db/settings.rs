//! Fleet-wide settings: the emergency stop, whether the fleet-wide gate is disarmed, and
//! followers' requests for a Git look.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{q, Db, DbError};

pub(crate) const STOP_KEY: &str = "emergency_stop";
const GATE_DISARMED_KEY: &str = "fleet_gate_disarmed";
const WATCH_KEY: &str = "watch_requested";

async fn insert_stop(
    conn: &mut sqlx::AnyConnection,
    stop: &EmergencyStop,
) -> Result<bool, DbError> {
    let value = serde_json::to_string(stop).map_err(|e| DbError::Corrupt {
        what: "emergency stop",
        detail: e.to_string(),
    })?;
    let r = sqlx::query(
        "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
    )
    .bind(STOP_KEY)
    .bind(value)
    .execute(&mut *conn)
    .await
    .map_err(q("setting the emergency stop"))?;
    Ok(r.rows_affected() == 1)
}

impl super::Fenced {
    /// The leader sets the stop (the fleet-wide gate); as [`Db::set_emergency_stop`].
    pub async fn set_emergency_stop(&mut self, stop: &EmergencyStop) -> Result<bool, DbError> {
        insert_stop(&mut self.tx, stop).await
    }
}

/// The emergency stop, while it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EmergencyStop {
    /// Who pressed it (`controller` for the automatic fleet-wide gate).
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// Whether the active rollout's devices were sent back to their last good release.
    pub rollback: bool,
}

/// The stored stop.
pub(crate) fn parse_stop(text: &str) -> Result<EmergencyStop, DbError> {
    serde_json::from_str(text).map_err(|e| DbError::Corrupt {
        what: "emergency stop",
        detail: e.to_string(),
    })
}

impl Db {
    /// The stop, if set. Read from the store at every check-in: replicas share it at once.
    pub async fn emergency_stop(&self) -> Result<Option<EmergencyStop>, DbError> {
        let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(STOP_KEY)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading the emergency stop"))?;
        match row {
            Some(r) => {
                let v: String = r
                    .try_get("value")
                    .map_err(q("reading the emergency stop"))?;
                parse_stop(&v).map(Some)
            }
            None => Ok(None),
        }
    }

    /// Sets the stop (keeping the first one's record if it is already set); returns whether
    /// it was newly set. An operator's: any replica.
    pub async fn set_emergency_stop(&self, stop: &EmergencyStop) -> Result<bool, DbError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(q("setting the emergency stop"))?;
        insert_stop(&mut conn, stop).await
    }

    /// Asks the leader's Git watcher to look now (a push webhook that reached a follower).
    pub async fn request_watch(&self) -> Result<(), DbError> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(WATCH_KEY)
        .bind(super::now_ms().to_string())
        .execute(&self.pool)
        .await
        .map_err(q("asking the leader to look at Git"))?;
        Ok(())
    }

    /// When a follower last asked the leader's watcher to look (see [`Db::request_watch`]).
    pub async fn watch_requested(&self) -> Result<Option<i64>, DbError> {
        let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(WATCH_KEY)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading a watch request"))?;
        let value: Option<String> = row
            .map(|r| r.try_get("value"))
            .transpose()
            .map_err(q("reading a watch request"))?;
        Ok(value.and_then(|v| v.parse().ok()))
    }

    /// Clears the stop; returns whether it was set.
    pub async fn clear_emergency_stop(&self) -> Result<bool, DbError> {
        let r = sqlx::query("DELETE FROM settings WHERE key = $1")
            .bind(STOP_KEY)
            .execute(&self.pool)
            .await
            .map_err(q("clearing the emergency stop"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Whether the fleet-wide gate is disarmed: an operator cleared the stop it set, and the
    /// fleet has not been back under its limit since.
    pub async fn fleet_gate_disarmed(&self) -> Result<bool, DbError> {
        let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(GATE_DISARMED_KEY)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading the fleet-wide gate"))?;
        Ok(row.is_some())
    }

    /// Disarms (or arms again) the fleet-wide gate.
    pub async fn set_fleet_gate_disarmed(&self, disarmed: bool) -> Result<(), DbError> {
        let query = if disarmed {
            "INSERT INTO settings (key, value) VALUES ($1, '1') ON CONFLICT (key) DO NOTHING"
        } else {
            "DELETE FROM settings WHERE key = $1"
        };
        sqlx::query(query)
            .bind(GATE_DISARMED_KEY)
            .execute(&self.pool)
            .await
            .map_err(q("setting the fleet-wide gate"))?;
        Ok(())
    }
}
