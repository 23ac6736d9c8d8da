//! Why a service operation failed; each face maps it to its own answer (`ApiError`,
//! `PageError`), and the messages are the faces' messages.

use crate::db::{DbError, Existing, Unusable};
use crate::engine::EngineError;
use crate::rollout::OpError;
use crate::timefmt::utc;

/// A service operation's failure.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The store failed.
    #[error("{0}")]
    Db(#[from] DbError),
    /// An emergency stop needs a reason (on-call reads it).
    #[error("`reason` is required and must not be blank")]
    ReasonRequired,
    /// No such device.
    #[error("no device `{0}`")]
    NoDevice(String),
    /// No such pairing code.
    #[error("no pairing code `{0}`")]
    NoPairing(String),
    /// The pairing code expired.
    #[error("pairing code `{0}` expired; the device asks for a new one by itself")]
    PairingExpired(String),
    /// The pairing code was used.
    #[error("pairing code `{0}` was used already")]
    PairingUsed(String),
    /// Approving the pairing code would replace an enrolled or revoked device, and the
    /// approver did not say `replace`.
    #[error(
        "pairing code `{code}` (host `{hostname}`) asks for device `{device_id}`, which {}; \
             if `{device_id}` was re-flashed and this is it, approve again with `replace: true` \
             (fleetctl devices approve {code} --replace)",
        describe(existing)
    )]
    WouldReplace {
        /// The code.
        code: String,
        /// The device it asks for.
        device_id: String,
        /// The host name the agent reported.
        hostname: String,
        /// What is there.
        existing: Existing,
    },
    /// A bootstrap token asked to enroll an id that is taken.
    #[error("{}", exists_message(device_id, existing))]
    DeviceExists {
        /// The device.
        device_id: String,
        /// What is there.
        existing: Existing,
    },
    /// No such bootstrap token (enrollment).
    #[error("unknown bootstrap token")]
    BootstrapUnknown,
    /// The bootstrap token is revoked, expired or used up.
    #[error("bootstrap token `{id}` {}", unusable(why))]
    BootstrapUnusable {
        /// Its public id.
        id: String,
        /// Why.
        why: Unusable,
    },
    /// The bootstrap token may not enroll this id.
    #[error("bootstrap token `{id}` may enroll only devices matching `{selector}`; `{device_id}` {}", match labels {
        None => "is not in the newest release's devices.yaml".to_owned(),
        Some(l) => format!("has labels {}", serde_json::to_string(l).unwrap_or_default()),
    })]
    NotSelected {
        /// Its public id.
        id: String,
        /// Its selector.
        selector: String,
        /// The device.
        device_id: String,
        /// The device's inventory labels.
        labels: Option<std::collections::BTreeMap<String, String>>,
    },
    /// No bootstrap token with this id (list, revoke).
    #[error("no bootstrap token `{0}`; `fleetctl bootstrap-tokens list` shows them")]
    NoBootstrapToken(String),
    /// A request field is out of range.
    #[error("{0}")]
    Invalid(String),
    /// No such rollout.
    #[error("no rollout `{0}`")]
    NoRollout(String),
    /// No such alert.
    #[error("no alert `{0}`; `fleetctl alerts list` shows them")]
    NoAlert(String),
    /// No such silence in force.
    #[error("no silence `{0}` in force; `fleetctl alerts silences` lists them")]
    NoSilence(String),
    /// A pin names no valid release the controller has seen.
    #[error("no valid release `{0}`: pin a release the controller has seen and accepted (`fleetctl releases` lists them)")]
    NoRelease(String),
    /// A pin names a prefix of several releases.
    #[error("`{prefix}` is the start of several releases ({}); give more of the sha", .matches.join(", "))]
    AmbiguousRelease {
        /// What was given.
        prefix: String,
        /// What it matches.
        matches: Vec<String>,
    },
    /// The rollout action does not apply in the rollout's state.
    #[error("{0}")]
    Refused(#[from] OpError),
    /// The rollout kept changing under the action (the leader and other operators writing
    /// it at the same time); nothing was changed.
    #[error("{0}")]
    Busy(String),
    /// A stored rollout is unreadable.
    #[error("stored rollout {id} is unreadable: {reason}")]
    Corrupt {
        /// Rollout.
        id: String,
        /// Why.
        reason: String,
    },
}

impl From<EngineError> for ServiceError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Db(d) => ServiceError::Db(d),
            EngineError::NotFound(what) => ServiceError::NoRollout(what),
            EngineError::Op(op) => ServiceError::Refused(op),
            EngineError::Corrupt { id, reason } => ServiceError::Corrupt { id, reason },
            e @ (EngineError::Contended { .. } | EngineError::Exists(_)) => {
                ServiceError::Busy(e.to_string())
            }
        }
    }
}

fn describe(e: &Existing) -> String {
    match e {
        Existing::Enrolled {
            last_seen_ms: Some(t),
        } => format!(
            "is enrolled already (last check-in {}): approving would replace that device's token \
             and cut the device off",
            utc(*t)
        ),
        Existing::Enrolled { last_seen_ms: None } => "is enrolled already (it never checked in): \
             approving would replace that device's token"
            .to_owned(),
        Existing::Revoked { revoked_ms } => format!(
            "was revoked at {}: approving would bring it back with a new token",
            utc(*revoked_ms)
        ),
    }
}

fn exists_message(device_id: &str, e: &Existing) -> String {
    match e {
        Existing::Enrolled { .. } => format!(
            "device `{device_id}` is enrolled already; a bootstrap token never replaces a device's \
             token. If it was re-flashed, enroll without the bootstrap token and have an operator \
             approve its pairing code with `replace`"
        ),
        Existing::Revoked { revoked_ms } => format!(
            "device `{device_id}` was revoked at {}; it stays revoked until an operator approves a \
             pairing code for it with `replace`",
            utc(*revoked_ms)
        ),
    }
}

fn unusable(why: &Unusable) -> String {
    match why {
        Unusable::Revoked(at) => format!("was revoked at {}", utc(*at)),
        Unusable::Expired(at) => format!(
            "expired at {}; create a new one (fleet-controller bootstrap-token create)",
            utc(*at)
        ),
        Unusable::UsedUp(n) => format!("has enrolled its {n} devices, its limit"),
    }
}
