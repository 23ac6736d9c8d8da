//! The HTTP API (JSON): agent routes, operator routes, the webhook, `/metrics` and `/healthz`,
//! contributed to the route table by [`routes`]. Operators' acts go through the service layer
//! ([`crate::service`]); this face parses, authenticates and answers.

pub mod agent;
pub mod alerts;
pub mod auth;
pub mod body;
pub mod bootstrap;
pub mod error;
pub mod logs;
pub mod ops;
pub mod pins;
pub mod rollouts;
pub mod webhook;

use axum::extract::State;

use crate::db::{now_ms, DeviceState};
use crate::route::Route;
use crate::service::AppState;

/// The API's routes, for the route table (`routes::table`).
#[rustfmt::skip]
pub fn routes() -> Vec<Route> {
    vec![
        Route::post("/api/v1/enroll", "none (pairing code) or bootstrap token", "Ask to join: a pairing code to approve, or a device token at once with the bootstrap token", agent::enroll).errors(&[401, 403, 409, 429]),
        Route::post("/api/v1/enroll/claim", "claim secret in body", "Claim the device token once the pairing code is approved", agent::claim).errors(&[404, 409, 410, 429]),
        Route::post("/api/v1/checkin", "device", "Report state and events; get the desired release, the emergency-stop flag and the next interval", agent::checkin),
        Route::get("/api/v1/status", "viewer", "Fleet health, devices by state, versions, active rollouts, emergency stop", ops::status),
        Route::get("/api/v1/devices", "viewer", "Devices with their derived state, by id (filter: ?state=; pages: ?limit=N&after=LAST_ID)", ops::devices),
        Route::get("/api/v1/devices/{id}", "viewer", "One device with its recent events", ops::device),
        Route::post("/api/v1/devices/approve", "operator", "Approve a pairing code (`replace: true` to re-enroll an enrolled or revoked id)", ops::approve).errors(&[404, 409, 410, 429]),
        Route::post("/api/v1/devices/{id}/revoke", "operator", "Revoke a device's token (effective on its next request)", ops::revoke),
        Route::post("/api/v1/devices/{id}/safe-mode", "operator", "Ask a device to enter or leave safe mode", ops::safe_mode),
        Route::post("/api/v1/devices/{id}/pin", "operator", "Pin a device to a release (release: sha or unique prefix, reason required): left out of rollouts until unpinned", pins::pin),
        Route::post("/api/v1/devices/{id}/unpin", "operator", "Lift a device's pin: rollouts take it again", pins::unpin),
        Route::post("/api/v1/devices/{id}/logs", "operator", "Ask a device for a fresh tail of its logs (lines per source, services): asked at its next check-in (at once if it long-polls), sent with the one after; audited", logs::request),
        Route::get("/api/v1/devices/{id}/logs", "viewer", "A device's newest log tail (the agent's lines and each container's, stdout and stderr with times) and where its newest request stands", logs::latest),
        Route::get("/api/v1/bootstrap-tokens", "operator", "Bootstrap tokens with their expiry, uses, selector and status (never the secrets)", bootstrap::list),
        Route::post("/api/v1/bootstrap-tokens", "admin", "Create a bootstrap token (note, expires_in, max_uses, selector); the secret is shown once", bootstrap::create),
        Route::post("/api/v1/bootstrap-tokens/{id}/revoke", "operator", "Revoke a bootstrap token", bootstrap::revoke),
        Route::get("/api/v1/rollouts", "viewer", "Rollouts, newest first", rollouts::list),
        Route::get("/api/v1/rollouts/{id}", "viewer", "One rollout with its waves and device counts", rollouts::show).errors(&[409]),
        Route::post("/api/v1/rollouts/{id}/{action}", "operator", "pause, resume, abort or promote a rollout", rollouts::act).errors(&[409]),
        Route::post("/api/v1/stop", "operator", "Emergency stop (reason required; rollback: true sends the active rollout back)", ops::stop),
        Route::post("/api/v1/resume", "operator", "Clear the emergency stop", ops::resume),
        Route::get("/api/v1/alerts", "viewer", "Alerts: open ones (pending, firing) by default; ?state=firing|pending|resolved|all, ?limit=N", alerts::list),
        Route::get("/api/v1/alerts/{id}", "viewer", "One alert with its members, runbook and every message sent for it", alerts::show),
        Route::post("/api/v1/alerts/{id}/ack", "operator", "Acknowledge an alert (reason optional): no reminder, no escalation", alerts::ack),
        Route::get("/api/v1/silences", "viewer", "Silences, newest first", alerts::silences),
        Route::post("/api/v1/silences", "operator", "Silence an alert (or every alert) for a device (or every member) for a duration (reason required)", alerts::silence),
        Route::post("/api/v1/silences/{id}/end", "operator", "End a silence early", alerts::end_silence),
        Route::get("/api/v1/alerting", "viewer", "The alerting's health: the engine's last pass, undelivered messages, each notifier, the heartbeat", alerts::status),
        Route::get("/api/v1/audit", "viewer", "The audit log, newest first", ops::audit),
        Route::get("/api/v1/releases", "viewer", "Commits seen: valid releases and rejected ones with their errors", ops::releases),
        Route::post("/api/v1/webhook", "hmac", "Push webhook (GitHub X-Hub-Signature-256 or Gitea X-Gitea-Signature)", webhook::receive).errors(&[401, 404]),
        Route::get("/metrics", "metrics token (if configured)", "Prometheus metrics", metrics).errors(&[401]),
        Route::get("/healthz", "none", "Liveness: the process answers and the database is reachable", healthz),
    ]
}

/// The router's fallback: a JSON 404 naming the path.
pub async fn not_found(uri: axum::http::Uri) -> error::ApiError {
    error::ApiError::NotFound(format!("no route {}", uri.path()))
}

async fn healthz(State(state): State<AppState>) -> Result<&'static str, error::ApiError> {
    state.db.emergency_stop().await?;
    Ok("ok\n")
}

async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<error::PlainText, error::ApiError> {
    if let Some(want) = &state.metrics_token {
        let given = auth::bearer(&headers).unwrap_or("");
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            want.as_bytes(),
            given.as_bytes(),
        )) {
            return Err(error::ApiError::Unauthorized(
                "/metrics needs `Authorization: Bearer TOKEN` with the token of `metrics_token_file`"
                    .into(),
            ));
        }
    }
    let now = now_ms();
    let devices = state.rows.rows(&state.db).await?;
    let summary = crate::summary::summarize(&devices, now, state.offline_after_ms());
    let by_state: Vec<(&str, u64)> = DeviceState::ALL
        .iter()
        .map(|s| (s.as_str(), summary.count(*s)))
        .collect();
    let rollouts: Vec<(String, u64)> = state
        .db
        .rollout_counts()
        .await?
        .into_iter()
        .map(|(s, n)| (s, u64::try_from(n).unwrap_or(0)))
        .collect();
    let stop = state.db.emergency_stop().await?.is_some();
    let text = state
        .metrics
        .render(&by_state, &rollouts, stop, state.is_leader());
    Ok(error::PlainText {
        content_type: crate::metrics::CONTENT_TYPE,
        text,
    })
}
