//! Keeps the live snapshot fresh: one task recomputes it every second while somebody watches,
//! and operators' acts refresh it at once. Also prunes old telemetry samples once an hour.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::db::{now_ms, DbError};
use crate::snapshot::{live_values, newest_rollout, states_of, Snapshot};
use crate::summary::summarize;

/// How often the snapshot is recomputed while pages are open.
pub const TICK: Duration = Duration::from_secs(1);

async fn snapshot(state: &AppState) -> Result<Snapshot, DbError> {
    let now = now_ms();
    let rows = state.rows.rows(&state.db).await?;
    let off = state.offline_after_ms();
    let summary = summarize(&rows, now, off);
    let devices = states_of(&rows, now, off);
    let rollout = newest_rollout(&state.db.active_rollouts().await?);
    Ok(Snapshot {
        live: live_values(&summary, rollout.as_ref(), &devices),
        stop: state.db.emergency_stop().await?,
        devices,
    })
}

/// Recomputes the snapshot now if somebody watches (after a stop, a resume or a rollout
/// action, so the next page never starts from the state before it); forgets it otherwise, so
/// a page opened later never starts from an old one.
pub async fn refresh(state: &AppState) {
    state.rows.forget().await;
    recompute(state).await;
}

/// Recomputes the snapshot if somebody watches, from rows at most a second old.
async fn recompute(state: &AppState) {
    if !state.live.watched() {
        state.live.forget();
        return;
    }
    match snapshot(state).await {
        Ok(s) => state.live.publish(s),
        Err(e) => tracing::warn!(error = %e, "dashboard: cannot read the fleet"),
    }
}

/// The snapshot task: runs until `shutdown`, then ends every open event stream. Also prunes
/// old telemetry samples once an hour.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune = 0i64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        recompute(&state).await;
        let now = now_ms();
        if now - last_prune > 3_600_000 {
            last_prune = now;
            if let Err(e) = state.db.prune_telemetry(now).await {
                tracing::warn!(error = %e, "cannot prune old telemetry samples");
            }
        }
    }
    state.live.close();
}
