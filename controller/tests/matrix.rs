//! Every route × every kind of credential, from the one route table
//! (`fleet_controller::routes::table`): no credential, a garbage token, a device token, a
//! revoked device token, a viewer, an operator and an admin, on SQLite and PostgreSQL. The
//! expected outcome of each cell is written down once, in [`EXPECTED`]; a route of the table
//! without its row (or a row without its route) fails the test, so a new route cannot ship
//! without someone deciding who may call it.
//!
//! API routes get the credential as `Authorization: Bearer`; dashboard routes as the session
//! cookie (a fresh session per cell for the users, with its CSRF token in the form, so the
//! cell tests the role and not the CSRF check, which `tests/login.rs` covers).

mod support;

use reqwest::StatusCode;
use serde_json::json;
use support::{database_url, test_config, Store, TestController};

/// What a cell must give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Past authentication and authorization: any status but 401, 403, a redirect to the
    /// login page, or a 5xx.
    Ok,
    /// 401.
    Unauth,
    /// 403.
    Forbidden,
    /// 303 to `/login…` (a dashboard page or form without a session).
    Login,
}

use Want::{Forbidden as F, Login as L, Ok as O, Unauth as U};

/// The credentials, in the order of the columns of [`EXPECTED`].
const COLUMNS: [&str; 7] = [
    "none",
    "garbage",
    "device",
    "revoked device",
    "viewer",
    "operator",
    "admin",
];

const VIEWER: [Want; 7] = [U, U, U, U, O, O, O];
const OPERATOR: [Want; 7] = [U, U, U, U, F, O, O];
const ADMIN: [Want; 7] = [U, U, U, U, F, F, O];
const ANYONE: [Want; 7] = [O, O, O, O, O, O, O];
const PAGE: [Want; 7] = [L, L, L, L, O, O, O];
const FORM: [Want; 7] = [L, L, L, L, F, O, O];

/// (method, path, outcome per column). Written down once; compared with the route table.
#[rustfmt::skip]
const EXPECTED: &[(&str, &str, [Want; 7])] = &[
    // Agents. A bearer on enroll is a bootstrap token: none of these credentials is one.
    ("POST", "/api/v1/enroll",                         [O, U, U, U, U, U, U]),
    ("POST", "/api/v1/enroll/claim",                   ANYONE), // the claim secret is in the body
    ("POST", "/api/v1/checkin",                        [U, U, O, U, U, U, U]),
    // Operators' API.
    ("GET",  "/api/v1/status",                         VIEWER),
    ("GET",  "/api/v1/devices",                        VIEWER),
    ("GET",  "/api/v1/devices/{id}",                   VIEWER),
    ("POST", "/api/v1/devices/approve",                OPERATOR),
    ("POST", "/api/v1/devices/{id}/revoke",            OPERATOR),
    ("POST", "/api/v1/devices/{id}/safe-mode",         OPERATOR),
    ("POST", "/api/v1/devices/{id}/pin",               OPERATOR),
    ("POST", "/api/v1/devices/{id}/unpin",             OPERATOR),
    ("POST", "/api/v1/devices/{id}/logs",              OPERATOR),
    ("GET",  "/api/v1/devices/{id}/logs",              VIEWER), // viewers read everything
    ("GET",  "/api/v1/bootstrap-tokens",               OPERATOR),
    ("POST", "/api/v1/bootstrap-tokens",               ADMIN),
    ("POST", "/api/v1/bootstrap-tokens/{id}/revoke",   OPERATOR),
    ("GET",  "/api/v1/rollouts",                       VIEWER),
    ("GET",  "/api/v1/rollouts/{id}",                  VIEWER),
    ("POST", "/api/v1/rollouts/{id}/{action}",         OPERATOR),
    ("POST", "/api/v1/stop",                           OPERATOR),
    ("POST", "/api/v1/resume",                         OPERATOR),
    ("GET",  "/api/v1/alerts",                         VIEWER),
    ("GET",  "/api/v1/alerts/{id}",                    VIEWER),
    ("POST", "/api/v1/alerts/{id}/ack",                OPERATOR),
    ("GET",  "/api/v1/silences",                       VIEWER),
    ("POST", "/api/v1/silences",                       OPERATOR),
    ("POST", "/api/v1/silences/{id}/end",              OPERATOR),
    ("GET",  "/api/v1/alerting",                       VIEWER),
    ("GET",  "/api/v1/audit",                          VIEWER),
    ("GET",  "/api/v1/releases",                       VIEWER),
    ("POST", "/api/v1/webhook",                        [U, U, U, U, U, U, U]), // HMAC only
    ("GET",  "/metrics",                               ANYONE), // no metrics token configured
    ("GET",  "/healthz",                               ANYONE),
    ("GET",  "/api/openapi.json",                      ANYONE),
    // Dashboard.
    ("GET",  "/",                                      PAGE),
    ("GET",  "/devices",                               PAGE),
    ("GET",  "/devices/{id}",                          PAGE),
    ("GET",  "/rollouts",                              PAGE),
    ("GET",  "/rollouts/{id}",                         PAGE),
    ("GET",  "/audit",                                 PAGE),
    ("GET",  "/alerts",                                PAGE),
    ("GET",  "/alerts/{id}",                           PAGE),
    ("GET",  "/login",                                 ANYONE),
    ("POST", "/login",                                 [F, F, F, F, F, F, F]), // no login CSRF cookie
    ("POST", "/logout",                                [L, L, L, L, L, L, L]), // always back to the login page
    ("POST", "/ui/stop",                               FORM),
    ("POST", "/ui/alerts/{id}/ack",                    FORM),
    ("POST", "/ui/silences",                           FORM),
    ("POST", "/ui/silences/{id}/end",                  FORM),
    ("POST", "/ui/resume",                             FORM),
    ("POST", "/ui/rollouts/{id}",                      FORM),
    ("POST", "/ui/devices/{id}/pin",                   FORM),
    ("POST", "/ui/devices/{id}/logs",                  FORM),
    ("GET",  "/ui/events",                             [U, U, U, U, O, O, O]),
    ("GET",  "/assets/app.css",                        ANYONE),
    ("GET",  "/assets/app.js",                         ANYONE),
];

fn is_api(path: &str) -> bool {
    path.starts_with("/api/") || path == "/metrics" || path == "/healthz"
}

/// The path with its parameters filled: ids nobody has, so an authorized act finds nothing.
fn filled(path: &str) -> String {
    path.replace("{id}", "matrix-nobody")
        .replace("{action}", "pause")
}

#[test]
fn every_route_of_the_table_has_its_row_and_no_row_is_left_over() {
    let table: Vec<(String, String)> = fleet_controller::routes::table()
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    for (m, p) in &table {
        assert!(
            EXPECTED.iter().any(|(em, ep, _)| em == m && ep == p),
            "{m} {p} has no row in EXPECTED: decide who may call it and write it down"
        );
    }
    for (m, p, _) in EXPECTED {
        assert!(
            table.iter().any(|(tm, tp)| tm == m && tp == p),
            "EXPECTED has {m} {p}, which the route table does not"
        );
    }
}

struct Creds {
    device: String,
    revoked: String,
}

async fn credentials(c: &TestController) -> Creds {
    let enroll = |id: &'static str| {
        let c = &c;
        async move {
            let r: serde_json::Value = support::client()
                .post(c.url("/api/v1/enroll"))
                .bearer_auth(&c.bootstrap)
                .json(&json!({"device_id": id, "hostname": "h", "arch": "aarch64", "agent_version": "0"}))
                .send()
                .await
                .expect("enroll")
                .json()
                .await
                .expect("json");
            r["token"].as_str().expect("a device token").to_owned()
        }
    };
    let device = enroll("matrix-a").await;
    let revoked = enroll("matrix-r").await;
    let r = support::client()
        .post(c.url("/api/v1/devices/matrix-r/revoke"))
        .bearer_auth(&c.operator)
        .json(&json!({"reason": "matrix"}))
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), StatusCode::OK);
    Creds { device, revoked }
}

/// One cell: its status and `Location`.
async fn cell(
    http: &reqwest::Client,
    c: &TestController,
    creds: &Creds,
    method: &str,
    path: &str,
    column: usize,
) -> (StatusCode, String) {
    let url = c.url(&filled(path));
    let mut req = http.request(method.parse().expect("method"), url);
    let bearer = match column {
        0 => None,
        1 => Some("fleetapi_0000000000000000garbage".to_owned()),
        2 => Some(creds.device.clone()),
        3 => Some(creds.revoked.clone()),
        4 => Some(c.viewer.clone()),
        5 => Some(c.operator.clone()),
        _ => Some(c.admin.clone()),
    };
    if is_api(path) {
        if let Some(t) = &bearer {
            req = req.bearer_auth(t);
        }
        if path == "/api/v1/enroll" {
            // A well-formed request, so the cell shows what the credential does.
            req = req.json(&json!({"device_id": format!("matrix-new-{column}"), "hostname": "h", "arch": "aarch64", "agent_version": "0"}));
        } else if method == "POST" {
            req = req.json(&json!({}));
        }
    } else {
        let user = match column {
            4 => Some("viewer"),
            5 => Some("operator"),
            6 => Some("admin"),
            _ => None,
        };
        let (cookie, csrf) = match (user, &bearer) {
            (Some(u), _) => {
                let token = c.db().create_session(u).await.expect("session");
                let csrf = fleet_controller::dashboard::session::csrf_for(&token);
                (Some(format!("fleet_session={token}")), csrf)
            }
            (None, Some(t)) => (Some(format!("fleet_session={t}")), String::new()),
            (None, None) => (None, String::new()),
        };
        if let Some(k) = cookie {
            req = req.header("cookie", k);
        }
        if method == "POST" {
            req = req.form(&[
                ("csrf", csrf.as_str()),
                ("reason", "matrix"),
                ("action", "pause"),
                ("next", "/"),
            ]);
        }
    }
    let r = req.send().await.expect("request");
    let loc = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (r.status(), loc)
}

fn outcome(status: StatusCode, location: &str) -> Option<Want> {
    if status.is_server_error() {
        return None;
    }
    Some(match status {
        StatusCode::UNAUTHORIZED => Want::Unauth,
        StatusCode::FORBIDDEN => Want::Forbidden,
        s if s.is_redirection() && location.starts_with("/login") => Want::Login,
        _ => Want::Ok,
    })
}

async fn the_matrix(store: Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(url) = database_url(store, dir.path(), "route_matrix").await else {
        return;
    };
    let c =
        TestController::start_with_secret(test_config(dir.path(), &url, None), Some("hook")).await;
    let creds = credentials(&c).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("client");
    let mut wrong = Vec::new();
    for (method, path, want) in EXPECTED {
        for (column, expected) in want.iter().enumerate() {
            let t = std::time::Instant::now();
            let (status, loc) = cell(&http, &c, &creds, method, path, column).await;
            if t.elapsed() > std::time::Duration::from_secs(2) {
                eprintln!(
                    "slow cell: {method} {path} as {}: {:?}",
                    COLUMNS[column],
                    t.elapsed()
                );
            }
            let got = outcome(status, &loc);
            if got != Some(*expected) {
                wrong.push(format!(
                    "{method} {path} as {}: expected {expected:?}, got {status} {loc}",
                    COLUMNS[column]
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "cells that differ:\n{}", wrong.join("\n"));

    // Device A's token never reads or writes device B: the one route that takes it binds it to
    // its own id, and no other route accepts it.
    let r = support::client()
        .post(c.url("/api/v1/checkin"))
        .bearer_auth(&creds.device)
        .json(&json!({"device_id": "matrix-r", "agent_version": "0", "phase": "idle", "health": "healthy"}))
        .send()
        .await
        .expect("checkin as another device");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    for path in ["/api/v1/devices/matrix-r", "/api/v1/devices/matrix-a"] {
        let r = support::client()
            .get(c.url(path))
            .bearer_auth(&creds.device)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    c.stop().await;
}

#[tokio::test]
async fn the_route_matrix_on_sqlite() {
    the_matrix(Store::Sqlite).await;
}

#[tokio::test]
async fn the_route_matrix_on_postgres() {
    the_matrix(Store::Postgres).await;
}
