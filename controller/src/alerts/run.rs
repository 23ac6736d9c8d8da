//! The alert engine's loop on the leader: every `evaluate_every` it gathers what the
//! controller knows ([`facts::Observation`]), runs the pure engine, and stores the changed
//! alerts with the messages they make in one transaction fenced by the lease (so a replica that
//! lost the lead writes nothing, and a new leader goes on from what was stored), then wakes the
//! delivery worker and sends the heartbeat. Followers only show the leader's last pass in
//! their metrics.

use std::collections::BTreeMap;

use fleet_config::alerts::AlertName;
use tokio_util::sync::CancellationToken;

use super::engine::{evaluate, Outgoing};
use super::facts::{facts, FleetSettings, Observation};
use super::model::Alert;
use super::text;
use crate::db::{now_ms, DbError, Fence, NewMessage};
use crate::state::AppState;

/// The open alerts this replica keeps between passes, for one leadership.
#[derive(Debug, Default)]
pub struct Book {
    epoch: Option<i64>,
    open: BTreeMap<AlertName, Alert>,
}

/// Runs passes while this replica leads, until `shutdown`.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let every = state.alerting.settings.evaluate_every;
    let mut book = Book::default();
    loop {
        match state.leadership.fence() {
            Some(fence) => {
                if let Err(e) = pass(&state, &fence, &mut book).await {
                    if matches!(e, DbError::Fenced { .. }) {
                        state.leadership.fenced_out(&fence);
                    }
                    // Read again from the store next time: what failed may not be stored.
                    book = Book::default();
                    tracing::warn!(error = %e, "alert evaluation failed; tried again at the next pass");
                }
            }
            None => {
                book = Book::default();
                match state.db.alerts_evaluated_ms().await {
                    Ok(Some(at)) => state.metrics.set_alert_last_evaluation(at),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot read the alert engine's last pass")
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One pass under `fence`.
pub async fn pass(state: &AppState, fence: &Fence, book: &mut Book) -> Result<(), DbError> {
    if book.epoch != Some(fence.epoch()) {
        let now = now_ms();
        book.open = state
            .db
            .open_alerts()
            .await?
            .into_iter()
            .map(|r| (r.alert.name, super::engine::reloaded(r.alert, now)))
            .collect();
        book.epoch = Some(fence.epoch());
    }
    // Acknowledgements are taken by any replica: read them each pass.
    let acks: BTreeMap<String, crate::alerts::model::Ack> =
        state.db.open_alert_acks().await?.into_iter().collect();
    for a in book.open.values_mut() {
        a.ack = acks.get(&a.id).cloned();
    }
    let settings = state.db.fleet_alert_settings().await?;
    let problems = state.db.device_problems().await?;
    let halted = halted_rollouts(state).await?;
    let newest = state.db.releases(1).await?;
    let rejected = newest
        .first()
        .filter(|r| r.status == "rejected")
        .map(|r| (r.sha.clone(), r.errors.clone()));
    let git_failing: Vec<(String, u32, String)> = state
        .git_health
        .failing(settings.git_fetch_failures)
        .into_iter()
        .map(|(e, h)| (e, h.streak, h.last_error.unwrap_or_default()))
        .collect();
    let notifiers_failing = state.alerting.delivery.failing();
    let heartbeat = state.alerting.heartbeat.failing();
    let silences = state.db.active_silences(now_ms()).await?;
    let now = now_ms();
    let found = {
        let cache = state.fleet_cache.lock().await;
        if !cache.ready_for(fence.epoch()) {
            // The rollout engine has not read the fleet under this lead yet: without the
            // devices every device alert would look cleared. Wait for its first pass.
            return Ok(());
        }
        let fleet_failing = fleet_failing(cache.views(), &settings);
        facts(&Observation {
            now_ms: now,
            settings: &settings,
            devices: cache.devices().collect(),
            problems: &problems,
            halted: &halted,
            rejected: rejected.as_ref().map(|(s, e)| (s.as_str(), e.as_str())),
            git_failing: &git_failing,
            fleet_failing: fleet_failing.as_deref(),
            notifiers_failing: &notifiers_failing,
            heartbeat: heartbeat.as_ref(),
        })
    };
    let outcome = evaluate(
        &mut book.open,
        &found,
        &silences,
        &state.alerting.settings.timing,
        now,
    );
    let links = &state.alerting.settings.links;
    let summaries: Vec<(String, String)> = outcome
        .changed
        .iter()
        .map(|a| (a.id.clone(), summary_of(a, &settings)))
        .collect();
    let mut bodies = Vec::new();
    for o in &outcome.messages {
        let message = text::message(o, &settings, links);
        let body = serde_json::to_string(&message).map_err(|e| DbError::Corrupt {
            what: "alert message",
            detail: e.to_string(),
        })?;
        for notifier in targets(state, o) {
            bodies.push((o, notifier, body.clone()));
        }
    }
    let message_ids: Vec<String> = bodies.iter().map(|(o, _, _)| o.message_id()).collect();
    let rows: Vec<NewMessage<'_>> = bodies
        .iter()
        .zip(&message_ids)
        .map(|((o, notifier, body), id)| NewMessage {
            message_id: id,
            alert_id: &o.alert.id,
            notifier,
            kind: o.kind.as_str(),
            body,
        })
        .collect();
    let changed: Vec<(&Alert, &str)> = outcome
        .changed
        .iter()
        .zip(&summaries)
        .map(|(a, (_, s))| (a, s.as_str()))
        .collect();
    let mut tx = state.db.fenced(fence).await?;
    tx.save_alerts(&changed, &outcome.dropped, &rows).await?;
    tx.commit().await?;
    for o in &outcome.messages {
        tracing::warn!(alert = %o.alert.name, id = %o.alert.id, kind = o.kind.as_str(), members = o.members.len(), "alert message queued");
    }
    if !rows.is_empty() {
        state.alerting.wake_delivery.notify_one();
    }
    let firing: Vec<(&str, &str, u64)> = book
        .open
        .values()
        .filter(|a| a.phase == super::model::Phase::Firing)
        .map(|a| {
            let devices = if a.name.about_devices() {
                a.firing_members().count() as u64
            } else {
                0
            };
            (a.name.as_str(), a.name.severity().as_str(), devices)
        })
        .collect();
    state.metrics.set_alerts(&firing);
    state.metrics.alert_evaluated(now);
    if let Some(hb) = &state.alerting.settings.heartbeat {
        super::heartbeat::beat(state, hb);
    }
    Ok(())
}

/// The summary an alert shows in lists: of its firing members, else of all.
fn summary_of(a: &Alert, s: &FleetSettings) -> String {
    let firing: Vec<(String, String)> = a
        .firing_members()
        .map(|(m, x)| (m.clone(), x.detail.clone()))
        .collect();
    let members = if firing.is_empty() {
        a.members
            .iter()
            .map(|(m, x)| (m.clone(), x.detail.clone()))
            .collect()
    } else {
        firing
    };
    text::summary(a.name, &members, s)
}

/// The notifiers a message goes to.
fn targets(state: &AppState, o: &Outgoing) -> std::collections::BTreeSet<String> {
    let t = state
        .alerting
        .settings
        .targets(o.alert.name.severity(), o.route);
    if o.alert.name == AlertName::NotifierFailing {
        super::deliver::exclude_subjects(t, &o.members)
    } else {
        t
    }
}

/// Halted rollouts: (id, release, why).
async fn halted_rollouts(state: &AppState) -> Result<Vec<(String, String, String)>, DbError> {
    let rows = state.db.halted_rollouts().await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let why = crate::rollout::stored::decode(r.data.clone())
                .ok()
                .and_then(|ro| match ro.state {
                    crate::rollout::State::Halted { reason, .. } => Some(reason),
                    _ => None,
                })
                .unwrap_or_else(|| "halted".into());
            (r.id, r.release, why)
        })
        .collect())
}

/// The fleet-wide gate's verdict on `views` with the fleet's limit.
fn fleet_failing(views: &[crate::rollout::DeviceView], s: &FleetSettings) -> Option<String> {
    let (bad, all) = crate::rollout::machine::fleet_health(views);
    (all > 0 && (bad as u64) * 10_000 > (all as u64) * u64::from(s.fleet_unhealthy_stop_bp)).then(|| {
        format!(
            "{bad} of {all} devices are unhealthy, degraded, in safe mode or went silent after a release, \
             above the fleet-wide limit of {}%",
            f64::from(s.fleet_unhealthy_stop_bp) / 100.0
        )
    })
}
