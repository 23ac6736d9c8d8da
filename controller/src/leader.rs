//! Leadership: only one replica drives rollouts and watches Git, the one holding the leader
//! lease (see [`crate::db::lease`]): a row taken when it has expired and renewed every third of
//! `leader_lease` with conditional UPDATEs on the database's clock, with an epoch that grows at
//! every change of holder and fences every write made on behalf of leadership.
//!
//! - A leader that cannot renew (its connection to the database hangs: a partition, not a crash)
//!   steps down by itself when its local, monotonic deadline passes, a fifth of the lease before
//!   the database lets anyone else take over, even while its queries hang: every lease query
//!   has a timeout, and the lease connection a statement and lock timeout.
//! - On PostgreSQL the lease names the leader's lease session (its backend pid); a follower that
//!   finds that session gone (the leader crashed and its connection closed) takes over at once
//!   rather than at expiry. On SQLite, where replicas share one file on one machine, a file lock
//!   next to it says the last holder is gone, and its holder takes the lease at once.
//! - A write refused by the fence (another replica took over) makes the replica step down at
//!   once ([`Leadership::fenced_out`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{AnyConnection, Executor};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::{Backend, DbError, Fence, Tenure};
use crate::state::AppState;

/// Errors of one lease operation.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The store.
    #[error("{0}")]
    Db(#[from] DbError),
    /// The database did not answer in time.
    #[error("the database did not answer {what} within {after:?}")]
    Timeout {
        /// What was asked.
        what: &'static str,
        /// How long was waited.
        after: Duration,
    },
    /// The SQLite leader lock file.
    #[error("cannot open the leader lock file {path}: {source}")]
    LockFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// This replica's leadership, shared by every task.
#[derive(Debug)]
pub struct Leadership {
    replica: Arc<str>,
    lease: Duration,
    tenure: Arc<Tenure>,
    /// Wakes the lease task when a write was fenced out.
    lost: Notify,
}

/// A name for this process among the replicas: host, process id and a random suffix (a
/// restarted replica is a new holder).
pub fn replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "controller".into());
    format!(
        "{host}-{}-{:06x}",
        std::process::id(),
        rand::random::<u32>() & 0xff_ffff
    )
}

impl Leadership {
    /// Not leading yet; `lease` as configured.
    pub fn new(replica: String, lease: Duration) -> Leadership {
        Leadership {
            replica: replica.into(),
            lease,
            tenure: Arc::new(Tenure::default()),
            lost: Notify::new(),
        }
    }

    /// This replica's name (the lease's `holder` while it leads).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The lease.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Whether this replica leads (by its own clock: the lease renewed recently enough).
    pub fn is_leader(&self) -> bool {
        self.tenure.current().is_some()
    }

    /// The epoch this replica leads in.
    pub fn epoch(&self) -> Option<i64> {
        self.tenure.current()
    }

    /// The fence for writes made on behalf of leadership, while this replica leads.
    pub fn fence(&self) -> Option<Fence> {
        self.tenure
            .current()
            .map(|epoch| Fence::new(self.replica.clone(), epoch, self.tenure.clone()))
    }

    /// A write under `fence` was refused: another replica leads. Steps down at once.
    pub fn fenced_out(&self, fence: &Fence) {
        if self.tenure.end(Some(fence.epoch())).is_some() {
            tracing::error!(
                replica = %self.replica,
                epoch = fence.epoch(),
                "stepped down: a write was fenced out (another replica holds the leader lease)"
            );
        }
        self.lost.notify_one();
    }

    /// How long after a renewal was sent this replica still acts as leader: four fifths of
    /// the lease, so it stops before the database lets another replica take over.
    fn hold(&self) -> Duration {
        self.lease * 4 / 5
    }

    /// How often the leader renews.
    fn renew_every(&self) -> Duration {
        self.lease / 3
    }

    /// The longest one lease query may take.
    fn op_timeout(&self) -> Duration {
        self.lease / 3
    }

    /// How often a follower tries to take the lease.
    fn retry(&self) -> Duration {
        (self.lease / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }
}

/// What the lease task keeps between rounds.
#[derive(Default)]
struct Seat {
    /// PostgreSQL: the lease connection (out of the pool) and its backend pid.
    conn: Option<(AnyConnection, i64)>,
    /// SQLite: the file lock.
    lock: Option<std::fs::File>,
    /// Lease queries failed in a row (to log a long outage without flooding).
    failures: u32,
}

async fn within<T>(
    after: Duration,
    what: &'static str,
    f: impl std::future::Future<Output = Result<T, LeaderError>>,
) -> Result<T, LeaderError> {
    tokio::time::timeout(after, f)
        .await
        .map_err(|_| LeaderError::Timeout { what, after })?
}

impl Seat {
    /// The PostgreSQL lease connection, opened if need be, with statement and lock timeouts so
    /// nothing on it waits longer than a lease query may.
    async fn pg(
        &mut self,
        state: &AppState,
        op: Duration,
    ) -> Result<(&mut AnyConnection, i64), LeaderError> {
        if self.conn.is_none() {
            let mut c = state
                .db
                .pool()
                .acquire()
                .await
                .map_err(crate::db::q("opening the leader lease connection"))?
                .detach();
            let ms = op.as_millis().max(1);
            c.execute(format!("SET statement_timeout = {ms}; SET lock_timeout = {ms}").as_str())
                .await
                .map_err(crate::db::q("setting the lease connection's timeouts"))?;
            let session = state.db.session_id(&mut c).await?;
            self.conn = Some((c, session));
        }
        match self.conn.as_mut() {
            Some((c, s)) => Ok((c, *s)),
            None => Err(LeaderError::Timeout {
                what: "opening the lease connection",
                after: op,
            }),
        }
    }

    /// SQLite: whether this process holds the leader lock file.
    fn file_lock(&mut self, state: &AppState) -> Result<bool, LeaderError> {
        use fs2::FileExt;
        if self.lock.is_some() {
            return Ok(true);
        }
        let path = state.cfg.data_dir.join("leader.lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| LeaderError::LockFile { path, source })?;
        if f.try_lock_exclusive().is_ok() {
            self.lock = Some(f);
            return Ok(true);
        }
        Ok(false)
    }

    /// Forgets the connection (it may hang) and the file lock.
    fn vacate(&mut self) {
        self.conn = None;
        self.lock = None;
    }

    fn failed(&mut self, what: &str, e: &LeaderError) {
        self.failures += 1;
        if self.failures == 1 || self.failures % 50 == 0 {
            tracing::warn!(error = %e, failures = self.failures, "leader lease: cannot {what}");
        }
    }
}

/// Runs the lease until `shutdown`: takes it when free, renews it while held, steps down when
/// it cannot, and lets it go on a clean shutdown.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let l = state.leadership.clone();
    tracing::info!(
        replica = %l.replica(),
        lease = ?l.lease(),
        backend = ?state.db.backend(),
        "leader election: this replica takes the lease when it is free"
    );
    let mut seat = Seat::default();
    loop {
        let pause = match l.tenure.held() {
            Some((epoch, until)) => renew(&state, &mut seat, epoch, until).await,
            None => take(&state, &mut seat).await,
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = l.lost.notified() => seat.vacate(),
            _ = tokio::time::sleep(pause) => {}
        }
    }
    if let Some(epoch) = l.tenure.end(None) {
        let op = l.op_timeout();
        let released = match state.db.backend() {
            Backend::Postgres => {
                within(op, "releasing the lease", async {
                    let (c, _) = seat.pg(&state, op).await?;
                    Ok(state.db.release_lease(c, l.replica(), epoch).await?)
                })
                .await
            }
            Backend::Sqlite => {
                within(op, "releasing the lease", async {
                    let _turn = state.db.write_turn().await;
                    let mut c = state
                        .db
                        .pool()
                        .acquire()
                        .await
                        .map_err(crate::db::q("releasing the leader lease"))?;
                    Ok(state.db.release_lease(&mut c, l.replica(), epoch).await?)
                })
                .await
            }
        };
        match released {
            Ok(_) => tracing::info!(epoch, "shutting down: leader lease released"),
            Err(e) => {
                tracing::warn!(error = %e, "shutting down: the leader lease was not released; it expires by itself")
            }
        }
    }
    seat.vacate();
}

async fn take(state: &AppState, seat: &mut Seat) -> Duration {
    let l = &state.leadership;
    let op = l.op_timeout();
    let lease_ms = l.lease().as_millis() as i64;
    let t0 = Instant::now();
    let taken = match state.db.backend() {
        Backend::Postgres => {
            within(op, "taking the lease", async {
                let (c, session) = seat.pg(state, op).await?;
                Ok(state
                    .db
                    .take_lease(c, l.replica(), lease_ms, session, false)
                    .await?)
            })
            .await
        }
        Backend::Sqlite => match seat.file_lock(state) {
            Ok(true) => {
                within(op, "taking the lease", async {
                    let _turn = state.db.write_turn().await;
                    let mut c = state
                        .db
                        .pool()
                        .acquire()
                        .await
                        .map_err(crate::db::q("taking the leader lease"))?;
                    let pid = i64::from(std::process::id());
                    Ok(state
                        .db
                        .take_lease(&mut c, l.replica(), lease_ms, pid, true)
                        .await?)
                })
                .await
            }
            Ok(false) => Ok(None),
            Err(e) => Err(e),
        },
    };
    match taken {
        Ok(Some(epoch)) => {
            seat.failures = 0;
            l.tenure.hold(epoch, t0 + l.hold());
            tracing::info!(replica = %l.replica(), epoch, lease = ?l.lease(), "this replica is the leader (took the leader lease)");
            state.reconcile.notify_one();
            state.watch.notify_one();
            l.renew_every()
        }
        Ok(None) => {
            seat.failures = 0;
            l.retry()
        }
        Err(e) => {
            seat.failed("take it", &e);
            seat.conn = None;
            l.retry()
        }
    }
}

async fn renew(state: &AppState, seat: &mut Seat, epoch: i64, until: Instant) -> Duration {
    let l = &state.leadership;
    let lease_ms = l.lease().as_millis() as i64;
    let t0 = Instant::now();
    if t0 >= until {
        step_down(
            state,
            seat,
            epoch,
            "could not renew the leader lease before it ran out",
        );
        return Duration::ZERO;
    }
    let op = l.op_timeout().min(until - t0);
    let renewed = match state.db.backend() {
        Backend::Postgres => {
            within(op, "renewing the lease", async {
                let (c, session) = seat.pg(state, op).await?;
                Ok(state
                    .db
                    .renew_lease(c, l.replica(), epoch, lease_ms, session)
                    .await?)
            })
            .await
        }
        Backend::Sqlite => {
            within(op, "renewing the lease", async {
                let _turn = state.db.write_turn().await;
                let mut c = state
                    .db
                    .pool()
                    .acquire()
                    .await
                    .map_err(crate::db::q("renewing the leader lease"))?;
                let pid = i64::from(std::process::id());
                Ok(state
                    .db
                    .renew_lease(&mut c, l.replica(), epoch, lease_ms, pid)
                    .await?)
            })
            .await
        }
    };
    match renewed {
        Ok(true) => {
            seat.failures = 0;
            if !l.tenure.extend(epoch, t0 + l.hold()) {
                // Fenced out while the renewal ran.
                return Duration::ZERO;
            }
            l.renew_every()
        }
        Ok(false) => {
            step_down(
                state,
                seat,
                epoch,
                "the leader lease expired or another replica took it",
            );
            Duration::ZERO
        }
        Err(e) => {
            seat.failed("renew it", &e);
            seat.conn = None;
            let now = Instant::now();
            if now >= until {
                step_down(
                    state,
                    seat,
                    epoch,
                    "could not renew the leader lease before it ran out",
                );
                return Duration::ZERO;
            }
            l.retry().min(until - now)
        }
    }
}

fn step_down(state: &AppState, seat: &mut Seat, epoch: i64, why: &str) {
    let l = &state.leadership;
    if l.tenure.end(Some(epoch)).is_some() {
        tracing::error!(replica = %l.replica(), epoch, reason = why, "stepped down: this replica no longer leads; rollouts and the Git watcher stop here");
    }
    seat.vacate();
}
