//! The routes agents use: enrollment (pairing code or bootstrap token), claiming the token,
//! check-in.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::Json;
use fleet_config::names::check_name;
use fleet_config::protocol::{
    CheckinRequest, CheckinResponse, ClaimRequest, ClaimResponse, Desired, EnrollRequest,
    EnrollResponse, ReleaseId,
};

use super::auth::bearer;
use super::body::JsonBody;
use super::error::ApiError;
use super::AppState;
use crate::db::{now_ms, ClaimOutcome};
use crate::service;

fn limited(what: &str, retry_after: u64) -> ApiError {
    ApiError::RateLimited {
        message: format!("too many {what}; wait {retry_after} s"),
        retry_after,
    }
}

/// `POST /api/v1/enroll`.
pub async fn enroll(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: JsonBody<EnrollRequest>,
) -> Result<Json<EnrollResponse>, ApiError> {
    let now = now_ms();
    // Unauthenticated requests (pairing codes, bad bootstrap tokens) are limited per address;
    // a provisioning station with a valid bootstrap token enrolls as many devices as it has.
    let limit = || {
        state
            .enroll_limit
            .check(&peer.ip().to_string(), now)
            .map_err(|s| limited("enrollment requests from this address", s))
    };
    let req = body.parse()?;
    check_name(&req.device_id).map_err(|e| ApiError::BadRequest(format!("`device_id` {e}")))?;
    for (k, v) in [
        ("hostname", &req.hostname),
        ("arch", &req.arch),
        ("agent_version", &req.agent_version),
    ] {
        if v.len() > 255 {
            return Err(ApiError::BadRequest(format!(
                "`{k}` is longer than 255 bytes"
            )));
        }
    }
    if let Some(secret) = bearer(&headers) {
        let peer_text = peer.ip().to_string();
        let enrolling = service::bootstrap::Enrolling {
            device_id: &req.device_id,
            hostname: &req.hostname,
            arch: &req.arch,
            agent_version: &req.agent_version,
            peer: &peer_text,
        };
        return match service::bootstrap::enroll(&state, secret, enrolling, now).await {
            Ok(token) => Ok(Json(EnrollResponse::Enrolled {
                device_id: req.device_id,
                token,
            })),
            // Refusals count against the address: a holder of a bootstrap token trying ids, or
            // somebody guessing tokens, is slowed down (and the audit log not flooded).
            Err(e) => {
                limit()?;
                Err(e.into())
            }
        };
    }
    limit()?;
    let ttl = state.cfg.pairing_ttl.as_millis() as i64;
    let (code, claim) = state
        .db
        .create_pairing(
            &req.device_id,
            &req.hostname,
            &req.arch,
            &req.agent_version,
            ttl,
        )
        .await?;
    tracing::info!(device = %req.device_id, %code, "pairing code issued; waiting for approval");
    Ok(Json(EnrollResponse::Pending {
        pairing_code: code,
        claim_secret: claim,
        expires_in_secs: state.cfg.pairing_ttl.as_secs(),
    }))
}

/// `POST /api/v1/enroll/claim`.
pub async fn claim(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: JsonBody<ClaimRequest>,
) -> Result<Json<ClaimResponse>, ApiError> {
    let now = now_ms();
    state
        .claim_limit
        .check(&peer.ip().to_string(), now)
        .map_err(|s| limited("claims from this address", s))?;
    let req = body.parse()?;
    match state.db.claim_pairing(&req.claim_secret, now).await? {
        ClaimOutcome::Pending => Ok(Json(ClaimResponse::Pending)),
        ClaimOutcome::Enrolled { device_id, token } => {
            tracing::info!(device = %device_id, "device claimed its token");
            Ok(Json(ClaimResponse::Enrolled { device_id, token }))
        }
        ClaimOutcome::Unknown => Err(ApiError::NotFound("unknown claim secret".into())),
        ClaimOutcome::Expired => Err(ApiError::Gone(
            "the pairing code expired before approval; enroll again for a new one".into(),
        )),
        ClaimOutcome::Used => Err(ApiError::Gone(
            "this pairing was claimed already; enroll again".into(),
        )),
        ClaimOutcome::Taken { device_id } => Err(ApiError::Conflict(format!(
            "device `{device_id}` was enrolled by other means after this pairing code was approved; \
             the code does not replace it. Enroll again and have an operator approve the new code \
             with `replace`"
        ))),
    }
}

/// `POST /api/v1/checkin`.
pub async fn checkin(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: JsonBody<CheckinRequest>,
) -> Result<Json<CheckinResponse>, ApiError> {
    let started = Instant::now();
    let result = checkin_inner(&state, &headers, body).await;
    match &result {
        Ok(_) => state
            .metrics
            .observe_checkin(started.elapsed().as_secs_f64()),
        Err(_) => state.metrics.checkin_error(),
    }
    result.map(Json)
}

async fn checkin_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: JsonBody<CheckinRequest>,
) -> Result<CheckinResponse, ApiError> {
    let token = bearer(headers).ok_or_else(|| {
        ApiError::Unauthorized("missing `Authorization: Bearer TOKEN` header".into())
    })?;
    let who = state
        .db
        .device_for_token(token)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown or revoked device token".into()))?;
    if who.revoked {
        return Err(ApiError::Unauthorized(
            "this device's token was revoked".into(),
        ));
    }
    let req = body.parse()?;
    if req.device_id != who.id {
        return Err(ApiError::Forbidden(format!(
            "this token belongs to device `{}`, not `{}`",
            who.id, req.device_id
        )));
    }
    if req.events.len() > 5_000 {
        return Err(ApiError::TooLarge(
            "more than 5000 events in one check-in; send them in batches".into(),
        ));
    }
    let now = now_ms();
    let wake_engine = who.changes_rollout_view(&req, now, state.offline_after_ms());
    let acked = state.db.record_checkin(&who, &req, now).await?;
    let stop = who.emergency_stop.clone();
    let target = match (&who.desired_release, &who.desired_digest) {
        (Some(r), Some(d)) => match (r.parse::<ReleaseId>(), d.parse()) {
            (Ok(release), Ok(digest)) => Some((release, digest)),
            _ => {
                tracing::error!(device = %who.id, "stored desired release is unreadable; answering hold");
                None
            }
        },
        _ => None,
    };
    let desired = match (target, &stop) {
        (Some((release, digest)), None) => Desired::Release { release, digest },
        // While the stop holds, the one move allowed is back to the previous release, and only
        // when the stop asked for a rollback.
        (Some((release, digest)), Some(s))
            if s.rollback
                && req.previous.as_ref() == Some(&release)
                && req.current.as_ref() != Some(&release) =>
        {
            Desired::Release { release, digest }
        }
        _ => Desired::Hold,
    };
    if wake_engine {
        state.reconcile.notify_one();
    }
    Ok(CheckinResponse {
        desired,
        emergency_stop: stop.is_some(),
        safe_mode: who.safe_mode_requested,
        acked_seq: acked.max(0) as u64,
        next_checkin_secs: state.cfg.checkin_interval.as_secs().max(1),
    })
}
