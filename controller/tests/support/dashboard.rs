//! Logging into the dashboard over plain HTTP, as a browser would without JavaScript: the
//! session cookie to send with later requests.

/// Logs `user` in through the login form; returns `fleet_session=…` for a `Cookie` header.
pub async fn session_cookie(base: &str, user: &str, password: &str) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = http
        .post(format!("{base}/login"))
        .form(&[("name", user), ("password", password)])
        .send()
        .await
        .expect("login request");
    assert_eq!(r.status().as_u16(), 303, "{user} cannot log in");
    let set_cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    set_cookie
        .split(';')
        .next()
        .filter(|c| c.starts_with("fleet_session="))
        .expect("a session cookie")
        .to_owned()
}
