//! Operators' actions on a rollout: pause, resume, abort, promote (audited by the engine).

use super::{AppState, ServiceError};
use crate::rollout::Rollout;

/// What an operator may do to a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutAction {
    /// Stop its clocks and progress.
    Pause,
    /// Go on after a pause, or retry a halted wave from the start.
    Resume,
    /// Send every device of it back to its previous release (final).
    Abort,
    /// Skip the gates: the current wave counts as done and the next starts now.
    Promote,
}

impl RolloutAction {
    /// The action named `s` (`pause`, `resume`, `abort`, `promote`), if any.
    pub fn parse(s: &str) -> Option<RolloutAction> {
        match s {
            "pause" => Some(RolloutAction::Pause),
            "resume" => Some(RolloutAction::Resume),
            "abort" => Some(RolloutAction::Abort),
            "promote" => Some(RolloutAction::Promote),
            _ => None,
        }
    }

    /// Its name (as in URLs, forms and the audit log's `rollout.NAME`).
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Abort => "abort",
            RolloutAction::Promote => "promote",
        }
    }
}

/// Carries out `action` on rollout `id` (`active` names the current one) as `actor`; returns
/// the rollout after it.
pub async fn act(
    state: &AppState,
    id: &str,
    action: RolloutAction,
    actor: &str,
    reason: &str,
) -> Result<Rollout, ServiceError> {
    Ok(crate::engine::act(state, id, action.as_str(), actor, reason).await?)
}
