//! Why a service operation failed; each face maps it to its own answer (`ApiError`,
//! `PageError`), and the messages are the faces' messages.

use crate::db::DbError;
use crate::engine::EngineError;
use crate::rollout::OpError;

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
    /// No such rollout.
    #[error("no rollout `{0}`")]
    NoRollout(String),
    /// The rollout action does not apply in the rollout's state.
    #[error("{0}")]
    Refused(#[from] OpError),
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
        }
    }
}
