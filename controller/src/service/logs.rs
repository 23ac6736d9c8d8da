//! Devices' logs on request, for both faces: an operator asks a device for a fresh tail
//! ([`request`], audited as `device.logs_requested`, the device's held long-poll check-in woken
//! so it is asked within a second), and anyone who may read the device reads the newest tail
//! received and where the request stands ([`latest`]). The controller never connects to a
//! device: the request rides on the answer to its next check-in, the tail on the one after
//! (`fleet_config::protocol::logs`).

use fleet_config::protocol::logs::{
    LogTail, DEFAULT_LOG_LINES, MAX_LOG_LINES, MAX_LOG_NAME_BYTES, MAX_LOG_SERVICES,
};
use schemars::JsonSchema;
use serde::Serialize;

use super::{AppState, ServiceError};
use crate::db::{now_ms, DeviceLogsRow, LOG_REQUEST_TTL_MS};

/// Where a device's newest log request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Asked at each check-in until the tail answering it arrives.
    Pending,
    /// The tail answering it arrived.
    Answered,
    /// Pending for longer than 15 minutes: no longer asked (an agent too old to answer, or a
    /// device offline since); request again.
    Expired,
}

/// A device's newest log request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct LogRequestView {
    /// Its id; the tail answering it carries it (`tail.request_id`). Ids of a device grow.
    pub id: u64,
    /// Lines per source asked for.
    pub lines: u32,
    /// The sources asked for (`agent`, stacks, services, `stack/service`); empty: all.
    pub services: Vec<String>,
    /// When it was made, ms since the epoch.
    pub requested_ms: i64,
    /// Who made it.
    pub requested_by: String,
    /// Where it stands.
    pub state: RequestState,
}

/// A request made: the device and the request (`POST /api/v1/devices/{id}/logs`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct LogsRequested {
    /// The device.
    pub device: String,
    /// Its last check-in, ms since the epoch (`null`: it never checked in, so nothing will
    /// answer until it does).
    pub last_seen_ms: Option<i64>,
    /// The request: pending until the device's next check-in but one.
    pub request: LogRequestView,
}

/// A device's newest log tail and request (`GET /api/v1/devices/{id}/logs`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DeviceLogs {
    /// The device.
    pub device: String,
    /// Its last check-in, ms since the epoch (`null`: never).
    pub last_seen_ms: Option<i64>,
    /// Its agent's version (agents before logs on request never answer).
    pub agent_version: String,
    /// The newest request, if it was ever asked.
    pub request: Option<LogRequestView>,
    /// When the newest tail arrived, ms since the epoch (controller clock).
    pub received_ms: Option<i64>,
    /// The newest tail received: the agent's own lines and each container's, with the request
    /// it answers (`request_id`). It may answer an older request than `request`.
    pub tail: Option<LogTail>,
}

/// The request's place as of `now_ms`.
fn request_view(row: &DeviceLogsRow, now_ms: i64) -> LogRequestView {
    let state = if !row.pending {
        RequestState::Answered
    } else if now_ms - row.requested_ms >= LOG_REQUEST_TTL_MS {
        RequestState::Expired
    } else {
        RequestState::Pending
    };
    LogRequestView {
        id: row.request.id,
        lines: row.request.lines,
        services: row.request.services.clone(),
        requested_ms: row.requested_ms,
        requested_by: row.requested_by.clone(),
        state,
    }
}

/// `lines` (default [`DEFAULT_LOG_LINES`]) and `services`, checked: 1 to [`MAX_LOG_LINES`]
/// lines, at most [`MAX_LOG_SERVICES`] selectors, each a name of letters, digits, `-`, `_`,
/// `.`, with at most one `/` (`stack/service`). Blank selectors are left out.
pub fn check_request(
    lines: Option<u32>,
    services: &[String],
) -> Result<(u32, Vec<String>), ServiceError> {
    let lines = lines.unwrap_or(DEFAULT_LOG_LINES);
    if !(1..=MAX_LOG_LINES).contains(&lines) {
        return Err(ServiceError::Invalid(format!(
            "`lines` must be between 1 and {MAX_LOG_LINES}, got {lines}"
        )));
    }
    let services: Vec<String> = services
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if services.len() > MAX_LOG_SERVICES {
        return Err(ServiceError::Invalid(format!(
            "at most {MAX_LOG_SERVICES} `services`, got {}",
            services.len()
        )));
    }
    for s in &services {
        let ok = s.len() <= MAX_LOG_NAME_BYTES
            && s.matches('/').count() <= 1
            && !s.starts_with('/')
            && !s.ends_with('/')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !ok {
            return Err(ServiceError::Invalid(format!(
                "service `{}` is not `agent`, a stack, a service or `stack/service` (letters, digits, `-`, `_`, `.`, at most {MAX_LOG_NAME_BYTES} bytes)",
                s.chars().take(80).collect::<String>()
            )));
        }
    }
    Ok((lines, services))
}

/// `actor` asks device `id` for a fresh tail of its logs: `lines` per source (default
/// [`DEFAULT_LOG_LINES`]), only `services` if any. Replaces an earlier request; audited as
/// `device.logs_requested`; wakes the device's held check-in so it is asked at once.
pub async fn request(
    state: &AppState,
    actor: &str,
    id: &str,
    lines: Option<u32>,
    services: &[String],
) -> Result<LogsRequested, ServiceError> {
    let (lines, services) = check_request(lines, services)?;
    let device = state
        .db
        .device(id)
        .await?
        .ok_or_else(|| ServiceError::NoDevice(id.to_owned()))?;
    let now = now_ms();
    let req = state
        .db
        .request_logs(id, lines, &services, actor, now)
        .await?
        .ok_or_else(|| ServiceError::NoDevice(id.to_owned()))?;
    let detail = if services.is_empty() {
        format!("request {}: {lines} lines of every source", req.id)
    } else {
        format!(
            "request {}: {lines} lines of {}",
            req.id,
            services.join(", ")
        )
    };
    state
        .db
        .audit(actor, "device.logs_requested", id, "", &detail)
        .await?;
    state.waits.wake_devices([id.to_owned()]);
    tracing::info!(%actor, device = %id, request = req.id, "device logs requested");
    Ok(LogsRequested {
        device: id.to_owned(),
        last_seen_ms: device.last_seen_ms,
        request: LogRequestView {
            id: req.id,
            lines,
            services,
            requested_ms: now,
            requested_by: actor.to_owned(),
            state: RequestState::Pending,
        },
    })
}

/// Device `id`'s newest log tail and where its newest request stands.
pub async fn latest(state: &AppState, id: &str) -> Result<DeviceLogs, ServiceError> {
    let device = state
        .db
        .device(id)
        .await?
        .ok_or_else(|| ServiceError::NoDevice(id.to_owned()))?;
    let row = state.db.device_logs(id).await?;
    let now = now_ms();
    let (received_ms, tail) = match row.as_ref().and_then(|r| r.tail.clone()) {
        Some((tail, at)) => (Some(at), Some(tail)),
        None => (None, None),
    };
    Ok(DeviceLogs {
        device: id.to_owned(),
        last_seen_ms: device.last_seen_ms,
        agent_version: device.agent_version,
        request: row.as_ref().map(|r| request_view(r, now)),
        received_ms,
        tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked() {
        assert_eq!(
            check_request(None, &[]).ok(),
            Some((DEFAULT_LOG_LINES, vec![]))
        );
        let ok = check_request(Some(5), &["agent".into(), " app/web ".into(), "".into()]);
        assert_eq!(
            ok.ok(),
            Some((5, vec!["agent".to_owned(), "app/web".to_owned()]))
        );
        for (lines, services, why) in [
            (Some(0), vec![], "between 1 and"),
            (Some(MAX_LOG_LINES + 1), vec![], "between 1 and"),
            (Some(1), vec!["a/b/c".to_owned()], "stack/service"),
            (Some(1), vec!["/web".to_owned()], "stack/service"),
            (Some(1), vec!["we b".to_owned()], "stack/service"),
            (Some(1), vec!["<script>".to_owned()], "stack/service"),
            (Some(1), vec!["x".repeat(200)], "stack/service"),
            (
                Some(1),
                vec!["s".to_owned(); MAX_LOG_SERVICES + 1],
                "at most",
            ),
        ] {
            match check_request(lines, &services) {
                Err(ServiceError::Invalid(m)) => assert!(m.contains(why), "{m}"),
                other => panic!("{lines:?} {services:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_request_is_pending_then_answered_or_expired() {
        let row = |pending: bool| DeviceLogsRow {
            request: fleet_config::protocol::LogRequest {
                id: 5,
                lines: 10,
                services: vec![],
            },
            requested_ms: 1_000,
            requested_by: "op".into(),
            pending,
            tail: None,
        };
        assert_eq!(request_view(&row(true), 2_000).state, RequestState::Pending);
        assert_eq!(
            request_view(&row(true), 1_000 + LOG_REQUEST_TTL_MS).state,
            RequestState::Expired
        );
        assert_eq!(
            request_view(&row(false), 1_000 + LOG_REQUEST_TTL_MS).state,
            RequestState::Answered
        );
    }
}
