//! Live updates by server-sent events. One task computes a snapshot of the fleet every second
//! while somebody watches; each open page gets `summary` events (counts, health, wave progress,
//! the stop) and `devices` events (the devices whose state changed since its last event).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::session;
use crate::api::AppState;
use crate::db::{now_ms, DbError, DeviceState, EmergencyStop};
use crate::rollout::Rollout;
use crate::summary::{summarize, FleetSummary};

/// How often the snapshot is recomputed while pages are open.
pub const TICK: Duration = Duration::from_secs(1);

/// The fleet as the open pages show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// `data-live` key → text (see [`live_values`]).
    pub live: BTreeMap<String, String>,
    /// The stop, while it holds.
    pub stop: Option<EmergencyStop>,
    /// Device id → state.
    #[serde(skip)]
    pub devices: HashMap<String, DeviceState>,
}

/// Shared by the snapshot task and the event streams.
pub struct Hub {
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    closing: CancellationToken,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            tx: watch::channel(None).0,
            closing: CancellationToken::new(),
        }
    }
}

/// The per-wave counts a page shows: pending, updating, healthy, failed.
pub fn wave_counts(r: &Rollout, wave: usize, states: &HashMap<String, DeviceState>) -> [usize; 4] {
    let (pending, healthy, failed, _deferred) = r.wave_counts(wave);
    let updating = r
        .devices
        .iter()
        .filter(|(id, rec)| {
            rec.wave == wave
                && matches!(
                    rec.outcome,
                    crate::rollout::Outcome::Pending | crate::rollout::Outcome::Waiting
                )
                && states.get(*id) == Some(&DeviceState::Updating)
        })
        .count();
    [pending - updating, updating, healthy, failed]
}

/// The texts behind the pages' `data-live` attributes.
pub fn live_values(
    summary: &FleetSummary,
    rollout: Option<&Rollout>,
    states: &HashMap<String, DeviceState>,
) -> BTreeMap<String, String> {
    let mut live = BTreeMap::new();
    live.insert("total".into(), summary.total.to_string());
    live.insert("health".into(), format!("{:.1} %", summary.healthy_percent));
    for s in DeviceState::ALL {
        live.insert(
            format!("count-{}", s.as_str()),
            summary.count(s).to_string(),
        );
    }
    if let Some(r) = rollout {
        live.insert(format!("rollout-{}-state", r.id), r.state.name().to_owned());
        for i in 0..r.waves.len() {
            let c = wave_counts(r, i, states);
            for (name, n) in ["pending", "updating", "healthy", "failed"].iter().zip(c) {
                live.insert(format!("rollout-{}-wave-{i}-{name}", r.id), n.to_string());
            }
        }
    }
    live
}

async fn snapshot(state: &AppState) -> Result<Snapshot, DbError> {
    let now = now_ms();
    let rows = state.db.devices().await?;
    let off = state.offline_after_ms();
    let summary = summarize(&rows, now, off);
    let devices = super::model::states_of(&rows, now, off);
    let rollout = super::model::newest_rollout(&state.db.active_rollouts().await?);
    Ok(Snapshot {
        live: live_values(&summary, rollout.as_ref(), &devices),
        stop: state.db.emergency_stop().await?,
        devices,
    })
}

/// Recomputes the snapshot now if somebody watches (after a stop, a resume or a rollout
/// action, so the next page never starts from the state before it); forgets it otherwise, so
/// a page opened later never starts from an old one.
pub async fn refresh(state: &AppState) {
    if state.live.tx.receiver_count() == 0 {
        state.live.tx.send_if_modified(|cur| cur.take().is_some());
        return;
    }
    match snapshot(state).await {
        Ok(s) => {
            state.live.tx.send_if_modified(|cur| {
                if cur.as_deref() == Some(&s) {
                    false
                } else {
                    *cur = Some(Arc::new(s));
                    true
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "dashboard: cannot read the fleet"),
    }
}

/// The snapshot task: runs until `shutdown`, then ends every open event stream. Also prunes
/// old telemetry samples once an hour.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune = 0i64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        refresh(&state).await;
        let now = now_ms();
        if now - last_prune > 3_600_000 {
            last_prune = now;
            if let Err(e) = state.db.prune_telemetry(now).await {
                tracing::warn!(error = %e, "cannot prune old telemetry samples");
            }
        }
    }
    state.live.closing.cancel();
}

/// What one stream last sent.
struct Sent {
    rx: watch::Receiver<Option<Arc<Snapshot>>>,
    closing: CancellationToken,
    devices: Option<HashMap<String, DeviceState>>,
}

fn events_for(snap: &Snapshot, sent: &mut Option<HashMap<String, DeviceState>>) -> Vec<Event> {
    let mut out = Vec::new();
    if let Ok(data) = serde_json::to_string(snap) {
        out.push(Event::default().event("summary").data(data));
    }
    let changed: BTreeMap<&str, &str> = snap
        .devices
        .iter()
        .filter(|(id, s)| sent.as_ref().is_none_or(|old| old.get(*id) != Some(s)))
        .map(|(id, s)| (id.as_str(), s.as_str()))
        .collect();
    if !changed.is_empty() {
        if let Ok(data) = serde_json::to_string(&changed) {
            out.push(Event::default().event("devices").data(data));
        }
    }
    *sent = Some(snap.devices.clone());
    out
}

/// `GET /ui/events`: the event stream of a logged-in page.
pub async fn events(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match session::current(&state, &headers).await {
        Ok(Some(_)) => {}
        Ok(None) => return (StatusCode::UNAUTHORIZED, "log in first\n").into_response(),
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
    let mut rx = state.live.tx.subscribe();
    rx.mark_changed();
    let start = Sent {
        rx,
        closing: state.live.closing.clone(),
        devices: None,
    };
    let stream = futures_util::stream::unfold(start, |mut s| async move {
        tokio::select! {
            _ = s.closing.cancelled() => return None,
            r = s.rx.changed() => if r.is_err() { return None },
        }
        let snap = s.rx.borrow_and_update().clone();
        let events = match snap {
            Some(snap) => events_for(&snap, &mut s.devices),
            None => Vec::new(),
        };
        Some((futures_util::stream::iter(events), s))
    })
    .flatten()
    .map(Ok::<_, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_events_carry_only_changes() {
        let mut snap = Snapshot {
            live: BTreeMap::new(),
            stop: None,
            devices: [
                ("a".to_owned(), DeviceState::Online),
                ("b".to_owned(), DeviceState::Online),
            ]
            .into_iter()
            .collect(),
        };
        let mut sent = None;
        assert_eq!(
            events_for(&snap, &mut sent).len(),
            2,
            "first: summary and all devices"
        );
        assert_eq!(
            events_for(&snap, &mut sent).len(),
            1,
            "no change: summary only"
        );
        snap.devices.insert("b".into(), DeviceState::Updating);
        let ev = events_for(&snap, &mut sent);
        assert_eq!(ev.len(), 2);
        assert_eq!(
            sent.as_ref().and_then(|m| m.get("b")),
            Some(&DeviceState::Updating)
        );
    }
}
