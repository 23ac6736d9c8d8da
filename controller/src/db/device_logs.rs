//! Devices' logs on request (table `device_logs`): an operator's newest request per device,
//! pending until the tail answering it arrives with a check-in, and the newest tail received.
//! Every check-in reads the pending request with the device's token
//! ([`Db::device_for_token`]); a request pending longer than [`LOG_REQUEST_TTL_MS`] is no
//! longer asked (an agent too old to answer is not asked forever).

use fleet_config::protocol::logs::{LogRequest, LogTail};
use sqlx::Row;

use super::{q, Db, DbError};

/// How long a request is asked at each check-in before it counts as expired.
pub const LOG_REQUEST_TTL_MS: i64 = 15 * 60 * 1000;

/// A device's row of `device_logs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLogsRow {
    /// The newest request.
    pub request: LogRequest,
    /// When it was made (controller clock).
    pub requested_ms: i64,
    /// By whom.
    pub requested_by: String,
    /// Still waiting for its tail.
    pub pending: bool,
    /// The newest tail received, and when it arrived.
    pub tail: Option<(LogTail, i64)>,
}

/// The pending request of a check-in's row, read by [`Db::device_for_token`]: `id`, `lines`
/// and `services` (JSON) columns, all null when nothing is pending.
pub(crate) fn pending_from(
    id: Option<i64>,
    lines: Option<i64>,
    services: Option<String>,
) -> Option<LogRequest> {
    let id = u64::try_from(id?).ok()?;
    Some(LogRequest {
        id,
        lines: lines
            .and_then(|l| u32::try_from(l).ok())
            .unwrap_or(fleet_config::protocol::logs::DEFAULT_LOG_LINES),
        services: services
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default(),
    })
}

impl Db {
    /// Records `actor`'s request at `now_ms` for device `id`'s logs (`lines` per source, only
    /// `services` if any), replacing an earlier one; returns the request (its id is above every
    /// earlier one of the device), or `None` when there is no such device.
    pub async fn request_logs(
        &self,
        id: &str,
        lines: u32,
        services: &[String],
        actor: &str,
        now_ms: i64,
    ) -> Result<Option<LogRequest>, DbError> {
        let _turn = self.write_turn().await;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(q("starting a log request"))?;
        let exists = sqlx::query("SELECT 1 AS one FROM devices WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("reading a device"))?;
        if exists.is_none() {
            return Ok(None);
        }
        let previous: Option<i64> =
            sqlx::query("SELECT request_id FROM device_logs WHERE device_id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(q("reading a log request"))?
                .map(|r| r.try_get("request_id"))
                .transpose()
                .map_err(q("reading a log request"))?;
        // Ids grow per device, even across replicas whose clocks differ a little.
        let request_id = previous.map_or(now_ms, |p| now_ms.max(p + 1)).max(1);
        sqlx::query(
            "INSERT INTO device_logs (device_id, request_id, request_lines, request_services, \
             requested_ms, requested_by, pending) VALUES ($1, $2, $3, $4, $5, $6, 1) \
             ON CONFLICT (device_id) DO UPDATE SET request_id = excluded.request_id, \
             request_lines = excluded.request_lines, request_services = excluded.request_services, \
             requested_ms = excluded.requested_ms, requested_by = excluded.requested_by, pending = 1",
        )
        .bind(id)
        .bind(request_id)
        .bind(i64::from(lines))
        .bind(serde_json::to_string(services).unwrap_or_else(|_| "[]".into()))
        .bind(now_ms)
        .bind(actor)
        .execute(&mut *tx)
        .await
        .map_err(q("storing a log request"))?;
        tx.commit().await.map_err(q("committing a log request"))?;
        Ok(Some(LogRequest {
            id: request_id as u64,
            lines,
            services: services.to_vec(),
        }))
    }

    /// Stores `tail` (already bounded) from device `id`, received at `now_ms`, if it answers
    /// the device's newest request or an older one newer than the tail stored; the newest
    /// request is answered (no longer pending) when it is the one. Returns whether it was
    /// stored (a tail nobody asked for is not).
    pub async fn store_log_tail(
        &self,
        id: &str,
        tail: &LogTail,
        now_ms: i64,
    ) -> Result<bool, DbError> {
        let Ok(answers) = i64::try_from(tail.request_id) else {
            return Ok(false);
        };
        let json = serde_json::to_string(tail).unwrap_or_default();
        let _turn = self.write_turn().await;
        let r = sqlx::query(
            "UPDATE device_logs SET tail = $1, tail_request_id = $2, received_ms = $3, \
             pending = CASE WHEN request_id = $2 THEN 0 ELSE pending END \
             WHERE device_id = $4 AND request_id >= $2 \
             AND (tail_request_id IS NULL OR tail_request_id <= $2)",
        )
        .bind(json)
        .bind(answers)
        .bind(now_ms)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(q("storing a log tail"))?;
        Ok(r.rows_affected() > 0)
    }

    /// Device `id`'s newest log request and tail, if it was ever asked.
    pub async fn device_logs(&self, id: &str) -> Result<Option<DeviceLogsRow>, DbError> {
        let row = sqlx::query(
            "SELECT request_id, request_lines, request_services, requested_ms, requested_by, \
             pending, tail, received_ms FROM device_logs WHERE device_id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(q("reading a device's logs"))?;
        let Some(r) = row else { return Ok(None) };
        let request = pending_from(
            r.try_get("request_id")
                .map_err(q("reading a device's logs"))?,
            r.try_get("request_lines")
                .map_err(q("reading a device's logs"))?,
            r.try_get("request_services")
                .map_err(q("reading a device's logs"))?,
        )
        .ok_or_else(|| DbError::Corrupt {
            what: "log request",
            detail: format!("device `{id}`: a request id out of range"),
        })?;
        let tail: Option<String> = r.try_get("tail").map_err(q("reading a device's logs"))?;
        let received: Option<i64> = r
            .try_get("received_ms")
            .map_err(q("reading a device's logs"))?;
        let tail = match (tail, received) {
            (Some(t), Some(at)) => {
                let t: LogTail = serde_json::from_str(&t).map_err(|e| DbError::Corrupt {
                    what: "log tail",
                    detail: format!("device `{id}`: {e}"),
                })?;
                Some((t, at))
            }
            _ => None,
        };
        let pending: i64 = r.try_get("pending").map_err(q("reading a device's logs"))?;
        Ok(Some(DeviceLogsRow {
            request,
            requested_ms: r
                .try_get("requested_ms")
                .map_err(q("reading a device's logs"))?,
            requested_by: r
                .try_get("requested_by")
                .map_err(q("reading a device's logs"))?,
            pending: pending != 0,
            tail,
        }))
    }

    /// Devices with a request pending made after `since_ms` (for the long-poll wake-ups of
    /// other replicas).
    pub async fn logs_requested_since(&self, since_ms: i64) -> Result<Vec<String>, DbError> {
        let rows = sqlx::query(
            "SELECT device_id FROM device_logs WHERE requested_ms > $1 AND pending = 1",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading the log requests"))?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("device_id"))
            .collect::<Result<_, _>>()
            .map_err(q("reading the log requests"))
    }
}
