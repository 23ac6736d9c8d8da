//! What to do with a check-in answer: a pure function of the answer and what the device runs,
//! tested by table. The loop in [`super::mode`] carries the action out.
//!
//! Guarantees:
//! - The device only ever moves to a release the controller names (never the branch head).
//! - Under the emergency stop it starts no update, except the one move the stop itself orders
//!   (`fleetctl stop --rollback`): back to the device's `previous` release.
//! - A release this device marked bad is never installed again.
//! - A release is not retried in the check-in that reports its result: a failed or skipped
//!   attempt is tried again one interval later at the earliest, never in a tight loop.
//! - Operator safe mode is entered whatever else the answer says, and left only when the
//!   operator clears it; safe mode the agent entered on its own (a failed rollback, nothing
//!   valid) is left only by installing a release that passes its health window.
//! - Stop and halt act before the swap, never in the middle of it ([`may_swap`]): a release
//!   fetched and pulled is swapped in only if a check-in just before the swap still asks for
//!   it; after the swap the health window always runs to its verdict.

use fleet_config::protocol::{CheckinResponse, Desired, ReleaseId};
use fleet_config::TreeDigest;

/// Why the device is in safe mode, if it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SafeMode {
    /// Not in safe mode.
    Off,
    /// Because an operator asked (`fleetctl safe-mode DEVICE on`).
    Operator,
    /// On its own: a failed rollback, nothing valid to run, a release failing at boot.
    Automatic,
}

/// What the device runs, as the decision needs it.
#[derive(Debug, Clone, Copy)]
pub struct Local<'a> {
    /// The release `current` names.
    pub current: Option<&'a ReleaseId>,
    /// The release `previous` names.
    pub previous: Option<&'a ReleaseId>,
    /// Safe mode, and why.
    pub safe_mode: SafeMode,
    /// Releases this device refuses.
    pub bad: &'a [ReleaseId],
    /// The release the last action tried, when this check-in is the one reporting its result.
    pub just_attempted: Option<&'a ReleaseId>,
}

/// Why the device stays as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stay {
    /// The controller answered `hold`.
    Hold,
    /// The emergency stop is set.
    EmergencyStop,
    /// Already running the desired release.
    UpToDate,
    /// The desired release is marked bad here.
    MarkedBad(ReleaseId),
    /// The desired release was just tried; its result goes to the controller first.
    JustAttempted(ReleaseId),
    /// In safe mode at an operator's request.
    SafeModeRequested,
}

/// The next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start nothing.
    Stay(Stay),
    /// Run the update transaction to `release`, verifying `digest`.
    Update {
        /// The release.
        release: ReleaseId,
        /// Its tree digest, as the controller announced it.
        digest: TreeDigest,
    },
    /// Run the safe-mode stack at the operator's request.
    EnterSafeMode,
    /// The operator cleared safe mode: apply `current` again and watch its health.
    LeaveSafeMode,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Stay(Stay::Hold) => f.write_str("holding: the controller says hold"),
            Action::Stay(Stay::EmergencyStop) => f.write_str("holding: emergency stop"),
            Action::Stay(Stay::UpToDate) => f.write_str("running the desired release"),
            Action::Stay(Stay::MarkedBad(r)) => {
                write!(f, "refusing {}: marked bad on this device", r.short())
            }
            Action::Stay(Stay::JustAttempted(r)) => {
                write!(f, "reported the result of {}", r.short())
            }
            Action::Stay(Stay::SafeModeRequested) => {
                f.write_str("in safe mode at an operator's request")
            }
            Action::Update { release, .. } => write!(f, "updating to {}", release.short()),
            Action::EnterSafeMode => f.write_str("entering safe mode at an operator's request"),
            Action::LeaveSafeMode => f.write_str("leaving safe mode: the operator cleared it"),
        }
    }
}

/// Decides what to do with `resp` given what the device runs.
pub fn decide(resp: &CheckinResponse, local: &Local<'_>) -> Action {
    let bad = |r: &ReleaseId| local.bad.contains(r);
    if resp.safe_mode {
        return match local.safe_mode {
            SafeMode::Operator => Action::Stay(Stay::SafeModeRequested),
            // Also from automatic safe mode: the operator now owns it, and clearing it later
            // brings `current` back.
            SafeMode::Off | SafeMode::Automatic => Action::EnterSafeMode,
        };
    }
    if local.safe_mode == SafeMode::Operator {
        // Leaving starts no new release, so the emergency stop does not hold it back. With no
        // usable `current`, only a new release can take the device out (below).
        if local.current.is_some_and(|c| !bad(c)) {
            return Action::LeaveSafeMode;
        }
    }
    let (release, digest) = match &resp.desired {
        Desired::Release { release, digest } => (release, digest),
        Desired::Hold if resp.emergency_stop => return Action::Stay(Stay::EmergencyStop),
        Desired::Hold => return Action::Stay(Stay::Hold),
    };
    if resp.emergency_stop {
        let rollback = local.previous == Some(release) && local.current != Some(release);
        if !rollback {
            return Action::Stay(Stay::EmergencyStop);
        }
    }
    if bad(release) {
        return Action::Stay(Stay::MarkedBad(release.clone()));
    }
    if local.just_attempted == Some(release) {
        return Action::Stay(Stay::JustAttempted(release.clone()));
    }
    if local.current == Some(release) && local.safe_mode == SafeMode::Off {
        return Action::Stay(Stay::UpToDate);
    }
    // A new release; or, in safe mode, the current one applied again through the transaction
    // (a failure marks it bad, so this happens once).
    Action::Update {
        release: release.clone(),
        digest: *digest,
    }
}

/// Just before the swap of a prepared `release`, with a fresh answer: `Ok` if the controller
/// still wants it, else what it wants now (the update is abandoned; the next check-in acts).
pub fn may_swap(
    resp: &CheckinResponse,
    local: &Local<'_>,
    release: &ReleaseId,
) -> Result<(), Action> {
    match decide(resp, local) {
        Action::Update { release: r, .. } if &r == release => Ok(()),
        other => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(c: char) -> ReleaseId {
        c.to_string().repeat(40).parse().expect("sha")
    }

    fn digest() -> TreeDigest {
        format!("sha256:{}", "0".repeat(64))
            .parse()
            .expect("digest")
    }

    fn resp(desired: Option<char>, stop: bool, safe_mode: bool) -> CheckinResponse {
        CheckinResponse {
            desired: match desired {
                None => Desired::Hold,
                Some(c) => Desired::Release {
                    release: sha(c),
                    digest: digest(),
                },
            },
            emergency_stop: stop,
            safe_mode,
            acked_seq: 0,
            next_checkin_secs: 60,
            logs: None,
        }
    }

    fn update(c: char) -> Action {
        Action::Update {
            release: sha(c),
            digest: digest(),
        }
    }

    #[test]
    fn decision_table() {
        use SafeMode::{Automatic, Off, Operator};
        let (a, b, c, x) = (sha('a'), sha('b'), sha('c'), sha('f'));
        let bad_x = [x.clone()];
        // (case, desired, stop, safe_mode asked, current, previous, safe mode, bad, just tried, expected)
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            &str,
            Option<char>,
            bool,
            bool,
            Option<&ReleaseId>,
            Option<&ReleaseId>,
            SafeMode,
            &[ReleaseId],
            Option<&ReleaseId>,
            Action,
        )> = vec![
            (
                "hold",
                None,
                false,
                false,
                Some(&a),
                None,
                Off,
                &[],
                None,
                Action::Stay(Stay::Hold),
            ),
            (
                "hold, nothing installed",
                None,
                false,
                false,
                None,
                None,
                Off,
                &[],
                None,
                Action::Stay(Stay::Hold),
            ),
            (
                "stop with hold",
                None,
                true,
                false,
                Some(&a),
                Some(&b),
                Off,
                &[],
                None,
                Action::Stay(Stay::EmergencyStop),
            ),
            (
                "stop with a new release",
                Some('c'),
                true,
                false,
                Some(&a),
                Some(&b),
                Off,
                &[],
                None,
                Action::Stay(Stay::EmergencyStop),
            ),
            (
                "stop --rollback: back to previous",
                Some('b'),
                true,
                false,
                Some(&a),
                Some(&b),
                Off,
                &[],
                None,
                update('b'),
            ),
            (
                "stop, already on it",
                Some('a'),
                true,
                false,
                Some(&a),
                Some(&a),
                Off,
                &[],
                None,
                Action::Stay(Stay::EmergencyStop),
            ),
            (
                "same release",
                Some('a'),
                false,
                false,
                Some(&a),
                Some(&b),
                Off,
                &[],
                None,
                Action::Stay(Stay::UpToDate),
            ),
            (
                "new release",
                Some('c'),
                false,
                false,
                Some(&a),
                Some(&b),
                Off,
                &[],
                None,
                update('c'),
            ),
            (
                "first release",
                Some('c'),
                false,
                false,
                None,
                None,
                Off,
                &[],
                None,
                update('c'),
            ),
            (
                "wave halted: back to previous",
                Some('b'),
                false,
                false,
                Some(&a),
                Some(&b),
                Off,
                &[],
                None,
                update('b'),
            ),
            (
                "bad release",
                Some('f'),
                false,
                false,
                Some(&a),
                None,
                Off,
                &bad_x,
                None,
                Action::Stay(Stay::MarkedBad(x.clone())),
            ),
            (
                "bad release under stop --rollback",
                Some('f'),
                true,
                false,
                Some(&a),
                Some(&x),
                Off,
                &bad_x,
                None,
                Action::Stay(Stay::MarkedBad(x.clone())),
            ),
            (
                "result of c not reported yet",
                Some('c'),
                false,
                false,
                Some(&a),
                None,
                Off,
                &[],
                Some(&c),
                Action::Stay(Stay::JustAttempted(c.clone())),
            ),
            (
                "another release after c",
                Some('b'),
                false,
                false,
                Some(&c),
                Some(&a),
                Off,
                &[],
                Some(&c),
                update('b'),
            ),
            (
                "safe mode on",
                Some('a'),
                false,
                true,
                Some(&a),
                None,
                Off,
                &[],
                None,
                Action::EnterSafeMode,
            ),
            (
                "safe mode on, under stop",
                None,
                true,
                true,
                Some(&a),
                None,
                Off,
                &[],
                None,
                Action::EnterSafeMode,
            ),
            (
                "safe mode on, already automatic",
                None,
                false,
                true,
                None,
                None,
                Automatic,
                &[],
                None,
                Action::EnterSafeMode,
            ),
            (
                "safe mode on, already in it",
                Some('c'),
                false,
                true,
                Some(&a),
                None,
                Operator,
                &[],
                None,
                Action::Stay(Stay::SafeModeRequested),
            ),
            (
                "safe mode off",
                Some('a'),
                false,
                false,
                Some(&a),
                None,
                Operator,
                &[],
                None,
                Action::LeaveSafeMode,
            ),
            (
                "safe mode off under stop",
                None,
                true,
                false,
                Some(&a),
                None,
                Operator,
                &[],
                None,
                Action::LeaveSafeMode,
            ),
            (
                "safe mode off, current bad: a new release takes it out",
                Some('c'),
                false,
                false,
                Some(&x),
                None,
                Operator,
                &bad_x,
                None,
                update('c'),
            ),
            (
                "safe mode off, nothing installed",
                None,
                false,
                false,
                None,
                None,
                Operator,
                &[],
                None,
                Action::Stay(Stay::Hold),
            ),
            (
                "automatic safe mode, new release",
                Some('c'),
                false,
                false,
                None,
                None,
                Automatic,
                &[],
                None,
                update('c'),
            ),
            (
                "automatic safe mode, retry current once",
                Some('a'),
                false,
                false,
                Some(&a),
                None,
                Automatic,
                &[],
                None,
                update('a'),
            ),
            (
                "automatic safe mode, current failed again",
                Some('f'),
                false,
                false,
                Some(&x),
                None,
                Automatic,
                &bad_x,
                None,
                Action::Stay(Stay::MarkedBad(x.clone())),
            ),
            (
                "automatic safe mode, hold",
                None,
                false,
                false,
                Some(&a),
                None,
                Automatic,
                &[],
                None,
                Action::Stay(Stay::Hold),
            ),
        ];
        for (name, desired, stop, asked, current, previous, safe_mode, bad, just, want) in cases {
            let local = Local {
                current,
                previous,
                safe_mode,
                bad,
                just_attempted: just,
            };
            assert_eq!(
                decide(&resp(desired, stop, asked), &local),
                want,
                "case: {name}"
            );
        }
    }

    #[test]
    fn the_swap_goes_ahead_only_if_the_controller_still_asks_for_it() {
        let (a, b) = (sha('a'), sha('b'));
        let local = Local {
            current: Some(&a),
            previous: Some(&b),
            safe_mode: SafeMode::Off,
            bad: &[],
            just_attempted: None,
        };
        let c = sha('c');
        let cases: Vec<(&str, CheckinResponse, &ReleaseId, Result<(), Action>)> = vec![
            ("still wanted", resp(Some('c'), false, false), &c, Ok(())),
            (
                "emergency stop",
                resp(Some('c'), true, false),
                &c,
                Err(Action::Stay(Stay::EmergencyStop)),
            ),
            (
                "halted: hold",
                resp(None, false, false),
                &c,
                Err(Action::Stay(Stay::Hold)),
            ),
            (
                "superseded",
                resp(Some('d'), false, false),
                &c,
                Err(update('d')),
            ),
            (
                "safe mode asked",
                resp(Some('c'), false, true),
                &c,
                Err(Action::EnterSafeMode),
            ),
            (
                "stop --rollback to previous",
                resp(Some('b'), true, false),
                &b,
                Ok(()),
            ),
        ];
        for (name, r, release, want) in cases {
            assert_eq!(may_swap(&r, &local, release), want, "case: {name}");
        }
    }
}
