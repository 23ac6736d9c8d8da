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

/// Devices named in one statement of [`Fenced::set_desired`]: far below both engines' limits
/// on bound parameters, and one statement a batch instead of one a device.
const IDS_PER_STATEMENT: usize = 500;

/// What a device is told: `(release, digest)`, or `None` to hold.
type Target = Option<(String, String)>;

/// Devices told one target.
type Group<'a> = (Option<&'a (String, String)>, Vec<&'a str>);

/// `changes` grouped by target, in the order each target first appears.
fn by_target(changes: &[(String, Target)]) -> Vec<Group<'_>> {
    let mut groups: Vec<Group<'_>> = Vec::new();
    for (id, target) in changes {
        let target = target.as_ref();
        match groups.iter_mut().find(|(t, _)| *t == target) {
            Some((_, ids)) => ids.push(id),
            None => groups.push((target, vec![id])),
        }
    }
    groups
}

impl Fenced {
    /// Sets what devices should run: `(device, Some((release, digest)))`, or `None` to hold.
    /// A new release is stamped with the time it was set (`desired_since_ms`). Devices told
    /// the same target share one statement (a wave's devices are told one release), so a
    /// batch holds SQLite's writer for a few statements, not one per device.
    pub async fn set_desired(&mut self, changes: &[(String, Target)]) -> Result<(), DbError> {
        let now = now_ms();
        for (target, ids) in by_target(changes) {
            let (rel, dig) = match target {
                Some((r, d)) => (Some(r.as_str()), Some(d.as_str())),
                None => (None, None),
            };
            for chunk in ids.chunks(IDS_PER_STATEMENT) {
                let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 4)).collect();
                // The stamp moves only when the release itself changes (not its digest alone).
                let sql = format!(
                    "UPDATE devices SET desired_since_ms = CASE \
                       WHEN $1 IS NULL THEN NULL \
                       WHEN desired_release IS NOT NULL AND desired_release = $1 THEN desired_since_ms \
                       ELSE $3 END, \
                     desired_release = $1, desired_digest = $2, desired_updated_ms = $3, changed_ms = $3 \
                     WHERE id IN ({})",
                    list.join(", ")
                );
                let mut query = sqlx::query(&sql).bind(rel).bind(dig).bind(now);
                for id in chunk {
                    query = query.bind(*id);
                }
                query
                    .execute(&mut *self.tx)
                    .await
                    .map_err(q("setting desired releases"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::by_target;

    #[test]
    fn changes_are_grouped_by_target_in_first_seen_order() {
        let a = Some(("a".to_owned(), "da".to_owned()));
        let b = Some(("b".to_owned(), "db".to_owned()));
        let changes = vec![
            ("d1".to_owned(), a.clone()),
            ("d2".to_owned(), None),
            ("d3".to_owned(), a.clone()),
            ("d4".to_owned(), b.clone()),
            ("d5".to_owned(), None),
        ];
        let groups = by_target(&changes);
        assert_eq!(
            groups,
            vec![
                (a.as_ref(), vec!["d1", "d3"]),
                (None, vec!["d2", "d5"]),
                (b.as_ref(), vec!["d4"]),
            ]
        );
    }
}
