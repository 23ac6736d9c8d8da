//! Boot recovery: what to do with whatever an interrupted agent left behind.
//!
//! Guarantee: after power loss at any instant, `current` names a complete, verified release
//! (or nothing, before the first install), because releases are only ever published by renaming
//! a fully written and fsynced staging directory, and `current` only ever changes by an atomic
//! symlink rename. What recovery must decide is which of the two the device should *run*:
//! this module is that decision, a pure function of the journal and the links, tested by table.

use fleet_config::protocol::{ReleaseId, UpdatePhase};

use crate::journal::Journal;
use crate::layout::LinkState;

/// Installs of one release interrupted this many times (power cuts during its switch or health
/// window) mark it bad, so a release that crashes the device is not retried forever.
pub const MAX_ATTEMPTS: u32 = 3;

/// What the agent found on disk at start.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The journal: `Ok(None)` absent, `Err(())` corrupt.
    pub journal: Result<Option<Journal>, ()>,
    /// The `current` link.
    pub current: LinkState,
    /// The `previous` link.
    pub previous: LinkState,
    /// Complete release directories on disk.
    pub staged: Vec<ReleaseId>,
}

/// What recovery does, in order of the fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The journal to write before anything else.
    pub journal: Journal,
    /// Point `current` here (`Some(None)` removes it; `None` leaves it).
    pub set_current: Option<Option<ReleaseId>>,
    /// The release to (re)apply to the runtime, or `None` for safe mode.
    pub run: Option<ReleaseId>,
    /// Why, for the log and the controller.
    pub reason: String,
}

/// Decides how to recover. `staging` leftovers are always deleted by the caller.
pub fn plan(obs: &Observed) -> Plan {
    let current = obs.current.release().cloned();
    let previous = obs.previous.release().cloned();
    let journal = match &obs.journal {
        Ok(Some(j)) => j.clone(),
        Ok(None) => {
            return settle(
                Journal::idle(current.clone()),
                current.clone(),
                previous,
                "no journal: first start".into(),
                &obs.current,
            )
        }
        Err(()) => {
            // Rebuilt from the symlinks; bad-release marks are lost, which only means a bad
            // release may be tried once more.
            return settle(
                Journal::idle(current.clone()),
                current.clone(),
                previous,
                "journal was corrupt: rebuilt from the symlinks".into(),
                &obs.current,
            );
        }
    };

    if journal.phase.is_past_swap() {
        // Interrupted between the swap and the verdict: return to what ran before. The swap
        // may or may not have happened, so go by the journal's `from`, not by `current`.
        let mut j = journal.clone();
        let to = j.to.take();
        let back = j.from.clone();
        let mut reason = format!(
            "update to {} was interrupted while {:?}; rolling back to {}",
            to.as_ref().map_or("?", ReleaseId::short),
            journal.phase,
            back.as_ref().map_or("nothing", ReleaseId::short)
        );
        if let Some(to) = &to {
            if j.attempts >= MAX_ATTEMPTS {
                j.mark_bad(
                    to,
                    "interrupted too many times during its switch or health window",
                );
                reason.push_str(&format!(
                    "; marked bad after {} interrupted attempts",
                    j.attempts
                ));
            }
        }
        j.phase = UpdatePhase::Idle;
        j.started_at_ms = None;
        return match back {
            Some(b) if obs.staged.contains(&b) => Plan {
                journal: j,
                set_current: Some(Some(b.clone())),
                run: Some(b),
                reason,
            },
            Some(b) => {
                let why = format!("the release to roll back to ({}) is missing", b.short());
                j.phase = UpdatePhase::SafeMode;
                j.safe_mode = Some(why.clone());
                j.from = None;
                Plan {
                    journal: j,
                    set_current: Some(None),
                    run: None,
                    reason: format!("{reason}; {why}: entering safe mode"),
                }
            }
            // The very first install was interrupted: there is nothing to go back to.
            None => Plan {
                journal: j,
                set_current: Some(None),
                run: None,
                reason,
            },
        };
    }

    // Before the swap (or idle): `current` was never touched by this update.
    let mut j = journal;
    let mut reason = String::from("clean start");
    if j.phase != UpdatePhase::Idle && j.phase != UpdatePhase::SafeMode {
        reason = format!(
            "update to {} was interrupted while {:?}, before the swap; nothing to undo",
            j.to.as_ref().map_or("?", ReleaseId::short),
            j.phase
        );
        j.phase = UpdatePhase::Idle;
        j.to = None;
        j.started_at_ms = None;
    }
    settle(j, current, previous, reason, &obs.current)
}

/// Chooses what to run given the links: `current` if valid, else `previous`, else safe mode.
fn settle(
    mut j: Journal,
    current: Option<ReleaseId>,
    previous: Option<ReleaseId>,
    reason: String,
    current_state: &LinkState,
) -> Plan {
    match (current, previous, current_state) {
        (Some(c), _, _) => {
            j.from = Some(c.clone());
            let in_safe_mode = j.safe_mode.is_some();
            Plan {
                journal: j,
                set_current: None,
                run: (!in_safe_mode).then_some(c),
                reason,
            }
        }
        (None, Some(p), LinkState::Invalid(target)) => {
            j.from = Some(p.clone());
            j.phase = UpdatePhase::Idle;
            Plan {
                reason: format!(
                    "{reason}; `current` points at {} which is not a complete release: falling back to previous {}",
                    target.display(),
                    p.short()
                ),
                journal: j,
                set_current: Some(Some(p.clone())),
                run: Some(p),
            }
        }
        (None, _, LinkState::Absent) => {
            // Nothing installed yet: a fresh device. Not safe mode: it will install the
            // first release it is told to.
            j.from = None;
            Plan {
                journal: j,
                set_current: None,
                run: None,
                reason: format!("{reason}; no release installed yet"),
            }
        }
        (None, _, _) => {
            let why =
                "no valid release to run: `current` and `previous` are both missing or broken";
            j.phase = UpdatePhase::SafeMode;
            j.safe_mode = Some(why.into());
            j.from = None;
            Plan {
                journal: j,
                set_current: Some(None),
                run: None,
                reason: format!("{reason}; {why}: entering safe mode"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn sha(c: char) -> ReleaseId {
        c.to_string().repeat(40).parse().expect("sha")
    }

    fn journal(phase: UpdatePhase, from: Option<char>, to: Option<char>, attempts: u32) -> Journal {
        let mut j = Journal::idle(from.map(sha));
        j.phase = phase;
        j.to = to.map(sha);
        j.attempts = attempts;
        j
    }

    fn obs(j: Result<Option<Journal>, ()>, current: LinkState, previous: LinkState) -> Observed {
        Observed {
            journal: j,
            current,
            previous,
            staged: vec![sha('a'), sha('b')],
        }
    }

    use LinkState::{Absent, Invalid, Valid};
    use UpdatePhase::*;

    #[test]
    fn recovery_table() {
        // (journal, current, previous) -> (set_current, run, phase after, bad marked)
        type Case = (
            Result<Option<Journal>, ()>,
            LinkState,
            LinkState,
            Option<Option<ReleaseId>>,
            Option<ReleaseId>,
            UpdatePhase,
            bool,
        );
        let cases: Vec<(&str, Case)> = vec![
            (
                "idle on a",
                (
                    Ok(Some(journal(Idle, Some('a'), None, 0))),
                    Valid(sha('a')),
                    Absent,
                    None,
                    Some(sha('a')),
                    Idle,
                    false,
                ),
            ),
            (
                "first start",
                (Ok(None), Absent, Absent, None, None, Idle, false),
            ),
            (
                "cut while staging",
                (
                    Ok(Some(journal(Staging, Some('a'), Some('b'), 1))),
                    Valid(sha('a')),
                    Absent,
                    None,
                    Some(sha('a')),
                    Idle,
                    false,
                ),
            ),
            (
                "cut while pulling",
                (
                    Ok(Some(journal(Pulling, Some('a'), Some('b'), 1))),
                    Valid(sha('a')),
                    Absent,
                    None,
                    Some(sha('a')),
                    Idle,
                    false,
                ),
            ),
            (
                "cut while switching, before the rename",
                (
                    Ok(Some(journal(Switching, Some('a'), Some('b'), 1))),
                    Valid(sha('a')),
                    Absent,
                    Some(Some(sha('a'))),
                    Some(sha('a')),
                    Idle,
                    false,
                ),
            ),
            (
                "cut while switching, after the rename",
                (
                    Ok(Some(journal(Switching, Some('a'), Some('b'), 1))),
                    Valid(sha('b')),
                    Absent,
                    Some(Some(sha('a'))),
                    Some(sha('a')),
                    Idle,
                    false,
                ),
            ),
            (
                "cut while verifying",
                (
                    Ok(Some(journal(Verifying, Some('a'), Some('b'), 2))),
                    Valid(sha('b')),
                    Valid(sha('a')),
                    Some(Some(sha('a'))),
                    Some(sha('a')),
                    Idle,
                    false,
                ),
            ),
            (
                "third interrupted attempt marks bad",
                (
                    Ok(Some(journal(Verifying, Some('a'), Some('b'), 3))),
                    Valid(sha('b')),
                    Valid(sha('a')),
                    Some(Some(sha('a'))),
                    Some(sha('a')),
                    Idle,
                    true,
                ),
            ),
            (
                "cut during the first install",
                (
                    Ok(Some(journal(Switching, None, Some('b'), 1))),
                    Valid(sha('b')),
                    Absent,
                    Some(None),
                    None,
                    Idle,
                    false,
                ),
            ),
            (
                "corrupt journal, current valid",
                (
                    Err(()),
                    Valid(sha('b')),
                    Valid(sha('a')),
                    None,
                    Some(sha('b')),
                    Idle,
                    false,
                ),
            ),
            (
                "current broken, previous valid",
                (
                    Ok(Some(journal(Idle, Some('a'), None, 0))),
                    Invalid(PathBuf::from("releases/zzz")),
                    Valid(sha('b')),
                    Some(Some(sha('b'))),
                    Some(sha('b')),
                    Idle,
                    false,
                ),
            ),
            (
                "nothing valid",
                (
                    Ok(Some(journal(Idle, Some('a'), None, 0))),
                    Invalid(PathBuf::from("releases/zzz")),
                    Invalid(PathBuf::from("x")),
                    Some(None),
                    None,
                    SafeMode,
                    false,
                ),
            ),
        ];
        for (name, (j, cur, prev, set_current, run, phase, bad)) in cases {
            let p = plan(&obs(j, cur, prev));
            assert_eq!(
                p.set_current, set_current,
                "{name}: set_current ({})",
                p.reason
            );
            assert_eq!(p.run, run, "{name}: run ({})", p.reason);
            assert_eq!(p.journal.phase, phase, "{name}: phase ({})", p.reason);
            assert_eq!(
                p.journal.is_bad(&sha('b')),
                bad,
                "{name}: bad mark ({})",
                p.reason
            );
            assert!(
                p.journal.to.is_none() || phase == SafeMode,
                "{name}: nothing left in flight"
            );
        }
    }

    #[test]
    fn rollback_target_missing_enters_safe_mode() {
        let mut o = obs(
            Ok(Some(journal(Verifying, Some('c'), Some('b'), 1))),
            Valid(sha('b')),
            Absent,
        );
        o.staged = vec![sha('b')];
        let p = plan(&o);
        assert_eq!(p.journal.phase, SafeMode);
        assert_eq!(p.run, None);
    }
}
