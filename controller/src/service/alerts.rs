//! Operators' acts on alerts: acknowledge one (someone is on it: no reminder, no escalation),
//! silence an alert or a member of it for a time (no message meanwhile), end a silence early;
//! each audited. Any replica takes them; the leader's alert engine reads them at its next pass.

use std::time::Duration;

use fleet_config::alerts::AlertName;

use super::{AppState, ServiceError};
use crate::alerts::model::Silence;
use crate::db::{now_ms, AckOutcome};

/// The longest silence: a forgotten one must not hide alerts for ever.
pub const MAX_SILENCE: Duration = Duration::from_secs(30 * 24 * 3600);

fn reason(r: &str) -> Result<&str, ServiceError> {
    let r = r.trim();
    if r.is_empty() {
        return Err(ServiceError::ReasonRequired);
    }
    if r.len() > 1000 {
        return Err(ServiceError::Invalid(
            "`reason` is longer than 1000 bytes".into(),
        ));
    }
    Ok(r)
}

/// Acknowledges alert `id` as `actor`; `why` is optional (who acknowledged is what counts,
/// and the audit log has it).
pub async fn ack(state: &AppState, actor: &str, id: &str, why: &str) -> Result<(), ServiceError> {
    let why = why.trim();
    if why.len() > 1000 {
        return Err(ServiceError::Invalid(
            "`reason` is longer than 1000 bytes".into(),
        ));
    }
    match state.db.ack_alert(id, actor, why).await? {
        AckOutcome::Acked => {
            tracing::info!(alert = id, %actor, "alert acknowledged");
            Ok(())
        }
        AckOutcome::Already(a) => Err(ServiceError::Invalid(format!(
            "alert `{id}` was acknowledged already by {} at {}: {}",
            a.by,
            crate::timefmt::utc(a.at_ms),
            a.reason
        ))),
        AckOutcome::Resolved => Err(ServiceError::Invalid(format!(
            "alert `{id}` is resolved: there is nothing to acknowledge"
        ))),
        AckOutcome::Unknown => Err(ServiceError::NoAlert(id.to_owned())),
    }
}

/// Silences `alert` (every alert if `None`) for `member` (every member if `None`) during
/// `duration`, as `actor`; returns the silence.
pub async fn silence(
    state: &AppState,
    actor: &str,
    alert: Option<&str>,
    member: Option<&str>,
    duration: &str,
    why: &str,
) -> Result<Silence, ServiceError> {
    let why = reason(why)?;
    let alert: Option<AlertName> = match alert.map(str::trim).filter(|a| !a.is_empty()) {
        Some(a) => Some(a.parse().map_err(ServiceError::Invalid)?),
        None => None,
    };
    let member = member.map(str::trim).filter(|m| !m.is_empty());
    if member.is_some_and(|m| m.len() > 255) {
        return Err(ServiceError::Invalid(
            "`device` is longer than 255 bytes".into(),
        ));
    }
    let d = fleet_config::units::parse_duration(duration.trim())
        .map_err(|e| ServiceError::Invalid(format!("`duration`: {e}")))?;
    if d.is_zero() || d > MAX_SILENCE {
        return Err(ServiceError::Invalid(format!(
            "`duration` must be between 1s and {}, found `{}`",
            fleet_config::units::format_duration(MAX_SILENCE),
            duration.trim()
        )));
    }
    let now = now_ms();
    let s = Silence {
        id: crate::tokens::random_hex(8),
        alert,
        member: member.map(str::to_owned),
        created_by: actor.to_owned(),
        created_ms: now,
        until_ms: now + i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2),
        reason: why.to_owned(),
    };
    state.db.add_silence(&s).await?;
    tracing::info!(silence = %s.id, %actor, alert = ?s.alert, member = ?s.member, "silence added");
    Ok(s)
}

/// Ends silence `id` early.
pub async fn end_silence(
    state: &AppState,
    actor: &str,
    id: &str,
    why: &str,
) -> Result<(), ServiceError> {
    let why = reason(why)?;
    if state.db.end_silence(id, actor, why).await? {
        Ok(())
    } else {
        Err(ServiceError::NoSilence(id.to_owned()))
    }
}
