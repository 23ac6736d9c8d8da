//! The routes agents use: enrollment (pairing code or bootstrap token), claiming the token,
//! check-in.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::Json;
use fleet_config::names::check_name;
use fleet_config::protocol::{
    CheckinRequest, CheckinResponse, ClaimRequest, ClaimResponse, Desired, EnrollRequest,
    EnrollResponse, LogTail, ReleaseId, Tolerant, UpdatePhase,
};

use super::auth::bearer;
use super::body::JsonBody;
use super::error::ApiError;
use super::AppState;
use crate::db::{now_ms, CheckinIdentity, ClaimOutcome};
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

/// `POST /api/v1/checkin`. With `long_poll_secs`, an answer that tells the device nothing new
/// is held (see [`crate::longpoll`]) until that changes or the bound passes.
pub async fn checkin(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: JsonBody<CheckinRequest>,
) -> Result<Json<CheckinResponse>, ApiError> {
    let started = Instant::now();
    let result = checkin_inner(&state, &headers, body).await;
    // The latency is the check-in's own work, not the time a long poll was held.
    match &result {
        Ok(_) => state
            .metrics
            .observe_checkin(started.elapsed().as_secs_f64()),
        Err(_) => state.metrics.checkin_error(),
    }
    let (answer, hold) = result?;
    Ok(Json(match hold {
        Some(h) => hold_answer(&state, answer, h).await,
        None => answer,
    }))
}

/// A check-in to hold: its device, token, what it reported, until when, and its place.
struct Hold {
    token: String,
    req: CheckinRequest,
    until: tokio::time::Instant,
    waiter: crate::longpoll::Waiter,
}

/// Whether `answer` tells a device that reported `req` something to do now (a release to
/// run, safe mode to enter, logs to send).
fn actionable(req: &CheckinRequest, answer: &CheckinResponse) -> bool {
    let moves = match &answer.desired {
        Desired::Release { release, .. } => {
            req.current.as_ref() != Some(release) && !req.bad_releases.contains(release)
        }
        Desired::Hold => false,
    };
    moves || (answer.safe_mode && req.phase != UpdatePhase::SafeMode) || answer.logs.is_some()
}

/// Holds `first` until what the device is told changes (then answers the new answer), the
/// bound passes or the controller shuts down (then answers `first`).
async fn hold_answer(state: &AppState, first: CheckinResponse, mut h: Hold) -> CheckinResponse {
    // The first look is at once: what changed between the answer and the wait.
    let mut look = true;
    loop {
        if !look {
            let wake = tokio::select! {
                w = h.waiter.rx.recv() => w,
                _ = tokio::time::sleep_until(h.until) => return first,
                _ = h.waiter.closed.cancelled() => return first,
            };
            look = match wake {
                Ok(w) => w.concerns(&h.req.device_id),
                // Missed some: look, to be sure.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return first,
            };
            if !look {
                continue;
            }
        }
        look = false;
        match state.db.device_for_token(&h.token).await {
            Ok(Some(who)) if !who.revoked => {
                let (desired, stop) = answer_of(&who, &h.req);
                let now = CheckinResponse {
                    desired,
                    emergency_stop: stop,
                    safe_mode: who.safe_mode_requested,
                    acked_seq: first.acked_seq,
                    next_checkin_secs: 0,
                    logs: who.logs_request,
                };
                if now != first {
                    return now;
                }
            }
            // Revoked or gone meanwhile: the next check-in hears it.
            Ok(_) => return first,
            Err(e) => {
                tracing::warn!(device = %h.req.device_id, error = %e, "cannot look again for a held check-in; answering what it had");
                return first;
            }
        }
    }
}

/// What a device is told: (desired, emergency stop).
fn answer_of(who: &CheckinIdentity, req: &CheckinRequest) -> (Desired, bool) {
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
    (desired, stop.is_some())
}

/// Stores a device's log tail, cut to the protocol's bounds; returns the request it answers
/// when stored. Nothing about it fails the check-in: a tail that does not read, that nobody
/// asked for, or that the store cannot take is logged and dropped (the request stays pending
/// and is asked again).
async fn store_tail(
    state: &AppState,
    device: &str,
    tail: Tolerant<LogTail>,
    now: i64,
) -> Option<u64> {
    let tail = match tail.read() {
        Ok(t) => t,
        Err(why) => {
            tracing::warn!(%device, %why, "a check-in's log tail does not read; dropped");
            return None;
        }
    };
    let sent = tail.cost();
    let tail = tail.bounded();
    if tail.cost() < sent {
        tracing::warn!(%device, sent, kept = tail.cost(), "a log tail over the protocol's bounds was cut");
    }
    match state.db.store_log_tail(device, &tail, now).await {
        Ok(true) => {
            tracing::info!(%device, request = tail.request_id, "log tail received");
            Some(tail.request_id)
        }
        Ok(false) => {
            tracing::debug!(%device, request = tail.request_id, "a log tail answering no request of this device; dropped");
            None
        }
        Err(e) => {
            tracing::warn!(%device, error = %e, "cannot store a log tail; the device is asked again");
            None
        }
    }
}

async fn checkin_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: JsonBody<CheckinRequest>,
) -> Result<(CheckinResponse, Option<Hold>), ApiError> {
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
    let mut req = body.parse()?;
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
    let acked = state
        .db
        .record_checkin(&who, &req, now, wake_engine)
        .await?;
    let (desired, stop) = answer_of(&who, &req);
    if wake_engine {
        state.reconcile.notify_one();
    }
    // A log tail is stored (not kept with a held check-in); the request it answers is not
    // asked again.
    let answered = match req.logs.take() {
        Some(tail) => store_tail(state, &who.id, tail, now).await,
        None => None,
    };
    let mut answer = CheckinResponse {
        desired,
        emergency_stop: stop,
        safe_mode: who.safe_mode_requested,
        acked_seq: acked.max(0) as u64,
        next_checkin_secs: state.cfg.checkin_interval.as_secs().max(1),
        logs: who.logs_request.filter(|r| Some(r.id) != answered),
    };
    // A long poll takes its place (and its wake-ups) now; the hold looks once more before it
    // waits, so a change made since the answer was read is not missed.
    let max_hold = state
        .cfg
        .long_poll
        .max
        .min(Duration::from_secs(req.long_poll_secs));
    let waiter = if max_hold.is_zero() {
        None
    } else {
        state.waits.wait()
    };
    // Held only while idle (or in safe mode) with nothing to do: a device mid-update checks
    // in again when it is done.
    let holdable = matches!(req.phase, UpdatePhase::Idle | UpdatePhase::SafeMode)
        && !actionable(&req, &answer);
    // A long poll the controller holds is answered with "come back at once" (the poll is
    // the wait); an answer with something to do keeps the usual interval, so a device that
    // cannot act on it does not ask again and again.
    let hold = match waiter {
        Some(waiter) if holdable => {
            answer.next_checkin_secs = 0;
            Some(Hold {
                token: token.to_owned(),
                req,
                until: tokio::time::Instant::now() + max_hold,
                waiter,
            })
        }
        _ => None,
    };
    Ok((answer, hold))
}
