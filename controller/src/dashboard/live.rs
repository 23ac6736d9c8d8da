//! Live updates by server-sent events: each open page gets `summary` events (counts, health,
//! wave progress, the stop) and `devices` events (the devices whose state changed since its
//! last event), from the snapshot the service keeps fresh ([`crate::service::live`]).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::session;
use crate::db::DeviceState;
use crate::service::AppState;
use crate::snapshot::Snapshot;

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
    let mut rx = state.live.subscribe();
    rx.mark_changed();
    let start = Sent {
        rx,
        closing: state.live.closing(),
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
