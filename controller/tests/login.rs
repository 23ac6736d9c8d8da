//! Dashboard login, tried as an attacker would: a lockout dodged with spaces around the name,
//! user names told apart by how long a wrong password takes, forms posted from another site
//! (login and logout), words put on an operator's page by a crafted link, and `next=` sending
//! a logged-in browser to another site. Plain HTTP, as a browser without JavaScript.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use support::{test_config, TestController};

const PASSWORD: &str = "a long test password";

async fn start() -> (tempfile::TempDir, TestController) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("fleet.db").display()
    );
    let c = TestController::start(test_config(dir.path(), &url, None)).await;
    (dir, c)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// The value of `name="NAME" value="…"` in a page.
fn hidden(page: &str, name: &str) -> Option<String> {
    page.split(&format!("name=\"{name}\" value=\""))
        .nth(1)
        .and_then(|s| s.split('"').next())
        .map(str::to_owned)
}

/// `NAME=VALUE` of a `Set-Cookie` header named `name`.
fn cookie_of(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|c| c.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

/// Posts the login form as a browser does: it loads the form first (which may set a cookie and
/// carry a hidden token), then submits it.
async fn login(c: &TestController, name: &str, password: &str, next: &str) -> reqwest::Response {
    let h = http();
    let form = h.get(c.url("/login")).send().await.expect("login page");
    let cookie = cookie_of(&form, "fleet_login");
    let page = form.text().await.expect("page");
    let csrf = hidden(&page, "csrf").unwrap_or_default();
    let mut req = h.post(c.url("/login")).form(&[
        ("name", name),
        ("password", password),
        ("next", next),
        ("csrf", &csrf),
    ]);
    if let Some(k) = cookie {
        req = req.header("cookie", k);
    }
    req.send().await.expect("login")
}

async fn session(c: &TestController, name: &str) -> String {
    let r = login(c, name, PASSWORD, "/").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "{name} logs in");
    cookie_of(&r, "fleet_session").expect("a session cookie")
}

async fn get(c: &TestController, cookie: &str, path: &str) -> (StatusCode, String) {
    let r = http()
        .get(c.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .expect("get");
    (r.status(), r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn the_lockout_counts_the_name_that_is_looked_up() {
    let (_dir, c) = start().await;
    for _ in 0..10 {
        let r = login(&c, "operator", "wrong password", "/").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = login(&c, "operator", PASSWORD, "/").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "locked out");
    for dodge in ["   operator", "operator ", "\toperator"] {
        let r = login(&c, dodge, PASSWORD, "/").await;
        assert_eq!(
            r.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "{dodge:?} is the same user, so the same lockout"
        );
    }
    c.stop().await;
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
async fn a_wrong_password_takes_as_long_for_unknown_users() {
    let (_dir, c) = start().await;
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for round in 0..6 {
        for user in ["admin", "operator", "viewer"] {
            let t = Instant::now();
            let r = login(&c, user, "wrong password", "/").await;
            known.push(t.elapsed());
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
            let t = Instant::now();
            let r = login(&c, &format!("nobody-{round}-{user}"), "wrong password", "/").await;
            unknown.push(t.elapsed());
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        }
    }
    let (k, u) = (median(known), median(unknown));
    eprintln!("login with a wrong password: known user {k:?}, unknown user {u:?} (medians of 18, form load included)");
    assert!(
        u * 2 >= k,
        "an unknown user answers in {u:?}, a known one in {k:?}: the time tells which users exist"
    );
    c.stop().await;
}

#[tokio::test]
async fn login_and_logout_need_their_csrf_token() {
    let (_dir, c) = start().await;
    // Another site's page posting the login form (logging the browser into its account).
    let r = http()
        .post(c.url("/login"))
        .form(&[("name", "viewer"), ("password", PASSWORD)])
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "no login CSRF token");
    assert!(cookie_of(&r, "fleet_session").is_none());
    assert!(r.text().await.unwrap_or_default().contains("reload"));

    let cookie = session(&c, "operator").await;
    // Another site's page posting the logout form.
    let r = http()
        .post(c.url("/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", "forged")])
        .send()
        .await
        .expect("logout");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let (status, page) = get(&c, &cookie, "/").await;
    assert_eq!(status, StatusCode::OK, "still logged in");
    // The real logout button carries the token.
    let csrf = hidden(&page, "csrf").expect("csrf");
    let r = http()
        .post(c.url("/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("logout");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (status, _) = get(&c, &cookie, "/").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "logged out");
    c.stop().await;
}

#[tokio::test]
async fn a_crafted_link_puts_no_words_on_the_page() {
    let (_dir, c) = start().await;
    let cookie = session(&c, "operator").await;
    let (status, page) = get(
        &c,
        &cookie,
        "/?msg=Emergency+stop+cleared%3A+call+%2B1-555-0100+now",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!page.contains("call +1-555-0100"), "{page}");
    // The controller's own messages still show: a stop without a reason comes back with one.
    let csrf = hidden(&page, "csrf").expect("csrf");
    let r = http()
        .post(c.url("/ui/stop"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("reason", " "),
            ("next", "/devices"),
        ])
        .send()
        .await
        .expect("stop");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let back = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("location")
        .to_owned();
    let (_, page) = get(&c, &cookie, &back).await;
    assert!(page.contains("a reason is required"), "{back}: {page}");
    // The same message on another session's page is not shown.
    let other = session(&c, "viewer").await;
    let (_, page) = get(&c, &other, &back).await;
    assert!(!page.contains("a reason is required"), "{page}");
    c.stop().await;
}

#[tokio::test]
async fn next_never_leaves_the_site() {
    let (_dir, c) = start().await;
    for next in [
        "/\t/evil.example",
        "/\n/evil.example",
        "/\r/evil.example",
        "/ /evil.example",
        "/\\evil.example",
        "//evil.example",
        "https://evil.example/",
        "/\u{3000}/evil.example",
        "evil.example",
    ] {
        let r = login(&c, "viewer", PASSWORD, next).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{next:?}");
        let loc = r
            .headers()
            .get("location")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .expect("location");
        // What a browser makes of it: it drops tabs and line breaks, and reads `\` as `/`.
        let seen: String = loc
            .chars()
            .filter(|ch| !matches!(ch, '\t' | '\n' | '\r'))
            .map(|ch| if ch == '\\' { '/' } else { ch })
            .collect();
        assert!(
            seen.starts_with('/') && !seen.starts_with("//"),
            "{next:?} sent the browser to {loc:?}"
        );
    }
    let r = login(&c, "viewer", PASSWORD, "/devices?state=failed").await;
    assert_eq!(
        r.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("/devices?state=failed"),
        "a local path is kept"
    );
    c.stop().await;
}
