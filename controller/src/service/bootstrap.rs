//! Bootstrap tokens: enrolling a new device with one (the agent's route), and their lifecycle
//! for operators and admins (create, list, revoke; the API, fleetctl and `fleet-controller
//! bootstrap-token` all come here). Every refusal of a live token is audited: whoever holds
//! one has it from a provisioned device, and trying it on an enrolled id is a takeover attempt.

use std::collections::BTreeMap;

use super::{AppState, ServiceError};
use crate::db::{BootstrapEnrollment, BootstrapToken, NewBootstrapToken};

/// Longest life of a bootstrap token: a provisioning batch, not a permanent key.
pub const MAX_TTL_MS: i64 = 90 * 86_400_000;
/// Default life of a bootstrap token.
pub const DEFAULT_TTL_MS: i64 = 86_400_000;

/// What an agent sent to enroll.
#[derive(Debug, Clone, Copy)]
pub struct Enrolling<'a> {
    /// The id it asks for.
    pub device_id: &'a str,
    /// Its host name.
    pub hostname: &'a str,
    /// Its architecture.
    pub arch: &'a str,
    /// Its agent version.
    pub agent_version: &'a str,
    /// Where the request came from (audit).
    pub peer: &'a str,
}

/// Enrolls a new device with the bootstrap token `secret`; returns its device token. An
/// enrolled or revoked id is refused ([`ServiceError::DeviceExists`]) and so is an id outside
/// the token's selector, both audited.
pub async fn enroll(
    state: &AppState,
    secret: &str,
    d: Enrolling<'_>,
    now_ms: i64,
) -> Result<String, ServiceError> {
    let outcome = state
        .db
        .enroll_with_bootstrap(
            secret,
            d.device_id,
            d.hostname,
            d.arch,
            d.agent_version,
            now_ms,
        )
        .await?;
    let detail = format!("host {}, from {}", d.hostname, d.peer);
    match outcome {
        BootstrapEnrollment::Enrolled { token, via } => {
            state
                .db
                .audit(
                    &format!("bootstrap:{}", via.id),
                    "device.enroll",
                    d.device_id,
                    "bootstrap token",
                    &detail,
                )
                .await?;
            tracing::info!(device = %d.device_id, bootstrap = %via.id, "device enrolled with a bootstrap token");
            Ok(token)
        }
        BootstrapEnrollment::UnknownToken => Err(ServiceError::BootstrapUnknown),
        BootstrapEnrollment::Unusable { via, why } => {
            tracing::warn!(device = %d.device_id, bootstrap = %via.id, ?why, peer = %d.peer, "enrollment with an unusable bootstrap token refused");
            Err(ServiceError::BootstrapUnusable { id: via.id, why })
        }
        BootstrapEnrollment::Exists { via, existing } => {
            tracing::warn!(device = %d.device_id, bootstrap = %via.id, peer = %d.peer, state = existing.as_str(), "a bootstrap token asked to enroll an existing device: refused");
            state
                .db
                .audit(
                    &format!("bootstrap:{}", via.id),
                    "device.enroll_refused",
                    d.device_id,
                    &format!("the device is {}", existing.as_str()),
                    &detail,
                )
                .await?;
            Err(ServiceError::DeviceExists {
                device_id: d.device_id.to_owned(),
                existing,
            })
        }
        BootstrapEnrollment::NotSelected { via, labels } => {
            let selector = via.selector_text();
            state
                .db
                .audit(
                    &format!("bootstrap:{}", via.id),
                    "device.enroll_refused",
                    d.device_id,
                    &format!("outside the token's selector {selector}"),
                    &detail,
                )
                .await?;
            Err(ServiceError::NotSelected {
                id: via.id,
                selector,
                device_id: d.device_id.to_owned(),
                labels,
            })
        }
    }
}

/// Parses `key=value,key=value` (empty: no selector).
pub fn parse_selector(text: &str) -> Result<BTreeMap<String, String>, ServiceError> {
    let mut out = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(ServiceError::Invalid(format!(
                "selector part `{part}` is not KEY=VALUE (e.g. `site=berlin,ring=canary`)"
            )));
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || v.is_empty() {
            return Err(ServiceError::Invalid(format!(
                "selector part `{part}` needs a label name and a value"
            )));
        }
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

/// Checks what a new token may do: a life between a minute and [`MAX_TTL_MS`], at least one
/// use, a note of at most 200 bytes.
pub fn check_new(new: &NewBootstrapToken) -> Result<(), ServiceError> {
    if new.ttl_ms < 60_000 || new.ttl_ms > MAX_TTL_MS {
        return Err(ServiceError::Invalid(format!(
            "a bootstrap token lives between 1 minute and {} days",
            MAX_TTL_MS / 86_400_000
        )));
    }
    if new.max_uses.is_some_and(|n| n < 1) {
        return Err(ServiceError::Invalid(
            "`max_uses` must be at least 1 (leave it out for no limit)".into(),
        ));
    }
    if new.note.len() > 200 {
        return Err(ServiceError::Invalid(
            "`note` is longer than 200 bytes".into(),
        ));
    }
    Ok(())
}

/// Creates a bootstrap token as `actor` (audited); returns the secret (shown once) and what is
/// stored.
pub async fn create(
    state: &AppState,
    actor: &str,
    new: &NewBootstrapToken,
    now_ms: i64,
) -> Result<(String, BootstrapToken), ServiceError> {
    create_in(&state.db, actor, new, now_ms).await
}

/// [`create`] on a bare store (the `fleet-controller bootstrap-token create` command).
pub async fn create_in(
    db: &crate::db::Db,
    actor: &str,
    new: &NewBootstrapToken,
    now_ms: i64,
) -> Result<(String, BootstrapToken), ServiceError> {
    check_new(new)?;
    let (secret, stored) = db.create_bootstrap_token(actor, new, now_ms).await?;
    db.audit(
        actor,
        "bootstrap_token.create",
        &stored.id,
        &stored.note,
        &format!(
            "expires {}, max uses {}, selector {}",
            crate::timefmt::utc(stored.expires_ms),
            stored
                .max_uses
                .map_or_else(|| "none".to_owned(), |n| n.to_string()),
            stored.selector_text()
        ),
    )
    .await?;
    Ok((secret, stored))
}

/// Revokes bootstrap token `id` as `actor` (audited); true if it was live until now.
pub async fn revoke_in(
    db: &crate::db::Db,
    actor: &str,
    id: &str,
    reason: &str,
    now_ms: i64,
) -> Result<bool, ServiceError> {
    let Some(was_live) = db.revoke_bootstrap_token(id, now_ms).await? else {
        return Err(ServiceError::NoBootstrapToken(id.to_owned()));
    };
    if was_live {
        db.audit(actor, "bootstrap_token.revoke", id, reason, "")
            .await?;
        tracing::warn!(bootstrap = %id, %actor, "bootstrap token revoked");
    }
    Ok(was_live)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        assert!(parse_selector("").expect("empty").is_empty());
        let s = parse_selector("site=berlin, ring=canary").expect("two");
        assert_eq!(s["site"], "berlin");
        assert_eq!(s["ring"], "canary");
        for bad in ["site", "=x", "site="] {
            assert!(parse_selector(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn new_tokens_are_bounded() {
        let ok = NewBootstrapToken {
            ttl_ms: DEFAULT_TTL_MS,
            ..Default::default()
        };
        assert!(check_new(&ok).is_ok());
        for bad in [
            NewBootstrapToken {
                ttl_ms: MAX_TTL_MS + 1,
                ..ok.clone()
            },
            NewBootstrapToken {
                ttl_ms: 1_000,
                ..ok.clone()
            },
            NewBootstrapToken {
                max_uses: Some(0),
                ..ok.clone()
            },
        ] {
            assert!(check_new(&bad).is_err(), "{bad:?}");
        }
    }
}
