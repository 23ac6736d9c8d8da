//! Rollouts as stored: the engine's state as JSON plus a few columns to find them.

use serde::Serialize;
use sqlx::Row;

use super::{now_ms, q, Db, DbError};

/// A stored rollout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutRow {
    /// Id.
    pub id: String,
    /// Release it rolls out.
    pub release: String,
    /// Short state name.
    pub state: String,
    /// Still being driven (not completed, aborted or superseded).
    pub active: bool,
    /// The engine's state (`null` when the stored text is not JSON: see `unreadable`).
    pub data: serde_json::Value,
    /// Why the stored state cannot be read, if it cannot: the row is listed, never used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
    /// Created.
    pub created_ms: i64,
    /// Last changed.
    pub updated_ms: i64,
}

fn rollout_from(r: &sqlx::any::AnyRow) -> Result<RolloutRow, DbError> {
    let e = || q("reading a rollout");
    let active: i64 = r.try_get("active").map_err(e())?;
    let data: String = r.try_get("data").map_err(e())?;
    // A row whose state is not JSON is handed on as unreadable, not as an error: one bad row
    // must not hide every other rollout (the engine quarantines it).
    let (data, unreadable) = match serde_json::from_str(&data) {
        Ok(v) => (v, None),
        Err(err) => (serde_json::Value::Null, Some(err.to_string())),
    };
    Ok(RolloutRow {
        id: r.try_get("id").map_err(e())?,
        release: r.try_get("release").map_err(e())?,
        state: r.try_get("state").map_err(e())?,
        active: active != 0,
        data,
        unreadable,
        created_ms: r.try_get("created_ms").map_err(e())?,
        updated_ms: r.try_get("updated_ms").map_err(e())?,
    })
}

const COLUMNS: &str = "id, release, state, active, data, created_ms, updated_ms";

impl Db {
    /// Inserts or replaces a rollout.
    pub async fn save_rollout(
        &self,
        id: &str,
        release: &str,
        state: &str,
        active: bool,
        data: &str,
    ) -> Result<(), DbError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO rollouts (id, release, state, active, data, created_ms, updated_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE SET \
             state = excluded.state, active = excluded.active, data = excluded.data, \
             updated_ms = excluded.updated_ms",
        )
        .bind(id)
        .bind(release)
        .bind(state)
        .bind(i64::from(active))
        .bind(data)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(q("saving a rollout"))?;
        Ok(())
    }

    /// One rollout.
    pub async fn rollout(&self, id: &str) -> Result<Option<RolloutRow>, DbError> {
        sqlx::query(&format!("SELECT {COLUMNS} FROM rollouts WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading a rollout"))?
            .as_ref()
            .map(rollout_from)
            .transpose()
    }

    /// Rollouts, newest first.
    pub async fn rollouts(&self, limit: i64) -> Result<Vec<RolloutRow>, DbError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM rollouts ORDER BY created_ms DESC, id DESC LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing rollouts"))?
        .iter()
        .map(rollout_from)
        .collect()
    }

    /// The rollouts still being driven, oldest first.
    pub async fn active_rollouts(&self) -> Result<Vec<RolloutRow>, DbError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM rollouts WHERE active = 1 ORDER BY created_ms, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing active rollouts"))?
        .iter()
        .map(rollout_from)
        .collect()
    }

    /// Takes an unreadable rollout out of the engine's way: state `quarantined`, inactive,
    /// its stored text kept for a person to look at. True if it was there.
    pub async fn quarantine_rollout(&self, id: &str) -> Result<bool, DbError> {
        let r = sqlx::query(
            "UPDATE rollouts SET state = 'quarantined', active = 0, updated_ms = $2 WHERE id = $1",
        )
        .bind(id)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(q("quarantining a rollout"))?;
        Ok(r.rows_affected() > 0)
    }
}
