//! Git unavailable (issue 15's failure mode): consecutive fetch failures per endpoint.
//!
//! Failover already serves a fetch from the next endpoint when one fails; what on-call needs
//! to know is an endpoint that keeps failing. Every fetch the agent makes (an update's, or
//! standalone mode's poll of the branch) reports which endpoints failed and which one served
//! it. At `alerts.git_fetch_failures` failures in a row of one endpoint (fleet.yaml, default 3)
//! the agent raises the `git_fetch_failing` problem about that endpoint (a `problem_raised`
//! event for the controller's alert); the endpoint's next success clears it. An endpoint that
//! was not tried (an earlier one served the fetch) keeps its streak: nothing new is known.
//!
//! `/metrics`: `fleet_agent_git_fetch_failures_total{endpoint}` counts every failure,
//! `fleet_agent_git_consecutive_failures{endpoint}` is the current streak.

use std::collections::BTreeMap;

/// Consecutive failures of each endpoint since its last success.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailureStreaks {
    streaks: BTreeMap<String, u32>,
}

/// What one endpoint's result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streak {
    /// Failed again: its streak, and whether it reached the threshold.
    Failed {
        /// Failures in a row, this one included.
        in_a_row: u32,
        /// At or past the threshold.
        failing: bool,
    },
    /// Served a fetch; `was` failures in a row came before.
    Served {
        /// The streak it ends.
        was: u32,
    },
}

impl FailureStreaks {
    /// `endpoint` failed; `threshold` is `alerts.git_fetch_failures`.
    pub fn failed(&mut self, endpoint: &str, threshold: u32) -> Streak {
        let n = self.streaks.entry(endpoint.to_owned()).or_default();
        *n = n.saturating_add(1);
        Streak::Failed {
            in_a_row: *n,
            failing: *n >= threshold.max(1),
        }
    }

    /// `endpoint` served a fetch.
    pub fn served(&mut self, endpoint: &str) -> Streak {
        Streak::Served {
            was: self.streaks.insert(endpoint.to_owned(), 0).unwrap_or(0),
        }
    }

    /// Every endpoint's current streak (zero after a success).
    pub fn current(&self) -> &BTreeMap<String, u32> {
        &self.streaks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_failing_at_the_threshold_and_a_success_ends_its_streak() {
        let mut s = FailureStreaks::default();
        let a = "git://a/fleet";
        assert_eq!(
            s.failed(a, 3),
            Streak::Failed {
                in_a_row: 1,
                failing: false
            }
        );
        s.failed(a, 3);
        assert_eq!(
            s.failed(a, 3),
            Streak::Failed {
                in_a_row: 3,
                failing: true
            }
        );
        assert_eq!(
            s.failed(a, 3),
            Streak::Failed {
                in_a_row: 4,
                failing: true
            }
        );
        assert_eq!(s.served(a), Streak::Served { was: 4 });
        assert_eq!(s.current()[a], 0);
        assert_eq!(
            s.failed(a, 3),
            Streak::Failed {
                in_a_row: 1,
                failing: false
            },
            "a new streak after the success"
        );
    }

    #[test]
    fn endpoints_count_apart_and_a_threshold_of_zero_means_one() {
        let mut s = FailureStreaks::default();
        s.failed("a", 2);
        assert_eq!(s.served("b"), Streak::Served { was: 0 });
        assert_eq!(
            s.failed("a", 2),
            Streak::Failed {
                in_a_row: 2,
                failing: true
            },
            "b's success does not end a's streak"
        );
        assert_eq!(
            s.failed("c", 0),
            Streak::Failed {
                in_a_row: 1,
                failing: true
            }
        );
    }
}
