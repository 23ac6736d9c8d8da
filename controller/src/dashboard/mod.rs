//! The dashboard (HTML): server-rendered pages (maud) served by the controller, assets embedded
//! in the binary, live updates by server-sent events ([`live`]), login with the controller's
//! users ([`session`]). Its routes join the route table by [`routes`]; operators' acts go
//! through the service layer ([`crate::service`]). Read-only pages work without JavaScript;
//! what a page offers follows the role (the emergency stop, resume and rollout actions are for
//! operators and admins).

pub mod alerts;
pub mod format;
pub mod live;
pub mod model;
pub mod pages;
pub mod session;
pub mod svg;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::Markup;
use serde::Deserialize;

use crate::db::{now_ms, DbError, DeviceState, EmergencyStop, Role, SESSION_TTL_MS};
use crate::openapi::{self, DescribeAnswer, Operation};
use crate::route::Route;
use crate::service::rollouts::RolloutAction;
use crate::service::{self, AppState, ServiceError};
use pages::Chrome;
use session::Session;

const APP_CSS: &str = include_str!("assets/app.css");
const APP_JS: &str = include_str!("assets/app.js");

/// The dashboard's routes, for the route table (`routes::table`).
#[rustfmt::skip]
pub fn routes() -> Vec<Route> {
    vec![
        Route::get("/", "session", "Dashboard (HTML): fleet health, devices by state, versions, the active rollout's waves, open alerts", overview),
        Route::get("/devices", "session", "Dashboard (HTML): devices with sort, filter (?q=, state=, label=, release=) and pages", devices),
        Route::get("/devices/{id}", "session", "Dashboard (HTML): one device: health, releases, how to reach it (SSH), its newest logs, telemetry over time, events, update history", device),
        Route::get("/rollouts", "session", "Dashboard (HTML): rollouts, newest first", rollouts),
        Route::get("/rollouts/{id}", "session", "Dashboard (HTML): one rollout's waves and devices, with its actions for operators", rollout),
        Route::get("/audit", "session", "Dashboard (HTML): the audit log", audit),
        Route::get("/alerts", "session", "Dashboard (HTML): alerts firing, pending and resolved, silences, the notifiers' health", alerts::list),
        Route::get("/alerts/{id}", "session", "Dashboard (HTML): one alert: its members, runbook and messages", alerts::show),
        Route::post("/ui/alerts/{id}/ack", "session (operator)", "Dashboard form: acknowledge an alert (csrf, reason)", alerts::ack),
        Route::post("/ui/silences", "session (operator)", "Dashboard form: silence an alert or every alert, for a device or all, for a duration (csrf, alert, device, duration, reason)", alerts::silence),
        Route::post("/ui/silences/{id}/end", "session (operator)", "Dashboard form: end a silence early (csrf, reason)", alerts::end_silence),
        Route::get("/login", "none", "Dashboard (HTML): the login form", login_page),
        Route::post("/login", "none", "Dashboard: log in (form: name, password, next); sets the session cookie", login).errors(&[401, 403, 429]),
        Route::post("/logout", "session", "Dashboard: log out", logout).errors(&[403]),
        Route::post("/ui/stop", "session (operator)", "Dashboard form: emergency stop (csrf, reason required, rollback)", stop),
        Route::post("/ui/resume", "session (operator)", "Dashboard form: clear the emergency stop (csrf, reason)", resume),
        Route::post("/ui/rollouts/{id}", "session (operator)", "Dashboard form: pause, resume, abort or promote a rollout (csrf, action, reason)", rollout_action),
        Route::post("/ui/devices/{id}/pin", "session (operator)", "Dashboard form: pin a device to a release or unpin it (csrf, action pin|unpin, release, reason)", pin_action),
        Route::post("/ui/devices/{id}/logs", "session (operator)", "Dashboard form: ask a device for a fresh tail of its logs (csrf, lines, services)", logs_action),
        Route::get("/ui/events", "session", "Dashboard live updates (text/event-stream): `summary` and `devices` events", live::events).produces("text/event-stream").errors(&[401, 503]),
        Route::get("/assets/app.css", "none", "Dashboard stylesheet", css).produces("text/css"),
        Route::get("/assets/app.js", "none", "Dashboard script (live updates only; pages work without it)", js).produces("text/javascript"),
    ]
}

/// Errors of a page, as the browser gets them.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// Not logged in: go to the login page.
    #[error("log in first")]
    Login(String),
    /// The form may not be carried out (stale CSRF token, role too low): 403 with why.
    #[error("{0}")]
    Refused(String),
    /// The store failed.
    #[error("{0}")]
    Db(#[from] DbError),
}

impl From<ServiceError> for PageError {
    /// The store failing is a 503 page as ever; the other failures carry the service's message
    /// as a refusal (the forms handle the ones they expect, such as a blank reason, themselves).
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Db(d) => PageError::Db(d),
            other => PageError::Refused(other.to_string()),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::Login(next) => {
                Redirect::to(&format!("/login?next={}", model::encode(&next))).into_response()
            }
            PageError::Refused(why) => (StatusCode::FORBIDDEN, format!("{why}\n")).into_response(),
            PageError::Db(e) => {
                tracing::error!(error = %e, "dashboard: store failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("The controller cannot read its database: {e}\nTry again; if it persists, check the controller's logs.\n"),
                )
                    .into_response()
            }
        }
    }
}

/// A page or a form's answer: HTML (GET), a redirect (a form done, or to the login page
/// without a session); refusals as HTML or plain text, and 503 when the store fails.
impl DescribeAnswer for Result<Response, PageError> {
    fn describe(op: &mut Operation<'_>) {
        if op.method == "GET" {
            op.respond(200, &[(openapi::HTML, openapi::text())]);
        }
        op.respond(303, &[]);
        op.error_content.insert(openapi::HTML, openapi::text());
        op.error_content.insert(openapi::TEXT, openapi::text());
        op.error(503);
    }
}

/// Pages load only the controller's own script and styles (inline `style` attributes draw the
/// wave bars), and no other site may frame them: a framed stop button could be clicked blind.
const CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

fn html(m: Markup) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "same-origin"),
        ],
        m.into_string(),
    )
        .into_response()
}

fn path_of(uri: &Uri) -> String {
    uri.path_and_query()
        .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned())
}

/// The message a form left (`?msg=…&sig=…`). Shown only with this session's signature of
/// it, so a crafted link cannot put words on an operator's page.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct Flash {
    /// Shown at the top of the page.
    pub msg: Option<String>,
    /// The session's signature of `msg` ([`Session::sign_flash`]).
    pub sig: Option<String>,
}

impl Flash {
    /// The message, if `s` signed it.
    pub fn verified(&self, s: &Session) -> Option<&str> {
        match (&self.msg, &self.sig) {
            (Some(m), Some(sig)) if s.flash_signed(m, sig) => Some(m),
            _ => None,
        }
    }
}

/// The session and the stop, or a redirect to the login page.
async fn enter(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<(Session, Option<EmergencyStop>), PageError> {
    let s = session::current(state, headers)
        .await?
        .ok_or_else(|| PageError::Login(path_of(uri)))?;
    Ok((s, state.db.emergency_stop().await?))
}

macro_rules! chrome {
    ($s:expr, $here:expr, $path:expr, $stop:expr, $flash:expr) => {
        Chrome {
            session: &$s,
            here: $here,
            path: &$path,
            stop: $stop.as_ref(),
            flash: $flash.verified(&$s),
        }
    };
}

async fn overview(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Query(flash): Query<Flash>,
) -> Result<Response, PageError> {
    let (s, stop) = enter(&state, &headers, &uri).await?;
    let now = now_ms();
    let off = state.offline_after_ms();
    let rows = state.rows.rows(&state.db).await?;
    let summary = crate::summary::summarize(&rows, now, off);
    let active = state.db.active_rollouts().await?;
    let alerts = model::alerts(&summary, stop.as_ref(), &active);
    let firing: Vec<crate::db::AlertRow> = state
        .db
        .alerts(50, false)
        .await?
        .into_iter()
        .filter(|a| a.alert.phase == crate::alerts::model::Phase::Firing)
        .collect();
    let rollout = model::newest_rollout(&active);
    let states = model::states_of(&rows, now, off);
    let path = path_of(&uri);
    let c = chrome!(s, "overview", path, stop, flash);
    Ok(html(pages::overview(
        &c,
        &summary,
        &firing,
        &alerts,
        rollout.as_ref(),
        &states,
    )))
}

async fn devices(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<model::ListQuery>,
    Query(flash): Query<Flash>,
) -> Result<Response, PageError> {
    let (s, stop) = enter(&state, &headers, &uri).await?;
    let now = now_ms();
    let rows = state.db.devices().await?;
    let page = q.apply(&rows, now, state.offline_after_ms());
    let path = path_of(&uri);
    let c = chrome!(s, "devices", path, stop, flash);
    Ok(html(pages::devices(&c, &q, &page, rows.len(), now)))
}

async fn device(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
    Query(flash): Query<Flash>,
) -> Result<Response, PageError> {
    let (s, stop) = enter(&state, &headers, &uri).await?;
    let path = path_of(&uri);
    let c = chrome!(s, "devices", path, stop, flash);
    let Some(d) = state.db.device(&id).await? else {
        return Ok((
            StatusCode::NOT_FOUND,
            html(pages::error_page(
                &c,
                "No such device",
                &format!("There is no device `{id}`."),
            )),
        )
            .into_response());
    };
    let now = now_ms();
    let events = state.db.device_events(&id, 50).await?;
    let samples = state
        .db
        .telemetry_samples(&id, now - crate::db::telemetry::KEEP_MS)
        .await?;
    let st = d.state(now, state.offline_after_ms());
    let logs = service::logs::latest(&state, &id).await?;
    let reach = crate::reach::reach(&d.labels, &d.hostname, st == DeviceState::SafeMode);
    let alerts: Vec<crate::db::AlertRow> = state
        .db
        .alerts(50, false)
        .await?
        .into_iter()
        .filter(|a| a.alert.name.about_devices() && a.alert.members.contains_key(&d.id))
        .collect();
    let extras = pages::DeviceExtras {
        events: &events,
        samples: &samples,
        logs: &logs,
        reach: &reach,
        alerts: &alerts,
        grafana: state.cfg.grafana_url.as_ref().map(|g| {
            format!(
                "{g}/d/fleet-device/fleet-device?var-device={}",
                model::encode(&d.id)
            )
        }),
    };
    Ok(html(pages::device(&c, &d, st, &extras, now)))
}

async fn rollouts(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Query(flash): Query<Flash>,
) -> Result<Response, PageError> {
    let (s, stop) = enter(&state, &headers, &uri).await?;
    let rows = state.db.rollout_list(200).await?;
    let path = path_of(&uri);
    let c = chrome!(s, "rollouts", path, stop, flash);
    Ok(html(pages::rollouts(&c, &rows)))
}

async fn rollout(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
    Query(flash): Query<Flash>,
) -> Result<Response, PageError> {
    let (s, stop) = enter(&state, &headers, &uri).await?;
    let path = path_of(&uri);
    let c = chrome!(s, "rollouts", path, stop, flash);
    let parsed = state
        .db
        .rollout(&id)
        .await?
        .map(|row| crate::rollout::stored::decode(row.data));
    let r = match parsed {
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            return Ok(html(pages::error_page(
                &c,
                "Unreadable rollout",
                &format!("The stored rollout `{id}` cannot be read: {e}"),
            )))
        }
        None => {
            return Ok((
                StatusCode::NOT_FOUND,
                html(pages::error_page(
                    &c,
                    "No such rollout",
                    &format!("There is no rollout `{id}`."),
                )),
            )
                .into_response())
        }
    };
    let now = now_ms();
    let rows = state.db.devices().await?;
    let states = model::states_of(&rows, now, state.offline_after_ms());
    Ok(html(pages::rollout(&c, &r, &states)))
}

async fn audit(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Query(flash): Query<Flash>,
) -> Result<Response, PageError> {
    let (s, stop) = enter(&state, &headers, &uri).await?;
    let entries = state.db.audit_log(500).await?;
    let path = path_of(&uri);
    let c = chrome!(s, "audit", path, stop, flash);
    Ok(html(pages::audit(&c, &entries)))
}

/// `?next=` of the login page.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct NextQuery {
    /// Where to go after logging in.
    pub next: Option<String>,
}

/// The login form's CSRF value: the browser's, if it has a well-formed one (several tabs), or a
/// fresh one; and the `Set-Cookie` that gives it to the browser.
fn login_csrf(state: &AppState, headers: &HeaderMap) -> (String, String) {
    let value = session::cookie(headers, session::LOGIN_COOKIE)
        .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(crate::tokens::login_nonce);
    let set = session::set_login_cookie(&value, state.secure_cookies());
    (value, set)
}

/// The login form with `error`, setting its CSRF cookie.
fn login_form(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    error: Option<&str>,
    next: &str,
) -> Response {
    let (csrf, set) = login_csrf(state, headers);
    (
        status,
        [(header::SET_COOKIE, set)],
        html(pages::login(error, next, &csrf)),
    )
        .into_response()
}

async fn login_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    let next = session::safe_next(q.next.as_deref());
    login_form(&state, &headers, StatusCode::OK, None, &next)
}

/// The login form.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct LoginForm {
    /// User name.
    #[serde(default)]
    pub name: String,
    /// Password.
    #[serde(default)]
    pub password: String,
    /// Where to go next.
    pub next: Option<String>,
    /// The login form's CSRF value (the same as its cookie).
    #[serde(default)]
    pub csrf: String,
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Result<Response, PageError> {
    let next = session::safe_next(f.next.as_deref());
    let deny =
        |status: StatusCode, msg: &str| login_form(&state, &headers, status, Some(msg), &next);
    let cookie = session::cookie(&headers, session::LOGIN_COOKIE).unwrap_or_default();
    if !session::tokens_match(&cookie, &f.csrf) {
        tracing::warn!(%peer, "dashboard: login form without its CSRF token refused");
        return Ok(deny(
            StatusCode::FORBIDDEN,
            "This login form is stale or came from another site; reload the login page and try again.",
        ));
    }
    let now = now_ms();
    // The limit counts the name that is looked up, so spaces around it are the same user.
    let name = f.name.trim();
    if let Err(wait) = state
        .login_limit
        .check(&format!("{}|{}", peer.ip(), name), now)
    {
        return Ok(deny(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("Too many attempts for this user; wait {wait} s."),
        ));
    }
    let found = state.db.user_with_password(name).await?;
    // Unknown users cost the same argon2 work as known ones (the time tells nothing).
    let ok = crate::tokens::verify_password_or_decoy(
        &f.password,
        found.as_ref().map(|(_, hash)| hash.as_str()),
    );
    let user = match found {
        Some((user, _)) if ok => user,
        _ => {
            tracing::warn!(user = %f.name, %peer, "dashboard: failed login");
            return Ok(deny(
                StatusCode::UNAUTHORIZED,
                "Unknown user or wrong password.",
            ));
        }
    };
    let token = state.db.create_session(&user.name).await?;
    tracing::info!(user = %user.name, "dashboard: logged in");
    Ok((
        StatusCode::SEE_OTHER,
        // Two cookies: `AppendHeaders`, since an array of headers would keep only the last.
        axum::response::AppendHeaders([
            (header::LOCATION, next),
            (
                header::SET_COOKIE,
                session::set_cookie(&token, SESSION_TTL_MS / 1000, state.secure_cookies()),
            ),
            (header::SET_COOKIE, session::clear_login_cookie()),
        ]),
    )
        .into_response())
}

/// The fields a dashboard form may carry.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct ActionForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    /// Why (audit log).
    #[serde(default)]
    pub reason: String,
    /// Stop with rollback (`on`).
    pub rollback: Option<String>,
    /// Rollout action; `pin` or `unpin` for a device.
    pub action: Option<String>,
    /// The release to pin a device to (sha or unique prefix).
    pub release: Option<String>,
    /// The alert a silence is for (empty: every alert).
    pub alert: Option<String>,
    /// The device a silence is for (empty: every member).
    pub device: Option<String>,
    /// How long a silence lasts (`1h`).
    pub duration: Option<String>,
    /// Lines per source of a log request.
    pub lines: Option<String>,
    /// The sources of a log request, separated by commas or spaces (blank: all).
    pub services: Option<String>,
    /// Where to go back to.
    pub next: Option<String>,
}

/// A form's sender: logged in, the right CSRF token, at least `role`.
async fn form_user(
    state: &AppState,
    headers: &HeaderMap,
    f: &ActionForm,
    role: Role,
) -> Result<Session, PageError> {
    let s = session::current(state, headers)
        .await?
        .ok_or_else(|| PageError::Login(session::safe_next(f.next.as_deref())))?;
    if !session::tokens_match(&s.csrf, &f.csrf) {
        return Err(PageError::Refused(
            "This form is stale or came from another site (CSRF token mismatch); reload the page and try again.".into(),
        ));
    }
    if s.user.role < role {
        return Err(PageError::Refused(format!(
            "user `{}` is {}; this needs {role} or more",
            s.user.name, s.user.role
        )));
    }
    Ok(s)
}

/// Back to `next` with `msg` signed for session `s` (see [`Flash`]).
fn back_with(s: &Session, next: Option<&str>, msg: &str) -> Response {
    let next = session::safe_next(next);
    let sep = if next.contains('?') { '&' } else { '?' };
    Redirect::to(&format!(
        "{next}{sep}msg={}&sig={}",
        model::encode(msg),
        s.sign_flash(msg)
    ))
    .into_response()
}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<ActionForm>,
) -> Result<Response, PageError> {
    // Another site's page must not log an operator out (in the middle of an incident).
    if let Some(s) = session::current(&state, &headers).await? {
        if !session::tokens_match(&s.csrf, &f.csrf) {
            return Err(PageError::Refused(
                "This form is stale or came from another site (CSRF token mismatch); reload the page and try again.".into(),
            ));
        }
    }
    if let Some(token) = session::session_token(&headers) {
        state.db.delete_session(&token).await?;
    }
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/login".to_owned()),
            (header::SET_COOKIE, session::clear_cookie()),
        ],
    )
        .into_response())
}

async fn stop(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<ActionForm>,
) -> Result<Response, PageError> {
    let s = form_user(&state, &headers, &f, Role::Operator).await?;
    let rollback = f.rollback.as_deref() == Some("on");
    let new = match service::stop::stop(&state, &s.user.name, &f.reason, rollback).await {
        Err(ServiceError::ReasonRequired) => {
            return Ok(back_with(
                &s,
                f.next.as_deref(),
                "Not stopped: a reason is required (on-call reads it).",
            ))
        }
        other => other?,
    };
    let msg = if new {
        "Emergency stop set: every device holds what it runs."
    } else {
        "The emergency stop was already set."
    };
    Ok(back_with(&s, f.next.as_deref(), msg))
}

async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<ActionForm>,
) -> Result<Response, PageError> {
    let s = form_user(&state, &headers, &f, Role::Operator).await?;
    let was = service::stop::resume(&state, &s.user.name, f.reason.trim()).await?;
    let msg = if was {
        "Emergency stop cleared: rollouts go on."
    } else {
        "There was no emergency stop."
    };
    Ok(back_with(&s, f.next.as_deref(), msg))
}

async fn rollout_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Result<Response, PageError> {
    let s = form_user(&state, &headers, &f, Role::Operator).await?;
    let name = f.action.as_deref().unwrap_or("");
    let Some(action) = RolloutAction::parse(name) else {
        return Ok(back_with(
            &s,
            f.next.as_deref(),
            &format!("Unknown action `{name}`: pause, resume, abort or promote."),
        ));
    };
    let msg = match service::rollouts::act(&state, &id, action, &s.user.name, f.reason.trim()).await
    {
        Ok(r) => format!("Rollout {}: {name} done; it is {}.", r.id, r.state.name()),
        Err(e) => format!("Rollout {id}: {name} refused: {e}"),
    };
    service::live::refresh(&state).await;
    Ok(back_with(&s, f.next.as_deref(), &msg))
}

async fn pin_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Result<Response, PageError> {
    let s = form_user(&state, &headers, &f, Role::Operator).await?;
    let msg = match f.action.as_deref().unwrap_or("") {
        "pin" => {
            let release = f.release.as_deref().unwrap_or("").trim();
            match service::devices::pin(&state, &s.user.name, &id, release, f.reason.trim()).await {
                Ok(r) => format!(
                    "Device {id} pinned to {}: left out of rollouts until unpinned.",
                    r.short()
                ),
                Err(e) => format!("Device {id}: pin refused: {e}"),
            }
        }
        "unpin" => {
            match service::devices::unpin(&state, &s.user.name, &id, f.reason.trim()).await {
                Ok(true) => format!("Device {id} unpinned: rollouts take it again."),
                Ok(false) => format!("Device {id} was not pinned."),
                Err(e) => format!("Device {id}: unpin refused: {e}"),
            }
        }
        other => format!("Unknown action `{other}`: pin or unpin."),
    };
    service::live::refresh(&state).await;
    Ok(back_with(&s, f.next.as_deref(), &msg))
}

async fn logs_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Result<Response, PageError> {
    let s = form_user(&state, &headers, &f, Role::Operator).await?;
    let lines = match f.lines.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
        None => Ok(None),
        Some(l) => l
            .parse::<u32>()
            .map(Some)
            .map_err(|_| format!("`{l}` is not a number of lines")),
    };
    let services: Vec<String> = f
        .services
        .as_deref()
        .unwrap_or("")
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let msg = match lines {
        Err(why) => format!("Device {id}: logs not requested: {why}."),
        Ok(lines) => {
            match service::logs::request(&state, &s.user.name, &id, lines, &services).await {
                Ok(r) if r.last_seen_ms.is_none() => format!(
                    "Logs requested from device {id} (request {}), which has never checked in: they come once it does.",
                    r.request.id
                ),
                Ok(r) => format!(
                    "Logs requested from device {id} (request {}): asked at its next check-in, they appear here seconds later; reload the page.",
                    r.request.id
                ),
                Err(ServiceError::Db(e)) => return Err(PageError::Db(e)),
                Err(e) => format!("Device {id}: logs not requested: {e}"),
            }
        }
    };
    Ok(back_with(&s, f.next.as_deref(), &msg))
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        APP_CSS,
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        APP_JS,
    )
        .into_response()
}
