//! Who is looking at the dashboard: the session cookie, login and logout, and the CSRF token
//! every form carries.

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};

use crate::db::{DbError, User};
use crate::service::AppState;

/// The cookie's name.
pub const COOKIE: &str = "fleet_session";

/// The session token in the request's cookies.
pub fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// A logged-in viewer of the dashboard.
#[derive(Debug, Clone)]
pub struct Session {
    /// The user.
    pub user: User,
    /// Their forms' CSRF token.
    pub csrf: String,
}

/// The session of the request, if it has a live one.
pub async fn current(state: &AppState, headers: &HeaderMap) -> Result<Option<Session>, DbError> {
    let Some(token) = session_token(headers) else {
        return Ok(None);
    };
    Ok(state.db.session_user(&token).await?.map(|user| Session {
        user,
        csrf: csrf_for(&token),
    }))
}

/// The CSRF token of a session: derived from its secret, so a page of another site cannot
/// know it (and the cookie is `SameSite=Strict` besides).
pub fn csrf_for(session_token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"fleet-dashboard-csrf\0");
    h.update(session_token.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(token: &str, max_age_secs: i64) -> String {
    format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}")
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Where to go after a form: a local path only (no `//host`, no scheme), else `/`.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_owned(),
        _ => "/".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn finds_the_session_among_other_cookies() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; fleet_session=fleetsess_x ; b=2"),
        );
        assert_eq!(session_token(&h).as_deref(), Some("fleetsess_x"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("fleet_session="));
        assert_eq!(session_token(&h), None);
    }

    #[test]
    fn csrf_differs_per_session_and_next_stays_local() {
        assert_ne!(csrf_for("a"), csrf_for("b"));
        assert_eq!(csrf_for("a").len(), 32);
        assert_eq!(
            safe_next(Some("/devices?state=failed")),
            "/devices?state=failed"
        );
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(None), "/");
    }
}
