//! What each device should run: its pin, else what the current rollout says, else the newest
//! release that completed its rollout (late joiners), never one still in progress.

use super::machine::{DeviceView, Rollout};

/// A device's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Run this release.
    Release(String),
    /// Start nothing: stay as you are.
    Hold,
}

/// The fleet's history, for devices the current rollout does not claim.
pub struct Fallback<'a> {
    /// The newest release whose rollout completed.
    pub last_completed: Option<&'a str>,
    /// Whether a release is newer than `last_completed` (from a rollout superseded or in
    /// progress): a device running one holds rather than going back.
    pub is_newer: &'a (dyn Fn(&str) -> bool + Sync),
}

/// The target of one device.
pub fn desired_for(
    device: &DeviceView,
    pinned: Option<&str>,
    rollout: Option<&Rollout>,
    fallback: &Fallback<'_>,
) -> Target {
    if let Some(p) = pinned {
        return Target::Release(p.to_owned());
    }
    if let Some(claim) = rollout.and_then(|r| r.claim(&device.id)) {
        return match claim {
            Some(r) => Target::Release(r.to_owned()),
            None => Target::Hold,
        };
    }
    match (fallback.last_completed, device.current.as_ref()) {
        (Some(lc), Some(c)) if c.as_str() != lc && (fallback.is_newer)(c.as_str()) => Target::Hold,
        (Some(lc), _) => Target::Release(lc.to_owned()),
        (None, _) => Target::Hold,
    }
}
