//! The leader lease and fencing (issue 14). One row of `leases` says which replica leads
//! (`holder`), since which change of holder (`epoch`, one more at every change) and until when
//! (`expires_ms`, on the database's clock). A replica takes the lease when it has expired (or
//! when the holder's database session is gone: a crashed replica), and renews it with a
//! conditional UPDATE that only matches its own, unexpired, epoch.
//!
//! Every write made on behalf of leadership goes through a [`Fenced`] transaction: it starts by
//! checking, inside the transaction, that the lease still has this holder and epoch and has not
//! expired, and on PostgreSQL keeps that row share-locked until commit, so a takeover (an UPDATE
//! of the row) waits for it and every later write of the old epoch fails. A fenced-out write is
//! [`DbError::Fenced`]; the replica then steps down.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use sqlx::{AnyConnection, Row};

use super::{q, Backend, Db, DbError};

/// The lease's row.
const LEADER: &str = "leader";

/// This process's own view of its lease: the epoch it holds and until when (a local monotonic
/// clock, ahead of the database's expiry), so a leader whose queries hang stops acting on its
/// own.
#[derive(Debug, Default)]
pub struct Tenure {
    held: Mutex<Option<(i64, Instant)>>,
}

impl Tenure {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(i64, Instant)>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Holds `epoch` until `until`.
    pub fn hold(&self, epoch: i64, until: Instant) {
        *self.lock() = Some((epoch, until));
    }

    /// Moves the local deadline of `epoch` to `until`, if `epoch` is still held; false if not
    /// (it was given up meanwhile).
    pub fn extend(&self, epoch: i64, until: Instant) -> bool {
        let mut held = self.lock();
        match *held {
            Some((e, _)) if e == epoch => {
                *held = Some((epoch, until));
                true
            }
            _ => false,
        }
    }

    /// Gives up whatever is held; returns the epoch if `epoch` (or any, for `None`) was held.
    pub fn end(&self, epoch: Option<i64>) -> Option<i64> {
        let mut held = self.lock();
        match *held {
            Some((e, _)) if epoch.is_none_or(|x| x == e) => {
                *held = None;
                Some(e)
            }
            _ => None,
        }
    }

    /// The epoch held and its local deadline, expired or not.
    pub fn held(&self) -> Option<(i64, Instant)> {
        *self.lock()
    }

    /// The epoch held, if its local deadline has not passed.
    pub fn current(&self) -> Option<i64> {
        match *self.lock() {
            Some((e, until)) if Instant::now() < until => Some(e),
            _ => None,
        }
    }

    /// Whether `epoch` is held and its local deadline has not passed.
    pub fn live(&self, epoch: i64) -> bool {
        self.current() == Some(epoch)
    }
}

/// Proof of leadership for a write: the holder and epoch, checked locally (not past the local
/// deadline) and in the database (in the write's own transaction).
#[derive(Clone)]
pub struct Fence {
    holder: Arc<str>,
    epoch: i64,
    tenure: Arc<Tenure>,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("holder", &self.holder)
            .field("epoch", &self.epoch)
            .field("live", &self.live())
            .finish()
    }
}

impl Fence {
    /// The fence of `holder` at `epoch`, valid while `tenure` holds it.
    pub fn new(holder: Arc<str>, epoch: i64, tenure: Arc<Tenure>) -> Fence {
        Fence {
            holder,
            epoch,
            tenure,
        }
    }

    /// The replica.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Its leader epoch.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Still held by this process's own clock.
    pub fn live(&self) -> bool {
        self.tenure.live(self.epoch)
    }

    fn refused(&self) -> DbError {
        DbError::Fenced {
            holder: self.holder.to_string(),
            epoch: self.epoch,
        }
    }
}

/// The lease as stored, with the database's clock when it was read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lease {
    /// The replica holding (or last holding) it; empty before the first leader.
    pub holder: String,
    /// Changes of holder so far.
    pub epoch: i64,
    /// When it expires (ms since the epoch, database clock).
    pub expires_ms: i64,
    /// When the holder took it.
    pub acquired_ms: i64,
    /// The holder's lease session (PostgreSQL backend pid; process id on SQLite).
    pub session: Option<i64>,
    /// The database's clock at the read.
    pub now_ms: i64,
}

impl Db {
    /// Milliseconds since the Unix epoch on the database's clock, as SQL.
    fn now_sql(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
            Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        }
    }

    /// The lease as stored.
    pub async fn lease(&self) -> Result<Lease, DbError> {
        let now = self.now_sql();
        let r = sqlx::query(&format!(
            "SELECT holder, epoch, expires_ms, acquired_ms, session, {now} AS now_ms \
             FROM leases WHERE name = $1"
        ))
        .bind(LEADER)
        .fetch_one(&self.pool)
        .await
        .map_err(q("reading the leader lease"))?;
        let e = || q("reading the leader lease");
        Ok(Lease {
            holder: r.try_get("holder").map_err(e())?,
            epoch: r.try_get("epoch").map_err(e())?,
            expires_ms: r.try_get("expires_ms").map_err(e())?,
            acquired_ms: r.try_get("acquired_ms").map_err(e())?,
            session: r.try_get("session").map_err(e())?,
            now_ms: r.try_get("now_ms").map_err(e())?,
        })
    }

    /// The backend pid of `conn` (PostgreSQL), what a lease's `session` names.
    pub async fn session_id(&self, conn: &mut AnyConnection) -> Result<i64, DbError> {
        match self.backend {
            Backend::Postgres => sqlx::query("SELECT CAST(pg_backend_pid() AS BIGINT) AS pid")
                .fetch_one(&mut *conn)
                .await
                .and_then(|r| r.try_get("pid"))
                .map_err(q("reading the session id")),
            Backend::Sqlite => Ok(i64::from(std::process::id())),
        }
    }

    /// Takes the lease for `holder` for `lease_ms` if it is free: expired, never held, or (on
    /// PostgreSQL) its holder's session is gone; `force` takes it regardless (SQLite, under
    /// the file lock that proves the last holder gone). Returns the new epoch.
    pub async fn take_lease(
        &self,
        conn: &mut AnyConnection,
        holder: &str,
        lease_ms: i64,
        session: i64,
        force: bool,
    ) -> Result<Option<i64>, DbError> {
        let now = self.now_sql();
        let free = if force {
            "TRUE".to_owned()
        } else {
            let gone = match self.backend {
                Backend::Postgres => {
                    " OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = leases.session)"
                }
                Backend::Sqlite => "",
            };
            format!("(expires_ms <= {now} OR holder = '' OR session IS NULL{gone})")
        };
        let row = sqlx::query(&format!(
            "UPDATE leases SET holder = $1, epoch = epoch + 1, expires_ms = {now} + $2, \
             acquired_ms = {now}, session = $3 WHERE name = $4 AND {free} RETURNING epoch"
        ))
        .bind(holder)
        .bind(lease_ms)
        .bind(session)
        .bind(LEADER)
        .fetch_optional(&mut *conn)
        .await
        .map_err(q("taking the leader lease"))?;
        row.map(|r| r.try_get("epoch"))
            .transpose()
            .map_err(q("taking the leader lease"))
    }

    /// Renews `holder`'s lease at `epoch` for `lease_ms` from now, if it still holds it and it
    /// has not expired; false if not (another replica took it, or it expired first).
    pub async fn renew_lease(
        &self,
        conn: &mut AnyConnection,
        holder: &str,
        epoch: i64,
        lease_ms: i64,
        session: i64,
    ) -> Result<bool, DbError> {
        let now = self.now_sql();
        let r = sqlx::query(&format!(
            "UPDATE leases SET expires_ms = {now} + $1, session = $2 \
             WHERE name = $3 AND holder = $4 AND epoch = $5 AND expires_ms > {now}"
        ))
        .bind(lease_ms)
        .bind(session)
        .bind(LEADER)
        .bind(holder)
        .bind(epoch)
        .execute(&mut *conn)
        .await
        .map_err(q("renewing the leader lease"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Lets the lease go at once (a clean shutdown), so another replica need not wait for it
    /// to expire.
    pub async fn release_lease(
        &self,
        conn: &mut AnyConnection,
        holder: &str,
        epoch: i64,
    ) -> Result<bool, DbError> {
        let r = sqlx::query(
            "UPDATE leases SET expires_ms = 0 WHERE name = $1 AND holder = $2 AND epoch = $3",
        )
        .bind(LEADER)
        .bind(holder)
        .bind(epoch)
        .execute(&mut *conn)
        .await
        .map_err(q("releasing the leader lease"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Starts a transaction for writes made on behalf of leadership, checked against `fence`
    /// (refused with [`DbError::Fenced`] if it is no longer current).
    pub async fn fenced(&self, fence: &Fence) -> Result<Fenced, DbError> {
        if !fence.live() {
            return Err(fence.refused());
        }
        let turn = match self.backend {
            Backend::Sqlite => Some(self.write_gate.clone().lock_owned().await),
            Backend::Postgres => None,
        };
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(q("starting a leader's write"))?;
        let now = self.now_sql();
        let held = match self.backend {
            // Share-locked until commit: a takeover waits for this transaction.
            Backend::Postgres => sqlx::query(&format!(
                "SELECT epoch FROM leases WHERE name = $1 AND holder = $2 AND epoch = $3 \
                 AND expires_ms > {now} FOR SHARE"
            ))
            .bind(LEADER)
            .bind(fence.holder())
            .bind(fence.epoch)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("checking the leader lease"))?
            .is_some(),
            // The first statement a write: this transaction holds SQLite's write lock from here.
            Backend::Sqlite => {
                sqlx::query(&format!(
                    "UPDATE leases SET holder = holder WHERE name = $1 AND holder = $2 \
                     AND epoch = $3 AND expires_ms > {now}"
                ))
                .bind(LEADER)
                .bind(fence.holder())
                .bind(fence.epoch)
                .execute(&mut *tx)
                .await
                .map_err(q("checking the leader lease"))?
                .rows_affected()
                    == 1
            }
        };
        if !held {
            let _ = tx.rollback().await;
            return Err(fence.refused());
        }
        Ok(Fenced {
            tx,
            fence: fence.clone(),
            backend: self.backend,
            _turn: turn,
        })
    }
}

/// A transaction of writes made on behalf of leadership (see [`Db::fenced`]).
pub struct Fenced {
    pub(crate) tx: sqlx::Transaction<'static, sqlx::Any>,
    fence: Fence,
    pub(crate) backend: Backend,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Fenced {
    /// The fence it was checked against.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Commits, unless this process's own clock says the lease ran out meanwhile.
    pub async fn commit(self) -> Result<(), DbError> {
        if !self.fence.live() {
            let _ = self.tx.rollback().await;
            return Err(self.fence.refused());
        }
        self.tx
            .commit()
            .await
            .map_err(q("committing a leader's write"))
    }
}
