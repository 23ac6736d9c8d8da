//! The rollout driver: runs the pure engine ([`crate::rollout`]) over the store. The leader
//! calls [`reconcile_once`] every `reconcile_interval` and after each check-in that changes what
//! it sees of a device (release, phase, health, back online): it steps the current rollout,
//! writes it back, applies the fleet-wide gate and sets every device's desired release. Everything it needs is read from the store each time, so a restarted controller
//! (or a new leader) goes on where the last one was.

use std::collections::HashMap;

use fleet_config::protocol::ReleaseId;
use fleet_config::{FleetRepo, TreeDigest};
use tokio_util::sync::CancellationToken;

use crate::db::{now_ms, DbError, DeviceRow, EmergencyStop, RepoPin, RolloutRow};
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
}

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
/// gate: the policy's `health_timeout`, plus the offline threshold it takes to be seen silent.
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

async fn save(state: &AppState, r: &Rollout) -> Result<(), EngineError> {
    let data = serde_json::to_string(r).map_err(|e| EngineError::Corrupt {
        id: r.id.clone(),
        reason: e.to_string(),
    })?;
    state
        .db
        .save_rollout(
            &r.id,
            &r.release,
            r.state.name(),
            r.state.is_active(),
            &data,
        )
        .await?;
    Ok(())
}

async fn record(state: &AppState, r: &Rollout, effects: &[Effect]) -> Result<(), EngineError> {
    for e in effects {
        let action = match e {
            Effect::WaveStarted { .. } => "rollout.wave_started",
            Effect::WaveWaiting { .. } => "rollout.wave_waiting",
            Effect::DeviceFailed { .. } => "rollout.device_failed",
            Effect::WaveHealthy { .. } => "rollout.wave_healthy",
            Effect::Halted { .. } => "rollout.halted",
            Effect::Completed => "rollout.completed",
            Effect::EmergencyStop { .. } => "rollout.fleet_unhealthy",
        };
        match e {
            Effect::Halted { .. } | Effect::EmergencyStop { .. } => {
                tracing::error!(rollout = %r.id, "{e}")
            }
            Effect::DeviceFailed { .. } | Effect::WaveWaiting { .. } => {
                tracing::warn!(rollout = %r.id, "{e}")
            }
            _ => tracing::info!(rollout = %r.id, "{e}"),
        }
        let detail = serde_json::to_string(e).unwrap_or_default();
        state
            .db
            .audit("controller", action, &r.id, &e.to_string(), &detail)
            .await?;
    }
    Ok(())
}

/// A new valid release: the inventory follows its devices.yaml, an active rollout is
/// superseded, and a rollout of it starts from the canaries. Every failure is returned (the
/// watcher records the release only after this succeeded, and retries otherwise).
pub async fn new_release(
    state: &AppState,
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
    for (device, pin) in state.db.sync_inventory(&inventory, &pins).await? {
        let (action, detail) = match &pin {
            Some(r) => (
                "device.pin",
                format!("pinned to {r} by devices.yaml of {release}"),
            ),
            None => (
                "device.unpin",
                format!("pin lifted: not in devices.yaml of {release}"),
            ),
        };
        tracing::info!(%device, "{detail}");
        state
            .db
            .audit(
                "devices.yaml",
                action,
                &device,
                &detail,
                pin.as_deref().unwrap_or(""),
            )
            .await?;
    }
    start_rollout(
        state,
        release,
        &digest.to_string(),
        Policy::from(&repo.fleet.rollout),
    )
    .await
}

/// Supersedes what is active and starts a rollout of `release`.
pub async fn start_rollout(
    state: &AppState,
    release: &ReleaseId,
    digest: &str,
    policy: Policy,
) -> Result<(), EngineError> {
    let id = format!("r-{}", release.short());
    for row in state.db.active_rollouts().await? {
        // The same release again (its rollout was created, then the release's recording
        // failed): it is replaced below, not superseded by itself.
        if row.id == id {
            continue;
        }
        let Some(mut old) = parse_or_quarantine(state, &row).await? else {
            continue;
        };
        old.supersede(&id);
        save(state, &old).await?;
        state
            .db
            .audit(
                "controller",
                "rollout.superseded",
                &old.id,
                &format!("superseded by {id}"),
                "",
            )
            .await?;
    }
    let now = now_ms();
    let devices = state.db.devices().await?;
    let views = fleet_views(state, &devices, now, silence_window(&policy));
    let (r, effects) = Rollout::start(&id, release, digest, &views, policy, now.max(0) as u64);
    save(state, &r).await?;
    state
        .db
        .audit(
            "controller",
            "rollout.created",
            &id,
            "",
            &format!("release {release}, {} waves", r.waves.len()),
        )
        .await?;
    record(state, &r, &effects).await?;
    reconcile_once(state).await
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
/// back (the one kind of move a check-in allows while the stop holds).
pub async fn emergency_stop(state: &AppState, stop: &EmergencyStop) -> Result<bool, DbError> {
    let new = set_stop(state, stop).await?;
    if stop.rollback {
        for row in state.db.active_rollouts().await? {
            if let Ok(mut r) = parse(&row) {
                if r.abort(&format!("emergency stop with rollback: {}", stop.reason))
                    .is_ok()
                {
                    if let Err(e) = save(state, &r).await {
                        tracing::error!(error = %e, "cannot save the aborted rollout");
                    }
                    state
                        .db
                        .audit(
                            &stop.actor,
                            "rollout.abort",
                            &r.id,
                            &stop.reason,
                            "emergency stop",
                        )
                        .await?;
                }
            }
        }
        if let Err(e) = reconcile_once(state).await {
            tracing::error!(error = %e, "cannot send the rollout's devices back");
        }
    }
    Ok(new)
}

/// An operator's action on a rollout (`active` names the current one). Returns it after.
pub async fn act(
    state: &AppState,
    id: &str,
    action: &str,
    actor: &str,
    reason: &str,
) -> Result<Rollout, EngineError> {
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
    let now = now.max(0) as u64;
    let effects = match action {
        "pause" => r.pause(now).map(|_| Vec::new())?,
        "resume" => r.resume(&views, now)?,
        "abort" => r.abort(reason).map(|_| Vec::new())?,
        "promote" => r.promote(&views, now)?,
        _ => return Err(EngineError::NotFound(format!("{id}/{action}"))),
    };
    save(state, &r).await?;
    state
        .db
        .audit(actor, &format!("rollout.{action}"), &r.id, reason, "")
        .await?;
    record(state, &r, &effects).await?;
    reconcile_once(state).await?;
    Ok(r)
}

/// The fleet-wide gate: above `fleet_unhealthy_stop`, set the emergency stop (once). After an
/// operator clears a stop the gate set, it is disarmed until the fleet is back under half the
/// limit, so the operator can send a fix while the fleet is still unhealthy.
async fn fleet_gate(
    state: &AppState,
    policy: &Policy,
    views: &[DeviceView],
    stop: Option<&EmergencyStop>,
    now: i64,
) -> Result<Option<Effect>, EngineError> {
    let verdict = crate::rollout::machine::fleet_unhealthy(policy, views);
    let disarmed = state.db.fleet_gate_disarmed().await?;
    let recovered = crate::rollout::machine::fleet_recovered(policy, views);
    match verdict {
        Some(reason) if stop.is_none() && !disarmed => {
            let stop = EmergencyStop {
                actor: "controller".into(),
                reason: reason.clone(),
                at_ms: now,
                rollback: false,
            };
            set_stop(state, &stop).await?;
            Ok(Some(Effect::EmergencyStop { reason }))
        }
        None if disarmed && recovered => {
            state.db.set_fleet_gate_disarmed(false).await?;
            tracing::info!("the fleet is back under half its unhealthy limit; the fleet-wide gate is armed again");
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// One pass (leader only): step the current rollout, apply the fleet-wide gate, set desired
/// releases.
pub async fn reconcile_once(state: &AppState) -> Result<(), EngineError> {
    if !state.is_leader() {
        return Ok(());
    }
    let now = now_ms();
    let stop = state.db.emergency_stop().await?;
    let rows = state.db.rollouts(200).await?;
    let mut current: Option<Rollout> = None;
    let mut last_completed: Option<(String, String)> = None;
    for row in &rows {
        if current.is_none() && !matches!(row.state.as_str(), "superseded" | "quarantined") {
            current = parse_or_quarantine(state, row).await?;
        }
        if last_completed.is_none() && row.state == "completed" {
            last_completed = Some((row.id.clone(), row.release.clone()));
        }
    }
    let window = current.as_ref().map_or(0, |r| silence_window(&r.policy));
    let devices = state.db.devices().await?;
    let views = fleet_views(state, &devices, now, window);
    if let Some(r) = current.as_mut() {
        let mut effects = Vec::new();
        let changed = if matches!(r.state, State::Running { .. }) {
            let before = (r.state.clone(), r.devices.clone());
            let stop_since = stop.as_ref().map(|s| u64::try_from(s.at_ms).unwrap_or(0));
            effects = r.step(&views, stop_since, now.max(0) as u64);
            before != (r.state.clone(), r.devices.clone())
        } else {
            false
        };
        // The fleet-wide gate holds whatever the rollout is doing: a release that completed
        // its rollout and then takes devices down trips it too.
        if let Some(e) = fleet_gate(state, &r.policy, &views, stop.as_ref(), now).await? {
            effects.push(e);
        }
        if changed {
            save(state, r).await?;
        }
        record(state, r, &effects).await?;
        if matches!(r.state, State::Completed { .. }) {
            last_completed = Some((r.id.clone(), r.release.clone()));
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
    state.db.set_desired(&changes).await?;
    Ok(())
}

/// The reconciler loop: every `reconcile_interval`, or sooner when woken.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    loop {
        if let Err(e) = reconcile_once(&state).await {
            tracing::error!(error = %e, "reconcile pass failed; trying again");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = state.reconcile.notified() => {}
            _ = tokio::time::sleep(state.cfg.reconcile_interval) => {}
        }
    }
}
