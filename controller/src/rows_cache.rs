//! The fleet's device rows for the readers that want all of them often and at once: `/metrics`
//! (every scrape of every Prometheus), the status API, the dashboard's overview and its live
//! updates. Read from the store at most once per [`MAX_AGE`], however many ask; readers that
//! ask together wait for one read. An operator's act on this replica forgets the copy
//! ([`RowsCache::forget`]), so the page after it shows it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::db::{Db, DbError, DeviceRow};

/// How old a copy may be.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// The shared copy.
#[derive(Debug, Default)]
pub struct RowsCache {
    copy: tokio::sync::Mutex<Option<(Instant, Arc<Vec<DeviceRow>>)>>,
}

impl RowsCache {
    /// Every device row, by id, at most [`MAX_AGE`] old.
    pub async fn rows(&self, db: &Db) -> Result<Arc<Vec<DeviceRow>>, DbError> {
        let mut copy = self.copy.lock().await;
        if let Some((at, rows)) = copy.as_ref() {
            if at.elapsed() < MAX_AGE {
                return Ok(rows.clone());
            }
        }
        let rows = Arc::new(db.devices().await?);
        *copy = Some((Instant::now(), rows.clone()));
        Ok(rows)
    }

    /// Drops the copy: the next reader reads the store.
    pub async fn forget(&self) {
        *self.copy.lock().await = None;
    }
}
