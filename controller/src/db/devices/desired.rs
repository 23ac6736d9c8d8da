//! What each device should run: the reconciler's desired releases, and operators' overrides
//! (a pinned release, a safe-mode request).

use fleet_config::protocol::ReleaseId;

use crate::db::{now_ms, q, Db, DbError, Fenced};

/// A pin set by an operator (fleetctl, the dashboard).
pub const PIN_BY_OPERATOR: &str = "operator";
/// A pin from the newest release's devices.yaml.
pub const PIN_BY_REPOSITORY: &str = "devices.yaml";

/// The statement that pins device `id` to `(release, reason)` as `source`, or unpins it.
pub(super) fn pin_update<'q>(
    id: &'q str,
    pin: Option<(&'q str, &'q str)>,
    source: &'q str,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let (release, reason, source) = match pin {
        Some((r, why)) => (Some(r), why, source),
        None => (None, "", ""),
    };
    sqlx::query(
        "UPDATE devices SET pinned_release = $1, pin_reason = $2, pin_source = $3, changed_ms = $5 \
         WHERE id = $4",
    )
    .bind(release)
    .bind(reason)
    .bind(source)
    .bind(id)
    .bind(now_ms())
}

impl Db {
    /// Pins a device to a release with a reason, or unpins it with `None`; `source` says who
    /// ([`PIN_BY_OPERATOR`] or [`PIN_BY_REPOSITORY`]). False if there is no such device.
    pub async fn pin_device(
        &self,
        id: &str,
        pin: Option<(&ReleaseId, &str)>,
        source: &str,
    ) -> Result<bool, DbError> {
        let pin = pin.map(|(r, why)| (r.as_str(), why));
        let r = pin_update(id, pin, source)
            .execute(&self.pool)
            .await
            .map_err(q("pinning a device"))?;
        Ok(r.rows_affected() > 0)
    }

    /// Asks a device to enter (or leave) safe mode; false if there is no such device.
    pub async fn request_safe_mode(&self, id: &str, on: bool) -> Result<bool, DbError> {
        let r = sqlx::query(
            "UPDATE devices SET safe_mode_requested = $1, desired_updated_ms = $3, changed_ms = $3 \
             WHERE id = $2",
        )
        .bind(i64::from(on))
        .bind(id)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(q("requesting safe mode"))?;
        Ok(r.rows_affected() > 0)
    }

    /// Devices whose desired release or safe-mode request changed after `since_ms`.
    pub async fn desired_changed_since(&self, since_ms: i64) -> Result<Vec<String>, DbError> {
        let rows = sqlx::query("SELECT id FROM devices WHERE desired_updated_ms > $1")
            .bind(since_ms)
            .fetch_all(&self.pool)
            .await
            .map_err(q("reading what devices are told"))?;
        rows.iter()
            .map(|r| {
                sqlx::Row::try_get::<String, _>(r, "id").map_err(q("reading what devices are told"))
            })
            .collect()
    }
}

impl Fenced {
    /// Sets what devices should run: `(device, Some((release, digest)))`, or `None` to hold.
    /// A new release is stamped with the time it was set (`desired_since_ms`).
    pub async fn set_desired(
        &mut self,
        changes: &[(String, Option<(String, String)>)],
    ) -> Result<(), DbError> {
        let now = now_ms();
        for (id, target) in changes {
            let (rel, dig) = match target {
                Some((r, d)) => (Some(r.clone()), Some(d.clone())),
                None => (None, None),
            };
            // The stamp moves only when the release itself changes (not its digest alone).
            sqlx::query(
                "UPDATE devices SET desired_since_ms = CASE \
                   WHEN $1 IS NULL THEN NULL \
                   WHEN desired_release IS NOT NULL AND desired_release = $1 THEN desired_since_ms \
                   ELSE $4 END, \
                 desired_release = $1, desired_digest = $2, desired_updated_ms = $4, changed_ms = $4 \
                 WHERE id = $3",
            )
            .bind(rel)
            .bind(dig)
            .bind(id)
            .bind(now)
            .execute(&mut *self.tx)
            .await
            .map_err(q("setting desired releases"))?;
        }
        Ok(())
    }
}
