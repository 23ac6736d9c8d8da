//! The operators' routes: fleet status, devices, the emergency stop, the audit log, releases.
//! Acts (approve, revoke, safe mode, stop, resume) are the service's ([`crate::service`]).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::auth::require;
use super::body;
use super::error::ApiError;
use super::AppState;
use crate::db::{now_ms, DeviceRow, DeviceState, Role};
use crate::service;

/// A device with its derived state, as listings show it.
#[derive(Debug, Serialize)]
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

/// `GET /api/v1/status`.
pub async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require(&state, &headers, Role::Viewer).await?;
    let now = now_ms();
    let devices = state.db.devices().await?;
    let summary = crate::summary::summarize(&devices, now, state.offline_after_ms());
    let by_state: BTreeMap<&str, u64> = DeviceState::ALL
        .iter()
        .map(|s| (s.as_str(), summary.count(*s)))
        .collect();
    let versions: BTreeMap<String, u64> = summary.versions.into_iter().collect();
    let active: Vec<Value> = state
        .db
        .active_rollouts()
        .await?
        .into_iter()
        .map(|r| json!({"id": r.id, "release": r.release, "state": r.state}))
        .collect();
    Ok(Json(json!({
        "devices": summary.total,
        "by_state": by_state,
        "healthy_percent": summary.healthy_percent,
        "versions": versions,
        "emergency_stop": state.db.emergency_stop().await?,
        "active_rollouts": active,
        "pending_pairings": state.db.pending_pairings(now).await?,
        "leader": state.is_leader(),
        "replica": state.leadership.replica(),
        "leader_epoch": state.leadership.epoch(),
        "lease": lease_json(&state).await?,
    })))
}

/// The leader lease as stored: who holds it, its epoch, and how long until it expires.
async fn lease_json(state: &AppState) -> Result<Value, ApiError> {
    let l = state.db.lease().await?;
    Ok(json!({
        "holder": l.holder,
        "epoch": l.epoch,
        "expires_in_ms": (l.expires_ms - l.now_ms).max(0),
        "held_for_ms": if l.holder.is_empty() { 0 } else { (l.now_ms - l.acquired_ms).max(0) },
    }))
}

/// Filters of the device list.
#[derive(Debug, Deserialize)]
pub struct DeviceQuery {
    /// Only devices in this state.
    pub state: Option<String>,
}

/// `GET /api/v1/devices`.
pub async fn devices(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<DeviceQuery>,
) -> Result<Json<Vec<DeviceView>>, ApiError> {
    require(&state, &headers, Role::Viewer).await?;
    let now = now_ms();
    let list = state
        .db
        .devices()
        .await?
        .into_iter()
        .map(|d| view(&state, d, now))
        .filter(|v| q.state.as_deref().is_none_or(|s| v.state.as_str() == s))
        .collect();
    Ok(Json(list))
}

/// `GET /api/v1/devices/{id}`.
pub async fn device(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(&state, &headers, Role::Viewer).await?;
    let row = state
        .db
        .device(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no device `{id}`")))?;
    let events = state.db.device_events(&id, 50).await?;
    Ok(Json(
        json!({"device": view(&state, row, now_ms()), "events": events}),
    ))
}

/// Body of approve.
#[derive(Debug, Deserialize)]
pub struct ApproveBody {
    /// The pairing code the device shows.
    pub code: String,
    /// Approve even though a device of that id is enrolled or revoked: it gets a new token and
    /// the old one ends (a re-flashed device). Without it such a code is refused.
    #[serde(default)]
    pub replace: bool,
}

/// `POST /api/v1/devices/approve`.
pub async fn approve(
    State(state): State<AppState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let user = require(&state, &headers, Role::Operator).await?;
    let now = now_ms();
    state
        .approve_limit
        .check(&user.name, now)
        .map_err(|s| ApiError::RateLimited {
            message: format!("too many approval attempts by `{}`; wait {s} s", user.name),
            retry_after: s,
        })?;
    let b: ApproveBody = body::json(raw)?;
    let device_id = service::devices::approve(&state, &user.name, &b.code, b.replace, now).await?;
    Ok(Json(json!({"approved": device_id})))
}

/// Body of the actions that take a reason.
#[derive(Debug, Default, Deserialize)]
pub struct ReasonBody {
    /// Why (goes to the audit log).
    #[serde(default)]
    pub reason: String,
}

pub(super) fn reason_of(raw: Result<Bytes, BytesRejection>) -> Result<ReasonBody, ApiError> {
    match &raw {
        Ok(b) if b.is_empty() => Ok(ReasonBody::default()),
        _ => body::json(raw),
    }
}

/// `POST /api/v1/devices/{id}/revoke`.
pub async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let user = require(&state, &headers, Role::Operator).await?;
    let r = reason_of(raw)?;
    service::devices::revoke(&state, &user.name, &id, &r.reason).await?;
    Ok(Json(json!({"revoked": id})))
}

/// Body of safe-mode.
#[derive(Debug, Deserialize)]
pub struct SafeModeBody {
    /// On or off.
    pub on: bool,
    /// Why.
    #[serde(default)]
    pub reason: String,
}

/// `POST /api/v1/devices/{id}/safe-mode`.
pub async fn safe_mode(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let user = require(&state, &headers, Role::Operator).await?;
    let b: SafeModeBody = body::json(raw)?;
    service::devices::safe_mode(&state, &user.name, &id, b.on, &b.reason).await?;
    Ok(Json(json!({"device": id, "safe_mode": b.on})))
}

/// Body of stop.
#[derive(Debug, Deserialize)]
pub struct StopBody {
    /// Why (required: on-call reads it at 3 a.m.).
    pub reason: String,
    /// Also send the active rollout's devices back to their last good release.
    #[serde(default)]
    pub rollback: bool,
}

/// `POST /api/v1/stop`.
pub async fn stop(
    State(state): State<AppState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let user = require(&state, &headers, Role::Operator).await?;
    let b: StopBody = body::json(raw)?;
    let new = service::stop::stop(&state, &user.name, &b.reason, b.rollback).await?;
    Ok(Json(
        json!({"emergency_stop": state.db.emergency_stop().await?, "newly_set": new}),
    ))
}

/// `POST /api/v1/resume`.
pub async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let user = require(&state, &headers, Role::Operator).await?;
    let r = reason_of(raw)?;
    let was = service::stop::resume(&state, &user.name, &r.reason).await?;
    Ok(Json(json!({"emergency_stop": null, "was_set": was})))
}

/// Paging of the audit log.
#[derive(Debug, Deserialize)]
pub struct LimitQuery {
    /// At most this many (default 100, at most 10,000).
    pub limit: Option<i64>,
}

/// `GET /api/v1/audit`.
pub async fn audit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<LimitQuery>,
) -> Result<Json<Value>, ApiError> {
    require(&state, &headers, Role::Viewer).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    Ok(Json(json!(state.db.audit_log(limit).await?)))
}

/// `GET /api/v1/releases`.
pub async fn releases(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<LimitQuery>,
) -> Result<Json<Value>, ApiError> {
    require(&state, &headers, Role::Viewer).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    Ok(Json(json!(state.db.releases(limit).await?)))
}
