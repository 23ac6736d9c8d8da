//! The watchdog's decisions, apart from I/O: a pure function of (thresholds, what was observed,
//! what the watchdog did before) → a verdict on the agent and an action, tested by tables.
//!
//! The verdict, in order:
//! 1. **Crash-looping**: more than `max_restarts` restarts within `restart_window` (restarts
//!    are the starts the agent recorded in its heartbeat this boot, the boot's first start not
//!    counted), and the latest life has not yet run `stable_after` with a fresh heartbeat.
//! 2. **Hung**: a process holds the agent's lock, but its heartbeat is more than `hung_grace`
//!    past the time it said the next one was due (a loop turn's bound, or its update phase's
//!    deadline).
//! 3. **Dead**: nobody holds the lock, and the last heartbeat of this boot (or, without one,
//!    the watchdog's own start) is more than `dead_after` old. systemd restarts a dead agent
//!    within seconds; `dead_after` gives it that chance first.
//! 4. **Alive** otherwise (including "started, no heartbeat yet").
//!
//! The action: while dead or hung, keep the safe stack running (start it whenever it is not:
//! no agent is there to disagree). While crash-looping, start it once per agent life: a life
//! that then removes it has decided so, and the watchdog does not fight it. Once the agent is
//! alive again after the watchdog acted, hand back: write so, and touch nothing.

use std::time::Duration;

use fleet_config::liveness::{Heartbeat, MAX_STARTS};

/// When the agent counts as dead, hung or crash-looping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// No lock holder and no heartbeat for this long: dead.
    pub dead_after: Duration,
    /// A lock holder whose heartbeat is this far past due: hung.
    pub hung_grace: Duration,
    /// More restarts than this within `restart_window`: crash-looping.
    pub max_restarts: usize,
    /// The crash-loop window.
    pub restart_window: Duration,
    /// A life that has beaten this long is stable: no longer crash-looping.
    pub stable_after: Duration,
}

/// Defaults, as named constants so the documentation and the code agree.
pub mod defaults {
    use std::time::Duration;
    /// 60 s: longer than systemd takes to restart a dead agent.
    pub const DEAD_AFTER: Duration = Duration::from_secs(60);
    /// 60 s past the heartbeat's own deadline.
    pub const HUNG_GRACE: Duration = Duration::from_secs(60);
    /// 3 restarts (more is a crash loop).
    pub const MAX_RESTARTS: usize = 3;
    /// 5 minutes.
    pub const RESTART_WINDOW: Duration = Duration::from_secs(300);
    /// 60 s of heartbeats after the latest start.
    pub const STABLE_AFTER: Duration = Duration::from_secs(60);
    /// How often the watchdog looks: 2 s.
    pub const POLL: Duration = Duration::from_secs(2);
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            dead_after: defaults::DEAD_AFTER,
            hung_grace: defaults::HUNG_GRACE,
            max_restarts: defaults::MAX_RESTARTS,
            restart_window: defaults::RESTART_WINDOW,
            stable_after: defaults::STABLE_AFTER,
        }
    }
}

/// What the watchdog saw in one look. Times are boot-clock milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// Now.
    pub now_ms: u64,
    /// When this watchdog started.
    pub watching_since_ms: u64,
    /// The pid holding the agent's lock, if any.
    pub lock_holder: Option<u32>,
    /// The agent's heartbeat, if it wrote one this boot.
    pub heartbeat: Option<Heartbeat>,
}

/// The watchdog's verdict on the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Alive, or not yet judged.
    Alive,
    /// Nobody holds the lock and nothing was heard for `quiet`.
    Dead {
        /// How long nothing was heard.
        quiet: Duration,
    },
    /// A process holds the lock but its heartbeat is `overdue`.
    Hung {
        /// The holder.
        pid: u32,
        /// How far past due.
        overdue: Duration,
    },
    /// Restarted `restarts` times within the window.
    CrashLooping {
        /// Restarts in the window.
        restarts: usize,
        /// The window.
        window: Duration,
        /// Whether a process holds the lock now (a life in progress).
        running: bool,
    },
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use fleet_config::units::format_duration as d;
        match self {
            Verdict::Alive => f.write_str("the agent is alive"),
            Verdict::Dead { quiet } => write!(
                f,
                "the agent is dead: no process holds its lock and nothing was heard from it for {}",
                d(*quiet)
            ),
            Verdict::Hung { pid, overdue } => write!(
                f,
                "the agent (pid {pid}) is hung: its heartbeat is {} overdue",
                d(*overdue)
            ),
            Verdict::CrashLooping {
                restarts, window, ..
            } => write!(
                f,
                "the agent is crash-looping: {restarts} restarts within {}",
                d(*window)
            ),
        }
    }
}

/// What the watchdog did before, as far as the decision needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    /// The watchdog started safe mode and has not handed back since.
    pub acting: bool,
    /// For a crash loop: the start (boot-clock ms) of the agent life it last acted during.
    pub acted_for_start: Option<u64>,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    Watch,
    /// Make sure the safe stack runs (idempotent: nothing when it already does).
    EnsureSafeStack,
    /// The agent is back: say so, and leave what runs to it.
    HandBack,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Restarts among `starts` within `window` of `now_ms`: the boot's first start is not one
/// (known when fewer than [`MAX_STARTS`] were kept).
fn restarts(starts: &[u64], now_ms: u64, window: Duration) -> usize {
    let since = now_ms.saturating_sub(ms(window));
    let in_window = starts.iter().filter(|s| **s >= since).count();
    let first_of_boot_in_window =
        starts.len() < MAX_STARTS && starts.first().is_some_and(|s| *s >= since);
    in_window - usize::from(first_of_boot_in_window)
}

/// The verdict on the agent; see the module docs.
pub fn judge(t: &Thresholds, o: &Observation) -> Verdict {
    let hb = o.heartbeat.as_ref();
    // Only a heartbeat written by the process holding the lock speaks for a running agent.
    let holder_beats = |h: &&Heartbeat| o.lock_holder == Some(h.pid);
    if let Some(h) = hb {
        let restarts = restarts(&h.starts_ms, o.now_ms, t.restart_window);
        let latest_start = h.starts_ms.last().copied().unwrap_or(0);
        let stable = hb.filter(holder_beats).is_some_and(|h| {
            o.now_ms.saturating_sub(latest_start) >= ms(t.stable_after) && o.now_ms <= h.due_ms
        });
        if restarts > t.max_restarts && !stable {
            return Verdict::CrashLooping {
                restarts,
                window: t.restart_window,
                running: o.lock_holder.is_some(),
            };
        }
    }
    match o.lock_holder {
        Some(pid) => match hb.filter(holder_beats) {
            Some(h) if o.now_ms > h.due_ms.saturating_add(ms(t.hung_grace)) => Verdict::Hung {
                pid,
                overdue: Duration::from_millis(o.now_ms - h.due_ms),
            },
            // Beating in time, or a new life that has not written its first heartbeat yet.
            _ => Verdict::Alive,
        },
        None => {
            let last_heard = hb.map_or(o.watching_since_ms, |h| h.at_ms.max(o.watching_since_ms));
            let quiet = o.now_ms.saturating_sub(last_heard);
            if quiet > ms(t.dead_after) {
                Verdict::Dead {
                    quiet: Duration::from_millis(quiet),
                }
            } else {
                Verdict::Alive
            }
        }
    }
}

/// The action for `verdict`, and the memory after it.
pub fn decide(verdict: &Verdict, o: &Observation, m: &Memory) -> (Action, Memory) {
    let latest_start = o
        .heartbeat
        .as_ref()
        .and_then(|h| h.starts_ms.last().copied());
    match verdict {
        Verdict::Dead { .. } | Verdict::Hung { .. } => (
            Action::EnsureSafeStack,
            Memory {
                acting: true,
                acted_for_start: m.acted_for_start,
            },
        ),
        Verdict::CrashLooping { running, .. } => {
            // A life in progress that already had its chance is not fought; a dead one is.
            if *running && m.acted_for_start.is_some() && m.acted_for_start == latest_start {
                (Action::Watch, m.clone())
            } else {
                (
                    Action::EnsureSafeStack,
                    Memory {
                        acting: true,
                        acted_for_start: latest_start,
                    },
                )
            }
        }
        Verdict::Alive if m.acting => (Action::HandBack, Memory::default()),
        Verdict::Alive => (Action::Watch, m.clone()),
    }
}

#[cfg(test)]
mod tests;
