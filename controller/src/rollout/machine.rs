//! A rollout's life. `step` looks at the devices and moves the rollout on: observe the current
//! wave, halt it when too many fail, bake it once healthy, then start the next. Operators pause,
//! resume, abort and promote. Everything is a function of the stored state, the devices' last
//! reports and the time passed in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use fleet_config::protocol::{HealthState, ReleaseId, UpdatePhase, UpdateResult};
use serde::{Deserialize, Serialize};

use super::plan::{plan_waves, Policy, WavePlan};

/// Where a rollout is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Wave `wave` is being installed (or bakes, once healthy).
    Running {
        /// Current wave.
        wave: usize,
        /// When it started.
        started_ms: u64,
        /// When all its counted devices were done and within the gate: baking since.
        healthy_since_ms: Option<u64>,
        /// Held by the emergency stop since then: no clock runs while it holds (the wave's
        /// start and bake move on by the time held once it clears).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        held_since_ms: Option<u64>,
        /// Why the wave cannot pass: it has no counted device (none online, or none matches
        /// a canary selector). It waits; it never passes empty.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        waiting: Option<String>,
    },
    /// Paused by an operator: no progress; devices already told keep their target.
    Paused {
        /// Current wave.
        wave: usize,
        /// When it started.
        started_ms: u64,
        /// Baking since.
        healthy_since_ms: Option<u64>,
        /// When it was paused (the pause does not count against timeouts).
        paused_ms: u64,
    },
    /// Too many failures in `wave`: its devices go back; later waves never start.
    Halted {
        /// The failing wave.
        wave: usize,
        /// Why.
        reason: String,
    },
    /// Every wave done.
    Completed {
        /// When.
        at_ms: u64,
    },
    /// Aborted: every device of it goes back to where it was.
    Aborted {
        /// Why.
        reason: String,
    },
    /// A newer release took over.
    Superseded {
        /// The newer rollout.
        by: String,
    },
}

impl State {
    /// Short name for lists and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            State::Running { .. } => "running",
            State::Paused { .. } => "paused",
            State::Halted { .. } => "halted",
            State::Completed { .. } => "completed",
            State::Aborted { .. } => "aborted",
            State::Superseded { .. } => "superseded",
        }
    }

    /// Still someone's business: running, paused or halted (waiting for a decision).
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            State::Running { .. } | State::Paused { .. } | State::Halted { .. }
        )
    }
}

/// How one device is doing in this rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Its wave has not started.
    Waiting,
    /// Told to install; not healthy on the release yet.
    Pending,
    /// Running the release, healthy.
    Healthy,
    /// Rolled back, refused it, or not healthy in time.
    Failed {
        /// Why.
        reason: String,
    },
    /// Offline when its wave started: not counted, not told.
    Deferred,
}

/// A device in a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeviceRecord {
    /// Its wave.
    pub wave: usize,
    /// The release it ran when its wave started (where it goes back to).
    pub from: Option<String>,
    /// Counted by its wave's gate (online at wave start).
    pub counted: bool,
    /// A device of an earlier wave that failed while wave N ran: its failure counts against
    /// wave N's gate (bake watches every device the rollout has touched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts_against: Option<usize>,
    /// How it is doing.
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl DeviceRecord {
    /// A device of `wave` before the wave starts.
    pub fn waiting(wave: usize) -> DeviceRecord {
        DeviceRecord {
            wave,
            from: None,
            counted: false,
            counts_against: None,
            outcome: Outcome::Waiting,
        }
    }
}

/// What the engine needs to know of a device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceView {
    /// Id.
    pub id: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Checked in recently.
    pub online: bool,
    /// Pinned by an operator: left out of rollouts.
    pub pinned: bool,
    /// Running release.
    pub current: Option<ReleaseId>,
    /// Update phase.
    pub phase: UpdatePhase,
    /// Health.
    pub health: HealthState,
    /// Last update result.
    pub last_result: Option<UpdateResult>,
    /// Releases it marked bad.
    pub bad_releases: Vec<ReleaseId>,
    /// Offline, and it went silent soon after it was told a new release (within
    /// `health_timeout`): the fleet-wide gate counts it as failed. A device offline for
    /// reasons no release touched (a site's power cut) is not.
    pub silent_after_release: bool,
}

/// Something the controller should record (audit log, events) or do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// A wave started.
    WaveStarted {
        /// Index.
        wave: usize,
        /// Name.
        name: String,
        /// Devices in it.
        devices: usize,
        /// Of which online (counted by its gate).
        counted: usize,
    },
    /// A device failed the release.
    DeviceFailed {
        /// Device.
        device: String,
        /// Why.
        reason: String,
    },
    /// A wave has no counted device: it waits, and says why.
    WaveWaiting {
        /// Index.
        wave: usize,
        /// Name.
        name: String,
        /// Why, and what would let it go on.
        reason: String,
    },
    /// A wave is healthy and starts baking.
    WaveHealthy {
        /// Index.
        wave: usize,
        /// Name.
        name: String,
    },
    /// The failure gate tripped.
    Halted {
        /// Index.
        wave: usize,
        /// Name.
        name: String,
        /// Failed devices.
        failed: usize,
        /// Counted devices.
        counted: usize,
    },
    /// Every wave done.
    Completed,
    /// The fleet-wide unhealthy gate tripped: set the emergency stop.
    EmergencyStop {
        /// Why.
        reason: String,
    },
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Effect::WaveStarted { wave, name, devices, counted } => write!(
                f,
                "wave {} ({name}) started: {devices} devices, {counted} online",
                wave + 1
            ),
            Effect::DeviceFailed { device, reason } => write!(f, "device {device} failed: {reason}"),
            Effect::WaveWaiting { wave, name, reason } => {
                write!(f, "wave {} ({name}) waits: {reason}", wave + 1)
            }
            Effect::WaveHealthy { wave, name } => write!(f, "wave {} ({name}) healthy; baking", wave + 1),
            Effect::Halted { wave, name, failed, counted } => write!(
                f,
                "halted: {failed} of {counted} devices of wave {} ({name}) failed, above the threshold; the wave goes back",
                wave + 1
            ),
            Effect::Completed => write!(f, "completed: every wave healthy"),
            Effect::EmergencyStop { reason } => write!(f, "emergency stop: {reason}"),
        }
    }
}

/// An operation that does not apply in the rollout's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {op} rollout {id}: it is {state}")]
pub struct OpError {
    /// The operation.
    pub op: &'static str,
    /// The rollout.
    pub id: String,
    /// Its state.
    pub state: &'static str,
}

/// A rollout: the release, the plan, each device's record and the state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Rollout {
    /// Id.
    pub id: String,
    /// The release (commit sha).
    pub release: String,
    /// Its tree digest (`sha256:…`).
    pub digest: String,
    /// Created.
    pub created_ms: u64,
    /// The rules, fixed at creation.
    pub policy: Policy,
    /// The waves, fixed at creation.
    pub waves: Vec<WavePlan>,
    /// Every device of the plan. Stored apart, one row each, and only once it leaves
    /// `waiting` ([`crate::rollout::stored`]); [`Rollout::fill_waiting`] puts the others back.
    #[serde(default)]
    pub devices: BTreeMap<String, DeviceRecord>,
    /// Waves that halted and were promoted past: their devices stay where they went back to.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub sent_back: BTreeSet<usize>,
    /// Where it is.
    pub state: State,
}

fn failure_of(release: &str, v: &DeviceView) -> Option<String> {
    if v.bad_releases.iter().any(|b| b.as_str() == release) {
        return Some("the device marked the release bad".into());
    }
    match &v.last_result {
        Some(UpdateResult::RolledBack { release: r, reason }) if r.as_str() == release => {
            Some(format!("rolled back: {reason}"))
        }
        Some(UpdateResult::Rejected { release: r, reason }) if r.as_str() == release => {
            Some(format!("rejected: {reason}"))
        }
        _ => None,
    }
}

/// Running the release, idle and healthy. `degraded` is not healthy: the agent itself treats
/// it as a failed health window.
fn healthy_on(release: &str, v: &DeviceView) -> bool {
    v.current.as_ref().is_some_and(|c| c.as_str() == release)
        && v.phase == UpdatePhase::Idle
        && v.health == HealthState::Healthy
}

/// Why a device that was healthy on the release no longer counts as healthy, if it does not.
fn lapse_of(release: &str, v: Option<&&DeviceView>) -> Option<String> {
    let Some(v) = v else {
        return Some("left the fleet after taking the release".into());
    };
    if !v.online {
        return Some("went silent after taking the release".into());
    }
    if v.current.as_ref().is_none_or(|c| c.as_str() != release) {
        return Some("no longer runs the release".into());
    }
    match v.health {
        HealthState::Unhealthy => Some("turned unhealthy after taking the release".into()),
        HealthState::Degraded => Some("turned degraded after taking the release".into()),
        _ if v.phase == UpdatePhase::SafeMode => Some("entered safe mode".into()),
        _ => None,
    }
}

impl Rollout {
    /// Plans a rollout over the eligible devices (not pinned) and starts its first wave.
    pub fn start(
        id: &str,
        release: &ReleaseId,
        digest: &str,
        devices: &[DeviceView],
        policy: Policy,
        now_ms: u64,
    ) -> (Rollout, Vec<Effect>) {
        let eligible: Vec<(String, BTreeMap<String, String>)> = devices
            .iter()
            .filter(|d| !d.pinned)
            .map(|d| (d.id.clone(), d.labels.clone()))
            .collect();
        let waves = plan_waves(id, &eligible, &policy);
        let mut records = BTreeMap::new();
        for (i, w) in waves.iter().enumerate() {
            for d in &w.devices {
                records.insert(d.clone(), DeviceRecord::waiting(i));
            }
        }
        let mut r = Rollout {
            id: id.to_owned(),
            release: release.as_str().to_owned(),
            digest: digest.to_owned(),
            created_ms: now_ms,
            policy,
            waves,
            devices: records,
            sent_back: BTreeSet::new(),
            state: State::Completed { at_ms: now_ms },
        };
        let effects = if r.waves.is_empty() {
            vec![Effect::Completed]
        } else {
            let by_id: HashMap<&str, &DeviceView> =
                devices.iter().map(|d| (d.id.as_str(), d)).collect();
            vec![r.start_wave(0, &by_id, now_ms)]
        };
        (r, effects)
    }

    /// Starts `wave`: its devices online now are counted and told; the others are deferred.
    /// A device's `from` is where it was when first told, and is never overwritten: a wave
    /// started again (resume after a halt) sends it back to the same place.
    fn start_wave(
        &mut self,
        wave: usize,
        by_id: &HashMap<&str, &DeviceView>,
        now_ms: u64,
    ) -> Effect {
        let mut counted = 0;
        let names = self.wave_devices(wave);
        for d in &names {
            let view = by_id.get(d.as_str());
            if let Some(rec) = self.devices.get_mut(d) {
                let online = view.is_some_and(|v| v.online);
                if rec.outcome == Outcome::Waiting {
                    rec.from = view
                        .and_then(|v| v.current.as_ref())
                        .map(|c| c.as_str().to_owned());
                    rec.counted = online;
                }
                if rec.counted {
                    rec.outcome = Outcome::Pending;
                    counted += 1;
                } else {
                    rec.outcome = Outcome::Deferred;
                }
            }
        }
        self.state = State::Running {
            wave,
            started_ms: now_ms,
            healthy_since_ms: None,
            held_since_ms: None,
            waiting: None,
        };
        Effect::WaveStarted {
            wave,
            name: self.wave_name(wave),
            devices: names.len(),
            counted,
        }
    }

    /// Gives every device of the plan that has no record the one it starts with (waiting for
    /// its wave): the store keeps no row for those.
    pub fn fill_waiting(&mut self) {
        for (i, w) in self.waves.iter().enumerate() {
            for d in &w.devices {
                self.devices
                    .entry(d.clone())
                    .or_insert_with(|| DeviceRecord::waiting(i));
            }
        }
    }

    fn wave_devices(&self, wave: usize) -> Vec<String> {
        self.waves
            .get(wave)
            .map(|w| w.devices.clone())
            .unwrap_or_default()
    }

    fn wave_name(&self, wave: usize) -> String {
        self.waves
            .get(wave)
            .map(|w| w.name.clone())
            .unwrap_or_default()
    }

    /// Counts of a wave: (pending, healthy, failed, deferred).
    pub fn wave_counts(&self, wave: usize) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for rec in self.devices.values().filter(|r| r.wave == wave) {
            match rec.outcome {
                Outcome::Waiting | Outcome::Pending => c.0 += 1,
                Outcome::Healthy => c.1 += 1,
                Outcome::Failed { .. } => c.2 += 1,
                Outcome::Deferred => c.3 += 1,
            }
        }
        c
    }

    /// Moves the rollout on. `stop_since` is when the emergency stop was set, while it holds:
    /// then nothing progresses and no clock runs (failures the devices report still count).
    pub fn step(
        &mut self,
        devices: &[DeviceView],
        stop_since: Option<u64>,
        now_ms: u64,
    ) -> Vec<Effect> {
        let State::Running {
            wave,
            started_ms,
            healthy_since_ms,
            held_since_ms,
            waiting,
        } = self.state.clone()
        else {
            return Vec::new();
        };
        // The stop holds every clock: once it clears, the wave's start and bake move on by
        // the time it held.
        let (started_ms, healthy_since_ms, held_since_ms) = match (stop_since, held_since_ms) {
            (Some(_), Some(held)) => (started_ms, healthy_since_ms, Some(held)),
            (Some(since), None) => (
                started_ms,
                healthy_since_ms,
                Some(since.clamp(started_ms, now_ms.max(started_ms))),
            ),
            (None, Some(held)) => {
                let shift = now_ms.saturating_sub(held);
                (
                    started_ms + shift,
                    healthy_since_ms.map(|t| t + shift),
                    None,
                )
            }
            (None, None) => (started_ms, healthy_since_ms, None),
        };
        let held = held_since_ms.is_some();
        self.state = State::Running {
            wave,
            started_ms,
            healthy_since_ms,
            held_since_ms,
            waiting: waiting.clone(),
        };
        let by_id: HashMap<&str, &DeviceView> =
            devices.iter().map(|d| (d.id.as_str(), d)).collect();
        let mut effects = Vec::new();
        let name = self.wave_name(wave);
        self.watch_earlier_waves(wave, &by_id, &mut effects);
        let names = self.wave_devices(wave);
        // A wave nobody is counted in cannot pass: let in its devices that came online since
        // it started (the wave starts for them now), or wait and say why.
        if !names
            .iter()
            .any(|d| self.devices.get(d).is_some_and(|r| r.counted))
        {
            let joined = self.join_returning(&names, &by_id);
            if joined == 0 {
                let reason = if names.is_empty() {
                    "no device matches it: enroll one, or promote the rollout past it".to_owned()
                } else {
                    format!(
                        "none of its {} devices is online: it goes on when one checks in, or when the rollout is promoted",
                        names.len()
                    )
                };
                if waiting.as_deref() != Some(reason.as_str()) {
                    effects.push(Effect::WaveWaiting {
                        wave,
                        name,
                        reason: reason.clone(),
                    });
                }
                self.state = State::Running {
                    wave,
                    started_ms,
                    healthy_since_ms: None,
                    held_since_ms,
                    waiting: Some(reason),
                };
                return effects;
            }
            effects.push(Effect::WaveStarted {
                wave,
                name: name.clone(),
                devices: names.len(),
                counted: joined,
            });
            self.state = State::Running {
                wave,
                started_ms: now_ms,
                healthy_since_ms: None,
                held_since_ms,
                waiting: None,
            };
            return effects;
        }
        // Observe the wave's counted devices.
        let timed_out = !held && now_ms.saturating_sub(started_ms) > self.policy.health_timeout_ms;
        let mut done = 0usize;
        for d in &names {
            let Some(rec) = self.devices.get_mut(d) else {
                continue;
            };
            if !rec.counted {
                continue;
            }
            let view = by_id.get(d.as_str());
            if matches!(rec.outcome, Outcome::Pending | Outcome::Healthy) {
                let failure = view.and_then(|v| failure_of(&self.release, v)).or_else(|| {
                    (rec.outcome == Outcome::Healthy)
                        .then(|| lapse_of(&self.release, view))
                        .flatten()
                });
                if let Some(reason) = failure {
                    effects.push(Effect::DeviceFailed {
                        device: d.clone(),
                        reason: reason.clone(),
                    });
                    rec.outcome = Outcome::Failed { reason };
                } else if view.is_some_and(|v| healthy_on(&self.release, v)) {
                    rec.outcome = Outcome::Healthy;
                } else if rec.outcome == Outcome::Pending && timed_out {
                    let reason = if view.is_some_and(|v| v.online) {
                        "not healthy on the release within health_timeout"
                    } else {
                        "went silent during its wave (timed out)"
                    };
                    effects.push(Effect::DeviceFailed {
                        device: d.clone(),
                        reason: reason.into(),
                    });
                    rec.outcome = Outcome::Failed {
                        reason: reason.into(),
                    };
                }
            }
            if matches!(rec.outcome, Outcome::Failed { .. } | Outcome::Healthy) {
                done += 1;
            }
        }
        // The failure gate: the wave's failures and those of earlier waves' devices while it
        // ran, against its counted devices and those (10,000 basis points).
        let (counted, failed) = self.gate(wave);
        if (failed as u64) * 10_000 > (counted as u64) * u64::from(self.policy.max_failure_bp) {
            effects.push(Effect::Halted {
                wave,
                name: name.clone(),
                failed,
                counted,
            });
            self.state = State::Halted {
                wave,
                reason: format!(
                    "{failed} of {counted} devices of wave {} ({name}) failed",
                    wave + 1
                ),
            };
            return effects;
        }
        let all_done = done
            == names
                .iter()
                .filter(|d| self.devices.get(*d).is_some_and(|r| r.counted))
                .count();
        if held || !all_done {
            return effects;
        }
        let since = match healthy_since_ms {
            Some(t) => t,
            None => {
                effects.push(Effect::WaveHealthy {
                    wave,
                    name: name.clone(),
                });
                self.state = State::Running {
                    wave,
                    started_ms,
                    healthy_since_ms: Some(now_ms),
                    held_since_ms: None,
                    waiting: None,
                };
                now_ms
            }
        };
        if now_ms.saturating_sub(since) >= self.policy.bake_ms {
            effects.extend(self.advance(wave, &by_id, now_ms));
        }
        effects
    }

    /// Lets into `wave`'s gate its deferred devices that are online now; how many.
    fn join_returning(&mut self, names: &[String], by_id: &HashMap<&str, &DeviceView>) -> usize {
        let mut joined = 0;
        for d in names {
            let Some(view) = by_id.get(d.as_str()).filter(|v| v.online) else {
                continue;
            };
            if let Some(rec) = self.devices.get_mut(d) {
                if rec.outcome == Outcome::Deferred {
                    if rec.from.is_none() {
                        rec.from = view.current.as_ref().map(|c| c.as_str().to_owned());
                    }
                    rec.counted = true;
                    rec.outcome = Outcome::Pending;
                    joined += 1;
                }
            }
        }
        joined
    }

    /// Bake watches every device the rollout touched: a device of an earlier wave that
    /// reports a failure, turns unhealthy or degraded, or goes silent while `wave` runs fails,
    /// and counts against `wave`'s gate. Devices of waves sent back are not on the release.
    fn watch_earlier_waves(
        &mut self,
        wave: usize,
        by_id: &HashMap<&str, &DeviceView>,
        effects: &mut Vec<Effect>,
    ) {
        for (id, rec) in self.devices.iter_mut() {
            if rec.wave >= wave || !rec.counted || self.sent_back.contains(&rec.wave) {
                continue;
            }
            let view = by_id.get(id.as_str());
            let failure = match rec.outcome {
                Outcome::Healthy => view
                    .and_then(|v| failure_of(&self.release, v))
                    .or_else(|| lapse_of(&self.release, view)),
                // Promoted past before it was done: it may still finish, or fail.
                Outcome::Pending => match view {
                    Some(v) if healthy_on(&self.release, v) => {
                        rec.outcome = Outcome::Healthy;
                        None
                    }
                    Some(v) => failure_of(&self.release, v),
                    None => None,
                },
                _ => None,
            };
            if let Some(reason) = failure {
                effects.push(Effect::DeviceFailed {
                    device: id.clone(),
                    reason: reason.clone(),
                });
                rec.outcome = Outcome::Failed { reason };
                rec.counts_against = Some(wave);
            }
        }
    }

    /// `wave`'s gate: (counted, failed), its own counted devices and earlier waves' devices
    /// whose failure counts against it.
    fn gate(&self, wave: usize) -> (usize, usize) {
        let (mut counted, mut failed) = (0, 0);
        for rec in self.devices.values() {
            let own = rec.wave == wave && rec.counted;
            let against = rec.wave < wave && rec.counts_against == Some(wave);
            if own || against {
                counted += 1;
                failed += usize::from(matches!(rec.outcome, Outcome::Failed { .. }));
            }
        }
        (counted, failed)
    }

    fn advance(
        &mut self,
        wave: usize,
        by_id: &HashMap<&str, &DeviceView>,
        now_ms: u64,
    ) -> Vec<Effect> {
        if wave + 1 >= self.waves.len() {
            self.state = State::Completed { at_ms: now_ms };
            vec![Effect::Completed]
        } else {
            vec![self.start_wave(wave + 1, by_id, now_ms)]
        }
    }

    fn op_error(&self, op: &'static str) -> OpError {
        OpError {
            op,
            id: self.id.clone(),
            state: self.state.name(),
        }
    }

    /// Stops progressing; devices keep what they were told. A pause under the stop keeps
    /// the time already held off the clocks.
    pub fn pause(&mut self, now_ms: u64) -> Result<(), OpError> {
        match self.state.clone() {
            State::Running {
                wave,
                started_ms,
                healthy_since_ms,
                held_since_ms,
                ..
            } => {
                let shift = held_since_ms.map_or(0, |h| now_ms.saturating_sub(h));
                self.state = State::Paused {
                    wave,
                    started_ms: started_ms + shift,
                    healthy_since_ms: healthy_since_ms.map(|t| t + shift),
                    paused_ms: now_ms,
                };
                Ok(())
            }
            _ => Err(self.op_error("pause")),
        }
    }

    /// Continues a paused rollout (the pause does not count against timeouts), or retries a
    /// halted wave: its devices start it again from the release they went back to (`from`
    /// unchanged), its clock starts now, and earlier waves' devices that failed during it
    /// stay back but no longer count against it. A device that marked the release bad fails
    /// again at once.
    pub fn resume(&mut self, devices: &[DeviceView], now_ms: u64) -> Result<Vec<Effect>, OpError> {
        match self.state.clone() {
            State::Paused {
                wave,
                started_ms,
                healthy_since_ms,
                paused_ms,
            } => {
                let shift = now_ms.saturating_sub(paused_ms);
                self.state = State::Running {
                    wave,
                    started_ms: started_ms + shift,
                    healthy_since_ms: healthy_since_ms.map(|t| t + shift),
                    held_since_ms: None,
                    waiting: None,
                };
                Ok(Vec::new())
            }
            State::Halted { wave, .. } => {
                for rec in self.devices.values_mut() {
                    if rec.counts_against == Some(wave) {
                        rec.counts_against = None;
                    }
                }
                let by_id: HashMap<&str, &DeviceView> =
                    devices.iter().map(|d| (d.id.as_str(), d)).collect();
                Ok(vec![self.start_wave(wave, &by_id, now_ms)])
            }
            _ => Err(self.op_error("resume")),
        }
    }

    /// Every device of the rollout goes back to the release it ran before. Final.
    pub fn abort(&mut self, reason: &str) -> Result<(), OpError> {
        if !self.state.is_active() {
            return Err(self.op_error("abort"));
        }
        self.state = State::Aborted {
            reason: reason.to_owned(),
        };
        Ok(())
    }

    /// Skips the gates: the current wave counts as done and the next starts now. From a
    /// halted rollout, the halted wave stays where it went back to (it is never sent forward
    /// again); the rollout goes on with the next wave.
    pub fn promote(&mut self, devices: &[DeviceView], now_ms: u64) -> Result<Vec<Effect>, OpError> {
        let wave = match &self.state {
            State::Running { wave, .. } | State::Paused { wave, .. } => *wave,
            State::Halted { wave, .. } => {
                self.sent_back.insert(*wave);
                *wave
            }
            _ => return Err(self.op_error("promote")),
        };
        let by_id: HashMap<&str, &DeviceView> =
            devices.iter().map(|d| (d.id.as_str(), d)).collect();
        Ok(self.advance(wave, &by_id, now_ms))
    }

    /// A newer release takes over.
    pub fn supersede(&mut self, by: &str) {
        if self.state.is_active() {
            self.state = State::Superseded { by: by.to_owned() };
        }
    }

    /// What this rollout wants `device` to run: `None` when it is not this rollout's business
    /// (not reached yet, deferred, or the rollout is over), `Some(None)` for "hold where you
    /// are" (back to nothing), `Some(Some(release))` otherwise.
    pub fn claim(&self, device: &str) -> Option<Option<&str>> {
        let rec = self.devices.get(device)?;
        let back = Some(rec.from.as_deref());
        match (&self.state, &rec.outcome) {
            (_, Outcome::Waiting | Outcome::Deferred) => None,
            (State::Superseded { .. }, _) => None,
            (State::Aborted { .. }, _) => back,
            (_, Outcome::Failed { .. }) => back,
            _ if self.sent_back.contains(&rec.wave) => back,
            (State::Halted { wave, .. }, _) if rec.wave == *wave => back,
            (State::Completed { .. }, _) => None,
            _ => Some(Some(self.release.as_str())),
        }
    }
}

/// Whether a device counts as failed for the fleet-wide gate: unhealthy, degraded or in safe
/// mode while online, or silent soon after taking a release.
fn fleet_bad(d: &DeviceView) -> bool {
    if d.online {
        matches!(d.health, HealthState::Unhealthy | HealthState::Degraded)
            || d.phase == UpdatePhase::SafeMode
    } else {
        d.silent_after_release
    }
}

/// The fleet-wide gate's count: (bad, considered). Considered are the devices online and
/// those that went silent soon after taking a release; bad are those unhealthy, degraded or
/// in safe mode among them, and the silent ones. Devices offline for other reasons count
/// neither way.
pub fn fleet_health(devices: &[DeviceView]) -> (usize, usize) {
    let considered = devices
        .iter()
        .filter(|d| d.online || d.silent_after_release);
    let (mut bad, mut all) = (0, 0);
    for d in considered {
        all += 1;
        bad += usize::from(fleet_bad(d));
    }
    (bad, all)
}

/// Whether the fleet is back under half its limit: the gate, once disarmed by an operator's
/// resume, arms again only then (not on the first pass a few devices are mid-update).
pub fn fleet_recovered(policy: &Policy, devices: &[DeviceView]) -> bool {
    let (bad, all) = fleet_health(devices);
    (bad as u64) * 10_000 * 2 <= (all as u64) * u64::from(policy.fleet_unhealthy_stop_bp)
}

/// The fleet-wide gate: the share of [`fleet_health`]'s bad devices above the policy's limit
/// trips it; the reason says how many.
pub fn fleet_unhealthy(policy: &Policy, devices: &[DeviceView]) -> Option<String> {
    let (bad, all) = fleet_health(devices);
    if all == 0 {
        return None;
    }
    let silent = devices
        .iter()
        .filter(|d| !d.online && d.silent_after_release)
        .count();
    ((bad as u64) * 10_000 > (all as u64) * u64::from(policy.fleet_unhealthy_stop_bp)).then(|| {
        let silent = if silent > 0 {
            format!(" ({silent} went silent soon after taking a release)")
        } else {
            String::new()
        };
        format!(
            "{bad} of {all} devices are unhealthy, degraded or in safe mode{silent}, above the fleet-wide limit of {}%",
            f64::from(policy.fleet_unhealthy_stop_bp) / 100.0
        )
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rollout::plan::tests::{default_policy, fleet};

    pub(crate) const OLD: &str = "1111111111111111111111111111111111111111";
    pub(crate) const NEW: &str = "2222222222222222222222222222222222222222";

    fn rid(s: &str) -> ReleaseId {
        s.parse().expect("sha")
    }

    /// An online, healthy, unpinned device on release `OLD`.
    pub(crate) fn device_view(id: String, labels: BTreeMap<String, String>) -> DeviceView {
        DeviceView {
            id,
            labels,
            online: true,
            pinned: false,
            current: Some(rid(OLD)),
            phase: UpdatePhase::Idle,
            health: HealthState::Healthy,
            last_result: None,
            bad_releases: vec![],
            silent_after_release: false,
        }
    }

    fn views(n: usize, canaries: usize) -> Vec<DeviceView> {
        fleet(n, canaries)
            .into_iter()
            .map(|(id, labels)| device_view(id, labels))
            .collect()
    }

    /// Devices install what the rollout claims for them; `fails` ones roll back.
    fn simulate(r: &Rollout, devs: &mut [DeviceView], fails: &dyn Fn(&str) -> bool) {
        for d in devs.iter_mut() {
            if let Some(Some(target)) = r.claim(&d.id) {
                if d.current.as_ref().map(ReleaseId::as_str) == Some(target)
                    || d.bad_releases.iter().any(|b| b.as_str() == target)
                {
                    continue;
                }
                if fails(&d.id) {
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
    }

    fn on_new(devs: &[DeviceView]) -> usize {
        devs.iter()
            .filter(|d| d.current.as_ref().map(ReleaseId::as_str) == Some(NEW))
            .count()
    }

    #[test]
    fn a_good_release_goes_through_every_wave_in_order_with_bake() {
        let mut devs = views(100, 2);
        let (mut r, fx) = Rollout::start("r1", &rid(NEW), "sha256:x", &devs, default_policy(), 0);
        assert!(
            matches!(
                fx[..],
                [Effect::WaveStarted {
                    wave: 0,
                    devices: 2,
                    counted: 2,
                    ..
                }]
            ),
            "{fx:?}"
        );
        let mut t = 0;
        let mut started = vec![0usize];
        let mut progress = vec![];
        while !matches!(r.state, State::Completed { .. }) {
            assert!(t < 100_000, "never completed: {:?}", r.state);
            simulate(&r, &mut devs, &|_| false);
            t += 100;
            for e in r.step(&devs, None, t) {
                if let Effect::WaveStarted { wave, .. } = e {
                    // Bake: the previous wave was healthy for at least `bake_ms` first.
                    started.push(wave);
                }
            }
            progress.push(on_new(&devs));
        }
        assert_eq!(started, vec![0, 1, 2, 3]);
        assert_eq!(on_new(&devs), 100);
        // Devices move only in the steps canary 2 → 5 → 25 → 100.
        let mut steps: Vec<usize> = progress.clone();
        steps.dedup();
        assert_eq!(steps, vec![2, 5, 25, 100]);
        // Each wave baked: with bake 1000 ms and 100 ms steps, at least 10 steps per level.
        for level in [2, 5, 25] {
            assert!(
                progress.iter().filter(|p| **p == level).count() >= 10,
                "{level}"
            );
        }
    }

    #[test]
    fn failing_canaries_halt_the_rollout_and_go_back_while_later_waves_are_never_touched() {
        let mut devs = views(100, 2);
        let (mut r, _) = Rollout::start("r1", &rid(NEW), "sha256:x", &devs, default_policy(), 0);
        let mut halted = None;
        for t in (100..5_000).step_by(100) {
            simulate(&r, &mut devs, &|id| id.ends_with("00000"));
            for e in r.step(&devs, None, t) {
                if let Effect::Halted {
                    failed, counted, ..
                } = e
                {
                    halted = Some((failed, counted));
                }
            }
        }
        assert_eq!(halted, Some((1, 2)), "1 of 2 canaries is 50% > 5%");
        assert!(matches!(r.state, State::Halted { wave: 0, .. }));
        for d in &devs {
            let claim = r.claim(&d.id);
            if d.labels.contains_key("ring") {
                assert_eq!(
                    claim,
                    Some(Some(OLD)),
                    "the halted wave goes back to its from release"
                );
            } else {
                assert_eq!(claim, None, "later waves are never told");
                assert_ne!(d.current.as_ref().map(ReleaseId::as_str), Some(NEW));
            }
        }
    }

    #[test]
    fn failures_within_the_threshold_do_not_halt() {
        let mut policy = default_policy();
        policy.max_failure_bp = 5_000;
        let mut devs = views(100, 2);
        let (mut r, _) = Rollout::start("r1", &rid(NEW), "sha256:x", &devs, policy, 0);
        let mut t = 0;
        while !matches!(r.state, State::Completed { .. } | State::Halted { .. }) && t < 100_000 {
            simulate(&r, &mut devs, &|id| id.ends_with("00000"));
            t += 100;
            r.step(&devs, None, t);
        }
        assert!(matches!(r.state, State::Completed { .. }), "{:?}", r.state);
        assert_eq!(
            r.claim("dev-00000"),
            Some(Some(OLD)),
            "the failed canary is sent back"
        );
    }

    #[test]
    fn silence_times_out_and_offline_devices_are_deferred() {
        let mut devs = views(10, 1);
        devs[3].online = false;
        let (mut r, fx) = Rollout::start("rX", &rid(NEW), "sha256:x", &devs, default_policy(), 0);
        // Wave 1 is one device; make sure the offline one is in it or a later one.
        let first = r.waves[0].devices[0].clone();
        assert!(matches!(fx[0], Effect::WaveStarted { devices: 1, .. }));
        // The first device never becomes healthy (silent): it fails at the timeout.
        let mut fx = Vec::new();
        for t in (1_000..=11_000).step_by(1_000) {
            fx.extend(r.step(&devs, None, t));
        }
        if first == devs[3].id {
            assert_eq!(
                r.devices[&first].outcome,
                Outcome::Deferred,
                "offline at start: not counted"
            );
            assert!(!matches!(r.state, State::Halted { .. }));
        } else {
            assert!(
                fx.iter().any(|e| matches!(e, Effect::DeviceFailed { .. })),
                "{fx:?}"
            );
            assert!(matches!(r.state, State::Halted { .. }), "{:?}", r.state);
        }
        // A device offline when its wave starts is deferred and gets nothing from this rollout.
        let mut r2 = r.clone();
        r2.state = State::Running {
            wave: 0,
            started_ms: 0,
            healthy_since_ms: None,
            held_since_ms: None,
            waiting: None,
        };
        let by_id: HashMap<&str, &DeviceView> = devs.iter().map(|d| (d.id.as_str(), d)).collect();
        let w = r2.devices[&devs[3].id].wave;
        r2.start_wave(w, &by_id, 0);
        assert_eq!(r2.devices[&devs[3].id].outcome, Outcome::Deferred);
        assert_eq!(r2.claim(&devs[3].id), None);
    }

    #[test]
    fn operations() {
        let mut devs = views(20, 2);
        let (mut r, _) = Rollout::start("r1", &rid(NEW), "sha256:x", &devs, default_policy(), 0);
        r.pause(10).expect("pause");
        assert!(r.pause(11).is_err());
        simulate(&r, &mut devs, &|_| false);
        for t in (100..5_000).step_by(100) {
            assert!(r.step(&devs, None, t).is_empty(), "paused: no progress");
        }
        r.resume(&devs, 5_000).expect("resume");
        let fx = r.promote(&devs, 5_000).expect("promote");
        assert!(
            matches!(fx[..], [Effect::WaveStarted { wave: 1, .. }]),
            "{fx:?}"
        );
        // The emergency stop freezes progress even with everything healthy.
        simulate(&r, &mut devs, &|_| false);
        for t in (5_100..20_000).step_by(100) {
            for e in r.step(&devs, Some(5_100), t) {
                assert!(
                    !matches!(e, Effect::WaveStarted { .. } | Effect::Completed),
                    "{e:?}"
                );
            }
        }
        r.abort("by hand").expect("abort");
        assert!(r.abort("again").is_err());
        assert!(r.resume(&devs, 1).is_err());
        for d in &devs {
            if let Some(t) = r.claim(&d.id) {
                assert_eq!(t, Some(OLD), "aborted: back to where it was");
            }
        }
        let e = r.promote(&devs, 1).expect_err("aborted");
        assert_eq!(e.to_string(), "cannot promote rollout r1: it is aborted");
    }

    #[test]
    fn fleet_wide_gate() {
        let mut devs = views(10, 0);
        let p = default_policy();
        assert_eq!(fleet_unhealthy(&p, &devs), None);
        devs[0].health = HealthState::Unhealthy;
        devs[1].health = HealthState::Unhealthy;
        assert_eq!(fleet_unhealthy(&p, &devs), None, "20% is not above 20%");
        devs[2].phase = UpdatePhase::SafeMode;
        assert!(fleet_unhealthy(&p, &devs).is_some_and(|m| m.contains("3 of 10")));
    }

    #[test]
    fn serde_round_trip_and_size() {
        let devs = views(10_000, 10);
        let (r, _) = Rollout::start("r1", &rid(NEW), "sha256:x", &devs, default_policy(), 0);
        let json = serde_json::to_string(&r).expect("json");
        let back: Rollout = serde_json::from_str(&json).expect("back");
        assert_eq!(back, r);
        assert!(json.len() < 1_500_000, "{} bytes", json.len());
    }
}
