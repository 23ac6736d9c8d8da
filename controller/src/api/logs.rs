//! Devices' logs on request: ask a device for a fresh tail (operators) and read the newest
//! received (viewers: the viewer role reads everything and changes nothing, and reading a tail
//! an operator fetched changes nothing). The act, its audit entry and the views are the
//! service's ([`crate::service::logs`]).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use schemars::JsonSchema;
use serde::Deserialize;

use super::auth::require;
use super::body::{ApiPath, MaybeJsonBody};
use super::error::ApiError;
use super::AppState;
use crate::db::Role;
use crate::service;
use crate::service::logs::{DeviceLogs, LogsRequested};

/// Body of a log request (the body may be left out: 100 lines of every source).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsBody {
    /// Lines per source, 1 to 1,000 (default 100).
    pub lines: Option<u32>,
    /// Only these sources: `agent` (the agent's own log), a stack, a service or
    /// `stack/service`; at most 16. Empty or absent: the agent and every container.
    #[serde(default)]
    pub services: Vec<String>,
}

/// `POST /api/v1/devices/{id}/logs`.
pub async fn request(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    body: MaybeJsonBody<LogsBody>,
) -> Result<Json<LogsRequested>, ApiError> {
    let user = require(&state, &headers, Role::Operator).await?;
    let b = body.parse()?;
    let asked = service::logs::request(&state, &user.name, &id, b.lines, &b.services).await?;
    Ok(Json(asked))
}

/// `GET /api/v1/devices/{id}/logs`.
pub async fn latest(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeviceLogs>, ApiError> {
    require(&state, &headers, Role::Viewer).await?;
    Ok(Json(service::logs::latest(&state, &id).await?))
}
