//! Who is looking at the dashboard: the session cookie, login and logout, and the CSRF token
//! every form carries.

use axum::http::{header, HeaderMap};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::db::{DbError, User};
use crate::service::AppState;

/// The cookie's name.
pub const COOKIE: &str = "fleet_session";

/// The login form's CSRF cookie (double submit: the form carries the same value). A page of
/// another site can post the login form but can neither read nor set this cookie, so it
/// cannot log a browser into an account of its choosing.
pub const LOGIN_COOKIE: &str = "fleet_login";

/// The cookie `name` of the request.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The session token in the request's cookies.
pub fn session_token(headers: &HeaderMap) -> Option<String> {
    cookie(headers, COOKIE)
}

/// Whether a submitted token equals the expected one, in constant time (the comparison must
/// not tell an attacker how many leading characters were right).
pub fn tokens_match(expected: &str, given: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// A logged-in viewer of the dashboard.
#[derive(Debug, Clone)]
pub struct Session {
    /// The user.
    pub user: User,
    /// Their forms' CSRF token.
    pub csrf: String,
    /// Key that signs the messages this session's forms leave for its next page.
    flash_key: [u8; 32],
}

impl Session {
    /// The signature of a flash message for this session.
    pub fn sign_flash(&self, msg: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.flash_key) else {
            return String::new();
        };
        mac.update(msg.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// Whether `sig` is this session's signature of `msg` (constant time).
    pub fn flash_signed(&self, msg: &str, sig: &str) -> bool {
        tokens_match(&self.sign_flash(msg), sig)
    }
}

/// The session of the request, if it has a live one.
pub async fn current(state: &AppState, headers: &HeaderMap) -> Result<Option<Session>, DbError> {
    let Some(token) = session_token(headers) else {
        return Ok(None);
    };
    Ok(state.db.session_user(&token).await?.map(|user| Session {
        user,
        csrf: csrf_for(&token),
        flash_key: flash_key_for(&token),
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

fn flash_key_for(session_token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"fleet-dashboard-flash\0");
    h.update(session_token.as_bytes());
    h.finalize().into()
}

/// `Set-Cookie` for a new session (`secure` under TLS: the browser then sends it over HTTPS
/// only).
pub fn set_cookie(token: &str, max_age_secs: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}")
}

/// `Set-Cookie` for the login form's CSRF cookie.
pub fn set_login_cookie(value: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{LOGIN_COOKIE}={value}; Path=/login; HttpOnly; SameSite=Strict; Max-Age=3600{secure}")
}

/// `Set-Cookie` that removes the login form's CSRF cookie.
pub fn clear_login_cookie() -> String {
    format!("{LOGIN_COOKIE}=; Path=/login; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Where to go after a form: a local path only, else `/`. Only visible ASCII other than `\`
/// is let through, and it must start with one `/`: browsers drop tabs and line breaks from a
/// URL and read `\` as `/`, so `/\t/evil.example` or `/\\evil.example` would become
/// `//evil.example`, another site.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            n.to_owned()
        }
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
        for bad in [
            "/\t/evil.example",
            "/\n/evil.example",
            "/\r/evil.example",
            "/ /evil.example",
            "/\\evil.example",
            "/\u{3000}/evil.example",
            "evil.example",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert!(tokens_match("abc", "abc"));
        assert!(!tokens_match("abc", "abd") && !tokens_match("abc", "ab") && !tokens_match("", ""));
    }
}
