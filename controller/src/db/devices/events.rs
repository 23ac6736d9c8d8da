//! Reading the events devices reported (stored by [`super::checkin`]).

use sqlx::Row;

use super::json;
use crate::db::{q, Db, DbError};

impl Db {
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
