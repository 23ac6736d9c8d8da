//! The audit log: every change, with who, when and why.

use serde::Serialize;
use sqlx::Row;

use super::{now_ms, q, Db, DbError};

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct AuditEntry {
    /// Increasing id.
    pub id: i64,
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// Who: a user name, `controller` for automatic actions, `device:<id>` for enrollment.
    pub actor: String,
    /// What, e.g. `emergency_stop`, `rollout.pause`, `device.approve`.
    pub action: String,
    /// On what (a device, a rollout id, a release).
    pub target: String,
    /// Why, as given.
    pub reason: String,
    /// Anything else worth keeping.
    pub detail: String,
}

/// The statement that appends one entry, stamped now.
fn insert<'q>(
    actor: &'q str,
    action: &'q str,
    target: &'q str,
    reason: &'q str,
    detail: &'q str,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    sqlx::query(
        "INSERT INTO audit (at_ms, actor, action, target, reason, detail) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(now_ms())
    .bind(actor)
    .bind(action)
    .bind(target)
    .bind(reason)
    .bind(detail)
}

impl super::Fenced {
    /// Appends an entry in the leader's transaction.
    pub async fn audit(
        &mut self,
        actor: &str,
        action: &str,
        target: &str,
        reason: &str,
        detail: &str,
    ) -> Result<(), DbError> {
        insert(actor, action, target, reason, detail)
            .execute(&mut *self.tx)
            .await
            .map_err(q("writing the audit log"))?;
        Ok(())
    }
}

impl Db {
    /// Appends an entry.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        reason: &str,
        detail: &str,
    ) -> Result<(), DbError> {
        let _turn = self.write_turn().await;
        insert(actor, action, target, reason, detail)
            .execute(&self.pool)
            .await
            .map_err(q("writing the audit log"))?;
        Ok(())
    }

    /// The newest entries, newest first.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>, DbError> {
        let rows = sqlx::query(
            "SELECT id, at_ms, actor, action, target, reason, detail FROM audit ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading the audit log"))?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get("id").map_err(q("reading the audit log"))?,
                    at_ms: r.try_get("at_ms").map_err(q("reading the audit log"))?,
                    actor: r.try_get("actor").map_err(q("reading the audit log"))?,
                    action: r.try_get("action").map_err(q("reading the audit log"))?,
                    target: r.try_get("target").map_err(q("reading the audit log"))?,
                    reason: r.try_get("reason").map_err(q("reading the audit log"))?,
                    detail: r.try_get("detail").map_err(q("reading the audit log"))?,
                })
            })
            .collect()
    }
}
