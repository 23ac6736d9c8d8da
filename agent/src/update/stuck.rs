//! Stuck updates (issue 15's failure mode): no phase of the update transaction waits forever.
//!
//! - The downloads are bounded by silence, not by time, so a slow link that keeps delivering is
//!   waited for: the Git fetch by `git.failover_timeout` per endpoint (fleet-git), an image
//!   pull by `pull_stall_timeout` (fleet-docker: nothing from the engine for that long).
//! - The other phases by their deadline ([`UpdatePhase::deadline`]: switching 5 min, verifying
//!   the health window plus a minute, rolling back 5 min) and all of them together by
//!   `alerts.update_stuck_after` (fleet.yaml, 15 min by default), counted while the update
//!   works, not while it downloads; never less than the health window plus a minute, so a long
//!   window is not cut short by the fleet's threshold.
//!
//! Past a bound the agent acts: before the swap the update is abandoned (the release is not
//! marked bad: the registry or the link, not the release, stalled); after it the release is
//! rolled back and marked bad; a rollback that is itself stuck enters safe mode. Each time it
//! raises `update_stuck` (subject: the phase), which the next update that succeeds clears,
//! and counts `fleet_agent_updates_stuck_total{phase}`.

use std::time::Duration;

use fleet_config::protocol::UpdatePhase;

use super::Updater;
use crate::problems::ProblemKind;
use crate::runtime::StackRuntime;

/// What the deadline of a phase is not, when it has none.
const NO_DEADLINE: Duration = Duration::from_secs(365 * 24 * 3600);

/// The time an update may still spend working (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StuckClock {
    limit: Duration,
    spent: Duration,
    health_window: Duration,
}

impl StuckClock {
    /// A clock for one update: `update_stuck_after` in all, raised to the health window plus a
    /// minute.
    pub fn new(update_stuck_after: Duration, health_window: Duration) -> StuckClock {
        let floor = health_window + Duration::from_secs(60);
        StuckClock {
            limit: update_stuck_after.max(floor),
            spent: Duration::ZERO,
            health_window,
        }
    }

    /// Counts `d` spent working.
    pub fn spend(&mut self, d: Duration) {
        self.spent = self.spent.saturating_add(d);
    }

    /// How long `phase` may take from now: its own deadline or what is left of the whole,
    /// whichever ends first.
    pub fn bound(&self, phase: UpdatePhase) -> Duration {
        let own = phase.deadline(self.health_window).unwrap_or(NO_DEADLINE);
        own.min(self.limit.saturating_sub(self.spent))
    }
}

impl<R: StackRuntime> Updater<R> {
    /// A clock for an update starting now, with the thresholds in force.
    pub(super) fn stuck_clock(&self) -> StuckClock {
        StuckClock::new(
            self.watch.thresholds().0.update_stuck_after,
            self.cfg.health_window,
        )
    }

    /// Reports that `phase` of an update got stuck (`detail` says how); the caller acts.
    pub(super) fn stuck(&mut self, phase: UpdatePhase, detail: &str) {
        let name = crate::metrics::phase_name(phase);
        tracing::error!(phase = %name, %detail, "update stuck");
        self.metrics.count_stuck(&name);
        self.problems
            .raise(ProblemKind::UpdateStuck, Some(&name), detail);
        self.flush_problem_events();
    }
}

/// "took longer than 5m (the switching deadline)".
pub(super) fn overran(what: &str, bound: Duration) -> String {
    format!(
        "{what} took longer than {}",
        fleet_config::units::format_duration(bound)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_gets_its_own_deadline_or_what_is_left_whichever_is_shorter() {
        let mut c = StuckClock::new(Duration::from_secs(900), Duration::from_secs(60));
        assert_eq!(
            c.bound(UpdatePhase::Switching),
            Duration::from_secs(300),
            "its own"
        );
        assert_eq!(c.bound(UpdatePhase::Verifying), Duration::from_secs(120));
        c.spend(Duration::from_secs(800));
        assert_eq!(
            c.bound(UpdatePhase::Switching),
            Duration::from_secs(100),
            "what is left"
        );
        c.spend(Duration::from_secs(200));
        assert_eq!(
            c.bound(UpdatePhase::Verifying),
            Duration::ZERO,
            "nothing left"
        );
    }

    #[test]
    fn the_whole_bound_never_cuts_the_health_window_short() {
        let c = StuckClock::new(Duration::from_secs(60), Duration::from_secs(600));
        assert_eq!(c.bound(UpdatePhase::Verifying), Duration::from_secs(660));
    }
}
