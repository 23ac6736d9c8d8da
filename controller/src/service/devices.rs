//! Operators' acts on one device: approve its pairing code, revoke its token, ask it into or
//! out of safe mode; each audited.

use super::{AppState, ServiceError};
use crate::db::ApproveOutcome;

/// Approves the pairing code `code` (as typed; normalized here) as `actor` at `now_ms`;
/// returns the device it enrolls. The caller applies the per-user rate limit first.
pub async fn approve(
    state: &AppState,
    actor: &str,
    code: &str,
    now_ms: i64,
) -> Result<String, ServiceError> {
    let code = crate::tokens::normalize_code(code);
    match state.db.approve_pairing(&code, actor, now_ms).await? {
        ApproveOutcome::Approved { device_id } => {
            state
                .db
                .audit(actor, "device.approve", &device_id, "", &code)
                .await?;
            Ok(device_id)
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
    Ok(())
}
