//! Pinning a device to a release (an operator's override: left out of rollouts until
//! unpinned). The act and its audit entry are the service's ([`crate::service::devices`]).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::auth::require;
use super::body::{ApiPath, JsonBody, MaybeJsonBody};
use super::error::ApiError;
use super::ops::ReasonBody;
use super::AppState;
use crate::db::Role;
use crate::service;

/// Body of pin.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PinBody {
    /// The release: its commit sha, or a unique prefix of at least 7 hex digits.
    pub release: String,
    /// Why (required: whoever finds the device pinned reads it).
    pub reason: String,
}

/// Answer of pin and unpin.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PinAnswer {
    /// The device.
    pub device: String,
    /// The release it is pinned to now (`null`: not pinned).
    pub pinned: Option<String>,
    /// Whether this request changed anything (unpin of a device not pinned: false).
    pub changed: bool,
}

/// `POST /api/v1/devices/{id}/pin`.
pub async fn pin(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    body: JsonBody<PinBody>,
) -> Result<Json<PinAnswer>, ApiError> {
    let user = require(&state, &headers, Role::Operator).await?;
    let b = body.parse()?;
    let release = service::devices::pin(&state, &user.name, &id, &b.release, &b.reason).await?;
    Ok(Json(PinAnswer {
        device: id,
        pinned: Some(release.as_str().to_owned()),
        changed: true,
    }))
}

/// `POST /api/v1/devices/{id}/unpin`.
pub async fn unpin(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    body: MaybeJsonBody<ReasonBody>,
) -> Result<Json<PinAnswer>, ApiError> {
    let user = require(&state, &headers, Role::Operator).await?;
    let r = body.parse()?;
    let changed = service::devices::unpin(&state, &user.name, &id, &r.reason).await?;
    Ok(Json(PinAnswer {
        device: id,
        pinned: None,
        changed,
    }))
}
