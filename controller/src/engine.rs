//! The rollout driver: runs the pure engine ([`crate::rollout`]) over the store. The leader
//! calls [`reconcile_once`] every `reconcile_interval` and after each check-in that changes what
//! it sees of a device (release, phase, health, back online): it steps the current rollout,
//! writes it back, applies the fleet-wide gate and sets every device's desired release. Everything it needs is read from the store each time, so a restarted controller
//! (or a new leader) goes on where the last one was.
//!
//! Every rollout write is conditional (issue 14): the leader writes back a rollout only if it
//! is still at the version the pass read, in one transaction fenced by its lease epoch with the
//! desired releases it decided from it; an operator's action, taken on any replica, is a
//! compare-and-swap retried on a fresh read. So an abort sent to a follower is never undone by
//! the leader's older copy, and a replica that lost the lease writes nothing.

use std::collections::HashMap;
use std::time::Duration;

use fleet_config::protocol::ReleaseId;
use fleet_config::{FleetRepo, TreeDigest};
use tokio_util::sync::CancellationToken;

use crate::db::{
    now_ms, DbError, DeviceRow, EmergencyStop, Fence, Fenced, RepoPin, RolloutRow, RolloutWrite,
};
use crate::rollout::{
    desired_for, DeviceView, Effect, Fallback, OpError, Policy, Rollout, State, Target,
};
use crate::state::AppState;

/// Errors of the driver.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store.
    #[error("{0}")]
    Db(#[from] DbError),
    /// A stored rollout is unreadable.
    #[error("stored rollout {id} is unreadable: {reason}")]
    Corrupt {
        /// Rollout.
        id: String,
        /// Why.
        reason: String,
    },
    /// No such rollout.
    #[error("no rollout `{0}`")]
    NotFound(String),
    /// The operation does not apply.
    #[error("{0}")]
    Op(#[from] OpError),
    /// A rollout of that id exists already.
    #[error("a rollout `{0}` exists already")]
    Exists(String),
    /// The rollout kept changing under an operator's action.
    #[error("rollout `{id}` kept changing under this action ({attempts} attempts); try again")]
    Contended {
        /// Rollout.
        id: String,
        /// Attempts made.
        attempts: u32,
    },
}

impl EngineError {
    /// A write refused by the leader fence: this replica does not lead any more.
    pub fn is_fenced(&self) -> bool {
        matches!(self, EngineError::Db(DbError::Fenced { .. }))
    }

    fn is_conflict(&self) -> bool {
        matches!(self, EngineError::Db(DbError::Conflict { .. }))
    }
}

/// How often a write that found the rollout changed is tried again on a fresh read.
const ATTEMPTS: u32 = 10;

/// The engine's view of a device. `silence_window_ms`: a device that went silent within this
/// long of being told a new release counts as failed for the fleet-wide gate.
fn view(d: &DeviceRow, now: i64, offline_after_ms: i64, silence_window_ms: i64) -> DeviceView {
    let online = d.online(now, offline_after_ms);
    let silent_after_release = !online
        && d.desired_release.is_some()
        && match (d.desired_since_ms, d.last_seen_ms) {
            // It checked in after being told (so it got the release) and fell silent soon.
            (Some(told), Some(seen)) => seen >= told && seen - told <= silence_window_ms,
            _ => false,
        };
    DeviceView {
        id: d.id.clone(),
        labels: d.labels.clone(),
        online,
        silent_after_release,
        pinned: d.pinned_release.is_some(),
        current: d.current.clone(),
        phase: d.phase,
        health: d.health,
        last_result: d.last_result.clone(),
        bad_releases: d.bad_releases.clone(),
    }
}

/// Devices rollouts are about: enrolled, not revoked, listed in devices.yaml.
fn fleet_views(
    state: &AppState,
    devices: &[DeviceRow],
    now: i64,
    silence_window_ms: i64,
) -> Vec<DeviceView> {
    devices
        .iter()
        .filter(|d| d.in_inventory && d.revoked_ms.is_none())
        .map(|d| view(d, now, state.offline_after_ms(), silence_window_ms))
        .collect()
}

/// How soon after being told a release a device's silence counts against the fleet-wide
/// gate: the policy's `health_timeout`.
fn silence_window(policy: &Policy) -> i64 {
    i64::try_from(policy.health_timeout_ms).unwrap_or(i64::MAX)
}

fn parse(row: &RolloutRow) -> Result<Rollout, EngineError> {
    if let Some(reason) = &row.unreadable {
        return Err(EngineError::Corrupt {
            id: row.id.clone(),
            reason: reason.clone(),
        });
    }
    serde_json::from_value(row.data.clone()).map_err(|e| EngineError::Corrupt {
        id: row.id.clone(),
        reason: e.to_string(),
    })
}

/// The rollout of `row`, or `None` after quarantining it when it cannot be read: one corrupt
/// row must not freeze every pass (and so the whole fleet). Quarantined rows stay in the
/// store with their text, show as `quarantined` in listings and `/metrics`, and are audited.
async fn parse_or_quarantine(
    state: &AppState,
    row: &RolloutRow,
) -> Result<Option<Rollout>, EngineError> {
    match parse(row) {
        Ok(r) => Ok(Some(r)),
        Err(EngineError::Corrupt { id, reason }) => {
            tracing::error!(rollout = %id, %reason, "stored rollout is unreadable: quarantined; the engine goes on without it");
            if state.db.quarantine_rollout(&id).await? {
                state
                    .db
                    .audit(
                        "controller",
                        "rollout.quarantined",
                        &id,
                        "its stored state is unreadable; the engine goes on without it",
                        &reason,
                    )
                    .await?;
            }
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn encode(r: &Rollout) -> Result<String, EngineError> {
    serde_json::to_string(r).map_err(|e| EngineError::Corrupt {
        id: r.id.clone(),
        reason: e.to_string(),
    })
}

fn write_of<'a>(r: &'a Rollout, data: &'a str) -> RolloutWrite<'a> {
    RolloutWrite {
        id: &r.id,
        release: &r.release,
        state: r.state.name(),
        active: r.state.is_active(),
        data,
    }
}

/// The leader writes `r`, read at `version`, back (compare-and-swap, in its fenced
/// transaction); returns the new version.
async fn save(tx: &mut Fenced, r: &Rollout, version: i64) -> Result<i64, EngineError> {
    let data = encode(r)?;
    Ok(tx.update_rollout(&write_of(r, &data), version).await?)
}

/// The audit log's words for an effect: (action, detail).
fn entry(e: &Effect) -> (&'static str, String) {
    let action = match e {
        Effect::WaveStarted { .. } => "rollout.wave_started",
        Effect::WaveWaiting { .. } => "rollout.wave_waiting",
        Effect::DeviceFailed { .. } => "rollout.device_failed",
        Effect::WaveHealthy { .. } => "rollout.wave_healthy",
        Effect::Halted { .. } => "rollout.halted",
        Effect::Completed => "rollout.completed",
        Effect::EmergencyStop { .. } => "rollout.fleet_unhealthy",
    };
    (action, serde_json::to_string(e).unwrap_or_default())
}

/// Logs effects that were stored.
fn log_effects(r: &Rollout, effects: &[Effect]) {
    for e in effects {
        match e {
            Effect::Halted { .. } | Effect::EmergencyStop { .. } => {
                tracing::error!(rollout = %r.id, "{e}")
            }
            Effect::DeviceFailed { .. } | Effect::WaveWaiting { .. } => {
                tracing::warn!(rollout = %r.id, "{e}")
            }
            _ => tracing::info!(rollout = %r.id, "{e}"),
        }
    }
}

/// Audits (and logs) the effects of an operator's action, once it is stored.
async fn record(state: &AppState, r: &Rollout, effects: &[Effect]) -> Result<(), EngineError> {
    log_effects(r, effects);
    for e in effects {
        let (action, detail) = entry(e);
        state
            .db
            .audit("controller", action, &r.id, &e.to_string(), &detail)
            .await?;
    }
    Ok(())
}

/// Audits effects in the leader's transaction (logged once it commits).
async fn record_in(tx: &mut Fenced, r: &Rollout, effects: &[Effect]) -> Result<(), EngineError> {
    for e in effects {
        let (action, detail) = entry(e);
        tx.audit("controller", action, &r.id, &e.to_string(), &detail)
            .await?;
    }
    Ok(())
}

/// A new valid release (the leader's watcher, under `fence`): the inventory (labels, pins)
/// follows its devices.yaml, an active rollout is superseded, and a rollout of it starts from
/// the canaries. Every failure is returned: the watcher records the release only after this
/// succeeded, and does it all again otherwise.
pub async fn new_release(
    state: &AppState,
    fence: &Fence,
    release: &ReleaseId,
    digest: TreeDigest,
    repo: &FleetRepo,
) -> Result<(), EngineError> {
    let inventory = repo
        .devices
        .devices
        .iter()
        .map(|d| (d.id.clone(), d.labels.clone()))
        .collect();
    let pins = repo
        .devices
        .devices
        .iter()
        .filter_map(|d| {
            d.pin.as_ref().map(|p| {
                (
                    d.id.clone(),
                    RepoPin {
                        release: p.release.clone(),
                        reason: p.reason.clone(),
                    },
                )
            })
        })
        .collect();
    let mut tx = state.db.fenced(fence).await?;
    let pin_changes = tx.sync_inventory(&inventory, &pins).await?;
    for (device, pin) in &pin_changes {
        let (action, detail) = match pin {
            Some(r) => (
                "device.pin",
                format!("pinned to {r} by devices.yaml of {release}"),
            ),
            None => (
                "device.unpin",
                format!("pin lifted: not in devices.yaml of {release}"),
            ),
        };
        tx.audit(
            "devices.yaml",
            action,
            device,
            &detail,
            pin.as_deref().unwrap_or(""),
        )
        .await?;
    }
    tx.commit().await?;
    for (device, pin) in &pin_changes {
        tracing::info!(%device, pinned = ?pin, "pin from devices.yaml");
    }
    start_rollout(
        state,
        fence,
        release,
        &digest.to_string(),
        Policy::from(&repo.fleet.rollout),
    )
    .await
}

/// Supersedes what is active and starts a rollout of `release` (the leader, under `fence`),
/// in one fenced transaction; tried again on a fresh read if an operator changed the active
/// rollout meanwhile.
pub async fn start_rollout(
    state: &AppState,
    fence: &Fence,
    release: &ReleaseId,
    digest: &str,
    policy: Policy,
) -> Result<(), EngineError> {
    let id = format!("r-{}", release.short());
    let mut attempt = 1;
    loop {
        match try_start(state, fence, &id, release, digest, &policy).await {
            Err(e) if e.is_conflict() && attempt < ATTEMPTS => attempt += 1,
            // Created by an earlier try whose release was not recorded (a crash, an error):
            // it stands, and the release is recorded now.
            Err(EngineError::Exists(_)) => {
                tracing::info!(rollout = %id, "rollout exists already from an earlier try");
                break;
            }
            Err(e) => {
                if e.is_fenced() {
                    state.leadership.fenced_out(fence);
                }
                return Err(e);
            }
            Ok((superseded, r, effects)) => {
                for old in superseded {
                    tracing::info!(rollout = %old, by = %id, "rollout superseded");
                }
                tracing::info!(rollout = %id, %release, waves = r.waves.len(), "rollout created");
                log_effects(&r, &effects);
                break;
            }
        }
    }
    reconcile_once(state).await
}

async fn try_start(
    state: &AppState,
    fence: &Fence,
    id: &str,
    release: &ReleaseId,
    digest: &str,
    policy: &Policy,
) -> Result<(Vec<String>, Rollout, Vec<Effect>), EngineError> {
    let active = state.db.active_rollouts().await?;
    let now = now_ms();
    let devices = state.db.devices().await?;
    let views = fleet_views(state, &devices, now, silence_window(policy));
    let mut readable = Vec::new();
    for row in &active {
        if row.id == id {
            return Err(EngineError::Exists(id.to_owned()));
        }
        if let Some(r) = parse_or_quarantine(state, row).await? {
            readable.push((row, r));
        }
    }
    let mut tx = state.db.fenced(fence).await?;
    let mut superseded = Vec::new();
    for (row, mut old) in readable {
        old.supersede(id);
        save(&mut tx, &old, row.version).await?;
        tx.audit(
            "controller",
            "rollout.superseded",
            &old.id,
            &format!("superseded by {id}"),
            "",
        )
        .await?;
        superseded.push(old.id);
    }
    let (r, effects) = Rollout::start(
        id,
        release,
        digest,
        &views,
        policy.clone(),
        now.max(0) as u64,
    );
    let data = encode(&r)?;
    match tx.insert_rollout(&write_of(&r, &data)).await {
        Err(DbError::Conflict { .. }) => return Err(EngineError::Exists(id.to_owned())),
        other => other?,
    };
    tx.audit(
        "controller",
        "rollout.created",
        id,
        "",
        &format!("release {release}, {} waves", r.waves.len()),
    )
    .await?;
    record_in(&mut tx, &r, &effects).await?;
    tx.commit().await?;
    Ok((superseded, r, effects))
}

/// Stores the stop (the first one's record stays) and audits it; returns whether it was new.
async fn set_stop(state: &AppState, stop: &EmergencyStop) -> Result<bool, DbError> {
    let new = state.db.set_emergency_stop(stop).await?;
    if new {
        let detail = if stop.rollback { "rollback" } else { "" };
        state
            .db
            .audit(&stop.actor, "emergency_stop", "fleet", &stop.reason, detail)
            .await?;
        tracing::error!(actor = %stop.actor, reason = %stop.reason, rollback = stop.rollback, "EMERGENCY STOP set: every check-in answers hold");
    }
    Ok(new)
}

/// Sets the emergency stop; with `rollback`, the active rollout is aborted so its devices go
/// back (the one kind of move a check-in allows while the stop holds). Any replica.
pub async fn emergency_stop(state: &AppState, stop: &EmergencyStop) -> Result<bool, DbError> {
    let new = set_stop(state, stop).await?;
    if stop.rollback {
        let reason = format!("emergency stop with rollback: {}", stop.reason);
        for row in state.db.active_rollouts().await? {
            match mutate(state, &row.id, |r, _, _| {
                r.abort(&reason).map(|_| Vec::new())
            })
            .await
            {
                Ok((r, _)) => {
                    state
                        .db
                        .audit(
                            &stop.actor,
                            "rollout.abort",
                            &r.id,
                            &stop.reason,
                            "emergency stop",
                        )
                        .await?
                }
                // Over meanwhile: nothing to send back.
                Err(EngineError::Op(_)) => {}
                Err(EngineError::Db(e)) => return Err(e),
                Err(e) => {
                    tracing::error!(rollout = %row.id, error = %e, "cannot abort the rollout")
                }
            }
        }
        if let Err(e) = reconcile_once(state).await {
            tracing::error!(error = %e, "cannot send the rollout's devices back");
        }
        state.reconcile.notify_one();
    }
    Ok(new)
}

/// Applies `f` to rollout `id` (`active` names the current one) as a compare-and-swap: read,
/// apply, write if nobody wrote in between, else read again and apply again. Any replica.
async fn mutate(
    state: &AppState,
    id: &str,
    mut f: impl FnMut(&mut Rollout, &[DeviceView], u64) -> Result<Vec<Effect>, OpError>,
) -> Result<(Rollout, Vec<Effect>), EngineError> {
    for attempt in 0..ATTEMPTS {
        let row = if id == "active" {
            state.db.active_rollouts().await?.pop()
        } else {
            state.db.rollout(id).await?
        };
        let row = row.ok_or_else(|| EngineError::NotFound(id.to_owned()))?;
        let mut r = parse(&row)?;
        let now = now_ms();
        let devices = state.db.devices().await?;
        let views = fleet_views(state, &devices, now, silence_window(&r.policy));
        let effects = f(&mut r, &views, now.max(0) as u64)?;
        let data = encode(&r)?;
        match state
            .db
            .update_rollout(
                &write_of(&r, &data),
                row.version,
                state.leadership.replica(),
            )
            .await
        {
            Ok(_) => return Ok((r, effects)),
            Err(DbError::Conflict { .. }) => {
                tracing::debug!(rollout = %r.id, attempt, "rollout changed meanwhile; reading it again");
                tokio::time::sleep(Duration::from_millis(5 << attempt.min(5))).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(EngineError::Contended {
        id: id.to_owned(),
        attempts: ATTEMPTS,
    })
}

/// An operator's action on a rollout (`active` names the current one), on any replica: a
/// compare-and-swap on the stored rollout (never lost to the leader's concurrent pass, which
/// reads it again). Returns it after; the leader applies it to devices at once if this
/// replica leads, else at its next pass.
pub async fn act(
    state: &AppState,
    id: &str,
    action: &str,
    actor: &str,
    reason: &str,
) -> Result<Rollout, EngineError> {
    if !matches!(action, "pause" | "resume" | "abort" | "promote") {
        return Err(EngineError::NotFound(format!("{id}/{action}")));
    }
    let (r, effects) = mutate(state, id, |r, views, now| match action {
        "pause" => r.pause(now).map(|_| Vec::new()),
        "resume" => r.resume(views, now),
        "abort" => r.abort(reason).map(|_| Vec::new()),
        _ => r.promote(views, now),
    })
    .await?;
    state
        .db
        .audit(actor, &format!("rollout.{action}"), &r.id, reason, "")
        .await?;
    record(state, &r, &effects).await?;
    // The action is stored; the devices follow at this pass (leader) or the leader's next.
    if let Err(e) = reconcile_once(state).await {
        tracing::warn!(rollout = %r.id, error = %e, "the leader's pass after the action failed; the next one applies it");
    }
    state.reconcile.notify_one();
    Ok(r)
}

/// The fleet-wide gate: the reason to set the emergency stop, if the fleet is above
/// `fleet_unhealthy_stop` and the gate is armed. After an operator clears a stop the gate set,
/// it is disarmed until the fleet is back under half the limit, so the operator can send a fix
/// while the fleet is still unhealthy.
async fn fleet_gate(
    state: &AppState,
    policy: &Policy,
    views: &[DeviceView],
    stop: Option<&EmergencyStop>,
) -> Result<Option<String>, EngineError> {
    let verdict = crate::rollout::machine::fleet_unhealthy(policy, views);
    let disarmed = state.db.fleet_gate_disarmed().await?;
    let recovered = crate::rollout::machine::fleet_recovered(policy, views);
    match verdict {
        Some(reason) if stop.is_none() && !disarmed => Ok(Some(reason)),
        None if disarmed && recovered => {
            state.db.set_fleet_gate_disarmed(false).await?;
            tracing::info!("the fleet is back under half its unhealthy limit; the fleet-wide gate is armed again");
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// One pass (leader only): step the current rollout, apply the fleet-wide gate, set desired
/// releases. A pass whose rollout changed under it (an operator's action on another replica)
/// is dropped and run again on a fresh read; a pass fenced out steps this replica down.
pub async fn reconcile_once(state: &AppState) -> Result<(), EngineError> {
    let Some(fence) = state.leadership.fence() else {
        return Ok(());
    };
    let mut attempt = 1;
    loop {
        match pass(state, &fence).await {
            Err(e) if e.is_conflict() && attempt < ATTEMPTS => attempt += 1,
            Err(e) => {
                if e.is_fenced() {
                    state.leadership.fenced_out(&fence);
                }
                return Err(e);
            }
            Ok(()) => return Ok(()),
        }
    }
}

async fn pass(state: &AppState, fence: &Fence) -> Result<(), EngineError> {
    let now = now_ms();
    let stop = state.db.emergency_stop().await?;
    let rows = state.db.rollouts(200).await?;
    let mut current: Option<Rollout> = None;
    // The version `current` was read at: what it is written back over, or checked against.
    let mut version = 0;
    let mut last_completed: Option<(String, String)> = None;
    for row in &rows {
        if current.is_none() && !matches!(row.state.as_str(), "superseded" | "quarantined") {
            if let Some(r) = parse_or_quarantine(state, row).await? {
                current = Some(r);
                version = row.version;
            }
        }
        if last_completed.is_none() && row.state == "completed" {
            last_completed = Some((row.id.clone(), row.release.clone()));
        }
    }
    let window = current.as_ref().map_or(0, |r| silence_window(&r.policy));
    let devices = state.db.devices().await?;
    let views = fleet_views(state, &devices, now, window);
    // What the pass writes, all in one fenced transaction at the end.
    let mut effects = Vec::new();
    let mut changed = false;
    let mut new_stop: Option<EmergencyStop> = None;
    if let Some(r) = current.as_mut() {
        if matches!(r.state, State::Running { .. }) {
            let before = (r.state.clone(), r.devices.clone());
            let stop_since = stop.as_ref().map(|s| u64::try_from(s.at_ms).unwrap_or(0));
            effects = r.step(&views, stop_since, now.max(0) as u64);
            changed = before != (r.state.clone(), r.devices.clone());
            if matches!(r.state, State::Completed { .. }) {
                last_completed = Some((r.id.clone(), r.release.clone()));
            }
        }
        // The fleet-wide gate holds whatever the rollout is doing: a release that completed
        // its rollout and then takes devices down trips it too.
        if let Some(reason) = fleet_gate(state, &r.policy, &views, stop.as_ref()).await? {
            effects.push(Effect::EmergencyStop {
                reason: reason.clone(),
            });
            new_stop = Some(EmergencyStop {
                actor: "controller".into(),
                reason,
                at_ms: now,
                rollback: false,
            });
        }
    }
    // Release digests and their order, for targets and late joiners.
    let releases = state.db.releases(10_000).await?;
    let digests: HashMap<&str, &str> = releases
        .iter()
        .filter_map(|r| r.digest.as_deref().map(|d| (r.sha.as_str(), d)))
        .collect();
    let seen: HashMap<&str, i64> = releases
        .iter()
        .map(|r| (r.sha.as_str(), r.seen_ms))
        .collect();
    let lc_release = last_completed.as_ref().map(|(_, rel)| rel.as_str());
    let lc_seen = lc_release
        .and_then(|r| seen.get(r).copied())
        .unwrap_or(i64::MIN);
    let is_newer = |r: &str| seen.get(r).is_some_and(|s| *s > lc_seen);
    let fallback = Fallback {
        last_completed: lc_release,
        is_newer: &is_newer,
    };
    let mut changes = Vec::new();
    for d in &devices {
        let target = if d.in_inventory && d.revoked_ms.is_none() {
            let v = view(d, now, state.offline_after_ms(), window);
            desired_for(
                &v,
                d.pinned_release.as_ref().map(ReleaseId::as_str),
                current.as_ref(),
                &fallback,
            )
        } else {
            Target::Hold
        };
        let want = match target {
            Target::Release(r) => digests
                .get(r.as_str())
                .map(|dg| (r.clone(), (*dg).to_owned())),
            Target::Hold => None,
        };
        let have = match (&d.desired_release, &d.desired_digest) {
            (Some(r), Some(dg)) => Some((r.as_str().to_owned(), dg.clone())),
            _ => None,
        };
        if want != have {
            changes.push((d.id.clone(), want));
        }
    }
    if !changed && effects.is_empty() && new_stop.is_none() && changes.is_empty() {
        return Ok(());
    }
    let mut tx = state.db.fenced(fence).await?;
    match &current {
        Some(r) if changed => {
            save(&mut tx, r, version).await?;
        }
        // The desired releases follow this version of the rollout: still the stored one.
        Some(r) => tx.rollout_unchanged(&r.id, version).await?,
        None => {}
    }
    let mut stop_set = false;
    if let Some(stop) = &new_stop {
        stop_set = tx.set_emergency_stop(stop).await?;
        if stop_set {
            tx.audit(&stop.actor, "emergency_stop", "fleet", &stop.reason, "")
                .await?;
        }
    }
    if let Some(r) = &current {
        record_in(&mut tx, r, &effects).await?;
    }
    tx.set_desired(&changes).await?;
    tx.commit().await?;
    // Check-ins held on this replica for these devices are answered now.
    state
        .waits
        .wake_devices(changes.iter().map(|(id, _)| id.clone()));
    if stop_set {
        state.waits.wake_all();
    }
    if let Some(r) = &current {
        log_effects(r, &effects);
    }
    if let (Some(stop), true) = (&new_stop, stop_set) {
        tracing::error!(actor = %stop.actor, reason = %stop.reason, rollback = stop.rollback, "EMERGENCY STOP set: every check-in answers hold");
    }
    Ok(())
}

/// The reconciler loop: every `reconcile_interval`, or sooner when woken. Each pass's time
/// goes to `/metrics` (`fleet_engine_pass_seconds`); one longer than the interval is logged.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    loop {
        let started = std::time::Instant::now();
        let result = reconcile_once(&state).await;
        if state.is_leader() {
            let took = started.elapsed();
            let slow = took > state.cfg.reconcile_interval;
            state.metrics.observe_pass(took.as_secs_f64(), slow);
            if slow {
                tracing::warn!(
                    took_ms = took.as_millis() as u64,
                    interval_ms = state.cfg.reconcile_interval.as_millis() as u64,
                    "a rollout pass took longer than reconcile_interval"
                );
            }
        }
        if let Err(e) = result {
            tracing::error!(error = %e, "reconcile pass failed; trying again");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = state.reconcile.notified() => {}
            _ = tokio::time::sleep(state.cfg.reconcile_interval) => {}
        }
    }
}
