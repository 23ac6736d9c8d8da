//! Logging into the dashboard over plain HTTP, as a browser would without JavaScript: the
//! session cookie to send with later requests.

/// Logs `user` in through the login form; returns `fleet_session=…` for a `Cookie` header.
pub async fn session_cookie(base: &str, user: &str, password: &str) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    session_cookie_with(&http, base, user, password).await
}

/// As [`session_cookie`], with `http` (which must not follow redirects; e.g. one that trusts a
/// lab CA).
pub async fn session_cookie_with(
    http: &reqwest::Client,
    base: &str,
    user: &str,
    password: &str,
) -> String {
    let (csrf, login_cookie) = login_form(http, base).await;
    let r = http
        .post(format!("{base}/login"))
        .header("cookie", login_cookie)
        .form(&[("name", user), ("password", password), ("csrf", &csrf)])
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

/// Loads the login form as a browser does: its CSRF value and the `fleet_login=…` cookie that
/// must come back with it.
pub async fn login_form(http: &reqwest::Client, base: &str) -> (String, String) {
    let form = http
        .get(format!("{base}/login"))
        .send()
        .await
        .expect("login page");
    let cookie = form
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|c| c.starts_with("fleet_login="))
        .expect("the login form sets its CSRF cookie")
        .to_owned();
    let page = form.text().await.expect("login page");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the login form carries its CSRF value")
        .to_owned();
    (csrf, cookie)
}
