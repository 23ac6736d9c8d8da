//! Who is asking: bearer tokens of users (API), devices and bootstrap provisioning.

use axum::http::HeaderMap;

use super::error::ApiError;
use super::AppState;
use crate::db::{Role, User};

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The user behind the request, who must have at least `role`.
pub async fn require(state: &AppState, headers: &HeaderMap, role: Role) -> Result<User, ApiError> {
    let token = bearer(headers).ok_or_else(|| {
        ApiError::Unauthorized("missing `Authorization: Bearer TOKEN` header".into())
    })?;
    let user = state
        .db
        .user_for_token(token)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown or revoked API token".into()))?;
    if user.role < role {
        return Err(ApiError::Forbidden(format!(
            "user `{}` is {}; this needs {role} or more",
            user.name, user.role
        )));
    }
    Ok(user)
}
