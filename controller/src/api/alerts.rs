//! Alerts over the API: list and show them (with what became of each message), acknowledge,
//! silence, end a silence, and how the notifiers and the heartbeat are doing. The acts are the
//! service's ([`crate::service::alerts`]).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::auth::require;
use super::body::{ApiPath, ApiQuery, JsonBody, MaybeJsonBody};
use super::error::ApiError;
use super::ops::ReasonBody;
use super::AppState;
use crate::alerts::model::Silence;
use crate::db::{AlertRow, MessageRecord, Role};
use crate::service;

/// Which alerts to list.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct AlertQuery {
    /// `open` (pending and firing; the default), `firing`, `pending`, `resolved` or `all`.
    pub state: Option<String>,
    /// At most this many (default 100, at most 1,000).
    pub limit: Option<i64>,
}

/// `GET /api/v1/alerts`.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<AlertQuery>,
) -> Result<Json<Vec<AlertRow>>, ApiError> {
    require(&state, &headers, Role::Viewer).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1_000);
    let which = q.state.as_deref().unwrap_or("open");
    let phase = match which {
        "open" | "all" => None,
        "firing" | "pending" | "resolved" => crate::alerts::model::Phase::parse(which),
        other => {
            return Err(ApiError::BadRequest(format!(
                "`state` must be open, firing, pending, resolved or all, got `{other}`"
            )))
        }
    };
    let include_resolved = matches!(which, "all" | "resolved");
    let rows = state
        .db
        .alerts(
            if phase.is_some() { 1_000 } else { limit },
            include_resolved,
        )
        .await?;
    let rows = rows
        .into_iter()
        .filter(|r| phase.is_none_or(|p| r.alert.phase == p))
        .take(usize::try_from(limit).unwrap_or(100))
        .collect();
    Ok(Json(rows))
}

/// One alert with its messages.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AlertDetail {
    /// The alert.
    #[serde(flatten)]
    pub alert: AlertRow,
    /// Its runbook.
    pub runbook_url: String,
    /// Each message to each notifier, and what became of it.
    pub messages: Vec<MessageRecord>,
}

/// `GET /api/v1/alerts/{id}`.
pub async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<AlertDetail>, ApiError> {
    require(&state, &headers, Role::Viewer).await?;
    let alert = state
        .db
        .alert(&id)
        .await?
        .ok_or_else(|| ApiError::from(service::ServiceError::NoAlert(id.clone())))?;
    let messages = state.db.alert_messages(&id).await?;
    Ok(Json(AlertDetail {
        runbook_url: state.alerting.settings.links.runbook(alert.alert.name),
        alert,
        messages,
    }))
}

/// Answer of ack.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Acked {
    /// The alert.
    pub acked: String,
}

/// `POST /api/v1/alerts/{id}/ack`.
pub async fn ack(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    body: MaybeJsonBody<ReasonBody>,
) -> Result<Json<Acked>, ApiError> {
    let user = require(&state, &headers, Role::Operator).await?;
    let b = body.parse()?;
    service::alerts::ack(&state, &user.name, &id, &b.reason).await?;
    Ok(Json(Acked { acked: id }))
}

/// Body of silence.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SilenceBody {
    /// The alert to silence (`DeviceOffline`…); absent: every alert.
    #[serde(default)]
    pub alert: Option<String>,
    /// The device (or other member: an endpoint, a notifier) to silence; absent: every member.
    #[serde(default)]
    pub device: Option<String>,
    /// For how long (`2h`, `30m`; at most 30 days).
    pub duration: String,
    /// Why (required; goes to the audit log).
    pub reason: String,
}

/// `GET /api/v1/silences`.
pub async fn silences(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<Silence>>, ApiError> {
    require(&state, &headers, Role::Viewer).await?;
    Ok(Json(state.db.silences().await?))
}

/// `POST /api/v1/silences`.
pub async fn silence(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: JsonBody<SilenceBody>,
) -> Result<Json<Silence>, ApiError> {
    let user = require(&state, &headers, Role::Operator).await?;
    let b = body.parse()?;
    let s = service::alerts::silence(
        &state,
        &user.name,
        b.alert.as_deref(),
        b.device.as_deref(),
        &b.duration,
        &b.reason,
    )
    .await?;
    Ok(Json(s))
}

/// Answer of ending a silence.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SilenceEnded {
    /// The silence.
    pub ended: String,
}

/// `POST /api/v1/silences/{id}/end`.
pub async fn end_silence(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    body: MaybeJsonBody<ReasonBody>,
) -> Result<Json<SilenceEnded>, ApiError> {
    let user = require(&state, &headers, Role::Operator).await?;
    let b = body.parse()?;
    service::alerts::end_silence(&state, &user.name, &id, &b.reason).await?;
    Ok(Json(SilenceEnded { ended: id }))
}

/// A notifier and how it is doing (on the replica that answers; the leader delivers).
#[derive(Debug, Serialize, JsonSchema)]
pub struct NotifierStatus {
    /// Its name in controller.yaml.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Delivery attempts in a row that failed.
    pub consecutive_failures: u32,
    /// The last failure.
    pub last_error: Option<String>,
    /// The last delivery, ms since the epoch.
    pub last_ok_ms: Option<i64>,
}

/// The alerting's own health.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AlertingStatus {
    /// Whether this replica runs the alert engine (the leader).
    pub leader: bool,
    /// When the leader's engine last stored a pass, ms since the epoch.
    pub last_evaluation_ms: Option<i64>,
    /// Messages waiting for delivery.
    pub undelivered: i64,
    /// The notifiers.
    pub notifiers: Vec<NotifierStatus>,
    /// Since when the heartbeat to the dead man's switch fails, if it does (leader).
    pub heartbeat_failing_since_ms: Option<i64>,
    /// Whether a heartbeat URL is configured.
    pub heartbeat_configured: bool,
}

/// `GET /api/v1/alerting`.
pub async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<AlertingStatus>, ApiError> {
    require(&state, &headers, Role::Viewer).await?;
    let health = state.alerting.delivery.all();
    let notifiers = state
        .alerting
        .notifiers
        .iter()
        .map(|n| {
            let h = health.get(n.name()).cloned().unwrap_or_default();
            NotifierStatus {
                name: n.name().to_owned(),
                kind: n.kind().to_owned(),
                consecutive_failures: h.streak,
                last_error: h.last_error,
                last_ok_ms: h.last_ok_ms,
            }
        })
        .collect();
    Ok(Json(AlertingStatus {
        leader: state.is_leader(),
        last_evaluation_ms: state.db.alerts_evaluated_ms().await?,
        undelivered: state.db.undelivered_messages().await?,
        notifiers,
        heartbeat_failing_since_ms: state.alerting.heartbeat.failing().map(|h| h.since_ms),
        heartbeat_configured: state.alerting.settings.heartbeat.is_some(),
    }))
}
