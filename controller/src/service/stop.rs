//! The emergency stop: set it (optionally with rollback) and clear it, as an operator; the
//! live snapshot is refreshed at once so the next page shows it.

use super::{AppState, ServiceError};
use crate::db::{now_ms, EmergencyStop};

/// Sets the emergency stop as `actor` (a blank `reason` is refused); true if it was not set
/// before. With `rollback`, the active rollout's devices go back to their previous release.
pub async fn stop(
    state: &AppState,
    actor: &str,
    reason: &str,
    rollback: bool,
) -> Result<bool, ServiceError> {
    if reason.trim().is_empty() {
        return Err(ServiceError::ReasonRequired);
    }
    let stop = EmergencyStop {
        actor: actor.to_owned(),
        reason: reason.trim().to_owned(),
        at_ms: now_ms(),
        rollback,
    };
    let new = crate::engine::emergency_stop(state, &stop).await?;
    state.waits.wake_all();
    super::live::refresh(state).await;
    Ok(new)
}

/// Clears the emergency stop as `actor` (audited only if it was set); true if it was set.
/// Clearing a stop the fleet-wide gate set disarms that gate until the fleet is back under its
/// limit: otherwise it would trip again at once and no fix could reach the fleet.
pub async fn resume(state: &AppState, actor: &str, reason: &str) -> Result<bool, ServiceError> {
    let automatic = state
        .db
        .emergency_stop()
        .await?
        .is_some_and(|s| s.actor == "controller");
    if automatic {
        state.db.set_fleet_gate_disarmed(true).await?;
    }
    let was = state.db.clear_emergency_stop().await?;
    if was {
        state
            .db
            .audit(actor, "emergency_stop.resume", "fleet", reason, "")
            .await?;
        tracing::warn!(%actor, "emergency stop cleared");
    }
    state.reconcile.notify_one();
    state.waits.wake_all();
    super::live::refresh(state).await;
    Ok(was)
}
