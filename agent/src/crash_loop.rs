//! Crash loops: a service of the running release that keeps dying, whether Docker restarts it
//! (its restart policy: `RestartCount` rises) or the agent's supervision does (it finds the
//! container stopped and starts it again, which Docker does not count). Without counting both,
//! supervision would hide the loop.
//!
//! The detector is a pure function of its observations and the monotonic time; it is reset
//! whenever the running release changes (a new release's containers are new, not restarts).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// One service as observed before a supervision pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRestarts {
    /// `stack/service`.
    pub service: String,
    /// Its container, if there is one.
    pub container_id: Option<String>,
    /// It runs now.
    pub running: bool,
    /// Docker's `RestartCount` of that container.
    pub restart_count: i64,
}

#[derive(Debug, Default)]
struct Track {
    container_id: Option<String>,
    restart_count: i64,
    restarts: VecDeque<Instant>,
    /// Restarts the last observation counted.
    counted_last: usize,
    /// Supervision put a new container in place (drift): the next one seen is the baseline.
    rebase: bool,
}

/// A service restarted at least the threshold's number of times within the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashLoop {
    /// `stack/service`.
    pub service: String,
    /// Restarts within the window.
    pub restarts: usize,
}

/// Counts each service's restarts within a sliding window.
#[derive(Debug, Default)]
pub struct Detector {
    services: BTreeMap<String, Track>,
}

impl Detector {
    /// Forgets everything (the running release changed).
    pub fn reset(&mut self) {
        self.services.clear();
    }

    /// Supervision had to replace or create `service`'s container because it differed from
    /// the release or was missing (config drift, [`crate::drift`]), not because it crashed:
    /// what the last observation counted (it saw the container put in by hand, perhaps not yet
    /// running) is taken back, and the container the next observation finds is its baseline.
    pub fn rebase(&mut self, service: &str) {
        if let Some(t) = self.services.get_mut(service) {
            for _ in 0..std::mem::take(&mut t.counted_last) {
                t.restarts.pop_back();
            }
            t.rebase = true;
        }
    }

    /// Restarts of `service` within the window at the last observation.
    pub fn restarts(&self, service: &str) -> usize {
        self.services.get(service).map_or(0, |t| t.restarts.len())
    }

    /// Takes one observation at `now`; returns the services with at least `threshold` restarts
    /// within `window`. A restart is: Docker's count rising on the same container; a service
    /// whose container is found stopped (supervision starts it again); a container replaced by
    /// another since the last observation, unless supervision put it there ([`Detector::rebase`]).
    pub fn observe(
        &mut self,
        seen: &[ServiceRestarts],
        now: Instant,
        window: Duration,
        threshold: u32,
    ) -> Vec<CrashLoop> {
        let mut out = Vec::new();
        for s in seen {
            let first = !self.services.contains_key(&s.service);
            let t = self.services.entry(s.service.clone()).or_default();
            let mut restarts = 0i64;
            match &s.container_id {
                // Not there: removed, not crashed (crashed ones stay, stopped). That is drift,
                // which supervision puts back (see [`Detector::rebase`]).
                None => {}
                Some(_) if first => restarts += i64::from(!s.running),
                Some(_) if s.container_id == t.container_id => {
                    restarts += (s.restart_count - t.restart_count).max(0);
                    restarts += i64::from(!s.running);
                }
                // Another container, running or not: one restart, unless supervision put it
                // there; then only found stopped (it crashed) counts.
                Some(_) if !t.rebase => restarts += 1,
                Some(_) => restarts += i64::from(!s.running),
            }
            t.rebase = false;
            let restarts = restarts.clamp(0, 1000) as usize;
            for _ in 0..restarts {
                t.restarts.push_back(now);
            }
            t.counted_last = restarts;
            t.container_id = s.container_id.clone();
            t.restart_count = s.restart_count;
            while t
                .restarts
                .front()
                .is_some_and(|at| now.saturating_duration_since(*at) > window)
            {
                t.restarts.pop_front();
            }
            if threshold > 0 && t.restarts.len() >= threshold as usize {
                out.push(CrashLoop {
                    service: s.service.clone(),
                    restarts: t.restarts.len(),
                });
            }
        }
        out
    }
}

/// What to do about a crash loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// The release came in recently and there is a previous one: roll back, mark it bad.
    RollBack,
    /// Otherwise: safe mode (the release ran well for a long time, or there is nothing to go
    /// back to).
    SafeMode,
}

/// Roll back when the running release was committed by this agent less than `recent` ago and
/// `previous` exists; otherwise safe mode. `committed` is monotonic: an agent restarted since
/// does not know, and chooses safe mode.
pub fn respond(
    committed: Option<Instant>,
    now: Instant,
    recent: Duration,
    has_previous: bool,
) -> Response {
    match committed {
        Some(at) if has_previous && now.saturating_duration_since(at) <= recent => {
            Response::RollBack
        }
        _ => Response::SafeMode,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(id: &str, running: bool, count: i64) -> Vec<ServiceRestarts> {
        vec![ServiceRestarts {
            service: "app/web".into(),
            container_id: Some(id.into()),
            running,
            restart_count: count,
        }]
    }

    #[test]
    fn docker_restarts_and_supervision_restarts_both_count_within_the_window() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let w = Duration::from_secs(300);
        let mut d = Detector::default();
        assert!(
            d.observe(&obs("c1", true, 5), at(0), w, 3).is_empty(),
            "first sight: a baseline"
        );
        assert_eq!(d.restarts("app/web"), 0);
        assert!(
            d.observe(&obs("c1", true, 6), at(30), w, 3).is_empty(),
            "Docker restarted it once"
        );
        assert!(
            d.observe(&obs("c1", false, 6), at(60), w, 3).is_empty(),
            "found stopped: the agent restarts it"
        );
        let loops = d.observe(&obs("c2", true, 0), at(90), w, 3);
        assert_eq!(
            loops,
            [CrashLoop {
                service: "app/web".into(),
                restarts: 3
            }],
            "replaced by another container: the third"
        );
        // Later: the restarts older than the window fall out.
        assert!(d.observe(&obs("c2", true, 0), at(350), w, 3).is_empty());
        assert_eq!(
            d.restarts("app/web"),
            2,
            "the one at 30 s is more than 300 s old"
        );
        assert!(d.observe(&obs("c2", true, 0), at(400), w, 3).is_empty());
        assert_eq!(d.restarts("app/web"), 0, "quiet for longer than the window");
        d.reset();
        assert_eq!(d.restarts("app/web"), 0);
    }

    #[test]
    fn containers_put_back_after_drift_are_not_restarts() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let w = Duration::from_secs(300);
        let mut d = Detector::default();
        assert!(d.observe(&obs("c1", true, 0), at(0), w, 2).is_empty());
        // Removed by hand: not there, which is no crash; supervision creates c2.
        let gone = [ServiceRestarts {
            service: "app/web".into(),
            container_id: None,
            running: false,
            restart_count: 0,
        }];
        assert!(d.observe(&gone, at(1), w, 2).is_empty());
        assert_eq!(
            d.restarts("app/web"),
            0,
            "a missing container did not crash"
        );
        d.rebase("app/web");
        assert!(d.observe(&obs("c2", true, 0), at(2), w, 2).is_empty());
        assert_eq!(
            d.restarts("app/web"),
            0,
            "the container supervision created"
        );
        // A look-alike put in by hand is seen first, not yet running (another container: one
        // restart), then supervision replaces it by c4 and says so: taken back.
        assert!(d.observe(&obs("c3", false, 0), at(3), w, 2).is_empty());
        assert_eq!(d.restarts("app/web"), 1);
        d.rebase("app/web");
        assert_eq!(d.restarts("app/web"), 0);
        assert!(d.observe(&obs("c4", true, 0), at(4), w, 2).is_empty());
        // Crashes still count as before.
        assert!(d.observe(&obs("c4", false, 0), at(5), w, 2).is_empty());
        assert_eq!(
            d.observe(&obs("c4", true, 1), at(6), w, 2),
            [CrashLoop {
                service: "app/web".into(),
                restarts: 2
            }]
        );
    }

    #[test]
    fn roll_back_only_soon_after_an_update_this_agent_made_with_somewhere_to_go() {
        let t0 = Instant::now();
        let recent = Duration::from_secs(3600);
        let later = t0 + Duration::from_secs(600);
        assert_eq!(respond(Some(t0), later, recent, true), Response::RollBack);
        assert_eq!(respond(Some(t0), later, recent, false), Response::SafeMode);
        assert_eq!(
            respond(Some(t0), t0 + Duration::from_secs(7200), recent, true),
            Response::SafeMode
        );
        assert_eq!(respond(None, later, recent, true), Response::SafeMode);
    }
}
