//! Rollout routes: list and show; actions go through the service ([`crate::service::rollouts`]).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::auth::require;
use super::error::ApiError;
use super::ops::LimitQuery;
use super::AppState;
use crate::db::Role;
use crate::rollout::Rollout;
use crate::service::{self, rollouts::RolloutAction};

/// `GET /api/v1/rollouts`.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<LimitQuery>,
) -> Result<Json<Value>, ApiError> {
    require(&state, &headers, Role::Viewer).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    Ok(Json(json!(state.db.rollouts(limit).await?)))
}

/// A rollout with each wave's counts, as people read it.
pub fn summary(r: &Rollout) -> Value {
    let waves: Vec<Value> = r
        .waves
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let (pending, healthy, failed, deferred) = r.wave_counts(i);
            json!({"index": i, "name": w.name, "devices": w.devices.len(),
                   "pending": pending, "healthy": healthy, "failed": failed, "deferred": deferred})
        })
        .collect();
    json!({
        "id": r.id, "release": r.release, "digest": r.digest, "created_ms": r.created_ms,
        "state": r.state.name(), "detail": r.state, "policy": r.policy, "waves": waves,
    })
}

/// `GET /api/v1/rollouts/{id}` (`active` for the current one).
pub async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(&state, &headers, Role::Viewer).await?;
    let row = if id == "active" {
        state.db.active_rollouts().await?.pop()
    } else {
        state.db.rollout(&id).await?
    };
    let row = row.ok_or_else(|| ApiError::NotFound(format!("no rollout `{id}`")))?;
    let r: Rollout = serde_json::from_value(row.data)
        .map_err(|e| ApiError::Conflict(format!("stored rollout `{id}` is unreadable: {e}")))?;
    let mut out = summary(&r);
    out["devices"] = json!(r.devices);
    Ok(Json(out))
}

/// `POST /api/v1/rollouts/{id}/{action}`: pause, resume, abort, promote.
pub async fn act(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let user = require(&state, &headers, Role::Operator).await?;
    let Some(action) = RolloutAction::parse(&action) else {
        return Err(ApiError::NotFound(format!(
            "unknown action `{action}`: pause, resume, abort or promote"
        )));
    };
    let reason = super::ops::reason_of(raw)?.reason;
    let r = service::rollouts::act(&state, &id, action, &user.name, &reason).await?;
    Ok(Json(summary(&r)))
}
