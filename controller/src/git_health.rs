//! How the watcher's Git endpoints are doing: per endpoint, the fetches in a row that failed
//! and the last error. The watcher records every fetch ([`GitHealth::record`]); the metrics
//! and the alert engine read it (`ControllerGitFetchFailing` at `alerts.git_fetch_failures`
//! in a row). Kept in memory on the leader, which is the replica that watches: a new leader
//! starts counting again.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// What one fetch said of the endpoints it tried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// The endpoint that served (redacted URL), if one did.
    pub served: Option<String>,
    /// The endpoints that failed before it (or all of them), with why.
    pub failed: Vec<(String, String)>,
}

/// One endpoint's record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointHealth {
    /// Fetches in a row that failed (0 after one that served).
    pub streak: u32,
    /// The last failure's error.
    pub last_error: Option<String>,
    /// When the streak began, ms since the epoch.
    pub failing_since_ms: Option<i64>,
}

/// Every endpoint's record, by redacted URL.
#[derive(Debug, Default)]
pub struct GitHealth {
    endpoints: Mutex<BTreeMap<String, EndpointHealth>>,
}

impl GitHealth {
    /// Records one fetch at `now_ms`; calls `observe(endpoint, failed, streak)` for each
    /// endpoint it tried (for the metrics).
    pub fn record(
        &self,
        report: &FetchReport,
        now_ms: i64,
        mut observe: impl FnMut(&str, bool, u32),
    ) {
        let mut map = self
            .endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (endpoint, error) in &report.failed {
            let h = map.entry(endpoint.clone()).or_default();
            h.streak = h.streak.saturating_add(1);
            h.last_error = Some(error.clone());
            h.failing_since_ms.get_or_insert(now_ms);
            observe(endpoint, true, h.streak);
        }
        if let Some(endpoint) = &report.served {
            map.insert(endpoint.clone(), EndpointHealth::default());
            observe(endpoint, false, 0);
        }
    }

    /// The endpoints with `threshold` or more failures in a row.
    pub fn failing(&self, threshold: u32) -> Vec<(String, EndpointHealth)> {
        let map = self
            .endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter()
            .filter(|(_, h)| h.streak >= threshold.max(1))
            .map(|(e, h)| (e.clone(), h.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(e: &str) -> (String, String) {
        (e.to_owned(), "connection refused".to_owned())
    }

    #[test]
    fn a_streak_counts_failures_in_a_row_per_endpoint_and_a_served_fetch_ends_it() {
        let h = GitHealth::default();
        let mut seen = Vec::new();
        let primary_down = FetchReport {
            served: Some("git://mirror".into()),
            failed: vec![failed("git://primary")],
        };
        for t in 0..3 {
            h.record(&primary_down, t, |e, f, s| seen.push((e.to_owned(), f, s)));
        }
        // The mirror serves every time: only the primary fails, three times in a row.
        let failing = h.failing(3);
        assert_eq!(failing.len(), 1);
        assert_eq!(failing[0].0, "git://primary");
        assert_eq!(failing[0].1.streak, 3);
        assert_eq!(failing[0].1.failing_since_ms, Some(0));
        assert!(h.failing(4).is_empty());
        assert!(seen.contains(&("git://primary".to_owned(), true, 3)));
        assert!(seen.contains(&("git://mirror".to_owned(), false, 0)));
        // The primary serves again: its streak ends.
        h.record(
            &FetchReport {
                served: Some("git://primary".into()),
                failed: vec![],
            },
            4,
            |_, _, _| {},
        );
        assert!(h.failing(1).is_empty());
    }
}
