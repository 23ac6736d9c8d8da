//! The fleet as the dashboard's open pages see it ([`Snapshot`]) and the [`Hub`] that hands
//! the newest one to every event stream. Pure data and pure functions: computing it from the
//! store is the service's job ((`service::live`)), rendering it the dashboard's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::db::{DeviceRow, DeviceState, EmergencyStop, RolloutRow};
use crate::rollout::Rollout;
use crate::summary::FleetSummary;

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

impl Hub {
    /// Whether any event stream is open.
    pub fn watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Forgets the snapshot, so a stream opened later never starts from an old one.
    pub fn forget(&self) {
        self.tx.send_if_modified(|cur| cur.take().is_some());
    }

    /// Hands `s` to every stream, unless it is the one they have.
    pub fn publish(&self, s: Snapshot) {
        self.tx.send_if_modified(|cur| {
            if cur.as_deref() == Some(&s) {
                false
            } else {
                *cur = Some(Arc::new(s));
                true
            }
        });
    }

    /// A new stream's view of the snapshots.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.tx.subscribe()
    }

    /// Cancelled when the controller shuts down: every stream ends.
    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    /// Ends every open stream.
    pub fn close(&self) {
        self.closing.cancel();
    }
}

/// Each device's state at `now_ms`.
pub fn states_of(
    devices: &[DeviceRow],
    now_ms: i64,
    offline_after_ms: i64,
) -> HashMap<String, DeviceState> {
    devices
        .iter()
        .map(|d| (d.id.clone(), d.state(now_ms, offline_after_ms)))
        .collect()
}

/// The newest of the active rollouts (`rows` oldest first, as the store lists them), read.
pub fn newest_rollout(rows: &[RolloutRow]) -> Option<Rollout> {
    rows.last()
        .and_then(|r| crate::rollout::stored::decode(r.data.clone()).ok())
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
