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
use crate::rollout::{DeviceRecord, Rollout};

/// How far back of the last read a pass looks for changed rows.
pub const OVERLAP_MS: i64 = 2_000;

/// Rows read again in id order at each pass, whether they changed or not.
pub const SWEEP: i64 = 2_000;

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
            return Ok(n);
        };
        let changed = db.devices_changed_since(since - OVERLAP_MS).await?;
        let page = db.devices_page(self.sweep_after.as_deref(), SWEEP).await?;
        let n = changed.len() + page.len();
        self.sweep_after = if (page.len() as i64) < SWEEP {
            None
        } else {
            page.last().map(|d| d.id.clone())
        };
        for d in changed.into_iter().chain(page) {
            self.devices.insert(d.id.clone(), d);
        }
        self.read_ms = Some(now);
        Ok(n)
    }

    /// Every device row, by id.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceRow> {
        self.devices.values()
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
