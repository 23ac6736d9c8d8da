//! What each device should run: the reconciler's desired releases, and operators' overrides
//! (a pinned release, a safe-mode request).

use fleet_config::protocol::ReleaseId;

use crate::db::{q, Db, DbError, Fenced};

impl Db {
    /// Pins a device to a release (or unpins with `None`); false if there is no such device.
    pub async fn pin_device(&self, id: &str, release: Option<&ReleaseId>) -> Result<bool, DbError> {
        let r = sqlx::query("UPDATE devices SET pinned_release = $1 WHERE id = $2")
            .bind(release.map(|r| r.as_str().to_owned()))
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q("pinning a device"))?;
        Ok(r.rows_affected() > 0)
    }

    /// Asks a device to enter (or leave) safe mode; false if there is no such device.
    pub async fn request_safe_mode(&self, id: &str, on: bool) -> Result<bool, DbError> {
        let r = sqlx::query("UPDATE devices SET safe_mode_requested = $1 WHERE id = $2")
            .bind(i64::from(on))
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q("requesting safe mode"))?;
        Ok(r.rows_affected() > 0)
    }
}

impl Fenced {
    /// Sets what devices should run: `(device, Some((release, digest)))`, or `None` to hold.
    pub async fn set_desired(
        &mut self,
        changes: &[(String, Option<(String, String)>)],
    ) -> Result<(), DbError> {
        for (id, target) in changes {
            let (rel, dig) = match target {
                Some((r, d)) => (Some(r.clone()), Some(d.clone())),
                None => (None, None),
            };
            sqlx::query(
                "UPDATE devices SET desired_release = $1, desired_digest = $2 WHERE id = $3",
            )
            .bind(rel)
            .bind(dig)
            .bind(id)
            .execute(&mut *self.tx)
            .await
            .map_err(q("setting desired releases"))?;
        }
        Ok(())
    }
}
