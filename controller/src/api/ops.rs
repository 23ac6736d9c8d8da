//! The operators' routes: fleet status, devices, the emergency stop, the audit log, releases.
//! Acts (approve, revoke, safe mode, stop, resume) are the service's ([`crate::service`]).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use fleet_config::protocol::DeviceEvent;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::auth::require;
use super::body::{ApiPath, ApiQuery, JsonBody, MaybeJsonBody};
use super::error::ApiError;
use super::AppState;
use crate::db::{
    now_ms, AuditEntry, DeviceRow, DeviceState, EmergencyStop, Pairing, ReleaseRow, Role,
};
use crate::service;

/// A device with its derived state, as listings show it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DeviceView {
    /// The stored row.
    #[serde(flatten)]
    pub row: DeviceRow,
    /// Derived state.
    pub state: DeviceState,
}

fn view(state: &AppState, row: DeviceRow, now: i64) -> DeviceView {
    let s = row.state(now, state.offline_after_ms());
    DeviceView { row, state: s }
}

/// A rollout still being driven, as the status lists it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ActiveRollout {
    /// Its id.
    pub id: String,
    /// The release it rolls out.
    pub release: String,
    /// `running`, `paused` or `halted`.
    pub state: String,
}

/// The fleet at a glance (`GET /api/v1/status`).
#[derive(Debug, Serialize, JsonSchema)]
pub struct StatusView {
    /// Devices enrolled.
    pub devices: u64,
    /// Devices by state (every state, zero included).
    pub by_state: BTreeMap<String, u64>,
    /// Share of the devices (revoked ones left out) that are online and healthy, 0–100.
    pub healthy_percent: f64,
    /// Devices by the release they run (`none` for none yet).
    pub versions: BTreeMap<String, u64>,
    /// The emergency stop, while it holds.
    pub emergency_stop: Option<EmergencyStop>,
    /// Rollouts still being driven.
    pub active_rollouts: Vec<ActiveRollout>,
    /// Pairing codes waiting for an operator.
    pub pending_pairings: Vec<Pairing>,
    /// This replica leads (watches Git and drives rollouts).
    pub leader: bool,
    /// This replica's id (as the lease names its holder).
    pub replica: String,
    /// The epoch of the lease this replica holds, while it leads.
    pub leader_epoch: Option<i64>,
    /// The leader lease as stored.
    pub lease: LeaseView,
}

/// `GET /api/v1/status`.
pub async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<StatusView>, ApiError> {
    require(&state, &headers, Role::Viewer).await?;
    let now = now_ms();
    let devices = state.db.devices().await?;
    let summary = crate::summary::summarize(&devices, now, state.offline_after_ms());
    let by_state: BTreeMap<String, u64> = DeviceState::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), summary.count(*s)))
        .collect();
    let versions: BTreeMap<String, u64> = summary.versions.into_iter().collect();
    let active_rollouts = state
        .db
        .active_rollouts()
        .await?
        .into_iter()
        .map(|r| ActiveRollout {
            id: r.id,
            release: r.release,
            state: r.state,
        })
        .collect();
    Ok(Json(StatusView {
        devices: summary.total,
        by_state,
        healthy_percent: summary.healthy_percent,
        versions,
        emergency_stop: state.db.emergency_stop().await?,
        active_rollouts,
        pending_pairings: state.db.pending_pairings(now).await?,
        leader: state.is_leader(),
        replica: state.leadership.replica().to_owned(),
        leader_epoch: state.leadership.epoch(),
        lease: lease_view(&state).await?,
    }))
}

/// The leader lease as stored.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LeaseView {
    /// The replica holding (or last holding) it; empty before the first leader.
    pub holder: String,
    /// Changes of holder so far.
    pub epoch: i64,
    /// Milliseconds until it expires unless renewed (0: expired).
    pub expires_in_ms: i64,
    /// How long the holder has held it.
    pub held_for_ms: i64,
}

/// The leader lease as stored: who holds it, its epoch, and how long until it expires.
async fn lease_view(state: &AppState) -> Result<LeaseView, ApiError> {
    let l = state.db.lease().await?;
    Ok(LeaseView {
        expires_in_ms: (l.expires_ms - l.now_ms).max(0),
        held_for_ms: if l.holder.is_empty() {
            0
        } else {
            (l.now_ms - l.acquired_ms).max(0)
        },
        holder: l.holder,
        epoch: l.epoch,
    })
}

/// Filters and paging of the device list.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct DeviceQuery {
    /// Only devices in this state.
    pub state: Option<String>,
    /// At most this many devices (1–10,000; all when absent). With `state`, a page may hold
    /// fewer: the filter applies to the page.
    pub limit: Option<u32>,
    /// Only devices whose id sorts after this one (the last id of the previous page).
    pub after: Option<String>,
}

/// The header of a full page of devices naming the last id it looked at: the next page is
/// `?after=` that id. (With `?state=` a page may hold fewer devices, or none, and still not
/// be the last; without the header it is the last.)
pub const NEXT_AFTER: &str = "fleet-next-after";

/// A page of a list: the JSON, and where the next page starts if there is one.
pub struct Paged<T> {
    /// The id the next page starts after (`None`: this one is the last).
    pub next_after: Option<String>,
    /// The page.
    pub body: Json<T>,
}

impl<T: Serialize> axum::response::IntoResponse for Paged<T> {
    fn into_response(self) -> axum::response::Response {
        let mut resp = self.body.into_response();
        if let Some(v) = self
            .next_after
            .and_then(|a| axum::http::HeaderValue::from_str(&a).ok())
        {
            resp.headers_mut().insert(NEXT_AFTER, v);
        }
        resp
    }
}

impl<T: JsonSchema> crate::openapi::DescribeAnswer for Result<Paged<T>, ApiError> {
    fn describe(op: &mut crate::openapi::Operation<'_>) {
        <Result<Json<T>, ApiError> as crate::openapi::DescribeAnswer>::describe(op)
    }
}

/// `GET /api/v1/devices`.
pub async fn devices(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<DeviceQuery>,
) -> Result<Paged<Vec<DeviceView>>, ApiError> {
    require(&state, &headers, Role::Viewer).await?;
    let now = now_ms();
    let mut next_after = None;
    let rows = match (q.limit, &q.after) {
        (None, None) => state.db.devices().await?,
        (limit, after) => {
            let limit = match limit {
                Some(n @ 1..=10_000) => i64::from(n),
                Some(n) => {
                    return Err(ApiError::BadRequest(format!(
                        "`limit` must be between 1 and 10000, got {n}"
                    )))
                }
                None => 10_000,
            };
            let page = state.db.devices_page(after.as_deref(), limit).await?;
            if page.len() as i64 == limit {
                next_after = page.last().map(|d| d.id.clone());
            }
            page
        }
    };
    let list = rows
        .into_iter()
        .map(|d| view(&state, d, now))
        .filter(|v| q.state.as_deref().is_none_or(|s| v.state.as_str() == s))
        .collect();
    Ok(Paged {
        next_after,
        body: Json(list),
    })
}

/// One device with its newest events (`GET /api/v1/devices/{id}`).
#[derive(Debug, Serialize, JsonSchema)]
pub struct DeviceDetail {
    /// The device.
    pub device: DeviceView,
    /// Its newest events (at most 50), newest first.
    pub events: Vec<DeviceEvent>,
}

/// `GET /api/v1/devices/{id}`.
pub async fn device(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeviceDetail>, ApiError> {
    require(&state, &headers, Role::Viewer).await?;
    let row = state
        .db
        .device(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no device `{id}`")))?;
    let events = state
        .db
        .device_events(&id, 50)
        .await?
        .into_iter()
        .filter_map(|e| match serde_json::from_value::<DeviceEvent>(e) {
            Ok(e) => Some(e),
            Err(err) => {
                tracing::warn!(device = %id, error = %err, "a stored event does not read; left out");
                None
            }
        })
        .collect();
    Ok(Json(DeviceDetail {
        device: view(&state, row, now_ms()),
        events,
    }))
}

/// Body of approve.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ApproveBody {
    /// The pairing code the device shows.
    pub code: String,
    /// Approve even though a device of that id is enrolled or revoked: it gets a new token and
    /// the old one ends (a re-flashed device). Without it such a code is refused.
    #[serde(default)]
    pub replace: bool,
}

/// The answer to approve.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Approved {
    /// The device the code was for: it gets its token at its next claim.
    pub approved: String,
}

/// `POST /api/v1/devices/approve`.
pub async fn approve(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: JsonBody<ApproveBody>,
) -> Result<Json<Approved>, ApiError> {
    let user = require(&state, &headers, Role::Operator).await?;
    let now = now_ms();
    state
        .approve_limit
        .check(&user.name, now)
        .map_err(|s| ApiError::RateLimited {
            message: format!("too many approval attempts by `{}`; wait {s} s", user.name),
            retry_after: s,
        })?;
    let b = body.parse()?;
    let device_id = service::devices::approve(&state, &user.name, &b.code, b.replace, now).await?;
    Ok(Json(Approved {
        approved: device_id,
    }))
}

/// Body of the actions that take a reason (the body may be left out).
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct ReasonBody {
    /// Why (goes to the audit log).
    #[serde(default)]
    pub reason: String,
}

/// The answer to revoke.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DeviceRevoked {
    /// The device whose token no longer works.
    pub revoked: String,
}

/// `POST /api/v1/devices/{id}/revoke`.
pub async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    body: MaybeJsonBody<ReasonBody>,
) -> Result<Json<DeviceRevoked>, ApiError> {
    let user = require(&state, &headers, Role::Operator).await?;
    let r = body.parse()?;
    service::devices::revoke(&state, &user.name, &id, &r.reason).await?;
    Ok(Json(DeviceRevoked { revoked: id }))
}

/// Body of safe-mode.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct SafeModeBody {
    /// On or off.
    pub on: bool,
    /// Why.
    #[serde(default)]
    pub reason: String,
}

/// The answer to safe-mode.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SafeModeSet {
    /// The device.
    pub device: String,
    /// What it is asked now: enter (true) or leave (false) safe mode.
    pub safe_mode: bool,
}

/// `POST /api/v1/devices/{id}/safe-mode`.
pub async fn safe_mode(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    body: JsonBody<SafeModeBody>,
) -> Result<Json<SafeModeSet>, ApiError> {
    let user = require(&state, &headers, Role::Operator).await?;
    let b = body.parse()?;
    service::devices::safe_mode(&state, &user.name, &id, b.on, &b.reason).await?;
    Ok(Json(SafeModeSet {
        device: id,
        safe_mode: b.on,
    }))
}

/// Body of stop.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct StopBody {
    /// Why (required: on-call reads it at 3 a.m.).
    pub reason: String,
    /// Also send the active rollout's devices back to their last good release.
    #[serde(default)]
    pub rollback: bool,
}

/// The answer to stop.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Stopped {
    /// The stop that holds now.
    pub emergency_stop: Option<EmergencyStop>,
    /// False if it was set already (the first reason stands).
    pub newly_set: bool,
}

/// `POST /api/v1/stop`.
pub async fn stop(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: JsonBody<StopBody>,
) -> Result<Json<Stopped>, ApiError> {
    let user = require(&state, &headers, Role::Operator).await?;
    let b = body.parse()?;
    let new = service::stop::stop(&state, &user.name, &b.reason, b.rollback).await?;
    Ok(Json(Stopped {
        emergency_stop: state.db.emergency_stop().await?,
        newly_set: new,
    }))
}

/// The answer to resume.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Resumed {
    /// Always null: no stop holds any more.
    pub emergency_stop: (),
    /// False if there was no stop to clear.
    pub was_set: bool,
}

/// `POST /api/v1/resume`.
pub async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: MaybeJsonBody<ReasonBody>,
) -> Result<Json<Resumed>, ApiError> {
    let user = require(&state, &headers, Role::Operator).await?;
    let r = body.parse()?;
    let was = service::stop::resume(&state, &user.name, &r.reason).await?;
    Ok(Json(Resumed {
        emergency_stop: (),
        was_set: was,
    }))
}

/// Paging of the audit log.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct LimitQuery {
    /// At most this many (default 100, at most 10,000).
    pub limit: Option<i64>,
}

/// `GET /api/v1/audit`.
pub async fn audit(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<LimitQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    require(&state, &headers, Role::Viewer).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    Ok(Json(state.db.audit_log(limit).await?))
}

/// `GET /api/v1/releases`.
pub async fn releases(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<LimitQuery>,
) -> Result<Json<Vec<ReleaseRow>>, ApiError> {
    require(&state, &headers, Role::Viewer).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    Ok(Json(state.db.releases(limit).await?))
}
