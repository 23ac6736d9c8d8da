//! The HTTP API: agent routes, operator routes, the webhook, `/metrics` and the OpenAPI
//! document, all listed once in [`ROUTES`] so the document cannot miss a route.

pub mod agent;
pub mod auth;
pub mod body;
pub mod error;
pub mod openapi;
pub mod ops;
pub mod rollouts;
pub mod webhook;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Notify;

use crate::config::ControllerConfig;
use crate::db::{now_ms, Db, DeviceState};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimit;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub db: Db,
    /// The configuration.
    pub cfg: Arc<ControllerConfig>,
    /// Request counters.
    pub metrics: Arc<Metrics>,
    /// Wakes the rollout reconciler (after a check-in or an operator action).
    pub reconcile: Arc<Notify>,
    /// Wakes the Git watcher (webhook).
    pub watch: Arc<Notify>,
    /// Enrollment requests per peer address.
    pub enroll_limit: Arc<RateLimit>,
    /// Claims per peer address.
    pub claim_limit: Arc<RateLimit>,
    /// Pairing-code approvals per user (guessing codes).
    pub approve_limit: Arc<RateLimit>,
    /// This replica holds the leader lock.
    pub leader: Arc<AtomicBool>,
    /// The webhook secret, if the webhook is enabled.
    pub webhook_secret: Option<Arc<Vec<u8>>>,
    /// Dashboard logins per peer address and user name (guessing passwords).
    pub login_limit: Arc<RateLimit>,
    /// The dashboard's live snapshot and event streams.
    pub live: Arc<crate::dashboard::live::Hub>,
}

impl AppState {
    /// State over a store and a configuration.
    pub fn new(db: Db, cfg: ControllerConfig, webhook_secret: Option<Vec<u8>>) -> AppState {
        AppState {
            db,
            cfg: Arc::new(cfg),
            metrics: Arc::new(Metrics::default()),
            reconcile: Arc::new(Notify::new()),
            watch: Arc::new(Notify::new()),
            enroll_limit: Arc::new(RateLimit::new(60, 60_000)),
            claim_limit: Arc::new(RateLimit::new(120, 60_000)),
            approve_limit: Arc::new(RateLimit::new(10, 60_000)),
            leader: Arc::new(AtomicBool::new(false)),
            webhook_secret: webhook_secret.map(Arc::new),
            login_limit: Arc::new(RateLimit::new(10, 60_000)),
            live: Arc::new(crate::dashboard::live::Hub::default()),
        }
    }

    /// The offline threshold in ms.
    pub fn offline_after_ms(&self) -> i64 {
        self.cfg.offline_after.as_millis() as i64
    }

    /// Whether this replica drives rollouts.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }
}

/// One route, for the router and the OpenAPI document.
#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    /// `GET`, `POST`.
    pub method: &'static str,
    /// Path with `{param}`s.
    pub path: &'static str,
    /// Who may call it: `device`, `bootstrap or none`, `viewer`, `operator`, `admin`, `hmac`,
    /// `none`; dashboard pages: `session` (viewer or more), `session (operator)`.
    pub auth: &'static str,
    /// One line.
    pub summary: &'static str,
}

/// Every route.
pub const ROUTES: &[RouteDoc] = &[
    RouteDoc { method: "POST", path: "/api/v1/enroll", auth: "none (pairing code) or bootstrap token", summary: "Ask to join: a pairing code to approve, or a device token at once with the bootstrap token" },
    RouteDoc { method: "POST", path: "/api/v1/enroll/claim", auth: "claim secret in body", summary: "Claim the device token once the pairing code is approved" },
    RouteDoc { method: "POST", path: "/api/v1/checkin", auth: "device", summary: "Report state and events; get the desired release, the emergency-stop flag and the next interval" },
    RouteDoc { method: "GET", path: "/api/v1/status", auth: "viewer", summary: "Fleet health, devices by state, versions, active rollouts, emergency stop" },
    RouteDoc { method: "GET", path: "/api/v1/devices", auth: "viewer", summary: "Devices with their derived state (filter: ?state=)" },
    RouteDoc { method: "GET", path: "/api/v1/devices/{id}", auth: "viewer", summary: "One device with its recent events" },
    RouteDoc { method: "POST", path: "/api/v1/devices/approve", auth: "operator", summary: "Approve a pairing code" },
    RouteDoc { method: "POST", path: "/api/v1/devices/{id}/revoke", auth: "operator", summary: "Revoke a device's token (effective on its next request)" },
    RouteDoc { method: "POST", path: "/api/v1/devices/{id}/safe-mode", auth: "operator", summary: "Ask a device to enter or leave safe mode" },
    RouteDoc { method: "GET", path: "/api/v1/rollouts", auth: "viewer", summary: "Rollouts, newest first" },
    RouteDoc { method: "GET", path: "/api/v1/rollouts/{id}", auth: "viewer", summary: "One rollout with its waves and device counts" },
    RouteDoc { method: "POST", path: "/api/v1/rollouts/{id}/{action}", auth: "operator", summary: "pause, resume, abort or promote a rollout" },
    RouteDoc { method: "POST", path: "/api/v1/stop", auth: "operator", summary: "Emergency stop (reason required; rollback: true sends the active rollout back)" },
    RouteDoc { method: "POST", path: "/api/v1/resume", auth: "operator", summary: "Clear the emergency stop" },
    RouteDoc { method: "GET", path: "/api/v1/audit", auth: "viewer", summary: "The audit log, newest first" },
    RouteDoc { method: "GET", path: "/api/v1/releases", auth: "viewer", summary: "Commits seen: valid releases and rejected ones with their errors" },
    RouteDoc { method: "POST", path: "/api/v1/webhook", auth: "hmac", summary: "Push webhook (GitHub X-Hub-Signature-256 or Gitea X-Gitea-Signature)" },
    RouteDoc { method: "GET", path: "/metrics", auth: "none", summary: "Prometheus metrics" },
    RouteDoc { method: "GET", path: "/api/openapi.json", auth: "none", summary: "This API's OpenAPI document" },
    RouteDoc { method: "GET", path: "/healthz", auth: "none", summary: "Liveness: the process answers and the database is reachable" },
    RouteDoc { method: "GET", path: "/", auth: "session", summary: "Dashboard (HTML): fleet health, devices by state, versions, the active rollout's waves, open alerts" },
    RouteDoc { method: "GET", path: "/devices", auth: "session", summary: "Dashboard (HTML): devices with sort, filter (?q=, state=, label=, release=) and pages" },
    RouteDoc { method: "GET", path: "/devices/{id}", auth: "session", summary: "Dashboard (HTML): one device: health, releases, telemetry over time, events, update history" },
    RouteDoc { method: "GET", path: "/rollouts", auth: "session", summary: "Dashboard (HTML): rollouts, newest first" },
    RouteDoc { method: "GET", path: "/rollouts/{id}", auth: "session", summary: "Dashboard (HTML): one rollout's waves and devices, with its actions for operators" },
    RouteDoc { method: "GET", path: "/audit", auth: "session", summary: "Dashboard (HTML): the audit log" },
    RouteDoc { method: "GET", path: "/login", auth: "none", summary: "Dashboard (HTML): the login form" },
    RouteDoc { method: "POST", path: "/login", auth: "none", summary: "Dashboard: log in (form: name, password, next); sets the session cookie" },
    RouteDoc { method: "POST", path: "/logout", auth: "session", summary: "Dashboard: log out" },
    RouteDoc { method: "POST", path: "/ui/stop", auth: "session (operator)", summary: "Dashboard form: emergency stop (csrf, reason required, rollback)" },
    RouteDoc { method: "POST", path: "/ui/resume", auth: "session (operator)", summary: "Dashboard form: clear the emergency stop (csrf, reason)" },
    RouteDoc { method: "POST", path: "/ui/rollouts/{id}", auth: "session (operator)", summary: "Dashboard form: pause, resume, abort or promote a rollout (csrf, action, reason)" },
    RouteDoc { method: "GET", path: "/ui/events", auth: "session", summary: "Dashboard live updates (text/event-stream): `summary` and `devices` events" },
    RouteDoc { method: "GET", path: "/assets/app.css", auth: "none", summary: "Dashboard stylesheet" },
    RouteDoc { method: "GET", path: "/assets/app.js", auth: "none", summary: "Dashboard script (live updates only; pages work without it)" },
];

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/enroll", post(agent::enroll))
        .route("/api/v1/enroll/claim", post(agent::claim))
        .route("/api/v1/checkin", post(agent::checkin))
        .route("/api/v1/status", get(ops::status))
        .route("/api/v1/devices", get(ops::devices))
        .route("/api/v1/devices/approve", post(ops::approve))
        .route("/api/v1/devices/{id}", get(ops::device))
        .route("/api/v1/devices/{id}/revoke", post(ops::revoke))
        .route("/api/v1/devices/{id}/safe-mode", post(ops::safe_mode))
        .route("/api/v1/rollouts", get(rollouts::list))
        .route("/api/v1/rollouts/{id}", get(rollouts::show))
        .route("/api/v1/rollouts/{id}/{action}", post(rollouts::act))
        .route("/api/v1/stop", post(ops::stop))
        .route("/api/v1/resume", post(ops::resume))
        .route("/api/v1/audit", get(ops::audit))
        .route("/api/v1/releases", get(ops::releases))
        .route("/api/v1/webhook", post(webhook::receive))
        .route("/metrics", get(metrics))
        .route("/api/openapi.json", get(openapi::document))
        .route("/healthz", get(healthz))
        .merge(crate::dashboard::router())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body::MAX_BODY))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> error::ApiError {
    error::ApiError::NotFound(format!("no route {}", uri.path()))
}

async fn healthz(State(state): State<AppState>) -> Result<&'static str, error::ApiError> {
    state.db.emergency_stop().await?;
    Ok("ok\n")
}

async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, error::ApiError> {
    let now = now_ms();
    let devices = state.db.devices().await?;
    let summary = crate::summary::summarize(&devices, now, state.offline_after_ms());
    let by_state: Vec<(&str, u64)> = DeviceState::ALL
        .iter()
        .map(|s| (s.as_str(), summary.count(*s)))
        .collect();
    let mut rollouts: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for r in state.db.rollouts(10_000).await? {
        *rollouts.entry(r.state).or_default() += 1;
    }
    let rollouts: Vec<(String, u64)> = rollouts.into_iter().collect();
    let stop = state.db.emergency_stop().await?.is_some();
    let text = state
        .metrics
        .render(&by_state, &rollouts, stop, state.is_leader());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}
