//! Rollouts as stored: the engine's state as JSON plus a few columns to find them, and each
//! device's record in a row of its own (`rollout_devices`), written only when it changes; a
//! rollout read is handed on whole, its records put back under `devices`. Every write
//! is conditional: a new rollout is inserted only if its id is free, and a change is a
//! compare-and-swap on `version`, so no replica overwrites a change it has not read (an abort
//! taken by a follower is never undone by the leader's older copy). The leader's writes are
//! also fenced (in a [`Fenced`] transaction).

use serde::Serialize;
use sqlx::{AnyConnection, Row};

use super::{now_ms, q, Backend, Db, DbError, Fenced};

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
    /// Changes so far (1 when created); a write names the version it read.
    pub version: i64,
    /// The replica that wrote it last.
    pub updated_by: String,
    /// That replica's leader epoch, for the leader's writes (`None`: an operator's action).
    pub epoch: Option<i64>,
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
        version: r.try_get("version").map_err(e())?,
        updated_by: r.try_get("updated_by").map_err(e())?,
        epoch: r.try_get("epoch").map_err(e())?,
    })
}

const COLUMNS: &str =
    "id, release, state, active, data, created_ms, updated_ms, version, updated_by, epoch";

/// A rollout's new state, as written.
#[derive(Debug, Clone, Copy)]
pub struct RolloutWrite<'a> {
    /// Id.
    pub id: &'a str,
    /// Release.
    pub release: &'a str,
    /// Short state name.
    pub state: &'a str,
    /// Still being driven.
    pub active: bool,
    /// The engine's state but the device records, JSON; `None`: unchanged.
    pub data: Option<&'a str>,
    /// The device records that changed: (device, record JSON).
    pub records: &'a [(String, String)],
}

/// Device records written per statement: a pass that moves a whole wave of 25,000 devices
/// writes them in statements of this many rows.
const RECORDS_PER_STATEMENT: usize = 500;

/// Inserts or replaces device records of rollout `id`.
async fn put_records(
    conn: &mut AnyConnection,
    id: &str,
    records: &[(String, String)],
) -> Result<(), DbError> {
    for chunk in records.chunks(RECORDS_PER_STATEMENT) {
        let mut sql =
            String::from("INSERT INTO rollout_devices (rollout_id, device_id, record) VALUES ");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("($1, ${}, ${})", 2 * i + 2, 2 * i + 3));
        }
        sql.push_str(" ON CONFLICT (rollout_id, device_id) DO UPDATE SET record = excluded.record");
        let mut query = sqlx::query(&sql).bind(id);
        for (device, record) in chunk {
            query = query.bind(device).bind(record);
        }
        query
            .execute(&mut *conn)
            .await
            .map_err(q("saving a rollout's device records"))?;
    }
    Ok(())
}

/// Puts the stored device records of each rollout back under its `devices`: a record that
/// is not JSON makes its rollout unreadable (quarantined by the engine), never an error.
async fn attach_records(
    conn: impl sqlx::Executor<'_, Database = sqlx::Any>,
    rows: &mut [RolloutRow],
) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let list = (1..=rows.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT rollout_id, device_id, record FROM rollout_devices WHERE rollout_id IN ({list})"
    );
    let mut query = sqlx::query(&sql);
    for r in rows.iter() {
        query = query.bind(r.id.clone());
    }
    let found = query
        .fetch_all(conn)
        .await
        .map_err(q("reading a rollout's device records"))?;
    let at: std::collections::HashMap<String, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.clone(), i))
        .collect();
    let e = || q("reading a rollout's device records");
    for f in &found {
        let rollout: String = f.try_get("rollout_id").map_err(e())?;
        let device: String = f.try_get("device_id").map_err(e())?;
        let record: String = f.try_get("record").map_err(e())?;
        let Some(row) = at.get(&rollout).and_then(|i| rows.get_mut(*i)) else {
            continue;
        };
        if row.unreadable.is_some() {
            continue;
        }
        match serde_json::from_str::<serde_json::Value>(&record) {
            Ok(v) => {
                if let Some(obj) = row.data.as_object_mut() {
                    let devices = obj
                        .entry("devices")
                        .or_insert_with(|| serde_json::Value::Object(Default::default()));
                    if let Some(d) = devices.as_object_mut() {
                        d.insert(device, v);
                    }
                }
            }
            Err(err) => {
                row.unreadable = Some(format!("the record of device {device}: {err}"));
                row.data = serde_json::Value::Null;
            }
        }
    }
    Ok(())
}

/// `UPDATE … WHERE id = $ AND version = $` and the changed records: the new version, or
/// [`DbError::Conflict`] (then nothing of it is written: the records go after the check).
async fn update_on(
    conn: &mut AnyConnection,
    w: &RolloutWrite<'_>,
    version: i64,
    by: &str,
    epoch: Option<i64>,
) -> Result<i64, DbError> {
    let r = sqlx::query(
        "UPDATE rollouts SET state = $1, active = $2, data = COALESCE($3, data), updated_ms = $4, \
         version = version + 1, updated_by = $5, epoch = $6 WHERE id = $7 AND version = $8",
    )
    .bind(w.state)
    .bind(i64::from(w.active))
    .bind(w.data)
    .bind(now_ms())
    .bind(by)
    .bind(epoch)
    .bind(w.id)
    .bind(version)
    .execute(&mut *conn)
    .await
    .map_err(q("saving a rollout"))?;
    if r.rows_affected() != 1 {
        return Err(DbError::Conflict {
            what: "rollout",
            id: w.id.to_owned(),
            version,
        });
    }
    put_records(conn, w.id, w.records).await?;
    Ok(version + 1)
}

impl Fenced {
    /// Inserts a new rollout (version 1); [`DbError::Conflict`] if its id is taken.
    pub async fn insert_rollout(&mut self, w: &RolloutWrite<'_>) -> Result<i64, DbError> {
        let now = now_ms();
        let r = sqlx::query(
            "INSERT INTO rollouts (id, release, state, active, data, created_ms, updated_ms, \
             version, updated_by, epoch) VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $9) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(w.id)
        .bind(w.release)
        .bind(w.state)
        .bind(i64::from(w.active))
        .bind(w.data.unwrap_or("{}"))
        .bind(now)
        .bind(now)
        .bind(self.fence().holder().to_owned())
        .bind(self.fence().epoch())
        .execute(&mut *self.tx)
        .await
        .map_err(q("creating a rollout"))?;
        if r.rows_affected() != 1 {
            return Err(DbError::Conflict {
                what: "rollout",
                id: w.id.to_owned(),
                version: 0,
            });
        }
        put_records(&mut self.tx, w.id, w.records).await?;
        Ok(1)
    }

    /// Writes a rollout read at `version` (compare-and-swap); returns the new version.
    pub async fn update_rollout(
        &mut self,
        w: &RolloutWrite<'_>,
        version: i64,
    ) -> Result<i64, DbError> {
        let by = self.fence().holder().to_owned();
        let epoch = self.fence().epoch();
        update_on(&mut self.tx, w, version, &by, Some(epoch)).await
    }

    /// [`DbError::Conflict`] unless rollout `id` is still at `version`; on PostgreSQL the row
    /// stays share-locked until commit, so a concurrent change waits for this transaction
    /// (and what it decided from `version`) to be done.
    pub async fn rollout_unchanged(&mut self, id: &str, version: i64) -> Result<(), DbError> {
        let lock = match self.backend {
            Backend::Postgres => " FOR SHARE",
            // This transaction already holds SQLite's write lock (see `Db::fenced`).
            Backend::Sqlite => "",
        };
        let row = sqlx::query(&format!("SELECT version FROM rollouts WHERE id = $1{lock}"))
            .bind(id)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(q("checking a rollout's version"))?;
        let now: Option<i64> = row
            .map(|r| r.try_get("version"))
            .transpose()
            .map_err(q("checking a rollout's version"))?;
        if now == Some(version) {
            Ok(())
        } else {
            Err(DbError::Conflict {
                what: "rollout",
                id: id.to_owned(),
                version,
            })
        }
    }
}

impl Db {
    /// An operator's change to a rollout read at `version` (compare-and-swap, from any
    /// replica, `by` naming it); returns the new version or [`DbError::Conflict`].
    pub async fn update_rollout(
        &self,
        w: &RolloutWrite<'_>,
        version: i64,
        by: &str,
    ) -> Result<i64, DbError> {
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await.map_err(q("saving a rollout"))?;
        let v = update_on(&mut tx, w, version, by, None).await?;
        tx.commit().await.map_err(q("saving a rollout"))?;
        Ok(v)
    }

    /// One rollout.
    pub async fn rollout(&self, id: &str) -> Result<Option<RolloutRow>, DbError> {
        let mut rows: Vec<RolloutRow> =
            sqlx::query(&format!("SELECT {COLUMNS} FROM rollouts WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(q("reading a rollout"))?
                .as_ref()
                .map(rollout_from)
                .transpose()?
                .into_iter()
                .collect();
        attach_records(&self.pool, &mut rows).await?;
        Ok(rows.pop())
    }

    /// The rollout the engine drives (or whose devices it sends back): the newest one neither
    /// superseded nor quarantined, as (id, version), without reading its state. And the newest
    /// completed one, as (id, release).
    pub async fn rollout_heads(
        &self,
    ) -> Result<(Option<(String, i64)>, Option<(String, String)>), DbError> {
        let current = self
            .newest_rollout("state NOT IN ('superseded', 'quarantined')", "version")
            .await?;
        let completed = self
            .newest_rollout("state = 'completed'", "release")
            .await?;
        Ok((current, completed))
    }

    /// (id, `column`) of the newest rollout that matches `filter`.
    async fn newest_rollout<T>(
        &self,
        filter: &str,
        column: &str,
    ) -> Result<Option<(String, T)>, DbError>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
    {
        let e = || q("finding the current rollout");
        sqlx::query(&format!(
            "SELECT id, {column} FROM rollouts WHERE {filter} ORDER BY created_ms DESC, id DESC LIMIT 1"
        ))
        .fetch_optional(&self.pool)
        .await
        .map_err(e())?
        .map(|r| Ok((r.try_get("id").map_err(e())?, r.try_get(column).map_err(e())?)))
        .transpose()
    }

    /// How many rollouts are in each state (for `/metrics`), without reading them.
    pub async fn rollout_counts(&self) -> Result<Vec<(String, i64)>, DbError> {
        let e = || q("counting rollouts");
        sqlx::query("SELECT state, COUNT(*) AS n FROM rollouts GROUP BY state ORDER BY state")
            .fetch_all(&self.pool)
            .await
            .map_err(e())?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("state").map_err(e())?,
                    r.try_get("n").map_err(e())?,
                ))
            })
            .collect()
    }

    /// Rollouts, newest first, whole.
    pub async fn rollouts(&self, limit: i64) -> Result<Vec<RolloutRow>, DbError> {
        let mut rows = self.rollout_list(limit).await?;
        attach_records(&self.pool, &mut rows).await?;
        Ok(rows)
    }

    /// Rollouts, newest first, for a list: `data` without the device records.
    pub async fn rollout_list(&self, limit: i64) -> Result<Vec<RolloutRow>, DbError> {
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
        let mut rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM rollouts WHERE active = 1 ORDER BY created_ms, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing active rollouts"))?
        .iter()
        .map(rollout_from)
        .collect::<Result<Vec<_>, _>>()?;
        attach_records(&self.pool, &mut rows).await?;
        Ok(rows)
    }

    /// The halted rollouts, without their device records (the alert engine's question).
    pub async fn halted_rollouts(&self) -> Result<Vec<RolloutRow>, DbError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM rollouts WHERE state = 'halted' ORDER BY created_ms, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing halted rollouts"))?
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
