//! Bootstrap tokens for operators and admins: list (operator), create (admin), revoke
//! (operator: a leaked token must be stoppable by whoever is on call).

use std::collections::BTreeMap;

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
use crate::db::{now_ms, BootstrapToken, NewBootstrapToken, Role};
use crate::service;

/// A bootstrap token in a listing, with whether it can enroll now.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TokenView {
    /// What is stored.
    #[serde(flatten)]
    pub token: BootstrapToken,
    /// `live`, `revoked`, `expired` or `used_up`.
    #[schemars(regex(pattern = r"^(live|revoked|expired|used_up)$"))]
    pub status: &'static str,
}

fn view(token: BootstrapToken, now: i64) -> TokenView {
    let status = match token.unusable(now) {
        None => "live",
        Some(crate::db::Unusable::Revoked(_)) => "revoked",
        Some(crate::db::Unusable::Expired(_)) => "expired",
        Some(crate::db::Unusable::UsedUp(_)) => "used_up",
    };
    TokenView { token, status }
}

/// `GET /api/v1/bootstrap-tokens`.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    require(&state, &headers, Role::Operator).await?;
    let now = now_ms();
    Ok(Json(
        state
            .db
            .bootstrap_tokens()
            .await?
            .into_iter()
            .map(|t| view(t, now))
            .collect(),
    ))
}

/// Body of create.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// What the token is for (shown in listings).
    #[serde(default)]
    pub note: String,
    /// How long it lives (`24h`, `7d`; default 24h, at most 90d).
    pub expires_in: Option<String>,
    /// At most this many enrollments.
    pub max_uses: Option<i64>,
    /// Only devices whose labels in devices.yaml match all of these.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
}

/// The answer to create: the secret, shown this once.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Created {
    /// The token to put on devices.
    pub token: String,
    /// What is stored.
    #[serde(flatten)]
    pub stored: BootstrapToken,
}

/// `POST /api/v1/bootstrap-tokens`.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: JsonBody<CreateBody>,
) -> Result<Json<Created>, ApiError> {
    let user = require(&state, &headers, Role::Admin).await?;
    let b = body.parse()?;
    let ttl_ms = match &b.expires_in {
        None => service::bootstrap::DEFAULT_TTL_MS,
        Some(text) => fleet_config::units::parse_duration(text)
            .map_err(|e| ApiError::BadRequest(format!("`expires_in`: {e}")))?
            .as_millis()
            .try_into()
            .unwrap_or(i64::MAX),
    };
    let new = NewBootstrapToken {
        note: b.note,
        ttl_ms,
        max_uses: b.max_uses,
        selector: b.selector,
    };
    let (token, stored) = service::bootstrap::create(&state, &user.name, &new, now_ms()).await?;
    Ok(Json(Created { token, stored }))
}

/// The answer to revoke.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Revoked {
    /// The token's id.
    pub revoked: String,
    /// False if it was revoked already.
    pub was_live: bool,
}

/// `POST /api/v1/bootstrap-tokens/{id}/revoke`.
pub async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    body: MaybeJsonBody<ReasonBody>,
) -> Result<Json<Revoked>, ApiError> {
    let user = require(&state, &headers, Role::Operator).await?;
    let r = body.parse()?;
    let was_live =
        service::bootstrap::revoke_in(&state.db, &user.name, &id, &r.reason, now_ms()).await?;
    Ok(Json(Revoked {
        revoked: id,
        was_live,
    }))
}
