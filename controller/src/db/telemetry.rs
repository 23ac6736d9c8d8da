//! Each device's telemetry over time, for the dashboard's sparklines: one sample per device
//! every [`SAMPLE_EVERY_MS`] (taken from its check-in), kept for [`KEEP_MS`].

use fleet_config::protocol::Telemetry;
use serde::Serialize;
use sqlx::Row;

use super::{q, Db, DbError};

/// How often a device's check-in is kept as a sample.
pub const SAMPLE_EVERY_MS: i64 = 5 * 60_000;
/// How long samples are kept.
pub const KEEP_MS: i64 = 24 * 3_600_000;

/// Whether a check-in at `now_ms` should be kept, the last sample being at `last_ms`.
pub fn sample_due(last_ms: Option<i64>, now_ms: i64) -> bool {
    last_ms.is_none_or(|t| now_ms.saturating_sub(t) >= SAMPLE_EVERY_MS)
}

/// One sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TelemetrySample {
    /// When.
    pub at_ms: i64,
    /// What the device reported then.
    pub telemetry: Telemetry,
}

fn int(v: Option<u64>) -> Option<i64> {
    v.and_then(|n| i64::try_from(n).ok())
}

fn uint(v: Option<i64>) -> Option<u64> {
    v.and_then(|n| u64::try_from(n).ok())
}

impl Db {
    /// Keeps `t` as the sample of `device` at `at_ms` (the caller holds the write turn).
    pub(crate) async fn insert_telemetry_sample(
        &self,
        device: &str,
        at_ms: i64,
        t: &Telemetry,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO telemetry_samples (device_id, at_ms, cpu_percent, mem_used_bytes, \
             mem_total_bytes, disk_free_bytes, temperature_c, load1) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (device_id, at_ms) DO NOTHING",
        )
        .bind(device)
        .bind(at_ms)
        .bind(t.cpu_percent)
        .bind(int(t.mem_used_bytes))
        .bind(int(t.mem_total_bytes))
        .bind(int(t.disk_free_bytes))
        .bind(t.temperature_c)
        .bind(t.load1)
        .execute(&self.pool)
        .await
        .map_err(q("storing a telemetry sample"))?;
        Ok(())
    }

    /// A sample taken outside a check-in (imports, tests).
    pub async fn add_telemetry_sample(
        &self,
        device: &str,
        at_ms: i64,
        t: &Telemetry,
    ) -> Result<(), DbError> {
        let _turn = self.write_turn().await;
        self.insert_telemetry_sample(device, at_ms, t).await
    }

    /// The samples of `device` since `since_ms`, oldest first.
    pub async fn telemetry_samples(
        &self,
        device: &str,
        since_ms: i64,
    ) -> Result<Vec<TelemetrySample>, DbError> {
        let rows = sqlx::query(
            "SELECT at_ms, cpu_percent, mem_used_bytes, mem_total_bytes, disk_free_bytes, \
             temperature_c, load1 FROM telemetry_samples \
             WHERE device_id = $1 AND at_ms >= $2 ORDER BY at_ms",
        )
        .bind(device)
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading telemetry samples"))?;
        rows.iter()
            .map(|r| {
                let get_i = |c: &str| -> Result<Option<i64>, DbError> {
                    r.try_get(c).map_err(q("reading telemetry samples"))
                };
                let get_f = |c: &str| -> Result<Option<f64>, DbError> {
                    r.try_get(c).map_err(q("reading telemetry samples"))
                };
                Ok(TelemetrySample {
                    at_ms: r.try_get("at_ms").map_err(q("reading telemetry samples"))?,
                    telemetry: Telemetry {
                        cpu_percent: get_f("cpu_percent")?,
                        mem_used_bytes: uint(get_i("mem_used_bytes")?),
                        mem_total_bytes: uint(get_i("mem_total_bytes")?),
                        disk_free_bytes: uint(get_i("disk_free_bytes")?),
                        temperature_c: get_f("temperature_c")?,
                        load1: get_f("load1")?,
                        uptime_secs: None,
                    },
                })
            })
            .collect()
    }

    /// Drops samples older than [`KEEP_MS`]; returns how many.
    pub async fn prune_telemetry(&self, now_ms: i64) -> Result<u64, DbError> {
        let _turn = self.write_turn().await;
        let r = sqlx::query("DELETE FROM telemetry_samples WHERE at_ms < $1")
            .bind(now_ms - KEEP_MS)
            .execute(&self.pool)
            .await
            .map_err(q("pruning telemetry samples"))?;
        Ok(r.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sample_every_five_minutes() {
        assert!(sample_due(None, 0));
        assert!(!sample_due(Some(1_000), 1_000 + SAMPLE_EVERY_MS - 1));
        assert!(sample_due(Some(1_000), 1_000 + SAMPLE_EVERY_MS));
    }
}
