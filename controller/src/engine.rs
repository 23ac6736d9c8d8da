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

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_config::protocol::ReleaseId;
use fleet_config::{FleetRepo, TreeDigest};
use tokio_util::sync::CancellationToken;

use crate::db::{
    now_ms, DbError, DeviceRow, EmergencyStop, Fence, Fenced, RepoPin, RolloutRow, RolloutWrite,
};
use crate::rollout::{
    desired_for, stored, DeviceRecord, DeviceView, Effect, Fallback, OpError, Policy, Rollout,
    State, Target,
};

use crate::fleet_cache::{release_index, view, CachedRollout, FleetCache};
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

/// Devices rollouts are about: enrolled, not revoked, listed in devices.yaml.
fn fleet_views<'a>(
    state: &AppState,
    devices: impl IntoIterator<Item = &'a DeviceRow>,
    now: i64,
    silence_window_ms: i64,
) -> Vec<DeviceView> {
    devices
        .into_iter()
        .filter(|d| crate::fleet_cache::in_fleet(d))
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
    stored::decode(row.data.clone()).map_err(|e| EngineError::Corrupt {
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

fn corrupt(r: &Rollout) -> impl FnOnce(serde_json::Error) -> EngineError + '_ {
    move |e| EngineError::Corrupt {
        id: r.id.clone(),
        reason: e.to_string(),
    }
}

/// A rollout's write: its text if it differs from `data_before`, and the records that differ
/// from `before` (`None`: a new rollout, whose waiting devices need no row).
struct Encoded {
    data: String,
    data_changed: bool,
    records: Vec<(String, String)>,
}

fn encode(
    r: &Rollout,
    data_before: Option<&str>,
    before: Option<&BTreeMap<String, DeviceRecord>>,
) -> Result<Encoded, EngineError> {
    let data = stored::encode_data(r).map_err(corrupt(r))?;
    let records = match before {
        Some(b) => stored::changed_records(r, b),
        None => stored::changed_records(r, &waiting_records(r)),
    }
    .map_err(corrupt(r))?;
    Ok(Encoded {
        data_changed: data_before != Some(data.as_str()),
        data,
        records,
    })
}

/// The records a new rollout starts from: every device waiting for its wave.
fn waiting_records(r: &Rollout) -> BTreeMap<String, DeviceRecord> {
    r.devices
        .iter()
        .map(|(id, rec)| (id.clone(), DeviceRecord::waiting(rec.wave)))
        .collect()
}

fn write_of<'a>(r: &'a Rollout, e: &'a Encoded) -> RolloutWrite<'a> {
    RolloutWrite {
        id: &r.id,
        release: &r.release,
        state: r.state.name(),
        active: r.state.is_active(),
        data: e.data_changed.then_some(e.data.as_str()),
        records: &e.records,
    }
}

/// A rollout as read, with what a write of it is compared with.
fn cached(r: Rollout, version: i64) -> Result<CachedRollout, EngineError> {
    let data = stored::encode_data(&r).map_err(corrupt(&r))?;
    Ok(CachedRollout {
        version,
        stored: r.devices.clone(),
        rollout: r,
        data,
    })
}

/// The leader writes `c.rollout`, read at `c.version`, back (compare-and-swap, in its fenced
/// transaction): its text if it changed and the records that changed; returns the new version.
async fn save(tx: &mut Fenced, c: &CachedRollout, r: &Rollout) -> Result<i64, EngineError> {
    let e = encode(r, Some(&c.data), Some(&c.stored))?;
    Ok(tx.update_rollout(&write_of(r, &e), c.version).await?)
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
    // The alert engine's thresholds (fleet.yaml `alerts:`) come with the release.
    tx.set_fleet_alert_settings(&crate::alerts::facts::FleetSettings::of(repo))
        .await?;
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
            readable.push(cached(r, row.version)?);
        }
    }
    let mut tx = state.db.fenced(fence).await?;
    let mut superseded = Vec::new();
    for c in readable {
        let mut old = c.rollout.clone();
        old.supersede(id);
        save(&mut tx, &c, &old).await?;
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
    let mut e = encode(&r, None, None)?;
    e.data_changed = true;
    match tx.insert_rollout(&write_of(&r, &e)).await {
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
        let before = cached(parse(&row)?, row.version)?;
        let mut r = before.rollout.clone();
        let now = now_ms();
        let devices = state.db.devices().await?;
        let views = fleet_views(state, &devices, now, silence_window(&r.policy));
        let effects = f(&mut r, &views, now.max(0) as u64)?;
        let e = encode(&r, Some(&before.data), Some(&before.stored))?;
        match state
            .db
            .update_rollout(&write_of(&r, &e), row.version, state.leadership.replica())
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
    let (bad, all) = crate::rollout::machine::fleet_health(views);
    let ratio = if all == 0 {
        0.0
    } else {
        bad as f64 / all as f64
    };
    state
        .metrics
        .set_unhealthy(ratio, f64::from(policy.fleet_unhealthy_stop_bp) / 10_000.0);
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

/// Desired releases written per transaction: a pass that moves a wave of 25,000 devices
/// holds SQLite's writer for one batch at a time, and check-ins go in between.
const DESIRED_PER_TX: usize = 1_000;

async fn pass(state: &AppState, fence: &Fence) -> Result<(), EngineError> {
    let mut cache = state.fleet_cache.lock().await;
    cache.for_epoch(fence.epoch());
    let result = pass_with(state, fence, &mut cache).await;
    if result.is_err() {
        // What failed may have left the copy ahead of the store: read it all again.
        cache.forget();
    }
    result
}

/// The current rollout: the cached one while the store holds the version this replica read
/// or wrote, else read again (an unreadable one is quarantined and the next one taken).
async fn current_rollout(
    state: &AppState,
    cache: &mut FleetCache,
) -> Result<(Option<CachedRollout>, Option<(String, String)>), EngineError> {
    for _ in 0..ATTEMPTS {
        let (head, completed) = state.db.rollout_heads().await?;
        let Some((id, version)) = head else {
            return Ok((None, completed));
        };
        if let Some((cid, c)) = cache.rollout.take() {
            if cid == id && c.version == version {
                return Ok((Some(c), completed));
            }
        }
        let Some(row) = state.db.rollout(&id).await? else {
            continue;
        };
        if let Some(r) = parse_or_quarantine(state, &row).await? {
            return Ok((Some(cached(r, row.version)?), completed));
        }
    }
    Ok((None, None))
}

/// How long a pass may go on writing desired releases after its first batch: half the
/// interval, so no pass outlasts `reconcile_interval` however large the wave it starts.
fn budget(state: &AppState) -> Duration {
    state.cfg.reconcile_interval / 2
}

async fn pass_with(
    state: &AppState,
    fence: &Fence,
    cache: &mut FleetCache,
) -> Result<(), EngineError> {
    let started = std::time::Instant::now();
    let now = now_ms();
    let stop = state.db.emergency_stop().await?;
    let (mut current, mut last_completed) = current_rollout(state, cache).await?;
    let window = current
        .as_ref()
        .map_or(0, |c| silence_window(&c.rollout.policy));
    cache.refresh_devices(&state.db, now).await?;
    let releases = cache.releases(&state.db).await?;
    cache.prepare_views(now, state.offline_after_ms(), window);
    let views = cache.views();
    // What the pass writes: the rollout's change and effects with the first batch of desired
    // releases, in one fenced transaction; the other batches after it.
    let mut effects = Vec::new();
    let mut new_stop: Option<EmergencyStop> = None;
    let mut write: Option<Encoded> = None;
    if let Some(c) = current.as_mut() {
        let r = &mut c.rollout;
        if matches!(r.state, State::Running { .. }) {
            let stop_since = stop.as_ref().map(|s| u64::try_from(s.at_ms).unwrap_or(0));
            effects = r.step(views, stop_since, now.max(0) as u64);
            if matches!(r.state, State::Completed { .. }) {
                last_completed = Some((r.id.clone(), r.release.clone()));
            }
        }
        // The fleet-wide gate holds whatever the rollout is doing: a release that completed
        // its rollout and then takes devices down trips it too.
        if let Some(reason) = fleet_gate(state, &r.policy, views, stop.as_ref()).await? {
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
        let e = encode(&c.rollout, Some(&c.data), Some(&c.stored))?;
        if e.data_changed || !e.records.is_empty() {
            write = Some(e);
        }
    }
    // Release digests and their order, for targets and late joiners.
    let (digests, seen) = release_index(&releases);
    let lc_release = last_completed.as_ref().map(|(_, rel)| rel.as_str());
    let lc_seen = lc_release
        .and_then(|r| seen.get(r).copied())
        .unwrap_or(i64::MIN);
    let is_newer = |r: &str| seen.get(r).is_some_and(|s| *s > lc_seen);
    let fallback = Fallback {
        last_completed: lc_release,
        is_newer: &is_newer,
    };
    let rollout = current.as_ref().map(|c| &c.rollout);
    let mut changes = Vec::new();
    for (d, v) in cache.devices_with_views() {
        let target = match v {
            Some(v) => desired_for(
                v,
                d.pinned_release.as_ref().map(ReleaseId::as_str),
                rollout,
                &fallback,
            ),
            None => Target::Hold,
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
    if write.is_none() && effects.is_empty() && new_stop.is_none() && changes.is_empty() {
        cache.rollout = current.map(|c| (c.rollout.id.clone(), c));
        return Ok(());
    }
    let mut batches = changes.chunks(DESIRED_PER_TX);
    let first = batches.next().unwrap_or(&[]);
    let mut tx = state.db.fenced(fence).await?;
    let mut version = None;
    if let Some(c) = &current {
        version = Some(match &write {
            Some(e) => {
                tx.update_rollout(&write_of(&c.rollout, e), c.version)
                    .await?
            }
            // The desired releases follow this version of the rollout: still the stored one.
            None => {
                tx.rollout_unchanged(&c.rollout.id, c.version).await?;
                c.version
            }
        });
    }
    let mut stop_set = false;
    if let Some(stop) = &new_stop {
        stop_set = tx.set_emergency_stop(stop).await?;
        if stop_set {
            tx.audit(&stop.actor, "emergency_stop", "fleet", &stop.reason, "")
                .await?;
        }
    }
    if let Some(c) = &current {
        record_in(&mut tx, &c.rollout, &effects).await?;
    }
    tx.set_desired(first).await?;
    tx.commit().await?;
    if let (Some(c), Some(v)) = (current.as_mut(), version) {
        if write.is_some() {
            c.stored = c.rollout.devices.clone();
            c.data = stored::encode_data(&c.rollout).map_err(corrupt(&c.rollout))?;
        }
        c.version = v;
    }
    written(state, cache, first, now);
    let mut written_so_far = first.len();
    if stop_set {
        state.waits.wake_all();
    }
    if let Some(c) = &current {
        log_effects(&c.rollout, &effects);
    }
    if let (Some(stop), true) = (&new_stop, stop_set) {
        tracing::error!(actor = %stop.actor, reason = %stop.reason, rollback = stop.rollback, "EMERGENCY STOP set: every check-in answers hold");
    }
    // The other batches, each checked against the version the first one wrote, while the
    // pass is within its budget; what is left is the next pass's (woken at once: its changes
    // are worked out again from the copy, which follows every batch written).
    for batch in batches {
        if started.elapsed() >= budget(state) {
            tracing::debug!(
                left = changes.len() - written_so_far,
                "desired releases left for the next pass (this one used its budget)"
            );
            state.metrics.pass_deferred();
            state.reconcile.notify_one();
            break;
        }
        written_so_far += batch.len();
        let mut tx = state.db.fenced(fence).await?;
        if let (Some(c), Some(v)) = (&current, version) {
            tx.rollout_unchanged(&c.rollout.id, v).await?;
        }
        tx.set_desired(batch).await?;
        tx.commit().await?;
        written(state, cache, batch, now);
    }
    cache.rollout = current.map(|c| (c.rollout.id.clone(), c));
    Ok(())
}

/// After desired releases were stored: the copy follows, and check-ins held on this replica
/// for those devices are answered now.
fn written(
    state: &AppState,
    cache: &mut FleetCache,
    changes: &[(String, Option<(String, String)>)],
    now: i64,
) {
    for (id, target) in changes {
        cache.desired_written(id, target.as_ref(), now);
    }
    state
        .waits
        .wake_devices(changes.iter().map(|(id, _)| id.clone()));
}

/// The shortest time between passes woken by check-ins.
const MIN_GAP: Duration = Duration::from_millis(200);

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
            _ = state.reconcile.notified() => {
                // Woken by check-ins: at most one pass per MIN_GAP however many arrive (during
                // a rollout nearly every one changes what the engine sees).
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(MIN_GAP.min(state.cfg.reconcile_interval)) => {}
                }
            }
            _ = tokio::time::sleep(state.cfg.reconcile_interval) => {}
        }
    }
}
