//! Operators' acts on one device: approve its pairing code, revoke its token, ask it into or
//! out of safe mode, pin it to a release or unpin it; each audited.

use super::{AppState, ServiceError};
use fleet_config::protocol::ReleaseId;

use crate::db::{ApproveOutcome, PIN_BY_OPERATOR};

/// Approves the pairing code `code` (as typed; normalized here) as `actor` at `now_ms`;
/// returns the device it enrolls. A code asked for under an id that is enrolled or revoked is
/// refused (and the refusal audited) unless `replace` says the approver means to replace that
/// device, as after a re-flash; the replacement is audited as `device.reenroll`. The caller
/// applies the per-user rate limit first.
pub async fn approve(
    state: &AppState,
    actor: &str,
    code: &str,
    replace: bool,
    now_ms: i64,
) -> Result<String, ServiceError> {
    let code = crate::tokens::normalize_code(code);
    match state
        .db
        .approve_pairing(&code, actor, now_ms, replace)
        .await?
    {
        ApproveOutcome::Approved {
            device_id,
            hostname,
            replaced,
        } => {
            match replaced {
                None => {
                    state
                        .db
                        .audit(actor, "device.approve", &device_id, "", &code)
                        .await?
                }
                Some(existing) => {
                    tracing::warn!(device = %device_id, %actor, %hostname, "re-enrollment approved: the device's old token ends");
                    state
                        .db
                        .audit(
                            actor,
                            "device.reenroll",
                            &device_id,
                            "",
                            &format!(
                                "pairing code {code} from host {hostname} replaces the {} device",
                                existing.as_str()
                            ),
                        )
                        .await?
                }
            }
            Ok(device_id)
        }
        ApproveOutcome::WouldReplace {
            device_id,
            hostname,
            existing,
        } => {
            tracing::warn!(device = %device_id, %actor, %hostname, "approval of a pairing code for an existing device refused: `replace` not given");
            state
                .db
                .audit(
                    actor,
                    "device.approve_refused",
                    &device_id,
                    &format!("would replace the {} device", existing.as_str()),
                    &format!("pairing code {code} from host {hostname}"),
                )
                .await?;
            Err(ServiceError::WouldReplace {
                code,
                device_id,
                hostname,
                existing,
            })
        }
        ApproveOutcome::Unknown => Err(ServiceError::NoPairing(code)),
        ApproveOutcome::Expired => Err(ServiceError::PairingExpired(code)),
        ApproveOutcome::Used => Err(ServiceError::PairingUsed(code)),
    }
}

/// Revokes device `id`'s token as `actor` (effective on its next request).
pub async fn revoke(
    state: &AppState,
    actor: &str,
    id: &str,
    reason: &str,
) -> Result<(), ServiceError> {
    if !state.db.revoke_device(id).await? {
        return Err(ServiceError::NoDevice(id.to_owned()));
    }
    state
        .db
        .audit(actor, "device.revoke", id, reason, "")
        .await?;
    Ok(())
}

/// Asks device `id` to enter (`on`) or leave safe mode, as `actor`.
pub async fn safe_mode(
    state: &AppState,
    actor: &str,
    id: &str,
    on: bool,
    reason: &str,
) -> Result<(), ServiceError> {
    if !state.db.request_safe_mode(id, on).await? {
        return Err(ServiceError::NoDevice(id.to_owned()));
    }
    let action = if on {
        "device.safe_mode_on"
    } else {
        "device.safe_mode_off"
    };
    state.db.audit(actor, action, id, reason, "").await?;
    state.waits.wake_devices([id.to_owned()]);
    Ok(())
}

/// The valid release `given` names: a full sha or a unique prefix of at least 7 hex digits.
async fn resolve_release(state: &AppState, given: &str) -> Result<ReleaseId, ServiceError> {
    let prefix = given.trim().to_ascii_lowercase();
    if prefix.len() < 7 || prefix.len() > 40 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ServiceError::Invalid(format!(
            "`{given}` is not a release: give its commit sha (at least 7 hex digits)"
        )));
    }
    let found = state.db.valid_releases_starting(&prefix, 5).await?;
    match found.as_slice() {
        [] => Err(ServiceError::NoRelease(given.to_owned())),
        [one] => one
            .sha
            .parse()
            .map_err(|_| ServiceError::NoRelease(given.to_owned())),
        many => Err(ServiceError::AmbiguousRelease {
            prefix: given.to_owned(),
            matches: many.iter().map(|r| r.sha[..12].to_owned()).collect(),
        }),
    }
}

/// Pins device `id` to `release` (a sha or a unique prefix of a valid release) as `actor`: it
/// is left out of rollouts and kept on that release until unpinned. A reason is required.
/// Returns the release.
pub async fn pin(
    state: &AppState,
    actor: &str,
    id: &str,
    release: &str,
    reason: &str,
) -> Result<ReleaseId, ServiceError> {
    if reason.trim().is_empty() {
        return Err(ServiceError::ReasonRequired);
    }
    let release = resolve_release(state, release).await?;
    if !state
        .db
        .pin_device(id, Some((&release, reason.trim())), PIN_BY_OPERATOR)
        .await?
    {
        return Err(ServiceError::NoDevice(id.to_owned()));
    }
    state
        .db
        .audit(actor, "device.pin", id, reason.trim(), release.as_str())
        .await?;
    tracing::warn!(%actor, device = %id, release = %release.short(), "device pinned");
    state.reconcile.notify_one();
    Ok(release)
}

/// Lifts device `id`'s pin as `actor`: rollouts take it again. False if it was not pinned.
pub async fn unpin(
    state: &AppState,
    actor: &str,
    id: &str,
    reason: &str,
) -> Result<bool, ServiceError> {
    let device = state
        .db
        .device(id)
        .await?
        .ok_or_else(|| ServiceError::NoDevice(id.to_owned()))?;
    let Some(was) = device.pinned_release else {
        return Ok(false);
    };
    state.db.pin_device(id, None, PIN_BY_OPERATOR).await?;
    state
        .db
        .audit(actor, "device.unpin", id, reason.trim(), was.as_str())
        .await?;
    tracing::warn!(%actor, device = %id, "device unpinned");
    state.reconcile.notify_one();
    Ok(true)
}
