//! Rollout routes: list and show; actions go through the service ([`crate::service::rollouts`]).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use schemars::JsonSchema;
use serde::Serialize;

use super::auth::require;
use super::body::{ApiPath, ApiQuery, MaybeJsonBody};
use super::error::ApiError;
use super::ops::{LimitQuery, ReasonBody};
use super::AppState;
use crate::db::{Role, RolloutRow};
use crate::rollout::{DeviceRecord, Policy, Rollout, State as RolloutState};
use crate::service::{self, rollouts::RolloutAction};

/// A rollout in the list: the stored row with the engine's state.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RolloutEntry {
    /// Id.
    pub id: String,
    /// Release it rolls out.
    pub release: String,
    /// Short state name.
    pub state: String,
    /// Still being driven (not completed, aborted or superseded).
    pub active: bool,
    /// The engine's state; null if the stored state does not read (the controller's log
    /// says why).
    pub data: Option<Rollout>,
    /// Why the stored state does not read, when it does not (the rollout is quarantined).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
    /// Created, ms since the epoch.
    pub created_ms: i64,
    /// Last changed, ms since the epoch.
    pub updated_ms: i64,
}

impl From<RolloutRow> for RolloutEntry {
    fn from(row: RolloutRow) -> Self {
        let mut unreadable = row.unreadable;
        let data = match unreadable {
            Some(_) => None,
            None => match crate::rollout::stored::decode(row.data) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(rollout = %row.id, error = %e, "stored rollout does not read");
                    unreadable = Some(e.to_string());
                    None
                }
            },
        };
        RolloutEntry {
            id: row.id,
            release: row.release,
            state: row.state,
            active: row.active,
            data,
            unreadable,
            created_ms: row.created_ms,
            updated_ms: row.updated_ms,
        }
    }
}

/// `GET /api/v1/rollouts`.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<LimitQuery>,
) -> Result<Json<Vec<RolloutEntry>>, ApiError> {
    require(&state, &headers, Role::Viewer).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let rows = state.db.rollouts(limit).await?;
    Ok(Json(rows.into_iter().map(RolloutEntry::from).collect()))
}

/// One wave of a rollout, counted.
#[derive(Debug, Serialize, JsonSchema)]
pub struct WaveCounts {
    /// Its place, from 0.
    pub index: usize,
    /// The policy's name for it.
    pub name: String,
    /// Devices in it.
    pub devices: usize,
    /// Not healthy on the release yet (or not started).
    pub pending: usize,
    /// Healthy on the release.
    pub healthy: usize,
    /// Failed.
    pub failed: usize,
    /// Offline when it started: not counted.
    pub deferred: usize,
}

/// A rollout with each wave's counts, as people read it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RolloutSummary {
    /// Id.
    pub id: String,
    /// The release (commit sha).
    pub release: String,
    /// Its tree digest.
    pub digest: String,
    /// Created, ms since the epoch.
    pub created_ms: u64,
    /// Short state name.
    pub state: String,
    /// The state with its details.
    pub detail: RolloutState,
    /// The rules it runs by.
    pub policy: Policy,
    /// Its waves.
    pub waves: Vec<WaveCounts>,
}

/// A rollout with its devices (`GET /api/v1/rollouts/{id}`).
#[derive(Debug, Serialize, JsonSchema)]
pub struct RolloutDetail {
    /// The rollout.
    #[serde(flatten)]
    pub summary: RolloutSummary,
    /// Every device of its plan, by id.
    pub devices: BTreeMap<String, DeviceRecord>,
}

/// A rollout with each wave's counts, as people read it.
pub fn summary(r: &Rollout) -> RolloutSummary {
    let waves = r
        .waves
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let (pending, healthy, failed, deferred) = r.wave_counts(i);
            WaveCounts {
                index: i,
                name: w.name.clone(),
                devices: w.devices.len(),
                pending,
                healthy,
                failed,
                deferred,
            }
        })
        .collect();
    RolloutSummary {
        id: r.id.clone(),
        release: r.release.clone(),
        digest: r.digest.clone(),
        created_ms: r.created_ms,
        state: r.state.name().to_owned(),
        detail: r.state.clone(),
        policy: r.policy.clone(),
        waves,
    }
}

/// `GET /api/v1/rollouts/{id}` (`active` for the current one).
pub async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RolloutDetail>, ApiError> {
    require(&state, &headers, Role::Viewer).await?;
    let row = if id == "active" {
        state.db.active_rollouts().await?.pop()
    } else {
        state.db.rollout(&id).await?
    };
    let row = row.ok_or_else(|| ApiError::NotFound(format!("no rollout `{id}`")))?;
    let r: Rollout = crate::rollout::stored::decode(row.data)
        .map_err(|e| ApiError::Conflict(format!("stored rollout `{id}` is unreadable: {e}")))?;
    Ok(Json(RolloutDetail {
        summary: summary(&r),
        devices: r.devices,
    }))
}

/// `POST /api/v1/rollouts/{id}/{action}`: pause, resume, abort, promote.
pub async fn act(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath((id, action)): ApiPath<(String, String)>,
    body: MaybeJsonBody<ReasonBody>,
) -> Result<Json<RolloutSummary>, ApiError> {
    let user = require(&state, &headers, Role::Operator).await?;
    let Some(action) = RolloutAction::parse(&action) else {
        return Err(ApiError::NotFound(format!(
            "unknown action `{action}`: pause, resume, abort or promote"
        )));
    };
    let reason = body.parse()?.reason;
    let r = service::rollouts::act(&state, &id, action, &user.name, &reason).await?;
    Ok(Json(summary(&r)))
}
