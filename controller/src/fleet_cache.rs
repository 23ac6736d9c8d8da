//! The leader's copy of what its passes read: every device row, the releases and the current
//! rollout, kept up to date by reading only what changed since the pass before, so a pass
//! costs what changed (the check-ins of the last second), not the size of the fleet or of its
//! history (issue 14: at 100,000 devices a pass that re-read everything took longer than its
//! interval).
//!
//! - Devices: the rows whose `changed_ms` is at or after the last read less [`OVERLAP_MS`]
//!   (a write stamped just before that read may commit just after it), plus a page of
//!   [`SWEEP`] rows in id order, so every row is read again within `fleet / SWEEP` passes
//!   whatever happens to the clocks of the replicas that stamp them.
//! - Releases: read again when their count or newest time moves (they are only ever added).
//! - The current rollout: kept while its stored version is the one this replica read or
//!   wrote; read again whole when another replica (an operator's action) changed it.
//!
//! The copy belongs to one leadership: a new lease epoch starts it again from the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::db::{Db, DbError, DeviceRow, ReleaseRow};
use crate::rollout::{DeviceRecord, DeviceView, Rollout};

/// Devices rollouts are about: listed in devices.yaml, not revoked.
pub fn in_fleet(d: &DeviceRow) -> bool {
    d.in_inventory && d.revoked_ms.is_none()
}

/// The engine's view of a device. `silence_window_ms`: a device that went silent within this
/// long of being told a new release counts as failed for the fleet-wide gate.
pub fn view(d: &DeviceRow, now: i64, offline_after_ms: i64, silence_window_ms: i64) -> DeviceView {
    let mut v = DeviceView {
        id: d.id.clone(),
        labels: d.labels.clone(),
        online: false,
        silent_after_release: false,
        pinned: d.pinned_release.is_some(),
        current: d.current.clone(),
        phase: d.phase,
        health: d.health,
        last_result: d.last_result.clone(),
        bad_releases: d.bad_releases.clone(),
    };
    set_clock(&mut v, d, now, offline_after_ms, silence_window_ms);
    v
}

/// The parts of a view that move with the time alone.
fn set_clock(
    v: &mut DeviceView,
    d: &DeviceRow,
    now: i64,
    offline_after_ms: i64,
    silence_window_ms: i64,
) {
    v.online = d.online(now, offline_after_ms);
    v.silent_after_release = !v.online
        && d.desired_release.is_some()
        && match (d.desired_since_ms, d.last_seen_ms) {
            // It checked in after being told (so it got the release) and fell silent soon.
            (Some(told), Some(seen)) => seen >= told && seen - told <= silence_window_ms,
            _ => false,
        };
}

/// How far back of the last read a pass looks for changed rows (writes stamp the time they
/// are made, with the write lock held, so a commit lands well within it of its stamp).
pub const OVERLAP_MS: i64 = 1_000;

/// Rows read again in id order at each pass, whether they changed or not.
pub const SWEEP: i64 = 1_000;

/// How many releases there are and the newest's time: they changed if it moved.
type ReleasesPrint = (i64, i64);

/// The current rollout as this replica last read or wrote it.
#[derive(Debug, Clone)]
pub struct CachedRollout {
    /// Its version in the store.
    pub version: i64,
    /// The rollout.
    pub rollout: Rollout,
    /// Its device records as stored (what a write is compared with).
    pub stored: BTreeMap<String, DeviceRecord>,
    /// Its stored text (without the records).
    pub data: String,
}

/// What the leader's passes read, kept between passes.
#[derive(Debug, Default)]
pub struct FleetCache {
    epoch: Option<i64>,
    devices: BTreeMap<String, DeviceRow>,
    /// Start of the last read of changed rows (`None`: read every row next).
    read_ms: Option<i64>,
    sweep_after: Option<String>,
    releases: Option<(ReleasesPrint, Arc<Vec<ReleaseRow>>)>,
    /// The views of the devices in the fleet, by id, and where each is: rebuilt only when a
    /// device joins or leaves the fleet, else updated for the rows that changed.
    views: Vec<DeviceView>,
    view_at: HashMap<String, usize>,
    views_stale: bool,
    /// The rollout the last pass drove, by id.
    pub rollout: Option<(String, CachedRollout)>,
}

impl FleetCache {
    /// Starts again from the store if `epoch` is not the leadership the copy was made under.
    pub fn for_epoch(&mut self, epoch: i64) {
        if self.epoch != Some(epoch) {
            *self = FleetCache {
                epoch: Some(epoch),
                ..FleetCache::default()
            };
        }
    }

    /// Forgets everything: the next pass reads it all again (after a failed write).
    pub fn forget(&mut self) {
        let epoch = self.epoch;
        *self = FleetCache::default();
        self.epoch = epoch;
    }

    /// Brings the device rows up to date at `now`; returns how many rows were read.
    pub async fn refresh_devices(&mut self, db: &Db, now: i64) -> Result<usize, DbError> {
        let Some(since) = self.read_ms else {
            let rows = db.devices().await?;
            let n = rows.len();
            self.devices = rows.into_iter().map(|d| (d.id.clone(), d)).collect();
            self.read_ms = Some(now);
            self.views_stale = true;
            return Ok(n);
        };
        let changed = db.devices_changed_since(since - OVERLAP_MS).await?;
        // Check-ins that changed nothing the engine sees but the time: the time alone.
        for (id, seen) in db.checkins_since(since - OVERLAP_MS).await? {
            if let Some(d) = self.devices.get_mut(&id) {
                if d.last_seen_ms.is_none_or(|s| s < seen) {
                    d.last_seen_ms = Some(seen);
                }
            }
        }
        let page = db.devices_page(self.sweep_after.as_deref(), SWEEP).await?;
        let n = changed.len() + page.len();
        self.sweep_after = if (page.len() as i64) < SWEEP {
            None
        } else {
            page.last().map(|d| d.id.clone())
        };
        for d in changed.into_iter().chain(page) {
            if !self.views_stale {
                match (self.view_at.get(&d.id), in_fleet(&d)) {
                    (Some(&i), true) => {
                        if let Some(v) = self.views.get_mut(i) {
                            // The clock's part is set by `prepare_views`.
                            *v = view(&d, 0, 0, 0);
                        }
                    }
                    (None, false) => {}
                    // Joined or left the fleet: the list is made again.
                    _ => self.views_stale = true,
                }
            }
            self.devices.insert(d.id.clone(), d);
        }
        self.read_ms = Some(now);
        Ok(n)
    }

    /// Whether the copy was read under leadership `epoch` (a pass has run since it began).
    pub fn ready_for(&self, epoch: i64) -> bool {
        self.epoch == Some(epoch) && self.read_ms.is_some()
    }

    /// Every device row, by id.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceRow> {
        self.devices.values()
    }

    /// Brings the views up to `now`: made again if the fleet's members changed, and each one's
    /// online and silence flags set for the time.
    pub fn prepare_views(&mut self, now: i64, offline_after_ms: i64, silence_window_ms: i64) {
        if !self.views_stale {
            // The views are the fleet's rows in id order: walked side by side.
            let mut rows = self.devices.values().filter(|d| in_fleet(d));
            for v in &mut self.views {
                match rows.next() {
                    Some(d) if d.id == v.id => {
                        set_clock(v, d, now, offline_after_ms, silence_window_ms)
                    }
                    _ => {
                        self.views_stale = true;
                        break;
                    }
                }
            }
            if rows.next().is_some() {
                self.views_stale = true;
            }
        }
        if self.views_stale || self.views.is_empty() {
            self.views = self
                .devices
                .values()
                .filter(|d| in_fleet(d))
                .map(|d| view(d, now, offline_after_ms, silence_window_ms))
                .collect();
            self.view_at = self
                .views
                .iter()
                .enumerate()
                .map(|(i, v)| (v.id.clone(), i))
                .collect();
            self.views_stale = false;
        }
    }

    /// Every device row, by id, with its view if it is in the fleet.
    pub fn devices_with_views(&self) -> impl Iterator<Item = (&DeviceRow, Option<&DeviceView>)> {
        let mut next = 0;
        self.devices.values().map(move |d| {
            if !in_fleet(d) {
                return (d, None);
            }
            match self.views.get(next).filter(|v| v.id == d.id) {
                Some(v) => {
                    next += 1;
                    (d, Some(v))
                }
                None => (d, self.view_of(&d.id)),
            }
        })
    }

    /// The views of the devices in the fleet, by id (after [`FleetCache::prepare_views`]).
    pub fn views(&self) -> &[DeviceView] {
        &self.views
    }

    /// One device's view, if it is in the fleet.
    pub fn view_of(&self, id: &str) -> Option<&DeviceView> {
        self.view_at.get(id).and_then(|i| self.views.get(*i))
    }

    /// What this replica wrote to a device's desired release (so the next pass does not write
    /// it again before reading the row back).
    pub fn desired_written(&mut self, id: &str, target: Option<&(String, String)>, now: i64) {
        if let Some(d) = self.devices.get_mut(id) {
            let release = target.and_then(|(r, _)| r.parse().ok());
            if release.is_none() {
                d.desired_since_ms = None;
            } else if d.desired_release != release {
                d.desired_since_ms = Some(now);
            }
            d.desired_release = release;
            d.desired_digest = target.map(|(_, dg)| dg.clone());
        }
    }

    /// The releases, newest first (read again only when one was added).
    pub async fn releases(&mut self, db: &Db) -> Result<Arc<Vec<ReleaseRow>>, DbError> {
        let print = db.releases_fingerprint().await?;
        if let Some((p, rows)) = &self.releases {
            if *p == print {
                return Ok(rows.clone());
            }
        }
        let rows = Arc::new(db.releases(10_000).await?);
        self.releases = Some((print, rows.clone()));
        Ok(rows)
    }
}

/// Digests of valid releases and when each release was seen, by sha.
pub fn release_index(releases: &[ReleaseRow]) -> (HashMap<&str, &str>, HashMap<&str, i64>) {
    let digests = releases
        .iter()
        .filter_map(|r| r.digest.as_deref().map(|d| (r.sha.as_str(), d)))
        .collect();
    let seen = releases
        .iter()
        .map(|r| (r.sha.as_str(), r.seen_ms))
        .collect();
    (digests, seen)
}
