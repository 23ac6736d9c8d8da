//! The engine's decision tables (issue 14): one test per row, each a rollout driven the way
//! the controller drives it (devices install what the rollout claims for them, then `step`
//! at the reconcile interval), never a state written by hand. Each row failed before the fix
//! it names.
//!
//! | situation | decision |
//! |---|---|
//! | emergency stop longer than `health_timeout` before the wave's devices swapped | no timeout; after the resume the wave goes on |
//! | emergency stop during bake | bake does not progress under the stop |
//! | pause longer than `health_timeout` | no timeout |
//! | every device of a wave offline at its start | the wave waits and says why; a device that comes online joins it |
//! | no device matches the canary selector | the canary wave waits and says why; promote moves past it |
//! | devices report `degraded` on the release | not healthy: they time out and the wave halts |
//! | a healthy device turns degraded, unhealthy or silent during bake | it fails and counts against the gate |
//! | a device of an earlier wave fails while a later wave runs | it counts against the later wave's gate |
//! | halt, then resume | the wave starts again; each device goes back to the same `from` |
//! | halt, then promote | the halted wave stays back; the next wave starts |
//! | halt, then abort | every device goes back |
//! | fleet gate: degraded devices, devices silent soon after a release | they count; devices offline for other reasons do not |

use fleet_config::protocol::{HealthState, ReleaseId, UpdateResult};

use super::machine::tests::{device_view, NEW, OLD};
use super::machine::{fleet_unhealthy, DeviceView, Effect, Outcome, Rollout, State};
use super::plan::tests::{default_policy, fleet};
use super::plan::Policy;

const STEP: u64 = 1_000;

fn rid(s: &str) -> ReleaseId {
    s.parse().expect("sha")
}

/// A fleet, a rollout of NEW over it, and the time.
struct Sim {
    r: Rollout,
    devs: Vec<DeviceView>,
    t: u64,
    effects: Vec<Effect>,
}

impl Sim {
    fn new(n: usize, canaries: usize, policy: Policy) -> Sim {
        Sim::with(n, canaries, policy, |_| {})
    }

    /// A fleet changed by `before` (say, devices offline) before the rollout starts.
    fn with(n: usize, canaries: usize, policy: Policy, before: impl Fn(&mut [DeviceView])) -> Sim {
        let mut devs: Vec<DeviceView> = fleet(n, canaries)
            .into_iter()
            .map(|(id, labels)| device_view(id, labels))
            .collect();
        before(&mut devs);
        let (r, effects) = Rollout::start("r1", &rid(NEW), "sha256:x", &devs, policy, 0);
        Sim {
            r,
            devs,
            t: 0,
            effects,
        }
    }

    fn dev(&mut self, id: &str) -> &mut DeviceView {
        self.devs
            .iter_mut()
            .find(|d| d.id == id)
            .unwrap_or_else(|| panic!("no device {id}"))
    }

    /// Online devices install what the rollout claims for them (or go back); those `fails`
    /// names roll back and mark it bad. With `stopped`, nobody moves (check-ins answer hold).
    fn devices_act(&mut self, stopped: bool, fails: &dyn Fn(&str) -> bool) {
        if stopped {
            return;
        }
        for d in self.devs.iter_mut().filter(|d| d.online) {
            let Some(target) = self.r.claim(&d.id) else {
                continue;
            };
            let Some(target) = target else {
                continue;
            };
            if d.current.as_ref().map(ReleaseId::as_str) == Some(target)
                || d.bad_releases.iter().any(|b| b.as_str() == target)
            {
                continue;
            }
            if target == NEW && fails(&d.id) {
                d.bad_releases.push(rid(target));
                d.last_result = Some(UpdateResult::RolledBack {
                    release: rid(target),
                    reason: "health".into(),
                });
            } else {
                d.current = Some(rid(target));
                d.last_result = Some(UpdateResult::Succeeded {
                    release: rid(target),
                });
            }
        }
    }

    /// Runs `ms` of reconcile passes, devices acting between them.
    fn run(&mut self, ms: u64, stop_since: Option<u64>, fails: &dyn Fn(&str) -> bool) {
        let end = self.t + ms;
        while self.t < end {
            self.devices_act(stop_since.is_some(), fails);
            self.t += STEP;
            let fx = self.r.step(&self.devs, stop_since, self.t);
            self.effects.extend(fx);
        }
    }

    /// Runs until the rollout is no longer running (or `limit` ms).
    fn run_until_settled(&mut self, limit: u64, fails: &dyn Fn(&str) -> bool) {
        let end = self.t + limit;
        while matches!(self.r.state, State::Running { .. }) && self.t < end {
            self.run(STEP, None, fails);
        }
    }

    fn on_new(&self) -> usize {
        self.devs
            .iter()
            .filter(|d| d.current.as_ref().map(ReleaseId::as_str) == Some(NEW))
            .count()
    }

    fn halted(&self) -> bool {
        self.effects
            .iter()
            .any(|e| matches!(e, Effect::Halted { .. }))
    }

    fn wave(&self) -> Option<usize> {
        match self.r.state {
            State::Running { wave, .. }
            | State::Paused { wave, .. }
            | State::Halted { wave, .. } => Some(wave),
            _ => None,
        }
    }
}

fn never(_: &str) -> bool {
    false
}

fn canary(i: usize) -> String {
    format!("dev-{i:05}")
}

#[test]
fn a_stop_longer_than_health_timeout_does_not_halt_and_the_rollout_goes_on_after_it() {
    // As seen: a 55 s stop against a 40 s health_timeout, set before the canaries swapped.
    let mut p = default_policy();
    p.health_timeout_ms = 40_000;
    let mut s = Sim::new(100, 2, p);
    s.run(55_000, Some(0), &never);
    assert!(!s.halted(), "{:?}", s.r.state);
    assert!(
        matches!(s.r.state, State::Running { wave: 0, .. }),
        "{:?}",
        s.r.state
    );
    s.run_until_settled(200_000, &never);
    assert!(
        matches!(s.r.state, State::Completed { .. }),
        "{:?}",
        s.r.state
    );
    assert_eq!(s.on_new(), 100);
}

#[test]
fn under_a_stop_bake_does_not_progress() {
    let mut p = default_policy();
    p.bake_ms = 10_000;
    let mut s = Sim::new(100, 2, p);
    // The canaries install and are healthy: the wave bakes.
    s.run(3_000, None, &never);
    assert!(s
        .effects
        .iter()
        .any(|e| matches!(e, Effect::WaveHealthy { wave: 0, .. })));
    // A stop far longer than the bake: the next wave does not start under it...
    let stop_at = s.t;
    s.run(60_000, Some(stop_at), &never);
    assert_eq!(s.wave(), Some(0), "{:?}", s.r.state);
    // ...nor at once after it: the bake still has what was left of it to run.
    s.run(5_000, None, &never);
    assert_eq!(
        s.wave(),
        Some(0),
        "bake resumed where it was: {:?}",
        s.r.state
    );
    s.run(8_000, None, &never);
    assert_eq!(s.wave(), Some(1), "{:?}", s.r.state);
}

#[test]
fn a_pause_longer_than_health_timeout_does_not_halt() {
    let mut s = Sim::new(100, 2, default_policy());
    s.r.pause(s.t).expect("pause");
    s.t += 60_000;
    s.r.resume(&s.devs, s.t).expect("resume");
    s.run_until_settled(200_000, &never);
    assert!(!s.halted());
    assert!(
        matches!(s.r.state, State::Completed { .. }),
        "{:?}",
        s.r.state
    );
}

#[test]
fn a_wave_whose_devices_are_all_offline_waits_says_why_and_goes_on_when_one_returns() {
    let mut s = Sim::with(100, 2, default_policy(), |d| {
        d[0].online = false;
        d[1].online = false;
    });
    s.run(60_000, None, &never);
    assert_eq!(s.wave(), Some(0), "never passes empty: {:?}", s.r.state);
    assert_eq!(s.on_new(), 0, "no later wave was told");
    let waiting: Vec<&Effect> = s
        .effects
        .iter()
        .filter(|e| matches!(e, Effect::WaveWaiting { .. }))
        .collect();
    assert_eq!(waiting.len(), 1, "said once: {:?}", s.effects);
    assert!(
        waiting[0]
            .to_string()
            .contains("none of its 2 devices is online"),
        "{}",
        waiting[0]
    );
    let State::Running {
        waiting: Some(why), ..
    } = &s.r.state
    else {
        panic!("{:?}", s.r.state);
    };
    assert!(why.contains("online"), "{why}");
    // One canary checks in again: it joins the wave, which then runs as usual.
    s.dev(&canary(0)).online = true;
    s.run(2_000, None, &never);
    assert_eq!(s.r.devices[&canary(0)].outcome, Outcome::Healthy);
    s.run_until_settled(200_000, &never);
    assert!(
        matches!(s.r.state, State::Completed { .. }),
        "{:?}",
        s.r.state
    );
}

#[test]
fn without_a_canary_enrolled_the_canary_wave_waits_until_promoted() {
    let mut s = Sim::new(20, 0, default_policy());
    assert_eq!(s.r.waves[0].name, "canary");
    assert!(s.r.waves[0].devices.is_empty());
    s.run(60_000, None, &never);
    assert_eq!(s.wave(), Some(0));
    assert_eq!(s.on_new(), 0);
    assert!(
        s.effects
            .iter()
            .any(|e| matches!(e, Effect::WaveWaiting { reason, .. }
            if reason.contains("no device matches it"))),
        "{:?}",
        s.effects
    );
    let fx = s.r.promote(&s.devs, s.t).expect("promote");
    assert!(
        matches!(fx[..], [Effect::WaveStarted { wave: 1, .. }]),
        "{fx:?}"
    );
    s.run_until_settled(200_000, &never);
    assert!(
        matches!(s.r.state, State::Completed { .. }),
        "{:?}",
        s.r.state
    );
    assert_eq!(s.on_new(), 20);
}

#[test]
fn degraded_on_the_release_is_not_healthy_and_the_wave_halts() {
    // The canaries report degraded from the moment they run it.
    let mut s = Sim::with(100, 2, default_policy(), |d| {
        d[0].health = HealthState::Degraded;
        d[1].health = HealthState::Degraded;
    });
    s.run(15_000, None, &never);
    assert!(
        matches!(&s.r.devices[&canary(0)].outcome, Outcome::Failed { reason } if reason.contains("health_timeout")),
        "{:?}",
        s.r.devices[&canary(0)]
    );
    assert!(s.halted(), "{:?}", s.r.state);
    assert!(matches!(s.r.state, State::Halted { wave: 0, .. }));
    assert_eq!(s.r.claim(&canary(0)), Some(Some(OLD)), "sent back");
}

#[test]
fn a_device_turning_degraded_during_bake_fails_and_halts_the_wave() {
    let mut p = default_policy();
    p.bake_ms = 10_000;
    let mut s = Sim::new(100, 2, p);
    s.run(3_000, None, &never);
    assert_eq!(s.r.devices[&canary(1)].outcome, Outcome::Healthy);
    s.dev(&canary(1)).health = HealthState::Degraded;
    s.run(2_000, None, &never);
    assert!(
        matches!(&s.r.devices[&canary(1)].outcome, Outcome::Failed { reason } if reason.contains("degraded")),
        "{:?}",
        s.r.devices[&canary(1)]
    );
    assert!(
        matches!(s.r.state, State::Halted { wave: 0, .. }),
        "{:?}",
        s.r.state
    );
}

#[test]
fn a_device_going_silent_during_bake_fails() {
    let mut p = default_policy();
    p.bake_ms = 10_000;
    let mut s = Sim::new(100, 2, p);
    s.run(3_000, None, &never);
    s.dev(&canary(0)).online = false;
    s.run(2_000, None, &never);
    assert!(
        matches!(&s.r.devices[&canary(0)].outcome, Outcome::Failed { reason } if reason.contains("silent")),
        "{:?}",
        s.r.devices[&canary(0)]
    );
    assert!(s.halted());
}

#[test]
fn an_earlier_waves_device_failing_during_a_later_wave_counts_against_its_gate() {
    let mut p = default_policy();
    p.bake_ms = 5_000;
    let mut s = Sim::new(100, 2, p);
    // Through the canary wave into the 5% wave.
    while s.wave() == Some(0) {
        s.run(STEP, None, &never);
    }
    assert_eq!(s.wave(), Some(1));
    s.run(2_000, None, &never);
    // A canary, healthy when its wave passed, now turns unhealthy.
    s.dev(&canary(0)).health = HealthState::Unhealthy;
    s.run(2_000, None, &never);
    let rec = &s.r.devices[&canary(0)];
    assert!(matches!(rec.outcome, Outcome::Failed { .. }), "{rec:?}");
    assert_eq!(rec.counts_against, Some(1));
    // 1 failure among the 3 + 1 devices the 5% gate counts is above 5%: halted in wave 2.
    assert!(
        matches!(s.r.state, State::Halted { wave: 1, .. }),
        "{:?}",
        s.r.state
    );
    assert_eq!(
        s.r.claim(&canary(0)),
        Some(Some(OLD)),
        "the failed canary goes back"
    );
    assert_eq!(
        s.r.claim(&canary(1)),
        Some(Some(NEW)),
        "the healthy one stays"
    );
}

/// A halted canary wave: canary 0 rolled back, canary 1 healthy on NEW.
fn halted_canaries() -> Sim {
    let mut s = Sim::new(100, 2, default_policy());
    let first = canary(0);
    while !s.halted() && s.t < 10_000 {
        s.run(STEP, None, &|id| id == first);
    }
    assert!(
        matches!(s.r.state, State::Halted { wave: 0, .. }),
        "{:?}",
        s.r.state
    );
    assert_eq!(
        s.dev(&canary(1)).current.as_ref().map(ReleaseId::as_str),
        Some(NEW)
    );
    s
}

#[test]
fn halt_then_resume_starts_the_wave_again_and_keeps_where_each_device_goes_back_to() {
    let mut s = halted_canaries();
    // Resumed before canary 1 went back: it is on NEW, but where it goes back to stays OLD.
    let fx = s.r.resume(&s.devs, s.t).expect("resume");
    assert!(
        matches!(
            fx[..],
            [Effect::WaveStarted {
                wave: 0,
                counted: 2,
                ..
            }]
        ),
        "{fx:?}"
    );
    assert_eq!(s.r.devices[&canary(1)].from.as_deref(), Some(OLD));
    // Canary 0 marked NEW bad: it fails again at once, and the wave halts again.
    let first = canary(0);
    s.run(2_000, None, &|id| id == first);
    assert!(
        matches!(s.r.state, State::Halted { wave: 0, .. }),
        "{:?}",
        s.r.state
    );
    s.r.abort("by hand").expect("abort");
    assert_eq!(
        s.r.claim(&canary(1)),
        Some(Some(OLD)),
        "back to OLD, not NEW"
    );
}

#[test]
fn halt_then_promote_leaves_the_halted_wave_back_and_starts_the_next() {
    let mut s = halted_canaries();
    let fx = s.r.promote(&s.devs, s.t).expect("promote");
    assert!(
        matches!(fx[..], [Effect::WaveStarted { wave: 1, .. }]),
        "{fx:?}"
    );
    for i in 0..2 {
        assert_eq!(
            s.r.claim(&canary(i)),
            Some(Some(OLD)),
            "the halted wave is not sent forward again"
        );
    }
    s.run_until_settled(200_000, &never);
    assert!(
        matches!(s.r.state, State::Completed { .. }),
        "{:?}",
        s.r.state
    );
    assert_eq!(s.on_new(), 98, "everyone but the halted canaries");
}

#[test]
fn halt_then_abort_sends_every_device_back() {
    let mut s = halted_canaries();
    s.r.abort("bad release").expect("abort");
    for d in s.devs.clone() {
        if let Some(t) = s.r.claim(&d.id) {
            assert_eq!(t, Some(OLD), "{}", d.id);
        }
    }
    s.run(3_000, None, &never);
    assert_eq!(s.on_new(), 0);
}

#[test]
fn the_fleet_gate_counts_degraded_and_silent_after_a_release_but_not_other_silence() {
    let p = default_policy(); // 20%
    let mut devs: Vec<DeviceView> = fleet(10, 0)
        .into_iter()
        .map(|(id, labels)| device_view(id, labels))
        .collect();
    devs[0].health = HealthState::Degraded;
    devs[1].health = HealthState::Unhealthy;
    assert_eq!(fleet_unhealthy(&p, &devs), None, "2 of 10 is not above 20%");
    devs[2].health = HealthState::Degraded;
    assert!(fleet_unhealthy(&p, &devs).is_some_and(|m| m.contains("3 of 10")));
    devs[2].health = HealthState::Healthy;
    // A release that kills networking: devices fall silent soon after taking it.
    devs[3].online = false;
    devs[3].silent_after_release = true;
    assert!(
        fleet_unhealthy(&p, &devs)
            .is_some_and(|m| m.contains("3 of 10") && m.contains("went silent")),
        "{:?}",
        fleet_unhealthy(&p, &devs)
    );
    // A site's power cut: offline, but no release touched them. Not a failure on its own.
    let mut cut: Vec<DeviceView> = fleet(10, 0)
        .into_iter()
        .map(|(id, labels)| device_view(id, labels))
        .collect();
    for d in cut.iter_mut().take(6) {
        d.online = false;
    }
    assert_eq!(fleet_unhealthy(&p, &cut), None);
}
